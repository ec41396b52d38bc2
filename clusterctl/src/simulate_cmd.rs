//! `clusterctl simulate SCENARIO`: the real engine, in virtual time, over
//! a scenario file (see `tests/scenarios/` and `docs/simulator.md`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use cluster_core::sim::{self, Report, Scenario};

/// Run the scenario in `file`; print its timeline and verdict. Exit 0 when
/// every expectation held and no invariant broke, 1 otherwise.
pub(crate) fn run(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read scenario {}", file.display()))?;
    let scenario =
        Scenario::parse(&text).with_context(|| format!("{}: not a scenario", file.display()))?;
    let report = sim::run(&scenario).with_context(|| format!("{}", file.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&as_json(&report))?);
    } else {
        print!("{}", render(&scenario, &report));
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn as_json(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "passed": r.passed(),
        "failures": r.failures,
        "final_placement": r.final_placement,
        "events": r.events.iter().map(|e| serde_json::json!({
            "at_ms": e.at_ms,
            "node": e.node,
            "kind": e.kind,
            "group": e.group,
            "details": e.details,
        })).collect::<Vec<_>>(),
    })
}

fn render(s: &Scenario, r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", s.description.trim());
    for e in &r.events {
        let details = details_text(&e.details);
        let _ = writeln!(
            out,
            "{:>9.3}s  {:<6} {:<24} {:<10} {details}",
            e.at_ms as f64 / 1000.0,
            e.node,
            e.kind,
            e.group.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "\nAt the end ({:.1}s):", s.duration as f64 / 1000.0);
    for (g, nodes) in &r.final_placement {
        let at = if nodes.is_empty() {
            "not running".to_owned()
        } else {
            format!("running on {}", nodes.join(", "))
        };
        let _ = writeln!(out, "  {g:<16} {at}");
    }
    if r.passed() {
        let _ = writeln!(
            out,
            "\nPASSED: {} placement check(s), {} ordered event(s), invariants held",
            s.expect.len(),
            s.expect_order.len()
        );
    } else {
        let _ = writeln!(out, "\nFAILED:");
        for f in &r.failures {
            let _ = writeln!(out, "  {f}");
        }
    }
    out
}

/// `clusterctl simulate --what-if EVENT...`: the live cluster as a daemon
/// reports it (its configuration file, which nodes are lost, where each
/// group runs) becomes the start of a scenario; the events follow, one
/// second apart, once the simulated cluster has settled.
pub(crate) fn what_if(
    status: &cluster_core::status::NodeStatus,
    events: &[String],
    run_for: std::time::Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config_text = std::fs::read_to_string(&status.config_file).with_context(|| {
        format!(
            "cannot read the daemon's configuration {} here (run --what-if on a cluster node)",
            status.config_file
        )
    })?;
    let config =
        conf::load_str(&status.config_file, &config_text).map_err(|d| anyhow::anyhow!("{d}"))?;
    let settle = 2 * u64::try_from(config.heartbeat.timeout.get().as_millis()).unwrap_or(0) + 2000;
    let mut table = toml::Table::new();
    table.insert(
        "description".into(),
        format!(
            "what if {} (from {}'s view of cluster {})",
            events.join(", then "),
            status.node,
            status.cluster
        )
        .into(),
    );
    table.insert("config".into(), config_text.into());
    let end = settle + 1000 * events.len() as u64 + u64::try_from(run_for.as_millis()).unwrap_or(0);
    table.insert("duration".into(), format!("{end}ms").into());
    let mut list = Vec::new();
    let mut now_running = Vec::new();
    for m in &status.members {
        if m.state == cluster_core::status::MemberState::Lost {
            list.push(event(0, "power_off", &[("node", &m.name)]));
        }
    }
    for g in &status.groups {
        if let Some(owner) = &g.owner {
            list.push(event(
                0,
                "start_behind_back",
                &[("node", owner), ("group", &g.name)],
            ));
        }
        now_running.push((g.name.clone(), g.owner.clone()));
    }
    for (i, e) in events.iter().enumerate() {
        list.push(parse_event(settle + 1000 * i as u64, e)?);
    }
    table.insert("events".into(), toml::Value::Array(list));
    let text = toml::to_string(&table)?;
    let scenario = Scenario::parse(&text).context("the what-if scenario")?;
    let report = sim::run(&scenario)?;
    let invariants: Vec<&String> = report
        .failures
        .iter()
        .filter(|f| f.starts_with("invariant"))
        .collect();
    if json {
        let mut v = as_json(&report);
        v["before"] = serde_json::json!(
            now_running
                .iter()
                .map(|(g, n)| (g.clone(), n.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        );
        v["events_from_ms"] = settle.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", scenario.description);
        for e in report.events.iter().filter(|e| e.at_ms + 1 >= settle) {
            let _ = writeln!(
                out,
                "{:>+9.3}s  {:<6} {:<24} {:<10} {}",
                (e.at_ms as f64 - settle as f64) / 1000.0,
                e.node,
                e.kind,
                e.group.as_deref().unwrap_or(""),
                details_text(&e.details)
            );
        }
        let _ = writeln!(out, "\n{:<16} {:<14} after", "group", "now");
        for (g, before) in &now_running {
            let after = report
                .final_placement
                .get(g)
                .filter(|v| !v.is_empty())
                .map_or_else(|| "not running".to_owned(), |v| v.join(", "));
            let before = before.clone().unwrap_or_else(|| "not running".to_owned());
            let mark = if before == after { "" } else { "  (changes)" };
            let _ = writeln!(out, "{g:<16} {before:<14} {after}{mark}");
        }
        for f in &invariants {
            let _ = writeln!(out, "\nSAFETY RULE BROKEN: {f}");
        }
        print!("{out}");
    }
    Ok(if invariants.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// An event's details as `key=value` words (the group has its column).
fn details_text(details: &serde_json::Value) -> String {
    match details {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "group")
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn event(at_ms: u64, what: &str, args: &[(&str, &str)]) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("at".into(), format!("{at_ms}ms").into());
    t.insert("do".into(), what.into());
    for (k, v) in args {
        t.insert((*k).into(), (*v).into());
    }
    toml::Value::Table(t)
}

/// One `--what-if` event in words: `power_off n0`, `resource_fail n1 app`,
/// `partition n0,n1|n2`, `move web n2`, `maintenance n1 on`...
fn parse_event(at_ms: u64, text: &str) -> anyhow::Result<toml::Value> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let usage = || {
        anyhow::anyhow!(
            "--what-if `{text}`: expected one of: power_off|power_on|kill_daemon|start_daemon|\
             network_off|network_on|ping_off NODE; fence_fail NODE [COUNT]; \
             resource_fail|start_fail|stop_fail NODE RESOURCE; partition A,B|C; heal; \
             start|stop|clear GROUP; move GROUP [NODE]; maintenance NODE on|off"
        )
    };
    let ev = match words.as_slice() {
        [
            d @ ("power_off" | "power_on" | "kill_daemon" | "start_daemon" | "network_off"
            | "network_on" | "ping_off"),
            node,
        ] => event(at_ms, d, &[("node", node)]),
        ["fence_fail", node] => event(at_ms, "fence_fail", &[("node", node)]),
        ["fence_fail", node, count] => {
            let mut v = event(at_ms, "fence_fail", &[("node", node)]);
            let n: i64 = count.parse().map_err(|_| usage())?;
            if let toml::Value::Table(t) = &mut v {
                t.insert("count".into(), n.into());
            }
            v
        }
        [
            d @ ("resource_fail" | "start_fail" | "stop_fail"),
            node,
            resource,
        ] => event(at_ms, d, &[("node", node), ("resource", resource)]),
        ["heal"] => event(at_ms, "heal", &[]),
        ["partition", sides] => {
            let sides: Vec<toml::Value> = sides
                .split('|')
                .map(|s| {
                    toml::Value::Array(
                        s.split(',')
                            .filter(|n| !n.is_empty())
                            .map(toml::Value::from)
                            .collect(),
                    )
                })
                .collect();
            if sides.len() < 2 {
                return Err(usage());
            }
            let mut v = event(at_ms, "partition", &[]);
            if let toml::Value::Table(t) = &mut v {
                t.insert("sides".into(), toml::Value::Array(sides));
            }
            v
        }
        [op @ ("start" | "stop" | "clear"), group] => {
            event(at_ms, "group", &[("op", op), ("group", group)])
        }
        ["move", group] => event(at_ms, "group", &[("op", "move"), ("group", group)]),
        ["move", group, node] => event(
            at_ms,
            "group",
            &[("op", "move"), ("group", group), ("to", node)],
        ),
        ["maintenance", node, on @ ("on" | "off")] => {
            let mut v = event(at_ms, "maintenance", &[("node", node)]);
            if let toml::Value::Table(t) = &mut v {
                t.insert("on".into(), (*on == "on").into());
            }
            v
        }
        _ => return Err(usage()),
    };
    Ok(ev)
}
