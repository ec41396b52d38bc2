//! The simulator: the real engine ([`NodeCore`], [`placement`], and
//! [`quorum::decide`]) on every node of a cluster, in virtual time, with
//! fake effects: membership follows a connectivity model (a peer is lost
//! `heartbeat.timeout` after it was last reachable), views travel at once
//! when they change (as the membership layer sends a changed view early),
//! resources are flags that take a configurable time to start and stop,
//! fence devices power nodes off after a delay (or fail as often as the
//! scenario says), and a node without quorum force-stops
//! everything after the start-up grace, as the daemons' guard does.
//!
//! A [`Scenario`] is a configuration, timed events, and expectations
//! (which group runs where at given times, which events happen in which
//! order). While it runs, two invariants are checked at every step: no
//! group is active (started by the cluster) on two powered nodes at once,
//! and no start is issued on a node that is not quorate.
//!
//! [`placement`]: crate::placement

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::node::{
    ClusterInput, Effect, EngineView, LocalState, NodeCore, Op, OpResult, ResourceOp,
};
use crate::placement::GroupId;
use crate::quorum::{self, TieBreak, WitnessVote};
use crate::resource::{ActionOutcome, CheckOutcome, Probe};

/// The simulator's step, in virtual milliseconds.
pub const STEP_MS: u64 = 10;
/// Time a fake start or stop takes.
pub const DEFAULT_ACTION_MS: u64 = 200;
/// Time a fake fence takes (on top of the device's delay).
pub const DEFAULT_FENCE_MS: u64 = 1000;

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows.
    pub description: String,
    /// Node names (generates `[[nodes]]`); leave empty when `config` has them.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Cluster kind for a generated header: `guest` (the default; exec and
    /// other service resources) or `host` (`vm` resources, and `capacity`
    /// on the nodes that have one).
    #[serde(default)]
    pub kind: SimKind,
    /// Per node capacity, for generated nodes: `{ n2 = { memory_mib = 4096, vcpus = 4 } }`.
    #[serde(default)]
    pub capacity: BTreeMap<String, CapacitySpec>,
    /// Heartbeat interval and timeout for a generated header.
    #[serde(default = "default_interval", with = "humantime_serde_ms")]
    pub interval: u64,
    /// See `interval`.
    #[serde(default = "default_timeout", with = "humantime_serde_ms")]
    pub timeout: u64,
    /// Configuration: a whole file, or (with `nodes`) the sections after
    /// `[cluster]`, `[heartbeat]` and `[[nodes]]`.
    pub config: String,
    /// How long to run.
    #[serde(with = "humantime_serde_ms")]
    pub duration: u64,
    /// Time a fake start or stop takes.
    #[serde(default = "default_action", with = "humantime_serde_ms")]
    pub action_time: u64,
    /// Time a fake fence takes.
    #[serde(default = "default_fence", with = "humantime_serde_ms")]
    pub fence_time: u64,
    /// Timed events.
    #[serde(default)]
    pub events: Vec<TimedEvent>,
    /// Where groups run at given times.
    #[serde(default)]
    pub expect: Vec<Expect>,
    /// Events that must happen, in this order (`node:kind[:group]`, `*`
    /// for any node).
    #[serde(default)]
    pub expect_order: Vec<String>,
    /// Event kinds that must never happen.
    #[serde(default)]
    pub expect_never: Vec<String>,
}

/// The `cluster.kind` of a generated header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimKind {
    /// A guest cluster.
    #[default]
    Guest,
    /// A host cluster: its nodes get a hypervisor URI.
    Host,
}

/// Memory and vCPUs of a generated node.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySpec {
    /// MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
}

fn default_interval() -> u64 {
    200
}
fn default_timeout() -> u64 {
    800
}
fn default_action() -> u64 {
    DEFAULT_ACTION_MS
}
fn default_fence() -> u64 {
    DEFAULT_FENCE_MS
}

