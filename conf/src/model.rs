//! The configuration model: one TOML file per cluster, shared by every node
//! of it. The doc comments here are the reference: they become the JSON
//! schema's descriptions and `docs/configuration.md` is checked against them.
//!
//! Sections whose entries come in several kinds (`[[groups.resources]]`,
//! `[[groups.monitors]]`, `[[fencing]]`, `[[alerts]]`) are a struct of common
//! keys plus an enum chosen by the `kind` key; the loader (`crate::load`)
//! builds them so that every error keeps its exact line and key.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::endpoint::Endpoint;

/// A whole cluster's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of the cluster.
    pub cluster: ClusterSection,
    /// Heartbeat timing and the interconnect links.
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    /// Quorum and network-partition resolution.
    #[serde(default)]
    pub quorum: QuorumSection,
    /// The self-fencing lease kept by each daemon.
    #[serde(default)]
    pub watchdog: WatchdogSection,
    /// The members, in priority order: the first listed is the preferred
    /// coordinator and wins ties.
    pub nodes: Vec<Node>,
    /// Devices that power nodes off before their groups are taken over.
    #[serde(default)]
    pub fencing: Vec<FenceDevice>,
    /// Failover groups: resources that move together.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Where notifications go.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// The host<->guest channel. Its keys depend on `cluster.kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkage: Option<Linkage>,
    /// The control API served to `clusterctl` and the web page.
    #[serde(default)]
    pub api: ApiSection,
    /// Per-node effective resources after `nodes.overrides`, filled by the loader.
    #[serde(skip)]
    #[schemars(skip)]
    pub(crate) effective: BTreeMap<(String, String), Resource>,
}

impl Config {
    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Every resource of every group, with the group it belongs to.
    pub fn resources(&self) -> impl Iterator<Item = (&Group, &Resource)> {
        self.groups
            .iter()
            .flat_map(|g| g.resources.iter().map(move |r| (g, r)))
    }

    /// The resource `resource` as node `node` runs it: its parameters with
    /// that node's `overrides` applied. `None` if no such resource.
    pub fn resource_on(&self, node: &str, resource: &str) -> Option<&Resource> {
        self.effective
            .get(&(node.to_owned(), resource.to_owned()))
            .or_else(|| {
                self.resources()
                    .map(|(_, r)| r)
                    .find(|r| r.name == resource)
            })
    }
}

/// What the cluster's nodes are, and so which resources it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClusterKind {
    /// KVM hosts failing virtual machines over (`host-clusterd`).
    Host,
    /// Guests or physical servers failing applications over (`guest-clusterd`).
    Guest,
}

/// `[cluster]`: identity of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name; also names heartbeats, so two clusters on one network
    /// never mix.
    pub name: String,
    /// `host` or `guest`.
    pub kind: ClusterKind,
    /// File holding the shared secret that authenticates heartbeats (mode 0600).
    pub auth_key_file: PathBuf,
    /// Directory for crash-safe local state and the event log.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
}

/// `[heartbeat]`: timing and interconnects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSection {
    /// Time between two heartbeats on each link to each peer.
    #[serde(default = "defaults::hb_interval")]
    pub interval: Duration,
    /// A peer is lost when every link to it has been silent this long.
    /// Must be greater than `interval`.
    #[serde(default = "defaults::hb_timeout")]
    pub timeout: Duration,
    /// How long a daemon, after it starts, waits for a peer it has never
    /// heard before it declares that peer lost (and fences it before its
    /// groups are taken over): the nodes of a cluster seldom start in the
    /// same second, and a node merely slow to start must not be fenced.
    /// Heartbeat's `initdead`. At least `timeout`.
    #[serde(default = "defaults::hb_initdead")]
    pub initdead: Duration,
    /// UDP port heartbeats are sent to and received on.
    #[serde(default = "defaults::hb_port")]
    pub port: u16,
    /// The interconnect links; every node has an address on each.
    #[serde(default = "defaults::hb_links")]
    pub links: Vec<HeartbeatLink>,
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        Self {
            interval: defaults::hb_interval(),
            timeout: defaults::hb_timeout(),
            initdead: defaults::hb_initdead(),
            port: defaults::hb_port(),
            links: defaults::hb_links(),
        }
    }
}

