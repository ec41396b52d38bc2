//! The control API beyond `status`, through the socket, the management
//! address and `clusterctl`: events, group commands, the bearer token,
//! `status --watch`, and the daemon's refusals at start. Needs root.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cluster_core::api::{self, ApiErrorKind, ClientError, Request, Response};
use serde_json::Value;
use testbed::cluster::{Cluster, Spec};
use testbed::{Proc, bin, run};

const TOKEN: &str = "test-token-0123456789";
const PORT: u16 = 7440;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn socket(c: &Cluster, k: usize) -> PathBuf {
    c.dir().join(format!("n{k}.sock"))
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A converged three-node guest cluster with a group `app` on n0 and n1,
/// and a management address on each node's loopback (in its namespace).
fn cluster() -> Cluster {
    let spec = Spec {
        extra: format!(
            "[[groups]]\nname = \"app\"\nnodes = [\"n0\", \"n1\"]\nautostart = false\n\n\
             [api]\nlisten = [\"127.0.0.1:{PORT}\"]\ntoken_file = \"{{dir}}/api.token\"\n"
        ),
        ..Spec::default()
    };
    let c = ok(Cluster::start_with(&spec, |dir| {
        write_private(&dir.join("api.token"), &format!("{TOKEN}\n"));
    }));
    ok(c.wait_converged(Duration::from_secs(10)));
    c
}

fn call(c: &Cluster, k: usize, request: &Request) -> Result<Response, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(api::call(&socket(c, k), request))
}

fn events(c: &Cluster, k: usize, since_ms: Option<u64>, limit: Option<usize>) -> Vec<Value> {
    match call(c, k, &Request::Events { since_ms, limit }) {
        Ok(Response::Events(e)) => e,
        other => panic!("not an events answer: {other:?}"),
    }
}

/// `clusterctl ARGS` against node `k`'s socket.
fn ctl(c: &Cluster, k: usize, args: &[&str]) -> Output {
    let sock = socket(c, k).display().to_string();
    let mut all = args.to_vec();
    all.extend(["--socket", &sock]);
    run("clusterctl", &all)
}

