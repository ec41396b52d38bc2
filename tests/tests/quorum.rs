//! Quorum, partitions and fencing before takeover, on real networks.
//! Needs root.

use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::Proc;
use testbed::cluster::{Cluster, Spec};

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn ts(e: &Value) -> u64 {
    e["ts_ms"].as_u64().unwrap_or(0)
}

fn kinds(c: &Cluster, k: usize) -> Vec<String> {
    c.events(k)
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

fn converged(spec: &Spec, prepare: impl FnOnce(&std::path::Path)) -> Cluster {
    let c = ok(Cluster::start_with(spec, prepare));
    ok(c.wait_converged(Duration::from_secs(10)));
    c
}

#[test]
fn partition_2_1_single_node_stops_and_self_fences_pair_waits_for_the_lease() {
    let (lease_ms, margin_ms) = (2000, 500);
    let mut c = converged(
        &Spec {
            watchdog: format!(
                "kind = \"process\"\nlease = \"{lease_ms}ms\"\nmargin = \"{margin_ms}ms\""
            ),
            ..Spec::default()
        },
        |_| {},
    );
    let cut = Instant::now();
    ok(c.net.partition(&[0, 1], &[2]));

    // The single node loses quorum and stops its groups.
    ok(c.wait_event(2, "quorum_lost", Duration::from_secs(5), |_| true));
    ok(
        c.wait_event(2, "groups_stopped", Duration::from_secs(5), |e| {
            e["why"] == "quorum lost"
        }),
    );
    // The pair keeps quorum; its coordinator (n0) waits out n2's lease.
    let wait = ok(c.wait_event(0, "lease_wait", Duration::from_secs(5), |e| {
        e["peer"] == "n2"
    }));
    let lost = ok(c.wait_event(0, "peer_lost", Duration::from_secs(5), |e| {
        e["peer"] == "n2"
    }));
    assert!(!kinds(&c, 0).iter().any(|k| k == "quorum_lost"));
    assert!(!kinds(&c, 1).iter().any(|k| k == "quorum_lost"));
    assert!(
        !kinds(&c, 1).iter().any(|k| k == "lease_wait"),
        "only the coordinator acts"
    );
    assert!(
        wait["wait_ms"].as_u64().unwrap_or(0) >= lease_ms + margin_ms - 100,
        "{wait}"
    );

    // n2's watchdog keeper kills it once its lease runs out...
    let mut n2_gone = None;
    let allowed = loop {
        if n2_gone.is_none() && c.exited(2) {
            n2_gone = Some(cluster_core::events::now_ms());
        }
        if let Some(e) = c
            .events(0)
            .into_iter()
            .find(|e| e["kind"] == "takeover_allowed" && e["peer"] == "n2")
        {
            break e;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "no takeover_allowed: {:?}",
            kinds(&c, 0)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(allowed["by"], "lease");
    // ...which is before the pair may take its groups over.
    let gone =
        n2_gone.unwrap_or_else(|| panic!("n2 still runs when takeover is allowed:\n{}", c.log(2)));
    assert!(
        gone <= ts(&allowed),
        "n2 died at {gone}, takeover allowed at {}",
        ts(&allowed)
    );
    assert!(ts(&allowed) - ts(&lost) >= lease_ms + margin_ms - 100);
    assert!(
        c.log(2).contains("lease of 2000 ms expired"),
        "{}",
        c.log(2)
    );
}

#[test]
fn two_nodes_and_a_witness_exactly_one_side_keeps_quorum() {
    // Node namespaces 0 and 1 run the cluster; 2 runs the witness.
    let c = ok(Cluster::start_with(
        &Spec {
            nodes: 2,
            bystanders: 1,
            extra: "[quorum]\nwitness = { url = \"http://10.0.0.3:7450\", timeout = \"500ms\", lease = \"3s\" }\n".into(),
            ..Spec::default()
        },
        |_| {},
    ));
    let mut cmd = c.net.command(2, &testbed::bin("cluster-witness"));
    cmd.args(["--listen", "10.0.0.3:7450"]);
    let _witness = ok(Proc::from_command(
        "witness",
        cmd,
        &c.dir().join("witness.log"),
    ));
    ok(c.wait_converged(Duration::from_secs(10)));

    ok(c.net.partition(&[0], &[1]));
    ok(testbed::wait_until(
        "exactly one side quorate",
        Duration::from_secs(5),
        || {
            let q: Vec<Option<bool>> = (0..2).map(|k| c.quorate(k)).collect();
            q == [Some(true), Some(false)] || q == [Some(false), Some(true)]
        },
    ));
    // And it stays that way.
    std::thread::sleep(Duration::from_secs(3));
    let q: Vec<Option<bool>> = (0..2).map(|k| c.quorate(k)).collect();
    assert!(
        q == [Some(true), Some(false)] || q == [Some(false), Some(true)],
        "{q:?}"
    );
    let loser = usize::from(q[0] == Some(true));
    ok(
        c.wait_event(loser, "quorum_lost", Duration::from_secs(1), |e| {
            e["reason"].as_str().is_some_and(|r| r.contains("witness"))
        }),
    );
    // Healing gives both nodes quorum again.
    ok(c.net.heal());
    ok(testbed::wait_until(
        "both quorate again",
        Duration::from_secs(5),
        || c.quorate(0) == Some(true) && c.quorate(1) == Some(true),
    ));
}

#[test]
fn two_nodes_without_a_witness_the_ping_tie_break_picks_the_preferred_side() {
    // Namespace 2 is the "gateway" both nodes ping.
    let c = converged(
        &Spec {
            nodes: 2,
            bystanders: 1,
            extra: "[quorum]\nping_targets = [\"10.0.0.3\"]\nping_timeout = \"300ms\"\n".into(),
            ..Spec::default()
        },
        |_| {},
    );
    ok(c.net.partition(&[0], &[1]));
    ok(c.wait_event(1, "quorum_lost", Duration::from_secs(5), |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fence the preferred"))
    }));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.quorate(0),
        Some(true),
        "the preferred node reaches the target and keeps quorum"
    );
    assert_eq!(
        c.quorate(1),
        Some(false),
        "the other cannot fence it, so it must not act"
    );
}

#[test]
fn the_preferred_node_cut_from_the_target_loses_and_the_other_fences_it_to_win() {
    let c = converged(
        &Spec {
            nodes: 2,
            bystanders: 1,
            extra: concat!(
                "[quorum]\nping_targets = [\"10.0.0.3\"]\nping_timeout = \"300ms\"\n",
                "[[fencing]]\nname = \"dummy\"\nkind = \"agent\"\nagent = \"fence_dummy\"\n",
                "targets = [\"n0\", \"n1\"]\ndelay = \"1s\"\n",
                "params = { type = \"file\", status_file = \"{dir}/power\" }\n",
            )
            .into(),
            ..Spec::default()
        },
        |dir| {
            let _ = std::fs::write(dir.join("power"), "on");
        },
    );
    // n0 loses its only link: it sees neither n1 nor the gateway.
    ok(c.net.link_down(0, 0));
    ok(c.wait_event(0, "quorum_lost", Duration::from_secs(5), |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no ping target"))
    }));
    // n1 reaches the gateway but is not preferred: it fences n0 first.
    let started = ok(
        c.wait_event(1, "fence_started", Duration::from_secs(5), |e| {
            e["peer"] == "n0"
        }),
    );
    let fenced = ok(
        c.wait_event(1, "fence_succeeded", Duration::from_secs(15), |e| {
            e["peer"] == "n0"
        }),
    );
    let gained = ok(
        c.wait_event(1, "quorum_gained", Duration::from_secs(5), |e| {
            e["reason"].as_str().is_some_and(|r| r.contains("fenced"))
        }),
    );
    assert!(ts(&gained) >= ts(&fenced), "quorum only after the fence");
    // The two-node fence delay (at least 5 s in all) was waited.
    assert!(
        ts(&fenced) - ts(&started) >= 5000 - 100,
        "{started} {fenced}"
    );
    assert_eq!(
        std::fs::read_to_string(c.dir().join("power"))
            .unwrap_or_default()
            .trim(),
        "off"
    );
}

