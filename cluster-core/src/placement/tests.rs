use super::*;

use NodeState::{Down, Maintenance, Unsafe, Up};

/// `groups`: (name, preferred nodes, failback auto).
fn topo(nodes: usize, groups: &[(&str, &[usize], bool)]) -> Topology {
    let groups: Vec<GroupSpec> = groups
        .iter()
        .map(|(name, ns, auto)| GroupSpec {
            name: (*name).to_owned(),
            nodes: ns.to_vec(),
            failback_auto: *auto,
            start_after: Vec::new(),
            anti_affinity: Vec::new(),
            demand: Demand::default(),
        })
        .collect();
    let mut t = Topology {
        nodes: (0..nodes).map(|k| format!("n{k}")).collect(),
        capacity: vec![None; nodes],
        groups,
        order: Vec::new(),
        dependents: Vec::new(),
    };
    t.reindex();
    t
}

fn reorder(t: &mut Topology) {
    t.reindex();
}

fn facts(nodes: &[NodeState], groups: usize) -> Facts {
    Facts {
        nodes: nodes.to_vec(),
        groups: (0..groups)
            .map(|_| GroupFacts {
                wanted: true,
                ..GroupFacts::default()
            })
            .collect(),
    }
}

fn running(f: &mut Facts, g: GroupId, n: NodeId) {
    f.groups[g].runs = vec![(n, RunState::Running)];
    f.groups[g].assigned = Some(n);
}

fn nodes_of(p: &Placement) -> Vec<Option<NodeId>> {
    p.groups.iter().map(|d| d.node).collect()
}

#[test]
fn one_plus_one_starts_on_the_preferred_node() {
    let t = topo(2, &[("g", &[0, 1], false)]);
    let f = facts(&[Up, Up], 1);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(0));
    assert_eq!(p.groups[0].reason, Reason::Preferred);
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Start { group: 0, node: 0 }]
    );
}

#[test]
fn a_lost_owner_holds_its_group_until_it_is_known_down() {
    let t = topo(2, &[("g", &[0, 1], false)]);
    let mut f = facts(&[Unsafe, Up], 1);
    running(&mut f, 0, 0);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(0));
    assert_eq!(p.groups[0].reason, Reason::WaitingForFence { node: 0 });
    assert!(
        actions(&t, &f, &p).is_empty(),
        "nothing may start elsewhere"
    );
    // Even with no report from the lost node (its view is gone), the
    // previous assignment pins it.
    f.groups[0].runs.clear();
    let p = place(&t, &f);
    assert_eq!(p.groups[0].reason, Reason::WaitingForFence { node: 0 });
    assert!(actions(&t, &f, &p).is_empty());

    // Fenced: it fails over.
    f.nodes[0] = Down;
    f.groups[0].runs = vec![(0, RunState::Running)];
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(1));
    assert_eq!(p.groups[0].reason, Reason::FailedOver { from: 0 });
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Start { group: 0, node: 1 }]
    );
}

#[test]
fn fail_back_manual_stays_and_automatic_returns() {
    for (auto, expect) in [(false, 1), (true, 0)] {
        let t = topo(2, &[("g", &[0, 1], auto)]);
        let mut f = facts(&[Up, Up], 1);
        running(&mut f, 0, 1);
        let p = place(&t, &f);
        assert_eq!(p.groups[0].node, Some(expect), "auto={auto}");
        if auto {
            assert_eq!(p.groups[0].reason, Reason::FailedBack { from: 1 });
            assert_eq!(
                actions(&t, &f, &p),
                vec![Action::Stop { group: 0, node: 1 }]
            );
            // Once stopped there, it starts on the preferred node.
            f.groups[0].runs.clear();
            assert_eq!(
                actions(&t, &f, &p),
                vec![Action::Start { group: 0, node: 0 }]
            );
        } else {
            assert_eq!(p.groups[0].reason, Reason::Stays);
            assert!(actions(&t, &f, &p).is_empty());
        }
    }
}

#[test]
fn a_manual_move_is_one_shot_and_suspends_automatic_fail_back_only_visibly() {
    let t = topo(3, &[("g", &[0, 1, 2], true)]);
    let mut f = facts(&[Up, Up, Up], 1);
    running(&mut f, 0, 0);
    f.groups[0].move_to = Some(Some(2));
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(2));
    assert_eq!(p.groups[0].reason, Reason::Moved { from: Some(0) });
    // Next round: the move is consumed, `moved` is recorded; it stays.
    f.groups[0].move_to = None;
    f.groups[0].moved = true;
    running(&mut f, 0, 2);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(2));
    assert_eq!(p.groups[0].reason, Reason::StaysMoved);
    // Its node dies: a normal failover to the most preferred node.
    f.nodes[2] = Down;
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(0));
    assert_eq!(p.groups[0].reason, Reason::FailedOver { from: 2 });
}

