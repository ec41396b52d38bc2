//! The host's hypervisor through libvirt.
//!
//! libvirt calls block, so all of them run on one dedicated thread that owns
//! the connection; the async daemon talks to it through a channel. The
//! connection is opened lazily and re-opened after a failure, so a libvirtd
//! restart is survived. A failure to reach libvirt is reported as such and
//! never as "no domains" (unknown is never stopped).

use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;
use virt::connect::Connect;
use virt::domain::DomainState;
use virt::enumutil::Enum;

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

enum Job {
    Inventory(oneshot::Sender<Result<Vec<DomainInfo>, HypervisorError>>),
    Destroy(String, oneshot::Sender<Result<(), HypervisorError>>),
}

/// Handle to the libvirt worker thread of one hypervisor.
#[derive(Debug, Clone)]
pub struct Hypervisor {
    uri: String,
    jobs: mpsc::Sender<Job>,
}

impl Hypervisor {
    /// Start the worker for the hypervisor at `uri` (`qemu:///system`,
    /// `test:///default`, ...). The connection opens on first use.
    pub fn spawn(uri: &str) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let worker_uri = uri.to_owned();
        thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || worker(&worker_uri, &rx))?;
        Ok(Self {
            uri: uri.to_owned(),
            jobs,
        })
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Power the domain `name` off at once (`virDomainDestroy`).
    pub async fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Destroy(name.to_owned(), tx))
            .map_err(|_| HypervisorError::WorkerGone)?;
        rx.await.map_err(|_| HypervisorError::WorkerGone)?
    }

    /// Every domain libvirt knows on this host, active or not.
    pub async fn inventory(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Inventory(tx))
            .map_err(|_| HypervisorError::WorkerGone)?;
        rx.await.map_err(|_| HypervisorError::WorkerGone)?
    }
}

fn worker(uri: &str, jobs: &mpsc::Receiver<Job>) {
    let mut conn: Option<Connect> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Inventory(reply) => {
                let result = connection(uri, &mut conn).and_then(|c| inventory(uri, c));
                if result.is_err() {
                    // Re-open on the next request: libvirtd may have restarted.
                    conn = None;
                }
                let _ = reply.send(result);
            }
            Job::Destroy(name, reply) => {
                let result = connection(uri, &mut conn).and_then(|c| {
                    let dom = c
                        .lookup_domain_by_name(&name)
                        .map_err(|e| libvirt_err(uri, &e))?;
                    dom.destroy().map_err(|e| libvirt_err(uri, &e))
                });
                let _ = reply.send(result);
            }
        }
    }
}

fn connection<'a>(
    uri: &str,
    conn: &'a mut Option<Connect>,
) -> Result<&'a Connect, HypervisorError> {
    if !conn.as_ref().is_some_and(|c| c.is_alive().unwrap_or(false)) {
        let opened = Connect::open(Some(uri)).map_err(|e| libvirt_err(uri, &e))?;
        tracing::info!(uri, "connected to libvirt");
        *conn = Some(opened);
    }
    conn.as_ref().ok_or_else(|| HypervisorError::Libvirt {
        uri: uri.to_owned(),
        message: "connection closed".to_owned(),
    })
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

fn libvirt_err(uri: &str, e: &virt::error::Error) -> HypervisorError {
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
