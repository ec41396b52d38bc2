//! `kind = "floating_ip"` resources: an IPv4 or IPv6 address that moves
//! with its group, added over netlink and announced with raw frames.
//!
//! # Start
//!
//! 1. The interface must exist (a hard failure otherwise: no retry on this
//!    node helps) and be up with a carrier (a soft failure otherwise).
//! 2. A duplicate check, so that an old owner that is still active is never
//!    doubled:
//!    - IPv4: ARP probes as RFC 5227 describes them (sender address
//!      0.0.0.0): [`PROBES`] probes [`PROBE_INTERVAL`] apart, then
//!      [`PROBE_LISTEN`] more of listening (at most half the action's
//!      timeout in all). Any ARP packet from another MAC that claims the
//!      address (an answer to a probe, an announcement) or probes for it
//!      is a conflict. RFC 5227's own timing (1-2 s between probes, 2 s of
//!      waiting) would add seconds to every failover; a live owner on the
//!      same segment answers in well under a millisecond.
//!    - IPv6: the address is added without `nodad` and the kernel's
//!      duplicate address detection decides: the address loses
//!      `tentative` (free) or becomes `dadfailed` (in use; the address is
//!      removed again). The frames seen meanwhile name the MAC that
//!      answered. Detection takes the interface's
//!      `net.ipv6.conf.IF.router_solicitation_delay` (a random delay up to
//!      1 s by default) plus `dad_transmits` times
//!      `net.ipv6.neigh.IF.retrans_time_ms` (1 s by default); it is bounded by the action's timeout (the address
//!      is removed and the start times out). With `accept_dad = 0` or
//!      `dad_transmits = 0` on the interface the kernel does no DAD and
//!      nothing is checked: leave them at their defaults.
//!
//!    A conflict is a hard failure whose message names the MAC that
//!    answered: the group must not start here while the address lives
//!    elsewhere.
//!    An IPv6 address already present and past DAD is kept as it is.
//! 3. The address is added (already present: fine).
//! 4. Announcements, `announcements` of them [`ANNOUNCE_INTERVAL`] apart,
//!    the first before the start returns, the others in the background
//!    (cancelled by a stop): IPv4 gratuitous ARP requests (sender and
//!    target address both the floating address, as `arping -U` and the
//!    kernel send them); IPv6 unsolicited neighbour advertisements (ICMPv6
//!    type 136, override flag, target link-layer address option, from the
//!    floating address to ff02::1, hop limit 255). `announcements = 0`
//!    sends none (the duplicate check still runs).
//!
//! # Stop
//!
//! Background announcements are cancelled, then the address is removed
//! from the interface, whatever its prefix length; absent is fine.
//!
//! # Probe
//!
//! Present on the interface: `Running` (also while IPv6 DAD runs again;
//! `Failed` if DAD failed on it); absent, or the interface absent:
//! `Stopped`; a netlink error or no answer in time: `Unknown`.
//!
//! # While the group runs
//!
//! The kernel drops an address without telling anyone: an IPv6 address
//! goes when its link is set down (`ip link set dev IF down`, unless
//! `net.ipv6.conf.IF.keep_addr_on_down` is set), and `ip addr del` drops
//! either family. The engine runs configured monitors only, so the
//! presence of a group's floating addresses is checked by the group's
//! `nic` monitors: each one also checks every floating address of its
//! group on its interface ([`AddressState`], see `net_monitors`).
//!
//! Netlink goes through `rtnetlink`; frames through `pnet_datalink`
//! (`AF_PACKET`, on a socket opened here with `SOCK_CLOEXEC` so that no
//! command started meanwhile inherits it) and are built and parsed with
//! `pnet_packet`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster_core::resource::{ActionContext, ActionOutcome, BoxFuture, Probe, ResourceDriver};
use futures_util::TryStreamExt;
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType};
use pnet_datalink::{DataLinkReceiver, DataLinkSender, MacAddr, NetworkInterface};
use pnet_packet::Packet;
use pnet_packet::arp::{Arp, ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, Ethernet, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, NdpOptionPacket, NdpOptionTypes, NeighborAdvert,
    NeighborAdvertFlags, NeighborAdvertPacket, NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6, Ipv6Packet, MutableIpv6Packet};
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// ARP probes sent before an IPv4 address is added.
pub const PROBES: u32 = 3;
/// Time between two ARP probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Listening after the last ARP probe.
pub const PROBE_LISTEN: Duration = Duration::from_millis(200);
/// Time between two announcements.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the address is looked at while IPv6 DAD runs.
const DAD_POLL: Duration = Duration::from_millis(20);
/// How long a blocking read on a packet socket waits before it looks at
/// the clock and its stop flag again.
const READ_SLICE: Duration = Duration::from_millis(5);
/// How long a send on a packet socket may wait for room.
const WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// The most time kept back from the action's timeout to remove an address
/// whose DAD did not end in time.
const MAX_CLEANUP: Duration = Duration::from_millis(500);

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No netlink socket.
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] io::Error),
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    /// No packet socket on the interface.
    #[error("cannot open a packet socket on `{interface}`: {source}")]
    PacketSocket {
        /// The interface.
        interface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A frame could not be sent or received.
    #[error("cannot {what} on `{interface}`: {source}")]
    Frame {
        /// `send` or `receive`.
        what: &'static str,
        /// The interface.
        interface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The interface has no Ethernet address to send frames from.
    #[error("interface `{0}` has no Ethernet address")]
    NoMac(String),
    /// A blocking helper thread died.
    #[error("a packet thread failed: {0}")]
    Thread(String),
    /// A frame could not be built (a bug).
    #[error("cannot build {0}")]
    Build(&'static str),
    /// The address went away while it was being added.
    #[error("{addr} disappeared from `{interface}` during duplicate address detection")]
    Vanished {
        /// The address.
        addr: IpAddr,
        /// The interface.
        interface: String,
    },
}

impl NetError {
    /// The errno behind a netlink error, if any.
    fn errno(&self) -> Option<Errno> {
        match self {
            Self::Netlink(rtnetlink::Error::NetlinkError(m)) => {
                Some(Errno::from_raw(m.raw_code().abs()))
            }
            _ => None,
        }
    }

    /// Retrying on this node cannot help (no permission).
    fn is_permanent(&self) -> bool {
        let io = match self {
            Self::Connect(e) | Self::PacketSocket { source: e, .. } => e.raw_os_error(),
            _ => self.errno().map(|e| e as i32),
        };
        matches!(io.map(Errno::from_raw), Some(Errno::EPERM | Errno::EACCES))
    }
}

// ---------------------------------------------------------------------------
// Netlink (shared with the `nic` monitor).

/// A netlink connection in this thread's network namespace; its driving
/// task ends when the handle (and its clones) are dropped.
pub(crate) fn connect() -> Result<Handle, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The state of one link, as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) mac: Option<[u8; 6]>,
    /// `IFF_UP`: administratively up.
    pub(crate) up: bool,
    /// `IFF_RUNNING`.
    pub(crate) running: bool,
    /// `IFF_LOWER_UP`.
    pub(crate) lower_up: bool,
    /// `IFLA_CARRIER`, when reported.
    pub(crate) carrier: Option<bool>,
    /// `IFLA_OPERSTATE`, when reported.
    pub(crate) oper: Option<State>,
}

