//! A cluster of real daemons on a [`Net`]: writes the configuration and key,
//! starts one `guest-clusterd` per node namespace, and reads back status
//! and events.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cluster_core::api::{Request, Response};
use cluster_core::status::{DomainStatus, NodeStatus};
use serde_json::Value;

use crate::netns::Net;
use crate::{Proc, bin, write_key};

/// What cluster to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `cluster.name` (default `test`).
    pub name: &'static str,
    /// Number of nodes.
    pub nodes: usize,
    /// Number of heartbeat links.
    pub links: usize,
    /// `heartbeat.interval`.
    pub interval: &'static str,
    /// `heartbeat.timeout`.
    pub timeout: &'static str,
    /// Give nodes IPv4 link addresses.
    pub ipv4: bool,
    /// Give nodes IPv6 link addresses.
    pub ipv6: bool,
    /// More TOML appended to the file (quorum, fencing, groups...);
    /// `{dir}` is replaced by the test's directory.
    pub extra: String,
    /// Namespaces on the same bridges that run no cluster node (a witness,
    /// a ping target); they are the indexes after the nodes.
    pub bystanders: usize,
    /// The `[watchdog]` section's body (default `kind = "none"`).
    pub watchdog: String,
    /// A host cluster (`host-clusterd`, node `k` with the libvirt test
    /// driver file `{dir}/n{k}.xml`, which `prepare` writes) instead of a
    /// guest cluster.
    pub host: bool,
    /// Host clusters: every host's `capacity` (memory MiB, vCPUs).
    pub capacity: Option<(u64, u32)>,
    /// More keys for every `[[nodes]]` table; `{dir}` is replaced by the
    /// test's directory and `{node}` by the node's name.
    pub node_extra: String,
    /// Host clusters: every node's `libvirt_uri` instead of the test
    /// driver file; `{dir}` is replaced by the test's directory and
    /// `{node}` by the node's name.
    pub libvirt_uri: Option<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            name: "test",
            nodes: 3,
            links: 1,
            interval: "100ms",
            timeout: "500ms",
            ipv4: true,
            ipv6: false,
            extra: String::new(),
            bystanders: 0,
            watchdog: "kind = \"none\"".into(),
            host: false,
            capacity: None,
            libvirt_uri: None,
            node_extra: String::new(),
        }
    }
}

/// The domain XML of a test-driver VM `name` with `memory_mib` and `vcpus`
/// (for a `vm` resource's `domain_xml`).
pub fn test_domain_xml(name: &str, memory_mib: u64, vcpus: u32) -> String {
    format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>\
         <vcpu>{vcpus}</vcpu><os><type>hvm</type></os></domain>\n"
    )
}

/// A libvirt test-driver host description running `domains` (each with
/// 512 MiB and one vCPU), to write as `{dir}/n{k}.xml` for a host cluster.
pub fn test_host_xml(domains: &[&str]) -> String {
    let mut x = String::from(
        "<node>\n  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>\
         <active>4</active><mhz>2000</mhz><model>x86_64</model></cpu>\n  <memory>16777216</memory>\n",
    );
    for d in domains {
        let _ = writeln!(
            x,
            "  <domain type='test'><name>{d}</name><memory>524288</memory><vcpu>1</vcpu>\
             <os><type>hvm</type></os></domain>"
        );
    }
    x.push_str("</node>\n");
    x
}

/// Which hosts run each VM, by the hypervisors of the host daemons at
/// `sockets` that answer (a dead host's test-driver VMs died with it):
/// VM name -> indexes of the hosts, counting the domains `counts` takes.
pub fn vms_by_host(
    sockets: &[PathBuf],
    counts: impl Fn(&DomainStatus) -> bool,
) -> BTreeMap<String, BTreeSet<usize>> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return BTreeMap::new();
    };
    let mut out: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (k, socket) in sockets.iter().enumerate() {
        let Ok(Response::Status(s)) =
            rt.block_on(cluster_core::api::call(socket, &Request::Status))
        else {
            continue;
        };
        for d in s.hypervisor.map(|h| h.domains).unwrap_or_default() {
            if counts(&d) {
                out.entry(d.name).or_default().insert(k);
            }
        }
    }
    out
}

