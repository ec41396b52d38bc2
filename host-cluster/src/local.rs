//! The VMs this host runs for the cluster, as the engine's [`LocalGroups`]:
//! when the host loses quorum every managed VM running here is destroyed
//! at once (a VM is only ever run by a quorate host).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cluster_core::guard::LocalGroups;

use crate::hypervisor::Hypervisor;

/// How long force-stopping may take before the watchdog is left to act.
pub const FORCE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The managed VMs of this host.
#[derive(Debug)]
pub struct HostVms {
    hypervisor: Hypervisor,
    managed: Vec<String>,
}

impl HostVms {
    /// The VMs named by `vm` resources of `config`, on `hypervisor`.
    pub fn new(config: &conf::Config, hypervisor: Hypervisor) -> Self {
        let managed = config
            .resources()
            .filter(|(_, r)| matches!(r.kind, conf::ResourceKind::Vm(_)))
            .map(|(_, r)| r.name.clone())
            .collect();
        Self {
            hypervisor,
            managed,
        }
    }

    async fn stop_all(&self) -> usize {
        let domains = match self.hypervisor.inventory().await {
            Ok(d) => d,
            Err(e) => {
                // Cannot tell what runs: the watchdog lease is the backstop.
                tracing::error!(error = %e, "cannot list VMs to stop them after losing quorum");
                return 0;
            }
        };
        let mut stopped = 0;
        for d in domains.iter().filter(|d| {
            self.managed.contains(&d.name) && matches!(d.state, "running" | "blocked" | "paused")
        }) {
            match self.hypervisor.destroy(&d.name).await {
                Ok(()) => {
                    tracing::warn!(vm = %d.name, "VM destroyed: this host has no quorum");
                    stopped += 1;
                }
                Err(e) => {
                    tracing::error!(vm = %d.name, error = %e, "cannot destroy VM after losing quorum")
                }
            }
        }
        stopped
    }
}

impl LocalGroups for HostVms {
    fn force_stop_all(&self) -> Pin<Box<dyn Future<Output = usize> + Send + '_>> {
        Box::pin(async {
            tokio::time::timeout(FORCE_STOP_TIMEOUT, self.stop_all())
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(
                        "force-stopping VMs timed out; the watchdog lease is the backstop"
                    );
                    0
                })
        })
    }
}
