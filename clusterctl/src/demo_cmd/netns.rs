//! The network of the demo's second act: one network namespace per guest
//! and one for the client, each with an interface `eth0` (one end of a
//! veth pair) whose other end is a port of bridge `br0` in a hub
//! namespace. Nothing is created in the machine's own namespace, so
//! deleting the namespaces removes every bridge, veth and address.
//!
//! The names are fixed (`kvmha-demo-*`): the demo holds a machine-wide
//! lock ([`DemoLock`]) while it runs, so a namespace with that prefix that
//! exists when it starts was left by an interrupted run, and is removed
//! with every process in it. The same cleanup runs when the network is
//! dropped and when the demo is interrupted (SIGINT, SIGTERM, SIGHUP).

use std::fs::File;
use std::net::IpAddr;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The prefix of every namespace the demo creates.
pub(super) const PREFIX: &str = "kvmha-demo-";
/// The namespace that holds the bridge.
const HUB: &str = "kvmha-demo-hub";
/// The lock that keeps two demos apart (root only, like the namespaces).
const LOCK_PATH: &str = "/run/kvmha-demo.lock";
/// How long a demo waits for another one to end.
const LOCK_WAIT: Duration = Duration::from_secs(180);

/// Held while something is created in the namespaces (or they are), and
/// by the cleanup: an interrupt never races a creation, and the cleanup
/// that follows it sees everything that was made.
static CHANGES: Mutex<()> = Mutex::new(());

fn changes() -> std::sync::MutexGuard<'static, ()> {
    CHANGES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The namespace of demo host `name` (a guest node or `client`).
pub(super) fn ns_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// Run `ip` with `args`; its error output on failure.
pub(super) fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The machine-wide demo lock: one demo at a time (fixed namespace names,
/// fixed loopback ports).
#[derive(Debug)]
pub(super) struct DemoLock {
    _held: nix::fcntl::Flock<File>,
}

impl DemoLock {
    /// Take the lock, waiting (up to [`LOCK_WAIT`]) for a demo that holds it.
    pub(super) fn take() -> anyhow::Result<Self> {
        use nix::fcntl::{Flock, FlockArg};
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(LOCK_PATH)
                .with_context(|| {
                    format!("cannot open {LOCK_PATH} (the demo builds network namespaces: run it as root)")
                })
        };
        let mut file = open()?;
        let deadline = Instant::now() + LOCK_WAIT;
        let mut told = false;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Self { _held: lock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = f,
                Err((_, e)) => return Err(e).context(format!("cannot lock {LOCK_PATH}")),
            }
            if Instant::now() > deadline {
                bail!(
                    "another `clusterctl demo` still runs after {} s ({LOCK_PATH} is locked)",
                    LOCK_WAIT.as_secs()
                );
            }
            if !told {
                eprintln!("waiting for another `clusterctl demo` to end ({LOCK_PATH})...");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A host of the demo network: its namespace is `kvmha-demo-{name}`.
#[derive(Clone, Debug)]
pub(super) struct Host {
    pub(super) name: String,
    /// `eth0`'s addresses with their prefix lengths.
    pub(super) addresses: Vec<(IpAddr, u8)>,
}

/// The demo network; dropping it kills every process in its namespaces
/// and deletes them.
#[derive(Debug)]
pub(super) struct DemoNet {
    hosts: Vec<Host>,
}

/// The IPv6 duplicate address detection of the guests' `eth0`: one
/// neighbour solicitation, answered or not within this time, and no
/// random delay before it (the kernel's defaults: up to 1 s of delay, then
/// 1 s).
pub(super) const DAD_RETRANS_MS: u32 = 100;

impl DemoNet {
    /// Remove what an interrupted run left, then build the network.
    pub(super) fn build(hosts: &[Host]) -> anyhow::Result<(Self, Vec<String>)> {
        let left = remove_all();
        // From here on the drop removes whatever was made (after
        // `create` has let go of the lock the cleanup takes).
        let net = Self {
            hosts: hosts.to_vec(),
        };
        net.create()?;
        Ok((net, left))
    }

    fn create(&self) -> anyhow::Result<()> {
        let _changing = changes();
        ip(&["netns", "add", HUB])?;
        ip(&["-n", HUB, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", HUB, "link", "set", "br0", "up"])?;
        for h in &self.hosts {
            let ns = ns_name(&h.name);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name",
                &h.name, "netns", HUB,
            ])?;
            ip(&["-n", HUB, "link", "set", &h.name, "master", "br0", "up"])?;
            set_sysctls(
                &ns,
                &[
                    ("net/ipv6/conf/eth0/router_solicitation_delay", "0".into()),
                    (
                        "net/ipv6/neigh/eth0/retrans_time_ms",
                        DAD_RETRANS_MS.to_string(),
                    ),
                ],
            )?;
            self.configure(h)?;
        }
        Ok(())
    }

    /// `eth0` of `h` with its own addresses, up (as at boot).
    fn configure(&self, h: &Host) -> anyhow::Result<()> {
        let ns = ns_name(&h.name);
        for (addr, len) in &h.addresses {
            let cidr = format!("{addr}/{len}");
            let mut args = vec!["-n", &ns, "addr", "add", &cidr, "dev", "eth0"];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            ip(&args)?;
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"])
    }

    /// Power host `name` on again after a fence took its addresses and
    /// links: its own addresses back, `eth0` up.
    pub(super) fn power_on(&self, name: &str) -> anyhow::Result<()> {
        let _changing = changes();
        let h = self
            .hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no demo host {name}"))?;
        let ns = ns_name(name);
        ip(&["-n", &ns, "addr", "flush", "dev", "eth0"])?;
        self.configure(h)
    }

    /// Spawn `command` while no cleanup runs (the cleanup that follows
    /// an interrupt then finds the process in its namespace).
    pub(super) fn spawn(&self, command: &mut Command) -> std::io::Result<std::process::Child> {
        let _changing = changes();
        command.spawn()
    }
}

impl Drop for DemoNet {
    fn drop(&mut self) {
        remove_all();
    }
}

/// Write `/proc/sys/` values inside namespace `ns` (a thread that enters
/// it sees the namespace's `/proc/sys/net`).
fn set_sysctls(ns: &str, values: &[(&str, String)]) -> anyhow::Result<()> {
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (format!("/proc/sys/{k}"), v.clone()))
        .collect();
    in_netns(ns, move || -> anyhow::Result<()> {
        for (path, value) in &values {
            std::fs::write(path, value).with_context(|| format!("write {path}"))?;
        }
        Ok(())
    })?
    .join()?
    .with_context(|| format!("sysctls in namespace {ns}"))
}

/// A thread inside a network namespace.
#[derive(Debug)]
pub(super) struct NsThread<T>(std::thread::JoinHandle<Option<T>>);

impl<T> NsThread<T> {
    /// Wait for the thread's result.
    pub(super) fn join(self) -> anyhow::Result<T> {
        match self.0.join() {
            Ok(Some(t)) => Ok(t),
            Ok(None) => bail!("the thread did not enter its namespace"),
            Err(_) => bail!("a namespace thread panicked"),
        }
    }
}

/// Run `f` on a new thread inside network namespace `ns` (`setns` moves
/// only the calling thread); returns once the thread is in it.
pub(super) fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<NsThread<T>> {
    let file = open_ns(ns)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || {
            let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            ok.then(f)
        })
        .context("cannot start a thread")?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(NsThread(handle)),
        Ok(Err(e)) => Err(e).context(format!("cannot enter namespace {ns}")),
        Err(_) => bail!("the thread for namespace {ns} ended early"),
    }
}

/// Open namespace `ns` for `setns`.
pub(super) fn open_ns(ns: &str) -> anyhow::Result<File> {
    File::open(format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))
}

