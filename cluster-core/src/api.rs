//! The control API: one request type for every front end (`clusterctl`,
//! later the web page and the management address), carried as HTTP/1.1 over
//! a Unix socket that only root can open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};

use crate::status::NodeStatus;

/// Everything a client can ask a daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's view of the cluster.
    Status,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Box<NodeStatus>),
}

/// What a daemon plugs into the API server.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request.
    fn handle(&self, request: Request) -> impl Future<Output = Result<Response, ApiError>> + Send;
}

/// A request the daemon could not answer.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ApiError {
    /// What went wrong, for the operator.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        (StatusCode::INTERNAL_SERVER_ERROR, Json(self)).into_response()
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
    /// The server stopped on an I/O error.
    #[error("API server failed")]
    Serve(#[source] std::io::Error),
}

async fn status<H: Handler>(State(handler): State<Arc<H>>) -> Result<Json<Response>, ApiError> {
    handler.handle(Request::Status).await.map(Json)
}

/// Serve `handler` on the Unix socket `path` until `shutdown` resolves. A
/// stale socket file from an earlier run is replaced; the socket is made
/// accessible to its owner only.
pub async fn serve_unix<H: Handler>(
    path: &Path,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
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
    let app = Router::new()
        .route("/v1/status", get(status::<H>))
        .with_state(handler);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

/// Why a request to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("cannot reach the daemon at {path} (is it running? are you root?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the daemon at {path} did not answer")]
    Http {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The daemon answered with an error.
    #[error("the daemon refused: {0}")]
    Refused(String),
    /// The answer was not understood.
    #[error("the daemon's answer is not understood (version mismatch?)")]
    Decode(#[source] serde_json::Error),
}

/// Send `request` to the daemon listening on `socket`.
pub async fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let uri = match request {
        Request::Status => "/v1/status",
    };
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
    let req = hyper::Request::get(uri)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Refused(e.to_string()))?;
    let res = sender.send_request(req).await.map_err(http_err)?;
    let ok = res.status().is_success();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes();
    driver.abort();
    if !ok {
        let err: ApiError = serde_json::from_slice(&body).map_err(ClientError::Decode)?;
        return Err(ClientError::Refused(err.message));
    }
    serde_json::from_slice(&body).map_err(ClientError::Decode)
}
