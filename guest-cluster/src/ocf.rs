//! `kind = "ocf"` resources and `kind = "ocf"` monitors: OCF resource
//! agents run unchanged, as the OCF 1.1 resource-agent API describes them
//! (the agents of Debian's `resource-agents`, or an operator's own).
//!
//! # How an agent runs
//!
//! The agent `provider:type` (`ocf:provider:type` is accepted too) is the
//! program `{ocf_root}/resource.d/{provider}/{type}`, run with the action as
//! its only argument. It runs as `exec` commands do (see [`crate::exec`]):
//! in its own process group, stdin from `/dev/null`, every output line
//! logged, and when its time runs out the whole process group gets
//! `SIGTERM`, then `SIGKILL` after a grace (at once for monitor checks).
//!
//! | action | when |
//! |---|---|
//! | `meta-data` | once, before the first start: the timeouts the agent advertises are compared with the configured ones (a shorter one is logged as a warning) |
//! | `validate-all` | before the first start; a failure there (except "unimplemented") is a hard failure and the start is not attempted |
//! | `start`, `stop` | the resource's start and stop |
//! | `monitor` | probes (`OCF_CHECK_LEVEL=0`, interval 0), and `ocf` monitors (`OCF_CHECK_LEVEL` = their `depth`, interval = theirs) |
//!
//! A start's time (its `start_timeout`) covers all its steps: `meta-data`,
//! `validate-all` and `start` each get what is left of it.
//!
//! # Environment
//!
//! The daemon's environment (as for `exec`), then:
//!
//! | variable | value |
//! |---|---|
//! | `OCF_RESKEY_<name>` | each of the resource's `params` |
//! | `OCF_ROOT` | the resource's `ocf_root` |
//! | `OCF_RA_VERSION_MAJOR`, `OCF_RA_VERSION_MINOR` | `1`, `1` |
//! | `OCF_RESOURCE_INSTANCE` | the resource's name |
//! | `OCF_RESOURCE_TYPE`, `OCF_RESOURCE_PROVIDER` | from `agent` |
//! | `OCF_RESKEY_CRM_meta_timeout` | the time this action has, in milliseconds |
//! | `OCF_RESKEY_CRM_meta_interval` | the monitor's interval in milliseconds; `0` for probes and other actions (so `ocf_is_probe` works) |
//! | `OCF_RESKEY_CRM_meta_on_node` | this node |
//! | `OCF_CHECK_LEVEL` | monitors only: `0` for probes, the monitor's `depth` |
//! | `HA_RSCTMP` | this node's directory for agents' run-time state (see [`RscTmp`]) |
//! | `__OCF_ACTION` | the action |
//!
//! # Results (as Pacemaker's scheduler reads them)
//!
//! Start and stop: `0` is done (`7`, not running, too for a stop); `1`
//! (generic error) and any other code is a soft failure; `2` (invalid
//! arguments), `3` (unimplemented), `4` (insufficient privileges), `5` (not
//! installed) and `6` (not configured, fatal for Pacemaker) are hard
//! failures, as is an agent that cannot be run at all. Running out of time
//! is `TimedOut`. A stop that the agent cannot carry out (it is missing, or
//! answers 2-6) counts as done only if this driver never started the
//! resource and never saw it running: a resource whose agent or
//! configuration is broken from the start is no reason to fence the node.
//!
//! Probes: `0` running, `8` running (promoted), `190`/`191` running
//! (degraded, logged), `7` stopped; `1`, `9` (failed promoted) and codes
//! outside OCF are failed; `2`-`6` (the agent could not check), a missing
//! agent, a signal, or running out of time are unknown, never stopped.
//!
//! `ocf` monitors: `0` (and `190`/`191`, degraded, logged) is healthy,
//! anything else failed, with the code's OCF meaning and the agent's exit
//! reason in the message.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster_core::resource::{
    ActionContext, ActionOutcome, BoxFuture, CheckOutcome, MonitorDriver, Probe, ResourceDriver,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

use crate::exec::{self, Ended, Finished, Labels, Spec};

