//! Placement: where every group should run, and the ordered actions that
//! get it there. A pure function: no I/O, no clock. The coordinator runs it
//! on every change; the simulator and `--what-if` run the very same code.
//!
//! Inputs are a [`Topology`] (what the configuration says, as indexes) and
//! the observed [`Facts`]: which nodes are up, down (fenced or lease
//! expired) or unsafe (lost but not yet known down), where each group
//! runs and in what state, the previous decision, pending manual moves,
//! exclusions after repeated failures, nodes where a monitor that also
//! watches standbys fails, and whether the operator wants the group
//! started. The output says, for each group, the node it should run
//! on and [`Reason`] why, and [`actions`] turns it into stops and starts
//! in dependency order.
//!
//! Safety is decided here as much as anywhere: a group that may still run
//! on an unsafe node stays assigned there (nothing starts elsewhere), a
//! start is ready only when no other node reports the group in any state
//! but stopped, and unknown counts as running.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's index in the configuration's node list.
pub type NodeId = usize;
/// A group's index in the configuration's group list.
pub type GroupId = usize;

/// Memory and vCPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// MiB of memory.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
}

impl Demand {
    /// Both demands together.
    pub fn plus(self, other: Self) -> Self {
        self.add(other)
    }

    fn add(self, other: Self) -> Self {
        Self {
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            vcpus: self.vcpus.saturating_add(other.vcpus),
        }
    }

    fn fits(self, used: Self, budget: Self) -> bool {
        used.memory_mib.saturating_add(self.memory_mib) <= budget.memory_mib
            && used.vcpus.saturating_add(self.vcpus) <= budget.vcpus
    }
}

/// One group, as placement needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// Name, for reasons.
    pub name: String,
    /// Nodes that may run it, most preferred first.
    pub nodes: Vec<NodeId>,
    /// Move back to a more preferred node when one is available.
    pub failback_auto: bool,
    /// Groups that must run before this one starts.
    pub start_after: Vec<GroupId>,
    /// Groups it must never share a node with (both directions).
    pub anti_affinity: Vec<GroupId>,
    /// What it needs of a node's capacity.
    pub demand: Demand,
}

/// The configuration, as indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Node names.
    pub nodes: Vec<String>,
    /// Node capacity budgets (`None`: unlimited).
    pub capacity: Vec<Option<Demand>>,
    /// Groups.
    pub groups: Vec<GroupSpec>,
    /// Groups in start order: every group after the groups it starts after.
    pub order: Vec<GroupId>,
    /// For each group, the groups that start after it.
    pub dependents: Vec<Vec<GroupId>>,
}

impl Topology {
    /// The topology of `config`. Validation guarantees that every name
    /// resolves and that `start_after` has no cycle; anything that does not
    /// resolve is left out.
    pub fn from_config(config: &conf::Config) -> Self {
        let node_index = |name: &str| config.nodes.iter().position(|n| n.name == name);
        let group_index = |name: &str| config.groups.iter().position(|g| g.name == name);
        let mut groups: Vec<GroupSpec> = config
            .groups
            .iter()
            .map(|g| GroupSpec {
                name: g.name.clone(),
                nodes: g.nodes.iter().filter_map(|n| node_index(n)).collect(),
                failback_auto: g.failback == conf::Failback::Auto,
                start_after: g
                    .start_after
                    .iter()
                    .filter_map(|d| group_index(d))
                    .collect(),
                anti_affinity: g
                    .anti_affinity
                    .iter()
                    .filter_map(|d| group_index(d))
                    .collect(),
                demand: group_demand(g),
            })
            .collect();
        // Anti-affinity holds both ways.
        for i in 0..groups.len() {
            for j in groups[i].anti_affinity.clone() {
                if !groups[j].anti_affinity.contains(&i) {
                    groups[j].anti_affinity.push(i);
                }
            }
        }
        let order = start_order(&groups);
        let dependents = dependents_of(&groups);
        Self {
            nodes: config.nodes.iter().map(|n| n.name.clone()).collect(),
            capacity: config
                .nodes
                .iter()
                .map(|n| {
                    n.capacity.map(|c| Demand {
                        memory_mib: c.memory_mib,
                        vcpus: c.vcpus,
                    })
                })
                .collect(),
            groups,
            order,
            dependents,
        }
    }

