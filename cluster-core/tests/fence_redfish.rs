//! `RedfishDevice` against the real Redfish emulator (`sushy-emulator` from
//! PyPI's `sushy-tools`, its libvirt driver on libvirt's in-process
//! `test:///default` hypervisor, basic authentication, plain HTTP and TLS
//! with a self-signed certificate), and against small in-test BMCs (axum)
//! for what the emulator cannot show: a system that never reaches `Off`,
//! a refused `ForceOff`, several systems, no `ForceOff`, a member on
//! another host, a BMC that never answers.
//!
//! The emulator is found through `KVMHA_SUSHY_EMULATOR` or at
//! `/opt/kvmha-sushy/bin/sushy-emulator` (where `scripts/setup-debian`
//! installs it); a test that needs it fails, saying so, when it is missing.
//! Each test starts its own emulator on a free loopback port, so the tests
//! run in parallel.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cluster_core::fence::{Backoff, Device, FenceAttempt, FenceError, Fencer, RedfishDevice};
use serde_json::{Value, json};

/// Where `scripts/setup-debian` installs the emulator.
const SUSHY_DEFAULT: &str = "/opt/kvmha-sushy/bin/sushy-emulator";
/// Overrides [`SUSHY_DEFAULT`].
const SUSHY_ENV: &str = "KVMHA_SUSHY_EMULATOR";

const USER: &str = "admin";
const PASSWORD: &str = "fence-test-pw";
/// `USER:bcrypt(PASSWORD)` at cost 4 (the emulator checks bcrypt on every
/// request; the lowest cost keeps the tests fast).
const HTPASSWD: &str = "admin:$2b$04$8RqItjG54xLnjll4vHsp.OWaukBANUIs4Kthw3evl/ot8GL/SV772";

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn tempdir() -> tempfile::TempDir {
    ok(tempfile::tempdir())
}

/// Write `text` to `dir/name` with `mode`.
fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    ok(std::fs::write(&path, text));
    ok(std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(mode),
    ));
    path
}

fn redfish_config(
    url: &str,
    password_file: &Path,
    system_id: Option<&str>,
    insecure: bool,
    timeout: Duration,
) -> conf::FenceDevice {
    conf::FenceDevice {
        name: "bmc".to_owned(),
        targets: vec!["node2".to_owned()],
        timeout: timeout.into(),
        delay: conf::Duration::default(),
        kind: conf::FenceKind::Redfish(conf::FenceRedfish {
            url: url.to_owned(),
            username: USER.to_owned(),
            password_file: password_file.to_owned(),
            system_id: system_id.map(str::to_owned),
            insecure,
        }),
    }
}

fn device(config: &conf::FenceDevice) -> RedfishDevice {
    ok(RedfishDevice::from_config(config))
}

/// A free TCP port on 127.0.0.1 (free when this returns).
fn free_port() -> u16 {
    let listener = ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)));
    ok(listener.local_addr()).port()
}

// ---------------------------------------------------------------------------
// The emulator

/// A `sushy-emulator` with basic authentication, on its own port, killed on
/// drop.
struct Emulator {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    /// The test's own client (accepts the self-signed certificate).
    client: reqwest::Client,
}

