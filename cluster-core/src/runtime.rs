//! Drives a [`NodeCore`] with the real world: membership snapshots and the
//! guard's decisions in, resource and monitor drivers out, durable state
//! on disk, events in the log, and this node's view out in its heartbeats.
//!
//! One task owns the core. It steps it on every membership or guard change
//! and at least every [`TICK`]; driver calls run as separate tasks and
//! report back over a channel, so a slow stop never delays a decision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::events::{EventLog, now_ms};
use crate::guard::{GuardState, LocalGroups, Takeover};
use crate::membership::{Liveness, Snapshot, wire};
use crate::node::{
    ClusterInput, Effect, LocalState, NodeCore, Op, OpResult, Published, ResourceOp, STATE_VERSION,
};
use crate::placement::{GroupId, RunState};
use crate::resource::{
    ActionContext, ActionOutcome, CheckOutcome, MonitorDriver, Probe, ResourceDriver, StartReason,
};

/// Longest time between two steps of the core.
pub const TICK: Duration = Duration::from_millis(50);

/// Extra time the runtime allows a driver beyond the action's own timeout
/// before it gives up on it (the driver should have given up first).
const DRIVER_GRACE: Duration = Duration::from_secs(5);

/// The file the core's durable state lives in.
pub const STATE_FILE: &str = "engine-state.json";

/// The drivers of every configured resource and monitor, in configuration
/// order.
#[derive(Debug, Default)]
pub struct Drivers {
    /// Per group, per resource.
    pub resources: Vec<Vec<Arc<dyn ResourceDriver>>>,
    /// Per group, per monitor.
    pub monitors: Vec<Vec<Arc<dyn MonitorDriver>>>,
    /// Fence devices the daemon drives itself, for `[[fencing]]` entries
    /// of a kind the engine does not build (`host`: through the linkage).
    /// The engine takes them out when it starts.
    pub fence: Vec<Box<dyn crate::fence::Device>>,
}

/// What the runtime shows of the core, for status.
#[derive(Clone, Debug, Default)]
pub struct CoreStatus {
    /// The newest placement.
    pub published: Option<Published>,
    /// Per group: its state here (`None`: stopped).
    pub here: Vec<Option<RunState>>,
    /// Per group: restarts here within the window.
    pub restarts: Vec<usize>,
    /// Per group: the placement reason in words.
    pub reasons: Vec<Option<String>>,
    /// Per group: nodes that report it in some state, with that state.
    pub elsewhere: Vec<Vec<(String, RunState)>>,
    /// This node coordinates.
    pub coordinator: bool,
    /// Every group has been probed.
    pub settled: bool,
    /// This node is in maintenance.
    pub maintenance: bool,
    /// Groups that may be active here (for force-stopping).
    pub active: Vec<GroupId>,
}

enum Command {
    Request {
        group: GroupId,
        op: Op,
        reply: oneshot::Sender<u64>,
    },
    Maintenance(bool),
    ForgetAll,
    Shutdown,
}

enum Done {
    Resource {
        group: GroupId,
        resource: usize,
        op: ResourceOp,
        result: OpResult,
    },
    Check {
        group: GroupId,
        monitor: usize,
        outcome: CheckOutcome,
    },
}

/// A handle on the running core.
#[derive(Debug, Clone)]
pub struct Runtime {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<CoreStatus>,
    stop: Arc<Notify>,
    names: Arc<Vec<String>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The state file exists but cannot be used.
    #[error("state file {path}: {why}")]
    State {
        /// File.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Read the durable state of a previous run (or start afresh).
pub fn load_state(state_dir: &Path) -> Result<LocalState, RuntimeError> {
    let path = state_dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LocalState::default()),
        Err(e) => {
            return Err(RuntimeError::State {
                path,
                why: e.to_string(),
            });
        }
    };
    let state: LocalState = serde_json::from_str(&text).map_err(|e| RuntimeError::State {
        path: path.clone(),
        why: format!("unreadable ({e}); move it away to start afresh"),
    })?;
    if state.version != STATE_VERSION {
        return Err(RuntimeError::State {
            path,
            why: format!(
                "format version {} (this daemon reads {STATE_VERSION})",
                state.version
            ),
        });
    }
    Ok(state)
}

