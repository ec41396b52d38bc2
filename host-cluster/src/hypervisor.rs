//! The host's hypervisor through libvirt.
//!
//! libvirt calls block, so all of them run on one dedicated thread
//! (`libvirt`) that owns the connection; the async daemon talks to it
//! through a channel ([`Hypervisor::call`] runs a closure there). Nothing
//! else in the daemon calls libvirt.
//!
//! - The connection is opened on first use, with libvirt's event loop
//!   registered before it ([`crate::libvirt_events::ensure_event_loop`]),
//!   a keepalive (5 s x 3, where the driver has one: `test:///` has not),
//!   and a lifecycle-event callback whose events every
//!   [`Hypervisor::subscribe`]r receives.
//! - A lost connection (libvirtd restarted, keepalive expired) is noticed
//!   after any call and by a check every second, and re-opened with its
//!   callback registered again, within about a second of libvirtd being
//!   back. A connection that is still alive is never re-opened: with
//!   `test:///<file>` URIs every open starts from the file again.
//! - A failure to reach libvirt is reported as such and never as "no
//!   domains" (unknown is never stopped).
//! - A call whose caller stopped waiting (its timeout passed) before the
//!   thread got to it is skipped, so that a late start cannot create a VM
//!   after its start was given up.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};
use virt::connect::Connect;
use virt::domain::DomainState;
use virt::enumutil::Enum;

use crate::libvirt_events::{self, DomainEvent, Registration};

/// How often the thread checks that its connection is alive (and tries to
/// re-open a lost one).
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// Keepalive: a probe every this many seconds...
const KEEPALIVE_INTERVAL: i32 = 5;
/// ... and the connection counts as lost after this many unanswered.
const KEEPALIVE_COUNT: u32 = 3;
/// Lifecycle events buffered per subscriber; a slower subscriber misses
/// the oldest (and falls back on polling).
const EVENT_BUFFER: usize = 1024;
/// A lost connection is logged again at most this often while it stays lost.
const RELOG_EVERY: Duration = Duration::from_secs(60);

/// A domain as libvirt reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// State, lower case (`running`, `paused`, `shutoff`, `crashed`, ...).
    pub state: &'static str,
    /// Current memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
}

/// libvirt could not answer.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The connection could not be opened or was lost.
    #[error("libvirt at {uri}: {message}")]
    Libvirt {
        /// Connection URI.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// The libvirt thread is gone.
    #[error("the libvirt worker thread has stopped")]
    WorkerGone,
}

/// One closure for the libvirt thread, with where its answer goes.
trait Call: Send {
    /// The caller still waits for the answer.
    fn wanted(&self) -> bool;
    /// Run it (or report why it cannot run) and send the answer.
    fn run(self: Box<Self>, conn: Result<&Connect, HypervisorError>);
}

struct Pending<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T, HypervisorError>>,
}

impl<T, F> Call for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connect) -> T + Send,
{
    fn wanted(&self) -> bool {
        !self.reply.is_closed()
    }

    fn run(self: Box<Self>, conn: Result<&Connect, HypervisorError>) {
        let Self { f, reply } = *self;
        let _ = reply.send(conn.map(f));
    }
}

enum Job {
    Call(Box<dyn Call>),
    Reconnect(oneshot::Sender<Result<(), HypervisorError>>),
}

/// Handle to the libvirt worker thread of one hypervisor. Clones share
/// the thread and its connection; the thread ends when the last handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct Hypervisor {
    uri: String,
    jobs: mpsc::Sender<Job>,
    events: broadcast::Sender<DomainEvent>,
}

