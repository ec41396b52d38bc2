//! Membership: authenticated UDP heartbeats on every link to every peer,
//! and the verdict of who is alive.
//!
//! [`wire`] is the datagram, [`tracker`] the pure state machine; this file
//! runs them on a dedicated OS thread with its own single-threaded tokio
//! runtime, so the heartbeat path is never starved by the daemon's other
//! work (a slow libvirt call, a busy API). The thread sends a round every
//! interval (and at once when this node's view changes) and reads its
//! non-blocking sockets on a short timer ([`poll_every`]) rather than on
//! every datagram's arrival. The rest of the daemon reads a
//! [`Snapshot`] and receives [`Change`]s.

pub mod tracker;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use tracker::{Arrival, Drop, Tracker};
pub use tracker::{Change, DropCounts, Liveness};
use wire::{ClusterKey, Heartbeat, MAX_DATAGRAM, View};

/// One heartbeat link as this node uses it.
#[derive(Clone, Debug)]
pub struct LinkPlan {
    /// Link name.
    pub name: String,
    /// UDP port.
    pub port: u16,
    /// This node's addresses on the link.
    pub local: Vec<IpAddr>,
    /// Every node's addresses on the link, by node index.
    pub nodes: Vec<Vec<IpAddr>>,
}

/// Everything membership needs to know, taken from the configuration.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Node names, in configuration order.
    pub names: Vec<String>,
    /// This node's index.
    pub me: usize,
    /// The links.
    pub links: Vec<LinkPlan>,
    /// Time between heartbeats.
    pub interval: Duration,
    /// Silence after which a link or peer is down.
    pub timeout: Duration,
    /// How long a peer never heard is waited for after the start.
    pub initdead: Duration,
}

impl Plan {
    /// The plan of node `me` in `config`; `None` if `me` is not a node.
    pub fn from_config(config: &conf::Config, me: &str) -> Option<Self> {
        let index = config.nodes.iter().position(|n| n.name == me)?;
        let links = config
            .heartbeat
            .links
            .iter()
            .map(|l| {
                let addrs = |n: &conf::Node| -> Vec<IpAddr> {
                    n.links
                        .get(&l.name)
                        .map(|a| a.iter().map(|net| net.addr()).collect())
                        .unwrap_or_default()
                };
                LinkPlan {
                    name: l.name.clone(),
                    port: l.port.unwrap_or(config.heartbeat.port),
                    local: addrs(&config.nodes[index]),
                    nodes: config.nodes.iter().map(addrs).collect(),
                }
            })
            .collect();
        Some(Self {
            names: config.nodes.iter().map(|n| n.name.clone()).collect(),
            me: index,
            links,
            interval: config.heartbeat.interval.get(),
            timeout: config.heartbeat.timeout.get(),
            initdead: config
                .heartbeat
                .initdead
                .get()
                .max(config.heartbeat.timeout.get()),
        })
    }
}

/// One peer as the rest of the daemon sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerSnapshot {
    /// Node name.
    pub name: String,
    /// Liveness (`Unknown` for this node itself).
    pub liveness: Liveness,
    /// Per link name: carrying heartbeats or not.
    pub links: Vec<(String, bool)>,
    /// Milliseconds since any link carried a heartbeat, as of the
    /// snapshot (published on changes only: [`Membership::heard`] is fresh).
    pub last_heard_ms: Option<u64>,
    /// The peer's incarnation.
    pub incarnation: Option<u64>,
    /// Datagrams dropped that claimed to come from it.
    pub drops: DropCounts,
    /// Its newest view.
    #[serde(skip)]
    pub view: Option<View>,
}

/// Membership at one instant.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// Every node, in configuration order; this node's entry included.
    pub peers: Vec<PeerSnapshot>,
    /// Dropped datagrams that named no valid peer.
    pub anonymous_drops: DropCounts,
}

/// When each node was last heard, updated on every accepted heartbeat
/// without waking anyone (the snapshot is published only on changes).
#[derive(Debug)]
pub struct LastHeard {
    base: Instant,
    /// Per node: milliseconds after `base` plus one; zero = never.
    at: Vec<AtomicU64>,
}

