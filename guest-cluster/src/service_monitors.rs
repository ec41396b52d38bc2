//! `kind = "tcp"`, `kind = "http"` and `kind = "pgsql"` monitors: checks
//! that a service answers, made from this daemon itself (no helper
//! program). Every check ends within the timeout it is given: the whole
//! check (name resolution, connecting, TLS, the request or query, reading
//! the answer) runs under one deadline, and a check abandoned at its
//! deadline leaves nothing running behind it.
//!
//! # `tcp`
//!
//! `address = "HOST:PORT"` (IPv6 literals in brackets, `[::1]:5432`). The
//! host is resolved (`/etc/hosts`, then DNS, as the system resolver does)
//! and each address it resolves to is tried in order until one accepts the
//! connection, which is then closed at once. The failure says why: the
//! address is malformed, the name cannot be resolved, the connection was
//! refused, or no connection was made in time.
//!
//! # `http`
//!
//! One `GET` of `url` (`http://` or `https://`, HTTP/1.1) per check, through
//! one client per monitor made when the monitor is built (a URL that does
//! not parse, or a client that cannot be set up, is refused then: the
//! daemon does not start):
//!
//! - **Redirects are not followed.** The monitor checks the URL it was
//!   given: a `301` is compared with `expect_status` like any other status
//!   (set `expect_status = 301` to check that a redirect is in place), and
//!   the failure message names the `Location` it points to so that the URL
//!   can be corrected. Following it could pass a check whose service is
//!   down behind a redirect to a maintenance page elsewhere.
//! - **No connection is reused** between checks (idle pool size 0), so
//!   each check proves the server still accepts connections; and **no
//!   proxy** is used (`HTTP_PROXY` and friends in the daemon's environment
//!   are ignored): the monitor watches this service, not a proxy.
//! - The status must equal `expect_status`. If `body_contains` is set, the
//!   body is read until the text is found, the body ends, or 1 MiB has been
//!   read ([`MAX_BODY`]); the text is searched as bytes, so the body need
//!   not be UTF-8. Without `body_contains` the body is not read.
//! - `https://` uses the system's OpenSSL and trust store (native-tls);
//!   `insecure = true` accepts any certificate and host name (a
//!   self-signed certificate), for the traffic this monitor sends only.
//!
//! # `pgsql`
//!
//! `connection` is a libpq-style connection string (`host=127.0.0.1
//! port=5432 user=monitor dbname=postgres`; a `host` starting with `/` is a
//! Unix socket directory). Each check opens a new session, runs `query`
//! with the simple query protocol (several statements are allowed; rows are
//! not looked at: an error fails the check) and closes the session. A
//! session is **not kept between checks**: each check then proves what a
//! client of the database needs (that the server accepts a new session:
//! not at `max_connections`, authentication working, the postmaster not
//! hung), nothing has to be repaired after an error, no backend is held on
//! the database between checks, and a changed password is read at the next
//! check. The cost is one backend start per check interval.
//!
//! - `password_file` holds the password (its trailing line ends are
//!   stripped), read at every check; it overrides a `password=` in
//!   `connection`. Like libpq's `.pgpass`, it must give no access to group
//!   or others (mode `0600` or stricter): otherwise the check fails and
//!   says so, without reading it.
//! - `application_name` defaults to `kvmha-monitor`, so the monitor's
//!   sessions can be told apart in `pg_stat_activity`.
//! - A query still running at the deadline (or when the engine drops the
//!   check) is cancelled on the server with a cancel request, so hung
//!   queries do not pile up in the database.
//! - TLS: `sslmode` is `prefer` (the default: TLS if the server offers it),
//!   `require` or `disable`, as in libpq. As libpq does in these modes, the
//!   server's certificate is **not verified**: the session is encrypted,
//!   not authenticated. `verify-ca` and `verify-full` are not supported by
//!   the client library yet: like any connection string it cannot parse,
//!   they are refused when the monitor is built (the daemon does not
//!   start).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use cluster_core::resource::{BoxFuture, CheckOutcome, MonitorDriver};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// The most body an `http` check reads looking for `body_contains`.
pub const MAX_BODY: usize = 1024 * 1024;
/// The `User-Agent` of `http` checks.
const USER_AGENT: &str = concat!("kvmha-monitor/", env!("CARGO_PKG_VERSION"));
/// The `application_name` of `pgsql` checks unless the connection string
/// sets one.
const PG_APPLICATION_NAME: &str = "kvmha-monitor";
/// How long a cancel request for an abandoned query may take.
const PG_CANCEL_LIMIT: Duration = Duration::from_secs(5);

