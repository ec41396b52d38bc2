//! `kind = "disk"` monitors: a periodic read of the start of a device that
//! bypasses the page cache, so a check reaches the disk (or the SAN, or the
//! shared image) every time.
//!
//! A check opens the device with `O_DIRECT` and reads `block_size` bytes at
//! offset 0 into a buffer aligned to 4 KiB (what `O_DIRECT` asks of memory
//! on any device). It passes when the read returns data. It fails when the
//! device cannot be opened (missing, no permission, a file system without
//! `O_DIRECT`), when the read fails (`EIO`...; `EINVAL` usually means a
//! `block_size` that is not a multiple of the device's logical block size),
//! when it returns nothing, or when it has not returned within the check's
//! timeout.
//!
//! # A hung device
//!
//! A read from a device that stopped answering blocks in the kernel and
//! cannot be interrupted. The check therefore runs on its own OS thread
//! (not tokio's blocking pool, whose stuck threads would hold up the
//! runtime's shutdown); after the timeout the check fails and the thread is
//! left behind, still blocked. While it is, later checks fail at once
//! ("still hung") instead of piling up more stuck threads; once the read
//! returns, the thread ends and checks start again.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cluster_core::resource::{BoxFuture, CheckOutcome, MonitorDriver};
use nix::fcntl::OFlag;

/// Memory alignment of the read buffer: `O_DIRECT` needs the device's
/// logical block size (512 or 4096 bytes); 4096 satisfies both.
const ALIGN: usize = 4096;
/// The largest read a check makes, whatever the configuration says.
const MAX_BLOCK: usize = 16 << 20;

/// Why work handed to a thread gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ThreadError {
    /// No thread could be started.
    #[error("cannot start a thread: {0}")]
    Spawn(#[source] io::Error),
    /// It did not answer in time (the thread goes on, blocked).
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// It panicked.
    #[error("the thread panicked")]
    Panicked,
}

/// Run `f` on a new OS thread named `name` and wait at most `timeout` for
/// its result. A call stuck in the kernel (a hung device, a dead NFS
/// server) cannot be interrupted: after the timeout the thread is left
/// behind and its result is dropped whenever it comes.
pub(crate) async fn on_thread<T, F>(name: &str, timeout: Duration, f: F) -> Result<T, ThreadError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(ThreadError::Spawn)?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(ThreadError::Panicked),
        Err(_) => Err(ThreadError::TimedOut(timeout)),
    }
}

/// Driver of one `kind = "disk"` monitor.
#[derive(Debug)]
pub struct DiskMonitor {
    device: PathBuf,
    block_size: u32,
    /// When the read still running (or stuck) started.
    in_flight: Arc<Mutex<Option<Instant>>>,
}

impl DiskMonitor {
    /// A driver for `config`.
    pub fn new(config: &conf::DiskMonitor) -> Self {
        Self {
            device: config.device.clone(),
            block_size: config.block_size,
            in_flight: Arc::new(Mutex::new(None)),
        }
    }

    /// When the read that is still running started, if one is.
    #[cfg(test)]
    fn running_since(&self) -> Option<Instant> {
        *self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Why this monitor cannot read anything, if it cannot (a
    /// `block_size` out of range).
    pub fn config_problem(&self) -> Option<String> {
        let size = usize::try_from(self.block_size).unwrap_or(usize::MAX);
        (size == 0 || size > MAX_BLOCK).then(|| {
            format!(
                "block_size {} is out of range (1 to {MAX_BLOCK} bytes)",
                self.block_size
            )
        })
    }

    async fn check_once(&self, timeout: Duration) -> CheckOutcome {
        if let Some(problem) = self.config_problem() {
            return CheckOutcome::Failed(problem);
        }
        let size = usize::try_from(self.block_size).unwrap_or(usize::MAX);
        {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(since) = *in_flight {
                return CheckOutcome::Failed(format!(
                    "{}: a read started {:?} ago is still hung",
                    self.device.display(),
                    since.elapsed()
                ));
            }
            *in_flight = Some(Instant::now());
        }
        let device = self.device.clone();
        let in_flight = self.in_flight.clone();
        let read = on_thread("kvmha-disk", timeout, move || {
            let result = read_start(&device, size);
            *in_flight.lock().unwrap_or_else(PoisonError::into_inner) = None;
            result
        })
        .await;
        match read {
            Ok(Ok(_)) => CheckOutcome::Ok,
            Ok(Err(e)) => CheckOutcome::Failed(format!("{}: {e}", self.device.display())),
            Err(e) => {
                if matches!(e, ThreadError::Spawn(_) | ThreadError::Panicked) {
                    *self
                        .in_flight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                }
                CheckOutcome::Failed(format!("{}: read: {e}", self.device.display()))
            }
        }
    }
}

impl MonitorDriver for DiskMonitor {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let outcome = self.check_once(timeout).await;
            if let CheckOutcome::Failed(message) = &outcome {
                tracing::warn!(device = %self.device.display(), "disk check failed: {message}");
            }
            outcome
        })
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("cannot open with O_DIRECT: {0}")]
    Open(#[source] io::Error),
    #[error("O_DIRECT read of {size} bytes at offset 0 failed: {source}{hint}")]
    Read {
        size: usize,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("read 0 bytes at offset 0 (empty device)")]
    Empty,
}

