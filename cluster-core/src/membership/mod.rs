//! Membership: authenticated UDP heartbeats on every link to every peer,
//! and the verdict of who is alive.
//!
//! [`wire`] is the datagram, [`tracker`] the pure state machine; this file
//! runs them on a dedicated OS thread with its own single-threaded tokio
//! runtime, so the heartbeat path is never starved by the daemon's other
//! work (a slow libvirt call, a busy API). The rest of the daemon reads a
//! [`Snapshot`] and receives [`Change`]s.

pub mod tracker;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

pub use tracker::{Change, DropCounts, Liveness};
use tracker::{Drop, Tracker};
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
    /// Milliseconds since any link carried a heartbeat.
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

/// A running membership service.
#[derive(Debug)]
pub struct Membership {
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
        for &local in &link.local {
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
        now,
    );
    let (snap_tx, snapshot) = watch::channel(self::snapshot(&plan, &initial, now));
    let (change_tx, changes) = mpsc::unbounded_channel();
    let (view_tx, view_rx) = watch::channel(view);
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
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
                view_rx,
                snap_tx,
                change_tx,
            ));
        })
        .map_err(StartError::Thread)?;
    Ok(Membership {
        snapshot,
        changes,
        view: view_tx,
    })
}

/// Longest delay before a heartbeat that changed nothing but last-heard
/// times shows in the snapshot.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
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
    mut view: watch::Receiver<View>,
    snap_tx: watch::Sender<Snapshot>,
    change_tx: mpsc::UnboundedSender<(Instant, Change)>,
) {
    let (rx_tx, mut rx) = mpsc::channel::<(usize, Vec<u8>, SocketAddr)>(1024);
    let mut senders: Vec<(usize, IpAddr, Arc<UdpSocket>)> = Vec::new();
    for s in sockets {
        let Ok(socket) = UdpSocket::from_std(s.socket) else {
            tracing::error!(link = %plan.links[s.link].name, "cannot register a heartbeat socket");
            continue;
        };
        let socket = Arc::new(socket);
        senders.push((s.link, s.local, socket.clone()));
        let tx = rx_tx.clone();
        let link = s.link;
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM + 1];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, from)) if n <= MAX_DATAGRAM => {
                        if tx.send((link, buf[..n].to_vec(), from)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {} // oversized: cannot be ours
                    Err(e) => {
                        tracing::debug!(error = %e, "heartbeat receive error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    drop(rx_tx);

    let tick_every = (plan.timeout / 16).clamp(Duration::from_millis(5), plan.interval);
    let mut send_timer = tokio::time::interval(plan.interval);
    send_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick_timer = tokio::time::interval(tick_every);
    tick_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq: u64 = 0;
    let mut logged: HashMap<(Option<usize>, &'static str), Instant> = HashMap::new();

    // Observable changes (liveness, links, drops) are published at once;
    // a heartbeat that only refreshes last-heard times is published at most
    // every PUBLISH_EVERY, so that large clusters do not rebuild the
    // snapshot for every datagram.
    let mut dirty = false;
    let mut published = Instant::now();
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
            _ = tick_timer.tick() => {
                let now = Instant::now();
                for c in tracker.tick(now) {
                    changed = true;
                    let _ = change_tx.send((now, c));
                }
            }
            got = rx.recv() => {
                let Some((link, bytes, from)) = got else { return };
                let now = Instant::now();
                let outcome = match wire::decode(&key, &bytes) {
                    Ok(hb) => {
                        let sender = usize::from(hb.sender);
                        tracker.on_heartbeat(now, link, hb).map_err(|d| (Some(sender), d))
                    }
                    Err(e) => Err((None, tracker.on_undecodable(e))),
                };
                match outcome {
                    Ok(cs) => {
                        dirty = true;
                        for c in cs {
                            changed = true;
                            let _ = change_tx.send((now, c));
                        }
                    }
                    Err((peer, d)) => {
                        changed = true;
                        log_drop(&mut logged, &plan, peer, d, from, now);
                    }
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
            send_round(&plan, &key, incarnation, seq, v, &senders).await;
        }
        if tracker.take_views_changed() {
            changed = true;
        }
        if changed || (dirty && now.duration_since(published) >= PUBLISH_EVERY) {
            dirty = false;
            published = now;
            let _ = snap_tx.send(snapshot(&plan, &tracker, now));
        }
    }
}

async fn send_round(
    plan: &Plan,
    key: &ClusterKey,
    incarnation: u64,
    seq: u64,
    view: View,
    senders: &[(usize, IpAddr, Arc<UdpSocket>)],
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
                let Some((_, _, socket)) = senders
                    .iter()
                    .find(|(sl, local, _)| *sl == l && local.is_ipv4() == addr.is_ipv4())
                else {
                    continue;
                };
                if let Err(e) = socket
                    .send_to(&bytes, SocketAddr::new(*addr, link.port))
                    .await
                {
                    // A link that is down refuses sends: that is what
                    // the peer's timeout is for.
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
