//! `kind = "exec"` resources and `kind = "custom"` monitors: programs run
//! with an argument vector (never through a shell unless the configuration
//! says `sh -c`).
//!
//! # How a command runs
//!
//! - In its own process group, with stdin from `/dev/null`, in the
//!   resource's `working_dir` (or `/`).
//! - Each line it writes is logged: stdout at `info`, stderr at `warn`,
//!   with the fields `group`, `resource` (the monitor's name for monitors)
//!   and `action`. Processes the command leaves running (a daemon started in
//!   the background) keep being logged under the action that started them.
//! - When its time runs out the whole process group gets `SIGTERM`, then,
//!   after a grace of 2 s (half the timeout if that is shorter) or as soon
//!   as no process of the group is left, `SIGKILL`; the command is reaped.
//!   Monitor checks get `SIGKILL` at once. A command that ends in time is
//!   not killed, nor is anything it left running: a start command may leave
//!   its daemon behind.
//!
//! # Environment (a stable contract for scripts)
//!
//! The daemon's environment (without systemd's `NOTIFY_SOCKET`,
//! `WATCHDOG_PID` and `WATCHDOG_USEC`), then the resource's `env` table,
//! then these, which the `env` table cannot override:
//!
//! | variable | value |
//! |---|---|
//! | `KVMHA_ACTION` | `start`, `stop`, `status` (`monitor` for custom monitors) |
//! | `KVMHA_REASON` | why the group runs here: `START`, `FAILOVER`, `RECOVER`, `MOVE` |
//! | `KVMHA_GROUP` | the group |
//! | `KVMHA_RESOURCE` | the resource |
//! | `KVMHA_NODE` | this node |
//! | `KVMHA_PREVIOUS_OWNER` | the node that ran the group before, empty if none |
//! | `KVMHA_PREVIOUS_OWNER_FENCED` | `1` if that node was fenced first, else `0` |
//! | `KVMHA_TIMEOUT_MS` | the action's timeout in milliseconds |
//!
//! Custom monitors see `KVMHA_ACTION=monitor`, `KVMHA_GROUP`,
//! `KVMHA_MONITOR` (the monitor's name), `KVMHA_NODE` and
//! `KVMHA_TIMEOUT_MS`.
//!
//! # Results
//!
//! Start and stop: exit 0 is success; exit 126 or 127, or a program that
//! cannot be run at all (missing, not executable, a missing working
//! directory) is a hard failure (no restart on this node); any other exit
//! is a soft failure whose message has the exit code and the last line of
//! stderr; running out of time is `TimedOut`.
//!
//! Status (the optional `status` command): exit 0 running, 7 stopped (as
//! OCF), any other exit failed; a status command that cannot be run (126,
//! 127, spawn errors), is killed by a signal or runs out of time gives
//! `Unknown`, as does a resource without a status command (the engine then
//! relies on its own record of what it started).
//!
//! Custom monitors: exit 0 healthy, anything else (including running out
//! of time) failed.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster_core::resource::{
    ActionContext, ActionOutcome, BoxFuture, CheckOutcome, MonitorDriver, Probe, ResourceDriver,
};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Longest time between `SIGTERM` and `SIGKILL` after a timeout.
const MAX_GRACE: Duration = Duration::from_secs(2);
/// How often the group is looked at during the grace.
const GRACE_POLL: Duration = Duration::from_millis(20);
/// How long a killed command may take to be reaped before it is left to
/// tokio's background reaper.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// How long the output of an ended command is read before its readers are
/// left running on their own (something it started still holds the pipes).
const DRAIN_LIMIT: Duration = Duration::from_millis(200);
/// Longer output lines are logged in pieces of this many bytes.
const MAX_LINE: usize = 4096;
/// The status exit code for "stopped" (OCF's `OCF_NOT_RUNNING`).
const STATUS_STOPPED: i32 = 7;

/// Driver of one `kind = "exec"` resource.
#[derive(Clone, Debug)]
pub struct ExecDriver {
    config: conf::ExecResource,
}

