//! The control API: one request type for every front end (`clusterctl`,
//! the management address, later the web page), carried as HTTP/1.1 over a
//! Unix socket that only root can open and, when `api.listen` is set, over
//! TCP behind a bearer token.
//!
//! Routes (the same on both):
//!
//! - `POST /v1/request`: any [`Request`] as JSON, answered with a
//!   [`Response`];
//! - `GET /v1/status`: [`Request::Status`];
//! - `GET /v1/events?since_ms=N&limit=N`: [`Request::Events`].
//!
//! A refusal is an [`ApiError`] (JSON `{"kind": ..., "message": ...}`) with
//! the HTTP status of its [`ApiErrorKind`]; [`call`] and [`call_url`] turn
//! it back into [`ClientError::Refused`].

use std::collections::VecDeque;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::status::NodeStatus;

/// The most events one answer carries (the newest ones).
pub const MAX_EVENTS: usize = 10_000;
/// The largest request body a server accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client waits for a whole answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in flight may take to finish once shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a client can ask a daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's view of the cluster.
    Status,
    /// The daemon's event log (`STATE_DIR/events.jsonl`).
    Events {
        /// Only events with `ts_ms` at or after this time (ms since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_ms: Option<u64>,
        /// Only the last this many (after `since_ms`); at most [`MAX_EVENTS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Start a group (on its most preferred available node).
    GroupStart {
        /// The group.
        group: String,
    },
    /// Stop a group and keep it stopped.
    GroupStop {
        /// The group.
        group: String,
    },
    /// Move a group to `node`, or to the next node of its preference list.
    GroupMove {
        /// The group.
        group: String,
        /// The node to move it to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// Forget a group's failures (failed state, restart counts, bans).
    Clear {
        /// The group.
        group: String,
    },
    /// Host clusters: power off (or reboot) the VM of the linked guest
    /// `peer` on behalf of the linked guest `requester`, as a guest cluster
    /// asks over the linkage. Refused unless both are listed in
    /// `[[linkage.guests]]` with the same `cluster` and differ. Answered
    /// with [`Response::GuestFenced`] only once the VM is confirmed off.
    FenceGuest {
        /// The guest asking (its node name in its guest cluster).
        requester: String,
        /// The guest to fence (its node name in the same guest cluster).
        peer: String,
        /// Off, or off and then started again.
        #[serde(default)]
        action: GuestFenceAction,
    },
    /// Put the daemon's own node in maintenance (`on`: its groups move
    /// away; a host first has its guests hand their applications over and
    /// shuts them down after) or take it out. Answered with
    /// [`Response::Accepted`] at once; the procedure's steps appear in
    /// status (`maintenance`) until it is done or `timeout_ms` passed.
    Maintenance {
        /// Into maintenance, or out of it.
        on: bool,
        /// Bound on the whole procedure.
        #[serde(default = "default_maintenance_timeout_ms")]
        timeout_ms: u64,
    },
}

/// Default bound of a maintenance procedure: 10 minutes.
pub const DEFAULT_MAINTENANCE_TIMEOUT_MS: u64 = 600_000;

fn default_maintenance_timeout_ms() -> u64 {
    DEFAULT_MAINTENANCE_TIMEOUT_MS
}

/// What [`Request::FenceGuest`] does to the peer's VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestFenceAction {
    /// Destroy the VM (power off) and confirm it is off.
    #[default]
    Off,
    /// Destroy it, confirm it is off, then start it again.
    Reboot,
}

impl std::fmt::Display for GuestFenceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Reboot => "reboot",
        })
    }
}

/// What an operator asks of one group: the group requests of [`Request`]
/// without their group name, so that a daemon handles them in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupCommand {
    /// [`Request::GroupStart`].
    Start,
    /// [`Request::GroupStop`].
    Stop,
    /// [`Request::GroupMove`].
    Move {
        /// The target node, if one was named.
        node: Option<String>,
    },
    /// [`Request::Clear`].
    Clear,
}

impl std::fmt::Display for GroupCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start => f.write_str("start"),
            Self::Stop => f.write_str("stop"),
            Self::Move { node: Some(n) } => write!(f, "move to {n}"),
            Self::Move { node: None } => f.write_str("move"),
            Self::Clear => f.write_str("clear"),
        }
    }
}

