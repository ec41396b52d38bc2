//! Act one of the demo: whole-VM failover between hosts. Three host
//! daemons on loopback addresses, each with libvirt's in-process test
//! driver as its hypervisor (so a host's VMs die with its daemon, as on
//! power loss), six VMs with a dependency and capacity limits
//! (`conf/examples/demo-hosts.toml`). The demo waits until every VM runs,
//! kills host-a's daemon with SIGKILL, and shows the survivors fence it,
//! restart what fits (the database before the web server that starts after
//! it) and leave what does not fit down, saying why.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Say, Started};

/// The host whose daemon the demo kills.
pub(super) const VICTIM: &str = "host-a";
/// The host that coordinates once the victim is gone (lowest live node).
const WITNESS: &str = "host-b";

/// The demo's fence agent (fence-agents' stdin protocol): "powers off" a
/// host by killing its daemon, whose pid the demo writes to
/// `{dir}/<host>.pid`, and answers only once that process is gone.
const FENCE_AGENT: &str = r#"#!/bin/sh
action=off
while IFS='=' read -r k v; do
    case "$k" in action) action=$v ;; plug|port) plug=$v ;; esac
done
pid=$(cat "{dir}/$plug.pid" 2>/dev/null)
case "$action" in
off|reboot)
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
    i=0
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        [ $i -ge 100 ] && { echo "$plug is still running" >&2; exit 1; }
        sleep 0.05
    done
    echo "$plug off" >> "{dir}/fence.log"
    exit 0 ;;
status)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && exit 0
    exit 2 ;;
*) exit 0 ;;
esac
"#;

/// Write what act one needs besides its configuration: the VMs' domain
/// XML and the fence agent.
pub(super) fn prepare(dir: &Path, config: &conf::Config) -> anyhow::Result<()> {
    let vms = dir.join("vms");
    fs::create_dir_all(&vms).with_context(|| format!("cannot create {}", vms.display()))?;
    for (_, r) in config.resources() {
        let conf::ResourceKind::Vm(vm) = &r.kind else {
            continue;
        };
        let xml = format!(
            "<domain type='test'>\n  <name>{}</name>\n  <memory unit='MiB'>{}</memory>\n  \
             <vcpu>{}</vcpu>\n  <os><type>hvm</type></os>\n</domain>\n",
            r.name,
            vm.memory_mib.unwrap_or(512),
            vm.vcpus.unwrap_or(1)
        );
        fs::write(&vm.domain_xml, xml)
            .with_context(|| format!("cannot write {}", vm.domain_xml.display()))?;
    }
    let agent = dir.join("fence-demo-host");
    fs::write(
        &agent,
        FENCE_AGENT.replace("{dir}", &dir.display().to_string()),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755))?;
    let _ = fs::remove_file(dir.join("fence.log"));
    Ok(())
}

/// Record each daemon's pid for the fence agent.
pub(super) fn write_pids(dir: &Path, hosts: &Started) -> anyhow::Result<()> {
    for (name, child) in &hosts.daemons.0 {
        fs::write(dir.join(format!("{name}.pid")), child.id().to_string())?;
    }
    Ok(())
}

/// Per VM, the hosts whose hypervisor runs it (hosts that answer).
fn placement(dir: &Path, config: &conf::Config) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in &config.nodes {
        let Ok(s) = crate::status_cmd::fetch(&dir.join(format!("{}.sock", node.name))) else {
            continue;
        };
        for d in s.hypervisor.map(|h| h.domains).unwrap_or_default() {
            if d.managed && d.state == "running" {
                out.entry(d.name).or_default().push(node.name.clone());
            }
        }
    }
    out
}

fn wait_until<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("{what} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vm_names(config: &conf::Config) -> Vec<String> {
    config
        .resources()
        .filter(|(_, r)| matches!(r.kind, conf::ResourceKind::Vm(_)))
        .map(|(_, r)| r.name.clone())
        .collect()
}

fn show_placement(say: &Say, vms: &[String], now: &BTreeMap<String, Vec<String>>) {
    for vm in vms {
        let hosts = now
            .get(vm)
            .map_or_else(|| "down".to_owned(), |h| h.join(", "));
        say.line(format_args!("  {vm:<8} {hosts}"));
    }
}

