use std::net::IpAddr;
use std::time::Duration;

use cluster_core::resource::{ActionOutcome, Probe, ResourceDriver};

use super::*;
use crate::floating_ip::FloatingIpDriver;
use crate::testnet::{Pair, ctx, ip, run_in};

const CHECK: Duration = Duration::from_secs(2);

fn nic(interface: &str) -> NicMonitor {
    nic_every(interface, Duration::from_secs(1), Vec::new())
}

fn nic_every(interface: &str, interval: Duration, addresses: Vec<WatchedAddress>) -> NicMonitor {
    NicMonitor::new(
        &conf::NicMonitor {
            interface: interface.into(),
        },
        interval,
        addresses,
    )
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

/// Run `ip ARGS` (async, so that the monitor's watcher runs meanwhile).
async fn ip_async(args: &[&str]) {
    let status = tokio::process::Command::new("ip")
        .args(args)
        .status()
        .await
        .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    assert!(status.success(), "ip {}", args.join(" "));
}

/// Set `eth0` of `ns` down and at once up again (one `ip -batch`, a
/// bounce of about a millisecond).
async fn bounce(ns: &str) -> Instant {
    let started = Instant::now();
    let status = tokio::process::Command::new("sh")
        .args([
            "-c",
            &format!("ip -n {ns} link set eth0 down && ip -n {ns} link set eth0 up"),
        ])
        .status()
        .await
        .unwrap_or_else(|e| panic!("bounce: {e}"));
    assert!(status.success(), "bounce");
    started
}

/// Wait until `eth0` of the current namespace is usable again after a
/// bounce (veth carrier comes back at once; give the kernel a moment).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[test]
fn nic_monitor_fails_once_for_a_bounce_between_two_checks() {
    let net = Pair::new();
    let a = net.a.clone();
    run_in(&net.a, move || async move {
        let interval = Duration::from_millis(500);
        let m = nic_every("eth0", interval, Vec::new());
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);
        // As the engine runs it: a check, a bounce well inside the
        // interval, the next check an interval after the first.
        let first = Instant::now();
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);
        let bounced = bounce(&a).await;
        eprintln!(
            "nic monitor: link down and up again in {:?}",
            bounced.elapsed()
        );
        tokio::time::sleep_until(first + interval).await;
        let o = m.check(CHECK).await;
        let why = failed(&o).unwrap_or_else(|| panic!("the bounce went unnoticed"));
        assert!(why.contains("was unusable since the last check"), "{why}");
        assert!(why.contains("interface `eth0` is down"), "{why}");
        // Once: the link is fine now.
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);

        // A check that fails reports the outage; the bounce's end is not
        // reported again by the check after it.
        ip_async(&["-n", &a, "link", "set", "eth0", "down"]).await;
        settle().await;
        assert_eq!(
            failed(&m.check(CHECK).await),
            Some("interface `eth0` is down")
        );
        ip_async(&["-n", &a, "link", "set", "eth0", "up"]).await;
        settle().await;
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);

        // A bounce older than two intervals (the group ran elsewhere
        // meanwhile) is not this run's.
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);
        bounce(&a).await;
        tokio::time::sleep(interval * 2 + Duration::from_millis(100)).await;
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);
    });
}

fn watched(resource: &str, address: &str) -> WatchedAddress {
    WatchedAddress {
        resource: resource.into(),
        address: address.parse().unwrap_or_else(|e| panic!("{address}: {e}")),
    }
}

fn vip(address: &str) -> FloatingIpDriver {
    FloatingIpDriver::new(conf::FloatingIpResource {
        address: address.parse().unwrap_or_else(|e| panic!("{address}: {e}")),
        interface: "eth0".into(),
        announcements: 0,
    })
}

#[test]
fn nic_monitor_fails_when_a_floating_address_is_gone() {
    let net = Pair::new();
    let a = net.a.clone();
    let times = run_in(&net.a, move || async move {
        let interval = Duration::from_millis(500);
        let m = nic_every(
            "eth0",
            interval,
            vec![watched("vip4", "10.77.0.100"), watched("vip6", "fd77::100")],
        );
        // Not there yet.
        let why = failed(&m.check(CHECK).await).map(str::to_owned);
        let why = why.unwrap_or_else(|| panic!("passed without the addresses"));
        assert!(
            why.contains("floating address 10.77.0.100 (resource `vip4`) is not on `eth0`")
                && why.contains("fd77::100 (resource `vip6`)"),
            "{why}"
        );
        let (v4, v6) = (vip("10.77.0.100/24"), vip("fd77::100/64"));
        let (c4, c6) = (ctx("vip4", CHECK), ctx("vip6", CHECK));
        assert_eq!(v4.start(&c4).await, ActionOutcome::Ok);
        assert_eq!(v6.start(&c6).await, ActionOutcome::Ok);
        assert_eq!(m.check(CHECK).await, CheckOutcome::Ok);

        // `ip addr del`: the next check fails, naming the address.
        let is_ok = |o: &CheckOutcome| *o == CheckOutcome::Ok;
        let t = Instant::now();
        ip_async(&["-n", &a, "addr", "del", "10.77.0.100/24", "dev", "eth0"]).await;
        let o = m.check(CHECK).await;
        let deleted = t.elapsed();
        assert_eq!(
            failed(&o),
            Some("floating address 10.77.0.100 (resource `vip4`) is not on `eth0` any more")
        );
        assert_eq!(v4.probe(&c4).await, Probe::Stopped);
        assert_eq!(v6.probe(&c6).await, Probe::Running);
        // A restart of the resource adds it again.
        assert_eq!(v4.start(&c4).await, ActionOutcome::Ok);
        assert!(is_ok(&m.check(CHECK).await));

        // A bounce: the kernel drops the IPv6 address (not the IPv4 one).
        let first = Instant::now();
        assert!(is_ok(&m.check(CHECK).await));
        let t = bounce(&a).await;
        tokio::time::sleep_until(first + interval).await;
        let o = m.check(CHECK).await;
        let bounced = t.elapsed();
        let why = failed(&o).unwrap_or_else(|| panic!("the bounce went unnoticed"));
        assert!(why.contains("was unusable since the last check"), "{why}");
        // Then the address the kernel dropped with the link.
        let o = m.check(CHECK).await;
        assert_eq!(
            failed(&o),
            Some("floating address fd77::100 (resource `vip6`) is not on `eth0` any more")
        );
        assert_eq!(v6.probe(&c6).await, Probe::Stopped);
        assert_eq!(v4.probe(&c4).await, Probe::Running);
        assert_eq!(v6.start(&c6).await, ActionOutcome::Ok);
        assert!(is_ok(&m.check(CHECK).await));

        // `ip addr del` of the IPv6 address, without any bounce.
        let t = Instant::now();
        ip_async(&["-n", &a, "addr", "del", "fd77::100/64", "dev", "eth0"]).await;
        let o = m.check(CHECK).await;
        let deleted6 = t.elapsed();
        assert!(failed(&o).is_some_and(|w| w.contains("fd77::100")), "{o:?}");
        assert_eq!(v6.probe(&c6).await, Probe::Stopped);
        [
            ("IPv4 deleted, next check", deleted),
            ("link bounced, check at the next interval (500 ms)", bounced),
            ("IPv6 deleted, next check", deleted6),
        ]
    });
    for (what, took) in times {
        eprintln!("nic monitor with floating addresses: {what}: failed after {took:?}");
        assert!(took < Duration::from_secs(1), "{what}: {took:?}");
    }
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
