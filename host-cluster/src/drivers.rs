//! The drivers of a host node's resources and monitors, built from the
//! configuration as this node runs it (per-node overrides applied), in
//! configuration order: per group, per resource and per monitor.
//!
//! A host cluster runs `vm` resources and `vm` monitors. Anything else
//! (the configuration check refuses other resource kinds in host
//! clusters) gets a driver that says so: its start fails (hard), its
//! checks fail — never a pretended success.

use std::sync::Arc;
use std::time::Duration;

use cluster_core::resource::{
    ActionContext, ActionOutcome, BoxFuture, CheckOutcome, MonitorDriver, Probe, ResourceDriver,
};
use cluster_core::runtime::Drivers;

use crate::hypervisor::Hypervisor;
use crate::vm::{VmDriver, VmMonitor};

/// Drivers for every resource and monitor of `config` on `node`, reaching
/// the VMs through `hypervisor`.
pub fn build(config: &conf::Config, node: &str, hypervisor: &Hypervisor) -> Drivers {
    let mut drivers = Drivers::default();
    for group in &config.groups {
        let resources = group
            .resources
            .iter()
            .map(|r| {
                let r = config.resource_on(node, &r.name).unwrap_or(r);
                resource_driver(r, hypervisor)
            })
            .collect();
        let monitors = group
            .monitors
            .iter()
            .map(|m| monitor_driver(group, m, hypervisor))
            .collect();
        drivers.resources.push(resources);
        drivers.monitors.push(monitors);
    }
    drivers
}

fn resource_driver(r: &conf::Resource, hypervisor: &Hypervisor) -> Arc<dyn ResourceDriver> {
    match &r.kind {
        conf::ResourceKind::Vm(vm) => {
            Arc::new(VmDriver::new(&r.name, vm.clone(), hypervisor.clone()))
        }
        other => Arc::new(NotForHosts { kind: other.name() }),
    }
}

fn monitor_driver(
    group: &conf::Group,
    m: &conf::Monitor,
    hypervisor: &Hypervisor,
) -> Arc<dyn MonitorDriver> {
    match &m.kind {
        conf::MonitorKind::Vm(v) => Arc::new(VmMonitor::new(
            &group.name,
            &m.name,
            v,
            watched_vms(group, m),
            hypervisor.clone(),
        )),
        other => Arc::new(UnsupportedMonitor { kind: other.name() }),
    }
}

/// The VMs a `vm` monitor watches: the resource it restarts (its
/// `resource`, else the group's last) and every `vm` resource after it,
/// since a recovery restart from that resource restarts them all.
pub fn watched_vms(group: &conf::Group, m: &conf::Monitor) -> Vec<String> {
    let from = m
        .resource
        .as_ref()
        .and_then(|name| group.resources.iter().position(|r| &r.name == name))
        .unwrap_or(group.resources.len().saturating_sub(1));
    group
        .resources
        .iter()
        .skip(from)
        .filter(|r| matches!(r.kind, conf::ResourceKind::Vm(_)))
        .map(|r| r.name.clone())
        .collect()
}

/// A resource kind a host cannot run: starting it fails (hard, so it is
/// not retried here in a loop), stopping it succeeds (nothing of it can
/// run here), and probes find it stopped.
#[derive(Debug)]
struct NotForHosts {
    kind: &'static str,
}

impl ResourceDriver for NotForHosts {
    fn start<'a>(&'a self, _ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            ActionOutcome::Failed {
                message: format!(
                    "a host cluster runs `vm` resources only; `{}` resources run in guest clusters",
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

/// A monitor kind the host daemon cannot run: every check fails and says
/// so, rather than pretending the VM is healthy.
#[derive(Debug)]
struct UnsupportedMonitor {
    kind: &'static str,
}

impl MonitorDriver for UnsupportedMonitor {
    fn check(&self, _timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            CheckOutcome::Failed(format!(
                "monitor kind `{}` is not supported by host-clusterd (only `vm`)",
                self.kind
            ))
        })
    }
}
