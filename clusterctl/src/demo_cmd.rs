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

mod guests;
mod hosts;
mod netns;

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

/// A started cluster: its configuration, daemons and first statuses.
struct Started {
    config: conf::Config,
    daemons: Daemons,
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
        daemons,
        statuses,
    })
}

fn spawn_daemon(
    dir: &Path,
    daemon: &Path,
    config_path: &Path,
    node: &str,
) -> anyhow::Result<Child> {
    daemon_command(Command::new(daemon), dir, config_path, node)?
        .spawn()
        .with_context(|| format!("cannot start {}", daemon.display()))
}

/// `cmd` (a daemon, or `ip netns exec NS DAEMON`) with the daemon's
/// arguments for `node`: configuration, state directory and control
/// socket under `dir`, its output appended to `dir/NODE.log`.
fn daemon_command(
    mut cmd: Command,
    dir: &Path,
    config_path: &Path,
    node: &str,
) -> anyhow::Result<Command> {
    let socket = dir.join(format!("{node}.sock"));
    let _ = fs::remove_file(&socket);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{node}.log")))?;
    cmd.arg("--config")
        .arg(config_path)
        .args(["--node", node])
        .arg("--state-dir")
        .arg(dir.join("state").join(node))
        .arg("--api-socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(cmd)
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
    // One demo at a time on a machine: fixed ports and namespace names.
    let _lock = netns::DemoLock::take()?;
    let (hosts_config, guests_config) = prepare(dir)?;
    hosts::prepare(
        dir,
        &conf::load(&hosts_config).context("the demo configuration")?,
    )?;
    let mut hosts = start_cluster(dir, hosts_config, "host-clusterd", "host daemons")?;
    hosts::write_pids(dir, &hosts)?;
    if keep_running {
        if !json {
            for s in &hosts.statuses {
                println!("{}", crate::status_cmd::render(s));
            }
        }
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
    let host_failover = hosts::failover(dir, &mut hosts, json)?;
    // The killed host's daemon is gone already: stop the others.
    hosts.daemons.0.retain(|(name, _)| name != hosts::VICTIM);
    stop(&mut hosts.daemons)?;

    let failover = guests::failover(dir, guests_config, json)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "hosts": hosts.statuses,
                "host_failover": host_failover,
                "guest_failover": failover,
            }))?
        );
    } else {
        println!("Demo stopped; logs are in {}.", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the demo's configurations and key into `dir` (act two writes
/// its scripts itself); returns the hosts' and the guests' configuration
/// paths.
fn prepare(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let here = dir.display().to_string();
    let hosts = dir.join("demo-hosts.toml");
    fs::write(&hosts, DEMO_CONFIG.replace(DEMO_DIR, &here))?;
    let guests = dir.join("demo-guests.toml");
    fs::write(&guests, DEMO_GUESTS.replace(DEMO_DIR, &here))?;
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

/// Prints a demo's story to stdout, or to stderr when stdout carries JSON.
struct Say {
    json: bool,
}

impl Say {
    fn line(&self, text: impl std::fmt::Display) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

/// One line of a demo's timeline: milliseconds after `since`, the event's
/// kind and its `keys` that are set (`group_placed`'s `to` is shown as
/// `nowhere` when the group is placed on no node).
fn timeline_line(e: &serde_json::Value, since: u64, keys: &[&str]) -> String {
    let at = e["ts_ms"].as_u64().unwrap_or(since).saturating_sub(since);
    let placed = e["kind"] == "group_placed";
    let detail = keys
        .iter()
        .filter_map(|k| {
            e.get(*k)
                .filter(|v| !v.is_null() || (placed && *k == "to"))
                .map(|v| {
                    let value = if v.is_null() {
                        "nowhere".to_owned()
                    } else {
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    };
                    format!("{k}={value}")
                })
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "  +{at:>5} ms  {:<18} {detail}",
        e["kind"].as_str().unwrap_or("?")
    )
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
