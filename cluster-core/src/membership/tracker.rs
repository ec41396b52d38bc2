//! Who is alive: the pure state machine of membership. It is fed decoded
//! heartbeats, drop reports and clock ticks and answers with events; it
//! does no I/O and reads no clock, so tests drive it in virtual time.
//!
//! Rules: a link to a peer is up while a heartbeat arrived on it within
//! `timeout`; a peer is alive while any of its links is up and lost when all
//! of them have been silent for `timeout`. A link that falls silent while
//! another lives is an alert (`LinkDown`), not a loss. A heartbeat is
//! accepted only if its incarnation is not older than the newest seen from
//! that peer, its sequence number is above the last accepted on the same
//! path (the link and the local address it arrived at), and not below the
//! newest accepted on that link; anything else is a replay or stale and is
//! dropped and counted. A sender sends each beat once to each of the
//! receiver's addresses on a link (IPv4 and IPv6, say): every copy comes by
//! its own path and is accepted, and a copy replayed to another address of
//! the link is at most as new as the newest already heard there.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::wire::{DecodeError, Header, Heartbeat, View};

/// Liveness of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Not heard yet, and the start-up wait (`initdead`) is not over.
    Unknown,
    /// Heard on at least one link within `timeout`.
    Alive,
    /// Silent on every link for `timeout`.
    Lost,
}

/// Where a heartbeat arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// The link (index in the configuration).
    pub link: usize,
    /// The local address of that link it arrived at (index among the
    /// link's local addresses).
    pub path: usize,
}

/// Datagrams dropped per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// Failed authentication.
    pub forged: u64,
    /// A sequence number already seen on that path, or older than the
    /// newest seen on that link.
    pub replayed: u64,
    /// From an older incarnation of the peer.
    pub stale: u64,
    /// Unreadable.
    pub malformed: u64,
}

/// Something that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A peer was heard after being unknown or lost.
    PeerAlive {
        /// Peer index.
        peer: usize,
    },
    /// A peer fell silent on every link.
    PeerLost {
        /// Peer index.
        peer: usize,
        /// When it was last heard, if ever.
        last_heard: Option<Instant>,
    },
    /// A peer came back with a new incarnation (its daemon restarted).
    PeerRestarted {
        /// Peer index.
        peer: usize,
        /// The new incarnation.
        incarnation: u64,
    },
    /// One link to a live peer fell silent.
    LinkDown {
        /// Peer index.
        peer: usize,
        /// Link index.
        link: usize,
    },
    /// That link carries heartbeats again.
    LinkUp {
        /// Peer index.
        peer: usize,
        /// Link index.
        link: usize,
    },
}

/// Why a datagram was dropped, after decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// See [`DropCounts::forged`].
    Forged,
    /// See [`DropCounts::replayed`].
    Replayed,
    /// See [`DropCounts::stale`].
    Stale,
    /// See [`DropCounts::malformed`].
    Malformed,
    /// Claims to be from a node index that is not a peer.
    UnknownSender,
    /// Arrived on another link than the one it was sent on.
    WrongLink,
}

#[derive(Clone, Debug)]
struct LinkState {
    last_heard: Option<Instant>,
    /// The newest sequence number accepted on this link, by any path.
    last_seq: u64,
    /// The newest accepted per path (local address), grown on first use.
    path_seq: Vec<u64>,
    up: bool,
    /// A `LinkDown` was reported and no `LinkUp` since.
    reported_down: bool,
}

/// What is known of one peer.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Liveness.
    pub liveness: Liveness,
    /// Newest incarnation seen.
    pub incarnation: Option<u64>,
    /// When any link last carried a heartbeat.
    pub last_heard: Option<Instant>,
    /// Per link: up or not.
    pub links_up: Vec<bool>,
    /// The newest view received.
    pub view: Option<View>,
    /// Dropped datagrams claiming to be from this peer.
    pub drops: DropCounts,
    links: Vec<LinkState>,
}

