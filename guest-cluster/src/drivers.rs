//! The drivers of a guest node's resources and monitors, built from the
//! configuration as this node runs it (per-node overrides applied).

use std::sync::Arc;
use std::time::Duration;

use cluster_core::resource::{
    ActionContext, ActionOutcome, BoxFuture, CheckOutcome, MonitorDriver, Probe, ResourceDriver,
};
use cluster_core::runtime::Drivers;

/// A resource kind this daemon cannot run yet: starting it fails (hard,
/// so the group is not restarted here in a loop), stopping it succeeds
/// (nothing of it can run), and probes find it stopped.
#[derive(Debug)]
struct Unsupported {
    kind: &'static str,
}

impl ResourceDriver for Unsupported {
    fn start<'a>(&'a self, _ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            ActionOutcome::Failed {
                message: format!(
                    "resource kind `{}` is not supported by this version",
                    self.kind
                ),
                hard: true,
            }
        })
    }

    fn stop<'a>(&'a self, _ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async { ActionOutcome::Ok })
    }

    fn probe<'a>(&'a self, _ctx: &'a ActionContext) -> BoxFuture<'a, Probe> {
        Box::pin(async { Probe::Stopped })
    }
}

/// A monitor kind this daemon cannot run yet: every check fails and says
/// so, rather than pretending the resource is healthy.
#[derive(Debug)]
struct UnsupportedMonitor {
    kind: &'static str,
}

impl MonitorDriver for UnsupportedMonitor {
    fn check(&self, _timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            CheckOutcome::Failed(format!(
                "monitor kind `{}` is not supported by this version",
                self.kind
            ))
        })
    }
}

/// Drivers for every resource and monitor of `config` on `node`.
pub fn build(config: &conf::Config, node: &str, state_dir: &std::path::Path) -> Drivers {
    let mut drivers = Drivers::default();
    // The OCF agents' run-time state (`HA_RSCTMP`), in this node's state
    // directory (as the daemon runs it: `--state-dir` or the configured one).
    let rsctmp = Arc::new(crate::ocf::RscTmp::in_state_dir(state_dir));
    for group in &config.groups {
        let mut resources: Vec<Arc<dyn ResourceDriver>> = Vec::new();
        for r in &group.resources {
            let r = config.resource_on(node, &r.name).unwrap_or(r);
            resources.push(resource_driver(r, &rsctmp));
        }
        let monitors = group
            .monitors
            .iter()
            .map(|m| monitor_driver(config, group, node, m, &rsctmp))
            .collect();
        drivers.resources.push(resources);
        drivers.monitors.push(monitors);
    }
    drivers
}

fn resource_driver(
    r: &conf::Resource,
    rsctmp: &Arc<crate::ocf::RscTmp>,
) -> Arc<dyn ResourceDriver> {
    match &r.kind {
        conf::ResourceKind::Ocf(o) => Arc::new(crate::ocf::OcfDriver::new(o, rsctmp.clone())),
        conf::ResourceKind::Exec(e) => Arc::new(crate::exec::ExecDriver::new(e.clone())),
        conf::ResourceKind::FloatingIp(f) => {
            Arc::new(crate::floating_ip::FloatingIpDriver::new(f.clone()))
        }
        conf::ResourceKind::Systemd(s) => Arc::new(crate::systemd::SystemdDriver::new(s)),
        conf::ResourceKind::Mount(m) => Arc::new(crate::mount::MountDriver::new(m.clone())),
        other => Arc::new(Unsupported { kind: other.name() }),
    }
}

fn monitor_driver(
    config: &conf::Config,
    group_config: &conf::Group,
    node: &str,
    m: &conf::Monitor,
    rsctmp: &Arc<crate::ocf::RscTmp>,
) -> Arc<dyn MonitorDriver> {
    let group = group_config.name.as_str();
    match &m.kind {
        conf::MonitorKind::Ocf(o) => Arc::new(crate::ocf::OcfMonitor::new(
            group,
            node,
            m,
            o.depth,
            ocf_target(config, group_config, node, m),
            rsctmp.clone(),
        )),
        conf::MonitorKind::Process(p) => Arc::new(crate::process_monitor::ProcessMonitor::new(
            group, &m.name, p,
        )),
        conf::MonitorKind::Custom(c) => {
            Arc::new(crate::exec::CustomMonitor::new(group, &m.name, node, c))
        }
        conf::MonitorKind::Nic(n) => Arc::new(crate::net_monitors::NicMonitor::new(n)),
        conf::MonitorKind::Ip(i) => Arc::new(crate::net_monitors::IpMonitor::new(i)),
        conf::MonitorKind::Tcp(t) => Arc::new(crate::service_monitors::TcpMonitorDriver::new(
            group, &m.name, t,
        )),
        conf::MonitorKind::Http(h) => Arc::new(crate::service_monitors::HttpMonitorDriver::new(
            group, &m.name, h,
        )),
        conf::MonitorKind::Pgsql(p) => Arc::new(crate::service_monitors::PgsqlMonitorDriver::new(
            group, &m.name, p,
        )),
        conf::MonitorKind::Disk(d) => Arc::new(crate::disk_monitor::DiskMonitor::new(d)),
        other => Arc::new(UnsupportedMonitor { kind: other.name() }),
    }
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
