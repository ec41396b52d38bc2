//! The witness's HTTP server: the routes over a shared [`VoteBook`], the
//! optional bearer-token check, and binding and serving several listen
//! addresses (IPv4 and IPv6) until shutdown.
//!
//! Routes:
//!
//! - `POST /v1/vote`: a JSON [`VoteRequest`], answered with a [`VoteReply`],
//!   or 400 with an [`ErrorReply`] when the request is malformed;
//! - `GET /v1/status`: every live holding, a [`WitnessStatus`];
//! - `GET /v1/health`: `ok`, never behind the token.
//!
//! With a token, every route but `/v1/health` answers 401 unless the request
//! carries `Authorization: Bearer <token>`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpSocket};

use crate::book::VoteBook;
use crate::protocol::{ErrorReply, VoteReply, VoteRequest, WitnessStatus};
use crate::token::check_token;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long [`serve`] waits, after shutdown is asked for, for requests in
/// flight to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Debug)]
struct Shared {
    book: Mutex<VoteBook>,
    /// SHA-256 of the expected token: comparing digests in constant time
    /// reveals neither the token nor its length.
    token: Option<[u8; 32]>,
}

/// The witness's routes over `book`. With `token`, every route but
/// `/v1/health` requires `Authorization: Bearer <token>`; a token that
/// [`check_token`] refuses (such as the empty string) lets no request in.
pub fn router(book: VoteBook, token: Option<&str>) -> Router {
    let shared = Arc::new(Shared {
        book: Mutex::new(book),
        token: token.map(digest),
    });
    let guarded = Router::new()
        .route("/v1/vote", post(vote))
        .route("/v1/status", get(status))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_token,
        ));
    Router::new()
        .route("/v1/health", get(|| async { "ok\n" }))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorReply {
        error: message.into(),
    };
    (status, Json(body)).into_response()
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
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &shared.token else {
        return next.run(request).await;
    };
    let message = match bearer(request.headers()) {
        None => "missing bearer token (Authorization: Bearer <token>)",
        Some(presented)
            if check_token(presented).is_ok() && bool::from(digest(presented).ct_eq(expected)) =>
        {
            return next.run(request).await;
        }
        Some(_) => "wrong bearer token",
    };
    tracing::warn!(uri = %request.uri(), "{message}");
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn names(set: &std::collections::BTreeSet<String>) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(",")
}

async fn vote(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<VoteRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let (before, result) = {
        let mut book = shared.book.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let before = book.holder(&req.cluster, now).cloned();
        let result = book.request(now, &req);
        (before, result)
    };
    match result {
        Ok(reply) => {
            log_reply(&req, before.as_ref(), &reply);
            Json(reply).into_response()
        }
        Err(e) => {
            tracing::warn!(cluster = %req.cluster, node = %req.node, "vote request refused: {e}");
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

fn log_reply(
    req: &VoteRequest,
    before: Option<&std::collections::BTreeSet<String>>,
    reply: &VoteReply,
) {
    if before == Some(&reply.holder) {
        tracing::debug!(
            cluster = %req.cluster,
            node = %req.node,
            granted = reply.granted,
            holder = %names(&reply.holder),
            "vote request"
        );
        return;
    }
    tracing::info!(
        cluster = %req.cluster,
        node = %req.node,
        holder = %names(&reply.holder),
        previous = %before.map_or_else(|| "(none)".to_owned(), names),
        lease_ms = reply.lease_ms,
        "vote granted to a new partition"
    );
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<WitnessStatus> {
    let snapshot = {
        let book = shared.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.snapshot(Instant::now())
    };
    Json(snapshot)
}

/// A listen address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Bind every address in `addrs`. An IPv6 address is made IPv6-only when an
/// IPv4 address with the same port is also listed, so that `[::]:7450` and
/// `0.0.0.0:7450` can be given together; alone, `[::]` also accepts IPv4
/// (where the system allows dual-stack sockets). Must run inside a Tokio
/// runtime.
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, BindError> {
    addrs
        .iter()
        .map(|&addr| {
            let v6_only = addr.is_ipv6()
                && addrs
                    .iter()
                    .any(|other| other.is_ipv4() && other.port() == addr.port());
            bind(addr, v6_only).map_err(|source| BindError { addr, source })
        })
        .collect()
}

fn bind(addr: SocketAddr, v6_only: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if v6_only {
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serve `app` on every listener until `shutdown` resolves, then let the
/// requests in flight finish (for at most [`DRAIN_TIMEOUT`]). Returns early
/// with an error if a listener fails.
pub async fn serve(
    listeners: Vec<TcpListener>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let mut stopped = stopped.clone();
        let graceful = async move {
            // An error means the sender is gone: stop as well.
            let _ = stopped.wait_for(|s| *s).await;
        };
        servers.spawn(
            axum::serve(listener, app.clone())
                .with_graceful_shutdown(graceful)
                .into_future(),
        );
    }
    tokio::select! {
        () = shutdown => {}
        Some(done) = servers.join_next() => {
            done.map_err(std::io::Error::other)??;
            return Err(std::io::Error::other("a listener stopped unexpectedly"));
        }
    }
    stop.send_replace(true);
    let drain = async {
        while let Some(done) = servers.join_next().await {
            done.map_err(std::io::Error::other)??;
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
            Ok(())
        }
    }
}