/// A running test cluster. Daemons are killed, then namespaces deleted,
/// when it drops.
#[derive(Debug)]
pub struct Cluster {
    daemons: Vec<Option<Proc>>,
    daemon_bin: &'static str,
    /// The network.
    pub net: Net,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cluster {
    /// Build the network, write the configuration and start every node.
    pub fn start(spec: &Spec) -> anyhow::Result<Self> {
        Self::start_with(spec, |_| {})
    }

    /// Like [`Cluster::start`], running `prepare` on the test directory
    /// before the daemons start (to write agent scripts and the like).
    pub fn start_with(spec: &Spec, prepare: impl FnOnce(&Path)) -> anyhow::Result<Self> {
        Self::start_with_net(spec, |dir, _| {
            prepare(dir);
            Ok(())
        })
    }

    /// Like [`Cluster::start_with`], with the network too (built before
    /// `prepare` runs), for what must run in the nodes' namespaces before
    /// their daemons start (a hypervisor, say).
    pub fn start_with_net(
        spec: &Spec,
        prepare: impl FnOnce(&Path, &Net) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let net = Net::new(spec.nodes + spec.bystanders, spec.links)?;
        let dir = tempfile::tempdir()?;
        prepare(dir.path(), &net)?;
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, config_text(spec, &net, dir.path())).context("write config")?;
        write_key(&dir.path().join("cluster.key"));
        let mut cluster = Self {
            daemons: (0..spec.nodes).map(|_| None).collect(),
            daemon_bin: if spec.host {
                "host-clusterd"
            } else {
                "guest-clusterd"
            },
            net,
            dir,
            config,
        };
        for k in 0..spec.nodes {
            cluster.start_node(k)?;
        }
        Ok(cluster)
    }

    /// The test's directory (config, key, per-node state and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `k`'s name.
    pub fn name(k: usize) -> String {
        format!("n{k}")
    }

