use super::*;

/// One node, one group of two resources, with a monitor.
const CONFIG: &str = r#"
[cluster]
name = "t"
kind = "guest"
auth_key_file = "/dev/null"
state_dir = "/nonexistent"

[heartbeat]
interval = "200ms"
timeout = "800ms"
links = [{ name = "l0" }]

[[nodes]]
name = "n0"
links = { l0 = ["10.0.0.1/24"] }

[[nodes]]
name = "n1"
links = { l0 = ["10.0.0.2/24"] }

[[nodes]]
name = "n2"
links = { l0 = ["10.0.0.3/24"] }

[[groups]]
name = "g"
nodes = ["n0", "n1"]

[[groups.resources]]
name = "a"
kind = "exec"
start = ["true"]
stop = ["true"]

[[groups.resources]]
name = "b"
kind = "exec"
start = ["true"]
stop = ["true"]

[[groups.monitors]]
name = "m"
kind = "custom"
command = ["true"]
interval = "1s"
recovery = { restart = 3, failover = 1 }
"#;

fn core() -> NodeCore {
    let config = conf::load_str("test", CONFIG).unwrap_or_else(|d| panic!("{d}"));
    NodeCore::new(Arc::new(config), 0, 0, LocalState::default())
}

/// Node n0 with its two peers alive (quorate) or lost (not quorate); the
/// peers are settled, run nothing, and have n0's placement.
fn input(c: &NodeCore, quorate: bool) -> ClusterInput {
    let view = EngineView {
        groups: BTreeMap::new(),
        published: c.published().cloned(),
        requests: Vec::new(),
        maintenance: false,
        settled: true,
        standby_failures: BTreeMap::new(),
    };
    ClusterInput {
        quorate,
        alive: if quorate {
            [(1, Some(view.clone())), (2, Some(view))].into()
        } else {
            BTreeMap::new()
        },
        down: BTreeSet::new(),
        generations: BTreeMap::new(),
    }
}

/// The resource operations among `effects`.
fn ops(effects: &[Effect]) -> Vec<(usize, ResourceOp)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Resource { resource, op, .. } => Some((*resource, *op)),
            _ => None,
        })
        .collect()
}

fn kinds(effects: &[Effect]) -> Vec<&'static str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

/// Probe both resources (stopped), then step quorate: the group is placed
/// here and its first resource starts. Returns the time.
fn start_first_resource(c: &mut NodeCore) -> u64 {
    let mut now = 0;
    let fx = c.step(now, &input(c, true));
    assert_eq!(ops(&fx), [(0, ResourceOp::Probe)]);
    now += 10;
    let fx = c.on_resource(
        now,
        0,
        0,
        ResourceOp::Probe,
        OpResult::Probed(Probe::Stopped),
    );
    assert_eq!(ops(&fx), [(1, ResourceOp::Probe)]);
    now += 10;
    let fx = c.on_resource(
        now,
        0,
        1,
        ResourceOp::Probe,
        OpResult::Probed(Probe::Stopped),
    );
    assert!(ops(&fx).is_empty());
    now += 10;
    let fx = c.step(now, &input(c, true));
    assert!(kinds(&fx).contains(&"placement_published"), "{fx:?}");
    // The peers' views do not show the new placement yet: no start.
    assert!(ops(&fx).is_empty(), "{fx:?}");
    now += 10;
    let fx = c.step(now, &input(c, true));
    assert_eq!(ops(&fx), [(0, ResourceOp::Start)], "{fx:?}");
    assert_eq!(c.run_state(0), Some(RunState::Starting));
    now
}

#[test]
fn a_start_that_finishes_after_quorum_was_lost_is_undone() {
    let mut c = core();
    let mut now = start_first_resource(&mut c);
    // Quorum is lost while resource `a` starts (the start is in flight, so
    // the guard's forget leaves the group's phase alone).
    now += 10;
    let fx = c.step(now, &input(&c, false));
    assert!(ops(&fx).is_empty(), "{fx:?}");
    c.forget_all_running();
    now += 10;
    let fx = done(&mut c, now, 0, ResourceOp::Start);
    // Resource `b` must not start; `a` is stopped again.
    assert_eq!(ops(&fx), [(0, ResourceOp::Stop)], "{fx:?}");
    assert!(kinds(&fx).contains(&"start_aborted"), "{fx:?}");
    now += 10;
    let fx = done(&mut c, now, 0, ResourceOp::Stop);
    assert!(ops(&fx).is_empty(), "{fx:?}");
    assert_eq!(c.run_state(0), None);
    assert!(!c.state().active.contains(&0));
    // Still not quorate: nothing starts.
    now += 10;
    let fx = c.step(now, &input(&c, false));
    assert!(ops(&fx).is_empty(), "{fx:?}");
}