impl Request {
    /// The group and command of a group request; `None` for the others.
    pub fn group_command(&self) -> Option<(&str, GroupCommand)> {
        match self {
            Self::Status
            | Self::Events { .. }
            | Self::FenceGuest { .. }
            | Self::Maintenance { .. } => None,
            Self::GroupStart { group } => Some((group, GroupCommand::Start)),
            Self::GroupStop { group } => Some((group, GroupCommand::Stop)),
            Self::GroupMove { group, node } => {
                Some((group, GroupCommand::Move { node: node.clone() }))
            }
            Self::Clear { group } => Some((group, GroupCommand::Clear)),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Box<NodeStatus>),
    /// Answer to [`Request::Events`]: the event objects, oldest first.
    /// On the wire `{"response": "events", "events": [...]}`.
    Events(#[serde(with = "events_field")] Vec<Value>),
    /// A command was accepted (group requests).
    Accepted {
        /// What will happen, for the operator.
        message: String,
    },
    /// Answer to [`Request::FenceGuest`]: the peer's VM is confirmed off
    /// (a fence that is not confirmed is an [`ApiError`], never this).
    GuestFenced {
        /// The fenced guest.
        peer: String,
        /// Its libvirt domain.
        domain: String,
        /// The host that answered.
        host: String,
        /// What was asked.
        action: GuestFenceAction,
        /// Confirmed off (always `true` here; kept for the linkage's
        /// `FenceResult`).
        off: bool,
        /// From the request to the confirmation, in milliseconds.
        elapsed_ms: u64,
        /// What was done and what happens to the VM next, for the operator.
        message: String,
    },
}

/// An internally tagged newtype variant cannot hold a sequence: the events
/// travel as the one field `events` next to the tag.
mod events_field {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    #[derive(Serialize)]
    struct Out<'a> {
        events: &'a [Value],
    }

    #[derive(Deserialize)]
    struct In {
        events: Vec<Value>,
    }

    pub(super) fn serialize<S: Serializer>(events: &[Value], s: S) -> Result<S::Ok, S::Error> {
        Out { events }.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
        In::deserialize(d).map(|i| i.events)
    }
}

/// What a daemon plugs into the API server.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request.
    fn handle(&self, request: Request) -> impl Future<Output = Result<Response, ApiError>> + Send;
}

/// Why a request was refused; decides the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorKind {
    /// The request is malformed or not possible as asked (400).
    BadRequest,
    /// No or a wrong bearer token on the management address (401).
    Unauthorized,
    /// It names a group, node or route that does not exist (404).
    NotFound,
    /// The daemon cannot answer now; asking again later may work (503).
    Unavailable,
    /// This version of the daemon cannot do it (501).
    NotImplemented,
    /// Something failed inside the daemon (500).
    Internal,
}

impl ApiErrorKind {
    /// The HTTP status this kind is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The kind of an HTTP error status (for answers without an
    /// [`ApiError`] body, such as from a proxy in front).
    pub fn from_status(status: u16) -> Self {
        match status {
            401 | 403 => Self::Unauthorized,
            404 => Self::NotFound,
            501 => Self::NotImplemented,
            502..=504 => Self::Unavailable,
            400..=499 => Self::BadRequest,
            _ => Self::Internal,
        }
    }
}

/// A request the daemon could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ApiError {
    /// Why (and so the HTTP status).
    pub kind: ApiErrorKind,
    /// What went wrong, for the operator.
    pub message: String,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// [`ApiErrorKind::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::BadRequest, message)
    }

    /// [`ApiErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::NotFound, message)
    }

    /// [`ApiErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::Unavailable, message)
    }

    /// [`ApiErrorKind::NotImplemented`].
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::NotImplemented, message)
    }

    /// [`ApiErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::Internal, message)
    }

    /// The answer to group requests while this version has no group engine.
    pub fn group_commands_unavailable() -> Self {
        Self::not_implemented("`group` commands are not available in this version yet")
    }

    /// The error an answer with HTTP status `status` and `body` stands for:
    /// the [`ApiError`] in the body, or one made from the status and text.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Wire {
            kind: Option<ApiErrorKind>,
            message: String,
        }
        match serde_json::from_slice::<Wire>(body) {
            Ok(w) => Self::new(
                w.kind.unwrap_or_else(|| ApiErrorKind::from_status(status)),
                w.message,
            ),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(200).collect();
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error");
                let message = if text.is_empty() {
                    format!("HTTP {status} {reason}")
                } else {
                    format!("HTTP {status} {reason}: {text}")
                };
                Self::new(ApiErrorKind::from_status(status), message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        (self.kind.status(), Json(self)).into_response()
    }
}

