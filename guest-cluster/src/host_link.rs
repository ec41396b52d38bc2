//! The guest's end of the linkage: one session to the daemon of the host
//! this guest runs on (`[linkage] connect`), and the fence devices of
//! kind `host` that go through it.
//!
//! A `host` fence device asks the host daemon to power the peer's VM off
//! (`Fence { peer }`) and succeeds only on `FenceResult { off: true }`;
//! no session, a refusal, a VM on another host or no answer within the
//! device's timeout is a failed attempt, which the engine's fencer
//! retries (and reports) like any other.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster_core::fence::{Device, FenceError, FenceFuture};
use cluster_core::status::LinkageStatus;
use linkage::{GuestId, HostLink, LinkKey, Message};
use tokio::sync::{mpsc, watch};

/// What the host said of this guest's interfaces: by MAC address (lower
/// case), why the interface cannot carry traffic (its host uplink is
/// down). `nic` monitors read it.
pub type HostNotices = watch::Receiver<BTreeMap<String, String>>;

/// Why the linkage could not start.
#[derive(Debug, thiserror::Error)]
pub enum GuestLinkageError {
    /// The key file cannot be used.
    #[error("linkage.key_file: {0}")]
    Key(#[from] conf::SecretFileError),
}

/// This guest's session to its host daemon.
#[derive(Debug)]
pub struct GuestLinkage {
    link: HostLink,
    connect: String,
    notices: HostNotices,
    prepare: std::sync::Mutex<Option<mpsc::Receiver<PrepareShutdown>>>,
}

/// The host's `PrepareShutdown`: hand every group over, then answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrepareShutdown {
    /// The host's request, to answer with `ShutdownReady`.
    pub request_id: u64,
    /// How long the host waits.
    pub deadline: Duration,
}

impl GuestLinkage {
    /// Open (and keep open) the session of `config`'s `[linkage]` (a
    /// guest's) as guest `node`, to the node's `linkage_connect` or the
    /// section's `connect`; `None` without a `[linkage]`.
    ///
    /// # Errors
    /// The key file cannot be used.
    pub fn start(config: &conf::Config, node: &str) -> Result<Option<Self>, GuestLinkageError> {
        let Some(conf::Linkage::Guest(g)) = &config.linkage else {
            return Ok(None);
        };
        let key = LinkKey::load(&g.key_file)?;
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let me = GuestId {
            name: node.to_owned(),
            cluster: config.cluster.name.clone(),
        };
        let connect = config
            .node(node)
            .and_then(|n| n.linkage_connect.clone())
            .unwrap_or_else(|| g.connect.clone());
        let (link, mut pushed) = HostLink::spawn(connect.clone(), me, key, incarnation);
        let (notices_tx, notices) = watch::channel(BTreeMap::new());
        let (prepare_tx, prepare) = mpsc::channel(4);
        // What the host said holds for its session only: when the session
        // ends, it is forgotten (the host says it again on the next one).
        let mut changes = link.state_changes();
        let forget = notices_tx.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let connected = changes.borrow_and_update().connected;
                if !connected {
                    forget.send_if_modified(|n| {
                        let had = !n.is_empty();
                        n.clear();
                        had
                    });
                }
            }
        });
        let state = link.clone();
        tokio::spawn(async move {
            while let Some(m) = pushed.recv().await {
                let host = state.state().host.unwrap_or_else(|| "?".into());
                match m {
                    Message::NicDown {
                        host_interface,
                        guest_macs,
                    } => {
                        tracing::warn!(host, host_interface, macs = ?guest_macs, "linkage: the host reports the uplink of this guest's interfaces down");
                        notices_tx.send_modify(|n| {
                            for mac in guest_macs {
                                n.insert(
                                    mac.to_ascii_lowercase(),
                                    format!(
                                        "its host uplink {host_interface} on host {host} is down"
                                    ),
                                );
                            }
                        });
                    }
                    Message::NicUp {
                        host_interface,
                        guest_macs,
                    } => {
                        notices_tx.send_if_modified(|n| {
                            let before = n.len();
                            for mac in &guest_macs {
                                n.remove(&mac.to_ascii_lowercase());
                            }
                            let changed = n.len() != before;
                            if changed {
                                tracing::info!(host, host_interface, macs = ?guest_macs, "linkage: the host reports the uplink of this guest's interfaces back up");
                            }
                            changed
                        });
                    }
                    Message::PrepareShutdown {
                        request_id,
                        deadline_ms,
                    } => {
                        tracing::warn!(
                            host,
                            deadline_ms,
                            "linkage: the host goes into maintenance: handing this guest's groups over"
                        );
                        let _ = prepare_tx.try_send(PrepareShutdown {
                            request_id,
                            deadline: Duration::from_millis(deadline_ms),
                        });
                    }
                    other => {
                        tracing::info!(message = ?other, "linkage: message from the host (not acted on by this version)");
                    }
                }
            }
        });
        Ok(Some(Self {
            link,
            connect: connect.to_string(),
            notices,
            prepare: std::sync::Mutex::new(Some(prepare)),
        }))
    }

    /// The host's `PrepareShutdown` requests (taken once, by the daemon,
    /// which answers each with [`GuestLinkage::shutdown_ready`]).
    pub fn take_prepare_requests(&self) -> Option<mpsc::Receiver<PrepareShutdown>> {
        self.prepare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Tell the host this guest handed its groups over (`ShutdownReady`).
    ///
    /// # Errors
    /// No session to the host.
    pub async fn shutdown_ready(&self, request_id: u64) -> Result<(), linkage::LinkError> {
        self.link.tell(Message::ShutdownReady { request_id }).await
    }

    /// What the host says of this guest's interfaces, for `nic` monitors.
    pub fn notices(&self) -> HostNotices {
        self.notices.clone()
    }

    /// The fence devices of kind `host` in `config`, through this session.
    pub fn fence_devices(&self, config: &conf::Config) -> Vec<Box<dyn Device>> {
        config
            .fencing
            .iter()
            .filter(|d| matches!(d.kind, conf::FenceKind::Host(_)))
            .map(|d| {
                Box::new(HostFenceDevice {
                    name: d.name.clone(),
                    targets: d.targets.clone(),
                    timeout: d.timeout.get(),
                    delay: d.delay.get(),
                    link: self.link.clone(),
                }) as Box<dyn Device>
            })
            .collect()
    }

    /// For `clusterctl status`.
    pub fn status(&self) -> LinkageStatus {
        let s = self.link.state();
        LinkageStatus::Guest {
            connect: self.connect.clone(),
            connected: s.connected,
            host: s.host,
            error: s.error,
        }
    }
}

/// `kind = "host"`: the host daemon powers the peer's VM off.
#[derive(Debug)]
pub struct HostFenceDevice {
    name: String,
    targets: Vec<String>,
    timeout: Duration,
    delay: Duration,
    link: HostLink,
}

impl Device for HostFenceDevice {
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
        Box::pin(async move {
            let failed = |reason: String| FenceError::HostNotConfirmed {
                device: self.name.clone(),
                target: target.to_owned(),
                reason,
            };
            if !self.can_fence(target) {
                return Err(FenceError::NotATarget {
                    device: self.name.clone(),
                    target: target.to_owned(),
                });
            }
            match self.link.fence(target, self.timeout).await {
                Ok(answer) if answer.off => Ok(()),
                Ok(answer) => {
                    Err(failed(answer.error.unwrap_or_else(|| {
                        "the host answered not off, without a reason".into()
                    })))
                }
                Err(e) => Err(failed(e.to_string())),
            }
        })
    }
}
