//! The deciding engine of one node, without I/O: the daemons drive it with
//! real time, real peers and real drivers; the simulator drives the very
//! same code in virtual time with fake ones.
//!
//! Each call takes the time (`now_ms`, wall clock in milliseconds) and
//! returns [`Effect`]s for its caller to carry out, in order. The first
//! effect of a step that changed durable state is [`Effect::Persist`]: the
//! caller writes it before it carries out the rest, so a crash never acts on
//! something that was not recorded.
//!
//! What it does, per step:
//!
//! 1. **Adopt** the newest placement ([`Published`], by epoch) seen from any
//!    peer with the same configuration.
//! 2. **Coordinate**, when this node is the lowest-ordered live node of a
//!    quorate partition: apply operator requests that peers carry in their
//!    views until they see them applied, run [`placement::place`], and
//!    publish a new epoch when anything changed.
//! 3. **Act** on its own groups: start what is assigned here once no other
//!    node reports the group in any state but stopped and the groups it
//!    starts after run; stop what is not assigned here; stop a doubly
//!    active group at once on the lower-priority node; run monitors and the
//!    recovery ladder (restart here N times, then fail over M times, then
//!    the final action).
//! 4. **Watch**: while a group runs here, its monitors and the periodic
//!    probes of its resources (`monitor_interval`) feed the recovery
//!    ladder. Where the group does not run (a standby among its `nodes`),
//!    monitors with `while_active = false` run too; one failing there
//!    makes this node ineligible for the group (carried in the view as
//!    [`EngineView::standby_failures`], turned by the coordinator into a
//!    placement fact) until a check passes again. A standby that has not
//!    completed a check is eligible: an unknown never blocks a failover.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::placement::{
    self, Decision, Facts, GroupFacts, GroupId, NodeId, NodeState, Reason, RunState, Topology,
};
use crate::resource::{ActionContext, ActionOutcome, CheckOutcome, Probe, StartReason};

/// Version of the persisted [`LocalState`] format.
pub const STATE_VERSION: u32 = 1;

/// One group in a [`Published`] placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The node it should run on.
    pub node: Option<u16>,
    /// Why.
    pub reason: Reason,
    /// The operator wants it running.
    pub wanted: bool,
    /// Placed by a manual move (automatic fail-back waits for its next
    /// failover).
    pub moved: bool,
    /// Nodes excluded after repeated failures, with when (ms).
    pub excluded: BTreeMap<u16, u64>,
    /// When the recovery ladder failed it over (ms), within the window.
    pub failovers: Vec<u64>,
    /// Bumped by `clusterctl clear`: nodes reset their local counts.
    pub cleared: u64,
    /// The node it was assigned to before the current one.
    #[serde(default)]
    pub previous: Option<u16>,
    /// That node was lost and made safe (fenced, or its lease expired)
    /// when the group left it.
    #[serde(default)]
    pub previous_fenced: bool,
    /// Nodes not eligible for it when this was published, with the
    /// monitor that fails there (a `while_active = false` monitor failing
    /// where the group does not run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ineligible: BTreeMap<u16, String>,
}

/// A placement as the coordinator published it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Grows with every change.
    pub epoch: u64,
    /// Who published it.
    pub coordinator: u16,
    /// The configuration it was computed for.
    pub config_generation: u64,
    /// One entry per configured group.
    pub groups: Vec<Assignment>,
    /// Per node, the newest operator request applied.
    pub applied: BTreeMap<u16, u64>,
    /// Lost nodes the coordinator knew down (fenced, or lease expired)
    /// when it published this: other nodes learn it from here.
    #[serde(default)]
    pub down: BTreeSet<u16>,
    /// The nodes the coordinator heard (and itself) when it published
    /// this. A node that does not hear one of them starts nothing on this
    /// placement: that node may still run a group being moved here, and
    /// only the coordinator can see it stop.
    #[serde(default)]
    pub live: BTreeSet<u16>,
}

impl Published {
    /// Which of two placements is newer: the higher epoch, and of two with
    /// the same epoch (published by two coordinators at once, e.g. by a
    /// node cut off before it noticed), the one of the higher-ordered
    /// coordinator. Every node picks the same one, and (epoch, coordinator)
    /// names one placement.
    pub fn order(&self) -> (u64, u16) {
        (self.epoch, self.coordinator)
    }
}

/// An operator request (or a node's own request to be excluded), carried
/// in the requesting node's view until a placement shows it applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRequest {
    /// Grows per requesting node.
    pub id: u64,
    /// The group.
    pub group: u16,
    /// What.
    pub op: Op,
}

/// What an [`OpRequest`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Run the group.
    Start,
    /// Stop the group everywhere.
    Stop,
    /// Move it once (to a node, or anywhere else).
    Move {
        /// The node, if one was named.
        to: Option<u16>,
    },
    /// Forget failures and exclusions; unblock it.
    Clear,
    /// The requesting node used up its restarts: exclude it.
    Exclude,
}

/// What a node tells its peers (inside its heartbeats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineView {
    /// Groups not stopped here, by index, with their state.
    pub groups: BTreeMap<u16, RunState>,
    /// The newest placement this node has.
    pub published: Option<Published>,
    /// Requests not yet applied.
    pub requests: Vec<OpRequest>,
    /// This node is in maintenance.
    pub maintenance: bool,
    /// This node has probed every group (it knows what runs here).
    pub settled: bool,
    /// Groups stopped here whose `while_active = false` monitors fail here
    /// (by group index, the failing monitors' indexes): this node is not
    /// eligible for them until a check passes again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub standby_failures: BTreeMap<u16, Vec<u16>>,
}

/// How a resource operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResult {
    /// A start or stop.
    Done(ActionOutcome),
    /// A probe.
    Probed(Probe),
}

/// What a node knows of the cluster at one step.
#[derive(Clone, Debug, Default)]
pub struct ClusterInput {
    /// This node's partition is quorate.
    pub quorate: bool,
    /// Peers heard from (configuration indexes), with their views.
    pub alive: BTreeMap<NodeId, Option<EngineView>>,
    /// Lost peers known to be down (fenced or lease expired).
    pub down: BTreeSet<NodeId>,
    /// The configuration generation each alive peer runs (a peer with
    /// another configuration is not listened to).
    pub generations: BTreeMap<NodeId, u64>,
}

/// Durable local state: written before it is acted on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    /// Format version.
    pub version: u32,
    /// The newest placement seen.
    pub published: Option<Published>,
    /// Requests not yet seen applied.
    pub requests: Vec<OpRequest>,
    /// The next request id.
    pub next_request: u64,
    /// Restarts per group here (ms), within the window.
    pub restarts: BTreeMap<u16, Vec<u64>>,
    /// Groups that may be active here (start begun, stop not finished).
    pub active: BTreeSet<u16>,
    /// Groups blocked here by a failed stop.
    pub blocked: BTreeSet<u16>,
    /// This node is in maintenance.
    pub maintenance: bool,
    /// The `cleared` counter seen per group.
    pub cleared: BTreeMap<u16, u64>,
}

impl Default for LocalState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            published: None,
            requests: Vec::new(),
            next_request: 1,
            restarts: BTreeMap::new(),
            active: BTreeSet::new(),
            blocked: BTreeSet::new(),
            maintenance: false,
            cleared: BTreeMap::new(),
        }
    }
}