impl ExecDriver {
    /// A driver for `config` (as this node runs it, overrides applied).
    pub fn new(config: conf::ExecResource) -> Self {
        Self { config }
    }

    /// Run `argv` as `action` for `ctx`.
    async fn run_action(
        &self,
        ctx: &ActionContext,
        action: &'static str,
        argv: &[String],
    ) -> Finished {
        let mut env: Vec<(String, String)> = self
            .config
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let contract = [
            ("KVMHA_ACTION", action.to_owned()),
            ("KVMHA_REASON", ctx.reason.as_str().to_owned()),
            ("KVMHA_GROUP", ctx.group.clone()),
            ("KVMHA_RESOURCE", ctx.resource.clone()),
            ("KVMHA_NODE", ctx.node.clone()),
            (
                "KVMHA_PREVIOUS_OWNER",
                ctx.previous_owner.clone().unwrap_or_default(),
            ),
            (
                "KVMHA_PREVIOUS_OWNER_FENCED",
                if ctx.previous_owner_fenced { "1" } else { "0" }.to_owned(),
            ),
            ("KVMHA_TIMEOUT_MS", ctx.timeout.as_millis().to_string()),
        ];
        env.extend(contract.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let labels = Arc::new(Labels {
            group: ctx.group.clone(),
            resource: ctx.resource.clone(),
            action,
        });
        run(Spec {
            argv,
            env,
            working_dir: self.config.working_dir.as_deref(),
            timeout: ctx.timeout,
            grace: grace_for(ctx.timeout),
            labels,
        })
        .await
    }

    async fn start_or_stop(
        &self,
        ctx: &ActionContext,
        action: &'static str,
        argv: &[String],
    ) -> ActionOutcome {
        tracing::info!(
            group = %ctx.group,
            resource = %ctx.resource,
            action,
            reason = %ctx.reason,
            command = ?argv,
            "running the {action} command",
        );
        let finished = self.run_action(ctx, action, argv).await;
        let outcome = action_outcome(argv, finished);
        match &outcome {
            ActionOutcome::Ok => {}
            ActionOutcome::Failed { message, hard } => tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                action,
                hard,
                "the {action} command failed: {message}",
            ),
            ActionOutcome::TimedOut => tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                action,
                "the {action} command timed out after {:?}",
                ctx.timeout,
            ),
        }
        outcome
    }
}

impl ResourceDriver for ExecDriver {
    fn start<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(self.start_or_stop(ctx, "start", &self.config.start))
    }

    fn stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(self.start_or_stop(ctx, "stop", &self.config.stop))
    }

    fn probe<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            let argv = &self.config.status;
            if argv.is_empty() {
                return Probe::Unknown("no status command".into());
            }
            let finished = self.run_action(ctx, "status", argv).await;
            probe_outcome(argv, finished, ctx.timeout)
        })
    }
}

/// Driver of one `kind = "custom"` monitor.
#[derive(Debug)]
pub struct CustomMonitor {
    command: Vec<String>,
    env: Vec<(String, String)>,
    labels: Arc<Labels>,
}

impl CustomMonitor {
    /// A driver for the custom monitor `monitor` of `group` on `node`.
    pub fn new(group: &str, monitor: &str, node: &str, config: &conf::CustomMonitor) -> Self {
        let env = [
            ("KVMHA_ACTION", "monitor"),
            ("KVMHA_GROUP", group),
            ("KVMHA_MONITOR", monitor),
            ("KVMHA_NODE", node),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            command: config.command.clone(),
            env,
            labels: Arc::new(Labels {
                group: group.to_owned(),
                resource: monitor.to_owned(),
                action: "monitor",
            }),
        }
    }
}

