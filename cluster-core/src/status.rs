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
    /// Every configured group, as this daemon sees it.
    pub groups: Vec<GroupStatus>,
    /// Host daemons: this host's hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorStatus>,
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

/// One member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// State as seen from the reporting node.
    pub state: MemberState,
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

/// Members and groups as the configuration lists them, before any runtime
/// knowledge: `node` itself is [`MemberState::Local`], every other member
/// [`MemberState::Unknown`], every resource [`ResourceState::Unknown`].
pub fn configured(config: &conf::Config, node: &str) -> (Vec<MemberStatus>, Vec<GroupStatus>) {
    let members = config
        .nodes
        .iter()
        .map(|n| MemberStatus {
            name: n.name.clone(),
            state: if n.name == node {
                MemberState::Local
            } else {
                MemberState::Unknown
            },
        })
        .collect();
    let groups = config
        .groups
        .iter()
        .map(|g| GroupStatus {
            name: g.name.clone(),
            nodes: g.nodes.clone(),
            owner: None,
            resources: g
                .resources
                .iter()
                .map(|r| ResourceStatus {
                    name: r.name.clone(),
                    kind: r.kind.name().to_owned(),
                    state: ResourceState::Unknown,
                })
                .collect(),
        })
        .collect();
    (members, groups)
}