#[test]
fn a_start_goes_on_while_quorate() {
    let mut c = core();
    let mut now = start_first_resource(&mut c);
    now += 10;
    let fx = c.step(now, &input(&c, true));
    assert!(ops(&fx).is_empty(), "{fx:?}");
    now += 10;
    let fx = done(&mut c, now, 0, ResourceOp::Start);
    assert_eq!(ops(&fx), [(1, ResourceOp::Start)], "{fx:?}");
    now += 10;
    let fx = done(&mut c, now, 1, ResourceOp::Start);
    assert!(kinds(&fx).contains(&"group_running"), "{fx:?}");
    assert_eq!(c.run_state(0), Some(RunState::Running));
}

#[test]
fn a_recovery_restart_does_not_start_again_after_quorum_was_lost() {
    let mut c = core();
    let mut now = start_first_resource(&mut c);
    now += 10;
    done(&mut c, now, 0, ResourceOp::Start);
    now += 10;
    done(&mut c, now, 1, ResourceOp::Start);
    assert_eq!(c.run_state(0), Some(RunState::Running));
    // The monitor fails: restart `b` (the last resource).
    now += 2000;
    let fx = c.step(now, &input(&c, true));
    assert!(
        fx.iter().any(|e| matches!(e, Effect::Check { .. })),
        "{fx:?}"
    );
    now += 10;
    let fx = c.on_check(now, 0, 0, CheckOutcome::Failed("down".into()));
    assert_eq!(ops(&fx), [(1, ResourceOp::Stop)], "{fx:?}");
    // Quorum is lost while `b` stops.
    now += 10;
    c.step(now, &input(&c, false));
    now += 10;
    let fx = done(&mut c, now, 1, ResourceOp::Stop);
    // No start of `b`; `a` is stopped too.
    assert_eq!(ops(&fx), [(0, ResourceOp::Stop)], "{fx:?}");
    now += 10;
    let fx = done(&mut c, now, 0, ResourceOp::Stop);
    assert!(ops(&fx).is_empty(), "{fx:?}");
    assert_eq!(c.run_state(0), None);
}

#[test]
fn view_is_matches_view() {
    let mut c = core();
    let before = c.view();
    assert!(c.view_is(&before));
    let mut now = start_first_resource(&mut c);
    assert!(
        !c.view_is(&before),
        "the group is starting and a placement was published"
    );
    let starting = c.view();
    assert!(c.view_is(&starting));
    now += 10;
    done(&mut c, now, 0, ResourceOp::Start);
    assert!(c.view_is(&starting), "still starting");
    c.request(0, Op::Stop);
    assert!(!c.view_is(&starting), "a request travels in the view");
}

#[test]
fn of_two_placements_with_one_epoch_every_node_adopts_the_same() {
    let mut c = core();
    let now = start_first_resource(&mut c);
    let mine = c
        .published()
        .cloned()
        .unwrap_or_else(|| panic!("no placement"));
    // Another coordinator (n1, cut off from n0 for a moment) published
    // its own epoch 1.
    let mut other = mine.clone();
    other.coordinator = 1;
    other.groups[0].node = Some(1);
    let view = |p: &Published| EngineView {
        groups: BTreeMap::new(),
        published: Some(p.clone()),
        requests: Vec::new(),
        maintenance: false,
        settled: true,
        standby_failures: BTreeMap::new(),
    };
    let lone = |p: &Published| ClusterInput {
        quorate: false,
        alive: [(1, Some(view(p)))].into(),
        down: BTreeSet::new(),
        generations: BTreeMap::new(),
    };
    c.step(now + 10, &lone(&other));
    assert_eq!(
        c.published(),
        Some(&other),
        "n1's placement of the same epoch wins"
    );
    // And n0's own does not win back.
    c.step(now + 20, &lone(&mine));
    assert_eq!(c.published(), Some(&other));
}

