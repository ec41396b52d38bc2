//! `kind = "process"` monitors: a process is alive, found by its pid file
//! or by its name.
//!
//! A process counts as alive when `/proc/PID/stat` exists and its state is
//! not a zombie (`Z`) or dead (`X`): a daemon that died but was not reaped
//! (PID 1 on these machines reaps orphans late, some never) still has a
//! pid and a `/proc` entry, and must not count.
//!
//! - `pid_file`: the file's first line is the pid. A missing or unreadable
//!   file, a file without a pid, a process that is gone or a zombie each
//!   fail with a message that says which.
//! - `process_name`: any process whose `comm` (the kernel's name, at most
//!   15 bytes: longer names are compared on their first 15) is the name.
//!   Zombies of that name do not count; the message says when only
//!   zombies were found.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_core::resource::{BoxFuture, CheckOutcome, MonitorDriver};

/// The most bytes of `comm` the kernel keeps (`TASK_COMM_LEN` - 1).
const COMM_LEN: usize = 15;

/// What is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    PidFile(PathBuf),
    Name(String),
}

/// Driver of one `kind = "process"` monitor.
#[derive(Debug)]
pub struct ProcessMonitor {
    group: String,
    monitor: String,
    target: Result<Target, String>,
    /// Where `/proc` is (tests may point elsewhere; `/proc` otherwise).
    proc_root: PathBuf,
}

impl ProcessMonitor {
    /// A driver for the monitor `monitor` of `group`. A configuration with
    /// neither or both of `pid_file` and `process_name` fails every check.
    pub fn new(group: &str, monitor: &str, config: &conf::ProcessMonitor) -> Self {
        let target = match (&config.pid_file, &config.process_name) {
            (Some(file), None) => Ok(Target::PidFile(file.clone())),
            (None, Some(name)) if !name.is_empty() => Ok(Target::Name(name.clone())),
            _ => {
                Err("a `process` monitor needs exactly one of `pid_file` and `process_name`".into())
            }
        };
        Self {
            group: group.to_owned(),
            monitor: monitor.to_owned(),
            target,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl ProcessMonitor {
    /// Why this monitor cannot check anything, if it cannot (neither or
    /// both of `pid_file` and `process_name`, an empty name).
    pub fn config_problem(&self) -> Option<&str> {
        self.target.as_ref().err().map(String::as_str)
    }
}

impl MonitorDriver for ProcessMonitor {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let target = match &self.target {
                Ok(target) => target.clone(),
                Err(e) => return CheckOutcome::Failed(e.clone()),
            };
            let proc_root = self.proc_root.clone();
            // Reading /proc is quick but blocking: off the runtime's threads.
            let scan = tokio::task::spawn_blocking(move || check_target(&proc_root, &target));
            let outcome = match tokio::time::timeout(timeout, scan).await {
                Ok(Ok(Ok(()))) => CheckOutcome::Ok,
                Ok(Ok(Err(message))) => CheckOutcome::Failed(message),
                Ok(Err(e)) => CheckOutcome::Failed(format!("the check failed: {e}")),
                Err(_) => CheckOutcome::Failed(format!("timed out after {timeout:?}")),
            };
            if let CheckOutcome::Failed(message) = &outcome {
                tracing::debug!(
                    group = %self.group,
                    monitor = %self.monitor,
                    "process check failed: {message}",
                );
            }
            outcome
        })
    }
}

fn check_target(proc_root: &Path, target: &Target) -> Result<(), String> {
    match target {
        Target::PidFile(file) => check_pid_file(proc_root, file),
        Target::Name(name) => check_name(proc_root, name),
    }
}

fn check_pid_file(proc_root: &Path, file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("pid file {} cannot be read: {e}", file.display()))?;
    let first = text.lines().next().unwrap_or_default().trim();
    let pid: u32 = first
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("pid file {} holds no pid: {first:?}", file.display()))?;
    match read_stat(proc_root, pid) {
        None => Err(format!(
            "process {pid} (pid file {}) is not running",
            file.display()
        )),
        Some(stat) if stat.is_dead() => Err(format!(
            "process {pid} (`{}`, pid file {}) is a zombie: it exited and was not reaped",
            stat.comm,
            file.display()
        )),
        Some(_) => Ok(()),
    }
}

