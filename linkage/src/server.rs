//! The host's half: accept guests' sessions, answer their messages, and
//! reach a connected guest.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::session::{self, GuestId, SessionError};
use crate::transport::Listener;
use crate::{LinkKey, Message};

/// A handshake not finished within this is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A session from which nothing arrived for this long is closed (guests
/// send [`Message::Liveness`] every [`crate::LIVENESS_EVERY`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most messages of one session handled at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// The future of one answer.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Option<Message>> + Send + 'a>>;

/// What the host does with a guest's messages.
pub trait GuestHandler: Send + Sync + 'static {
    /// Answer `message` from the authenticated `guest`; `None` sends no
    /// answer. Messages of one session are handled concurrently (a fence
    /// may take seconds).
    fn handle<'a>(&'a self, guest: &'a GuestId, message: Message) -> Answer<'a>;
}

/// The key of a guest this host knows, `None` for any other.
pub type KeyOf = dyn Fn(&GuestId) -> Option<LinkKey> + Send + Sync;

/// A connected guest, for status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestSession {
    /// The guest.
    pub guest: GuestId,
    /// Where it connected (`unix:PATH`, `tcp:ADDR`).
    pub from: String,
    /// When the session opened (ms since the epoch).
    pub since_ms: u64,
    /// Milliseconds since its last frame.
    pub last_heard_ms: u64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    from: String,
    since_ms: u64,
    last_heard: Instant,
    push: mpsc::Sender<Message>,
}

#[derive(Debug, Default)]
struct Registry {
    sessions: BTreeMap<GuestId, Entry>,
    next_id: u64,
}

/// Serves guests' sessions; cheap to clone.
#[derive(Clone)]
pub struct LinkServer {
    registry: Arc<Mutex<Registry>>,
    key_of: Arc<KeyOf>,
    handler: Arc<dyn GuestHandler>,
}

impl std::fmt::Debug for LinkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkServer").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LinkServer {
    /// A server for the guests `key_of` knows, answering with `handler`.
    pub fn new(key_of: Arc<KeyOf>, handler: Arc<dyn GuestHandler>) -> Self {
        Self {
            registry: Arc::default(),
            key_of,
            handler,
        }
    }

    /// Accept sessions on `listener` until the task is aborted.
    pub fn serve(&self, listener: Listener) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, from)) => {
                        let me = me.clone();
                        tokio::spawn(async move { me.session(stream, from).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "linkage: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    /// The guests connected now.
    pub fn sessions(&self) -> Vec<GuestSession> {
        let reg = self.lock();
        reg.sessions
            .iter()
            .map(|(guest, e)| GuestSession {
                guest: guest.clone(),
                from: e.from.clone(),
                since_ms: e.since_ms,
                last_heard_ms: u64::try_from(e.last_heard.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// Send `message` to `guest` if it is connected; whether it was queued.
    pub fn push(&self, guest: &GuestId, message: Message) -> bool {
        let reg = self.lock();
        reg.sessions
            .get(guest)
            .is_some_and(|e| e.push.try_send(message).is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn session(&self, stream: crate::BoxStream, from: String) {
        let opened =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, session::accept(stream, &*self.key_of)).await;
        let s = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e @ (SessionError::UnknownGuest(_) | SessionError::BadProof(_)))) => {
                tracing::warn!(%from, error = %e, "linkage: session refused");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%from, error = %e, "linkage: handshake failed");
                return;
            }
            Err(_) => {
                tracing::warn!(%from, "linkage: handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let guest = s.guest.clone();
        let (push, mut outbox) = mpsc::channel::<Message>(64);
        let id = {
            let mut reg = self.lock();
            reg.next_id += 1;
            let id = reg.next_id;
            // A new session of the same guest replaces the old one in the
            // registry (pushes go to the new one); the old one's reader
            // ends at its next frame or idle timeout.
            reg.sessions.insert(
                guest.clone(),
                Entry {
                    id,
                    from: from.clone(),
                    since_ms: now_ms(),
                    last_heard: Instant::now(),
                    push: push.clone(),
                },
            );
            id
        };
        tracing::info!(%guest, %from, "linkage: guest connected");
        let mut writer = s.writer;
        let write = tokio::spawn(async move {
            while let Some(m) = outbox.recv().await {
                if let Err(e) = writer.send(m).await {
                    tracing::debug!(error = %e, "linkage: send failed");
                    break;
                }
            }
        });
        let mut reader = s.reader;
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let why = loop {
            let m = match tokio::time::timeout(IDLE_TIMEOUT, reader.recv()).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => break e.to_string(),
                Err(_) => break format!("nothing heard for {IDLE_TIMEOUT:?}"),
            };
            {
                let mut reg = self.lock();
                match reg.sessions.get_mut(&guest) {
                    Some(e) if e.id == id => e.last_heard = Instant::now(),
                    _ => break "replaced by a newer session of the same guest".into(),
                }
            }
            if matches!(m, Message::Liveness { .. }) {
                continue;
            }
            // At most MAX_IN_FLIGHT messages of a session handled at once:
            // past that, its frames wait (a flood cannot grow tasks).
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break "the session's handlers are gone".into();
            };
            let handler = self.handler.clone();
            let guest = guest.clone();
            let push = push.clone();
            tokio::spawn(async move {
                if let Some(answer) = handler.handle(&guest, m).await {
                    let _ = push.send(answer).await;
                }
                drop(permit);
            });
        };
        {
            let mut reg = self.lock();
            if reg.sessions.get(&guest).is_some_and(|e| e.id == id) {
                reg.sessions.remove(&guest);
            }
        }
        write.abort();
        tracing::info!(%guest, %from, "linkage: guest disconnected: {why}");
    }
}
