//! The host daemon's answer to control requests.

use std::sync::Arc;
use std::time::Instant;

use cluster_core::api::{self, ApiError, Handler, Request, Response};
use cluster_core::engine::Engine;
use cluster_core::maintenance::Progress;
use cluster_core::status::{DomainStatus, HypervisorStatus, NodeStatus};
use conf::ResourceKind;

use crate::guest_fence::{EngineView, GuestFencer};
use crate::hypervisor::Hypervisor;
use crate::linkage_service::HostLinkage;

/// Everything the host daemon needs to answer requests.
#[derive(Debug)]
pub struct HostService {
    config: conf::Config,
    config_file: String,
    node: String,
    started: Instant,
    engine: Arc<Engine>,
    hypervisor: Hypervisor,
    fencer: Arc<GuestFencer>,
    linkage: Option<HostLinkage>,
    maintenance: Progress,
}

impl HostService {
    /// A service for `node` of `config`, reaching its hypervisor through
    /// `hypervisor`, fencing guests through `fencer` (also the linkage's,
    /// when there is one).
    pub fn new(
        config: conf::Config,
        config_file: String,
        node: String,
        engine: Arc<Engine>,
        hypervisor: Hypervisor,
        fencer: Arc<GuestFencer>,
        linkage: Option<HostLinkage>,
    ) -> Self {
        Self {
            config,
            config_file,
            node,
            started: Instant::now(),
            engine,
            hypervisor,
            fencer,
            linkage,
            maintenance: Progress::default(),
        }
    }

    /// The guest fencer of host `node` of `config`.
    pub fn guest_fencer(
        config: &conf::Config,
        node: &str,
        engine: &Arc<Engine>,
        hypervisor: &Hypervisor,
    ) -> Arc<GuestFencer> {
        Arc::new(GuestFencer::new(
            config,
            node,
            hypervisor.clone(),
            Arc::new(EngineView::new(config.clone(), node, engine.clone())),
            engine.events().clone(),
        ))
    }

    async fn status(&self) -> NodeStatus {
        let members = self.engine.members();
        let runtime = self.engine.runtime();
        let core = runtime.status();
        let groups = cluster_core::control::group_status(&self.config, &self.node, &core);
        let capacity = cluster_core::control::capacity_status(&self.config, &core);
        let domains = self.hypervisor.inventory().await;
        let vm_names: Vec<&str> = self
            .config
            .resources()
            .filter(|(_, r)| matches!(r.kind, ResourceKind::Vm(_)))
            .map(|(_, r)| r.name.as_str())
            .collect();
        let hypervisor = match &domains {
            Ok(list) => HypervisorStatus {
                uri: self.hypervisor.uri().to_owned(),
                connected: true,
                error: None,
                domains: list
                    .iter()
                    .map(|d| DomainStatus {
                        name: d.name.clone(),
                        state: d.state.to_owned(),
                        memory_mib: d.memory_mib,
                        vcpus: d.vcpus,
                        managed: vm_names.contains(&d.name.as_str()),
                    })
                    .collect(),
            },
            Err(e) => HypervisorStatus {
                uri: self.hypervisor.uri().to_owned(),
                connected: false,
                error: Some(e.to_string()),
                domains: Vec::new(),
            },
        };
        NodeStatus {
            cluster: self.config.cluster.name.clone(),
            kind: self.config.cluster.kind,
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            config_file: self.config_file.clone(),
            members,
            quorum: self.engine.quorum(),
            takeovers: self.engine.takeovers(),
            groups,
            engine: Some(cluster_core::control::engine_status(&core, runtime.names())),
            hypervisor: Some(hypervisor),
            capacity,
            maintenance: self.maintenance.report(),
            linkage: self.linkage.as_ref().map(HostLinkage::status),
        }
    }
}

impl Handler for HostService {
    async fn handle(&self, request: Request) -> Result<Response, ApiError> {
        match request {
            Request::Status => Ok(Response::Status(Box::new(self.status().await))),
            Request::Events { since_ms, limit } => {
                api::events_response(self.engine.events().path().to_owned(), since_ms, limit).await
            }
            Request::FenceGuest {
                requester,
                peer,
                action,
            } => self
                .fencer
                .fence(&requester, &peer, action)
                .await
                .map(crate::guest_fence::GuestFenced::into_response)
                .map_err(|e| ApiError::from(&e)),
            Request::Maintenance { on, timeout_ms } => cluster_core::control::maintenance_request(
                &self.maintenance,
                self.engine.runtime(),
                on,
                timeout_ms,
                self.linkage.as_ref().map(HostLinkage::hand_guests_over),
                self.linkage.as_ref().map(HostLinkage::shut_guests_down),
            ),
            group => cluster_core::control::group_request(&self.config, &self.engine, &group).await,
        }
    }
}