impl LastHeard {
    fn new(nodes: usize, base: Instant) -> Self {
        Self {
            base,
            at: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn set(&self, node: usize, now: Instant) {
        if let Some(slot) = self.at.get(node) {
            let ms =
                u64::try_from(now.duration_since(self.base).as_millis()).unwrap_or(u64::MAX - 1);
            slot.store(ms + 1, Ordering::Relaxed);
        }
    }

    /// Milliseconds since `node` was last heard, if ever.
    pub fn elapsed_ms(&self, node: usize) -> Option<u64> {
        let at = self.at.get(node)?.load(Ordering::Relaxed).checked_sub(1)?;
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(now.saturating_sub(at))
    }
}

/// A running membership service.
#[derive(Debug)]
pub struct Membership {
    /// Last-heard times, fresher than the snapshot's.
    pub heard: Arc<LastHeard>,
    /// The newest snapshot.
    pub snapshot: watch::Receiver<Snapshot>,
    /// Changes, in order.
    pub changes: mpsc::UnboundedReceiver<(Instant, Change)>,
    /// What this node says about itself in its heartbeats.
    pub view: watch::Sender<View>,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A heartbeat socket could not be bound.
    #[error("cannot bind the heartbeat socket {addr} (link `{link}`)")]
    Bind {
        /// Link name.
        link: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The membership thread could not start.
    #[error("cannot start the membership thread")]
    Thread(#[source] std::io::Error),
}

struct Socket {
    link: usize,
    /// The index of `local` among the link's local addresses.
    path: usize,
    local: IpAddr,
    socket: std::net::UdpSocket,
}

/// Bind the heartbeat sockets and start the membership thread.
pub fn start(
    plan: Plan,
    key: ClusterKey,
    incarnation: u64,
    view: View,
) -> Result<Membership, StartError> {
    let mut sockets = Vec::new();
    for (l, link) in plan.links.iter().enumerate() {
        for (path, &local) in link.local.iter().enumerate() {
            let addr = SocketAddr::new(local, link.port);
            let bind_err = |source| StartError::Bind {
                link: link.name.clone(),
                addr,
                source,
            };
            let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
            socket.set_nonblocking(true).map_err(bind_err)?;
            sockets.push(Socket {
                link: l,
                path,
                local,
                socket,
            });
        }
    }
    let now = Instant::now();
    let initial = Tracker::new(
        plan.me,
        plan.names.len(),
        plan.links.len(),
        plan.timeout,
        plan.initdead,
        now,
    );
    let (snap_tx, snapshot) = watch::channel(self::snapshot(&plan, &initial, now));
    let (change_tx, changes) = mpsc::unbounded_channel();
    let (view_tx, view_rx) = watch::channel(view);
    let heard = Arc::new(LastHeard::new(plan.names.len(), now));
    let thread_heard = heard.clone();
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            // Timers only: the sockets are read on the poll timer.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "membership runtime failed to start");
                    return;
                }
            };
            rt.block_on(run(
                plan,
                initial,
                key,
                incarnation,
                sockets,
                &thread_heard,
                view_rx,
                snap_tx,
                change_tx,
            ));
        })
        .map_err(StartError::Thread)?;
    Ok(Membership {
        heard,
        snapshot,
        changes,
        view: view_tx,
    })
}

/// Longest time between two reads of the heartbeat sockets (see
/// [`poll_every`]).
const MAX_POLL: Duration = Duration::from_millis(20);

/// How often the sockets are read and liveness is judged: a tenth of the
/// heartbeat interval, at most [`MAX_POLL`], at most `timeout / 16`.
///
/// The sockets are not registered with an event loop: the thread wakes on
/// this timer only, reads every datagram waiting, then judges liveness.
/// A heartbeat is seen at most that much later (detection keeps its
/// granularity: it was judged every `timeout / 16` before), and a 32-node
/// cluster's thread wakes 50 times a second instead of once per datagram
/// (about 150 a second at the default interval).
fn poll_every(interval: Duration, timeout: Duration) -> Duration {
    (interval / 10)
        .min(timeout / 16)
        .clamp(Duration::from_millis(1), MAX_POLL)
}

