//! Streams to and from [`conf::Endpoint`]s: Unix sockets and TCP.
//!
//! vsock is not supported yet: this machine kind has no vsock transport
//! to test it with (no `vsock_loopback`, no `vhost-vsock`), and an
//! endpoint no test has crossed is refused with a clear error rather than
//! offered.

use std::path::PathBuf;

use conf::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// A byte stream to the other side.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Why an endpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Listening failed.
    #[error("cannot listen on {endpoint}")]
    Listen {
        /// The endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A transport this build does not offer.
    #[error(
        "{endpoint}: vsock endpoints are not supported yet; use `unix:PATH` or `tcp:HOST:PORT`"
    )]
    Unsupported {
        /// The endpoint.
        endpoint: String,
    },
}

/// Connect to `endpoint`.
///
/// # Errors
/// The connection failed, or a vsock endpoint.
pub async fn connect(endpoint: &Endpoint) -> Result<BoxStream, TransportError> {
    let err = |source| TransportError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => Ok(Box::new(
            tokio::net::UnixStream::connect(path).await.map_err(err)?,
        )),
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
            // Small frames that must go at once.
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        Endpoint::Vsock { .. } => Err(TransportError::Unsupported {
            endpoint: endpoint.to_string(),
        }),
    }
}

/// A listening endpoint.
#[derive(Debug)]
pub enum Listener {
    /// A Unix socket (its file is removed when this drops).
    Unix(UnixListener, PathBuf),
    /// TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Listen on `endpoint`. A Unix socket's stale file (nobody answers
    /// on it) is replaced, one a live process answers on is an error, and
    /// the new one is made accessible to its owner only (mode 0600).
    ///
    /// # Errors
    /// Binding failed, or a vsock endpoint.
    pub async fn bind(endpoint: &Endpoint) -> Result<Self, TransportError> {
        let err = |source| TransportError::Listen {
            endpoint: endpoint.to_string(),
            source,
        };
        match endpoint {
            Endpoint::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
                // A socket file nobody answers on is stale (a daemon that
                // died); one that answers belongs to a live process.
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                    match std::os::unix::net::UnixStream::connect(path) {
                        Ok(_) => {
                            return Err(err(std::io::Error::new(
                                std::io::ErrorKind::AddrInUse,
                                "another process listens on this socket",
                            )));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            std::fs::remove_file(path).map_err(err)?;
                        }
                        Err(_) => {}
                    }
                }
                let l = UnixListener::bind(path).map_err(err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
                Ok(Self::Unix(l, path.clone()))
            }
            Endpoint::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await.map_err(err)?)),
            Endpoint::Vsock { .. } => Err(TransportError::Unsupported {
                endpoint: endpoint.to_string(),
            }),
        }
    }

    /// Where it listens (a TCP port 0 resolved to the port taken).
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Unix(_, path) => Endpoint::Unix(path.clone()),
            Self::Tcp(l) => l.local_addr().map_or_else(
                |_| Endpoint::Tcp(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                Endpoint::Tcp,
            ),
        }
    }

    /// The next connection and who it comes from, in words.
    ///
    /// # Errors
    /// Accepting failed (the caller goes on listening).
    pub async fn accept(&self) -> std::io::Result<(BoxStream, String)> {
        match self {
            Self::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), format!("unix:{}", path.display())))
            }
            Self::Tcp(l) => {
                let (s, from) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Box::new(s), format!("tcp:{from}")))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
