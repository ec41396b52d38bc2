//! Act two of `clusterctl demo`: a web service failing over between
//! guests, as its client sees it (scenario 1 of the guest cluster).
//!
//! Three `guest-clusterd`, each in a network namespace of its own
//! ([`netns`](super::netns)), run group `web` of
//! `conf/examples/demo-guests.toml`: a floating IPv4 and IPv6 address and
//! a real web server (`python3 -m http.server`, started by an `exec`
//! script). A client in a fourth namespace requests the page (it names the
//! guest that serves it) through both floating addresses every 50 ms. The
//! demo kills the active guest's daemon with SIGKILL; the surviving
//! majority fences it with the demo's fence agent (every process in its
//! namespace killed, its addresses and links gone, as at a power loss)
//! and the standby takes the group over. Meanwhile a sampler reads the
//! floating addresses in every guest's namespace every 5 ms. The demo
//! prints what the client saw (who answered before and after, the
//! outage), the engine's timeline and whether an address was ever active
//! on two guests, and fails if the service did not move or a safety rule
//! broke.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::netns::{self, DemoNet, Host, NsThread};
use super::{Daemons, Say, sibling_binary, stop, wait_joined};

/// The client's namespace is `kvmha-demo-client`; its addresses are in
/// the guests' subnets (`192.0.2.0/24`, `2001:db8::/64`).
const CLIENT: &str = "client";
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50);
/// The group of the demo configuration, and its web server's port.
const GROUP: &str = "web";
const PORT: u16 = 8080;
/// Time between two requests of the client (per address).
const PERIOD: Duration = Duration::from_millis(50);
/// Time between two looks at every guest's addresses.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// The web application: `python3 -m http.server` on port 8080 of every
/// address of the guest (dual stack), serving a page that names the
/// guest. `start` returns once it listens; `stop` once it is gone.
const WEB: &str = r#"#!/bin/sh
dir=DIR
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
    echo "web server (pid $(cat "$pidf")) started on $node ($KVMHA_REASON, previous owner: ${KVMHA_PREVIOUS_OWNER:-none}, fenced: ${KVMHA_PREVIOUS_OWNER_FENCED:-0})"
    ;;
stop)
    if alive; then
        kill "$(cat "$pidf")"
        i=0
        while alive && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.02; done
        alive && kill -9 "$(cat "$pidf")"
    fi
    rm -f "$pidf"
    ;;
status)
    alive || exit 7
    ;;
esac
"#;

/// The demo's fence agent (the fence-agents stdin protocol): it "powers
/// off" the guest whose namespace is the plug: every process in it is
/// killed, then its interfaces lose their addresses and go down.
const FENCE_AGENT: &str = r#"#!/bin/sh
action=off
plug=
while IFS='=' read -r k v; do
    case "$k" in action) action=$v ;; plug|port) plug=$v ;; esac
done
case "$plug" in
kvmha-demo-?*) ;;
*) echo "plug '$plug' is not a demo namespace" >&2; exit 1 ;;
esac
[ -e "/run/netns/$plug" ] || { echo "no namespace $plug" >&2; exit 1; }
case "$action" in
off|reboot)
    n=0
    while pids=$(ip netns pids "$plug") && [ -n "$pids" ]; do
        kill -9 $pids 2>/dev/null
        n=$((n + 1))
        [ $n -ge 200 ] && { echo "processes of $plug survive SIGKILL: $pids" >&2; exit 1; }
        sleep 0.01
    done
    for l in $(ip -n "$plug" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
        [ "$l" = lo ] && continue
        ip -n "$plug" addr flush dev "$l" && ip -n "$plug" link set "$l" down || exit 1
    done
    echo "$plug off" >> DIR/fence.log
    exit 0
    ;;
*)
    echo "action $action is not supported" >&2
    exit 1
    ;;
esac
"#;

/// What the demo reads from its configuration.
struct Plan {
    /// The guests, most preferred first, with their `eth0` addresses.
    guests: Vec<Host>,
    vip4: IpAddr,
    vip6: IpAddr,
    heartbeat_timeout: Duration,
}

