//! Groups failing over for real: guest daemons in their own network
//! namespaces run an `exec` application (one long-running process per node,
//! with a pid file), a custom monitor watches it, and a fence agent "powers
//! off" a node by killing every process in its namespace. A watcher samples
//! every node's application throughout and fails the test if two ever run
//! at once. Needs root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::cluster::{Cluster, Spec};
use testbed::run;
use testbed::watch::Watcher;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The application: `start` runs one `sleep` per node and records it,
/// `stop` kills it, `status` exits 0 while it lives and 7 when it does not
/// (a zombie counts as dead: nothing reaps orphans on this machine).
const APP: &str = r#"#!/bin/sh
dir={dir}
pidf=$dir/app.$KVMHA_NODE.pid
alive() {
    [ -f "$pidf" ] || return 1
    s=$(awk '{print $3}' /proc/$(cat "$pidf")/stat 2>/dev/null)
    [ -n "$s" ] && [ "$s" != Z ]
}
case "$1" in
start)
    [ -f $dir/slow-start ] && sleep 1
    alive && exit 0
    sleep 100000 </dev/null >/dev/null 2>&1 &
    echo $! > "$pidf"
    echo "$KVMHA_NODE start $KVMHA_REASON prev=$KVMHA_PREVIOUS_OWNER fenced=$KVMHA_PREVIOUS_OWNER_FENCED" >> $dir/app.log
    ;;
stop)
    [ -f $dir/slow-stop ] && sleep 1
    if alive; then kill $(cat "$pidf"); fi
    rm -f "$pidf"
    echo "$KVMHA_NODE stop" >> $dir/app.log
    ;;
status|monitor)
    alive && exit 0
    exit 7
    ;;
esac
"#;

