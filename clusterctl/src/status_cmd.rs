//! `clusterctl status`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cluster_core::api::{self, Request, Response};
use cluster_core::status::{MemberState, NodeStatus, ResourceState};

const DEFAULT_SOCKET: &str = "/run/kvmha/api.sock";

pub(crate) fn run(
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => {
            conf::load(&c)
                .with_context(|| format!("configuration {}", c.display()))?
                .api
                .socket
        }
        (None, None) => PathBuf::from(DEFAULT_SOCKET),
    };
    let status = fetch(&socket)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the daemon at `socket` for its status.
pub(crate) fn fetch(socket: &Path) -> anyhow::Result<NodeStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(api::call(socket, &Request::Status))? {
        Response::Status(s) => Ok(*s),
    }
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
    let _ = writeln!(out, "\nGroups:");
    if s.groups.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for g in &s.groups {
        let _ = writeln!(
            out,
            "  {:<16} owner {:<10} preference {}",
            g.name,
            g.owner.as_deref().unwrap_or("-"),
            g.nodes.join(" > ")
        );
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
    out
}