/// `clusterctl ARGS` run inside node `k`'s namespace (for its loopback
/// management address).
fn ctl_in(c: &Cluster, k: usize, args: &[&str]) -> Output {
    c.net
        .command(k, &bin("clusterctl"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run clusterctl: {e}"))
}

#[test]
fn events_over_the_socket_filter_by_time_and_count() {
    let mut c = cluster();
    c.kill(2);
    let lost = ok(c.wait_event(0, "peer_lost", Duration::from_secs(5), |e| {
        e["peer"] == "n2"
    }));
    let lost_ts = lost["ts_ms"].as_u64().unwrap_or(u64::MAX);

    let all = events(&c, 0, None, None);
    let file = c.events(0);
    assert!(all.len() >= 2, "{all:?}");
    assert_eq!(all, file[..all.len()], "the answer is the event log");
    assert_eq!(all[0]["kind"], "daemon_started");
    assert!(all.iter().all(|e| e["node"] == "n0"));

    let since = events(&c, 0, Some(lost_ts), None);
    assert!(!since.is_empty());
    assert!(
        since.iter().all(|e| e["ts_ms"].as_u64() >= Some(lost_ts)),
        "{since:?}"
    );
    assert!(since.contains(&lost), "{since:?}");
    assert!(since.len() < all.len());

    let last2 = events(&c, 0, None, Some(2));
    assert_eq!(last2.len(), 2);
    let now = events(&c, 0, None, None);
    assert!(now.ends_with(&last2) || now.len() > all.len(), "{last2:?}");
    assert!(events(&c, 0, None, Some(0)).is_empty());
    assert!(events(&c, 0, Some(u64::MAX), None).is_empty());
}

#[test]
fn clusterctl_events_prints_json_lines_or_one_line_per_event() {
    let c = cluster();
    let out = ctl(&c, 0, &["--json", "events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let file = c.events(0);
    assert!(!printed.is_empty());
    assert_eq!(printed, file[..printed.len()]);

    let out = ctl(&c, 0, &["--json", "events", "--limit", "1"]);
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));

    let out = ctl(&c, 0, &["events", "--since", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    // HH:MM:SS.mmm node kind key=value...
    let fields: Vec<&str> = first.split(' ').collect();
    assert!(fields.len() >= 3, "{text}");
    assert_eq!(fields[0].len(), 12, "{first}");
    assert_eq!(fields[0].as_bytes()[8], b'.', "{first}");
    assert_eq!(&fields[1..3], ["n0", "daemon_started"], "{first}");
    assert!(fields[3..].iter().all(|f| f.contains('=')), "{first}");

    let future = (cluster_core::events::now_ms() + 3_600_000).to_string();
    let out = ctl(&c, 0, &["events", "--since-ms", &future]);
    assert!(out.status.success() && stdout(&out).is_empty(), "{out:?}");

    // A bad duration is a usage error.
    let out = ctl(&c, 0, &["events", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn clusterctl_events_follow_prints_new_events() {
    let mut c = cluster();
    let sock = socket(&c, 0).display().to_string();
    let mut child = Command::new(bin("clusterctl"))
        .args([
            "--json", "events", "--follow", "--limit", "1", "--socket", &sock,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let first = rx.recv_timeout(Duration::from_secs(5));
    c.kill(2);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                let e: Value = serde_json::from_str(&line).unwrap_or_default();
                if e["kind"] == "peer_lost" && e["peer"] == "n2" {
                    break true;
                }
                seen.push(line);
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.is_ok(), "nothing printed at first");
    assert!(found, "no peer_lost followed; saw {seen:?}");
    // Each event once.
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen);
}

fn group_of(c: &Cluster, k: usize, name: &str) -> cluster_core::status::GroupStatus {
    match call(c, k, &Request::Status) {
        Ok(Response::Status(s)) => s
            .groups
            .into_iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no group {name} in status")),
        other => panic!("not a status answer: {other:?}"),
    }
}

/// Wait until node `k` reports group `name` as `pred` says.
fn wait_group(
    c: &Cluster,
    k: usize,
    name: &str,
    what: &str,
    pred: impl Fn(&cluster_core::status::GroupStatus) -> bool,
) -> cluster_core::status::GroupStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let g = group_of(c, k, name);
        if pred(&g) {
            return g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n{k}: {name} never {what}; last {g:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn group_commands_are_checked_then_applied_by_the_engine() {
    let c = cluster();
    let out = ctl(&c, 0, &["group", "move", "nope", "n1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no group named `nope` (configured groups: app)"),
        "{}",
        stderr(&out)
    );
    let e = call(
        &c,
        0,
        &Request::GroupStop {
            group: "nope".into(),
        },
    )
    .err();
    let kind = e.as_ref().and_then(ClientError::api_error).map(|e| e.kind);
    assert_eq!(kind, Some(ApiErrorKind::NotFound), "{e:?}");

    let out = ctl(&c, 0, &["group", "move", "app", "n2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("group `app` may not run on `n2`"),
        "{}",
        stderr(&out)
    );
    let out = ctl(&c, 0, &["group", "move"]);
    assert_eq!(out.status.code(), Some(2), "usage");

    // `autostart = false`: nothing runs until an operator starts it.
    let g = wait_group(&c, 0, "app", "placed", |g| g.wanted == Some(false));
    assert_eq!(g.owner, None, "{g:?}");

    // Given to n2, a node the group cannot run on: the coordinator (n0)
    // applies it and n2 is answered once a placement shows it.
    let out = ctl(&c, 2, &["group", "start", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("app: start applied in placement epoch")
            && stdout(&out).contains("target n0"),
        "{}",
        stdout(&out)
    );
    let g = wait_group(&c, 0, "app", "running on n0", |g| {
        g.owner.as_deref() == Some("n0")
    });
    assert_eq!(g.state_here.as_deref(), Some("running"));
    assert_eq!(g.target.as_deref(), Some("n0"));

    let out = ctl(&c, 1, &["group", "move", "app", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["accepted"], true);
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("target n1")),
        "{v}"
    );
    let g = wait_group(&c, 1, "app", "running on n1", |g| {
        g.owner.as_deref() == Some("n1")
    });
    assert!(g.reason.is_some_and(|r| !r.is_empty()));
    let g = group_of(&c, 0, "app");
    assert_eq!(g.state_here.as_deref(), Some("stopped"), "{g:?}");

    let out = ctl(&c, 0, &["group", "stop", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    wait_group(&c, 1, "app", "stopped", |g| {
        g.owner.is_none() && g.state_here.as_deref() == Some("stopped")
    });
    let out = ctl(&c, 0, &["clear", "app"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("app: clear applied"),
        "{}",
        stdout(&out)
    );

    // Through the socket, as a program would.
    match call(
        &c,
        1,
        &Request::GroupStart {
            group: "app".into(),
        },
    ) {
        Ok(Response::Accepted { message }) => assert!(message.contains("target n0"), "{message}"),
        other => panic!("{other:?}"),
    }
    wait_group(&c, 0, "app", "running on n0 again", |g| {
        g.owner.as_deref() == Some("n0")
    });
}

#[test]
fn the_management_address_answers_only_with_the_token() {
    let c = cluster();
    let url = format!("http://127.0.0.1:{PORT}");
    let token_file = c.dir().join("api.token").display().to_string();

    let out = ctl_in(
        &c,
        0,
        &[
            "--json",
            "status",
            "--url",
            &url,
            "--token-file",
            &token_file,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(s["node"], "n0");
    assert_eq!(s["cluster"], "test");

    // The token file named in the configuration, and an address without a scheme.
    let config = c.dir().join("cluster.toml").display().to_string();
    let bare = format!("127.0.0.1:{PORT}");
    let out = ctl_in(
        &c,
        1,
        &[
            "--json", "events", "--limit", "1", "--url", &bare, "--config", &config,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(e["node"], "n1");

    let out = ctl_in(&c, 0, &["status", "--url", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the daemon refused: missing bearer token"),
        "{}",
        stderr(&out)
    );
    let wrong = c.dir().join("wrong.token");
    write_private(&wrong, "not-the-token\n");
    let wrong = wrong.display().to_string();
    let out = ctl_in(&c, 0, &["status", "--url", &url, "--token-file", &wrong]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the daemon refused: wrong bearer token"),
        "{}",
        stderr(&out)
    );
    // Group commands are refused the same way there.
    let out = ctl_in(
        &c,
        0,
        &[
            "group",
            "start",
            "web",
            "--url",
            &url,
            "--token-file",
            &token_file,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no group named `web`"),
        "{}",
        stderr(&out)
    );
    // A raw request without the token gets 401 whatever the path.
    let out = Command::new("ip")
        .args(["netns", "exec", &c.net.ns(0), "python3", "-c"])
        .arg(format!(
            "import urllib.request,urllib.error\n\
             try:\n    urllib.request.urlopen('{url}/nope')\n\
             except urllib.error.HTTPError as e:\n    print(e.code)\n"
        ))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stdout(&out).trim(), "401", "{}", stderr(&out));
}

#[test]
fn status_watch_redraws_until_its_count() {
    let c = cluster();
    let out = ctl(
        &c,
        0,
        &["status", "--watch", "--interval", "100ms", "--count", "2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.matches("Every 100ms: clusterctl status").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("Cluster test (guest cluster)").count(), 2);

    let out = ctl(&c, 0, &["--json", "status", "--watch", "--count", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_default())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["node"], "n0");

    // An absent daemon: the redraw says so, and the exit code too.
    let out = run(
        "clusterctl",
        &[
            "status",
            "--watch",
            "--count",
            "1",
            "--socket",
            "/nonexistent/api.sock",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("cannot reach the daemon at /nonexistent/api.sock"));
}

/// The demo configuration in `dir` with `api` keys appended.
fn demo_with_api(dir: &Path, api: &str) -> String {
    let path = testbed::demo_config(dir);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(api);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

fn start_host(dir: &Path, config: &str) -> Output {
    let socket = dir.join("api.sock").display().to_string();
    let state = dir.join("state").display().to_string();
    // The daemon must refuse at once; `timeout` ends it if it does not.
    Command::new("timeout")
        .arg("10")
        .arg(bin("host-clusterd"))
        .args(["--config", config, "--node", "host-b"])
        .args(["--state-dir", &state, "--api-socket", &socket])
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_daemon_refuses_tls_a_busy_address_and_a_bad_token_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("api.token");
    write_private(&token, TOKEN);

    let config = demo_with_api(
        dir.path(),
        &format!(
            "listen = [\"127.0.0.1:0\"]\ntoken_file = \"{}\"\ntls = {{ cert = \"/c.pem\", key = \"/k.pem\" }}\n",
            token.display()
        ),
    );
    let out = start_host(dir.path(), &config);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TLS on the management address is not supported yet")
            && stderr(&out).contains("TLS terminator"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("api.sock").exists());

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = busy.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let config = demo_with_api(
        dir.path(),
        &format!(
            "listen = [\"{addr}\"]\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    let out = start_host(dir.path(), &config);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot listen on the management address {addr}")),
        "{}",
        stderr(&out)
    );

    let open = dir.path().join("open.token");
    std::fs::write(&open, TOKEN).unwrap_or_else(|e| panic!("{e}"));
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let config = demo_with_api(
        dir.path(),
        &format!(
            "listen = [\"127.0.0.1:0\"]\ntoken_file = \"{}\"\n",
            open.display()
        ),
    );
    let out = start_host(dir.path(), &config);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is accessible by group or other users"),
        "{}",
        stderr(&out)
    );
    drop(busy);
}

#[test]
fn a_daemon_serves_its_management_address_next_to_its_socket() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("api.token");
    write_private(&token, TOKEN);
    // A free port, released just before the daemon binds it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let config = demo_with_api(
        dir.path(),
        &format!(
            "listen = [\"127.0.0.1:{port}\"]\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    let socket = dir.path().join("api.sock");
    let mut daemon = ok(Proc::spawn(
        "host-clusterd",
        &[
            "--config",
            &config,
            "--node",
            "host-b",
            "--state-dir",
            &dir.path().join("state").display().to_string(),
            "--api-socket",
            &socket.display().to_string(),
        ],
        &dir.path().join("daemon.log"),
    ));
    ok(testbed::wait_until(
        "the control socket",
        Duration::from_secs(10),
        || socket.exists(),
    ));
    let url = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let by_url = rt.block_on(api::call_url(&url, Some(TOKEN), &Request::Status));
    let by_socket = rt.block_on(api::call(&socket, &Request::Status));
    match (by_url, by_socket) {
        (Ok(Response::Status(a)), Ok(Response::Status(b))) => {
            assert_eq!((a.node.as_str(), a.pid), (b.node.as_str(), b.pid));
        }
        other => panic!("{other:?}"),
    }
    let e = rt
        .block_on(api::call_url(&url, None, &Request::Status))
        .err();
    let kind = e.as_ref().and_then(ClientError::api_error).map(|e| e.kind);
    assert_eq!(kind, Some(ApiErrorKind::Unauthorized), "{e:?}");
    assert!(
        daemon.terminate(Duration::from_secs(10)).unwrap_or(false),
        "clean exit on SIGTERM:\n{}",
        std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
    );
}