    /// Recompute `order` and `dependents` after changing `groups`.
    pub fn reindex(&mut self) {
        self.order = start_order(&self.groups);
        self.dependents = dependents_of(&self.groups);
    }

    /// Groups that start after `g` (its dependents).
    pub fn dependents(&self, g: GroupId) -> impl Iterator<Item = GroupId> + '_ {
        self.dependents.get(g).into_iter().flatten().copied()
    }
}

fn dependents_of(groups: &[GroupSpec]) -> Vec<Vec<GroupId>> {
    let mut out = vec![Vec::new(); groups.len()];
    for (g, spec) in groups.iter().enumerate() {
        for &d in &spec.start_after {
            if let Some(list) = out.get_mut(d) {
                list.push(g);
            }
        }
    }
    out
}

/// What a group's VMs need, from their configured memory and vCPUs.
fn group_demand(g: &conf::Group) -> Demand {
    g.resources
        .iter()
        .filter_map(|r| match &r.kind {
            conf::ResourceKind::Vm(vm) => Some(Demand {
                memory_mib: vm.memory_mib.unwrap_or(0),
                vcpus: vm.vcpus.unwrap_or(0),
            }),
            _ => None,
        })
        .fold(Demand::default(), Demand::add)
}

/// Kahn's algorithm, ties in configuration order; a cycle (which
/// validation rejects) leaves its groups at the end in configuration order.
fn start_order(groups: &[GroupSpec]) -> Vec<GroupId> {
    let mut placed = vec![false; groups.len()];
    let mut order = Vec::with_capacity(groups.len());
    loop {
        let next = (0..groups.len())
            .find(|&g| !placed[g] && groups[g].start_after.iter().all(|&d| placed[d]));
        match next {
            Some(g) => {
                placed[g] = true;
                order.push(g);
            }
            None => break,
        }
    }
    order.extend((0..groups.len()).filter(|&g| !placed[g]));
    order
}

/// A node as placement sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// In the quorate partition: may run groups.
    Up,
    /// Up, but in maintenance: runs nothing; its groups move away.
    Maintenance,
    /// Lost, and fenced or its lease expired: runs nothing for certain.
    Down,
    /// Lost (or in another partition) and not yet known down: whatever it
    /// ran may still run.
    Unsafe,
}

/// A group's state on one node, as that node reports it. A group absent
/// from a node's report is stopped there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Starting.
    Starting,
    /// Running.
    Running,
    /// Stopping.
    Stopping,
    /// A resource failed; the node is recovering it.
    Failed,
    /// A stop failed and the policy is to block: the group stays here.
    StopFailed,
    /// The node cannot tell (a probe failed): counts as running.
    Unknown,
}

/// What placement knows of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupFacts {
    /// The operator wants it running (`autostart`, `group start|stop`).
    pub wanted: bool,
    /// Every node that reports it in a state other than stopped.
    pub runs: Vec<(NodeId, RunState)>,
    /// The node the previous decision assigned it to.
    pub assigned: Option<NodeId>,
    /// That assignment came from a manual move: automatic fail-back waits
    /// until the group next fails over (shown in status).
    pub moved: bool,
    /// A pending one-shot manual move: `Some(None)` means "anywhere else".
    pub move_to: Option<Option<NodeId>>,
    /// Nodes excluded for this group after repeated failures.
    pub excluded: BTreeSet<NodeId>,
    /// Nodes where a monitor that also runs where the group does not
    /// (`while_active = false`) fails, with that monitor's name: not
    /// eligible while it fails. Ignored for a node that reports the group
    /// in any state: such a failure never moves a group that runs.
    pub failing: BTreeMap<NodeId, String>,
}

/// Everything placement decides from, besides the topology.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Each node's state, in configuration order.
    pub nodes: Vec<NodeState>,
    /// Each group's facts, in configuration order.
    pub groups: Vec<GroupFacts>,
}

