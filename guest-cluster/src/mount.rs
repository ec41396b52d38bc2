//! `kind = "mount"` resources: a file system on a (shared) block device,
//! checked, mounted and unmounted on this node.
//!
//! # Start
//!
//! 1. If the mount point already has the device mounted, done. If it has
//!    something else mounted, a hard failure: that is not ours to touch.
//! 2. With `fsck = true`, `fsck -a -t FSTYPE DEVICE` (journal replay and
//!    the repairs that need no question). Its exit code is a bit mask
//!    (`fsck(8)`): 0 clean and 1 errors corrected are fine; 2 (reboot
//!    asked: the file system seemed mounted), 4 (errors left), 8
//!    (operational error: missing device, bad superblock), 16 (usage) and
//!    128 (library error) are hard failures, the device needs an operator;
//!    32 (cancelled) is a soft one. A missing device is a hard failure too.
//! 3. The mount point is created if missing (mode 0755).
//! 4. `mount -t FSTYPE -o OPTIONS DEVICE MOUNTPOINT`. The `mount` command
//!    rather than `mount(2)`: it turns the option words operators know from
//!    fstab (`noatime`, `ro`, `_netdev`, `x-*`...) into flags and data, and
//!    runs the file system's helper (`mount.nfs`, `mount.cifs`,
//!    `mount.fuse`...), which a bare syscall would not. Exit 1 (bad usage,
//!    no permission) is hard, any other failure soft.
//! 5. `/proc/self/mountinfo` must then show the device on the mount point.
//!
//! Commands run in their own process group with `LC_ALL=C`; their output
//! goes to the log; at the action's timeout the group is killed (a process
//! stuck in the kernel, such as a mount of an unreachable NFS server, may
//! outlive that).
//!
//! # Stop
//!
//! Unmounting uses `umount2(2)` directly, which tells a busy file system
//! (`EBUSY`) from other errors; unmounting needs no helper. Everything
//! mounted on top of the file system (at the mount point or below it) is
//! unmounted first, newest first. If the file system is busy:
//!
//! - without `force_unmount`, a soft failure naming the processes that
//!   hold it;
//! - with it: the processes that hold it (an open file, a working or root
//!   directory, the executable or a mapped file on it; found under
//!   `/proc/*/{fd,cwd,root,exe,maps}` by device number, so deleted files
//!   and other mount namespaces' paths are found too) get `SIGTERM`; after
//!   up to half of the remaining time the ones left get `SIGKILL`; then the
//!   unmount is tried again. This daemon never signals itself or PID 1.
//! - If it is still busy (a holder stuck in the kernel, or a holder no
//!   process shows, such as a loop device backed by a file on it), as a
//!   last resort and with a warning: `MNT_FORCE` (aborts pending requests
//!   on network file systems), then `MNT_DETACH` (a lazy unmount).
//!
//! A lazy unmount only hides the file system: it stays active, journal and
//! all, while anything holds it, and another node mounting the shared
//! device then would corrupt it. So after every unmount of a block device
//! the stop succeeds only once the device can be opened `O_EXCL` (the
//! kernel refuses that while any file system, in any mount namespace,
//! still uses it); otherwise it fails, and the engine's stop-failure policy
//! (fence or block) takes over. That check is made on every stop of a
//! block device, also when nothing is mounted on the mount point. What is
//! mounted on the mount point from another device is left alone.
//!
//! # Probe
//!
//! From `/proc/self/mountinfo`: the device on top of the mount point is
//! running, nothing there is stopped, another device there (or on top of
//! ours) is failed. Nothing there while the block device is still in use
//! (a detached file system still active) is unknown, as is a mountinfo
//! that cannot be read or a probe that does not finish in time (every step
//! that touches file systems runs on its own thread, bounded by the
//! timeout).
//!
//! The device is recognised by its path, its resolved path or its device
//! number, so `/dev/disk/by-id/...` and `/dev/disk/by-uuid/...` links work;
//! `UUID=`/`LABEL=` tags are not (mountinfo shows the device, never the
//! tag). Network sources (`server:/export`) are compared as written. A
//! configuration that cannot be mounted (a relative or `/` mount point, a
//! device or type that looks like an option) fails to start, hard, and is
//! stopped for stop and probe.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use cluster_core::resource::{ActionContext, ActionOutcome, BoxFuture, Probe, ResourceDriver};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::disk_monitor::{ThreadError, on_thread};

/// How often holders are looked at while they are given time to exit.
const HOLDER_POLL: Duration = Duration::from_millis(50);
/// How long the device is given to be released after an unmount.
const RELEASE_WAIT: Duration = Duration::from_millis(500);
/// Most unmounts one stop makes (submounts included).
const MAX_UNMOUNTS: usize = 64;
/// How long a command's output is read after it ended.
const DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// Driver of one `kind = "mount"` resource.
#[derive(Debug)]
pub struct MountDriver {
    config: conf::MountResource,
}

/// What went wrong, and whether retrying here can help.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Hard(String),
    #[error("{0}")]
    Soft(String),
    #[error("timed out")]
    TimedOut,
}

impl From<ThreadError> for Error {
    fn from(e: ThreadError) -> Self {
        match e {
            ThreadError::TimedOut(_) => Self::TimedOut,
            other => Self::Soft(other.to_string()),
        }
    }
}

impl MountDriver {
    /// A driver for `config` (as this node runs it, overrides applied).
    pub fn new(config: conf::MountResource) -> Self {
        Self { config }
    }

    /// Why this configuration cannot be mounted, if it cannot (a relative
    /// or `/` mount point, a device or type that looks like an option):
    /// what a start would refuse, hard.
    pub fn config_problem(&self) -> Option<String> {
        self.check_config().err().map(|e| e.to_string())
    }

