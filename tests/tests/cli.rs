//! The binaries as an operator meets them: `clusterctl config check`, the
//! daemons' start-up checks, `clusterctl status` against a running daemon,
//! and the demo.

use std::time::Duration;

use testbed::{Proc, example, run, wait_until};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_check_accepts_every_example() {
    let files: Vec<String> = [
        "two-hosts.toml",
        "guest-1plus1.toml",
        "guest-nplus1.toml",
        "dr-asymmetric.toml",
        "demo-hosts.toml",
        "demo-guests.toml",
    ]
    .iter()
    .map(|f| example(f).display().to_string())
    .collect();
    let mut args = vec!["config", "check"];
    args.extend(files.iter().map(String::as_str));
    let out = run("clusterctl", &args);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        stdout(&out).matches(": ok").count(),
        files.len(),
        "{}",
        stdout(&out)
    );
}

#[test]
fn config_check_reports_file_line_and_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = std::fs::read_to_string(example("guest-nplus1.toml")).unwrap_or_default();
    let broken = src
        .replacen(
            "nodes = [\"app-2\", \"spare\"]",
            "nodes = [\"app-2\", \"sapre\"]",
            1,
        )
        .replacen("interval = \"250ms\"", "interval = \"250\"", 1);
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, &broken).unwrap_or_default();
    let line = |needle: &str| {
        broken[..broken.find(needle).unwrap_or(0)]
            .matches('\n')
            .count()
            + 1
    };
    let p = path.display().to_string();

    let out = run("clusterctl", &["config", "check", &p]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "{p}:{}:12: heartbeat.interval: invalid duration",
            line("\"250\"")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{p}:{}:19: groups[1].nodes[1]: no node named `sapre`",
            line("sapre")
        )),
        "{text}"
    );
    assert!(stderr(&out).contains("2 errors found"), "{}", stderr(&out));

    let out = run("clusterctl", &["--json", "config", "check", &p]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let errors = json[0]["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(json[0]["ok"], false);
    assert!(
        errors
            .iter()
            .any(|e| e["key"] == "groups[1].nodes[1]" && e["line"] == line("sapre")),
        "{json}"
    );
}

#[test]
fn config_check_on_a_missing_file_fails_cleanly() {
    let out = run(
        "clusterctl",
        &["config", "check", "/nonexistent/cluster.toml"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("cannot read /nonexistent/cluster.toml"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = run("clusterctl", &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run("clusterctl", &["--help"]);
    assert!(out.status.success() && stdout(&out).contains("config"));
}

#[test]
fn daemons_refuse_a_bad_start_with_a_clear_message() {
    let guest = example("guest-1plus1.toml").display().to_string();
    let out = run("host-clusterd", &["--config", &guest, "--node", "web-1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("describes a Guest cluster"),
        "{}",
        stderr(&out)
    );

    let out = run("guest-clusterd", &["--config", &guest, "--node", "web-9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node `web-9` is not in"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[cluster]\nname = \"x\"\nkind = \"guest\"\nauth_key_file = \"/k\"\ncolour = 1\n",
    )
    .unwrap_or_default();
    let out = run(
        "guest-clusterd",
        &["--config", &bad.display().to_string(), "--node", "a"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("bad.toml:5:1: cluster.colour"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn host_daemon_reports_its_hypervisor_through_the_control_socket() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("api.sock");
    let state = dir.path().join("state");
    let config = testbed::demo_config(dir.path()).display().to_string();
    let mut daemon = Proc::spawn(
        "host-clusterd",
        &[
            "--config",
            &config,
            "--node",
            "host-b",
            "--state-dir",
            &state.display().to_string(),
            "--api-socket",
            &socket.display().to_string(),
        ],
        &dir.path().join("daemon.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sock = socket.display().to_string();
    wait_until("the control socket", Duration::from_secs(10), || {
        socket.exists()
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let out = run("clusterctl", &["--json", "status", "--socket", &sock]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(s["node"], "host-b");
    assert_eq!(s["cluster"], "demo");
    assert_eq!(s["pid"], daemon.pid());
    assert_eq!(s["hypervisor"]["uri"], "test:///default");
    assert_eq!(s["hypervisor"]["connected"], true);
    let domains = s["hypervisor"]["domains"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        domains
            .iter()
            .any(|d| d["name"] == "test" && d["state"] == "running" && d["managed"] == false),
        "{s}"
    );
    assert_eq!(s["groups"][0]["resources"][0]["state"], "stopped");

    let text = run("clusterctl", &["status", "--socket", &sock]);
    assert!(
        stdout(&text).contains("Hypervisor test:///default (connected)"),
        "{}",
        stdout(&text)
    );
    assert!(
        stdout(&text).contains("host-b           this node"),
        "{}",
        stdout(&text)
    );

    assert!(
        daemon.terminate(Duration::from_secs(5)).unwrap_or(false),
        "clean exit on SIGTERM"
    );
}

#[test]
fn status_of_an_absent_daemon_says_so_and_exits_1() {
    let out = run(
        "clusterctl",
        &["status", "--socket", "/nonexistent/api.sock"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the daemon at /nonexistent/api.sock"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_demo_fails_vms_and_a_web_service_over_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path().display().to_string();
    let out = run("clusterctl", &["--json", "demo", "--dir", &d]);
    assert!(out.status.success(), "{}", stderr(&out));
    let demo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // Act two: web service `web` (floating IPv4 + IPv6 address and a
    // python web server) on guest g1 in its own namespace; g1's daemon is
    // killed; g2 fences it and takes over; a client in a fourth namespace
    // saw g1 answer, then g2, on both addresses.
    let failover = &demo["guest_failover"];
    assert_eq!(failover["killed"], "g1", "{failover}");
    assert_eq!(failover["new_owner"], "g2", "{failover}");
    assert_eq!(failover["takeover_by"], "fence", "{failover}");
    for family in ["ipv4", "ipv6"] {
        let c = &failover["clients"][family];
        assert_eq!(c["before"], "g1", "{c}");
        assert_eq!(c["after"], "g2", "{c}");
        // Heartbeat timeout 500 ms, fence, ARP probes 400 ms, DAD 100 ms,
        // web server start: about 1.3 s here; bounded generously for a
        // loaded machine.
        let outage = c["outage_ms"].as_u64().unwrap_or(u64::MAX);
        let to_standby = c["to_standby_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(outage <= to_standby && to_standby < 10_000, "{c}");
        eprintln!("demo, {family}: {c}");
    }
    assert_eq!(failover["two_owners"]["overlaps"], 0, "{failover}");
    assert!(
        failover["two_owners"]["looks_per_guest"].as_u64() > Some(50),
        "{failover}"
    );
    let kinds: Vec<&str> = failover["timeline"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    let at = |k: &str| kinds.iter().position(|x| *x == k);
    assert!(at("fence_succeeded").is_some(), "{kinds:?}");
    assert!(at("fence_succeeded") < at("takeover_allowed"), "{kinds:?}");
    assert!(at("takeover_allowed") < at("group_running"), "{kinds:?}");
    let app = &failover["status"]["groups"][0];
    assert_eq!(app["owner"], "g2", "{app}");
    // The story the demo tells (on stderr in --json mode, on stdout
    // otherwise): what the client saw, and never two owners.
    let story = stderr(&out);
    for line in [
        "answered by g1 before, by g2 after: outage ",
        "address active on two guests: never",
        "fence_succeeded    peer=g1",
        "fail-back is manual, so http://192.0.2.100:8080/ is still answered by g2",
    ] {
        assert!(story.contains(line), "no `{line}` in:\n{story}");
    }
    assert_eq!(story.matches(" by g2 after: outage ").count(), 2, "{story}");
    assert_eq!(demo_leftovers(dir.path()), (vec![], vec![]));
    let statuses = &demo["hosts"];
    let nodes: Vec<&str> = statuses
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["node"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(nodes, ["host-a", "host-b", "host-c"]);
    // Act one: host-a's daemon (and its hypervisor) killed; db restarts on
    // host-c (host-b is full), web1 fits nowhere and stays down, saying why.
    let hosts = &demo["host_failover"];
    assert_eq!(hosts["killed"], "host-a", "{hosts}");
    assert_eq!(
        hosts["before"]["db"],
        serde_json::json!(["host-a"]),
        "{hosts}"
    );
    assert_eq!(
        hosts["after"]["db"],
        serde_json::json!(["host-c"]),
        "{hosts}"
    );
    assert!(hosts["after"].get("web1").is_none(), "{hosts}");
    let down = hosts["down"].as_array().cloned().unwrap_or_default();
    assert!(
        down.iter().any(|d| d["group"] == "web1"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("lacks capacity"))),
        "{hosts}"
    );
    for vm in ["web2", "batch1", "batch2", "batch3"] {
        assert_eq!(
            hosts["before"][vm], hosts["after"][vm],
            "{vm} moved: {hosts}"
        );
    }
    let kinds: Vec<&str> = hosts["timeline"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    let at = |k: &str| kinds.iter().position(|x| *x == k);
    assert!(at("fence_succeeded") < at("takeover_allowed"), "{kinds:?}");
    assert!(at("takeover_allowed") < at("group_running"), "{kinds:?}");
    assert!(
        story.contains("Killing host-a's daemon with SIGKILL"),
        "{story}"
    );
    // The demo key is private.
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(dir.path().join("demo.key")).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
}

/// What a demo left on the machine: the demo's network namespaces
/// (looked at while holding the demo's lock, so that no other demo runs
/// meanwhile) and processes whose command line names `dir`.
fn demo_leftovers(dir: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let out = std::process::Command::new("flock")
        .args(["/run/kvmha-demo.lock", "ip", "netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("flock: {e}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let namespaces = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("kvmha-demo-"))
        .map(str::to_owned)
        .collect();
    let needle = dir.display().to_string();
    let processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(&needle))
                .collect()
        })
        .unwrap_or_default();
    (namespaces, processes)
}

/// Ctrl-C in the middle of act two (SIGINT to the demo's process group,
/// right after the active guest's daemon was killed): the demo removes
/// its namespaces with every process in them and exits 130.
#[test]
fn an_interrupted_demo_leaves_no_namespace_and_no_process() {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(testbed::bin("clusterctl"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("clusterctl demo: {e}"));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    // Another demo (the other test) may hold the lock for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("Killing g1's daemon"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => {
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                panic!("act two did not reach the kill ({e}):\n{}", seen.join("\n"));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGINT)
        .unwrap_or_else(|e| panic!("SIGINT: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(demo_leftovers(dir.path()), (vec![], vec![]));
}

#[test]
fn simulate_prints_the_timeline_and_exits_by_the_verdict() {
    let scenario =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/basic-failover.toml");
    let path = scenario.display().to_string();
    let out = run("clusterctl", &["simulate", &path]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("fence_succeeded"), "{text}");
    assert!(text.contains("web              running on n1"), "{text}");
    assert!(text.contains("PASSED: 2 placement check(s)"), "{text}");

    // The same scenario expecting the wrong node fails, and says where.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let wrong = dir.path().join("wrong.toml");
    let original = std::fs::read_to_string(&scenario).unwrap_or_else(|e| panic!("{e}"));
    let changed = original.replace(
        "at = \"10s\"\nrunning = { web = \"n1\" }",
        "at = \"10s\"\nrunning = { web = \"n0\" }",
    );
    assert_ne!(changed, original, "the scenario changed shape");
    std::fs::write(&wrong, changed).unwrap_or_else(|e| panic!("{e}"));
    let out = run(
        "clusterctl",
        &["simulate", &wrong.display().to_string(), "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["passed"], false);
    assert!(
        v["failures"].to_string().contains("10"),
        "{}",
        v["failures"]
    );

    let out = run("clusterctl", &["simulate", "/nonexistent/x.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read scenario /nonexistent/x.toml"),
        "{}",
        stderr(&out)
    );
}
