//! The vote book: which partition of each cluster holds the witness's vote,
//! and until when. A pure state machine: no I/O and no clock of its own, the
//! caller passes the time of every request, so its rules are tested with
//! explicit instants.
//!
//! The rules, per cluster:
//!
//! - no holding, or an expired one: the reporting node's view takes the vote;
//! - the reporting node is a member of the holding: its view becomes the
//!   holding and the lease is renewed (so when a cluster splits, the first
//!   side to report its smaller view takes the vote, and the other side's
//!   nodes are no longer members);
//! - otherwise the request is denied and the holding is unchanged.
//!
//! So exactly one side of a partition gets the vote, keeps it while any of
//! its members renews, and loses it only when all of them have been silent
//! for the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::protocol::{HoldingStatus, VoteReply, VoteRequest, WitnessStatus};

/// The longest lease a [`VoteBook`] grants unless built with another.
pub const DEFAULT_MAX_LEASE: Duration = Duration::from_secs(60);

/// A request the witness refuses to consider (answered with 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    /// `cluster` is the empty string.
    #[error("the cluster name is empty")]
    EmptyCluster,
    /// `node` is the empty string.
    #[error("the node name is empty")]
    EmptyNode,
    /// `view` names the empty string as a node.
    #[error("the view of node `{node}` contains an empty node name")]
    EmptyViewMember {
        /// The reporting node.
        node: String,
    },
    /// The reporting node does not see itself.
    #[error("node `{node}` is not in its own view")]
    NodeNotInView {
        /// The reporting node.
        node: String,
    },
    /// The lease would end past what the clock can represent.
    #[error("a lease of {lease_ms} ms cannot be represented")]
    LeaseOverflow {
        /// The lease, capped, in milliseconds.
        lease_ms: u64,
    },
}

/// The partition holding one cluster's vote.
#[derive(Clone, Debug)]
struct Holding {
    members: BTreeSet<String>,
    expires: Instant,
}

/// The witness's state: one holding per cluster name.
#[derive(Clone, Debug)]
pub struct VoteBook {
    max_lease_ms: u64,
    holdings: BTreeMap<String, Holding>,
}

impl Default for VoteBook {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LEASE)
    }
}

impl VoteBook {
    /// An empty book that grants leases of at most `max_lease` (at least
    /// 1 ms, whatever is asked).
    pub fn new(max_lease: Duration) -> Self {
        let max_lease_ms = u64::try_from(max_lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            max_lease_ms,
            holdings: BTreeMap::new(),
        }
    }

    /// The longest lease this book grants.
    pub fn max_lease(&self) -> Duration {
        Duration::from_millis(self.max_lease_ms)
    }

    /// Handle one vote request received at `now`.
    ///
    /// The lease granted is `min(req.lease_ms, max_lease)`, at least 1 ms. A
    /// renewal never moves a holding's expiry earlier (a shorter lease asked
    /// for, or a `now` older than an earlier call's), so a node that counts
    /// its lease from when it sent its request never outlives the witness's
    /// record of it.
    pub fn request(&mut self, now: Instant, req: &VoteRequest) -> Result<VoteReply, VoteError> {
        if req.cluster.is_empty() {
            return Err(VoteError::EmptyCluster);
        }
        if req.node.is_empty() {
            return Err(VoteError::EmptyNode);
        }
        if req.view.contains("") {
            return Err(VoteError::EmptyViewMember {
                node: req.node.clone(),
            });
        }
        if !req.view.contains(&req.node) {
            return Err(VoteError::NodeNotInView {
                node: req.node.clone(),
            });
        }
        let lease_ms = req.lease_ms.clamp(1, self.max_lease_ms);
        let expires = now
            .checked_add(Duration::from_millis(lease_ms))
            .ok_or(VoteError::LeaseOverflow { lease_ms })?;

        // An expired holding is the same as none; dropping them keeps the
        // book as small as the set of clusters that currently hold a vote.
        self.holdings.retain(|_, h| now < h.expires);
        match self.holdings.get_mut(&req.cluster) {
            Some(h) if !h.members.contains(&req.node) => {
                return Ok(VoteReply {
                    granted: false,
                    holder: h.members.clone(),
                    lease_ms: 0,
                });
            }
            Some(h) => {
                h.members.clone_from(&req.view);
                h.expires = h.expires.max(expires);
            }
            None => {
                self.holdings.insert(
                    req.cluster.clone(),
                    Holding {
                        members: req.view.clone(),
                        expires,
                    },
                );
            }
        }
        Ok(VoteReply {
            granted: true,
            holder: req.view.clone(),
            lease_ms,
        })
    }

    /// The partition holding `cluster`'s vote at `now`, if the holding has
    /// not expired.
    pub fn holder(&self, cluster: &str, now: Instant) -> Option<&BTreeSet<String>> {
        self.holdings
            .get(cluster)
            .filter(|h| now < h.expires)
            .map(|h| &h.members)
    }