    fn check_config(&self) -> Result<(), Error> {
        let c = &self.config;
        if !c.mountpoint.is_absolute() || normalize(&c.mountpoint) == Path::new("/") {
            return Err(Error::Hard(format!(
                "the mount point {} must be an absolute path other than /",
                c.mountpoint.display()
            )));
        }
        let device = c.device.as_os_str().as_bytes();
        if device.is_empty() || device.starts_with(b"-") {
            return Err(Error::Hard(format!(
                "`{}` is not a device",
                c.device.display()
            )));
        }
        // fsck takes a relative name for "check everything in fstab".
        if c.fsck && !c.device.is_absolute() {
            return Err(Error::Hard(format!(
                "fsck needs an absolute device path, not {}",
                c.device.display()
            )));
        }
        if c.fstype.is_empty() || c.fstype.starts_with('-') || c.fstype.contains(',') {
            return Err(Error::Hard(format!(
                "`{}` is not a file system type",
                c.fstype
            )));
        }
        Ok(())
    }

    /// What is mounted on the mount point now.
    async fn snapshot(&self, deadline: Instant) -> Result<Snapshot, Error> {
        let device = self.config.device.clone();
        let mountpoint = self.config.mountpoint.clone();
        on_thread("kvmha-mountinfo", remaining(deadline), move || {
            Snapshot::take(&device, &mountpoint)
        })
        .await?
        .map_err(|e| Error::Soft(format!("cannot read /proc/self/mountinfo: {e}")))
    }

    async fn start_inner(&self, ctx: &ActionContext, deadline: Instant) -> Result<(), Error> {
        self.check_config()?;
        let c = &self.config;
        match self.snapshot(deadline).await?.state() {
            State::Ours => {
                tracing::info!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    mountpoint = %c.mountpoint.display(),
                    "already mounted",
                );
                return Ok(());
            }
            State::Absent => {}
            other => return Err(Error::Hard(other.describe(&c.mountpoint, &c.device))),
        }
        let device = c.device.clone();
        let exists = on_thread("kvmha-mount", remaining(deadline), move || {
            !device.is_absolute() || device.exists()
        })
        .await?;
        if !exists {
            return Err(Error::Hard(format!(
                "the device {} does not exist on this node",
                c.device.display()
            )));
        }
        if c.fsck {
            self.fsck(ctx, deadline).await?;
        }
        let mountpoint = c.mountpoint.clone();
        on_thread("kvmha-mount", remaining(deadline), move || {
            std::fs::create_dir_all(&mountpoint)
        })
        .await?
        .map_err(|e| {
            Error::Hard(format!(
                "cannot create the mount point {}: {e}",
                c.mountpoint.display()
            ))
        })?;
        let mut args: Vec<OsString> = vec!["-t".into(), c.fstype.clone().into()];
        if !c.options.is_empty() {
            args.push("-o".into());
            args.push(c.options.join(",").into());
        }
        args.push(c.device.clone().into());
        args.push(c.mountpoint.clone().into());
        match run("mount", &args, ctx, deadline).await {
            Ran::Exited { status, .. } if status.success() => {}
            Ran::Exited { status, last } => {
                let message = format!("mount: {}", describe(status, last.as_deref()));
                return Err(if status.code() == Some(1) {
                    Error::Hard(message)
                } else {
                    Error::Soft(message)
                });
            }
            Ran::Spawn(e) => return Err(Error::Hard(format!("cannot run mount: {e}"))),
            Ran::TimedOut => return Err(Error::TimedOut),
        }
        match self.snapshot(deadline).await?.state() {
            State::Ours => Ok(()),
            other => Err(Error::Soft(format!(
                "mount succeeded but {}",
                other.describe(&c.mountpoint, &c.device)
            ))),
        }
    }

    async fn fsck(&self, ctx: &ActionContext, deadline: Instant) -> Result<(), Error> {
        let c = &self.config;
        let args: Vec<OsString> = vec![
            "-a".into(),
            "-t".into(),
            c.fstype.clone().into(),
            c.device.clone().into(),
        ];
        match run("fsck", &args, ctx, deadline).await {
            Ran::Exited { status, last } => match fsck_verdict(status) {
                FsckVerdict::Clean => Ok(()),
                FsckVerdict::Corrected => {
                    tracing::warn!(
                        group = %ctx.group,
                        resource = %ctx.resource,
                        device = %c.device.display(),
                        "fsck corrected errors on the file system",
                    );
                    Ok(())
                }
                FsckVerdict::Hard(what) => Err(Error::Hard(format!(
                    "fsck: {what}: {}",
                    describe(status, last.as_deref())
                ))),
                FsckVerdict::Soft(what) => Err(Error::Soft(format!(
                    "fsck: {what}: {}",
                    describe(status, last.as_deref())
                ))),
            },
            Ran::Spawn(e) => Err(Error::Hard(format!("cannot run fsck: {e}"))),
            Ran::TimedOut => Err(Error::TimedOut),
        }
    }

    async fn stop_inner(&self, ctx: &ActionContext, deadline: Instant) -> Result<(), Error> {
        if let Err(e) = self.check_config() {
            // Nothing can have been mounted with it.
            tracing::warn!(group = %ctx.group, resource = %ctx.resource, "{e}: nothing to unmount");
            return Ok(());
        }
        let c = &self.config;
        let snapshot = self.snapshot(deadline).await?;
        let block_device = snapshot.device.is_block;
        match snapshot.state() {
            State::Absent => {}
            State::Other(_) => tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                "{}; leaving it",
                snapshot.state().describe(&c.mountpoint, &c.device)
            ),
            State::Ours | State::OursUnder(_) => self.unmount_ours(ctx, deadline).await?,
        }
        if block_device {
            let device = c.device.clone();
            let released = on_thread("kvmha-umount", remaining(deadline), move || {
                wait_released(&device, RELEASE_WAIT)
            })
            .await?;
            if !released {
                return Err(Error::Soft(format!(
                    "{} is not mounted on {}, but it is still in use: a file system on it stays active (held by something no process shows, mounted elsewhere, or in another mount namespace)",
                    c.device.display(),
                    c.mountpoint.display(),
                )));
            }
        }
        Ok(())
    }

    /// Unmount our file system and what is mounted on top of it: stop its
    /// holders if allowed, detach it as a last resort.
    async fn unmount_ours(&self, ctx: &ActionContext, deadline: Instant) -> Result<(), Error> {
        let c = &self.config;
        let mut step = self.unmount(MntFlags::empty(), deadline).await?;
        if let Unmount::Busy { path, devices } = &step {
            let holders = self.holders(devices.clone(), deadline).await?;
            if !c.force_unmount {
                return Err(Error::Soft(format!(
                    "{} is busy ({}); force_unmount is off",
                    path.display(),
                    describe_holders(&holders)
                )));
            }
            self.stop_holders(ctx, holders, devices, deadline).await?;
            step = self.unmount(MntFlags::empty(), deadline).await?;
        }
        if let Unmount::Busy { path, .. } = &step {
            tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                mountpoint = %path.display(),
                "still busy after its holders were killed: forcing and detaching the mount (last resort)",
            );
            step = self.unmount(MntFlags::MNT_FORCE, deadline).await?;
            if let Unmount::Busy { .. } = step {
                step = self.unmount(MntFlags::MNT_DETACH, deadline).await?;
            }
        }
        match step {
            Unmount::Done => Ok(()),
            Unmount::Busy { path, .. } => Err(Error::Soft(format!(
                "{} stays busy even for a lazy unmount",
                path.display()
            ))),
        }
    }

    /// Unmount the file system and everything on top of it with `flags`.
    async fn unmount(&self, flags: MntFlags, deadline: Instant) -> Result<Unmount, Error> {
        let device = self.config.device.clone();
        let mountpoint = self.config.mountpoint.clone();
        on_thread("kvmha-umount", remaining(deadline), move || {
            unmount_all(&device, &mountpoint, flags)
        })
        .await?
    }

    async fn holders(
        &self,
        devices: HashSet<(u64, u64)>,
        deadline: Instant,
    ) -> Result<Vec<Holder>, Error> {
        Ok(on_thread("kvmha-holders", remaining(deadline), move || {
            find_holders(&devices)
        })
        .await?)
    }

    /// `SIGTERM` the holders, give them up to half the remaining time,
    /// `SIGKILL` the ones left and wait (again up to half the remaining
    /// time) until none holds the file system.
    async fn stop_holders(
        &self,
        ctx: &ActionContext,
        mut holders: Vec<Holder>,
        devices: &HashSet<(u64, u64)>,
        deadline: Instant,
    ) -> Result<(), Error> {
        for signal in [Signal::SIGTERM, Signal::SIGKILL] {
            if holders.is_empty() {
                break;
            }
            for h in &holders {
                tracing::warn!(
                    group = %ctx.group,
                    resource = %ctx.resource,
                    mountpoint = %self.config.mountpoint.display(),
                    pid = h.pid,
                    process = %h.name,
                    %signal,
                    "stopping a process that holds the file system",
                );
                match kill(Pid::from_raw(h.pid), signal) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        tracing::error!(pid = h.pid, %signal, error = %e, "cannot signal a holder")
                    }
                }
            }
            let now = Instant::now();
            let until = now + deadline.saturating_duration_since(now) / 2;
            loop {
                holders = self.holders(devices.clone(), deadline).await?;
                let now = Instant::now();
                if holders.is_empty() || now >= until {
                    break;
                }
                tokio::time::sleep(HOLDER_POLL.min(until - now)).await;
            }
        }
        if !holders.is_empty() {
            tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                "processes still hold the file system after SIGKILL: {}",
                describe_holders(&holders)
            );
        }
        Ok(())
    }

    async fn act(&self, ctx: &ActionContext, action: &'static str) -> ActionOutcome {
        let c = &self.config;
        tracing::info!(
            group = %ctx.group,
            resource = %ctx.resource,
            device = %c.device.display(),
            mountpoint = %c.mountpoint.display(),
            reason = %ctx.reason,
            "{action} of the mount",
        );
        let deadline = Instant::now() + ctx.timeout;
        let work = async {
            if action == "start" {
                self.start_inner(ctx, deadline).await
            } else {
                self.stop_inner(ctx, deadline).await
            }
        };
        let result = tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or(Err(Error::TimedOut));
        let outcome = match result {
            Ok(()) => ActionOutcome::Ok,
            Err(Error::TimedOut) => ActionOutcome::TimedOut,
            Err(Error::Hard(message)) => ActionOutcome::Failed {
                message,
                hard: true,
            },
            Err(Error::Soft(message)) => ActionOutcome::Failed {
                message,
                hard: false,
            },
        };
        match &outcome {
            ActionOutcome::Ok => {}
            ActionOutcome::Failed { message, hard } => tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                hard,
                "the {action} failed: {message}",
            ),
            ActionOutcome::TimedOut => tracing::warn!(
                group = %ctx.group,
                resource = %ctx.resource,
                "the {action} did not finish within {:?}",
                ctx.timeout,
            ),
        }
        outcome
    }
}

