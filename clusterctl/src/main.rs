//! `clusterctl`: the operator's command.
//!
//! Exit codes: 0 success; 1 the request was understood and the answer is
//! "no" (an invalid configuration, an unreachable daemon, a failed action);
//! 2 usage errors (from clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cluster_core::api::Request;

mod config_cmd;
mod demo_cmd;
mod events_cmd;
mod group_cmd;
mod guest_cmd;
mod maintenance_cmd;
mod simulate_cmd;
mod status_cmd;
mod target;

use target::Target;

/// Operate a KVM HA cluster: check configuration, see status and events,
/// start, stop and move groups, run the demo.
#[derive(Debug, Parser)]
#[command(name = "clusterctl", version, about, propagate_version = true)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the real engine in virtual time over a scenario file (a config,
    /// timed faults and commands, expected placements and events); print
    /// the timeline. Exit 0 if every expectation held, 1 otherwise.
    ///
    /// With `--what-if`, start instead from the live cluster as its daemon
    /// reports it (configuration, lost nodes, where each group runs), apply
    /// the events, and show what the engine would do. Exit 1 if a safety
    /// rule would break.
    Simulate {
        /// The scenario (TOML; see tests/scenarios/).
        #[arg(required_unless_present = "what_if", conflicts_with = "what_if")]
        scenario: Option<PathBuf>,
        /// An event to apply to the live cluster, in words: `power_off n0`,
        /// `resource_fail n1 app`, `partition n0,n1|n2`, `move web n2`,
        /// `maintenance n1 on`... Repeat for several, one second apart.
        #[arg(long = "what-if", value_name = "EVENT")]
        what_if: Vec<String>,
        /// How long to simulate after the last `--what-if` event.
        #[arg(long = "for", value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        run_for: std::time::Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Show a daemon's view of its cluster: nodes, groups, resources, VMs.
    Status {
        #[command(flatten)]
        target: Target,
        /// Redraw the status every `--interval` until interrupted (Ctrl-C).
        #[arg(long, short = 'w')]
        watch: bool,
        /// Time between two redraws with `--watch` (`500ms`, `2s`...).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "watch")]
        interval: std::time::Duration,
        /// Stop `--watch` after this many redraws.
        #[arg(long, hide = true, requires = "watch")]
        count: Option<u64>,
    },
    /// Show the daemon's events (membership, quorum, fencing...), oldest
    /// first: local time, node, kind, then the details as key=value.
    /// `--json` prints the raw JSON lines.
    Events {
        #[command(flatten)]
        target: Target,
        /// Only events of this recent past (`10m`, `2h`, `1day`...).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only events at or after this time (milliseconds since the epoch).
        #[arg(long, value_name = "MS", conflicts_with = "since")]
        since_ms: Option<u64>,
        /// Only the last N events.
        #[arg(long, short = 'n', value_name = "N")]
        limit: Option<usize>,
        /// Keep printing new events as they come (until interrupted).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Start, stop or move a group.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Act for a linked guest on a host daemon (host clusters).
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Put the daemon's node in maintenance, or take it out. `on`: its
    /// groups move to other nodes; on a host, every linked guest whose VM
    /// runs here first hands its applications over to guests on other
    /// hosts, and the guests' VMs that are not VMs of the host cluster
    /// are shut down at the end. Prints the steps as they happen; exit 0
    /// once the node may be taken down (`on`) or is back (`off`), 1 if
    /// not (in time).
    Maintenance {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Bound on the whole procedure.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Return once the daemon accepted it, without following it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Clear a group's failures (failed state, restart counts, bans).
    Clear {
        /// The group.
        group: String,
        #[command(flatten)]
        target: Target,
    },
    /// Run the demo on this machine (root): host daemons with libvirt's
    /// test driver on loopback addresses, then guest daemons in network
    /// namespaces failing a web service with floating addresses over.
    Demo {
        /// Directory for the demo's configuration, keys, sockets and logs.
        #[arg(long, default_value = "/tmp/kvmha-demo")]
        dir: PathBuf,
        /// Leave the host daemons of act one running and stop there (stop
        /// them with `pkill host-clusterd`).
        #[arg(long)]
        keep_running: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Start a group on its most preferred available node.
    Start {
        /// The group.
        group: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop a group and keep it stopped.
    Stop {
        /// The group.
        group: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move a group to NODE, or to the next node of its preference list.
    Move {
        /// The group.
        group: String,
        /// The node to move it to.
        node: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum GuestCommand {
    /// Fence the linked guest PEER as the guest GUEST asks over the
    /// linkage: the host daemon destroys PEER's VM and answers once it is
    /// confirmed off (exit 0), or says why not (exit 1). Only guests of the
    /// same guest cluster in `[[linkage.guests]]` may fence each other.
    Fence {
        /// The guest asking (node name in `[[linkage.guests]]`).
        #[arg(long = "as", value_name = "GUEST")]
        requester: String,
        /// The guest to fence.
        peer: String,
        /// Start it again once it is confirmed off (VMs the host cluster
        /// runs as `vm` resources are restarted by the host cluster).
        #[arg(long)]
        reboot: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate configuration files; prints `ok` or every error with its
    /// file, line, column and key. Exit 0 if all are valid, 1 otherwise.
    Check {
        /// The files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON schema of the configuration file.
    Schema,
    /// Print the key reference (Markdown) generated from the model.
    Reference,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(ConfigCommand::Check { files }) => config_cmd::check(&files, cli.json),
        Command::Config(ConfigCommand::Schema) => config_cmd::schema(),
        Command::Simulate {
            scenario,
            what_if,
            run_for,
            target,
        } => match scenario {
            Some(file) => simulate_cmd::run(&file, cli.json),
            None => status_cmd::fetch_from(&target)
                .and_then(|s| simulate_cmd::what_if(&s, &what_if, run_for, cli.json)),
        },
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", conf::reference_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            target,
            watch,
            interval,
            count,
        } => status_cmd::run(
            &target,
            cli.json,
            watch.then_some(status_cmd::Watch { interval, count }),
        ),
        Command::Events {
            target,
            since,
            since_ms,
            limit,
            follow,
        } => {
            let since_ms = since_ms.or_else(|| {
                since.map(|d| {
                    let ago = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                    cluster_core::events::now_ms().saturating_sub(ago)
                })
            });
            events_cmd::run(
                &target,
                cli.json,
                events_cmd::Query {
                    since_ms,
                    limit,
                    follow,
                },
            )
        }
        Command::Group(command) => {
            let (target, request) = match command {
                GroupCommand::Start { group, target } => (target, Request::GroupStart { group }),
                GroupCommand::Stop { group, target } => (target, Request::GroupStop { group }),
                GroupCommand::Move {
                    group,
                    node,
                    target,
                } => (target, Request::GroupMove { group, node }),
            };
            group_cmd::run(&target, cli.json, &request)
        }
        Command::Guest(GuestCommand::Fence {
            requester,
            peer,
            reboot,
            target,
        }) => guest_cmd::fence(&target, cli.json, requester, peer, reboot),
        Command::Clear { group, target } => {
            group_cmd::run(&target, cli.json, &Request::Clear { group })
        }
        Command::Maintenance {
            state,
            timeout,
            no_wait,
            target,
        } => maintenance_cmd::run(&target, cli.json, state == "on", timeout, !no_wait),
        Command::Demo { dir, keep_running } => demo_cmd::run(&dir, keep_running, cli.json),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`clusterctl events --follow | head`).
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("clusterctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
