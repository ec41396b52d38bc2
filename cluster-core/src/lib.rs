//! The engine both cluster daemons share.
//!
//! Membership ([`membership`]), quorum ([`quorum`], [`guard`]), fencing
//! ([`fence`], [`watchdog`]), the pure placement function ([`placement`]),
//! the engine without I/O ([`node`]) and its driver in a daemon
//! ([`runtime`], [`engine`]), the simulator ([`sim`]), and the control API
//! with the status it reports ([`api`], [`control`], [`status`]). See
//! `docs/architecture.md`.

pub mod api;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod fence;
pub mod guard;
pub mod maintenance;
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