/// OCF exit codes (OCF 1.1, "Return codes").
pub mod code {
    /// `OCF_SUCCESS`.
    pub const SUCCESS: i32 = 0;
    /// `OCF_ERR_GENERIC`.
    pub const ERR_GENERIC: i32 = 1;
    /// `OCF_ERR_ARGS`.
    pub const ERR_ARGS: i32 = 2;
    /// `OCF_ERR_UNIMPLEMENTED`.
    pub const ERR_UNIMPLEMENTED: i32 = 3;
    /// `OCF_ERR_PERM`.
    pub const ERR_PERM: i32 = 4;
    /// `OCF_ERR_INSTALLED`.
    pub const ERR_INSTALLED: i32 = 5;
    /// `OCF_ERR_CONFIGURED`.
    pub const ERR_CONFIGURED: i32 = 6;
    /// `OCF_NOT_RUNNING`.
    pub const NOT_RUNNING: i32 = 7;
    /// `OCF_RUNNING_PROMOTED`.
    pub const RUNNING_PROMOTED: i32 = 8;
    /// `OCF_FAILED_PROMOTED`.
    pub const FAILED_PROMOTED: i32 = 9;
    /// `OCF_DEGRADED`.
    pub const DEGRADED: i32 = 190;
    /// `OCF_DEGRADED_PROMOTED`.
    pub const DEGRADED_PROMOTED: i32 = 191;
}

/// What an OCF exit code means, e.g. `not installed (OCF_ERR_INSTALLED)`.
pub fn code_meaning(code: i32) -> &'static str {
    match code {
        code::SUCCESS => "success (OCF_SUCCESS)",
        code::ERR_GENERIC => "generic error (OCF_ERR_GENERIC)",
        code::ERR_ARGS => "invalid arguments (OCF_ERR_ARGS)",
        code::ERR_UNIMPLEMENTED => "unimplemented feature (OCF_ERR_UNIMPLEMENTED)",
        code::ERR_PERM => "insufficient privileges (OCF_ERR_PERM)",
        code::ERR_INSTALLED => "not installed (OCF_ERR_INSTALLED)",
        code::ERR_CONFIGURED => "not configured (OCF_ERR_CONFIGURED)",
        code::NOT_RUNNING => "not running (OCF_NOT_RUNNING)",
        code::RUNNING_PROMOTED => "running promoted (OCF_RUNNING_PROMOTED)",
        code::FAILED_PROMOTED => "failed promoted (OCF_FAILED_PROMOTED)",
        code::DEGRADED => "degraded (OCF_DEGRADED)",
        code::DEGRADED_PROMOTED => "degraded promoted (OCF_DEGRADED_PROMOTED)",
        _ => "not an OCF exit code",
    }
}

/// The codes that make a start or stop failure hard: retrying on this node
/// cannot help.
fn is_hard(code: i32) -> bool {
    (code::ERR_ARGS..=code::ERR_CONFIGURED).contains(&code)
}

/// What `ocf_exit_reason` prefixes its line with.
const EXIT_REASON_PREFIX: &str = "ocf-exit-reason:";
/// Longest time the `meta-data` action may take (less if the start has
/// less time left).
const META_DATA_LIMIT: Duration = Duration::from_secs(5);
/// Most bytes of `meta-data` output read.
const META_DATA_MAX: u64 = 1 << 20;
/// How long a killed `meta-data` action may take to be reaped.
const REAP_LIMIT: Duration = Duration::from_secs(2);
/// The file in [`RscTmp`] that holds the boot it was last used in.
const BOOT_MARKER: &str = ".kvmha-boot-id";
/// Where the kernel tells the current boot's id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The actions this module runs, and those [`OcfDriver::run_action`] lets
/// a caller run (as OCF 1.1 names them).
const ACTIONS: &[&str] = &[
    "start",
    "stop",
    "monitor",
    "validate-all",
    "meta-data",
    "notify",
    "promote",
    "demote",
    "migrate_to",
    "migrate_from",
    "reload",
    "reload-agent",
    "recover",
    "status",
];

/// Whether `action` is one of the OCF actions [`OcfDriver::run_action`]
/// runs.
pub fn is_action(action: &str) -> bool {
    ACTIONS.contains(&action)
}