impl MonitorDriver for CustomMonitor {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let mut env = self.env.clone();
            env.push(("KVMHA_TIMEOUT_MS".into(), timeout.as_millis().to_string()));
            let finished = run(Spec {
                argv: &self.command,
                env,
                working_dir: None,
                timeout,
                grace: Duration::ZERO,
                labels: self.labels.clone(),
            })
            .await;
            let last = finished.last_stderr;
            match finished.ended {
                Ended::Exited(status) if status.success() => CheckOutcome::Ok,
                Ended::Exited(status) => CheckOutcome::Failed(describe(status, last.as_deref())),
                Ended::Spawn(e) => CheckOutcome::Failed(cannot_run(&self.command, &e)),
                Ended::Wait(e) => CheckOutcome::Failed(lost(&self.command, &e)),
                Ended::TimedOut => CheckOutcome::Failed(format!("timed out after {timeout:?}")),
            }
        })
    }
}

/// The grace between `SIGTERM` and `SIGKILL` for an action of `timeout`.
pub(crate) fn grace_for(timeout: Duration) -> Duration {
    MAX_GRACE.min(timeout / 2)
}

fn action_outcome(argv: &[String], finished: Finished) -> ActionOutcome {
    let last = finished.last_stderr;
    match finished.ended {
        Ended::Exited(status) if status.success() => ActionOutcome::Ok,
        Ended::Exited(status) => ActionOutcome::Failed {
            message: describe(status, last.as_deref()),
            hard: cannot_execute(status),
        },
        Ended::Spawn(e) => ActionOutcome::Failed {
            message: cannot_run(argv, &e),
            hard: spawn_error_is_hard(&e),
        },
        Ended::Wait(e) => ActionOutcome::Failed {
            message: lost(argv, &e),
            hard: false,
        },
        Ended::TimedOut => ActionOutcome::TimedOut,
    }
}

fn probe_outcome(argv: &[String], finished: Finished, timeout: Duration) -> Probe {
    let last = finished.last_stderr;
    match finished.ended {
        Ended::Exited(status) => match status.code() {
            Some(0) => Probe::Running,
            Some(STATUS_STOPPED) => Probe::Stopped,
            Some(_) if !cannot_execute(status) => Probe::Failed(describe(status, last.as_deref())),
            // 126/127 (the shell could not run it) or killed by a signal:
            // the command did not answer.
            _ => Probe::Unknown(describe(status, last.as_deref())),
        },
        Ended::Spawn(e) => Probe::Unknown(cannot_run(argv, &e)),
        Ended::Wait(e) => Probe::Unknown(lost(argv, &e)),
        Ended::TimedOut => Probe::Unknown(format!("status command timed out after {timeout:?}")),
    }
}

/// Exit 126 (found but not executable) or 127 (not found), as shells
/// report them.
fn cannot_execute(status: ExitStatus) -> bool {
    matches!(status.code(), Some(126 | 127))
}

/// Spawn errors that retrying on this node cannot cure.
pub(crate) fn spawn_error_is_hard(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOENT | Errno::EACCES | Errno::ENOEXEC | Errno::ENOTDIR)
    )
}

/// `exit N: last stderr line`, or `killed by signal N`.
pub(crate) fn describe(status: ExitStatus, last_stderr: Option<&str>) -> String {
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by signal {signal} ({name})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    };
    match last_stderr {
        Some(line) => format!("{what}: {line}"),
        None => what,
    }
}

fn program(argv: &[String]) -> &str {
    argv.first().map_or("", String::as_str)
}

fn cannot_run(argv: &[String], e: &io::Error) -> String {
    format!("cannot run `{}`: {e}", program(argv))
}

fn lost(argv: &[String], e: &io::Error) -> String {
    format!("cannot wait for `{}`: {e}", program(argv))
}

/// Names a command's output lines are logged with.
#[derive(Debug)]
pub(crate) struct Labels {
    pub(crate) group: String,
    /// The resource, or the monitor.
    pub(crate) resource: String,
    pub(crate) action: &'static str,
}