impl Emulator {
    fn binary() -> PathBuf {
        let path = std::env::var_os(SUSHY_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SUSHY_DEFAULT));
        assert!(
            path.is_file(),
            "the Redfish emulator is missing: {} does not exist. Run scripts/setup-debian as root \
             (it installs PyPI's sushy-tools into /opt/kvmha-sushy), or set {SUSHY_ENV} to a \
             sushy-emulator executable",
            path.display()
        );
        path
    }

    /// Start one, serving HTTPS with a fresh self-signed certificate if
    /// `tls`, and wait until it answers.
    async fn start(tls: bool) -> Self {
        let binary = Self::binary();
        let mut dir = tempdir();
        let htpasswd = write_file(dir.path(), "htpasswd", &format!("{HTPASSWD}\n"), 0o600);
        let state = dir.path().join("state");
        ok(std::fs::create_dir(&state));
        let config = write_file(
            dir.path(),
            "emulator.conf",
            &format!(
                "SUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_STATE_DIR = '{}'\n",
                htpasswd.display(),
                state.display()
            ),
            0o600,
        );
        let tls_files = tls.then(|| {
            let (cert, key) = self_signed();
            (
                write_file(dir.path(), "cert.pem", &cert, 0o600),
                write_file(dir.path(), "key.pem", &key, 0o600),
            )
        });
        let scheme = if tls { "https" } else { "http" };
        let client = insecure_client();
        let mut last_log = String::new();
        // The port is free when picked but another test may take it before
        // the emulator binds it: then the emulator exits, and another port
        // is tried.
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join(format!("emulator-{port}.log"));
            let log_file = ok(std::fs::File::create(&log));
            let mut command = Command::new(&binary);
            command
                .arg("--config")
                .arg(&config)
                .args(["--interface", "127.0.0.1", "--port", &port.to_string()])
                .args(["--libvirt-uri", "test:///default"])
                .env("TMPDIR", dir.path())
                .stdin(Stdio::null())
                .stdout(ok(log_file.try_clone()))
                .stderr(log_file);
            if let Some((cert, key)) = &tls_files {
                command
                    .arg("--ssl-certificate")
                    .arg(cert)
                    .arg("--ssl-key")
                    .arg(key);
            }
            let child = ok(command.spawn());
            let mut emulator = Self {
                child,
                url: format!("{scheme}://127.0.0.1:{port}"),
                dir,
                client: client.clone(),
            };
            if emulator.wait_ready().await {
                return emulator;
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            dir = emulator.stop();
        }
        panic!("sushy-emulator did not start; its last log:\n{last_log}");
    }

    /// Wait until the service root answers; `false` if the emulator exited
    /// (its port was taken) or did not answer within 20 s.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ok(self.child.try_wait()).is_some() {
                return false;
            }
            if let Ok(response) = self
                .client
                .get(format!("{}/redfish/v1", self.url))
                .send()
                .await
                && response.status().is_success()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Kill it and hand back its directory.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempdir())
    }

    fn password_file(&self, password: &str) -> PathBuf {
        write_file(
            self.dir.path(),
            "bmc.pass",
            &format!("  {password}\n"),
            0o600,
        )
    }

    /// The one system of libvirt's test driver (its domain `test`).
    async fn system(&self) -> (String, String) {
        let collection = self.get("/redfish/v1/Systems").await;
        let members = collection["Members"]
            .as_array()
            .unwrap_or_else(|| panic!("no Members: {collection}"));
        assert_eq!(members.len(), 1, "{collection}");
        let path = members[0]["@odata.id"]
            .as_str()
            .unwrap_or_else(|| panic!("no @odata.id: {collection}"))
            .to_owned();
        let id = path.rsplit('/').next().unwrap_or_default().to_owned();
        (id, path)
    }

    async fn power_state(&self) -> String {
        let (_, path) = self.system().await;
        let system = self.get(&path).await;
        system["PowerState"]
            .as_str()
            .unwrap_or_else(|| panic!("no PowerState: {system}"))
            .to_owned()
    }

    /// Reset the system (`On`, `ForceOff`) with the right credentials.
    async fn reset(&self, reset_type: &str) {
        let (_, path) = self.system().await;
        let response = ok(self
            .client
            .post(format!("{}{path}/Actions/ComputerSystem.Reset", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .json(&json!({ "ResetType": reset_type }))
            .send()
            .await);
        assert!(
            response.status().is_success(),
            "{reset_type}: {}",
            response.status()
        );
    }

    async fn get(&self, path: &str) -> Value {
        let response = ok(self
            .client
            .get(format!("{}{path}", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await);
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        ok(response.json().await)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn insecure_client() -> reqwest::Client {
    ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .tls_danger_accept_invalid_certs(true)
        .build())
}

/// A self-signed certificate for 127.0.0.1 and `localhost`: (certificate,
/// PKCS#8 key), both PEM.
fn self_signed() -> (String, String) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder};

    let group = ok(EcGroup::from_curve_name(Nid::X9_62_PRIME256V1));
    let key = ok(PKey::from_ec_key(ok(EcKey::generate(&group))));
    let mut name = ok(X509NameBuilder::new());
    ok(name.append_entry_by_text("CN", "localhost"));
    let name = name.build();
    let mut cert = ok(X509Builder::new());
    ok(cert.set_version(2));
    let serial = ok(ok(BigNum::from_u32(1)).to_asn1_integer());
    ok(cert.set_serial_number(&serial));
    ok(cert.set_subject_name(&name));
    ok(cert.set_issuer_name(&name));
    ok(cert.set_pubkey(&key));
    let not_before: Asn1Time = ok(Asn1Time::days_from_now(0));
    let not_after: Asn1Time = ok(Asn1Time::days_from_now(1));
    ok(cert.set_not_before(&not_before));
    ok(cert.set_not_after(&not_after));
    let san = ok(SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None)));
    ok(cert.append_extension(san));
    ok(cert.sign(&key, MessageDigest::sha256()));
    (
        ok(String::from_utf8(ok(cert.build().to_pem()))),
        ok(String::from_utf8(ok(key.private_key_to_pem_pkcs8()))),
    )
}