/// A configuration this driver cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// `agent` is not `provider:type`.
    #[error(
        "agent `{0}` is not `provider:type` (e.g. `heartbeat:IPaddr2`; no `/`, no `.` or `..` parts)"
    )]
    BadName(String),
    /// A parameter name that cannot be an environment variable's.
    #[error("parameter `{0}` cannot be passed as OCF_RESKEY_{0} (letters, digits and `_` only)")]
    BadParam(String),
    /// The `meta-data` action did not give its XML.
    #[error("cannot read the meta-data of {path}: {message}")]
    MetaData {
        /// The agent.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The per-node directory agents keep run-time state in (`HA_RSCTMP`):
/// `Dummy` keeps its "running" flag there, other agents their lock and
/// pid files. Pacemaker uses `/run/resource-agents`; here each node needs
/// its own (simulated nodes share one machine), under the node's state
/// directory.
///
/// The directory lives on as long as the daemon's state directory, so it
/// is emptied when the machine has rebooted since it was last used (the
/// kernel's boot id, recorded in it, changed): a flag left from before a
/// reboot must not make a probe find a resource running. A daemon that
/// merely restarts keeps it.
#[derive(Debug)]
pub struct RscTmp {
    dir: PathBuf,
    /// Whether it was prepared in this process.
    ready: Mutex<bool>,
}

/// Why [`RscTmp`] could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RscTmpError {
    /// The directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Something in it cannot be removed after a reboot.
    #[error("cannot clear {path} after a reboot: {source}")]
    Clear {
        /// What could not be removed.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The boot marker cannot be written.
    #[error("cannot write {path}: {source}")]
    Mark {
        /// The marker.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl RscTmp {
    /// The directory `dir` (created when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ready: Mutex::new(false),
        }
    }

    /// The directory of the node whose state directory is `state_dir`:
    /// `{state_dir}/rsctmp`.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(state_dir.join("rsctmp"))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Create the directory, and empty it if the machine rebooted since it
    /// was last used. Done once per process; a failure is logged and tried
    /// again on the next action (the agent will say what it misses).
    fn prepare(&self) {
        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        if *ready {
            return;
        }
        match self.prepare_now() {
            Ok(()) => *ready = true,
            Err(e) => tracing::error!(error = %e, "HA_RSCTMP for OCF agents is not usable"),
        }
    }

    fn prepare_now(&self) -> Result<(), RscTmpError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| RscTmpError::Create {
            path: self.dir.clone(),
            source,
        })?;
        let Ok(boot) = std::fs::read_to_string(BOOT_ID) else {
            tracing::warn!(
                path = %self.dir.display(),
                "cannot read the boot id: HA_RSCTMP is not cleared after reboots",
            );
            return Ok(());
        };
        let boot = boot.trim();
        let marker = self.dir.join(BOOT_MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(last) if last.trim() == boot => return Ok(()),
            Ok(last) => {
                tracing::info!(
                    path = %self.dir.display(),
                    last_boot = last.trim(),
                    "the machine rebooted: clearing the agents' run-time state",
                );
                self.clear()?;
            }
            // First use (or a directory from before markers): nothing
            // tells it is stale, so it is kept.
            Err(_) => {}
        }
        std::fs::write(&marker, format!("{boot}\n")).map_err(|source| RscTmpError::Mark {
            path: marker,
            source,
        })
    }

    fn clear(&self) -> Result<(), RscTmpError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| RscTmpError::Clear {
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            if entry.file_name() == BOOT_MARKER {
                continue;
            }
            let path = entry.path();
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            removed.map_err(|source| RscTmpError::Clear { path, source })?;
        }
        Ok(())
    }
}

/// An agent and the resource's parameters.
#[derive(Clone, Debug)]
struct Agent {
    provider: String,
    kind: String,
    path: PathBuf,
    root: PathBuf,
    /// `(OCF_RESKEY_<name>, value)`.
    params: Vec<(String, String)>,
}