/// Check a group request against the configuration: the group must exist
/// ([`ApiErrorKind::NotFound`], naming the configured groups), and a move's
/// target node must exist and be one of the group's nodes.
pub fn check_group_command(
    config: &conf::Config,
    group: &str,
    command: &GroupCommand,
) -> Result<(), ApiError> {
    let Some(g) = config.group(group) else {
        let names: Vec<&str> = config.groups.iter().map(|g| g.name.as_str()).collect();
        return Err(ApiError::not_found(if names.is_empty() {
            format!("no group named `{group}`: this cluster has no groups")
        } else {
            format!(
                "no group named `{group}` (configured groups: {})",
                names.join(", ")
            )
        }));
    };
    if let GroupCommand::Move { node: Some(node) } = command {
        if config.node(node).is_none() {
            let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(ApiError::not_found(format!(
                "no node named `{node}` (nodes: {})",
                names.join(", ")
            )));
        }
        if !g.nodes.contains(node) {
            return Err(ApiError::bad_request(format!(
                "group `{group}` may not run on `{node}` (its nodes: {})",
                g.nodes.join(", ")
            )));
        }
    }
    Ok(())
}

/// The events in the JSON-lines file `path` with `ts_ms >= since_ms`, the
/// last `limit` of them (at most [`MAX_EVENTS`]), oldest first. A missing
/// file has no events; lines that are not JSON objects (a line being
/// written) are skipped, and so are lines without `ts_ms` when `since_ms`
/// is given.
pub fn read_events(
    path: &Path,
    since_ms: Option<u64>,
    limit: Option<usize>,
) -> std::io::Result<Vec<Value>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let limit = limit.unwrap_or(MAX_EVENTS).min(MAX_EVENTS);
    let mut out = VecDeque::new();
    if limit == 0 {
        return Ok(Vec::new());
    }
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line?;
        let Ok(event @ Value::Object(_)) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        if let Some(since) = since_ms
            && event["ts_ms"].as_u64().is_none_or(|t| t < since)
        {
            continue;
        }
        if out.len() == limit {
            out.pop_front();
        }
        out.push_back(event);
    }
    Ok(out.into())
}

/// [`Request::Events`] answered from the event log at `path` (read off the
/// async threads).
pub async fn events_response(
    path: PathBuf,
    since_ms: Option<u64>,
    limit: Option<usize>,
) -> Result<Response, ApiError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || read_events(&path, since_ms, limit))
        .await
        .map_err(|e| ApiError::internal(format!("reading the event log failed: {e}")))?
        .map(Response::Events)
        .map_err(|e| ApiError::internal(format!("cannot read the event log {shown}: {e}")))
}

