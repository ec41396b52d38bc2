//! `clusterctl status`.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cluster_core::api::{Request, Response};
use cluster_core::status::{MemberState, NodeStatus, ResourceState};

use crate::target::{Client, Target, unexpected};

/// How `status --watch` repeats.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// Time between two redraws.
    pub(crate) interval: Duration,
    /// Stop after this many redraws (tests); `None`: until interrupted.
    pub(crate) count: Option<u64>,
}

pub(crate) fn run(target: &Target, json: bool, watch: Option<Watch>) -> anyhow::Result<ExitCode> {
    let client = Client::new(target)?;
    let Some(watch) = watch else {
        let status = status(&client)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{}", render(&status));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let tty = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        let result = status(&client);
        let ok = result.is_ok();
        let mut out = std::io::stdout().lock();
        if json {
            // One compact document per line; errors go to stderr.
            match result {
                Ok(s) => writeln!(out, "{}", serde_json::to_string(&s)?)?,
                Err(e) => eprintln!("clusterctl: {e:#}"),
            }
        } else {
            if tty {
                // Home, then clear the screen.
                write!(out, "\x1b[H\x1b[2J")?;
            } else if shown > 0 {
                writeln!(out)?;
            }
            writeln!(
                out,
                "Every {}: clusterctl status    {}\n",
                humantime::format_duration(watch.interval),
                crate::events_cmd::local_time(cluster_core::events::now_ms())
            )?;
            match result {
                Ok(s) => write!(out, "{}", render(&s))?,
                Err(e) => writeln!(out, "clusterctl: {e:#}")?,
            }
        }
        out.flush()?;
        drop(out);
        shown += 1;
        if watch.count.is_some_and(|c| shown >= c) {
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        std::thread::sleep(watch.interval);
    }
}

fn status(client: &Client) -> anyhow::Result<NodeStatus> {
    match client.call(&Request::Status)? {
        Response::Status(s) => Ok(*s),
        other => Err(unexpected(&other)),
    }
}

/// Ask the daemon `target` points at for its status.
pub(crate) fn fetch_from(target: &Target) -> anyhow::Result<NodeStatus> {
    status(&Client::new(target)?)
}

/// Ask the daemon at `socket` for its status.
pub(crate) fn fetch(socket: &Path) -> anyhow::Result<NodeStatus> {
    status(&Client::new(&Target::socket(socket.to_owned()))?)
}

/// The status as an operator reads it.
pub(crate) fn render(s: &NodeStatus) -> String {
    let mut out = String::new();
    let kind = match s.kind {
        conf::ClusterKind::Host => "host",
        conf::ClusterKind::Guest => "guest",
    };
    let _ = writeln!(
        out,
        "Cluster {} ({kind} cluster), as seen from {} (pid {}, up {:.1}s, {})",
        s.cluster,
        s.node,
        s.pid,
        s.uptime_ms as f64 / 1000.0,
        s.config_file
    );
    let _ = writeln!(out, "\nNodes:");
    for m in &s.members {
        let state = match m.state {
            MemberState::Local => "this node",
            MemberState::Unknown => "unknown (not heard yet)",
            MemberState::Alive => "alive",
            MemberState::Lost => "LOST",
        };
        let mut line = format!("  {:<16} {state:<10}", m.name);
        if !m.links.is_empty() {
            let links: Vec<String> = m
                .links
                .iter()
                .map(|l| format!("{}:{}", l.name, if l.up { "up" } else { "DOWN" }))
                .collect();
            let _ = write!(line, " links {}", links.join(" "));
        }
        if let Some(ms) = m.last_heard_ms {
            let _ = write!(line, "  heard {ms} ms ago");
        }
        if let Some(d) = m
            .dropped
            .filter(|d| d.forged + d.replayed + d.stale + d.malformed > 0)
        {
            let _ = write!(
                line,
                "  dropped: {} forged, {} replayed, {} stale, {} malformed",
                d.forged, d.replayed, d.stale, d.malformed
            );
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if let Some(q) = &s.quorum {
        let verdict = if q.quorate { "QUORATE" } else { "NOT QUORATE" };
        let witness = q
            .witness
            .as_deref()
            .map(|w| format!(", witness vote {w}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nQuorum: {verdict} ({} of {} votes: {}{witness})",
            q.votes, q.of, q.reason
        );
    }
    for t in &s.takeovers {
        let _ = writeln!(
            out,
            "  takeover of {}: {}{}",
            t.peer,
            t.state,
            t.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    if let Some(e) = &s.engine {
        let _ = writeln!(
            out,
            "\nPlacement: epoch {} by {}{}{}{}",
            e.epoch.map_or_else(|| "-".to_owned(), |x| x.to_string()),
            e.coordinator.as_deref().unwrap_or("nobody yet"),
            if e.coordinating_here {
                " (this node coordinates)"
            } else {
                ""
            },
            if e.settled { "" } else { ", still probing" },
            if e.maintenance {
                ", THIS NODE IN MAINTENANCE"
            } else {
                ""
            },
        );
    }
    let _ = writeln!(out, "\nGroups:");
    if s.groups.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for g in &s.groups {
        let mut line = format!(
            "  {:<16} owner {:<10} target {:<10} preference {}",
            g.name,
            g.owner.as_deref().unwrap_or("-"),
            g.target.as_deref().unwrap_or("-"),
            g.nodes.join(" > ")
        );
        if g.wanted == Some(false) {
            line.push_str("  [stopped by operator]");
        }
        let _ = writeln!(out, "{line}");
        if let Some(r) = &g.reason {
            let _ = writeln!(out, "    why: {r}");
        }
        let mut counts = Vec::new();
        if let Some(h) = &g.state_here {
            counts.push(format!("here {h}"));
        }
        for r in &g.running_on {
            counts.push(format!("{} {}", r.node, r.state));
        }
        if g.restarts > 0 {
            counts.push(format!("{} restart(s) here", g.restarts));
        }
        if g.failovers > 0 {
            counts.push(format!("{} failover(s)", g.failovers));
        }
        if !g.excluded.is_empty() {
            counts.push(format!(
                "EXCLUDED from {} (clusterctl clear {})",
                g.excluded.join(", "),
                g.name
            ));
        }
        if !counts.is_empty() {
            let _ = writeln!(out, "    {}", counts.join(", "));
        }
        for r in &g.resources {
            let state = match r.state {
                ResourceState::Unknown => "unknown",
                ResourceState::Running => "running here",
                ResourceState::Stopped => "stopped here",
                ResourceState::Failed => "FAILED here",
            };
            let _ = writeln!(out, "    {:<14} {:<12} {state}", r.name, r.kind);
        }
    }
    if !s.capacity.is_empty() {
        let _ = writeln!(
            out,
            "\nCapacity (newest placement)\n  {:<12} {:>6} {:>17} {:>17} {:>11}",
            "node", "groups", "memory used/MiB", "memory free/MiB", "vcpus u/f"
        );
        for c in &s.capacity {
            let used = format!("{}/{}", c.used_memory_mib, c.memory_mib);
            let free = c.memory_mib.saturating_sub(c.used_memory_mib);
            let vcpus = format!("{}/{}", c.used_vcpus, c.vcpus.saturating_sub(c.used_vcpus));
            let _ = writeln!(
                out,
                "  {:<12} {:>6} {:>17} {:>17} {:>11}",
                c.node, c.groups, used, free, vcpus
            );
        }
    }
    if let Some(hv) = &s.hypervisor {
        let conn = if hv.connected {
            "connected"
        } else {
            "NOT CONNECTED"
        };
        let _ = writeln!(out, "\nHypervisor {} ({conn})", hv.uri);
        if let Some(e) = &hv.error {
            let _ = writeln!(out, "  error: {e}");
        }
        if !hv.domains.is_empty() {
            let _ = writeln!(
                out,
                "  {:<16} {:<10} {:>8} {:>5}  managed",
                "domain", "state", "MiB", "vcpus"
            );
        }
        for d in &hv.domains {
            let managed = if d.managed { "yes" } else { "no" };
            let _ = writeln!(
                out,
                "  {:<16} {:<10} {:>8} {:>5}  {managed}",
                d.name, d.state, d.memory_mib, d.vcpus
            );
        }
    }
    if let Some(l) = &s.linkage {
        render_linkage(&mut out, l);
    }
    if let Some(m) = &s.maintenance {
        let what = match (m.on, m.done, m.ok) {
            (true, false, _) => "going into maintenance",
            (true, true, true) => "in maintenance (done)",
            (true, true, false) => "maintenance NOT FINISHED",
            (false, false, _) => "leaving maintenance",
            (false, true, _) => "out of maintenance",
        };
        let _ = writeln!(out, "\nMaintenance: {what}");
        for step in &m.steps {
            let _ = writeln!(out, "  {step}");
        }
    }
    out
}

/// The linkage part of the status: a host's guests, or a guest's host.
fn render_linkage(out: &mut String, l: &cluster_core::status::LinkageStatus) {
    use cluster_core::status::LinkageStatus;
    match l {
        LinkageStatus::Host { listen, guests } => {
            let _ = writeln!(
                out,
                "
Linkage (listening on {})",
                listen.join(", ")
            );
            if guests.is_empty() {
                let _ = writeln!(out, "  no guests configured");
                return;
            }
            let _ = writeln!(
                out,
                "  {:<14} {:<14} {:<16} session",
                "guest", "guest cluster", "domain"
            );
            for g in guests {
                let session = match (g.connected, g.last_heard_ms) {
                    (true, Some(ms)) => format!("connected, heard {ms} ms ago"),
                    (true, None) => "connected".to_owned(),
                    (false, _) => "NOT CONNECTED".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "  {:<14} {:<14} {:<16} {session}",
                    g.name, g.cluster, g.domain
                );
            }
        }
        LinkageStatus::Guest {
            connect,
            connected,
            host,
            error,
        } => {
            let state = if *connected {
                format!(
                    "connected; this guest runs on host {}",
                    host.as_deref().unwrap_or("(not told yet)")
                )
            } else {
                format!(
                    "NOT CONNECTED: {}",
                    error.as_deref().unwrap_or("not opened yet")
                )
            };
            let _ = writeln!(
                out,
                "
Linkage to the host daemon at {connect}: {state}"
            );
        }
    }
}