impl Agent {
    fn new(config: &conf::OcfResource) -> Result<Self, AgentError> {
        let (provider, kind) = parse_agent(&config.agent)?;
        let params = config
            .params
            .iter()
            .map(|(name, value)| {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if valid {
                    Ok((format!("OCF_RESKEY_{name}"), value.clone()))
                } else {
                    Err(AgentError::BadParam(name.clone()))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path: config
                .ocf_root
                .join("resource.d")
                .join(&provider)
                .join(&kind),
            provider,
            kind,
            root: config.ocf_root.clone(),
            params,
        })
    }

    /// The environment of one call (over the daemon's).
    fn env(&self, call: &Call<'_>, rsctmp: &Path) -> Vec<(String, String)> {
        let mut env = self.params.clone();
        let contract = [
            ("OCF_ROOT", self.root.display().to_string()),
            ("OCF_RA_VERSION_MAJOR", "1".to_owned()),
            ("OCF_RA_VERSION_MINOR", "1".to_owned()),
            ("OCF_RESOURCE_INSTANCE", call.instance.to_owned()),
            ("OCF_RESOURCE_TYPE", self.kind.clone()),
            ("OCF_RESOURCE_PROVIDER", self.provider.clone()),
            (
                "OCF_RESKEY_CRM_meta_timeout",
                call.timeout.as_millis().to_string(),
            ),
            (
                "OCF_RESKEY_CRM_meta_interval",
                call.interval.as_millis().to_string(),
            ),
            ("OCF_RESKEY_CRM_meta_on_node", call.node.to_owned()),
            ("HA_RSCTMP", rsctmp.display().to_string()),
            ("__OCF_ACTION", call.action.to_owned()),
        ];
        env.extend(contract.into_iter().map(|(k, v)| (k.to_owned(), v)));
        if let Some(level) = call.check_level {
            env.push(("OCF_CHECK_LEVEL".to_owned(), level.to_string()));
        }
        env
    }

    /// Run one action to its end or its timeout.
    async fn run(&self, rsctmp: &RscTmp, call: Call<'_>) -> AgentExit {
        rsctmp.prepare();
        let argv = [self.path.display().to_string(), call.action.to_owned()];
        tracing::debug!(
            group = %call.group,
            resource = %call.instance,
            agent = %self.path.display(),
            action = call.action,
            timeout = ?call.timeout,
            "running an OCF action",
        );
        let finished = exec::run(Spec {
            argv: &argv,
            env: self.env(&call, rsctmp.path()),
            working_dir: None,
            timeout: call.timeout,
            grace: call.grace,
            labels: Arc::new(Labels {
                group: call.group.to_owned(),
                resource: call.label.to_owned(),
                action: call.action,
            }),
        })
        .await;
        AgentExit::from_finished(&self.path, finished, call.timeout)
    }

    /// The agent's `meta-data` XML.
    async fn meta_data(&self, rsctmp: &Path, timeout: Duration) -> Result<String, AgentError> {
        let failed = |message: String| AgentError::MetaData {
            path: self.path.clone(),
            message,
        };
        let mut child = Command::new(&self.path)
            .arg("meta-data")
            .env("OCF_ROOT", &self.root)
            .env("OCF_RA_VERSION_MAJOR", "1")
            .env("OCF_RA_VERSION_MINOR", "1")
            .env("OCF_RESOURCE_TYPE", &self.kind)
            .env("OCF_RESOURCE_PROVIDER", &self.provider)
            .env("HA_RSCTMP", rsctmp)
            .env("__OCF_ACTION", "meta-data")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let stdout = child.stdout.take();
        let read = tokio::time::timeout(timeout, async {
            let mut text = Vec::new();
            if let Some(out) = stdout {
                out.take(META_DATA_MAX).read_to_end(&mut text).await?;
            }
            let status = child.wait().await?;
            Ok::<_, io::Error>((status, text))
        })
        .await;
        match read {
            Ok(Ok((status, text))) if status.success() => {
                String::from_utf8(text).map_err(|_| failed("the output is not UTF-8".into()))
            }
            Ok(Ok((status, _))) => Err(failed(status.to_string())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => {
                if let Some(pgid) = pgid {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                let _ = tokio::time::timeout(REAP_LIMIT, child.wait()).await;
                Err(failed(format!("timed out after {timeout:?}")))
            }
        }
    }
}

/// `provider:type` or `ocf:provider:type`.
fn parse_agent(agent: &str) -> Result<(String, String), AgentError> {
    let parts: Vec<&str> = agent.split(':').collect();
    let (provider, kind) = match parts.as_slice() {
        [provider, kind] | ["ocf", provider, kind] => (*provider, *kind),
        _ => return Err(AgentError::BadName(agent.to_owned())),
    };
    let valid =
        |part: &str| !part.is_empty() && part != "." && part != ".." && !part.contains(['/', '\0']);
    if valid(provider) && valid(kind) {
        Ok((provider.to_owned(), kind.to_owned()))
    } else {
        Err(AgentError::BadName(agent.to_owned()))
    }
}

/// One action to run.
#[derive(Clone, Copy, Debug)]
struct Call<'a> {
    action: &'static str,
    /// `OCF_RESOURCE_INSTANCE`: the resource.
    instance: &'a str,
    group: &'a str,
    node: &'a str,
    /// What the output is logged under: the resource, or the monitor.
    label: &'a str,
    timeout: Duration,
    grace: Duration,
    interval: Duration,
    check_level: Option<u32>,
}

impl<'a> Call<'a> {
    /// `action` for the resource of `ctx`, taking `timeout`.
    fn for_ctx(ctx: &'a ActionContext, action: &'static str, timeout: Duration) -> Self {
        Self {
            action,
            instance: &ctx.resource,
            group: &ctx.group,
            node: &ctx.node,
            label: &ctx.resource,
            timeout,
            grace: exec::grace_for(timeout),
            interval: Duration::ZERO,
            check_level: None,
        }
    }
}

/// How one agent action ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// The agent exited with `code`.
    Exited {
        /// The exit code.
        code: i32,
        /// Its exit reason (`ocf_exit_reason`), or else the last line it
        /// wrote to stderr.
        reason: Option<String>,
    },
    /// It was killed by a signal (not by us).
    Killed(String),
    /// It ran out of time; its process group was killed.
    TimedOut(Duration),
    /// It could not be run.
    CannotRun {
        /// Why.
        message: String,
        /// The agent (or the configuration naming it) is missing or
        /// broken: retrying here cannot help.
        hard: bool,
        /// The agent does not exist.
        missing: bool,
    },
}

impl AgentExit {
    fn from_finished(path: &Path, finished: Finished, timeout: Duration) -> Self {
        let reason = finished.last_stderr.map(|line| {
            line.strip_prefix(EXIT_REASON_PREFIX)
                .map_or(line.clone(), |r| r.trim().to_owned())
        });
        match finished.ended {
            Ended::Exited(status) => match status.code() {
                Some(code) => Self::Exited { code, reason },
                None => Self::Killed(exec::describe(status, reason.as_deref())),
            },
            Ended::Spawn(e) => Self::CannotRun {
                message: format!("cannot run {}: {e}", path.display()),
                hard: exec::spawn_error_is_hard(&e),
                missing: e.kind() == io::ErrorKind::NotFound,
            },
            Ended::Wait(e) => Self::CannotRun {
                message: format!("cannot wait for {}: {e}", path.display()),
                hard: false,
                missing: false,
            },
            Ended::TimedOut => Self::TimedOut(timeout),
        }
    }

