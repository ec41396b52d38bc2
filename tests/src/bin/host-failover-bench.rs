//! VM failover benchmark on the testbed (needs root): three `host-clusterd`
//! with libvirt's test driver inside each daemon (its VMs die with it), N
//! VMs (default 50) all preferring n0, heartbeat 100 ms / 500 ms, fence =
//! empty the namespace. Kills n0 and prints, per trial, when its VMs all
//! run on the survivors, against detection and the fence. Asserts nothing.
//!
//! `cargo run --release -p testbed --bin host-failover-bench [-- --vms N] [--trials N]`

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testbed::cluster::{Cluster, Spec, test_domain_xml, test_host_xml, vms_by_host};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let vms = arg(&args, "--vms", 50);
    let trials = arg(&args, "--trials", 3);
    println!("# host failover benchmark: {vms} VMs, {trials} trials");
    for t in 1..=trials {
        let (all, lost, allowed) = trial(vms)?;
        println!(
            "trial {t}: all {vms} VMs of the killed host running on the survivors {all} ms after \
             kill -9 (lost after {lost} ms, takeover allowed after {allowed} ms: {} ms from the \
             fence to the last VM)",
            all.saturating_sub(allowed)
        );
    }
    Ok(())
}

/// Where each managed VM runs, by host index.
fn running(sockets: &[PathBuf]) -> BTreeMap<String, BTreeSet<usize>> {
    vms_by_host(sockets, |d| d.managed && d.state == "running")
}

fn wait(
    sockets: &[PathBuf],
    names: &[String],
    within: Duration,
    done: impl Fn(&BTreeSet<usize>) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let now = running(sockets);
        if names.iter().all(|n| now.get(n).is_some_and(&done)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("VMs not placed within {within:?}: {now:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One trial: (all running, lost, takeover allowed), in ms after the kill.
fn trial(vms: usize) -> anyhow::Result<(u64, u64, u64)> {
    let names: Vec<String> = (1..=vms).map(|i| format!("v{i:03}")).collect();
    let mut extra = testbed::fence::config(3);
    for n in &names {
        let _ = write!(
            extra,
            "[[groups]]\nname = \"{n}\"\nnodes = [\"n0\", \"n1\", \"n2\"]\n\
             [[groups.resources]]\nname = \"{n}\"\nkind = \"vm\"\ndomain_xml = \"{{dir}}/vms/{n}.xml\"\n\n"
        );
    }
    let spec = Spec {
        host: true,
        capacity: Some((1 << 20, 1024)),
        extra,
        ..Spec::default()
    };
    let mut c = Cluster::start_with(&spec, |dir| {
        testbed::fence::install(dir);
        let _ = std::fs::create_dir_all(dir.join("vms"));
        for n in &names {
            let _ = std::fs::write(
                dir.join("vms").join(format!("{n}.xml")),
                test_domain_xml(n, 256, 1),
            );
        }
        for k in 0..3 {
            let _ = std::fs::write(dir.join(format!("n{k}.xml")), test_host_xml(&[]));
        }
    })?;
    testbed::fence::arm(&c);
    c.wait_converged(Duration::from_secs(10))?;
    let sockets: Vec<PathBuf> = (0..3).map(|k| c.socket(k)).collect();
    wait(&sockets, &names, Duration::from_secs(30), |h| {
        h.contains(&0)
    })?;
    let killed = cluster_core::events::now_ms();
    let t0 = Instant::now();
    c.kill(0);
    wait(&sockets, &names, Duration::from_secs(30), |h| {
        !h.is_empty() && !h.contains(&0)
    })?;
    let all = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    let events = c.events(1);
    let at = |kind: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind && e["peer"] == "n0")
            .filter_map(|e| e["ts_ms"].as_u64())
            .find(|t| *t >= killed)
            .map(|t| t - killed)
            .with_context(|| format!("no {kind} event for n0"))
    };
    Ok((all, at("peer_lost")?, at("takeover_allowed")?))
}
