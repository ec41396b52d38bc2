//! A fence device driven by an agent of Debian's `fence-agents` package
//! (`fence_ipmilan`, `fence_dummy`, ...) through the agents' standard stdin
//! protocol: the agent runs with no arguments and reads `key=value` lines,
//! `action=off`, then `plug=<value>` for targets listed in `plugs`, then
//! every configured parameter. Exit status 0 is the agent's confirmation.
//!
//! Each run is bounded by the device's timeout. The agent starts in its own
//! process group; on timeout (or when the attempt is dropped) the whole
//! group gets SIGKILL, so helpers the agent started (`ipmitool`, `ssh`, ...)
//! do not outlive it. Values of parameters whose key contains `password` or
//! `passwd` never reach the logs, error messages or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{AgentOutput, Device, FenceError, FenceFuture};

/// Directories searched, in order, for an agent configured by bare name.
pub const AGENT_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How much of the end of an agent's stdout and of its stderr is kept for
/// logs and error messages.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// How long output is still read once the agent has ended (a helper that
/// escaped its process group may hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// How long reaping a killed agent may take before it is left to tokio's
/// background reaper.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// What replaces secret values in logs and messages.
const REDACTED: &str = "[redacted]";

/// A fence device that runs a `fence-agents` agent.
///
/// Built from a `[[fencing]]` entry of kind `agent` with
/// [`AgentDevice::from_config`]; the agent executable is resolved (and must
/// exist) at construction.
#[derive(Clone)]
pub struct AgentDevice {
    name: String,
    agent: PathBuf,
    targets: Vec<String>,
    timeout: Duration,
    delay: Duration,
    params: BTreeMap<String, String>,
    plugs: BTreeMap<String, String>,
}

impl AgentDevice {
    /// Build the device from its configuration.
    ///
    /// Fails if `device` is not of kind `agent`, if the agent cannot be
    /// found (an absolute path is used as given; a bare name is looked up in
    /// [`AGENT_DIRS`]), or if the configuration could make the agent do
    /// something other than power the right target off: a zero timeout, an
    /// `action` parameter, a `plug`/`port` parameter alongside `plugs`, or a
    /// key or value that would break the line protocol.
    pub fn from_config(device: &conf::FenceDevice) -> Result<Self, FenceError> {
        let agent = match &device.kind {
            conf::FenceKind::Agent(agent) => agent,
            conf::FenceKind::Redfish(_) => return Err(wrong_kind(device, "redfish")),
            conf::FenceKind::Host(_) => return Err(wrong_kind(device, "host")),
        };
        let invalid = |reason: String| FenceError::InvalidConfig {
            device: device.name.clone(),
            reason,
        };
        if device.timeout.is_zero() {
            return Err(invalid("`timeout` must be greater than zero".to_owned()));
        }
        for (key, value) in &agent.params {
            check_line_key(key).map_err(|why| invalid(format!("parameter `{key}`: {why}")))?;
            check_line_value(value)
                .map_err(|why| invalid(format!("value of parameter `{key}`: {why}")))?;
            if key == "action" {
                return Err(invalid(
                    "parameter `action` is refused: the device always sends `action=off`"
                        .to_owned(),
                ));
            }
            if (key == "plug" || key == "port") && !agent.plugs.is_empty() {
                return Err(invalid(format!(
                    "parameter `{key}` is refused alongside `plugs`: it would override the target's plug"
                )));
            }
        }
        for (target, plug) in &agent.plugs {
            check_line_value(plug).map_err(|why| invalid(format!("plug of `{target}`: {why}")))?;
        }
        let path = resolve_agent(&device.name, &agent.agent)?;
        Ok(Self {
            name: device.name.clone(),
            agent: path,
            targets: device.targets.clone(),
            timeout: device.timeout.get(),
            delay: device.delay.get(),
            params: agent.params.clone(),
            plugs: agent.plugs.clone(),
        })
    }

    /// The resolved agent executable.
    pub fn agent(&self) -> &Path {
        &self.agent
    }

    /// Time allowed for one run of the agent.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The nodes this device fences.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// The lines sent on the agent's stdin to power `target` off, secrets
    /// included.
    fn stdin_lines(&self, target: &str) -> Vec<String> {
        let mut lines = vec!["action=off".to_owned()];
        if let Some(plug) = self.plugs.get(target) {
            lines.push(format!("plug={plug}"));
        }
        lines.extend(self.params.iter().map(|(k, v)| format!("{k}={v}")));
        lines
    }

