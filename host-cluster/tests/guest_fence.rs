//! Fencing guests on request (`host_cluster::guest_fence`) against
//! libvirt's test driver, in process: each test simulates its own host
//! with its own `test:///` node file, so tests run in parallel without
//! root. Domain changes the tests make go through `Hypervisor::call` on
//! the fencer's own connection (each `test:///<file>` connection has its
//! own state). Where the host cluster runs its groups comes from a
//! `ClusterView` the test sets, as the engine's would be.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cluster_core::api::{ApiError, ApiErrorKind, GuestFenceAction, Response};
use cluster_core::events::EventLog;
use cluster_core::status::{GroupStatus, RunningOn};
use host_cluster::guest_fence::{
    ClusterView, GuestFenceError, GuestFencer, PlacementView, Restart,
};
use host_cluster::hypervisor::Hypervisor;
use host_cluster::vm::{VmState, VmStatus, vm_status};
use serde_json::Value;

mod common;

/// The host cluster: `vm-g3` (linked guest `g3`) is a `vm` resource of
/// group `g3-vm`, watched by a `vm` monitor; the other linked guests'
/// VMs are not the cluster's. `g1`, `g2`, `g3`, `g4` form guest cluster
/// `web`, `d1` is in `db`.
const CONFIG: &str = concat!(
    two_hosts!(),
    r#"
[[groups]]
name = "g3-vm"
nodes = ["host-a", "host-b"]

[[groups.resources]]
name = "vm-g3"
kind = "vm"
domain_xml = "/nonexistent/vm-g3.xml"
memory_mib = 128
vcpus = 1

[[groups.monitors]]
name = "g3-state"
kind = "vm"

[linkage]
listen = ["unix:/nonexistent/linkage.sock"]

[[linkage.guests]]
name = "g1"
domain = "vm-g1"
cluster = "web"
key_file = "/nonexistent/g1.key"

[[linkage.guests]]
name = "g2"
domain = "vm-g2"
cluster = "web"
key_file = "/nonexistent/g2.key"

[[linkage.guests]]
name = "g3"
domain = "vm-g3"
cluster = "web"
key_file = "/nonexistent/g3.key"

[[linkage.guests]]
name = "g4"
domain = "vm-g4"
cluster = "web"
key_file = "/nonexistent/g4.key"

[[linkage.guests]]
name = "d1"
domain = "vm-d1"
cluster = "db"
key_file = "/nonexistent/d1.key"
"#
);