/// Three nodes; group `g` (resources `a`, `b`) may run on every node
/// listed in `nodes`; `monitors` and resource keys of `a` are added as
/// given.
fn config_with(nodes: &str, a_keys: &str, monitors: &str) -> Arc<conf::Config> {
    let text = format!(
        r#"
[cluster]
name = "t"
kind = "guest"
auth_key_file = "/dev/null"
state_dir = "/nonexistent"

[heartbeat]
interval = "200ms"
timeout = "800ms"
links = [{{ name = "l0" }}]

[[nodes]]
name = "n0"
links = {{ l0 = ["10.0.0.1/24"] }}

[[nodes]]
name = "n1"
links = {{ l0 = ["10.0.0.2/24"] }}

[[nodes]]
name = "n2"
links = {{ l0 = ["10.0.0.3/24"] }}

[[groups]]
name = "g"
nodes = [{nodes}]

[[groups.resources]]
name = "a"
kind = "exec"
start = ["true"]
stop = ["true"]
{a_keys}

[[groups.resources]]
name = "b"
kind = "exec"
start = ["true"]
stop = ["true"]

{monitors}
"#
    );
    Arc::new(conf::load_str("test", &text).unwrap_or_else(|d| panic!("{d}")))
}

/// A standby monitor `watch` (`while_active = false`, every second) and an
/// active-only monitor `app`.
const STANDBY_MONITORS: &str = r#"
[[groups.monitors]]
name = "watch"
kind = "custom"
command = ["true"]
interval = "1s"
while_active = false
recovery = { restart = 1, failover = 1 }

[[groups.monitors]]
name = "app"
kind = "custom"
command = ["true"]
interval = "1s"
"#;

/// A peer's view: settled, with `published`, the groups it reports, and
/// its standby failures.
fn peer_view(
    published: Option<&Published>,
    groups: &[(u16, RunState)],
    standby_failures: &[(u16, Vec<u16>)],
) -> EngineView {
    EngineView {
        groups: groups.iter().copied().collect(),
        published: published.cloned(),
        requests: Vec::new(),
        maintenance: false,
        settled: true,
        standby_failures: standby_failures.iter().cloned().collect(),
    }
}

fn quorate_with(peers: Vec<(NodeId, EngineView)>) -> ClusterInput {
    ClusterInput {
        quorate: true,
        alive: peers.into_iter().map(|(p, v)| (p, Some(v))).collect(),
        down: BTreeSet::new(),
        generations: BTreeMap::new(),
    }
}

/// Answer every start-up probe among `fx` with "stopped" until none is
/// left; returns the effects of the last answer.
fn answer_probes_stopped(c: &mut NodeCore, now: u64, mut fx: Vec<Effect>) -> Vec<Effect> {
    loop {
        let Some((g, r)) = fx.iter().find_map(|e| match e {
            Effect::Resource {
                group,
                resource,
                op: ResourceOp::Probe,
                ..
            } => Some((*group, *resource)),
            _ => None,
        }) else {
            return fx;
        };
        fx = c.on_resource(
            now,
            g,
            r,
            ResourceOp::Probe,
            OpResult::Probed(Probe::Stopped),
        );
    }
}

/// The monitor checks among `effects`.
fn checks(effects: &[Effect]) -> Vec<usize> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Check { monitor, .. } => Some(*monitor),
            _ => None,
        })
        .collect()
}

