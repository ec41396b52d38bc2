//! The testbed: start the project's real binaries, wait for them, talk to
//! them, and clean up whatever happens (every process is killed when its
//! handle drops, also when a test panics).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where cargo put the workspace's binaries (`target/debug` for tests).
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The path of workspace binary `name`, building it first if it is missing
/// (`cargo test -p testbed` alone does not build other packages' binaries).
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let path = bin_dir().join(name);
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--bin", name])
            .current_dir(workspace_root())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "cannot build {name}");
    }
    path
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A shipped example configuration.
pub fn example(name: &str) -> PathBuf {
    workspace_root().join("conf/examples").join(name)
}

/// Run a workspace binary to completion.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// A running process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    /// Start workspace binary `name` with `args`; its stderr goes to
    /// `log` so a failing test can show it.
    pub fn spawn(name: &str, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(bin(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM and wait up to `within` for a clean exit; returns
    /// whether it exited successfully.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<bool> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.child.id()).context("pid")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).context("SIGTERM")?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not stop within {within:?} of SIGTERM", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `cond` holds, polling every 20 ms, or fail after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}
