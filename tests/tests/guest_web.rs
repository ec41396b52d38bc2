//! A web service failing over for real, as its clients see it: guest
//! daemons in their own network namespaces run a group of floating
//! addresses (the built-in `floating_ip` resource, or Debian's
//! `heartbeat:IPaddr2` agent) and a real HTTP server (Python's
//! `http.server`, started by an `exec` resource), and a client in a
//! namespace of its own keeps requesting `http://FLOATING:8080/` over IPv4
//! and IPv6 every 20 ms, recording who answered and when. A fault hits the
//! active guest (kill -9 of its daemon, after which the fence device powers
//! it off; or its service NIC is set down, or loses its carrier to a pulled
//! cable, and a `nic` monitor sees it); the test asserts that the standby
//! answers, measures the outage the client saw, and checks that a
//! bystander's neighbour cache learnt the standby's MAC from the
//! gratuitous ARP / unsolicited NA alone. A watcher fails the test if the
//! server ever runs on two nodes at once. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use testbed::cluster::{Cluster, Spec};
use testbed::watch::Watcher;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The port the web server listens on (in every node's namespace).
const PORT: u16 = 8080;
/// The cluster's nodes: group `web` may run on n0 and n1; n2 only adds its
/// vote to the quorum.
const NODES: [&str; 3] = ["n0", "n1", "n2"];
/// The bystander namespace of the client (the first after the nodes).
const CLIENT: usize = 3;
/// A second bystander that sends nothing during the failover: its
/// neighbour cache can only learn the new MAC from announcements.
const OBSERVER: usize = 4;
/// The floating addresses, in the nodes' subnets on link 0 (`eth0`: node
/// `k` has `10.0.0.(k+1)/24` and `fd00::(k+1)/64`).
const VIP4: &str = "10.0.0.100";
const VIP6: &str = "fd00::100";
/// Time between two requests of one client.
const PERIOD: Duration = Duration::from_millis(20);
/// The outage a client may see at most (a generous bound for a loaded
/// machine; the numbers measured are printed).
const MAX_OUTAGE: Duration = Duration::from_secs(10);

/// The web application: one `http.server` per node on port 8080 of every
/// address (`::`, dual stack), serving a page that names the node. `start`
/// returns once the server listens; `stop` waits until it is gone.
const WEB: &str = r#"#!/bin/sh
dir={dir}
node=$KVMHA_NODE
pidf=$dir/web.$node.pid
alive() {
    [ -f "$pidf" ] || return 1
    s=$(awk '{print $3}' /proc/$(cat "$pidf")/stat 2>/dev/null)
    [ -n "$s" ] && [ "$s" != Z ]
}
listening() { ss -Hltn 'sport = :8080' | grep -q .; }
case "$1" in
start)
    alive && exit 0
    mkdir -p "$dir/www-$node"
    echo "$node" > "$dir/www-$node/index.html"
    /usr/bin/python3 -m http.server --bind :: --directory "$dir/www-$node" 8080 \
        </dev/null >/dev/null 2>&1 &
    echo $! > "$pidf"
    i=0
    until listening; do
        alive || { echo "the web server died at start" >&2; exit 1; }
        i=$((i + 1))
        [ $i -ge 500 ] && { echo "the web server does not listen after 10 s" >&2; exit 1; }
        sleep 0.02
    done
    echo "$node start $KVMHA_REASON prev=$KVMHA_PREVIOUS_OWNER fenced=$KVMHA_PREVIOUS_OWNER_FENCED" >> "$dir/web.log"
    ;;
stop)
    if alive; then
        kill "$(cat "$pidf")"
        i=0
        while alive && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.02; done
        alive && kill -9 "$(cat "$pidf")"
    fi
    rm -f "$pidf"
    echo "$node stop" >> "$dir/web.log"
    ;;
status)
    alive && exit 0
    exit 7
    ;;
esac
"#;

/// The web server resource and an `http` monitor of it.
const HTTPD: &str = r#"
[[groups.resources]]
name = "httpd"
kind = "exec"
start = ["{dir}/web", "start"]
stop = ["{dir}/web", "stop"]
status = ["{dir}/web", "status"]
start_timeout = "15s"
stop_timeout = "10s"