/// Everything the runtime is built from.
#[derive(Debug)]
pub struct RuntimeParts {
    /// The configuration.
    pub config: Arc<conf::Config>,
    /// This node's index.
    pub me: usize,
    /// The configuration generation (hash of the file).
    pub generation: u64,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The durable state to resume from.
    pub state: LocalState,
    /// The event log.
    pub events: Arc<EventLog>,
    /// Membership snapshots.
    pub membership: watch::Receiver<Snapshot>,
    /// The guard's decisions.
    pub guard: watch::Receiver<GuardState>,
    /// This node's heartbeat view.
    pub view: watch::Sender<wire::View>,
    /// The drivers.
    pub drivers: Arc<Drivers>,
}

impl Runtime {
    /// Start the core's task.
    pub fn spawn(parts: RuntimeParts) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let names: Arc<Vec<String>> =
            Arc::new(parts.config.nodes.iter().map(|n| n.name.clone()).collect());
        let (status_tx, status) = watch::channel(CoreStatus::default());
        let stop = Arc::new(Notify::new());
        tokio::spawn(run(parts, cmd_rx, status_tx, stop.clone()));
        Self {
            commands: cmd_tx,
            status,
            stop,
            names,
        }
    }

    /// Queue an operator request; returns its id once the core has it.
    pub async fn request(&self, group: GroupId, op: Op) -> Option<u64> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request { group, op, reply })
            .ok()?;
        rx.await.ok()
    }

    /// Wait (up to `timeout`) until the newest placement shows request `id`
    /// of this node applied; returns that placement.
    pub async fn applied(&self, me: usize, id: u64, timeout: Duration) -> Option<Published> {
        let mut status = self.status.clone();
        let key = u16::try_from(me).unwrap_or(u16::MAX);
        let wait = async {
            loop {
                if let Some(p) = &status.borrow_and_update().published
                    && p.applied.get(&key).copied().unwrap_or(0) >= id
                {
                    return Some(p.clone());
                }
                if status.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Put this node in or out of maintenance.
    pub fn set_maintenance(&self, on: bool) {
        let _ = self.commands.send(Command::Maintenance(on));
    }

    /// The core's state, for status.
    pub fn status(&self) -> CoreStatus {
        self.status.borrow().clone()
    }

    /// Stop every group here (in reverse order, each resource within its
    /// stop timeout) before the daemon exits; `false` if they were not all
    /// stopped within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        if self.commands.send(Command::Shutdown).is_err() {
            return true;
        }
        tokio::time::timeout(timeout, self.stop.notified())
            .await
            .is_ok()
    }

    /// Resolves when the recovery ladder stopped this daemon (final action
    /// `stop_daemon`) and its groups are stopped.
    pub async fn stopped(&self) {
        self.stop.notified().await;
    }

    /// Node names, in configuration order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

#[allow(clippy::too_many_lines)]
async fn run(
    parts: RuntimeParts,
    mut commands: mpsc::UnboundedReceiver<Command>,
    status_tx: watch::Sender<CoreStatus>,
    stop: Arc<Notify>,
) {
    let RuntimeParts {
        config,
        me,
        generation,
        state_dir,
        state,
        events,
        mut membership,
        mut guard,
        view,
        drivers,
    } = parts;
    let names: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
    let mut core = NodeCore::new(config.clone(), me, generation, state);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stopping = false;
    // The engine's input is rebuilt only when membership or the guard
    // changed: a tick reuses it (it clones every peer's view).
    let mut input = ClusterInput::default();
    let mut input_stale = true;
    loop {
        let mut effects = Vec::new();
        tokio::select! {
            _ = ticker.tick() => {}
            r = membership.changed() => {
                if r.is_err() { return }
                input_stale = true;
            }
            r = guard.changed() => {
                if r.is_err() { return }
                input_stale = true;
            }
            Some(done) = done_rx.recv() => {
                effects = match done {
                    Done::Resource { group, resource, op, result } => core.on_resource(now_ms(), group, resource, op, result),
                    Done::Check { group, monitor, outcome } => core.on_check(now_ms(), group, monitor, outcome),
                };
            }
            Some(cmd) = commands.recv() => match cmd {
                Command::Request { group, op, reply } => {
                    let id = core.request(group, op);
                    let _ = reply.send(id);
                }
                Command::Maintenance(on) => {
                    events.emit("maintenance", json!({"on": on}));
                    core.set_maintenance(on);
                }
                Command::ForgetAll => core.forget_all_running(),
                Command::Shutdown => {
                    events.emit("daemon_stopping", json!({"why": "stop requested"}));
                    core.shutdown();
                    stopping = true;
                }
            },
        }
        if input_stale {
            input = cluster_input(
                &names,
                me,
                generation,
                &membership.borrow_and_update(),
                &guard.borrow_and_update(),
            );
            input_stale = false;
        }
        let epoch = core.published().map(|p| p.epoch);
        // Effects of a completion first (they were decided first).
        effects.extend(core.step(now_ms(), &input));
        if core.published().map(|p| p.epoch) != epoch {
            // A new placement (published here or adopted): act on it now
            // rather than at the next tick.
            effects.extend(core.step(now_ms(), &input));
        }
        for e in effects {
            match e {
                Effect::Persist(state) => persist(&state_dir, &state, &events),
                Effect::Resource {
                    group,
                    resource,
                    op,
                    ctx,
                } => spawn_resource(&drivers, &done_tx, group, resource, op, ctx),
                Effect::Check {
                    group,
                    monitor,
                    timeout,
                } => spawn_check(&drivers, &done_tx, group, monitor, timeout),
                Effect::Event { kind, details } => events.emit(kind, details),
                Effect::FenceSelf { why } => {
                    events.emit("fence_self", json!({"why": why}));
                    tracing::error!(%why, "fencing this node: exiting without disarming the watchdog");
                    // The watchdog (or the peers' fencing, which sees this
                    // node lost) takes it from here.
                    std::process::exit(75);
                }
                Effect::StopDaemon { why } => {
                    events.emit("daemon_stopping", json!({"why": why}));
                    tracing::error!(%why, "stopping the daemon (recovery ladder final action)");
                    core.shutdown();
                    stopping = true;
                }
            }
        }
        if stopping && core.idle() {
            stop.notify_waiters();
            stop.notify_one();
            stopping = false;
        }
        // Tell the peers.
        let engine_view = core.view();
        view.send_if_modified(|v| {
            let epoch = engine_view.published.as_ref().map_or(0, |p| p.epoch);
            let quorate = input.quorate;
            let changed = v.engine.as_ref() != Some(&engine_view)
                || v.epoch != epoch
                || v.quorate != quorate
                || v.maintenance != engine_view.maintenance;
            if changed {
                v.epoch = epoch;
                v.quorate = quorate;
                v.maintenance = engine_view.maintenance;
                v.groups = engine_view
                    .groups
                    .iter()
                    .filter_map(|(g, s)| {
                        Some(wire::GroupView {
                            name: config.groups.get(usize::from(*g))?.name.clone(),
                            state: format!("{s:?}").to_lowercase(),
                        })
                    })
                    .collect();
                v.engine = Some(engine_view.clone());
            }
            changed
        });
        let st = core_status(&core, &names, &input);
        status_tx.send_if_modified(|old| {
            let changed = old.published != st.published
                || old.here != st.here
                || old.restarts != st.restarts
                || old.elsewhere != st.elsewhere
                || old.coordinator != st.coordinator
                || old.settled != st.settled
                || old.maintenance != st.maintenance;
            *old = st;
            changed
        });
    }
}

fn cluster_input(
    names: &[String],
    me: usize,
    generation: u64,
    snap: &Snapshot,
    guard: &GuardState,
) -> ClusterInput {
    let mut alive = BTreeMap::new();
    let mut generations = BTreeMap::new();
    for (i, p) in snap.peers.iter().enumerate() {
        if i == me || p.liveness != Liveness::Alive {
            continue;
        }
        let v = p.view.as_ref();
        alive.insert(i, v.and_then(|v| v.engine.clone()));
        generations.insert(i, v.map_or(generation, |v| v.config_generation));
    }
    let down = guard
        .takeovers
        .iter()
        .filter(|(_, t)| matches!(t, Takeover::Allowed { .. }))
        .filter_map(|(name, _)| names.iter().position(|n| n == name))
        .collect();
    ClusterInput {
        quorate: guard.quorum.as_ref().is_some_and(|q| q.quorate),
        alive,
        down,
        generations,
    }
}

fn core_status(core: &NodeCore, names: &[String], input: &ClusterInput) -> CoreStatus {
    let n = core.topology().groups.len();
    let decisions = core.decisions();
    CoreStatus {
        published: core.published().cloned(),
        here: (0..n).map(|g| core.run_state(g)).collect(),
        restarts: (0..n).map(|g| core.restarts(g)).collect(),
        reasons: decisions
            .into_iter()
            .map(|d| d.map(|(_, why)| why))
            .collect(),
        elsewhere: (0..n)
            .map(|g| {
                let key = u16::try_from(g).unwrap_or(u16::MAX);
                input
                    .alive
                    .iter()
                    .filter_map(|(p, v)| {
                        let s = v.as_ref()?.groups.get(&key)?;
                        Some((names.get(*p)?.clone(), *s))
                    })
                    .collect()
            })
            .collect(),
        coordinator: input.quorate && core.is_coordinator(input),
        settled: core.settled(),
        maintenance: core.state().maintenance,
        active: core
            .state()
            .active
            .iter()
            .map(|g| usize::from(*g))
            .chain((0..n).filter(|g| core.run_state(*g).is_some()))
            .collect(),
    }
}

fn persist(state_dir: &Path, state: &LocalState, events: &EventLog) {
    let path = state_dir.join(STATE_FILE);
    let result = serde_json::to_vec_pretty(state)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::statefile::write_atomic(&path, &bytes));
    if let Err(e) = result {
        // Acting on state that is not recorded could start a group twice
        // after a restart: stop here; peers fence this node and take over.
        events.emit(
            "state_write_failed",
            json!({"path": path.display().to_string(), "error": e.to_string()}),
        );
        tracing::error!(path = %path.display(), error = %e, "cannot write the engine state; exiting");
        std::process::exit(74);
    }
}

