//! The witness protocol: what a cluster node sends to `POST /v1/vote` and
//! what it gets back, the body of an error answer, and the body of
//! `GET /v1/status`. All JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A node asks for (or renews) the witness's vote for the partition it is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The cluster's name; the witness keeps one vote per cluster.
    pub cluster: String,
    /// The reporting node.
    pub node: String,
    /// The cluster nodes the reporting node currently sees alive, itself
    /// included.
    pub view: BTreeSet<String>,
    /// The lease asked for, in milliseconds; the witness may grant less.
    pub lease_ms: u64,
}

/// The witness's answer to a [`VoteRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteReply {
    /// Whether the reporting node's partition holds the vote.
    pub granted: bool,
    /// The partition that holds the vote after this request (the request's
    /// view when granted, the other side's when denied).
    pub holder: BTreeSet<String>,
    /// The lease granted, in milliseconds, counted from when the witness
    /// handled the request; 0 when denied.
    pub lease_ms: u64,
}

/// The body of every error answer (400, 401, 413, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What was wrong with the request, for the operator.
    pub error: String,
}

/// One cluster's holding, as `GET /v1/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldingStatus {
    /// The partition that holds the vote.
    pub members: BTreeSet<String>,
    /// Milliseconds until the holding expires unless a member renews it.
    pub remaining_ms: u64,
}

/// The body of `GET /v1/status`: every cluster whose vote is held now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// Holdings by cluster name; clusters without a live holding are absent.
    pub clusters: BTreeMap<String, HoldingStatus>,
}
