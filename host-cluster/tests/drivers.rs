//! `drivers::build` on a host configuration: drivers in configuration
//! order, per-node overrides applied, and `vm` monitors watching the VMs
//! a recovery restart restarts. Real libvirt test driver, no root.

use std::time::Duration;

use cluster_core::resource::{ActionContext, ActionOutcome, CheckOutcome, StartReason};
use host_cluster::hypervisor::Hypervisor;

mod common;

const CONFIG: &str = concat!(
    two_hosts!(),
    r#"
[nodes.overrides.db]
domain_xml = "{B}/db.xml"

[[groups]]
name = "db-vm"
nodes = ["host-a", "host-b"]

[[groups.resources]]
name = "db"
kind = "vm"
domain_xml = "{A}/db.xml"

[[groups.monitors]]
name = "db-state"
kind = "vm"

[[groups]]
name = "apps"
nodes = ["host-b", "host-a"]
start_after = ["db-vm"]

[[groups.resources]]
name = "app1"
kind = "vm"
domain_xml = "{A}/app1.xml"

[[groups.resources]]
name = "app2"
kind = "vm"
domain_xml = "{A}/app2.xml"

[[groups.monitors]]
name = "apps-state"
kind = "vm"
resource = "app1"
paused_is_failure = false

[[groups.monitors]]
name = "app2-state"
kind = "vm"

[[groups.monitors]]
name = "uplink"
kind = "nic"
interface = "eth0"
"#
);

fn ctx(resource: &str) -> ActionContext {
    ActionContext {
        group: "g".into(),
        resource: resource.into(),
        node: "host-b".into(),
        reason: StartReason::Start,
        previous_owner: None,
        previous_owner_fenced: false,
        timeout: Duration::from_secs(10),
    }
}

fn vm_xml(name: &str) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type>hvm</type></os></domain>"
    )
}

#[tokio::test]
async fn drivers_follow_the_configuration_on_this_node() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
    }
    // host-b reads db from its override path only; the apps from the shared one.
    std::fs::write(b.join("db.xml"), vm_xml("db")).unwrap_or_else(|e| panic!("{e}"));
    for app in ["app1", "app2"] {
        std::fs::write(a.join(format!("{app}.xml")), vm_xml(app)).unwrap_or_else(|e| panic!("{e}"));
    }
    let text = CONFIG
        .replace("{A}", &a.display().to_string())
        .replace("{B}", &b.display().to_string());
    let config = conf::load_str("hosts.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node><memory>8388608</memory></node>")
        .unwrap_or_else(|e| panic!("{e}"));
    let hv =
        Hypervisor::spawn(&format!("test://{}", node.display())).unwrap_or_else(|e| panic!("{e}"));

    let drivers = host_cluster::drivers::build(&config, "host-b", &hv);
    let resources: Vec<usize> = drivers.resources.iter().map(Vec::len).collect();
    let monitors: Vec<usize> = drivers.monitors.iter().map(Vec::len).collect();
    assert_eq!((resources, monitors), (vec![1, 2], vec![1, 3]));

    for (g, r, name) in [(0, 0, "db"), (1, 0, "app1"), (1, 1, "app2")] {
        assert_eq!(
            drivers.resources[g][r].start(&ctx(name)).await,
            ActionOutcome::Ok,
            "{name}"
        );
    }
    let t = Duration::from_secs(5);
    for m in drivers.monitors.iter().flatten().take(3) {
        assert_eq!(m.check(t).await, CheckOutcome::Ok);
    }
    // app1 vanishes: the monitor restarting from app1 sees it, the one
    // restarting app2 only does not.
    hv.call(|c| c.lookup_domain_by_name("app1").and_then(|d| d.destroy()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(drivers.monitors[1][0].check(t).await, CheckOutcome::Failed(m) if m.contains("`app1`"))
    );
    assert_eq!(drivers.monitors[1][1].check(t).await, CheckOutcome::Ok);
    // A monitor kind the host daemon does not run says so.
    match drivers.monitors[1][2].check(t).await {
        CheckOutcome::Failed(m) => assert!(m.contains("`nic`"), "{m}"),
        CheckOutcome::Ok => panic!("an unsupported monitor passed"),
    }

    // host-a would read db from the shared path, which has no file here.
    let on_a = host_cluster::drivers::build(&config, "host-a", &hv);
    match on_a.resources[0][0].start(&ctx("db")).await {
        ActionOutcome::Failed {
            message,
            hard: true,
        } => {
            assert!(
                message.contains(&a.join("db.xml").display().to_string()),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn vm_monitors_watch_what_their_restart_restarts() {
    let config = conf::load_str(
        "hosts.toml",
        &CONFIG.replace("{A}", "/a").replace("{B}", "/b"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let watched = |g: usize, m: usize| {
        let group = &config.groups[g];
        host_cluster::drivers::watched_vms(group, &group.monitors[m])
    };
    assert_eq!(watched(0, 0), ["db"]);
    assert_eq!(watched(1, 0), ["app1", "app2"], "from its `resource` on");
    assert_eq!(watched(1, 1), ["app2"], "the group's last resource");
}
