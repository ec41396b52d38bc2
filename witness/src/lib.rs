//! `cluster-witness`: the third-site witness that adds one quorum vote to a
//! cluster and breaks ties. Cluster nodes report which peers they see; when
//! a cluster splits, the witness grants its vote to one side only, for a
//! lease that the side keeps while any of its members renews it.
//!
//! - [`protocol`]: the JSON messages;
//! - [`book`]: the vote rules, a pure state machine ([`VoteBook`]);
//! - [`server`]: the HTTP routes (axum) and serving several addresses;
//! - [`client`]: [`WitnessClient`], what cluster nodes call;
//! - [`token`]: reading the shared bearer token from its file.

pub mod book;
pub mod client;
pub mod protocol;
pub mod server;
pub mod token;

pub use book::{DEFAULT_MAX_LEASE, VoteBook, VoteError};
pub use client::{WitnessClient, WitnessError};
pub use protocol::{ErrorReply, HoldingStatus, VoteReply, VoteRequest, WitnessStatus};
pub use server::{BindError, bind_all, router, serve};
pub use token::{TokenError, read_token_file};
