//! What a daemon reports about itself and what it sees: the payload of
//! `clusterctl status`.

use serde::{Deserialize, Serialize};

/// One daemon's view of its cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Cluster name.
    pub cluster: String,
    /// `host` or `guest`.
    pub kind: conf::ClusterKind,
    /// This node's name.
    pub node: String,
    /// Daemon version.
    pub version: String,
    /// Daemon process id.
    pub pid: u32,
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Configuration file the daemon runs.
    pub config_file: String,
    /// Every configured node, as this daemon sees it.
    pub members: Vec<MemberStatus>,
    /// Quorum as this daemon decided it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumStatus>,
    /// Lost peers and whether their groups may move yet.
    #[serde(default)]
    pub takeovers: Vec<TakeoverStatus>,
    /// Every configured group, as this daemon sees it.
    pub groups: Vec<GroupStatus>,
    /// The group engine as this daemon sees it (daemons that place groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineStatus>,
    /// Host daemons: this host's hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorStatus>,
    /// Nodes with a capacity budget (hosts): the budget and what the
    /// newest placement puts on each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacity: Vec<NodeCapacity>,
    /// The newest maintenance procedure of this node, when there was one
    /// since the daemon started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceReport>,
    /// The host<->guest linkage as this daemon sees it, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkage: Option<LinkageStatus>,
}

/// A maintenance procedure (`clusterctl maintenance on|off`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceReport {
    /// Into maintenance (`true`) or out of it.
    pub on: bool,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// What was done, in order, in words.
    pub steps: Vec<String>,
    /// It ended.
    pub done: bool,
    /// It ended with everything done.
    pub ok: bool,
}

/// The linkage: a host's guests, or a guest's session to its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "side", rename_all = "snake_case")]
pub enum LinkageStatus {
    /// A host daemon: where it listens and each guest of
    /// `[[linkage.guests]]`.
    Host {
        /// The endpoints it listens on.
        listen: Vec<String>,
        /// Every configured guest.
        guests: Vec<LinkedGuestStatus>,
    },
    /// A guest daemon: its session to the host daemon.
    Guest {
        /// Where the host daemon is.
        connect: String,
        /// A session is open.
        connected: bool,
        /// The host this guest runs on, as the host said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// Why the last session failed or ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One configured guest, as its host sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedGuestStatus {
    /// Its node name in its guest cluster.
    pub name: String,
    /// Its guest cluster.
    pub cluster: String,
    /// Its libvirt domain.
    pub domain: String,
    /// A session is open.
    pub connected: bool,
    /// Milliseconds since its last frame, while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
}

/// One node's capacity budget and its use by the newest placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// Node name.
    pub node: String,
    /// Memory budget in MiB.
    pub memory_mib: u64,
    /// vCPU budget.
    pub vcpus: u32,
    /// Memory the groups placed on it need, in MiB.
    pub used_memory_mib: u64,
    /// vCPUs the groups placed on it need.
    pub used_vcpus: u32,
    /// Groups placed on it.
    pub groups: usize,
}

/// How a member looks from the reporting node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// The reporting node itself.
    Local,
    /// Not yet known: no membership has been established with it.
    Unknown,
    /// Heard on at least one link within the timeout.
    Alive,
    /// Silent on every link past the timeout.
    Lost,
}

/// Quorum of the reporting node's partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// The partition may act.
    pub quorate: bool,
    /// Votes held.
    pub votes: usize,
    /// Votes that exist.
    pub of: usize,
    /// Why.
    pub reason: String,
    /// The witness's vote as held here (`granted`, `denied`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<String>,
}

/// A lost peer's takeover state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverStatus {
    /// The lost peer.
    pub peer: String,
    /// `fencing`, `lease_wait`, `allowed`, `blocked`.
    pub state: String,
    /// More.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// State as seen from the reporting node.
    pub state: MemberState,
    /// Per heartbeat link: carrying heartbeats from this member or not.
    #[serde(default)]
    pub links: Vec<LinkStatus>,
    /// Milliseconds since a heartbeat from it arrived on any link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// Datagrams claiming to be from it that were dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Dropped>,
}