impl Plan {
    fn from_config(config: &conf::Config) -> anyhow::Result<Self> {
        let group = config
            .groups
            .iter()
            .find(|g| g.name == GROUP)
            .with_context(|| format!("the guest demo configuration has no group `{GROUP}`"))?;
        let mut guests = Vec::new();
        for name in &group.nodes {
            let node = config
                .nodes
                .iter()
                .find(|n| &n.name == name)
                .with_context(|| format!("no node {name}"))?;
            let addresses = node
                .links
                .values()
                .flatten()
                .map(|net| (net.addr(), net.prefix_len()))
                .collect();
            guests.push(Host {
                name: name.clone(),
                addresses,
            });
        }
        let floating: Vec<IpAddr> = group
            .resources
            .iter()
            .filter_map(|r| match &r.kind {
                conf::ResourceKind::FloatingIp(f) => Some(f.address.addr()),
                _ => None,
            })
            .collect();
        let vip4 = floating.iter().find(|a| a.is_ipv4()).copied();
        let vip6 = floating.iter().find(|a| a.is_ipv6()).copied();
        let (Some(vip4), Some(vip6)) = (vip4, vip6) else {
            bail!("group `{GROUP}` needs a floating IPv4 and a floating IPv6 address");
        };
        if guests.len() < 2 {
            bail!("group `{GROUP}` needs two guests at least");
        }
        Ok(Self {
            guests,
            vip4,
            vip6,
            heartbeat_timeout: config.heartbeat.timeout.get(),
        })
    }

    /// The client's host: addresses in the guests' subnets.
    fn client() -> Host {
        Host {
            name: CLIENT.into(),
            addresses: vec![(CLIENT_V4.into(), 24), (CLIENT_V6.into(), 64)],
        }
    }
}

/// Write the web script and the fence agent into `dir`, and forget what
/// a previous run left there.
fn write_scripts(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let here = dir.display().to_string();
    for (name, text) in [("web", WEB), ("fence-netns", FENCE_AGENT)] {
        let path = dir.join(name);
        std::fs::write(&path, text.replace("DIR", &here))
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    for f in std::fs::read_dir(dir)?.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("web.") || name == "fence.log" {
            let _ = std::fs::remove_file(f.path());
        }
    }
    Ok(())
}

/// Start `guest-clusterd` for `node` inside its namespace (`ip netns
/// exec` replaces itself with the daemon: the child is the daemon).
fn spawn_guest(
    net: &DemoNet,
    dir: &Path,
    daemon: &Path,
    config_path: &Path,
    node: &str,
) -> anyhow::Result<std::process::Child> {
    let mut ip = Command::new("ip");
    ip.args(["netns", "exec", &netns::ns_name(node)])
        .arg(daemon);
    let mut cmd = super::daemon_command(ip, dir, config_path, node)?;
    net.spawn(&mut cmd)
        .with_context(|| format!("cannot start {} for {node}", daemon.display()))
}

/// One request of the client: when it ended (since the demo's `t0`), and
/// the guest that answered (the page's text) or why it failed.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    answer: Result<String, String>,
}

/// `GET /` from `addr`: the page's text on a complete 200 answer.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(100))
        .map_err(|e| format!("connect: {}", e.kind()))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(1))))
        .map_err(|e| format!("socket: {}", e.kind()))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .map_err(|e| format!("send: {}", e.kind()))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("receive: {}", e.kind()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not HTTP".to_owned())?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    // A server killed in the middle of its answer leaves the headers
    // without the body: that is no answer.
    let length = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if length != Some(body.len()) {
        return Err("truncated answer".into());
    }
    Ok(body.trim().to_owned())
}

/// The client: a thread in the client's namespace that requests
/// `http://ADDR:8080/` every [`PERIOD`] until finished.
struct Client {
    url: String,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<NsThread<()>>,
}

