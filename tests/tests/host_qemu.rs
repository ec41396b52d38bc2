//! Whole-VM failover with real QEMU guests (issue 6, scenario 2). Needs
//! root and `scripts/setup-qemu`; without it every test here fails and
//! says so.
//!
//! Two hosts, `n0` and `n1`, each a `host-clusterd` in its own network
//! namespace with its own `libvirtd` (own mount namespace, private libvirt
//! directories), a ping target for the two-node tie-break, and the
//! testbed's fence agent (it kills everything in a host's namespace and
//! takes its links down). One group, `web`: one VM, a 128 MiB TCG guest
//! booting the Debian cloud kernel and a busybox initramfs directly, its
//! NIC on the host's `vmbr0`, bridged to a LAN where a client namespace
//! fetches `http://10.77.0.11/`: the guest answers with its name and its
//! boot id, so a new boot of the VM is told from the old one.
//!
//! A watcher samples the QEMU processes of `web` on both hosts every
//! 10 ms: one running (or paused) on two hosts at once fails the test.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::cluster::{Cluster, Spec};
use testbed::qemu::{
    Assets, Guest, Libvirtd, ThinPool, VmLan, netns_inode, qemu_pids, write_initramfs,
};
use testbed::watch::Watcher;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// How long a guest may take from its start to answering (TCG on two
/// shared cores, several tests at once).
const BOOT: Duration = Duration::from_secs(120);

/// A running testbed: the cluster, each host's libvirtd, the LAN. Fields
/// drop in order: the daemons first, then the LAN, then everything left
/// in the hosts' namespaces.
struct Bed {
    c: Cluster,
    lan: VmLan,
    hosts: Vec<Libvirtd>,
    guest: Guest,
}

impl Bed {
    /// Two hosts and the VM group `web`, whose `vm` monitor has
    /// `recovery`.
    fn start(recovery: &str) -> Self {
        Self::start_with(recovery, Guest::new("web", 1), false)
    }

    /// [`Bed::start`] with `guest` as the VM; with `thin`, each host has a
    /// thin pool of 1 MiB at `{dir}/vms/thin` holding the 64 MiB image
    /// `data.raw`, and the guest's data disk is that image.
    fn start_with(recovery: &str, mut guest: Guest, thin: bool) -> Self {
        let assets = Assets::find().unwrap_or_else(|e| panic!("{e:#}"));
        let group = format!(
            r#"[[groups]]
name = "web"
nodes = ["n0", "n1"]
failback = "manual"

[[groups.resources]]
name = "web"
kind = "vm"
domain_xml = "{{dir}}/vms/web.xml"
start_timeout = "60s"
stop_timeout = "20s"

[[groups.monitors]]
name = "web-health"
kind = "vm"
interval = "500ms"
timeout = "3s"
recovery = {recovery}
"#
        );
        let spec = Spec {
            nodes: 2,
            bystanders: 1,
            host: true,
            libvirt_uri: Some(Libvirtd::uri_in(&PathBuf::from("{dir}/libvirt-{node}"))),
            extra: format!(
                "[quorum]\nping_targets = [\"10.0.0.3\"]\nping_timeout = \"300ms\"\n\n{}{group}",
                testbed::fence::config(2)
            ),
            ..Spec::default()
        };
        let mut hosts = Vec::new();
        let mut lan = None;
        let c = ok(Cluster::start_with_net(&spec, |dir, net| {
            testbed::fence::install(dir);
            std::fs::create_dir_all(dir.join("vms"))?;
            let pool = thin.then(|| ThinPool {
                dir: dir.join("vms/thin"),
                capacity_kib: 1024,
                image: "data.raw".into(),
                image_mib: 64,
            });
            guest.data_disk = pool.as_ref().map(ThinPool::image_path);
            let initrd = dir.join("vms/initrd.cpio");
            write_initramfs(&assets, &initrd)?;
            std::fs::write(
                dir.join("vms/web.xml"),
                guest.domain_xml(&assets, &initrd, &dir.join("vms/web.serial")),
            )?;
            let namespaces: Vec<String> = (0..2).map(|k| net.ns(k)).collect();
            lan = Some(VmLan::new(&namespaces)?);
            for (k, ns) in namespaces.iter().enumerate() {
                hosts.push(Libvirtd::spawn_with(
                    ns,
                    &dir.join(format!("libvirt-n{k}")),
                    pool.as_ref(),
                )?);
            }
            for h in &mut hosts {
                let took = h.wait_ready(Duration::from_secs(30))?;
                println!(
                    "libvirtd in {} answers after {} ms",
                    h.ns(),
                    took.as_millis()
                );
            }
            Ok(())
        }));
        testbed::fence::arm(&c);
        let lan = lan.unwrap_or_else(|| panic!("no LAN"));
        Self {
            c,
            lan,
            hosts,
            guest,
        }
    }