/// Why a node was not chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Rejection {
    /// The node is down.
    Down,
    /// The node is lost and not yet fenced.
    Unsafe,
    /// The node is in maintenance.
    Maintenance,
    /// Excluded after repeated failures (until `clusterctl clear`).
    Excluded,
    /// A monitor that also runs where the group does not fails there
    /// (until a check passes again).
    MonitorFails {
        /// The monitor.
        monitor: String,
    },
    /// Not enough capacity left.
    Capacity {
        /// Needed.
        need: Demand,
        /// Free.
        free: Demand,
    },
    /// A group it must not share a node with is there.
    AntiAffinity {
        /// That group.
        with: GroupId,
    },
}

/// Why a group is placed where it is (or nowhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// On the most preferred node that can take it.
    Preferred,
    /// Stays where it runs (fail-back is manual, or it runs on the most
    /// preferred node available).
    Stays,
    /// Stays where an operator moved it.
    StaysMoved,
    /// Moved away from a node that is down, in maintenance, or excluded.
    FailedOver {
        /// Where it was.
        from: NodeId,
    },
    /// Back on a more preferred node (automatic fail-back).
    FailedBack {
        /// Where it was.
        from: NodeId,
    },
    /// Moved by an operator.
    Moved {
        /// Where it was, if anywhere.
        from: Option<NodeId>,
    },
    /// The operator stopped it.
    StoppedByOperator,
    /// It may still run on a lost node that is not fenced yet: it stays
    /// assigned there and starts nowhere else.
    WaitingForFence {
        /// The lost node.
        node: NodeId,
    },
    /// A stop failed there and the policy is to block.
    Blocked {
        /// The node.
        node: NodeId,
    },
    /// A group it starts after has no node.
    WaitingForDependency {
        /// That group.
        group: GroupId,
    },
    /// No node can take it.
    NoNode {
        /// Every configured node and why it was not chosen.
        rejected: Vec<(NodeId, Rejection)>,
    },
}

/// The decision for one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Where it should run.
    pub node: Option<NodeId>,
    /// Why.
    pub reason: Reason,
}

/// A manual move placement could not honour (it is dropped: moves are
/// one-shot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedMove {
    /// The group.
    pub group: GroupId,
    /// The node asked for, if one was.
    pub to: Option<NodeId>,
    /// Why not.
    pub why: String,
}

/// The result of placement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// One decision per group, in configuration order.
    pub groups: Vec<Decision>,
    /// Manual moves that could not be honoured.
    pub refused_moves: Vec<RefusedMove>,
}

/// One step towards the placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Stop `group` on `node`.
    Stop {
        /// The group.
        group: GroupId,
        /// The node.
        node: NodeId,
    },
    /// Start `group` on `node`.
    Start {
        /// The group.
        group: GroupId,
        /// The node.
        node: NodeId,
    },
}

fn node_state(facts: &Facts, n: NodeId) -> NodeState {
    facts.nodes.get(n).copied().unwrap_or(NodeState::Unsafe)
}

