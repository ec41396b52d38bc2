//! Why a fence device could not be built or did not confirm its target off
//! ([`FenceError`]), and why the retrying fencer returned without success
//! ([`FencerError`]).

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a fence device could not be built, or why one attempt did not
/// confirm its target off.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The configured device is not of the kind this type drives.
    #[error("fence device `{device}` is of kind `{kind}`, which this device type does not drive")]
    WrongKind {
        /// Device name.
        device: String,
        /// The configured kind (`redfish`, `host`, ...).
        kind: &'static str,
    },
    /// The agent executable could not be found (or is not executable).
    #[error("fence device `{device}`: fence agent `{agent}` not found: {reason}")]
    AgentNotFound {
        /// Device name.
        device: String,
        /// The agent as configured.
        agent: String,
        /// Where it was looked for, or what is wrong with the file.
        reason: String,
    },
    /// The device's configuration cannot be run safely.
    #[error("fence device `{device}`: {reason}")]
    InvalidConfig {
        /// Device name.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// The device was asked to fence a node that is not one of its targets.
    #[error("fence device `{device}` does not fence `{target}`")]
    NotATarget {
        /// Device name.
        device: String,
        /// The node asked for.
        target: String,
    },
    /// The agent could not be started.
    #[error("fence device `{device}`: cannot run `{}`: {source}", .agent.display())]
    Spawn {
        /// Device name.
        device: String,
        /// The agent executable.
        agent: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Talking to or waiting for the agent failed; it was killed.
    #[error("fence device `{device}`: running `{}` against `{target}`: {source}", .agent.display())]
    Io {
        /// Device name.
        device: String,
        /// The agent executable.
        agent: PathBuf,
        /// The node being fenced.
        target: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The agent did not finish within the device's timeout; its whole
    /// process group was killed.
    #[error(
        "fence device `{device}`: `{}` did not finish fencing `{target}` within {timeout:?}; its process group was killed{}",
        .agent.display(),
        output_suffix(.output)
    )]
    Timeout {
        /// Device name.
        device: String,
        /// The agent executable.
        agent: PathBuf,
        /// The node being fenced.
        target: String,
        /// The device's timeout.
        timeout: Duration,
        /// The end of what the agent wrote (secrets removed).
        output: Box<AgentOutput>,
    },
    /// The agent finished without confirming the target off.
    #[error(
        "fence device `{device}`: `{}` failed to fence `{target}` ({status}){}",
        .agent.display(),
        output_suffix(.output)
    )]
    Failed {
        /// Device name.
        device: String,
        /// The agent executable.
        agent: PathBuf,
        /// The node being fenced.
        target: String,
        /// How the agent ended (`status.code()` is its exit code, `None`
        /// if a signal ended it).
        status: ExitStatus,
        /// The end of what the agent wrote (secrets removed).
        output: Box<AgentOutput>,
    },
    /// The host daemon, asked over the linkage, did not confirm the peer
    /// guest off (it refused, the VM runs on another host, libvirt did
    /// not answer, or there is no session to the host).
    #[error("fence device `{device}`: the host did not confirm `{target}` off: {reason}")]
    HostNotConfirmed {
        /// Device name.
        device: String,
        /// The guest being fenced.
        target: String,
        /// Why, as the host or the link said.
        reason: String,
    },
    /// The Redfish password file cannot be used: missing, unreadable,
    /// readable by group or others, or empty.
    #[error("fence device `{device}`: password file {}: {reason}", .path.display())]
    PasswordFile {
        /// Device name.
        device: String,
        /// The configured `password_file`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A Redfish request got no answer: connection refused, TLS refused,
    /// the connection dropped...
    #[error("fence device `{device}`: {method} {url}: {reason}")]
    RedfishRequest {
        /// Device name.
        device: String,
        /// `GET` or `POST`.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// The client's error, with its causes.
        reason: String,
    },
    /// The BMC answered a Redfish request with an error status.
    #[error("fence device `{device}`: {method} {url} answered HTTP {status}{}", message_suffix(.message))]
    RedfishStatus {
        /// Device name.
        device: String,
        /// `GET` or `POST`.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The BMC's error message (Redfish `error.message` and its
        /// extended information, or the start of the body), if any.
        message: String,
    },
    /// A Redfish answer cannot be used: not JSON, a field missing, or the
    /// BMC does not offer `ForceOff`.
    #[error("fence device `{device}`: {url}: {reason}")]
    RedfishResponse {
        /// Device name.
        device: String,
        /// The URL that gave the answer.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The system to power off cannot be chosen: the configured
    /// `system_id` is not a member of the BMC's `Systems`, or none is
    /// configured and the BMC has several (or none).
    #[error("fence device `{device}`: {url}: {reason}; members: [{}]", .members.join(", "))]
    RedfishSystem {
        /// Device name.
        device: String,
        /// The `Systems` collection's URL.
        url: String,
        /// What is wrong.
        reason: String,
        /// The member ids the BMC listed.
        members: Vec<String>,
    },
    /// The BMC did not confirm the target off (`PowerState` `Off`) within
    /// the device's timeout; the attempt was abandoned.
    #[error(
        "fence device `{device}`: `{target}` not confirmed off within {timeout:?} (while {}; last PowerState: {}{})",
        .progress.stage,
        .progress.power_state.as_deref().unwrap_or("not read"),
        .progress.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    RedfishTimeout {
        /// Device name.
        device: String,
        /// The node being fenced.
        target: String,
        /// The device's timeout.
        timeout: Duration,
        /// How far the attempt got.
        progress: Box<RedfishProgress>,
    },
}

/// How far a Redfish attempt got before its time ran out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedfishProgress {
    /// The step in flight: `GET <url>`, `POST <url>`, `waiting for
    /// PowerState Off at <url>`...
    pub stage: String,
    /// The last `PowerState` the BMC reported, if any was read.
    pub power_state: Option<String>,
    /// The last error while polling `PowerState`, if any.
    pub last_error: Option<String>,
}

/// `: <message>`, or nothing for an empty message.
fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Why [`Fencer::fence`](super::Fencer::fence) returned without a confirmed
/// fence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FencerError {
    /// No configured device can fence the target: the caller must rely on
    /// the target's watchdog lease or keep its groups blocked.
    #[error("no configured fence device can fence `{target}`")]
    NoDevice {
        /// The node asked for.
        target: String,
    },
    /// The caller's cancellation resolved before any device confirmed the
    /// target off.
    #[error("fencing `{target}` was cancelled after {attempts} attempt(s) without success")]
    Cancelled {
        /// The node being fenced.
        target: String,
        /// Attempts completed (all failed) before the cancellation.
        attempts: u32,
    },
}

/// The end of what a fence agent wrote, at most
/// [`OUTPUT_TAIL_BYTES`](super::OUTPUT_TAIL_BYTES) of each stream (a cut
/// start is marked `...`), with secret parameter values replaced by
/// `[redacted]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOutput {
    /// The end of its standard output.
    pub stdout: String,
    /// The end of its standard error.
    pub stderr: String,
}

/// `: <stderr tail>` (or the stdout tail when stderr is empty) for an error
/// message; empty when the agent wrote nothing.
fn output_suffix(output: &AgentOutput) -> String {
    let stderr = output.stderr.trim();
    let stdout = output.stdout.trim();
    if !stderr.is_empty() {
        format!(": {stderr}")
    } else if !stdout.is_empty() {
        format!(": {stdout}")
    } else {
        String::new()
    }
}