/// `[[heartbeat.links]]`: one interconnect network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatLink {
    /// Link name, used as the key in `nodes.links`.
    pub name: String,
    /// UDP port for this link, if not `heartbeat.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `[quorum]`: who may act when the cluster splits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuorumSection {
    /// A witness server at a third site that adds one vote and breaks ties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<Witness>,
    /// Addresses pinged to break a tie in a two-node cluster without a witness.
    #[serde(default)]
    pub ping_targets: Vec<IpAddr>,
    /// How long one tie-break ping may take.
    #[serde(default = "defaults::ping_timeout")]
    pub ping_timeout: Duration,
}

impl Default for QuorumSection {
    fn default() -> Self {
        Self {
            witness: None,
            ping_targets: Vec::new(),
            ping_timeout: defaults::ping_timeout(),
        }
    }
}

/// `[quorum.witness]`: the witness server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Witness {
    /// Base URL, `http://` or `https://`, IPv4 or IPv6.
    pub url: String,
    /// Time allowed for one request.
    #[serde(default = "defaults::witness_timeout")]
    pub timeout: Duration,
    /// How long a vote the witness grants lasts without renewal.
    #[serde(default = "defaults::witness_lease")]
    pub lease: Duration,
    /// CA certificate to trust for an `https` witness, if not the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token the witness expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// How a node proves it is alive to itself: a watchdog that resets the
/// node when the daemon stops feeding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WatchdogKind {
    /// The kernel watchdog device (`watchdog.device`).
    Device,
    /// systemd's service watchdog (`WATCHDOG=1` notifications).
    Systemd,
    /// A keeper process that kills the daemon's process tree when the lease
    /// expires (testbeds without a watchdog device).
    Process,
    /// No self-fencing: takeover of this node's groups then always needs a
    /// fence device.
    None,
}

/// `[watchdog]`: the self-fencing lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSection {
    /// Which watchdog keeps the lease.
    #[serde(default = "defaults::watchdog_kind")]
    pub kind: WatchdogKind,
    /// Device path for `kind = "device"`.
    #[serde(default = "defaults::watchdog_device")]
    pub device: PathBuf,
    /// The node resets itself this long after it last fed the watchdog.
    #[serde(default = "defaults::watchdog_lease")]
    pub lease: Duration,
    /// Extra wait past `lease` before peers treat the lease as expired.
    #[serde(default = "defaults::watchdog_margin")]
    pub margin: Duration,
}

impl Default for WatchdogSection {
    fn default() -> Self {
        Self {
            kind: defaults::watchdog_kind(),
            device: defaults::watchdog_device(),
            lease: defaults::watchdog_lease(),
            margin: defaults::watchdog_margin(),
        }
    }
}

