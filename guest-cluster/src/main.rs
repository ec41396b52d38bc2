//! `guest-clusterd`: see the crate documentation of `guest_cluster`.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cluster_core::daemon::{self, DaemonArgs};
use guest_cluster::service::GuestService;

/// The guest daemon: fails applications over between guests.
#[derive(Debug, Parser)]
#[command(name = "guest-clusterd", version, about)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    daemon::init_logging(args.daemon.log_format);
    let start = daemon::startup(&args.daemon, conf::ClusterKind::Guest)?;
    tracing::info!(
        cluster = %start.config.cluster.name,
        node = %start.node,
        socket = %start.api_socket.display(),
        "guest-clusterd starting"
    );
    let engine = cluster_core::engine::Engine::start(
        &start.config,
        &start.config_file,
        &start.node,
        &start.state_dir,
    )
    .context("cannot start the cluster engine")?;
    let service = Arc::new(GuestService::new(
        start.config,
        start.config_file.display().to_string(),
        start.node,
        engine,
    ));
    cluster_core::api::serve_unix(&start.api_socket, service, daemon::shutdown_signal())
        .await
        .context("control API")?;
    tracing::info!("guest-clusterd stopped");
    Ok(())
}