impl Client {
    fn start(addr: IpAddr, t0: Instant) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(addr, PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = netns::in_netns(&netns::ns_name(CLIENT), move || {
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = get(addr);
                out.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Sample {
                        at: t0.elapsed(),
                        answer,
                    });
                std::thread::sleep(PERIOD.saturating_sub(started.elapsed()));
            }
        })?;
        Ok(Self {
            url: format!("http://{addr}/"),
            stop,
            samples,
            thread: Some(thread),
        })
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a guest other than `not` answered at or after `since`;
    /// `not = None`: any guest.
    fn answered(&self, since: Duration, not: Option<&str>) -> Option<String> {
        self.samples()
            .into_iter()
            .filter(|s| s.at >= since)
            .find_map(|s| s.answer.ok().filter(|n| Some(n.as_str()) != not))
    }

    fn finish(mut self) -> Vec<Sample> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What one guest's namespace showed at one look: whether each floating
/// address was active there (on `eth0`, which was up with a carrier).
#[derive(Clone, Copy, Debug)]
struct Look {
    at: Duration,
    guest: usize,
    active: [bool; 2],
}

/// Looks at every guest's floating addresses every [`SAMPLE_EVERY`], from
/// one thread that enters each guest's namespace in turn.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Vec<Look>>>>,
}

impl Sampler {
    fn start(guests: &[Host], vips: [IpAddr; 2], t0: Instant) -> anyhow::Result<Self> {
        let files = guests
            .iter()
            .map(|g| netns::open_ns(&netns::ns_name(&g.name)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("address sampler".into())
            .spawn(move || {
                let mut looks = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    let round = Instant::now();
                    for (guest, file) in files.iter().enumerate() {
                        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .context("the sampler cannot enter a guest's namespace")?;
                        let here = netns::addresses_on("eth0")
                            .context("the sampler cannot read a guest's addresses")?;
                        let active = vips.map(|v| here.iter().any(|(a, up)| *a == v && *up));
                        looks.push(Look {
                            at: t0.elapsed(),
                            guest,
                            active,
                        });
                    }
                    std::thread::sleep(SAMPLE_EVERY.saturating_sub(round.elapsed()));
                }
                Ok(looks)
            })
            .context("cannot start the sampler")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> anyhow::Result<Vec<Look>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(looks)) => looks,
            _ => bail!("the address sampler failed"),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A stretch of time in which an address may have been active on a
/// guest: it was seen active from `first` to `last`, and seen inactive
/// last at `after` before that and first at `until` after it (unknown at
/// either end of the sampling).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Held {
    guest: usize,
    after: Option<Duration>,
    until: Option<Duration>,
}

/// The stretches of every guest for address `k`.
fn held(looks: &[Look], k: usize) -> Vec<Held> {
    let mut out = Vec::new();
    let guests = looks.iter().map(|l| l.guest + 1).max().unwrap_or(0);
    for guest in 0..guests {
        let mut last_inactive = None;
        let mut open = false;
        for l in looks.iter().filter(|l| l.guest == guest) {
            match (l.active[k], open) {
                (true, false) => {
                    open = true;
                    out.push(Held {
                        guest,
                        after: last_inactive,
                        until: None,
                    });
                }
                (false, true) => {
                    open = false;
                    if let Some(h) = out.last_mut() {
                        h.until = Some(l.at);
                    }
                    last_inactive = Some(l.at);
                }
                (false, false) => last_inactive = Some(l.at),
                (true, true) => {}
            }
        }
    }
    out
}

/// Pairs of stretches on different guests that may overlap: nothing
/// seen proves that one ended before the other began. Empty: the address
/// was never active on two guests at once.
fn overlaps(looks: &[Look], k: usize) -> Vec<(Held, Held)> {
    let h = held(looks, k);
    let mut out = Vec::new();
    for (i, a) in h.iter().enumerate() {
        for b in &h[i + 1..] {
            if a.guest == b.guest {
                continue;
            }
            // `a` surely ended before `b` began if `a` was seen inactive
            // again no later than `b` was last seen inactive before it.
            let a_before_b = matches!((a.until, b.after), (Some(u), Some(f)) if u <= f);
            let b_before_a = matches!((b.until, a.after), (Some(u), Some(f)) if u <= f);
            if !a_before_b && !b_before_a {
                out.push((*a, *b));
            }
        }
    }
    out
}

/// What the client saw of a failover caused at `fault`.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The guest that answered last before the fault.
    before: Option<String>,
    /// The guest that answered last.
    after: Option<String>,
    /// From the last answer of `before` to the first of `after` (when
    /// they differ): the time the client went without an answer.
    outage: Option<Duration>,
    /// From the fault to the first answer of `after`.
    to_standby: Option<Duration>,
    /// From the fault to the last answer of `before`.
    last_from_active: Option<Duration>,
    requests: usize,
    failed: usize,
    /// Answers out of order: from `before` after `after` had answered, or
    /// from a third guest. Two guests serving means two owners.
    strays: Vec<(Duration, String)>,
}