/// Membership of one node.
#[derive(Debug)]
pub struct Tracker {
    me: usize,
    timeout: Duration,
    initdead: Duration,
    started: Instant,
    peers: Vec<Peer>,
    /// Dropped datagrams that named no valid peer.
    pub anonymous_drops: DropCounts,
    /// A peer's view changed since [`Tracker::take_views_changed`].
    views_changed: bool,
}

impl Tracker {
    /// Membership of node `me` among `nodes` nodes with `links` links.
    /// A peer never heard is lost once `initdead` (at least `timeout`)
    /// has passed since `now`.
    pub fn new(
        me: usize,
        nodes: usize,
        links: usize,
        timeout: Duration,
        initdead: Duration,
        now: Instant,
    ) -> Self {
        let peer = Peer {
            liveness: Liveness::Unknown,
            incarnation: None,
            last_heard: None,
            links_up: vec![false; links],
            view: None,
            drops: DropCounts::default(),
            links: vec![
                LinkState {
                    last_heard: None,
                    last_seq: 0,
                    path_seq: Vec::new(),
                    up: false,
                    reported_down: false,
                };
                links
            ],
        };
        Self {
            me,
            timeout,
            initdead: initdead.max(timeout),
            started: now,
            peers: vec![peer; nodes],
            anonymous_drops: DropCounts::default(),
            views_changed: false,
        }
    }

    /// Whether some peer's view changed since the last call (a new
    /// placement, a group starting...): worth passing on at once.
    pub fn take_views_changed(&mut self) -> bool {
        std::mem::take(&mut self.views_changed)
    }