/// A resource operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceOp {
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Probe.
    Probe,
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Write this state durably before carrying out the effects after it.
    Persist(Box<LocalState>),
    /// Run a resource operation; report it with [`NodeCore::on_resource`].
    Resource {
        /// Group.
        group: GroupId,
        /// Resource index in the group.
        resource: usize,
        /// Operation.
        op: ResourceOp,
        /// Context for the driver.
        ctx: ActionContext,
    },
    /// Run a monitor check; report it with [`NodeCore::on_check`].
    Check {
        /// Group.
        group: GroupId,
        /// Monitor index in the group.
        monitor: usize,
        /// Time allowed.
        timeout: Duration,
    },
    /// Record an event.
    Event {
        /// Kind.
        kind: &'static str,
        /// Details (a JSON object).
        details: Value,
    },
    /// The recovery ladder's final action, or a failed stop: fence this
    /// node (stop feeding the watchdog and die; peers fence it).
    FenceSelf {
        /// Why.
        why: String,
    },
    /// The recovery ladder's final action: stop this daemon (its groups
    /// are stopped first).
    StopDaemon {
        /// Why.
        why: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopWhy {
    /// Not assigned here (moved, failed over, stopped by the operator).
    Unassigned,
    /// Restart from this resource (recovery).
    Recover(usize),
    /// The ladder fails the group over.
    Failover,
    /// A start failed: clean up, then ask to be excluded.
    StartFailed,
    /// Another node runs it with a higher priority.
    DoubleActivity,
    /// Found in an unknown state: stop to be sure.
    Unknown,
    /// The daemon stops.
    Shutdown,
    /// Quorum was lost while the group was starting.
    QuorumLost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Probing resource by resource at start-up.
    Probing {
        next: usize,
        running: usize,
        unknown: bool,
    },
    Stopped,
    Starting {
        next: usize,
        reason: StartReason,
    },
    Running,
    /// Stopping resource `next` and those below it, down to `down_to`.
    Stopping {
        next: usize,
        down_to: usize,
        why: StopWhy,
    },
    /// A stop failed and the policy is to block.
    StopFailed,
}

/// Why a monitor check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckMode {
    /// The group runs here: a failure feeds the recovery ladder.
    Active,
    /// The group does not run here (`while_active = false`): a failure
    /// makes this node ineligible for it.
    Standby,
}

/// One monitor's schedule here.
#[derive(Clone, Copy, Debug, Default)]
struct CheckSlot {
    /// Next check due (ms).
    due: u64,
    /// A check in flight: why it runs, and the period
    /// ([`LocalGroup::period`]) it belongs to. Its answer is used only in
    /// that same period.
    in_flight: Option<(CheckMode, u64)>,
}

/// One resource's periodic probe (`monitor_interval`) here.
#[derive(Clone, Copy, Debug, Default)]
struct ProbeSlot {
    /// Next probe due (ms).
    due: u64,
    /// A probe in flight, with the period ([`LocalGroup::period`]) it
    /// belongs to.
    in_flight: Option<u64>,
}

/// A resource's periodic probe settings, as this node runs it.
#[derive(Clone, Copy, Debug)]
struct ProbeSpec {
    interval: Duration,
    timeout: Duration,
    recovery: conf::Recovery,
}

#[derive(Clone, Debug)]
struct LocalGroup {
    phase: Phase,
    busy: bool,
    /// When the group last reached `Running` here (ms).
    running_since: Option<u64>,
    /// Counts the periods of the group here (each time it reaches
    /// `Running`, each time this node becomes a standby for it): a check or
    /// periodic probe answers for the period it was started in.
    period: u64,
    /// Per monitor: its schedule.
    checks: Vec<CheckSlot>,
    /// Per resource: its periodic probe's schedule.
    probes: Vec<ProbeSlot>,
    /// Since when this node has been a standby for the group (stopped here,
    /// one of its nodes): `while_active = false` monitors run.
    standby_since: Option<u64>,
    /// The `while_active = false` monitors whose last standby check failed.
    standby_failed: BTreeSet<usize>,
    /// Why the current start happened (for stop contexts).
    last_reason: StartReason,
}

/// The engine of one node.
#[derive(Debug)]
pub struct NodeCore {
    config: Arc<conf::Config>,
    topo: Arc<Topology>,
    me: NodeId,
    generation: u64,
    state: LocalState,
    groups: Vec<LocalGroup>,
    dirty: bool,
    shutting_down: bool,
    /// Whether the partition was quorate at the last [`NodeCore::step`]: a
    /// start (or a recovery restart) that finishes after quorum was lost
    /// must not go on.
    quorate: bool,
    /// Per peer, the groups it may run as far as its last view tells (the
    /// groups it reports in any state, and those its placement assigns
    /// it), with this node's placement epoch when it was last heard. Kept
    /// after the peer is lost, until it is known down (here, or in a newer
    /// placement): a group a lost peer was still stopping (or about to
    /// start) is not started before that peer is fenced or its lease has
    /// expired, and the coordinator counts it as running there.
    /// (Indexed by node; `None` once the peer is known down.)
    peer_groups: Vec<Option<(u64, Vec<bool>)>>,
    /// The facts and decision of the last coordination, for status.
    last_facts: Option<Facts>,
    /// Per group and resource: its periodic probe, if it has one.
    probe_specs: Vec<Vec<Option<ProbeSpec>>>,
}