    /// The same lines with secret values replaced, for logs.
    fn redacted_lines(&self, target: &str) -> Vec<String> {
        let mut lines = vec!["action=off".to_owned()];
        if let Some(plug) = self.plugs.get(target) {
            lines.push(format!("plug={plug}"));
        }
        lines.extend(self.params.iter().map(|(k, v)| {
            if is_secret_key(k) {
                format!("{k}={REDACTED}")
            } else {
                format!("{k}={v}")
            }
        }));
        lines
    }

    /// `text` with every secret parameter value replaced.
    fn scrub(&self, text: String) -> String {
        self.params
            .iter()
            .filter(|(k, v)| is_secret_key(k) && !v.is_empty())
            .fold(text, |text, (_, v)| text.replace(v.as_str(), REDACTED))
    }

    /// Run the agent once against `target`.
    async fn run(&self, target: &str) -> Result<(), FenceError> {
        if !self.can_fence(target) {
            return Err(FenceError::NotATarget {
                device: self.name.clone(),
                target: target.to_owned(),
            });
        }
        let mut input = self.stdin_lines(target).join("\n");
        input.push('\n');
        tracing::info!(
            device = %self.name,
            node = target,
            agent = %self.agent.display(),
            input = %self.redacted_lines(target).join(" "),
            timeout = ?self.timeout,
            "running fence agent",
        );

        let started = Instant::now();
        let mut command = Command::new(&self.agent);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| FenceError::Spawn {
            device: self.name.clone(),
            agent: self.agent.clone(),
            source,
        })?;
        // Declared after `child`, so dropped before it: if this future is
        // dropped mid-run, the whole group is killed first.
        let mut group = GroupKill::new(&child);
        let stdout = Capture::start(child.stdout.take());
        let stderr = Capture::start(child.stderr.take());
        let stdin = child.stdin.take();

        let run = tokio::time::timeout(self.timeout, async {
            if let Some(mut stdin) = stdin {
                match stdin.write_all(input.as_bytes()).await {
                    // An agent may end without reading its input; its exit
                    // status still decides.
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                    Err(e) => return Err(e),
                }
                // Dropping stdin closes it: the agent reads until EOF.
            }
            child.wait().await
        })
        .await;

        let ended = match run {
            Ok(Ok(status)) => {
                group.disarm();
                Ended::Exited(status)
            }
            Ok(Err(e)) => {
                group.kill();
                reap(&mut child, &mut group).await;
                Ended::Io(e)
            }
            Err(_elapsed) => {
                group.kill();
                reap(&mut child, &mut group).await;
                Ended::TimedOut
            }
        };
        let (stdout, stderr) = Capture::finish(stdout, stderr).await;
        let stdout = self.scrub(stdout);
        let stderr = self.scrub(stderr);
        let elapsed = started.elapsed();

        match ended {
            Ended::Exited(status) if status.success() => {
                tracing::info!(
                    device = %self.name,
                    node = target,
                    ?elapsed,
                    stdout = %stdout.trim(),
                    stderr = %stderr.trim(),
                    "fence agent confirmed the target off",
                );
                Ok(())
            }
            Ended::Exited(status) => {
                tracing::warn!(
                    device = %self.name,
                    node = target,
                    %status,
                    ?elapsed,
                    stdout = %stdout.trim(),
                    stderr = %stderr.trim(),
                    "fence agent failed",
                );
                Err(FenceError::Failed {
                    device: self.name.clone(),
                    agent: self.agent.clone(),
                    target: target.to_owned(),
                    status,
                    output: Box::new(AgentOutput { stdout, stderr }),
                })
            }
            Ended::TimedOut => {
                tracing::warn!(
                    device = %self.name,
                    node = target,
                    timeout = ?self.timeout,
                    stdout = %stdout.trim(),
                    stderr = %stderr.trim(),
                    "fence agent timed out; its process group was killed",
                );
                Err(FenceError::Timeout {
                    device: self.name.clone(),
                    agent: self.agent.clone(),
                    target: target.to_owned(),
                    timeout: self.timeout,
                    output: Box::new(AgentOutput { stdout, stderr }),
                })
            }
            Ended::Io(source) => {
                tracing::warn!(
                    device = %self.name,
                    node = target,
                    error = %source,
                    stdout = %stdout.trim(),
                    stderr = %stderr.trim(),
                    "talking to the fence agent failed; its process group was killed",
                );
                Err(FenceError::Io {
                    device: self.name.clone(),
                    agent: self.agent.clone(),
                    target: target.to_owned(),
                    source,
                })
            }
        }
    }
}