    /// The hosts where a QEMU of `web` lives (running or paused).
    fn qemu_hosts(&self) -> BTreeSet<String> {
        self.hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.qemu_pids(&self.guest.name).is_empty())
            .map(|(k, _)| format!("n{k}"))
            .collect()
    }

    /// A watcher for a QEMU of `web` on two hosts at once.
    fn watch(&self) -> Watcher {
        let inodes: Vec<u64> = self.hosts.iter().map(Libvirtd::netns_inode).collect();
        let name = self.guest.name.clone();
        Watcher::new(move || {
            inodes
                .iter()
                .enumerate()
                .filter(|(_, ino)| !qemu_pids(**ino, &name).is_empty())
                .map(|(k, _)| format!("n{k}"))
                .collect()
        })
    }

    /// Wait until the guest answers; its page (`web BOOT_ID`).
    fn first_page(&self) -> String {
        let page = self
            .lan
            .wait_page(&self.guest, BOOT, |p| p.starts_with("web "))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()));
        let started = event_ts(&self.c.events(0), "group_starting", "web", 0);
        if let Some(started) = started {
            println!(
                "web: start on n0 to answering on the network: {} ms",
                cluster_core::events::now_ms().saturating_sub(started)
            );
        }
        page
    }

    /// Wait until the guest answers from a new boot (not `old`'s).
    fn next_boot(&self, old: &str, within: Duration) -> String {
        self.lan
            .wait_page(&self.guest, within, |p| p.starts_with("web ") && p != old)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    /// Ask the guest for `path` (a CGI that makes it fail) and check it
    /// answered `expected`.
    fn ask(&self, path: &str, expected: &str) {
        assert_eq!(
            self.lan
                .get_path(&self.guest, path, Duration::from_secs(5))
                .as_deref(),
            Some(expected),
            "{}",
            self.diagnostics()
        );
    }

    /// n0's first `monitor_failed` of `web` at or after `since`, within
    /// `within`.
    fn failure_after(&self, since: u64, within: Duration) -> Value {
        self.c
            .wait_event(0, "monitor_failed", within, |e| {
                e["group"] == "web" && e["ts_ms"].as_u64() >= Some(since)
            })
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    /// `web` left n0 without a fence: its QEMU runs on n1 only, n0's
    /// libvirt no longer knows it, and n1 started it only after n0 had
    /// stopped the group. When n0 stopped it and n1 started it, after
    /// `since`.
    fn assert_moved_to_n1_after_n0_stopped(&self, since: u64) -> (Option<u64>, Option<u64>) {
        assert_eq!(self.qemu_hosts(), BTreeSet::from(["n1".to_owned()]));
        assert_eq!(
            self.hosts[0].state("web"),
            None,
            "web is still known to n0's libvirt"
        );
        assert!(
            testbed::fence::fenced(self.c.dir()).is_empty(),
            "a host was fenced"
        );
        let stopped = event_ts(&self.c.events(0), "group_stopped", "web", since);
        let starting = event_ts(&self.c.events(1), "group_starting", "web", since);
        assert!(
            stopped.is_some() && starting >= stopped,
            "n1 started web at {starting:?}, before n0 had stopped it at {stopped:?}"
        );
        (stopped, starting)
    }

    /// `web` was recovered on n0: its QEMU runs there only, no host was
    /// fenced, n1 never started it.
    fn assert_still_on_n0_alone(&self) {
        assert_eq!(self.qemu_hosts(), BTreeSet::from(["n0".to_owned()]));
        assert!(testbed::fence::fenced(self.c.dir()).is_empty());
        assert!(
            event_ts(&self.c.events(1), "group_starting", "web", 0).is_none(),
            "web was started on n1"
        );
    }

    /// The daemons' logs, libvirtd logs and the guest's console.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for k in 0..2 {
            out.push_str(&format!("--- n{k} log\n{}\n", self.c.log(k)));
            out.push_str(&format!(
                "--- n{k} libvirtd\n{}\n",
                tail(&self.hosts[k].log(), 30)
            ));
        }
        let serial = std::fs::read_to_string(self.c.dir().join("vms/web.serial"))
            .unwrap_or_default()
            .replace('\r', "");
        out.push_str(&format!("--- web console\n{}\n", tail(&serial, 40)));
        out
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn event_ts(events: &[Value], kind: &str, group: &str, since: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && (group.is_empty() || e["group"] == group))
        .filter_map(|e| e["ts_ms"].as_u64())
        .find(|ts| *ts >= since)
}

