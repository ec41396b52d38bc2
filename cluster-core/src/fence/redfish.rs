//! A native Redfish fence device: `ComputerSystem.Reset` with `ForceOff`
//! over HTTPS (`reqwest`), then `PowerState` polled until the BMC reports
//! `Off`.
//!
//! One attempt: read the password file (mode `0600` or stricter, as the
//! cluster key), `GET /redfish/v1/Systems` and pick the configured
//! `system_id` (or the only member), `GET` the system: already `Off` is a
//! confirmed fence; otherwise read the reset action's `target` from its
//! `Actions` (refusing a BMC whose `ResetType@Redfish.AllowableValues` lacks
//! `ForceOff`), `POST {"ResetType": "ForceOff"}` to it and `GET` the system
//! every [`POLL_INTERVAL`] until `PowerState` is `Off`. The whole attempt,
//! every request included, is bounded by the device's timeout; only `Off`
//! read back from the BMC is a success.
//!
//! Basic authentication; the password is read at each attempt (a rotated
//! password is picked up without a restart) and never reaches the logs,
//! error messages or `Debug` output. Redirects are not followed and URLs
//! the BMC hands out must stay on the configured scheme, host and port, so
//! the credentials go nowhere else. `insecure = true` accepts any
//! certificate (self-signed BMCs); otherwise the system's trust store
//! (OpenSSL through `native-tls`) decides.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, LOCATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{Device, FenceError, FenceFuture, RedfishProgress};

/// How often `PowerState` is read while waiting for `Off`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// The largest answer read from the BMC.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The Redfish service root; every BMC serves it at this path.
const SERVICE_ROOT: &str = "/redfish/v1";

/// The `Systems` collection.
const SYSTEMS: &str = "/redfish/v1/Systems";

/// The reset type sent, and the only one accepted.
const FORCE_OFF: &str = "ForceOff";

/// The largest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

/// How much of a BMC's error message is kept.
const MESSAGE_LIMIT: usize = 512;

/// The client's own timeout exceeds the device's by this much, so that the
/// device's timeout (which names the stage that ran out of time) always
/// fires first.
const CLIENT_SLACK: Duration = Duration::from_secs(1);

/// Idle connections are kept this long: reused while one attempt polls,
/// gone before a later attempt could find them stale.
const IDLE_CONNECTION: Duration = Duration::from_secs(2);

const USER_AGENT: &str = concat!("kvmha-fence-redfish/", env!("CARGO_PKG_VERSION"));

/// A fence device that powers one system off through its BMC's Redfish
/// service.
///
/// Built from a `[[fencing]]` entry of kind `redfish` with
/// [`RedfishDevice::from_config`]. A Redfish device fences exactly one
/// node: it powers off one system, so a device listing several targets
/// would "fence" every one of them by powering off the same machine.
#[derive(Clone)]
pub struct RedfishDevice {
    name: String,
    base: Url,
    systems: Url,
    username: String,
    password_file: PathBuf,
    system_id: Option<String>,
    insecure: bool,
    targets: Vec<String>,
    timeout: Duration,
    delay: Duration,
    client: reqwest::Client,
}