impl Device for AgentDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn can_fence(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t == target)
    }

    fn delay(&self) -> Duration {
        self.delay
    }

    fn fence_off<'a>(&'a self, target: &'a str) -> FenceFuture<'a> {
        Box::pin(self.run(target))
    }
}

impl fmt::Debug for AgentDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params: BTreeMap<&str, &str> = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_key(k) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("AgentDevice")
            .field("name", &self.name)
            .field("agent", &self.agent)
            .field("targets", &self.targets)
            .field("timeout", &self.timeout)
            .field("delay", &self.delay)
            .field("params", &params)
            .field("plugs", &self.plugs)
            .finish()
    }
}

/// How a run ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut,
    Io(io::Error),
}

/// Whether a parameter's value is a secret never to be logged.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("passwd")
}

fn wrong_kind(device: &conf::FenceDevice, kind: &'static str) -> FenceError {
    FenceError::WrongKind {
        device: device.name.clone(),
        kind,
    }
}

/// A parameter key must be one token of the agents' option names.
fn check_line_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("keys may hold only letters, digits, `_` and `-`");
    }
    Ok(())
}

/// A value must stay on its line.
fn check_line_value(value: &str) -> Result<(), &'static str> {
    if value.contains(['\n', '\r', '\0']) {
        return Err("line breaks and NUL are not allowed");
    }
    Ok(())
}

/// Find the agent executable: an absolute path as given, a bare name in
/// [`AGENT_DIRS`].
fn resolve_agent(device: &str, agent: &str) -> Result<PathBuf, FenceError> {
    let not_found = |reason: String| FenceError::AgentNotFound {
        device: device.to_owned(),
        agent: agent.to_owned(),
        reason,
    };
    if agent.is_empty() {
        return Err(not_found("the agent name is empty".to_owned()));
    }
    let path = Path::new(agent);
    if path.is_absolute() {
        return match executable(path) {
            Ok(()) => Ok(path.to_owned()),
            Err(why) => Err(not_found(format!("{}: {why}", path.display()))),
        };
    }
    if agent.contains('/') {
        return Err(not_found(format!(
            "relative paths are refused; give a bare name (looked up in {}) or an absolute path",
            AGENT_DIRS.join(", ")
        )));
    }
    let mut problems = Vec::new();
    for dir in AGENT_DIRS {
        let candidate = Path::new(dir).join(agent);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(why) if why.kind() == io::ErrorKind::NotFound => {}
            Err(why) => problems.push(format!("{}: {why}", candidate.display())),
        }
    }
    let mut reason = format!(
        "not in {} (is Debian's `fence-agents` package installed?)",
        AGENT_DIRS.join(", ")
    );
    if !problems.is_empty() {
        reason = format!("{reason}; {}", problems.join("; "));
    }
    Err(not_found(reason))
}

/// `Ok` if `path` is a regular file with an execute bit.
fn executable(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not executable",
        ));
    }
    Ok(())
}