    /// Every live holding at `now`: its members and the lease left.
    pub fn snapshot(&self, now: Instant) -> WitnessStatus {
        let clusters = self
            .holdings
            .iter()
            .filter(|(_, h)| now < h.expires)
            .map(|(name, h)| {
                let left = h.expires.saturating_duration_since(now);
                let remaining_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                (
                    name.clone(),
                    HoldingStatus {
                        members: h.members.clone(),
                        remaining_ms,
                    },
                )
            })
            .collect();
        WitnessStatus { clusters }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: u64 = 5_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| (*n).to_owned()).collect()
    }

    fn req(node: &str, view: &[&str]) -> VoteRequest {
        VoteRequest {
            cluster: "c1".into(),
            node: node.into(),
            view: set(view),
            lease_ms: LEASE,
        }
    }

    fn ask(book: &mut VoteBook, now: Instant, node: &str, view: &[&str]) -> VoteReply {
        book.request(now, &req(node, view))
            .unwrap_or_else(|e| panic!("request by {node} refused: {e}"))
    }

    /// Every ordering of `items`.
    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first.clone());
                out.push(tail);
            }
        }
        out
    }

    /// Report `reports` in order, starting from a healthy cluster of every
    /// node in them; return who was granted.
    fn split(reports: &[(&str, &[&str])]) -> BTreeSet<String> {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        let all: Vec<&str> = reports.iter().map(|(n, _)| *n).collect();
        for node in &all {
            assert!(ask(&mut book, t0, node, &all).granted);
        }
        let mut granted = BTreeSet::new();
        for (i, (node, view)) in reports.iter().enumerate() {
            let now = t0 + ms(100 + i as u64);
            let reply = ask(&mut book, now, node, view);
            if reply.granted {
                assert_eq!(reply.holder, set(view));
                assert_eq!(reply.lease_ms, LEASE);
                granted.insert((*node).to_owned());
            } else {
                assert_eq!(reply.lease_ms, 0);
                assert!(!reply.holder.contains(*node), "{reply:?}");
            }
        }
        granted
    }

    #[test]
    fn healthy_cluster_renews_for_every_node() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        let all = ["a", "b", "c"];
        for round in 0..10u64 {
            for (i, node) in all.iter().enumerate() {
                let now = t0 + ms(round * 1_000 + i as u64);
                let reply = ask(&mut book, now, node, &all);
                assert!(reply.granted, "round {round}, {node}: {reply:?}");
                assert_eq!(reply.holder, set(&all));
                assert_eq!(reply.lease_ms, LEASE);
            }
        }
        let status = book.snapshot(t0 + ms(9_002));
        let held = status
            .clusters
            .get("c1")
            .unwrap_or_else(|| panic!("no holding: {status:?}"));
        assert_eq!(held.members, set(&all));
        assert_eq!(held.remaining_ms, LEASE);
    }

    #[test]
    fn two_one_split_grants_exactly_one_side_in_any_order() {
        let reports: [(&str, &[&str]); 3] = [("a", &["a", "b"]), ("b", &["a", "b"]), ("c", &["c"])];
        let mut winners = BTreeSet::new();
        for order in permutations(&reports) {
            let granted = split(&order);
            let side = if granted.contains("c") {
                set(&["c"])
            } else {
                set(&["a", "b"])
            };
            assert_eq!(granted, side, "order {order:?}");
            // The side that reported first wins.
            assert!(side.contains(order[0].0), "order {order:?}: {granted:?}");
            winners.insert(granted);
        }
        // Both outcomes happen, so the order decides, not the names.
        assert_eq!(winners.len(), 2, "{winners:?}");
    }

    #[test]
    fn one_one_split_grants_exactly_one_side_in_any_order() {
        for order in permutations(&[("a", &["a"][..]), ("b", &["b"][..])]) {
            let granted = split(&order);
            assert_eq!(granted, set(&[order[0].0]), "order {order:?}");
        }
    }

    #[test]
    fn a_node_that_has_not_noticed_the_split_yet_is_denied() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        assert!(ask(&mut book, t0, "a", &["a", "b"]).granted);
        assert!(ask(&mut book, t0 + ms(10), "a", &["a"]).granted);
        // b still sees a (its heartbeat timeout has not run out yet).
        let late = ask(&mut book, t0 + ms(20), "b", &["a", "b"]);
        assert!(!late.granted);
        assert_eq!(late.holder, set(&["a"]));
        assert!(!ask(&mut book, t0 + ms(30), "b", &["b"]).granted);
    }

    #[test]
    fn winner_keeps_the_vote_while_renewing_and_loses_it_after_the_lease() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        ask(&mut book, t0, "a", &["a", "b", "c"]);
        assert!(ask(&mut book, t0 + ms(10), "a", &["a", "b"]).granted);

        // Members take turns renewing for far longer than one lease; the
        // other side asks between every renewal and is always denied.
        let mut now = t0 + ms(10);
        for i in 0..20 {
            now += ms(LEASE - 1);
            let renewer = if i % 2 == 0 { "a" } else { "b" };
            assert!(
                !ask(&mut book, now, "c", &["c"]).granted,
                "c granted at renewal {i}"
            );
            assert!(
                ask(&mut book, now, renewer, &["a", "b"]).granted,
                "{renewer} denied at renewal {i}"
            );
        }

        // The winners go silent. One millisecond before the lease runs out
        // the other side is still denied; at the end of the lease it wins.
        let last = now;
        let denied = ask(&mut book, last + ms(LEASE - 1), "c", &["c"]);
        assert!(!denied.granted);
        assert_eq!(denied.holder, set(&["a", "b"]));
        let taken = ask(&mut book, last + ms(LEASE), "c", &["c"]);
        assert!(taken.granted);
        assert_eq!(taken.holder, set(&["c"]));
        // And the old winners, back, are now the ones denied.
        let back = ask(&mut book, last + ms(LEASE + 1), "a", &["a", "b"]);
        assert!(!back.granted);
        assert_eq!(back.holder, set(&["c"]));
    }

    #[test]
    fn partition_heals_when_a_member_sees_the_others_again() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        assert!(ask(&mut book, t0, "a", &["a"]).granted);
        assert!(!ask(&mut book, t0 + ms(1), "b", &["a", "b"]).granted);
        assert!(ask(&mut book, t0 + ms(2), "a", &["a", "b"]).granted);
        assert!(ask(&mut book, t0 + ms(3), "b", &["a", "b"]).granted);
    }

    #[test]
    fn clusters_are_independent() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        assert!(ask(&mut book, t0, "a", &["a"]).granted);
        let mut other = req("b", &["b"]);
        other.cluster = "c2".into();
        let reply = book.request(t0, &other).unwrap_or_else(|e| panic!("{e}"));
        assert!(reply.granted);
        assert_eq!(book.snapshot(t0).clusters.len(), 2);
    }

    #[test]
    fn malformed_requests_are_errors_and_change_nothing() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        let absent = req("a", &["b", "c"]);
        assert_eq!(
            book.request(t0, &absent),
            Err(VoteError::NodeNotInView { node: "a".into() })
        );
        let mut no_cluster = req("a", &["a"]);
        no_cluster.cluster.clear();
        assert_eq!(book.request(t0, &no_cluster), Err(VoteError::EmptyCluster));
        assert_eq!(book.request(t0, &req("", &[""])), Err(VoteError::EmptyNode));
        assert_eq!(
            book.request(t0, &req("a", &["a", ""])),
            Err(VoteError::EmptyViewMember { node: "a".into() })
        );
        assert!(book.snapshot(t0).clusters.is_empty());

        // An error from a node of another partition leaves the holding alone.
        assert!(ask(&mut book, t0, "a", &["a"]).granted);
        assert!(book.request(t0, &req("b", &["c"])).is_err());
        assert_eq!(book.holder("c1", t0), Some(&set(&["a"])));
    }

    #[test]
    fn lease_is_capped_and_at_least_one_millisecond() {
        let t0 = Instant::now();
        let mut book = VoteBook::new(Duration::from_secs(2));
        assert_eq!(book.max_lease(), Duration::from_secs(2));
        let mut long = req("a", &["a"]);
        long.lease_ms = u64::MAX;
        let reply = book.request(t0, &long).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.lease_ms, 2_000);
        assert_eq!(book.snapshot(t0).clusters["c1"].remaining_ms, 2_000);
        // The capped lease is the one enforced: the other side wins at 2 s.
        assert!(!ask(&mut book, t0 + ms(1_999), "b", &["b"]).granted);
        assert!(ask(&mut book, t0 + ms(2_000), "b", &["b"]).granted);

        let mut zero = req("b", &["b"]);
        zero.lease_ms = 0;
        let reply = book
            .request(t0 + ms(2_001), &zero)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.lease_ms, 1);

        assert_eq!(VoteBook::new(Duration::ZERO).max_lease(), ms(1));
        assert_eq!(VoteBook::default().max_lease(), DEFAULT_MAX_LEASE);
    }

    #[test]
    fn a_renewal_never_shortens_the_holding() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        ask(&mut book, t0, "a", &["a"]);
        let mut short = req("a", &["a"]);
        short.lease_ms = 10;
        book.request(t0 + ms(1), &short)
            .unwrap_or_else(|e| panic!("{e}"));
        // The first lease (5 s from t0) still stands.
        assert!(!ask(&mut book, t0 + ms(LEASE - 1), "b", &["b"]).granted);
        assert!(ask(&mut book, t0 + ms(LEASE), "b", &["b"]).granted);
    }

    #[test]
    fn expired_holdings_leave_the_status() {
        let t0 = Instant::now();
        let mut book = VoteBook::default();
        ask(&mut book, t0, "a", &["a"]);
        assert_eq!(
            book.snapshot(t0 + ms(LEASE - 1)).clusters["c1"].remaining_ms,
            1
        );
        assert!(book.snapshot(t0 + ms(LEASE)).clusters.is_empty());
        assert_eq!(book.holder("c1", t0 + ms(LEASE)), None);
    }
}