fn spawn_resource(
    drivers: &Arc<Drivers>,
    done: &mpsc::UnboundedSender<Done>,
    group: GroupId,
    resource: usize,
    op: ResourceOp,
    ctx: ActionContext,
) {
    let Some(driver) = drivers
        .resources
        .get(group)
        .and_then(|g| g.get(resource))
        .cloned()
    else {
        let result = match op {
            ResourceOp::Probe => OpResult::Probed(Probe::Unknown("no driver".into())),
            _ => OpResult::Done(ActionOutcome::Failed {
                message: "no driver for this resource".into(),
                hard: true,
            }),
        };
        let _ = done.send(Done::Resource {
            group,
            resource,
            op,
            result,
        });
        return;
    };
    let done = done.clone();
    tokio::spawn(async move {
        let limit = ctx.timeout + DRIVER_GRACE;
        let result = match op {
            ResourceOp::Start => OpResult::Done(
                tokio::time::timeout(limit, driver.start(&ctx))
                    .await
                    .unwrap_or(ActionOutcome::TimedOut),
            ),
            ResourceOp::Stop => OpResult::Done(
                tokio::time::timeout(limit, driver.stop(&ctx))
                    .await
                    .unwrap_or(ActionOutcome::TimedOut),
            ),
            ResourceOp::Probe => OpResult::Probed(
                tokio::time::timeout(limit, driver.probe(&ctx))
                    .await
                    .unwrap_or_else(|_| Probe::Unknown("probe timed out".into())),
            ),
        };
        let _ = done.send(Done::Resource {
            group,
            resource,
            op,
            result,
        });
    });
}