#[test]
fn a_move_in_progress_is_not_undone_by_the_next_round() {
    for auto in [false, true] {
        let t = topo(3, &[("g", &[0, 1, 2], auto)]);
        let mut f = facts(&[Up, Up, Up], 1);
        running(&mut f, 0, 1);
        f.groups[0].move_to = Some(Some(2));
        let p = place(&t, &f);
        assert_eq!(p.groups[0].node, Some(2));
        assert_eq!(p.groups[0].reason, Reason::Moved { from: Some(1) });
        // The next round comes before the old node has even begun to stop:
        // the move is consumed, the group still runs on n1, assigned to n2.
        f.groups[0].move_to = None;
        f.groups[0].moved = true;
        f.groups[0].assigned = Some(2);
        let p = place(&t, &f);
        assert_eq!(p.groups[0].node, Some(2), "auto={auto}");
        assert_eq!(p.groups[0].reason, Reason::StaysMoved);
        assert_eq!(
            actions(&t, &f, &p),
            vec![Action::Stop { group: 0, node: 1 }]
        );
        // Stopped there: it starts where it was moved to.
        f.groups[0].runs.clear();
        let p = place(&t, &f);
        assert_eq!(p.groups[0].node, Some(2));
        assert_eq!(
            actions(&t, &f, &p),
            vec![Action::Start { group: 0, node: 2 }]
        );
        // The target dies before the group got there: a normal failover
        // to the most preferred node.
        f.nodes[2] = Down;
        let p = place(&t, &f);
        assert_eq!(p.groups[0].node, Some(0), "auto={auto}");
        assert_eq!(p.groups[0].reason, Reason::FailedOver { from: 2 });
    }
}

#[test]
fn a_move_to_a_node_that_cannot_take_it_is_refused_and_forgotten() {
    let t = topo(3, &[("g", &[0, 1], false)]);
    let mut f = facts(&[Up, Down, Up], 1);
    running(&mut f, 0, 0);
    for to in [Some(1), Some(2)] {
        f.groups[0].move_to = Some(to);
        let p = place(&t, &f);
        assert_eq!(p.groups[0].node, Some(0));
        assert_eq!(p.refused_moves.len(), 1, "{p:?}");
        assert!(
            p.refused_moves[0].why.contains(if to == Some(1) {
                "n1 is down"
            } else {
                "not one of the group's nodes"
            }),
            "{:?}",
            p.refused_moves
        );
    }
    // "Anywhere else" picks the next node that can take it.
    let mut f = facts(&[Up, Up, Up], 1);
    running(&mut f, 0, 0);
    f.groups[0].move_to = Some(None);
    assert_eq!(place(&t, &f).groups[0].node, Some(1));
}

#[test]
fn n_plus_one_with_two_failures_uses_the_standby_until_capacity_runs_out() {
    let mut t = topo(3, &[("a", &[0, 2], false), ("b", &[1, 2], false)]);
    for g in &mut t.groups {
        g.demand = Demand {
            memory_mib: 1024,
            vcpus: 2,
        };
    }
    t.capacity[2] = Some(Demand {
        memory_mib: 1536,
        vcpus: 8,
    });
    let mut f = facts(&[Down, Down, Up], 2);
    running(&mut f, 0, 0);
    running(&mut f, 1, 1);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(2), None]);
    let why = p.groups[1].reason.describe(&t);
    assert!(
        why.contains("n2 lacks capacity (needs 1024 MiB/2 vCPUs, 512 MiB/6 vCPUs free)"),
        "{why}"
    );
    assert!(why.contains("n1 is down"), "{why}");
}

#[test]
fn a_running_group_keeps_its_capacity_before_newcomers() {
    let mut t = topo(2, &[("new", &[1], false), ("old", &[1], false)]);
    for g in &mut t.groups {
        g.demand = Demand {
            memory_mib: 1024,
            vcpus: 1,
        };
    }
    t.capacity[1] = Some(Demand {
        memory_mib: 1024,
        vcpus: 4,
    });
    let mut f = facts(&[Up, Up], 2);
    running(&mut f, 1, 1);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![None, Some(1)]);
}

