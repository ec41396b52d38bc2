//! Simulated hosts: one network namespace per node, joined per heartbeat
//! link by a bridge in a hub namespace (veth pairs), with IPv4 and IPv6
//! addresses, and the faults a test injects: link down/up, partitions and
//! random loss with nftables (this kernel has no `tc netem`).
//!
//! Names carry a per-test unique prefix so tests run in parallel; every
//! namespace is deleted when the [`Net`] drops, also on panic.

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// A set of node namespaces joined by bridges.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    nodes: usize,
    links: usize,
    created: Vec<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// `nodes` namespaces, each with `links` interfaces `eth0..` on bridges.
    /// Node `k` has `10.L.0.(k+1)/24` and `fdL::(k+1)/64` on link `L`.
    pub fn new(nodes: usize, links: usize) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "kh{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Self {
            prefix,
            nodes,
            links,
            created: Vec::new(),
        };
        net.build().context("building the test network")?;
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        self.created.push(hub.clone());
        for l in 0..self.links {
            ip(&[
                "-n",
                &hub,
                "link",
                "add",
                &format!("br{l}"),
                "type",
                "bridge",
            ])?;
            ip(&["-n", &hub, "link", "set", &format!("br{l}"), "up"])?;
        }
        for k in 0..self.nodes {
            let ns = self.ns(k);
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for l in 0..self.links {
                let eth = format!("eth{l}");
                let port = format!("n{k}l{l}");
                ip(&[
                    "link", "add", "name", &eth, "netns", &ns, "type", "veth", "peer", "name",
                    &port, "netns", &hub,
                ])?;
                ip(&[
                    "-n",
                    &hub,
                    "link",
                    "set",
                    &port,
                    "master",
                    &format!("br{l}"),
                    "up",
                ])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", self.v4(k, l)),
                    "dev",
                    &eth,
                ])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/64", self.v6(k, l)),
                    "dev",
                    &eth,
                    "nodad",
                ])?;
                ip(&["-n", &ns, "link", "set", &eth, "up"])?;
            }
        }
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    /// The namespace of node `k`.
    pub fn ns(&self, k: usize) -> String {
        format!("{}n{k}", self.prefix)
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Node `k`'s IPv4 address on link `l`.
    pub fn v4(&self, k: usize, l: usize) -> IpAddr {
        IpAddr::from([10, l as u8, 0, k as u8 + 1])
    }

    /// Node `k`'s IPv6 address on link `l`.
    pub fn v6(&self, k: usize, l: usize) -> IpAddr {
        IpAddr::from([0xfd00 + l as u16, 0, 0, 0, 0, 0, 0, k as u16 + 1])
    }

    /// A command run inside node `k`'s namespace.
    pub fn command(&self, k: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(k)]).arg(program);
        c
    }

    /// Take node `k`'s interface on link `l` down (a NIC or cable failure).
    pub fn link_down(&self, k: usize, l: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.ns(k), "link", "set", &format!("eth{l}"), "down"])
    }

    /// Bring it back.
    pub fn link_up(&self, k: usize, l: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.ns(k), "link", "set", &format!("eth{l}"), "up"])
    }

    fn nft(&self, k: usize, script: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(k), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("run nft")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {}: {}",
                self.ns(k),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn table(&self, k: usize) -> anyhow::Result<()> {
        self.nft(
            k,
            "table inet kvhatest {\n chain input { type filter hook input priority 0; }\n chain output { type filter hook output priority 0; }\n}\n",
        )
    }

    /// Drop all traffic between every node of `a` and every node of `b`,
    /// on every link, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        for (side, other) in [(a, b), (b, a)] {
            for &k in side {
                self.table(k)?;
                let mut rules = String::new();
                for &o in other {
                    for l in 0..self.links {
                        rules.push_str(&format!(
                            "add rule inet kvhatest input ip saddr {} drop\n",
                            self.v4(o, l)
                        ));
                        rules.push_str(&format!(
                            "add rule inet kvhatest input ip6 saddr {} drop\n",
                            self.v6(o, l)
                        ));
                    }
                }
                self.nft(k, &rules)?;
            }
        }
        Ok(())
    }

    /// Drop `percent` % of the packets node `k` receives, at random.
    pub fn random_loss(&self, k: usize, percent: u8) -> anyhow::Result<()> {
        self.table(k)?;
        self.nft(
            k,
            &format!("add rule inet kvhatest input numgen random mod 100 < {percent} drop\n"),
        )
    }

    /// Drop every IPv4 packet (`ipv4`) or every IPv6 packet node `k`
    /// sends or receives, on every link: one address family broken, the
    /// other working.
    pub fn drop_family(&self, k: usize, ipv4: bool) -> anyhow::Result<()> {
        self.table(k)?;
        let family = if ipv4 { "ipv4" } else { "ipv6" };
        self.nft(
            k,
            &format!(
                "add rule inet kvhatest input meta nfproto {family} drop
                 add rule inet kvhatest output meta nfproto {family} drop
"
            ),
        )
    }

    /// Remove every partition and loss rule.
    pub fn heal(&self) -> anyhow::Result<()> {
        for k in 0..self.nodes {
            self.table(k)?;
            self.nft(k, "delete table inet kvhatest\n")?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