impl ResourceDriver for MountDriver {
    fn start<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(self.act(ctx, "start"))
    }

    fn stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(self.act(ctx, "stop"))
    }

    fn probe<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            if let Err(e) = self.check_config() {
                // As for stop: nothing can have been mounted with it.
                tracing::debug!(group = %ctx.group, resource = %ctx.resource, "{e}");
                return Probe::Stopped;
            }
            let device = self.config.device.clone();
            let mountpoint = self.config.mountpoint.clone();
            let looked = on_thread("kvmha-mountinfo", ctx.timeout, move || {
                let snapshot = Snapshot::take(&device, &mountpoint)?;
                let in_use = matches!(snapshot.state(), State::Absent)
                    && snapshot.device.is_block
                    && !wait_released(&device, Duration::ZERO);
                Ok::<_, io::Error>((snapshot, in_use))
            })
            .await
            .map_err(Error::from)
            .and_then(|r| {
                r.map_err(|e| Error::Soft(format!("cannot read /proc/self/mountinfo: {e}")))
            });
            match looked {
                Ok((_, true)) => Probe::Unknown(format!(
                    "{} is not mounted on {}, but the device is in use (a detached file system still active, or mounted elsewhere)",
                    self.config.device.display(),
                    self.config.mountpoint.display()
                )),
                Ok((snapshot, false)) => match snapshot.state() {
                    State::Absent => Probe::Stopped,
                    State::Ours => Probe::Running,
                    other => {
                        Probe::Failed(other.describe(&self.config.mountpoint, &self.config.device))
                    }
                },
                Err(Error::TimedOut) => Probe::Unknown(format!(
                    "reading the mount table took longer than {:?}",
                    ctx.timeout
                )),
                Err(e) => Probe::Unknown(e.to_string()),
            }
        })
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountEntry {
    id: u64,
    parent: u64,
    /// `st_dev` of the files on it (major, minor).
    dev: (u64, u64),
    mountpoint: PathBuf,
    fstype: String,
    source: String,
}

