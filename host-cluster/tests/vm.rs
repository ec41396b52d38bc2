//! The `vm` resource and monitor against libvirt's test driver, in
//! process: each test simulates its own host with its own `test:///` node
//! file in a temporary directory (no root, no libvirtd), so tests run in
//! parallel. Everything goes through the hypervisor's libvirt thread, as
//! in the daemon: with `test:///<file>` URIs every connection has its own
//! state, so the tests' own changes (suspend, define) are made through
//! `Hypervisor::call` on the same connection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_core::resource::{
    ActionContext, ActionOutcome, CheckOutcome, MonitorDriver, Probe, ResourceDriver, StartReason,
};
use host_cluster::hypervisor::Hypervisor;
use host_cluster::libvirt_events::{DomainEvent, EventKind};
use host_cluster::vm::{VmDriver, VmMonitor, VmState, vm_status};
use tokio::sync::broadcast;

mod common;

use common::TEST_NS;

/// One simulated host: a libvirt test-driver node file of its own.
struct Host {
    dir: tempfile::TempDir,
    hv: Hypervisor,
}

impl Host {
    fn new() -> Self {
        Self::with_domains("")
    }

    /// A host whose node file also holds `domains` (persistent domains,
    /// as the test driver loads them).
    fn with_domains(domains: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let uri = common::test_node(&dir.path().join("host.xml"), domains);
        let hv = Hypervisor::spawn(&uri).unwrap_or_else(|e| panic!("{e}"));
        Self { dir, hv }
    }

