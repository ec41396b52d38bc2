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
        let details = match &e.details {
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
        };
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