impl Link {
    pub(crate) fn from_message(m: &LinkMessage) -> Self {
        let flags = m.header.flags;
        let mut link = Self {
            index: m.header.index,
            name: String::new(),
            mac: None,
            up: flags.contains(LinkFlags::Up),
            running: flags.contains(LinkFlags::Running),
            lower_up: flags.contains(LinkFlags::LowerUp),
            carrier: None,
            oper: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(&bytes[..]).ok(),
                LinkAttribute::Carrier(c) => link.carrier = Some(*c != 0),
                LinkAttribute::OperState(s) => link.oper = Some(*s),
                _ => {}
            }
        }
        link
    }

    /// Why the link cannot carry traffic, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        let name = &self.name;
        if !self.up {
            return Some(format!("interface `{name}` is down"));
        }
        if self.carrier == Some(false) || !self.lower_up {
            return Some(format!("interface `{name}` has no carrier"));
        }
        match self.oper {
            // Up, or not reported by the driver (loopback, some virtual
            // links): the flags above decide.
            None | Some(State::Up | State::Unknown) => {}
            Some(other) => {
                return Some(format!(
                    "interface `{name}` is not operational (state {other:?})"
                ));
            }
        }
        if !self.running {
            return Some(format!("interface `{name}` is not running"));
        }
        None
    }
}

