//! The guest's half: one session to the host daemon, opened again
//! whenever it breaks, carrying requests and their answers, liveness, and
//! what the host pushes.

use std::collections::HashMap;
use std::time::Duration;

use conf::Endpoint;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::server::HANDSHAKE_TIMEOUT;
use crate::session::{self, GuestId};
use crate::{LinkKey, Message, transport};

/// How often a guest says it is alive.
pub const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// First wait before opening a broken session again; doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A frame the host does not take within this ends the session (a hung
/// host daemon must not hold a request past its caller's timeout).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The session as the guest sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkState {
    /// A session is open.
    pub connected: bool,
    /// The host it runs on, once the host said.
    pub host: Option<String>,
    /// The host's cluster, once the host said.
    pub host_cluster: Option<String>,
    /// Why the last session failed or ended.
    pub error: Option<String>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No session is open.
    #[error("no session to the host daemon at {endpoint}: {why}")]
    NotConnected {
        /// Where the host daemon is.
        endpoint: String,
        /// The last failure.
        why: String,
    },
    /// The session broke before the answer came.
    #[error("the session to the host daemon broke before it answered")]
    Broken,
    /// No answer in time.
    #[error("the host daemon did not answer within {0:?}")]
    Timeout(Duration),
}

/// The answer to a fence request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceAnswer {
    /// The peer is confirmed off.
    pub off: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

type Build = Box<dyn FnOnce(u64) -> Message + Send>;

struct Request {
    build: Build,
    /// `None`: a message that has no answer.
    answer: Option<oneshot::Sender<Message>>,
}

/// A guest's link to its host daemon; cheap to clone.
#[derive(Clone, Debug)]
pub struct HostLink {
    endpoint: Endpoint,
    requests: mpsc::Sender<Request>,
    state: watch::Receiver<LinkState>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request(..)")
    }
}

impl HostLink {
    /// Keep a session to the host daemon at `endpoint` as guest `me`
    /// (`incarnation` goes in its liveness messages). What the host
    /// pushes (`NicDown`, `PrepareShutdown`, ...) arrives on the returned
    /// receiver.
    pub fn spawn(
        endpoint: Endpoint,
        me: GuestId,
        key: LinkKey,
        incarnation: u64,
    ) -> (Self, mpsc::Receiver<Message>) {
        let (requests, inbox) = mpsc::channel(64);
        let (state_tx, state) = watch::channel(LinkState::default());
        let (pushes, pushed) = mpsc::channel(64);
        let ep = endpoint.clone();
        tokio::spawn(async move {
            run(ep, me, key, incarnation, inbox, state_tx, pushes).await;
        });
        (
            Self {
                endpoint,
                requests,
                state,
            },
            pushed,
        )
    }