/// Where each group should run. Pure and deterministic.
pub fn place(topo: &Topology, facts: &Facts) -> Placement {
    let n_groups = topo.groups.len();
    let default_facts = GroupFacts::default();
    let gf = |g: GroupId| facts.groups.get(g).unwrap_or(&default_facts);
    let mut decided: Vec<Option<Decision>> = vec![None; n_groups];
    let mut load = Load::new(topo, facts);
    let mut refused_moves = Vec::new();

    let assign = |g: GroupId, d: Decision, decided: &mut Vec<Option<Decision>>, load: &mut Load| {
        if let Some(n) = d.node {
            load.assign(topo, g, n);
        }
        decided[g] = Some(d);
    };

    // Where each group is now: the node it runs on (the most preferred of
    // several, if doubly active), else its previous assignment, else any
    // node reporting it in another state. A group an operator moved is
    // where it was moved to as long as that node is up, even while it
    // still runs on the node it leaves: otherwise the round after the move
    // would find it running there and keep it there, undoing the move.
    let current: Vec<Option<NodeId>> = (0..n_groups)
        .map(|g| {
            let f = gf(g);
            let spec = &topo.groups[g];
            if f.moved
                && let Some(to) = f
                    .assigned
                    .filter(|n| node_state(facts, *n) == NodeState::Up)
            {
                return Some(to);
            }
            let rank = |n: &NodeId| spec.nodes.iter().position(|x| x == n).unwrap_or(usize::MAX);
            let reported = |running: bool| {
                f.runs
                    .iter()
                    .filter(|(n, s)| {
                        node_state(facts, *n) != NodeState::Down
                            && (*s == RunState::Running) == running
                    })
                    .map(|(n, _)| *n)
                    .min_by_key(rank)
            };
            reported(true)
                .or(f
                    .assigned
                    .filter(|n| node_state(facts, *n) != NodeState::Down))
                .or_else(|| reported(false))
                .or(f.assigned)
        })
        .collect();

    // Pass 1: groups that cannot or should not move: pinned to a lost node
    // that is not fenced, blocked by a failed stop, stopped by the
    // operator, or staying where they run.
    for &g in &topo.order {
        let f = gf(g);
        let spec = &topo.groups[g];
        if let Some((n, _)) = f.runs.iter().find(|(_, s)| *s == RunState::StopFailed) {
            assign(
                g,
                Decision {
                    node: Some(*n),
                    reason: Reason::Blocked { node: *n },
                },
                &mut decided,
                &mut load,
            );
            continue;
        }
        // Where it may run unseen: where it was reported or assigned; and,
        // while no reachable node reports it, on any lost and unfenced
        // node it may run on: that node may have started it after its last
        // view reached us, or its view may never have reached us at all.
        let seen_active = f
            .runs
            .iter()
            .any(|(n, _)| node_state(facts, *n) != NodeState::Unsafe);
        // Known to be (or to have been meant to be) there: pinned to it.
        let pinned = f
            .runs
            .iter()
            .map(|(n, _)| *n)
            .chain(f.assigned)
            .find(|n| node_state(facts, *n) == NodeState::Unsafe);
        // Only possibly there: held, but not assigned to it, so that it is
        // placed afresh once that node is back or fenced.
        let possible = || {
            spec.nodes
                .iter()
                .copied()
                .filter(|_| !seen_active)
                .find(|n| node_state(facts, *n) == NodeState::Unsafe)
        };
        if let Some((node, n)) = pinned
            .map(|n| (Some(n), n))
            .or_else(|| possible().map(|n| (None, n)))
        {
            assign(
                g,
                Decision {
                    node,
                    reason: Reason::WaitingForFence { node: n },
                },
                &mut decided,
                &mut load,
            );
            continue;
        }
        if !f.wanted {
            assign(
                g,
                Decision {
                    node: None,
                    reason: Reason::StoppedByOperator,
                },
                &mut decided,
                &mut load,
            );
            continue;
        }
        if f.move_to.is_some() {
            continue;
        }
        // A group that runs nowhere stays assigned here only if the groups
        // it starts after already have their nodes; otherwise it is
        // decided in pass 2, after them: an assignment alone does not keep
        // it placed when a group it starts after has lost its node.
        if !runs_live(facts, f)
            && spec
                .start_after
                .iter()
                .any(|&d| decided[d].as_ref().is_none_or(|x| x.node.is_none()))
        {
            continue;
        }
        let Some(cur) = current[g] else { continue };
        if rejection(topo, facts, g, cur, &load).is_some() {
            continue;
        }
        let better_exists = spec.failback_auto
            && !f.moved
            && spec
                .nodes
                .iter()
                .take_while(|n| **n != cur)
                .any(|&n| rejection(topo, facts, g, n, &load).is_none());
        if better_exists {
            continue;
        }
        let reason = if f.moved {
            Reason::StaysMoved
        } else {
            Reason::Stays
        };
        assign(
            g,
            Decision {
                node: Some(cur),
                reason,
            },
            &mut decided,
            &mut load,
        );
    }

    // Pass 2: everything else, in start order.
    for &g in &topo.order {
        if decided[g].is_some() {
            continue;
        }
        let f = gf(g);
        let spec = &topo.groups[g];
        let from = current[g];
        let dependency_missing = spec
            .start_after
            .iter()
            .find(|&&d| decided[d].as_ref().is_none_or(|x| x.node.is_none()));
        // (A dependent that still runs is not stopped for it.)
        if let Some(&dep) = dependency_missing
            && !runs_live(facts, f)
        {
            assign(
                g,
                Decision {
                    node: None,
                    reason: Reason::WaitingForDependency { group: dep },
                },
                &mut decided,
                &mut load,
            );
            continue;
        }
        // A manual move: honoured if the node can take it, refused (and
        // forgotten) otherwise.
        if let Some(to) = f.move_to {
            let target = match to {
                Some(n) => {
                    if !spec.nodes.contains(&n) {
                        Err(format!(
                            "{} is not one of the group's nodes",
                            topo.nodes.get(n).map_or("?", String::as_str)
                        ))
                    } else {
                        match rejection(topo, facts, g, n, &load) {
                            None => Ok(n),
                            Some(r) => Err(describe_rejection(topo, n, &r)),
                        }
                    }
                }
                None => spec
                    .nodes
                    .iter()
                    .copied()
                    .find(|&n| Some(n) != from && rejection(topo, facts, g, n, &load).is_none())
                    .ok_or_else(|| "no other node can take it".to_owned()),
            };
            match target {
                Ok(n) => {
                    assign(
                        g,
                        Decision {
                            node: Some(n),
                            reason: Reason::Moved { from },
                        },
                        &mut decided,
                        &mut load,
                    );
                    continue;
                }
                Err(why) => refused_moves.push(RefusedMove { group: g, to, why }),
            }
            // Refused: decide as if no move had been asked for.
            if let Some(cur) = from
                && rejection(topo, facts, g, cur, &load).is_none()
            {
                assign(
                    g,
                    Decision {
                        node: Some(cur),
                        reason: if f.moved {
                            Reason::StaysMoved
                        } else {
                            Reason::Stays
                        },
                    },
                    &mut decided,
                    &mut load,
                );
                continue;
            }
        }
        let mut rejected = Vec::new();
        let mut chosen = None;
        for &n in &spec.nodes {
            match rejection(topo, facts, g, n, &load) {
                None => {
                    chosen = Some(n);
                    break;
                }
                Some(r) => rejected.push((n, r)),
            }
        }
        let decision = match chosen {
            Some(n) => {
                let reason = match from {
                    Some(f) if f == n => Reason::Stays,
                    Some(f) => {
                        let rank = |x: NodeId| spec.nodes.iter().position(|y| *y == x);
                        if rank(n) < rank(f) && rejection(topo, facts, g, f, &load).is_none() {
                            Reason::FailedBack { from: f }
                        } else {
                            Reason::FailedOver { from: f }
                        }
                    }
                    None => Reason::Preferred,
                };
                Decision {
                    node: Some(n),
                    reason,
                }
            }
            None => Decision {
                node: None,
                reason: Reason::NoNode { rejected },
            },
        };
        assign(g, decision, &mut decided, &mut load);
    }

    Placement {
        groups: decided
            .into_iter()
            .map(|d| {
                d.unwrap_or(Decision {
                    node: None,
                    reason: Reason::NoNode {
                        rejected: Vec::new(),
                    },
                })
            })
            .collect(),
        refused_moves,
    }
}