/// Every datagram waiting on `socket`, bounded so that a flood cannot keep
/// the thread reading.
fn drain(socket: &std::net::UdpSocket, buf: &mut [u8], out: &mut Vec<(Vec<u8>, SocketAddr)>) {
    for _ in 0..1024 {
        match socket.recv_from(buf) {
            Ok((n, from)) if n < buf.len() => out.push((buf[..n].to_vec(), from)),
            Ok(_) => {} // oversized: cannot be ours
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat receive error");
                return;
            }
        }
    }
}

/// Least time between two heartbeat rounds sent early for view changes.
const EARLY_SEND_GAP: Duration = Duration::from_millis(10);

/// Rate limit for logging dropped datagrams: once per peer and reason.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

#[allow(clippy::too_many_arguments)]
async fn run(
    plan: Plan,
    mut tracker: Tracker,
    key: ClusterKey,
    incarnation: u64,
    sockets: Vec<Socket>,
    heard: &LastHeard,
    mut view: watch::Receiver<View>,
    snap_tx: watch::Sender<Snapshot>,
    change_tx: mpsc::UnboundedSender<(Instant, Change)>,
) {
    let poll = poll_every(plan.interval, plan.timeout);
    let mut send_timer = tokio::time::interval(plan.interval);
    send_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut poll_timer = tokio::time::interval(poll);
    poll_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut batch: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut seq: u64 = 0;
    let mut logged: HashMap<(Option<usize>, &'static str), Instant> = HashMap::new();

    // Observable changes (liveness, links, drops, views) are published at
    // once; a heartbeat that changes nothing else only updates `heard`, so
    // that the rest of the daemon is not woken for every datagram.
    // The view bytes last accepted from each peer: an identical view is not
    // parsed again.
    let mut view_bytes: Vec<Vec<u8>> = vec![Vec::new(); plan.names.len()];
    // A change of this node's view (a new placement, a group started) goes
    // out at once rather than at the next beat, at most every
    // EARLY_SEND_GAP; one that comes sooner waits out the gap.
    let mut last_sent = Instant::now();
    let mut send_early = false;
    let mut view_open = true;
    loop {
        let mut changed = false;
        let mut send_now = false;
        tokio::select! {
            _ = send_timer.tick() => send_now = true,
            () = tokio::time::sleep_until((last_sent + EARLY_SEND_GAP).into()), if send_early => {}
            r = view.changed(), if view_open => {
                // A closed sender (a daemon that publishes no view) leaves
                // the last view in place.
                view_open = r.is_ok();
                send_early = view_open;
            }
            _ = poll_timer.tick() => {
                for socket in &sockets {
                    batch.clear();
                    drain(&socket.socket, &mut buf, &mut batch);
                    let now = Instant::now();
                    for (bytes, from) in &batch {
                        let outcome = match wire::open(&key, bytes) {
                            Ok(opened) => {
                                let sender = usize::from(opened.header.sender);
                                let at = Arrival {
                                    link: socket.link,
                                    path: socket.path,
                                };
                                receive(&mut tracker, &mut view_bytes, now, at, opened)
                                    .map(|cs| (sender, cs))
                                    .map_err(|d| (Some(sender), d))
                            }
                            Err(e) => Err((None, tracker.on_undecodable(e))),
                        };
                        match outcome {
                            Ok((sender, cs)) => {
                                heard.set(sender, now);
                                for c in cs {
                                    changed = true;
                                    let _ = change_tx.send((now, c));
                                }
                            }
                            Err((peer, d)) => {
                                changed = true;
                                log_drop(&mut logged, &plan, peer, d, *from, now);
                            }
                        }
                    }
                }
                let now = Instant::now();
                for c in tracker.tick(now) {
                    changed = true;
                    let _ = change_tx.send((now, c));
                }
            }
        }
        let now = Instant::now();
        if send_early && now.duration_since(last_sent) >= EARLY_SEND_GAP {
            send_now = true;
        }
        if send_now {
            send_early = false;
            last_sent = now;
            seq += 1;
            let mut v = view.borrow_and_update().clone();
            v.sees = tracker
                .alive()
                .filter_map(|p| u16::try_from(p).ok())
                .collect();
            send_round(&plan, &key, incarnation, seq, &v, &sockets);
        }
        if tracker.take_views_changed() {
            changed = true;
        }
        if changed {
            let _ = snap_tx.send(snapshot(&plan, &tracker, now));
        }
    }
}

/// Hand an authenticated datagram to the tracker, parsing its view only
/// if its bytes differ from the view last accepted from that sender.
fn receive(
    tracker: &mut Tracker,
    view_bytes: &mut [Vec<u8>],
    now: Instant,
    at: Arrival,
    opened: wire::Opened<'_>,
) -> Result<Vec<Change>, Drop> {
    let sender = usize::from(opened.header.sender);
    let known = view_bytes.get(sender);
    if tracker.has_view(sender) && known.is_some_and(|b| b.as_slice() == opened.view) {
        return tracker.on_heartbeat_same_view(now, at, opened.header);
    }
    let view = match opened.parse_view() {
        Ok(v) => v,
        Err(e) => return Err(tracker.on_undecodable(e)),
    };
    let changes = tracker.on_heartbeat(
        now,
        at,
        wire::Heartbeat {
            link: opened.header.link,
            sender: opened.header.sender,
            incarnation: opened.header.incarnation,
            seq: opened.header.seq,
            view,
        },
    )?;
    if let Some(slot) = view_bytes.get_mut(sender) {
        slot.clear();
        slot.extend_from_slice(opened.view);
    }
    Ok(changes)
}

fn send_round(
    plan: &Plan,
    key: &ClusterKey,
    incarnation: u64,
    seq: u64,
    view: &View,
    sockets: &[Socket],
) {
    let Ok(me) = u16::try_from(plan.me) else {
        return;
    };
    for (l, link) in plan.links.iter().enumerate() {
        let hb = Heartbeat {
            link: u8::try_from(l).unwrap_or(u8::MAX),
            sender: me,
            incarnation,
            seq,
            view: view.clone(),
        };
        let Some(bytes) = wire::encode(key, &hb) else {
            tracing::error!("heartbeat view too large to send");
            return;
        };
        for (p, addrs) in link.nodes.iter().enumerate() {
            if p == plan.me {
                continue;
            }
            for addr in addrs {
                // Send from this node's address of the same family on the link.
                let Some(socket) = sockets
                    .iter()
                    .find(|s| s.link == l && s.local.is_ipv4() == addr.is_ipv4())
                else {
                    continue;
                };
                // Non-blocking: a full send buffer or a link that is down
                // loses this beat, which is what the peer's timeout is for.
                if let Err(e) = socket
                    .socket
                    .send_to(&bytes, SocketAddr::new(*addr, link.port))
                {
                    tracing::trace!(error = %e, link = %link.name, %addr, "heartbeat send failed");
                }
            }
        }
    }
}

fn log_drop(
    logged: &mut HashMap<(Option<usize>, &'static str), Instant>,
    plan: &Plan,
    peer: Option<usize>,
    drop: Drop,
    from: SocketAddr,
    now: Instant,
) {
    let reason = match drop {
        Drop::Forged => "forged",
        Drop::Replayed => "replayed",
        Drop::Stale => "stale",
        Drop::Malformed => "malformed",
        Drop::UnknownSender => "unknown sender",
        Drop::WrongLink => "wrong link",
    };
    let key = (peer, reason);
    if logged
        .get(&key)
        .is_some_and(|t| now.duration_since(*t) < DROP_LOG_EVERY)
    {
        return;
    }
    logged.insert(key, now);
    let name = peer
        .and_then(|p| plan.names.get(p))
        .map_or("?", String::as_str);
    tracing::warn!(%from, claimed = name, reason, "heartbeat dropped (logged at most every 10 s per peer and reason)");
}

fn snapshot(plan: &Plan, tracker: &Tracker, now: Instant) -> Snapshot {
    Snapshot {
        peers: tracker
            .peers()
            .iter()
            .enumerate()
            .map(|(i, p)| PeerSnapshot {
                name: plan.names[i].clone(),
                liveness: p.liveness,
                links: plan
                    .links
                    .iter()
                    .zip(&p.links_up)
                    .map(|(l, up)| (l.name.clone(), *up))
                    .collect(),
                last_heard_ms: p
                    .last_heard
                    .map(|t| u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX)),
                incarnation: p.incarnation,
                drops: p.drops,
                view: p.view.clone(),
            })
            .collect(),
        anonymous_drops: tracker.anonymous_drops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn sockets_are_read_often_enough_for_detection_and_seldom_enough_to_be_cheap() {
        // Default 200 ms / 800 ms: every 20 ms (50 wake-ups a second).
        assert_eq!(poll_every(200 * MS, 800 * MS), 20 * MS);
        // Aggressive 50 ms / 200 ms: a tenth of the interval.
        assert_eq!(poll_every(50 * MS, 200 * MS), 5 * MS);
        // A slow interval still reads at least every 20 ms.
        assert_eq!(poll_every(2000 * MS, 8000 * MS), 20 * MS);
        // A short timeout is judged at least 16 times within it.
        assert_eq!(poll_every(100 * MS, 160 * MS), 10 * MS);
        assert_eq!(poll_every(5 * MS, 8 * MS), MS);
    }

    #[test]
    fn last_heard_is_fresh_without_a_snapshot() {
        let base = Instant::now() - Duration::from_secs(5);
        let heard = LastHeard::new(3, base);
        assert_eq!(heard.elapsed_ms(1), None);
        heard.set(1, base + Duration::from_secs(4));
        let ms = heard.elapsed_ms(1).unwrap_or(u64::MAX);
        assert!((1000..2000).contains(&ms), "{ms}");
        assert_eq!(heard.elapsed_ms(7), None);
    }

    /// Heartbeats that change nothing but last-heard times do not publish a
    /// snapshot (which would wake the guard and the engine every time).
    #[test]
    fn a_steady_peer_publishes_no_snapshot() {
        let port = std::net::UdpSocket::bind("127.0.0.2:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let addrs = [IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2])];
        let plan = |me: usize| Plan {
            names: vec!["a".into(), "b".into()],
            me,
            links: vec![LinkPlan {
                name: "lan".into(),
                port,
                local: vec![addrs[me]],
                nodes: vec![vec![addrs[0]], vec![addrs[1]]],
            }],
            interval: 20 * MS,
            timeout: 200 * MS,
            initdead: 200 * MS,
        };
        let key = ClusterKey::new("t", b"0123456789abcdef");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let mut a =
                start(plan(0), key.clone(), 1, View::default()).unwrap_or_else(|e| panic!("{e}"));
            let _b = start(plan(1), key, 1, View::default()).unwrap_or_else(|e| panic!("{e}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while a.snapshot.borrow_and_update().peers[1].liveness != Liveness::Alive {
                assert!(Instant::now() < deadline, "b never seen alive");
                let _ = tokio::time::timeout(100 * MS, a.snapshot.changed()).await;
            }
            // b's first view arrives with or right after its first beat.
            tokio::time::sleep(100 * MS).await;
            let _ = a.snapshot.borrow_and_update();
            // Ten more beats: heard, but nothing new to publish.
            tokio::time::sleep(200 * MS).await;
            assert!(
                !a.snapshot.has_changed().unwrap_or(true),
                "a snapshot was published though nothing changed"
            );
            assert!(a.heard.elapsed_ms(1).is_some_and(|ms| ms < 100));
        });
    }
}
