//! The guard keeps the safety rules between membership and takeover:
//!
//! 1. **Quorum.** From membership, the witness and the ping tie-break it
//!    decides (through [`crate::quorum`]) whether this partition may act.
//!    On losing quorum it stops the node's groups at once and stops feeding
//!    the watchdog, so the node resets itself once its lease runs out.
//! 2. **Fencing before takeover.** For every lost peer, while quorate, it
//!    fences the peer with the configured devices (retrying forever with
//!    backoff, every failure an event) or, for a peer no device can fence,
//!    waits until the peer's watchdog lease has certainly expired. Only then
//!    does it declare `takeover_allowed` for that peer; the placement engine
//!    moves groups of a lost node only after that. Only the coordinator (the
//!    lowest-ordered live node of the partition) does this, so a lost node
//!    is fenced once.
//!
//! All of its decisions are events (`quorum_gained`, `quorum_lost`,
//! `fence_started`, `fence_failed`, `fence_succeeded`, `lease_wait`,
//! `takeover_allowed`, `takeover_blocked`, ...).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_witness::{VoteRequest, WitnessClient};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::events::EventLog;
use crate::fence::{FenceAttempt, Fencer, FencerError};
use crate::membership::{Liveness, Snapshot};
use crate::quorum::{self, Decision, TieBreak, WitnessVote};
use crate::watchdog::Watchdog;

/// Extra wait before fencing the preferred node of a two-node cluster when
/// its device has no delay of its own: the preferred node, if alive, fences
/// first and wins the race.
pub const TWO_NODE_FENCE_DELAY: Duration = Duration::from_secs(5);

/// What runs on this node and must stop when quorum is lost.
pub trait LocalGroups: Send + Sync + std::fmt::Debug {
    /// Force-stop every group running here, within a bounded time; returns
    /// how many were stopped.
    fn force_stop_all(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + '_>>;
}

/// A node that runs no groups yet.
#[derive(Debug)]
pub struct NoGroups;

impl LocalGroups for NoGroups {
    fn force_stop_all(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + '_>> {
        Box::pin(async { 0 })
    }
}

/// Why a lost peer's groups may move, or why not yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Takeover {
    /// A fence device is being driven.
    Fencing,
    /// Waiting for the peer's watchdog lease to expire.
    LeaseWait {
        /// Milliseconds left.
        remaining_ms: u64,
    },
    /// The peer is certainly down.
    Allowed {
        /// `fence` or `lease`.
        by: &'static str,
    },
    /// Neither a fence device nor a lease can make it safe.
    Blocked,
}

/// The guard's state, for status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GuardState {
    /// The newest quorum decision.
    pub quorum: Option<Decision>,
    /// The witness's vote as this node holds it, if configured.
    pub witness: Option<WitnessVote>,
    /// Lost peers and their takeover state.
    pub takeovers: BTreeMap<String, Takeover>,
}

/// Everything the guard is built from.
#[derive(Debug)]
pub struct GuardParts {
    /// The configuration.
    pub config: Arc<conf::Config>,
    /// This node's index in `config.nodes`.
    pub me: usize,
    /// Membership snapshots.
    pub membership: watch::Receiver<Snapshot>,
    /// The event log.
    pub events: Arc<EventLog>,
    /// Fence devices.
    pub fencer: Arc<Fencer>,
    /// The self-fencing watchdog, armed when the node first gains quorum
    /// (arming starts its countdown).
    pub watchdog: conf::WatchdogSection,
    /// The node's groups.
    pub groups: Arc<dyn LocalGroups>,
    /// The witness client, if a witness is configured.
    pub witness: Option<WitnessClient>,
}

enum Msg {
    Witness {
        sent: Instant,
        view: BTreeSet<String>,
        reply: Result<cluster_witness::VoteReply, String>,
    },
    Ping {
        ok: bool,
    },
    FenceAttempt(FenceAttempt),
    FenceDone {
        peer: usize,
        result: Result<FenceAttempt, FencerError>,
    },
}

struct PeerEntry {
    state: EntryState,
}