[[groups.monitors]]
name = "http"
kind = "http"
url = "http://127.0.0.1:8080/"
interval = "1s"
timeout = "3s"
resource = "httpd"
"#;

/// The built-in floating addresses, IPv4 and IPv6, on `eth0`.
const FLOATING: &str = r#"
[[groups.resources]]
name = "vip4"
kind = "floating_ip"
address = "10.0.0.100/24"
interface = "eth0"

[[groups.resources]]
name = "vip6"
kind = "floating_ip"
address = "fd00::100/64"
interface = "eth0"
"#;

/// The same IPv4 address through Debian's OCF agent, and its monitor.
const IPADDR2: &str = r#"
[[groups.resources]]
name = "vip"
kind = "ocf"
agent = "heartbeat:IPaddr2"
params = { ip = "10.0.0.100", cidr_netmask = "24", nic = "eth0" }
start_timeout = "20s"
stop_timeout = "20s"

[[groups.monitors]]
name = "vip-agent"
kind = "ocf"
resource = "vip"
interval = "1s"
timeout = "10s"
"#;

/// Watches the service NIC; a NIC failure fails the group over at once
/// (a restart in place cannot bring a link back).
const NIC: &str = r#"
[[groups.monitors]]
name = "eth0"
kind = "nic"
interface = "eth0"
interval = "100ms"
timeout = "1s"
recovery = { restart = 0, failover = 1, final_action = "stop_group" }
"#;

/// The fence device, then group `web` on n0 (preferred) and n1 with the
/// address resources `ips` and the web server, and `monitors`.
fn config(ips: &str, monitors: &str) -> String {
    format!(
        "{}\n[[groups]]\nname = \"web\"\nnodes = [\"n0\", \"n1\"]\n{ips}{HTTPD}{monitors}",
        testbed::fence::config(3)
    )
}