impl RedfishDevice {
    /// Build the device from its configuration.
    ///
    /// Fails if `device` is not of kind `redfish`, if its timeout is zero,
    /// if it does not have exactly one target, if `url` is not an
    /// `http(s)://host[:port]` address (optionally ending in
    /// `/redfish/v1`) without user information, query or fragment, if the
    /// user name cannot be sent with basic authentication, or if the
    /// password file cannot be used now (missing, empty, or readable by
    /// group or others).
    pub fn from_config(device: &conf::FenceDevice) -> Result<Self, FenceError> {
        let redfish = match &device.kind {
            conf::FenceKind::Redfish(redfish) => redfish,
            conf::FenceKind::Agent(_) => return Err(wrong_kind(device, "agent")),
            conf::FenceKind::Host(_) => return Err(wrong_kind(device, "host")),
        };
        let invalid = |reason: String| FenceError::InvalidConfig {
            device: device.name.clone(),
            reason,
        };
        if device.timeout.is_zero() {
            return Err(invalid("`timeout` must be greater than zero".to_owned()));
        }
        match device.targets.as_slice() {
            [_] => {}
            [] => return Err(invalid("`targets` is empty".to_owned())),
            many => {
                return Err(invalid(format!(
                    "a Redfish device powers off one system, so it fences one node, not {} ({}); configure one device per node",
                    many.len(),
                    many.join(", ")
                )));
            }
        }
        let base = base_url(&redfish.url).map_err(|why| invalid(format!("`url`: {why}")))?;
        let systems = base
            .join(SYSTEMS)
            .map_err(|e| invalid(format!("`url`: {e}")))?;
        if redfish.username.is_empty()
            || redfish.username.contains(':')
            || redfish.username.chars().any(char::is_control)
        {
            return Err(invalid(
                "`username` must be non-empty, without `:` or control characters".to_owned(),
            ));
        }
        if let Some(id) = &redfish.system_id
            && (id.is_empty() || id.contains('/'))
        {
            return Err(invalid(
                "`system_id` must be a member id of the BMC's Systems collection (non-empty, no `/`)"
                    .to_owned(),
            ));
        }
        let timeout = device.timeout.get();
        // Built once: setting up a client loads the system's trust store
        // (150 ms measured on the testbed), which would delay every attempt.
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout.saturating_add(CLIENT_SLACK))
            .pool_idle_timeout(IDLE_CONNECTION)
            .tls_danger_accept_invalid_certs(redfish.insecure)
            .tls_danger_accept_invalid_hostnames(redfish.insecure)
            .build()
            .map_err(|e| invalid(format!("cannot set up the HTTP client: {}", chain(&e))))?;
        let dev = Self {
            name: device.name.clone(),
            base,
            systems,
            username: redfish.username.clone(),
            password_file: redfish.password_file.clone(),
            system_id: redfish.system_id.clone(),
            insecure: redfish.insecure,
            targets: device.targets.clone(),
            timeout,
            delay: device.delay.get(),
            client,
        };
        read_password(&dev.name, &dev.password_file)?;
        if dev.base.scheme() == "http" {
            tracing::warn!(
                device = %dev.name,
                url = %dev.base,
                "Redfish over plain http: the BMC password crosses the network unencrypted",
            );
        }
        Ok(dev)
    }

    /// The BMC's base URL (scheme, host and port).
    pub fn url(&self) -> &Url {
        &self.base
    }

    /// Time allowed for one attempt, every request included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The node this device fences (a one-element list).
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// One attempt, bounded by the device's timeout.
    async fn run(&self, target: &str) -> Result<(), FenceError> {
        if !self.can_fence(target) {
            return Err(FenceError::NotATarget {
                device: self.name.clone(),
                target: target.to_owned(),
            });
        }
        let started = Instant::now();
        tracing::info!(
            device = %self.name,
            node = target,
            url = %self.base,
            system_id = self.system_id.as_deref().unwrap_or("(the only one)"),
            timeout = ?self.timeout,
            "fencing through Redfish: ForceOff",
        );
        let mut progress = RedfishProgress::default();
        let outcome = tokio::time::timeout(self.timeout, self.attempt(&mut progress)).await;
        let elapsed = started.elapsed();
        match outcome {
            Ok(Ok(confirmed)) => {
                tracing::info!(
                    device = %self.name,
                    node = target,
                    system = %confirmed.system,
                    already_off = confirmed.already_off,
                    polls = confirmed.polls,
                    ?elapsed,
                    "Redfish confirmed the target off",
                );
                Ok(())
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    device = %self.name,
                    node = target,
                    ?elapsed,
                    error = %error,
                    "Redfish fencing failed",
                );
                Err(error)
            }
            Err(_elapsed) => {
                let error = FenceError::RedfishTimeout {
                    device: self.name.clone(),
                    target: target.to_owned(),
                    timeout: self.timeout,
                    progress: Box::new(progress),
                };
                tracing::warn!(
                    device = %self.name,
                    node = target,
                    error = %error,
                    "Redfish fencing timed out",
                );
                Err(error)
            }
        }
    }

    /// Power the system off and wait for `Off`, recording in `progress`
    /// what is being done (for the timeout's message).
    async fn attempt(&self, progress: &mut RedfishProgress) -> Result<Confirmed, FenceError> {
        progress.stage = format!("reading {}", self.password_file.display());
        let device = self.name.clone();
        let path = self.password_file.clone();
        let password = tokio::task::spawn_blocking(move || read_password(&device, &path))
            .await
            .map_err(|e| FenceError::PasswordFile {
                device: self.name.clone(),
                path: self.password_file.clone(),
                reason: format!("reading it failed: {e}"),
            })??;
        let session = Session {
            device: self,
            password,
        };

        progress.stage = format!("GET {}", self.systems);
        let collection = session.get(&self.systems).await?;
        let members =
            members(&collection).map_err(|reason| self.bad_answer(&self.systems, reason))?;
        let member = choose_system(&members, self.system_id.as_deref()).map_err(|reason| {
            FenceError::RedfishSystem {
                device: self.name.clone(),
                url: self.systems.to_string(),
                reason,
                members: members.iter().map(|m| m.id.clone()).collect(),
            }
        })?;
        let system = self.resolve(&self.systems, &member.odata_id)?;

        progress.stage = format!("GET {system}");
        let resource = session.get(&system).await?;
        let state = power_state(&resource);
        progress.power_state.clone_from(&state);
        if state.as_deref() == Some("Off") {
            tracing::info!(device = %self.name, %system, "the system is already off");
            return Ok(Confirmed {
                system,
                already_off: true,
                polls: 0,
            });
        }
        let action = reset_target(&resource).map_err(|reason| self.bad_answer(&system, reason))?;
        let reset = self.resolve(&system, &action)?;

        progress.stage = format!("POST {reset}");
        tracing::info!(
            device = %self.name,
            %system,
            power_state = state.as_deref().unwrap_or("unknown"),
            "sending ForceOff",
        );
        if let Err(refused) = session
            .post(&reset, &json!({ "ResetType": FORCE_OFF }))
            .await
        {
            // A BMC may refuse ForceOff for a system that went off in the
            // meantime; Off read back is still a confirmation.
            progress.stage = format!("GET {system} after the refused ForceOff");
            if let Ok(resource) = session.get(&system).await
                && power_state(&resource).as_deref() == Some("Off")
            {
                tracing::info!(
                    device = %self.name,
                    %system,
                    error = %refused,
                    "ForceOff was refused but the system is off",
                );
                return Ok(Confirmed {
                    system,
                    already_off: true,
                    polls: 1,
                });
            }
            return Err(refused);
        }

        let mut polls: u32 = 0;
        loop {
            progress.stage = format!("waiting for PowerState Off at {system}");
            polls = polls.saturating_add(1);
            match session.get(&system).await {
                Ok(resource) => {
                    let state = power_state(&resource);
                    tracing::debug!(
                        device = %self.name,
                        %system,
                        power_state = state.as_deref().unwrap_or("missing"),
                        polls,
                        "PowerState",
                    );
                    if state.as_deref() == Some("Off") {
                        return Ok(Confirmed {
                            system,
                            already_off: false,
                            polls,
                        });
                    }
                    progress.power_state = state;
                }
                Err(error) => {
                    // The BMC may stumble while the system powers off: keep
                    // asking until the timeout, and report the last error.
                    tracing::debug!(device = %self.name, %system, error = %error, "reading PowerState failed");
                    progress.last_error = Some(error.to_string());
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `reference` (an `@odata.id` or action target) made absolute against
    /// `from`; it must stay on the configured scheme, host and port.
    fn resolve(&self, from: &Url, reference: &str) -> Result<Url, FenceError> {
        let url = from
            .join(reference)
            .map_err(|e| self.bad_answer(from, format!("bad reference `{reference}`: {e}")))?;
        if url.origin() != self.base.origin() {
            return Err(self.bad_answer(
                from,
                format!(
                    "`{reference}` leads to another host or scheme than {}; refused so the credentials stay with the BMC",
                    self.base
                ),
            ));
        }
        Ok(url)
    }

    fn bad_answer(&self, url: &Url, reason: String) -> FenceError {
        FenceError::RedfishResponse {
            device: self.name.clone(),
            url: url.to_string(),
            reason,
        }
    }
}

impl Device for RedfishDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn can_fence(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t == target)
    }

    fn delay(&self) -> Duration {
        self.delay
    }

    fn fence_off<'a>(&'a self, target: &'a str) -> FenceFuture<'a> {
        Box::pin(self.run(target))
    }
}

impl fmt::Debug for RedfishDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is never held here; only the file's path is shown.
        f.debug_struct("RedfishDevice")
            .field("name", &self.name)
            .field("url", &self.base.as_str())
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("system_id", &self.system_id)
            .field("insecure", &self.insecure)
            .field("targets", &self.targets)
            .field("timeout", &self.timeout)
            .field("delay", &self.delay)
            .finish()
    }
}