/// Kills the agent's process group when told to, or when dropped while
/// armed (the attempt was abandoned). Disarmed only once the agent has been
/// reaped, so the group id cannot yet have been reused.
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

    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    tracing::error!(pgid = pgid.as_raw(), error = %e, "cannot kill a fence agent's process group");
                }
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reap a killed agent, bounded: a process stuck in the kernel is left to
/// tokio's background reaper (and the group is killed again on drop).
async fn reap(child: &mut Child, group: &mut GroupKill) {
    // Also kill the leader directly, in case the group could not be
    // signalled.
    let _ = child.start_kill();
    match tokio::time::timeout(REAP_LIMIT, child.wait()).await {
        Ok(Ok(_)) => group.disarm(),
        Ok(Err(e)) => tracing::error!(error = %e, "cannot reap a killed fence agent"),
        Err(_) => tracing::error!(
            limit = ?REAP_LIMIT,
            "a killed fence agent has not ended; leaving it to the background reaper"
        ),
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > OUTPUT_TAIL_BYTES {
            let cut = self.bytes.len() - OUTPUT_TAIL_BYTES;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        if self.truncated {
            format!("...{text}")
        } else {
            text.into_owned()
        }
    }
}

/// A background reader keeping the tail of one of the agent's outputs.
struct Capture {
    tail: Arc<Mutex<Tail>>,
    task: Option<JoinHandle<()>>,
}

impl Capture {
    fn start<R>(reader: Option<R>) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let task = reader.map(|mut reader| {
            let tail = Arc::clone(&tail);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => tail
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(&buf[..n]),
                    }
                }
            })
        });
        Self { tail, task }
    }

    /// Wait (briefly) for both readers to reach end of file, then return
    /// what they kept.
    async fn finish(mut out: Self, mut err: Self) -> (String, String) {
        let _ = tokio::time::timeout(OUTPUT_GRACE, async {
            for task in [&mut out.task, &mut err.task].into_iter().flatten() {
                let _ = task.await;
            }
        })
        .await;
        (out.text(), err.text())
    }

    fn text(&self) -> String {
        self.tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(params: &[(&str, &str)], plugs: &[(&str, &str)]) -> conf::FenceDevice {
        conf::FenceDevice {
            name: "pdu".to_owned(),
            targets: vec!["node1".to_owned(), "node2".to_owned()],
            timeout: conf::Duration::from_secs(5),
            delay: conf::Duration::default(),
            kind: conf::FenceKind::Agent(conf::FenceAgent {
                agent: "/bin/true".to_owned(),
                params: params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                plugs: plugs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }),
        }
    }

    fn device(params: &[(&str, &str)], plugs: &[(&str, &str)]) -> AgentDevice {
        AgentDevice::from_config(&config(params, plugs)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn fence_stdin_lines_are_action_plug_then_params() {
        let d = device(
            &[
                ("ip", "192.0.2.1"),
                ("username", "admin"),
                ("password", "s3cret"),
            ],
            &[("node2", "7")],
        );
        assert_eq!(
            d.stdin_lines("node2"),
            [
                "action=off",
                "plug=7",
                "ip=192.0.2.1",
                "password=s3cret",
                "username=admin"
            ]
        );
        assert_eq!(
            d.stdin_lines("node1"),
            [
                "action=off",
                "ip=192.0.2.1",
                "password=s3cret",
                "username=admin"
            ]
        );
    }

    #[test]
    fn fence_secrets_never_appear_in_logs_or_debug() {
        let d = device(
            &[("passwd", "hunter2"), ("ssh_password", "pw9"), ("ip", "x")],
            &[],
        );
        let logged = d.redacted_lines("node1").join(" ");
        assert!(
            !logged.contains("hunter2") && !logged.contains("pw9"),
            "{logged}"
        );
        assert!(logged.contains("passwd=[redacted]"), "{logged}");
        let debug = format!("{d:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("pw9"),
            "{debug}"
        );
        assert_eq!(
            d.scrub("login failed for pw9 / hunter2".to_owned()),
            "login failed for [redacted] / [redacted]"
        );
    }

    #[test]
    fn fence_refuses_unsafe_params() {
        for (params, plugs) in [
            (vec![("action", "reboot")], vec![]),
            (vec![("plug", "3")], vec![("node1", "1")]),
            (vec![("port", "3")], vec![("node1", "1")]),
            (vec![("ip", "1.2.3.4\naction=reboot")], vec![]),
            (vec![("bad key", "x")], vec![]),
            (vec![], vec![("node1", "1\naction=on")]),
        ] {
            let err = AgentDevice::from_config(&config(&params, &plugs));
            assert!(
                matches!(err, Err(FenceError::InvalidConfig { .. })),
                "{params:?} {plugs:?}: {err:?}"
            );
        }
        // A fixed plug without per-target plugs is fine.
        device(&[("plug", "3")], &[]);
    }

    #[test]
    fn fence_tail_keeps_the_end() {
        let mut tail = Tail::default();
        tail.push(b"abc");
        assert_eq!(tail.text(), "abc");
        tail.push(&vec![b'x'; OUTPUT_TAIL_BYTES]);
        tail.push(b"end");
        let text = tail.text();
        assert!(text.starts_with("...") && text.ends_with("xend"), "{text}");
        assert_eq!(text.len(), OUTPUT_TAIL_BYTES + 3);
    }
}
