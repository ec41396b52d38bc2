//! Tests against real servers: TCP listeners, an HTTP(S) server run here,
//! and a PostgreSQL server each test starts itself.

use super::*;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509Builder, X509NameBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

fn ok<T, E: fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn failed(outcome: CheckOutcome) -> String {
    match outcome {
        CheckOutcome::Failed(message) => message,
        CheckOutcome::Ok => panic!("the check passed; it should have failed"),
    }
}

/// A name unique to this test process and call.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// tcp

fn tcp(address: &str) -> TcpMonitorDriver {
    TcpMonitorDriver::new(
        "db",
        "port",
        &conf::TcpMonitor {
            address: address.to_owned(),
        },
    )
}

#[tokio::test]
async fn tcp_passes_while_a_listener_is_open_and_fails_refused_once_it_is_closed() {
    let listener = ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await);
    let port = ok(listener.local_addr()).port();
    let timeout = Duration::from_secs(2);
    assert_eq!(
        tcp(&format!("127.0.0.1:{port}")).check(timeout).await,
        CheckOutcome::Ok
    );
    // A name, resolved through /etc/hosts (no DNS traffic).
    assert_eq!(
        tcp(&format!("localhost:{port}")).check(timeout).await,
        CheckOutcome::Ok
    );
    // The connection was really made, and closed.
    let (mut accepted, _) = ok(listener.accept().await);
    let mut buf = [0u8; 1];
    assert_eq!(ok(accepted.read(&mut buf).await), 0, "closed at once");

    drop(accepted);
    drop(listener);
    let message = failed(tcp(&format!("127.0.0.1:{port}")).check(timeout).await);
    assert_eq!(message, format!("connection to 127.0.0.1:{port} refused"));
}

#[tokio::test]
async fn tcp_failures_name_the_address_a_name_resolved_to() {
    let listener = ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await);
    let port = ok(listener.local_addr()).port();
    drop(listener);
    let message = failed(
        tcp(&format!("localhost:{port}"))
            .check(Duration::from_secs(2))
            .await,
    );
    assert!(
        message.contains(&format!("connection to 127.0.0.1:{port} refused")),
        "{message}"
    );
}

#[tokio::test]
async fn tcp_times_out_when_syns_go_unanswered() {
    // A listener whose accept queue is full drops new SYNs: the connect
    // hangs, as for a host that does not answer (on loopback only).
    let socket = ok(TcpSocket::new_v4());
    ok(socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
    let listener = ok(socket.listen(0));
    let addr = ok(listener.local_addr());
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("connect: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(
        full,
        "the accept queue never filled ({} connections)",
        held.len()
    );

    let started = std::time::Instant::now();
    let message = failed(
        tcp(&addr.to_string())
            .check(Duration::from_millis(300))
            .await,
    );
    let elapsed = started.elapsed();
    assert_eq!(
        message,
        format!("connecting to {addr} timed out after 300ms")
    );
    assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(800), "{elapsed:?}");
    drop(listener);
}

#[tokio::test]
async fn tcp_refuses_malformed_addresses() {
    for (address, why) in [
        ("127.0.0.1", "no port"),
        ("::1:5432", "IPv6 addresses go in brackets"),
        ("[::1]5432", "`]:PORT`"),
        (":5432", "no host"),
        ("localhost:http", "not a number"),
        ("localhost:0", "not a number"),
        ("localhost:70000", "not a number"),
    ] {
        let message = failed(tcp(address).check(Duration::from_secs(1)).await);
        assert!(
            message.starts_with(&format!("`{address}` is not HOST:PORT")) && message.contains(why),
            "{address}: {message}"
        );
    }
}

#[tokio::test]
async fn tcp_reaches_ipv6_literals() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        // No IPv6 on loopback in this environment: nothing to test.
        return;
    };
    let port = ok(listener.local_addr()).port();
    assert_eq!(
        tcp(&format!("[::1]:{port}"))
            .check(Duration::from_secs(2))
            .await,
        CheckOutcome::Ok
    );
}