fn peer_event_ts(events: &[Value], kind: &str, peer: &str, since: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["peer"] == peer)
        .filter_map(|e| e["ts_ms"].as_u64())
        .find(|ts| *ts >= since)
}

fn after(t: Option<u64>, since: u64) -> String {
    t.map_or_else(|| "-".into(), |t| format!("{} ms", t.saturating_sub(since)))
}

#[test]
fn a_lost_host_s_vm_boots_on_the_other_host_and_answers() {
    let mut bed = Bed::start("{ restart = 1, failover = 1 }");
    let first = bed.first_page();
    assert_eq!(bed.qemu_hosts(), BTreeSet::from(["n0".to_owned()]));
    let watcher = bed.watch();

    // Power loss of n0: its daemon, libvirtd and QEMU die at once.
    let killed = cluster_core::events::now_ms();
    let t0 = Instant::now();
    bed.hosts[0].power_off();
    bed.c.kill(0);
    let second = bed.next_boot(&first, Duration::from_secs(60) + BOOT);
    let took = t0.elapsed();

    assert_eq!(testbed::fence::fenced(bed.c.dir()), ["n0"]);
    assert_eq!(bed.qemu_hosts(), BTreeSet::from(["n1".to_owned()]));
    assert_eq!(
        bed.hosts[1].state("web").as_deref(),
        Some("running"),
        "{}",
        bed.diagnostics()
    );
    let ev = bed.c.events(1);
    let lost = peer_event_ts(&ev, "peer_lost", "n0", killed);
    let allowed = peer_event_ts(&ev, "takeover_allowed", "n0", killed);
    let starting = event_ts(&ev, "group_starting", "web", killed);
    let running = event_ts(&ev, "group_running", "web", killed);
    assert!(
        allowed.is_some() && starting >= allowed,
        "n1 started web at {starting:?}, before the takeover was allowed at {allowed:?}"
    );
    println!(
        "power loss of n0 to web answering from n1: {} ms (lost {}, fenced and takeover allowed {}, \
         start {}, VM created {})\nbefore: {first}\nafter:  {second}",
        took.as_millis(),
        after(lost, killed),
        after(allowed, killed),
        after(starting, killed),
        after(running, killed),
    );
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}

#[test]
fn a_crashed_qemu_is_restarted_on_the_same_host_by_the_recovery_ladder() {
    let bed = Bed::start("{ restart = 1, failover = 1 }");
    let first = bed.first_page();
    let pids = bed.hosts[0].qemu_pids("web");
    assert_eq!(pids.len(), 1, "one QEMU of web on n0: {pids:?}");
    let watcher = bed.watch();

    // The QEMU process crashes.
    let killed = cluster_core::events::now_ms();
    let t0 = Instant::now();
    for pid in &pids {
        ok(nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(anyhow::Error::from));
    }
    let failed = bed.failure_after(killed, Duration::from_secs(10));
    assert_eq!(failed["action"], "restart", "{failed}");
    let second = bed.next_boot(&first, BOOT);
    let took = t0.elapsed();

    // Restarted here, not failed over: no fencing, no start on n1.
    bed.assert_still_on_n0_alone();
    let ev = bed.c.events(0);
    println!(
        "kill -9 of web's QEMU to web answering again on n0: {} ms (monitor failed {}, VM created \
         again {}); monitor said: {}\nbefore: {first}\nafter:  {second}",
        took.as_millis(),
        after(failed["ts_ms"].as_u64(), killed),
        after(event_ts(&ev, "resource_started", "web", killed), killed),
        failed["detail"],
    );
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}

