//! What every daemon `main` does the same way: command line, logging,
//! configuration, signals.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Command line shared by `host-clusterd` and `guest-clusterd`.
#[derive(Debug, Clone, Parser)]
pub struct DaemonArgs {
    /// Cluster configuration file.
    #[arg(
        long,
        short = 'c',
        env = "KVMHA_CONFIG",
        default_value = "/etc/kvmha/cluster.toml"
    )]
    pub config: PathBuf,
    /// This node's name in the configuration.
    #[arg(long, short = 'n', env = "KVMHA_NODE")]
    pub node: String,
    /// State directory, instead of `cluster.state_dir`/NODE (several nodes on
    /// one machine, as in the testbed).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Control socket, instead of `api.socket`.
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A daemon's resolved start-up settings.
#[derive(Debug)]
pub struct Startup {
    /// The validated configuration.
    pub config: conf::Config,
    /// The configuration file.
    pub config_file: PathBuf,
    /// This node's name (checked to be in the configuration).
    pub node: String,
    /// Where this node keeps its state.
    pub state_dir: PathBuf,
    /// The control socket.
    pub api_socket: PathBuf,
}

/// Start logging with `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Load the configuration, check that it is for a cluster of `kind` and
/// names this node, and resolve the paths.
pub fn startup(args: &DaemonArgs, kind: conf::ClusterKind) -> anyhow::Result<Startup> {
    let config = conf::load(&args.config)
        .with_context(|| format!("configuration {} is invalid", args.config.display()))?;
    if config.cluster.kind != kind {
        bail!(
            "{} describes a {:?} cluster; this daemon runs {:?} clusters",
            args.config.display(),
            config.cluster.kind,
            kind
        );
    }
    if config.node(&args.node).is_none() {
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "node `{}` is not in {} (nodes: {})",
            args.node,
            args.config.display(),
            names.join(", ")
        );
    }
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| config.cluster.state_dir.join(&args.node));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let api_socket = args
        .api_socket
        .clone()
        .unwrap_or_else(|| config.api.socket.clone());
    Ok(Startup {
        config,
        config_file: args.config.clone(),
        node: args.node.clone(),
        state_dir,
        api_socket,
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be killed; never exit early.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
}
