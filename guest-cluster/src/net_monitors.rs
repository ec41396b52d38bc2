//! Network monitors: `kind = "nic"` (the link state of an interface) and
//! `kind = "ip"` (ICMP echo to ping targets).
//!
//! # `nic`
//!
//! A background task subscribes to the kernel's link notifications
//! (netlink group `RTNLGRP_LINK`), reads the link once, and then keeps its
//! latest state; a check only reads that state, so it answers at once and
//! reflects a change as soon as the kernel reports it. A link set down or
//! deleted is reported at once; a lost (or regained) carrier is reported by
//! the kernel's link-watch work, which runs at most once a second, so that
//! notification can lag up to 1 s: the task therefore also reads the link
//! every [`LINK_REFRESH`], which shows the carrier at once. The task starts
//! at the first check and is restarted (with a fresh read) if its netlink
//! socket fails; notifications lost to a full socket buffer trigger a
//! fresh read too.
//!
//! A check fails when the interface does not exist, is down (`IFF_UP`
//! clear), has no carrier (`IFLA_CARRIER` 0 or `IFF_LOWER_UP` clear), has
//! an operational state other than up or unknown, or is not running
//! (`IFF_RUNNING` clear).
//!
//! It also fails, once, when the link was unusable at some moment since
//! the previous check and is usable again: an admin's `ip link set dev IF
//! down; ... up` shorter than the interval. Such a bounce is not harmless:
//! the kernel drops the link's IPv6 addresses and every route through it
//! (a default route does not come back by itself). The watcher keeps the
//! time it last saw the link unusable; a check fails when that is after
//! the previous check, if that check passed (a failure already reported
//! the outage) and was at most two intervals ago (the monitor also lives
//! while its group runs elsewhere: a bounce from then is not this run's).
//!
//! # Floating addresses
//!
//! Built for a group (`drivers::build`), a `nic` monitor that runs only
//! while its group is active (`while_active`, the default) also checks
//! every `floating_ip` address of its group on its interface (as this node
//! runs it, overrides applied), read over netlink at each check: an
//! address that is gone (deleted, or an IPv6 address dropped with its
//! link) or whose IPv6 duplicate address detection failed fails the check,
//! naming the address and its resource. An address whose DAD runs again
//! passes: it is there. Set the monitor's `resource` to the first
//! `floating_ip` resource if a restart should add the addresses again; the
//! group's last resource is restarted otherwise.
//!
//! # `ip`
//!
//! Each target gets up to [`PING_ATTEMPTS`] ICMP echo requests spread over
//! the check's timeout (IPv4 and IPv6, with `surge-ping`: an unprivileged
//! ICMP socket where `net.ipv4.ping_group_range` allows it, a raw socket
//! otherwise, as root). The check passes as soon as any target answers and
//! fails when none has answered by the timeout. Link-local IPv6 targets
//! need a scope, which the configuration cannot give: use global or
//! unique-local addresses.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cluster_core::resource::{BoxFuture, CheckOutcome, MonitorDriver};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pnet_packet::icmp::IcmpTypes;
use pnet_packet::icmpv6::Icmpv6Types;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use surge_ping::{Client, ICMP, IcmpPacket, PingIdentifier, PingSequence};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::floating_ip::{AddressState, Link, NetError, address_state, connect, get_link};

/// How long the `nic` watcher waits before it opens a new netlink socket
/// after its socket failed.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// How often the `nic` watcher reads the link besides the notifications:
/// the kernel reports carrier changes through its link-watch work, which
/// runs at most once a second, so a notification can come up to 1 s after
/// the change, while a read shows the carrier at once.
pub const LINK_REFRESH: Duration = Duration::from_millis(100);

/// Echo requests sent to each target within one check.
pub const PING_ATTEMPTS: u32 = 3;
/// The payload of the echo requests.
const PING_PAYLOAD: &[u8] = b"kvmha ip monitor";

// ---------------------------------------------------------------------------
// `nic`

/// What the watcher knows about the link.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NicState {
    /// The first read has not answered yet.
    Pending,
    /// The link as last reported; `None`: there is no such link.
    Known(Option<Link>),
    /// Netlink failed; the watcher retries.
    Error(String),
}

/// What the watcher publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    state: NicState,
    /// When the watcher last saw the link unusable (down, without
    /// carrier, absent), and why (as that outage began).
    last_unusable: Option<(Instant, String)>,
}

/// The background task of one `nic` monitor.
#[derive(Debug)]
struct Watcher {
    state: watch::Receiver<Observed>,
    task: JoinHandle<()>,
}

/// A floating address a `nic` monitor checks on its interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedAddress {
    /// The `floating_ip` resource that holds it.
    pub resource: String,
    /// The address.
    pub address: IpAddr,
}