    /// The exit code, if the agent exited.
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Exited { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// `exit 5, not installed (OCF_ERR_INSTALLED): reason`, or how else
    /// it ended.
    pub fn describe(&self) -> String {
        match self {
            Self::Exited { code, reason } => {
                let what = format!("exit {code}, {}", code_meaning(*code));
                match reason {
                    Some(reason) => format!("{what}: {reason}"),
                    None => what,
                }
            }
            Self::Killed(what) => what.clone(),
            Self::TimedOut(timeout) => format!("timed out after {timeout:?}"),
            Self::CannotRun { message, .. } => message.clone(),
        }
    }
}

/// A start or stop's outcome.
fn action_outcome(action: &str, exit: &AgentExit) -> ActionOutcome {
    match exit {
        AgentExit::Exited {
            code: code::SUCCESS,
            ..
        } => ActionOutcome::Ok,
        AgentExit::Exited {
            code: code::NOT_RUNNING,
            ..
        } if action == "stop" => ActionOutcome::Ok,
        AgentExit::Exited { code, .. } => ActionOutcome::Failed {
            message: format!("{action}: {}", exit.describe()),
            hard: is_hard(*code),
        },
        AgentExit::Killed(_) => ActionOutcome::Failed {
            message: format!("{action}: {}", exit.describe()),
            hard: false,
        },
        AgentExit::TimedOut(_) => ActionOutcome::TimedOut,
        AgentExit::CannotRun { message, hard, .. } => ActionOutcome::Failed {
            message: format!("{action}: {message}"),
            hard: *hard,
        },
    }
}

/// A probe's finding from its `monitor` action.
fn probe_outcome(exit: &AgentExit) -> Probe {
    match exit {
        AgentExit::Exited { code, .. } => match *code {
            code::SUCCESS | code::RUNNING_PROMOTED => Probe::Running,
            code::DEGRADED | code::DEGRADED_PROMOTED => {
                tracing::warn!(
                    "the agent reports the resource degraded: {}",
                    exit.describe()
                );
                Probe::Running
            }
            code::NOT_RUNNING => Probe::Stopped,
            code::ERR_ARGS..=code::ERR_CONFIGURED => Probe::Unknown(exit.describe()),
            _ => Probe::Failed(exit.describe()),
        },
        AgentExit::Killed(_) | AgentExit::TimedOut(_) | AgentExit::CannotRun { .. } => {
            Probe::Unknown(exit.describe())
        }
    }
}

/// A monitor check's outcome from the `monitor` action.
fn check_outcome(exit: &AgentExit) -> CheckOutcome {
    match exit.code() {
        Some(code::SUCCESS) => CheckOutcome::Ok,
        Some(code::DEGRADED | code::DEGRADED_PROMOTED) => {
            tracing::warn!(
                "the agent reports the resource degraded: {}",
                exit.describe()
            );
            CheckOutcome::Ok
        }
        _ => CheckOutcome::Failed(exit.describe()),
    }
}

/// Driver of one `kind = "ocf"` resource.
#[derive(Debug)]
pub struct OcfDriver {
    agent: Result<Agent, AgentError>,
    rsctmp: Arc<RscTmp>,
    /// `validate-all` passed (or is not implemented).
    validated: AtomicBool,
    /// `meta-data` was read (or tried).
    meta_data_read: AtomicBool,
    /// The timeouts the agent advertises, per action.
    advertised: Mutex<BTreeMap<String, Duration>>,
    /// This driver started the resource, or a probe found it running, and
    /// no stop or probe since said it stopped.
    may_run: AtomicBool,
}

impl OcfDriver {
    /// A driver for `config` (as this node runs it), its agents keeping
    /// their run-time state in `rsctmp` (one per node, shared by the
    /// node's OCF resources).
    pub fn new(config: &conf::OcfResource, rsctmp: Arc<RscTmp>) -> Self {
        Self {
            agent: Agent::new(config),
            rsctmp,
            validated: AtomicBool::new(false),
            meta_data_read: AtomicBool::new(false),
            advertised: Mutex::new(BTreeMap::new()),
            may_run: AtomicBool::new(false),
        }
    }