fn spawn_check(
    drivers: &Arc<Drivers>,
    done: &mpsc::UnboundedSender<Done>,
    group: GroupId,
    monitor: usize,
    timeout: Duration,
) {
    let driver = drivers
        .monitors
        .get(group)
        .and_then(|g| g.get(monitor))
        .cloned();
    let done = done.clone();
    tokio::spawn(async move {
        let outcome = match driver {
            None => CheckOutcome::Failed("no driver for this monitor".into()),
            Some(d) => tokio::time::timeout(timeout, d.check(timeout))
                .await
                .unwrap_or_else(|_| {
                    CheckOutcome::Failed(format!(
                        "timed out after {}",
                        humantime::format_duration(timeout)
                    ))
                }),
        };
        let _ = done.send(Done::Check {
            group,
            monitor,
            outcome,
        });
    });
}

/// The guard's view of what runs here: on quorum loss it stops every group
/// that may be active here, resource by resource in reverse order, within
/// a bound, and tells the core they are stopped.
#[derive(Debug)]
pub struct RuntimeGroups {
    config: Arc<conf::Config>,
    node: String,
    drivers: Arc<Drivers>,
    runtime: std::sync::OnceLock<Runtime>,
}

impl RuntimeGroups {
    /// For `node`, with the same drivers as the runtime.
    pub fn new(config: Arc<conf::Config>, node: String, drivers: Arc<Drivers>) -> Self {
        Self {
            config,
            node,
            drivers,
            runtime: std::sync::OnceLock::new(),
        }
    }