/// The group and monitor a driver checks for, for the log.
#[derive(Clone, Debug)]
struct Labels {
    group: String,
    monitor: String,
}

impl Labels {
    fn new(group: &str, monitor: &str) -> Self {
        Self {
            group: group.to_owned(),
            monitor: monitor.to_owned(),
        }
    }

    /// Log how a check of `kind` ended and turn it into an outcome.
    fn outcome<E: fmt::Display>(&self, kind: &str, result: Result<(), E>) -> CheckOutcome {
        match result {
            Ok(()) => {
                tracing::trace!(group = %self.group, monitor = %self.monitor, kind, "check passed");
                CheckOutcome::Ok
            }
            Err(e) => {
                let message = e.to_string();
                tracing::debug!(
                    group = %self.group,
                    monitor = %self.monitor,
                    kind,
                    "check failed: {message}",
                );
                CheckOutcome::Failed(message)
            }
        }
    }
}

/// An error and its sources, `outer: inner: innermost`, skipping a source
/// whose text the line already holds.
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

// ---------------------------------------------------------------------------
// tcp

/// Why a `tcp` check failed.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The address is not `HOST:PORT`.
    #[error("`{address}` is not HOST:PORT ({why})")]
    BadAddress {
        /// As configured.
        address: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The name did not resolve.
    #[error("cannot resolve `{host}`: {source}")]
    Unresolvable {
        /// The host part.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The name resolved to nothing.
    #[error("cannot resolve `{host}`: it has no address")]
    NoAddress {
        /// The host part.
        host: String,
    },
    /// Resolving took the whole time.
    #[error("resolving `{host}` timed out after {timeout:?}")]
    ResolveTimedOut {
        /// The host part.
        host: String,
        /// The check's timeout.
        timeout: Duration,
    },
    /// No address accepted the connection.
    #[error("{}", join(.0))]
    Connect(Vec<ConnectError>),
}

/// Why one address of a `tcp` check did not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Something answered with a reset: nothing listens there.
    #[error("connection to {0} refused")]
    Refused(SocketAddr),
    /// No answer in time.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    TimedOut {
        /// The address.
        addr: SocketAddr,
        /// The check's timeout.
        timeout: Duration,
    },
    /// Any other error (network unreachable, ...).
    #[error("cannot connect to {addr}: {source}")]
    Other {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

fn join(errors: &[ConnectError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Split `HOST:PORT` (`[V6]:PORT` for IPv6 literals).
fn split_host_port(address: &str) -> Result<(&str, u16), TcpError> {
    let bad = |why| TcpError::BadAddress {
        address: address.to_owned(),
        why,
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("an IPv6 address in brackets needs `]:PORT` after it"))?;
        (host, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.contains(':') {
            return Err(bad("IPv6 addresses go in brackets: [ADDRESS]:PORT"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    Ok((host, port))
}

/// Connect to `address` by `deadline`, then close the connection.
pub async fn tcp_check(address: &str, timeout: Duration) -> Result<SocketAddr, TcpError> {
    let deadline = Instant::now() + timeout;
    let (host, port) = split_host_port(address)?;
    let addrs: Vec<SocketAddr> =
        match timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(source)) => {
                return Err(TcpError::Unresolvable {
                    host: host.to_owned(),
                    source,
                });
            }
            Err(_) => {
                return Err(TcpError::ResolveTimedOut {
                    host: host.to_owned(),
                    timeout,
                });
            }
        };
    if addrs.is_empty() {
        return Err(TcpError::NoAddress {
            host: host.to_owned(),
        });
    }
    let mut errors = Vec::new();
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                drop(stream);
                return Ok(addr);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                errors.push(ConnectError::Refused(addr));
            }
            Ok(Err(source)) => errors.push(ConnectError::Other { addr, source }),
            Err(_) => {
                // The deadline has passed: no time for further addresses.
                errors.push(ConnectError::TimedOut { addr, timeout });
                break;
            }
        }
    }
    Err(TcpError::Connect(errors))
}

/// Driver of one `kind = "tcp"` monitor.
#[derive(Debug)]
pub struct TcpMonitorDriver {
    address: String,
    labels: Labels,
}

impl TcpMonitorDriver {
    /// A driver for the tcp monitor `monitor` of `group`.
    pub fn new(group: &str, monitor: &str, config: &conf::TcpMonitor) -> Self {
        Self {
            address: config.address.clone(),
            labels: Labels::new(group, monitor),
        }
    }
}

impl MonitorDriver for TcpMonitorDriver {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let result = tcp_check(&self.address, timeout).await.map(|_| ());
            self.labels.outcome("tcp", result)
        })
    }
}

