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

/// A tiny deterministic generator (xorshift64*), so that a failing seed
/// replays the same schedule everywhere.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.range(1, 100) <= percent
    }
}

/// A random cluster and fault schedule, as a scenario file.
fn random_scenario(seed: u64) -> String {
    let mut rng = XorShift::new(seed);
    let n = rng.range(3, 5) as usize;
    let nodes: Vec<String> = (0..n).map(|k| format!("n{k}")).collect();
    let quoted = |v: &[String]| {
        v.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = String::new();
    let fence = rng.chance(60);
    let lease = !fence || rng.chance(50);
    if n.is_multiple_of(2) && rng.chance(50) {
        config.push_str("[quorum]\nwitness = { url = \"http://witness.example\" }\n\n");
    }
    if lease {
        config.push_str("[watchdog]\nkind = \"device\"\nlease = \"4s\"\nmargin = \"1s\"\n\n");
    } else {
        config.push_str("[watchdog]\nkind = \"none\"\n\n");
    }
    if fence {
        config.push_str(&format!(
            "[[fencing]]\nname = \"f\"\nkind = \"agent\"\nagent = \"fence_dummy\"\ntargets = [{}]\n\n",
            quoted(&nodes)
        ));
    }
    let n_groups = rng.range(2, 4) as usize;
    let mut resources = Vec::new();
    let mut monitors = Vec::new();
    for g in 0..n_groups {
        let mut order = nodes.clone();
        for i in (1..order.len()).rev() {
            let j = rng.range(0, i as u64) as usize;
            order.swap(i, j);
        }
        order.truncate(rng.range(2, n as u64) as usize);
        let failback = *rng.pick(&["auto", "manual"]);
        config.push_str(&format!(
            "[[groups]]\nname = \"g{g}\"\nnodes = [{}]\nfailback = \"{failback}\"\n",
            quoted(&order)
        ));
        for r in 0..rng.range(1, 3) {
            let policy = if rng.chance(20) { "block" } else { "fence" };
            config.push_str(&format!(
                "[[groups.resources]]\nname = \"g{g}r{r}\"\nkind = \"exec\"\nstart = [\"true\"]\nstop = [\"true\"]\non_stop_failure = \"{policy}\"\n"
            ));
            if rng.chance(30) {
                config.push_str(&format!(
                    "status = [\"true\"]\nmonitor_interval = \"1s\"\nmonitor_recovery = {{ restart = {}, failover = {} }}\n",
                    rng.range(0, 2),
                    rng.range(0, 2),
                ));
            }
            resources.push(format!("g{g}r{r}"));
        }
        if rng.chance(70) {
            let action = *rng.pick(&["stop_group", "stop_daemon", "fence_self", "none"]);
            config.push_str(&format!(
                "[[groups.monitors]]\nname = \"g{g}m\"\nkind = \"custom\"\ncommand = [\"true\"]\ninterval = \"1s\"\nwhile_active = {}\nrecovery = {{ restart = {}, failover = {}, final_action = \"{action}\", window = \"{}s\" }}\n",
                !rng.chance(40),
                rng.range(0, 2),
                rng.range(0, 2),
                rng.range(5, 60),
            ));
            monitors.push(format!("g{g}m"));
        }
        config.push('\n');
    }

    let mut events = Vec::new();
    let mut event = |at: u64, body: String| events.push((at, body));
    for _ in 0..rng.range(4, 12) {
        let at = rng.range(1000, 12_000) / 10 * 10;
        let node = rng.pick(&nodes).clone();
        let body = match rng.range(0, 18) {
            0 => format!("do = \"power_off\"\nnode = \"{node}\""),
            1 => format!("do = \"power_on\"\nnode = \"{node}\""),
            2 => format!("do = \"kill_daemon\"\nnode = \"{node}\""),
            3 => format!("do = \"start_daemon\"\nnode = \"{node}\""),
            4 => format!("do = \"network_off\"\nnode = \"{node}\""),
            5 => format!("do = \"network_on\"\nnode = \"{node}\""),
            6 => {
                let sides = rng.range(2, 3) as usize;
                let mut split: Vec<Vec<String>> = vec![Vec::new(); sides];
                for x in &nodes {
                    split[rng.range(0, sides as u64 - 1) as usize].push(x.clone());
                }
                let text: Vec<String> = split
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("[{}]", quoted(s)))
                    .collect();
                format!("do = \"partition\"\nsides = [{}]", text.join(", "))
            }
            7 => "do = \"heal\"".to_owned(),
            8 => format!(
                "do = \"start_fail\"\nnode = \"{node}\"\nresource = \"{}\"",
                rng.pick(&resources)
            ),
            9 => format!(
                "do = \"stop_fail\"\nnode = \"{node}\"\nresource = \"{}\"",
                rng.pick(&resources)
            ),
            10 => format!(
                "do = \"fence_fail\"\nnode = \"{node}\"\ncount = {}",
                rng.range(1, 3)
            ),
            11 => format!(
                "do = \"group\"\nop = \"move\"\ngroup = \"g{}\"\nto = \"{}\"\nvia = \"{node}\"",
                rng.range(0, n_groups as u64 - 1),
                rng.pick(&nodes)
            ),
            12 => format!("do = \"maintenance\"\nnode = \"{node}\"\non = true"),
            13 => format!("do = \"maintenance\"\nnode = \"{node}\"\non = false"),
            16 | 17 if !monitors.is_empty() => format!(
                "do = \"{}\"\nnode = \"{node}\"\nmonitor = \"{}\"",
                if rng.chance(60) {
                    "monitor_fail"
                } else {
                    "monitor_ok"
                },
                rng.pick(&monitors)
            ),
            18 => format!(
                "do = \"resource_vanish\"\nnode = \"{node}\"\nresource = \"{}\"",
                rng.pick(&resources)
            ),
            _ => format!(
                "do = \"resource_fail\"\nnode = \"{node}\"\nresource = \"{}\"",
                rng.pick(&resources)
            ),
        };
        event(at, body);
    }
    // Everything comes back at the end.
    event(14_000, "do = \"heal\"".to_owned());
    for x in &nodes {
        event(14_000, format!("do = \"network_on\"\nnode = \"{x}\""));
        event(14_000, format!("do = \"power_on\"\nnode = \"{x}\""));
        event(14_500, format!("do = \"start_daemon\"\nnode = \"{x}\""));
        event(
            14_600,
            format!("do = \"maintenance\"\nnode = \"{x}\"\non = false"),
        );
    }
    events.sort_by_key(|(at, _)| *at);

    let mut text = format!(
        "description = \"random schedule, seed {seed}\"\nnodes = [{}]\nduration = \"20s\"\nconfig = \"\"\"\n{config}\"\"\"\n",
        quoted(&nodes)
    );
    for (at, body) in events {
        text.push_str(&format!("\n[[events]]\nat = \"{at}ms\"\n{body}\n"));
    }
    text
}