fn check_name(proc_root: &Path, name: &str) -> Result<(), String> {
    let wanted = truncate_comm(name);
    let entries = std::fs::read_dir(proc_root)
        .map_err(|e| format!("cannot list {}: {e}", proc_root.display()))?;
    let mut zombies = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process that ended since the listing is simply not there.
        let Some(stat) = read_stat(proc_root, pid) else {
            continue;
        };
        if stat.comm.as_bytes() != wanted {
            continue;
        }
        if stat.is_dead() {
            zombies.push(pid);
        } else {
            return Ok(());
        }
    }
    if zombies.is_empty() {
        Err(format!("no process named `{name}` is running"))
    } else {
        zombies.sort_unstable();
        Err(format!(
            "no process named `{name}` is running, only zombies (exited, not reaped): {zombies:?}"
        ))
    }
}

/// The first [`COMM_LEN`] bytes of `name`, as the kernel keeps it.
fn truncate_comm(name: &str) -> &[u8] {
    let bytes = name.as_bytes();
    &bytes[..bytes.len().min(COMM_LEN)]
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    state: char,
}

impl Stat {
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn read_stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    let text = std::fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&text))
}

/// `pid (comm) S ...`: `comm` may hold spaces and parentheses, so it ends
/// at the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let state = stat
        .get(close + 1..)?
        .split_whitespace()
        .next()?
        .chars()
        .next()?;
    Some(Stat { comm, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::{Child, Command};
    use std::sync::atomic::{AtomicU32, Ordering};

    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    use nix::unistd::Pid;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    fn by_pid_file(file: &Path) -> ProcessMonitor {
        ProcessMonitor::new(
            "web",
            "daemon",
            &conf::ProcessMonitor {
                pid_file: Some(file.to_path_buf()),
                process_name: None,
            },
        )
    }

    fn by_name(name: &str) -> ProcessMonitor {
        ProcessMonitor::new(
            "web",
            "daemon",
            &conf::ProcessMonitor {
                pid_file: None,
                process_name: Some(name.to_owned()),
            },
        )
    }

    /// A name no other process has: a copy of `sleep` under it.
    fn unique_program(dir: &Path) -> (PathBuf, String) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kvp{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        assert!(name.len() <= COMM_LEN, "{name}");
        let path = dir.join(&name);
        std::fs::copy("/bin/sleep", &path).unwrap_or_else(|e| panic!("copy sleep: {e}"));
        (path, name)
    }

    fn spawn(program: &Path) -> Child {
        Command::new(program)
            .arg("100")
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
    }

    fn pid_of(child: &Child) -> Pid {
        Pid::from_raw(i32::try_from(child.id()).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Kill `child` and wait until it is a zombie, without reaping it.
    fn make_zombie(child: &mut Child) {
        child.kill().unwrap_or_else(|e| panic!("{e}"));
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(pid_of(child)), flags) {
            Ok(WaitStatus::Signaled(..)) => {}
            other => panic!("unexpected {other:?}"),
        }
        let stat = read_stat(Path::new("/proc"), child.id());
        assert_eq!(stat.map(|s| s.state), Some('Z'));
    }

    fn reap(child: &mut Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    fn failed(outcome: CheckOutcome) -> String {
        match outcome {
            CheckOutcome::Failed(message) => message,
            CheckOutcome::Ok => panic!("the check passed"),
        }
    }

    #[tokio::test]
    async fn a_live_process_from_its_pid_file_passes() {
        let dir = tempdir();
        let (program, _) = unique_program(dir.path());
        let mut child = spawn(&program);
        let file = dir.path().join("daemon.pid");
        std::fs::write(&file, format!("{}\n", child.id())).unwrap_or_else(|e| panic!("{e}"));
        let outcome = by_pid_file(&file).check(TIMEOUT).await;
        reap(&mut child);
        assert_eq!(outcome, CheckOutcome::Ok);
    }

    #[tokio::test]
    async fn a_zombie_from_its_pid_file_fails() {
        let dir = tempdir();
        let (program, name) = unique_program(dir.path());
        let mut child = spawn(&program);
        make_zombie(&mut child);
        let file = dir.path().join("daemon.pid");
        std::fs::write(&file, format!("{}\n", child.id())).unwrap_or_else(|e| panic!("{e}"));
        let message = failed(by_pid_file(&file).check(TIMEOUT).await);
        let by_name_message = failed(by_name(&name).check(TIMEOUT).await);
        reap(&mut child);
        assert!(message.contains("is a zombie"), "{message}");
        assert!(message.contains(&name), "{message}");
        assert!(
            by_name_message.contains("only zombies")
                && by_name_message.contains(&child.id().to_string()),
            "{by_name_message}"
        );
    }

    #[tokio::test]
    async fn a_dead_pid_fails() {
        let dir = tempdir();
        let (program, _) = unique_program(dir.path());
        let mut child = spawn(&program);
        let pid = child.id();
        reap(&mut child);
        let file = dir.path().join("daemon.pid");
        std::fs::write(&file, format!("{pid}\n")).unwrap_or_else(|e| panic!("{e}"));
        let message = failed(by_pid_file(&file).check(TIMEOUT).await);
        assert!(message.contains(&format!("process {pid} ")), "{message}");
        assert!(message.contains("is not running"), "{message}");
    }

    #[tokio::test]
    async fn a_missing_or_empty_pid_file_fails_saying_so() {
        let dir = tempdir();
        let missing = dir.path().join("missing.pid");
        let message = failed(by_pid_file(&missing).check(TIMEOUT).await);
        assert!(message.contains("cannot be read"), "{message}");
        assert!(message.contains("missing.pid"), "{message}");

        let garbage = dir.path().join("garbage.pid");
        std::fs::write(&garbage, "not a pid\n").unwrap_or_else(|e| panic!("{e}"));
        let message = failed(by_pid_file(&garbage).check(TIMEOUT).await);
        assert!(message.contains("holds no pid"), "{message}");

        std::fs::write(&garbage, "0\n").unwrap_or_else(|e| panic!("{e}"));
        let message = failed(by_pid_file(&garbage).check(TIMEOUT).await);
        assert!(message.contains("holds no pid"), "{message}");
    }

    #[tokio::test]
    async fn a_process_is_found_by_name_and_missed_once_gone() {
        let dir = tempdir();
        let (program, name) = unique_program(dir.path());
        let mut child = spawn(&program);
        // `/proc/PID/comm` is set at exec: wait for it.
        for _ in 0..200 {
            if read_stat(Path::new("/proc"), child.id()).is_some_and(|s| s.comm == name) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let running = by_name(&name).check(TIMEOUT).await;
        reap(&mut child);
        assert_eq!(running, CheckOutcome::Ok);
        let message = failed(by_name(&name).check(TIMEOUT).await);
        assert_eq!(message, format!("no process named `{name}` is running"));
    }

    #[tokio::test]
    async fn long_names_match_the_kernels_truncated_comm() {
        let dir = tempdir();
        let (program, name) = unique_program(dir.path());
        // The kernel keeps 15 bytes of the name: configuring the full,
        // longer file name still finds it.
        let long = format!("{name}{}", "-longer-than-the-kernel-keeps");
        let long_path = dir.path().join(&long);
        std::fs::rename(&program, &long_path).unwrap_or_else(|e| panic!("{e}"));
        let mut child = spawn(&long_path);
        for _ in 0..200 {
            if read_stat(Path::new("/proc"), child.id()).is_some_and(|s| s.comm.len() == COMM_LEN) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let outcome = by_name(&long).check(TIMEOUT).await;
        reap(&mut child);
        assert_eq!(outcome, CheckOutcome::Ok);
    }

    #[tokio::test]
    async fn a_bad_configuration_fails_every_check() {
        let m = ProcessMonitor::new(
            "web",
            "daemon",
            &conf::ProcessMonitor {
                pid_file: None,
                process_name: None,
            },
        );
        let message = failed(m.check(TIMEOUT).await);
        assert!(message.contains("exactly one"), "{message}");
    }

    #[test]
    fn stat_lines_parse_with_odd_names() {
        assert_eq!(
            parse_stat("1234 (a (weird) name) Z 1 1230 1230 0 -1"),
            Some(Stat {
                comm: "a (weird) name".into(),
                state: 'Z'
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
