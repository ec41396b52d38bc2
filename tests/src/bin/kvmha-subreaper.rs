//! `kvmha-subreaper COMMAND [ARG...]`: run COMMAND as a child subreaper
//! would on a real host, for the testbed's per-host `libvirtd`.
//!
//! libvirtd starts each QEMU as a daemon (double fork), so a QEMU's parent
//! is init. On the testbed, PID 1 reaps orphans only every ~1.4 s, and
//! libvirt reports a dead QEMU only once it is reaped: a crash would be
//! seen 1.4-1.6 s late and a `destroy` would take up to 2 s, where a real
//! host's init reaps at once. This process marks itself a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`), so orphans below it are re-parented
//! to it, and reaps every child as soon as `SIGCHLD` arrives.
//!
//! On `SIGTERM` or `SIGINT`, or when the thread that started it ends
//! (parent-death signal), it kills (`SIGKILL`) every process re-parented
//! to it, so that no QEMU outlives its simulated host. When COMMAND exits
//! by itself (libvirtd crashed or was killed), the QEMUs it started keep
//! running, as on a real host, until they exit or the subreaper is told to
//! stop; it exits with COMMAND's status once none is left.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: kvmha-subreaper COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    match run(program, rest) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kvmha-subreaper: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(program: &str, args: &[String]) -> Result<u8, String> {
    let parent = getppid();
    prctl::set_child_subreaper(true).map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    // Blocked here and read from a signalfd; the child starts with an
    // empty mask (the standard library resets it before exec).
    mask.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let signals =
        SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|e| format!("signalfd: {e}"))?;
    if getppid() != parent {
        // The parent died before the death signal was armed.
        return Ok(143);
    }
    let child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let main_pid = Pid::from_raw(i32::try_from(child.id()).map_err(|e| e.to_string())?);
    let code = loop {
        let signo = match signals.read_signal() {
            Ok(Some(info)) => info.ssi_signo,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("reading signals: {e}")),
        };
        if signo == Signal::SIGCHLD as u32 {
            if let Some(code) = reap(main_pid) {
                break code;
            }
        } else {
            kill_adopted();
            return Ok(128 + u8::try_from(signo).unwrap_or(15));
        }
    };
    // COMMAND (libvirtd) is gone, by a crash or a kill: the QEMUs it
    // started keep running, as on a real host, and a new libvirtd finds
    // them again. Keep reaping them until none is left, or until told to
    // stop (then kill them: no QEMU outlives its simulated host).
    loop {
        if children().is_empty() {
            return Ok(code);
        }
        let signo = match signals.read_signal() {
            Ok(Some(info)) => info.ssi_signo,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("reading signals: {e}")),
        };
        if signo == Signal::SIGCHLD as u32 {
            let _ = reap(main_pid);
        } else {
            kill_adopted();
            return Ok(code);
        }
    }
}

/// Reap every child that has exited; the exit code of `main_pid` if it
/// was among them.
fn reap(main_pid: Pid) -> Option<u8> {
    let mut main_code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main_pid => {
                main_code = Some(u8::try_from(code).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main_pid => {
                main_code = Some(128 + u8::try_from(sig as i32).unwrap_or(0));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return main_code,
            Ok(_) => {}
        }
    }
}

/// The processes whose parent is this one (from `/proc`).
fn children() -> Vec<Pid> {
    let me = getpid().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // `pid (comm) state ppid ...`; comm may hold spaces.
                    let after = s.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(me)
        })
        .map(Pid::from_raw)
        .collect()
}

/// Kill every remaining child and reap it, for at most 5 s.
fn kill_adopted() {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let left = children();
        for pid in &left {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
