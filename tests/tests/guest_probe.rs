//! The periodic probe of a running resource (`monitor_interval`, the
//! recurring `monitor` operation), with no monitor configured: guest
//! daemons in their own network namespaces run a group of a floating IPv4
//! address and a small application; the address is deleted behind the
//! cluster's back on the active guest (`ip addr del`, as an operator's
//! slip or a network script would). The probe alone finds it gone: the
//! first time the address and the application after it are restarted in
//! place, the second time (restarts used up) the group fails over to the
//! standby, which needs no fencing. A watcher fails the test if the
//! address is ever on two nodes at once. Needs root.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::cluster::{Cluster, Spec};
use testbed::watch::Watcher;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Group `web` may run on n0 and n1; n2 only adds its vote.
const NODES: usize = 3;
/// The floating address (node `k` has `10.0.0.(k+1)/24` on `eth0`).
const VIP: &str = "10.0.0.100";
/// How often the address is probed while the group runs.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// The floating address, probed every 200 ms (one restart, then one
/// failover), and an application that records its starts and stops.
fn group() -> String {
    format!(
        r#"
[[groups]]
name = "web"
nodes = ["n0", "n1"]

[[groups.resources]]
name = "vip"
kind = "floating_ip"
address = "{VIP}/24"
interface = "eth0"
monitor_interval = "{}ms"
monitor_timeout = "1s"
monitor_recovery = {{ restart = 1, failover = 1, final_action = "stop_group" }}

[[groups.resources]]
name = "app"
kind = "exec"
start = ["/bin/sh", "-c", "touch {{dir}}/app.$KVMHA_NODE; echo $KVMHA_NODE start $KVMHA_REASON >> {{dir}}/app.log"]
stop = ["/bin/sh", "-c", "rm -f {{dir}}/app.$KVMHA_NODE; echo $KVMHA_NODE stop >> {{dir}}/app.log"]
status = ["/bin/sh", "-c", "test -f {{dir}}/app.$KVMHA_NODE || exit 7"]
"#,
        PROBE_EVERY.as_millis()
    )
}

/// Whether namespace `ns` holds the floating address on `eth0`.
fn has_vip(ns: &str) -> bool {
    Command::new("ip")
        .args([
            "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0", "to", VIP,
        ])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// The nodes that hold the address.
fn holders(namespaces: &[String]) -> BTreeSet<String> {
    namespaces
        .iter()
        .enumerate()
        .filter(|(_, ns)| has_vip(ns))
        .map(|(k, _)| format!("n{k}"))
        .collect()
}

fn app_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.dir().join("app.log")).unwrap_or_default()
}

/// Wait until exactly `node` holds the address and its daemon reports the
/// group running; returns when the address came.
fn wait_serving(c: &Cluster, namespaces: &[String], node: usize, timeout: Duration) -> Instant {
    let want = BTreeSet::from([format!("n{node}")]);
    ok(testbed::wait_until(
        &format!("the address on n{node} alone"),
        timeout,
        || holders(namespaces) == want,
    ));
    let at = Instant::now();
    ok(testbed::wait_until(
        &format!("n{node} to report web running"),
        timeout,
        || {
            c.status(node).is_ok_and(|s| {
                s.groups
                    .iter()
                    .any(|g| g.name == "web" && g.state_here.as_deref() == Some("running"))
            })
        },
    ));
    at
}

/// Delete the address on node `k` behind the cluster's back.
fn delete_vip(c: &Cluster, k: usize) -> Instant {
    let ns = c.net.ns(k);
    let out = Command::new("ip")
        .args([
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{VIP}/24"),
            "dev",
            "eth0",
        ])
        .output()
        .unwrap_or_else(|e| panic!("ip addr del: {e}"));
    assert!(out.status.success(), "ip addr del: {out:?}");
    Instant::now()
}

/// Wait for node `k`'s `monitor_failed` event of the probe of `vip` with
/// `action`; returns when it was seen.
fn wait_probe_failure(c: &Cluster, k: usize, action: &str) -> Instant {
    let e = ok(
        c.wait_event(k, "monitor_failed", Duration::from_secs(10), |e| {
            e["probe"] == "vip" && e["action"] == action
        }),
    );
    assert_eq!(e["detail"], "the probe found it stopped", "{e}");
    Instant::now()
}

#[test]
fn a_floating_address_deleted_behind_the_clusters_back_is_recovered_by_the_probe_alone() {
    let c = ok(Cluster::start_with(
        &Spec {
            extra: format!("{}{}", testbed::fence::config(NODES), group()),
            ..Spec::default()
        },
        testbed::fence::install,
    ));
    testbed::fence::arm(&c);
    ok(c.wait_converged(Duration::from_secs(10)));
    let namespaces: Vec<String> = (0..NODES).map(|k| c.net.ns(k)).collect();
    wait_serving(&c, &namespaces, 0, Duration::from_secs(15));
    let watcher = {
        let ns = namespaces.clone();
        Watcher::new(move || holders(&ns))
    };

    // First deletion: the probe finds the address gone; the address and
    // the application after it restart in place.
    let t0 = delete_vip(&c, 0);
    let detected = wait_probe_failure(&c, 0, "restart");
    let back = wait_serving(&c, &namespaces, 0, Duration::from_secs(10));
    let log = app_log(&c);
    assert!(log.contains("n0 stop\nn0 start RECOVER"), "{log}");
    println!(
        "restart in place: detected after {} ms (probe every {} ms), address back after {} ms",
        (detected - t0).as_millis(),
        PROBE_EVERY.as_millis(),
        (back - t0).as_millis()
    );

    // Second deletion: the restart is used up; the group fails over to n1
    // (n0 stops it first: no fencing).
    let t1 = delete_vip(&c, 0);
    let detected = wait_probe_failure(&c, 0, "failover");
    let moved = wait_serving(&c, &namespaces, 1, Duration::from_secs(15));
    let log = app_log(&c);
    assert!(log.ends_with("n1 start FAILOVER\n"), "{log}");
    println!(
        "failover: detected after {} ms, address on n1 after {} ms",
        (detected - t1).as_millis(),
        (moved - t1).as_millis()
    );
    assert!(
        testbed::fence::fenced(c.dir()).is_empty(),
        "a clean failover fences nobody"
    );
    let status = ok(c.status(1));
    let web = status.groups.iter().find(|g| g.name == "web");
    assert_eq!(
        web.and_then(|g| g.reason.as_deref()),
        Some("failed over from n0"),
        "{status:?}"
    );
    let doubles = watcher.finish();
    assert!(
        doubles.is_empty(),
        "the address was on two nodes: {doubles:?}"
    );
}