// ---------------------------------------------------------------------------
// http

/// Why an `http` or `pgsql` monitor cannot be built: its configuration
/// cannot be used (refused when the daemon starts).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// Why an `http` check failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request did not get a response.
    #[error("request failed: {0}")]
    Request(String),
    /// No complete answer in time.
    #[error("no answer within {0:?} (timed out)")]
    TimedOut(Duration),
    /// The status was not the expected one.
    #[error("status {status}, expected {expected}{}", redirect_note(.location.as_deref()))]
    Status {
        /// What came back.
        status: reqwest::StatusCode,
        /// `expect_status`.
        expected: u16,
        /// The `Location` header, for redirects.
        location: Option<String>,
    },
    /// Reading the body failed.
    #[error("reading the body failed: {0}")]
    Body(String),
    /// The body does not hold `body_contains`.
    #[error("the body does not contain {needle:?} ({read} bytes read{})",
        if *.truncated { ", the most that is read" } else { ", the whole body" })]
    Missing {
        /// `body_contains`.
        needle: String,
        /// Bytes read.
        read: usize,
        /// Reading stopped at [`MAX_BODY`].
        truncated: bool,
    },
}

fn redirect_note(location: Option<&str>) -> String {
    location.map_or_else(String::new, |l| {
        format!(" (a redirect to {l}, which is not followed)")
    })
}

/// What a built `http` monitor needs at each check.
#[derive(Debug)]
struct HttpReady {
    client: reqwest::Client,
    url: reqwest::Url,
}

/// Driver of one `kind = "http"` monitor.
#[derive(Debug)]
pub struct HttpMonitorDriver {
    ready: HttpReady,
    expect_status: u16,
    body_contains: Option<String>,
    labels: Labels,
}

impl HttpMonitorDriver {
    /// A driver for the http monitor `monitor` of `group`; a URL that
    /// cannot be parsed, or an HTTP client that cannot be set up (TLS), is
    /// an error.
    pub fn new(group: &str, monitor: &str, config: &conf::HttpMonitor) -> Result<Self, SetupError> {
        Ok(Self {
            ready: http_ready(config).map_err(SetupError)?,
            expect_status: config.expect_status,
            body_contains: config.body_contains.clone(),
            labels: Labels::new(group, monitor),
        })
    }

    async fn run(&self, timeout: Duration) -> Result<(), HttpError> {
        let ready = &self.ready;
        let request = async {
            let mut response = ready
                .client
                .get(ready.url.clone())
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| request_error(e, timeout))?;
            let status = response.status();
            if status.as_u16() != self.expect_status {
                let location = status
                    .is_redirection()
                    .then(|| response.headers().get(reqwest::header::LOCATION))
                    .flatten()
                    .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
                return Err(HttpError::Status {
                    status,
                    expected: self.expect_status,
                    location,
                });
            }
            let Some(needle) = self.body_contains.as_deref() else {
                return Ok(());
            };
            let mut body = Vec::new();
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) if e.is_timeout() => return Err(HttpError::TimedOut(timeout)),
                    Err(e) => return Err(HttpError::Body(chain(&e.without_url()))),
                };
                // Search only where the new bytes can complete a match.
                let from = body.len().saturating_sub(needle.len().saturating_sub(1));
                let room = MAX_BODY - body.len();
                body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&chunk));
                if contains(body.get(from..).unwrap_or(&[]), needle.as_bytes()) {
                    return Ok(());
                }
                if body.len() >= MAX_BODY {
                    return Err(HttpError::Missing {
                        needle: needle.to_owned(),
                        read: body.len(),
                        truncated: true,
                    });
                }
            }
            Err(HttpError::Missing {
                needle: needle.to_owned(),
                read: body.len(),
                truncated: false,
            })
        };
        tokio::time::timeout(timeout, request)
            .await
            .unwrap_or(Err(HttpError::TimedOut(timeout)))
    }
}