    /// The agent's program, if the configuration names one.
    pub fn agent_path(&self) -> Result<&Path, &AgentError> {
        self.agent.as_ref().map(|a| a.path.as_path())
    }

    /// The agent's `meta-data` XML, read within `timeout`.
    pub async fn meta_data(&self, timeout: Duration) -> Result<String, AgentError> {
        let agent = self.agent.as_ref().map_err(Clone::clone)?;
        agent.meta_data(self.rsctmp.path(), timeout).await
    }

    /// Run any OCF `action` for `ctx` as this driver runs its own, and say
    /// how it ended (for tools; the engine uses start, stop and probe).
    pub async fn run_action(&self, ctx: &ActionContext, action: &str) -> AgentExit {
        let agent = match &self.agent {
            Ok(agent) => agent,
            Err(e) => return config_error(e),
        };
        let Some(action) = ACTIONS.iter().copied().find(|a| *a == action) else {
            return AgentExit::CannotRun {
                message: format!("`{action}` is not an OCF action"),
                hard: true,
                missing: false,
            };
        };
        let mut call = Call::for_ctx(ctx, action, ctx.timeout);
        if action == "monitor" {
            call.check_level = Some(0);
        }
        agent.run(&self.rsctmp, call).await
    }

    /// Read the advertised timeouts once, within `limit`.
    async fn read_meta_data(&self, agent: &Agent, ctx: &ActionContext, limit: Duration) {
        if self.meta_data_read.swap(true, Ordering::SeqCst) {
            return;
        }
        match agent.meta_data(self.rsctmp.path(), limit).await {
            Ok(xml) => {
                let advertised = advertised_timeouts(&xml);
                tracing::debug!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    ?advertised,
                    "read the agent's meta-data",
                );
                *self
                    .advertised
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = advertised;
            }
            Err(e) => tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                error = %e,
                "cannot learn the agent's advertised timeouts",
            ),
        }
    }