/// A network namespace with nothing but a loopback that is down, deleted
/// when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = unique("kvmha-probes");
        run(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Run `command`; panic with its output unless it succeeds.
fn run(command: &mut Command) -> Output {
    let output = ok(command.output());
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn tcp_names_that_do_not_resolve_fail_and_say_so() {
    // Resolved inside an empty network namespace, so that the resolver's
    // query cannot leave this machine: the name cannot be resolved there.
    let ns = Netns::new();
    let path = format!("/run/netns/{}", ns.name);
    let message = ok(std::thread::spawn(move || {
        let file = ok(std::fs::File::open(&path));
        // Only this thread (and the threads it starts) moves.
        ok(nix::sched::setns(
            file,
            nix::sched::CloneFlags::CLONE_NEWNET,
        ));
        let runtime = ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build());
        runtime.block_on(async {
            failed(
                tcp("kvmha-no-such-host.invalid:80")
                    .check(Duration::from_secs(5))
                    .await,
            )
        })
    })
    .join()
    .map_err(|_| "the resolver thread panicked"));
    assert!(
        message.starts_with("cannot resolve `kvmha-no-such-host.invalid`: "),
        "{message}"
    );
}

// ---------------------------------------------------------------------------
// http

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate,
/// PKCS#8 key), both PEM.
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    let group = ok(EcGroup::from_curve_name(Nid::X9_62_PRIME256V1));
    let key = ok(PKey::from_ec_key(ok(EcKey::generate(&group))));
    let mut name = ok(X509NameBuilder::new());
    ok(name.append_entry_by_text("CN", "localhost"));
    let name = name.build();
    let mut cert = ok(X509Builder::new());
    ok(cert.set_version(2));
    let serial: openssl::asn1::Asn1Integer = ok(ok(BigNum::from_u32(1)).to_asn1_integer());
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
        ok(cert.build().to_pem()),
        ok(key.private_key_to_pem_pkcs8()),
    )
}

/// The body `/big` ends with, after more than [`MAX_BODY`] bytes.
const FAR_NEEDLE: &str = "needle-past-the-limit";