/// The bearer token of the management address, kept as its SHA-256 so that
/// comparing takes the same time whatever is presented.
#[derive(Clone)]
pub struct ApiToken([u8; 32]);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// A token; it must be non-empty printable ASCII without spaces.
    pub fn new(token: &str) -> Result<Self, &'static str> {
        cluster_witness::token::check_token(token)?;
        Ok(Self(Sha256::digest(token.as_bytes()).into()))
    }

    /// The token in `path` (which must be private to its owner).
    pub fn read(path: &Path) -> Result<Self, cluster_witness::TokenError> {
        let token = cluster_witness::read_token_file(path)?;
        Self::new(&token).map_err(|reason| cluster_witness::TokenError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    fn accepts(&self, presented: &str) -> bool {
        cluster_witness::token::check_token(presented).is_ok()
            && bool::from(
                Sha256::digest(presented.as_bytes())
                    .as_slice()
                    .ct_eq(&self.0),
            )
    }
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be created.
    #[error("cannot listen on {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A management address could not be bound.
    #[error("cannot listen on the management address {addr} (api.listen)")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `api.listen` is set without `api.token_file`.
    #[error("api.listen is set but api.token_file is not: the management address needs a token")]
    NoToken,
    /// The token file is not usable.
    #[error("the management address's token (api.token_file)")]
    Token(#[source] cluster_witness::TokenError),
    /// `api.tls` is set.
    #[error(
        "api.tls is set, but TLS on the management address is not supported yet: \
         remove [api.tls], listen on a local address and put a TLS terminator \
         (nginx, haproxy, stunnel...) in front of it"
    )]
    TlsUnsupported,
    /// The server stopped on an I/O error.
    #[error("API server failed")]
    Serve(#[source] std::io::Error),
}

/// The control API's listeners: every management address, bound, and the
/// Unix socket, bound when serving starts (so that the socket appears only
/// once the daemon is ready to answer).
#[derive(Debug)]
pub struct Listeners {
    unix: Option<PathBuf>,
    tcp: Vec<(SocketAddr, TcpListener)>,
    token: Option<ApiToken>,
}

impl Listeners {
    /// Bind the management addresses of `api` (`listen`, with the token of
    /// `token_file`) and remember the control socket `socket`. Fails, naming
    /// the address or file, on anything that keeps an address from working,
    /// and on `api.tls`, which is not supported yet. Run it before the
    /// daemon starts anything else, so that a bad setting is a start-up
    /// error.
    pub fn bind(api: &conf::ApiSection, socket: &Path) -> Result<Self, ServeError> {
        if api.tls.is_some() {
            return Err(ServeError::TlsUnsupported);
        }
        let token = if api.listen.is_empty() {
            None
        } else {
            let path = api.token_file.as_deref().ok_or(ServeError::NoToken)?;
            Some(ApiToken::read(path).map_err(ServeError::Token)?)
        };
        let tcp = cluster_witness::bind_all(&api.listen)
            .map_err(|e| ServeError::BindTcp {
                addr: e.addr,
                source: e.source,
            })?
            .into_iter()
            .zip(api.listen.iter().copied())
            .map(|(listener, addr)| (addr, listener))
            .collect();
        Ok(Self {
            unix: Some(socket.to_owned()),
            tcp,
            token,
        })
    }

    /// The management addresses bound (with the port the system chose for
    /// port 0).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .map(|(addr, l)| l.local_addr().unwrap_or(*addr))
            .collect()
    }

    /// Create the control socket (replacing a stale one from an earlier
    /// run; mode 0600), then serve `handler` on every listener until
    /// `shutdown` resolves, and let requests in flight finish (for at most
    /// [`DRAIN_TIMEOUT`]). Returns early with an error if a listener fails.
    pub async fn serve<H: Handler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let graceful = move || {
            let mut stopped = stopped.clone();
            async move {
                // An error means the sender is gone: stop as well.
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let unix = self.unix.as_deref().map(bind_unix).transpose()?;
        let mut servers = tokio::task::JoinSet::new();
        let app = routes(Arc::clone(&handler));
        if let Some(unix) = unix {
            servers.spawn(
                axum::serve(unix, app.clone())
                    .with_graceful_shutdown(graceful())
                    .into_future(),
            );
        }
        if !self.tcp.is_empty() {
            let token = self.token.ok_or(ServeError::NoToken)?;
            let app = tcp_routes(handler, token);
            for (addr, listener) in self.tcp {
                if !addr.ip().is_loopback() {
                    tracing::warn!(
                        %addr,
                        "the management address is plain HTTP: the bearer token travels in clear \
                         unless a TLS terminator is in front"
                    );
                }
                servers.spawn(
                    axum::serve(listener, app.clone())
                        .with_graceful_shutdown(graceful())
                        .into_future(),
                );
            }
        }
        tokio::select! {
            () = shutdown => {}
            Some(done) = servers.join_next() => {
                done.map_err(|e| ServeError::Serve(std::io::Error::other(e)))?
                    .map_err(ServeError::Serve)?;
                return Err(ServeError::Serve(std::io::Error::other(
                    "a listener stopped unexpectedly",
                )));
            }
        }
        stop.send_replace(true);
        let drain = async {
            while let Some(done) = servers.join_next().await {
                done.map_err(|e| ServeError::Serve(std::io::Error::other(e)))?
                    .map_err(ServeError::Serve)?;
            }
            Ok::<(), ServeError>(())
        };
        match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    "API requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway"
                );
                Ok(())
            }
        }
    }
}

fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    }
    Ok(listener)
}

/// Serve `handler` on the Unix socket `path` until `shutdown` resolves. A
/// stale socket file from an earlier run is replaced; the socket is made
/// accessible to its owner only.
pub async fn serve_unix<H: Handler>(
    path: &Path,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listeners = Listeners {
        unix: Some(path.to_owned()),
        tcp: Vec::new(),
        token: None,
    };
    listeners.serve(handler, shutdown).await
}

/// Serve `handler` on the management address `addr` until `shutdown`
/// resolves; every request must carry `Authorization: Bearer <token>`.
pub async fn serve_tcp<H: Handler>(
    addr: SocketAddr,
    token: ApiToken,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = cluster_witness::bind_all(&[addr])
        .map_err(|e| ServeError::BindTcp {
            addr: e.addr,
            source: e.source,
        })?
        .into_iter()
        .map(|l| (addr, l))
        .collect();
    let listeners = Listeners {
        unix: None,
        tcp: listener,
        token: Some(token),
    };
    listeners.serve(handler, shutdown).await
}

