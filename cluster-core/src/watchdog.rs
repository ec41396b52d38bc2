//! The self-fencing lease. While a node is healthy and quorate its daemon
//! feeds a watchdog; when it stops (quorum lost, daemon hung or killed) the
//! watchdog resets the node — or, in the testbed, kills everything the
//! daemon started — once `watchdog.lease` has passed. Peers may therefore
//! treat a lost node as gone once its lease has certainly expired.
//!
//! Kinds: the kernel device (`/dev/watchdog`), systemd's service watchdog
//! (`WATCHDOG=1` on `$NOTIFY_SOCKET`), a keeper process for machines with
//! neither (it kills the daemon's whole session), and none.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use conf::WatchdogKind;

/// Argument that turns a daemon binary into the watchdog keeper.
pub const KEEPER_ARG: &str = "__watchdog-keeper";

/// A watchdog this daemon feeds.
pub trait Watchdog: Send + std::fmt::Debug {
    /// Push the deadline `lease` into the future.
    fn feed(&mut self) -> std::io::Result<()>;
    /// Stop the watchdog on a clean shutdown (never on a failure).
    fn disarm(&mut self) -> std::io::Result<()>;
}

/// Why the watchdog could not be armed.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The device could not be opened or configured.
    #[error("watchdog device {path}")]
    Device {
        /// Device path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `kind = "systemd"` outside a systemd service with a watchdog.
    #[error("watchdog kind `systemd` needs $NOTIFY_SOCKET (run under systemd with WatchdogSec=)")]
    NoNotifySocket,
    /// The keeper process could not start.
    #[error("cannot start the watchdog keeper")]
    Keeper(#[source] std::io::Error),
}

/// Arm the watchdog the configuration asks for.
pub fn arm(section: &conf::WatchdogSection) -> Result<Box<dyn Watchdog>, WatchdogError> {
    let lease = section.lease.get();
    match section.kind {
        WatchdogKind::Device => {
            DeviceWatchdog::open(&section.device, lease).map(|w| Box::new(w) as Box<dyn Watchdog>)
        }
        WatchdogKind::Systemd => SystemdWatchdog::new().map(|w| Box::new(w) as Box<dyn Watchdog>),
        WatchdogKind::Process => {
            KeeperWatchdog::spawn(lease).map(|w| Box::new(w) as Box<dyn Watchdog>)
        }
        WatchdogKind::None => Ok(Box::new(NoWatchdog)),
    }
}

/// No watchdog: nothing resets the node.
#[derive(Debug)]
pub struct NoWatchdog;

impl Watchdog for NoWatchdog {
    fn feed(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn disarm(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The kernel watchdog device.
#[derive(Debug)]
pub struct DeviceWatchdog {
    file: std::fs::File,
}

/// The one unsafe corner of this module: the watchdog ioctl.
#[allow(unsafe_code)]
mod sys {
    nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, i32);

    /// Set the device's timeout in seconds (WDIOC_SETTIMEOUT); the driver
    /// writes back the timeout it actually uses.
    pub(super) fn set_timeout(file: &std::fs::File, secs: &mut i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the
        // pointer, which points to a live i32 for the duration of the call;
        // the fd stays open while `file` is borrowed.
        unsafe { wdioc_settimeout(file.as_raw_fd(), secs) }
            .map(|_| ())
            .map_err(std::io::Error::from)
    }
}

impl DeviceWatchdog {
    /// Open `path` and set its timeout to `lease` (whole seconds, at least 1).
    pub fn open(path: &Path, lease: Duration) -> Result<Self, WatchdogError> {
        let err = |source| WatchdogError::Device {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(err)?;
        let mut secs = i32::try_from(lease.as_secs().max(1)).unwrap_or(i32::MAX);
        sys::set_timeout(&file, &mut secs).map_err(err)?;
        Ok(Self { file })
    }
}

impl Watchdog for DeviceWatchdog {
    fn feed(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"\0")
    }
    fn disarm(&mut self) -> std::io::Result<()> {
        // The "magic close": 'V' then close stops a watchdog opened without nowayout.
        self.file.write_all(b"V")
    }
}

/// systemd's service watchdog.
#[derive(Debug)]
pub struct SystemdWatchdog {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl SystemdWatchdog {
    /// Use `$NOTIFY_SOCKET`.
    pub fn new() -> Result<Self, WatchdogError> {
        let path = std::env::var_os("NOTIFY_SOCKET").ok_or(WatchdogError::NoNotifySocket)?;
        let socket = std::os::unix::net::UnixDatagram::unbound().map_err(WatchdogError::Keeper)?;
        Ok(Self {
            socket,
            path: path.into(),
        })
    }
}

impl Watchdog for SystemdWatchdog {
    fn feed(&mut self) -> std::io::Result<()> {
        self.socket.send_to(b"WATCHDOG=1", &self.path).map(|_| ())
    }
    fn disarm(&mut self) -> std::io::Result<()> {
        self.socket.send_to(b"STOPPING=1", &self.path).map(|_| ())
    }
}

/// A keeper process that kills this daemon's session when not fed.
#[derive(Debug)]
pub struct KeeperWatchdog {
    child: std::process::Child,
}

impl KeeperWatchdog {
    /// Make this daemon a session leader (so that everything it starts is
    /// in its session) and start the keeper in a session of its own.
    pub fn spawn(lease: Duration) -> Result<Self, WatchdogError> {
        // Already a session leader is fine: then the session is ours anyway.
        let _ = nix::unistd::setsid();
        let sid = nix::unistd::getsid(None).map_err(|e| WatchdogError::Keeper(e.into()))?;
        let exe = std::env::current_exe().map_err(WatchdogError::Keeper)?;
        let child = std::process::Command::new(exe)
            .arg(KEEPER_ARG)
            .arg(lease.as_millis().to_string())
            .arg(sid.as_raw().to_string())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(WatchdogError::Keeper)?;
        Ok(Self { child })
    }

    fn send(&mut self, byte: u8) -> std::io::Result<()> {
        match self.child.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&[byte]).and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("keeper stdin closed")),
        }
    }
}

impl Watchdog for KeeperWatchdog {
    fn feed(&mut self) -> std::io::Result<()> {
        self.send(b'.')
    }
    fn disarm(&mut self) -> std::io::Result<()> {
        self.send(b'V')?;
        let _ = self.child.wait();
        Ok(())
    }
}

/// If this process was started as the watchdog keeper, run it and exit.
/// Daemons call this first thing in `main`.
pub fn run_keeper_if_requested() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(KEEPER_ARG) {
        return;
    }
    let lease = args
        .get(2)
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_millis);
    let sid = args.get(3).and_then(|s| s.parse::<i32>().ok());
    let (Some(lease), Some(sid)) = (lease, sid) else {
        eprintln!("watchdog keeper: usage: {KEEPER_ARG} LEASE_MS SESSION_ID");
        std::process::exit(2);
    };
    keeper(lease, sid);
}

/// The keeper: like a kernel watchdog with `nowayout`, a closed pipe does
/// not stop it; only the magic byte `V` does. When the lease runs out it
/// kills every process of session `sid`.
fn keeper(lease: Duration, sid: i32) -> ! {
    use std::io::Read;
    use std::sync::mpsc::{RecvTimeoutError, channel};
    use std::time::Instant;
    // Out of the daemon's session and process group, so its death leaves us.
    let _ = nix::unistd::setsid();
    let (tx, rx) = channel::<u8>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                return;
            }
            for &b in &buf[..n] {
                if tx.send(b).is_err() {
                    return;
                }
            }
        }
    });
    let mut deadline = Instant::now() + lease;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b'V') => std::process::exit(0),
            Ok(_) => deadline = Instant::now() + lease,
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                break;
            }
        }
    }
    eprintln!(
        "watchdog keeper: lease of {} ms expired, killing session {sid}",
        lease.as_millis()
    );
    for _ in 0..3 {
        kill_session(sid);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::exit(0);
}

fn kill_session(sid: i32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp session ...
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let session = after
            .split_whitespace()
            .nth(3)
            .and_then(|s| s.parse::<i32>().ok());
        if session == Some(sid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
