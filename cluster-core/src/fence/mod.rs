//! Fencing: devices that power a node off before its groups are taken over.
//!
//! The design rule this module serves: a lost node's groups start elsewhere
//! only after a fence device has confirmed the node off (or its watchdog
//! lease has certainly expired, which is not decided here). A [`Device`] is
//! one way of powering a node off and answers `Ok` only on confirmation;
//! [`AgentDevice`] drives an agent of Debian's `fence-agents` package through
//! its stdin protocol; [`RedfishDevice`] sends `ForceOff` to a BMC's Redfish
//! service itself and waits until the BMC reports the system `Off`. The
//! [`Fencer`] tries every device able to fence a target, in configuration
//! order, and retries with exponential backoff until one succeeds or the
//! caller cancels: a failed fence is reported (every attempt becomes a
//! [`FenceAttempt`]) and retried, never skipped.

mod agent;
mod error;
mod fencer;
mod redfish;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use agent::{AGENT_DIRS, AgentDevice, OUTPUT_TAIL_BYTES};
pub use error::{AgentOutput, FenceError, FencerError, RedfishProgress};
pub use fencer::{Backoff, FenceAttempt, Fencer};
pub use redfish::{MAX_BODY_BYTES, POLL_INTERVAL, RedfishDevice};

/// The future of one fencing attempt: `Ok` only once the device confirmed
/// the target off.
pub type FenceFuture<'a> = Pin<Box<dyn Future<Output = Result<(), FenceError>> + Send + 'a>>;

/// One fence device: a way of powering nodes off.
///
/// Object-safe, so a [`Fencer`] holds devices of different kinds. An
/// implementation bounds each attempt itself (its configured timeout) and,
/// if the returned future is dropped before it completes, stops whatever it
/// started.
pub trait Device: std::fmt::Debug + Send + Sync {
    /// The device's name, as configured.
    fn name(&self) -> &str;

    /// Whether this device can fence the node named `target`.
    fn can_fence(&self, target: &str) -> bool;

    /// How long to wait before the first attempt to fence with this device,
    /// to settle two-node fence races deterministically. Zero by default.
    fn delay(&self) -> Duration {
        Duration::ZERO
    }

    /// Power `target` off. Resolves to `Ok` only when the device confirmed
    /// the target off; any doubt is an error.
    fn fence_off<'a>(&'a self, target: &'a str) -> FenceFuture<'a>;
}