/// The routes of the control socket.
fn routes<H: Handler>(handler: Arc<H>) -> Router {
    Router::new()
        .route("/v1/request", post(request::<H>))
        .route("/v1/status", get(status::<H>))
        .route("/v1/events", get(events::<H>))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(handler)
}

/// The routes of a management address: those of the socket, every one
/// (unknown paths included) behind the bearer token.
fn tcp_routes<H: Handler>(handler: Arc<H>, token: ApiToken) -> Router {
    routes(handler).layer(middleware::from_fn_with_state(
        Arc::new(token),
        require_token,
    ))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

async fn request<H: Handler>(
    State(handler): State<Arc<H>>,
    body: Bytes,
) -> Result<Json<Response>, ApiError> {
    let request: Request = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a request: {e}")))?;
    handler.handle(request).await.map(Json)
}

async fn status<H: Handler>(State(handler): State<Arc<H>>) -> Result<Json<Response>, ApiError> {
    handler.handle(Request::Status).await.map(Json)
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    since_ms: Option<u64>,
    limit: Option<usize>,
}

async fn events<H: Handler>(
    State(handler): State<Arc<H>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Response>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    handler
        .handle(Request::Events {
            since_ms: q.since_ms,
            limit: q.limit,
        })
        .await
        .map(Json)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

async fn require_token(
    State(token): State<Arc<ApiToken>>,
    request: axum::extract::Request,
    next: Next,
) -> HttpResponse {
    let message = match bearer(request.headers()) {
        Some(presented) if token.accepts(presented) => return next.run(request).await,
        Some(_) => "wrong bearer token",
        None => "missing bearer token (Authorization: Bearer <token>)",
    };
    tracing::warn!(uri = %request.uri(), "management API: {message}");
    let mut response = ApiError::new(ApiErrorKind::Unauthorized, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Why a request to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("cannot reach the daemon at {} ({})", path.display(), connect_hint(source))]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange on the socket failed.
    #[error("the daemon at {} did not answer", path.display())]
    Http {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The management address is not a usable URL, or the token is not.
    #[error("management address {url}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The management address could not be reached or did not answer.
    #[error("cannot reach the daemon at {url}{}", if *timed_out { " (timed out)" } else { "" })]
    Unreachable {
        /// The URL.
        url: String,
        /// Whether the request timed out.
        timed_out: bool,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// No answer within [`CLIENT_TIMEOUT`].
    #[error("the daemon at {endpoint} did not answer within {:?}", CLIENT_TIMEOUT)]
    Timeout {
        /// Socket path or URL.
        endpoint: String,
    },
    /// The daemon answered with an error.
    #[error("the daemon refused: {0}")]
    Refused(ApiError),
    /// The answer was not understood.
    #[error("the daemon's answer is not understood (version mismatch?)")]
    Decode(#[source] serde_json::Error),
}

impl ClientError {
    /// The daemon's refusal, if that is what this is.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::Refused(e) => Some(e),
            _ => None,
        }
    }
}

fn connect_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "no such socket: is the daemon running? is this its socket?"
        }
        std::io::ErrorKind::ConnectionRefused => "connection refused: is the daemon running?",
        std::io::ErrorKind::PermissionDenied => "permission denied: are you root?",
        _ => "is the daemon running? are you root?",
    }
}

/// How a request travels: its HTTP method, path and body.
fn http_form(request: &Request) -> Result<(hyper::Method, &'static str, Vec<u8>), ClientError> {
    Ok(match request {
        // Also understood by daemons that predate `/v1/request`.
        Request::Status => (hyper::Method::GET, "/v1/status", Vec::new()),
        _ => (
            hyper::Method::POST,
            "/v1/request",
            serde_json::to_vec(request).map_err(ClientError::Decode)?,
        ),
    })
}

fn decode_answer(status: u16, body: &[u8]) -> Result<Response, ClientError> {
    if !(200..300).contains(&status) {
        return Err(ClientError::Refused(ApiError::from_answer(status, body)));
    }
    serde_json::from_slice(body).map_err(ClientError::Decode)
}

/// Send `request` to the daemon listening on `socket`.
pub async fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    tokio::time::timeout(CLIENT_TIMEOUT, call_unix(socket, request))
        .await
        .map_err(|_| ClientError::Timeout {
            endpoint: socket.display().to_string(),
        })?
}

