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
    #[error("fence device `{device}` is of kind `{kind}`, not `agent`")]
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
