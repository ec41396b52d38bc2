use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::testnet::{Pair, ctx, ip, join, run_in, spawn_in};

const TIMEOUT: Duration = Duration::from_secs(5);

fn driver(address: &str, interface: &str, announcements: u32) -> FloatingIpDriver {
    FloatingIpDriver::new(conf::FloatingIpResource {
        address: address.parse().unwrap_or_else(|e| panic!("{address}: {e}")),
        interface: interface.into(),
        announcements,
    })
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let parsed: MacAddr = mac.parse().unwrap_or_else(|e| panic!("{mac}: {e:?}"));
    parsed.octets()
}

// ---------------------------------------------------------------------------
// Without root: frames and plans.

const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const THEIRS: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn built<T>(frame: Option<T>) -> T {
    frame.unwrap_or_else(|| panic!("frame not built"))
}

#[test]
fn arp_frames_are_rfc5227_probes_and_announcements() {
    let addr = Ipv4Addr::new(192, 0, 2, 100);
    let probe = built(arp_request(OURS, Ipv4Addr::UNSPECIFIED, addr));
    assert_eq!(probe.len(), 42);
    let eth = built(EthernetPacket::new(&probe));
    assert_eq!(eth.get_destination(), MacAddr::broadcast());
    assert_eq!(eth.get_source().octets(), OURS);
    let arp = built(ArpPacket::new(eth.payload()));
    assert_eq!(arp.get_operation(), ArpOperations::Request);
    assert_eq!(arp.get_sender_proto_addr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(arp.get_target_proto_addr(), addr);

    // Our own frames are never a conflict; another node's probe for the
    // address, or any claim of it, is.
    assert_eq!(arp_conflict(&probe, OURS, addr), None);
    assert_eq!(arp_conflict(&probe, THEIRS, addr), Some(OURS));
    let announcement = built(arp_request(THEIRS, addr, addr));
    assert_eq!(arp_conflict(&announcement, OURS, addr), Some(THEIRS));
    let other = built(arp_request(THEIRS, Ipv4Addr::new(192, 0, 2, 7), addr));
    assert_eq!(arp_conflict(&other, OURS, addr), None, "a plain request");
    assert_eq!(
        arp_conflict(&announcement, OURS, Ipv4Addr::new(192, 0, 2, 101)),
        None
    );
}

#[test]
fn neighbour_adverts_carry_override_and_the_target_link_layer_address() {
    let addr: Ipv6Addr = "2001:db8::100".parse().unwrap_or_else(|e| panic!("{e}"));
    let frame = built(neighbour_advert(OURS, addr));
    let eth = built(EthernetPacket::new(&frame));
    assert_eq!(eth.get_destination(), ALL_NODES_MAC);
    let ip6 = built(Ipv6Packet::new(eth.payload()));
    assert_eq!(ip6.get_hop_limit(), 255);
    assert_eq!(ip6.get_source(), addr);
    assert_eq!(ip6.get_destination(), ALL_NODES);
    let icmp = built(Icmpv6Packet::new(ip6.payload()));
    assert_eq!(
        icmp.get_checksum(),
        pnet_packet::icmpv6::checksum(&icmp, &addr, &ALL_NODES)
    );
    let na = built(NeighborAdvertPacket::new(ip6.payload()));
    assert_eq!(na.get_icmpv6_type(), Icmpv6Types::NeighborAdvert);
    assert_eq!(na.get_flags(), NeighborAdvertFlags::Override);
    assert_eq!(na.get_target_addr(), addr);

    assert_eq!(nd_conflict(&frame, OURS, addr), None);
    assert_eq!(nd_conflict(&frame, THEIRS, addr), Some(OURS));
    let other: Ipv6Addr = "2001:db8::101".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(nd_conflict(&frame, THEIRS, other), None);
}

#[test]
fn probes_fit_in_half_the_timeout() {
    let normal = ProbePlan::within(Duration::from_secs(20));
    assert_eq!(
        (normal.probes, normal.interval, normal.listen),
        (PROBES, PROBE_INTERVAL, PROBE_LISTEN)
    );
    let short = ProbePlan::within(Duration::from_millis(400));
    assert_eq!(short.probes, PROBES);
    let total = short.interval * (short.probes - 1) + short.listen;
    assert!(total <= Duration::from_millis(201), "{total:?}");
}

#[test]
fn link_problems_name_the_interface() {
    let up = Link {
        index: 2,
        name: "eth0".into(),
        mac: Some(OURS),
        up: true,
        running: true,
        lower_up: true,
        carrier: Some(true),
        oper: Some(State::Up),
    };
    assert_eq!(up.problem(), None);
    let unknown = Link {
        oper: Some(State::Unknown),
        ..up.clone()
    };
    assert_eq!(
        unknown.problem(),
        None,
        "loopback and dummies report unknown"
    );
    let down = Link {
        up: false,
        ..up.clone()
    };
    assert_eq!(down.problem().as_deref(), Some("interface `eth0` is down"));
    let no_carrier = Link {
        carrier: Some(false),
        lower_up: false,
        oper: Some(State::LowerLayerDown),
        running: false,
        ..up.clone()
    };
    assert_eq!(
        no_carrier.problem().as_deref(),
        Some("interface `eth0` has no carrier")
    );
}

// ---------------------------------------------------------------------------
// With root: two namespaces joined by a veth pair.

/// What the peer saw of our frames.
#[derive(Debug, PartialEq)]
enum Seen {
    ArpProbe,
    Garp,
    Na,
}

/// Capture on `eth0` of `ns` for `window`, from the moment the returned
/// channel says it is listening. Only the frames from `from` for `addr`
/// are kept, with their time since the capture started.
fn capture(
    ns: &str,
    from: [u8; 6],
    addr: IpAddr,
    window: Duration,
) -> (
    mpsc::Receiver<()>,
    std::thread::JoinHandle<Vec<(Duration, Seen)>>,
) {
    let (ready_tx, ready) = mpsc::channel();
    let thread = spawn_in(ns, move || async move {
        let handle = connect().unwrap_or_else(|e| panic!("{e}"));
        let link = get_link(&handle, "eth0")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no eth0"));
        let mac = link.mac.unwrap_or_else(|| panic!("no MAC"));
        let mut frames = Frames::open(&link, mac).unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        ready_tx.send(()).unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Vec::new();
        while started.elapsed() < window {
            let Some(frame) = frames.next().unwrap_or_else(|e| panic!("{e}")) else {
                continue;
            };
            if let Some(s) = classify(frame, from, addr) {
                seen.push((started.elapsed(), s));
            }
        }
        seen
    });
    (ready, thread)
}

fn classify(frame: &[u8], from: [u8; 6], addr: IpAddr) -> Option<Seen> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_source().octets() != from {
        return None;
    }
    match addr {
        IpAddr::V4(addr) => {
            let arp = ArpPacket::new(eth.payload())?;
            if eth.get_ethertype() != EtherTypes::Arp
                || arp.get_operation() != ArpOperations::Request
                || arp.get_sender_hw_addr().octets() != from
                || arp.get_target_proto_addr() != addr
            {
                return None;
            }
            match arp.get_sender_proto_addr() {
                s if s.is_unspecified() => Some(Seen::ArpProbe),
                s if s == addr => Some(Seen::Garp),
                _ => None,
            }
        }
        IpAddr::V6(addr) => {
            let ip6 = Ipv6Packet::new(eth.payload())?;
            if eth.get_ethertype() != EtherTypes::Ipv6
                || ip6.get_next_header() != IpNextHeaderProtocols::Icmpv6
            {
                return None;
            }
            let na = NeighborAdvertPacket::new(ip6.payload())?;
            if na.get_icmpv6_type() != Icmpv6Types::NeighborAdvert || na.get_target_addr() != addr {
                return None;
            }
            // As RFC 4861 wants an unsolicited advertisement.
            assert_eq!(ip6.get_hop_limit(), 255);
            assert_eq!(ip6.get_destination(), ALL_NODES);
            assert_eq!(eth.get_destination(), ALL_NODES_MAC);
            assert_eq!(na.get_flags(), NeighborAdvertFlags::Override);
            let options = na.get_options();
            assert_eq!(options.len(), 1, "{options:?}");
            assert_eq!(options[0].option_type, NdpOptionTypes::TargetLLAddr);
            assert_eq!(options[0].data.get(..6), Some(&from[..]));
            Some(Seen::Na)
        }
    }
}

