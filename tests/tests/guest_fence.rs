//! Fencing a guest on request, end to end: `clusterctl guest fence`
//! against real `host-clusterd` daemons in namespaces, each host with its
//! own libvirt test-driver hypervisor. Needs root.

use std::process::Output;
use std::time::{Duration, Instant};

use testbed::cluster::{Cluster, Spec, test_domain_xml, test_host_xml};
use testbed::{run, write_key};

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `clusterctl [--json] guest fence --as REQUESTER PEER [--reboot]` to host `k`.
fn fence(c: &Cluster, k: usize, requester: &str, peer: &str, extra: &[&str]) -> Output {
    let socket = c.socket(k).display().to_string();
    let mut args = vec![
        "guest", "fence", "--as", requester, peer, "--socket", &socket,
    ];
    args.extend_from_slice(extra);
    run("clusterctl", &args)
}

/// Three hosts. n0 runs the unmanaged VMs of guests g1, g2 (guest cluster
/// `web`) and d1 (`db`); g3's VM `vm-g3` is a `vm` resource of the host
/// cluster, preferred on n1 and watched by a `vm` monitor.
#[test]
fn clusterctl_fences_a_linked_guest_through_the_host_daemon() {
    let mut extra = String::from(concat!(
        "[[groups]]\nname = \"g3-vm\"\nnodes = [\"n1\", \"n0\"]\n",
        "[[groups.resources]]\nname = \"vm-g3\"\nkind = \"vm\"\ndomain_xml = \"{dir}/vm-g3.xml\"\n",
        "[[groups.monitors]]\nname = \"g3-state\"\nkind = \"vm\"\ninterval = \"200ms\"\ntimeout = \"2s\"\n\n",
        "[linkage]\n\n",
    ));
    for (name, domain, cluster) in [
        ("g1", "vm-g1", "web"),
        ("g2", "vm-g2", "web"),
        ("g3", "vm-g3", "web"),
        ("d1", "vm-d1", "db"),
    ] {
        extra.push_str(&format!(
            "[[linkage.guests]]\nname = \"{name}\"\ndomain = \"{domain}\"\ncluster = \"{cluster}\"\n\
             key_file = \"{{dir}}/{name}.key\"\n\n"
        ));
    }
    let spec = Spec {
        host: true,
        extra,
        node_extra: "linkage_listen = [\"unix:{dir}/linkage-{node}.sock\"]".into(),
        ..Spec::default()
    };
    let c = ok(Cluster::start_with(&spec, |dir| {
        for k in 0..3 {
            let domains: &[&str] = if k == 0 {
                &["vm-g1", "vm-g2", "vm-d1"]
            } else {
                &[]
            };
            let _ = std::fs::write(dir.join(format!("n{k}.xml")), test_host_xml(domains));
        }
        let _ = std::fs::write(dir.join("vm-g3.xml"), test_domain_xml("vm-g3", 512, 1));
        for g in ["g1", "g2", "g3", "d1"] {
            write_key(&dir.join(format!("{g}.key")));
        }
    }));
    ok(c.wait_converged(Duration::from_secs(10)));
    ok(testbed::wait_until(
        "vm-g3 running on n1",
        Duration::from_secs(10),
        || c.vm_state(1, "vm-g3").as_deref() == Some("running"),
    ));

    // Authorised: g1 fences its peer g2 on n0.
    let t = Instant::now();
    let out = fence(&c, 0, "g1", "g2", &[]);
    let took = t.elapsed();
    eprintln!("clusterctl guest fence, end to end: {took:?}");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("`g2` (domain `vm-g2`) confirmed off on host `n0`"),
        "{}",
        text(&out)
    );
    assert_eq!(c.vm_state(0, "vm-g2").as_deref(), Some("shutoff"));
    assert_eq!(c.vm_state(0, "vm-g1").as_deref(), Some("running"));
    let done = ok(
        c.wait_event(0, "guest_fence_succeeded", Duration::from_secs(2), |e| {
            e["peer"] == "g2"
        }),
    );
    assert_eq!(done["requester"], "g1");
    assert_eq!(done["destroyed"], true);

    // Another guest cluster's VM: refused, untouched, exit 1.
    let out = fence(&c, 0, "g1", "d1", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("guest cluster `db`"),
        "{}",
        text(&out)
    );
    assert_eq!(c.vm_state(0, "vm-d1").as_deref(), Some("running"));
    ok(
        c.wait_event(0, "guest_fence_refused", Duration::from_secs(2), |e| {
            e["peer"] == "d1"
        }),
    );

    // g3's VM runs on n1, not on n0: the answer names n1.
    let out = fence(&c, 0, "g1", "g3", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`n1`"),
        "{}",
        text(&out)
    );
    assert_eq!(c.vm_state(1, "vm-g3").as_deref(), Some("running"));
    let failed = ok(
        c.wait_event(0, "guest_fence_failed", Duration::from_secs(2), |e| {
            e["peer"] == "g3"
        }),
    );
    assert_eq!(failed["runs_on"], "n1");

    // On n1, a reboot: destroyed and confirmed; the host cluster's own
    // monitor then restarts its VM.
    let since = cluster_core::events::now_ms();
    let out = fence(&c, 1, "g1", "g3", &["--reboot", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(answer["response"], "guest_fenced", "{answer}");
    assert_eq!(answer["off"], true);
    assert_eq!(answer["host"], "n1");
    assert_eq!(answer["action"], "reboot");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("the host cluster restarts it")),
        "{answer}"
    );
    ok(
        c.wait_event(1, "monitor_failed", Duration::from_secs(5), |e| {
            e["ts_ms"].as_u64() >= Some(since)
        }),
    );
    ok(testbed::wait_until(
        "vm-g3 running again on n1",
        Duration::from_secs(10),
        || c.vm_state(1, "vm-g3").as_deref() == Some("running"),
    ));
}