#[test]
fn a_paused_vm_is_destroyed_before_it_starts_on_the_other_host() {
    let bed = Bed::start("{ restart = 0, failover = 1 }");
    let first = bed.first_page();
    let watcher = bed.watch();

    // Paused behind the cluster's back: it could resume at any time, so
    // it must be gone before the VM starts anywhere else.
    let paused = cluster_core::events::now_ms();
    let t0 = Instant::now();
    ok(bed.hosts[0].virsh(&["suspend", "web"]));
    let second = bed.next_boot(&first, BOOT);
    let took = t0.elapsed();

    let (stopped, starting) = bed.assert_moved_to_n1_after_n0_stopped(paused);
    let failed = bed.failure_after(paused, Duration::from_secs(1));
    assert_eq!(failed["action"], "failover", "{failed}");
    assert!(
        bed.c.log(0).contains("destroying the VM"),
        "n0 did not destroy the paused VM:\n{}",
        bed.c.log(0)
    );
    println!(
        "virsh suspend on n0 to web answering from n1: {} ms (monitor failed {}, destroyed and \
         stopped on n0 {}, start on n1 {}); monitor said: {}\nbefore: {first}\nafter:  {second}",
        took.as_millis(),
        after(failed["ts_ms"].as_u64(), paused),
        after(stopped, paused),
        after(starting, paused),
        failed["detail"],
    );
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}

#[test]
fn a_moved_vm_shuts_down_cleanly_and_boots_on_the_other_host() {
    let bed = Bed::start("{ restart = 1, failover = 1 }");
    let first = bed.first_page();
    let watcher = bed.watch();

    // An operator moves it: ACPI shutdown on n0 (the guest's acpid powers
    // it off), then a start on n1.
    let moved = cluster_core::events::now_ms();
    let t0 = Instant::now();
    let rt = ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from));
    let answer = ok(rt
        .block_on(cluster_core::api::call(
            &bed.c.socket(0),
            &cluster_core::api::Request::GroupMove {
                group: "web".into(),
                node: Some("n1".into()),
            },
        ))
        .map_err(anyhow::Error::from));
    println!("move: {answer:?}");
    let second = bed.next_boot(&first, BOOT);
    let took = t0.elapsed();

    assert_eq!(bed.qemu_hosts(), BTreeSet::from(["n1".to_owned()]));
    let log0 = bed.c.log(0);
    assert!(
        log0.contains("ACPI shutdown requested") && log0.contains("VM shut down"),
        "n0 did not shut web down through ACPI:\n{log0}"
    );
    assert!(
        !log0.contains("destroying the VM"),
        "n0 destroyed web instead of shutting it down:\n{log0}"
    );
    let serial = std::fs::read_to_string(bed.c.dir().join("vms/web.serial")).unwrap_or_default();
    assert!(
        serial.contains("ACPI power button"),
        "the guest did not see the power button:\n{}",
        bed.diagnostics()
    );
    let ev0 = bed.c.events(0);
    let stopping = event_ts(&ev0, "group_stopping", "web", moved);
    let stopped = event_ts(&ev0, "group_stopped", "web", moved);
    let starting = event_ts(&bed.c.events(1), "group_starting", "web", moved);
    assert!(
        stopped.is_some() && starting >= stopped,
        "n1 started web at {starting:?}, before n0 had stopped it at {stopped:?}"
    );
    println!(
        "move of web from n0 to n1 to web answering from n1: {} ms (ACPI shutdown from {} to {}, \
         start on n1 {})\nbefore: {first}\nafter:  {second}",
        took.as_millis(),
        after(stopping, moved),
        after(stopped, moved),
        after(starting, moved),
    );
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}