impl Hypervisor {
    /// Start the worker for the hypervisor at `uri` (`qemu:///system`,
    /// `test:///default`, ...). The connection opens on first use; libvirt's
    /// event loop is registered (once per process) before that.
    pub fn spawn(uri: &str) -> std::io::Result<Self> {
        libvirt_events::ensure_event_loop().map_err(std::io::Error::other)?;
        let (jobs, rx) = mpsc::channel();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut worker = Worker {
            uri: uri.to_owned(),
            events: events.clone(),
            live: None,
            wanted: false,
            lost_logged: None,
        };
        thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || worker.run(&rx))?;
        Ok(Self {
            uri: uri.to_owned(),
            jobs,
            events,
        })
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Lifecycle events of every domain of this hypervisor, from now on.
    /// Events are lost while the connection is down (poll after
    /// reconnecting) and when the receiver lags more than 1024 behind.
    pub fn subscribe(&self) -> broadcast::Receiver<DomainEvent> {
        self.events.subscribe()
    }

    /// Run `f` with the connection on the libvirt thread and return what it
    /// returns; an error if libvirt cannot be reached. Calls run one at a
    /// time, in order. If this future is dropped before the thread gets to
    /// the call, the call is skipped.
    pub async fn call<T, F>(&self, f: F) -> Result<T, HypervisorError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> T + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Call(Box::new(Pending { f, reply })))
            .map_err(|_| HypervisorError::WorkerGone)?;
        rx.await.map_err(|_| HypervisorError::WorkerGone)?
    }

    /// Open a new connection now, with the event callback registered on
    /// it, then close the old one (kept if the new one cannot be opened).
    /// Never needed in normal operation (a lost connection is re-opened by
    /// itself); note that with `test:///<file>` URIs the new connection
    /// starts from the file again (`test:///default` is shared within the
    /// process and keeps its state).
    pub async fn reconnect(&self) -> Result<(), HypervisorError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Reconnect(tx))
            .map_err(|_| HypervisorError::WorkerGone)?;
        rx.await.map_err(|_| HypervisorError::WorkerGone)?
    }

    /// Power the domain `name` off at once (`virDomainDestroy`).
    pub async fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        let name = name.to_owned();
        let uri = self.uri.clone();
        self.call(move |c| {
            let dom = c
                .lookup_domain_by_name(&name)
                .map_err(|e| libvirt_err(&uri, &e))?;
            dom.destroy().map_err(|e| libvirt_err(&uri, &e))
        })
        .await?
    }

    /// Every domain libvirt knows on this host, active or not.
    pub async fn inventory(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let uri = self.uri.clone();
        self.call(move |c| inventory(&uri, c)).await?
    }
}

/// An open connection and its event callback.
struct Live {
    /// Held for its `Drop`, which removes the callback; dropped before
    /// `conn` (declaration order).
    _events: Option<Registration>,
    conn: Connect,
}

struct Worker {
    uri: String,
    events: broadcast::Sender<DomainEvent>,
    live: Option<Live>,
    /// The connection has been asked for: keep it open from now on.
    wanted: bool,
    /// When the connection was last logged as lost or unreachable.
    lost_logged: Option<Instant>,
}