/// `[[nodes]]`: one member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node name, unique in the cluster.
    pub name: String,
    /// Addresses per heartbeat link, with prefix length (`192.0.2.11/24`,
    /// `2001:db8::11/64`): one or more per link, IPv4 and/or IPv6.
    #[schemars(with = "BTreeMap<String, Vec<Cidr>>")]
    pub links: BTreeMap<String, Vec<IpNet>>,
    /// Further networks this node is attached to (service networks that carry
    /// no heartbeat), as `address/prefix`; floating IPs must fall inside one.
    #[serde(default)]
    #[schemars(with = "Vec<Cidr>")]
    pub networks: Vec<IpNet>,
    /// Site label (for DR setups); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Host clusters: libvirt connection URI of this host's hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_uri: Option<String>,
    /// Host clusters: the memory and vCPUs this host offers to VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Host clusters: per bridge the linked guests' interfaces are on, the
    /// host NICs its traffic leaves by (`{ vmbr0 = ["eno1", "eno2"] }`).
    /// When every one of a bridge's NICs is down, each connected guest
    /// with an interface on that bridge is told (`NicDown`), and its `nic`
    /// monitor on that interface fails; `NicUp` when one is back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uplinks: BTreeMap<String, Vec<String>>,
    /// Host clusters: where this host's daemon listens for its guests,
    /// instead of `linkage.listen` (its own addresses, or a Unix socket
    /// path of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linkage_listen: Vec<Endpoint>,
    /// Guest clusters: where this guest's host daemon listens, when the
    /// guests of the cluster run on different hosts (`linkage.connect`
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkage_connect: Option<Endpoint>,
    /// Per-resource parameter overrides on this node: a table per resource
    /// name whose keys replace that resource's parameters here (for example
    /// a different `interface` on a DR node).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, BTreeMap<String, serde_json::Value>>")]
    pub overrides: BTreeMap<String, toml::Table>,
}

impl Node {
    /// Every subnet this node is attached to: its link and network addresses.
    pub fn subnets(&self) -> impl Iterator<Item = &IpNet> {
        self.links.values().flatten().chain(self.networks.iter())
    }
}

/// A host's budget for VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
}

/// `[[fencing]]`: a device that powers nodes off.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct FenceDevice {
    /// Device name.
    pub name: String,
    /// The nodes this device can fence.
    pub targets: Vec<String>,
    /// Time allowed for one fencing attempt.
    #[serde(default = "defaults::fence_timeout")]
    pub timeout: Duration,
    /// Wait before fencing, to settle two-node fence races deterministically.
    #[serde(default)]
    pub delay: Duration,
    /// What the device is.
    #[serde(flatten)]
    pub kind: FenceKind,
}

/// Keys every `[[fencing]]` entry has besides `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FenceCommon {
    pub(crate) name: String,
    pub(crate) targets: Vec<String>,
    #[serde(default = "defaults::fence_timeout")]
    pub(crate) timeout: Duration,
    #[serde(default)]
    pub(crate) delay: Duration,
}

/// The kinds of fence device.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FenceKind {
    /// An agent from the `fence-agents` package, driven by its stdin protocol.
    Agent(FenceAgent),
    /// A Redfish BMC: `ComputerSystem.Reset` with `ForceOff`.
    Redfish(FenceRedfish),
    /// Guest clusters: ask the host cluster over the linkage to destroy the
    /// peer's VM.
    Host(FenceHost),
}

/// `kind = "agent"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FenceAgent {
    /// Agent executable, e.g. `fence_ipmilan` (looked up in `/usr/sbin`,
    /// `/sbin`, `/usr/bin`, `/bin`), or an absolute path.
    pub agent: String,
    /// `key=value` lines passed on the agent's stdin (`ip`, `username`, ...).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Per target node, the `plug` value (for agents that fence many nodes).
    #[serde(default)]
    pub plugs: BTreeMap<String, String>,
}

/// `kind = "redfish"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FenceRedfish {
    /// BMC base URL (`https://bmc.example:443`).
    pub url: String,
    /// Redfish user name.
    pub username: String,
    /// File holding the password.
    pub password_file: PathBuf,
    /// The `Systems` member id, if the BMC has more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    /// Accept a self-signed certificate.
    #[serde(default)]
    pub insecure: bool,
}

/// `kind = "host"`: no keys of its own. The guest asks its host daemon
/// over the linkage to fence a target by its node name; the host cluster's
/// `[[linkage.guests]]` says which domain that is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct FenceHost {}

/// How failback works when a preferred node comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Failback {
    /// Move the group back to the preferred node at once.
    Auto,
    /// Leave it where it runs; an operator moves it back.
    #[default]
    Manual,
}

