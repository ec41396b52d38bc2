//! Host clusters on the testbed: `host-clusterd` in namespaces, each with
//! its own libvirt test-driver hypervisor. Needs root.

use std::time::Duration;

use testbed::cluster::{Cluster, Spec, test_host_xml};

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn vm_state(c: &Cluster, k: usize, vm: &str) -> Option<String> {
    let s = c.status(k).ok()?;
    s.hypervisor?
        .domains
        .into_iter()
        .find(|d| d.name == vm)
        .map(|d| d.state)
}

#[test]
fn a_host_that_loses_quorum_destroys_its_vms_at_once() {
    let spec = Spec {
        host: true,
        extra: concat!(
            "[[groups]]\nname = \"gc\"\nnodes = [\"n2\", \"n0\"]\n",
            "[[groups.resources]]\nname = \"vm-c\"\nkind = \"vm\"\ndomain_xml = \"/shared/vm-c.xml\"\n",
        )
        .into(),
        ..Spec::default()
    };
    let c = ok(Cluster::start_with(&spec, |dir| {
        for k in 0..3 {
            // n2 runs the managed VM and an unmanaged one.
            let domains: &[&str] = if k == 2 { &["vm-c", "other"] } else { &[] };
            let _ = std::fs::write(dir.join(format!("n{k}.xml")), test_host_xml(domains));
        }
    }));
    ok(c.wait_converged(Duration::from_secs(10)));
    assert_eq!(vm_state(&c, 2, "vm-c").as_deref(), Some("running"));

    ok(c.net.partition(&[0, 1], &[2]));
    let stopped = ok(
        c.wait_event(2, "groups_stopped", Duration::from_secs(5), |e| {
            e["why"] == "quorum lost"
        }),
    );
    assert_eq!(stopped["count"], 1, "{stopped}");
    assert_eq!(vm_state(&c, 2, "vm-c").as_deref(), Some("shutoff"));
    assert_eq!(
        vm_state(&c, 2, "other").as_deref(),
        Some("running"),
        "unmanaged VMs are left alone"
    );
    assert!(c.log(2).contains("VM destroyed: this host has no quorum"));
}

#[test]
fn a_restarted_host_keeps_its_vms_only_if_it_regains_quorum() {
    let spec = Spec {
        host: true,
        extra: concat!(
            "[[groups]]\nname = \"gc\"\nnodes = [\"n2\", \"n0\"]\n",
            "[[groups.resources]]\nname = \"vm-c\"\nkind = \"vm\"\ndomain_xml = \"/shared/vm-c.xml\"\n",
        )
        .into(),
        ..Spec::default()
    };
    let mut c = ok(Cluster::start_with(&spec, |dir| {
        for k in 0..3 {
            let domains: &[&str] = if k == 2 { &["vm-c"] } else { &[] };
            let _ = std::fs::write(dir.join(format!("n{k}.xml")), test_host_xml(domains));
        }
    }));
    ok(c.wait_converged(Duration::from_secs(10)));

    // A daemon restart (the test driver reloads vm-c running) inside a
    // healthy cluster: membership forms within the startup grace and the VM
    // is left running.
    c.kill(2);
    let since = cluster_core::events::now_ms();
    ok(c.start_node(2));
    ok(
        c.wait_event(2, "quorum_gained", Duration::from_secs(5), |e| {
            e["ts_ms"].as_u64() >= Some(since)
        }),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm_state(&c, 2, "vm-c").as_deref(), Some("running"));
    assert!(
        !c.events(2)
            .iter()
            .any(|e| e["kind"] == "groups_stopped" && e["ts_ms"].as_u64() >= Some(since)),
        "{:?}",
        c.events(2)
    );

    // The same restart cut off from its peers: once the grace is over
    // without quorum, the VM is destroyed.
    c.kill(2);
    ok(c.net.partition(&[0, 1], &[2]));
    let since = cluster_core::events::now_ms();
    ok(c.start_node(2));
    let stopped = ok(
        c.wait_event(2, "groups_stopped", Duration::from_secs(5), |e| {
            e["ts_ms"].as_u64() >= Some(since)
        }),
    );
    assert_eq!(stopped["why"], "no quorum at start", "{stopped}");
    assert_eq!(stopped["count"], 1, "{stopped}");
    let waited = stopped["ts_ms"].as_u64().unwrap_or(0) - since;
    assert!(
        waited >= 1_000,
        "stopped {waited} ms after the start, before the startup grace (2 x timeout)"
    );
    assert_eq!(vm_state(&c, 2, "vm-c").as_deref(), Some("shutoff"));
}