/// `\NNN` octal escapes (space, tab, newline, backslash) undone.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let id = left.next()?.parse().ok()?;
    let parent = left.next()?.parse().ok()?;
    let (major, minor) = left.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let _root = left.next()?;
    let mountpoint = PathBuf::from(OsString::from_vec(unescape(left.next()?)));
    let mut right = right.split(' ');
    let fstype = String::from_utf8_lossy(&unescape(right.next()?)).into_owned();
    let source = String::from_utf8_lossy(&unescape(right.next()?)).into_owned();
    Some(MountEntry {
        id,
        parent,
        dev,
        mountpoint,
        fstype,
        source,
    })
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// `path` without `.`, `..` and repeated or trailing slashes.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The mount point as mountinfo shows it: its parent directory resolved
/// (symbolic links), the last name kept, so that nothing is looked up
/// inside a possibly hung file system mounted there.
fn resolve_mountpoint(mountpoint: &Path) -> PathBuf {
    let clean = normalize(mountpoint);
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(clean),
        _ => clean,
    }
}

fn split_dev(dev: u64) -> (u64, u64) {
    (nix::sys::stat::major(dev), nix::sys::stat::minor(dev))
}

/// How the configured device is recognised in the mount table.
#[derive(Debug)]
struct Device {
    configured: String,
    canonical: Option<PathBuf>,
    /// Its device number, if it is a block device.
    rdev: Option<(u64, u64)>,
    is_block: bool,
}

impl Device {
    fn identify(path: &Path) -> Self {
        let metadata = std::fs::metadata(path).ok();
        let is_block = metadata
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        Self {
            configured: path.to_string_lossy().into_owned(),
            canonical: if path.is_absolute() {
                std::fs::canonicalize(path).ok()
            } else {
                None
            },
            rdev: metadata.filter(|_| is_block).map(|m| split_dev(m.rdev())),
            is_block,
        }
    }

    fn matches(&self, entry: &MountEntry) -> bool {
        if entry.source == self.configured || self.rdev == Some(entry.dev) {
            return true;
        }
        self.canonical.is_some()
            && entry.source.starts_with('/')
            && std::fs::canonicalize(&entry.source).ok() == self.canonical
    }
}

/// The mount table as it concerns this resource.
#[derive(Debug)]
struct Snapshot {
    mountpoint: PathBuf,
    device: Device,
    entries: Vec<MountEntry>,
}

/// What the mount point has.
#[derive(Debug)]
enum State {
    Absent,
    Ours,
    /// Ours, with another file system mounted on top.
    OursUnder(MountEntry),
    Other(MountEntry),
}

impl State {
    fn describe(&self, mountpoint: &Path, device: &Path) -> String {
        match self {
            Self::Absent => format!("nothing is mounted on {}", mountpoint.display()),
            Self::Ours => format!(
                "{} is mounted on {}",
                device.display(),
                mountpoint.display()
            ),
            Self::OursUnder(top) => format!(
                "{} is mounted on {} but {} ({}) is mounted over it",
                device.display(),
                mountpoint.display(),
                top.source,
                top.fstype
            ),
            Self::Other(top) => format!(
                "{} has {} ({}) mounted, not {}",
                mountpoint.display(),
                top.source,
                top.fstype,
                device.display()
            ),
        }
    }
}

impl Snapshot {
    fn take(device: &Path, mountpoint: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self {
            mountpoint: resolve_mountpoint(mountpoint),
            device: Device::identify(device),
            entries: parse_mountinfo(&text),
        })
    }

    fn at_mountpoint(&self) -> Vec<&MountEntry> {
        self.entries
            .iter()
            .filter(|e| e.mountpoint == self.mountpoint)
            .collect()
    }

    fn state(&self) -> State {
        let here = self.at_mountpoint();
        // The top one: no other mount on the mount point sits on it.
        let Some(top) = here
            .iter()
            .rev()
            .find(|e| !here.iter().any(|o| o.parent == e.id))
            .or(here.last())
        else {
            return State::Absent;
        };
        if self.device.matches(top) {
            State::Ours
        } else if here.iter().any(|e| self.device.matches(e)) {
            State::OursUnder((*top).clone())
        } else {
            State::Other((*top).clone())
        }
    }

    /// Our mount on the mount point and everything mounted on top of it
    /// (at the mount point or below), in mount-table order (parents first).
    fn ours_and_above(&self) -> Vec<&MountEntry> {
        let Some(ours) = self
            .at_mountpoint()
            .into_iter()
            .find(|e| self.device.matches(e))
        else {
            return Vec::new();
        };
        let mut ids = HashSet::from([ours.id]);
        let mut out = vec![ours];
        // Descendants come after their parents in the table; repeat until
        // nothing is added in case a move reordered them.
        loop {
            let before = out.len();
            for e in &self.entries {
                if !ids.contains(&e.id) && ids.contains(&e.parent) {
                    ids.insert(e.id);
                    out.push(e);
                }
            }
            if out.len() == before {
                break;
            }
        }
        out.sort_by_key(|e| self.entries.iter().position(|o| o.id == e.id));
        out
    }
}

/// How an unmount pass ended.
#[derive(Debug)]
enum Unmount {
    /// Nothing of ours is mounted any more.
    Done,
    /// `path` is busy; `devices` are the device numbers of our file system
    /// and everything on top of it.
    Busy {
        path: PathBuf,
        devices: HashSet<(u64, u64)>,
    },
}