/// One command to run.
pub(crate) struct Spec<'a> {
    pub(crate) argv: &'a [String],
    /// Set in order over the daemon's environment (later wins).
    pub(crate) env: Vec<(String, String)>,
    pub(crate) working_dir: Option<&'a Path>,
    pub(crate) timeout: Duration,
    /// Between `SIGTERM` and `SIGKILL`; zero kills at once.
    pub(crate) grace: Duration,
    pub(crate) labels: Arc<Labels>,
}

/// How a command ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) ended: Ended,
    /// The last non-empty line it wrote to stderr.
    pub(crate) last_stderr: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Ended {
    /// It exited (or was killed by someone else) in time.
    Exited(ExitStatus),
    /// It could not be started.
    Spawn(io::Error),
    /// Waiting for it failed (it was killed).
    Wait(io::Error),
    /// It ran out of time and was killed.
    TimedOut,
}

/// Run one command to its end or its timeout. The one place that starts
/// processes in this module.
pub(crate) async fn run(spec: Spec<'_>) -> Finished {
    let Some((program, args)) = spec.argv.split_first() else {
        return Finished {
            ended: Ended::Spawn(io::Error::new(
                io::ErrorKind::NotFound,
                "the command is empty",
            )),
            last_stderr: None,
        };
    };
    let labels = spec.labels;
    tracing::debug!(
        group = %labels.group,
        resource = %labels.resource,
        action = labels.action,
        command = ?spec.argv,
        timeout = ?spec.timeout,
        "running a command",
    );
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC")
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(spec.working_dir.unwrap_or(Path::new("/")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Finished {
                ended: Ended::Spawn(e),
                last_stderr: None,
            };
        }
    };
    // Declared after `child`, so dropped before it: if this future is
    // dropped mid-run, the whole group is killed before tokio reaps the
    // leader in the background.
    let mut group = GroupKill::new(&child);
    let last = Arc::new(Mutex::new(None));
    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(pump(out, Stream::Stdout, labels.clone(), None)));
    let stderr = child.stderr.take().map(|err| {
        tokio::spawn(pump(
            err,
            Stream::Stderr,
            labels.clone(),
            Some(last.clone()),
        ))
    });

    let ended = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(Ok(status)) => {
            group.disarm();
            Ended::Exited(status)
        }
        Ok(Err(e)) => {
            terminate(&mut child, &mut group, Duration::ZERO).await;
            Ended::Wait(e)
        }
        Err(_elapsed) => {
            tracing::warn!(
                group = %labels.group,
                resource = %labels.resource,
                action = labels.action,
                timeout = ?spec.timeout,
                grace = ?spec.grace,
                "the command ran out of time: killing its process group",
            );
            terminate(&mut child, &mut group, spec.grace).await;
            Ended::TimedOut
        }
    };

    // Read what is left of its output; if something it started still holds
    // the pipes, the readers go on logging without us.
    let _ = tokio::time::timeout(DRAIN_LIMIT, async move {
        for pump in [stdout, stderr].into_iter().flatten() {
            let _ = pump.await;
        }
    })
    .await;
    let last_stderr = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Finished { ended, last_stderr }
}

/// `SIGTERM` the group (unless `grace` is zero), wait until it is gone or
/// `grace` has passed, `SIGKILL` it and reap the leader. The leader is
/// reaped last, so the group id cannot have been reused when it is
/// signalled.
async fn terminate(child: &mut Child, group: &mut GroupKill, grace: Duration) {
    if !grace.is_zero() {
        group.signal(Signal::SIGTERM);
        let until = Instant::now() + grace;
        while group.has_live_member().await {
            let now = Instant::now();
            if now >= until {
                break;
            }
            tokio::time::sleep(GRACE_POLL.min(until - now)).await;
        }
    }
    group.signal(Signal::SIGKILL);
    // Also the leader directly, in case the group could not be signalled.
    let _ = child.start_kill();
    match tokio::time::timeout(REAP_LIMIT, child.wait()).await {
        Ok(Ok(_)) => group.disarm(),
        Ok(Err(e)) => tracing::error!(error = %e, "cannot reap a killed command"),
        Err(_) => tracing::error!(
            "a killed command did not end within {REAP_LIMIT:?}; leaving it to the background reaper",
        ),
    }
}