#[test]
fn a_host_whose_daemon_dies_is_fenced_before_its_running_vm_starts_elsewhere() {
    let mut bed = Bed::start("{ restart = 1, failover = 1 }");
    let first = bed.first_page();
    let watcher = bed.watch();

    // Only the host daemon dies: libvirtd and the guest run on, still
    // answering, until n1 fences n0.
    let killed = cluster_core::events::now_ms();
    let t0 = Instant::now();
    bed.c.kill(0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        bed.lan.get(&bed.guest, Duration::from_secs(2)).as_deref(),
        Some(first.as_str()),
        "the guest should still run on n0 before the fence"
    );
    let second = bed.next_boot(&first, Duration::from_secs(60) + BOOT);
    let took = t0.elapsed();

    assert_eq!(testbed::fence::fenced(bed.c.dir()), ["n0"]);
    assert_eq!(bed.qemu_hosts(), BTreeSet::from(["n1".to_owned()]));
    let ev = bed.c.events(1);
    let allowed = peer_event_ts(&ev, "takeover_allowed", "n0", killed);
    let starting = event_ts(&ev, "group_starting", "web", killed);
    assert!(
        allowed.is_some() && starting >= allowed,
        "n1 started web at {starting:?}, before n0 was fenced at {allowed:?}"
    );
    println!(
        "kill -9 of n0's daemon (guest still running) to web answering from n1: {} ms \
         (lost {}, fenced {}, start {}, VM created {})\nbefore: {first}\nafter:  {second}",
        took.as_millis(),
        after(peer_event_ts(&ev, "peer_lost", "n0", killed), killed),
        after(allowed, killed),
        after(starting, killed),
        after(event_ts(&ev, "group_running", "web", killed), killed),
    );
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}

/// libvirtd restarts under a running VM (an upgrade, a crash of the
/// daemon): while it is gone the host daemon reports the hypervisor
/// unreachable and neither stops nor moves the VM (unknown is never
/// stopped); once it is back the host daemon reconnects by itself, with
/// its lifecycle callback registered again, and a crash of the VM after
/// that is still seen and recovered.
#[test]
fn a_libvirtd_restart_is_survived_and_a_later_crash_is_still_seen() {
    let bed = Bed::start("{ restart = 1, failover = 1 }");
    let first = bed.first_page();
    let pids = bed.hosts[0].qemu_pids("web");
    assert_eq!(pids.len(), 1, "one QEMU of web on n0: {pids:?}");
    let watcher = bed.watch();
    let ns = bed.hosts[0].ns().to_owned();
    let dir = bed.c.dir().join("libvirt-n0");

    // libvirtd dies (kill -9); QEMU keeps running.
    let gone = cluster_core::events::now_ms();
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &ns])
        .output()
        .unwrap_or_else(|e| panic!("ip netns pids: {e}"));
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "libvirtd"
            && let Ok(pid) = pid.parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    ok(testbed::wait_until(
        "n0 to report its hypervisor unreachable",
        Duration::from_secs(10),
        || {
            bed.c
                .status(0)
                .ok()
                .and_then(|s| s.hypervisor)
                .is_some_and(|h| !h.connected)
        },
    ));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        qemu_pids(netns_inode(&ns).unwrap_or(0), "web"),
        pids,
        "the VM's QEMU was touched while libvirtd was away"
    );
    for k in 0..2 {
        let ev = bed.c.events(k);
        for kind in ["group_stopping", "group_starting", "monitor_failed"] {
            assert!(
                event_ts(&ev, kind, "web", gone).is_none(),
                "n{k}: {kind} while libvirtd was away:\n{}",
                bed.diagnostics()
            );
        }
    }
    assert_eq!(
        bed.lan.get(&bed.guest, Duration::from_secs(5)).as_deref(),
        Some(first.as_str()),
        "the guest stopped answering while libvirtd was away"
    );

    // libvirtd comes back (same state directories: it finds its QEMU).
    let back = Instant::now();
    // Dropped at the end of the test (before `bed`): it empties n0.
    let _again = ok(Libvirtd::start(&ns, &dir));
    ok(testbed::wait_until(
        "n0 to reconnect to libvirtd",
        Duration::from_secs(20),
        || {
            bed.c
                .status(0)
                .ok()
                .and_then(|s| s.hypervisor)
                .is_some_and(|h| {
                    h.connected
                        && h.domains
                            .iter()
                            .any(|d| d.name == "web" && d.state == "running")
                })
        },
    ));
    println!(
        "libvirtd back to n0 reconnected and seeing web running: {} ms",
        back.elapsed().as_millis()
    );

    // A crash after the reconnection is still seen and recovered here.
    let killed = cluster_core::events::now_ms();
    for pid in &pids {
        ok(nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(anyhow::Error::from));
    }
    let failed = bed.failure_after(killed, Duration::from_secs(10));
    assert_eq!(failed["action"], "restart", "{failed}");
    bed.next_boot(&first, BOOT);
    assert_eq!(bed.qemu_hosts(), BTreeSet::from(["n0".to_owned()]));
    assert!(testbed::fence::fenced(bed.c.dir()).is_empty());
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}

