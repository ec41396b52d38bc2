//! `cluster-witness`: a small HTTP server at a third site. Cluster nodes
//! report which peers they see; when a cluster splits, the witness grants
//! its vote to one side only, for a lease. This binary serves the health
//! endpoint today; the vote protocol lands with the quorum engine.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::Parser;

/// Third-site witness for KVM HA clusters.
#[derive(Debug, Parser)]
#[command(name = "cluster-witness", version, about)]
struct Args {
    /// Addresses to listen on (IPv4 or IPv6), e.g. `[::]:7450`.
    #[arg(long, short = 'l', default_value = "[::]:7450")]
    listen: Vec<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let app = Router::new().route("/v1/health", get(|| async { "ok\n" }));
    let mut servers = tokio::task::JoinSet::new();
    for addr in &args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, "cluster-witness listening");
        servers.spawn(axum::serve(listener, app.clone()).into_future());
    }
    while let Some(done) = servers.join_next().await {
        done.context("server task")?.context("server")?;
    }
    Ok(())
}