async fn call_unix(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let (method, uri, body) = http_form(request)?;
    let http_err = |source| ClientError::Http {
        path: socket.to_owned(),
        source,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Refused(ApiError::bad_request(e.to_string())))?;
    let res = sender.send_request(req).await.map_err(http_err)?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes();
    driver.abort();
    decode_answer(status, &body)
}

/// Send `request` to a daemon's management address `base_url` (`http://`
/// or `https://`, host and port, as in `http://192.0.2.10:7440`), with
/// `token` as the bearer token. Proxy settings from the environment are
/// ignored.
pub async fn call_url(
    base_url: &str,
    token: Option<&str>,
    request: &Request,
) -> Result<Response, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        url: base_url.to_owned(),
        reason,
    };
    let mut url = reqwest::Url::parse(base_url).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme `{}` is neither http nor https",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(bad("no host".to_owned()));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    let (method, path, body) = http_form(request)?;
    let url = url
        .join(path.trim_start_matches('/'))
        .map_err(|e| bad(e.to_string()))?;
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("clusterctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| bad(format!("cannot set up the HTTP client: {e}")))?;
    let mut req = http
        .request(method, url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(token) = token {
        cluster_witness::token::check_token(token).map_err(|r| bad(format!("token: {r}")))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("token: not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        req = req.header(reqwest::header::AUTHORIZATION, value);
    }
    let unreachable = |source: reqwest::Error| ClientError::Unreachable {
        url: base_url.to_owned(),
        timed_out: source.is_timeout(),
        source,
    };
    let res = req.send().await.map_err(unreachable)?;
    let status = res.status().as_u16();
    let body = res.bytes().await.map_err(unreachable)?;
    decode_answer(status, &body)
}

/// Where a client finds a daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Its control socket.
    Socket(PathBuf),
    /// A management address, with the bearer token.
    Url {
        /// Base URL (`http://ADDR:PORT`).
        url: String,
        /// Bearer token.
        token: Option<String>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(p) => write!(f, "{}", p.display()),
            Self::Url { url, .. } => f.write_str(url),
        }
    }
}