mod humantime_serde_ms {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(serde::de::Error::custom)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// An event at a time. (No `deny_unknown_fields` here: serde cannot
/// combine it with `flatten`; the event's own fields are checked.)
#[derive(Clone, Debug, Deserialize)]
pub struct TimedEvent {
    /// When.
    #[serde(with = "humantime_serde_ms")]
    pub at: u64,
    /// What.
    #[serde(flatten)]
    pub event: SimEvent,
}

/// What can happen.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum SimEvent {
    /// Power a node off (its daemon and resources die).
    PowerOff {
        /// Node.
        node: String,
    },
    /// Power it on (its daemon starts from its persisted state).
    PowerOn {
        /// Node.
        node: String,
    },
    /// Kill the daemon only (kill -9); resources keep running.
    KillDaemon {
        /// Node.
        node: String,
    },
    /// Start the daemon again.
    StartDaemon {
        /// Node.
        node: String,
    },
    /// Cut every link of a node.
    NetworkOff {
        /// Node.
        node: String,
    },
    /// Restore them.
    NetworkOn {
        /// Node.
        node: String,
    },
    /// Split the cluster: nodes in different sides cannot reach each other.
    Partition {
        /// The sides.
        sides: Vec<Vec<String>>,
    },
    /// Undo partitions.
    Heal,
    /// A resource fails: its monitor fails until it is restarted (and a
    /// probe finds it failed).
    ResourceFail {
        /// Node.
        node: String,
        /// Resource.
        resource: String,
    },
    /// A resource stops behind the cluster's back (a process dies, the
    /// kernel drops a floating address): monitors and probes find it
    /// stopped.
    ResourceVanish {
        /// Node.
        node: String,
        /// Resource.
        resource: String,
    },
    /// A monitor fails on a node, wherever it runs there (where its group
    /// runs, and on a standby for `while_active = false` monitors), until
    /// `monitor_ok`. Elsewhere a check on a standby passes; one where the
    /// group runs fails as well when a resource of the group failed or is
    /// not running.
    MonitorFail {
        /// Node.
        node: String,
        /// Monitor.
        monitor: String,
        /// Its group, if another group has a monitor of that name.
        #[serde(default)]
        group: Option<String>,
    },
    /// The injected failure of a monitor on a node is gone.
    MonitorOk {
        /// Node.
        node: String,
        /// Monitor.
        monitor: String,
        /// Its group, if another group has a monitor of that name.
        #[serde(default)]
        group: Option<String>,
    },
    /// Its next `count` starts on the node fail.
    StartFail {
        /// Node.
        node: String,
        /// Resource.
        resource: String,
        /// How many.
        #[serde(default = "one")]
        count: u32,
    },
    /// Its stops on the node fail.
    StopFail {
        /// Node.
        node: String,
        /// Resource.
        resource: String,
    },
    /// An operator repairs a resource on a node: injected start, stop and
    /// monitor failures are gone (what runs keeps running).
    Repair {
        /// Node.
        node: String,
        /// Resource.
        resource: String,
    },
    /// Someone starts a group's resources on a node behind the cluster's back.
    StartBehindBack {
        /// Node.
        node: String,
        /// Group.
        group: String,
    },
    /// Fencing the node fails `count` times first.
    FenceFail {
        /// Target node.
        node: String,
        /// How many.
        #[serde(default = "one")]
        count: u32,
    },
    /// The ping target stops answering a node (two-node tie-break).
    PingOff {
        /// Node.
        node: String,
    },
    /// An operator request, given to `via` (default the first node).
    Group {
        /// `start`, `stop`, `move`, `clear`.
        op: String,
        /// Group.
        group: String,
        /// For `move`: the node.
        #[serde(default)]
        to: Option<String>,
        /// Node whose daemon receives it.
        #[serde(default)]
        via: Option<String>,
    },
    /// Maintenance on or off for a node.
    Maintenance {
        /// Node.
        node: String,
        /// On or off.
        on: bool,
    },
}

fn one() -> u32 {
    1
}

/// Where groups run at a time (`"none"`: nowhere).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// When.
    #[serde(with = "humantime_serde_ms")]
    pub at: u64,
    /// Group to node (or `none`).
    #[serde(default)]
    pub running: BTreeMap<String, String>,
    /// Group to a piece of the reason, in words, that the newest published
    /// placement gives for it (as `clusterctl status` shows it), e.g.
    /// `{ web = "failed over from n0" }`.
    #[serde(default)]
    pub reason: BTreeMap<String, String>,
}

/// One recorded event.
#[derive(Clone, Debug, PartialEq)]
pub struct SimRecord {
    /// Virtual time.
    pub at_ms: u64,
    /// Node.
    pub node: String,
    /// Kind.
    pub kind: String,
    /// Group, if any.
    pub group: Option<String>,
    /// Everything.
    pub details: serde_json::Value,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every event, in time order.
    pub events: Vec<SimRecord>,
    /// Failed expectations and violated invariants.
    pub failures: Vec<String>,
    /// Where each group ran at the end.
    pub final_placement: BTreeMap<String, Vec<String>>,
}

impl Report {
    /// No failures.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The scenario file is not valid.
    #[error("scenario: {0}")]
    Parse(String),
    /// Its configuration is not valid.
    #[error("configuration of the scenario:\n{0}")]
    Config(String),
    /// It names something that does not exist.
    #[error("scenario names unknown {what} `{name}`")]
    Unknown {
        /// Node, group, resource.
        what: &'static str,
        /// The name.
        name: String,
    },
}

impl Scenario {
    /// Parse a scenario file's text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))
    }

    /// The cluster configuration text.
    pub fn config_text(&self) -> String {
        if self.nodes.is_empty() {
            return self.config.clone();
        }
        let kind = match self.kind {
            SimKind::Guest => "guest",
            SimKind::Host => "host",
        };
        let mut t = format!(
            "[cluster]\nname = \"sim\"\nkind = \"{kind}\"\nauth_key_file = \"/dev/null\"\nstate_dir = \"/nonexistent\"\n\n\
             [heartbeat]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nlinks = [{{ name = \"l0\" }}]\n\n",
            self.interval, self.timeout
        );
        for (k, n) in self.nodes.iter().enumerate() {
            t.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\nlinks = {{ l0 = [\"10.0.0.{}/24\"] }}\n",
                k + 1
            ));
            if self.kind == SimKind::Host {
                t.push_str("libvirt_uri = \"test:///default\"\n");
            }
            if let Some(c) = self.capacity.get(n) {
                t.push_str(&format!(
                    "capacity = {{ memory_mib = {}, vcpus = {} }}\n",
                    c.memory_mib, c.vcpus
                ));
            }
            t.push('\n');
        }
        t.push_str(&self.config);
        t
    }

    /// The validated cluster configuration.
    pub fn load_config(&self) -> Result<conf::Config, ScenarioError> {
        conf::load_str("scenario", &self.config_text())
            .map_err(|d| ScenarioError::Config(d.to_string()))
    }
}