    /// Connect the runtime once it runs.
    pub fn attach(&self, runtime: Runtime) {
        let _ = self.runtime.set(runtime);
    }
}

/// Force-stopping takes at most this long; then the watchdog is the
/// backstop.
pub const FORCE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl LocalGroups for RuntimeGroups {
    fn force_stop_all(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + '_>> {
        Box::pin(async move {
            let Some(rt) = self.runtime.get() else {
                return 0;
            };
            let mut active = rt.status().active;
            active.sort_unstable();
            active.dedup();
            let stop_all = async {
                let mut stopped = 0;
                for &g in active.iter().rev() {
                    let Some(group) = self.config.groups.get(g) else {
                        continue;
                    };
                    for (r, res) in group.resources.iter().enumerate().rev() {
                        let Some(d) = self.drivers.resources.get(g).and_then(|x| x.get(r)) else {
                            continue;
                        };
                        let ctx = ActionContext {
                            group: group.name.clone(),
                            resource: res.name.clone(),
                            node: self.node.clone(),
                            reason: StartReason::Start,
                            previous_owner: None,
                            previous_owner_fenced: false,
                            timeout: res.stop_timeout.get(),
                        };
                        let outcome = d.force_stop(&ctx).await;
                        if !outcome.is_ok() {
                            tracing::error!(group = %group.name, resource = %res.name, ?outcome, "force-stop failed; the watchdog lease is the backstop");
                        }
                    }
                    stopped += 1;
                }
                stopped
            };
            let stopped = tokio::time::timeout(FORCE_STOP_TIMEOUT, stop_all)
                .await
                .unwrap_or(0);
            let _ = rt.commands.send(Command::ForgetAll);
            stopped
        })
    }
}