/// A confirmed power-off.
struct Confirmed {
    system: Url,
    already_off: bool,
    polls: u32,
}

/// A password read from its file; shown nowhere.
struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// The requests of one attempt.
struct Session<'a> {
    device: &'a RedfishDevice,
    password: Password,
}

impl Session<'_> {
    /// `GET url` as JSON.
    async fn get(&self, url: &Url) -> Result<Value, FenceError> {
        let body = self.send(Method::GET, url, None).await?;
        serde_json::from_slice(&body).map_err(|e| {
            self.device
                .bad_answer(url, format!("the answer is not JSON: {e}"))
        })
    }

    /// `POST url` with a JSON body; any 2xx status is success.
    async fn post(&self, url: &Url, body: &Value) -> Result<(), FenceError> {
        self.send(Method::POST, url, Some(body)).await.map(drop)
    }

    /// Send one request; a non-2xx status is an error carrying the BMC's
    /// message.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, FenceError> {
        let method_name: &'static str = if method == Method::POST {
            "POST"
        } else {
            "GET"
        };
        let mut request = self
            .device
            .client
            .request(method, url.clone())
            .basic_auth(&self.device.username, Some(&self.password.0))
            .header(ACCEPT, "application/json")
            .header("OData-Version", "4.0");
        if let Some(body) = body {
            request = request.json(body);
        }
        let request_error = |e: reqwest::Error| FenceError::RedfishRequest {
            device: self.device.name.clone(),
            method: method_name,
            url: url.to_string(),
            reason: chain(&e.without_url()),
        };
        let mut response = request.send().await.map_err(request_error)?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(self.device.bad_answer(
                    url,
                    format!("the answer is larger than {MAX_BODY_BYTES} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(bytes);
        }
        let mut message = error_message(&bytes);
        if status.is_redirection() {
            let to = location.as_deref().unwrap_or("nowhere given");
            message = if message.is_empty() {
                format!("redirected to {to} (redirects are not followed; configure the final URL)")
            } else {
                format!("redirected to {to} (redirects are not followed): {message}")
            };
        } else if status == StatusCode::UNAUTHORIZED && message.is_empty() {
            message = format!(
                "user `{}` was refused (check the password file)",
                self.device.username
            );
        }
        Err(FenceError::RedfishStatus {
            device: self.device.name.clone(),
            method: method_name,
            url: url.to_string(),
            status: status.as_u16(),
            message,
        })
    }
}

