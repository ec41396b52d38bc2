//! Membership benchmark on the testbed (needs root): detection time after
//! kill -9 for the default and an aggressive heartbeat setting, false
//! losses while both cores are saturated, and RSS and CPU per daemon for
//! 3, 16 and 32 nodes. Prints numbers; asserts nothing.
//!
//! `cargo run --release -p testbed --bin membership-bench [-- --quick] [--only PART] [--nodes N]`

use std::time::{Duration, Instant};

use testbed::cluster::{Cluster, Spec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only detection|load|footprint` runs one part.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let trials = if quick { 5 } else { 20 };
    println!(
        "# membership benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (name, interval, timeout) in [
        ("default", "200ms", "800ms"),
        ("aggressive", "50ms", "200ms"),
    ] {
        if !part("detection") {
            break;
        }
        let mut ms = detection(interval, timeout, trials)?;
        ms.sort_unstable();
        println!(
            "detection {name:<10} interval {interval:>5} timeout {timeout:>5}: median {} ms, p99 {} ms, min {} ms, max {} ms over {} kills",
            percentile(&ms, 50),
            percentile(&ms, 99),
            ms.first().copied().unwrap_or(0),
            ms.last().copied().unwrap_or(0),
            ms.len()
        );
    }
    let load_secs = if quick { 10 } else { 60 };
    for (name, interval, timeout) in [
        ("default", "200ms", "800ms"),
        ("aggressive", "50ms", "200ms"),
    ] {
        if !part("load") {
            break;
        }
        let lost = false_losses(interval, timeout, Duration::from_secs(load_secs))?;
        println!("false losses {name:<10} with both cores saturated for {load_secs} s: {lost}");
    }
    // `--nodes N` measures the footprint of one cluster size only.
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .map_or_else(|| vec![3, 16, 32], |n| vec![n]);
    for nodes in sizes {
        if !part("footprint") {
            break;
        }
        let (rss_kb, cpu, user) =
            footprint(nodes, Duration::from_secs(if quick { 5 } else { 20 }))?;
        println!(
            "footprint {nodes:>2} nodes (default timing): RSS per daemon max {} KiB (mean {} KiB), CPU per daemon max {:.2} % (mean {:.2} %, of which user space {:.2} %) of one core",
            rss_kb.iter().max().copied().unwrap_or(0),
            rss_kb.iter().sum::<u64>() / rss_kb.len().max(1) as u64,
            cpu.iter().copied().fold(0.0, f64::max),
            cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
            user.iter().sum::<f64>() / user.len().max(1) as f64
        );
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = (sorted.len() * p)
        .div_ceil(100)
        .saturating_sub(1)
        .min(sorted.len() - 1);
    sorted[i]
}

fn spec(nodes: usize, interval: &'static str, timeout: &'static str) -> Spec {
    Spec {
        nodes,
        interval,
        timeout,
        ..Spec::default()
    }
}

/// Milliseconds from kill -9 of node 2 to node 0's `peer_lost`, per trial.
fn detection(
    interval: &'static str,
    timeout: &'static str,
    trials: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut c = Cluster::start(&spec(3, interval, timeout))?;
    c.wait_converged(Duration::from_secs(20))?;
    let mut out = Vec::new();
    for t in 0..trials {
        let seen = c
            .events(0)
            .iter()
            .filter(|e| e["kind"] == "peer_lost")
            .count();
        let killed = cluster_core::events::now_ms();
        c.kill(2);
        let deadline = Instant::now() + Duration::from_secs(10);
        let lost = loop {
            let lost: Vec<_> = c
                .events(0)
                .into_iter()
                .filter(|e| e["kind"] == "peer_lost")
                .collect();
            if lost.len() > seen {
                break lost[seen]["ts_ms"].as_u64().unwrap_or(killed);
            }
            anyhow::ensure!(Instant::now() < deadline, "trial {t}: no loss detected");
            std::thread::sleep(Duration::from_millis(5));
        };
        out.push(lost.saturating_sub(killed));
        c.start_node(2)?;
        c.wait_converged(Duration::from_secs(20))?;
    }
    Ok(out)
}

/// `peer_lost` events on a 3-node cluster while two busy loops run.
fn false_losses(
    interval: &'static str,
    timeout: &'static str,
    for_: Duration,
) -> anyhow::Result<usize> {
    let c = Cluster::start(&spec(3, interval, timeout))?;
    c.wait_converged(Duration::from_secs(20))?;
    let mut hogs = Vec::new();
    for _ in 0..2 {
        hogs.push(
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()?,
        );
    }
    std::thread::sleep(for_);
    for mut h in hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    Ok((0..3)
        .map(|k| {
            c.events(k)
                .iter()
                .filter(|e| e["kind"] == "peer_lost")
                .count()
        })
        .sum())
}

/// RSS (KiB), CPU and user-space CPU (% of one core) of every daemon over
/// `window`.
fn footprint(nodes: usize, window: Duration) -> anyhow::Result<(Vec<u64>, Vec<f64>, Vec<f64>)> {
    let mut c = Cluster::start(&spec(nodes, "200ms", "800ms"))?;
    c.wait_converged(Duration::from_secs(60))?;
    let pids: Vec<u32> = (0..nodes)
        .filter_map(|k| c.daemon(k).map(|d| d.pid()))
        .collect();
    // (utime, stime) in clock ticks.
    let ticks = |pid: u32| -> (u64, u64) {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
                Some((
                    after.get(11)?.parse::<u64>().ok()?,
                    after.get(12)?.parse::<u64>().ok()?,
                ))
            })
            .unwrap_or((0, 0))
    };
    let before: Vec<(u64, u64)> = pids.iter().map(|&p| ticks(p)).collect();
    let start = Instant::now();
    std::thread::sleep(window);
    let secs = start.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ on Linux
    let after: Vec<(u64, u64)> = pids.iter().map(|&p| ticks(p)).collect();
    let pct = |t: u64| t as f64 / hz / secs * 100.0;
    let cpu = after
        .iter()
        .zip(&before)
        .map(|(a, b)| pct((a.0 + a.1).saturating_sub(b.0 + b.1)))
        .collect();
    let user = after
        .iter()
        .zip(&before)
        .map(|(a, b)| pct(a.0.saturating_sub(b.0)))
        .collect();
    let rss = pids
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .collect();
    Ok((rss, cpu, user))
}