/// The names of the demo's namespaces that exist now.
fn existing() -> Vec<String> {
    ip_output(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

/// The processes in namespace `ns` (zombies hold no namespace and are
/// not listed).
fn pids_in(ns: &str) -> Vec<i32> {
    ip_output(&["netns", "pids", ns])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kill every process in every demo namespace (SIGKILL, until none is
/// left or 2 s have passed) and delete the namespaces; returns their
/// names. Bridges, veths and addresses go with them.
pub(super) fn remove_all() -> Vec<String> {
    let _changing = changes();
    let names = existing();
    let deadline = Instant::now() + Duration::from_secs(2);
    for ns in &names {
        loop {
            let pids = pids_in(ns);
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for ns in &names {
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("clusterctl demo: {e:#}");
        }
    }
    reap_children();
    names
}

/// Reap this process's children that have exited: as a child subreaper
/// ([`become_subreaper`]) the demo inherits what the killed daemons
/// started (web servers, watchdog keepers), and reaps them at once
/// instead of leaving them to PID 1.
pub(super) fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Orphans of the demo's daemons become this process's children.
pub(super) fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("clusterctl demo: cannot become a child subreaper ({e}); PID 1 reaps instead");
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove the demo's namespaces with every
/// process in them, and exit with status 130. The daemons of the demo run
/// in those namespaces, so nothing of the demo is left.
pub(super) fn clean_up_on_interrupt() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    // Registered before this returns, so that no signal is missed.
    let mut signals = rt.block_on(async {
        Ok::<_, std::io::Error>([
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ])
    })?;
    std::thread::Builder::new()
        .name("demo interrupt".into())
        .spawn(move || {
            rt.block_on(async {
                let [int, term, hup] = &mut signals;
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            });
            eprintln!(
                "\nclusterctl demo: interrupted; stopping its daemons and removing its namespaces"
            );
            let removed = remove_all();
            eprintln!("clusterctl demo: removed {}", removed.join(", "));
            std::process::exit(130);
        })
        .context("cannot start the interrupt thread")?;
    Ok(())
}

/// Addresses on an interface, read in the calling thread's namespace:
/// `(address, interface up with a carrier)`.
pub(super) fn addresses_on(interface: &str) -> nix::Result<Vec<(IpAddr, bool)>> {
    use nix::net::if_::InterfaceFlags;
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs()? {
        if a.interface_name != interface {
            continue;
        }
        let up = a
            .flags
            .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING);
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push((IpAddr::V4(v4.ip()), up));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push((IpAddr::V6(v6.ip()), up));
        }
    }
    Ok(out)
}