/// The link named `name`, or `None` if there is none.
pub(crate) async fn get_link(handle: &Handle, name: &str) -> Result<Option<Link>, NetError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(Link::from_message(&m))),
        Ok(None) => Ok(None),
        Err(e) => {
            let e = NetError::from(e);
            // ENODEV: no such link. EINVAL/ERANGE: a name no link can have.
            if matches!(
                e.errno(),
                Some(Errno::ENODEV | Errno::EINVAL | Errno::ERANGE)
            ) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// Every address entry for `addr` on link `index` (any prefix length).
async fn find_addresses(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
) -> Result<Vec<AddressMessage>, NetError> {
    let found = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(addr)
        .execute()
        .try_collect()
        .await?;
    Ok(found)
}

/// What a link holds of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddressState {
    /// Not on the link (never added, removed, or dropped by the kernel:
    /// IPv6 addresses go when their link is set down, unless
    /// `net.ipv6.conf.IF.keep_addr_on_down` is set).
    Absent,
    /// On the link, usable.
    Usable,
    /// On the link, its IPv6 duplicate address detection still running.
    Tentative,
    /// On the link, but IPv6 duplicate address detection found another
    /// holder: the kernel does not use it.
    DadFailed,
}

/// What link `index` holds of `addr` (any prefix length): the best of its
/// entries.
pub(crate) async fn address_state(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
) -> Result<AddressState, NetError> {
    let mut state = AddressState::Absent;
    for m in find_addresses(handle, index, addr).await? {
        let flags = address_flags(&m);
        let this = if flags.contains(AddressFlags::Dadfailed) {
            AddressState::DadFailed
        } else if flags.contains(AddressFlags::Tentative) {
            AddressState::Tentative
        } else {
            return Ok(AddressState::Usable);
        };
        if state != AddressState::Tentative {
            state = this;
        }
    }
    Ok(state)
}

/// The `IFA_F_*` flags of an address entry (the 32-bit attribute when
/// present, else the header's 8 bits).
fn address_flags(m: &AddressMessage) -> AddressFlags {
    m.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(m.header.flags.bits())))
}

