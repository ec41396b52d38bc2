//! The guest daemon's answer to control requests.

use std::sync::Arc;
use std::time::Instant;

use cluster_core::api::{self, ApiError, Handler, Request, Response};
use cluster_core::engine::Engine;
use cluster_core::maintenance::Progress;
use cluster_core::status::NodeStatus;

use crate::host_link::GuestLinkage;

/// Everything the guest daemon needs to answer requests.
#[derive(Debug)]
pub struct GuestService {
    config: conf::Config,
    config_file: String,
    node: String,
    started: Instant,
    engine: Arc<Engine>,
    linkage: Option<GuestLinkage>,
    maintenance: Progress,
}

impl GuestService {
    /// A service for `node` of `config`, with its session to the host
    /// daemon when it has one.
    pub fn new(
        config: conf::Config,
        config_file: String,
        node: String,
        engine: Arc<Engine>,
        linkage: Option<GuestLinkage>,
    ) -> Self {
        Self {
            config,
            config_file,
            node,
            started: Instant::now(),
            engine,
            linkage,
            maintenance: Progress::default(),
        }
    }

    /// This guest's session to its host daemon, when it has one.
    pub fn linkage(&self) -> Option<&GuestLinkage> {
        self.linkage.as_ref()
    }

    /// Put this guest in maintenance for its host (`PrepareShutdown`):
    /// its groups move to other guests; `true` once none runs here,
    /// `false` if that did not happen by `deadline`.
    pub async fn prepare_shutdown(&self, deadline: std::time::Instant) -> bool {
        let timeout = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // One already running (an operator's) is followed as it is.
        let _ = cluster_core::control::maintenance_request(
            &self.maintenance,
            self.engine.runtime(),
            true,
            timeout_ms,
            None,
            None,
        );
        loop {
            match self.maintenance.report() {
                Some(r) if r.done => return r.ok && r.on,
                _ if std::time::Instant::now() >= deadline => return false,
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let members = self.engine.members();
        let runtime = self.engine.runtime();
        let core = runtime.status();
        let groups = cluster_core::control::group_status(&self.config, &self.node, &core);
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
            hypervisor: None,
            capacity: Vec::new(),
            maintenance: self.maintenance.report(),
            linkage: self.linkage.as_ref().map(GuestLinkage::status),
        }
    }
}

impl Handler for GuestService {
    async fn handle(&self, request: Request) -> Result<Response, ApiError> {
        match request {
            Request::Status => Ok(Response::Status(Box::new(self.status()))),
            Request::Events { since_ms, limit } => {
                api::events_response(self.engine.events().path().to_owned(), since_ms, limit).await
            }
            Request::Maintenance { on, timeout_ms } => cluster_core::control::maintenance_request(
                &self.maintenance,
                self.engine.runtime(),
                on,
                timeout_ms,
                None,
                None,
            ),
            group => cluster_core::control::group_request(&self.config, &self.engine, &group).await,
        }
    }
}