    /// This node's index.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Every node's state (this node's own entry stays `Unknown`).
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Indexes of the peers alive now, not counting this node.
    pub fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter(|(i, p)| *i != self.me && p.liveness == Liveness::Alive)
            .map(|(i, _)| i)
    }

    /// A datagram failed to decode.
    pub fn on_undecodable(&mut self, err: DecodeError) -> Drop {
        let (peer, drop) = match err {
            DecodeError::Malformed(p) => (p, Drop::Malformed),
            DecodeError::Forged(p) => (Some(p), Drop::Forged),
        };
        let counts = match peer.map(usize::from) {
            Some(p) if p != self.me && p < self.peers.len() => &mut self.peers[p].drops,
            _ => &mut self.anonymous_drops,
        };
        match drop {
            Drop::Forged => counts.forged += 1,
            _ => counts.malformed += 1,
        }
        drop
    }

    /// A heartbeat arrived.
    pub fn on_heartbeat(
        &mut self,
        now: Instant,
        arrived_on: Arrival,
        hb: Heartbeat,
    ) -> Result<Vec<Change>, Drop> {
        let Heartbeat {
            link,
            sender,
            incarnation,
            seq,
            view,
        } = hb;
        let header = Header {
            link,
            sender,
            incarnation,
            seq,
        };
        self.accept(now, arrived_on, header, Some(view))
    }

    /// A heartbeat arrived whose view is, byte for byte, the one its
    /// sender sent before (see [`Tracker::has_view`]): only the header is
    /// new.
    pub fn on_heartbeat_same_view(
        &mut self,
        now: Instant,
        arrived_on: Arrival,
        header: Header,
    ) -> Result<Vec<Change>, Drop> {
        self.accept(now, arrived_on, header, None)
    }

    /// Whether a view of peer `p` is held (so an unchanged one need not be
    /// parsed again).
    pub fn has_view(&self, p: usize) -> bool {
        self.peers.get(p).is_some_and(|peer| peer.view.is_some())
    }

    fn accept(
        &mut self,
        now: Instant,
        arrived_on: Arrival,
        hb: Header,
        view: Option<View>,
    ) -> Result<Vec<Change>, Drop> {
        let p = usize::from(hb.sender);
        if p == self.me || p >= self.peers.len() {
            self.anonymous_drops.malformed += 1;
            return Err(Drop::UnknownSender);
        }
        let link = usize::from(hb.link);
        let peer = &mut self.peers[p];
        if link != arrived_on.link || link >= peer.links.len() {
            peer.drops.malformed += 1;
            return Err(Drop::WrongLink);
        }
        let mut changes = Vec::new();
        match peer.incarnation {
            Some(known) if hb.incarnation < known => {
                peer.drops.stale += 1;
                return Err(Drop::Stale);
            }
            Some(known) if hb.incarnation == known => {
                let state = &peer.links[link];
                let path_seq = state.path_seq.get(arrived_on.path).copied().unwrap_or(0);
                if hb.seq <= path_seq || hb.seq < state.last_seq {
                    peer.drops.replayed += 1;
                    return Err(Drop::Replayed);
                }
                if hb.seq == state.last_seq {
                    // The same beat by another address of the link: taken
                    // (not a replay on this path), but it says nothing new
                    // of the peer, so it keeps nobody alive (a copy
                    // replayed to an address that missed it cannot
                    // revive a lost peer).
                    let state = &mut peer.links[link];
                    if state.path_seq.len() <= arrived_on.path {
                        state.path_seq.resize(arrived_on.path + 1, 0);
                    }
                    state.path_seq[arrived_on.path] = hb.seq;
                    return Ok(Vec::new());
                }
            }
            known => {
                // First contact or a restart: sequence numbers begin anew.
                if known.is_some() {
                    changes.push(Change::PeerRestarted {
                        peer: p,
                        incarnation: hb.incarnation,
                    });
                }
                peer.incarnation = Some(hb.incarnation);
                for l in &mut peer.links {
                    l.last_seq = 0;
                    l.path_seq.clear();
                }
            }
        }
        let state = &mut peer.links[link];
        state.last_seq = hb.seq;
        if state.path_seq.len() <= arrived_on.path {
            state.path_seq.resize(arrived_on.path + 1, 0);
        }
        state.path_seq[arrived_on.path] = hb.seq;
        state.last_heard = Some(now);
        if !state.up {
            state.up = true;
            peer.links_up[link] = true;
            if state.reported_down {
                state.reported_down = false;
                changes.push(Change::LinkUp { peer: p, link });
            }
        }
        peer.last_heard = Some(now);
        if let Some(view) = view
            && peer.view.as_ref() != Some(&view)
        {
            self.views_changed = true;
            peer.view = Some(view);
        }
        if peer.liveness != Liveness::Alive {
            peer.liveness = Liveness::Alive;
            changes.push(Change::PeerAlive { peer: p });
        }
        Ok(changes)
    }

    /// Apply the passage of time.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let timeout = self.timeout;
        let grace_over = now.duration_since(self.started) >= self.initdead;
        for (p, peer) in self.peers.iter_mut().enumerate() {
            if p == self.me {
                continue;
            }
            let mut downs = Vec::new();
            for (l, link) in peer.links.iter_mut().enumerate() {
                let silent = link
                    .last_heard
                    .is_none_or(|t| now.duration_since(t) >= timeout);
                if link.up && silent {
                    link.up = false;
                    peer.links_up[l] = false;
                    downs.push(l);
                }
            }
            let all_silent = peer.links.iter().all(|l| !l.up);
            match peer.liveness {
                Liveness::Alive if all_silent => {
                    peer.liveness = Liveness::Lost;
                    for link in &mut peer.links {
                        link.reported_down = false;
                    }
                    changes.push(Change::PeerLost {
                        peer: p,
                        last_heard: peer.last_heard,
                    });
                }
                Liveness::Alive => {
                    for l in downs {
                        peer.links[l].reported_down = true;
                        changes.push(Change::LinkDown { peer: p, link: l });
                    }
                }
                Liveness::Unknown if grace_over => {
                    peer.liveness = Liveness::Lost;
                    changes.push(Change::PeerLost {
                        peer: p,
                        last_heard: None,
                    });
                }
                _ => {}
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(800);

    fn hb(sender: u16, link: u8, incarnation: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            link,
            sender,
            incarnation,
            seq,
            view: View::default(),
        }
    }

    /// Arrived on `link`, at its first local address.
    fn on(link: usize) -> Arrival {
        Arrival { link, path: 0 }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_peer_is_lost_only_when_every_link_is_silent() {
        let t0 = Instant::now();
        let mut m = Tracker::new(0, 2, 2, T, T, t0);
        assert_eq!(
            m.on_heartbeat(t0, on(0), hb(1, 0, 1, 1)),
            Ok(vec![Change::PeerAlive { peer: 1 }])
        );
        assert_eq!(m.on_heartbeat(t0, on(1), hb(1, 1, 1, 1)), Ok(vec![]));
        // Link 1 keeps talking, link 0 goes silent: an alert only.
        for i in 1..=10 {
            let _ = m.on_heartbeat(ms(t0, i * 100), on(1), hb(1, 1, 1, 1 + i));
        }
        let changes = m.tick(ms(t0, 1000));
        assert_eq!(changes, vec![Change::LinkDown { peer: 1, link: 0 }]);
        assert_eq!(m.peers()[1].liveness, Liveness::Alive);
        // Then link 1 too: lost, T after its last heartbeat.
        assert_eq!(m.tick(ms(t0, 1000 + 799)), vec![]);
        assert!(matches!(
            m.tick(ms(t0, 1800))[..],
            [Change::PeerLost { peer: 1, .. }]
        ));
        // Back on link 0: alive again.
        assert_eq!(
            m.on_heartbeat(ms(t0, 2000), on(0), hb(1, 0, 1, 50)),
            Ok(vec![Change::PeerAlive { peer: 1 }])
        );
    }

    #[test]
    fn replays_and_stale_incarnations_are_dropped_and_counted() {
        let t0 = Instant::now();
        let mut m = Tracker::new(0, 2, 1, T, T, t0);
        assert!(m.on_heartbeat(t0, on(0), hb(1, 0, 5, 10)).is_ok());
        assert_eq!(
            m.on_heartbeat(t0, on(0), hb(1, 0, 5, 10)),
            Err(Drop::Replayed)
        );
        assert_eq!(
            m.on_heartbeat(t0, on(0), hb(1, 0, 5, 9)),
            Err(Drop::Replayed)
        );
        assert_eq!(m.on_heartbeat(t0, on(0), hb(1, 0, 4, 99)), Err(Drop::Stale));
        assert_eq!(m.peers()[1].drops.replayed, 2);
        assert_eq!(m.peers()[1].drops.stale, 1);
        // A restart starts sequence numbers again.
        assert_eq!(
            m.on_heartbeat(t0, on(0), hb(1, 0, 6, 1)),
            Ok(vec![Change::PeerRestarted {
                peer: 1,
                incarnation: 6
            }])
        );
    }

    #[test]
    fn a_beat_sent_to_each_address_of_a_link_is_taken_once_per_address() {
        let t0 = Instant::now();
        let mut m = Tracker::new(0, 2, 1, T, T, t0);
        let v4 = Arrival { link: 0, path: 0 };
        let v6 = Arrival { link: 0, path: 1 };
        for seq in 1..=5 {
            assert!(
                m.on_heartbeat(ms(t0, seq * 100), v4, hb(1, 0, 5, seq))
                    .is_ok()
            );
            assert!(
                m.on_heartbeat(ms(t0, seq * 100), v6, hb(1, 0, 5, seq))
                    .is_ok()
            );
        }
        assert_eq!(m.peers()[1].drops, DropCounts::default());
        // The same beat again on a path: a replay.
        assert_eq!(m.on_heartbeat(t0, v6, hb(1, 0, 5, 5)), Err(Drop::Replayed));
        // A beat older than the newest on the link, to an address that
        // has not had it (that path fell behind): a replay too.
        assert!(m.on_heartbeat(t0, v4, hb(1, 0, 5, 7)).is_ok());
        assert_eq!(m.on_heartbeat(t0, v6, hb(1, 0, 5, 6)), Err(Drop::Replayed));
        assert!(m.on_heartbeat(t0, v6, hb(1, 0, 5, 7)).is_ok());
        assert_eq!(m.peers()[1].drops.replayed, 2);
    }

    #[test]
    fn a_second_copy_of_the_newest_beat_keeps_no_peer_alive() {
        let t0 = Instant::now();
        let mut m = Tracker::new(0, 2, 1, T, T, t0);
        let v4 = Arrival { link: 0, path: 0 };
        let v6 = Arrival { link: 0, path: 1 };
        assert!(m.on_heartbeat(t0, v4, hb(1, 0, 5, 10)).is_ok());
        // The peer dies; its last beat, captured, is replayed to the
        // address that never got it, just before the timeout.
        assert!(m.on_heartbeat(ms(t0, 790), v6, hb(1, 0, 5, 10)).is_ok());
        assert!(matches!(
            m.tick(ms(t0, 800))[..],
            [Change::PeerLost { peer: 1, .. }]
        ));
    }

    #[test]
    fn datagrams_on_the_wrong_link_or_from_no_peer_are_dropped() {
        let t0 = Instant::now();
        let mut m = Tracker::new(0, 2, 2, T, T, t0);
        assert_eq!(
            m.on_heartbeat(t0, on(1), hb(1, 0, 1, 1)),
            Err(Drop::WrongLink)
        );
        assert_eq!(
            m.on_heartbeat(t0, on(0), hb(0, 0, 1, 1)),
            Err(Drop::UnknownSender)
        );
        assert_eq!(
            m.on_heartbeat(t0, on(0), hb(7, 0, 1, 1)),
            Err(Drop::UnknownSender)
        );
        assert_eq!(m.on_undecodable(DecodeError::Forged(1)), Drop::Forged);
        assert_eq!(m.peers()[1].drops.forged, 1);
        assert_eq!(m.peers()[1].liveness, Liveness::Unknown);
    }

    #[test]
    fn a_peer_slow_to_start_is_waited_for_until_initdead() {
        let t0 = Instant::now();
        let mut m = Tracker::new(0, 2, 1, T, Duration::from_secs(30), t0);
        assert_eq!(m.tick(ms(t0, 29_999)), vec![]);
        assert_eq!(m.peers()[1].liveness, Liveness::Unknown);
        // Heard at last: alive, and from then on the usual timeout.
        assert_eq!(
            m.on_heartbeat(ms(t0, 20_000), on(0), hb(1, 0, 1, 1)),
            Ok(vec![Change::PeerAlive { peer: 1 }])
        );
        assert!(matches!(
            m.tick(ms(t0, 20_800))[..],
            [Change::PeerLost { peer: 1, .. }]
        ));
        let mut never = Tracker::new(0, 2, 1, T, Duration::from_secs(30), t0);
        assert!(matches!(
            never.tick(ms(t0, 30_000))[..],
            [Change::PeerLost {
                peer: 1,
                last_heard: None
            }]
        ));
    }

    #[test]
    fn peers_never_heard_are_lost_after_the_start_up_grace() {
        let t0 = Instant::now();
        let mut m = Tracker::new(1, 3, 1, T, T, t0);
        assert_eq!(m.tick(ms(t0, 799)), vec![]);
        let lost = m.tick(ms(t0, 800));
        assert_eq!(
            lost,
            vec![
                Change::PeerLost {
                    peer: 0,
                    last_heard: None
                },
                Change::PeerLost {
                    peer: 2,
                    last_heard: None
                }
            ]
        );
        assert_eq!(m.alive().count(), 0);
    }
}
