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
/// Where the embedded configuration expects its files.
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

pub(crate) fn run(dir: &Path, keep_running: bool, json: bool) -> anyhow::Result<ExitCode> {
    let config_path = prepare(dir)?;
    let config = conf::load(&config_path).context("the demo configuration")?;
    let daemon = sibling_binary("host-clusterd")?;

    let mut daemons = Daemons(Vec::new());
    let mut sockets = Vec::new();
    for node in &config.nodes {
        let socket = dir.join(format!("{}.sock", node.name));
        let _ = fs::remove_file(&socket);
        let log = fs::File::create(dir.join(format!("{}.log", node.name)))?;
        let child = Command::new(&daemon)
            .arg("--config")
            .arg(&config_path)
            .args(["--node", &node.name])
            .arg("--state-dir")
            .arg(dir.join("state").join(&node.name))
            .arg("--api-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", daemon.display()))?;
        daemons.0.push((node.name.clone(), child));
        sockets.push((node.name.clone(), socket));
    }

    let bar = ProgressBar::new(sockets.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} {msg} [{pos}/{len}]",
    )?);
    bar.set_message("starting host daemons");
    bar.enable_steady_tick(Duration::from_millis(80));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut statuses = Vec::new();
    for (name, socket) in &sockets {
        loop {
            // Ready once it has heard every peer.
            if let Ok(s) = crate::status_cmd::fetch(socket)
                && s.members.iter().all(|m| m.state != MemberState::Unknown)
            {
                statuses.push(s);
                bar.inc(1);
                break;
            }
            if let Some((_, child)) = daemons.0.iter_mut().find(|(n, _)| n == name)
                && let Some(exit) = child.try_wait()?
            {
                bar.abandon();
                bail!(
                    "{name} exited ({exit}); see {}",
                    dir.join(format!("{name}.log")).display()
                );
            }
            if Instant::now() > deadline {
                bar.abandon();
                bail!("{name} did not answer on {} within 20 s", socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    bar.finish_and_clear();

    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        println!(
            "Demo cluster `{}`: {} host daemons running on this machine.\n",
            config.cluster.name,
            statuses.len()
        );
        for s in &statuses {
            println!("{}", crate::status_cmd::render(s));
        }
    }

    if keep_running {
        for (name, child) in std::mem::take(&mut daemons.0) {
            eprintln!(
                "{name}: pid {} (socket {})",
                child.id(),
                dir.join(format!("{name}.sock")).display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    stop(&mut daemons)?;
    if !json {
        println!("Demo stopped; logs are in {}.", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the demo's configuration and key into `dir`; returns the config path.
fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = DEMO_CONFIG.replace(DEMO_DIR, &dir.display().to_string());
    let config_path = dir.join("demo-hosts.toml");
    fs::write(&config_path, text)?;
    let key: [u8; 32] = rand::random();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("demo.key"))?;
    writeln!(f, "{}", hex::encode(key))?;
    Ok(config_path)
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