#[test]
fn a_group_still_stopping_holds_its_capacity_until_it_has_stopped() {
    let mut t = topo(2, &[("big", &[0, 1], false), ("batch", &[1], false)]);
    for g in &mut t.groups {
        g.demand = Demand {
            memory_mib: 12288,
            vcpus: 4,
        };
    }
    t.capacity = vec![
        Some(Demand {
            memory_mib: 16384,
            vcpus: 8,
        });
        2
    ];
    // n0 is down; the operator stopped batch, which still runs on n1.
    let mut f = facts(&[Down, Up], 2);
    f.groups[0].assigned = Some(0);
    running(&mut f, 1, 1);
    f.groups[1].wanted = false;
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![None, None]);
    let why = p.groups[0].reason.describe(&t);
    assert!(
        why.contains("n1 lacks capacity (needs 12288 MiB/4 vCPUs, 4096 MiB/4 vCPUs free)"),
        "{why}"
    );
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Stop { group: 1, node: 1 }]
    );
    // While it stops, still nothing for big.
    f.groups[1].runs = vec![(1, RunState::Stopping)];
    assert_eq!(nodes_of(&place(&t, &f)), vec![None, None]);
    // Stopped: big takes n1.
    f.groups[1].runs.clear();
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(1), None]);
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Start { group: 0, node: 1 }]
    );
    // A group that stays where it runs is not counted twice.
    f.groups[0].runs = vec![(1, RunState::Running)];
    f.groups[0].assigned = Some(1);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(1));
    assert_eq!(p.groups[0].reason, Reason::Stays);
    // A down node holds nothing.
    let mut f = facts(&[Up, Down], 2);
    running(&mut f, 0, 1);
    running(&mut f, 1, 1);
    f.groups[1].wanted = false;
    assert_eq!(nodes_of(&place(&t, &f)), vec![Some(0), None]);
}

#[test]
fn anti_affinity_keeps_groups_apart_in_both_directions() {
    let mut t = topo(2, &[("a", &[0, 1], false), ("b", &[0, 1], false)]);
    t.groups[1].anti_affinity = vec![0];
    let t = {
        // Topology::from_config makes it symmetric; do the same here.
        let mut t = t;
        t.groups[0].anti_affinity = vec![1];
        t
    };
    let f = facts(&[Up, Up], 2);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(0), Some(1)]);
    // With one node left, the second stays down and says why.
    let f = facts(&[Up, Down], 2);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(0), None]);
    assert!(p.groups[1].reason.describe(&t).contains("n0 runs a"));
}

#[test]
fn dependencies_start_in_order_and_stop_in_reverse() {
    let mut t = topo(2, &[("app", &[0, 1], false), ("db", &[0, 1], false)]);
    t.groups[0].start_after = vec![1];
    reorder(&mut t);
    assert_eq!(t.order, vec![1, 0]);
    let mut f = facts(&[Up, Up], 2);
    let p = place(&t, &f);
    // Only the database may start first.
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Start { group: 1, node: 0 }]
    );
    f.groups[1].runs = vec![(0, RunState::Starting)];
    assert!(actions(&t, &f, &p).is_empty());
    f.groups[1].runs = vec![(0, RunState::Running)];
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Start { group: 0, node: 0 }]
    );

    // Node 0 goes into maintenance: the application stops before the
    // database, then both start on node 1 in order.
    running(&mut f, 0, 0);
    running(&mut f, 1, 0);
    f.nodes[0] = Maintenance;
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(1), Some(1)]);
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Stop { group: 0, node: 0 }]
    );
    f.groups[0].runs.clear();
    // The database must stop (and run on node 1) before the application starts.
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Stop { group: 1, node: 0 }]
    );
    f.groups[1].runs.clear();
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Start { group: 1, node: 1 }]
    );
}

#[test]
fn a_dependency_without_a_node_keeps_its_dependent_down() {
    let mut t = topo(2, &[("app", &[0, 1], false), ("db", &[0], false)]);
    t.groups[0].start_after = vec![1];
    reorder(&mut t);
    let f = facts(&[Down, Up], 2);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![None, None]);
    assert_eq!(
        p.groups[0].reason,
        Reason::WaitingForDependency { group: 1 }
    );
}

