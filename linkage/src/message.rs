//! What host and guest daemons say to each other.

use serde::{Deserialize, Serialize};

/// One message on the linkage. Direction is noted per variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// host -> guest: a host NIC that this guest's interfaces depend on lost
    /// its link; the guest cluster moves the affected groups elsewhere.
    NicDown {
        /// Host interface name.
        host_interface: String,
        /// The guest interfaces (by MAC address) behind it.
        guest_macs: Vec<String>,
    },
    /// host -> guest: that NIC is back.
    NicUp {
        /// Host interface name.
        host_interface: String,
        /// The guest interfaces (by MAC address) behind it.
        guest_macs: Vec<String>,
    },
    /// host -> guest: the host goes into maintenance; hand every group
    /// over, then answer [`Message::ShutdownReady`].
    PrepareShutdown {
        /// Identifies this request in the answer.
        request_id: u64,
        /// How long the host waits before it shuts the VM down anyway.
        deadline_ms: u64,
    },
    /// guest -> host: groups handed over, the guest may be shut down.
    ShutdownReady {
        /// The request answered.
        request_id: u64,
    },
    /// host -> guest: the host lost its cluster (no quorum).
    HostIsolated,
    /// guest -> host: the guest daemon is alive (the host may reset a VM
    /// whose daemon stays silent).
    Liveness {
        /// Guest daemon incarnation.
        incarnation: u64,
    },
    /// guest -> host: power off a peer guest of the same guest cluster.
    Fence {
        /// Identifies this request in the answer.
        request_id: u64,
        /// The peer's node name in the guest cluster.
        peer: String,
    },
    /// host -> host: fence `peer`'s VM for `requester`, a guest of the
    /// asking host, if it is on this host; answered with
    /// [`Message::FenceResult`], never forwarded again. Only a host of the
    /// same host cluster may send it.
    ForwardFence {
        /// Identifies this request in the answer.
        request_id: u64,
        /// The guest that asked its own host.
        requester: String,
        /// The peer to fence.
        peer: String,
    },
    /// host -> guest (or host): outcome of a [`Message::Fence`] (or
    /// [`Message::ForwardFence`]).
    FenceResult {
        /// The request answered.
        request_id: u64,
        /// Whether the peer is confirmed off.
        off: bool,
        /// Why not, when not.
        error: Option<String>,
        /// Answers to [`Message::ForwardFence`]: the peer's VM is not
        /// active on the answering host (its libvirt said so).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        absent: bool,
        /// Answers to [`Message::ForwardFence`]: the lost hosts the
        /// answering host knows powered off by a fence device (it
        /// coordinates the host cluster).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fenced_hosts: Vec<String>,
    },
    /// guest -> host: which host am I on?
    WhereAmI {
        /// Identifies this request in the answer.
        request_id: u64,
    },
    /// host -> guest: the answer to [`Message::WhereAmI`].
    YouAreOn {
        /// The request answered.
        request_id: u64,
        /// Host node name in the host cluster.
        host: String,
        /// Host cluster name.
        cluster: String,
    },
}