/// A member of the `Systems` collection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    /// The last segment of its `@odata.id`.
    id: String,
    /// Its `@odata.id`.
    odata_id: String,
}

/// The members of a `Systems` collection.
fn members(collection: &Value) -> Result<Vec<Member>, String> {
    let list = collection
        .get("Members")
        .and_then(Value::as_array)
        .ok_or("the Systems collection has no `Members` list")?;
    list.iter()
        .map(|member| {
            let odata_id = member
                .get("@odata.id")
                .and_then(Value::as_str)
                .ok_or("a member of `Members` has no `@odata.id`")?;
            let id = odata_id
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            if id.is_empty() {
                return Err(format!("member `{odata_id}` has no id"));
            }
            Ok(Member {
                id: id.to_owned(),
                odata_id: odata_id.to_owned(),
            })
        })
        .collect()
}

/// The member to power off: the one named `wanted`, or the only one.
fn choose_system<'m>(members: &'m [Member], wanted: Option<&str>) -> Result<&'m Member, String> {
    match (wanted, members) {
        (Some(wanted), _) => members
            .iter()
            .find(|m| m.id == wanted)
            .ok_or_else(|| format!("no system `{wanted}` (system_id) on this BMC")),
        (None, [only]) => Ok(only),
        (None, []) => Err("the BMC lists no systems".to_owned()),
        (None, _) => Err(format!(
            "the BMC has {} systems; set `system_id` to the one this device powers off",
            members.len()
        )),
    }
}