fn seen(samples: &[Sample], fault: Duration) -> Seen {
    let answers: Vec<(Duration, &str)> = samples
        .iter()
        .filter_map(|s| s.answer.as_deref().ok().map(|n| (s.at, n)))
        .collect();
    let before = answers
        .iter()
        .rfind(|(at, _)| *at < fault)
        .map(|a| a.1.to_owned());
    let after = answers.last().map(|a| a.1.to_owned());
    let first_after = answers
        .iter()
        .position(|(at, n)| *at >= fault && Some(*n) == after.as_deref());
    let mut strays = Vec::new();
    let mut outage = None;
    let mut to_standby = None;
    let mut last_from_active = None;
    if let Some(i) = first_after {
        strays.extend(
            answers[i..]
                .iter()
                .filter(|(_, n)| Some(*n) != after.as_deref())
                .map(|(at, n)| (*at, (*n).to_owned())),
        );
        strays.extend(
            answers[..i]
                .iter()
                .filter(|(at, n)| *at >= fault && Some(*n) != before.as_deref())
                .map(|(at, n)| (*at, (*n).to_owned())),
        );
        let last_before = answers[..i]
            .iter()
            .rfind(|(_, n)| Some(*n) == before.as_deref());
        if before != after {
            outage = last_before.map(|(at, _)| answers[i].0.saturating_sub(*at));
            to_standby = Some(answers[i].0.saturating_sub(fault));
        }
        last_from_active = last_before.map(|(at, _)| at.saturating_sub(fault));
    }
    Seen {
        before,
        after,
        outage,
        to_standby,
        last_from_active,
        requests: samples.len(),
        failed: samples.iter().filter(|s| s.answer.is_err()).count(),
        strays,
    }
}

fn ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

fn ms_text(d: Option<Duration>) -> String {
    d.map_or_else(|| "?".into(), |d| d.as_millis().to_string())
}