    /// The session now.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// The session, to wait for its changes.
    pub fn state_changes(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Wait until a session is open, at most `within`; whether it is.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(within, state.wait_for(|s| s.connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn request(&self, build: Build, timeout: Duration) -> Result<Message, LinkError> {
        let state = self.state();
        if !state.connected {
            return Err(LinkError::NotConnected {
                endpoint: self.endpoint.to_string(),
                why: state.error.unwrap_or_else(|| "not opened yet".into()),
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let (answer, answered) = oneshot::channel();
        let queued = self.requests.send(Request {
            build,
            answer: Some(answer),
        });
        match tokio::time::timeout_at(deadline, queued).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(LinkError::Broken),
            Err(_) => return Err(LinkError::Timeout(timeout)),
        }
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(LinkError::Broken),
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    /// Send `message`, which has no answer (`ShutdownReady`...), on the
    /// open session.
    ///
    /// # Errors
    /// No session.
    pub async fn tell(&self, message: Message) -> Result<(), LinkError> {
        let state = self.state();
        if !state.connected {
            return Err(LinkError::NotConnected {
                endpoint: self.endpoint.to_string(),
                why: state.error.unwrap_or_else(|| "not opened yet".into()),
            });
        }
        let queued = self.requests.send(Request {
            build: Box::new(move |_| message),
            answer: None,
        });
        match tokio::time::timeout(WRITE_TIMEOUT, queued).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(LinkError::Broken),
            Err(_) => Err(LinkError::Timeout(WRITE_TIMEOUT)),
        }
    }

    /// Ask the host to power `peer` (a guest of this guest's cluster) off.
    ///
    /// # Errors
    /// No session, it broke, or no answer within `timeout`.
    pub async fn fence(&self, peer: &str, timeout: Duration) -> Result<FenceAnswer, LinkError> {
        let peer = peer.to_owned();
        let m = self
            .request(
                Box::new(move |request_id| Message::Fence { request_id, peer }),
                timeout,
            )
            .await?;
        Ok(match m {
            Message::FenceResult { off, error, .. } => FenceAnswer { off, error },
            other => FenceAnswer {
                off: false,
                error: Some(format!("unexpected answer {other:?}")),
            },
        })
    }

    /// Ask the host which host and host cluster this guest runs on.
    ///
    /// # Errors
    /// No session, it broke, or no answer within `timeout`.
    pub async fn where_am_i(&self, timeout: Duration) -> Result<(String, String), LinkError> {
        match self
            .request(
                Box::new(|request_id| Message::WhereAmI { request_id }),
                timeout,
            )
            .await?
        {
            Message::YouAreOn { host, cluster, .. } => Ok((host, cluster)),
            _ => Err(LinkError::Broken),
        }
    }
}

/// The id of the request an answer answers.
fn answers(m: &Message) -> Option<u64> {
    match m {
        Message::FenceResult { request_id, .. }
        | Message::YouAreOn { request_id, .. }
        | Message::ShutdownReady { request_id } => Some(*request_id),
        _ => None,
    }
}

async fn run(
    endpoint: Endpoint,
    me: GuestId,
    key: LinkKey,
    incarnation: u64,
    mut inbox: mpsc::Receiver<Request>,
    state: watch::Sender<LinkState>,
    pushes: mpsc::Sender<Message>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut next_id = 0u64;
    loop {
        let why = match open(&endpoint, &me, &key).await {
            Err(why) => why,
            Ok(s) => {
                backoff = FIRST_BACKOFF;
                tracing::info!(%endpoint, "linkage: connected to the host daemon");
                let why = serve(s, incarnation, &mut next_id, &mut inbox, &state, &pushes).await;
                if why.is_empty() {
                    return; // the HostLink is gone
                }
                why
            }
        };
        tracing::warn!(%endpoint, "linkage: no session to the host daemon: {why}");
        state.send_modify(|s| {
            s.connected = false;
            s.error = Some(why);
        });
        // Requests queued meanwhile fail at once (their senders see the
        // answer channel close); the caller retries.
        while let Ok(r) = inbox.try_recv() {
            drop(r);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if inbox.is_closed() {
            return;
        }
    }
}

async fn open(
    endpoint: &Endpoint,
    me: &GuestId,
    key: &LinkKey,
) -> Result<session::Session<crate::BoxStream>, String> {
    let stream = transport::connect(endpoint).await.map_err(|e| {
        format!(
            "{e}: {}",
            std::error::Error::source(&e).map_or_else(String::new, ToString::to_string)
        )
    })?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, session::connect(stream, me, key)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "handshake not finished within {HANDSHAKE_TIMEOUT:?}"
        )),
    }
}

/// Send `message`, bounded by [`WRITE_TIMEOUT`]: a host that stops
/// reading ends the session. Why it failed, if it did.
async fn send_bounded<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut session::SessionWriter<W>,
    message: Message,
) -> Option<String> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.send(message)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the host daemon took no frame for {WRITE_TIMEOUT:?}"
        )),
    }
}

