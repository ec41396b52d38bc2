//! `cluster-witness`: a small HTTP server at a third site. Cluster nodes
//! report which peers they see; when a cluster splits, the witness grants
//! its vote to one side only, for a lease. See the library for the rules
//! and the protocol.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cluster_witness::{VoteBook, bind_all, read_token_file, router, serve};
use tracing_subscriber::EnvFilter;

/// Third-site witness for KVM HA clusters.
#[derive(Debug, Parser)]
#[command(name = "cluster-witness", version, about)]
struct Args {
    /// Address to listen on (IPv4 or IPv6, e.g. `[::]:7450` or
    /// `192.0.2.10:7450`); repeat for several.
    #[arg(long, short = 'l', default_value = "[::]:7450")]
    listen: Vec<SocketAddr>,
    /// File holding the bearer token clients must send (it must not be
    /// accessible by group or other users). Without it, no token is asked.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Longest lease granted, whatever a node asks (e.g. `60s`, `500ms`).
    #[arg(long, default_value = "60s", value_parser = parse_lease)]
    max_lease: Duration,
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if lease < Duration::from_millis(1) {
        return Err("must be at least 1ms".to_owned());
    }
    Ok(lease)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the witness can still be killed; never
        // stop early.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with every cause, whatever RUST_BACKTRACE says.
            eprintln!("cluster-witness: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let token = args
        .token_file
        .as_deref()
        .map(read_token_file)
        .transpose()?;
    let listeners = bind_all(&args.listen)?;
    for listener in &listeners {
        let addr = listener.local_addr().context("listener address")?;
        tracing::info!(%addr, "cluster-witness listening");
    }
    tracing::info!(
        max_lease = %humantime::format_duration(args.max_lease),
        token = token.is_some(),
        "serving votes"
    );
    let app = router(VoteBook::new(args.max_lease), token.as_deref());
    serve(listeners, app, shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}