// ---------------------------------------------------------------------------
// Against the emulator

#[tokio::test]
async fn redfish_force_off_confirms_a_running_system_off() {
    let emu = Emulator::start(false).await;
    assert_eq!(emu.power_state().await, "On");
    let dev = device(&redfish_config(
        &emu.url,
        &emu.password_file(PASSWORD),
        None,
        false,
        Duration::from_secs(10),
    ));

    let started = Instant::now();
    ok(dev.fence_off("node2").await);
    let elapsed = started.elapsed();
    println!("redfish: fence call to confirmed Off in {elapsed:?}");

    assert_eq!(emu.power_state().await, "Off");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // Again, on an emulator that has served requests before (the first
    // requests of a fresh emulator are slower).
    emu.reset("On").await;
    assert_eq!(emu.power_state().await, "On");
    let started = Instant::now();
    ok(dev.fence_off("node2").await);
    println!(
        "redfish: fence call to confirmed Off in {:?} (warm emulator)",
        started.elapsed()
    );
    assert_eq!(emu.power_state().await, "Off");
    // Not a target of this device: refused without a request.
    assert!(matches!(
        dev.fence_off("node1").await,
        Err(FenceError::NotATarget { .. })
    ));
}

#[tokio::test]
async fn redfish_already_off_system_is_confirmed_off() {
    let emu = Emulator::start(false).await;
    emu.reset("ForceOff").await;
    assert_eq!(emu.power_state().await, "Off");
    let (id, _) = emu.system().await;
    let dev = device(&redfish_config(
        &format!("{}/redfish/v1/", emu.url),
        &emu.password_file(PASSWORD),
        Some(&id),
        false,
        Duration::from_secs(10),
    ));
    ok(dev.fence_off("node2").await);
    assert_eq!(emu.power_state().await, "Off");

    // And the device powers it off again once it is back on: the emulator
    // keeps its state between requests.
    emu.reset("On").await;
    assert_eq!(emu.power_state().await, "On");
    ok(dev.fence_off("node2").await);
    assert_eq!(emu.power_state().await, "Off");
}

#[tokio::test]
async fn redfish_wrong_password_is_refused_with_401_and_power_is_unchanged() {
    let emu = Emulator::start(false).await;
    let wrong = "wrong-password-42";
    let dev = device(&redfish_config(
        &emu.url,
        &emu.password_file(wrong),
        None,
        false,
        Duration::from_secs(10),
    ));
    let err = dev
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("a wrong password fenced"));
    let text = err.to_string();
    assert!(
        matches!(&err, FenceError::RedfishStatus { status: 401, method: "GET", url, .. }
            if url.ends_with("/redfish/v1/Systems")),
        "{err:?}"
    );
    assert!(
        text.contains("HTTP 401") && text.contains(&emu.url),
        "{text}"
    );
    assert!(!text.contains(wrong) && !format!("{err:?} {dev:?}").contains(wrong));
    assert_eq!(emu.power_state().await, "On");
}