/// Unmount our file system and everything above it, newest first.
fn unmount_all(device: &Path, mountpoint: &Path, flags: MntFlags) -> Result<Unmount, Error> {
    for _ in 0..MAX_UNMOUNTS {
        let snapshot = Snapshot::take(device, mountpoint)
            .map_err(|e| Error::Soft(format!("cannot read /proc/self/mountinfo: {e}")))?;
        let targets = snapshot.ours_and_above();
        let Some(last) = targets.last() else {
            return Ok(Unmount::Done);
        };
        match umount2(&last.mountpoint, flags) {
            Ok(()) => {
                tracing::debug!(mountpoint = %last.mountpoint.display(), ?flags, "unmounted");
            }
            Err(Errno::EBUSY) => {
                return Ok(Unmount::Busy {
                    path: last.mountpoint.clone(),
                    devices: targets.iter().map(|e| e.dev).collect(),
                });
            }
            Err(e) => {
                return Err(Error::Soft(format!(
                    "cannot unmount {}: {e}",
                    last.mountpoint.display()
                )));
            }
        }
    }
    Err(Error::Soft(format!(
        "more than {MAX_UNMOUNTS} file systems mounted on {}",
        mountpoint.display()
    )))
}

/// A process that holds the file system.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    pid: i32,
    name: String,
}

fn describe_holders(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "no process holds it".into();
    }
    let list: Vec<String> = holders
        .iter()
        .map(|h| format!("{} ({})", h.pid, h.name))
        .collect();
    format!("held by {}", list.join(", "))
}

/// The processes (other than this one and PID 1) with an open file, a
/// working or root directory, the executable or a mapping on one of
/// `devices`.
fn find_holders(devices: &HashSet<(u64, u64)>) -> Vec<Holder> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid <= 1 || pid == me {
            continue;
        }
        let dir = entry.path();
        if holds(&dir, devices) {
            let name = std::fs::read_to_string(dir.join("comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_default();
            if let Ok(pid) = i32::try_from(pid) {
                holders.push(Holder { pid, name });
            }
        }
    }
    holders.sort_by_key(|h| h.pid);
    holders
}

fn holds(proc_dir: &Path, devices: &HashSet<(u64, u64)>) -> bool {
    let on_ours =
        |path: &Path| std::fs::metadata(path).is_ok_and(|m| devices.contains(&split_dev(m.dev())));
    if ["cwd", "root", "exe"]
        .iter()
        .any(|link| on_ours(&proc_dir.join(link)))
    {
        return true;
    }
    if let Ok(fds) = std::fs::read_dir(proc_dir.join("fd"))
        && fds.flatten().any(|fd| on_ours(&fd.path()))
    {
        return true;
    }
    // maps: "address perms offset MAJ:MIN inode path", numbers in hex.
    std::fs::read_to_string(proc_dir.join("maps")).is_ok_and(|maps| {
        maps.lines().any(|line| {
            line.split_whitespace()
                .nth(3)
                .and_then(|dev| dev.split_once(':'))
                .and_then(|(major, minor)| {
                    Some((
                        u64::from_str_radix(major, 16).ok()?,
                        u64::from_str_radix(minor, 16).ok()?,
                    ))
                })
                .is_some_and(|dev| dev != (0, 0) && devices.contains(&dev))
        })
    })
}

/// Whether no file system (in any mount namespace) uses the block device
/// any more: it can be opened `O_EXCL`. Retried for up to `wait`. A device
/// that cannot be opened for another reason counts as released.
fn wait_released(device: &Path, wait: Duration) -> bool {
    let until = std::time::Instant::now() + wait;
    loop {
        match OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_EXCL | OFlag::O_CLOEXEC).bits())
            .open(device)
        {
            Ok(_) => return true,
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {
                if std::time::Instant::now() >= until {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::debug!(device = %device.display(), error = %e, "cannot check whether the device is released");
                return true;
            }
        }
    }
}

/// What `fsck`'s exit code means.
#[derive(Debug, PartialEq, Eq)]
enum FsckVerdict {
    Clean,
    Corrected,
    Hard(&'static str),
    Soft(&'static str),
}

fn fsck_verdict(status: ExitStatus) -> FsckVerdict {
    let Some(code) = status.code() else {
        return FsckVerdict::Soft("killed");
    };
    match code {
        0 => FsckVerdict::Clean,
        1 => FsckVerdict::Corrected,
        c if c & 4 != 0 => FsckVerdict::Hard("errors left uncorrected"),
        c if c & 8 != 0 => FsckVerdict::Hard("operational error"),
        c if c & 16 != 0 => FsckVerdict::Hard("usage or syntax error"),
        c if c & 128 != 0 => FsckVerdict::Hard("shared-library error"),
        c if c & 2 != 0 => FsckVerdict::Hard("reboot requested (is the file system mounted?)"),
        c if c & 32 != 0 => FsckVerdict::Soft("cancelled"),
        _ => FsckVerdict::Hard("unexpected exit code"),
    }
}

/// `exit N: last output line`, or `killed by signal N`.
fn describe(status: ExitStatus, last: Option<&str>) -> String {
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    };
    match last {
        Some(line) => format!("{what}: {line}"),
        None => what,
    }
}

/// How a command ended.
#[derive(Debug)]
enum Ran {
    /// With its exit status and the last non-empty line of its output.
    Exited {
        status: ExitStatus,
        last: Option<String>,
    },
    Spawn(io::Error),
    /// Killed at the deadline.
    TimedOut,
}

/// Run `program args` in its own process group until it ends or the
/// deadline, when the whole group is killed. Its output is logged.
async fn run(program: &str, args: &[OsString], ctx: &ActionContext, deadline: Instant) -> Ran {
    tracing::info!(
        group = %ctx.group,
        resource = %ctx.resource,
        command = ?std::iter::once(OsStr::new(program)).chain(args.iter().map(OsString::as_os_str)).collect::<Vec<_>>(),
        "running",
    );
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Ran::Spawn(e),
    };
    // Kills the whole group if this future is dropped before the command
    // was reaped (the action's own timeout cancelled it).
    let mut group = GroupKill(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf).await;
            buf
        })
    })
    .collect();
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => {
            group.0 = None;
            status
        }
        Ok(Err(e)) => return Ran::Spawn(e),
        Err(_) => {
            group.kill();
            let _ = child.start_kill();
            // Reaped in the background by tokio if it does not die now (a
            // process stuck in the kernel).
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), child.wait()).await
            {
                group.0 = None;
            }
            return Ran::TimedOut;
        }
    };
    let mut last = None;
    for reader in readers {
        if let Ok(Ok(bytes)) = tokio::time::timeout(DRAIN_LIMIT, reader).await {
            for line in String::from_utf8_lossy(&bytes).lines() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                tracing::info!(group = %ctx.group, resource = %ctx.resource, program, "{line}");
                last = Some(line.to_owned());
            }
        }
    }
    Ran::Exited { status, last }
}