/// Act one: returns what happened, for `--json`.
pub(super) fn failover(dir: &Path, hosts: &mut Started, json: bool) -> anyhow::Result<Value> {
    let say = Say { json };
    let config = hosts.config.clone();
    let vms = vm_names(&config);
    let before = wait_until("not every VM ran", Duration::from_secs(20), || {
        let now = placement(dir, &config);
        vms.iter().all(|v| now.contains_key(v)).then_some(now)
    })?;
    say.line(format_args!(
        "Demo cluster `{}`: {} KVM hosts on this machine (libvirt's test driver inside each \
         host daemon: a host's VMs die with it), {} VMs placed by priority, dependency and \
         capacity (3 vCPUs per host):",
        config.cluster.name,
        config.nodes.len(),
        vms.len()
    ));
    show_placement(&say, &vms, &before);
    let expected_lost: Vec<String> = before
        .iter()
        .filter(|(_, h)| h.iter().any(|x| x == VICTIM))
        .map(|(vm, _)| vm.clone())
        .collect();

    say.line(format_args!(
        "\nKilling {VICTIM}'s daemon with SIGKILL (its VMs {} die with it)...",
        expected_lost.join(", ")
    ));
    let killed_at = cluster_core::events::now_ms();
    let t0 = Instant::now();
    let victim = hosts
        .daemons
        .0
        .iter_mut()
        .find(|(n, _)| n == VICTIM)
        .context("no daemon for the victim host")?;
    victim.1.kill().context("cannot kill the host daemon")?;
    let _ = victim.1.wait();

    let witness_socket = dir.join(format!("{WITNESS}.sock"));
    // Done when every lost VM runs elsewhere or the coordinator's placement
    // leaves it down.
    let after = wait_until(
        "the lost host's VMs were not handled",
        Duration::from_secs(20),
        || {
            let now = placement(dir, &config);
            let status = crate::status_cmd::fetch(&witness_socket).ok()?;
            let settled = expected_lost.iter().all(|vm| {
                now.contains_key(vm)
                    || status
                        .groups
                        .iter()
                        .any(|g| g.name == *vm && g.target.is_none() && g.reason.is_some())
            });
            let runs = expected_lost.iter().any(|vm| now.contains_key(vm));
            (settled && runs).then_some(now)
        },
    )?;
    let took = t0.elapsed();
    say.line(format_args!(
        "  {} ms after the kill, the VMs run here:",
        took.as_millis()
    ));
    show_placement(&say, &vms, &after);
    let doubled: Vec<&String> = after
        .iter()
        .filter(|(_, h)| h.len() > 1)
        .map(|(vm, _)| vm)
        .collect();
    if !doubled.is_empty() {
        bail!("VMs running on two hosts: {doubled:?}");
    }

    // Every survivor's events (each reports what it did itself).
    let mut events: Vec<Value> = Vec::new();
    for node in config.nodes.iter().filter(|n| n.name != VICTIM) {
        let socket = dir.join(format!("{}.sock", node.name));
        let client = crate::target::Client::new(&crate::target::Target::socket(socket))?;
        match client.call(&cluster_core::api::Request::Events {
            since_ms: Some(killed_at),
            limit: None,
        })? {
            cluster_core::api::Response::Events(e) => events.extend(e),
            other => return Err(crate::target::unexpected(&other)),
        }
    }
    events.sort_by_key(|e| e["ts_ms"].as_u64().unwrap_or(0));
    // Placement and fencing decisions are the coordinator's; starts are
    // each host's own.
    events.retain(|e| {
        let by_witness = e["node"] == WITNESS;
        let kind = e["kind"].as_str().unwrap_or("");
        by_witness || matches!(kind, "group_placed" | "group_starting" | "group_running")
    });
    let shown = [
        "peer_lost",
        "fence_started",
        "fence_failed",
        "fence_succeeded",
        "takeover_allowed",
        "group_placed",
        "group_starting",
        "group_running",
    ];
    let timeline: Vec<Value> = events
        .into_iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| shown.contains(&k)))
        .collect();
    say.line(format_args!(
        "\nIn ms after the kill (heartbeat timeout {} ms; {WITNESS} coordinates once {VICTIM} is \
         gone):",
        config.heartbeat.timeout.get().as_millis()
    ));
    for e in &timeline {
        say.line(super::timeline_line(
            e,
            killed_at,
            &["node", "to", "peer", "group", "by", "reason"],
        ));
    }
    let status = crate::status_cmd::fetch(&witness_socket)?;
    say.line(format_args!("\n{}", crate::status_cmd::render(&status)));
    let down: Vec<Value> = status
        .groups
        .iter()
        .filter(|g| g.target.is_none())
        .map(|g| json!({"group": g.name, "reason": g.reason}))
        .collect();
    Ok(json!({
        "killed": VICTIM,
        "before": before,
        "after": after,
        "handled_ms": u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        "down": down,
        "timeline": timeline,
        "status": status,
    }))
}