/// The announcements are `count`, about [`ANNOUNCE_INTERVAL`] apart.
fn assert_announcements(seen: &[(Duration, Seen)], kind: Seen, count: usize) {
    let times: Vec<Duration> = seen
        .iter()
        .filter(|(_, s)| *s == kind)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(times.len(), count, "{seen:?}");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= ANNOUNCE_INTERVAL - Duration::from_millis(20)
                && gap <= ANNOUNCE_INTERVAL + Duration::from_millis(150),
            "announcements {gap:?} apart: {seen:?}"
        );
    }
}

/// The neighbour entry for `addr` in `ns` (`ip neigh show` output).
fn neighbour(ns: &str, addr: &str) -> String {
    ip(&["-n", ns, "neigh", "show", addr, "dev", "eth0"])
}

/// Wait up to a second for the entry for `addr` in `ns` to show `mac`.
fn wait_for_neighbour(ns: &str, addr: &str, mac: &str) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let entry = neighbour(ns, addr);
        if entry.contains(mac) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the entry of {addr} in the peer still is `{}`, not {mac}",
            entry.trim()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn addresses(ns: &str) -> String {
    ip(&["-n", ns, "addr", "show", "dev", "eth0"])
}

#[test]
fn ipv4_is_probed_added_announced_and_removed() {
    let net = Pair::new();
    let our_mac = Pair::mac(&net.a);
    ip(&["-n", &net.b, "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    // The peer still has the old owner's MAC for the address.
    ip(&[
        "-n",
        &net.b,
        "neigh",
        "add",
        "10.77.0.100",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let addr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100));
    let (ready, capture) = capture(
        &net.b,
        mac_bytes(&our_mac),
        addr,
        Duration::from_millis(1500),
    );
    ready
        .recv()
        .unwrap_or_else(|e| panic!("capture did not start: {e}"));

    let (ns, peer, mac) = (net.a.clone(), net.b.clone(), our_mac.clone());
    let (started, updated) = run_in(&net.a, move || async move {
        let d = driver("10.77.0.100/24", "eth0", 3);
        let c = ctx("vip", TIMEOUT);
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        let t = Instant::now();
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        let took = t.elapsed();
        // The first announcement went out before the start returned.
        let updated = wait_for_neighbour(&peer, "10.77.0.100", &mac);
        assert!(addresses(&ns).contains("inet 10.77.0.100/24"));
        assert_eq!(d.probe(&c).await, Probe::Running);
        // Let the background announcements go out.
        tokio::time::sleep(Duration::from_millis(700)).await;
        (took, updated)
    });
    eprintln!("IPv4 start (3 ARP probes, add, first announcement): {started:?}");
    eprintln!("the peer's ARP entry showed our MAC {updated:?} after the start returned");
    assert!(started >= PROBE_INTERVAL * 2 + PROBE_LISTEN, "{started:?}");
    assert!(started < Duration::from_secs(1), "{started:?}");

    let seen = join(capture);
    let probes: Vec<_> = seen.iter().filter(|(_, s)| *s == Seen::ArpProbe).collect();
    assert_eq!(probes.len(), PROBES as usize, "{seen:?}");
    assert_announcements(&seen, Seen::Garp, 3);
    let last_probe = probes.iter().map(|(t, _)| *t).max();
    let first_garp = seen.iter().find(|(_, s)| *s == Seen::Garp).map(|(t, _)| *t);
    assert!(last_probe < first_garp, "{seen:?}");

    // A second start is fine (already present), stop removes, twice.
    let ns = net.a.clone();
    run_in(&net.a, move || async move {
        let d = driver("10.77.0.100/24", "eth0", 1);
        let c = ctx("vip", TIMEOUT);
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert!(!addresses(&ns).contains("10.77.0.100"));
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
    });
}

#[test]
fn ipv4_duplicate_is_a_hard_failure_naming_the_owner() {
    let net = Pair::new();
    let their_mac = Pair::mac(&net.b);
    // The old owner still holds the address.
    ip(&["-n", &net.b, "addr", "add", "10.77.0.100/24", "dev", "eth0"]);
    let ns = net.a.clone();
    run_in(&net.a, move || async move {
        let d = driver("10.77.0.100/24", "eth0", 3);
        let c = ctx("vip", TIMEOUT);
        let t = Instant::now();
        let outcome = d.start(&c).await;
        eprintln!("IPv4 duplicate detected in {:?}", t.elapsed());
        match outcome {
            ActionOutcome::Failed { message, hard } => {
                assert!(hard, "{message}");
                assert!(message.contains(&their_mac), "{message}");
                assert!(message.contains("10.77.0.100"), "{message}");
            }
            other => panic!("started over a live owner: {other:?}"),
        }
        assert!(!addresses(&ns).contains("10.77.0.100"));
        assert_eq!(d.probe(&c).await, Probe::Stopped);
    });
}

#[test]
fn ipv6_dad_passes_and_the_unsolicited_advert_updates_the_peer() {
    let net = Pair::new();
    let our_mac = Pair::mac(&net.a);
    ip(&[
        "-n",
        &net.b,
        "addr",
        "add",
        "fd77::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ip(&[
        "-n",
        &net.b,
        "-6",
        "neigh",
        "add",
        "fd77::100",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let addr: IpAddr = "fd77::100".parse().unwrap_or_else(|e| panic!("{e}"));
    let (ready, capture) = capture(
        &net.b,
        mac_bytes(&our_mac),
        addr,
        Duration::from_millis(1500),
    );
    ready
        .recv()
        .unwrap_or_else(|e| panic!("capture did not start: {e}"));

    let (ns, peer, mac) = (net.a.clone(), net.b.clone(), our_mac.clone());
    let (started, updated) = run_in(&net.a, move || async move {
        let d = driver("fd77::100/64", "eth0", 3);
        let c = ctx("vip6", TIMEOUT);
        assert_eq!(d.probe(&c).await, Probe::Stopped);
        let t = Instant::now();
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        let took = t.elapsed();
        let updated = wait_for_neighbour(&peer, "fd77::100", &mac);
        let shown = addresses(&ns);
        assert!(shown.contains("inet6 fd77::100/64"), "{shown}");
        assert!(!shown.contains("tentative"), "{shown}");
        assert_eq!(d.probe(&c).await, Probe::Running);
        tokio::time::sleep(Duration::from_millis(700)).await;
        (took, updated)
    });
    eprintln!("IPv6 start (DAD at 100 ms per probe, add, first NA): {started:?}");
    eprintln!("the peer's neighbour entry showed our MAC {updated:?} after the start returned");
    // DAD waited for the kernel's probe.
    assert!(started >= Duration::from_millis(100), "{started:?}");

    let seen = join(capture);
    assert_announcements(&seen, Seen::Na, 3);

    let ns = net.a.clone();
    run_in(&net.a, move || async move {
        let d = driver("fd77::100/64", "eth0", 1);
        let c = ctx("vip6", TIMEOUT);
        // Present and past DAD: no second DAD, fine.
        let t = Instant::now();
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        assert!(!addresses(&ns).contains("fd77::100"));
        assert_eq!(d.probe(&c).await, Probe::Stopped);
    });
}

#[test]
fn ipv6_dad_failure_is_a_hard_failure_naming_the_owner() {
    let net = Pair::new();
    let their_mac = Pair::mac(&net.b);
    ip(&[
        "-n",
        &net.b,
        "addr",
        "add",
        "fd77::100/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let ns = net.a.clone();
    run_in(&net.a, move || async move {
        let d = driver("fd77::100/64", "eth0", 3);
        let c = ctx("vip6", TIMEOUT);
        let t = Instant::now();
        let outcome = d.start(&c).await;
        eprintln!("IPv6 duplicate detected in {:?}", t.elapsed());
        match outcome {
            ActionOutcome::Failed { message, hard } => {
                assert!(hard, "{message}");
                assert!(message.contains(&their_mac), "{message}");
                assert!(message.contains("duplicate address detection"), "{message}");
            }
            other => panic!("started over a live owner: {other:?}"),
        }
        // The failed address was removed.
        assert!(!addresses(&ns).contains("fd77::100"));
        assert_eq!(d.probe(&c).await, Probe::Stopped);
    });
}

#[test]
fn ipv6_dad_that_cannot_finish_times_out_and_leaves_nothing() {
    let net = Pair::new();
    // Slow DAD: 3 probes 1 s apart, longer than the action may take.
    crate::testnet::sysctl(&net.a, "net/ipv6/neigh/eth0/retrans_time_ms", "1000");
    crate::testnet::sysctl(&net.a, "net/ipv6/conf/eth0/dad_transmits", "3");
    let ns = net.a.clone();
    run_in(&net.a, move || async move {
        let d = driver("fd77::100/64", "eth0", 3);
        let c = ctx("vip6", Duration::from_millis(800));
        let t = Instant::now();
        assert_eq!(d.start(&c).await, ActionOutcome::TimedOut);
        let took = t.elapsed();
        assert!(took <= Duration::from_millis(850), "{took:?}");
        assert!(!addresses(&ns).contains("fd77::100"));
    });
}

#[test]
fn interface_problems_fail_the_start() {
    let net = Pair::new();
    let ns = net.a.clone();
    run_in(&net.a, move || async move {
        let c = ctx("vip", TIMEOUT);
        let missing = driver("10.77.0.100/24", "nope0", 3);
        match missing.start(&c).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(hard);
                assert!(message.contains("`nope0` does not exist"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(missing.probe(&c).await, Probe::Stopped);
        assert_eq!(missing.stop(&c).await, ActionOutcome::Ok);

        ip(&["-n", &ns, "link", "set", "eth0", "down"]);
        let down = driver("10.77.0.100/24", "eth0", 3);
        match down.start(&c).await {
            ActionOutcome::Failed { message, hard } => {
                assert!(!hard, "a link may come back: {message}");
                assert!(message.contains("`eth0` is down"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!addresses(&ns).contains("10.77.0.100"));
    });
}

#[test]
fn stop_cancels_the_remaining_announcements() {
    let net = Pair::new();
    let our_mac = Pair::mac(&net.a);
    let addr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100));
    let (ready, capture) = capture(
        &net.b,
        mac_bytes(&our_mac),
        addr,
        Duration::from_millis(1500),
    );
    ready
        .recv()
        .unwrap_or_else(|e| panic!("capture did not start: {e}"));
    run_in(&net.a, move || async move {
        let d = driver("10.77.0.100/24", "eth0", 5);
        let c = ctx("vip", TIMEOUT);
        assert_eq!(d.start(&c).await, ActionOutcome::Ok);
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
        // Nothing more may claim an address that left this node.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    });
    let seen = join(capture);
    assert_announcements(&seen, Seen::Garp, 1);
}

#[test]
fn no_announcement_at_all_with_announcements_zero() {
    let net = Pair::new();
    let our_mac = mac_bytes(&Pair::mac(&net.a));
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100));
    let v6: IpAddr = "fd77::100".parse().unwrap_or_else(|e| panic!("{e}"));
    let window = Duration::from_millis(1200);
    let (ready4, capture4) = capture(&net.b, our_mac, v4, window);
    let (ready6, capture6) = capture(&net.b, our_mac, v6, window);
    for ready in [ready4, ready6] {
        ready
            .recv()
            .unwrap_or_else(|e| panic!("capture did not start: {e}"));
    }
    let ns = net.a.clone();
    run_in(&net.a, move || async move {
        let d4 = driver("10.77.0.100/24", "eth0", 0);
        let d6 = driver("fd77::100/64", "eth0", 0);
        let (c4, c6) = (ctx("vip4", TIMEOUT), ctx("vip6", TIMEOUT));
        assert_eq!(d4.start(&c4).await, ActionOutcome::Ok);
        assert_eq!(d6.start(&c6).await, ActionOutcome::Ok);
        let shown = addresses(&ns);
        assert!(shown.contains("inet 10.77.0.100/24"), "{shown}");
        assert!(shown.contains("inet6 fd77::100/64"), "{shown}");
        assert_eq!(d4.probe(&c4).await, Probe::Running);
        assert_eq!(d6.probe(&c6).await, Probe::Running);
        // Past the time every background announcement would have gone.
        tokio::time::sleep(ANNOUNCE_INTERVAL * 3).await;
    });
    let seen4 = join(capture4);
    let seen6 = join(capture6);
    // The duplicate check still ran; nothing claimed the address.
    let probes = seen4.iter().filter(|(_, s)| *s == Seen::ArpProbe).count();
    assert_eq!(probes, PROBES as usize, "{seen4:?}");
    assert!(!seen4.iter().any(|(_, s)| *s == Seen::Garp), "{seen4:?}");
    assert!(seen6.is_empty(), "{seen6:?}");
}

#[test]
fn probe_follows_what_the_kernel_holds() {
    let net = Pair::new();
    let (a, b) = (net.a.clone(), net.b.clone());
    run_in(&net.a, move || async move {
        let d4 = driver("10.77.0.100/24", "eth0", 0);
        let d6 = driver("fd77::100/64", "eth0", 0);
        let (c4, c6) = (ctx("vip4", TIMEOUT), ctx("vip6", TIMEOUT));
        assert_eq!(d4.start(&c4).await, ActionOutcome::Ok);
        assert_eq!(d6.start(&c6).await, ActionOutcome::Ok);

        // `ip addr del` drops either family.
        ip(&["-n", &a, "addr", "del", "10.77.0.100/24", "dev", "eth0"]);
        assert_eq!(d4.probe(&c4).await, Probe::Stopped);
        assert_eq!(d4.start(&c4).await, ActionOutcome::Ok);
        // A link set down drops the IPv6 address (keep_addr_on_down = 0),
        // not the IPv4 one.
        ip(&["-n", &a, "link", "set", "eth0", "down"]);
        ip(&["-n", &a, "link", "set", "eth0", "up"]);
        assert_eq!(d6.probe(&c6).await, Probe::Stopped);
        assert_eq!(d4.probe(&c4).await, Probe::Running);

        // Added behind the driver's back while another node holds it: the
        // kernel's DAD fails and keeps the entry, unusable.
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            "fd77::100/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &a, "addr", "add", "fd77::100/64", "dev", "eth0"]);
        let started = Instant::now();
        loop {
            match d6.probe(&c6).await {
                Probe::Failed(why) => {
                    assert!(why.contains("duplicate address detection failed"), "{why}");
                    break;
                }
                Probe::Running => {
                    // Tentative while DAD runs: present, so not stopped.
                    assert!(
                        started.elapsed() < Duration::from_secs(2),
                        "DAD never failed"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("{other:?}"),
            }
        }
    });
}