#[tokio::test]
async fn redfish_unknown_system_id_error_names_the_members() {
    let emu = Emulator::start(false).await;
    let (id, _) = emu.system().await;
    let dev = device(&redfish_config(
        &emu.url,
        &emu.password_file(PASSWORD),
        Some("no-such-system"),
        false,
        Duration::from_secs(10),
    ));
    let err = dev
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("an unknown system was fenced"));
    assert!(
        matches!(&err, FenceError::RedfishSystem { members, .. } if *members == [id.clone()]),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("no-such-system") && text.contains(&id),
        "{text}"
    );
    assert_eq!(emu.power_state().await, "On");
}

#[tokio::test]
async fn redfish_over_tls_insecure_accepts_a_self_signed_certificate_and_secure_refuses_it() {
    let emu = Emulator::start(true).await;
    assert!(emu.url.starts_with("https://"));
    let password = emu.password_file(PASSWORD);

    let secure = device(&redfish_config(
        &emu.url,
        &password,
        None,
        false,
        Duration::from_secs(10),
    ));
    let err = secure
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("a self-signed certificate was trusted"));
    let text = err.to_string();
    assert!(
        matches!(err, FenceError::RedfishRequest { .. }) && text.contains("certificate"),
        "{text}"
    );
    assert_eq!(emu.power_state().await, "On");

    let insecure = device(&redfish_config(
        &emu.url,
        &password,
        None,
        true,
        Duration::from_secs(10),
    ));
    let started = Instant::now();
    ok(insecure.fence_off("node2").await);
    println!(
        "redfish over TLS: fence call to confirmed Off in {:?}",
        started.elapsed()
    );
    assert_eq!(emu.power_state().await, "Off");
}

#[tokio::test]
async fn redfish_fencer_retries_a_failing_device_until_it_confirms_off() {
    let emu = Emulator::start(false).await;
    let password = emu.password_file("not-yet-the-password");
    let fencer = Fencer::new(vec![Box::new(device(&redfish_config(
        &emu.url,
        &password,
        None,
        false,
        Duration::from_secs(10),
    )))])
    .with_backoff(Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    });

    let mut attempts: Vec<FenceAttempt> = Vec::new();
    let done = ok(fencer
        .fence("node2", std::future::pending(), |attempt| {
            attempts.push(attempt);
            if attempts.len() == 2 {
                // The operator fixes the password: the next attempt reads it.
                ok(std::fs::write(&password, format!("{PASSWORD}\n")));
            }
        })
        .await);

    assert_eq!((done.attempt, done.outcome.clone()), (3, Ok(())));
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.clone()).collect();
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    for outcome in &outcomes[..2] {
        let why = outcome.clone().err().unwrap_or_default();
        assert!(why.contains("HTTP 401"), "{why}");
    }
    assert_eq!(emu.power_state().await, "Off");
}

// ---------------------------------------------------------------------------
// Against in-test BMCs

/// What an in-test BMC serves and what it was asked.
#[derive(Debug)]
struct Bmc {
    /// Member `@odata.id`s of `Systems`.
    members: Vec<String>,
    /// `ResetType@Redfish.AllowableValues`, if listed.
    allowable: Option<Vec<&'static str>>,
    /// The `PowerState` reported.
    power: &'static str,
    /// Whether a reset powers the system off.
    obeys: bool,
    /// The error status a reset is answered with (after obeying, or not).
    refuse: Option<StatusCode>,
    /// `(path, body)` of every reset posted.
    resets: Vec<(String, Value)>,
    /// System `GET`s.
    gets: u32,
    /// The `Authorization` headers seen.
    auth: Vec<String>,
}

type Shared = Arc<Mutex<Bmc>>;

impl Bmc {
    fn new(members: &[&str]) -> Self {
        Self {
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            allowable: Some(vec!["On", "ForceOff", "GracefulShutdown"]),
            power: "On",
            obeys: true,
            refuse: None,
            resets: Vec::new(),
            gets: 0,
            auth: Vec::new(),
        }
    }
}

fn lock(bmc: &Shared) -> std::sync::MutexGuard<'_, Bmc> {
    bmc.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn remember_auth(bmc: &Shared, headers: &HeaderMap) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    lock(bmc).auth.push(auth);
}