fn http_ready(config: &conf::HttpMonitor) -> Result<HttpReady, String> {
    let url = reqwest::Url::parse(&config.url)
        .map_err(|e| format!("the url `{}` is not valid: {e}", config.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the url `{}` is not http:// or https://",
            config.url
        ));
    }
    let client = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .tls_danger_accept_invalid_certs(config.insecure)
        .tls_danger_accept_invalid_hostnames(config.insecure)
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {}", chain(&e)))?;
    Ok(HttpReady { client, url })
}

fn request_error(e: reqwest::Error, timeout: Duration) -> HttpError {
    if e.is_timeout() {
        HttpError::TimedOut(timeout)
    } else {
        // Without the URL: it may hold credentials, and the monitor's
        // name already says which URL this is.
        HttpError::Request(chain(&e.without_url()))
    }
}

/// `needle` occurs in `haystack` (an empty needle always does).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl MonitorDriver for HttpMonitorDriver {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let result = self.run(timeout).await;
            self.labels.outcome("http", result)
        })
    }
}

// ---------------------------------------------------------------------------
// pgsql

/// Why the password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// It could not be opened or read.
    #[error("cannot read the password file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Group or others have access to it.
    #[error(
        "the password file {} has mode {mode:04o}: it must give no access to group or others \
         (chmod 600); refusing to use it", .path.display()
    )]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It holds no password.
    #[error("the password file {} is empty", .path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Read the password in `path`: the file must give no access to group or
/// others; trailing line ends are stripped.
pub async fn read_password_file(path: &Path) -> Result<Vec<u8>, PasswordFileError> {
    let read = |source| PasswordFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read)?;
    // The mode of the file opened, not of whatever the path names later.
    let mode = file.metadata().await.map_err(read)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PasswordFileError::NotPrivate {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.map_err(read)?;
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(PasswordFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Why a `pgsql` check failed.
#[derive(Debug, thiserror::Error)]
pub enum PgsqlError {
    /// The password file.
    #[error(transparent)]
    Password(#[from] PasswordFileError),
    /// No session could be opened.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The query failed.
    #[error("the query failed: {0}")]
    Query(String),
    /// The session ended under the query.
    #[error("the connection failed during the query: {0}")]
    Connection(String),
    /// The check did not end in time.
    #[error("{phase} timed out after {timeout:?}")]
    TimedOut {
        /// What was under way.
        phase: &'static str,
        /// The check's timeout.
        timeout: Duration,
    },
}

/// A PostgreSQL error as the server said it (`FATAL 28P01: password
/// authentication failed for user "x"`), or the client's error chain.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(" (");
                text.push_str(detail);
                text.push(')');
            }
            text
        }
        None => chain(e),
    }
}

/// Sends a cancel request for the running query when dropped armed: the
/// check was abandoned (its deadline, or the engine dropped it).
struct CancelOnDrop {
    token: Option<tokio_postgres::CancelToken>,
    tls: postgres_native_tls::MakeTlsConnector,
    labels: Labels,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.token = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tls = self.tls.clone();
        let labels = self.labels.clone();
        runtime.spawn(async move {
            match tokio::time::timeout(PG_CANCEL_LIMIT, token.cancel_query(tls)).await {
                Ok(Ok(())) => tracing::debug!(
                    group = %labels.group,
                    monitor = %labels.monitor,
                    "cancelled the abandoned query",
                ),
                Ok(Err(e)) => tracing::warn!(
                    group = %labels.group,
                    monitor = %labels.monitor,
                    "cannot cancel the abandoned query: {}",
                    pg_message(&e),
                ),
                Err(_) => tracing::warn!(
                    group = %labels.group,
                    monitor = %labels.monitor,
                    "cannot cancel the abandoned query: no answer within {PG_CANCEL_LIMIT:?}",
                ),
            }
        });
    }
}

/// What a built `pgsql` monitor needs at each check.
#[derive(Clone)]
struct PgReady {
    config: tokio_postgres::Config,
    tls: postgres_native_tls::MakeTlsConnector,
}

