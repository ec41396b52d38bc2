//! `host-clusterd`: see the crate documentation of `host_cluster`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cluster_core::daemon::{self, DaemonArgs};
use host_cluster::hypervisor::Hypervisor;
use host_cluster::linkage_service::HostLinkage;
use host_cluster::service::HostService;

/// The KVM host daemon: fails whole VMs over between hosts through libvirt.
#[derive(Debug, Parser)]
#[command(name = "host-clusterd", version, about)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
}

fn main() -> anyhow::Result<()> {
    // The watchdog keeper is this same binary; it needs no runtime.
    cluster_core::watchdog::run_keeper_if_requested();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(args))
}

/// Longest a domain XML on shared storage may take to read at start.
const XML_READ_LIMIT: Duration = Duration::from_secs(10);

async fn run(args: Args) -> anyhow::Result<()> {
    daemon::init_logging(args.daemon.log_format);
    let mut start = daemon::startup(&args.daemon, conf::ClusterKind::Host)?;
    // What each VM needs of a host, for placement: from its domain XML
    // unless the configuration says it.
    if let Err(problems) = host_cluster::vm::fill_needs(&mut start.config, XML_READ_LIMIT).await {
        let list: Vec<String> = problems
            .iter()
            .map(|(vm, e)| format!("  resource `{vm}`: {e}"))
            .collect();
        anyhow::bail!(
            "cannot read what the VMs need of a host (set `memory_mib` and `vcpus` on the resource, or fix the domain XML):\n{}",
            list.join("\n")
        );
    }
    let node = start
        .config
        .node(&start.node)
        .context("node vanished from the configuration")?;
    let uri = node
        .libvirt_uri
        .clone()
        .unwrap_or_else(|| "qemu:///system".to_owned());
    let hypervisor = Hypervisor::spawn(&uri).context("cannot start the libvirt worker thread")?;
    tracing::info!(
        cluster = %start.config.cluster.name,
        node = %start.node,
        libvirt = %uri,
        socket = %start.api_socket.display(),
        "host-clusterd starting"
    );
    // The management addresses (`api.listen`) are bound before anything
    // starts, so that a bad address or token is a start-up error; the
    // control socket appears once the daemon answers on it.
    let api = cluster_core::api::Listeners::bind(&start.config.api, &start.api_socket)
        .context("control API")?;
    let engine = cluster_core::engine::Engine::start(
        &start.config,
        &start.config_file,
        &start.node,
        &start.state_dir,
        host_cluster::drivers::build(&start.config, &start.node, &hypervisor),
    )
    .context("cannot start the cluster engine")?;
    let shutdown_engine = engine.clone();
    let fencer = HostService::guest_fencer(&start.config, &start.node, &engine, &hypervisor);
    let linkage = HostLinkage::start(
        &start.config,
        &start.node,
        fencer.clone(),
        engine.clone(),
        hypervisor.clone(),
    )
    .await
    .context("linkage")?;
    let service = Arc::new(HostService::new(
        start.config,
        start.config_file.display().to_string(),
        start.node,
        engine,
        hypervisor,
        fencer,
        linkage,
    ));
    api.serve(service, daemon::shutdown_signal())
        .await
        .context("control API")?;
    shutdown_engine.shutdown().await;
    tracing::info!("host-clusterd stopped");
    Ok(())
}