async fn systems(State(bmc): State<Shared>, headers: HeaderMap) -> Json<Value> {
    remember_auth(&bmc, &headers);
    let members: Vec<Value> = lock(&bmc)
        .members
        .iter()
        .map(|m| json!({ "@odata.id": m }))
        .collect();
    Json(json!({ "Members@odata.count": members.len(), "Members": members }))
}

async fn system(State(bmc): State<Shared>, UrlPath(id): UrlPath<String>) -> Json<Value> {
    let mut b = lock(&bmc);
    b.gets += 1;
    let mut action =
        json!({ "target": format!("/redfish/v1/Systems/{id}/Actions/Oem.PowerControl") });
    if let Some(allowed) = &b.allowable {
        action["ResetType@Redfish.AllowableValues"] = json!(allowed);
    }
    Json(json!({
        "Id": id,
        "PowerState": b.power,
        "Actions": { "#ComputerSystem.Reset": action },
    }))
}

async fn reset(
    State(bmc): State<Shared>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut b = lock(&bmc);
    b.resets.push((id, body));
    if b.obeys {
        b.power = "Off";
    }
    match b.refuse {
        Some(status) => (
            status,
            Json(json!({ "error": {
                "code": "Base.1.8.GeneralError",
                "message": "A general error has occurred.",
                "@Message.ExtendedInfo": [{ "Message": "The power action is not allowed now." }]
            }})),
        )
            .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// An in-test BMC on a loopback port, stopped on drop.
struct FakeBmc {
    url: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBmc {
    async fn start(bmc: Bmc) -> Self {
        let state: Shared = Arc::new(Mutex::new(bmc));
        let app = axum::Router::new()
            .route("/redfish/v1/Systems", get(systems))
            .route("/redfish/v1/Systems/{id}", get(system))
            .route(
                "/redfish/v1/Systems/{id}/Actions/Oem.PowerControl",
                post(reset),
            )
            .with_state(Arc::clone(&state));
        let listener = ok(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await);
        let url = format!("http://{}", ok(listener.local_addr()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }
}

impl Drop for FakeBmc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn redfish_bmc_that_never_reports_off_times_out() {
    let mut b = Bmc::new(&["/redfish/v1/Systems/1"]);
    b.obeys = false;
    let bmc = FakeBmc::start(b).await;
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o600);
    let timeout = Duration::from_millis(1500);
    let dev = device(&redfish_config(&bmc.url, &password, None, false, timeout));

    let started = Instant::now();
    let err = dev
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("a system that stayed on was reported fenced"));
    let elapsed = started.elapsed();

    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert!(
        matches!(&err, FenceError::RedfishTimeout { progress, .. }
            if progress.power_state.as_deref() == Some("On")
                && progress.stage.contains("waiting for PowerState Off")),
        "{err:?}"
    );
    let b = lock(&bmc.state);
    // The reset went to the target the system's Actions named, once, as
    // ForceOff; then PowerState was polled every 300 ms.
    assert_eq!(
        b.resets,
        [("1".to_owned(), json!({ "ResetType": "ForceOff" }))]
    );
    assert!((3..=7).contains(&b.gets), "{} GETs", b.gets);
    // Basic authentication with the trimmed password.
    assert_eq!(b.auth, ["Basic YWRtaW46ZmVuY2UtdGVzdC1wdw=="]);
}

#[tokio::test]
async fn redfish_refused_force_off_fails_unless_the_system_is_off() {
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o600);

    // Refused, and the system stays on: the BMC's message, at once.
    let mut b = Bmc::new(&["/redfish/v1/Systems/1"]);
    b.obeys = false;
    b.refuse = Some(StatusCode::BAD_REQUEST);
    let bmc = FakeBmc::start(b).await;
    let dev = device(&redfish_config(
        &bmc.url,
        &password,
        None,
        false,
        Duration::from_secs(5),
    ));
    let err = dev
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("a refused ForceOff was reported fenced"));
    let text = err.to_string();
    assert!(
        matches!(&err, FenceError::RedfishStatus { status: 400, method: "POST", url, .. }
            if url.ends_with("/redfish/v1/Systems/1/Actions/Oem.PowerControl")),
        "{err:?}"
    );
    assert!(
        text.contains("A general error has occurred.; The power action is not allowed now."),
        "{text}"
    );

    // Refused (409), yet the system reads Off: confirmed off.
    let mut b = Bmc::new(&["/redfish/v1/Systems/1"]);
    b.refuse = Some(StatusCode::CONFLICT);
    let bmc = FakeBmc::start(b).await;
    let dev = device(&redfish_config(
        &bmc.url,
        &password,
        None,
        false,
        Duration::from_secs(5),
    ));
    ok(dev.fence_off("node2").await);
    assert_eq!(lock(&bmc.state).resets.len(), 1);
}

#[tokio::test]
async fn redfish_several_systems_need_a_system_id() {
    let bmc = FakeBmc::start(Bmc::new(&[
        "/redfish/v1/Systems/blade-1",
        "/redfish/v1/Systems/blade-2",
    ]))
    .await;
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o600);

    let unset = device(&redfish_config(
        &bmc.url,
        &password,
        None,
        false,
        Duration::from_secs(5),
    ));
    let err = unset
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("fenced without knowing which system"));
    let text = err.to_string();
    assert!(
        text.contains("blade-1, blade-2") && text.contains("system_id"),
        "{text}"
    );
    assert!(lock(&bmc.state).resets.is_empty());

    let chosen = device(&redfish_config(
        &bmc.url,
        &password,
        Some("blade-2"),
        false,
        Duration::from_secs(5),
    ));
    ok(chosen.fence_off("node2").await);
    assert_eq!(
        lock(&bmc.state).resets,
        [("blade-2".to_owned(), json!({ "ResetType": "ForceOff" }))]
    );
}