/// An HTTP/1.1 server on 127.0.0.1 (TLS with a self-signed certificate if
/// asked), stopped when dropped. It counts the requests for each path.
struct HttpServer {
    port: u16,
    hits: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    async fn start(tls: bool) -> Self {
        let listener = ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await);
        let port = ok(listener.local_addr()).port();
        let acceptor = tls.then(|| {
            let (cert, key) = self_signed();
            let identity = ok(tokio_native_tls::native_tls::Identity::from_pkcs8(
                &cert, &key,
            ));
            Arc::new(tokio_native_tls::TlsAcceptor::from(ok(
                tokio_native_tls::native_tls::TlsAcceptor::new(identity),
            )))
        });
        let hits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = match acceptor {
                        Some(a) => match a.accept(stream).await {
                            Ok(s) => respond(s, &seen).await,
                            Err(_) => Ok(()),
                        },
                        None => respond(stream, &seen).await,
                    };
                });
            }
        });
        Self { port, hits, task }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    seen: &std::sync::Mutex<Vec<String>>,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(path.clone());
    let (status, extra, body): (&str, &str, Vec<u8>) = match path.as_str() {
        "/ok" => ("200 OK", "", b"<p>service is healthy</p>".to_vec()),
        "/down" => ("503 Service Unavailable", "", b"maintenance".to_vec()),
        "/moved" => ("301 Moved Permanently", "Location: /ok\r\n", Vec::new()),
        "/big" => {
            let mut body = vec![b'x'; 2 * MAX_BODY];
            body.extend_from_slice(FAR_NEEDLE.as_bytes());
            ("200 OK", "", body)
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            ("200 OK", "", Vec::new())
        }
        "/trickle" => {
            // The head at once, then one byte of the body every 100 ms.
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
                .await?;
            for _ in 0..100 {
                s.write_all(b"x").await?;
                s.flush().await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Ok(());
        }
        _ => ("404 Not Found", "", b"no such page".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    s.shutdown().await
}

fn http(
    url: &str,
    expect_status: u16,
    body_contains: Option<&str>,
    insecure: bool,
) -> HttpMonitorDriver {
    http_built(url, expect_status, body_contains, insecure)
        .unwrap_or_else(|e| panic!("http monitor for {url}: {e}"))
}

fn http_built(
    url: &str,
    expect_status: u16,
    body_contains: Option<&str>,
    insecure: bool,
) -> Result<HttpMonitorDriver, SetupError> {
    HttpMonitorDriver::new(
        "web",
        "front",
        &conf::HttpMonitor {
            url: url.to_owned(),
            expect_status,
            body_contains: body_contains.map(str::to_owned),
            insecure,
        },
    )
}

#[tokio::test]
async fn http_checks_the_status_and_the_body() {
    let server = HttpServer::start(false).await;
    let t = Duration::from_secs(5);
    let url = |p| server.url("http", p);

    assert_eq!(
        http(&url("/ok"), 200, None, false).check(t).await,
        CheckOutcome::Ok
    );
    assert_eq!(
        http(&url("/ok"), 200, Some("is healthy"), false)
            .check(t)
            .await,
        CheckOutcome::Ok
    );
    assert_eq!(
        failed(
            http(&url("/ok"), 200, Some("degraded"), false)
                .check(t)
                .await
        ),
        "the body does not contain \"degraded\" (25 bytes read, the whole body)"
    );
    assert_eq!(
        failed(http(&url("/down"), 200, None, false).check(t).await),
        "status 503 Service Unavailable, expected 200"
    );
    // An unhealthy status may be the one expected.
    assert_eq!(
        http(&url("/down"), 503, Some("maintenance"), false)
            .check(t)
            .await,
        CheckOutcome::Ok
    );
    assert_eq!(
        failed(http(&url("/missing"), 200, None, false).check(t).await),
        "status 404 Not Found, expected 200"
    );
}

#[tokio::test]
async fn http_does_not_follow_redirects() {
    let server = HttpServer::start(false).await;
    let t = Duration::from_secs(5);
    let moved = server.url("http", "/moved");
    assert_eq!(
        failed(http(&moved, 200, None, false).check(t).await),
        "status 301 Moved Permanently, expected 200 (a redirect to /ok, which is not followed)"
    );
    assert_eq!(
        http(&moved, 301, None, false).check(t).await,
        CheckOutcome::Ok
    );
    assert_eq!(server.hits("/moved"), 2);
    assert_eq!(server.hits("/ok"), 0, "the redirect was followed");
}

#[tokio::test]
async fn http_reads_at_most_one_mib_of_body() {
    let server = HttpServer::start(false).await;
    let t = Duration::from_secs(5);
    let big = server.url("http", "/big");
    // Found early: reading stops there.
    assert_eq!(
        http(&big, 200, Some("xxxx"), false).check(t).await,
        CheckOutcome::Ok
    );
    // Past the limit: not found.
    assert_eq!(
        failed(http(&big, 200, Some(FAR_NEEDLE), false).check(t).await),
        format!(
            "the body does not contain {FAR_NEEDLE:?} ({MAX_BODY} bytes read, the most that is read)"
        )
    );
}

#[tokio::test]
async fn http_timeout_bounds_the_whole_request() {
    let server = HttpServer::start(false).await;
    let t = Duration::from_millis(400);
    for (path, needle) in [("/slow", None), ("/trickle", Some("never there"))] {
        let built = std::time::Instant::now();
        let monitor = http(&server.url("http", path), 200, needle, false);
        eprintln!("http: client built in {:?}", built.elapsed());
        let started = std::time::Instant::now();
        let message = failed(monitor.check(t).await);
        let elapsed = started.elapsed();
        assert_eq!(message, "no answer within 400ms (timed out)", "{path}");
        assert!(elapsed >= Duration::from_millis(390), "{path}: {elapsed:?}");
        assert!(elapsed < Duration::from_millis(1000), "{path}: {elapsed:?}");
    }
}

#[tokio::test]
async fn http_fails_when_nothing_listens() {
    let listener = ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await);
    let port = ok(listener.local_addr()).port();
    drop(listener);
    let message = failed(
        http(&format!("http://127.0.0.1:{port}/"), 200, None, false)
            .check(Duration::from_secs(2))
            .await,
    );
    assert!(message.starts_with("request failed: "), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
}

#[tokio::test]
async fn https_with_a_self_signed_certificate_needs_insecure() {
    let server = HttpServer::start(true).await;
    let t = Duration::from_secs(5);
    let url = server.url("https", "/ok");

    let message = failed(http(&url, 200, None, false).check(t).await);
    assert!(message.starts_with("request failed: "), "{message}");
    assert!(message.contains("certificate verify failed"), "{message}");
    assert_eq!(server.hits("/ok"), 0, "no request went through");

    assert_eq!(
        http(&url, 200, Some("service is healthy"), true)
            .check(t)
            .await,
        CheckOutcome::Ok
    );
    // Status and body checks work over TLS as over plain HTTP.
    assert_eq!(
        failed(
            http(&server.url("https", "/down"), 200, None, true)
                .check(t)
                .await
        ),
        "status 503 Service Unavailable, expected 200"
    );
    // Plain HTTP to the TLS port does not pass either.
    let message = failed(
        http(&server.url("http", "/ok"), 200, None, false)
            .check(t)
            .await,
    );
    assert!(message.starts_with("request failed: "), "{message}");
    assert_eq!(server.hits("/ok"), 1);
}

#[test]
fn http_bad_urls_are_refused_when_the_monitor_is_built() {
    let refused = |url: &str| match http_built(url, 200, None, false) {
        Ok(m) => panic!("{url} was accepted: {m:?}"),
        Err(e) => e.to_string(),
    };
    let message = refused("http://exa mple/");
    assert!(
        message.starts_with("the url `http://exa mple/` is not valid"),
        "{message}"
    );
    assert_eq!(
        refused("ftp://localhost/"),
        "the url `ftp://localhost/` is not http:// or https://"
    );
}

// ---------------------------------------------------------------------------
// pgsql

/// The PostgreSQL server binaries: those of the newest installed major.
static PG_BIN: LazyLock<PathBuf> = LazyLock::new(|| {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    majors
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("PostgreSQL is not installed (scripts/setup-debian)"))
});

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command of PostgreSQL's run as user `postgres` when this is root
/// (the server refuses to run as root).
fn pg_command(program: &str) -> Command {
    let path = PG_BIN.join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

/// Give `path` to user `postgres` (when root), with `mode`.
fn give_to_postgres(path: &Path, mode: u32) {
    ok(std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mode),
    ));
    if is_root() {
        run(Command::new("chown").arg("postgres:postgres").arg(path));
    }
}