/// Runs one random schedule: the invariant failures, with everything
/// needed to replay and understand them.
fn check_seed(seed: u64) -> Result<(), String> {
    let text = random_scenario(seed);
    let scenario = Scenario::parse(&text).map_err(|e| format!("seed {seed}: {e}\n{text}"))?;
    let report = run(&scenario).map_err(|e| format!("seed {seed}: {e}\n{text}"))?;
    let broken: Vec<&str> = report
        .failures
        .iter()
        .filter(|f| f.starts_with("invariant:"))
        .map(String::as_str)
        .collect();
    if broken.is_empty() {
        return Ok(());
    }
    let timeline: Vec<String> = report
        .events
        .iter()
        .map(|e| format!("{:>6} {:<4} {:<22} {}", e.at_ms, e.node, e.kind, e.details))
        .collect();
    Err(format!(
        "seed {seed} broke an invariant (replay: SIM_PROPERTY_SEED={seed} SIM_PROPERTY_RUNS=1):\n  {}\n\nscenario:\n{text}\ntimeline:\n{}",
        broken
            .iter()
            .take(5)
            .copied()
            .chain((broken.len() > 5).then_some("..."))
            .collect::<Vec<_>>()
            .join("\n  "),
        timeline.join("\n")
    ))
}

/// Random fault schedules never break the safety invariants: no group
/// active on two nodes, no start without quorum. (Placement is not
/// checked: a random schedule has no expected answer.) 200 seeds by
/// default, spread over the available cores; `SIM_PROPERTY_SEED` and
/// `SIM_PROPERTY_RUNS` pick others.
#[test]
fn random_fault_schedules_keep_the_invariants() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = env("SIM_PROPERTY_RUNS", 200);
    let first = env("SIM_PROPERTY_SEED", 1);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8)) as u64;
    let mut failures: Vec<(u64, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (first + t..first + runs)
                        .step_by(threads as usize)
                        .filter_map(|seed| check_seed(seed).err().map(|e| (seed, e)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    failures.sort_by_key(|(seed, _)| *seed);
    if let Some((_, first_failure)) = failures.first() {
        let seeds: Vec<String> = failures.iter().map(|(s, _)| s.to_string()).collect();
        panic!(
            "{} of {runs} random schedules broke an invariant (seeds {}); the first:\n{first_failure}",
            failures.len(),
            seeds.join(", ")
        );
    }
}

/// `kind = "host"` generates a host cluster (VMs, capacity), and `reason`
/// expectations are checked against the published placement.
#[test]
fn host_kind_and_reason_expectations() {
    let text = |reason: &str| {
        format!(
            r#"
description = "a VM too big for the survivor"
kind = "host"
nodes = ["n0", "n1", "n2"]
capacity = {{ n1 = {{ memory_mib = 4096, vcpus = 4 }} }}
duration = "10s"
config = """
[[fencing]]
name = "ipmi"
kind = "agent"
agent = "fence_dummy"
targets = ["n0", "n1", "n2"]

[[groups]]
name = "vm"
nodes = ["n0", "n1"]
[[groups.resources]]
name = "vm-dom"
kind = "vm"
domain_xml = "/shared/vm.xml"
memory_mib = 8192
vcpus = 2
"""

[[events]]
at = "3s"
do = "power_off"
node = "n0"

[[expect]]
at = "2s"
running = {{ vm = "n0" }}
reason = {{ vm = "most preferred node available" }}

[[expect]]
at = "9s"
running = {{ vm = "none" }}
reason = {{ vm = "{reason}" }}
"#
        )
    };
    let ok = Scenario::parse(&text("n1 lacks capacity (needs 8192 MiB/2 vCPUs"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.config_text().contains("kind = \"host\""));
    let report = run(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.passed(), "{:#?}", report.failures);
    let wrong = Scenario::parse(&text("failed over from n0")).unwrap_or_else(|e| panic!("{e}"));
    let report = run(&wrong).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
    assert!(
        report.failures[0].contains("expected reason containing `failed over from n0`"),
        "{:#?}",
        report.failures
    );
}