fn u16_of(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl NodeCore {
    /// The engine of node `me` of `config`, resuming from `state` (the
    /// persisted state of a previous run, or the default). Every group
    /// starts by probing its resources.
    pub fn new(
        config: Arc<conf::Config>,
        me: NodeId,
        generation: u64,
        mut state: LocalState,
    ) -> Self {
        let topo = Arc::new(Topology::from_config(&config));
        // A placement for another configuration is of no use.
        if state.published.as_ref().is_some_and(|p| {
            p.config_generation != generation || p.groups.len() != topo.groups.len()
        }) {
            state.published = None;
        }
        let groups = config
            .groups
            .iter()
            .map(|g| LocalGroup {
                phase: Phase::Probing {
                    next: 0,
                    running: 0,
                    unknown: false,
                },
                busy: false,
                running_since: None,
                period: 0,
                checks: vec![CheckSlot::default(); g.monitors.len()],
                probes: vec![ProbeSlot::default(); g.resources.len()],
                standby_since: None,
                standby_failed: BTreeSet::new(),
                last_reason: StartReason::Start,
            })
            .collect();
        let my_name = topo.nodes.get(me).cloned().unwrap_or_default();
        let probe_specs = config
            .groups
            .iter()
            .map(|g| {
                g.resources
                    .iter()
                    .map(|r| {
                        let r = config.resource_on(&my_name, &r.name).unwrap_or(r);
                        r.monitor_interval.map(|interval| ProbeSpec {
                            interval: interval.get(),
                            timeout: r.monitor_timeout.get(),
                            recovery: r.monitor_recovery,
                        })
                    })
                    .collect()
            })
            .collect();
        Self {
            config,
            topo,
            me,
            generation,
            state,
            groups,
            dirty: false,
            shutting_down: false,
            quorate: false,
            peer_groups: Vec::new(),
            last_facts: None,
            probe_specs,
        }
    }

    /// The topology placement works on.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    /// The durable state.
    pub fn state(&self) -> &LocalState {
        &self.state
    }

    /// The newest placement this node has.
    pub fn published(&self) -> Option<&Published> {
        self.state.published.as_ref()
    }

    /// The group's state here (`None`: stopped).
    pub fn run_state(&self, g: GroupId) -> Option<RunState> {
        let lg = self.groups.get(g)?;
        match &lg.phase {
            Phase::Stopped => None,
            Phase::Probing { .. } => Some(RunState::Unknown),
            Phase::Starting { .. } => Some(RunState::Starting),
            Phase::Running => Some(RunState::Running),
            Phase::Stopping { .. } => Some(RunState::Stopping),
            Phase::StopFailed => Some(RunState::StopFailed),
        }
    }

    /// Whether every group has been probed (the node knows what runs here).
    pub fn settled(&self) -> bool {
        self.groups
            .iter()
            .all(|g| !matches!(g.phase, Phase::Probing { .. }))
    }

    /// Whether nothing runs here and no action is in flight (after
    /// [`NodeCore::shutdown`], the daemon may exit).
    pub fn idle(&self) -> bool {
        self.groups
            .iter()
            .all(|g| !g.busy && matches!(g.phase, Phase::Stopped | Phase::StopFailed))
    }

    /// What this node tells its peers.
    pub fn view(&self) -> EngineView {
        EngineView {
            groups: (0..self.groups.len())
                .filter_map(|g| self.run_state(g).map(|s| (u16_of(g), s)))
                .collect(),
            published: self.state.published.clone(),
            requests: self.state.requests.clone(),
            maintenance: self.state.maintenance,
            settled: self.settled(),
            standby_failures: self.standby_failures(),
        }
    }

    /// The groups stopped here whose `while_active = false` monitors fail
    /// here, with those monitors.
    fn standby_failures(&self) -> BTreeMap<u16, Vec<u16>> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, lg)| lg.phase == Phase::Stopped && !lg.standby_failed.is_empty())
            .map(|(g, lg)| {
                (
                    u16_of(g),
                    lg.standby_failed.iter().map(|m| u16_of(*m)).collect(),
                )
            })
            .collect()
    }

    /// Whether [`NodeCore::view`] would equal `v` (without building it).
    pub fn view_is(&self, v: &EngineView) -> bool {
        let EngineView {
            groups,
            published,
            requests,
            maintenance,
            settled,
            standby_failures,
        } = v;
        *maintenance == self.state.maintenance
            && *settled == self.settled()
            && *standby_failures == self.standby_failures()
            && *published == self.state.published
            && *requests == self.state.requests
            && groups
                .iter()
                .map(|(g, s)| (*g, *s))
                .eq((0..self.groups.len())
                    .filter_map(|g| self.run_state(g).map(|s| (u16_of(g), s))))
    }

    /// Queue an operator request (`clusterctl group ...`); it travels in
    /// this node's view until the coordinator applies it.
    pub fn request(&mut self, group: GroupId, op: Op) -> u64 {
        let id = self.state.next_request;
        self.state.next_request += 1;
        self.state.requests.push(OpRequest {
            id,
            group: u16_of(group),
            op,
        });
        self.dirty = true;
        id
    }

    /// Put this node in or out of maintenance: its groups move away.
    pub fn set_maintenance(&mut self, on: bool) {
        if self.state.maintenance != on {
            self.state.maintenance = on;
            self.dirty = true;
        }
    }

    /// Stop every group here; the daemon exits once [`NodeCore::idle`].
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Force-forget what runs here after the caller force-stopped
    /// everything (quorum lost): every group is stopped.
    pub fn forget_all_running(&mut self) {
        for lg in &mut self.groups {
            if !lg.busy {
                lg.phase = Phase::Stopped;
                lg.running_since = None;
            }
        }
        self.state.active.clear();
        self.dirty = true;
    }

    /// The decision for each group and its reason in words, if a placement
    /// is known; nodes it may not go to while a monitor fails there are
    /// named after the reason.
    pub fn decisions(&self) -> Vec<Option<(Option<NodeId>, String)>> {
        (0..self.topo.groups.len())
            .map(|g| {
                let a = self.state.published.as_ref()?.groups.get(g)?;
                let mut why = a.reason.describe(&self.topo);
                // (A group placed nowhere names every node's rejection
                // already.)
                if !a.ineligible.is_empty() && !matches!(a.reason, Reason::NoNode { .. }) {
                    let nodes: Vec<String> = a
                        .ineligible
                        .iter()
                        .map(|(n, m)| {
                            let node = self.topo.nodes.get(usize::from(*n));
                            format!(
                                "monitor `{m}` fails on {}",
                                node.map_or("?", String::as_str)
                            )
                        })
                        .collect();
                    why.push_str("; not eligible: ");
                    why.push_str(&nodes.join(", "));
                }
                Some((a.node.map(usize::from), why))
            })
            .collect()
    }

    /// Restart counts here, per group (within their windows).
    pub fn restarts(&self, g: GroupId) -> usize {
        self.state.restarts.get(&u16_of(g)).map_or(0, Vec::len)
    }

    fn ctx(&self, g: GroupId, r: usize, reason: StartReason, timeout: Duration) -> ActionContext {
        let group = &self.config.groups[g];
        let published = self.state.published.as_ref();
        let assignment = published.and_then(|p| p.groups.get(g));
        let previous = assignment
            .and_then(|a| a.previous)
            .map(usize::from)
            .filter(|n| *n != self.me);
        ActionContext {
            group: group.name.clone(),
            resource: group
                .resources
                .get(r)
                .map(|x| x.name.clone())
                .unwrap_or_default(),
            node: self.topo.nodes[self.me].clone(),
            reason,
            previous_owner: previous.and_then(|n| self.topo.nodes.get(n).cloned()),
            previous_owner_fenced: previous.is_some()
                && assignment.is_some_and(|a| a.previous_fenced),
            timeout,
        }
    }

    fn resource_timeout(&self, g: GroupId, r: usize, op: ResourceOp) -> Duration {
        // As this node runs it: its `overrides` may give other timeouts.
        let base = &self.config.groups[g].resources[r];
        let res = self
            .config
            .resource_on(&self.topo.nodes[self.me], &base.name)
            .unwrap_or(base);
        match op {
            ResourceOp::Start => res.start_timeout.get(),
            ResourceOp::Stop => res.stop_timeout.get(),
            ResourceOp::Probe => res.stop_timeout.get().min(Duration::from_secs(30)),
        }
    }

    fn run(&mut self, out: &mut Vec<Effect>, g: GroupId, r: usize, op: ResourceOp) {
        let reason = self.groups[g].last_reason;
        let timeout = self.resource_timeout(g, r, op);
        let ctx = self.ctx(g, r, reason, timeout);
        self.groups[g].busy = true;
        out.push(Effect::Resource {
            group: g,
            resource: r,
            op,
            ctx,
        });
    }

    fn event(
        &self,
        out: &mut Vec<Effect>,
        kind: &'static str,
        mut details: Value,
        g: Option<GroupId>,
    ) {
        if let (Some(g), Value::Object(m)) = (g, &mut details) {
            m.insert("group".into(), self.topo.groups[g].name.clone().into());
        }
        debug_assert!(
            ["ts_ms", "node", "kind"]
                .iter()
                .all(|k| details.get(k).is_none()),
            "event `{kind}` has a detail named like an event field: {details}"
        );
        out.push(Effect::Event { kind, details });
    }

    fn finish(&mut self, mut out: Vec<Effect>) -> Vec<Effect> {
        if self.dirty {
            self.dirty = false;
            out.insert(0, Effect::Persist(Box::new(self.state.clone())));
        }
        out
    }

    /// One step: adopt, coordinate, act. Call it on every membership or
    /// view change and at least every 100 ms.
    pub fn step(&mut self, now_ms: u64, input: &ClusterInput) -> Vec<Effect> {
        let mut out = Vec::new();
        self.quorate = input.quorate;
        self.adopt(&mut out, input);
        self.remember_peers(input);
        // Coordinate only once every live node (this one included) knows
        // what runs on it: a node still probing could run anything.
        let all_settled = self.settled()
            && input
                .alive
                .values()
                .all(|v| v.as_ref().is_some_and(|v| v.settled));
        if input.quorate && all_settled && self.is_coordinator(input) {
            self.coordinate(&mut out, now_ms, input);
        }
        self.act(&mut out, now_ms, input);
        self.finish(out)
    }

    fn remember_peers(&mut self, input: &ClusterInput) {
        let n = self.topo.groups.len();
        let epoch = self.state.published.as_ref().map_or(0, |p| p.epoch);
        self.peer_groups.resize(self.topo.nodes.len(), None);
        for (&p, v) in &input.alive {
            let Some(slot) = self.peer_groups.get_mut(p) else {
                continue;
            };
            let (seen, groups) = slot.get_or_insert_with(Default::default);
            *seen = epoch;
            groups.clear();
            match v {
                Some(v) => {
                    groups.resize(n, false);
                    for g in v.groups.keys() {
                        if let Some(x) = groups.get_mut(usize::from(*g)) {
                            *x = true;
                        }
                    }
                    if let Some(pl) = &v.published {
                        for (a, x) in pl.groups.iter().zip(groups.iter_mut()) {
                            if a.wanted && a.node == Some(u16_of(p)) {
                                *x = true;
                            }
                        }
                    }
                }
                // Alive but no view yet: it may run anything.
                None => groups.resize(n, true),
            }
        }
        let published = self.state.published.as_ref();
        for (p, slot) in self.peer_groups.iter_mut().enumerate() {
            let Some((seen, groups)) = slot else {
                continue;
            };
            let down_by_placement =
                published.is_some_and(|pl| pl.epoch > *seen && pl.down.contains(&u16_of(p)));
            if p == self.me
                || !groups.contains(&true)
                || input.down.contains(&p)
                || down_by_placement
            {
                *slot = None;
            }
        }
    }

    /// Whether peer `p` is lost (neither alive nor known down) and may
    /// still run `g`.
    fn lost_and_may_run(&self, input: &ClusterInput, p: NodeId, g: GroupId) -> bool {
        self.peer_groups.get(p).is_some_and(|slot| {
            slot.as_ref().is_some_and(|(_, groups)| {
                groups.get(g).copied().unwrap_or(false)
                    && !input.alive.contains_key(&p)
                    && !input.down.contains(&p)
            })
        })
    }

    /// A lost peer (neither alive nor known down) that may still run `g`.
    fn lost_peer_may_run(&self, input: &ClusterInput, g: GroupId) -> Option<NodeId> {
        (0..self.peer_groups.len()).find(|&p| self.lost_and_may_run(input, p, g))
    }

    /// Whether this node coordinates: the lowest-ordered live node of its
    /// partition.
    pub fn is_coordinator(&self, input: &ClusterInput) -> bool {
        input.alive.keys().all(|&p| p > self.me)
    }

    fn adopt(&mut self, out: &mut Vec<Effect>, input: &ClusterInput) {
        let mine = self.state.published.as_ref().map(Published::order);
        let newest = input
            .alive
            .iter()
            .filter(|(p, _)| {
                input
                    .generations
                    .get(p)
                    .is_none_or(|g| *g == self.generation)
            })
            .filter_map(|(_, v)| v.as_ref()?.published.as_ref())
            .filter(|p| {
                p.config_generation == self.generation && p.groups.len() == self.topo.groups.len()
            })
            .max_by_key(|p| p.order());
        if let Some(p) = newest
            && Some(p.order()) > mine
        {
            self.state.published = Some(p.clone());
            self.dirty = true;
        }
        // Requests the placement shows applied are done.
        if let Some(p) = &self.state.published {
            let applied = p.applied.get(&u16_of(self.me)).copied().unwrap_or(0);
            let before = self.state.requests.len();
            self.state.requests.retain(|r| r.id > applied);
            if self.state.requests.len() != before {
                self.dirty = true;
            }
            // `clusterctl clear`: forget local restarts, unblock.
            for (g, a) in p.groups.iter().enumerate() {
                let gk = u16_of(g);
                let seen = self.state.cleared.get(&gk).copied().unwrap_or(0);
                if a.cleared > seen {
                    self.state.cleared.insert(gk, a.cleared);
                    self.state.restarts.remove(&gk);
                    if self.state.blocked.remove(&gk) {
                        if let Some(lg) = self.groups.get_mut(g) {
                            lg.phase = Phase::Probing {
                                next: 0,
                                running: 0,
                                unknown: false,
                            };
                        }
                        self.event(out, "group_unblocked", json!({}), Some(g));
                    }
                    self.dirty = true;
                }
            }
        }
    }

    fn node_states(&self, input: &ClusterInput) -> Vec<NodeState> {
        (0..self.topo.nodes.len())
            .map(|n| {
                let maintenance = if n == self.me {
                    Some(self.state.maintenance)
                } else {
                    input
                        .alive
                        .get(&n)
                        .map(|v| v.as_ref().is_some_and(|v| v.maintenance))
                };
                match maintenance {
                    Some(true) => NodeState::Maintenance,
                    Some(false) => NodeState::Up,
                    None if input.down.contains(&n) => NodeState::Down,
                    None => NodeState::Unsafe,
                }
            })
            .collect()
    }

    fn run_states(&self, input: &ClusterInput, g: GroupId) -> Vec<(NodeId, RunState)> {
        let gk = u16_of(g);
        let mut runs: Vec<(NodeId, RunState)> = Vec::new();
        if let Some(s) = self.run_state(g) {
            runs.push((self.me, s));
        }
        for (&p, v) in &input.alive {
            match v {
                Some(v) => {
                    if let Some(s) = v.groups.get(&gk) {
                        runs.push((p, *s));
                    }
                }
                // Alive but no view yet: it may run anything.
                None => runs.push((p, RunState::Unknown)),
            }
        }
        // Lost, not known down, and it may run it: it may still.
        for p in 0..self.peer_groups.len() {
            if self.lost_and_may_run(input, p, g) {
                runs.push((p, RunState::Unknown));
            }
        }
        runs.sort_unstable();
        runs
    }

    fn coordinate(&mut self, out: &mut Vec<Effect>, now_ms: u64, input: &ClusterInput) {
        let n_groups = self.topo.groups.len();
        let base = self.state.published.clone().unwrap_or_else(|| Published {
            epoch: 0,
            coordinator: u16_of(self.me),
            config_generation: self.generation,
            groups: self
                .config
                .groups
                .iter()
                .map(|g| Assignment {
                    node: None,
                    reason: Reason::NoNode {
                        rejected: Vec::new(),
                    },
                    wanted: g.autostart,
                    moved: false,
                    excluded: BTreeMap::new(),
                    failovers: Vec::new(),
                    cleared: 0,
                    previous: None,
                    previous_fenced: false,
                    ineligible: BTreeMap::new(),
                })
                .collect(),
            applied: BTreeMap::new(),
            down: BTreeSet::new(),
            live: BTreeSet::new(),
        });
        let mut next = base.clone();
        next.coordinator = u16_of(self.me);
        next.down = input.down.iter().map(|&n| u16_of(n)).collect();
        next.live = input
            .alive
            .keys()
            .chain(std::iter::once(&self.me))
            .map(|&n| u16_of(n))
            .collect();

        // Operator and exclusion requests from every live node, oldest first.
        let mut moves: BTreeMap<GroupId, Option<NodeId>> = BTreeMap::new();
        let mut requests: Vec<(NodeId, OpRequest)> = self
            .state
            .requests
            .iter()
            .map(|r| (self.me, r.clone()))
            .collect();
        for (&p, v) in &input.alive {
            if let Some(v) = v
                && input
                    .generations
                    .get(&p)
                    .is_none_or(|g| *g == self.generation)
            {
                requests.extend(v.requests.iter().map(|r| (p, r.clone())));
            }
        }
        for (from, r) in requests {
            let applied = next.applied.entry(u16_of(from)).or_insert(0);
            if r.id <= *applied {
                continue;
            }
            *applied = r.id;
            let g = usize::from(r.group);
            let Some(a) = next.groups.get_mut(g) else {
                continue;
            };
            let node = &self.topo.nodes[from];
            match r.op {
                Op::Start => a.wanted = true,
                Op::Stop => a.wanted = false,
                Op::Move { to } => {
                    a.wanted = true;
                    moves.insert(g, to.map(usize::from));
                }
                Op::Clear => {
                    a.excluded.clear();
                    a.failovers.clear();
                    a.moved = false;
                    a.cleared += 1;
                }
                Op::Exclude => {
                    a.excluded.insert(u16_of(from), now_ms);
                    a.failovers.push(now_ms);
                }
            }
            self.event(
                out,
                "request_applied",
                json!({"from": node, "id": r.id, "op": r.op}),
                Some(g),
            );
        }

        // Failure windows.
        for (g, a) in next.groups.iter_mut().enumerate() {
            let window = self.failure_window(g);
            a.excluded.retain(|_, t| now_ms.saturating_sub(*t) < window);
            a.failovers.retain(|t| now_ms.saturating_sub(*t) < window);
        }

        let facts = Facts {
            nodes: self.node_states(input),
            groups: (0..n_groups)
                .map(|g| {
                    let a = &next.groups[g];
                    GroupFacts {
                        wanted: a.wanted,
                        runs: self.run_states(input, g),
                        assigned: a.node.map(usize::from),
                        moved: a.moved,
                        move_to: moves.get(&g).copied(),
                        excluded: a.excluded.keys().map(|n| usize::from(*n)).collect(),
                        failing: self.failing_nodes(input, g),
                    }
                })
                .collect(),
        };
        // Nothing changed since this node last placed (and published)
        // from the very same facts: placement is pure, the answer would be
        // the same.
        if base.epoch > 0
            && base.coordinator == next.coordinator
            && moves.is_empty()
            && next == base
            && self.last_facts.as_ref() == Some(&facts)
        {
            return;
        }
        let placement = placement::place(&self.topo, &facts);
        for refused in &placement.refused_moves {
            self.event(
                out,
                "move_refused",
                json!({"to": refused.to.and_then(|n| self.topo.nodes.get(n)), "why": refused.why}),
                Some(refused.group),
            );
        }
        for (g, Decision { node, reason }) in placement.groups.into_iter().enumerate() {
            let a = &mut next.groups[g];
            a.moved = matches!(reason, Reason::Moved { .. } | Reason::StaysMoved);
            // The nodes placement did not consider for it (a failure where
            // it runs is ignored), for status.
            a.ineligible = facts.groups[g]
                .failing
                .iter()
                .filter(|(n, _)| !facts.groups[g].runs.iter().any(|(m, _)| m == *n))
                .map(|(n, m)| (u16_of(*n), m.clone()))
                .collect();
            let node = node.map(u16_of);
            if a.node != node {
                self.event(
                    out,
                    "group_placed",
                    json!({
                        "to": node.and_then(|n| self.topo.nodes.get(usize::from(n))),
                        "from": a.node.and_then(|n| self.topo.nodes.get(usize::from(n))),
                        "reason": reason.describe(&self.topo),
                    }),
                    Some(g),
                );
            }
            if a.node != node
                && let Some(old) = a.node
            {
                a.previous = Some(old);
                a.previous_fenced = facts.nodes.get(usize::from(old)) == Some(&NodeState::Down);
            }
            // A group that stays keeps the reason it came here for: "failed
            // over from n0" says more than "stays where it runs", and
            // "moved from n0" more than "stays where an operator moved it".
            let keep = a.node == node
                && a.node.is_some()
                && (reason == Reason::Stays
                    || (reason == Reason::StaysMoved && matches!(a.reason, Reason::Moved { .. })));
            a.node = node;
            if !keep {
                a.reason = reason;
            }
        }
        self.last_facts = Some(facts);
        // Any change but the epoch (every field is named, so that a new
        // one is not forgotten here).
        let Published {
            epoch: _,
            coordinator,
            config_generation,
            groups,
            applied,
            down,
            live,
        } = &next;
        let changed = *config_generation != base.config_generation
            || *groups != base.groups
            || *applied != base.applied
            || *down != base.down
            || *live != base.live
            || base.epoch == 0
            || base.coordinator != *coordinator;
        if changed {
            next.epoch = base.epoch + 1;
            self.event(
                out,
                "placement_published",
                json!({"epoch": next.epoch}),
                None,
            );
            self.state.published = Some(next);
            self.dirty = true;
        }
    }

    /// The nodes where a `while_active = false` monitor of `g` fails while
    /// `g` does not run there (this node and the live peers with this
    /// configuration), with the first such monitor.
    fn failing_nodes(&self, input: &ClusterInput, g: GroupId) -> BTreeMap<NodeId, String> {
        let monitors = &self.config.groups[g].monitors;
        let name = |m: usize| monitors.get(m).map(|x| x.name.clone());
        let gk = u16_of(g);
        let mut out = BTreeMap::new();
        if self.groups[g].phase == Phase::Stopped
            && let Some(m) = self.groups[g].standby_failed.iter().find_map(|m| name(*m))
        {
            out.insert(self.me, m);
        }
        for (&p, v) in &input.alive {
            if input
                .generations
                .get(&p)
                .is_some_and(|gen_| *gen_ != self.generation)
            {
                continue;
            }
            if let Some(m) = v
                .as_ref()
                .and_then(|v| v.standby_failures.get(&gk))
                .and_then(|ms| ms.iter().find_map(|m| name(usize::from(*m))))
            {
                out.insert(p, m);
            }
        }
        out
    }

    fn failure_window(&self, g: GroupId) -> u64 {
        let probes = self.probe_specs[g]
            .iter()
            .flatten()
            .map(|p| p.recovery.window.get());
        self.config.groups[g]
            .monitors
            .iter()
            .map(|m| m.recovery.window.get())
            .chain(probes)
            .max()
            .unwrap_or(conf::Recovery::default().window.get())
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    fn assigned_here(&self, g: GroupId) -> bool {
        !self.shutting_down
            && !self.state.maintenance
            && self.state.published.as_ref().is_some_and(|p| {
                p.groups
                    .get(g)
                    .is_some_and(|a| a.wanted && a.node == Some(u16_of(self.me)))
            })
    }

    fn start_reason(&self, g: GroupId) -> StartReason {
        match self
            .state
            .published
            .as_ref()
            .and_then(|p| p.groups.get(g))
            .map(|a| &a.reason)
        {
            Some(Reason::FailedOver { .. }) => StartReason::Failover,
            Some(Reason::Moved { .. } | Reason::FailedBack { .. }) => StartReason::Move,
            _ => StartReason::Start,
        }
    }

    fn begin_stop(&mut self, out: &mut Vec<Effect>, g: GroupId, why: StopWhy) {
        let n = self.config.groups[g].resources.len();
        let down_to = match why {
            StopWhy::Recover(r) => r,
            _ => 0,
        };
        let top = match self.groups[g].phase {
            Phase::Starting { next, .. } => (next + 1).min(n),
            _ => n,
        };
        if top == 0 || top <= down_to {
            self.stopped(out, g, why);
            return;
        }
        self.event(
            out,
            "group_stopping",
            json!({"why": format!("{why:?}")}),
            Some(g),
        );
        self.groups[g].phase = Phase::Stopping {
            next: top - 1,
            down_to,
            why,
        };
        self.run(out, g, top - 1, ResourceOp::Stop);
    }

    fn stopped(&mut self, out: &mut Vec<Effect>, g: GroupId, why: StopWhy) {
        let gk = u16_of(g);
        match why {
            StopWhy::Recover(r) if !self.quorate => {
                // Quorum was lost during the restart's stop: do not start
                // again; stop what still runs below the restarted resource.
                self.event(out, "start_aborted", json!({"why": "quorum lost"}), Some(g));
                if r > 0 {
                    self.groups[g].phase = Phase::Stopping {
                        next: r - 1,
                        down_to: 0,
                        why: StopWhy::QuorumLost,
                    };
                    self.run(out, g, r - 1, ResourceOp::Stop);
                    return;
                }
            }
            StopWhy::Recover(r) => {
                let reason = StartReason::Recover;
                self.groups[g].last_reason = reason;
                self.groups[g].phase = Phase::Starting { next: r, reason };
                self.run(out, g, r, ResourceOp::Start);
                return;
            }
            StopWhy::Failover | StopWhy::StartFailed => {
                self.request(g, Op::Exclude);
            }
            _ => {}
        }
        self.groups[g].phase = Phase::Stopped;
        self.groups[g].running_since = None;
        if self.state.active.remove(&gk) {
            self.dirty = true;
        }
        self.event(
            out,
            "group_stopped",
            json!({"why": format!("{why:?}")}),
            Some(g),
        );
    }

    /// Whether a start of `g` here is safe now.
    fn may_start(&self, input: &ClusterInput, g: GroupId) -> bool {
        let gk = u16_of(g);
        // Another live node reports it in some state (or has no view yet).
        let elsewhere = input
            .alive
            .values()
            .any(|v| v.as_ref().is_none_or(|v| v.groups.contains_key(&gk)));
        if elsewhere {
            return false;
        }
        // A lost peer may still run it (it was stopping it, or was about
        // to start it, when it was last heard): wait until it is known
        // down (fenced, or its lease expired).
        if self.lost_peer_may_run(input, g).is_some() {
            return false;
        }
        // Not while this node asks to be excluded for it, or asks for it
        // to be stopped (the recovery ladder's `stop_group`): the
        // placement it has is older than that request.
        if self
            .state
            .requests
            .iter()
            .any(|r| r.group == gk && matches!(r.op, Op::Exclude | Op::Stop))
        {
            return false;
        }
        // The groups it starts after run where they are assigned.
        let Some(p) = &self.state.published else {
            return false;
        };
        // Every live peer has this very placement: a peer still on an
        // older one may be starting the group right now (it was assigned
        // there before), and its view would not show it yet. A peer's view
        // is one snapshot of its placement and its groups, so once it shows
        // this epoch and not the group, the peer neither runs it nor will
        // start it under this placement.
        let behind = input.alive.iter().any(|(peer, v)| {
            input
                .generations
                .get(peer)
                .is_none_or(|gen_| *gen_ == self.generation)
                && v.as_ref()
                    .is_none_or(|v| v.published.as_ref().map(Published::order) != Some(p.order()))
        });
        if behind {
            return false;
        }
        // Every node the coordinator heard, this node hears too (a node
        // this one cannot hear, say one it has not heard since it started,
        // or across a partial partition, may be stopping the group right
        // now, unseen here).
        let unheard = p
            .live
            .iter()
            .map(|&n| usize::from(n))
            .any(|n| n != self.me && !input.alive.contains_key(&n) && !input.down.contains(&n));
        if unheard {
            return false;
        }
        self.topo.groups[g].start_after.iter().all(|&d| {
            let Some(dn) = p.groups.get(d).and_then(|a| a.node).map(usize::from) else {
                return false;
            };
            if dn == self.me {
                self.run_state(d) == Some(RunState::Running)
            } else {
                input
                    .alive
                    .get(&dn)
                    .and_then(Option::as_ref)
                    .is_some_and(|v| v.groups.get(&u16_of(d)) == Some(&RunState::Running))
            }
        })
    }

    fn act(&mut self, out: &mut Vec<Effect>, now_ms: u64, input: &ClusterInput) {
        let order = self.topo.order.clone();
        // Stops first, dependents before their dependencies.
        for &g in order.iter().rev() {
            if self.groups[g].busy {
                continue;
            }
            let gk = u16_of(g);
            match self.groups[g].phase.clone() {
                Phase::Running | Phase::Starting { .. } => {
                    if let Some(higher) = self.double_activity(input, g) {
                        self.event(
                            out,
                            "double_activity",
                            json!({"with": self.topo.nodes[higher], "action": "stopping here, the lower-priority node"}),
                            Some(g),
                        );
                        self.begin_stop(out, g, StopWhy::DoubleActivity);
                        continue;
                    }
                    let dependents_here = self
                        .topo
                        .dependents(g)
                        .any(|d| self.run_state(d).is_some() && !self.assigned_here(d));
                    // Losing quorum is the guard's business (it force-stops
                    // everything after the start-up grace), not a reason
                    // for a clean stop here. Nor is having no placement
                    // yet: a node that has never seen one (a first start
                    // next to VMs or applications already running) leaves
                    // what it found running alone until the first
                    // placement, which keeps a group where it runs.
                    let awaiting_first = self.state.published.is_none()
                        && !self.shutting_down
                        && !self.state.maintenance;
                    if !self.assigned_here(g) && !dependents_here && !awaiting_first {
                        self.begin_stop(
                            out,
                            g,
                            if self.shutting_down {
                                StopWhy::Shutdown
                            } else {
                                StopWhy::Unassigned
                            },
                        );
                    }
                }
                Phase::Probing { .. } => {
                    if !self.groups[g].busy {
                        self.continue_probe(out, g);
                    }
                }
                Phase::StopFailed | Phase::Stopped | Phase::Stopping { .. } => {}
            }
            let _ = gk;
        }
        if !input.quorate {
            return;
        }
        // Starts, dependencies first.
        for &g in &order {
            if self.groups[g].busy || self.groups[g].phase != Phase::Stopped {
                continue;
            }
            if self.assigned_here(g) && self.may_start(input, g) {
                let reason = self.start_reason(g);
                let gk = u16_of(g);
                self.state.active.insert(gk);
                self.dirty = true;
                self.groups[g].last_reason = reason;
                self.groups[g].phase = Phase::Starting { next: 0, reason };
                self.event(out, "group_starting", json!({"reason": reason}), Some(g));
                if self.config.groups[g].resources.is_empty() {
                    self.started(out, now_ms, g);
                } else {
                    self.run(out, g, 0, ResourceOp::Start);
                }
            }
        }
        // Monitors and periodic probes.
        for g in 0..self.groups.len() {
            self.watch(out, now_ms, g);
        }
    }

    /// Run the monitor checks and periodic probes of `g` that are due.
    fn watch(&mut self, out: &mut Vec<Effect>, now_ms: u64, g: GroupId) {
        let lg = &self.groups[g];
        let mode = if lg.busy {
            None
        } else if lg.phase == Phase::Running {
            Some(CheckMode::Active)
        } else if lg.phase == Phase::Stopped
            && !self.shutting_down
            && !self.state.maintenance
            && self.topo.groups[g].nodes.contains(&self.me)
        {
            Some(CheckMode::Standby)
        } else {
            None
        };
        let since = match mode {
            None => {
                self.leave_standby(g);
                return;
            }
            Some(CheckMode::Active) => {
                self.leave_standby(g);
                self.groups[g].running_since.unwrap_or(now_ms)
            }
            Some(CheckMode::Standby) => match self.groups[g].standby_since {
                Some(t) => t,
                None => {
                    // A new standby period: the start delay counts anew.
                    let lg = &mut self.groups[g];
                    lg.standby_since = Some(now_ms);
                    lg.period += 1;
                    for c in &mut lg.checks {
                        c.due = 0;
                    }
                    now_ms
                }
            },
        };
        let config = Arc::clone(&self.config);
        for (m, mon) in config.groups[g].monitors.iter().enumerate() {
            if mode == Some(CheckMode::Standby) && mon.while_active {
                continue;
            }
            let slot = self.groups[g].checks[m];
            let first = since + millis(mon.start_delay.get());
            if slot.in_flight.is_some() || now_ms < slot.due.max(first) {
                continue;
            }
            self.groups[g].checks[m] = CheckSlot {
                due: now_ms + millis(mon.interval.get()),
                in_flight: mode.map(|m| (m, self.groups[g].period)),
            };
            out.push(Effect::Check {
                group: g,
                monitor: m,
                timeout: mon.timeout.get(),
            });
        }
        if mode != Some(CheckMode::Active) {
            return;
        }
        // Periodic probes (`monitor_interval`), beside any lifecycle
        // action: a probe only reads, and its answer is used only while
        // this same run goes on with nothing in flight.
        for r in 0..self.probe_specs[g].len() {
            let Some(spec) = self.probe_specs[g][r] else {
                continue;
            };
            let slot = self.groups[g].probes[r];
            let first = since + millis(spec.interval);
            if slot.in_flight.is_some() || now_ms < slot.due.max(first) {
                continue;
            }
            self.groups[g].probes[r] = ProbeSlot {
                due: now_ms + millis(spec.interval),
                in_flight: Some(self.groups[g].period),
            };
            let ctx = self.ctx(g, r, self.groups[g].last_reason, spec.timeout);
            out.push(Effect::Resource {
                group: g,
                resource: r,
                op: ResourceOp::Probe,
                ctx,
            });
        }
    }

    /// This node is no standby for `g` now: its standby failures no longer
    /// count (they are not in the view either).
    fn leave_standby(&mut self, g: GroupId) {
        let lg = &mut self.groups[g];
        lg.standby_since = None;
        lg.standby_failed.clear();
    }

    /// A node of higher priority for `g` that also reports it running.
    fn double_activity(&self, input: &ClusterInput, g: GroupId) -> Option<NodeId> {
        let gk = u16_of(g);
        let rank = |n: NodeId| {
            self.topo.groups[g]
                .nodes
                .iter()
                .position(|x| *x == n)
                .unwrap_or(usize::MAX)
        };
        input
            .alive
            .iter()
            .filter(|(_, v)| {
                v.as_ref().is_some_and(|v| {
                    matches!(
                        v.groups.get(&gk),
                        Some(RunState::Running | RunState::Starting)
                    )
                })
            })
            .map(|(p, _)| *p)
            .find(|&p| (rank(p), p) < (rank(self.me), self.me))
    }

    fn continue_probe(&mut self, out: &mut Vec<Effect>, g: GroupId) {
        let Phase::Probing {
            next,
            running,
            unknown,
        } = self.groups[g].phase
        else {
            return;
        };
        let n = self.config.groups[g].resources.len();
        if next < n {
            // A periodic probe of this resource still in flight would
            // answer in its place: wait for it (the next step goes on).
            if self.groups[g].probes[next].in_flight.is_none() {
                self.run(out, g, next, ResourceOp::Probe);
            }
            return;
        }
        let gk = u16_of(g);
        let recorded = self.state.active.contains(&gk);
        if self.state.blocked.contains(&gk) {
            self.groups[g].phase = Phase::StopFailed;
        } else if running == n && n > 0 && !unknown {
            self.groups[g].phase = Phase::Running;
            self.groups[g].running_since = Some(0);
            self.groups[g].period += 1;
            self.state.active.insert(gk);
            self.dirty = true;
            self.event(out, "group_found_running", json!({}), Some(g));
        } else if running > 0 || (unknown && recorded) {
            // Partly running, or unknown where this node started it: stop
            // it to be sure (stopping what is not running succeeds).
            self.event(
                out,
                "group_found_unclean",
                json!({"running": running, "unknown": unknown}),
                Some(g),
            );
            self.groups[g].phase = Phase::Running;
            self.begin_stop(out, g, StopWhy::Unknown);
        } else {
            self.groups[g].phase = Phase::Stopped;
            if self.state.active.remove(&gk) {
                self.dirty = true;
            }
        }
    }

    fn started(&mut self, out: &mut Vec<Effect>, now_ms: u64, g: GroupId) {
        let lg = &mut self.groups[g];
        lg.phase = Phase::Running;
        lg.running_since = Some(now_ms);
        lg.period += 1;
        // Checks and probes begin anew; one still in flight is waited for
        // (its answer, from before, is dropped).
        for c in &mut lg.checks {
            c.due = 0;
        }
        for p in &mut lg.probes {
            p.due = 0;
        }
        let reason = self.groups[g].last_reason;
        self.event(out, "group_running", json!({"reason": reason}), Some(g));
    }

    /// A resource operation finished.
    pub fn on_resource(
        &mut self,
        now_ms: u64,
        g: GroupId,
        r: usize,
        op: ResourceOp,
        outcome: OpResult,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(lg) = self.groups.get_mut(g) else {
            return out;
        };
        // A periodic probe (only one of a resource is ever in flight, and
        // no start-up probe of it meanwhile).
        if op == ResourceOp::Probe
            && let Some(period) = lg.probes.get_mut(r).and_then(|p| p.in_flight.take())
        {
            self.on_periodic_probe(&mut out, now_ms, g, r, period, outcome);
            return self.finish(out);
        }
        lg.busy = false;
        let n = self.config.groups[g].resources.len();
        let resource = self.config.groups[g]
            .resources
            .get(r)
            .map(|x| x.name.clone())
            .unwrap_or_default();
        match (self.groups[g].phase.clone(), op, outcome) {
            (
                Phase::Probing {
                    next,
                    running,
                    unknown,
                },
                ResourceOp::Probe,
                OpResult::Probed(probe),
            ) => {
                let (running, unknown) = match probe {
                    Probe::Running | Probe::Failed(_) => (running + 1, unknown),
                    Probe::Stopped => (running, unknown),
                    Probe::Unknown(_) => (running, true),
                };
                self.groups[g].phase = Phase::Probing {
                    next: next + 1,
                    running,
                    unknown,
                };
                self.continue_probe(&mut out, g);
            }
            (Phase::Starting { next, reason }, ResourceOp::Start, OpResult::Done(o)) => {
                if o.is_ok() && !self.quorate {
                    // Quorum was lost while this resource started: undo
                    // the start instead of going on (the other side may
                    // take the group over once this node's lease is out).
                    self.event(
                        &mut out,
                        "resource_started",
                        json!({"resource": resource}),
                        Some(g),
                    );
                    self.event(
                        &mut out,
                        "start_aborted",
                        json!({"why": "quorum lost"}),
                        Some(g),
                    );
                    self.begin_stop(&mut out, g, StopWhy::QuorumLost);
                } else if o.is_ok() {
                    self.event(
                        &mut out,
                        "resource_started",
                        json!({"resource": resource}),
                        Some(g),
                    );
                    if next + 1 < n {
                        self.groups[g].phase = Phase::Starting {
                            next: next + 1,
                            reason,
                        };
                        self.run(&mut out, g, next + 1, ResourceOp::Start);
                    } else {
                        self.started(&mut out, now_ms, g);
                    }
                } else {
                    self.event(
                        &mut out,
                        "resource_start_failed",
                        json!({"resource": resource, "outcome": o}),
                        Some(g),
                    );
                    self.begin_stop(&mut out, g, StopWhy::StartFailed);
                }
            }
            (Phase::Stopping { next, down_to, why }, ResourceOp::Stop, OpResult::Done(o)) => {
                if o.is_ok() {
                    if next > down_to {
                        self.groups[g].phase = Phase::Stopping {
                            next: next - 1,
                            down_to,
                            why,
                        };
                        self.run(&mut out, g, next - 1, ResourceOp::Stop);
                    } else {
                        self.stopped(&mut out, g, why);
                    }
                } else {
                    self.stop_failed(&mut out, g, r, &o);
                }
            }
            (phase, op, outcome) => {
                tracing::warn!(
                    group = g,
                    resource = r,
                    ?op,
                    ?phase,
                    ?outcome,
                    "unexpected resource result ignored"
                );
            }
        }
        self.finish(out)
    }

    fn stop_failed(&mut self, out: &mut Vec<Effect>, g: GroupId, r: usize, o: &ActionOutcome) {
        let res = &self.config.groups[g].resources[r];
        let policy = res.on_stop_failure;
        let name = res.name.clone();
        self.event(
            out,
            "resource_stop_failed",
            json!({"resource": name, "outcome": o, "policy": policy}),
            Some(g),
        );
        match policy {
            conf::StopFailure::Block => {
                self.groups[g].phase = Phase::StopFailed;
                self.state.blocked.insert(u16_of(g));
                self.dirty = true;
                self.event(out, "group_blocked", json!({"resource": name}), Some(g));
            }
            conf::StopFailure::Fence => {
                self.groups[g].phase = Phase::StopFailed;
                out.push(Effect::FenceSelf {
                    why: format!(
                        "resource {name} of group {} failed to stop",
                        self.topo.groups[g].name
                    ),
                });
            }
        }
    }

    /// A periodic probe (`monitor_interval`) of resource `r` finished: a
    /// resource found stopped or failed walks the recovery ladder from it.
    fn on_periodic_probe(
        &mut self,
        out: &mut Vec<Effect>,
        now_ms: u64,
        g: GroupId,
        r: usize,
        period: u64,
        outcome: OpResult,
    ) {
        let lg = &self.groups[g];
        let resource = self.config.groups[g].resources[r].name.clone();
        let group = &self.topo.groups[g].name;
        if lg.phase != Phase::Running || lg.busy || lg.period != period {
            tracing::debug!(%group, %resource, ?outcome, "periodic probe answered after its run: dropped");
            return;
        }
        let detail = match outcome {
            OpResult::Probed(Probe::Running) => return,
            OpResult::Probed(Probe::Unknown(why)) => {
                // Unknown is never read as stopped (nor as running).
                tracing::warn!(%group, %resource, %why, "periodic probe could not tell the resource's state; not counted as a failure");
                return;
            }
            OpResult::Probed(Probe::Stopped) => "the probe found it stopped".to_owned(),
            OpResult::Probed(Probe::Failed(why)) => format!("the probe found it failed: {why}"),
            OpResult::Done(o) => {
                tracing::warn!(%group, %resource, outcome = ?o, "unexpected answer to a periodic probe ignored");
                return;
            }
        };
        let Some(spec) = self.probe_specs[g][r] else {
            return;
        };
        tracing::warn!(%group, %resource, %detail, "periodic probe failed");
        self.recover(
            out,
            now_ms,
            g,
            Failure {
                r,
                source: json!({"probe": resource}),
                what: format!("the probe of resource {resource}"),
                recovery: spec.recovery,
                detail,
            },
        );
    }

    /// A monitor check finished.
    pub fn on_check(
        &mut self,
        now_ms: u64,
        g: GroupId,
        m: usize,
        outcome: CheckOutcome,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(lg) = self.groups.get_mut(g) else {
            return out;
        };
        let Some((mode, period)) = lg.checks.get_mut(m).and_then(|c| c.in_flight.take()) else {
            tracing::warn!(
                group = g,
                monitor = m,
                ?outcome,
                "a check that was not asked for: ignored"
            );
            return out;
        };
        if lg.period != period {
            return out;
        }
        if mode == CheckMode::Standby {
            self.on_standby_check(&mut out, g, m, outcome);
            return self.finish(out);
        }
        let CheckOutcome::Failed(detail) = outcome else {
            return out;
        };
        if self.groups[g].phase != Phase::Running || self.groups[g].busy {
            return out;
        }
        let group = &self.config.groups[g];
        let Some(mon) = group.monitors.get(m) else {
            return out;
        };
        let r = mon
            .resource
            .as_ref()
            .and_then(|name| group.resources.iter().position(|x| &x.name == name))
            .unwrap_or(group.resources.len().saturating_sub(1));
        let failure = Failure {
            r,
            source: json!({"monitor": mon.name}),
            what: format!("monitor {}", mon.name),
            recovery: mon.recovery,
            detail,
        };
        self.recover(&mut out, now_ms, g, failure);
        self.finish(out)
    }

    /// A `while_active = false` monitor answered where `g` does not run:
    /// a failure makes this node ineligible for `g` (through its view), a
    /// pass lifts that.
    fn on_standby_check(
        &mut self,
        out: &mut Vec<Effect>,
        g: GroupId,
        m: usize,
        outcome: CheckOutcome,
    ) {
        let lg = &self.groups[g];
        if lg.phase != Phase::Stopped || lg.busy || lg.standby_since.is_none() {
            return;
        }
        let monitor = self.config.groups[g]
            .monitors
            .get(m)
            .map(|x| x.name.clone())
            .unwrap_or_default();
        match outcome {
            CheckOutcome::Failed(detail) => {
                if self.groups[g].standby_failed.insert(m) {
                    tracing::warn!(group = %self.topo.groups[g].name, %monitor, %detail, "monitor fails on this standby: not eligible for the group");
                    self.event(
                        out,
                        "standby_monitor_failed",
                        json!({"monitor": monitor, "detail": detail, "action": "not eligible here"}),
                        Some(g),
                    );
                }
            }
            CheckOutcome::Ok => {
                if self.groups[g].standby_failed.remove(&m) {
                    tracing::info!(group = %self.topo.groups[g].name, %monitor, "monitor passes again on this standby: eligible again");
                    self.event(
                        out,
                        "standby_monitor_ok",
                        json!({"monitor": monitor, "action": "eligible again"}),
                        Some(g),
                    );
                }
            }
        }
    }

    /// The recovery ladder, for a failure of `g` found while it runs here:
    /// restart from resource `r` while restarts are left, then fail over,
    /// then the final action.
    fn recover(&mut self, out: &mut Vec<Effect>, now_ms: u64, g: GroupId, failure: Failure) {
        let Failure {
            r,
            source,
            what,
            recovery,
            detail,
        } = failure;
        let window = millis(recovery.window.get());
        let gk = u16_of(g);
        let restarts = self.state.restarts.entry(gk).or_default();
        restarts.retain(|t| now_ms.saturating_sub(*t) < window);
        let used = u32::try_from(restarts.len()).unwrap_or(u32::MAX);
        let failovers = self
            .state
            .published
            .as_ref()
            .and_then(|p| p.groups.get(g))
            .map_or(0, |a| {
                a.failovers
                    .iter()
                    .filter(|t| now_ms.saturating_sub(**t) < window)
                    .count()
            });
        let failovers = u32::try_from(failovers).unwrap_or(u32::MAX);
        self.dirty = true;
        let details = |extra: Value| {
            let mut d = source.clone();
            if let (Value::Object(d), Value::Object(extra)) = (&mut d, extra) {
                d.insert("detail".into(), detail.clone().into());
                d.extend(extra);
            }
            d
        };
        if used < recovery.restart {
            restarts.push(now_ms);
            let d =
                details(json!({"action": "restart", "restart": used + 1, "of": recovery.restart}));
            self.event(out, "monitor_failed", d, Some(g));
            self.begin_stop(out, g, StopWhy::Recover(r));
        } else if failovers < recovery.failover {
            let d = details(
                json!({"action": "failover", "failover": failovers + 1, "of": recovery.failover}),
            );
            self.event(out, "monitor_failed", d, Some(g));
            self.begin_stop(out, g, StopWhy::Failover);
        } else {
            let d = details(json!({"action": "final", "final_action": recovery.final_action}));
            self.event(out, "monitor_failed", d, Some(g));
            let why = format!(
                "{what} of group {} failed: restarts and failovers used up",
                self.topo.groups[g].name
            );
            match recovery.final_action {
                conf::FinalAction::StopGroup => {
                    self.request(g, Op::Stop);
                    self.begin_stop(out, g, StopWhy::Unassigned);
                }
                conf::FinalAction::StopDaemon => {
                    self.shutting_down = true;
                    out.push(Effect::StopDaemon { why });
                }
                conf::FinalAction::FenceSelf => out.push(Effect::FenceSelf { why }),
                conf::FinalAction::None => {}
            }
        }
    }
}

/// A failure found while a group runs, for the recovery ladder.
struct Failure {
    /// The resource restarted (with those after it).
    r: usize,
    /// What found it, for the event (`{"monitor": ...}` or `{"probe": ...}`).
    source: Value,
    /// What found it, in words.
    what: String,
    /// Its ladder.
    recovery: conf::Recovery,
    /// What it found.
    detail: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
