//! The boundary between the engine and the things it runs: one
//! [`ResourceDriver`] per configured resource and one [`MonitorDriver`] per
//! configured monitor. The daemons implement them for real (processes, OCF
//! agents, systemd, addresses, mounts, VMs); the simulator implements them
//! with fakes in virtual time. The engine never touches the outside world
//! except through these traits.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A boxed future, as the driver traits return them (they must be object
/// safe: the engine holds one driver per configured resource).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a start runs. Exec scripts see it as `KVMHA_REASON`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartReason {
    /// The group starts where it was not running before (cluster start,
    /// `clusterctl group start`).
    Start,
    /// The group moves here because its node was lost or failed.
    Failover,
    /// The resource restarts on the same node after a monitor failure.
    Recover,
    /// The group moves here on an operator's request or by fail-back.
    Move,
}

impl StartReason {
    /// The name scripts see (`START`, `FAILOVER`, `RECOVER`, `MOVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "START",
            Self::Failover => "FAILOVER",
            Self::Recover => "RECOVER",
            Self::Move => "MOVE",
        }
    }
}

impl fmt::Display for StartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a driver is told about one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionContext {
    /// The group.
    pub group: String,
    /// The resource.
    pub resource: String,
    /// This node.
    pub node: String,
    /// Why it runs (for stops: why the group started where it now stops).
    pub reason: StartReason,
    /// The node that ran the group before, if any.
    pub previous_owner: Option<String>,
    /// Whether that node was fenced before this start.
    pub previous_owner_fenced: bool,
    /// How long the action may take; the driver must give up (and kill
    /// what it started) by then.
    pub timeout: Duration,
}

/// How a start or stop ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ActionOutcome {
    /// Done.
    Ok,
    /// It failed. `hard` failures mean the resource cannot run on this
    /// node at all (OCF 2/4/5, a missing binary): no restart here.
    Failed {
        /// What went wrong, for the log.
        message: String,
        /// Not worth retrying on this node.
        hard: bool,
    },
    /// It did not finish within its timeout (and was killed).
    TimedOut,
}

impl ActionOutcome {
    /// The action succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// What a probe found. `Unknown` is never treated as stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "probe", content = "detail", rename_all = "snake_case")]
pub enum Probe {
    /// Running here.
    Running,
    /// Not running here.
    Stopped,
    /// Present but failed (crashed, paused on error).
    Failed(String),
    /// Could not tell (the probe failed or timed out).
    Unknown(String),
}

/// How one monitor check ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", content = "detail", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// Healthy.
    Ok,
    /// Failed: feeds the recovery ladder.
    Failed(String),
}

/// One configured resource on this node.
pub trait ResourceDriver: Send + Sync + fmt::Debug {
    /// Start it; resolve within `ctx.timeout`.
    fn start<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome>;
    /// Stop it; resolve within `ctx.timeout`. Stopping what is not running
    /// succeeds.
    fn stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome>;
    /// Find out whether it runs here, within `ctx.timeout`.
    fn probe<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, Probe>;
    /// Stop it as fast as possible, because this node lost quorum and
    /// someone else may soon take it over: no grace period (a VM is
    /// destroyed, not shut down). By default the same as [`Self::stop`].
    fn force_stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        self.stop(ctx)
    }
}

/// One configured monitor on this node.
pub trait MonitorDriver: Send + Sync + fmt::Debug {
    /// Run one check; resolve within `timeout` (the engine also enforces it
    /// and counts a late check as failed).
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome>;
}
