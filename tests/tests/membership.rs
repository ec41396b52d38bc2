//! Membership on real networks: daemons in network namespaces, faults
//! injected with `ip link`, nftables and signals. Needs root.

use std::time::{Duration, Instant};

use cluster_core::membership::wire::{self, ClusterKey, Heartbeat, View};
use cluster_core::status::MemberState;
use nix::sys::signal::Signal;
use testbed::cluster::{Cluster, Spec};

const TIMEOUT_MS: u64 = 500;

fn spec(nodes: usize, links: usize) -> Spec {
    Spec {
        nodes,
        links,
        // Two-node clusters must name a tie-break; membership tests do not use it.
        extra: if nodes == 2 {
            "[quorum]\nping_targets = [\"10.0.0.250\"]\n".into()
        } else {
            String::new()
        },
        ..Spec::default()
    }
}

fn start(spec: &Spec) -> Cluster {
    let c = Cluster::start(spec).unwrap_or_else(|e| panic!("{e:#}"));
    c.wait_converged(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.log(0)));
    c
}

fn member_state(c: &Cluster, k: usize, of: usize) -> Option<MemberState> {
    c.status(k).ok().map(|s| s.members[of].state)
}

#[test]
fn three_nodes_kill_one_the_others_see_it_lost_within_the_timeout() {
    let mut c = start(&spec(3, 1));
    let killed_at = Instant::now();
    c.kill(2);
    for k in [0, 1] {
        let e = c
            .wait_event(k, "peer_lost", Duration::from_secs(5), |e| {
                e["peer"] == "n2"
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        let silent = e["silent_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(
            (TIMEOUT_MS..TIMEOUT_MS + 150).contains(&silent),
            "n{k} declared n2 lost after {silent} ms of silence"
        );
    }
    assert!(killed_at.elapsed() < Duration::from_millis(TIMEOUT_MS + 1500));
    // The survivors still see each other.
    assert_eq!(member_state(&c, 0, 1), Some(MemberState::Alive));
    assert_eq!(member_state(&c, 1, 0), Some(MemberState::Alive));
    assert_eq!(member_state(&c, 0, 2), Some(MemberState::Lost));
    // Two of three votes: the survivors keep quorum and never lost it.
    std::thread::sleep(Duration::from_millis(300));
    for k in [0, 1] {
        assert_eq!(c.quorate(k), Some(true), "n{k} lost quorum");
        assert!(
            !c.events(k).iter().any(|e| e["kind"] == "quorum_lost"),
            "n{k}: {:?}",
            c.events(k)
        );
    }
}

#[test]
fn one_of_two_links_cut_is_an_alert_not_a_node_loss() {
    let c = start(&spec(2, 2));
    c.net.link_down(1, 0).unwrap_or_else(|e| panic!("{e:#}"));
    c.wait_event(0, "link_down", Duration::from_secs(5), |e| {
        e["peer"] == "n1" && e["link"] == "l0"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_millis(3 * TIMEOUT_MS));
    assert!(
        !c.events(0).iter().any(|e| e["kind"] == "peer_lost"),
        "a single link failure must not lose the node: {:?}",
        c.events(0)
    );
    let s = c.status(0).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(s.members[1].state, MemberState::Alive);
    let links: Vec<(String, bool)> = s.members[1]
        .links
        .iter()
        .map(|l| (l.name.clone(), l.up))
        .collect();
    assert_eq!(links, [("l0".to_owned(), false), ("l1".to_owned(), true)]);

    c.net.link_up(1, 0).unwrap_or_else(|e| panic!("{e:#}"));
    c.wait_event(0, "link_up", Duration::from_secs(5), |e| {
        e["peer"] == "n1" && e["link"] == "l0"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn both_links_cut_loses_the_node_and_it_comes_back() {
    let c = start(&spec(2, 2));
    c.net.link_down(1, 0).unwrap_or_else(|e| panic!("{e:#}"));
    c.net.link_down(1, 1).unwrap_or_else(|e| panic!("{e:#}"));
    c.wait_event(0, "peer_lost", Duration::from_secs(5), |e| {
        e["peer"] == "n1"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    c.net.link_up(1, 1).unwrap_or_else(|e| panic!("{e:#}"));
    c.wait_event(0, "peer_alive", Duration::from_secs(5), |_| true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    testbed::wait_until("n0 to see n1 alive again", Duration::from_secs(5), || {
        member_state(&c, 0, 1) == Some(MemberState::Alive)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn a_stopped_daemon_is_lost_and_found_again() {
    let mut c = start(&spec(3, 1));
    let p = c.daemon(2).map(|d| d.signal(Signal::SIGSTOP));
    assert!(matches!(p, Some(Ok(()))));
    c.wait_event(0, "peer_lost", Duration::from_secs(5), |e| {
        e["peer"] == "n2"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let p = c.daemon(2).map(|d| d.signal(Signal::SIGCONT));
    assert!(matches!(p, Some(Ok(()))));
    testbed::wait_until("n0 to see n2 alive again", Duration::from_secs(5), || {
        member_state(&c, 0, 2) == Some(MemberState::Alive)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn random_loss_of_30_percent_on_two_links_loses_no_node() {
    let c = start(&spec(2, 2));
    c.net.random_loss(0, 30).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !c.events(0).iter().any(|e| e["kind"] == "peer_lost"),
        "{:?}",
        c.events(0)
    );
    c.net.heal().unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn ipv6_only_cluster_works() {
    let mut c = start(&Spec {
        ipv4: false,
        ipv6: true,
        ..spec(3, 1)
    });
    c.kill(1);
    c.wait_event(0, "peer_lost", Duration::from_secs(5), |e| {
        e["peer"] == "n1"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(member_state(&c, 2, 0), Some(MemberState::Alive));
}

#[test]
fn a_dual_stack_link_counts_no_replays_and_survives_the_loss_of_ipv4() {
    // Every beat goes to each peer's IPv4 and IPv6 address on the link:
    // two copies, each its own path, neither a replay.
    let c = start(&Spec {
        ipv4: true,
        ipv6: true,
        ..spec(3, 1)
    });
    std::thread::sleep(Duration::from_secs(2));
    for k in 0..3 {
        let s = c.status(k).unwrap_or_else(|e| panic!("{e:#}"));
        for (of, m) in s.members.iter().enumerate() {
            assert_eq!(
                m.dropped.unwrap_or_default(),
                Default::default(),
                "n{k} dropped heartbeats of n{of} on a healthy cluster: {m:?}"
            );
        }
    }
    // IPv4 lost on n1's link (nftables drops it both ways): IPv6 alone
    // keeps the link up, with no alert and no loss.
    let since = cluster_core::events::now_ms();
    c.net
        .drop_family(1, true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_millis(3 * TIMEOUT_MS));
    for k in [0, 2] {
        assert_eq!(member_state(&c, k, 1), Some(MemberState::Alive));
        assert!(
            !c.events(k).iter().any(|e| {
                ["peer_lost", "link_down"].contains(&e["kind"].as_str().unwrap_or(""))
                    && e["ts_ms"].as_u64() >= Some(since)
            }),
            "n{k} saw n1 or its link go: {:?}",
            c.events(k)
        );
    }
}

/// Send raw datagrams to node `to` from inside node `from`'s namespace.
fn send_from(c: &Cluster, from: usize, to: usize, datagrams: &[Vec<u8>]) {
    let hexes: Vec<String> = datagrams.iter().map(|d| hex_encode(d)).collect();
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor h in sys.argv[1:]:\n    s.sendto(bytes.fromhex(h),('{}',5405))\n",
        c.net.v4(to, 0)
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &c.net.ns(from), "python3", "-c", &script])
        .args(&hexes)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn forged_replayed_stale_and_truncated_heartbeats_are_dropped_and_counted() {
    let c = start(&spec(3, 1));
    let secret = std::fs::read(c.dir().join("cluster.key")).unwrap_or_default();
    let key = ClusterKey::new("test", secret.trim_ascii());
    let wrong = ClusterKey::new("test", b"not-the-cluster-key-at-all");
    let incarnation = c
        .events(0)
        .iter()
        .find(|e| e["kind"] == "daemon_started")
        .and_then(|e| e["incarnation"].as_u64());
    let incarnation = incarnation.unwrap_or_else(|| panic!("no incarnation for n0"));
    let hb = |incarnation, seq| Heartbeat {
        link: 0,
        sender: 0,
        incarnation,
        seq,
        view: View::default(),
    };
    let enc = |key: &ClusterKey, h: &Heartbeat| wire::encode(key, h).unwrap_or_default();
    let genuine = enc(&key, &hb(incarnation, 1)); // seq 1 was sent long ago: a replay
    let datagrams = vec![
        enc(&wrong, &hb(incarnation, u64::MAX / 2)),   // forged
        genuine.clone(),                               // replayed
        enc(&key, &hb(incarnation - 1, u64::MAX / 2)), // stale incarnation
        genuine[..genuine.len() / 2].to_vec(),         // truncated
        b"garbage that is not a heartbeat".to_vec(),   // malformed, anonymous
    ];
    // Sent from n2's namespace, claiming to be n0.
    send_from(&c, 2, 1, &datagrams);
    testbed::wait_until("n1 to count the drops", Duration::from_secs(5), || {
        c.status(1).is_ok_and(|s| {
            s.members[0].dropped.is_some_and(|d| {
                d.forged == 1 && d.replayed == 1 && d.stale == 1 && d.malformed == 1
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", c.status(1).map(|s| s.members[0].clone())));
    // None of them disturbed membership.
    assert_eq!(member_state(&c, 1, 0), Some(MemberState::Alive));
    assert!(c.log(1).contains("heartbeat dropped"), "drops are logged");
}