enum EntryState {
    Fencing { _cancel: oneshot::Sender<()> },
    LeaseWait { until: Instant },
    Allowed { by: &'static str },
    Blocked,
}

struct WitnessMemo {
    sent: Instant,
    view: BTreeSet<String>,
    granted: bool,
    lease: Duration,
}

/// Start the guard; its state is published on the returned receiver. The
/// returned sender disarms the watchdog (clean shutdown) when sent to.
pub fn spawn(parts: GuardParts) -> (watch::Receiver<GuardState>, oneshot::Sender<()>) {
    let (tx, rx) = watch::channel(GuardState::default());
    let (disarm_tx, disarm_rx) = oneshot::channel();
    tokio::spawn(run(parts, tx, disarm_rx));
    (rx, disarm_tx)
}

#[allow(clippy::too_many_lines)]
async fn run(
    mut p: GuardParts,
    state_tx: watch::Sender<GuardState>,
    mut disarm: oneshot::Receiver<()>,
) {
    let names: Vec<String> = p.config.nodes.iter().map(|n| n.name.clone()).collect();
    let n = names.len();
    let hb = &p.config.heartbeat;
    let timeout = hb.timeout.get();
    let tick = hb
        .interval
        .get()
        .clamp(Duration::from_millis(20), Duration::from_millis(100));
    let lease = (p.config.watchdog.kind != conf::WatchdogKind::None).then(|| {
        (
            p.config.watchdog.lease.get(),
            p.config.watchdog.margin.get(),
        )
    });
    let witness_lease = p.config.quorum.witness.as_ref().map(|w| w.lease.get());
    let ping_targets = p.config.quorum.ping_targets.clone();
    let ping_timeout = p.config.quorum.ping_timeout.get();
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<Msg>();

    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut quorate: Option<bool> = None;
    let mut quorate_since: Option<Instant> = None;
    let mut armed = false;
    let mut watchdog: Option<Box<dyn Watchdog>> = None;
    let mut last_feed = Instant::now();
    let mut witness_memo: Option<WitnessMemo> = None;
    let mut witness_in_flight = false;
    let mut ping: Option<(Instant, bool)> = None;
    let mut ping_in_flight = false;
    let mut entries: BTreeMap<usize, PeerEntry> = BTreeMap::new();
    let mut last_witness_error: Option<Instant> = None;
    // Right after a start, peers are not heard yet: give membership time to
    // form (Heartbeat's "initdead") before deciding that there is no quorum.
    // What still runs here then was not taken over elsewhere: a takeover
    // needs this host fenced or its lease expired, and either takes it down.
    let started = Instant::now();
    let startup_grace = timeout * 2;

    loop {
        tokio::select! {
            _ = &mut disarm => {
                if let Some(w) = watchdog.as_mut() {
                    match w.disarm() {
                        Ok(()) => p.events.emit("watchdog_disarmed", json!({})),
                        Err(e) => p.events.emit("watchdog_error", json!({"error": e.to_string()})),
                    }
                }
                return;
            }
            _ = ticker.tick() => {}
            changed = p.membership.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(msg) = msg_rx.recv() => match msg {
                Msg::Witness { sent, view, reply } => {
                    witness_in_flight = false;
                    match reply {
                        Ok(r) => {
                            witness_memo = Some(WitnessMemo {
                                sent,
                                view,
                                granted: r.granted,
                                lease: Duration::from_millis(r.lease_ms),
                            });
                        }
                        Err(e) => {
                            if last_witness_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                                last_witness_error = Some(Instant::now());
                                p.events.emit("witness_unreachable", json!({"error": e}));
                            }
                        }
                    }
                }
                Msg::Ping { ok } => {
                    ping_in_flight = false;
                    ping = Some((Instant::now(), ok));
                }
                Msg::FenceAttempt(a) => {
                    if let Err(e) = &a.outcome {
                        p.events.emit(
                            "fence_failed",
                            json!({"peer": a.target, "device": a.device, "attempt": a.attempt, "error": e, "elapsed_ms": a.elapsed.as_millis() as u64}),
                        );
                    }
                }
                Msg::FenceDone { peer, result } => {
                    if let Some(entry) = entries.get_mut(&peer) {
                        match result {
                            Ok(a) => {
                                p.events.emit(
                                    "fence_succeeded",
                                    json!({"peer": names[peer], "device": a.device, "attempt": a.attempt}),
                                );
                                p.events.emit("takeover_allowed", json!({"peer": names[peer], "by": "fence"}));
                                entry.state = EntryState::Allowed { by: "fence" };
                            }
                            Err(FencerError::Cancelled { .. }) => {}
                            Err(e @ FencerError::NoDevice { .. }) => {
                                p.events.emit("takeover_blocked", json!({"peer": names[peer], "reason": e.to_string()}));
                                entry.state = EntryState::Blocked;
                            }
                        }
                    }
                }
            },
        }
        let now = Instant::now();
        let snap = p.membership.borrow().clone();
        let alive_peers: BTreeSet<usize> = snap
            .peers
            .iter()
            .enumerate()
            .filter(|(i, peer)| *i != p.me && peer.liveness == Liveness::Alive)
            .map(|(i, _)| i)
            .collect();
        let alive = alive_peers.len() + 1;
        let tie = 2 * alive == n;
        let view: BTreeSet<String> = alive_peers
            .iter()
            .map(|&i| names[i].clone())
            .chain(std::iter::once(names[p.me].clone()))
            .collect();

        // The witness: asked only on a tie, renewed at a third of the lease.
        let witness_vote = p.witness.as_ref().map(|client| {
            if tie && !witness_in_flight {
                let renew = witness_lease.unwrap_or(Duration::from_secs(5)) / 3;
                let stale = witness_memo
                    .as_ref()
                    .is_none_or(|m| m.view != view || now.duration_since(m.sent) >= renew);
                if stale {
                    witness_in_flight = true;
                    let client = client.clone();
                    let req = VoteRequest {
                        cluster: p.config.cluster.name.clone(),
                        node: names[p.me].clone(),
                        view: view.clone(),
                        lease_ms: witness_lease.map_or(5000, |l| l.as_millis() as u64),
                    };
                    let tx = msg_tx.clone();
                    let v = view.clone();
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let reply = client.vote(&req).await.map_err(|e| e.to_string());
                        let _ = tx.send(Msg::Witness {
                            sent,
                            view: v,
                            reply,
                        });
                    });
                }
            }
            match &witness_memo {
                // A grant counts only for the view it was asked with, and
                // its lease runs from when the request was sent.
                Some(m) if m.view == view && now < m.sent + m.lease && m.granted => {
                    WitnessVote::Granted
                }
                Some(m)
                    if m.view == view
                        && !m.granted
                        && now.duration_since(m.sent) < Duration::from_secs(5) =>
                {
                    WitnessVote::Denied
                }
                _ => WitnessVote::Unknown,
            }
        });

        // The two-node ping tie-break.
        let tie_break = (n == 2 && p.witness.is_none() && tie).then(|| {
            if !ping_in_flight && ping.is_none_or(|(t, _)| now.duration_since(t) >= timeout) {
                ping_in_flight = true;
                let tx = msg_tx.clone();
                let targets = ping_targets.clone();
                tokio::spawn(async move {
                    let ok = ping_any(&targets, ping_timeout).await;
                    let _ = tx.send(Msg::Ping { ok });
                });
            }
            let preferred_fenced = p.me != 0
                && entries
                    .get(&0)
                    .is_some_and(|e| matches!(e.state, EntryState::Allowed { by: "fence" }));
            TieBreak {
                reaches_target: ping
                    .is_some_and(|(t, ok)| ok && now.duration_since(t) < timeout * 4),
                preferred: p.me == 0,
                preferred_fenced,
            }
        });

        let decision = quorum::decide(quorum::Input {
            nodes: n,
            alive,
            witness: witness_vote,
            tie_break,
        });

        let forming =
            quorate.is_none() && !decision.quorate && now.duration_since(started) < startup_grace;
        if quorate != Some(decision.quorate) && !forming {
            let was = quorate;
            quorate = Some(decision.quorate);
            let detail =
                json!({"votes": decision.votes, "of": decision.of, "reason": decision.reason});
            if decision.quorate {
                quorate_since = Some(now);
                p.events.emit("quorum_gained", detail);
                if !armed {
                    armed = true;
                    last_feed = now;
                    match crate::watchdog::arm(&p.watchdog) {
                        Ok(w) => {
                            p.events.emit("watchdog_armed", json!({"watchdog": p.watchdog.kind, "lease_ms": p.watchdog.lease.get().as_millis() as u64}));
                            watchdog = Some(w);
                        }
                        Err(e) => {
                            // Peers count on this node's lease: running on
                            // without it could let them start our groups
                            // while we still run them.
                            let msg = format!("{e:#}");
                            p.events.emit("watchdog_arm_failed", json!({"error": msg}));
                            tracing::error!(error = %msg, "cannot arm the watchdog; stopping the daemon");
                            std::process::exit(70);
                        }
                    }
                }
            } else {
                quorate_since = None;
                // Without quorum nothing may run here, also right after a
                // start (a daemon restart leaves VMs running).
                let why = if was.is_some() || armed {
                    p.events.emit("quorum_lost", detail);
                    "quorum lost"
                } else {
                    p.events.emit("quorum_waiting", detail);
                    "no quorum at start"
                };
                let stopped = p.groups.force_stop_all().await;
                p.events
                    .emit("groups_stopped", json!({"count": stopped, "why": why}));
                // Stop fencing: a partition without quorum must never fence
                // the side that holds it (except the two-node contender below).
                entries.retain(|_, e| matches!(e.state, EntryState::Allowed { .. }));
            }
        }

        // Feed the watchdog only while quorate.
        if armed && decision.quorate {
            let every = lease.map_or(Duration::from_secs(1), |(l, _)| l / 4);
            if now.duration_since(last_feed) >= every {
                last_feed = now;
                if let Some(w) = watchdog.as_mut()
                    && let Err(e) = w.feed()
                {
                    p.events
                        .emit("watchdog_error", json!({"error": e.to_string()}));
                }
            }
        }

        // Peers that came back need nothing more.
        entries.retain(|peer, _| {
            let back = alive_peers.contains(peer);
            if back {
                tracing::info!(peer = %names[*peer], "peer is back; takeover handling ends");
            }
            !back
        });

        // Lost peers: fence, or wait out their lease, before takeover.
        let lost: Vec<(usize, Option<u64>)> = snap
            .peers
            .iter()
            .enumerate()
            .filter(|(i, peer)| *i != p.me && peer.liveness == Liveness::Lost)
            .map(|(i, peer)| (i, peer.last_heard_ms))
            .collect();
        // One node of the partition acts for all: the lowest-ordered live
        // one (the coordinator), so a lost node is fenced once, not by
        // every survivor.
        let coordinator = alive_peers
            .iter()
            .copied()
            .chain(std::iter::once(p.me))
            .min()
            == Some(p.me);
        for (peer, last_heard_ms) in lost {
            let contender = decision.may_fence_preferred && peer == 0;
            if !((decision.quorate && coordinator) || contender) || entries.contains_key(&peer) {
                continue;
            }
            let name = names[peer].clone();
            let state = if p.fencer.can_fence(&name) {
                let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
                let fencer = p.fencer.clone();
                let tx = msg_tx.clone();
                let extra = if n == 2 && peer == 0 {
                    let own = p
                        .fencer
                        .devices()
                        .find(|d| d.can_fence(&name))
                        .map(|d| d.delay())
                        .unwrap_or_default();
                    TWO_NODE_FENCE_DELAY.saturating_sub(own)
                } else {
                    Duration::ZERO
                };
                p.events.emit(
                    "fence_started",
                    json!({"peer": name, "delay_ms": extra.as_millis() as u64}),
                );
                let target = name.clone();
                tokio::spawn(async move {
                    let cancel = async move {
                        let _ = cancel_rx.await;
                    };
                    tokio::pin!(cancel);
                    tokio::select! {
                        () = tokio::time::sleep(extra) => {}
                        () = &mut cancel => return,
                    }
                    let report_tx = tx.clone();
                    let result = fencer
                        .fence(&target, cancel, move |a| {
                            let _ = report_tx.send(Msg::FenceAttempt(a));
                        })
                        .await;
                    let _ = tx.send(Msg::FenceDone { peer, result });
                });
                EntryState::Fencing { _cancel: cancel_tx }
            } else if let Some((lease, margin)) = lease {
                // The peer stopped feeding its watchdog at the latest when
                // it lost us (its timeout after its last heartbeat here), or
                // when its quorum ended, which was before ours began.
                let last_heard = now - Duration::from_millis(last_heard_ms.unwrap_or(0));
                let from = (last_heard + timeout).max(quorate_since.unwrap_or(now));
                let until = from + lease + margin;
                p.events.emit(
                    "lease_wait",
                    json!({"peer": name, "wait_ms": until.saturating_duration_since(now).as_millis() as u64}),
                );
                EntryState::LeaseWait { until }
            } else {
                p.events.emit(
                    "takeover_blocked",
                    json!({"peer": name, "reason": "no fence device can fence it and no watchdog lease is configured"}),
                );
                EntryState::Blocked
            };
            entries.insert(peer, PeerEntry { state });
        }
        for (peer, entry) in &mut entries {
            if let EntryState::LeaseWait { until } = entry.state
                && now >= until
            {
                p.events.emit(
                    "takeover_allowed",
                    json!({"peer": names[*peer], "by": "lease"}),
                );
                entry.state = EntryState::Allowed { by: "lease" };
            }
        }

        let takeovers = entries
            .iter()
            .map(|(peer, e)| {
                let t = match e.state {
                    EntryState::Fencing { .. } => Takeover::Fencing,
                    EntryState::LeaseWait { until } => Takeover::LeaseWait {
                        remaining_ms: until.saturating_duration_since(now).as_millis() as u64,
                    },
                    EntryState::Allowed { by } => Takeover::Allowed { by },
                    EntryState::Blocked => Takeover::Blocked,
                };
                (names[*peer].clone(), t)
            })
            .collect();
        state_tx.send_replace(GuardState {
            quorum: Some(decision),
            witness: witness_vote,
            takeovers,
        });
    }
}

/// Whether any target answers one ping within `timeout`.
async fn ping_any(targets: &[std::net::IpAddr], timeout: Duration) -> bool {
    let secs = format!("{:.1}", timeout.as_secs_f64().max(0.2));
    for t in targets {
        let out = tokio::process::Command::new("ping")
            .args(["-n", "-q", "-c", "1", "-W", &secs])
            .arg(t.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        if let Ok(Ok(s)) = tokio::time::timeout(timeout + Duration::from_millis(500), out).await
            && s.success()
        {
            return true;
        }
    }
    false
}