/// A PostgreSQL server of its own: on 127.0.0.1 (password authentication,
/// TLS offered) and on a Unix socket in its directory (trust), on a free
/// port. Stopped when dropped, whatever happened.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    password: String,
}

impl Postgres {
    fn start() -> Self {
        // In /tmp, which user postgres can reach whatever TMPDIR says.
        let dir = ok(tempfile::Builder::new()
            .prefix("kvmha-pg-")
            .tempdir_in("/tmp"));
        give_to_postgres(dir.path(), 0o700);
        let password = unique("pw");
        let pwfile = dir.path().join("initdb-password");
        ok(std::fs::write(&pwfile, format!("{password}\n")));
        give_to_postgres(&pwfile, 0o600);
        let (cert, key) = self_signed();
        for (name, pem) in [("server.crt", &cert), ("server.key", &key)] {
            let path = dir.path().join(name);
            ok(std::fs::write(&path, pem));
            give_to_postgres(&path, 0o600);
        }
        let data = dir.path().join("data");
        run(pg_command("initdb")
            .args(["--no-sync", "-U", "postgres", "--auth-local=trust"])
            .args(["--auth-host=scram-sha-256", "-D"])
            .arg(&data)
            .arg(format!("--pwfile={}", pwfile.display())));
        let port = {
            let probe = ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)));
            ok(probe.local_addr()).port()
        };
        let server = Self {
            dir,
            port,
            password,
        };
        let d = server.dir.path().display();
        run(pg_command("pg_ctl")
            .args(["-w", "-t", "20", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(server.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-k {d} -p {port} -h 127.0.0.1 -c fsync=off -c ssl=on \
                 -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key"
            ))
            .arg("start"));
        server
    }

    fn stop(&self, mode: &str) -> Output {
        pg_command("pg_ctl")
            .args(["-w", "-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", mode, "stop"])
            .output()
            .unwrap_or_else(|e| panic!("pg_ctl: {e}"))
    }

    /// Over TCP with the password in `password_file`.
    fn monitor(
        &self,
        extra: &str,
        password_file: Option<&Path>,
        query: &str,
    ) -> PgsqlMonitorDriver {
        PgsqlMonitorDriver::new(
            "db",
            "answers",
            &conf::PgsqlMonitor {
                connection: format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres {extra}",
                    self.port
                ),
                password_file: password_file.map(Path::to_owned),
                query: query.to_owned(),
            },
        )
        .unwrap_or_else(|e| panic!("pgsql monitor: {e}"))
    }

    /// An administrative session over the Unix socket (trust).
    async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = ok(tokio_postgres::connect(
            &format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().display(),
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await);
        tokio::spawn(connection);
        client
    }

    /// A password file of `mode` holding `password`.
    fn password_file(&self, name: &str, password: &str, mode: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        ok(std::fs::write(&path, format!("{password}\n")));
        ok(std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(mode),
        ));
        path
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}