#[tokio::test]
async fn redfish_bmc_without_force_off_is_refused_before_any_reset() {
    let mut b = Bmc::new(&["/redfish/v1/Systems/1"]);
    b.allowable = Some(vec!["On", "GracefulShutdown", "GracefulRestart"]);
    let bmc = FakeBmc::start(b).await;
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o600);
    let dev = device(&redfish_config(
        &bmc.url,
        &password,
        None,
        false,
        Duration::from_secs(5),
    ));
    let err = dev
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("fenced without ForceOff"));
    let text = err.to_string();
    assert!(
        matches!(err, FenceError::RedfishResponse { .. })
            && text.contains("ForceOff")
            && text.contains("On, GracefulShutdown, GracefulRestart"),
        "{text}"
    );
    assert!(lock(&bmc.state).resets.is_empty());
}

#[tokio::test]
async fn redfish_member_on_another_host_is_refused() {
    let bmc = FakeBmc::start(Bmc::new(&["http://127.0.0.2:9/redfish/v1/Systems/1"])).await;
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o600);
    let dev = device(&redfish_config(
        &bmc.url,
        &password,
        None,
        false,
        Duration::from_secs(5),
    ));
    let err = dev
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("followed a member to another host"));
    assert!(err.to_string().contains("another host"), "{err}");
    assert_eq!(lock(&bmc.state).gets, 0);
}

