//! The drivers of a guest node's resources and monitors, built from the
//! configuration as this node runs it (per-node overrides applied).
//!
//! Building refuses what cannot run: a kind this daemon does not implement
//! or parameters a driver cannot use (a connection string or URL its
//! client library does not parse, a name no agent or unit can have). The
//! configuration's validation already refuses what can be told without
//! I/O (`conf::load`, with file, line and key); what only the drivers'
//! libraries can tell is refused here, once, naming the group and the
//! resource or monitor, so that `guest-clusterd` does not start rather than
//! fail the same check for ever.

use std::fmt;
use std::sync::Arc;

use cluster_core::resource::{MonitorDriver, ResourceDriver};
use cluster_core::runtime::Drivers;

use crate::net_monitors::WatchedAddress;

/// One resource or monitor of the configuration that this node cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverProblem {
    /// The group.
    pub group: String,
    /// `resource` or `monitor`.
    pub what: &'static str,
    /// Its name.
    pub name: String,
    /// Why.
    pub message: String,
}

impl fmt::Display for DriverProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group `{}`, {} `{}`: {}",
            self.group, self.what, self.name, self.message
        )
    }
}

/// Why the drivers of a node could not be built: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("cannot run the configuration on node `{node}`: {}", list(.problems))]
pub struct DriverError {
    /// The node.
    pub node: String,
    /// Every problem, in configuration order.
    pub problems: Vec<DriverProblem>,
}