/// How many sessions of the monitor run `query` now.
async fn running(admin: &tokio_postgres::Client, query: &str) -> i64 {
    let row = ok(admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'kvmha-monitor' AND query = $1",
            &[&query],
        )
        .await);
    row.get(0)
}

#[tokio::test]
async fn pgsql_against_a_real_server() {
    let started = std::time::Instant::now();
    let pg = Postgres::start();
    let setup = started.elapsed();
    let t = Duration::from_secs(5);
    let good = pg.password_file("good", &pg.password, 0o600);

    // Healthy: the default query, over TCP with the password.
    let built = std::time::Instant::now();
    let healthy = pg.monitor("", Some(&good), "SELECT now()");
    let built = built.elapsed();
    let check = std::time::Instant::now();
    assert_eq!(healthy.check(t).await, CheckOutcome::Ok);
    let tcp_check = check.elapsed();
    // Over the Unix socket (trust, no password needed).
    let socket = PgsqlMonitorDriver::new(
        "db",
        "socket",
        &conf::PgsqlMonitor {
            connection: format!(
                "host={} port={} user=postgres",
                pg.dir.path().display(),
                pg.port
            ),
            password_file: None,
            query: "SELECT now()".into(),
        },
    )
    .unwrap_or_else(|e| panic!("pgsql monitor: {e}"));
    let check = std::time::Instant::now();
    assert_eq!(socket.check(t).await, CheckOutcome::Ok);
    let socket_check = check.elapsed();
    // TLS required: the query itself fails unless the session is encrypted.
    let tls_only = "SELECT 1 / ssl::int FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    assert_eq!(
        pg.monitor("sslmode=require", Some(&good), tls_only)
            .check(t)
            .await,
        CheckOutcome::Ok
    );
    assert_eq!(
        failed(
            pg.monitor("sslmode=disable", Some(&good), tls_only)
                .check(t)
                .await
        ),
        "the query failed: ERROR 22012: division by zero"
    );
    // Each check closed its session.
    let admin = pg.admin().await;
    assert_eq!(running(&admin, "SELECT now()").await, 0);

    // A wrong password.
    let wrong = pg.password_file("wrong", "not-the-password", 0o600);
    let message = failed(pg.monitor("", Some(&wrong), "SELECT now()").check(t).await);
    assert_eq!(
        message,
        "cannot connect: FATAL 28P01: password authentication failed for user \"postgres\""
    );
    // No password at all where one is needed.
    let message = failed(pg.monitor("", None, "SELECT now()").check(t).await);
    assert!(message.starts_with("cannot connect: "), "{message}");
    assert!(message.contains("password missing"), "{message}");

    // A bad query.
    let message = failed(
        pg.monitor("", Some(&good), "SELECT * FROM no_such_table")
            .check(t)
            .await,
    );
    assert_eq!(
        message,
        "the query failed: ERROR 42P01: relation \"no_such_table\" does not exist"
    );

    // A password file others can read is refused, though it holds the
    // right password.
    let open = pg.password_file("open", &pg.password, 0o644);
    let message = failed(pg.monitor("", Some(&open), "SELECT now()").check(t).await);
    assert_eq!(
        message,
        format!(
            "the password file {} has mode 0644: it must give no access to group or others \
             (chmod 600); refusing to use it",
            open.display()
        )
    );
    assert!(!message.contains(&pg.password));
    let message = failed(
        pg.monitor("", Some(&pg.dir.path().join("absent")), "SELECT now()")
            .check(t)
            .await,
    );
    assert!(
        message.starts_with("cannot read the password file"),
        "{message}"
    );

    // A query that outlives the timeout: the check fails in time and the
    // query is cancelled on the server (pg_sleep does not notice a closed
    // client by itself).
    let sleep = "SELECT pg_sleep(30)";
    let check = std::time::Instant::now();
    let message = failed(
        pg.monitor("", Some(&good), sleep)
            .check(Duration::from_millis(700))
            .await,
    );
    let elapsed = check.elapsed();
    assert_eq!(message, "the query timed out after 700ms");
    assert!(elapsed < Duration::from_millis(1200), "{elapsed:?}");
    let mut left = running(&admin, sleep).await;
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = running(&admin, sleep).await;
    }
    assert_eq!(left, 0, "the abandoned query still runs on the server");

    // The server stopped.
    drop(admin);
    let stopped = pg.stop("fast");
    assert!(stopped.status.success(), "{stopped:?}");
    let message = failed(pg.monitor("", Some(&good), "SELECT now()").check(t).await);
    assert!(message.starts_with("cannot connect: "), "{message}");
    assert!(message.contains("refused"), "{message}");

    eprintln!(
        "pgsql: server set up in {setup:?}; monitor built in {built:?}; healthy check over \
         TCP with SCRAM {tcp_check:?}, over the Unix socket {socket_check:?}; whole test {:?}",
        started.elapsed()
    );
}