/// `[[groups]]`: resources that run together on one node and move together.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Nodes that may run the group, most preferred first (1+1, N+1, mutual
    /// standby and N+M are all written this way).
    pub nodes: Vec<String>,
    /// What happens when a more preferred node comes back.
    #[serde(default)]
    pub failback: Failback,
    /// Start the group when the cluster starts.
    #[serde(default = "defaults::yes")]
    pub autostart: bool,
    /// Groups that must be running before this one starts (and that stop
    /// after it).
    #[serde(default)]
    pub start_after: Vec<String>,
    /// Groups this one must never share a node with.
    #[serde(default)]
    pub anti_affinity: Vec<String>,
    /// The resources, in start order (data, then IP, then application);
    /// stopped in reverse.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Monitors that watch the group's resources.
    #[serde(default)]
    pub monitors: Vec<Monitor>,
}

/// Keys every `[[groups]]` entry has besides `resources` and `monitors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupCommon {
    pub(crate) name: String,
    pub(crate) nodes: Vec<String>,
    #[serde(default)]
    pub(crate) failback: Failback,
    #[serde(default = "defaults::yes")]
    pub(crate) autostart: bool,
    #[serde(default)]
    pub(crate) start_after: Vec<String>,
    #[serde(default)]
    pub(crate) anti_affinity: Vec<String>,
}

/// What to do when a resource fails to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum StopFailure {
    /// Fence the node, then start the group elsewhere.
    #[default]
    Fence,
    /// Leave the group blocked on this node and alert: an operator decides.
    Block,
}

/// `[[groups.resources]]`: one resource.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Resource {
    /// Resource name, unique in the cluster.
    pub name: String,
    /// Time allowed for start.
    #[serde(default = "defaults::action_timeout")]
    pub start_timeout: Duration,
    /// Time allowed for stop.
    #[serde(default = "defaults::action_timeout")]
    pub stop_timeout: Duration,
    /// What a failed stop leads to.
    #[serde(default)]
    pub on_stop_failure: StopFailure,
    /// Probe the resource this often while its group runs on the node
    /// (Pacemaker's recurring `monitor` operation); off when unset. A probe
    /// that finds the resource stopped or failed (a floating address the
    /// kernel dropped, a unit that died) counts as a failed check of a
    /// monitor on this resource: `monitor_recovery` restarts it and the
    /// resources after it, then fails the group over. A probe that cannot
    /// tell (unknown, or no answer within `monitor_timeout`) is logged and
    /// not counted. The first probe comes one interval after the group
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_interval: Option<Duration>,
    /// Time one probe of `monitor_interval` may take; a probe that does not
    /// answer in time is unknown (logged, not a failure).
    #[serde(default = "defaults::monitor_timeout")]
    pub monitor_timeout: Duration,
    /// What failed probes of `monitor_interval` lead to: the recovery
    /// ladder of a monitor (restarts here, then failovers, then the final
    /// action), counted with the group's monitors.
    #[serde(default)]
    pub monitor_recovery: Recovery,
    /// What the resource is.
    #[serde(flatten)]
    pub kind: ResourceKind,
}

/// Keys every resource has besides `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceCommon {
    pub(crate) name: String,
    #[serde(default = "defaults::action_timeout")]
    pub(crate) start_timeout: Duration,
    #[serde(default = "defaults::action_timeout")]
    pub(crate) stop_timeout: Duration,
    #[serde(default)]
    pub(crate) on_stop_failure: StopFailure,
    #[serde(default)]
    pub(crate) monitor_interval: Option<Duration>,
    #[serde(default = "defaults::monitor_timeout")]
    pub(crate) monitor_timeout: Duration,
    #[serde(default)]
    pub(crate) monitor_recovery: Recovery,
}