/// Read `size` bytes at offset 0 of `device`, bypassing the cache. Returns
/// how many bytes came back (fewer than `size` only at the end of the
/// device).
fn read_start(device: &Path, size: usize) -> Result<usize, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_DIRECT.bits())
        .open(device)
        .map_err(ReadError::Open)?;
    let mut buffer = vec![0u8; size + ALIGN];
    let start = buffer.as_ptr().align_offset(ALIGN).min(ALIGN);
    let Some(block) = buffer.get_mut(start..start + size) else {
        return Err(ReadError::Read {
            size,
            source: io::Error::other("cannot align the buffer"),
            hint: "",
        });
    };
    let mut done = 0;
    while done < size {
        let Some(rest) = block.get_mut(done..) else {
            break;
        };
        match file.read_at(rest, done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                let hint = if source.raw_os_error() == Some(nix::libc::EINVAL) {
                    " (block_size must be a multiple of the device's logical block size)"
                } else {
                    ""
                };
                return Err(ReadError::Read { size, source, hint });
            }
        }
    }
    if done == 0 {
        return Err(ReadError::Empty);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    use crate::mount::testing::LoopDevice;

    fn monitor(device: &Path, block_size: u32) -> DiskMonitor {
        DiskMonitor::new(&conf::DiskMonitor {
            device: device.to_path_buf(),
            block_size,
        })
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn reads_a_loop_device() {
        let disk = LoopDevice::new(8, false);
        assert_eq!(
            monitor(&disk.path, 4096).check(TIMEOUT).await,
            CheckOutcome::Ok
        );
        assert_eq!(
            monitor(&disk.path, 512).check(TIMEOUT).await,
            CheckOutcome::Ok
        );
        // Not a multiple of the logical block size: O_DIRECT refuses it.
        match monitor(&disk.path, 100).check(TIMEOUT).await {
            CheckOutcome::Failed(m) => assert!(m.contains("logical block size"), "{m}"),
            CheckOutcome::Ok => panic!("an unaligned O_DIRECT read passed"),
        }
    }

    #[tokio::test]
    async fn reads_a_file_and_reports_an_empty_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let image = dir.path().join("disk.img");
        let mut file = std::fs::File::create(&image).unwrap_or_else(|e| panic!("{e}"));
        file.write_all(&[7u8; 8192])
            .unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        assert_eq!(monitor(&image, 4096).check(TIMEOUT).await, CheckOutcome::Ok);
        // Shorter than block_size: what there is counts.
        assert_eq!(
            monitor(&image, 65536).check(TIMEOUT).await,
            CheckOutcome::Ok
        );

        let empty = dir.path().join("empty.img");
        std::fs::File::create(&empty).unwrap_or_else(|e| panic!("{e}"));
        match monitor(&empty, 4096).check(TIMEOUT).await {
            CheckOutcome::Failed(m) => assert!(m.contains("empty device"), "{m}"),
            CheckOutcome::Ok => panic!("an empty device passed"),
        }
        match monitor(&image, 0).check(TIMEOUT).await {
            CheckOutcome::Failed(m) => assert!(m.contains("out of range"), "{m}"),
            CheckOutcome::Ok => panic!("a zero block size passed"),
        }
    }

    #[tokio::test]
    async fn a_missing_device_fails() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("no-such-disk");
        match monitor(&missing, 4096).check(TIMEOUT).await {
            CheckOutcome::Failed(m) => {
                assert!(m.contains("no-such-disk"), "{m}");
                assert!(m.contains("No such file"), "{m}");
            }
            CheckOutcome::Ok => panic!("a missing device passed"),
        }
    }

    /// A FIFO stands for a device that does not answer: opening it blocks
    /// in the kernel until a writer comes (there is no device-mapper here
    /// to suspend a real one).
    #[tokio::test]
    async fn a_hung_device_fails_after_the_timeout_and_is_not_read_twice() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fifo = dir.path().join("hung");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        let m = monitor(&fifo, 4096);

        let started = Instant::now();
        let outcome = m.check(Duration::from_millis(300)).await;
        let elapsed = started.elapsed();
        assert_eq!(
            outcome,
            CheckOutcome::Failed(format!("{}: read: no answer within 300ms", fifo.display()))
        );
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

        // The stuck read is not started again: the next check fails at once.
        let started = Instant::now();
        match m.check(Duration::from_secs(5)).await {
            CheckOutcome::Failed(message) => assert!(message.contains("still hung"), "{message}"),
            CheckOutcome::Ok => panic!("a hung device passed"),
        }
        assert!(started.elapsed() < Duration::from_millis(200));

        // The device answers again (a writer opens the FIFO): the thread
        // returns and checks run again.
        let _writer = OpenOptions::new()
            .write(true)
            .open(&fifo)
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..200 {
            if m.running_since().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the read thread did not return");
    }
}
