//! Quorum: may this partition act? A pure decision from what membership,
//! the witness and the ping tie-break report.
//!
//! Votes are one per node plus, when configured, one for the witness. The
//! witness only ever decides a tie: a partition holding more than half of
//! the nodes is quorate without it, one holding less than half is not
//! quorate with it. In an exact tie (2|2 of four, 1|1 of two) the side the
//! witness grants its vote to is quorate.
//!
//! A two-node cluster without a witness breaks the tie by pinging: a node
//! that reaches none of the targets is not quorate. Of two nodes that both
//! may reach them, the preferred one (first in `nodes`) is quorate; the
//! other becomes quorate only once it has fenced the preferred node through
//! a fence device (with the two-node fence delay, so that a preferred node
//! that is still alive fences it first). Without a fence device the other
//! node therefore never takes over after a partition: safety first.

use serde::Serialize;

/// The witness's answer as this node last had it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WitnessVote {
    /// The witness granted its vote to this partition and the lease runs.
    Granted,
    /// The witness gave its vote to another partition.
    Denied,
    /// Not asked yet, unreachable, or the lease ran out.
    Unknown,
}

/// The two-node ping tie-break as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TieBreak {
    /// A ping target answered recently.
    pub reaches_target: bool,
    /// This node is the preferred one (first in `nodes`).
    pub preferred: bool,
    /// This (non-preferred) node has had the preferred node fenced.
    pub preferred_fenced: bool,
}

/// What the decision is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Input {
    /// Nodes in the configuration.
    pub nodes: usize,
    /// Nodes in this partition, this node included.
    pub alive: usize,
    /// The witness, if one is configured.
    pub witness: Option<WitnessVote>,
    /// The ping tie-break, for two-node clusters without a witness.
    pub tie_break: Option<TieBreak>,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// This partition may act.
    pub quorate: bool,
    /// Votes held.
    pub votes: usize,
    /// Votes that exist.
    pub of: usize,
    /// Why, for events and status.
    pub reason: &'static str,
    /// In a two-node tie without a witness: this node may try to fence
    /// the preferred node to become quorate.
    pub may_fence_preferred: bool,
}

/// Decide.
pub fn decide(i: Input) -> Decision {
    let witness_votes = usize::from(i.witness.is_some());
    let of = i.nodes + witness_votes;
    let granted = usize::from(i.witness == Some(WitnessVote::Granted));
    let votes = i.alive + granted;
    let d = |quorate, reason| Decision {
        quorate,
        votes,
        of,
        reason,
        may_fence_preferred: false,
    };
    if 2 * i.alive > i.nodes {
        return d(true, "majority of the nodes");
    }
    if 2 * i.alive < i.nodes {
        return d(false, "minority of the nodes");
    }
    // An exact tie.
    match (i.witness, i.tie_break) {
        (Some(WitnessVote::Granted), _) => d(true, "tie broken by the witness in our favour"),
        (Some(WitnessVote::Denied), _) => d(false, "tie broken by the witness for the other side"),
        (Some(WitnessVote::Unknown), _) => d(false, "tie and no vote from the witness"),
        (None, Some(t)) if i.nodes == 2 => {
            if !t.reaches_target {
                d(false, "two-node tie: no ping target answers")
            } else if t.preferred {
                d(
                    true,
                    "two-node tie: ping target answers and this is the preferred node",
                )
            } else if t.preferred_fenced {
                d(true, "two-node tie: the preferred node was fenced")
            } else {
                Decision {
                    may_fence_preferred: true,
                    ..d(false, "two-node tie: waiting to fence the preferred node")
                }
            }
        }
        (None, _) => d(false, "tie and nothing to break it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(nodes: usize, alive: usize) -> Input {
        Input {
            nodes,
            alive,
            witness: None,
            tie_break: None,
        }
    }

    #[test]
    fn majority_decides_without_the_witness() {
        assert!(decide(input(3, 2)).quorate);
        assert!(!decide(input(3, 1)).quorate);
        assert!(decide(input(1, 1)).quorate);
        assert!(decide(input(32, 17)).quorate);
        assert!(!decide(input(32, 16)).quorate);
        // A minority is not saved by a witness grant.
        let minority = Input {
            witness: Some(WitnessVote::Granted),
            ..input(3, 1)
        };
        assert!(!decide(minority).quorate);
        // A majority does not need it.
        let majority = Input {
            witness: Some(WitnessVote::Denied),
            ..input(3, 2)
        };
        assert!(decide(majority).quorate);
    }

    #[test]
    fn the_witness_breaks_ties_for_exactly_one_side() {
        for nodes in [2, 4, 6] {
            let side = |w| {
                decide(Input {
                    witness: Some(w),
                    ..input(nodes, nodes / 2)
                })
            };
            assert!(side(WitnessVote::Granted).quorate);
            assert!(!side(WitnessVote::Denied).quorate);
            assert!(!side(WitnessVote::Unknown).quorate);
            assert_eq!(side(WitnessVote::Granted).votes, nodes / 2 + 1);
            assert_eq!(side(WitnessVote::Granted).of, nodes + 1);
        }
    }

    #[test]
    fn two_node_ping_tie_break() {
        let tie = |reaches_target, preferred, preferred_fenced| {
            decide(Input {
                tie_break: Some(TieBreak {
                    reaches_target,
                    preferred,
                    preferred_fenced,
                }),
                ..input(2, 1)
            })
        };
        assert!(tie(true, true, false).quorate);
        assert!(!tie(false, true, false).quorate);
        let other = tie(true, false, false);
        assert!(!other.quorate && other.may_fence_preferred);
        assert!(tie(true, false, true).quorate);
        assert!(!tie(false, false, true).quorate);
        // Both nodes alive: no tie-break needed.
        assert!(decide(input(2, 2)).quorate);
    }

    #[test]
    fn even_clusters_without_a_witness_stop_on_a_tie() {
        assert!(!decide(input(4, 2)).quorate);
    }
}