#[test]
fn an_assignment_alone_does_not_keep_a_dependent_placed() {
    let mut t = topo(3, &[("app", &[1, 2], false), ("db", &[0], false)]);
    t.groups[0].start_after = vec![1];
    reorder(&mut t);
    // app was assigned n1 while db still had a node (say, pinned to a lost
    // n0), but never started; now n0 is down and db has no node.
    let mut f = facts(&[Down, Up, Up], 2);
    f.groups[0].assigned = Some(1);
    f.groups[1].assigned = Some(0);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![None, None]);
    assert_eq!(
        p.groups[0].reason,
        Reason::WaitingForDependency { group: 1 }
    );
    // A dependent that runs is not stopped because its dependency is gone.
    running(&mut f, 0, 1);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(1), None]);
    assert_eq!(p.groups[0].reason, Reason::Stays);
    // db runs again: app, not started yet, keeps its assignment.
    let mut f = facts(&[Up, Up, Up], 2);
    f.groups[0].assigned = Some(2);
    running(&mut f, 1, 0);
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(2), Some(0)]);
    assert_eq!(p.groups[0].reason, Reason::Stays);
    // db is being placed anew: app is placed after it.
    f.groups[1] = GroupFacts {
        wanted: true,
        ..GroupFacts::default()
    };
    let p = place(&t, &f);
    assert_eq!(nodes_of(&p), vec![Some(1), Some(0)]);
}

#[test]
fn double_activity_stops_the_lower_priority_copy_at_once() {
    let t = topo(2, &[("g", &[0, 1], false)]);
    let mut f = facts(&[Up, Up], 1);
    f.groups[0].runs = vec![(1, RunState::Running), (0, RunState::Running)];
    f.groups[0].assigned = Some(1);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(0));
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Stop { group: 0, node: 1 }]
    );
}

#[test]
fn unknown_elsewhere_blocks_a_start_and_is_stopped_not_ignored() {
    let t = topo(2, &[("g", &[0, 1], false)]);
    let mut f = facts(&[Up, Up], 1);
    f.groups[0].runs = vec![(1, RunState::Unknown)];
    f.groups[0].assigned = Some(0);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(0));
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Stop { group: 0, node: 1 }]
    );
}

#[test]
fn a_blocked_group_stays_where_its_stop_failed() {
    let t = topo(2, &[("g", &[0, 1], false)]);
    let mut f = facts(&[Up, Up], 1);
    f.groups[0].runs = vec![(0, RunState::StopFailed)];
    f.groups[0].wanted = false;
    let p = place(&t, &f);
    assert_eq!(p.groups[0].reason, Reason::Blocked { node: 0 });
    assert!(actions(&t, &f, &p).is_empty());
}

#[test]
fn excluded_nodes_are_skipped_until_cleared() {
    let t = topo(2, &[("g", &[0, 1], true)]);
    let mut f = facts(&[Up, Up], 1);
    running(&mut f, 0, 0);
    f.groups[0].excluded.insert(0);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(1));
    assert_eq!(p.groups[0].reason, Reason::FailedOver { from: 0 });
    f.groups[0].excluded.clear();
    running(&mut f, 0, 1);
    assert_eq!(
        place(&t, &f).groups[0].node,
        Some(0),
        "fail-back once cleared"
    );
}

/// A node where a standby monitor fails is not chosen (for a failover,
/// a fail-back or a manual move), and the rejection names the monitor;
/// the same fact about the node where the group runs is ignored.
#[test]
fn a_node_whose_standby_monitor_fails_is_not_chosen_but_never_left() {
    let t = topo(3, &[("g", &[0, 1, 2], true)]);
    let mut f = facts(&[Down, Up, Up], 1);
    f.groups[0].assigned = Some(0);
    f.groups[0].failing.insert(1, "uplink".into());
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(2), "n1 fails its monitor");
    assert_eq!(p.groups[0].reason, Reason::FailedOver { from: 0 });
    // Running on n2 with fail-back automatic: n0 is back but fails: stays.
    let mut f = facts(&[Up, Up, Up], 1);
    running(&mut f, 0, 2);
    f.groups[0].failing.insert(0, "uplink".into());
    f.groups[0].failing.insert(1, "uplink".into());
    assert_eq!(place(&t, &f).groups[0].reason, Reason::Stays);
    // A move there is refused, naming the monitor.
    f.groups[0].move_to = Some(Some(1));
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(2));
    assert_eq!(p.refused_moves.len(), 1);
    assert_eq!(p.refused_moves[0].why, "monitor `uplink` fails on n1");
    // A failure reported where it runs never moves it.
    f.groups[0].move_to = None;
    f.groups[0].failing.insert(2, "uplink".into());
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(2));
    assert!(actions(&t, &f, &p).is_empty());
    // Nowhere else to go: no node, and the reason says why.
    let mut f = facts(&[Down, Up, Maintenance], 1);
    f.groups[0].failing.insert(1, "uplink".into());
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, None);
    assert_eq!(
        p.groups[0].reason.describe(&t),
        "no node can run it: n0 is down; monitor `uplink` fails on n1; n2 is in maintenance"
    );
}

