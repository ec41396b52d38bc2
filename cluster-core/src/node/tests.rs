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
    let fx = c.on_resource(
        now,
        0,
        0,
        ResourceOp::Start,
        OpResult::Done(ActionOutcome::Ok),
    );
    // Resource `b` must not start; `a` is stopped again.
    assert_eq!(ops(&fx), [(0, ResourceOp::Stop)], "{fx:?}");
    assert!(kinds(&fx).contains(&"start_aborted"), "{fx:?}");
    now += 10;
    let fx = c.on_resource(
        now,
        0,
        0,
        ResourceOp::Stop,
        OpResult::Done(ActionOutcome::Ok),
    );
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
    let fx = c.on_resource(
        now,
        0,
        0,
        ResourceOp::Start,
        OpResult::Done(ActionOutcome::Ok),
    );
    assert_eq!(ops(&fx), [(1, ResourceOp::Start)], "{fx:?}");
    now += 10;
    let fx = c.on_resource(
        now,
        0,
        1,
        ResourceOp::Start,
        OpResult::Done(ActionOutcome::Ok),
    );
    assert!(kinds(&fx).contains(&"group_running"), "{fx:?}");
    assert_eq!(c.run_state(0), Some(RunState::Running));
}

#[test]
fn a_recovery_restart_does_not_start_again_after_quorum_was_lost() {
    let mut c = core();
    let mut now = start_first_resource(&mut c);
    now += 10;
    c.on_resource(
        now,
        0,
        0,
        ResourceOp::Start,
        OpResult::Done(ActionOutcome::Ok),
    );
    now += 10;
    c.on_resource(
        now,
        0,
        1,
        ResourceOp::Start,
        OpResult::Done(ActionOutcome::Ok),
    );
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
    let fx = c.on_resource(
        now,
        0,
        1,
        ResourceOp::Stop,
        OpResult::Done(ActionOutcome::Ok),
    );
    // No start of `b`; `a` is stopped too.
    assert_eq!(ops(&fx), [(0, ResourceOp::Stop)], "{fx:?}");
    now += 10;
    let fx = c.on_resource(
        now,
        0,
        0,
        ResourceOp::Stop,
        OpResult::Done(ActionOutcome::Ok),
    );
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
    c.on_resource(
        now,
        0,
        0,
        ResourceOp::Start,
        OpResult::Done(ActionOutcome::Ok),
    );
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