/// Signals a command's process group, and kills it when dropped while
/// armed (the action was abandoned). Disarmed only once the leader has been
/// reaped: until then its pid, the group id, cannot be reused.
#[derive(Debug)]
struct GroupKill {
    pgid: Option<Pid>,
}

impl GroupKill {
    fn new(child: &Child) -> Self {
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        Self { pgid }
    }

    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            match killpg(pgid, signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::error!(
                    pgid = pgid.as_raw(),
                    %signal,
                    error = %e,
                    "cannot signal a command's process group",
                ),
            }
        }
    }

    /// Whether a process of the group is still alive (zombies do not
    /// count). Without `/proc`, whether the leader is.
    async fn has_live_member(&self) -> bool {
        let Some(pgid) = self.pgid else {
            return false;
        };
        let scan = tokio::task::spawn_blocking(move || group_has_live_member(pgid.as_raw()))
            .await
            .ok()
            .flatten();
        scan.unwrap_or_else(|| !leader_exited(pgid))
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Whether our child `pid` has exited, without reaping it.
fn leader_exited(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) | Err(Errno::ECHILD) => true,
        Err(_) => false,
    }
}

/// Whether a process other than a zombie is in group `pgid`, from `/proc`;
/// `None` if `/proc` cannot be read.
fn group_has_live_member(pgid: i32) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_pid = name
            .to_str()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        // A process that ended since the listing is simply not there.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat)
            && pgrp == pgid
            && !matches!(state, 'Z' | 'X' | 'x')
        {
            return Some(true);
        }
    }
    Some(false)
}

/// State and process group from `/proc/PID/stat` (`pid (comm) S ppid pgrp
/// ...`; `comm` may hold spaces and parentheses).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

/// Log every line of `reader`; for stderr, keep the last non-empty one in
/// `last`.
async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    stream: Stream,
    labels: Arc<Labels>,
    last: Option<Arc<Mutex<Option<String>>>>,
) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a command's output");
                break;
            }
        };
        let room = MAX_LINE - line.len();
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) if end <= room => {
                line.extend_from_slice(&buf[..end]);
                reader.consume(end + 1);
                emit(&line, stream, &labels, last.as_deref());
                line.clear();
            }
            _ => {
                let n = buf.len().min(room);
                line.extend_from_slice(&buf[..n]);
                reader.consume(n);
                if line.len() >= MAX_LINE {
                    emit(&line, stream, &labels, last.as_deref());
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&line, stream, &labels, last.as_deref());
    }
}

