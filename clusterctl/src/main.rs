//! `clusterctl`: the operator's command.
//!
//! Exit codes: 0 success, 1 the request was understood and the answer is
//! "no" (an invalid configuration, a failed action), 2 usage errors (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;

/// Operate a KVM HA cluster: check configuration, see status, move groups.
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clusterctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
