//! The testbed: start the project's real binaries, wait for them, talk to
//! them, and clean up whatever happens (every process is killed when its
//! handle drops, also when a test panics).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod cluster;
pub mod fence;
pub mod netns;
pub mod qemu;
pub mod watch;

/// Where cargo put the workspace's binaries: `target/<profile>`, next to
/// a benchmark binary or one level above a test executable (`deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
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

/// Write a cluster key (mode 0600) to `path`.
pub fn write_key(path: &Path) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let key: String = (0..32)
        .map(|i| char::from(b'a' + (i * 7 + std::process::id() as usize) as u8 % 26))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let _ = writeln!(f, "{key}");
}

/// A private copy of the demo configuration in `dir`: its own key, state
/// directory and a heartbeat port of its own, so tests run in parallel.
pub fn demo_config(dir: &Path) -> PathBuf {
    static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let port = 20000
        + (std::process::id() % 20000) as u16
        + NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let text = std::fs::read_to_string(example("demo-hosts.toml"))
        .unwrap_or_default()
        .replace("/tmp/kvmha-demo", &dir.display().to_string())
        .replace("port = 15405", &format!("port = {port}"));
    let path = dir.join("demo-hosts.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    write_key(&dir.join("demo.key"));
    // The daemon checks at start that its fence agent exists; tests on
    // this copy never fence, and an agent that is used fails (safe).
    let agent = dir.join("fence-demo-host");
    std::fs::write(&agent, "#!/bin/sh\necho 'not a fence device' >&2\nexit 1\n")
        .unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    path
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

    /// Start an already prepared command (e.g. one run inside a network
    /// namespace); `name` is for messages, stderr goes to `log`.
    pub fn from_command(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
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

    /// Send a signal (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).context("kill")?;
        Ok(())
    }

    /// Whether the process has exited (and then how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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