#[test]
fn a_fence_agent_that_fails_twice_delays_takeover_until_it_succeeds() {
    let script = "#!/bin/sh\ncat > /dev/null\nn=$(cat {dir}/count 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > {dir}/count\n[ $n -ge 3 ]\n";
    let mut c = converged(
        &Spec {
            extra: concat!(
                "[[fencing]]\nname = \"flaky\"\nkind = \"agent\"\nagent = \"{dir}/flaky-agent\"\n",
                "targets = [\"n0\", \"n1\", \"n2\"]\ntimeout = \"5s\"\n",
            )
            .into(),
            // A lease would also make the node safe: without one, only the fence can.
            ..Spec::default()
        },
        |dir| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join("flaky-agent");
            let _ = std::fs::write(&path, script.replace("{dir}", &dir.display().to_string()));
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
        },
    );
    c.kill(2);
    let allowed = ok(
        c.wait_event(0, "takeover_allowed", Duration::from_secs(15), |e| {
            e["peer"] == "n2"
        }),
    );
    assert_eq!(allowed["by"], "fence");
    let events = c.events(0);
    let seq: Vec<&str> = events
        .iter()
        .filter(|e| e["peer"] == "n2")
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("fence") || k.starts_with("takeover"))
        .collect();
    assert_eq!(
        seq,
        [
            "fence_started",
            "fence_failed",
            "fence_failed",
            "fence_succeeded",
            "takeover_allowed"
        ],
        "{events:?}"
    );
    // The backoff (1 s, then 2 s) was waited between the attempts.
    let at = |kind: &str| events.iter().find(|e| e["kind"] == kind).map_or(0, ts);
    assert!(
        at("fence_succeeded") - at("fence_started") >= 3000 - 100,
        "{events:?}"
    );
    let failures: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "fence_failed")
        .map(|e| e["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(failures, [1, 2]);
    // Only the coordinator fenced.
    assert!(
        !kinds(&c, 1).iter().any(|k| k.starts_with("fence")),
        "{:?}",
        kinds(&c, 1)
    );
    assert_eq!(
        std::fs::read_to_string(c.dir().join("count"))
            .unwrap_or_default()
            .trim(),
        "3"
    );
}

#[test]
fn a_lost_node_with_neither_fence_nor_lease_blocks_takeover() {
    let mut c = converged(&Spec::default(), |_| {});
    c.kill(2);
    let blocked = ok(
        c.wait_event(0, "takeover_blocked", Duration::from_secs(5), |e| {
            e["peer"] == "n2"
        }),
    );
    assert!(
        blocked["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no fence device"))
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!kinds(&c, 0).iter().any(|k| k == "takeover_allowed"));
    let s = ok(c.status(0));
    assert_eq!(
        s.takeovers.first().map(|t| t.state.as_str()),
        Some("blocked")
    );
}

