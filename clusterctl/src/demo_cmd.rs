//! `clusterctl demo`: a cluster on one machine with nothing but this
//! project's binaries and libvirt's in-process test driver.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cluster_core::status::MemberState;
use indicatif::{ProgressBar, ProgressStyle};

/// The embedded demo configuration (also `conf/examples/demo-hosts.toml`).
const DEMO_CONFIG: &str = include_str!("../../conf/examples/demo-hosts.toml");
/// The embedded guest demo configuration (also `conf/examples/demo-guests.toml`).
const DEMO_GUESTS: &str = include_str!("../../conf/examples/demo-guests.toml");
/// Where the embedded configurations expect their files.
const DEMO_DIR: &str = "/tmp/kvmha-demo";

/// Daemons that are stopped when the demo ends, however it ends.
struct Daemons(Vec<(String, Child)>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A started cluster: its daemons and their control sockets.
struct Started {
    config: conf::Config,
    config_path: PathBuf,
    daemons: Daemons,
    sockets: Vec<(String, PathBuf)>,
    statuses: Vec<cluster_core::status::NodeStatus>,
}

/// Start one daemon per node of `config_path` and wait until each has
/// heard every peer.
fn start_cluster(
    dir: &Path,
    config_path: PathBuf,
    binary: &str,
    what: &str,
) -> anyhow::Result<Started> {
    let config = conf::load(&config_path).context("the demo configuration")?;
    let daemon = sibling_binary(binary)?;
    let mut daemons = Daemons(Vec::new());
    let mut sockets = Vec::new();
    for node in &config.nodes {
        let socket = dir.join(format!("{}.sock", node.name));
        let child = spawn_daemon(dir, &daemon, &config_path, &node.name)?;
        daemons.0.push((node.name.clone(), child));
        sockets.push((node.name.clone(), socket));
    }
    let bar = ProgressBar::new(sockets.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} {msg} [{pos}/{len}]",
    )?);
    bar.set_message(format!("starting {what}"));
    bar.enable_steady_tick(Duration::from_millis(80));
    let mut statuses = Vec::new();
    for (name, socket) in &sockets {
        match wait_joined(dir, &mut daemons, name, socket) {
            Ok(s) => {
                statuses.push(s);
                bar.inc(1);
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    }
    bar.finish_and_clear();
    Ok(Started {
        config,
        config_path,
        daemons,
        sockets,
        statuses,
    })
}

fn spawn_daemon(
    dir: &Path,
    daemon: &Path,
    config_path: &Path,
    node: &str,
) -> anyhow::Result<Child> {
    let socket = dir.join(format!("{node}.sock"));
    let _ = fs::remove_file(&socket);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{node}.log")))?;
    Command::new(daemon)
        .arg("--config")
        .arg(config_path)
        .args(["--node", node])
        .arg("--state-dir")
        .arg(dir.join("state").join(node))
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", daemon.display()))
}

/// Wait (20 s at most) until the daemon of `name` has heard every peer.
fn wait_joined(
    dir: &Path,
    daemons: &mut Daemons,
    name: &str,
    socket: &Path,
) -> anyhow::Result<cluster_core::status::NodeStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = crate::status_cmd::fetch(socket)
            && s.members.iter().all(|m| m.state != MemberState::Unknown)
        {
            return Ok(s);
        }
        if let Some((_, child)) = daemons.0.iter_mut().find(|(n, _)| n == name)
            && let Some(exit) = child.try_wait()?
        {
            bail!(
                "{name} exited ({exit}); see {}",
                dir.join(format!("{name}.log")).display()
            );
        }
        if Instant::now() > deadline {
            bail!("{name} did not answer on {} within 20 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn run(dir: &Path, keep_running: bool, json: bool) -> anyhow::Result<ExitCode> {
    let (hosts_config, guests_config) = prepare(dir)?;
    let mut hosts = start_cluster(dir, hosts_config, "host-clusterd", "host daemons")?;
    if !json {
        println!(
            "Demo cluster `{}`: {} host daemons running on this machine.\n",
            hosts.config.cluster.name,
            hosts.statuses.len()
        );
        for s in &hosts.statuses {
            println!("{}", crate::status_cmd::render(s));
        }
    }
    if keep_running {
        for (name, child) in std::mem::take(&mut hosts.daemons.0) {
            eprintln!(
                "{name}: pid {} (socket {})",
                child.id(),
                dir.join(format!("{name}.sock")).display()
            );
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&hosts.statuses)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    stop(&mut hosts.daemons)?;

    let failover = guest_failover(dir, guests_config, json)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "hosts": hosts.statuses,
                "guest_failover": failover,
            }))?
        );
    } else {
        println!("Demo stopped; logs are in {}.", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo application: one long-running process per node with a pid
/// file (`status` exits 7 when it is gone, as OCF agents do).
const DEMO_APP: &str = r#"#!/bin/sh
pidf=DIR/app.$KVMHA_NODE.pid
alive() {
    [ -f "$pidf" ] || return 1
    s=$(awk '{print $3}' /proc/$(cat "$pidf")/stat 2>/dev/null)
    [ -n "$s" ] && [ "$s" != Z ]
}
case "$1" in
start) alive && exit 0
       sleep 100000 </dev/null >/dev/null 2>&1 &
       echo $! > "$pidf"
       echo "started on $KVMHA_NODE ($KVMHA_REASON, previous owner: ${KVMHA_PREVIOUS_OWNER:-none})" ;;
stop)  if alive; then kill $(cat "$pidf"); fi; rm -f "$pidf" ;;
status) alive || exit 7 ;;
esac
"#;