#[derive(Debug, Default)]
struct FakeResource {
    running: bool,
    by_cluster: bool,
    failing: bool,
    start_fails: u32,
    stop_fails: bool,
}

#[derive(Debug)]
enum Pending {
    Resource {
        node: usize,
        life: u64,
        group: GroupId,
        resource: usize,
        op: ResourceOp,
    },
    Check {
        node: usize,
        life: u64,
        group: GroupId,
        monitor: usize,
    },
}

#[derive(Debug)]
struct SimNode {
    name: String,
    powered: bool,
    daemon: bool,
    /// Bumped at every daemon start: completions of an older life are
    /// dropped.
    life: u64,
    started_at: u64,
    net: bool,
    side: usize,
    core: Option<NodeCore>,
    disk: LocalState,
    resources: BTreeMap<(GroupId, usize), FakeResource>,
    /// Monitors (group, index) made to fail here (`monitor_fail`); kept
    /// over power cycles, as what they watch is outside the node.
    monitor_failing: BTreeSet<(GroupId, usize)>,
    /// Per peer: when it was last reachable.
    last_reach: Vec<Option<u64>>,
    /// Per peer: its view as last received.
    views: Vec<Option<EngineView>>,
    /// Per peer: the daemon life that view came from (a restarted peer's
    /// first heartbeat carries its new view, never the old one).
    view_life: Vec<u64>,
    /// Per peer: the sequence number of the view last received.
    view_seq: Vec<u64>,
    /// This node's own view as last sent, and its sequence number (from
    /// [`Sim::view_seq`], bumped whenever the view changes).
    sent: (Option<EngineView>, u64),
    /// The input of the engine's last step, reused while nothing in it
    /// changed (dropped when a view arrives).
    input: Option<ClusterInput>,
    /// Peers known down (fenced or lease expired) by this node's guard.
    down: BTreeSet<usize>,
    /// Peers being fenced by this node: (done at, attempt).
    fencing: BTreeMap<usize, (u64, u32)>,
    quorate: bool,
    was_quorate: bool,
    unquorate_since: Option<u64>,
    /// When this daemon last gained quorum (the guard's `quorate_since`).
    quorate_since: Option<u64>,
    ping_ok: bool,
    fence_fails: u32,
    shutting_down: bool,
    /// The daemon died (killed) while its watchdog was armed: the node
    /// resets at this time unless a new daemon feeds the watchdog again
    /// (gains quorum) first.
    watchdog_reset_at: Option<u64>,
}

/// A running simulation.
#[derive(Debug)]
pub struct Sim {
    config: Arc<conf::Config>,
    nodes: Vec<SimNode>,
    now: u64,
    timeout: u64,
    action_ms: u64,
    fence_ms: u64,
    pending: Vec<(u64, Pending)>,
    /// Sequence numbers of the nodes' views.
    view_seq: u64,
    report: Report,
    witness_holder: Option<BTreeSet<usize>>,
}

impl Sim {
    /// A cluster of `config`, every node powered on at time 0.
    pub fn new(config: conf::Config, action_ms: u64, fence_ms: u64) -> Self {
        let n = config.nodes.len();
        let timeout = millis(config.heartbeat.timeout.get());
        let nodes = config
            .nodes
            .iter()
            .map(|node| SimNode {
                name: node.name.clone(),
                powered: false,
                daemon: false,
                life: 0,
                started_at: 0,
                net: true,
                side: 0,
                core: None,
                disk: LocalState::default(),
                resources: BTreeMap::new(),
                monitor_failing: BTreeSet::new(),
                last_reach: vec![None; n],
                views: vec![None; n],
                view_life: vec![0; n],
                view_seq: vec![0; n],
                sent: (None, 0),
                input: None,
                down: BTreeSet::new(),
                fencing: BTreeMap::new(),
                quorate: false,
                was_quorate: false,
                unquorate_since: None,
                quorate_since: None,
                ping_ok: true,
                fence_fails: 0,
                shutting_down: false,
                watchdog_reset_at: None,
            })
            .collect();
        let mut sim = Self {
            config: Arc::new(config),
            nodes,
            now: 0,
            timeout,
            action_ms,
            fence_ms,
            pending: Vec::new(),
            view_seq: 0,
            report: Report::default(),
            witness_holder: None,
        };
        for k in 0..n {
            sim.power_on(k);
        }
        sim
    }

    /// Virtual time now.
    pub fn now(&self) -> u64 {
        self.now
    }