#[test]
fn pgsql_bad_connection_strings_are_refused_when_the_monitor_is_built() {
    let refused = |connection: &str| match PgsqlMonitorDriver::new(
        "db",
        "answers",
        &conf::PgsqlMonitor {
            connection: connection.into(),
            password_file: None,
            query: "SELECT now()".into(),
        },
    ) {
        Ok(m) => panic!("{connection} was accepted: {m:?}"),
        Err(e) => e.to_string(),
    };
    let message = refused("host=127.0.0.1 sslmode=verify-full");
    assert!(
        message.starts_with("the connection string is not valid: "),
        "{message}"
    );
    assert!(
        message.contains("verify-ca and verify-full are not supported"),
        "{message}"
    );
    let message = refused("host=127.0.0.1 port=five");
    assert!(
        message.starts_with("the connection string is not valid: "),
        "{message}"
    );
    let message = refused("host='127.0.0.1");
    assert!(
        message.starts_with("the connection string is not valid: "),
        "{message}"
    );
}

#[tokio::test]
async fn password_files_are_read_with_their_line_end_stripped() {
    let dir = ok(tempfile::tempdir());
    let path = dir.path().join("pw");
    ok(std::fs::write(&path, "s3cret with spaces \r\n"));
    ok(std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(0o400),
    ));
    assert_eq!(ok(read_password_file(&path).await), b"s3cret with spaces ");

    ok(std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(0o640),
    ));
    assert!(matches!(
        read_password_file(&path).await,
        Err(PasswordFileError::NotPrivate { mode: 0o640, .. })
    ));

    ok(std::fs::write(&path, "\n"));
    ok(std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(0o600),
    ));
    assert!(matches!(
        read_password_file(&path).await,
        Err(PasswordFileError::Empty { .. })
    ));
}