/// The kinds of resource. Host clusters hold `vm`; guest clusters the others.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResourceKind {
    /// A libvirt virtual machine (host clusters).
    Vm(VmResource),
    /// Start and stop programs.
    Exec(ExecResource),
    /// An OCF resource agent.
    Ocf(OcfResource),
    /// A systemd unit, over D-Bus.
    Systemd(SystemdResource),
    /// A floating IPv4 or IPv6 address.
    FloatingIp(FloatingIpResource),
    /// A filesystem on a shared device.
    Mount(MountResource),
}

impl ResourceKind {
    /// The `kind` value as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Vm(_) => "vm",
            Self::Exec(_) => "exec",
            Self::Ocf(_) => "ocf",
            Self::Systemd(_) => "systemd",
            Self::FloatingIp(_) => "floating_ip",
            Self::Mount(_) => "mount",
        }
    }
}

/// `kind = "vm"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmResource {
    /// Domain XML on shared storage; the VM is started from it as a
    /// transient domain so libvirt's autostart can never start a twin.
    pub domain_xml: PathBuf,
    /// Memory the VM needs, in MiB, if not read from the XML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// vCPUs the VM needs, if not read from the XML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// During host maintenance, live-migrate instead of shutting down.
    #[serde(default)]
    pub live_migrate: bool,
}

/// `kind = "exec"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecResource {
    /// Start command as an argument vector.
    pub start: Vec<String>,
    /// Stop command as an argument vector.
    pub stop: Vec<String>,
    /// Status command: exit 0 running, 7 stopped (as OCF), anything else
    /// failed; without it the cluster's own record of what it started is
    /// the probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
}

/// `kind = "ocf"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OcfResource {
    /// Agent as `provider:type`, e.g. `heartbeat:IPaddr2`.
    pub agent: String,
    /// OCF root directory.
    #[serde(default = "defaults::ocf_root")]
    pub ocf_root: PathBuf,
    /// Instance parameters, passed as `OCF_RESKEY_<name>`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// `kind = "systemd"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemdResource {
    /// Unit name, e.g. `nginx.service`.
    pub unit: String,
}

/// `kind = "floating_ip"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpResource {
    /// Address with prefix length, e.g. `192.0.2.100/24` or `2001:db8::100/64`.
    #[schemars(with = "Cidr")]
    pub address: IpNet,
    /// Interface the address is added to.
    pub interface: String,
    /// Gratuitous ARP / unsolicited NA announcements sent after adding it
    /// (`0`: none).
    #[serde(default = "defaults::announcements")]
    pub announcements: u32,
}

/// `kind = "mount"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MountResource {
    /// Block device (`/dev/disk/by-id/...`).
    pub device: PathBuf,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount options.
    #[serde(default)]
    pub options: Vec<String>,
    /// Run `fsck -a` before mounting.
    #[serde(default)]
    pub fsck: bool,
    /// On a busy unmount, stop the processes holding it, then force it.
    #[serde(default = "defaults::yes")]
    pub force_unmount: bool,
}

/// What happens when restarts and failovers are used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinalAction {
    /// Stop the group and leave it stopped.
    #[default]
    StopGroup,
    /// Stop the cluster daemon on this node (its groups fail over).
    StopDaemon,
    /// Fence this node.
    FenceSelf,
    /// Do nothing more (alert only).
    None,
}

/// The recovery ladder of a monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    /// Restarts of the resource on the same node before failing over.
    #[serde(default = "defaults::restarts")]
    pub restart: u32,
    /// Failovers of the group before the final action.
    #[serde(default = "defaults::failovers")]
    pub failover: u32,
    /// The final action.
    #[serde(default)]
    pub final_action: FinalAction,
    /// Failure counts older than this are forgotten.
    #[serde(default = "defaults::failure_window")]
    pub window: Duration,
}

impl Default for Recovery {
    fn default() -> Self {
        Self {
            restart: defaults::restarts(),
            failover: defaults::failovers(),
            final_action: FinalAction::default(),
            window: defaults::failure_window(),
        }
    }
}