#[tokio::test]
async fn redfish_unreachable_bmc_fails_within_the_timeout() {
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o600);
    let timeout = Duration::from_secs(1);

    // Nothing listens: refused at once, naming the URL.
    let port = free_port();
    let refused = device(&redfish_config(
        &format!("http://127.0.0.1:{port}"),
        &password,
        None,
        false,
        timeout,
    ));
    let started = Instant::now();
    let err = refused
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("fenced through a closed port"));
    let text = err.to_string();
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    assert!(
        matches!(err, FenceError::RedfishRequest { method: "GET", .. })
            && text.contains(&format!("127.0.0.1:{port}/redfish/v1/Systems"))
            && text.to_lowercase().contains("refused"),
        "{text}"
    );

    // A listener that never answers (connections wait in its backlog): the
    // attempt ends at the timeout, saying what it was waiting for.
    let silent = ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)));
    let addr = ok(silent.local_addr());
    let hung = device(&redfish_config(
        &format!("http://{addr}"),
        &password,
        None,
        false,
        timeout,
    ));
    let started = Instant::now();
    let err = hung
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("fenced through a silent BMC"));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert!(
        matches!(&err, FenceError::RedfishTimeout { progress, .. }
            if progress.power_state.is_none()
                && progress.stage == format!("GET http://{addr}/redfish/v1/Systems")),
        "{err:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn redfish_password_file_must_be_private_and_is_read_at_each_attempt() {
    let bmc = FakeBmc::start(Bmc::new(&["/redfish/v1/Systems/1"])).await;
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o644);
    let config = redfish_config(&bmc.url, &password, None, false, Duration::from_secs(5));

    let err = RedfishDevice::from_config(&config)
        .err()
        .unwrap_or_else(|| panic!("a world-readable password file was accepted"));
    assert!(
        matches!(err, FenceError::PasswordFile { .. }) && err.to_string().contains("chmod 600"),
        "{err}"
    );

    ok(std::fs::set_permissions(
        &password,
        std::fs::Permissions::from_mode(0o600),
    ));
    let dev = device(&config);
    // Opened up after start: the next attempt refuses it before any request.
    ok(std::fs::set_permissions(
        &password,
        std::fs::Permissions::from_mode(0o640),
    ));
    let err = dev
        .fence_off("node2")
        .await
        .err()
        .unwrap_or_else(|| panic!("a group-readable password file was used"));
    assert!(matches!(err, FenceError::PasswordFile { .. }), "{err}");
    assert!(lock(&bmc.state).auth.is_empty());

    // Emptied: refused too.
    ok(std::fs::write(&password, "\n"));
    ok(std::fs::set_permissions(
        &password,
        std::fs::Permissions::from_mode(0o600),
    ));
    let err = dev.fence_off("node2").await.err();
    assert!(
        matches!(&err, Some(FenceError::PasswordFile { reason, .. }) if reason == "empty"),
        "{err:?}"
    );
}

fn redfish(c: &mut conf::FenceDevice) -> &mut conf::FenceRedfish {
    match &mut c.kind {
        conf::FenceKind::Redfish(r) => r,
        _ => panic!("not redfish"),
    }
}

#[test]
fn redfish_refuses_unusable_configurations() {
    let dir = tempdir();
    let password = write_file(dir.path(), "pass", PASSWORD, 0o600);
    let base = redfish_config(
        "https://127.0.0.1:8443",
        &password,
        None,
        false,
        Duration::from_secs(5),
    );
    device(&base);

    let invalid = |change: &dyn Fn(&mut conf::FenceDevice)| {
        let mut config = base.clone();
        change(&mut config);
        RedfishDevice::from_config(&config)
            .err()
            .unwrap_or_else(|| panic!("accepted {config:?}"))
    };
    let err = invalid(&|c| c.targets.push("node3".to_owned()));
    assert!(
        matches!(&err, FenceError::InvalidConfig { reason, .. } if reason.contains("one node")),
        "{err}"
    );
    let err = invalid(&|c| c.timeout = Duration::ZERO.into());
    assert!(matches!(err, FenceError::InvalidConfig { .. }), "{err}");
    for url in [
        "https://admin:pw@bmc.example",
        "https://bmc.example/somewhere",
        "ftp://bmc.example",
    ] {
        let err = invalid(&|c| redfish(c).url = url.to_owned());
        assert!(
            matches!(err, FenceError::InvalidConfig { .. }),
            "{url}: {err}"
        );
    }
    let err = invalid(&|c| redfish(c).username = "ad:min".to_owned());
    assert!(matches!(err, FenceError::InvalidConfig { .. }), "{err}");
    let err = invalid(&|c| redfish(c).system_id = Some("a/b".to_owned()));
    assert!(matches!(err, FenceError::InvalidConfig { .. }), "{err}");
    let err = invalid(&|c| redfish(c).password_file = dir.path().join("missing"));
    assert!(matches!(err, FenceError::PasswordFile { .. }), "{err}");
    let err = invalid(&|c| {
        c.kind = conf::FenceKind::Host(conf::FenceHost::default());
    });
    assert!(
        matches!(err, FenceError::WrongKind { kind: "host", .. }),
        "{err}"
    );
}
