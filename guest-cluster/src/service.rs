//! The guest daemon's answer to control requests.

use std::sync::Arc;
use std::time::Instant;

use cluster_core::api::{self, ApiError, Handler, Request, Response};
use cluster_core::engine::Engine;
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
            group => cluster_core::control::group_request(&self.config, &self.engine, &group).await,
        }
    }
}