/// `[[groups.monitors]]`: a periodic check.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Monitor {
    /// Monitor name, unique in its group.
    pub name: String,
    /// Time between checks.
    #[serde(default = "defaults::monitor_interval")]
    pub interval: Duration,
    /// Time one check may take; longer is a failure.
    #[serde(default = "defaults::monitor_timeout")]
    pub timeout: Duration,
    /// Wait this long after the group starts before the first check.
    #[serde(default)]
    pub start_delay: Duration,
    /// Check only while the group runs on this node. With `false`, also
    /// check on every node of the group's `nodes` where the group is not
    /// running (a standby; same interval, timeout and start delay): a
    /// failure there makes that node ineligible for the group (placement
    /// does not choose it, and `clusterctl status` says "monitor `NAME`
    /// fails on NODE") until a check there passes again; it never stops or
    /// moves the group where it runs. A standby that has not completed a
    /// check yet (just started, or its check still running) is eligible.
    /// Where the group runs, the monitor feeds the recovery ladder as
    /// always. Not for `ocf` and `vm` monitors: they check the group's own
    /// resource, which is stopped on a standby.
    #[serde(default = "defaults::yes")]
    pub while_active: bool,
    /// The resource restarted on failure; the group's last resource if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// What failures lead to.
    #[serde(default)]
    pub recovery: Recovery,
    /// What is checked.
    #[serde(flatten)]
    pub kind: MonitorKind,
}

/// Keys every monitor has besides `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MonitorCommon {
    pub(crate) name: String,
    #[serde(default = "defaults::monitor_interval")]
    pub(crate) interval: Duration,
    #[serde(default = "defaults::monitor_timeout")]
    pub(crate) timeout: Duration,
    #[serde(default)]
    pub(crate) start_delay: Duration,
    #[serde(default = "defaults::yes")]
    pub(crate) while_active: bool,
    #[serde(default)]
    pub(crate) resource: Option<String>,
    #[serde(default)]
    pub(crate) recovery: Recovery,
}

/// The kinds of monitor.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MonitorKind {
    /// Ping targets; fails when none answers.
    Ip(IpMonitor),
    /// Link state of a NIC (netlink), a bounce between two checks included,
    /// and the group's floating addresses on it.
    Nic(NicMonitor),
    /// A process by pid file or name.
    Process(ProcessMonitor),
    /// A TCP connect.
    Tcp(TcpMonitor),
    /// An HTTP or HTTPS request.
    Http(HttpMonitor),
    /// PostgreSQL answers a query.
    Pgsql(PgsqlMonitor),
    /// A block of a device can be read.
    Disk(DiskMonitor),
    /// The OCF agent's `monitor` action of the group's `ocf` resource.
    Ocf(OcfMonitor),
    /// A command's exit code (0 is healthy).
    Custom(CustomMonitor),
    /// A VM's state in libvirt (host clusters).
    Vm(VmMonitor),
}

impl MonitorKind {
    /// The `kind` value as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ip(_) => "ip",
            Self::Nic(_) => "nic",
            Self::Process(_) => "process",
            Self::Tcp(_) => "tcp",
            Self::Http(_) => "http",
            Self::Pgsql(_) => "pgsql",
            Self::Disk(_) => "disk",
            Self::Ocf(_) => "ocf",
            Self::Custom(_) => "custom",
            Self::Vm(_) => "vm",
        }
    }
}

/// `kind = "ip"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpMonitor {
    /// Addresses to ping.
    pub targets: Vec<IpAddr>,
}

/// `kind = "nic"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicMonitor {
    /// Interface name.
    pub interface: String,
}

/// `kind = "process"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessMonitor {
    /// File holding the pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// Process name (`comm`), if no pid file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
}

/// `kind = "tcp"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpMonitor {
    /// `HOST:PORT` to connect to.
    pub address: String,
}