/// n1 is a standby: n0 runs the group. Only the `while_active = false`
/// monitor runs on n1; its failure puts the group in n1's standby
/// failures (and raises an event), without any resource action; its next
/// pass takes it out again.
#[test]
fn a_standby_monitor_runs_where_the_group_does_not_and_its_failure_is_reported() {
    let config = config_with(r#""n0", "n1", "n2""#, "", STANDBY_MONITORS);
    let mut c = NodeCore::new(config, 1, 0, LocalState::default());
    let n0 = |pl: Option<&Published>| peer_view(pl, &[(0, RunState::Running)], &[]);
    let input = |c: &NodeCore| {
        quorate_with(vec![
            (0, n0(c.published())),
            (2, peer_view(c.published(), &[], &[])),
        ])
    };
    let fx = c.step(0, &input(&c));
    answer_probes_stopped(&mut c, 0, fx);
    assert_eq!(c.run_state(0), None);
    let fx = c.step(10, &input(&c));
    assert_eq!(checks(&fx), [0], "only `watch` runs on a standby: {fx:?}");
    assert!(ops(&fx).is_empty(), "{fx:?}");
    // Not again while in flight, nor before its interval.
    assert!(checks(&c.step(500, &input(&c))).is_empty());
    let fx = c.on_check(600, 0, 0, CheckOutcome::Failed("no route".into()));
    assert!(
        ops(&fx).is_empty(),
        "a standby failure starts and stops nothing: {fx:?}"
    );
    assert_eq!(kinds(&fx), ["standby_monitor_failed"]);
    assert_eq!(c.view().standby_failures, BTreeMap::from([(0, vec![0])]));
    // The same failure again: no new event.
    let fx = c.step(1010, &input(&c));
    assert_eq!(checks(&fx), [0]);
    let fx = c.on_check(1020, 0, 0, CheckOutcome::Failed("no route".into()));
    assert!(kinds(&fx).is_empty(), "{fx:?}");
    // The first pass lifts it.
    let fx = c.step(2020, &input(&c));
    assert_eq!(checks(&fx), [0]);
    let fx = c.on_check(2030, 0, 0, CheckOutcome::Ok);
    assert_eq!(kinds(&fx), ["standby_monitor_ok"]);
    assert!(c.view().standby_failures.is_empty());
}

/// A node not among the group's nodes is no standby: no check runs there.
#[test]
fn a_node_that_may_not_run_the_group_runs_no_standby_monitor() {
    let config = config_with(r#""n0", "n1""#, "", STANDBY_MONITORS);
    let mut c = NodeCore::new(config, 2, 0, LocalState::default());
    let input = |c: &NodeCore| {
        quorate_with(vec![
            (0, peer_view(c.published(), &[(0, RunState::Running)], &[])),
            (1, peer_view(c.published(), &[], &[])),
        ])
    };
    let fx = c.step(0, &input(&c));
    answer_probes_stopped(&mut c, 0, fx);
    for t in [10, 1010, 2010] {
        let fx = c.step(t, &input(&c));
        assert!(checks(&fx).is_empty(), "{fx:?}");
    }
}

/// A standby check still in flight when the group starts here answers
/// for the standby period: its failure neither counts against the node
/// nor walks the recovery ladder of the run that began.
#[test]
fn a_standby_answer_after_the_group_started_here_is_dropped() {
    let config = config_with(r#""n0", "n1""#, "", STANDBY_MONITORS);
    let mut c = NodeCore::new(config, 0, 0, LocalState::default());
    let fx = c.step(0, &peers_of(&c));
    answer_probes_stopped(&mut c, 0, fx);
    // The standby check goes out with the first placement (the peers do
    // not have it yet: no start).
    let fx = c.step(10, &peers_of(&c));
    assert!(kinds(&fx).contains(&"placement_published"), "{fx:?}");
    assert!(ops(&fx).is_empty(), "{fx:?}");
    assert_eq!(checks(&fx), [0], "{fx:?}");
    let fx = c.step(20, &peers_of(&c));
    assert_eq!(ops(&fx), [(0, ResourceOp::Start)], "{fx:?}");
    let fx = c.on_check(30, 0, 0, CheckOutcome::Failed("late".into()));
    assert!(fx.is_empty(), "{fx:?}");
    assert!(c.view().standby_failures.is_empty());
    done(&mut c, 40, 0, ResourceOp::Start);
    let fx = done(&mut c, 50, 1, ResourceOp::Start);
    assert!(kinds(&fx).contains(&"group_running"), "{fx:?}");
    // Running here, both monitors run, and a failure of the standby
    // monitor walks the ladder as any monitor's (restart `b`).
    let fx = c.step(60, &peers_of(&c));
    assert_eq!(checks(&fx), [0, 1], "{fx:?}");
    let fx = c.on_check(70, 0, 0, CheckOutcome::Failed("no route".into()));
    assert_eq!(ops(&fx), [(1, ResourceOp::Stop)], "{fx:?}");
    assert!(kinds(&fx).contains(&"monitor_failed"), "{fx:?}");
}

/// The coordinator does not place a group on a node that reports a
/// standby failure for it, says so in the reason, and places it there
/// again once the failure is gone.
#[test]
fn the_coordinator_skips_a_node_whose_standby_monitor_fails() {
    let config = config_with(r#""n1", "n2""#, "", STANDBY_MONITORS);
    let mut c = NodeCore::new(config, 0, 0, LocalState::default());
    let input = |c: &NodeCore, n1_fails: bool| {
        let failures = if n1_fails { vec![(0, vec![0])] } else { vec![] };
        quorate_with(vec![
            (1, peer_view(c.published(), &[], &failures)),
            (2, peer_view(c.published(), &[], &[])),
        ])
    };
    let fx = c.step(0, &input(&c, true));
    answer_probes_stopped(&mut c, 0, fx);
    c.step(10, &input(&c, true));
    let (node, why) = c.decisions()[0]
        .clone()
        .unwrap_or_else(|| panic!("no placement"));
    assert_eq!(node, Some(2));
    assert!(why.contains("monitor `watch` fails on n1"), "{why}");
    // No failure reported any more: the next placement (here, a fresh
    // coordinator's, the group not running yet) takes n1 again.
    let mut fresh = NodeCore::new(c.config.clone(), 0, 0, LocalState::default());
    let fx = fresh.step(0, &input(&fresh, false));
    answer_probes_stopped(&mut fresh, 0, fx);
    fresh.step(10, &input(&fresh, false));
    let (node, why) = fresh.decisions()[0]
        .clone()
        .unwrap_or_else(|| panic!("no placement"));
    assert_eq!(node, Some(1));
    assert!(!why.contains("fails"), "{why}");
    // With n1 failing and n2 running it, n1 is named; when n1 passes again
    // the reason no longer names it (the group stays: fail-back manual).
    c.step(20, &input(&c, false));
    let (node, why) = c.decisions()[0]
        .clone()
        .unwrap_or_else(|| panic!("no placement"));
    assert_eq!(node, Some(2));
    assert!(!why.contains("fails"), "{why}");
}

/// A failure reported by the node where the group runs (a view caught
/// mid-change) never moves the group.
#[test]
fn a_standby_failure_never_moves_a_running_group() {
    let config = config_with(r#""n1", "n2""#, "", STANDBY_MONITORS);
    let mut c = NodeCore::new(config, 0, 0, LocalState::default());
    let input = |c: &NodeCore| {
        quorate_with(vec![
            (
                1,
                peer_view(c.published(), &[(0, RunState::Running)], &[(0, vec![0])]),
            ),
            (2, peer_view(c.published(), &[], &[])),
        ])
    };
    let fx = c.step(0, &input(&c));
    answer_probes_stopped(&mut c, 0, fx);
    c.step(10, &input(&c));
    let (node, why) = c.decisions()[0]
        .clone()
        .unwrap_or_else(|| panic!("no placement"));
    assert_eq!(node, Some(1), "{why}");
    assert!(!why.contains("fails"), "{why}");
}

/// Start the group on n0 (alone in the group's nodes, peers settled) and
/// return the time it runs.
fn run_group_here(c: &mut NodeCore) -> u64 {
    let fx = c.step(0, &peers_of(c));
    answer_probes_stopped(c, 0, fx);
    c.step(10, &peers_of(c));
    let fx = c.step(20, &peers_of(c));
    assert_eq!(ops(&fx), [(0, ResourceOp::Start)], "{fx:?}");
    done(c, 30, 0, ResourceOp::Start);
    let fx = done(c, 40, 1, ResourceOp::Start);
    assert!(kinds(&fx).contains(&"group_running"), "{fx:?}");
    40
}

/// A resource operation of group 0 that ended well.
fn done(c: &mut NodeCore, now: u64, resource: usize, op: ResourceOp) -> Vec<Effect> {
    c.on_resource(now, 0, resource, op, OpResult::Done(ActionOutcome::Ok))
}

/// n0's two peers, settled, with n0's placement and nothing running.
fn peers_of(c: &NodeCore) -> ClusterInput {
    quorate_with(vec![
        (1, peer_view(c.published(), &[], &[])),
        (2, peer_view(c.published(), &[], &[])),
    ])
}

/// Periodic probes (`monitor_interval`): a probe of `a` goes out one
/// interval after the group runs, without blocking other actions; a
/// "stopped" answer restarts `a` and what follows it; an unknown answer
/// is no failure; an answer from before the restart is dropped.
#[test]
fn a_periodic_probe_that_finds_the_resource_stopped_restarts_it() {
    let config = config_with(
        r#""n0""#,
        "status = [\"true\"]\nmonitor_interval = \"2s\"\nmonitor_timeout = \"3s\"\nmonitor_recovery = { restart = 1, failover = 0, final_action = \"none\" }",
        "",
    );
    let mut c = NodeCore::new(config, 0, 0, LocalState::default());
    let t = run_group_here(&mut c);
    let fx = c.step(t + 1000, &peers_of(&c));
    assert!(ops(&fx).is_empty(), "not before the interval: {fx:?}");
    let fx = c.step(t + 2000, &peers_of(&c));
    assert_eq!(ops(&fx), [(0, ResourceOp::Probe)], "{fx:?}");
    let timeout = fx.iter().find_map(|e| match e {
        Effect::Resource { ctx, .. } => Some(ctx.timeout),
        _ => None,
    });
    assert_eq!(timeout, Some(Duration::from_secs(3)));
    assert_eq!(c.run_state(0), Some(RunState::Running));
    // Still in flight: not again.
    assert!(ops(&c.step(t + 4500, &peers_of(&c))).is_empty());
    // Unknown: logged, nothing done.
    let fx = c.on_resource(
        t + 4600,
        0,
        0,
        ResourceOp::Probe,
        OpResult::Probed(Probe::Unknown("timed out".into())),
    );
    assert!(ops(&fx).is_empty() && kinds(&fx).is_empty(), "{fx:?}");
    assert_eq!(c.restarts(0), 0);
    // Running: fine.
    let fx = c.step(t + 4600, &peers_of(&c));
    assert_eq!(ops(&fx), [(0, ResourceOp::Probe)], "{fx:?}");
    let fx = c.on_resource(
        t + 4610,
        0,
        0,
        ResourceOp::Probe,
        OpResult::Probed(Probe::Running),
    );
    assert!(fx.is_empty(), "{fx:?}");
    // Stopped (the kernel dropped the address): restart from `a`.
    let fx = c.step(t + 6610, &peers_of(&c));
    assert_eq!(ops(&fx), [(0, ResourceOp::Probe)], "{fx:?}");
    let fx = c.on_resource(
        t + 6620,
        0,
        0,
        ResourceOp::Probe,
        OpResult::Probed(Probe::Stopped),
    );
    assert_eq!(ops(&fx), [(1, ResourceOp::Stop)], "{fx:?}");
    let failed = fx.iter().find_map(|e| match e {
        Effect::Event {
            kind: "monitor_failed",
            details,
        } => Some(details.clone()),
        _ => None,
    });
    let failed = failed.unwrap_or_else(|| panic!("no monitor_failed: {fx:?}"));
    assert_eq!(failed["probe"], "a");
    assert_eq!(failed["action"], "restart");
    assert_eq!(c.restarts(0), 1);
    let fx = done(&mut c, t + 6630, 1, ResourceOp::Stop);
    assert_eq!(ops(&fx), [(0, ResourceOp::Stop)], "{fx:?}");
    let fx = done(&mut c, t + 6640, 0, ResourceOp::Stop);
    assert_eq!(ops(&fx), [(0, ResourceOp::Start)], "{fx:?}");
    done(&mut c, t + 6650, 0, ResourceOp::Start);
    let fx = done(&mut c, t + 6660, 1, ResourceOp::Start);
    assert!(kinds(&fx).contains(&"group_running"), "{fx:?}");
    // The next probe, two seconds into the new run, finds it failed: the
    // restart is used up, no failover is allowed, the final action is
    // none: the group stays.
    assert!(ops(&c.step(t + 7000, &peers_of(&c))).is_empty());
    let fx = c.step(t + 8670, &peers_of(&c));
    assert_eq!(ops(&fx), [(0, ResourceOp::Probe)], "{fx:?}");
    let fx = c.on_resource(
        t + 8680,
        0,
        0,
        ResourceOp::Probe,
        OpResult::Probed(Probe::Failed("dad failed".into())),
    );
    assert!(ops(&fx).is_empty(), "{fx:?}");
    assert!(kinds(&fx).contains(&"monitor_failed"), "{fx:?}");
    assert_eq!(c.run_state(0), Some(RunState::Running));
}

/// A periodic probe in flight when a restart begins answers for the old
/// run: dropped, even once the group runs again.
#[test]
fn a_periodic_probe_of_an_earlier_run_is_dropped() {
    let config = config_with(
        r#""n0""#,
        "status = [\"true\"]\nmonitor_interval = \"1s\"",
        "[[groups.monitors]]\nname = \"m\"\nkind = \"custom\"\ncommand = [\"true\"]\ninterval = \"1s\"\nresource = \"a\"\nrecovery = { restart = 5 }",
    );
    let mut c = NodeCore::new(config, 0, 0, LocalState::default());
    let t = run_group_here(&mut c);
    let fx = c.step(t + 1000, &peers_of(&c));
    assert_eq!(ops(&fx), [(0, ResourceOp::Probe)], "{fx:?}");
    assert_eq!(checks(&fx), [0], "{fx:?}");
    // The monitor fails first: restart from `a`, while the probe is out.
    let fx = c.on_check(t + 1010, 0, 0, CheckOutcome::Failed("down".into()));
    assert_eq!(ops(&fx), [(1, ResourceOp::Stop)], "{fx:?}");
    done(&mut c, t + 1020, 1, ResourceOp::Stop);
    done(&mut c, t + 1030, 0, ResourceOp::Stop);
    done(&mut c, t + 1040, 0, ResourceOp::Start);
    let fx = done(&mut c, t + 1050, 1, ResourceOp::Start);
    assert!(kinds(&fx).contains(&"group_running"), "{fx:?}");
    // The old probe answers "stopped" (it ran during the restart).
    let fx = c.on_resource(
        t + 1060,
        0,
        0,
        ResourceOp::Probe,
        OpResult::Probed(Probe::Stopped),
    );
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(c.run_state(0), Some(RunState::Running));
    assert_eq!(c.restarts(0), 1);
}

/// A resource's timeouts and periodic probe are the ones this node runs
/// it with: its `overrides` apply (a DR node may start slower).
#[test]
fn per_node_overrides_give_the_timeouts_and_the_probe() {
    let text = CONFIG.replace(
        "name = \"n0\"\nlinks = { l0 = [\"10.0.0.1/24\"] }\n",
        "name = \"n0\"\nlinks = { l0 = [\"10.0.0.1/24\"] }\noverrides = { a = { start_timeout = \"7s\", monitor_interval = \"3s\", status = [\"true\"] } }\n",
    );
    assert_ne!(text, CONFIG);
    let config = Arc::new(conf::load_str("test", &text).unwrap_or_else(|d| panic!("{d}")));
    let timeout_of = |fx: &[Effect]| {
        fx.iter().find_map(|e| match e {
            Effect::Resource { ctx, .. } => Some(ctx.timeout),
            _ => None,
        })
    };
    let mut c = NodeCore::new(config.clone(), 0, 0, LocalState::default());
    let fx = c.step(0, &input(&c, true));
    let fx = answer_probes_stopped(&mut c, 0, fx);
    assert!(ops(&fx).is_empty());
    c.step(10, &input(&c, true));
    let fx = c.step(20, &input(&c, true));
    assert_eq!(ops(&fx), [(0, ResourceOp::Start)], "{fx:?}");
    assert_eq!(timeout_of(&fx), Some(Duration::from_secs(7)));
    done(&mut c, 30, 0, ResourceOp::Start);
    let fx = done(&mut c, 40, 1, ResourceOp::Start);
    assert_eq!(timeout_of(&fx), None);
    assert!(
        ops(&c.step(2000, &input(&c, true)))
            .iter()
            .all(|(_, op)| *op != ResourceOp::Probe)
    );
    let fx = c.step(3040, &input(&c, true));
    assert!(ops(&fx).contains(&(0, ResourceOp::Probe)), "{fx:?}");
    // On n1, without overrides: the default timeout, no probe.
    let n1 = NodeCore::new(config, 1, 0, LocalState::default());
    assert_eq!(
        n1.resource_timeout(0, 0, ResourceOp::Start),
        Duration::from_secs(90)
    );
    assert!(n1.probe_specs[0][0].is_none());
}