/// Driver of one `kind = "nic"` monitor.
#[derive(Debug)]
pub struct NicMonitor {
    interface: String,
    /// Floating addresses that must be on the interface.
    addresses: Vec<WatchedAddress>,
    /// How far back a bounce may be for a check to report it.
    bounce_window: Duration,
    watcher: Mutex<Option<Watcher>>,
    /// When the previous check started, and whether it passed.
    previous: Mutex<Option<(Instant, bool)>>,
    /// What the host says of this guest's interfaces (the linkage).
    host: Option<crate::host_link::HostNotices>,
}

impl NicMonitor {
    /// A monitor of the link `config.interface` (in the network namespace
    /// of the thread that runs the first check), checked every `interval`,
    /// that also checks `addresses` on that link.
    pub fn new(
        config: &conf::NicMonitor,
        interval: Duration,
        addresses: Vec<WatchedAddress>,
    ) -> Self {
        Self {
            interface: config.interface.clone(),
            addresses,
            bounce_window: interval.saturating_mul(2),
            watcher: Mutex::new(None),
            previous: Mutex::new(None),
            host: None,
        }
    }

    /// The same monitor, also failing while the host reports this
    /// interface's uplink down (by its MAC address).
    #[must_use]
    pub fn with_host_notices(mut self, notices: Option<crate::host_link::HostNotices>) -> Self {
        self.host = notices;
        self
    }

    /// Why the host says the interface `link` cannot carry traffic.
    fn host_says(&self, link: &crate::floating_ip::Link) -> Result<(), String> {
        let (Some(notices), Some(mac)) = (&self.host, link.mac) else {
            return Ok(());
        };
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        match notices.borrow().get(&mac) {
            Some(why) => Err(format!("interface `{}` ({mac}): {why}", self.interface)),
            None => Ok(()),
        }
    }

    /// The watcher's state, starting (or restarting) the watcher if needed.
    fn state(&self) -> watch::Receiver<Observed> {
        let mut watcher = self.watcher.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = watcher.as_ref().filter(|w| !w.task.is_finished()) {
            return w.state.clone();
        }
        let (tx, rx) = watch::channel(Observed {
            state: NicState::Pending,
            last_unusable: None,
        });
        let task = tokio::spawn(watch_link(self.interface.clone(), tx));
        *watcher = Some(Watcher {
            state: rx.clone(),
            task,
        });
        rx
    }

    fn judge(&self, state: &NicState) -> Result<(), String> {
        match state {
            NicState::Known(Some(link)) => link.problem().map_or(Ok(()), Err),
            NicState::Known(None) => Err(format!("interface `{}` does not exist", self.interface)),
            NicState::Error(e) => Err(format!(
                "cannot read the state of `{}`: {e}",
                self.interface
            )),
            NicState::Pending => Err(format!(
                "the state of `{}` is not known yet",
                self.interface
            )),
        }
    }

    /// A bounce since the previous check, which passed: the link is usable
    /// now, but was not at some moment in between.
    fn bounced(
        &self,
        observed: &Observed,
        previous: Option<(Instant, bool)>,
        now: Instant,
    ) -> Result<(), String> {
        let (Some((since, true)), Some((when, why))) = (previous, &observed.last_unusable) else {
            return Ok(());
        };
        let since = now
            .checked_sub(self.bounce_window)
            .map_or(since, |oldest| since.max(oldest));
        if *when > since {
            return Err(format!(
                "interface `{}` was unusable since the last check ({why}, {:?} ago) and is \
                 usable again: its IPv6 addresses and routes may be gone",
                self.interface,
                now.saturating_duration_since(*when),
            ));
        }
        Ok(())
    }