/// Run one session until it breaks (why, in words) or the [`HostLink`]
/// is dropped (an empty string).
async fn serve(
    s: session::Session<crate::BoxStream>,
    incarnation: u64,
    next_id: &mut u64,
    inbox: &mut mpsc::Receiver<Request>,
    state: &watch::Sender<LinkState>,
    pushes: &mpsc::Sender<Message>,
) -> String {
    let mut writer = s.writer;
    let mut reader = s.reader;
    // The reader in a task of its own: `recv` is not cancel-safe.
    let (frames_tx, mut frames) = mpsc::channel(64);
    let read = tokio::spawn(async move {
        loop {
            let r = reader.recv().await;
            let failed = r.is_err();
            if frames_tx.send(r).await.is_err() || failed {
                return;
            }
        }
    });
    let mut pending: HashMap<u64, oneshot::Sender<Message>> = HashMap::new();
    // Ask where we are first: status shows it.
    *next_id += 1;
    let where_id = *next_id;
    let mut beat = tokio::time::interval(LIVENESS_EVERY);
    let why = 'session: {
        let asked = send_bounded(
            &mut writer,
            Message::WhereAmI {
                request_id: where_id,
            },
        )
        .await;
        if let Some(e) = asked {
            break 'session e;
        }
        state.send_modify(|s| {
            s.connected = true;
            s.error = None;
        });
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if let Some(e) = send_bounded(&mut writer, Message::Liveness { incarnation }).await {
                        break 'session e;
                    }
                }
                r = inbox.recv() => {
                    let Some(r) = r else { break 'session String::new() };
                    // Its caller gave up (timed out): a late request, a
                    // fence above all, is not sent.
                    if r.answer.as_ref().is_some_and(oneshot::Sender::is_closed) {
                        continue;
                    }
                    *next_id += 1;
                    let id = *next_id;
                    if let Some(answer) = r.answer {
                        pending.insert(id, answer);
                    }
                    if let Some(e) = send_bounded(&mut writer, (r.build)(id)).await {
                        break 'session e;
                    }
                }
                f = frames.recv() => {
                    let m = match f {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => break 'session e.to_string(),
                        None => break 'session "the session closed".into(),
                    };
                    match answers(&m) {
                        Some(id) if id == where_id => {
                            if let Message::YouAreOn { host, cluster, .. } = &m {
                                state.send_modify(|s| {
                                    s.host = Some(host.clone());
                                    s.host_cluster = Some(cluster.clone());
                                });
                            }
                        }
                        Some(id) => {
                            if let Some(answer) = pending.remove(&id) {
                                let _ = answer.send(m);
                            }
                        }
                        None => {
                            if pushes.try_send(m).is_err() {
                                tracing::warn!("linkage: a message from the host was dropped (nobody reads them fast enough)");
                            }
                        }
                    }
                }
            }
        }
    };
    read.abort();
    why
}

/// One request on a session of its own: connect to `endpoint` as `me`,
/// send what `build` makes of request id 1, wait for its answer, close.
/// For a host asking another host; a guest keeps a [`HostLink`].
///
/// # Errors
/// The session could not be opened ([`LinkError::NotConnected`]), it
/// broke, or no answer within `timeout` (all of it, handshake included).
pub async fn request_once(
    endpoint: &Endpoint,
    me: &GuestId,
    key: &LinkKey,
    build: impl FnOnce(u64) -> Message,
    timeout: Duration,
) -> Result<Message, LinkError> {
    let exchange = async {
        let s = open(endpoint, me, key)
            .await
            .map_err(|why| LinkError::NotConnected {
                endpoint: endpoint.to_string(),
                why,
            })?;
        let mut writer = s.writer;
        let mut reader = s.reader;
        writer.send(build(1)).await.map_err(|_| LinkError::Broken)?;
        loop {
            let m = reader.recv().await.map_err(|_| LinkError::Broken)?;
            if answers(&m) == Some(1) {
                return Ok(m);
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(LinkError::Timeout(timeout)))
}
