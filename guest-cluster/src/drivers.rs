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
pub fn build(config: &conf::Config, node: &str) -> Drivers {
    let mut drivers = Drivers::default();
    for group in &config.groups {
        let mut resources: Vec<Arc<dyn ResourceDriver>> = Vec::new();
        for r in &group.resources {
            let r = config.resource_on(node, &r.name).unwrap_or(r);
            resources.push(resource_driver(r));
        }
        let monitors = group
            .monitors
            .iter()
            .map(|m| monitor_driver(&group.name, node, m))
            .collect();
        drivers.resources.push(resources);
        drivers.monitors.push(monitors);
    }
    drivers
}

fn resource_driver(r: &conf::Resource) -> Arc<dyn ResourceDriver> {
    match &r.kind {
        conf::ResourceKind::Exec(e) => Arc::new(crate::exec::ExecDriver::new(e.clone())),
        other => Arc::new(Unsupported { kind: other.name() }),
    }
}

fn monitor_driver(group: &str, node: &str, m: &conf::Monitor) -> Arc<dyn MonitorDriver> {
    match &m.kind {
        conf::MonitorKind::Custom(c) => {
            Arc::new(crate::exec::CustomMonitor::new(group, &m.name, node, c))
        }
        other => Arc::new(UnsupportedMonitor { kind: other.name() }),
    }
}