/// `kind = "http"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMonitor {
    /// URL to request, `http://` or `https://`.
    pub url: String,
    /// Status code that means healthy.
    #[serde(default = "defaults::http_status")]
    pub expect_status: u16,
    /// Text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Accept a self-signed certificate.
    #[serde(default)]
    pub insecure: bool,
}

/// `kind = "pgsql"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgsqlMonitor {
    /// libpq connection string, e.g. `host=127.0.0.1 user=postgres dbname=postgres`.
    pub connection: String,
    /// File holding the password, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Query that must succeed.
    #[serde(default = "defaults::pg_query")]
    pub query: String,
}

/// `kind = "disk"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskMonitor {
    /// Device or file read.
    pub device: PathBuf,
    /// Bytes read from the start of it with `O_DIRECT`.
    #[serde(default = "defaults::disk_block")]
    pub block_size: u32,
}

/// `kind = "ocf"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct OcfMonitor {
    /// OCF check depth (`OCF_CHECK_LEVEL`).
    #[serde(default)]
    pub depth: u32,
}

/// `kind = "custom"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomMonitor {
    /// Command as an argument vector.
    pub command: Vec<String>,
}

/// `kind = "vm"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmMonitor {
    /// Also treat a VM paused by an I/O error as failed.
    #[serde(default = "defaults::yes")]
    pub paused_is_failure: bool,
}

/// Classes of event an alert can be limited to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventClass {
    /// Nodes joining and leaving, links going silent or coming back.
    Membership,
    /// Quorum lost or regained.
    Quorum,
    /// Fencing started, succeeded or failed.
    Fencing,
    /// A group failed over or moved.
    Failover,
    /// A monitor failed or recovered.
    Monitor,
    /// Maintenance entered or left.
    Maintenance,
    /// A group was found active on two nodes.
    DoubleActivity,
}

/// `[[alerts]]`: a notification target.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Alert {
    /// Alert name.
    pub name: String,
    /// Event classes sent; all if empty.
    #[serde(default)]
    pub events: Vec<EventClass>,
    /// Where it goes.
    #[serde(flatten)]
    pub kind: AlertKind,
}

/// Keys every alert has besides `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertCommon {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) events: Vec<EventClass>,
}

/// The kinds of alert.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlertKind {
    /// An SNMP v2c trap.
    SnmpTrap(SnmpTrapAlert),
    /// An HTTP POST of the event as JSON.
    Webhook(WebhookAlert),
    /// A command run with the event as JSON on stdin.
    Command(CommandAlert),
}

/// `kind = "snmp_trap"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnmpTrapAlert {
    /// Trap receiver as `HOST:PORT` (IPv6 in brackets).
    pub target: std::net::SocketAddr,
    /// Community string.
    #[serde(default = "defaults::community")]
    pub community: String,
}

/// `kind = "webhook"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookAlert {
    /// URL the event is posted to.
    pub url: String,
    /// Time allowed per request.
    #[serde(default = "defaults::alert_timeout")]
    pub timeout: Duration,
    /// File holding a bearer token sent with each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `kind = "command"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandAlert {
    /// Command as an argument vector.
    pub command: Vec<String>,
    /// Time allowed per run.
    #[serde(default = "defaults::alert_timeout")]
    pub timeout: Duration,
}

/// `[linkage]`: the host<->guest channel, as seen from this cluster's side.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Linkage {
    /// In a host cluster: where guests connect and who they are.
    Host(LinkageHost),
    /// In a guest cluster: how to reach the local host's daemon.
    Guest(LinkageGuest),
}

/// `[linkage]` in a host cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkageHost {
    /// Endpoints the host daemons listen on (a node's `linkage_listen`
    /// takes precedence).
    #[serde(default)]
    pub listen: Vec<Endpoint>,
    /// The guests allowed to connect.
    #[serde(default)]
    pub guests: Vec<LinkedGuest>,
}