#[test]
fn stopped_by_the_operator_is_stopped_everywhere() {
    let t = topo(2, &[("g", &[0, 1], false)]);
    let mut f = facts(&[Up, Up], 1);
    running(&mut f, 0, 0);
    f.groups[0].wanted = false;
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, None);
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Stop { group: 0, node: 0 }]
    );
}

#[test]
fn mutual_standby_and_n_plus_m() {
    // Mutual standby: a on n0 (standby n1), b on n1 (standby n0).
    let t = topo(2, &[("a", &[0, 1], false), ("b", &[1, 0], false)]);
    let f = facts(&[Up, Up], 2);
    assert_eq!(nodes_of(&place(&t, &f)), vec![Some(0), Some(1)]);
    let f = facts(&[Up, Down], 2);
    assert_eq!(nodes_of(&place(&t, &f)), vec![Some(0), Some(0)]);
    // N+M: three actives, two standbys (n3, n4), anti-affinity among all.
    let mut t = topo(
        5,
        &[
            ("a", &[0, 3, 4], false),
            ("b", &[1, 3, 4], false),
            ("c", &[2, 3, 4], false),
        ],
    );
    for g in 0..3 {
        t.groups[g].anti_affinity = (0..3).filter(|x| *x != g).collect();
    }
    let f = facts(&[Down, Down, Up, Up, Up], 3);
    assert_eq!(nodes_of(&place(&t, &f)), vec![Some(3), Some(4), Some(2)]);
}

#[test]
fn placement_is_deterministic() {
    let t = topo(3, &[("a", &[0, 1, 2], true), ("b", &[2, 1], false)]);
    let mut f = facts(&[Up, Unsafe, Up], 2);
    running(&mut f, 0, 1);
    let first = place(&t, &f);
    for _ in 0..10 {
        assert_eq!(place(&t, &f), first);
    }
}

#[test]
fn topology_from_config_resolves_names_and_symmetric_anti_affinity() {
    let text = r#"
[cluster]
name = "c"
kind = "host"
auth_key_file = "/k"
state_dir = "/s"
[heartbeat]
links = [{ name = "l0" }]
[quorum]
ping_targets = ["10.0.0.254"]
[[nodes]]
name = "h0"
links = { l0 = ["10.0.0.1/24"] }
capacity = { memory_mib = 4096, vcpus = 4 }
[[nodes]]
name = "h1"
links = { l0 = ["10.0.0.2/24"] }
[[groups]]
name = "app"
nodes = ["h1", "h0"]
start_after = ["db"]
anti_affinity = ["db"]
[[groups.resources]]
name = "app-vm"
kind = "vm"
domain_xml = "/x.xml"
memory_mib = 1024
vcpus = 2
[[groups]]
name = "db"
nodes = ["h0", "h1"]
failback = "auto"
"#;
    let config = conf::load_str("t.toml", text).unwrap_or_else(|e| panic!("{e}"));
    let t = Topology::from_config(&config);
    assert_eq!(t.order, vec![1, 0]);
    assert_eq!(t.groups[0].nodes, vec![1, 0]);
    assert_eq!(t.groups[1].anti_affinity, vec![0]);
    assert!(t.groups[1].failback_auto);
    assert_eq!(
        t.groups[0].demand,
        Demand {
            memory_mib: 1024,
            vcpus: 2
        }
    );
    assert_eq!(
        t.capacity,
        vec![
            Some(Demand {
                memory_mib: 4096,
                vcpus: 4
            }),
            None
        ]
    );
}

#[test]
fn with_no_knowledge_of_the_group_a_lost_unfenced_node_may_run_it() {
    // A coordinator that never saw the group's owner (the owner's view
    // never reached it) must not start the group while a node that may
    // run it is lost and not fenced.
    let t = topo(3, &[("g", &[0, 1], false), ("h", &[1, 2], false)]);
    let f = facts(&[Unsafe, Up, Up], 2);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].reason, Reason::WaitingForFence { node: 0 });
    // Held, not assigned there: once n0 is back it is placed afresh.
    assert_eq!(p.groups[0].node, None);
    // `h` cannot run on n0: it starts.
    assert_eq!(p.groups[1].node, Some(1));
    assert_eq!(
        actions(&t, &f, &p),
        vec![Action::Start { group: 1, node: 1 }]
    );
    // Once n0 is known down, `g` starts on n1.
    let f = facts(&[Down, Up, Up], 2);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(1));
    // A group seen running on a live node does not wait for the lost one.
    let mut f = facts(&[Unsafe, Up, Up], 2);
    running(&mut f, 0, 1);
    let p = place(&t, &f);
    assert_eq!(p.groups[0].node, Some(1));
    assert_eq!(p.groups[0].reason, Reason::Stays);
}