fn emit(bytes: &[u8], stream: Stream, labels: &Labels, last: Option<&Mutex<Option<String>>>) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches('\r');
    match stream {
        Stream::Stdout => tracing::info!(
            group = %labels.group,
            resource = %labels.resource,
            action = labels.action,
            stream = "stdout",
            "{text}",
        ),
        Stream::Stderr => tracing::warn!(
            group = %labels.group,
            resource = %labels.resource,
            action = labels.action,
            stream = "stderr",
            "{text}",
        ),
    }
    let trimmed = text.trim();
    if let Some(last) = last
        && !trimmed.is_empty()
    {
        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(trimmed.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use cluster_core::resource::StartReason;
    use nix::sys::signal::kill;
    use nix::sys::wait::waitpid;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn ctx(timeout: Duration) -> ActionContext {
        ActionContext {
            group: "web".into(),
            resource: "app".into(),
            node: "node-a".into(),
            reason: StartReason::Failover,
            previous_owner: Some("node-b".into()),
            previous_owner_fenced: true,
            timeout,
        }
    }

    fn driver(dir: &Path, start: &str, stop: &str, status: Option<&str>) -> ExecDriver {
        let mut env = BTreeMap::new();
        env.insert("DIR".to_owned(), dir.display().to_string());
        env.insert("EXTRA".to_owned(), "from the config".to_owned());
        // The contract's variables win over the `env` table.
        env.insert("KVMHA_NODE".to_owned(), "overridden".to_owned());
        ExecDriver::new(conf::ExecResource {
            start: sh(start),
            stop: sh(stop),
            status: status.map(sh).unwrap_or_default(),
            env,
            working_dir: Some(dir.to_path_buf()),
        })
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Wait until `path` holds a pid.
    async fn pid_in(path: &Path) -> Pid {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return Pid::from_raw(pid);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid in {}", path.display());
    }

    /// Assert that `pid` is gone: reap it if it became our orphan (this
    /// process is a subreaper in these tests), then it must not exist.
    async fn assert_gone(pid: Pid) {
        for _ in 0..250 {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(_) | Err(_) => break,
            }
        }
        assert_eq!(
            kill(pid, None),
            Err(Errno::ESRCH),
            "process {pid} is still there"
        );
    }

    fn become_subreaper() {
        // Orphans of killed commands are reparented to this process rather
        // than to a PID 1 that may never reap them.
        nix::sys::prctl::set_child_subreaper(true).unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn start_sees_the_environment_and_stop_undoes_it() {
        let dir = tempdir();
        let marker: PathBuf = dir.path().join("marker");
        let d = driver(
            dir.path(),
            r#"{
                echo "ACTION=$KVMHA_ACTION"
                echo "REASON=$KVMHA_REASON"
                echo "GROUP=$KVMHA_GROUP"
                echo "RESOURCE=$KVMHA_RESOURCE"
                echo "NODE=$KVMHA_NODE"
                echo "PREVIOUS_OWNER=$KVMHA_PREVIOUS_OWNER"
                echo "PREVIOUS_OWNER_FENCED=$KVMHA_PREVIOUS_OWNER_FENCED"
                echo "TIMEOUT_MS=$KVMHA_TIMEOUT_MS"
                echo "EXTRA=$EXTRA"
                echo "PWD=$(pwd -P)"
            } > marker
            echo started"#,
            r#"[ "$KVMHA_ACTION" = stop ] && [ "$KVMHA_PREVIOUS_OWNER" = "" ] &&
               [ "$KVMHA_PREVIOUS_OWNER_FENCED" = 0 ] && [ "$KVMHA_REASON" = MOVE ] &&
               rm marker"#,
            None,
        );
        let outcome = d.start(&ctx(Duration::from_millis(2500))).await;
        assert_eq!(outcome, ActionOutcome::Ok);
        let cwd = std::fs::canonicalize(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let expected = format!(
            "ACTION=start\nREASON=FAILOVER\nGROUP=web\nRESOURCE=app\nNODE=node-a\n\
             PREVIOUS_OWNER=node-b\nPREVIOUS_OWNER_FENCED=1\nTIMEOUT_MS=2500\n\
             EXTRA=from the config\nPWD={}\n",
            cwd.display()
        );
        assert_eq!(read(&marker), expected);

        let mut stop = ctx(Duration::from_secs(5));
        stop.previous_owner = None;
        stop.previous_owner_fenced = false;
        stop.reason = StartReason::Move;
        assert_eq!(d.stop(&stop).await, ActionOutcome::Ok);
        assert!(!marker.exists(), "stop did not remove the marker");
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_a_soft_failure_with_the_last_stderr_line() {
        let dir = tempdir();
        let d = driver(
            dir.path(),
            "echo first >&2; echo 'disk full' >&2; echo out; exit 3",
            "true",
            None,
        );
        match d.start(&ctx(Duration::from_secs(5))).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(!hard);
                assert_eq!(message, "exit 3: disk full");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_hard_failure() {
        let dir = tempdir();
        let d = ExecDriver::new(conf::ExecResource {
            start: vec![dir.path().join("no-such-program").display().to_string()],
            stop: vec!["kvmha-no-such-program-in-path".into()],
            status: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
        });
        let c = ctx(Duration::from_secs(5));
        for outcome in [d.start(&c).await, d.stop(&c).await] {
            match outcome {
                ActionOutcome::Failed { message, hard } => {
                    assert!(hard, "{message}");
                    assert!(message.contains("no-such-program"), "{message}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        // The same through a shell: 127 (not found) and 126 (not executable).
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\n").unwrap_or_else(|e| panic!("{e}"));
        let d = driver(
            dir.path(),
            "exec ./no-such-program",
            "exec ./not-executable",
            None,
        );
        for outcome in [d.start(&c).await, d.stop(&c).await] {
            match outcome {
                ActionOutcome::Failed { message, hard } => {
                    assert!(hard, "{message}");
                    assert!(message.starts_with("exit 12"), "{message}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_missing_working_directory_is_a_hard_failure() {
        let dir = tempdir();
        let d = ExecDriver::new(conf::ExecResource {
            start: sh("true"),
            stop: sh("true"),
            status: Vec::new(),
            env: BTreeMap::new(),
            working_dir: Some(dir.path().join("missing")),
        });
        assert!(matches!(
            d.start(&ctx(Duration::from_secs(5))).await,
            ActionOutcome::Failed { hard: true, .. }
        ));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_and_reaps_it() {
        become_subreaper();
        let dir = tempdir();
        let d = driver(
            dir.path(),
            "echo $$ > leader.pid; sleep 100 & echo $! > grandchild.pid; wait",
            "true",
            None,
        );
        let c = ctx(Duration::from_millis(1000));
        let (outcome, (leader, grandchild)) = tokio::join!(d.start(&c), async {
            let leader = pid_in(&dir.path().join("leader.pid")).await;
            let grandchild = pid_in(&dir.path().join("grandchild.pid")).await;
            assert_eq!(kill(grandchild, None), Ok(()), "the grandchild should run");
            (leader, grandchild)
        });
        assert_eq!(outcome, ActionOutcome::TimedOut);
        // The leader is our child: reaped by the driver, not a zombie.
        assert_eq!(
            kill(leader, None),
            Err(Errno::ESRCH),
            "the leader was not reaped"
        );
        assert_gone(grandchild).await;
    }

    #[tokio::test]
    async fn a_timeout_sends_sigterm_first() {
        become_subreaper();
        let dir = tempdir();
        let d = driver(
            dir.path(),
            "trap 'echo term > got-term; exit 1' TERM; sleep 100 & echo $! > grandchild.pid; wait",
            "true",
            None,
        );
        let started = std::time::Instant::now();
        let outcome = d.start(&ctx(Duration::from_millis(1000))).await;
        assert_eq!(outcome, ActionOutcome::TimedOut);
        assert_eq!(read(&dir.path().join("got-term")), "term\n");
        // The group went away on SIGTERM: no need to wait out the grace.
        assert!(
            started.elapsed() < Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
        assert_gone(pid_in(&dir.path().join("grandchild.pid")).await).await;
    }

    #[tokio::test]
    async fn a_group_that_ignores_sigterm_is_killed_after_the_grace() {
        become_subreaper();
        let dir = tempdir();
        let d = driver(
            dir.path(),
            "trap '' TERM; echo $$ > leader.pid; sleep 100 & echo $! > grandchild.pid; wait",
            "true",
            None,
        );
        let started = std::time::Instant::now();
        let outcome = d.start(&ctx(Duration::from_millis(600))).await;
        assert_eq!(outcome, ActionOutcome::TimedOut);
        let elapsed = started.elapsed();
        // 600 ms, then a 300 ms grace, then SIGKILL.
        assert!(elapsed >= Duration::from_millis(850), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        let leader = pid_in(&dir.path().join("leader.pid")).await;
        assert_eq!(
            kill(leader, None),
            Err(Errno::ESRCH),
            "the leader was not reaped"
        );
        assert_gone(pid_in(&dir.path().join("grandchild.pid")).await).await;
    }

    #[tokio::test]
    async fn a_start_may_leave_a_daemon_holding_its_output() {
        become_subreaper();
        let dir = tempdir();
        // The daemon keeps stdout and stderr open; the start still ends.
        let d = driver(
            dir.path(),
            "sleep 100 & echo $! > daemon.pid; echo started",
            "true",
            None,
        );
        let started = std::time::Instant::now();
        assert_eq!(
            d.start(&ctx(Duration::from_secs(5))).await,
            ActionOutcome::Ok
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let daemon = pid_in(&dir.path().join("daemon.pid")).await;
        assert_eq!(kill(daemon, None), Ok(()), "the daemon should still run");
        kill(daemon, Signal::SIGKILL).unwrap_or_else(|e| panic!("{e}"));
        assert_gone(daemon).await;
    }

    #[tokio::test]
    async fn status_exit_codes_map_to_probes() {
        let dir = tempdir();
        let c = ctx(Duration::from_secs(5));
        let probe = |status: Option<&str>| driver(dir.path(), "true", "true", status);
        assert_eq!(probe(Some("exit 0")).probe(&c).await, Probe::Running);
        assert_eq!(probe(Some("exit 7")).probe(&c).await, Probe::Stopped);
        assert_eq!(
            probe(Some("echo crashed >&2; exit 3")).probe(&c).await,
            Probe::Failed("exit 3: crashed".into())
        );
        assert_eq!(
            probe(Some(r#"[ "$KVMHA_ACTION" = status ] && exit 7"#))
                .probe(&c)
                .await,
            Probe::Stopped
        );
        assert_eq!(
            probe(None).probe(&c).await,
            Probe::Unknown("no status command".into())
        );
        assert!(matches!(
            probe(Some("exec ./no-such-program")).probe(&c).await,
            Probe::Unknown(_)
        ));
        assert!(matches!(
            probe(Some("sleep 100")).probe(&ctx(Duration::from_millis(200))).await,
            Probe::Unknown(m) if m.contains("timed out")
        ));
    }

    fn monitor(script: &str) -> CustomMonitor {
        CustomMonitor::new(
            "web",
            "health",
            "node-a",
            &conf::CustomMonitor {
                command: sh(script),
            },
        )
    }

    #[tokio::test]
    async fn custom_monitor_ok_failed_and_timed_out() {
        let timeout = Duration::from_secs(5);
        assert_eq!(monitor("exit 0").check(timeout).await, CheckOutcome::Ok);
        assert_eq!(
            monitor(
                r#"[ "$KVMHA_ACTION/$KVMHA_GROUP/$KVMHA_MONITOR/$KVMHA_NODE/$KVMHA_TIMEOUT_MS" = monitor/web/health/node-a/5000 ]"#
            )
            .check(timeout)
            .await,
            CheckOutcome::Ok
        );
        assert_eq!(
            monitor("echo 'no answer on :80' >&2; exit 2")
                .check(timeout)
                .await,
            CheckOutcome::Failed("exit 2: no answer on :80".into())
        );

        become_subreaper();
        let dir = tempdir();
        let script = format!(
            "sleep 100 & echo $! > {}/grandchild.pid; wait",
            dir.path().display()
        );
        let started = std::time::Instant::now();
        let outcome = monitor(&script).check(Duration::from_millis(300)).await;
        assert_eq!(
            outcome,
            CheckOutcome::Failed("timed out after 300ms".into())
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_gone(pid_in(&dir.path().join("grandchild.pid")).await).await;
    }

    #[test]
    fn stat_lines_parse_with_odd_names() {
        assert_eq!(
            parse_stat("1234 (a (weird) name) S 1 1230 1230 0 -1"),
            Some(('S', 1230))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn grace_is_capped_and_shrinks_with_short_timeouts() {
        assert_eq!(grace_for(Duration::from_secs(60)), MAX_GRACE);
        assert_eq!(
            grace_for(Duration::from_millis(600)),
            Duration::from_millis(300)
        );
    }
}