/// `[[linkage.guests]]`: one guest allowed on the linkage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkedGuest {
    /// The guest's node name in its guest cluster.
    pub name: String,
    /// The libvirt domain it runs in.
    pub domain: String,
    /// The guest cluster it belongs to: it may ask to fence only peers of
    /// the same guest cluster.
    pub cluster: String,
    /// File holding this guest's linkage key.
    pub key_file: PathBuf,
}

/// `[linkage]` in a guest cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkageGuest {
    /// Where the host daemon listens, e.g. `tcp:192.0.2.11:5410`.
    pub connect: Endpoint,
    /// File holding this guest's linkage key.
    pub key_file: PathBuf,
}

/// `[api]`: the control API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Unix socket for `clusterctl` on this node (root only).
    #[serde(default = "defaults::api_socket")]
    pub socket: PathBuf,
    /// Management addresses (`IP:PORT`) served over HTTP(S) with a bearer token.
    #[serde(default)]
    pub listen: Vec<std::net::SocketAddr>,
    /// File holding the bearer token; required when `listen` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// TLS for the management addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            socket: defaults::api_socket(),
            listen: Vec::new(),
            token_file: None,
            tls: None,
        }
    }
}

/// `[api.tls]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Schema of an `address/prefix` string (IPv4 or IPv6).
struct Cidr;

impl JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An IPv4 or IPv6 address with its prefix length.",
            "pattern": "^[0-9A-Fa-f:.]+/[0-9]{1,3}$",
            "examples": ["192.0.2.11/24", "2001:db8::11/64"]
        })
    }
}

/// Default values, one function per default so serde and the docs share them.
pub(crate) mod defaults {
    use super::*;

    pub(crate) fn yes() -> bool {
        true
    }
    pub(crate) fn state_dir() -> PathBuf {
        "/var/lib/kvmha".into()
    }
    pub(crate) fn hb_interval() -> Duration {
        Duration::from_millis(200)
    }
    pub(crate) fn hb_timeout() -> Duration {
        Duration::from_millis(800)
    }
    pub(crate) fn hb_initdead() -> Duration {
        Duration::from_secs(30)
    }
    pub(crate) fn hb_port() -> u16 {
        5405
    }
    pub(crate) fn hb_links() -> Vec<HeartbeatLink> {
        vec![HeartbeatLink {
            name: "lan".into(),
            port: None,
        }]
    }
    pub(crate) fn ping_timeout() -> Duration {
        Duration::from_millis(500)
    }
    pub(crate) fn witness_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub(crate) fn witness_lease() -> Duration {
        Duration::from_secs(5)
    }
    pub(crate) fn watchdog_kind() -> WatchdogKind {
        WatchdogKind::Device
    }
    pub(crate) fn watchdog_device() -> PathBuf {
        "/dev/watchdog".into()
    }
    pub(crate) fn watchdog_lease() -> Duration {
        Duration::from_secs(10)
    }
    pub(crate) fn watchdog_margin() -> Duration {
        Duration::from_secs(2)
    }
    pub(crate) fn fence_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(crate) fn action_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub(crate) fn ocf_root() -> PathBuf {
        "/usr/lib/ocf".into()
    }
    pub(crate) fn announcements() -> u32 {
        3
    }
    pub(crate) fn restarts() -> u32 {
        1
    }
    pub(crate) fn failovers() -> u32 {
        1
    }
    pub(crate) fn failure_window() -> Duration {
        Duration::from_secs(3600)
    }
    pub(crate) fn monitor_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub(crate) fn monitor_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(crate) fn http_status() -> u16 {
        200
    }
    pub(crate) fn pg_query() -> String {
        "SELECT now()".into()
    }
    pub(crate) fn disk_block() -> u32 {
        4096
    }
    pub(crate) fn community() -> String {
        "public".into()
    }
    pub(crate) fn alert_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(crate) fn api_socket() -> PathBuf {
        "/run/kvmha/api.sock".into()
    }
}