    fn node_index(&self, name: &str) -> Result<usize, ScenarioError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| ScenarioError::Unknown {
                what: "node",
                name: name.to_owned(),
            })
    }

    fn group_index(&self, name: &str) -> Result<usize, ScenarioError> {
        self.config
            .groups
            .iter()
            .position(|g| g.name == name)
            .ok_or_else(|| ScenarioError::Unknown {
                what: "group",
                name: name.to_owned(),
            })
    }

    fn resource_index(&self, name: &str) -> Result<(GroupId, usize), ScenarioError> {
        for (g, group) in self.config.groups.iter().enumerate() {
            if let Some(r) = group.resources.iter().position(|r| r.name == name) {
                return Ok((g, r));
            }
        }
        Err(ScenarioError::Unknown {
            what: "resource",
            name: name.to_owned(),
        })
    }

    fn monitor_index(
        &self,
        name: &str,
        group: Option<&str>,
    ) -> Result<(GroupId, usize), ScenarioError> {
        let wanted = group.map(|g| self.group_index(g)).transpose()?;
        for (g, grp) in self.config.groups.iter().enumerate() {
            if wanted.is_some_and(|w| w != g) {
                continue;
            }
            if let Some(m) = grp.monitors.iter().position(|m| m.name == name) {
                return Ok((g, m));
            }
        }
        Err(ScenarioError::Unknown {
            what: "monitor",
            name: name.to_owned(),
        })
    }

    fn record(&mut self, node: usize, kind: &str, details: serde_json::Value) {
        let group = details
            .get("group")
            .and_then(|g| g.as_str())
            .map(str::to_owned);
        self.report.events.push(SimRecord {
            at_ms: self.now,
            node: self.nodes[node].name.clone(),
            kind: kind.to_owned(),
            group,
            details,
        });
    }

    fn power_on(&mut self, k: usize) {
        if self.nodes[k].powered {
            return;
        }
        self.nodes[k].powered = true;
        self.nodes[k].resources.clear();
        self.start_daemon(k);
    }

    fn start_daemon(&mut self, k: usize) {
        if self.nodes[k].daemon || !self.nodes[k].powered {
            return;
        }
        let node = &mut self.nodes[k];
        node.daemon = true;
        node.life += 1;
        node.started_at = self.now;
        node.views = vec![None; node.views.len()];
        node.view_life = vec![0; node.view_life.len()];
        node.view_seq = vec![0; node.view_seq.len()];
        node.input = None;
        node.last_reach = vec![None; node.last_reach.len()];
        node.down.clear();
        node.fencing.clear();
        node.quorate = false;
        node.was_quorate = false;
        node.unquorate_since = None;
        node.quorate_since = None;
        node.shutting_down = false;
        node.core = Some(NodeCore::new(self.config.clone(), k, 0, node.disk.clone()));
        self.record(k, "daemon_started", json!({}));
    }

    fn power_off(&mut self, k: usize, why: &str) {
        if !self.nodes[k].powered {
            return;
        }
        let node = &mut self.nodes[k];
        node.powered = false;
        node.daemon = false;
        node.core = None;
        node.resources.clear();
        node.watchdog_reset_at = None;
        self.record(k, "powered_off", json!({"why": why}));
    }

    fn kill_daemon(&mut self, k: usize) {
        let lease = millis(self.config.watchdog.lease.get());
        let armed = self.config.watchdog.kind != conf::WatchdogKind::None;
        let now = self.now;
        let node = &mut self.nodes[k];
        // The watchdog was last fed now (or when quorum was lost): it
        // resets the node one lease later.
        if armed && node.daemon && node.was_quorate && node.watchdog_reset_at.is_none() {
            node.watchdog_reset_at = Some(node.unquorate_since.unwrap_or(now) + lease);
        }
        node.daemon = false;
        node.core = None;
        self.record(k, "daemon_killed", json!({}));
    }

    fn reach(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        x.daemon && y.daemon && x.net && y.net && x.side == y.side
    }

    /// Apply one scenario event.
    pub fn apply(&mut self, ev: &SimEvent) -> Result<(), ScenarioError> {
        match ev {
            SimEvent::PowerOff { node } => {
                let k = self.node_index(node)?;
                self.power_off(k, "scenario");
            }
            SimEvent::PowerOn { node } => {
                let k = self.node_index(node)?;
                self.power_on(k);
            }
            SimEvent::KillDaemon { node } => {
                let k = self.node_index(node)?;
                self.kill_daemon(k);
            }
            SimEvent::StartDaemon { node } => {
                let k = self.node_index(node)?;
                self.start_daemon(k);
            }
            SimEvent::NetworkOff { node } => {
                let k = self.node_index(node)?;
                self.nodes[k].net = false;
            }
            SimEvent::NetworkOn { node } => {
                let k = self.node_index(node)?;
                self.nodes[k].net = true;
            }
            SimEvent::Partition { sides } => {
                for (s, side) in sides.iter().enumerate() {
                    for n in side {
                        let k = self.node_index(n)?;
                        self.nodes[k].side = s + 1;
                    }
                }
            }
            SimEvent::Heal => {
                for n in &mut self.nodes {
                    n.side = 0;
                }
            }
            SimEvent::ResourceFail { node, resource } => {
                let k = self.node_index(node)?;
                let key = self.resource_index(resource)?;
                self.nodes[k].resources.entry(key).or_default().failing = true;
            }
            SimEvent::ResourceVanish { node, resource } => {
                let k = self.node_index(node)?;
                let key = self.resource_index(resource)?;
                let res = self.nodes[k].resources.entry(key).or_default();
                res.running = false;
                res.by_cluster = false;
            }
            SimEvent::MonitorFail {
                node,
                monitor,
                group,
            } => {
                let k = self.node_index(node)?;
                let key = self.monitor_index(monitor, group.as_deref())?;
                self.nodes[k].monitor_failing.insert(key);
            }
            SimEvent::MonitorOk {
                node,
                monitor,
                group,
            } => {
                let k = self.node_index(node)?;
                let key = self.monitor_index(monitor, group.as_deref())?;
                self.nodes[k].monitor_failing.remove(&key);
            }
            SimEvent::StartFail {
                node,
                resource,
                count,
            } => {
                let k = self.node_index(node)?;
                let key = self.resource_index(resource)?;
                self.nodes[k].resources.entry(key).or_default().start_fails = *count;
            }
            SimEvent::StopFail { node, resource } => {
                let k = self.node_index(node)?;
                let key = self.resource_index(resource)?;
                self.nodes[k].resources.entry(key).or_default().stop_fails = true;
            }
            SimEvent::Repair { node, resource } => {
                let k = self.node_index(node)?;
                let key = self.resource_index(resource)?;
                let res = self.nodes[k].resources.entry(key).or_default();
                res.start_fails = 0;
                res.stop_fails = false;
                res.failing = false;
            }
            SimEvent::StartBehindBack { node, group } => {
                let k = self.node_index(node)?;
                let g = self.group_index(group)?;
                for r in 0..self.config.groups[g].resources.len() {
                    let res = self.nodes[k].resources.entry((g, r)).or_default();
                    res.running = true;
                    res.by_cluster = false;
                }
            }
            SimEvent::FenceFail { node, count } => {
                let k = self.node_index(node)?;
                self.nodes[k].fence_fails = *count;
            }
            SimEvent::PingOff { node } => {
                let k = self.node_index(node)?;
                self.nodes[k].ping_ok = false;
            }
            SimEvent::Group { op, group, to, via } => {
                let g = self.group_index(group)?;
                let via = match via {
                    Some(v) => self.node_index(v)?,
                    None => 0,
                };
                let to = match to {
                    Some(t) => Some(u16::try_from(self.node_index(t)?).unwrap_or(u16::MAX)),
                    None => None,
                };
                let op = match op.as_str() {
                    "start" => Op::Start,
                    "stop" => Op::Stop,
                    "move" => Op::Move { to },
                    "clear" => Op::Clear,
                    other => {
                        return Err(ScenarioError::Unknown {
                            what: "group operation",
                            name: other.to_owned(),
                        });
                    }
                };
                if let Some(core) = self.nodes[via].core.as_mut() {
                    core.request(g, op);
                }
            }
            SimEvent::Maintenance { node, on } => {
                let k = self.node_index(node)?;
                if let Some(core) = self.nodes[k].core.as_mut() {
                    core.set_maintenance(*on);
                }
            }
        }
        Ok(())
    }

    /// Advance one step.
    pub fn step(&mut self) {
        self.now += STEP_MS;
        let now = self.now;
        let n = self.nodes.len();

        // Completions due.
        let mut due = Vec::new();
        self.pending.retain_mut(|(at, p)| {
            if *at <= now {
                due.push(std::mem::replace(
                    p,
                    Pending::Check {
                        node: usize::MAX,
                        life: 0,
                        group: 0,
                        monitor: 0,
                    },
                ));
                false
            } else {
                true
            }
        });
        for p in due {
            self.complete(p);
        }

        // Reachability and views. A changed view goes out at once, as the
        // membership layer sends it early (EARLY_SEND_GAP is one step), so
        // a peer always has the view as of the previous step.
        for b in 0..n {
            let node = &self.nodes[b];
            let same = match (node.core.as_ref(), node.sent.0.as_ref()) {
                (Some(core), Some(sent)) => core.view_is(sent),
                (None, None) => true,
                _ => false,
            };
            if !same || node.sent.1 == 0 {
                self.view_seq += 1;
                let v = node.core.as_ref().map(NodeCore::view);
                self.nodes[b].sent = (v, self.view_seq);
            }
        }
        for a in 0..n {
            for b in 0..n {
                if a != b && self.reach(a, b) {
                    self.nodes[a].last_reach[b] = Some(now);
                    let life = self.nodes[b].life;
                    let seq = self.nodes[b].sent.1;
                    if self.nodes[a].view_seq[b] != seq || self.nodes[a].view_life[b] != life {
                        self.nodes[a].views[b] = self.nodes[b].sent.0.clone();
                        self.nodes[a].view_seq[b] = seq;
                        self.nodes[a].view_life[b] = life;
                        self.nodes[a].input = None;
                    }
                }
            }
        }

        // Watchdogs of dead daemons.
        for k in 0..n {
            if self.nodes[k].watchdog_reset_at.is_some_and(|t| t <= now) {
                self.power_off(k, "watchdog lease expired (daemon gone)");
            }
        }

        // Guard and engine, node by node.
        for k in 0..n {
            if !self.nodes[k].daemon {
                continue;
            }
            self.guard(k);
            if !self.nodes[k].daemon {
                continue;
            }
            let alive = self.alive(k);
            let node = &self.nodes[k];
            let reuse = node.input.as_ref().is_some_and(|i| {
                i.quorate == node.quorate && i.down == node.down && i.alive.keys().eq(alive.iter())
            });
            if !reuse {
                self.nodes[k].input = Some(self.input(k));
            }
            let node = &mut self.nodes[k];
            let effects = match (node.core.as_mut(), node.input.as_ref()) {
                (Some(core), Some(input)) => core.step(now, input),
                _ => continue,
            };
            self.execute(k, effects);
            if self.nodes[k].shutting_down
                && self.nodes[k].core.as_ref().is_some_and(NodeCore::idle)
            {
                self.nodes[k].daemon = false;
                self.nodes[k].core = None;
                self.record(k, "daemon_stopped", json!({}));
            }
        }
        self.check_invariants();
    }

    fn alive(&self, k: usize) -> BTreeSet<usize> {
        let node = &self.nodes[k];
        (0..self.nodes.len())
            .filter(|&p| {
                p != k
                    && node.last_reach[p].is_some_and(|t| self.now.saturating_sub(t) < self.timeout)
            })
            .collect()
    }

    fn input(&self, k: usize) -> ClusterInput {
        let alive = self.alive(k);
        ClusterInput {
            quorate: self.nodes[k].quorate,
            alive: alive
                .iter()
                .map(|&p| (p, self.nodes[k].views[p].clone()))
                .collect(),
            down: self.nodes[k].down.clone(),
            generations: BTreeMap::new(),
        }
    }

    /// The guard: quorum, force-stop without quorum, fencing.
    fn guard(&mut self, k: usize) {
        let now = self.now;
        let n = self.nodes.len();
        let alive = self.alive(k);
        // Peers that are back need nothing more.
        self.nodes[k].down.retain(|p| !alive.contains(p));
        self.nodes[k].fencing.retain(|p, _| !alive.contains(p));
        let tie = 2 * (alive.len() + 1) == n;
        let has_witness = self.config.quorum.witness.is_some();
        let witness = if !has_witness {
            None
        } else if !tie {
            Some(WitnessVote::Unknown)
        } else {
            let mut side: BTreeSet<usize> = alive.clone();
            side.insert(k);
            // The witness grants one side and keeps granting it while it
            // asks (a simplification of the lease).
            let holder = self
                .witness_holder
                .get_or_insert_with(|| side.clone())
                .clone();
            if holder == side {
                Some(WitnessVote::Granted)
            } else if holder
                .iter()
                .any(|h| self.nodes[*h].daemon && self.alive(*h).len() + 1 == holder.len())
            {
                Some(WitnessVote::Denied)
            } else {
                self.witness_holder = Some(side);
                Some(WitnessVote::Granted)
            }
        };
        if !tie && self.config.quorum.witness.is_some() {
            self.witness_holder = None;
        }
        let tie_break = (n == 2 && self.config.quorum.witness.is_none() && tie).then(|| TieBreak {
            reaches_target: self.nodes[k].ping_ok,
            preferred: k == 0,
            preferred_fenced: k != 0 && self.nodes[k].down.contains(&0),
        });
        let d = quorum::decide(quorum::Input {
            nodes: n,
            alive: alive.len() + 1,
            witness,
            tie_break,
        });
        let grace = 2 * self.timeout;
        let forming = !self.nodes[k].was_quorate
            && !d.quorate
            && now.saturating_sub(self.nodes[k].started_at) < grace;
        if d.quorate != self.nodes[k].quorate && !forming {
            self.nodes[k].quorate = d.quorate;
            if d.quorate {
                self.nodes[k].was_quorate = true;
                self.nodes[k].unquorate_since = None;
                self.nodes[k].quorate_since = Some(now);
                self.nodes[k].watchdog_reset_at = None;
                self.record(k, "quorum_gained", json!({"reason": d.reason}));
            } else {
                self.nodes[k].unquorate_since = Some(now);
                self.nodes[k].quorate_since = None;
                self.record(k, "quorum_lost", json!({"reason": d.reason}));
                self.force_stop_all(k);
            }
        } else if !d.quorate && !forming && self.nodes[k].unquorate_since.is_none() {
            self.nodes[k].unquorate_since = Some(now);
            self.record(k, "quorum_waiting", json!({"reason": d.reason}));
            self.force_stop_all(k);
        }
        // The watchdog resets a node that stays without quorum past its
        // lease, once it has been armed.
        if self.config.watchdog.kind != conf::WatchdogKind::None
            && self.nodes[k].was_quorate
            && self.nodes[k]
                .unquorate_since
                .is_some_and(|t| now.saturating_sub(t) >= millis(self.config.watchdog.lease.get()))
        {
            self.power_off(k, "watchdog lease expired");
            return;
        }

        // Fencing: the coordinator of a quorate partition, or the
        // non-preferred node of a two-node tie.
        let coordinator = alive.iter().all(|&p| p > k);
        for p in 0..n {
            if p == k || alive.contains(&p) || self.nodes[k].down.contains(&p) {
                continue;
            }
            // Only peers that were known at some point can be lost.
            let Some(last) = self.nodes[k].last_reach[p] else {
                if self.nodes[k].quorate && now.saturating_sub(self.nodes[k].started_at) > grace {
                    // Never heard since this daemon started: treat as lost
                    // from the start.
                    self.nodes[k].last_reach[p] = Some(self.nodes[k].started_at);
                }
                continue;
            };
            let contender = d.may_fence_preferred && p == 0;
            if !((d.quorate && coordinator) || contender) {
                continue;
            }
            let name = self.nodes[p].name.clone();
            let device = self
                .config
                .fencing
                .iter()
                .find(|dev| dev.targets.contains(&name));
            match device {
                Some(dev) => {
                    let entry = self.nodes[k].fencing.get(&p).copied();
                    match entry {
                        None => {
                            let mut delay = millis(dev.delay.get());
                            if n == 2 && p == 0 {
                                delay = delay.max(millis(crate::guard::TWO_NODE_FENCE_DELAY));
                            }
                            self.nodes[k]
                                .fencing
                                .insert(p, (now + delay + self.fence_ms, 1));
                            self.record(k, "fence_started", json!({"peer": name}));
                        }
                        Some((at, attempt)) if at <= now => {
                            if self.nodes[p].fence_fails > 0 {
                                self.nodes[p].fence_fails -= 1;
                                let backoff = 1000u64 << attempt.min(5);
                                self.nodes[k]
                                    .fencing
                                    .insert(p, (now + backoff + self.fence_ms, attempt + 1));
                                self.record(
                                    k,
                                    "fence_failed",
                                    json!({"peer": name, "attempt": attempt}),
                                );
                            } else {
                                self.power_off(p, "fenced");
                                self.nodes[k].fencing.remove(&p);
                                self.nodes[k].down.insert(p);
                                self.record(k, "fence_succeeded", json!({"peer": name}));
                                self.record(
                                    k,
                                    "takeover_allowed",
                                    json!({"peer": name, "by": "fence"}),
                                );
                            }
                        }
                        Some(_) => {}
                    }
                }
                None if self.config.watchdog.kind != conf::WatchdogKind::None => {
                    let lease = millis(
                        self.config.watchdog.lease.get() + self.config.watchdog.margin.get(),
                    );
                    // As the guard does: the peer stopped feeding its
                    // watchdog at the latest when it lost us, or when its
                    // quorum ended, which was before ours began.
                    let from =
                        (last + self.timeout).max(self.nodes[k].quorate_since.unwrap_or(now));
                    if now >= from + lease {
                        self.nodes[k].down.insert(p);
                        self.record(k, "takeover_allowed", json!({"peer": name, "by": "lease"}));
                    }
                }
                None => {}
            }
        }
    }

    fn force_stop_all(&mut self, k: usize) {
        let stopped = self.nodes[k]
            .resources
            .values()
            .filter(|r| r.running)
            .count();
        for r in self.nodes[k].resources.values_mut() {
            r.running = false;
            r.by_cluster = false;
        }
        if let Some(core) = self.nodes[k].core.as_mut() {
            core.forget_all_running();
        }
        self.record(k, "groups_stopped", json!({"resources": stopped}));
    }

    fn execute(&mut self, k: usize, effects: Vec<Effect>) {
        let life = self.nodes[k].life;
        for e in effects {
            match e {
                Effect::Persist(state) => self.nodes[k].disk = *state,
                Effect::Resource {
                    group,
                    resource,
                    op,
                    ..
                } => {
                    if op == ResourceOp::Start && !self.nodes[k].quorate {
                        self.report.failures.push(format!(
                            "invariant: {} started group {} without quorum at {} ms",
                            self.nodes[k].name, self.config.groups[group].name, self.now
                        ));
                    }
                    let took = if op == ResourceOp::Probe {
                        STEP_MS
                    } else {
                        self.action_ms
                    };
                    self.pending.push((
                        self.now + took,
                        Pending::Resource {
                            node: k,
                            life,
                            group,
                            resource,
                            op,
                        },
                    ));
                }
                Effect::Check { group, monitor, .. } => self.pending.push((
                    self.now + STEP_MS,
                    Pending::Check {
                        node: k,
                        life,
                        group,
                        monitor,
                    },
                )),
                Effect::Event { kind, details } => self.record(k, kind, details),
                Effect::FenceSelf { why } => {
                    self.record(k, "fence_self", json!({"why": why}));
                    self.power_off(k, "fenced itself");
                    return;
                }
                Effect::StopDaemon { why } => {
                    self.record(k, "daemon_stopping", json!({"why": why}));
                    self.nodes[k].shutting_down = true;
                    if let Some(core) = self.nodes[k].core.as_mut() {
                        core.shutdown();
                    }
                }
            }
        }
    }

    fn complete(&mut self, p: Pending) {
        let now = self.now;
        match p {
            Pending::Resource {
                node,
                life,
                group,
                resource,
                op,
            } => {
                if node >= self.nodes.len()
                    || self.nodes[node].life != life
                    || !self.nodes[node].daemon
                {
                    return;
                }
                let res = self.nodes[node]
                    .resources
                    .entry((group, resource))
                    .or_default();
                let result = match op {
                    ResourceOp::Start => {
                        if res.start_fails > 0 {
                            res.start_fails -= 1;
                            OpResult::Done(ActionOutcome::Failed {
                                message: "injected start failure".into(),
                                hard: false,
                            })
                        } else {
                            res.running = true;
                            res.by_cluster = true;
                            res.failing = false;
                            OpResult::Done(ActionOutcome::Ok)
                        }
                    }
                    ResourceOp::Stop => {
                        if res.stop_fails {
                            OpResult::Done(ActionOutcome::Failed {
                                message: "injected stop failure".into(),
                                hard: false,
                            })
                        } else {
                            res.running = false;
                            res.by_cluster = false;
                            OpResult::Done(ActionOutcome::Ok)
                        }
                    }
                    ResourceOp::Probe => OpResult::Probed(match (res.running, res.failing) {
                        (true, true) => Probe::Failed("injected failure".into()),
                        (true, false) => Probe::Running,
                        (false, _) => Probe::Stopped,
                    }),
                };
                let effects = match self.nodes[node].core.as_mut() {
                    Some(core) => core.on_resource(now, group, resource, op, result),
                    None => return,
                };
                self.execute(node, effects);
            }
            Pending::Check {
                node,
                life,
                group,
                monitor,
            } => {
                if node >= self.nodes.len()
                    || self.nodes[node].life != life
                    || !self.nodes[node].daemon
                {
                    return;
                }
                // Where the group does not run (a standby check), only an
                // injected monitor failure fails it.
                let standby = self.nodes[node]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.run_state(group).is_none());
                let injected = self.nodes[node]
                    .monitor_failing
                    .contains(&(group, monitor))
                    .then(|| "injected monitor failure".to_owned());
                let bad = injected.or_else(|| {
                    self.nodes[node]
                        .resources
                        .iter()
                        .filter(|_| !standby)
                        .filter(|((g, _), _)| *g == group)
                        .find(|(_, r)| r.failing || !r.running)
                        .map(|((_, r), res)| {
                            let name = &self.config.groups[group].resources[*r].name;
                            if res.failing {
                                format!("{name} failed")
                            } else {
                                format!("{name} not running")
                            }
                        })
                });
                let outcome = match bad {
                    Some(why) => CheckOutcome::Failed(why),
                    None => CheckOutcome::Ok,
                };
                let effects = match self.nodes[node].core.as_mut() {
                    Some(core) => core.on_check(now, group, monitor, outcome),
                    None => return,
                };
                self.execute(node, effects);
            }
        }
    }

    /// The reason, in words, that the newest placement any running daemon
    /// has gives for group `g`.
    pub fn reason_of(&self, g: GroupId) -> Option<String> {
        let core = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .max_by_key(|c| c.published().map_or(0, |p| p.epoch))?;
        let decisions = core.decisions();
        let (_, why) = decisions.into_iter().nth(g).flatten()?;
        Some(why)
    }

    /// Nodes where every resource of the group runs.
    pub fn running_on(&self, g: GroupId) -> Vec<String> {
        let count = self.config.groups[g].resources.len();
        self.nodes
            .iter()
            .filter(|n| n.powered)
            .filter(|n| {
                count > 0 && (0..count).all(|r| n.resources.get(&(g, r)).is_some_and(|x| x.running))
            })
            .map(|n| n.name.clone())
            .collect()
    }

    fn check_invariants(&mut self) {
        // Per group, the nodes where it is active (one pass).
        let mut by_group: Vec<Vec<&str>> = vec![Vec::new(); self.config.groups.len()];
        for n in self.nodes.iter().filter(|n| n.powered) {
            for ((g, _), r) in &n.resources {
                if r.running && r.by_cluster && by_group[*g].last() != Some(&n.name.as_str()) {
                    by_group[*g].push(n.name.as_str());
                }
            }
        }
        for (g, active) in by_group.iter().enumerate() {
            if active.len() > 1 {
                let msg = format!(
                    "invariant: group {} active on {} at {} ms",
                    self.config.groups[g].name,
                    active.join(" and "),
                    self.now
                );
                if !self.report.failures.contains(&msg) {
                    self.report.failures.push(msg);
                }
            }
        }
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Finish: the report, with the final placement.
    pub fn into_report(mut self) -> Report {
        for (g, group) in self.config.groups.iter().enumerate() {
            self.report
                .final_placement
                .insert(group.name.clone(), self.running_on(g));
        }
        self.report
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Run a scenario and check its expectations.
pub fn run(scenario: &Scenario) -> Result<Report, ScenarioError> {
    let config = scenario.load_config()?;
    let mut sim = Sim::new(config, scenario.action_time, scenario.fence_time);
    let mut events: Vec<&TimedEvent> = scenario.events.iter().collect();
    events.sort_by_key(|e| e.at);
    let mut expects: Vec<&Expect> = scenario.expect.iter().collect();
    expects.sort_by_key(|e| e.at);
    let (mut ei, mut xi) = (0, 0);
    // Validate names up front.
    for e in &scenario.expect {
        for (g, n) in &e.running {
            sim.group_index(g)?;
            if n != "none" {
                sim.node_index(n)?;
            }
        }
        for g in e.reason.keys() {
            sim.group_index(g)?;
        }
    }
    while sim.now < scenario.duration {
        while ei < events.len() && events[ei].at <= sim.now {
            sim.apply(&events[ei].event)?;
            ei += 1;
        }
        while xi < expects.len() && expects[xi].at <= sim.now {
            let e = expects[xi];
            for (g, want) in &e.running {
                let gi = sim.group_index(g)?;
                let got = sim.running_on(gi);
                let ok = if want == "none" {
                    got.is_empty()
                } else {
                    got == [want.clone()]
                };
                if !ok {
                    sim.report.failures.push(format!(
                        "at {} ms: group {g} expected on {want}, runs on [{}]",
                        e.at,
                        got.join(", ")
                    ));
                }
            }
            for (g, want) in &e.reason {
                let gi = sim.group_index(g)?;
                let got = sim.reason_of(gi);
                if !got.as_deref().is_some_and(|r| r.contains(want.as_str())) {
                    sim.report.failures.push(format!(
                        "at {} ms: group {g} expected reason containing `{want}`, got {}",
                        e.at,
                        got.map_or_else(|| "no placement".to_owned(), |r| format!("`{r}`"))
                    ));
                }
            }
            xi += 1;
        }
        sim.step();
    }
    let mut report = sim.into_report();
    check_order(scenario, &mut report);
    Ok(report)
}

fn check_order(scenario: &Scenario, report: &mut Report) {
    let mut pos = 0;
    for want in &scenario.expect_order {
        let mut parts = want.splitn(3, ':');
        let node = parts.next().unwrap_or("*");
        let kind = parts.next().unwrap_or("");
        let group = parts.next();
        let found = report.events[pos..].iter().position(|e| {
            (node == "*" || e.node == node)
                && e.kind == kind
                && group.is_none_or(|g| e.group.as_deref() == Some(g))
        });
        match found {
            Some(i) => pos += i + 1,
            None => {
                report.failures.push(format!(
                    "expected event `{want}` (in this order) did not happen"
                ));
                return;
            }
        }
    }
    for never in &scenario.expect_never {
        if let Some(e) = report.events.iter().find(|e| &e.kind == never) {
            report.failures.push(format!(
                "event `{never}` happened at {} ms on {}",
                e.at_ms, e.node
            ));
        }
    }
}

#[cfg(test)]
mod tests;