    /// Node `k`'s control socket.
    pub fn socket(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("n{k}.sock"))
    }

    /// Node `k`'s state directory.
    pub fn state_dir(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("state-n{k}"))
    }

    /// (Re)start node `k`'s daemon and wait for its control socket.
    pub fn start_node(&mut self, k: usize) -> anyhow::Result<()> {
        let socket = self.socket(k);
        let _ = std::fs::remove_file(&socket);
        let mut cmd = self.net.command(k, &bin(self.daemon_bin));
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--node", &Self::name(k)])
            .arg("--state-dir")
            .arg(self.state_dir(k))
            .arg("--api-socket")
            .arg(&socket)
            .env("RUST_LOG", "info");
        let log = self.dir.path().join(format!("n{k}.log"));
        let mut proc = Proc::from_command(&format!("n{k}"), cmd, &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = proc.exited() {
                bail!("n{k} exited at start ({status}):\n{}", self.log(k));
            }
            if Instant::now() > deadline {
                bail!(
                    "n{k} did not open its control socket within 10 s:\n{}",
                    self.log(k)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.daemons[k] = Some(proc);
        Ok(())
    }

    /// Node `k`'s daemon log.
    pub fn log(&self, k: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{k}.log"))).unwrap_or_default()
    }

    /// The daemon of node `k`.
    pub fn daemon(&mut self, k: usize) -> Option<&mut Proc> {
        self.daemons.get_mut(k).and_then(Option::as_mut)
    }

    /// kill -9 node `k`'s daemon (its process is gone, as on power loss).
    pub fn kill(&mut self, k: usize) {
        if let Some(p) = self.daemons.get_mut(k).and_then(Option::take) {
            drop(p);
        }
    }

    /// The state of VM `vm` as host `k`'s daemon reports its hypervisor
    /// (`running`, `shutoff`...); `None` if it does not answer or has no
    /// such domain.
    pub fn vm_state(&self, k: usize, vm: &str) -> Option<String> {
        self.status(k)
            .ok()?
            .hypervisor?
            .domains
            .into_iter()
            .find(|d| d.name == vm)
            .map(|d| d.state)
    }

    /// Node `k`'s status, from its control socket.
    pub fn status(&self, k: usize) -> anyhow::Result<NodeStatus> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match rt.block_on(cluster_core::api::call(&self.socket(k), &Request::Status))? {
            Response::Status(s) => Ok(*s),
            other => bail!("n{k}: not a status answer: {other:?}"),
        }
    }

    /// Node `k`'s events so far.
    pub fn events(&self, k: usize) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir(k).join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait until node `k` has an event of `kind` matching `pred`; returns it.
    pub fn wait_event(
        &self,
        k: usize,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self
                .events(k)
                .into_iter()
                .find(|e| e["kind"] == kind && pred(e))
            {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!(
                    "n{k}: no `{kind}` event within {timeout:?}; events:\n{}\nlog:\n{}",
                    self.events(k)
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.log(k)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether node `k`'s daemon process has exited.
    pub fn exited(&mut self, k: usize) -> bool {
        self.daemons
            .get_mut(k)
            .and_then(Option::as_mut)
            .is_some_and(|p| p.exited().is_some())
    }

    /// Whether node `k` is quorate, by its status.
    pub fn quorate(&self, k: usize) -> Option<bool> {
        self.status(k)
            .ok()
            .and_then(|s| s.quorum.map(|q| q.quorate))
    }

    /// Wait until every node sees every other alive.
    pub fn wait_converged(&self, timeout: Duration) -> anyhow::Result<()> {
        let n = self.daemons.len();
        crate::wait_until("every node to see every other alive", timeout, || {
            (0..n).filter(|k| self.daemons[*k].is_some()).all(|k| {
                self.status(k).is_ok_and(|s| {
                    s.members.iter().enumerate().all(|(i, m)| {
                        self.daemons[i].is_none()
                            || m.state != cluster_core::status::MemberState::Unknown
                                && m.state != cluster_core::status::MemberState::Lost
                    })
                })
            })
        })
    }
}

fn config_text(spec: &Spec, net: &Net, dir: &Path) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "[cluster]\nname = \"{}\"\nkind = \"{}\"\nauth_key_file = \"{}/cluster.key\"\nstate_dir = \"{}\"\n",
        spec.name,
        if spec.host { "host" } else { "guest" },
        dir.display(),
        dir.display()
    );
    let links: Vec<String> = (0..spec.links)
        .map(|l| format!("{{ name = \"l{l}\" }}"))
        .collect();
    let _ = writeln!(
        t,
        "[heartbeat]\ninterval = \"{}\"\ntimeout = \"{}\"\nlinks = [{}]\n",
        spec.interval,
        spec.timeout,
        links.join(", ")
    );
    let _ = writeln!(t, "[watchdog]\n{}\n", spec.watchdog);
    for k in 0..spec.nodes {
        let mut links = Vec::new();
        for l in 0..spec.links {
            let mut addrs = Vec::new();
            if spec.ipv4 {
                addrs.push(format!("\"{}/24\"", net.v4(k, l)));
            }
            if spec.ipv6 {
                addrs.push(format!("\"{}/64\"", net.v6(k, l)));
            }
            links.push(format!("l{l} = [{}]", addrs.join(", ")));
        }
        let _ = writeln!(
            t,
            "[[nodes]]\nname = \"n{k}\"\nlinks = {{ {} }}",
            links.join(", ")
        );
        if spec.host {
            let uri = match &spec.libvirt_uri {
                Some(uri) => uri
                    .replace("{dir}", &dir.display().to_string())
                    .replace("{node}", &format!("n{k}")),
                None => format!("test://{}/n{k}.xml", dir.display()),
            };
            let _ = writeln!(t, "libvirt_uri = \"{uri}\"");
        }
        if let Some((memory_mib, vcpus)) = spec.capacity {
            let _ = writeln!(
                t,
                "capacity = {{ memory_mib = {memory_mib}, vcpus = {vcpus} }}"
            );
        }
        if !spec.node_extra.is_empty() {
            let _ = writeln!(
                t,
                "{}",
                spec.node_extra
                    .replace("{dir}", &dir.display().to_string())
                    .replace("{node}", &format!("n{k}"))
            );
        }
        t.push('\n');
    }
    t.push_str(&spec.extra.replace("{dir}", &dir.display().to_string()));
    t
}
