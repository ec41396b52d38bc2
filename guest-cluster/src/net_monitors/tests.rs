use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::testnet::{Pair, ip, run_in};

const CHECK: Duration = Duration::from_secs(2);

fn nic(interface: &str) -> NicMonitor {
    NicMonitor::new(&conf::NicMonitor {
        interface: interface.into(),
    })
}

fn failed(outcome: &CheckOutcome) -> Option<&str> {
    match outcome {
        CheckOutcome::Ok => None,
        CheckOutcome::Failed(why) => Some(why),
    }
}

/// Run `ip ARGS` and check `monitor` every millisecond until its outcome
/// satisfies `done`; the time from just before the command to that
/// outcome, and the outcome.
async fn react(
    monitor: &NicMonitor,
    args: &[&str],
    done: impl Fn(&CheckOutcome) -> bool,
) -> (Duration, CheckOutcome) {
    let started = Instant::now();
    let status = tokio::process::Command::new("ip")
        .args(args)
        .status()
        .await
        .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    assert!(status.success(), "ip {}", args.join(" "));
    loop {
        let outcome = monitor.check(CHECK).await;
        if done(&outcome) {
            return (started.elapsed(), outcome);
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no reaction to ip {}: still {outcome:?}",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn nic_monitor_reacts_to_link_changes_within_a_second() {
    let net = Pair::new();
    let (a, b) = (net.a.clone(), net.b.clone());
    let times = run_in(&net.a, move || async move {
        let m = nic("eth0");
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);
        // Checks read the kept state: they do not wait for the kernel.
        let t = Instant::now();
        for _ in 0..100 {
            assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);
        }
        let per_check = t.elapsed() / 100;

        let is_ok = |o: &CheckOutcome| *o == CheckOutcome::Ok;
        let down = |o: &CheckOutcome| !is_ok(o);
        let (own_down, o) = react(&m, &["-n", &a, "link", "set", "eth0", "down"], down).await;
        assert_eq!(failed(&o), Some("interface `eth0` is down"));
        let (own_up, _) = react(&m, &["-n", &a, "link", "set", "eth0", "up"], is_ok).await;
        let (peer_down, o) = react(&m, &["-n", &b, "link", "set", "eth0", "down"], down).await;
        assert_eq!(failed(&o), Some("interface `eth0` has no carrier"));
        let (peer_up, _) = react(&m, &["-n", &b, "link", "set", "eth0", "up"], is_ok).await;
        let (deleted, o) = react(&m, &["-n", &a, "link", "del", "eth0"], down).await;
        assert_eq!(failed(&o), Some("interface `eth0` does not exist"));
        // A new link of that name is followed too.
        let (created, o) = react(
            &m,
            &[
                "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
                &b,
            ],
            |o| failed(o) != Some("interface `eth0` does not exist"),
        )
        .await;
        assert_eq!(failed(&o), Some("interface `eth0` is down"));
        [
            ("check", per_check),
            ("own link down", own_down),
            ("own link up", own_up),
            ("peer down (carrier lost)", peer_down),
            ("peer up", peer_up),
            ("link deleted", deleted),
            ("link created", created),
        ]
    });
    for (what, took) in times {
        eprintln!("nic monitor: {what}: {took:?}");
        assert!(took < Duration::from_secs(1), "{what}: {took:?}");
    }
}

#[test]
fn nic_monitor_fails_for_a_missing_interface() {
    let net = Pair::new();
    run_in(&net.a, move || async move {
        let m = nic("nope0");
        assert_eq!(
            m.check(CHECK).await,
            CheckOutcome::Failed("interface `nope0` does not exist".into())
        );
    });
}

fn pinger(targets: &[&str]) -> IpMonitor {
    IpMonitor::new(&conf::IpMonitor {
        targets: targets
            .iter()
            .map(|t| t.parse::<IpAddr>().unwrap_or_else(|e| panic!("{t}: {e}")))
            .collect(),
    })
}

#[test]
fn ip_monitor_passes_when_any_target_answers() {
    let net = Pair::new();
    ip(&["-n", &net.a, "addr", "add", "10.78.0.1/24", "dev", "eth0"]);
    ip(&["-n", &net.b, "addr", "add", "10.78.0.2/24", "dev", "eth0"]);
    ip(&[
        "-n",
        &net.a,
        "addr",
        "add",
        "fd78::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ip(&[
        "-n",
        &net.b,
        "addr",
        "add",
        "fd78::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let b = net.b.clone();
    run_in(&net.a, move || async move {
        let timeout = Duration::from_secs(1);
        assert_eq!(
            pinger(&["10.78.0.2"]).check(timeout).await,
            CheckOutcome::Ok
        );
        assert_eq!(pinger(&["fd78::2"]).check(timeout).await, CheckOutcome::Ok);
        // One silent target among answering ones is fine, and does not
        // make the check wait for it.
        let t = Instant::now();
        assert_eq!(
            pinger(&["10.78.0.9", "fd78::9", "10.78.0.2"])
                .check(timeout)
                .await,
            CheckOutcome::Ok
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );

        // No target answers: failed, by the timeout.
        let timeout = Duration::from_millis(600);
        let t = Instant::now();
        let outcome = pinger(&["10.78.0.9", "fd78::9"]).check(timeout).await;
        let took = t.elapsed();
        let why = failed(&outcome).unwrap_or_else(|| panic!("passed with no answer"));
        assert!(why.contains("no ping target answered"), "{why}");
        assert!(
            why.contains("10.78.0.9") && why.contains("fd78::9"),
            "{why}"
        );
        assert!(took >= timeout - Duration::from_millis(10), "{took:?}");
        assert!(took < timeout + Duration::from_millis(200), "{took:?}");

        // The peer goes away: its answers stop.
        ip(&["-n", &b, "link", "set", "eth0", "down"]);
        assert!(failed(&pinger(&["10.78.0.2", "fd78::2"]).check(timeout).await).is_some());
    });
}

#[test]
fn ip_monitor_retries_within_the_timeout() {
    let net = Pair::new();
    ip(&["-n", &net.a, "addr", "add", "10.78.0.1/24", "dev", "eth0"]);
    ip(&["-n", &net.b, "addr", "add", "10.78.0.2/24", "dev", "eth0"]);
    // The peer drops every third echo request, starting with the first.
    for rule in [
        "add table inet kvmha",
        "add chain inet kvmha in { type filter hook input priority 0 ; }",
        "add rule inet kvmha in icmp type echo-request numgen inc mod 3 == 0 drop",
    ] {
        let args: Vec<&str> = ["netns", "exec", &net.b, "nft"]
            .into_iter()
            .chain(rule.split(' '))
            .collect();
        ip(&args);
    }
    run_in(&net.a, move || async move {
        let timeout = Duration::from_millis(900);
        let t = Instant::now();
        assert_eq!(
            pinger(&["10.78.0.2"]).check(timeout).await,
            CheckOutcome::Ok
        );
        // The second attempt, a third of the timeout later, answered.
        let took = t.elapsed();
        assert!(took >= timeout / PING_ATTEMPTS, "{took:?}");
        assert!(took < timeout / PING_ATTEMPTS * 2, "{took:?}");
    });
}