/// Add `net` to link `index`; already there is fine.
async fn add_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<(), NetError> {
    match handle
        .address()
        .add(index, addr, prefix_len)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = NetError::from(e);
            if e.errno() == Some(Errno::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Remove every entry for `addr` from link `index`; absent is fine.
async fn remove_address(handle: &Handle, index: u32, addr: IpAddr) -> Result<usize, NetError> {
    let mut removed = 0;
    for m in find_addresses(handle, index, addr).await? {
        match handle.address().del(m).execute().await {
            Ok(()) => removed += 1,
            Err(e) => {
                let e = NetError::from(e);
                if !matches!(e.errno(), Some(Errno::EADDRNOTAVAIL | Errno::ENOENT)) {
                    return Err(e);
                }
            }
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------
// Frames.

fn mac_string(mac: [u8; 6]) -> String {
    MacAddr::from(mac).to_string()
}

/// A packet socket bound to one link.
struct Frames {
    interface: String,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
}

impl Frames {
    /// Open one on `link` (in this thread's network namespace).
    fn open(link: &Link, mac: [u8; 6]) -> Result<Self, NetError> {
        let failed = |source: io::Error| NetError::PacketSocket {
            interface: link.name.clone(),
            source,
        };
        let fd = nix::sys::socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .map_err(|e| failed(e.into()))?;
        let interface = NetworkInterface {
            name: link.name.clone(),
            description: String::new(),
            index: link.index,
            mac: Some(MacAddr::from(mac)),
            ips: Vec::new(),
            flags: 0,
        };
        let config = pnet_datalink::Config {
            read_timeout: Some(READ_SLICE),
            write_timeout: Some(WRITE_TIMEOUT),
            promiscuous: false,
            // pnet binds it to the link and closes it when dropped.
            socket_fd: Some(fd.into_raw_fd()),
            ..pnet_datalink::Config::default()
        };
        match pnet_datalink::channel(&interface, config).map_err(failed)? {
            pnet_datalink::Channel::Ethernet(tx, rx) => Ok(Self {
                interface: link.name.clone(),
                tx,
                rx,
            }),
            _ => Err(failed(io::Error::other("not an Ethernet channel"))),
        }
    }

    /// Close it in the background: closing a packet socket waits for an
    /// RCU grace period (10-30 ms here), which no action needs to wait for.
    fn close_later(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(self))),
            Err(_) => drop(self),
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        let result = match self.tx.send_to(frame, None) {
            Some(r) => r,
            None => Err(io::Error::other("frame too large")),
        };
        result.map_err(|source| NetError::Frame {
            what: "send",
            interface: self.interface.clone(),
            source,
        })
    }

    /// The next frame, `None` after [`READ_SLICE`] without one.
    fn next(&mut self) -> Result<Option<&[u8]>, NetError> {
        match self.rx.next() {
            Ok(frame) => Ok(Some(frame)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(NetError::Frame {
                what: "receive",
                interface: self.interface.clone(),
                source,
            }),
        }
    }
}

fn ethernet(
    destination: MacAddr,
    source: [u8; 6],
    ethertype: pnet_packet::ethernet::EtherType,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let header = Ethernet {
        destination,
        source: MacAddr::from(source),
        ethertype,
        payload: Vec::new(),
    };
    let mut buf = vec![0u8; MutableEthernetPacket::minimum_packet_size() + payload.len()];
    let mut eth = MutableEthernetPacket::new(&mut buf)?;
    eth.populate(&header);
    eth.set_payload(payload);
    Some(buf)
}

/// An ARP request from `mac` for `target`, claiming `sender` (0.0.0.0 for a
/// probe, the address itself for an announcement).
fn arp_request(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Option<Vec<u8>> {
    let arp = Arp {
        hardware_type: ArpHardwareTypes::Ethernet,
        protocol_type: EtherTypes::Ipv4,
        hw_addr_len: 6,
        proto_addr_len: 4,
        operation: ArpOperations::Request,
        sender_hw_addr: MacAddr::from(mac),
        sender_proto_addr: sender,
        target_hw_addr: MacAddr::zero(),
        target_proto_addr: target,
        payload: Vec::new(),
    };
    let mut buf = vec![0u8; MutableArpPacket::minimum_packet_size()];
    MutableArpPacket::new(&mut buf)?.populate(&arp);
    ethernet(MacAddr::broadcast(), mac, EtherTypes::Arp, &buf)
}

/// All nodes on the link (ff02::1) and its Ethernet group address.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: MacAddr = MacAddr(0x33, 0x33, 0, 0, 0, 1);

/// The length of a target link-layer address option for Ethernet.
const TLLA_OPTION_LEN: usize = 8;

/// An unsolicited neighbour advertisement of `addr` at `mac`.
fn neighbour_advert(mac: [u8; 6], addr: Ipv6Addr) -> Option<Vec<u8>> {
    let na = NeighborAdvert {
        icmpv6_type: Icmpv6Types::NeighborAdvert,
        icmpv6_code: Icmpv6Code(0),
        checksum: 0,
        flags: NeighborAdvertFlags::Override,
        reserved: 0,
        target_addr: addr,
        // pnet's option writer panics: the option is written below.
        options: Vec::new(),
        payload: Vec::new(),
    };
    let header = NeighborAdvertPacket::packet_size(&na);
    let mut icmp = vec![0u8; header + TLLA_OPTION_LEN];
    MutableNeighborAdvertPacket::new(&mut icmp)?.populate(&na);
    // Target link-layer address: type 2, length 1 (8 bytes), the MAC.
    let option = icmp.get_mut(header..)?;
    option[0] = NdpOptionTypes::TargetLLAddr.0;
    option[1] = 1;
    option[2..].copy_from_slice(&mac);
    let checksum = pnet_packet::icmpv6::checksum(&Icmpv6Packet::new(&icmp)?, &addr, &ALL_NODES);
    MutableNeighborAdvertPacket::new(&mut icmp)?.set_checksum(checksum);
    let ip = Ipv6 {
        version: 6,
        traffic_class: 0,
        flow_label: 0,
        payload_length: u16::try_from(icmp.len()).ok()?,
        next_header: IpNextHeaderProtocols::Icmpv6,
        hop_limit: 255,
        source: addr,
        destination: ALL_NODES,
        payload: Vec::new(),
    };
    let mut buf = vec![0u8; MutableIpv6Packet::minimum_packet_size() + icmp.len()];
    {
        let mut p = MutableIpv6Packet::new(&mut buf)?;
        p.populate(&ip);
        p.set_payload(&icmp);
    }
    ethernet(ALL_NODES_MAC, mac, EtherTypes::Ipv6, &buf)
}

/// Who else claims `addr` in an ARP frame, if anyone: a sender of the
/// address (an answer, an announcement) or a probe for it.
fn arp_conflict(frame: &[u8], own: [u8; 6], addr: Ipv4Addr) -> Option<[u8; 6]> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp || eth.get_source().octets() == own {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
    {
        return None;
    }
    let sender = arp.get_sender_hw_addr().octets();
    if sender == own {
        return None;
    }
    let claims = arp.get_sender_proto_addr() == addr;
    let probes = arp.get_operation() == ArpOperations::Request
        && arp.get_sender_proto_addr().is_unspecified()
        && arp.get_target_proto_addr() == addr;
    (claims || probes).then_some(sender)
}

/// Who else claims `addr` in a neighbour discovery frame, if anyone: an
/// advertisement of it (the answer to our DAD) or another node's DAD
/// solicitation for it.
fn nd_conflict(frame: &[u8], own: [u8; 6], addr: Ipv6Addr) -> Option<[u8; 6]> {
    let eth = EthernetPacket::new(frame)?;
    let source = eth.get_source().octets();
    if eth.get_ethertype() != EtherTypes::Ipv6 || source == own {
        return None;
    }
    let ip = Ipv6Packet::new(eth.payload())?;
    if ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
        return None;
    }
    let icmp = Icmpv6Packet::new(ip.payload())?;
    let icmp_type = icmp.get_icmpv6_type();
    if icmp_type == Icmpv6Types::NeighborAdvert {
        let na = NeighborAdvertPacket::new(ip.payload())?;
        if na.get_target_addr() != addr {
            return None;
        }
        // The target link-layer address names the holder (a proxy may
        // send for it); the frame's source otherwise.
        let advertised = na.get_options_iter().find_map(|o: NdpOptionPacket<'_>| {
            (o.get_option_type() == NdpOptionTypes::TargetLLAddr)
                .then(|| <[u8; 6]>::try_from(o.payload().get(..6)?).ok())
                .flatten()
        });
        return Some(advertised.unwrap_or(source));
    }
    if icmp_type == Icmpv6Types::NeighborSolicit && ip.get_source().is_unspecified() {
        let ns = NeighborSolicitPacket::new(ip.payload())?;
        if ns.get_target_addr() == addr {
            return Some(source);
        }
    }
    None
}

/// Send ARP probes for `addr` and listen for anyone claiming it, until
/// `until` (blocking; run it off the async threads).
fn arp_probe(
    link: &Link,
    mac: [u8; 6],
    addr: Ipv4Addr,
    plan: ProbePlan,
) -> Result<Option<[u8; 6]>, NetError> {
    let probe =
        arp_request(mac, Ipv4Addr::UNSPECIFIED, addr).ok_or(NetError::Build("an ARP probe"))?;
    let mut frames = Frames::open(link, mac)?;
    let started = std::time::Instant::now();
    let mut sent = 0;
    let found = loop {
        let elapsed = started.elapsed();
        if sent < plan.probes && elapsed >= plan.interval * sent {
            if let Err(e) = frames.send(&probe) {
                break Err(e);
            }
            sent += 1;
        }
        if sent == plan.probes && elapsed >= plan.interval * (plan.probes - 1) + plan.listen {
            break Ok(None);
        }
        match frames.next() {
            Ok(Some(frame)) => {
                if let Some(other) = arp_conflict(frame, mac, addr) {
                    break Ok(Some(other));
                }
            }
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    frames.close_later();
    found
}

/// Watch for anyone claiming `addr` with neighbour discovery until `stop`
/// is set (then drain what is queued) or `until` (blocking).
fn nd_watch(
    mut frames: Frames,
    mac: [u8; 6],
    addr: Ipv6Addr,
    stop: &AtomicBool,
    until: std::time::Instant,
) -> Result<Option<[u8; 6]>, NetError> {
    let found = loop {
        let stopping = stop.load(Ordering::Acquire) || std::time::Instant::now() >= until;
        match frames.next() {
            Ok(Some(frame)) => {
                if let Some(other) = nd_conflict(frame, mac, addr) {
                    break Ok(Some(other));
                }
            }
            // Nothing queued any more.
            Ok(None) if stopping => break Ok(None),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    frames.close_later();
    found
}

/// The timing of the IPv4 probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProbePlan {
    probes: u32,
    interval: Duration,
    listen: Duration,
}

impl ProbePlan {
    /// The standard plan, shrunk to at most half of `timeout`.
    fn within(timeout: Duration) -> Self {
        let plan = Self {
            probes: PROBES,
            interval: PROBE_INTERVAL,
            listen: PROBE_LISTEN,
        };
        let total = plan.interval * (plan.probes - 1) + plan.listen;
        let budget = timeout / 2;
        if total <= budget {
            return plan;
        }
        let scale = budget.as_secs_f64() / total.as_secs_f64();
        Self {
            probes: plan.probes,
            interval: plan.interval.mul_f64(scale),
            listen: plan.listen.mul_f64(scale),
        }
    }
}

/// The announcement of `addr` at `mac`.
fn announcement(mac: [u8; 6], addr: IpAddr) -> Result<Vec<u8>, NetError> {
    match addr {
        IpAddr::V4(v4) => arp_request(mac, v4, v4),
        IpAddr::V6(v6) => neighbour_advert(mac, v6),
    }
    .ok_or(NetError::Build("an announcement"))
}

/// Run blocking packet work off the async threads (the helper thread is
/// spawned from this one, so it shares its network namespace).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Thread(e.to_string()))?
}

// ---------------------------------------------------------------------------
// The driver.

/// Driver of one `kind = "floating_ip"` resource.
#[derive(Debug)]
pub struct FloatingIpDriver {
    config: conf::FloatingIpResource,
    /// The announcements still to be sent after a start.
    announcer: Mutex<Option<JoinHandle<()>>>,
}

/// How a start failed before it could succeed.
enum StartError {
    Failed { message: String, hard: bool },
    TimedOut,
}

impl From<NetError> for StartError {
    fn from(e: NetError) -> Self {
        Self::Failed {
            hard: e.is_permanent(),
            message: e.to_string(),
        }
    }
}

impl FloatingIpDriver {
    /// A driver for `config` (as this node runs it, overrides applied).
    pub fn new(config: conf::FloatingIpResource) -> Self {
        Self {
            config,
            announcer: Mutex::new(None),
        }
    }

    fn addr(&self) -> IpAddr {
        self.config.address.addr()
    }

    fn prefix_len(&self) -> u8 {
        self.config.address.prefix_len()
    }

    /// Cancel the background announcements, and wait until they stopped.
    async fn cancel_announcements(&self) {
        let pending = self
            .announcer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = pending {
            task.abort();
            // Cancelled (or finished): either way nothing is sent any more.
            let _ = task.await;
        }
    }

    /// The interface, checked for a start.
    async fn usable_link(&self, handle: &Handle) -> Result<(Link, [u8; 6]), StartError> {
        let interface = &self.config.interface;
        let Some(link) = get_link(handle, interface).await? else {
            return Err(StartError::Failed {
                message: format!("interface `{interface}` does not exist on this node"),
                hard: true,
            });
        };
        if let Some(problem) = link.problem() {
            return Err(StartError::Failed {
                message: problem,
                hard: false,
            });
        }
        let Some(mac) = link.mac else {
            return Err(StartError::Failed {
                message: NetError::NoMac(interface.clone()).to_string(),
                hard: true,
            });
        };
        Ok((link, mac))
    }

    fn in_use(&self, other: [u8; 6], how: &str) -> StartError {
        StartError::Failed {
            message: format!(
                "{} is already in use on the network by {} ({how}): not adding it on `{}`",
                self.addr(),
                mac_string(other),
                self.config.interface,
            ),
            hard: true,
        }
    }

    async fn start_v4(
        &self,
        handle: &Handle,
        link: &Link,
        mac: [u8; 6],
        addr: Ipv4Addr,
        timeout: Duration,
    ) -> Result<(), StartError> {
        let plan = ProbePlan::within(timeout);
        let probe_link = link.clone();
        let started = Instant::now();
        let conflict = blocking(move || arp_probe(&probe_link, mac, addr, plan)).await?;
        tracing::debug!(address = %addr, elapsed = ?started.elapsed(), "ARP probes done");
        if let Some(other) = conflict {
            return Err(self.in_use(other, "it answered an ARP probe"));
        }
        add_address(handle, link.index, addr.into(), self.prefix_len()).await?;
        Ok(())
    }

    async fn start_v6(
        &self,
        handle: &Handle,
        link: &Link,
        mac: [u8; 6],
        addr: Ipv6Addr,
        deadline: Instant,
    ) -> Result<(), StartError> {
        let existing = find_addresses(handle, link.index, IpAddr::V6(addr)).await?;
        if existing
            .iter()
            .any(|m| address_flags(m).contains(AddressFlags::Dadfailed))
        {
            // A leftover of an earlier attempt: run DAD again.
            remove_address(handle, link.index, IpAddr::V6(addr)).await?;
        } else if existing
            .iter()
            .any(|m| !address_flags(m).contains(AddressFlags::Tentative))
        {
            // Ours already, and DAD passed when it was added.
            return Ok(());
        }
        // Watch the link before the address (and its DAD) appears.
        let frames = Frames::open(link, mac)?;
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let watch_stop = stop.0.clone();
        let until = deadline.into_std();
        let watcher =
            tokio::task::spawn_blocking(move || nd_watch(frames, mac, addr, &watch_stop, until));
        let outcome = self
            .add_and_wait_for_dad(handle, link, addr, deadline)
            .await;
        drop(stop);
        let seen = match watcher.await {
            Ok(Ok(seen)) => seen,
            Ok(Err(e)) => {
                tracing::warn!(address = %addr, "cannot watch neighbour discovery: {e}");
                None
            }
            Err(e) => {
                tracing::warn!(address = %addr, "neighbour discovery watcher failed: {e}");
                None
            }
        };
        match outcome {
            Ok(Dad::Passed) => Ok(()),
            Ok(Dad::Failed) => {
                let removed = remove_address(handle, link.index, IpAddr::V6(addr)).await;
                if let Err(e) = removed {
                    tracing::warn!(address = %addr, "cannot remove the duplicate address: {e}");
                }
                Err(match seen {
                    Some(other) => self.in_use(other, "duplicate address detection failed"),
                    None => StartError::Failed {
                        message: format!(
                            "{addr} is already in use on the network (duplicate address \
                             detection failed, the answering MAC was not seen): not adding it \
                             on `{}`",
                            self.config.interface
                        ),
                        hard: true,
                    },
                })
            }
            Ok(Dad::Unfinished) => {
                let removed = remove_address(handle, link.index, IpAddr::V6(addr)).await;
                if let Err(e) = removed {
                    tracing::warn!(address = %addr, "cannot remove the tentative address: {e}");
                }
                Err(StartError::TimedOut)
            }
            Err(e) => {
                let _ = remove_address(handle, link.index, IpAddr::V6(addr)).await;
                Err(e.into())
            }
        }
    }

    /// Add the IPv6 address and wait until DAD ends, or `deadline` less
    /// the time kept back to remove it.
    async fn add_and_wait_for_dad(
        &self,
        handle: &Handle,
        link: &Link,
        addr: Ipv6Addr,
        deadline: Instant,
    ) -> Result<Dad, NetError> {
        let started = Instant::now();
        let cleanup = MAX_CLEANUP.min(deadline.saturating_duration_since(started) / 5);
        let give_up = deadline - cleanup;
        add_address(handle, link.index, addr.into(), self.prefix_len()).await?;
        loop {
            let entries = find_addresses(handle, link.index, IpAddr::V6(addr)).await?;
            let flags = entries.iter().map(address_flags);
            let mut present = false;
            let mut tentative = false;
            for f in flags {
                present = true;
                if f.contains(AddressFlags::Dadfailed) {
                    tracing::debug!(address = %addr, elapsed = ?started.elapsed(), "DAD failed");
                    return Ok(Dad::Failed);
                }
                tentative |= f.contains(AddressFlags::Tentative);
            }
            if !present {
                return Err(NetError::Vanished {
                    addr: addr.into(),
                    interface: link.name.clone(),
                });
            }
            if !tentative {
                tracing::debug!(address = %addr, elapsed = ?started.elapsed(), "DAD passed");
                return Ok(Dad::Passed);
            }
            if Instant::now() + DAD_POLL > give_up {
                return Ok(Dad::Unfinished);
            }
            tokio::time::sleep(DAD_POLL).await;
        }
    }

    async fn start_inner(&self, ctx: &ActionContext, deadline: Instant) -> Result<(), StartError> {
        self.cancel_announcements().await;
        let handle = connect()?;
        let (link, mac) = self.usable_link(&handle).await?;
        match self.addr() {
            IpAddr::V4(v4) => self.start_v4(&handle, &link, mac, v4, ctx.timeout).await?,
            IpAddr::V6(v6) => self.start_v6(&handle, &link, mac, v6, deadline).await?,
        }
        let addr = self.addr();
        if self.config.announcements == 0 {
            tracing::debug!(
                group = %ctx.group,
                resource = %ctx.resource,
                address = %addr,
                "announcements = 0: the address is not announced",
            );
            return Ok(());
        }
        // The first announcement now, so that a start that cannot send one
        // fails; the others in the background, on the same socket.
        let frame = Arc::new(announcement(mac, addr)?);
        let first = frame.clone();
        let mut frames = blocking(move || {
            let mut frames = Frames::open(&link, mac)?;
            frames.send(&first)?;
            Ok(frames)
        })
        .await?;
        let more = self.config.announcements.saturating_sub(1);
        if more == 0 {
            frames.close_later();
            return Ok(());
        }
        let labels = (ctx.group.clone(), ctx.resource.clone());
        let task = tokio::spawn(async move {
            for n in 2..=more + 1 {
                tokio::time::sleep(ANNOUNCE_INTERVAL).await;
                let frame = frame.clone();
                let sent = blocking(move || {
                    frames.send(&frame)?;
                    Ok(frames)
                })
                .await;
                match sent {
                    Ok(f) => frames = f,
                    Err(e) => {
                        tracing::warn!(
                            group = %labels.0,
                            resource = %labels.1,
                            "announcement {n} of {addr} failed: {e}",
                        );
                        return;
                    }
                }
            }
            frames.close_later();
        });
        *self
            .announcer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }

    async fn stop_inner(&self) -> Result<usize, NetError> {
        self.cancel_announcements().await;
        let handle = connect()?;
        let Some(link) = get_link(&handle, &self.config.interface).await? else {
            return Ok(0);
        };
        remove_address(&handle, link.index, self.addr()).await
    }

    async fn probe_inner(&self) -> Result<Probe, NetError> {
        let handle = connect()?;
        let Some(link) = get_link(&handle, &self.config.interface).await? else {
            return Ok(Probe::Stopped);
        };
        Ok(
            match address_state(&handle, link.index, self.addr()).await? {
                AddressState::Absent => Probe::Stopped,
                AddressState::DadFailed => Probe::Failed(format!(
                    "{} is on `{}` but duplicate address detection failed",
                    self.addr(),
                    self.config.interface
                )),
                // Tentative: DAD runs again (the link came back up with
                // `keep_addr_on_down`): present, so not stopped.
                AddressState::Usable | AddressState::Tentative => Probe::Running,
            },
        )
    }
}

/// Sets its flag when dropped: stops a helper thread also when the future
/// that started it is cancelled.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// How IPv6 duplicate address detection ended.
enum Dad {
    Passed,
    Failed,
    Unfinished,
}

impl ResourceDriver for FloatingIpDriver {
    fn start<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            let addr = self.config.address;
            let interface = &self.config.interface;
            tracing::info!(
                group = %ctx.group,
                resource = %ctx.resource,
                reason = %ctx.reason,
                %addr,
                interface,
                "adding the floating address",
            );
            let deadline = Instant::now() + ctx.timeout;
            let outcome =
                match tokio::time::timeout(ctx.timeout, self.start_inner(ctx, deadline)).await {
                    Ok(Ok(())) => ActionOutcome::Ok,
                    Ok(Err(StartError::Failed { message, hard })) => {
                        ActionOutcome::Failed { message, hard }
                    }
                    Ok(Err(StartError::TimedOut)) | Err(_) => ActionOutcome::TimedOut,
                };
            match &outcome {
                ActionOutcome::Ok => tracing::info!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    %addr,
                    interface,
                    "floating address added and announced",
                ),
                ActionOutcome::Failed { message, hard } => tracing::warn!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    hard,
                    "cannot add the floating address: {message}",
                ),
                ActionOutcome::TimedOut => tracing::warn!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    "adding {addr} timed out after {:?}",
                    ctx.timeout,
                ),
            }
            outcome
        })
    }

    fn stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            let addr = self.config.address;
            let interface = &self.config.interface;
            match tokio::time::timeout(ctx.timeout, self.stop_inner()).await {
                Ok(Ok(removed)) => {
                    tracing::info!(
                        group = %ctx.group,
                        resource = %ctx.resource,
                        %addr,
                        interface,
                        "floating address removed ({removed} entries)",
                    );
                    ActionOutcome::Ok
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        group = %ctx.group,
                        resource = %ctx.resource,
                        "cannot remove {addr} from `{interface}`: {e}",
                    );
                    ActionOutcome::Failed {
                        message: format!("cannot remove {addr} from `{interface}`: {e}"),
                        hard: false,
                    }
                }
                Err(_) => ActionOutcome::TimedOut,
            }
        })
    }

    fn probe<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            match tokio::time::timeout(ctx.timeout, self.probe_inner()).await {
                Ok(Ok(probe)) => probe,
                Ok(Err(e)) => Probe::Unknown(format!(
                    "cannot read the addresses of `{}`: {e}",
                    self.config.interface
                )),
                Err(_) => Probe::Unknown(format!(
                    "reading the addresses of `{}` timed out after {:?}",
                    self.config.interface, ctx.timeout
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests;