#[test]
fn a_guest_panic_is_seen_through_pvpanic_and_the_crashed_vm_is_destroyed_before_it_moves() {
    // `preserve`: the crashed VM stays (its QEMU lives on, as for a crash
    // dump), so it must be destroyed before the VM starts elsewhere.
    let mut guest = Guest::new("web", 1);
    guest.on_crash = "preserve".into();
    let bed = Bed::start_with("{ restart = 0, failover = 1 }", guest, false);
    let first = bed.first_page();
    let watcher = bed.watch();

    // The guest's kernel panics; the pvpanic device tells QEMU.
    let asked = cluster_core::events::now_ms();
    let t0 = Instant::now();
    bed.ask("/cgi-bin/panic", "panicking");
    let failed = bed.failure_after(asked, Duration::from_secs(20));
    let detail = failed["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        detail.contains("crashed") && detail.contains("panicked"),
        "the monitor should name the panic: {failed}\n{}",
        bed.diagnostics()
    );
    assert_eq!(failed["action"], "failover", "{failed}");
    let second = bed.next_boot(&first, BOOT);
    let took = t0.elapsed();

    let (stopped, starting) = bed.assert_moved_to_n1_after_n0_stopped(asked);
    let console = std::fs::read_to_string(bed.c.dir().join("vms/web.serial")).unwrap_or_default();
    assert!(
        console.contains("Kernel panic"),
        "the guest's console shows no panic:\n{}",
        tail(&console, 20)
    );
    println!(
        "guest kernel panic on n0 to web answering from n1: {} ms (monitor failed {}, destroyed \
         and stopped on n0 {}, start on n1 {}); monitor said: {detail}\nbefore: {first}\nafter:  \
         {second}",
        took.as_millis(),
        after(failed["ts_ms"].as_u64(), asked),
        after(stopped, asked),
        after(starting, asked),
    );
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}

#[test]
fn a_vm_paused_on_an_io_error_is_a_failure_and_is_restarted_by_the_recovery_ladder() {
    let bed = Bed::start_with("{ restart = 1, failover = 1 }", Guest::new("web", 1), true);
    let first = bed.first_page();
    let watcher = bed.watch();

    // The guest writes 64 MiB to a disk whose thin pool holds 1 MiB:
    // QEMU gets ENOSPC and, with error_policy='stop', pauses the VM.
    let asked = cluster_core::events::now_ms();
    let t0 = Instant::now();
    bed.ask("/cgi-bin/fill", "filling /dev/vda");
    let failed = bed.failure_after(asked, Duration::from_secs(30));
    let detail = failed["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        detail.contains("io-error"),
        "the monitor should name the I/O error: {failed}\n{}",
        bed.diagnostics()
    );
    assert_eq!(failed["action"], "restart", "{failed}");
    let second = bed.next_boot(&first, BOOT);
    let took = t0.elapsed();

    // Restarted here (the paused run destroyed first), not failed over.
    bed.assert_still_on_n0_alone();
    let ev = bed.c.events(0);
    println!(
        "guest write to a full thin pool on n0 to web answering again on n0: {} ms (monitor \
         failed {}, VM created again {}); monitor said: {detail}\nbefore: {first}\nafter:  \
         {second}",
        took.as_millis(),
        after(failed["ts_ms"].as_u64(), asked),
        after(event_ts(&ev, "resource_started", "web", asked), asked),
    );
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "web ran on two hosts: {doubles:?}");
}