/// Whether a node that is not down reports the group (in any state).
fn runs_live(facts: &Facts, f: &GroupFacts) -> bool {
    f.runs
        .iter()
        .any(|(n, _)| node_state(facts, *n) != NodeState::Down)
}

/// What the groups decided so far, and those still on a node, take of it.
struct Load {
    /// Capacity taken per node: by the groups assigned there, and by those
    /// still there (in any state) that this placement moves away, until
    /// they have stopped. A VM that is stopping still holds its memory.
    used: Vec<Demand>,
    /// Groups assigned per node.
    on_node: Vec<Vec<GroupId>>,
    /// Groups reported on each node that is not down.
    held: Vec<Vec<GroupId>>,
}

impl Load {
    fn new(topo: &Topology, facts: &Facts) -> Self {
        let n = topo.nodes.len();
        let mut load = Self {
            used: vec![Demand::default(); n],
            on_node: vec![Vec::new(); n],
            held: vec![Vec::new(); n],
        };
        for (g, f) in facts.groups.iter().enumerate().take(topo.groups.len()) {
            for &(node, _) in &f.runs {
                if node < n
                    && node_state(facts, node) != NodeState::Down
                    && !load.held[node].contains(&g)
                {
                    load.held[node].push(g);
                    load.used[node] = load.used[node].add(topo.groups[g].demand);
                }
            }
        }
        load
    }