fn write_script(dir: &Path, name: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text.replace("{dir}", &dir.display().to_string()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A three-node guest cluster (n2 votes only) with the client and the
/// observer as bystanders, running group `web` on n0.
fn cluster(links: usize, ips: &str, monitors: &str) -> Cluster {
    let c = ok(Cluster::start_with(
        &Spec {
            links,
            ipv6: true,
            bystanders: 2,
            extra: config(ips, monitors),
            ..Spec::default()
        },
        |dir| {
            write_script(dir, "web", WEB);
            testbed::fence::install(dir);
        },
    ));
    testbed::fence::arm(&c);
    ok(c.wait_converged(Duration::from_secs(10)));
    c
}

/// Kills every process left in the nodes' namespaces when the test ends,
/// however it ends (daemons killed with SIGKILL leave their groups
/// running: web servers, `send_arp`...).
struct Reap(Vec<String>);

impl Reap {
    fn new(c: &Cluster) -> Self {
        Self((0..NODES.len()).map(|k| c.net.ns(k)).collect())
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        for ns in &self.0 {
            for _ in 0..5 {
                let pids: Vec<i32> = Command::new("ip")
                    .args(["netns", "pids", ns])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .filter_map(|p| p.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The pid of the web server on `node` if it lives (a zombie is dead:
/// nothing reaps orphans quickly on this machine).
fn web_pid(dir: &Path, node: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(format!("web.{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

fn running(dir: &Path) -> BTreeSet<String> {
    NODES
        .iter()
        .filter(|n| web_pid(dir, n).is_some())
        .map(|n| (*n).to_owned())
        .collect()
}

fn web_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("web.log")).unwrap_or_default()
}

fn wait_running_on(dir: &Path, node: &str, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let r = running(dir);
        if r.len() == 1 && r.contains(node) {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "web not running on {node} alone within {timeout:?}: running on {r:?}\n{}",
            web_log(dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until every node's newest placement puts `web` on `node`.
fn wait_all_agree(c: &Cluster, node: &str) {
    ok(testbed::wait_until(
        "every node knows the placement",
        Duration::from_secs(10),
        || {
            (0..NODES.len()).all(|k| {
                c.status(k).is_ok_and(|s| {
                    s.groups
                        .iter()
                        .any(|g| g.name == "web" && g.target.as_deref() == Some(node))
                })
            })
        },
    ));
}

/// One request of a client: when it ended, and the node that answered
/// (the page's text) or why it failed.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    answer: Result<String, String>,
}

/// `GET /` from `addr`: the page's text on a complete 200 answer.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(100))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(1))))
        .map_err(|e| format!("socket: {e}"))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("receive: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    // A server killed in the middle of its answer (the fence) leaves the
    // headers without the body: that is no answer.
    let length = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if length != Some(body.len()) {
        return Err(format!(
            "truncated answer: {} of {length:?} bytes",
            body.len()
        ));
    }
    Ok(body.trim().to_owned())
}

/// A client in a bystander namespace: a thread that enters it (`setns`
/// moves only the calling thread) and requests `http://ADDR:8080/` every
/// [`PERIOD`] until finished.
struct Client {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(ns: &str, addr: &str) -> Self {
        let addr = SocketAddr::new(
            addr.parse::<IpAddr>()
                .unwrap_or_else(|e| panic!("{addr}: {e}")),
            PORT,
        );
        let ns_file = std::fs::File::open(format!("/run/netns/{ns}"))
            .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET);
            let failed = entered.is_err();
            let _ = ready_tx.send(entered);
            if failed {
                return;
            }
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let answer = get(addr);
                out.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Sample {
                        at: Instant::now(),
                        answer,
                    });
                std::thread::sleep(PERIOD.saturating_sub(t.elapsed()));
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            other => panic!("the client cannot enter namespace {ns}: {other:?}"),
        }
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wait until `node` answered after `since`.
    fn wait_answer(&self, node: &str, since: Instant, timeout: Duration) -> anyhow::Result<()> {
        testbed::wait_until(&format!("an answer from {node}"), timeout, || {
            self.samples()
                .iter()
                .any(|s| s.at >= since && s.answer.as_deref() == Ok(node))
        })
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one client saw of a failover from `from` to `to` caused at `fault`.
#[derive(Debug)]
struct Outage {
    /// The longest time between two successful answers.
    longest_gap: Duration,
    /// From the fault to the first answer from `to`.
    to_standby: Duration,
    /// From the fault to the last answer from `from`.
    last_from_active: Duration,
    requests: usize,
    /// Failed requests by error, e.g. `connect: No route to host`.
    failures: BTreeMap<String, usize>,
}

/// Check what a client saw and measure the outage: `from` answered before
/// the fault, then `to`, never `from` again after `to` (which would mean
/// both served), and the requests after `to`'s first answer succeeded.
fn outage(what: &str, samples: &[Sample], fault: Instant, from: &str, to: &str) -> Outage {
    let answers: Vec<(Instant, &str)> = samples
        .iter()
        .filter_map(|s| s.answer.as_deref().ok().map(|n| (s.at, n)))
        .collect();
    let failures: Vec<&Sample> = samples.iter().filter(|s| s.answer.is_err()).collect();
    let last_before = answers.iter().rfind(|(at, _)| *at < fault);
    assert_eq!(
        last_before.map(|a| a.1),
        Some(from),
        "{what}: {from} did not answer before the fault"
    );
    let first_to = answers
        .iter()
        .position(|(_, n)| *n == to)
        .unwrap_or_else(|| panic!("{what}: {to} never answered"));
    assert!(
        answers[first_to..].iter().all(|(_, n)| *n == to),
        "{what}: an answer from another node after {to} took over: {:?}",
        answers[first_to..]
            .iter()
            .filter(|(_, n)| *n != to)
            .collect::<Vec<_>>()
    );
    assert!(
        answers[..first_to].iter().all(|(_, n)| *n == from),
        "{what}: answers from neither {from} nor {to}: {:?}",
        answers[..first_to]
            .iter()
            .filter(|(_, n)| *n != from)
            .map(|(at, n)| (at.saturating_duration_since(fault), n))
            .collect::<Vec<_>>()
    );
    let took_over = answers[first_to].0;
    // Once the standby answers, it keeps answering: a refused or reset
    // connection would mean the service was not whole yet; a few connect
    // timeouts (100 ms) are allowed for a machine stalled by other work.
    let late: Vec<&&Sample> = failures.iter().filter(|s| s.at > took_over).collect();
    let stalled = late
        .iter()
        .all(|s| s.answer.as_ref().is_err_and(|e| e.contains("timed out")));
    assert!(
        late.is_empty() || late.len() <= 3 && stalled,
        "{what}: requests failed after {to} took over: {late:?}"
    );
    let longest_gap = answers
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0))
        .max()
        .unwrap_or_default();
    let last_from = answers[..first_to].last().map_or(fault, |a| a.0);
    Outage {
        longest_gap,
        to_standby: took_over.saturating_duration_since(fault),
        last_from_active: last_from.saturating_duration_since(fault),
        requests: samples.len(),
        failures: failures
            .iter()
            .filter_map(|s| s.answer.as_ref().err())
            .fold(BTreeMap::new(), |mut m, e| {
                // Without the OS error number, so that equal errors count together.
                let e = e.split(" (os error").next().unwrap_or(e).to_owned();
                *m.entry(e).or_insert(0) += 1;
                m
            }),
    }
}

fn report(what: &str, o: &Outage) {
    eprintln!(
        "{what}: outage {} ms (longest time without an answer); fault to first answer from the \
         standby {} ms; last answer from the old active {} ms after the fault; {} requests, failed: {:?}",
        o.longest_gap.as_millis(),
        o.to_standby.as_millis(),
        o.last_from_active.as_millis(),
        o.requests,
        o.failures
    );
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MAC address of `eth0` in namespace `k`.
fn mac(c: &Cluster, k: usize) -> String {
    let text = ip_out(&["-n", &c.net.ns(k), "-br", "link", "show", "eth0"]);
    text.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"))
        .to_owned()
}

/// The MAC address namespace `k`'s neighbour cache holds for `addr`.
fn neighbour(c: &Cluster, k: usize, addr: &str) -> Option<String> {
    let text = ip_out(&["-n", &c.net.ns(k), "neigh", "show", addr, "dev", "eth0"]);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_owned)
}

/// Make the observer resolve the floating addresses (one ping each), so
/// that it holds neighbour entries for them naming the active node.
fn prime_observer(c: &Cluster, addrs: &[&str]) {
    for addr in addrs {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &c.net.ns(OBSERVER),
                "ping",
                "-c1",
                "-W2",
                addr,
            ])
            .output()
            .unwrap_or_else(|e| panic!("ping: {e}"));
        assert!(out.status.success(), "observer cannot ping {addr}: {out:?}");
        assert_eq!(neighbour(c, OBSERVER, addr), Some(mac(c, 0)), "{addr}");
    }
}

/// Wait until namespace `k`'s neighbour entry for `addr` names node `node`.
fn wait_neighbour(c: &Cluster, k: usize, addr: &str, node: usize) {
    let want = mac(c, node);
    let r = testbed::wait_until(
        &format!("the neighbour entry for {addr} in namespace {k} to name n{node}"),
        Duration::from_secs(2),
        || neighbour(c, k, addr).as_deref() == Some(want.as_str()),
    );
    if let Err(e) = r {
        panic!(
            "{e}: it holds {:?}; n0 has {}, n{node} has {want}",
            neighbour(c, k, addr),
            mac(c, 0)
        );
    }
}

/// The group runs on n0 and both clients get their answers from it.
fn serving_on_n0(c: &Cluster, clients: &[&Client]) {
    wait_running_on(c.dir(), "n0", Duration::from_secs(15));
    wait_all_agree(c, "n0");
    let t0 = Instant::now();
    for client in clients {
        ok(client.wait_answer("n0", t0, Duration::from_secs(5)));
    }
}

#[test]
fn kill_9_of_the_active_guest_moves_both_floating_addresses_and_the_web_server() {
    let mut c = cluster(1, FLOATING, "");
    let _reap = Reap::new(&c);
    let dir = c.dir().to_owned();
    let client_ns = c.net.ns(CLIENT);
    let v4 = Client::start(&client_ns, VIP4);
    let v6 = Client::start(&client_ns, VIP6);
    serving_on_n0(&c, &[&v4, &v6]);
    prime_observer(&c, &[VIP4, VIP6]);
    let watcher = {
        let d = dir.clone();
        Watcher::new(move || running(&d))
    };

    // Power loss of n0: its daemon dies, the web server and the addresses
    // stay until the survivors fence it.
    let fault = Instant::now();
    c.kill(0);
    ok(v4.wait_answer("n1", fault, Duration::from_secs(15)));
    ok(v6.wait_answer("n1", fault, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_millis(500));
    let (s4, s6) = (v4.finish(), v6.finish());
    let doubles = watcher.finish();
    assert!(
        doubles.is_empty(),
        "two nodes ran the web server: {doubles:?}"
    );

    let o4 = outage("IPv4", &s4, fault, "n0", "n1");
    let o6 = outage("IPv6", &s6, fault, "n0", "n1");
    report("kill -9 of n0, floating_ip, IPv4", &o4);
    report("kill -9 of n0, floating_ip, IPv6", &o6);
    assert!(o4.longest_gap < MAX_OUTAGE, "{o4:?}");
    assert!(o6.longest_gap < MAX_OUTAGE, "{o6:?}");
    assert_eq!(testbed::fence::fenced(&dir), ["n0"]);
    let log = web_log(&dir);
    assert!(
        log.lines().last() == Some("n1 start FAILOVER prev=n0 fenced=1"),
        "{log}"
    );

    // The announcements: the observer sent nothing since it resolved the
    // addresses to n0, yet its cache now names n1; so does the client's.
    for addr in [VIP4, VIP6] {
        wait_neighbour(&c, OBSERVER, addr, 1);
        wait_neighbour(&c, CLIENT, addr, 1);
    }
}

/// Pull node `k`'s cable on link 0: its switch port (the bridge side of
/// its veth pair, `n{k}l0` in the hub namespace `{prefix}hub` that
/// [`testbed::netns::Net`] builds) goes down, so `eth0` stays
/// administratively up and loses its carrier, as with a real cable or
/// switch port failure.
fn pull_cable(c: &Cluster, k: usize) -> anyhow::Result<()> {
    let first = c.net.ns(0);
    let hub = format!("{}hub", first.strip_suffix("n0").unwrap_or(&first));
    let out = Command::new("ip")
        .args(["-n", &hub, "link", "set", &format!("n{k}l0"), "down"])
        .output()?;
    anyhow::ensure!(out.status.success(), "pull the cable: {out:?}");
    Ok(())
}

/// A `nic` monitor fails the group over when `fault` hits n0's service
/// interface `eth0`. Two links: heartbeats go on over `eth1`, so n0 stays
/// a member and stops the group itself; nobody is fenced.
fn nic_failover(what: &str, fault: impl FnOnce(&Cluster)) -> Cluster {
    let c = cluster(2, FLOATING, NIC);
    let reap = Reap::new(&c);
    let dir = c.dir().to_owned();
    let client_ns = c.net.ns(CLIENT);
    let v4 = Client::start(&client_ns, VIP4);
    let v6 = Client::start(&client_ns, VIP6);
    serving_on_n0(&c, &[&v4, &v6]);
    prime_observer(&c, &[VIP4, VIP6]);
    let watcher = {
        let d = dir.clone();
        Watcher::new(move || running(&d))
    };

    let at = Instant::now();
    fault(&c);
    ok(v4.wait_answer("n1", at, Duration::from_secs(15)));
    ok(v6.wait_answer("n1", at, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_millis(500));
    let (s4, s6) = (v4.finish(), v6.finish());
    wait_running_on(&dir, "n1", Duration::from_secs(5));
    let doubles = watcher.finish();
    assert!(
        doubles.is_empty(),
        "two nodes ran the web server: {doubles:?}"
    );

    let o4 = outage("IPv4", &s4, at, "n0", "n1");
    let o6 = outage("IPv6", &s6, at, "n0", "n1");
    report(&format!("{what}, nic monitor, IPv4"), &o4);
    report(&format!("{what}, nic monitor, IPv6"), &o6);
    assert!(o4.longest_gap < MAX_OUTAGE, "{o4:?}");
    assert!(o6.longest_gap < MAX_OUTAGE, "{o6:?}");

    assert!(testbed::fence::fenced(&dir).is_empty());
    let log = web_log(&dir);
    let lines: Vec<&str> = log.lines().collect();
    let stop = lines.iter().position(|l| *l == "n0 stop");
    let start = lines
        .iter()
        .position(|l| l.starts_with("n1 start FAILOVER"));
    assert!(stop.is_some() && stop < start, "{log}");
    let s = ok(c.status(0));
    let g = s.groups.iter().find(|g| g.name == "web");
    assert_eq!(g.and_then(|g| g.target.as_deref()), Some("n1"), "{g:?}");
    assert_eq!(
        g.and_then(|g| g.state_here.as_deref()),
        Some("stopped"),
        "{g:?}"
    );
    assert!(
        s.members
            .iter()
            .all(|m| m.state != cluster_core::status::MemberState::Lost
                && m.state != cluster_core::status::MemberState::Unknown),
        "{:?}",
        s.members
    );
    assert!(
        ip_out(&["-n", &c.net.ns(0), "addr", "show", "dev", "eth0"])
            .lines()
            .all(|l| !l.contains(VIP4) && !l.contains(VIP6)),
        "n0 kept a floating address"
    );
    for addr in [VIP4, VIP6] {
        wait_neighbour(&c, OBSERVER, addr, 1);
        wait_neighbour(&c, CLIENT, addr, 1);
    }
    drop(reap);
    c
}

/// `ip link set eth0 down` on n0. (The kernel drops an interface's IPv6
/// addresses when it is set down, the floating one too: n0's stop finds
/// it gone.)
#[test]
fn the_service_nic_set_down_fails_the_web_group_over_without_fencing() {
    nic_failover("eth0 set down on n0", |c| ok(c.net.link_down(0, 0)));
}

/// The switch port of n0's `eth0` goes down: `eth0` loses its carrier and
/// keeps its addresses until n0's stop removes them.
#[test]
fn a_pulled_service_cable_fails_the_web_group_over_without_fencing() {
    let c = nic_failover("eth0 cable pulled on n0", |c| ok(pull_cable(c, 0)));
    // It was the carrier that went: n0's `eth0` itself is still up.
    let link = ip_out(&["-n", &c.net.ns(0), "link", "show", "dev", "eth0"]);
    assert!(
        link.contains("NO-CARRIER") && link.contains(",UP"),
        "{link}"
    );
}

#[test]
fn kill_9_of_the_active_guest_moves_an_ipaddr2_address_like_the_built_in_one() {
    let mut c = cluster(1, IPADDR2, "");
    let _reap = Reap::new(&c);
    let dir = c.dir().to_owned();
    let v4 = Client::start(&c.net.ns(CLIENT), VIP4);
    serving_on_n0(&c, &[&v4]);
    prime_observer(&c, &[VIP4]);
    let watcher = {
        let d = dir.clone();
        Watcher::new(move || running(&d))
    };

    let fault = Instant::now();
    c.kill(0);
    ok(v4.wait_answer("n1", fault, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_millis(500));
    let s4 = v4.finish();
    let doubles = watcher.finish();
    assert!(
        doubles.is_empty(),
        "two nodes ran the web server: {doubles:?}"
    );

    let o4 = outage("IPv4", &s4, fault, "n0", "n1");
    report("kill -9 of n0, ocf heartbeat:IPaddr2, IPv4", &o4);
    assert!(o4.longest_gap < MAX_OUTAGE, "{o4:?}");
    assert_eq!(testbed::fence::fenced(&dir), ["n0"]);
    let log = web_log(&dir);
    assert!(
        log.lines().last() == Some("n1 start FAILOVER prev=n0 fenced=1"),
        "{log}"
    );
    assert!(
        ip_out(&["-n", &c.net.ns(1), "addr", "show", "dev", "eth0"])
            .contains(&format!("{VIP4}/24")),
        "IPaddr2 did not add {VIP4} on n1"
    );
    wait_neighbour(&c, OBSERVER, VIP4, 1);
    wait_neighbour(&c, CLIENT, VIP4, 1);
}
