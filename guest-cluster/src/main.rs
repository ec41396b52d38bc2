//! `guest-clusterd`: see the crate documentation of `guest_cluster`.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use cluster_core::daemon::{self, DaemonArgs};
use guest_cluster::host_link::GuestLinkage;
use guest_cluster::service::GuestService;

/// The guest daemon: fails applications over between guests.
#[derive(Debug, Parser)]
#[command(name = "guest-clusterd", version, about)]
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

async fn run(args: Args) -> anyhow::Result<()> {
    daemon::init_logging(args.daemon.log_format);
    let start = daemon::startup(&args.daemon, conf::ClusterKind::Guest)?;
    tracing::info!(
        cluster = %start.config.cluster.name,
        node = %start.node,
        socket = %start.api_socket.display(),
        "guest-clusterd starting"
    );
    // Every resource and monitor this node runs, built first: a parameter
    // a driver cannot use (a connection string or URL its library does not
    // parse...) stops the daemon here, naming it, before anything binds or
    // starts.
    // The session to the host daemon first: `nic` monitors read what the
    // host says of this guest's interfaces, and `host` fence devices use it.
    let linkage = GuestLinkage::start(&start.config, &start.node).context("linkage")?;
    let notices = linkage.as_ref().map(GuestLinkage::notices);
    let drivers = guest_cluster::drivers::build(
        &start.config,
        &start.node,
        &start.state_dir,
        notices.as_ref(),
    )
    .inspect_err(|e| {
        for problem in &e.problems {
            tracing::error!(
                group = %problem.group,
                "{} `{}` cannot run: {}",
                problem.what,
                problem.name,
                problem.message,
            );
        }
    })
    .with_context(|| format!("configuration {} cannot run", start.config_file.display()))?;
    // The management addresses (`api.listen`) are bound before anything
    // starts, so that a bad address or token is a start-up error; the
    // control socket appears once the daemon answers on it.
    let api = cluster_core::api::Listeners::bind(&start.config.api, &start.api_socket)
        .context("control API")?;
    let mut drivers = drivers;
    if let Some(l) = &linkage {
        drivers.fence = l.fence_devices(&start.config);
    }
    let engine = cluster_core::engine::Engine::start(
        &start.config,
        &start.config_file,
        &start.node,
        &start.state_dir,
        drivers,
    )
    .context("cannot start the cluster engine")?;
    let shutdown_engine = engine.clone();
    let ladder_engine = engine.clone();
    // A signal, or the recovery ladder's final action `stop_daemon`.
    let stop = async move {
        let ladder = ladder_engine.runtime().stopped();
        tokio::select! {
            () = daemon::shutdown_signal() => {}
            () = ladder => tracing::error!("stopping: the recovery ladder's final action is stop_daemon"),
        }
    };
    let service = Arc::new(GuestService::new(
        start.config,
        start.config_file.display().to_string(),
        start.node,
        engine,
        linkage,
    ));
    // The host's `PrepareShutdown`: hand the groups over (this guest goes
    // into maintenance), then answer `ShutdownReady`.
    if let Some(mut requests) = service
        .linkage()
        .and_then(GuestLinkage::take_prepare_requests)
    {
        let svc = service.clone();
        tokio::spawn(async move {
            while let Some(req) = requests.recv().await {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let deadline = std::time::Instant::now() + req.deadline;
                    if !svc.prepare_shutdown(deadline).await {
                        tracing::error!(
                            "maintenance of the host: this guest's groups were not all handed over in time; not telling the host it may shut this guest down"
                        );
                        return;
                    }
                    if let Some(l) = svc.linkage()
                        && let Err(e) = l.shutdown_ready(req.request_id).await
                    {
                        tracing::error!(
                            "maintenance of the host: cannot tell it this guest is ready: {e}"
                        );
                    }
                });
            }
        });
    }
    api.serve(service, stop).await.context("control API")?;
    shutdown_engine.shutdown().await;
    tracing::info!("guest-clusterd stopped");
    Ok(())
}