    fn assign(&mut self, topo: &Topology, g: GroupId, n: NodeId) {
        if !self.held[n].contains(&g) {
            self.used[n] = self.used[n].add(topo.groups[g].demand);
        }
        self.on_node[n].push(g);
    }

    /// Capacity taken on `n` by everything but `g`.
    fn used_by_others(&self, topo: &Topology, g: GroupId, n: NodeId) -> Demand {
        let u = self.used.get(n).copied().unwrap_or_default();
        if self.held.get(n).is_some_and(|h| h.contains(&g)) {
            let d = topo.groups[g].demand;
            Demand {
                memory_mib: u.memory_mib.saturating_sub(d.memory_mib),
                vcpus: u.vcpus.saturating_sub(d.vcpus),
            }
        } else {
            u
        }
    }
}

/// Why node `n` cannot take group `g` now, or `None` if it can.
fn rejection(
    topo: &Topology,
    facts: &Facts,
    g: GroupId,
    n: NodeId,
    load: &Load,
) -> Option<Rejection> {
    match node_state(facts, n) {
        NodeState::Up => {}
        NodeState::Down => return Some(Rejection::Down),
        NodeState::Unsafe => return Some(Rejection::Unsafe),
        NodeState::Maintenance => return Some(Rejection::Maintenance),
    }
    if let Some(f) = facts.groups.get(g) {
        if f.excluded.contains(&n) {
            return Some(Rejection::Excluded);
        }
        if let Some(monitor) = f.failing.get(&n)
            && !f.runs.iter().any(|(m, _)| *m == n)
        {
            return Some(Rejection::MonitorFails {
                monitor: monitor.clone(),
            });
        }
    }
    let spec = &topo.groups[g];
    if let Some(&with) = load
        .on_node
        .get(n)?
        .iter()
        .find(|o| spec.anti_affinity.contains(o))
    {
        return Some(Rejection::AntiAffinity { with });
    }
    if let Some(budget) = topo.capacity.get(n).copied().flatten() {
        let u = load.used_by_others(topo, g, n);
        if !spec.demand.fits(u, budget) {
            return Some(Rejection::Capacity {
                need: spec.demand,
                free: Demand {
                    memory_mib: budget.memory_mib.saturating_sub(u.memory_mib),
                    vcpus: budget.vcpus.saturating_sub(u.vcpus),
                },
            });
        }
    }
    None
}

fn describe_rejection(topo: &Topology, n: NodeId, r: &Rejection) -> String {
    let node = topo.nodes.get(n).map_or("?", String::as_str);
    match r {
        Rejection::Down => format!("{node} is down"),
        Rejection::Unsafe => format!("{node} is lost and not fenced yet"),
        Rejection::Maintenance => format!("{node} is in maintenance"),
        Rejection::Excluded => format!("{node} is excluded after repeated failures"),
        Rejection::MonitorFails { monitor } => format!("monitor `{monitor}` fails on {node}"),
        Rejection::Capacity { need, free } => format!(
            "{node} lacks capacity (needs {} MiB/{} vCPUs, {} MiB/{} vCPUs free)",
            need.memory_mib, need.vcpus, free.memory_mib, free.vcpus
        ),
        Rejection::AntiAffinity { with } => format!(
            "{node} runs {}, which it must not share a node with",
            topo.groups.get(*with).map_or("?", |g| g.name.as_str())
        ),
    }
}

