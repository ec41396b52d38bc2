//! The engine a daemon runs: membership, the guard (quorum, fencing,
//! watchdog) and the runtime that places and runs the daemon's groups
//! through its drivers. It turns membership changes into events and gives
//! the daemon's services a view of the cluster for status.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::events::EventLog;
use crate::fence::{AgentDevice, Device, Fencer};
use crate::guard::{self, GuardParts, GuardState, LocalGroups, Takeover};
use crate::membership::{self, Change, Liveness, Plan, Snapshot, wire};
use crate::status::{LinkStatus, MemberState, MemberStatus, QuorumStatus, TakeoverStatus};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The cluster key is missing or unsafe.
    #[error(transparent)]
    Key(#[from] wire::KeyError),
    /// The node is not in the configuration.
    #[error("node `{0}` is not in the configuration")]
    UnknownNode(String),
    /// State could not be read or written.
    #[error("state directory {path}")]
    State {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Membership could not start.
    #[error(transparent)]
    Membership(#[from] membership::StartError),
    /// A fence device is unusable.
    #[error(transparent)]
    Fence(#[from] crate::fence::FenceError),
    /// The witness client could not be built.
    #[error("witness")]
    Witness(#[from] cluster_witness::WitnessError),
    /// The witness token file could not be read.
    #[error("witness token")]
    WitnessToken(#[from] cluster_witness::TokenError),
    /// The engine's durable state cannot be used.
    #[error(transparent)]
    EngineState(#[from] crate::runtime::RuntimeError),
    /// A fence device of a kind only the daemon can drive, which it did
    /// not provide.
    #[error(
        "fence device `{0}`: this daemon cannot drive it (kind `host` is for guest clusters with a `[linkage]`)"
    )]
    NoFenceDriver(String),
    /// The watchdog device is missing.
    #[error("watchdog device {0} does not exist (set `watchdog.kind` to match this machine)")]
    NoWatchdogDevice(String),
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    node: String,
    events: Arc<EventLog>,
    membership: watch::Receiver<Snapshot>,
    heard: Arc<membership::LastHeard>,
    guard: watch::Receiver<GuardState>,
    disarm: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    incarnation: u64,
    runtime: crate::runtime::Runtime,
    me: usize,
    /// Longest a clean shutdown waits for this node's groups to stop.
    stop_budget: std::time::Duration,
}

/// A short hash of the configuration file, carried in heartbeats so that
/// nodes running different configurations can tell.
pub fn config_generation(config_file: &Path) -> u64 {
    let bytes = std::fs::read(config_file).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

impl Engine {
    /// Start the engine of `node`: read the cluster key, take a new
    /// incarnation, open the event log, start membership. Must run inside a
    /// tokio runtime.
    pub fn start(
        config: &conf::Config,
        config_file: &Path,
        node: &str,
        state_dir: &Path,
        drivers: crate::runtime::Drivers,
    ) -> Result<Arc<Self>, EngineError> {
        let state_err = |source| EngineError::State {
            path: state_dir.display().to_string(),
            source,
        };
        let key = wire::ClusterKey::load(&config.cluster.name, &config.cluster.auth_key_file)?;
        let plan = Plan::from_config(config, node)
            .ok_or_else(|| EngineError::UnknownNode(node.to_owned()))?;
        let me = plan.me;
        let mut drivers = drivers;
        let fencer = Arc::new(fencer(config, std::mem::take(&mut drivers.fence))?);
        let witness = match &config.quorum.witness {
            None => None,
            Some(w) => {
                let token = w
                    .token_file
                    .as_deref()
                    .map(cluster_witness::read_token_file)
                    .transpose()?;
                Some(cluster_witness::WitnessClient::new(
                    &w.url,
                    w.timeout.get(),
                    w.ca_file.as_deref(),
                    token.as_deref(),
                )?)
            }
        };
        if config.watchdog.kind == conf::WatchdogKind::Device && !config.watchdog.device.exists() {
            return Err(EngineError::NoWatchdogDevice(
                config.watchdog.device.display().to_string(),
            ));
        }
        let resume = crate::runtime::load_state(state_dir)?;
        let incarnation = crate::statefile::next_incarnation(state_dir).map_err(state_err)?;
        let events = Arc::new(EventLog::open(state_dir, node).map_err(state_err)?);
        let view = wire::View {
            config_generation: config_generation(config_file),
            ..wire::View::default()
        };
        let names = plan.names.clone();
        let links: Vec<String> = plan.links.iter().map(|l| l.name.clone()).collect();
        let timeout_ms = plan.timeout.as_millis();
        let m = membership::start(plan, key, incarnation, view)?;
        events.emit(
            "daemon_started",
            json!({"incarnation": incarnation, "nodes": names, "links": links, "timeout_ms": timeout_ms}),
        );
        let membership::Membership {
            heard,
            snapshot,
            mut changes,
            view,
        } = m;
        let log = events.clone();
        tokio::spawn(async move {
            while let Some((at, change)) = changes.recv().await {
                record(&log, &names, &links, at, change);
            }
        });
        let config = Arc::new(config.clone());
        let drivers = Arc::new(drivers);
        let runtime_groups = Arc::new(crate::runtime::RuntimeGroups::new(
            config.clone(),
            node.to_owned(),
            drivers.clone(),
        ));
        let groups: Arc<dyn LocalGroups> = runtime_groups.clone();
        let (guard, disarm) = guard::spawn(GuardParts {
            config: config.clone(),
            me,
            membership: snapshot.clone(),
            events: events.clone(),
            fencer,
            watchdog: config.watchdog.clone(),
            groups,
            witness,
        });
        let runtime = crate::runtime::Runtime::spawn(crate::runtime::RuntimeParts {
            config: config.clone(),
            me,
            generation: config_generation(config_file),
            state_dir: state_dir.to_owned(),
            state: resume,
            events: events.clone(),
            membership: snapshot.clone(),
            guard: guard.clone(),
            view,
            drivers,
        });
        runtime_groups.attach(runtime.clone());
        Ok(Arc::new(Self {
            node: node.to_owned(),
            events,
            membership: snapshot,
            heard,
            guard,
            disarm: std::sync::Mutex::new(Some(disarm)),
            incarnation,
            runtime,
            me,
            stop_budget: config
                .groups
                .iter()
                .flat_map(|g| &g.resources)
                .map(|r| r.stop_timeout.get())
                .sum::<std::time::Duration>()
                + std::time::Duration::from_secs(2),
        }))
    }

    /// Clean shutdown: stop this node's groups (bounded by their stop
    /// timeouts), then disarm the watchdog so that stopping the daemon on
    /// purpose does not reset the node. Peers still fence this node or
    /// wait out its lease before they take its groups over.
    pub async fn shutdown(&self) {
        let budget = self.stop_budget;
        if !self.runtime.shutdown(budget).await {
            tracing::error!(
                budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
                "groups not stopped within their stop timeouts; exiting anyway (peers fence this node)"
            );
            self.events.emit(
                "groups_not_stopped",
                json!({"why": "stop timeouts exceeded"}),
            );
        }
        let disarm = self.disarm.lock().ok().and_then(|mut d| d.take());
        if let Some(d) = disarm {
            let _ = d.send(());
            // Let the guard run its disarm before the runtime ends.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.events.emit("daemon_stopped", json!({}));
    }

    /// Quorum as the guard last decided it.
    pub fn quorum(&self) -> Option<QuorumStatus> {
        let g = self.guard.borrow();
        g.quorum.as_ref().map(|d| QuorumStatus {
            quorate: d.quorate,
            votes: d.votes,
            of: d.of,
            reason: d.reason.to_owned(),
            witness: g.witness.map(|w| format!("{w:?}").to_lowercase()),
        })
    }

    /// Lost peers this node (as the coordinator) knows powered off by a
    /// fence device: not those whose lease expired (a lease says nothing
    /// of what its node runs that the cluster does not manage).
    pub fn fenced_peers(&self) -> Vec<String> {
        self.guard
            .borrow()
            .takeovers
            .iter()
            .filter(|(_, t)| matches!(t, Takeover::Allowed { by: "fence" }))
            .map(|(peer, _)| peer.clone())
            .collect()
    }

    /// Lost peers and whether their groups may move.
    pub fn takeovers(&self) -> Vec<TakeoverStatus> {
        self.guard
            .borrow()
            .takeovers
            .iter()
            .map(|(peer, t)| {
                let (state, detail) = match t {
                    Takeover::Fencing => ("fencing", None),
                    Takeover::LeaseWait { remaining_ms } => {
                        ("lease_wait", Some(format!("{remaining_ms} ms left")))
                    }
                    Takeover::Allowed { by } => ("allowed", Some(format!("by {by}"))),
                    Takeover::Blocked => {
                        ("blocked", Some("no fence device and no lease".to_owned()))
                    }
                };
                TakeoverStatus {
                    peer: peer.clone(),
                    state: state.to_owned(),
                    detail,
                }
            })
            .collect()
    }

    /// The engine's runtime: it places and runs the groups.
    pub fn runtime(&self) -> &crate::runtime::Runtime {
        &self.runtime
    }

    /// This node's index in the configuration.
    pub fn me(&self) -> usize {
        self.me
    }

    /// The event log.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// This daemon's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Every member as this node sees it, for status.
    pub fn members(&self) -> Vec<MemberStatus> {
        let snap = self.membership.borrow().clone();
        snap.peers
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let state = if p.name == self.node {
                    MemberState::Local
                } else {
                    match p.liveness {
                        Liveness::Unknown => MemberState::Unknown,
                        Liveness::Alive => MemberState::Alive,
                        Liveness::Lost => MemberState::Lost,
                    }
                };
                let local = state == MemberState::Local;
                MemberStatus {
                    name: p.name,
                    state,
                    links: if local {
                        Vec::new()
                    } else {
                        p.links
                            .into_iter()
                            .map(|(name, up)| LinkStatus { name, up })
                            .collect()
                    },
                    last_heard_ms: self.heard.elapsed_ms(i),
                    dropped: if local {
                        None
                    } else {
                        Some(crate::status::Dropped {
                            forged: p.drops.forged,
                            replayed: p.drops.replayed,
                            stale: p.drops.stale,
                            malformed: p.drops.malformed,
                        })
                    },
                }
            })
            .collect()
    }
}

/// The fence devices of the configuration: agents and Redfish built
/// here, `host` devices taken from `provided` (the daemon's own) by name.
fn fencer(
    config: &conf::Config,
    mut provided: Vec<Box<dyn Device>>,
) -> Result<Fencer, EngineError> {
    let mut devices: Vec<Box<dyn Device>> = Vec::new();
    for dev in &config.fencing {
        match &dev.kind {
            conf::FenceKind::Agent(_) => devices.push(Box::new(AgentDevice::from_config(dev)?)),
            conf::FenceKind::Redfish(_) => {
                devices.push(Box::new(crate::fence::RedfishDevice::from_config(dev)?));
            }
            conf::FenceKind::Host(_) => {
                let Some(at) = provided.iter().position(|d| d.name() == dev.name) else {
                    return Err(EngineError::NoFenceDriver(dev.name.clone()));
                };
                devices.push(provided.swap_remove(at));
            }
        }
    }
    Ok(Fencer::new(devices))
}

fn record(
    log: &EventLog,
    names: &[String],
    links: &[String],
    _at: std::time::Instant,
    change: Change,
) {
    let name = |i: usize| names.get(i).cloned().unwrap_or_default();
    let link = |i: usize| links.get(i).cloned().unwrap_or_default();
    match change {
        Change::PeerAlive { peer } => log.emit("peer_alive", json!({"peer": name(peer)})),
        Change::PeerLost { peer, last_heard } => log.emit(
            "peer_lost",
            json!({"peer": name(peer), "silent_ms": last_heard.map(|t| t.elapsed().as_millis() as u64)}),
        ),
        Change::PeerRestarted { peer, incarnation } => {
            log.emit("peer_restarted", json!({"peer": name(peer), "incarnation": incarnation}));
        }
        Change::LinkDown { peer, link: l } => log.emit("link_down", json!({"peer": name(peer), "link": link(l)})),
        Change::LinkUp { peer, link: l } => log.emit("link_up", json!({"peer": name(peer), "link": link(l)})),
    }
}