    /// Warn if `action` gets less time than the agent asks for.
    fn check_timeout(&self, ctx: &ActionContext, action: &str) {
        let advertised = self
            .advertised
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(action)
            .copied();
        if let Some(advertised) = advertised
            && ctx.timeout < advertised
        {
            tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                action,
                configured = ?ctx.timeout,
                advertised = ?advertised,
                "the {action} timeout is shorter than the agent's advertised default",
            );
        }
    }

    async fn start_now(&self, ctx: &ActionContext) -> ActionOutcome {
        let agent = match &self.agent {
            Ok(agent) => agent,
            Err(e) => {
                return ActionOutcome::Failed {
                    message: e.to_string(),
                    hard: true,
                };
            }
        };
        let deadline = Instant::now() + ctx.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());

        self.read_meta_data(agent, ctx, META_DATA_LIMIT.min(left() / 4))
            .await;
        self.check_timeout(ctx, "start");

        if !self.validated.load(Ordering::SeqCst) {
            let exit = agent
                .run(&self.rsctmp, Call::for_ctx(ctx, "validate-all", left()))
                .await;
            match &exit {
                AgentExit::Exited {
                    code: code::SUCCESS,
                    ..
                } => self.validated.store(true, Ordering::SeqCst),
                AgentExit::Exited {
                    code: code::ERR_UNIMPLEMENTED,
                    ..
                } => {
                    tracing::debug!(
                        group = %ctx.group,
                        resource = %ctx.resource,
                        "the agent does not implement validate-all",
                    );
                    self.validated.store(true, Ordering::SeqCst);
                }
                AgentExit::TimedOut(_) => return ActionOutcome::TimedOut,
                _ => {
                    return ActionOutcome::Failed {
                        message: format!("validate-all: {}", exit.describe()),
                        hard: true,
                    };
                }
            }
        }

        let timeout = left();
        if timeout.is_zero() {
            return ActionOutcome::TimedOut;
        }
        self.may_run.store(true, Ordering::SeqCst);
        let exit = agent
            .run(&self.rsctmp, Call::for_ctx(ctx, "start", timeout))
            .await;
        action_outcome("start", &exit)
    }

    async fn stop_now(&self, ctx: &ActionContext) -> ActionOutcome {
        let agent = match &self.agent {
            Ok(agent) => agent,
            // Nothing can have been started with this configuration.
            Err(e) => {
                tracing::warn!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    error = %e,
                    "nothing to stop: the configuration cannot run the agent",
                );
                return ActionOutcome::Ok;
            }
        };
        self.check_timeout(ctx, "stop");
        let exit = agent
            .run(&self.rsctmp, Call::for_ctx(ctx, "stop", ctx.timeout))
            .await;
        let outcome = action_outcome("stop", &exit);
        let unable = match &exit {
            AgentExit::Exited { code, .. } => is_hard(*code),
            AgentExit::CannotRun { missing, .. } => *missing,
            _ => false,
        };
        match outcome {
            ActionOutcome::Ok => {
                self.may_run.store(false, Ordering::SeqCst);
                ActionOutcome::Ok
            }
            ActionOutcome::Failed { message, .. }
                if unable && !self.may_run.load(Ordering::SeqCst) =>
            {
                tracing::warn!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    "the agent cannot stop the resource ({message}), but it was never started \
                     here nor found running: treated as stopped",
                );
                ActionOutcome::Ok
            }
            other => other,
        }
    }

    async fn probe_now(&self, ctx: &ActionContext) -> Probe {
        let agent = match &self.agent {
            Ok(agent) => agent,
            Err(e) => return Probe::Unknown(e.to_string()),
        };
        let mut call = Call::for_ctx(ctx, "monitor", ctx.timeout);
        call.check_level = Some(0);
        let exit = agent.run(&self.rsctmp, call).await;
        let probe = probe_outcome(&exit);
        match &probe {
            Probe::Running | Probe::Failed(_) => self.may_run.store(true, Ordering::SeqCst),
            Probe::Stopped => self.may_run.store(false, Ordering::SeqCst),
            Probe::Unknown(_) => {}
        }
        probe
    }
}

fn config_error(e: &AgentError) -> AgentExit {
    AgentExit::CannotRun {
        message: e.to_string(),
        hard: true,
        missing: false,
    }
}

/// Log how a start or stop ended.
fn log_outcome(ctx: &ActionContext, action: &str, outcome: &ActionOutcome) {
    match outcome {
        ActionOutcome::Ok => tracing::info!(
            group = %ctx.group,
            resource = %ctx.resource,
            action,
            "the agent's {action} succeeded",
        ),
        ActionOutcome::Failed { message, hard } => tracing::warn!(
            group = %ctx.group,
            resource = %ctx.resource,
            action,
            hard,
            "the agent's {action} failed: {message}",
        ),
        ActionOutcome::TimedOut => tracing::warn!(
            group = %ctx.group,
            resource = %ctx.resource,
            action,
            "the agent's {action} timed out after {:?}",
            ctx.timeout,
        ),
    }
}