/// The system's `PowerState`, if it reports one.
fn power_state(system: &Value) -> Option<String> {
    system
        .get("PowerState")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The target of the system's `#ComputerSystem.Reset` action, once it is
/// known to accept `ForceOff` (when the BMC lists what it accepts).
fn reset_target(system: &Value) -> Result<String, String> {
    let action = system
        .get("Actions")
        .and_then(|a| a.get("#ComputerSystem.Reset"))
        .ok_or("the system has no `Actions.#ComputerSystem.Reset`")?;
    let target = action
        .get("target")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("`#ComputerSystem.Reset` has no `target`")?;
    if let Some(allowed) = action.get("ResetType@Redfish.AllowableValues") {
        let allowed: Vec<&str> = allowed
            .as_array()
            .ok_or("`ResetType@Redfish.AllowableValues` is not a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !allowed.contains(&FORCE_OFF) {
            return Err(format!(
                "the BMC does not offer ResetType `{FORCE_OFF}` (it offers: {})",
                allowed.join(", ")
            ));
        }
    }
    Ok(target.to_owned())
}

/// A Redfish error body's message (`error.message` and the extended
/// information's messages), or the start of a non-JSON body.
fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(json) => {
            let error = json.get("error").unwrap_or(&json);
            let mut parts: Vec<String> = Vec::new();
            if let Some(message) = error.get("message").and_then(Value::as_str) {
                parts.push(message.trim().to_owned());
            }
            if let Some(infos) = error.get("@Message.ExtendedInfo").and_then(Value::as_array) {
                for info in infos {
                    if let Some(message) = info.get("Message").and_then(Value::as_str) {
                        let message = message.trim();
                        if !message.is_empty() && !parts.iter().any(|p| p == message) {
                            parts.push(message.to_owned());
                        }
                    }
                }
            }
            parts.retain(|p| !p.is_empty());
            parts.join("; ")
        }
        Err(_) => String::from_utf8_lossy(body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    truncate(text, MESSAGE_LIMIT)
}

/// `text` cut to at most `limit` bytes (on a character boundary), marked
/// `...` if cut.
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
}

/// The configured URL as scheme, host and port: `http(s)://host[:port]`,
/// with at most the service root (`/redfish/v1`) as path.
fn base_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!("`{url}` must start with https:// (or http://)"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "credentials in the URL are refused; use `username` and `password_file`".to_owned(),
        );
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("`{url}` must not have a query or fragment"));
    }
    let path = parsed.path().trim_end_matches('/');
    if !path.is_empty() && path != SERVICE_ROOT {
        return Err(format!(
            "`{url}`: give the BMC's address (`https://bmc[:port]`); the service root is always {SERVICE_ROOT}"
        ));
    }
    let mut base = parsed;
    base.set_path("/");
    Ok(base)
}