impl Worker {
    fn run(&mut self, jobs: &mpsc::Receiver<Job>) {
        loop {
            match jobs.recv_timeout(LIVENESS_CHECK) {
                Ok(Job::Call(call)) => {
                    if !call.wanted() {
                        tracing::debug!("skipping a libvirt call its caller gave up on");
                        continue;
                    }
                    call.run(self.connection());
                    self.check_alive();
                }
                Ok(Job::Reconnect(reply)) => {
                    self.wanted = true;
                    // The new connection first, then the old one goes: no
                    // gap in the events, and `test:///default` keeps its
                    // state (it lives while any connection to it is open).
                    let result = self.open().map(|live| {
                        self.live = Some(live);
                        self.lost_logged = None;
                    });
                    let _ = reply.send(result);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.check_alive();
                    if self.wanted && self.live.is_none() {
                        // Re-open now, so that events flow again without
                        // waiting for the next call.
                        let _ = self.connection();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        tracing::debug!(uri = %self.uri, "libvirt worker stopped");
    }

    /// The open connection, opening it if there is none.
    fn connection(&mut self) -> Result<&Connect, HypervisorError> {
        self.wanted = true;
        self.check_alive();
        if self.live.is_none() {
            match self.open() {
                Ok(live) => {
                    self.live = Some(live);
                    self.lost_logged = None;
                }
                Err(e) => {
                    if self
                        .lost_logged
                        .is_none_or(|at| at.elapsed() >= RELOG_EVERY)
                    {
                        tracing::warn!(error = %e, "cannot connect to libvirt");
                        self.lost_logged = Some(Instant::now());
                    }
                    return Err(e);
                }
            }
        }
        self.live
            .as_ref()
            .map(|l| &l.conn)
            .ok_or_else(|| HypervisorError::Libvirt {
                uri: self.uri.clone(),
                message: "connection closed".to_owned(),
            })
    }

    fn open(&self) -> Result<Live, HypervisorError> {
        let conn = Connect::open(Some(&self.uri)).map_err(|e| libvirt_err(&self.uri, &e))?;
        if let Err(e) = conn.set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT) {
            // The in-process drivers (test:///) have no keepalive.
            tracing::debug!(uri = %self.uri, error = %e.message(), "no libvirt keepalive");
        }
        let registration = match Registration::lifecycle(&conn, self.events.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    uri = %self.uri,
                    error = %e.message(),
                    "no libvirt lifecycle events on this connection: VM monitors poll only"
                );
                None
            }
        };
        tracing::info!(
            uri = %self.uri,
            events = registration.is_some(),
            "connected to libvirt"
        );
        Ok(Live {
            _events: registration,
            conn,
        })
    }

    /// Drop the connection if libvirt says it is dead.
    fn check_alive(&mut self) {
        if let Some(live) = &self.live
            && !live.conn.is_alive().unwrap_or(false)
        {
            tracing::warn!(uri = %self.uri, "libvirt connection lost; re-opening it");
            self.live = None;
            self.lost_logged = Some(Instant::now());
        }
    }
}

fn inventory(uri: &str, conn: &Connect) -> Result<Vec<DomainInfo>, HypervisorError> {
    let domains = conn.list_all_domains(0).map_err(|e| libvirt_err(uri, &e))?;
    let mut out = Vec::with_capacity(domains.len());
    for dom in domains {
        let name = dom.name().map_err(|e| libvirt_err(uri, &e))?;
        // `Domain::state()` in virt 0.5 hides errors; `info()` reports them.
        let info = dom.info().map_err(|e| libvirt_err(uri, &e))?;
        out.push(DomainInfo {
            name,
            state: state_name(info.state),
            memory_mib: info.memory / 1024,
            vcpus: info.nr_virt_cpu,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn state_name(state: Enum<DomainState, virt::sys::virDomainState>) -> &'static str {
    match state {
        Enum::Known(DomainState::NoState) => "nostate",
        Enum::Known(DomainState::Running) => "running",
        Enum::Known(DomainState::Blocked) => "blocked",
        Enum::Known(DomainState::Paused) => "paused",
        Enum::Known(DomainState::Shutdown) => "shutdown",
        Enum::Known(DomainState::Shutoff) => "shutoff",
        Enum::Known(DomainState::Crashed) => "crashed",
        Enum::Known(DomainState::PMSuspended) => "pmsuspended",
        Enum::Unknown(_) => "unknown",
    }
}

pub(crate) fn libvirt_err(uri: &str, e: &virt::error::Error) -> HypervisorError {
    HypervisorError::Libvirt {
        uri: uri.to_owned(),
        message: e.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_driver_reports_its_default_domain() {
        let hv = Hypervisor::spawn("test:///default").unwrap_or_else(|e| panic!("{e}"));
        let domains = hv.inventory().await.unwrap_or_else(|e| panic!("{e}"));
        let test = domains
            .iter()
            .find(|d| d.name == "test")
            .unwrap_or_else(|| panic!("{domains:?}"));
        assert_eq!(test.state, "running");
        assert!(test.vcpus >= 1 && test.memory_mib > 0, "{test:?}");
    }

    #[tokio::test]
    async fn an_unreachable_libvirt_is_an_error_not_an_empty_host() {
        let hv = Hypervisor::spawn("qemu+unix:///system?socket=/nonexistent/libvirt.sock")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            hv.inventory().await,
            Err(HypervisorError::Libvirt { .. })
        ));
    }
}
