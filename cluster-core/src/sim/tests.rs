use std::path::PathBuf;

use super::*;

fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios")
}

/// Every scenario shipped under `tests/scenarios` passes.
#[test]
fn every_shipped_scenario_passes() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{e}"));
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match Scenario::parse(&text).and_then(|s| run(&s)) {
            Ok(r) if r.passed() => {}
            Ok(r) => {
                let tail: Vec<String> = r
                    .events
                    .iter()
                    .map(|e| format!("{:>6} {} {} {}", e.at_ms, e.node, e.kind, e.details))
                    .collect();
                failed.push(format!(
                    "{name}:\n  {}\n  events:\n    {}",
                    r.failures.join("\n  "),
                    tail.join("\n    ")
                ));
            }
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n\n")
    );
    assert!(files.len() >= 40, "only {} scenarios", files.len());
}

/// `SCENARIO=tests/scenarios/x.toml cargo test -p cluster-core --lib
/// sim::tests::show -- --ignored --nocapture` prints a scenario's timeline.
#[test]
#[ignore = "a tool for writing scenarios"]
fn show() {
    let Ok(path) = std::env::var("SCENARIO") else {
        return;
    };
    let path = scenario_dir().join("..").join("..").join(&path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let s = Scenario::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let r = run(&s).unwrap_or_else(|e| panic!("{e}"));
    for e in &r.events {
        println!("{:>6} {:<4} {:<22} {}", e.at_ms, e.node, e.kind, e.details);
    }
    println!("final: {:?}", r.final_placement);
    println!("failures: {:#?}", r.failures);
}