/// A command's process group, killed on drop unless its leader was reaped
/// (until then the group id cannot have been reused).
#[derive(Debug)]
struct GroupKill(Option<Pid>);

impl GroupKill {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    tracing::error!(pgid = pgid.as_raw(), error = %e, "cannot kill a command's process group")
                }
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Test helpers: loop devices that are cleaned up whatever happens.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A loop device over a sparse image in its own temporary directory,
    /// which also holds a mount point (`mnt`, not created). On drop,
    /// whatever is mounted from it is detached and the loop device is
    /// released, also when the test failed.
    #[derive(Debug)]
    pub(crate) struct LoopDevice {
        pub(crate) path: PathBuf,
        pub(crate) mountpoint: PathBuf,
        pub(crate) dir: tempfile::TempDir,
    }

    pub(crate) fn sh(command: &str, args: &[&str]) -> String {
        let out = Command::new(command)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(
            out.status.success(),
            "{command} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    impl LoopDevice {
        /// `size_mib` MiB, formatted ext4 if `mkfs`.
        pub(crate) fn new(size_mib: u64, mkfs: bool) -> Self {
            Self::in_dir(
                tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
                size_mib,
                mkfs,
            )
        }

        /// The same with its image in `dir` (a file system under test).
        pub(crate) fn in_dir(dir: tempfile::TempDir, size_mib: u64, mkfs: bool) -> Self {
            let image = dir.path().join("disk.img");
            let file = std::fs::File::create(&image).unwrap_or_else(|e| panic!("{e}"));
            file.set_len(size_mib << 20)
                .unwrap_or_else(|e| panic!("{e}"));
            drop(file);
            let image = image.to_string_lossy().into_owned();
            let path = PathBuf::from(sh("losetup", &["-f", "--show", &image]));
            let device = Self {
                path,
                mountpoint: dir.path().join("mnt"),
                dir,
            };
            if mkfs {
                device.mkfs();
            }
            device
        }

        pub(crate) fn mkfs(&self) {
            sh("mkfs.ext4", &["-q", "-F", &self.path.to_string_lossy()]);
        }

        pub(crate) fn dir(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            let device = self.path.to_string_lossy().into_owned();
            if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
                for entry in super::parse_mountinfo(&text).iter().rev() {
                    if entry.source == device {
                        let _ = nix::mount::umount2(
                            &entry.mountpoint,
                            nix::mount::MntFlags::MNT_DETACH,
                        );
                    }
                }
            }
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{LoopDevice, sh};
    use super::*;

    use std::os::unix::fs::FileExt;
    use std::process::{Child, Command};

    use cluster_core::resource::StartReason;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn ctx(timeout: Duration) -> ActionContext {
        ActionContext {
            group: "db".into(),
            resource: "data".into(),
            node: "node-a".into(),
            reason: StartReason::Failover,
            previous_owner: Some("node-b".into()),
            previous_owner_fenced: true,
            timeout,
        }
    }

    fn config(disk: &LoopDevice) -> conf::MountResource {
        conf::MountResource {
            device: disk.path.clone(),
            mountpoint: disk.mountpoint.clone(),
            fstype: "ext4".into(),
            options: vec!["noatime".into(), "nodev".into()],
            fsck: false,
            force_unmount: true,
        }
    }

    fn mounts_at(path: &Path) -> Vec<MountEntry> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_else(|e| panic!("{e}"));
        parse_mountinfo(&text)
            .into_iter()
            .filter(|e| e.mountpoint == path)
            .collect()
    }

    /// Unmounts (lazily) whatever is on `0` when dropped.
    struct Detach(PathBuf);

    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }

    fn mount_tmpfs(at: &Path) -> Detach {
        std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("{e}"));
        sh(
            "mount",
            &["-t", "tmpfs", "kvmha-test", &at.to_string_lossy()],
        );
        Detach(at.to_path_buf())
    }

    fn spawn(command: &mut Command) -> Child {
        command.spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until process `pid` runs `name` (its shell did its setup).
    async fn wait_comm(pid: u32, name: &str) {
        for _ in 0..500 {
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("process {pid} never became {name}");
    }

    fn e2fsck_check(device: &Path) -> Option<i32> {
        Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(device)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{e}"))
            .code()
    }

    #[tokio::test]
    async fn mounts_probes_and_unmounts_a_loop_device() {
        let disk = LoopDevice::new(16, true);
        let d = MountDriver::new(config(&disk));
        let c = ctx(TIMEOUT);
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        assert!(!disk.mountpoint.exists());

        let t = std::time::Instant::now();
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        let start = t.elapsed();
        let t = std::time::Instant::now();
        assert_eq!(d.probe(&c).await, Probe::Running);
        let probe = t.elapsed();
        let here = mounts_at(&disk.mountpoint);
        assert_eq!(here.len(), 1, "{here:?}");
        assert_eq!(here[0].fstype, "ext4");
        assert_eq!(Path::new(&here[0].source), disk.path);
        let line = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_else(|e| panic!("{e}"))
            .lines()
            .find(|l| parse_mountinfo_line(l).is_some_and(|e| e.id == here[0].id))
            .map(str::to_owned)
            .unwrap_or_default();
        assert!(line.contains("noatime") && line.contains("nodev"), "{line}");
        std::fs::write(disk.mountpoint.join("data"), "on the shared disk")
            .unwrap_or_else(|e| panic!("{e}"));

        // Starting again changes nothing.
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        assert_eq!(mounts_at(&disk.mountpoint).len(), 1);

        let t = std::time::Instant::now();
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        let stop = t.elapsed();
        eprintln!("mount start {start:?}, probe {probe:?}, stop {stop:?}");
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        assert!(mounts_at(&disk.mountpoint).is_empty());
        assert!(!disk.mountpoint.join("data").exists());
        assert!(wait_released(&disk.path, Duration::ZERO));
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);

        // A link to the device (as /dev/disk/by-id/...) is the same device,
        // and a mount point written with a trailing slash the same place.
        let link = disk.dir().join("by-id");
        std::os::unix::fs::symlink(&disk.path, &link).unwrap_or_else(|e| panic!("{e}"));
        let d = MountDriver::new(conf::MountResource {
            device: link,
            mountpoint: disk.mountpoint.join("."),
            ..config(&disk)
        });
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        assert_eq!(d.probe(&c).await, Probe::Running);
        assert_eq!(
            std::fs::read_to_string(disk.mountpoint.join("data")).unwrap_or_default(),
            "on the shared disk"
        );
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert_eq!(d.probe(&c).await, Probe::Stopped);
    }

    #[tokio::test]
    async fn a_busy_unmount_terms_then_kills_the_holders() {
        let disk = LoopDevice::new(16, true);
        let d = MountDriver::new(config(&disk));
        assert_eq!(d.start(&ctx(TIMEOUT)).await, ActionOutcome::Ok);
        let held = disk.mountpoint.join("held");
        std::fs::write(&held, "x").unwrap_or_else(|e| panic!("{e}"));
        // An open file; goes on SIGTERM.
        let file = std::fs::File::open(&held).unwrap_or_else(|e| panic!("{e}"));
        let mut reader = spawn(Command::new("sleep").arg("100").stdin(file));
        // A working directory; ignores SIGTERM (and so does the sleep it
        // becomes).
        let mut stubborn = spawn(
            Command::new("sh")
                .args(["-c", "trap '' TERM; exec sleep 100"])
                .current_dir(&disk.mountpoint),
        );
        wait_comm(stubborn.id(), "sleep").await;
        let devices = HashSet::from([mounts_at(&disk.mountpoint)[0].dev]);
        let scan = std::time::Instant::now();
        let found: Vec<i32> = find_holders(&devices).iter().map(|h| h.pid).collect();
        let scan = scan.elapsed();
        let mut expected = vec![reader.id() as i32, stubborn.id() as i32];
        expected.sort_unstable();
        assert_eq!(found, expected);

        let started = std::time::Instant::now();
        let outcome = d.stop(&ctx(Duration::from_secs(2))).await;
        let elapsed = started.elapsed();
        assert_eq!(outcome, ActionOutcome::Ok);
        let reader = reader.wait().unwrap_or_else(|e| panic!("{e}"));
        let stubborn = stubborn.wait().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reader.signal(), Some(Signal::SIGTERM as i32));
        assert_eq!(stubborn.signal(), Some(Signal::SIGKILL as i32));
        // SIGKILL after half the time (1 s) the stubborn one resisted.
        assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert_eq!(d.probe(&ctx(TIMEOUT)).await, Probe::Stopped);
        assert!(wait_released(&disk.path, Duration::ZERO));
        eprintln!(
            "busy unmount with a SIGTERM-proof holder: {elapsed:?} (timeout 2 s); one /proc scan: {scan:?}"
        );
    }

    #[tokio::test]
    async fn without_force_unmount_a_busy_stop_fails_and_kills_nothing() {
        let disk = LoopDevice::new(16, true);
        let d = MountDriver::new(conf::MountResource {
            force_unmount: false,
            ..config(&disk)
        });
        let c = ctx(TIMEOUT);
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        let mut holder = spawn(
            Command::new("sleep")
                .arg("100")
                .current_dir(&disk.mountpoint),
        );
        match d.stop(&c).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(!hard);
                assert!(
                    message.contains(&format!("{} (sleep)", holder.id())),
                    "{message}"
                );
                assert!(message.contains("force_unmount is off"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            matches!(holder.try_wait(), Ok(None)),
            "the holder was killed"
        );
        assert_eq!(d.probe(&c).await, Probe::Running);
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert_eq!(d.probe(&c).await, Probe::Stopped);
    }

    #[tokio::test]
    async fn fsck_repairs_the_file_system_before_mounting() {
        let disk = LoopDevice::new(16, true);
        let device = disk.path.to_string_lossy().into_owned();
        // Not cleanly unmounted, and a block bitmap that is wrong.
        sh("debugfs", &["-w", "-R", "ssv state 0", &device]);
        sh("debugfs", &["-w", "-R", "freeb 200", &device]);
        assert_eq!(e2fsck_check(&disk.path), Some(4));

        let d = MountDriver::new(conf::MountResource {
            fsck: true,
            ..config(&disk)
        });
        let c = ctx(TIMEOUT);
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        assert_eq!(d.probe(&c).await, Probe::Running);
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert_eq!(e2fsck_check(&disk.path), Some(0), "fsck did not repair it");
    }

    #[tokio::test]
    async fn a_failing_fsck_is_hard_and_mounts_nothing() {
        let disk = LoopDevice::new(16, true);
        // Wipe the primary superblock.
        let dev = OpenOptions::new()
            .write(true)
            .open(&disk.path)
            .unwrap_or_else(|e| panic!("{e}"));
        dev.write_all_at(&[0u8; 1024], 1024)
            .unwrap_or_else(|e| panic!("{e}"));
        dev.sync_all().unwrap_or_else(|e| panic!("{e}"));
        drop(dev);

        let d = MountDriver::new(conf::MountResource {
            fsck: true,
            ..config(&disk)
        });
        let c = ctx(TIMEOUT);
        match d.start(&c).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(hard, "{message}");
                assert!(
                    message.starts_with("fsck: operational error: exit 8"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        assert!(mounts_at(&disk.mountpoint).is_empty());
    }

    #[tokio::test]
    async fn a_missing_device_is_a_hard_failure() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = MountDriver::new(conf::MountResource {
            device: dir.path().join("no-such-disk"),
            mountpoint: dir.path().join("mnt"),
            fstype: "ext4".into(),
            options: Vec::new(),
            fsck: false,
            force_unmount: true,
        });
        let c = ctx(TIMEOUT);
        match d.start(&c).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(hard);
                assert!(message.contains("does not exist"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
    }

    #[tokio::test]
    async fn another_file_system_on_the_mount_point_is_not_ours() {
        let disk = LoopDevice::new(16, true);
        let _tmpfs = mount_tmpfs(&disk.mountpoint);
        let d = MountDriver::new(config(&disk));
        let c = ctx(TIMEOUT);
        match d.probe(&c).await {
            Probe::Failed(m) => assert!(m.contains("kvmha-test (tmpfs) mounted"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            d.start(&c).await,
            ActionOutcome::Failed { hard: true, .. }
        ));
        // Not ours: left alone.
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert_eq!(mounts_at(&disk.mountpoint).len(), 1);
    }

    #[tokio::test]
    async fn what_is_mounted_on_top_is_unmounted_first() {
        let disk = LoopDevice::new(16, true);
        let d = MountDriver::new(config(&disk));
        let c = ctx(TIMEOUT);
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        let _below = mount_tmpfs(&disk.mountpoint.join("sub"));
        assert_eq!(d.probe(&c).await, Probe::Running);
        let _over = mount_tmpfs(&disk.mountpoint);
        match d.probe(&c).await {
            Probe::Failed(m) => assert!(m.contains("mounted over it"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert!(mounts_at(&disk.mountpoint).is_empty());
        assert!(mounts_at(&disk.mountpoint.join("sub")).is_empty());
        assert_eq!(d.probe(&c).await, Probe::Stopped);
    }

    /// A loop device backed by a file on the file system holds it with no
    /// process to kill: the lazy unmount hides it but it stays active, and
    /// the stop must not claim it is stopped.
    #[tokio::test]
    async fn a_file_system_still_active_after_a_lazy_unmount_is_not_stopped() {
        let outer = LoopDevice::new(32, true);
        let d = MountDriver::new(config(&outer));
        assert_eq!(d.start(&ctx(TIMEOUT)).await, ActionOutcome::Ok);
        let inner = LoopDevice::in_dir(
            tempfile::tempdir_in(&outer.mountpoint).unwrap_or_else(|e| panic!("{e}")),
            4,
            false,
        );
        match d.stop(&ctx(Duration::from_secs(2))).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(!hard);
                assert!(message.contains("still in use"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Detached from the mount point, yet not stopped: unknown.
        assert!(mounts_at(&outer.mountpoint).is_empty());
        assert!(matches!(d.probe(&ctx(TIMEOUT)).await, Probe::Unknown(m) if m.contains("in use")));

        // Once the last user goes, the file system goes too.
        drop(inner);
        assert_eq!(d.stop(&ctx(TIMEOUT)).await, ActionOutcome::Ok);
        assert_eq!(d.probe(&ctx(TIMEOUT)).await, Probe::Stopped);
    }

    #[tokio::test]
    async fn bad_paths_are_hard_failures() {
        let c = ctx(TIMEOUT);
        for (device, mountpoint, fsck) in [
            ("/dev/x", "relative/mnt", false),
            ("/dev/x", "/", false),
            ("/dev/x", "/mnt/../", false),
            ("-o", "/mnt/x", false),
            ("relative-device", "/mnt/x", true),
        ] {
            let d = MountDriver::new(conf::MountResource {
                device: device.into(),
                mountpoint: mountpoint.into(),
                fstype: "ext4".into(),
                options: Vec::new(),
                fsck,
                force_unmount: true,
            });
            assert!(
                matches!(d.start(&c).await, ActionOutcome::Failed { hard: true, .. }),
                "{device} {mountpoint}"
            );
            assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
            assert_eq!(d.probe(&c).await, Probe::Stopped);
        }
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space\\134x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    garbage line\n\
                    40 36 0:45 / /srv - nfs4 server:/export\\040x rw\n";
        let entries = parse_mountinfo(text);
        assert_eq!(
            entries,
            vec![
                MountEntry {
                    id: 36,
                    parent: 35,
                    dev: (98, 0),
                    mountpoint: PathBuf::from("/mnt/with space\\x"),
                    fstype: "ext3".into(),
                    source: "/dev/root".into(),
                },
                MountEntry {
                    id: 40,
                    parent: 36,
                    dev: (0, 45),
                    mountpoint: PathBuf::from("/srv"),
                    fstype: "nfs4".into(),
                    source: "server:/export x".into(),
                },
            ]
        );
    }

    #[test]
    fn fsck_exit_codes() {
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(fsck_verdict(exit(0)), FsckVerdict::Clean);
        assert_eq!(fsck_verdict(exit(1)), FsckVerdict::Corrected);
        assert!(matches!(fsck_verdict(exit(2)), FsckVerdict::Hard(m) if m.contains("reboot")));
        assert!(matches!(fsck_verdict(exit(3)), FsckVerdict::Hard(_)));
        assert!(matches!(fsck_verdict(exit(4)), FsckVerdict::Hard(m) if m.contains("uncorrected")));
        assert!(matches!(fsck_verdict(exit(5)), FsckVerdict::Hard(m) if m.contains("uncorrected")));
        assert!(matches!(fsck_verdict(exit(8)), FsckVerdict::Hard(m) if m.contains("operational")));
        assert!(matches!(fsck_verdict(exit(16)), FsckVerdict::Hard(_)));
        assert!(matches!(fsck_verdict(exit(32)), FsckVerdict::Soft(_)));
        assert!(matches!(fsck_verdict(exit(128)), FsckVerdict::Hard(_)));
        assert!(matches!(
            fsck_verdict(ExitStatus::from_raw(9)),
            FsckVerdict::Soft(_)
        ));
    }

    #[test]
    fn mount_points_are_normalized() {
        assert_eq!(
            normalize(Path::new("/srv//data/./")),
            PathBuf::from("/srv/data")
        );
        assert_eq!(
            normalize(Path::new("/srv/x/../data")),
            PathBuf::from("/srv/data")
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap_or_else(|e| panic!("{e}"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap_or_else(|e| panic!("{e}"));
        let canonical = std::fs::canonicalize(&real).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            resolve_mountpoint(&link.join("mnt/")),
            canonical.join("mnt")
        );
    }
}