#[test]
fn a_node_slow_to_start_is_waited_for_not_fenced() {
    // n2 cannot be heard for its first 3 s (nftables, in place before any
    // daemon starts): longer than the heartbeat timeout (500 ms), shorter
    // than initdead (30 s by default). The others wait for it: no fence,
    // and `late`, which prefers n2, is held rather than started on n0.
    let spec = Spec {
        extra: format!(
            "{}[[groups]]\nname = \"late\"\nnodes = [\"n2\", \"n0\"]\n",
            testbed::fence::config(3)
        ),
        ..Spec::default()
    };
    let c = ok(Cluster::start_with_net(&spec, |dir, net| {
        testbed::fence::install(dir);
        net.partition(&[0, 1], &[2])
    }));
    testbed::fence::arm(&c);
    std::thread::sleep(Duration::from_secs(3));
    for k in [0, 1] {
        let events = kinds(&c, k);
        assert!(
            !events
                .iter()
                .any(|e| e == "peer_lost" || e.starts_with("fence")),
            "n{k} gave n2 up: {events:?}"
        );
    }
    let late = |k: usize| {
        c.status(k)
            .ok()
            .and_then(|s| s.groups.into_iter().find(|g| g.name == "late"))
    };
    assert!(
        late(0).is_some_and(|g| g.owner.is_none()),
        "late started without n2: {:?}",
        late(0)
    );

    // n2 can be heard: it joins, and `late` runs there.
    ok(c.net.heal());
    ok(testbed::wait_until(
        "late running on n2",
        Duration::from_secs(10),
        || late(0).is_some_and(|g| g.owner.as_deref() == Some("n2")),
    ));
    assert!(testbed::fence::fenced(c.dir()).is_empty());
}