    /// Every watched address is on link `index`, by `deadline`.
    async fn addresses_present(&self, index: u32, deadline: Instant) -> Result<(), String> {
        if self.addresses.is_empty() {
            return Ok(());
        }
        let read = async {
            let handle = connect()?;
            let mut states = Vec::with_capacity(self.addresses.len());
            for w in &self.addresses {
                states.push(address_state(&handle, index, w.address).await?);
            }
            Ok::<_, NetError>(states)
        };
        let states = match timeout_at(deadline, read).await {
            Ok(Ok(states)) => states,
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot read the addresses of `{}`: {e}",
                    self.interface
                ));
            }
            Err(_) => {
                return Err(format!(
                    "reading the addresses of `{}` did not end in time",
                    self.interface
                ));
            }
        };
        let mut problems = Vec::new();
        for (w, state) in self.addresses.iter().zip(states) {
            match state {
                AddressState::Usable | AddressState::Tentative => {}
                AddressState::Absent => problems.push(format!(
                    "floating address {} (resource `{}`) is not on `{}` any more",
                    w.address, w.resource, self.interface
                )),
                AddressState::DadFailed => problems.push(format!(
                    "floating address {} (resource `{}`) failed duplicate address detection \
                     on `{}`: another node holds it",
                    w.address, w.resource, self.interface
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    async fn run(&self, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut state = self.state();
        // Only the first check waits, for the first read.
        let ready = timeout_at(deadline, async {
            state
                .wait_for(|o| !matches!(o.state, NicState::Pending))
                .await
                .map(|o| o.clone())
        })
        .await;
        let observed = match ready {
            Ok(Ok(o)) => o,
            // The watcher ended before its first answer (it is
            // restarted by the next check).
            Ok(Err(_)) => state.borrow().clone(),
            Err(_) => {
                return Err(format!(
                    "the state of `{}` is not known after {timeout:?}",
                    self.interface
                ));
            }
        };
        let previous = *self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        self.judge(&observed.state)?;
        self.bounced(&observed, previous, started)?;
        if let NicState::Known(Some(link)) = &observed.state {
            self.host_says(link)?;
            self.addresses_present(link.index, deadline).await?;
        }
        Ok(())
    }
}

impl Drop for NicMonitor {
    fn drop(&mut self) {
        let watcher = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = watcher.take() {
            w.task.abort();
        }
    }
}

impl MonitorDriver for NicMonitor {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.run(timeout).await;
            *self.previous.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((started, result.is_ok()));
            match result {
                Ok(()) => CheckOutcome::Ok,
                Err(why) => {
                    tracing::debug!(interface = %self.interface, "nic check failed: {why}");
                    CheckOutcome::Failed(why)
                }
            }
        })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keep `tx` up to date with the link `name`, for ever.
async fn watch_link(name: String, tx: watch::Sender<Observed>) {
    // Until nobody reads the state any more.
    while let Some(e) = follow_link(&name, &tx).await {
        tracing::warn!(interface = %name, "link notifications failed: {e}");
        tx.send_modify(|o| o.state = NicState::Error(e.to_string()));
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// Subscribe, read the link once, then apply every notification; returns
/// on failure, or with `None` when nobody reads the state any more.
async fn follow_link(name: &str, tx: &watch::Sender<Observed>) -> Option<NetError> {
    let (connection, handle, mut messages) =
        match rtnetlink::new_multicast_connection(&[MulticastGroup::Link]) {
            Ok(c) => c,
            Err(e) => return Some(NetError::Connect(e)),
        };
    let _connection = AbortOnDrop(tokio::spawn(connection));
    // Subscribed before the first read: no change falls in between.
    let mut known = match get_link(&handle, name).await {
        Ok(link) => link,
        Err(e) => return Some(e),
    };
    publish(name, tx, &known);
    let mut refresh = tokio::time::interval(LINK_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            message = messages.next() => {
                let Some((message, _)) = message else { break };
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                        let link = Link::from_message(&m);
                        if link.name == name {
                            Some(Some(link))
                        } else if known.as_ref().is_some_and(|k| k.index == link.index) {
                            // Our link was renamed away.
                            Some(None)
                        } else {
                            None
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                        let link = Link::from_message(&m);
                        let ours = link.name == name
                            || known.as_ref().is_some_and(|k| k.index == link.index);
                        ours.then_some(None)
                    }
                    NetlinkPayload::Overrun(_) => {
                        // Notifications were lost: read the link again.
                        tracing::debug!(interface = %name, "link notifications overran");
                        match get_link(&handle, name).await {
                            Ok(link) => Some(link),
                            Err(e) => return Some(e),
                        }
                    }
                    _ => None,
                }
            }
            _ = refresh.tick() => match get_link(&handle, name).await {
                Ok(link) => Some(link),
                Err(e) => return Some(e),
            },
        };
        if let Some(link) = changed
            && link != known
        {
            known = link;
            publish(name, tx, &known);
        }
        if tx.is_closed() {
            return None;
        }
    }
    Some(NetError::Connect(std::io::Error::other(
        "the netlink socket closed",
    )))
}

fn publish(name: &str, tx: &watch::Sender<Observed>, link: &Option<Link>) {
    let unusable = match link.as_ref().map(Link::problem) {
        None => {
            tracing::info!(interface = %name, "link absent");
            Some(format!("interface `{name}` does not exist"))
        }
        Some(None) => {
            tracing::info!(interface = %name, "link up");
            None
        }
        Some(Some(problem)) => {
            tracing::info!(interface = %name, "link unusable: {problem}");
            Some(problem)
        }
    };
    tx.send_modify(|o| {
        let was_unusable = match &o.state {
            NicState::Known(Some(l)) => l.problem().is_some(),
            NicState::Known(None) => true,
            NicState::Pending | NicState::Error(_) => false,
        };
        o.state = NicState::Known(link.clone());
        if let Some(why) = unusable {
            // An outage is named by how it began (`down`), not by the
            // states the link passes through as it comes back.
            let why = match o.last_unusable.take() {
                Some((_, first)) if was_unusable => first,
                _ => why,
            };
            o.last_unusable = Some((Instant::now(), why));
        }
    });
}

// ---------------------------------------------------------------------------
// `ip`

/// Driver of one `kind = "ip"` monitor.
#[derive(Debug)]
pub struct IpMonitor {
    targets: Vec<IpAddr>,
}

impl IpMonitor {
    /// A monitor pinging `config.targets`.
    pub fn new(config: &conf::IpMonitor) -> Self {
        Self {
            targets: config.targets.clone(),
        }
    }

    async fn ping_all(&self, timeout: Duration) -> CheckOutcome {
        if self.targets.is_empty() {
            return CheckOutcome::Failed("no ping targets configured".into());
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let mut v4 = None;
        let mut v6 = None;
        let mut errors = Vec::new();
        let ident = PingIdentifier(rand::random());
        let spacing = timeout / PING_ATTEMPTS;
        let mut pings = FuturesUnordered::new();
        for &target in &self.targets {
            let (slot, kind) = match target {
                IpAddr::V4(_) => (&mut v4, ICMP::V4),
                IpAddr::V6(_) => (&mut v6, ICMP::V6),
            };
            let client = match slot {
                Some(c) => Ok::<&Client, String>(c),
                None => match Client::new(&surge_ping::Config::builder().kind(kind).build()) {
                    Ok(c) => Ok(&*slot.insert(c)),
                    Err(e) => Err(format!("cannot open an ICMP socket: {e}")),
                },
            };
            let client = match client {
                Ok(c) => c.clone(),
                Err(e) => {
                    errors.push(format!("{target}: {e}"));
                    continue;
                }
            };
            for attempt in 0..PING_ATTEMPTS {
                let client = client.clone();
                let send_at = started + spacing * attempt;
                pings.push(async move {
                    tokio::time::sleep_until(send_at).await;
                    let mut pinger = client.pinger(target, ident).await;
                    pinger.timeout(deadline.saturating_duration_since(Instant::now()));
                    let seq = PingSequence(u16::try_from(attempt).unwrap_or(u16::MAX));
                    (target, pinger.ping(seq, PING_PAYLOAD).await)
                });
            }
        }
        let mut last_error: Vec<(IpAddr, String)> = Vec::new();
        while let Some((target, result)) = pings.next().await {
            let result = result
                .map_err(|e| e.to_string())
                .and_then(|(packet, rtt)| echo_reply(&packet).map(|()| rtt));
            match result {
                Ok(rtt) => {
                    tracing::debug!(%target, ?rtt, "ping answered");
                    return CheckOutcome::Ok;
                }
                Err(e) => match last_error.iter_mut().find(|(t, _)| *t == target) {
                    Some(entry) => entry.1 = e,
                    None => last_error.push((target, e)),
                },
            }
        }
        errors.extend(last_error.into_iter().map(|(t, e)| format!("{t}: {e}")));
        CheckOutcome::Failed(format!(
            "no ping target answered within {timeout:?} ({})",
            errors.join("; ")
        ))
    }
}

/// An echo reply is an answer; an ICMP error about the request (a router
/// or our own stack saying the target is unreachable) is not.
fn echo_reply(packet: &IcmpPacket) -> Result<(), String> {
    let (kind, code, from) = match packet {
        IcmpPacket::V4(p) if p.get_icmp_type() == IcmpTypes::EchoReply => return Ok(()),
        IcmpPacket::V6(p) if p.get_icmpv6_type() == Icmpv6Types::EchoReply => return Ok(()),
        IcmpPacket::V4(p) => {
            let kind = match p.get_icmp_type() {
                IcmpTypes::DestinationUnreachable => "destination unreachable".to_owned(),
                IcmpTypes::TimeExceeded => "time exceeded".to_owned(),
                other => format!("ICMP type {}", other.0),
            };
            (kind, p.get_icmp_code().0, IpAddr::V4(p.get_source()))
        }
        IcmpPacket::V6(p) => {
            let kind = match p.get_icmpv6_type() {
                Icmpv6Types::DestinationUnreachable => "destination unreachable".to_owned(),
                Icmpv6Types::TimeExceeded => "time exceeded".to_owned(),
                other => format!("ICMPv6 type {}", other.0),
            };
            (kind, p.get_icmpv6_code().0, IpAddr::V6(p.get_source()))
        }
    };
    Err(format!("{kind} (code {code}) from {from}"))
}

impl MonitorDriver for IpMonitor {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            // Every ping ends by the deadline; this is the backstop.
            match tokio::time::timeout(timeout + Duration::from_millis(50), self.ping_all(timeout))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => {
                    CheckOutcome::Failed(format!("no ping target answered within {timeout:?}"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