    /// Write the domain XML of `name` to the "shared storage" and return
    /// its path.
    fn vm_file(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.xml"));
        std::fs::write(&path, domain_xml(name, "")).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    fn driver(&self, name: &str) -> VmDriver {
        driver_for(&self.hv, name, self.vm_file(name))
    }

    fn monitor(&self, vms: &[&str], paused_is_failure: bool) -> VmMonitor {
        VmMonitor::new(
            "g",
            "vm-state",
            &conf::VmMonitor { paused_is_failure },
            vms.iter().map(|v| (*v).to_owned()).collect(),
            self.hv.clone(),
        )
    }

    async fn state(&self, name: &str) -> host_cluster::vm::VmStatus {
        let name = name.to_owned();
        self.hv
            .call(move |c| vm_status(c, &name))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run a libvirt operation on a domain through the host's connection.
    async fn on_domain(
        &self,
        name: &str,
        op: impl FnOnce(&virt::domain::Domain) -> Result<(), virt::error::Error> + Send + 'static,
    ) {
        let name = name.to_owned();
        self.hv
            .call(move |c| {
                let dom = c.lookup_domain_by_name(&name)?;
                op(&dom)
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{}", e.message()));
    }
}

fn domain_xml(name: &str, extra: &str) -> String {
    format!(
        "<domain type='test' xmlns:test='{TEST_NS}'>\n  <name>{name}</name>\n  \
         <memory unit='MiB'>128</memory>\n  <vcpu>1</vcpu>\n  \
         <os><type>hvm</type></os>\n{extra}</domain>\n"
    )
}

fn driver_for(hv: &Hypervisor, name: &str, xml: PathBuf) -> VmDriver {
    VmDriver::new(
        name,
        conf::VmResource {
            domain_xml: xml,
            memory_mib: None,
            vcpus: None,
            live_migrate: false,
        },
        hv.clone(),
    )
}

fn ctx(name: &str, timeout: Duration) -> ActionContext {
    ActionContext {
        group: "g".into(),
        resource: name.into(),
        node: "host-a".into(),
        reason: StartReason::Start,
        previous_owner: None,
        previous_owner_fenced: false,
        timeout,
    }
}

const T: Duration = Duration::from_secs(10);

/// The next event of `name`, within 2 s.
async fn next_event(rx: &mut broadcast::Receiver<DomainEvent>, name: &str) -> DomainEvent {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.name == name => return ev,
                Ok(_) => {}
                Err(e) => panic!("event channel: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), wait)
        .await
        .unwrap_or_else(|_| panic!("no event for {name} within 2 s"))
}

#[tokio::test]
async fn start_creates_a_transient_domain_and_is_idempotent() {
    let host = Host::new();
    let vm = host.driver("web");
    assert_eq!(vm.probe(&ctx("web", T)).await, Probe::Stopped);
    assert_eq!(vm.start(&ctx("web", T)).await, ActionOutcome::Ok);
    let first = host.state("web").await;
    assert_eq!(first.state, VmState::Running);
    assert!(!first.persistent, "started as a transient domain");
    assert_eq!(vm.probe(&ctx("web", T)).await, Probe::Running);

    // Started again: the same run, not a second one.
    assert_eq!(vm.start(&ctx("web", T)).await, ActionOutcome::Ok);
    let again = host.state("web").await;
    assert_eq!(again.id, first.id, "the running domain was left alone");
    let names: Vec<String> = host
        .hv
        .inventory()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["web"]);
}

#[tokio::test]
async fn a_persistent_twin_is_refused_running_or_not() {
    let host = Host::new();
    let vm = host.driver("db");
    let xml = domain_xml("db", "");
    host.hv
        .call(move |c| c.define_domain_xml(&xml).map(|_| ()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    for round in ["defined", "defined and running"] {
        match vm.start(&ctx("db", T)).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(hard, "{round}: {message}");
                assert!(
                    message.contains("persistent") && message.contains("`db`"),
                    "{round}: {message}"
                );
            }
            other => panic!("{round}: {other:?}"),
        }
        let s = host.state("db").await;
        assert!(s.persistent, "{round}: the definition was left alone");
        // Second round: the twin runs (started by someone else).
        if s.state != VmState::Running {
            host.on_domain("db", |d| d.create()).await;
        }
    }
    // A stop of the cluster's VM still stops the running twin.
    assert_eq!(vm.stop(&ctx("db", T)).await, ActionOutcome::Ok);
    assert_eq!(host.state("db").await.state, VmState::Shutoff);
}

#[tokio::test]
async fn stop_shuts_down_and_stopping_a_missing_vm_succeeds() {
    let host = Host::new();
    let vm = host.driver("app");
    let mut events = host.hv.subscribe();
    assert_eq!(
        vm.stop(&ctx("app", T)).await,
        ActionOutcome::Ok,
        "never started"
    );
    assert_eq!(vm.start(&ctx("app", T)).await, ActionOutcome::Ok);
    assert_eq!(
        next_event(&mut events, "app").await.kind,
        EventKind::Started
    );
    assert_eq!(vm.stop(&ctx("app", T)).await, ActionOutcome::Ok);
    let stopped = next_event(&mut events, "app").await;
    assert_eq!(
        (stopped.kind, stopped.detail_text()),
        (EventKind::Stopped, "shutdown"),
        "an ACPI shutdown, not a destroy"
    );
    assert_eq!(host.state("app").await.state, VmState::Absent);
    assert_eq!(vm.probe(&ctx("app", T)).await, Probe::Stopped);
    assert_eq!(
        vm.stop(&ctx("app", T)).await,
        ActionOutcome::Ok,
        "stopped twice"
    );
}

#[tokio::test]
async fn a_paused_vm_fails_its_probe_and_is_destroyed_on_stop() {
    let host = Host::new();
    let vm = host.driver("batch");
    let mut events = host.hv.subscribe();
    assert_eq!(vm.start(&ctx("batch", T)).await, ActionOutcome::Ok);
    assert_eq!(
        next_event(&mut events, "batch").await.kind,
        EventKind::Started
    );
    host.on_domain("batch", |d| d.suspend()).await;
    match vm.probe(&ctx("batch", T)).await {
        Probe::Failed(detail) => assert_eq!(detail, "paused (user)"),
        other => panic!("{other:?}"),
    }
    let began = Instant::now();
    assert_eq!(vm.stop(&ctx("batch", T)).await, ActionOutcome::Ok);
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "destroyed at once, without waiting for a shutdown it cannot do: {:?}",
        began.elapsed()
    );
    assert_eq!(
        next_event(&mut events, "batch").await.kind,
        EventKind::Suspended
    );
    let ev = next_event(&mut events, "batch").await;
    assert_eq!(
        (ev.kind, ev.detail_text()),
        (EventKind::Stopped, "destroyed")
    );
    assert_eq!(vm.probe(&ctx("batch", T)).await, Probe::Stopped);
}

#[tokio::test]
async fn a_vm_left_paused_here_is_started_afresh() {
    let host = Host::new();
    let vm = host.driver("cache");
    assert_eq!(vm.start(&ctx("cache", T)).await, ActionOutcome::Ok);
    let before = host.state("cache").await;
    host.on_domain("cache", |d| d.suspend()).await;
    assert_eq!(vm.start(&ctx("cache", T)).await, ActionOutcome::Ok);
    let after = host.state("cache").await;
    assert_eq!(after.state, VmState::Running);
    assert_ne!(after.id, before.id, "a new run, not the paused one resumed");
}

#[tokio::test]
async fn probe_reads_crashed_paused_and_shut_off_domains() {
    let runstate = |name: &str, state: u8| {
        domain_xml(name, &format!("  <test:runstate>{state}</test:runstate>\n"))
    };
    let host = Host::with_domains(&format!(
        "{}{}{}{}",
        runstate("crashed", 6),
        runstate("paused", 3),
        runstate("off", 5),
        runstate("pm", 7)
    ));
    let probe = |name: &str| {
        let vm = driver_for(&host.hv, name, host.dir.path().join("unused.xml"));
        let name = name.to_owned();
        async move { vm.probe(&ctx(&name, T)).await }
    };
    assert_eq!(probe("crashed").await, Probe::Failed("crashed".into()));
    assert!(matches!(probe("paused").await, Probe::Failed(d) if d.starts_with("paused")));
    assert_eq!(probe("off").await, Probe::Stopped);
    assert_eq!(
        probe("pm").await,
        Probe::Failed("suspended by the guest".into())
    );
    assert_eq!(probe("nowhere").await, Probe::Stopped);

    // A monitor fails on each of them.
    for name in ["crashed", "paused", "off", "pm", "nowhere"] {
        let check = host.monitor(&[name], true).check(T).await;
        assert!(
            matches!(check, CheckOutcome::Failed(_)),
            "{name}: {check:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_libvirt_is_unknown_never_stopped() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("no-libvirtd.sock");
    let hv = Hypervisor::spawn(&format!("qemu+unix:///system?socket={}", socket.display()))
        .unwrap_or_else(|e| panic!("{e}"));
    let xml = dir.path().join("lost.xml");
    std::fs::write(&xml, domain_xml("lost", "")).unwrap_or_else(|e| panic!("{e}"));
    let vm = driver_for(&hv, "lost", xml);
    assert!(
        matches!(vm.probe(&ctx("lost", T)).await, Probe::Unknown(_)),
        "probe"
    );
    match vm.start(&ctx("lost", T)).await {
        ActionOutcome::Failed { hard: false, .. } => {}
        other => panic!("start: {other:?}"),
    }
    // A stop cannot confirm anything: it fails, within its timeout.
    let began = Instant::now();
    let stop = vm.stop(&ctx("lost", Duration::from_millis(800))).await;
    assert!(!stop.is_ok(), "stop: {stop:?}");
    assert!(
        began.elapsed() < Duration::from_millis(1200),
        "{:?}",
        began.elapsed()
    );
    // The monitor cannot tell either: no failure (and no restart) for it.
    let monitor = VmMonitor::new(
        "g",
        "m",
        &conf::VmMonitor {
            paused_is_failure: true,
        },
        vec!["lost".into()],
        hv.clone(),
    );
    assert_eq!(monitor.check(T).await, CheckOutcome::Ok);
}

#[tokio::test]
async fn lifecycle_events_arrive_for_every_change() {
    let host = Host::new();
    let vm = host.driver("ev");
    let mut events = host.hv.subscribe();
    // Through the driver, and through a second handle on the same thread.
    let other = host.hv.clone();
    assert_eq!(vm.start(&ctx("ev", T)).await, ActionOutcome::Ok);
    let mut seen = vec![next_event(&mut events, "ev").await.to_string()];
    // How long an event takes from the libvirt call to the subscriber.
    let t = Instant::now();
    other
        .call(|c| c.lookup_domain_by_name("ev").and_then(|d| d.suspend()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    seen.push(next_event(&mut events, "ev").await.to_string());
    println!("suspend call to its event: {:?}", t.elapsed());
    host.on_domain("ev", |d| d.resume()).await;
    assert_eq!(vm.stop(&ctx("ev", T)).await, ActionOutcome::Ok);
    for _ in 0..2 {
        seen.push(next_event(&mut events, "ev").await.to_string());
    }
    assert_eq!(
        seen,
        [
            "started (booted)",
            "suspended (paused)",
            "resumed (unpaused)",
            "stopped (shutdown)"
        ]
    );
    let ev = host.state("ev").await;
    assert_eq!(ev.state, VmState::Absent);
}

#[tokio::test]
async fn the_monitor_fails_on_pause_and_shutoff_and_recovers_with_a_new_run() {
    let host = Host::new();
    let vm = host.driver("svc");
    let strict = host.monitor(&["svc"], true);
    let lenient = host.monitor(&["svc"], false);
    // The test's own view of the events, to know when the monitors have
    // been sent one (the event loop delivers them in order).
    let mut events = host.hv.subscribe();
    assert_eq!(vm.start(&ctx("svc", T)).await, ActionOutcome::Ok);
    assert_eq!(strict.check(T).await, CheckOutcome::Ok);

    host.on_domain("svc", |d| d.suspend()).await;
    match strict.check(T).await {
        CheckOutcome::Failed(m) => assert!(m.contains("paused (user)"), "{m}"),
        CheckOutcome::Ok => panic!("a paused VM passed"),
    }
    assert_eq!(
        lenient.check(T).await,
        CheckOutcome::Ok,
        "paused_is_failure = false"
    );

    // Resumed before the next poll: the event still marks this run failed.
    host.on_domain("svc", |d| d.resume()).await;
    while next_event(&mut events, "svc").await.kind != EventKind::Resumed {}
    match strict.check(T).await {
        CheckOutcome::Failed(m) => assert!(m.contains("suspended (paused)"), "{m}"),
        CheckOutcome::Ok => panic!("the pause event of this run was forgotten"),
    }
    assert_eq!(lenient.check(T).await, CheckOutcome::Ok);

    // The recovery restarts the VM: a new run is healthy.
    assert_eq!(vm.stop(&ctx("svc", T)).await, ActionOutcome::Ok);
    assert_eq!(vm.start(&ctx("svc", T)).await, ActionOutcome::Ok);
    assert_eq!(strict.check(T).await, CheckOutcome::Ok);
    // The test's own view catches up with the restart's events, so that
    // the next `Stopped` it sees is the destroy's (not the shutdown's).
    while next_event(&mut events, "svc").await.kind != EventKind::Started {}

    // Destroyed behind the cluster's back.
    host.on_domain("svc", |d| d.destroy()).await;
    while next_event(&mut events, "svc").await.kind != EventKind::Stopped {}
    for m in [&strict, &lenient] {
        match m.check(T).await {
            CheckOutcome::Failed(msg) => assert!(
                msg.contains("not running here") && msg.contains("stopped (destroyed)"),
                "{msg}"
            ),
            CheckOutcome::Ok => panic!("a vanished VM passed"),
        }
    }
}

#[tokio::test]
async fn a_monitor_watches_only_its_vms() {
    let host = Host::new();
    let a = host.driver("a1");
    let b = host.driver("b1");
    assert_eq!(a.start(&ctx("a1", T)).await, ActionOutcome::Ok);
    assert_eq!(b.start(&ctx("b1", T)).await, ActionOutcome::Ok);
    let only_a = host.monitor(&["a1"], true);
    let both = host.monitor(&["a1", "b1"], true);
    host.on_domain("b1", |d| d.suspend()).await;
    assert_eq!(only_a.check(T).await, CheckOutcome::Ok);
    match both.check(T).await {
        CheckOutcome::Failed(m) => assert!(m.contains("`b1`") && !m.contains("`a1`"), "{m}"),
        CheckOutcome::Ok => panic!("b1 is paused"),
    }
}

#[tokio::test]
async fn a_reconnection_registers_the_event_callback_again() {
    // test:///default is shared within the process, so its domains
    // survive a new connection (a test:///<file> would start afresh).
    let hv = Hypervisor::spawn("test:///default").unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let name = format!("reconnect-{}", std::process::id());
    let xml = dir.path().join("vm.xml");
    std::fs::write(&xml, domain_xml(&name, "")).unwrap_or_else(|e| panic!("{e}"));
    let vm = driver_for(&hv, &name, xml);
    let mut events = hv.subscribe();
    assert_eq!(vm.start(&ctx(&name, T)).await, ActionOutcome::Ok);
    assert_eq!(
        next_event(&mut events, &name).await.kind,
        EventKind::Started
    );

    hv.reconnect().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vm.probe(&ctx(&name, T)).await, Probe::Running, "same state");
    let suspend = name.clone();
    hv.call(move |c| c.lookup_domain_by_name(&suspend).and_then(|d| d.suspend()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = next_event(&mut events, &name).await;
    assert_eq!(
        ev.kind,
        EventKind::Suspended,
        "events flow on the new connection"
    );
    // Exactly once: the old connection's callback is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "a second callback delivered the event again"
    );
    assert_eq!(vm.stop(&ctx(&name, T)).await, ActionOutcome::Ok);
}

#[tokio::test]
async fn a_start_refuses_unusable_domain_xml() {
    let host = Host::new();
    let hard = |outcome: ActionOutcome| match outcome {
        ActionOutcome::Failed {
            message,
            hard: true,
        } => message,
        other => panic!("{other:?}"),
    };
    let missing = driver_for(&host.hv, "ghost", host.dir.path().join("ghost.xml"));
    let msg = hard(missing.start(&ctx("ghost", T)).await);
    assert!(msg.contains("ghost.xml"), "{msg}");

    let other_name = host.dir.path().join("renamed.xml");
    std::fs::write(&other_name, domain_xml("someone-else", "")).unwrap_or_else(|e| panic!("{e}"));
    let msg = hard(
        driver_for(&host.hv, "mine", other_name)
            .start(&ctx("mine", T))
            .await,
    );
    assert!(
        msg.contains("someone-else") && msg.contains("`mine`"),
        "{msg}"
    );

    let rejected = host.dir.path().join("bad.xml");
    std::fs::write(
        &rejected,
        "<domain type='test'><name>bad</name><memory>131072</memory>\
         <os><type>no-such-os-type</type></os><devices><bogus/></devices></domain>",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let msg = hard(
        driver_for(&host.hv, "bad", rejected)
            .start(&ctx("bad", T))
            .await,
    );
    assert!(msg.contains("libvirt cannot create `bad`"), "{msg}");
    assert_eq!(host.state("bad").await.state, VmState::Absent);
}

#[tokio::test]
async fn a_start_is_bounded_by_its_timeout_and_creates_nothing_late() {
    let host = Host::new();
    // A FIFO nobody writes to: reading the XML hangs, as on a hung mount.
    let fifo = host.dir.path().join("hung.xml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap_or_else(|e| panic!("mkfifo: {e}"));
    assert!(status.success());
    let vm = driver_for(&host.hv, "hung", fifo.clone());
    let began = Instant::now();
    assert_eq!(
        vm.start(&ctx("hung", Duration::from_millis(300))).await,
        ActionOutcome::TimedOut
    );
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(800),
        "{took:?}"
    );
    // Let the blocked reader finish, so the runtime can shut down.
    release_fifo(&fifo);

    // The libvirt thread is busy (a slow libvirtd): the start gives up in
    // time, and its create, still queued, is skipped rather than run late.
    let busy = host.hv.clone();
    let blocker = tokio::spawn(async move {
        busy.call(|_| std::thread::sleep(Duration::from_millis(600)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = host.driver("late");
    let began = Instant::now();
    assert_eq!(
        late.start(&ctx("late", Duration::from_millis(300))).await,
        ActionOutcome::TimedOut
    );
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
    blocker
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        host.state("late").await.state,
        VmState::Absent,
        "created late"
    );
    assert_eq!(host.state("hung").await.state, VmState::Absent);
}

fn release_fifo(fifo: &Path) {
    use std::io::Write;
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = w.write_all(b"<domain/>");
}

/// Start, probe and stop 50 VMs one after another on one simulated host,
/// timing each phase (run with `--nocapture` to see the figures).
#[tokio::test]
async fn fifty_vms_sequentially() {
    const N: usize = 50;
    let host = Host::new();
    let vms: Vec<(String, VmDriver)> = (0..N)
        .map(|i| {
            let name = format!("vm{i:02}");
            let d = host.driver(&name);
            (name, d)
        })
        .collect();
    let timed = |label: &'static str, took: Duration| {
        println!(
            "{label}: {N} VMs in {took:?} ({:?} per VM)",
            took / u32::try_from(N).unwrap_or(1)
        );
        took
    };
    let t = Instant::now();
    for (name, d) in &vms {
        assert_eq!(d.start(&ctx(name, T)).await, ActionOutcome::Ok, "{name}");
    }
    let start = timed("start", t.elapsed());
    let t = Instant::now();
    for (name, d) in &vms {
        assert_eq!(d.probe(&ctx(name, T)).await, Probe::Running, "{name}");
    }
    let probe = timed("probe", t.elapsed());
    let monitor = host.monitor(
        &vms.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        true,
    );
    let t = Instant::now();
    assert_eq!(monitor.check(T).await, CheckOutcome::Ok);
    timed("monitor check (one check of all)", t.elapsed());
    let t = Instant::now();
    for (name, d) in &vms {
        assert_eq!(d.stop(&ctx(name, T)).await, ActionOutcome::Ok, "{name}");
    }
    let stop = timed("stop", t.elapsed());
    // Generous bounds, for a loaded 2-core machine: the target is seconds
    // for 50 VMs after a host loss.
    assert!(start < Duration::from_secs(5), "{start:?}");
    assert!(probe < Duration::from_secs(5), "{probe:?}");
    assert!(stop < Duration::from_secs(10), "{stop:?}");
}