/// Read the password file: it must give no access to group or others
/// (mode `0600` or stricter, as the cluster key file), and hold a password
/// (surrounding whitespace trimmed).
fn read_password(device: &str, path: &Path) -> Result<Password, FenceError> {
    let refuse = |reason: String| FenceError::PasswordFile {
        device: device.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot open it: {e}")))?;
    // The mode of the file actually opened, not of whatever the path names
    // by the time it is checked.
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot read its mode: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".to_owned()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "readable by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(MAX_PASSWORD_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| refuse(format!("cannot read it: {e}")))?;
    if text.len() as u64 > MAX_PASSWORD_FILE {
        return Err(refuse(format!(
            "larger than {MAX_PASSWORD_FILE} bytes; it must hold only the password"
        )));
    }
    let password = text.trim();
    if password.is_empty() {
        return Err(refuse("empty".to_owned()));
    }
    Ok(Password(password.to_owned()))
}

fn wrong_kind(device: &conf::FenceDevice, kind: &'static str) -> FenceError {
    FenceError::WrongKind {
        device: device.name.clone(),
        kind,
    }
}

/// An error with its causes, `: `-separated, without repeats.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(odata_id: &str) -> Member {
        let m = members(&json!({ "Members": [{ "@odata.id": odata_id }] }))
            .unwrap_or_else(|e| panic!("{e}"));
        m.into_iter().next().unwrap_or_else(|| panic!("no member"))
    }

    #[test]
    fn redfish_member_ids_are_the_last_segment() {
        assert_eq!(
            member("/redfish/v1/Systems/System.Embedded.1").id,
            "System.Embedded.1"
        );
        assert_eq!(member("/redfish/v1/Systems/1/").id, "1");
        assert!(members(&json!({ "Members": [{}] })).is_err());
        assert!(members(&json!({})).is_err());
    }

    #[test]
    fn redfish_system_choice() {
        let one = vec![member("/redfish/v1/Systems/a")];
        let two = vec![
            member("/redfish/v1/Systems/a"),
            member("/redfish/v1/Systems/b"),
        ];
        assert_eq!(choose_system(&one, None).map(|m| m.id.as_str()), Ok("a"));
        assert_eq!(
            choose_system(&two, Some("b")).map(|m| m.id.as_str()),
            Ok("b")
        );
        let ambiguous = choose_system(&two, None).err().unwrap_or_default();
        assert!(
            ambiguous.contains("2 systems") && ambiguous.contains("system_id"),
            "{ambiguous}"
        );
        let unknown = choose_system(&one, Some("z")).err().unwrap_or_default();
        assert!(unknown.contains("`z`"), "{unknown}");
        assert!(choose_system(&[], None).is_err());
    }

    #[test]
    fn redfish_reset_target_checks_allowable_values() {
        let system = |allowed: Value| {
            json!({ "Actions": { "#ComputerSystem.Reset": {
                "target": "/x/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": allowed,
            }}})
        };
        assert_eq!(
            reset_target(&system(json!(["On", "ForceOff"]))),
            Ok("/x/Actions/ComputerSystem.Reset".to_owned())
        );
        let refused = reset_target(&system(json!(["On", "GracefulShutdown"])))
            .err()
            .unwrap_or_default();
        assert!(refused.contains("On, GracefulShutdown"), "{refused}");
        // No list: the POST's answer decides.
        let bare = json!({ "Actions": { "#ComputerSystem.Reset": { "target": "/t" }}});
        assert_eq!(reset_target(&bare), Ok("/t".to_owned()));
        assert!(reset_target(&json!({ "Actions": {} })).is_err());
        assert!(reset_target(&json!({ "Actions": { "#ComputerSystem.Reset": {} }})).is_err());
    }

    #[test]
    fn redfish_error_messages_from_bodies() {
        let body = json!({ "error": {
            "code": "Base.1.0.GeneralError",
            "message": "A general error has occurred.",
            "@Message.ExtendedInfo": [
                { "Message": "The action was refused." },
                { "Message": "A general error has occurred." }
            ]
        }});
        assert_eq!(
            error_message(body.to_string().as_bytes()),
            "A general error has occurred.; The action was refused."
        );
        assert_eq!(
            error_message(b"<html>\n  Bad   gateway </html>"),
            "<html> Bad gateway </html>"
        );
        assert_eq!(error_message(b""), "");
        let long = error_message("é".repeat(600).as_bytes());
        assert!(
            long.ends_with("...") && long.len() <= MESSAGE_LIMIT + 3,
            "{}",
            long.len()
        );
    }

    #[test]
    fn redfish_base_urls() {
        let ok = |u: &str| {
            base_url(u)
                .map(|u| u.to_string())
                .unwrap_or_else(|e| panic!("{u}: {e}"))
        };
        assert_eq!(ok("https://bmc.example"), "https://bmc.example/");
        assert_eq!(
            ok("https://bmc.example:8443/redfish/v1/"),
            "https://bmc.example:8443/"
        );
        assert_eq!(ok("http://[::1]:8000"), "http://[::1]:8000/");
        for bad in [
            "ftp://bmc",
            "https://admin:pw@bmc",
            "https://bmc/other",
            "https://bmc/?x=1",
            "not a url",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }
}