fn group(recovery: &str) -> String {
    format!(
        r#"{fence}
[[groups]]
name = "app"
nodes = ["n0", "n1"]
[[groups.resources]]
name = "svc"
kind = "exec"
start = ["{{dir}}/app", "start"]
stop = ["{{dir}}/app", "stop"]
status = ["{{dir}}/app", "status"]
[[groups.monitors]]
name = "alive"
kind = "custom"
command = ["{{dir}}/app", "monitor"]
interval = "200ms"
timeout = "2s"
recovery = {recovery}
"#,
        fence = testbed::fence::config(3)
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

/// Wait until every node's newest placement puts `app` on `node` and
/// every node sees it running there.
fn wait_all_agree(c: &Cluster, node: &str) {
    ok(testbed::wait_until(
        "every node knows the placement",
        Duration::from_secs(10),
        || {
            (0..3).all(|k| {
                c.status(k).is_ok_and(|s| {
                    s.groups.iter().any(|g| {
                        g.name == "app"
                            && g.target.as_deref() == Some(node)
                            && g.owner.as_deref() == Some(node)
                    })
                })
            })
        },
    ));
}

/// A three-node guest cluster running `app` (on n0, backed by n1).
fn cluster(recovery: &str) -> Cluster {
    let c = ok(Cluster::start_with(
        &Spec {
            extra: group(recovery),
            ..Spec::default()
        },
        |dir| {
            write_script(dir, "app", APP);
            testbed::fence::install(dir);
        },
    ));
    testbed::fence::arm(&c);
    ok(c.wait_converged(Duration::from_secs(10)));
    c
}

/// Kills every node's application when the test ends, however it ends
/// (the daemons die with SIGKILL and leave their groups running).
struct Reap(PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        for node in ["n0", "n1", "n2"] {
            if let Some(pid) = app_pid(&self.0, node) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The pid of the application on `node` if it lives.
fn app_pid(dir: &Path, node: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(format!("app.{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

fn running(dir: &Path) -> BTreeSet<String> {
    ["n0", "n1", "n2"]
        .iter()
        .filter(|n| app_pid(dir, n).is_some())
        .map(|n| (*n).to_owned())
        .collect()
}

fn wait_running_on(dir: &Path, node: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let r = running(dir);
        if r.len() == 1 && r.contains(node) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "app not running on {node} alone within {timeout:?}: running on {r:?}\n{}",
            std::fs::read_to_string(dir.join("app.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn app_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("app.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn kinds(events: &[Value], group: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["group"] == group)
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

fn ctl(c: &Cluster, k: usize, args: &[&str]) -> std::process::Output {
    let sock = c.dir().join(format!("n{k}.sock")).display().to_string();
    let mut all = args.to_vec();
    all.extend(["--socket", &sock]);
    run("clusterctl", &all)
}

const LADDER: &str = r#"{ restart = 1, failover = 1, final_action = "stop_group" }"#;

#[test]
fn kill_9_of_the_active_node_fences_it_and_the_standby_takes_over() {
    let mut c = cluster(LADDER);
    let dir = c.dir().to_owned();
    let _reap = Reap(dir.clone());
    wait_running_on(&dir, "n0", Duration::from_secs(10));
    wait_all_agree(&c, "n0");
    let watcher = {
        let d = dir.clone();
        Watcher::new(move || running(&d))
    };

    // Power loss of n0: the daemon dies; the fence agent kills the rest
    // of its namespace (the application) before n1 may start it.
    c.kill(0);
    let took = wait_running_on(&dir, "n1", Duration::from_secs(15));
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "two nodes ran app: {doubles:?}");
    eprintln!(
        "takeover: kill -9 of n0 to app running on n1 in {} ms (heartbeat timeout 500 ms)",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    let log = app_log(&dir);
    assert_eq!(
        log.last().map(String::as_str),
        Some("n1 start FAILOVER prev=n0 fenced=1"),
        "{log:?}"
    );
    assert_eq!(testbed::fence::fenced(&dir), ["n0"]);
    // The survivors' coordinator (n1, the lowest live node) fenced n0
    // before it placed the group on n1.
    // The process is up before the start script returns: wait for the
    // node to report the group running.
    ok(testbed::wait_until(
        "n1 reports app running",
        Duration::from_secs(5),
        || {
            c.status(1).is_ok_and(|s| {
                s.groups
                    .iter()
                    .any(|g| g.name == "app" && g.owner.as_deref() == Some("n1"))
            })
        },
    ));
    let ev = c.events(1);
    let order: Vec<&str> = ev
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| ["fence_succeeded", "group_placed", "group_running"].contains(k))
        .collect();
    let fenced = order.iter().position(|k| *k == "fence_succeeded");
    let placed = order.iter().rposition(|k| *k == "group_placed");
    assert!(fenced.is_some() && fenced < placed, "{order:?}");
    let s = ok(c.status(1));
    let g = s.groups.iter().find(|g| g.name == "app");
    assert_eq!(g.and_then(|g| g.owner.as_deref()), Some("n1"), "{g:?}");
    assert!(
        g.and_then(|g| g.reason.as_deref())
            .is_some_and(|r| r.contains("n0")),
        "{g:?}"
    );
}

#[test]
fn a_failing_application_walks_the_ladder_restart_then_failover_then_stop() {
    let c = cluster(LADDER);
    let dir = c.dir().to_owned();
    let _reap = Reap(dir.clone());
    wait_running_on(&dir, "n0", Duration::from_secs(10));
    let watcher = {
        let d = dir.clone();
        Watcher::new(move || running(&d))
    };
    let crash = |node: &str| {
        let pid = app_pid(&dir, node).unwrap_or_else(|| panic!("app not running on {node}"));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
            nix::sys::signal::Signal::SIGKILL,
        );
    };

    // First crash: restarted in place (restart = 1).
    let before = app_pid(&dir, "n0");
    crash("n0");
    let t0 = Instant::now();
    loop {
        if let Some(p) = app_pid(&dir, "n0")
            && Some(p) != before
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no restart on n0");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Second crash: restarts used up, the group fails over (failover = 1).
    crash("n0");
    wait_running_on(&dir, "n1", Duration::from_secs(10));
    // Third crash, on n1: restarted once there...
    let before = app_pid(&dir, "n1");
    crash("n1");
    let t0 = Instant::now();
    loop {
        if let Some(p) = app_pid(&dir, "n1")
            && Some(p) != before
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no restart on n1");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...then, failovers used up: the final action stops the group.
    crash("n1");
    let t0 = Instant::now();
    loop {
        let s = ok(c.status(1));
        let g = s.groups.into_iter().find(|g| g.name == "app");
        if g.as_ref().is_some_and(|g| g.wanted == Some(false)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never stopped: {g:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(running(&dir).is_empty(), "{:?}", running(&dir));
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "two nodes ran app: {doubles:?}");
    let starts: Vec<String> = app_log(&dir)
        .into_iter()
        .filter(|l| l.contains(" start "))
        .map(|l| l.split(" prev").next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        starts,
        [
            "n0 start START",
            "n0 start RECOVER",
            "n1 start FAILOVER",
            "n1 start RECOVER"
        ]
    );

    // The operator clears the failures and starts it again: it runs on
    // its preferred node.
    let out = ctl(&c, 2, &["clear", "app"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = ctl(&c, 2, &["group", "start", "app"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    wait_running_on(&dir, "n0", Duration::from_secs(10));
}

#[test]
fn a_manual_move_stops_before_it_starts_and_leaves_no_constraint() {
    let mut c = cluster(LADDER);
    let dir = c.dir().to_owned();
    let _reap = Reap(dir.clone());
    wait_running_on(&dir, "n0", Duration::from_secs(10));
    let watcher = {
        let d = dir.clone();
        Watcher::new(move || running(&d))
    };
    std::fs::write(dir.join("slow-stop"), "").unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let out = ctl(&c, 2, &["group", "move", "app", "n1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let took = wait_running_on(&dir, "n1", Duration::from_secs(10));
    eprintln!(
        "manual move with a 1 s stop: {} ms from the command to running on n1",
        (t0.elapsed().as_millis()).max(took.as_millis())
    );
    let log = app_log(&dir);
    let stop = log.iter().position(|l| l == "n0 stop");
    let start = log.iter().position(|l| l.starts_with("n1 start MOVE"));
    assert!(stop.is_some() && stop < start, "{log:?}");
    let _ = std::fs::remove_file(dir.join("slow-stop"));

    // No hidden constraint: n1 fails, the group goes back to n0.
    c.kill(1);
    wait_running_on(&dir, "n0", Duration::from_secs(15));
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "two nodes ran app: {doubles:?}");
}

#[test]
fn kill_9_in_the_middle_of_a_start_then_restart_resumes_without_a_twin() {
    let mut c = cluster(LADDER);
    let dir = c.dir().to_owned();
    let _reap = Reap(dir.clone());
    wait_running_on(&dir, "n0", Duration::from_secs(10));
    let watcher = {
        let d = dir.clone();
        Watcher::new(move || running(&d))
    };
    // The move's start on n1 takes a second; n1's daemon dies inside it.
    std::fs::write(dir.join("slow-start"), "").unwrap_or_else(|e| panic!("{e}"));
    let out = ctl(&c, 0, &["group", "move", "app", "n1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    ok(
        c.wait_event(1, "group_starting", Duration::from_secs(5), |e| {
            e["group"] == "app"
        }),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.kill(1);
    let _ = std::fs::remove_file(dir.join("slow-start"));
    // n1 is fenced (its namespace emptied); the group comes back to n0.
    wait_running_on(&dir, "n0", Duration::from_secs(15));
    // n1 is powered on again (its fence took its link down) and its daemon
    // starts from its persisted state: it probes, finds nothing running,
    // rejoins, and starts nothing.
    ok(c.net.link_up(1, 0));
    let restarted = cluster_core::events::now_ms();
    ok(c.start_node(1));
    ok(
        c.wait_event(1, "quorum_gained", Duration::from_secs(10), |e| {
            e["ts_ms"].as_u64().unwrap_or(0) >= restarted
        }),
    );
    wait_all_agree(&c, "n0");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running(&dir), BTreeSet::from(["n0".to_owned()]));
    let doubles = watcher.finish();
    assert!(doubles.is_empty(), "two nodes ran app: {doubles:?}");
    let k1 = kinds(&c.events(1), "app");
    assert!(
        !k1.iter()
            .skip_while(|k| *k != "daemon_started")
            .any(|k| k == "group_running"),
        "n1 ran app after its restart: {k1:?}"
    );
    // The state file of n1 was written before it acted, and is readable.
    let state: PathBuf = c.state_dir(1).join("engine-state.json");
    let text =
        std::fs::read_to_string(&state).unwrap_or_else(|e| panic!("{}: {e}", state.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["version"], 1, "{v}");
}

#[test]
fn what_if_simulates_from_the_live_cluster_without_touching_it() {
    let c = cluster(LADDER);
    let dir = c.dir().to_owned();
    let _reap = Reap(dir.clone());
    wait_running_on(&dir, "n0", Duration::from_secs(10));
    wait_all_agree(&c, "n0");
    let out = ctl(
        &c,
        2,
        &["simulate", "--what-if", "power_off n0", "--for", "20s"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("fence_succeeded"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["app", "n0", "n1", "(changes)"]),
        "{text}"
    );
    // Asking for a move shows it, and changes nothing in the live cluster.
    let out = ctl(&c, 2, &["simulate", "--what-if", "move app n1", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["before"]["app"], "n0", "{v}");
    assert_eq!(v["final_placement"]["app"][0], "n1", "{v}");
    assert_eq!(running(&dir), BTreeSet::from(["n0".to_owned()]));
    let out = ctl(&c, 2, &["simulate", "--what-if", "explode n0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of"));
}