fn config(text: &str) -> conf::Config {
    conf::load_str("hosts.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

/// Where the test says the host cluster runs its groups.
#[derive(Debug, Default)]
struct View(Mutex<Option<PlacementView>>);

impl View {
    fn set(&self, v: Option<PlacementView>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = v;
    }
}

impl ClusterView for View {
    fn placement(&self) -> Option<PlacementView> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The status of group `g3-vm` with `target` and other hosts reporting it.
fn g3_group(target: Option<&str>, running_on: &[(&str, &str)]) -> PlacementView {
    PlacementView {
        quorate: true,
        groups: vec![GroupStatus {
            target: target.map(Into::into),
            wanted: Some(true),
            state_here: Some("stopped".into()),
            running_on: running_on.iter().copied().map(RunningOn::from).collect(),
            ..GroupStatus::new("g3-vm", vec!["host-a".into(), "host-b".into()])
        }],
    }
}

/// One simulated host `host-a` with its fencer.
struct Host {
    dir: tempfile::TempDir,
    hv: Hypervisor,
    view: Arc<View>,
    events: Arc<EventLog>,
    fencer: GuestFencer,
}

impl Host {
    /// A host running `domains` (persistent, from its node file).
    fn new(domains: &[&str]) -> Self {
        Self::with(domains, CONFIG, None)
    }

    fn with(domains: &[&str], config_text: &str, uri: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let domains: String = domains.iter().map(|d| domain_xml(d)).collect();
        let node = common::test_node(&dir.path().join("host-a.xml"), &domains);
        let uri = uri.map_or(node, str::to_owned);
        let hv = Hypervisor::spawn(&uri).unwrap_or_else(|e| panic!("{e}"));
        let view = Arc::new(View::default());
        let events =
            Arc::new(EventLog::open(dir.path(), "host-a").unwrap_or_else(|e| panic!("{e}")));
        let fencer = GuestFencer::new(
            &config(config_text),
            "host-a",
            hv.clone(),
            view.clone(),
            events.clone(),
        );
        Self {
            dir,
            hv,
            view,
            events,
            fencer,
        }
    }

    async fn state(&self, name: &str) -> VmStatus {
        let name = name.to_owned();
        self.hv
            .call(move |c| vm_status(c, &name))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start `name` as a transient domain.
    async fn create_transient(&self, name: &str) {
        let xml = domain_xml(name);
        self.hv
            .call(move |c| c.create_domain_xml(&xml, 0).map(|_| ()))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn events(&self) -> Vec<Value> {
        cluster_core::api::read_events(self.events.path(), None, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }
}

fn domain_xml(name: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory>\
         <vcpu>1</vcpu><os><type>hvm</type></os></domain>\n"
    )
}

async fn running_ids(host: &Host, names: &[&str]) -> Vec<Option<u32>> {
    let mut ids = Vec::new();
    for n in names {
        let s = host.state(n).await;
        assert_eq!(s.state, VmState::Running, "{n}: {s:?}");
        ids.push(s.id);
    }
    ids
}

#[tokio::test]
async fn an_authorised_off_destroys_the_running_peer_and_confirms_it() {
    let host = Host::new(&["vm-g1", "vm-g2", "vm-d1"]);
    let before = running_ids(&host, &["vm-g1", "vm-d1"]).await;

    let t = Instant::now();
    let done = host
        .fencer
        .fence("g1", "g2", GuestFenceAction::Off)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let took = t.elapsed();
    eprintln!("request to confirmed off on the test driver: {took:?}");

    assert!(done.destroyed);
    assert_eq!(done.restart, Restart::StaysOff);
    assert_eq!((done.peer.as_str(), done.domain.as_str()), ("g2", "vm-g2"));
    assert_eq!(done.host, "host-a");
    let s = host.state("vm-g2").await;
    assert_eq!(s.state, VmState::Shutoff, "{s:?}");
    assert_eq!(s.reason, "destroyed", "{s:?}");
    assert_eq!(
        running_ids(&host, &["vm-g1", "vm-d1"]).await,
        before,
        "nothing else touched"
    );

    let answer = done.into_response();
    match &answer {
        Response::GuestFenced {
            off,
            message,
            elapsed_ms,
            ..
        } => {
            assert!(*off);
            assert!(message.contains("confirmed off"), "{message}");
            assert!(
                u128::from(*elapsed_ms) <= took.as_millis(),
                "{elapsed_ms} ms"
            );
        }
        other => panic!("{other:?}"),
    }

    let kinds: Vec<String> = host
        .events()
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kinds, ["guest_fence_requested", "guest_fence_succeeded"]);
    let ok = &host.events_of("guest_fence_succeeded")[0];
    assert_eq!(ok["requester"], "g1");
    assert_eq!(ok["peer"], "g2");
    assert_eq!(ok["domain"], "vm-g2");
    assert_eq!(ok["action"], "off");
    assert_eq!(ok["destroyed"], true);
    assert!(ok["elapsed_ms"].is_u64(), "{ok}");
    assert_eq!(
        host.events_of("guest_fence_requested")[0]["domain"],
        "vm-g2"
    );

    // Fenced again: it is shut off here but not the cluster's VM, so
    // whether another host runs it is unknown: never "off".
    let again = host.fencer.fence("g1", "g2", GuestFenceAction::Off).await;
    match again {
        Err(e @ GuestFenceError::NotHere { host: None, .. }) => {
            assert!(e.to_string().contains("unknown"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unauthorised_requests_are_refused_and_touch_nothing() {
    let host = Host::new(&["vm-g1", "vm-g2", "vm-d1", "stranger"]);
    let names = ["vm-g1", "vm-g2", "vm-d1", "stranger"];
    let before = running_ids(&host, &names).await;

    for (requester, peer, why) in [
        ("g1", "stranger", "`stranger` is not a linked guest"),
        ("g1", "vm-g2", "`vm-g2` is not a linked guest"),
        (
            "nobody",
            "g2",
            "the requester `nobody` is not a linked guest",
        ),
        ("g1", "d1", "`d1` belongs to guest cluster `db`"),
        ("d1", "g1", "`g1` belongs to guest cluster `web`"),
        ("g1", "g1", "fence itself"),
    ] {
        match host
            .fencer
            .fence(requester, peer, GuestFenceAction::Off)
            .await
        {
            Err(e @ GuestFenceError::Refused(_)) => {
                assert!(e.to_string().contains(why), "{requester} -> {peer}: {e}");
                assert_eq!(ApiError::from(&e).kind, ApiErrorKind::BadRequest);
            }
            other => panic!("{requester} -> {peer}: {other:?}"),
        }
    }
    assert_eq!(running_ids(&host, &names).await, before, "nothing touched");

    let refused = host.events_of("guest_fence_refused");
    assert_eq!(refused.len(), 6, "{refused:?}");
    assert_eq!(refused[3]["requester"], "g1");
    assert_eq!(refused[3]["peer"], "d1");
    assert!(
        refused[3]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("guest cluster `db`")),
        "{}",
        refused[3]
    );
    assert_eq!(
        host.events().len(),
        6,
        "only refusals: nothing was requested"
    );
}

#[tokio::test]
async fn without_a_linkage_section_every_request_is_refused() {
    let text = CONFIG
        .split("[linkage]")
        .next()
        .unwrap_or_else(|| panic!("no linkage"));
    let host = Host::with(&["vm-g2"], text, None);
    match host.fencer.fence("g1", "g2", GuestFenceAction::Off).await {
        Err(e @ GuestFenceError::Refused(_)) => {
            assert!(e.to_string().contains("no `[linkage]`"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(host.state("vm-g2").await.state, VmState::Running);
}

#[tokio::test]
async fn a_reboot_starts_an_unmanaged_vm_again_after_confirming_it_off() {
    let host = Host::new(&["vm-g2"]);
    // g4's VM is transient: its definition goes with the destroy, so the
    // fencer keeps its XML to start it again.
    host.create_transient("vm-g4").await;
    for domain in ["vm-g2", "vm-g4"] {
        let peer = &domain[3..];
        let before = host.state(domain).await;
        let done = host
            .fencer
            .fence("g1", peer, GuestFenceAction::Reboot)
            .await
            .unwrap_or_else(|e| panic!("{domain}: {e}"));
        assert!(done.destroyed, "{domain}");
        assert_eq!(done.restart, Restart::Started, "{domain}");
        let after = host.state(domain).await;
        assert_eq!(after.state, VmState::Running, "{domain}: {after:?}");
        assert_ne!(after.id, before.id, "{domain}: a new run");
        assert_eq!(after.persistent, before.persistent, "{domain}");
    }
    let ok = host.events_of("guest_fence_succeeded");
    assert_eq!(ok.len(), 2);
    assert!(
        ok.iter()
            .all(|e| e["action"] == "reboot" && e["restart"] == "started again")
    );

    // Repeated reboots: the time from the request to confirmed off and
    // started again, on the test driver.
    let mut times = Vec::new();
    for _ in 0..50 {
        let done = host
            .fencer
            .fence("g1", "g2", GuestFenceAction::Reboot)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        times.push(done.elapsed);
    }
    times.sort();
    eprintln!(
        "reboot on the test driver, 50 runs: median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::test]
async fn a_reboot_of_a_cluster_vm_leaves_its_restart_to_the_host_cluster() {
    let host = Host::new(&[]);
    host.create_transient("vm-g3").await;
    host.view.set(Some(g3_group(Some("host-a"), &[])));
    let done = host
        .fencer
        .fence("g1", "g3", GuestFenceAction::Reboot)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(done.destroyed);
    match &done.restart {
        Restart::ByCluster {
            group,
            watcher: Some(w),
        } => {
            assert_eq!(group, "g3-vm");
            assert!(w.contains("g3-state"), "{w}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        done.message().contains("the host cluster restarts it"),
        "{}",
        done.message()
    );
    assert_eq!(
        host.state("vm-g3").await.state,
        VmState::Absent,
        "not started by the fencer"
    );
    let ok = &host.events_of("guest_fence_succeeded")[0];
    assert!(
        ok["restart"]
            .as_str()
            .is_some_and(|r| r.contains("group `g3-vm`")),
        "{ok}"
    );
}

#[tokio::test]
async fn a_peer_not_on_this_host_is_an_error_naming_where_it_runs() {
    let host = Host::new(&[]);

    // Another host reports the group: its name is in the answer.
    host.view
        .set(Some(g3_group(Some("host-b"), &[("host-b", "running")])));
    match host.fencer.fence("g1", "g3", GuestFenceAction::Off).await {
        Err(e @ GuestFenceError::NotHere { .. }) => {
            assert_eq!(e.runs_on(), Some("host-b"));
            assert!(e.to_string().contains("`host-b` (running)"), "{e}");
            assert_eq!(ApiError::from(&e).kind, ApiErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    let failed = &host.events_of("guest_fence_failed")[0];
    assert_eq!(failed["runs_on"], "host-b");
    assert_eq!(failed["peer"], "g3");

    // Assigned to another host that does not report it (yet): not off.
    host.view.set(Some(g3_group(Some("host-b"), &[])));
    let r = host.fencer.fence("g1", "g3", GuestFenceAction::Off).await;
    assert!(
        matches!(&r, Err(e) if e.runs_on() == Some("host-b")),
        "{r:?}"
    );

    // No engine view, or no quorum: unknown, never off.
    for view in [
        None,
        Some(PlacementView {
            quorate: false,
            ..g3_group(None, &[])
        }),
    ] {
        host.view.set(view.clone());
        match host.fencer.fence("g1", "g3", GuestFenceAction::Off).await {
            Err(e @ GuestFenceError::NotHere { host: None, .. }) => {
                assert!(e.to_string().contains("unknown"), "{view:?}: {e}");
            }
            other => panic!("{view:?}: {other:?}"),
        }
    }

    // A VM the cluster does not manage, not here: unknown.
    match host.fencer.fence("g1", "g4", GuestFenceAction::Off).await {
        Err(e @ GuestFenceError::NotHere { host: None, .. }) => {
            assert!(e.to_string().contains("not a `vm` resource"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    // The cluster's VM runs nowhere (quorate, nobody reports it, not
    // assigned elsewhere) and is not here: off, nothing destroyed.
    host.view.set(Some(g3_group(None, &[])));
    let done = host
        .fencer
        .fence("g1", "g3", GuestFenceAction::Off)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!done.destroyed);
    assert!(done.message().contains("already off"), "{}", done.message());
    assert_eq!(host.events_of("guest_fence_failed").len(), 5);
    assert_eq!(host.events_of("guest_fence_succeeded").len(), 1);
}

#[tokio::test]
async fn a_second_copy_reported_by_another_host_is_not_confirmed_off() {
    let host = Host::new(&[]);
    host.create_transient("vm-g3").await;
    host.view
        .set(Some(g3_group(Some("host-b"), &[("host-b", "running")])));
    match host.fencer.fence("g1", "g3", GuestFenceAction::Off).await {
        Err(e @ GuestFenceError::NotConfirmed { .. }) => {
            assert!(
                e.to_string().contains("destroyed on this host")
                    && e.to_string().contains("host-b"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        host.state("vm-g3").await.state,
        VmState::Absent,
        "this copy is destroyed"
    );
}

#[tokio::test]
async fn an_unreachable_libvirt_is_an_error_never_off() {
    let host = Host::with(
        &[],
        CONFIG,
        Some("qemu+unix:///system?socket=/nonexistent/libvirt-sock"),
    );
    // Even a cluster VM the placement runs nowhere: this host's libvirt
    // cannot say that it is not here.
    host.view.set(Some(g3_group(None, &[])));
    for peer in ["g2", "g3"] {
        match host.fencer.fence("g1", peer, GuestFenceAction::Off).await {
            Err(e @ GuestFenceError::NotConfirmed { .. }) => {
                assert!(e.to_string().contains("libvirt"), "{e}");
                assert_eq!(ApiError::from(&e).kind, ApiErrorKind::Unavailable);
            }
            other => panic!("{peer}: {other:?}"),
        }
    }
    let failed = host.events_of("guest_fence_failed");
    assert_eq!(failed.len(), 2);
    assert!(host.events_of("guest_fence_succeeded").is_empty());
}

#[tokio::test]
async fn a_hung_libvirt_times_out_and_the_destroy_never_comes_late() {
    let host = Host::new(&["vm-g2"]);
    let before = host.state("vm-g2").await;
    let fencer = GuestFencer::new(
        &config(CONFIG),
        "host-a",
        host.hv.clone(),
        host.view.clone(),
        host.events.clone(),
    )
    .with_timeout(Duration::from_millis(300));
    // The libvirt thread is busy for 1.5 s.
    let hv = host.hv.clone();
    let busy = tokio::spawn(async move {
        hv.call(|_| std::thread::sleep(Duration::from_millis(1500)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let r = fencer.fence("g1", "g2", GuestFenceAction::Off).await;
    let took = t.elapsed();
    assert!(
        matches!(&r, Err(GuestFenceError::NotConfirmed { detail, .. }) if detail.contains("in time")),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(800),
        "bounded by its timeout: {took:?}"
    );
    let _ = busy.await;
    // The destroy the fence gave up on was skipped, not run late.
    let after = host.state("vm-g2").await;
    assert_eq!(after.state, VmState::Running);
    assert_eq!(after.id, before.id);
    drop(host.dir);
}
