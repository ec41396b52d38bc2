//! Crash-safe small files: written to a temporary file, fsynced, renamed
//! over the old one, and the directory fsynced, so a crash at any point
//! leaves either the old or the new content, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// The incarnation of this daemon start: the wall clock in milliseconds,
/// but always above the one recorded in `state_dir` by the previous start
/// (a clock set back must not make peers take us for a replay).
pub fn next_incarnation(state_dir: &Path) -> std::io::Result<u64> {
    let path = state_dir.join("incarnation");
    let previous = fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let next = now.max(previous.saturating_add(1));
    write_atomic(&path, format!("{next}\n").as_bytes())?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_always_grow() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = next_incarnation(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let b = next_incarnation(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(b > a);
        // A recorded incarnation from the future (clock set back) still wins.
        write_atomic(&dir.path().join("incarnation"), b"99999999999999\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next_incarnation(dir.path()).ok(), Some(100_000_000_000_000));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("state");
        write_atomic(&p, b"one").unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&p, b"two").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&p).ok().as_deref(), Some(&b"two"[..]));
        assert_eq!(fs::read_dir(dir.path()).map(|d| d.count()).ok(), Some(1));
    }
}