impl Endpoint {
    /// Send `request` there.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        match self {
            Self::Socket(path) => call(path, request).await,
            Self::Url { url, token } => call_url(url, token.as_deref(), request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_lines(dir: &Path, lines: &[&str]) -> PathBuf {
        let path = dir.join("events.jsonl");
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn kinds(events: &[Value]) -> Vec<&str> {
        events.iter().filter_map(|e| e["kind"].as_str()).collect()
    }

    #[test]
    fn read_events_filters_by_time_and_keeps_the_last_ones() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write_lines(
            dir.path(),
            &[
                r#"{"ts_ms":100,"node":"n0","kind":"a"}"#,
                r#"{"ts_ms":200,"node":"n0","kind":"b","peer":"n1"}"#,
                "not json",
                r#"[1,2]"#,
                r#"{"node":"n0","kind":"no_time"}"#,
                r#"{"ts_ms":300,"node":"n0","kind":"c"}"#,
                r#"{"ts_ms":400,"node":"n0","kind":"d"#,
            ],
        );
        let all = read_events(&path, None, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kinds(&all), ["a", "b", "no_time", "c"]);
        assert_eq!(all[1]["peer"], "n1");
        let since = read_events(&path, Some(200), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kinds(&since), ["b", "c"]);
        let last = read_events(&path, None, Some(2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kinds(&last), ["no_time", "c"]);
        let both = read_events(&path, Some(150), Some(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kinds(&both), ["c"]);
        let none = read_events(&path, None, Some(0)).unwrap_or_else(|e| panic!("{e}"));
        assert!(none.is_empty());
        let later = read_events(&path, Some(301), None).unwrap_or_else(|e| panic!("{e}"));
        assert!(later.is_empty());
    }

    #[test]
    fn read_events_of_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let events = read_events(&dir.path().join("nope.jsonl"), Some(1), Some(5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(events.is_empty());
    }

    #[test]
    fn read_events_reads_what_the_event_log_writes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = crate::events::EventLog::open(dir.path(), "n1").unwrap_or_else(|e| panic!("{e}"));
        log.emit("peer_lost", json!({"peer": "n2"}));
        log.emit("quorum_lost", Value::Null);
        let events = read_events(log.path(), None, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kinds(&events), ["peer_lost", "quorum_lost"]);
        assert_eq!(events[0]["node"], "n1");
    }

    #[test]
    fn requests_and_responses_round_trip_as_json() {
        let requests = [
            Request::Status,
            Request::Events {
                since_ms: Some(5),
                limit: None,
            },
            Request::GroupStart { group: "g".into() },
            Request::GroupStop { group: "g".into() },
            Request::GroupMove {
                group: "g".into(),
                node: Some("n1".into()),
            },
            Request::Clear { group: "g".into() },
            Request::FenceGuest {
                requester: "a".into(),
                peer: "b".into(),
                action: GuestFenceAction::Reboot,
            },
        ];
        for r in requests {
            let text = serde_json::to_string(&r).unwrap_or_else(|e| panic!("{e}"));
            let back: Request = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, r, "{text}");
        }
        let r: Request = serde_json::from_str(r#"{"request":"group_move","group":"g"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.group_command(),
            Some(("g", GroupCommand::Move { node: None }))
        );

        let events = Response::Events(vec![json!({"ts_ms": 1, "kind": "a"})]);
        let text = serde_json::to_value(&events).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            text,
            json!({"response": "events", "events": [{"ts_ms": 1, "kind": "a"}]})
        );
        let back: Response = serde_json::from_value(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, events);
        let accepted = Response::Accepted {
            message: "ok".into(),
        };
        let text = serde_json::to_string(&accepted).unwrap_or_else(|e| panic!("{e}"));
        let back: Response = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, accepted);
        let fenced = Response::GuestFenced {
            peer: "b".into(),
            domain: "vm-b".into(),
            host: "h1".into(),
            action: GuestFenceAction::Off,
            off: true,
            elapsed_ms: 3,
            message: "destroyed".into(),
        };
        let text = serde_json::to_string(&fenced).unwrap_or_else(|e| panic!("{e}"));
        let back: Response = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, fenced);
        let r: Request =
            serde_json::from_str(r#"{"request":"fence_guest","requester":"a","peer":"b"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r,
            Request::FenceGuest {
                requester: "a".into(),
                peer: "b".into(),
                action: GuestFenceAction::Off,
            },
            "off unless asked otherwise"
        );
    }

    #[tokio::test]
    async fn errors_keep_their_kind_through_http() {
        for kind in [
            ApiErrorKind::BadRequest,
            ApiErrorKind::Unauthorized,
            ApiErrorKind::NotFound,
            ApiErrorKind::Unavailable,
            ApiErrorKind::NotImplemented,
            ApiErrorKind::Internal,
        ] {
            let err = ApiError::new(kind, "why");
            let res = err.clone().into_response();
            let status = res.status().as_u16();
            assert_eq!(status, kind.status().as_u16());
            assert_eq!(ApiErrorKind::from_status(status), kind);
            let body = res
                .into_body()
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .to_bytes();
            assert_eq!(ApiError::from_answer(status, &body), err);
        }
        assert_eq!(
            ApiError::group_commands_unavailable().kind.status(),
            StatusCode::NOT_IMPLEMENTED
        );
        // Answers that are not ours (a proxy, an older daemon).
        let e = ApiError::from_answer(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.kind, ApiErrorKind::Unavailable);
        assert!(e.message.starts_with("HTTP 502 Bad Gateway: <html>"), "{e}");
        let e = ApiError::from_answer(500, br#"{"message":"old daemon"}"#);
        assert_eq!(e, ApiError::internal("old daemon"));
        let e = ApiError::from_answer(405, b"");
        assert_eq!(e, ApiError::bad_request("HTTP 405 Method Not Allowed"));
    }

    #[test]
    fn group_commands_are_checked_against_the_configuration() {
        let text = r#"
[cluster]
name = "c"
kind = "guest"
auth_key_file = "/k"

[heartbeat]
interval = "100ms"
timeout = "500ms"

[watchdog]
kind = "none"

[[nodes]]
name = "a"
links = { lan = ["10.0.0.1/24"] }

[[nodes]]
name = "b"
links = { lan = ["10.0.0.2/24"] }

[[nodes]]
name = "c"
links = { lan = ["10.0.0.3/24"] }

[[groups]]
name = "web"
nodes = ["a", "b"]

[[groups]]
name = "db"
nodes = ["b", "c"]
"#;
        let config = conf::load_str("t.toml", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            check_group_command(&config, "web", &GroupCommand::Start),
            Ok(())
        );
        let e = check_group_command(&config, "wbe", &GroupCommand::Stop)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.kind, ApiErrorKind::NotFound);
        assert_eq!(
            e.message,
            "no group named `wbe` (configured groups: web, db)"
        );
        let mv = |n: &str| GroupCommand::Move {
            node: Some(n.into()),
        };
        assert_eq!(check_group_command(&config, "web", &mv("b")), Ok(()));
        let e = check_group_command(&config, "web", &mv("z")).err();
        assert_eq!(e.map(|e| e.kind), Some(ApiErrorKind::NotFound));
        let e = check_group_command(&config, "web", &mv("c")).err();
        assert_eq!(e.map(|e| e.kind), Some(ApiErrorKind::BadRequest));
    }

    /// A handler that answers status requests with nothing and refuses
    /// group commands as this version does.
    struct Fake;

    impl Handler for Fake {
        async fn handle(&self, request: Request) -> Result<Response, ApiError> {
            match request {
                Request::Events { since_ms, limit } => Ok(Response::Events(vec![
                    json!({"since_ms": since_ms, "limit": limit}),
                ])),
                Request::Status => Err(ApiError::unavailable("no status here")),
                _ => Err(ApiError::group_commands_unavailable()),
            }
        }
    }

    fn token_dir(token: &str) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("api.token");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    #[tokio::test]
    async fn the_socket_and_the_management_address_answer_alike_behind_the_token() {
        let (dir, token_file) = token_dir("s3cret-token");
        let socket = dir.path().join("api.sock");
        let api = conf::ApiSection {
            socket: socket.clone(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            token_file: Some(token_file),
            tls: None,
        };
        let listeners = Listeners::bind(&api, &socket).unwrap_or_else(|e| panic!("{e}"));
        let addr = listeners.tcp_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listeners.serve(Arc::new(Fake), async move {
            let _ = stopped.await;
        }));
        // The socket appears once serving has started.
        for _ in 0..500 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let url = format!("http://{addr}");
        let events = Request::Events {
            since_ms: Some(7),
            limit: Some(3),
        };
        let expected = Response::Events(vec![json!({"since_ms": 7, "limit": 3})]);

        let on_socket = call(&socket, &events)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(on_socket, expected);
        let on_tcp = call_url(&url, Some("s3cret-token"), &events)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(on_tcp, expected);

        for token in [None, Some("wrong-token")] {
            let e = call_url(&url, token, &events).await.err();
            let kind = e.as_ref().and_then(|e| e.api_error()).map(|e| e.kind);
            assert_eq!(kind, Some(ApiErrorKind::Unauthorized), "{e:?}");
        }
        // Unknown routes are behind the token too.
        let res = reqwest::get(format!("{url}/nope"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(res.status().as_u16(), 401);

        let group = Request::GroupMove {
            group: "g".into(),
            node: None,
        };
        let e = call(&socket, &group).await.err();
        let refused = e.as_ref().and_then(|e| e.api_error()).cloned();
        assert_eq!(refused, Some(ApiError::group_commands_unavailable()));
        let e = call(&socket, &Request::Status).await.err();
        let kind = e.as_ref().and_then(|e| e.api_error()).map(|e| e.kind);
        assert_eq!(kind, Some(ApiErrorKind::Unavailable));

        let _ = stop.send(());
        let done = server.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(done.is_ok(), "{done:?}");
    }

    #[test]
    fn tls_and_a_missing_token_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.path().join("api.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let _guard = rt.enter();
        let api = conf::ApiSection {
            socket: socket.clone(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            token_file: Some(dir.path().join("missing.token")),
            tls: Some(conf::Tls {
                cert: "/c.pem".into(),
                key: "/k.pem".into(),
            }),
        };
        let e = Listeners::bind(&api, &socket).err();
        assert!(matches!(e, Some(ServeError::TlsUnsupported)), "{e:?}");
        assert!(
            ServeError::TlsUnsupported
                .to_string()
                .contains("TLS terminator")
        );
        let api = conf::ApiSection { tls: None, ..api };
        let e = Listeners::bind(&api, &socket).err();
        assert!(matches!(e, Some(ServeError::Token(_))), "{e:?}");
        let api = conf::ApiSection {
            token_file: None,
            ..api
        };
        let e = Listeners::bind(&api, &socket).err();
        assert!(matches!(e, Some(ServeError::NoToken)), "{e:?}");
    }

    #[tokio::test]
    async fn an_absent_socket_says_which_and_why() {
        let e = call(Path::new("/nonexistent/api.sock"), &Request::Status)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("cannot reach the daemon at /nonexistent/api.sock (no such socket"),
            "{e}"
        );
    }
}
