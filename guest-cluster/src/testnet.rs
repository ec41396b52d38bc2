//! Test helpers for the network drivers (tests that need root): two network
//! namespaces joined by a veth pair, deleted when dropped (also when the
//! test panics), and a way to run async code inside a namespace.
//!
//! The drivers talk netlink and send frames in the network namespace of
//! the thread that runs them, so a test runs them on a dedicated thread
//! that has entered the namespace (`setns`) and drives a current-thread
//! tokio runtime; threads that runtime starts (blocking helpers) inherit
//! the namespace.

use std::fs::File;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use cluster_core::resource::{ActionContext, StartReason};
use nix::sched::CloneFlags;

/// Run `ip ARGS`, panicking with its stderr if it fails; its stdout.
pub(crate) fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces `a` and `b`, each with `lo` and `eth0` up, the two
/// `eth0` joined by a veth pair. IPv6 duplicate address detection is
/// shortened on `eth0` (no initial random delay, 100 ms per probe) so that
/// tests wait 0.1 s instead of 1-2 s.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) a: String,
    pub(crate) b: String,
}

impl Pair {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "kvmha-net-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // The guard exists before anything is created: a failure half-way
        // still deletes what was made.
        let pair = Self {
            a: format!("{tag}-a"),
            b: format!("{tag}-b"),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "-n", &pair.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &pair.b,
        ]);
        for ns in [&pair.a, &pair.b] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            sysctl(ns, "net/ipv6/conf/eth0/router_solicitation_delay", "0");
            sysctl(ns, "net/ipv6/neigh/eth0/retrans_time_ms", "100");
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        pair
    }

    /// The MAC address of `eth0` in `ns`.
    pub(crate) fn mac(ns: &str) -> String {
        let out = ip(&["-n", ns, "-o", "link", "show", "eth0"]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {out}"))
            .to_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            // Deleting a namespace deletes its links (the veth pair too).
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Write `value` to `/proc/sys/KEY` inside `ns` (through `ip netns exec`,
/// which also gives the command a `/sys` of the namespace).
pub(crate) fn sysctl(ns: &str, key: &str, value: &str) {
    let script = format!("echo {value} > /proc/sys/{key}");
    ip(&["netns", "exec", ns, "sh", "-c", &script]);
}

/// Start `f` on a new thread inside the namespace `ns`, on a
/// current-thread tokio runtime.
pub(crate) fn spawn_in<T, Fut>(ns: &str, f: impl FnOnce() -> Fut + Send + 'static) -> JoinHandle<T>
where
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
            .block_on(f())
    })
}

/// Run `f` inside the namespace `ns` and return what it returns (a panic
/// in it fails the test).
pub(crate) fn run_in<T, Fut>(ns: &str, f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    join(spawn_in(ns, f))
}

/// Wait for a thread from [`spawn_in`], passing its panic on.
pub(crate) fn join<T>(thread: JoinHandle<T>) -> T {
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The context of an action of `resource` in group `g` on `node-a`.
pub(crate) fn ctx(resource: &str, timeout: Duration) -> ActionContext {
    ActionContext {
        group: "g".into(),
        resource: resource.into(),
        node: "node-a".into(),
        reason: StartReason::Start,
        previous_owner: None,
        previous_owner_fenced: false,
        timeout,
    }
}
