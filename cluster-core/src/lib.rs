//! The engine both cluster daemons share.
//!
//! Today: the status model every daemon reports ([`status`]), the control
//! API that carries it ([`api`]: one request type, served over HTTP on a
//! Unix socket), and the plumbing every daemon `main` uses ([`daemon`]).
//! Membership, quorum, fencing and placement land here next (see
//! `docs/architecture.md`).

pub mod api;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod fence;
pub mod guard;
pub mod membership;
pub mod node;
pub mod placement;
pub mod quorum;
pub mod resource;
pub mod runtime;
pub mod sim;
pub mod statefile;
pub mod status;
pub mod watchdog;