/// One heartbeat link to a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Link name.
    pub name: String,
    /// Heartbeats arrive on it.
    pub up: bool,
}

/// Dropped heartbeat datagrams, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Failed authentication.
    pub forged: u64,
    /// Sequence number already seen on that path (link and local
    /// address), or older than the newest on that link.
    pub replayed: u64,
    /// From an older incarnation.
    pub stale: u64,
    /// Unreadable.
    pub malformed: u64,
}

/// One group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// Preferred nodes, in order.
    pub nodes: Vec<String>,
    /// Where it runs, if anywhere known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its resources.
    pub resources: Vec<ResourceStatus>,
    /// The node the newest placement assigns it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Why placement chose that (or why it runs nowhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The operator wants it running (`group start|stop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted: Option<bool>,
    /// Its state on the reporting node (`stopped`, `starting`, `running`,
    /// `stopping`, `failed`, `stop_failed`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_here: Option<String>,
    /// Nodes that report it in a state other than stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_on: Vec<RunningOn>,
    /// Restarts on the reporting node within the failure window.
    #[serde(default)]
    pub restarts: usize,
    /// Failovers by the recovery ladder within the failure window.
    #[serde(default)]
    pub failovers: usize,
    /// Nodes it may not run on after repeated failures (until `clear`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

/// A node reporting a group in some state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningOn {
    /// The node.
    pub node: String,
    /// The group's state there.
    pub state: String,
}

/// The group engine, as the reporting node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// Epoch of the newest placement it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Who published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// The reporting node coordinates now.
    pub coordinating_here: bool,
    /// It knows what runs on it (every group probed).
    pub settled: bool,
    /// It is in maintenance.
    pub maintenance: bool,
}

/// One resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Resource name.
    pub name: String,
    /// Its `kind`.
    pub kind: String,
    /// What the reporting node knows of it on itself.
    pub state: ResourceState,
}

/// A resource's state on the reporting node. `Unknown` is never treated as
/// stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceState {
    /// Not probed yet, or the probe could not tell.
    Unknown,
    /// Running here.
    Running,
    /// Not running here.
    Stopped,
    /// Present but failed (crashed, paused on error).
    Failed,
}

/// A host's hypervisor, as libvirt reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HypervisorStatus {
    /// libvirt connection URI.
    pub uri: String,
    /// Whether the connection is up.
    pub connected: bool,
    /// Why it is not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every domain libvirt knows on this host.
    pub domains: Vec<DomainStatus>,
}

/// One libvirt domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainStatus {
    /// Domain name.
    pub name: String,
    /// libvirt state (`running`, `paused`, `shutoff`, `crashed`, ...).
    pub state: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Whether a `vm` resource of the configuration names it.
    pub managed: bool,
}

/// Groups as the configuration lists them, before any runtime knowledge:
/// no owner, every resource [`ResourceState::Unknown`].
pub fn configured_groups(config: &conf::Config) -> Vec<GroupStatus> {
    config
        .groups
        .iter()
        .map(|g| GroupStatus {
            resources: g
                .resources
                .iter()
                .map(|r| ResourceStatus {
                    name: r.name.clone(),
                    kind: r.kind.name().to_owned(),
                    state: ResourceState::Unknown,
                })
                .collect(),
            ..GroupStatus::new(&g.name, g.nodes.clone())
        })
        .collect()
}

impl GroupStatus {
    /// Group `name` preferring `nodes`, of which nothing is known yet.
    pub fn new(name: &str, nodes: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            owner: None,
            resources: Vec::new(),
            target: None,
            reason: None,
            wanted: None,
            state_here: None,
            running_on: Vec::new(),
            restarts: 0,
            failovers: 0,
            excluded: Vec::new(),
        }
    }
}

impl From<(&str, &str)> for RunningOn {
    /// `(node, state)`.
    fn from((node, state): (&str, &str)) -> Self {
        Self {
            node: node.to_owned(),
            state: state.to_owned(),
        }
    }
}
