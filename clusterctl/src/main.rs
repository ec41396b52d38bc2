//! `clusterctl`: the operator's command.
//!
//! Exit codes: 0 success; 1 the request was understood and the answer is
//! "no" (an invalid configuration, an unreachable daemon, a failed action);
//! 2 usage errors (from clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;
mod demo_cmd;
mod status_cmd;

/// Operate a KVM HA cluster: check configuration, see status, run the demo.
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
    /// Show a daemon's view of its cluster: nodes, groups, resources, VMs.
    Status {
        /// The daemon's control socket.
        #[arg(long, short = 's', env = "KVMHA_SOCKET", conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Take the socket from this configuration's `api.socket`.
        #[arg(long, short = 'c', env = "KVMHA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start a demo cluster on this machine (libvirt's test driver and
    /// loopback addresses), show its status, and stop it.
    Demo {
        /// Directory for the demo's configuration, keys, sockets and logs.
        #[arg(long, default_value = "/tmp/kvmha-demo")]
        dir: PathBuf,
        /// Leave the daemons running (stop them with `pkill host-clusterd`).
        #[arg(long)]
        keep_running: bool,
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
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", conf::reference_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { socket, config } => status_cmd::run(socket, config, cli.json),
        Command::Demo { dir, keep_running } => demo_cmd::run(&dir, keep_running, cli.json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clusterctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