impl Reason {
    /// The reason in words, for `clusterctl status`.
    pub fn describe(&self, topo: &Topology) -> String {
        let node = |n: &NodeId| topo.nodes.get(*n).map_or("?", String::as_str).to_owned();
        let group = |g: &GroupId| {
            topo.groups
                .get(*g)
                .map_or("?", |x| x.name.as_str())
                .to_owned()
        };
        match self {
            Self::Preferred => "most preferred node available".into(),
            Self::Stays => "stays where it runs".into(),
            Self::StaysMoved => {
                "stays where an operator moved it (automatic fail-back waits for its next failover)"
                    .into()
            }
            Self::FailedOver { from } => format!("failed over from {}", node(from)),
            Self::FailedBack { from } => format!("failed back from {}", node(from)),
            Self::Moved { from: Some(f) } => format!("moved by an operator from {}", node(f)),
            Self::Moved { from: None } => "placed by an operator".into(),
            Self::StoppedByOperator => "stopped by an operator".into(),
            Self::WaitingForFence { node: n } => {
                format!("{} is lost: waiting for it to be fenced", node(n))
            }
            Self::Blocked { node: n } => format!(
                "a stop failed on {}: blocked until an operator clears it",
                node(n)
            ),
            Self::WaitingForDependency { group: g } => {
                format!("waiting for {} to have a node", group(g))
            }
            Self::NoNode { rejected } if rejected.is_empty() => "no node can run it".into(),
            Self::NoNode { rejected } => format!(
                "no node can run it: {}",
                rejected
                    .iter()
                    .map(|(n, r)| describe_rejection(topo, *n, r))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stop { group, node } => write!(f, "stop group {group} on node {node}"),
            Self::Start { group, node } => write!(f, "start group {group} on node {node}"),
        }
    }
}

/// The actions that move the cluster towards `placement`, each one ready
/// to run now, in order: stops (dependents before what they depend on),
/// then starts (dependencies first). A start is ready only when no other
/// node reports the group in any state but stopped (unknown counts as
/// running), no lost node may still run it, and every group it starts
/// after runs. Run the function again after each action completes.
pub fn actions(topo: &Topology, facts: &Facts, placement: &Placement) -> Vec<Action> {
    let default_facts = GroupFacts::default();
    let gf = |g: GroupId| facts.groups.get(g).unwrap_or(&default_facts);
    let target = |g: GroupId| placement.groups.get(g).and_then(|d| d.node);
    let mut out = Vec::new();

    // Stops: every node that runs a group it is not assigned, except nodes
    // that cannot act (unsafe: waiting for fencing; down: nothing runs) and
    // groups blocked after a failed stop.
    let mut pending_stop = vec![false; topo.groups.len()];
    for &g in topo.order.iter().rev() {
        for &(n, state) in &gf(g).runs {
            let movable = matches!(node_state(facts, n), NodeState::Up | NodeState::Maintenance);
            if target(g) != Some(n) && movable && state != RunState::StopFailed {
                pending_stop[g] = true;
                // Stop after the groups that start after it have stopped
                // on this node.
                let dependents_running_here = topo
                    .dependents(g)
                    .any(|d| target(d) != Some(n) && gf(d).runs.iter().any(|(m, _)| *m == n));
                if !dependents_running_here && state != RunState::Stopping {
                    out.push(Action::Stop { group: g, node: n });
                }
            }
        }
    }

    for &g in &topo.order {
        let Some(n) = target(g) else { continue };
        let f = gf(g);
        if pending_stop[g] || node_state(facts, n) != NodeState::Up {
            continue;
        }
        if f.runs.iter().any(|(m, _)| *m == n) {
            continue; // already there, in some state
        }
        if f.runs
            .iter()
            .any(|(m, _)| node_state(facts, *m) != NodeState::Down)
        {
            continue;
        }
        // Each group it starts after runs where it is assigned (not on a
        // node it is about to leave).
        let deps_running = topo.groups[g]
            .start_after
            .iter()
            .all(|&d| target(d).is_some_and(|dn| gf(d).runs.contains(&(dn, RunState::Running))));
        if deps_running {
            out.push(Action::Start { group: g, node: n });
        }
    }
    out
}

#[cfg(test)]
mod tests;