/// The pid of the demo application on `node`, if it lives.
fn app_pid(dir: &Path, node: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(dir.join(format!("app.{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

/// Where the demo application runs.
fn app_nodes(dir: &Path, config: &conf::Config) -> Vec<String> {
    config
        .nodes
        .iter()
        .filter(|n| app_pid(dir, &n.name).is_some())
        .map(|n| n.name.clone())
        .collect()
}

fn wait_app_on(
    dir: &Path,
    config: &conf::Config,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let on = app_nodes(dir, config);
        if on == [node] {
            return Ok(t0.elapsed());
        }
        if on.len() > 1 {
            bail!(
                "the application runs on {} at once: a safety rule broke",
                on.join(" and ")
            );
        }
        if t0.elapsed() > timeout {
            bail!("the application did not run on {node} within {timeout:?} (it runs on {on:?})");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Act two: three guest daemons run an application; the active one's
/// daemon is killed; the lease expires and the next node takes over.
fn guest_failover(
    dir: &Path,
    config_path: PathBuf,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut guests = start_cluster(dir, config_path, "guest-clusterd", "guest daemons")?;
    let config = guests.config.clone();
    wait_app_on(dir, &config, "g1", Duration::from_secs(20))?;
    if !json {
        println!(
            "Guest cluster `{}`: `app` runs on g1 (pid {}). Killing g1's daemon with SIGKILL...",
            config.cluster.name,
            app_pid(dir, "g1").unwrap_or(0)
        );
    }
    let killed_at = cluster_core::events::now_ms();
    let t0 = Instant::now();
    if let Some((_, child)) = guests.daemons.0.iter_mut().find(|(n, _)| n == "g1") {
        let pid = i32::try_from(child.id()).context("pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let _ = child.wait();
    }
    wait_app_on(dir, &config, "g2", Duration::from_secs(20))?;
    let took = t0.elapsed();
    let socket = guests
        .sockets
        .iter()
        .find(|(n, _)| n == "g2")
        .map(|(_, s)| s.clone())
        .context("g2's socket")?;
    // The process is up before the start script returns: wait (5 s at
    // most) until g2 reports the group running, so the timeline is whole.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !crate::status_cmd::fetch(&socket).is_ok_and(|s| {
            s.groups
                .iter()
                .any(|g| g.name == "app" && g.owner.as_deref() == Some("g2"))
        })
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let client = crate::target::Client::new(&crate::target::Target::socket(socket.clone()))?;
    let events = match client.call(&cluster_core::api::Request::Events {
        since_ms: Some(killed_at),
        limit: None,
    })? {
        cluster_core::api::Response::Events(e) => e,
        other => return Err(crate::target::unexpected(&other)),
    };
    let shown = [
        "peer_lost",
        "lease_wait",
        "takeover_allowed",
        "group_placed",
        "group_starting",
        "group_running",
    ];
    let timeline: Vec<serde_json::Value> = events
        .into_iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| shown.contains(&k)))
        .collect();
    let status = crate::status_cmd::fetch(&socket)?;
    if !json {
        println!(
            "\n`app` runs on g2, {} ms after the kill (heartbeat timeout 500 ms, lease 1 s + 300 ms margin):",
            took.as_millis()
        );
        for e in &timeline {
            let at = e["ts_ms"]
                .as_u64()
                .unwrap_or(killed_at)
                .saturating_sub(killed_at);
            let detail = ["peer", "wait_ms", "by", "node", "reason"]
                .iter()
                .filter_map(|k| {
                    e.get(*k).filter(|v| !v.is_null()).map(|v| {
                        format!(
                            "{k}={}",
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                        )
                    })
                })
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "  +{at:>5} ms  {:<18} {detail}",
                e["kind"].as_str().unwrap_or("?")
            );
        }
        println!("\n{}", crate::status_cmd::render(&status));
    }
    // g1 comes back: fail-back is manual, so `app` stays on g2.
    let daemon = sibling_binary("guest-clusterd")?;
    let child = spawn_daemon(dir, &daemon, &guests.config_path, "g1")?;
    if let Some(slot) = guests.daemons.0.iter_mut().find(|(n, _)| n == "g1") {
        slot.1 = child;
    }
    let g1_socket = dir.join("g1.sock");
    wait_joined(dir, &mut guests.daemons, "g1", &g1_socket)?;
    std::thread::sleep(Duration::from_secs(1));
    let on = app_nodes(dir, &config);
    if on != ["g2"] {
        bail!("after g1 came back, `app` runs on {on:?}, not on g2 alone");
    }
    if !json {
        println!(
            "g1 is back; fail-back is manual, so `app` stays on g2 (`clusterctl group move app g1` would move it).\n"
        );
    }
    stop(&mut guests.daemons)?;
    Ok(serde_json::json!({
        "takeover_ms": u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        "timeline": timeline,
        "status": status,
    }))
}

/// Write the demo's configurations, key and application script into
/// `dir`; returns the hosts' and the guests' configuration paths.
fn prepare(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let here = dir.display().to_string();
    let hosts = dir.join("demo-hosts.toml");
    fs::write(&hosts, DEMO_CONFIG.replace(DEMO_DIR, &here))?;
    let guests = dir.join("demo-guests.toml");
    fs::write(&guests, DEMO_GUESTS.replace(DEMO_DIR, &here))?;
    let app = dir.join("app");
    fs::write(&app, DEMO_APP.replace("DIR", &here))?;
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755))?;
    for f in fs::read_dir(dir)?.flatten() {
        if f.file_name().to_string_lossy().starts_with("app.") {
            let _ = fs::remove_file(f.path());
        }
    }
    let _ = fs::remove_dir_all(dir.join("state"));
    let key: [u8; 32] = rand::random();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("demo.key"))?;
    writeln!(f, "{}", hex::encode(key))?;
    Ok((hosts, guests))
}

/// The path of another binary of this project, next to this one.
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find clusterctl's own path")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to clusterctl (build the workspace: `cargo build`)",
            path.display()
        );
    }
    Ok(path)
}

fn stop(daemons: &mut Daemons) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for (_, child) in &daemons.0 {
        let pid = i32::try_from(child.id()).context("pid")?;
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, child) in &mut daemons.0 {
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("{name} stopped with {status}");
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