/// The owner of group `web` that `socket`'s daemon reports running.
fn running_owner(socket: &Path) -> Option<String> {
    crate::status_cmd::fetch(socket).ok().and_then(|s| {
        s.groups
            .into_iter()
            .find(|g| g.name == GROUP && g.state_here.as_deref() == Some("running"))
            .and_then(|g| g.owner)
    })
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("{what} within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Act two; returns the JSON summary.
pub(super) fn failover(dir: &Path, config_path: PathBuf, json: bool) -> anyhow::Result<Value> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let say = Say { json };
    let config = conf::load(&config_path).context("the guest demo configuration")?;
    let plan = Plan::from_config(&config)?;
    let daemon = sibling_binary("guest-clusterd")?;
    write_scripts(dir)?;
    netns::become_subreaper();
    netns::clean_up_on_interrupt()?;
    let mut hosts = plan.guests.clone();
    hosts.push(Plan::client());
    let (net, left) = DemoNet::build(&hosts)?;
    if !left.is_empty() {
        eprintln!("removed what an interrupted demo left: {}", left.join(", "));
    }
    // Dropped before `net`: the daemons go first, then the namespaces.
    let mut daemons = Daemons(Vec::new());
    let names: Vec<String> = plan.guests.iter().map(|g| g.name.clone()).collect();
    let socket = |n: &str| dir.join(format!("{n}.sock"));
    for n in &names {
        let child = spawn_guest(&net, dir, &daemon, &config_path, n)?;
        daemons.0.push((n.clone(), child));
    }
    for n in &names {
        wait_joined(dir, &mut daemons, n, &socket(n))?;
    }
    let t0 = Instant::now();
    let v4 = Client::start(plan.vip4, t0)?;
    let v6 = Client::start(plan.vip6, t0)?;
    let sampler = Sampler::start(&plan.guests, [plan.vip4, plan.vip6], t0)?;
    let active = wait_for(
        "the web service did not answer on both floating addresses",
        Duration::from_secs(20),
        || {
            let a = v4.answered(Duration::ZERO, None)?;
            (v6.answered(Duration::ZERO, None).as_ref() == Some(&a)).then_some(a)
        },
    )?;
    let standby = names
        .iter()
        .find(|n| **n != active)
        .cloned()
        .context("no standby")?;
    say.line(format_args!(
        "Guest cluster `{}`: {} guest daemons, each in a network namespace of its own \
         ({}) on one bridge; the client is in {}.",
        config.cluster.name,
        names.len(),
        names
            .iter()
            .map(|n| netns::ns_name(n))
            .collect::<Vec<_>>()
            .join(", "),
        netns::ns_name(CLIENT)
    ));
    say.line(format_args!(
        "Group `{GROUP}` runs on {active}: floating addresses {} and {} on eth0 and a web server \
         (python3 -m http.server, started by an exec script).",
        plan.vip4, plan.vip6
    ));
    say.line(format_args!(
        "The client requests {} and {} every {} ms; {active} answers both.",
        v4.url,
        v6.url,
        PERIOD.as_millis()
    ));
    std::thread::sleep(Duration::from_millis(300));

    say.line(format_args!(
        "\nKilling {active}'s daemon with SIGKILL: its web server and addresses stay up \
         until the others fence it (the demo's fence agent kills every process in its \
         namespace and takes its addresses and link down, as a power-off would)..."
    ));
    let killed_at = cluster_core::events::now_ms();
    let fault = t0.elapsed();
    if let Some((_, child)) = daemons.0.iter_mut().find(|(n, _)| *n == active) {
        let pid = i32::try_from(child.id()).context("pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let _ = child.wait();
    }
    let took = wait_for(
        "no other guest answered on both floating addresses",
        Duration::from_secs(15),
        || {
            let a = v4.answered(fault, Some(&active))?;
            let b = v6.answered(fault, Some(&active))?;
            Some((a, b))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let (url4, url6) = (v4.url.clone(), v6.url.clone());
    let (s4, s6) = (v4.finish(), v6.finish());
    let looks = sampler.finish()?;
    took.map_err(|e| anyhow::anyhow!("{e:#}; the guests' logs are in {}", dir.display()))?;

    let seen4 = seen(&s4, fault);
    let seen6 = seen(&s6, fault);
    let doubles = [overlaps(&looks, 0), overlaps(&looks, 1)];
    let new_owner = seen4.after.clone().unwrap_or_default();
    for (family, url, s) in [("IPv4", &url4, &seen4), ("IPv6", &url6, &seen6)] {
        say.line(format_args!(
            "  {family} {url:<28} answered by {} before, by {} after: outage {} ms \
             (last answer from {} +{} ms after the kill, first from {} +{} ms); \
             {} requests, {} failed",
            s.before.as_deref().unwrap_or("nobody"),
            s.after.as_deref().unwrap_or("nobody"),
            ms_text(s.outage),
            s.before.as_deref().unwrap_or("?"),
            ms_text(s.last_from_active),
            s.after.as_deref().unwrap_or("?"),
            ms_text(s.to_standby),
            s.requests,
            s.failed
        ));
    }
    let per_guest = looks.len() / names.len().max(1);
    if doubles.iter().all(Vec::is_empty) {
        say.line(format_args!(
            "  address active on two guests: never ({per_guest} looks at each guest's \
             addresses, one every {} ms)",
            SAMPLE_EVERY.as_millis()
        ));
    } else {
        say.line(format_args!(
            "  address active on two guests: MAYBE, see below ({per_guest} looks at each guest)"
        ));
    }

    // The checks: the demo fails loudly if the service did not move, or
    // was served by two guests, or an address was on two at once.
    for (family, s) in [("IPv4", &seen4), ("IPv6", &seen6)] {
        if s.before.as_deref() != Some(&active) || s.after.as_deref() != Some(&standby) {
            bail!(
                "{family}: answered by {:?} before the kill and {:?} after, not {active} then {standby}",
                s.before,
                s.after
            );
        }
        if !s.strays.is_empty() {
            bail!(
                "{family}: answers from two guests after the kill: {:?}",
                s.strays
            );
        }
    }
    for (family, d) in ["IPv4", "IPv6"].iter().zip(&doubles) {
        if !d.is_empty() {
            let guest = |h: &Held| names.get(h.guest).cloned().unwrap_or_default();
            bail!(
                "the floating {family} address may have been active on two guests at once: {}",
                d.iter()
                    .map(|(a, b)| format!("{} {a:?} and {} {b:?}", guest(a), guest(b)))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }

    let standby_socket = socket(&standby);
    wait_for(
        "the new owner did not report the group running",
        Duration::from_secs(5),
        || (running_owner(&standby_socket).as_deref() == Some(standby.as_str())).then_some(()),
    )?;
    let client =
        crate::target::Client::new(&crate::target::Target::socket(standby_socket.clone()))?;
    let events = match client.call(&cluster_core::api::Request::Events {
        since_ms: Some(killed_at),
        limit: None,
    })? {
        cluster_core::api::Response::Events(e) => e,
        other => return Err(crate::target::unexpected(&other)),
    };
    let shown = [
        "peer_lost",
        "fence_started",
        "fence_failed",
        "fence_succeeded",
        "lease_wait",
        "takeover_allowed",
        "group_placed",
        "group_starting",
        "resource_started",
        "group_running",
    ];
    let timeline: Vec<Value> = events
        .into_iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| shown.contains(&k)))
        .collect();
    let status = crate::status_cmd::fetch(&standby_socket)?;
    say.line(format_args!(
        "\nOn {standby}, in ms after the kill (heartbeat timeout {} ms; IPv6 duplicate \
         address detection on the guests' eth0 set to {} ms, the kernel's default takes 1-2 s):",
        plan.heartbeat_timeout.as_millis(),
        netns::DAD_RETRANS_MS
    ));
    for e in &timeline {
        say.line(super::timeline_line(
            e,
            killed_at,
            &["to", "peer", "by", "resource", "reason", "wait_ms", "error"],
        ));
    }
    say.line(format_args!("\n{}", crate::status_cmd::render(&status)));

    // The fenced guest is powered on again: its own addresses and link
    // back, its daemon started. Fail-back is manual: `web` stays.
    net.power_on(&active)?;
    let child = spawn_guest(&net, dir, &daemon, &config_path, &active)?;
    if let Some(slot) = daemons.0.iter_mut().find(|(n, _)| *n == active) {
        slot.1 = child;
    }
    wait_joined(dir, &mut daemons, &active, &socket(&active))?;
    std::thread::sleep(Duration::from_secs(1));
    let answer = netns::in_netns(&netns::ns_name(CLIENT), {
        let addr = SocketAddr::new(plan.vip4, PORT);
        move || get(addr)
    })?
    .join()?;
    if answer.as_deref() != Ok(standby.as_str())
        || running_owner(&standby_socket).as_deref() != Some(standby.as_str())
    {
        bail!("after {active} came back, {GROUP} is not served by {standby} alone: {answer:?}");
    }
    say.line(format_args!(
        "{active} is powered on and back in the cluster; fail-back is manual, so {} is still \
         answered by {standby} (`clusterctl group move {GROUP} {active}` would move it).\n",
        url4
    ));
    stop(&mut daemons)?;
    drop(daemons);
    drop(net);

    let client_json = |url: &str, s: &Seen| {
        json!({
            "url": url,
            "before": s.before,
            "after": s.after,
            "outage_ms": ms(s.outage),
            "to_standby_ms": ms(s.to_standby),
            "last_from_active_ms": ms(s.last_from_active),
            "requests": s.requests,
            "failed": s.failed,
        })
    };
    Ok(json!({
        "killed": active,
        "new_owner": new_owner,
        // `fence` (the fence agent confirmed g1 off) or `lease`.
        "takeover_by": timeline
            .iter()
            .find(|e| e["kind"] == "takeover_allowed")
            .map(|e| e["by"].clone()),
        "takeover_ms": ms(seen4.to_standby.max(seen6.to_standby)),
        "clients": {
            "ipv4": client_json(&url4, &seen4),
            "ipv6": client_json(&url6, &seen6),
        },
        "two_owners": {
            "looks_per_guest": per_guest,
            "every_ms": SAMPLE_EVERY.as_millis() as u64,
            "overlaps": doubles.iter().map(Vec::len).sum::<usize>(),
        },
        "timeline": timeline,
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn answer(at: u64, from: &str) -> Sample {
        Sample {
            at: ms(at),
            answer: Ok(from.into()),
        }
    }

    fn failure(at: u64) -> Sample {
        Sample {
            at: ms(at),
            answer: Err("connect: TimedOut".into()),
        }
    }

    #[test]
    fn the_outage_runs_from_the_last_answer_of_the_old_owner_to_the_first_of_the_new() {
        let samples = [
            answer(0, "g1"),
            answer(50, "g1"),
            answer(600, "g1"),
            failure(700),
            failure(800),
            answer(1400, "g2"),
            answer(1450, "g2"),
        ];
        let s = seen(&samples, ms(100));
        assert_eq!(s.before.as_deref(), Some("g1"));
        assert_eq!(s.after.as_deref(), Some("g2"));
        assert_eq!(s.outage, Some(ms(800)));
        assert_eq!(s.to_standby, Some(ms(1300)));
        assert_eq!(s.last_from_active, Some(ms(500)));
        assert_eq!((s.requests, s.failed), (7, 2));
        assert!(s.strays.is_empty());
    }

    #[test]
    fn answers_from_two_guests_after_the_kill_are_strays() {
        let samples = [
            answer(0, "g1"),
            answer(1400, "g2"),
            answer(1450, "g1"),
            answer(1500, "g3"),
            answer(1550, "g2"),
        ];
        let s = seen(&samples, ms(100));
        assert_eq!(
            s.strays,
            [(ms(1450), "g1".to_owned()), (ms(1500), "g3".to_owned())]
        );
    }

    #[test]
    fn no_answer_after_the_kill_means_no_outage_figure() {
        let s = seen(&[answer(0, "g1"), failure(200)], ms(100));
        assert_eq!(s.after.as_deref(), Some("g1"));
        assert_eq!((s.outage, s.to_standby), (None, None));
    }

    fn look(at: u64, guest: usize, v4: bool) -> Look {
        Look {
            at: ms(at),
            guest,
            active: [v4, false],
        }
    }

    #[test]
    fn a_handover_seen_in_order_is_no_overlap() {
        // g1 holds the address until some time between 100 and 105 ms;
        // g2 gets it between 400 and 405 ms.
        let looks = [
            look(0, 0, true),
            look(1, 1, false),
            look(100, 0, true),
            look(101, 1, false),
            look(105, 0, false),
            look(106, 1, false),
            look(400, 0, false),
            look(401, 1, false),
            look(405, 0, false),
            look(406, 1, true),
        ];
        assert!(overlaps(&looks, 0).is_empty());
        assert!(overlaps(&looks, 1).is_empty());
    }

    #[test]
    fn both_active_or_no_proof_of_order_is_an_overlap() {
        // Both seen active in one round.
        let both = [look(0, 0, true), look(1, 1, true)];
        assert_eq!(overlaps(&both, 0).len(), 1);
        // g2 was last seen without it at 101 ms, g1 first seen without it
        // at 105 ms: g2 may have had it before g1 let it go.
        let unproven = [
            look(100, 0, true),
            look(101, 1, false),
            look(105, 0, false),
            look(106, 1, true),
        ];
        assert_eq!(overlaps(&unproven, 0).len(), 1);
        // The same guest twice is no overlap.
        let again = [look(0, 0, true), look(5, 0, false), look(10, 0, true)];
        assert!(overlaps(&again, 0).is_empty());
    }
}