fn list(problems: &[DriverProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Drivers for every resource and monitor of `config` on `node`, or every
/// reason why some cannot be built. `host` is what the host says of this
/// guest's interfaces (the linkage), which `nic` monitors also check.
pub fn build(
    config: &conf::Config,
    node: &str,
    state_dir: &std::path::Path,
    host: Option<&crate::host_link::HostNotices>,
) -> Result<Drivers, DriverError> {
    let mut drivers = Drivers::default();
    let mut problems = Vec::new();
    // The OCF agents' run-time state (`HA_RSCTMP`), in this node's state
    // directory (as the daemon runs it: `--state-dir` or the configured one).
    let rsctmp = Arc::new(crate::ocf::RscTmp::in_state_dir(state_dir));
    for group in &config.groups {
        let mut resources: Vec<Arc<dyn ResourceDriver>> = Vec::new();
        for r in &group.resources {
            let r = config.resource_on(node, &r.name).unwrap_or(r);
            match resource_driver(r, &rsctmp) {
                Ok(d) => resources.push(d),
                Err(message) => problems.push(DriverProblem {
                    group: group.name.clone(),
                    what: "resource",
                    name: r.name.clone(),
                    message,
                }),
            }
        }
        let mut monitors: Vec<Arc<dyn MonitorDriver>> = Vec::new();
        for m in &group.monitors {
            match monitor_driver(config, group, node, m, &rsctmp, host) {
                Ok(d) => monitors.push(d),
                Err(message) => problems.push(DriverProblem {
                    group: group.name.clone(),
                    what: "monitor",
                    name: m.name.clone(),
                    message,
                }),
            }
        }
        drivers.resources.push(resources);
        drivers.monitors.push(monitors);
    }
    if problems.is_empty() {
        Ok(drivers)
    } else {
        Err(DriverError {
            node: node.to_owned(),
            problems,
        })
    }
}

fn unsupported(what: &str, kind: &str) -> String {
    format!("{what} kind `{kind}` is not supported by guest-clusterd")
}

fn resource_driver(
    r: &conf::Resource,
    rsctmp: &Arc<crate::ocf::RscTmp>,
) -> Result<Arc<dyn ResourceDriver>, String> {
    Ok(match &r.kind {
        conf::ResourceKind::Ocf(o) => {
            let d = crate::ocf::OcfDriver::new(o, rsctmp.clone());
            if let Err(e) = d.agent_path() {
                return Err(e.to_string());
            }
            Arc::new(d)
        }
        conf::ResourceKind::Exec(e) => Arc::new(crate::exec::ExecDriver::new(e.clone())),
        conf::ResourceKind::FloatingIp(f) => {
            Arc::new(crate::floating_ip::FloatingIpDriver::new(f.clone()))
        }
        conf::ResourceKind::Systemd(s) => {
            if !crate::systemd::valid_unit_name(&s.unit) {
                return Err(format!("`{}` is not a valid unit name", s.unit));
            }
            Arc::new(crate::systemd::SystemdDriver::new(s))
        }
        conf::ResourceKind::Mount(m) => {
            let d = crate::mount::MountDriver::new(m.clone());
            if let Some(problem) = d.config_problem() {
                return Err(problem);
            }
            Arc::new(d)
        }
        other @ conf::ResourceKind::Vm(_) => return Err(unsupported("resource", other.name())),
    })
}

fn monitor_driver(
    config: &conf::Config,
    group_config: &conf::Group,
    node: &str,
    m: &conf::Monitor,
    rsctmp: &Arc<crate::ocf::RscTmp>,
    host: Option<&crate::host_link::HostNotices>,
) -> Result<Arc<dyn MonitorDriver>, String> {
    let group = group_config.name.as_str();
    Ok(match &m.kind {
        conf::MonitorKind::Ocf(o) => {
            let Some(target) = ocf_target(config, group_config, node, m) else {
                return Err(format!(
                    "group `{group}` has no `ocf` resource for this monitor to check"
                ));
            };
            Arc::new(crate::ocf::OcfMonitor::new(
                group,
                node,
                m,
                o.depth,
                Some(target),
                rsctmp.clone(),
            ))
        }
        conf::MonitorKind::Process(p) => {
            let d = crate::process_monitor::ProcessMonitor::new(group, &m.name, p);
            if let Some(problem) = d.config_problem() {
                return Err(problem.to_owned());
            }
            Arc::new(d)
        }
        conf::MonitorKind::Custom(c) => {
            Arc::new(crate::exec::CustomMonitor::new(group, &m.name, node, c))
        }
        conf::MonitorKind::Nic(n) => Arc::new(
            crate::net_monitors::NicMonitor::new(
                n,
                m.interval.get(),
                floating_addresses(config, group_config, node, m, &n.interface),
            )
            .with_host_notices(host.cloned()),
        ),
        conf::MonitorKind::Ip(i) => Arc::new(crate::net_monitors::IpMonitor::new(i)),
        conf::MonitorKind::Tcp(t) => Arc::new(crate::service_monitors::TcpMonitorDriver::new(
            group, &m.name, t,
        )),
        conf::MonitorKind::Http(h) => Arc::new(
            crate::service_monitors::HttpMonitorDriver::new(group, &m.name, h)
                .map_err(|e| e.to_string())?,
        ),
        conf::MonitorKind::Pgsql(p) => Arc::new(
            crate::service_monitors::PgsqlMonitorDriver::new(group, &m.name, p)
                .map_err(|e| e.to_string())?,
        ),
        conf::MonitorKind::Disk(d) => {
            let d = crate::disk_monitor::DiskMonitor::new(d);
            if let Some(problem) = d.config_problem() {
                return Err(problem);
            }
            Arc::new(d)
        }
        other @ conf::MonitorKind::Vm(_) => return Err(unsupported("monitor", other.name())),
    })
}

/// The floating addresses of `group` on `interface` as `node` runs them,
/// which the `nic` monitor `m` checks too: only a monitor that runs while
/// its group runs here (`while_active`), the only time they are there.
fn floating_addresses(
    config: &conf::Config,
    group: &conf::Group,
    node: &str,
    m: &conf::Monitor,
    interface: &str,
) -> Vec<WatchedAddress> {
    if !m.while_active {
        return Vec::new();
    }
    group
        .resources
        .iter()
        .map(|r| config.resource_on(node, &r.name).unwrap_or(r))
        .filter_map(|r| match &r.kind {
            conf::ResourceKind::FloatingIp(f) if f.interface == interface => Some(WatchedAddress {
                resource: r.name.clone(),
                address: f.address.addr(),
            }),
            _ => None,
        })
        .collect()
}

/// The `ocf` resource an `ocf` monitor checks, as `node` runs it: the one
/// its `resource` names, or the group's last `ocf` resource.
fn ocf_target<'c>(
    config: &'c conf::Config,
    group: &'c conf::Group,
    node: &str,
    m: &conf::Monitor,
) -> Option<(&'c str, &'c conf::OcfResource)> {
    let mut candidates = group.resources.iter().rev();
    let r = match &m.resource {
        Some(name) => candidates.find(|r| &r.name == name),
        None => candidates.find(|r| matches!(r.kind, conf::ResourceKind::Ocf(_))),
    }?;
    let r = config.resource_on(node, &r.name).unwrap_or(r);
    match &r.kind {
        conf::ResourceKind::Ocf(o) => Some((r.name.as_str(), o)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-node guest cluster; `node_b` is added to node-b's entry.
    fn config(node_b: &str, groups: &str) -> conf::Config {
        let toml = format!(
            r#"
[cluster]
name = "t"
kind = "guest"
auth_key_file = "/nonexistent/key"

[[nodes]]
name = "node-a"
links = {{ lan = ["192.0.2.1/24", "2001:db8::1/64"] }}

[[nodes]]
name = "node-b"
links = {{ lan = ["192.0.2.2/24", "2001:db8::2/64"] }}
{node_b}

[quorum]
ping_targets = ["192.0.2.254"]

{groups}
"#
        );
        conf::load_str("t.toml", &toml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn what_the_client_libraries_cannot_parse_stops_the_build_naming_it() {
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Both pass the configuration's checks; only the libraries can
        // tell (tokio-postgres: `port` is not a number; the URL parser: 256
        // is no IPv4 octet).
        let c = config(
            "",
            r#"
[[groups]]
name = "db"
nodes = ["node-a", "node-b"]

[[groups.resources]]
name = "server"
kind = "exec"
start = ["/bin/true"]
stop = ["/bin/true"]

[[groups.monitors]]
name = "answers"
kind = "pgsql"
connection = "host=127.0.0.1 port=five user=postgres"

[[groups.monitors]]
name = "alive"
kind = "process"
process_name = "postgres"

[[groups.monitors]]
name = "front"
kind = "http"
url = "http://256.1.1.1/health"
"#,
        );
        let e = match build(&c, "node-a", state.path(), None) {
            Ok(d) => panic!("built: {d:?}"),
            Err(e) => e,
        };
        assert_eq!(e.node, "node-a");
        let named: Vec<(&str, &str, &str)> = e
            .problems
            .iter()
            .map(|p| (p.group.as_str(), p.what, p.name.as_str()))
            .collect();
        assert_eq!(
            named,
            [("db", "monitor", "answers"), ("db", "monitor", "front")]
        );
        let text = e.to_string();
        assert!(
            text.contains("group `db`, monitor `answers`: the connection string is not valid")
                && text.contains("invalid value for option `port`"),
            "{text}"
        );
        assert!(
            text.contains(
                "group `db`, monitor `front`: the url `http://256.1.1.1/health` is not valid"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_good_configuration_builds_every_driver() {
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = config(
            "",
            r#"
[[groups]]
name = "db"
nodes = ["node-a", "node-b"]

[[groups.resources]]
name = "server"
kind = "exec"
start = ["/bin/true"]
stop = ["/bin/true"]

[[groups.monitors]]
name = "answers"
kind = "pgsql"
connection = "host=127.0.0.1 port=5432 user=postgres"

[[groups.monitors]]
name = "front"
kind = "http"
url = "http://[2001:db8::1]:8080/health"
"#,
        );
        let d = build(&c, "node-a", state.path(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.resources[0].len(), d.monitors[0].len()), (1, 2));
    }

    #[test]
    fn nic_monitors_check_the_floating_addresses_on_their_interface() {
        let c = config(
            "[nodes.overrides.vip6]\ninterface = \"eth1\"",
            r#"
[[groups]]
name = "web"
nodes = ["node-a", "node-b"]

[[groups.resources]]
name = "vip4"
kind = "floating_ip"
address = "192.0.2.100/24"
interface = "eth0"

[[groups.resources]]
name = "vip6"
kind = "floating_ip"
address = "2001:db8::100/64"
interface = "eth0"

[[groups.resources]]
name = "app"
kind = "exec"
start = ["/bin/true"]
stop = ["/bin/true"]

[[groups.monitors]]
name = "uplink"
kind = "nic"
interface = "eth0"

[[groups.monitors]]
name = "standby-uplink"
kind = "nic"
interface = "eth0"
while_active = false
"#,
        );
        let group = &c.groups[0];
        let on = |node: &str, m: usize| {
            floating_addresses(&c, group, node, &group.monitors[m], "eth0")
                .into_iter()
                .map(|w| (w.resource, w.address.to_string()))
                .collect::<Vec<_>>()
        };
        let both = vec![
            ("vip4".to_owned(), "192.0.2.100".to_owned()),
            ("vip6".to_owned(), "2001:db8::100".to_owned()),
        ];
        assert_eq!(on("node-a", 0), both);
        // node-b holds vip6 on eth1 (its override): not this monitor's.
        assert_eq!(on("node-b", 0), both[..1]);
        // A monitor that also runs where the group does not: no addresses.
        assert_eq!(on("node-a", 1), []);
    }
}