impl ResourceDriver for OcfDriver {
    fn start<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            tracing::info!(
                group = %ctx.group,
                resource = %ctx.resource,
                reason = %ctx.reason,
                agent = ?self.agent_path().ok(),
                "starting the OCF resource",
            );
            let outcome = self.start_now(ctx).await;
            log_outcome(ctx, "start", &outcome);
            outcome
        })
    }

    fn stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            tracing::info!(
                group = %ctx.group,
                resource = %ctx.resource,
                agent = ?self.agent_path().ok(),
                "stopping the OCF resource",
            );
            let outcome = self.stop_now(ctx).await;
            log_outcome(ctx, "stop", &outcome);
            outcome
        })
    }

    fn probe<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, Probe> {
        Box::pin(self.probe_now(ctx))
    }
}

/// Driver of one `kind = "ocf"` monitor: the `monitor` action of the
/// group's `ocf` resource, at the monitor's depth.
#[derive(Debug)]
pub struct OcfMonitor {
    agent: Result<Agent, String>,
    rsctmp: Arc<RscTmp>,
    group: String,
    monitor: String,
    /// The resource checked (`OCF_RESOURCE_INSTANCE`).
    resource: String,
    node: String,
    depth: u32,
    interval: Duration,
}

impl OcfMonitor {
    /// A driver for the monitor `monitor` of `group` on `node`, checking
    /// `resource` (its name and configuration as this node runs it; `None`
    /// if the group has no `ocf` resource to check, and every check fails
    /// saying so).
    pub fn new(
        group: &str,
        node: &str,
        monitor: &conf::Monitor,
        depth: u32,
        resource: Option<(&str, &conf::OcfResource)>,
        rsctmp: Arc<RscTmp>,
    ) -> Self {
        let (name, agent) = match resource {
            Some((name, config)) => (
                name.to_owned(),
                Agent::new(config).map_err(|e| e.to_string()),
            ),
            None => (
                String::new(),
                Err(format!(
                    "the `ocf` monitor `{}` has no `ocf` resource to check in group `{group}`",
                    monitor.name
                )),
            ),
        };
        Self {
            agent,
            rsctmp,
            group: group.to_owned(),
            monitor: monitor.name.clone(),
            resource: name,
            node: node.to_owned(),
            depth,
            interval: monitor.interval.into(),
        }
    }
}

impl MonitorDriver for OcfMonitor {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let agent = match &self.agent {
                Ok(agent) => agent,
                Err(e) => return CheckOutcome::Failed(e.clone()),
            };
            let call = Call {
                action: "monitor",
                instance: &self.resource,
                group: &self.group,
                node: &self.node,
                label: &self.monitor,
                timeout,
                grace: Duration::ZERO,
                interval: self.interval,
                check_level: Some(self.depth),
            };
            let exit = agent.run(&self.rsctmp, call).await;
            check_outcome(&exit)
        })
    }
}

/// The timeouts a `meta-data` document advertises per action
/// (`<action name="start" timeout="20s"/>`); what cannot be read is left
/// out.
fn advertised_timeouts(xml: &str) -> BTreeMap<String, Duration> {
    let mut found = BTreeMap::new();
    let mut rest = xml;
    while let Some(at) = rest.find("<action") {
        rest = &rest[at + "<action".len()..];
        // `<actions>` is the list, not an action.
        if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let tag = rest.split('>').next().unwrap_or_default();
        if let (Some(name), Some(timeout)) = (attribute(tag, "name"), attribute(tag, "timeout"))
            && let Some(timeout) = parse_ocf_duration(timeout)
        {
            found.entry(name.to_owned()).or_insert(timeout);
        }
    }
    found
}

/// The value of `name="..."` (or `'...'`) in a tag's text.
fn attribute<'t>(tag: &'t str, name: &str) -> Option<&'t str> {
    let mut rest = tag;
    loop {
        let at = rest.find(name)?;
        let before = rest[..at].chars().next_back();
        rest = &rest[at + name.len()..];
        if !before.is_some_and(|c| c.is_ascii_whitespace()) {
            continue;
        }
        let value = rest.trim_start().strip_prefix('=')?.trim_start();
        let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'')?;
        let value = &value[1..];
        return value.find(quote).map(|end| &value[..end]);
    }
}

/// A duration as agents write them: `20`, `20s`, `100ms`, `2m`, `2min`,
/// `1h` (a bare number is seconds).
fn parse_ocf_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let value: u64 = text[..digits].parse().ok()?;
    let millis = match text[digits..].trim() {
        "" | "s" | "sec" => value.checked_mul(1000)?,
        "ms" | "msec" => value,
        "m" | "min" => value.checked_mul(60_000)?,
        "h" | "hr" => value.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests;