impl fmt::Debug for PgReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Config`'s Debug hides the password.
        f.debug_struct("PgReady")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Driver of one `kind = "pgsql"` monitor.
#[derive(Debug)]
pub struct PgsqlMonitorDriver {
    ready: PgReady,
    password_file: Option<PathBuf>,
    query: String,
    labels: Labels,
}

impl PgsqlMonitorDriver {
    /// A driver for the pgsql monitor `monitor` of `group`; a connection
    /// string the client library cannot parse (or TLS that cannot be set
    /// up) is an error.
    pub fn new(
        group: &str,
        monitor: &str,
        config: &conf::PgsqlMonitor,
    ) -> Result<Self, SetupError> {
        Ok(Self {
            ready: pg_ready(&config.connection).map_err(SetupError)?,
            password_file: config.password_file.clone(),
            query: config.query.clone(),
            labels: Labels::new(group, monitor),
        })
    }

    async fn run(&self, timeout: Duration) -> Result<(), PgsqlError> {
        let deadline = Instant::now() + timeout;
        let ready = &self.ready;
        let mut config = ready.config.clone();
        if let Some(path) = &self.password_file {
            let password = timeout_at(deadline, read_password_file(path))
                .await
                .map_err(|_| PgsqlError::TimedOut {
                    phase: "reading the password file",
                    timeout,
                })??;
            config.password(password);
        }
        let (client, connection) = timeout_at(deadline, config.connect(ready.tls.clone()))
            .await
            .map_err(|_| PgsqlError::TimedOut {
                phase: "connecting",
                timeout,
            })?
            .map_err(|e| PgsqlError::Connect(pg_message(&e)))?;
        let mut cancel = CancelOnDrop {
            token: Some(client.cancel_token()),
            tls: ready.tls.clone(),
            labels: self.labels.clone(),
        };
        let mut connection = std::pin::pin!(connection);
        let result = {
            let query = client.simple_query(&self.query);
            let both = async {
                tokio::select! {
                    r = query => r.map(|_| ()).map_err(|e| PgsqlError::Query(pg_message(&e))),
                    r = &mut connection => Err(PgsqlError::Connection(match r {
                        Ok(()) => "the server closed the connection".to_owned(),
                        Err(e) => pg_message(&e),
                    })),
                }
            };
            timeout_at(deadline, both)
                .await
                .unwrap_or(Err(PgsqlError::TimedOut {
                    phase: "the query",
                    timeout,
                }))
        };
        if !matches!(result, Err(PgsqlError::TimedOut { .. })) {
            // The query is over: nothing to cancel.
            cancel.disarm();
        }
        drop(cancel);
        // Dropping the client makes the connection send `Terminate` and
        // end; it is given what is left of the time to do so.
        drop(client);
        if timeout_at(deadline, &mut connection).await.is_err() {
            tracing::debug!(
                group = %self.labels.group,
                monitor = %self.labels.monitor,
                "the session did not close in time; dropping it",
            );
        }
        result
    }
}

fn pg_ready(connection: &str) -> Result<PgReady, String> {
    let mut config = tokio_postgres::Config::from_str(connection).map_err(|e| {
        let mut text = format!("the connection string is not valid: {}", chain(&e));
        if connection.contains("verify-") {
            text.push_str(" (sslmode verify-ca and verify-full are not supported)");
        }
        text
    })?;
    if config.get_application_name().is_none() {
        config.application_name(PG_APPLICATION_NAME);
    }
    Ok(PgReady {
        config,
        tls: PG_TLS.clone()?,
    })
}

/// The TLS connector of every `pgsql` monitor (they all use the same
/// settings; building one loads the system's trust store). As libpq with
/// `sslmode=prefer` or `require`: encrypted, not verified.
static PG_TLS: LazyLock<Result<postgres_native_tls::MakeTlsConnector, String>> =
    LazyLock::new(|| {
        native_tls::TlsConnector::builder()
            .danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true)
            .build()
            .map(postgres_native_tls::MakeTlsConnector::new)
            .map_err(|e| format!("cannot set up TLS: {}", chain(&e)))
    });

impl MonitorDriver for PgsqlMonitorDriver {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let result = self.run(timeout).await;
            self.labels.outcome("pgsql", result)
        })
    }
}

#[cfg(test)]
mod tests;
