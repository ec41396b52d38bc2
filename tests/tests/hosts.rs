//! Host clusters on the testbed: `host-clusterd` in namespaces, each with
//! its own libvirt test-driver hypervisor. Needs root.

use std::time::Duration;

use testbed::cluster::{Cluster, Spec, test_domain_xml, test_host_xml};

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn a_host_that_loses_quorum_destroys_its_vms_at_once() {
    let spec = Spec {
        host: true,
        extra: concat!(
            "[[groups]]\nname = \"gc\"\nnodes = [\"n2\", \"n0\"]\n",
            "[[groups.resources]]\nname = \"vm-c\"\nkind = \"vm\"\ndomain_xml = \"{dir}/vm-c.xml\"\n",
        )
        .into(),
        ..Spec::default()
    };
    let c = ok(Cluster::start_with(&spec, |dir| {
        for k in 0..3 {
            // n2 also runs a VM the cluster does not manage.
            let domains: &[&str] = if k == 2 { &["other"] } else { &[] };
            let _ = std::fs::write(dir.join(format!("n{k}.xml")), test_host_xml(domains));
        }
        let _ = std::fs::write(dir.join("vm-c.xml"), test_domain_xml("vm-c", 512, 1));
    }));
    ok(c.wait_converged(Duration::from_secs(10)));
    // The cluster starts vm-c on its preferred host.
    ok(testbed::wait_until(
        "vm-c running on n2",
        Duration::from_secs(10),
        || c.vm_state(2, "vm-c").as_deref() == Some("running"),
    ));

    ok(c.net.partition(&[0, 1], &[2]));
    let stopped = ok(
        c.wait_event(2, "groups_stopped", Duration::from_secs(5), |e| {
            e["why"] == "quorum lost"
        }),
    );
    assert_eq!(stopped["count"], 1, "{stopped}");
    // Destroyed, not shut down: a transient domain is then gone.
    assert_eq!(c.vm_state(2, "vm-c"), None);
    assert_eq!(
        c.vm_state(2, "other").as_deref(),
        Some("running"),
        "unmanaged VMs are left alone"
    );
    assert!(c.log(2).contains("VM destroyed: this host has no quorum"));
}

/// A host daemon that restarts cut off from its peers next to a VM it
/// manages still running (here a VM its test driver loads at start, as
/// libvirtd keeps VMs across a daemon restart) destroys it once the
/// start-up grace (twice the heartbeat timeout) is over without quorum,
/// not before: membership gets the time to form.
#[test]
fn a_host_started_without_quorum_destroys_what_runs_only_after_the_grace() {
    let spec = Spec {
        host: true,
        extra: concat!(
            "[[groups]]\nname = \"gc\"\nnodes = [\"n2\", \"n0\"]\n",
            "[[groups.resources]]\nname = \"vm-c\"\nkind = \"vm\"\ndomain_xml = \"{dir}/vm-c.xml\"\n",
        )
        .into(),
        ..Spec::default()
    };
    let mut c = ok(Cluster::start_with(&spec, |dir| {
        for k in 0..3 {
            let _ = std::fs::write(dir.join(format!("n{k}.xml")), test_host_xml(&[]));
        }
        let _ = std::fs::write(dir.join("vm-c.xml"), test_domain_xml("vm-c", 512, 1));
    }));
    ok(c.wait_converged(Duration::from_secs(10)));

    // n2 restarts cut off, with no engine state, next to a running vm-c.
    c.kill(2);
    ok(c.net.partition(&[0, 1], &[2]));
    let _ = std::fs::remove_dir_all(c.state_dir(2));
    let _ = std::fs::write(c.dir().join("n2.xml"), test_host_xml(&["vm-c"]));
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
    assert!(
        !c.events(2)
            .iter()
            .any(|e| e["kind"] == "group_stopping" && e["ts_ms"].as_u64() >= Some(since)),
        "vm-c was stopped before the grace was over: {:?}",
        c.events(2)
    );
    assert_eq!(c.vm_state(2, "vm-c").as_deref(), Some("shutoff"));
}
