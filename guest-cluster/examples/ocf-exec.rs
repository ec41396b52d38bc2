//! Run one action of an OCF resource agent through guest-clusterd's OCF
//! executor, and exit as an agent would. Wrapped in a one-line agent
//! script, it lets `ocf-tester` (from `resource-agents`) drive our
//! executor: start, stop and monitor go through the driver the engine
//! uses (with its exit-code mapping), `meta-data` is read as the driver
//! reads it, and other actions run through the same executor with their
//! exit code passed on.
//!
//! ```text
//! OCF_RESOURCE_INSTANCE=app OCF_RESKEY_state=/tmp/x \
//!     ocf-exec --rsctmp /run/kvmha-test heartbeat:Dummy start
//! ```
//!
//! The resource's parameters are the `OCF_RESKEY_*` variables of the
//! environment (`CRM_meta_*` aside); `OCF_RESKEY_CRM_meta_timeout` (ms) is
//! the action's timeout, 20 s if unset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cluster_core::resource::{ActionContext, ActionOutcome, Probe, ResourceDriver, StartReason};
use guest_cluster::ocf::{self, AgentExit, OcfDriver, RscTmp, code};

#[derive(Debug, Parser)]
#[command(about = "Run one OCF action through guest-clusterd's OCF executor")]
struct Args {
    /// OCF root directory.
    #[arg(long, default_value = "/usr/lib/ocf")]
    ocf_root: PathBuf,
    /// The node's HA_RSCTMP directory.
    #[arg(long)]
    rsctmp: PathBuf,
    /// The node name the agent is told.
    #[arg(long, default_value = "ocf-exec")]
    node: String,
    /// The agent, `provider:type`.
    agent: String,
    /// The OCF action.
    action: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ocf-exec: cannot start the runtime: {e}");
            return exit(code::ERR_GENERIC);
        }
    };
    exit(runtime.block_on(run(args)))
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn run(args: Args) -> i32 {
    let mut params = BTreeMap::new();
    let mut timeout = Duration::from_secs(20);
    for (key, value) in std::env::vars() {
        if key == "OCF_RESKEY_CRM_meta_timeout" {
            if let Ok(ms) = value.parse() {
                timeout = Duration::from_millis(ms);
            }
        } else if let Some(name) = key.strip_prefix("OCF_RESKEY_")
            && !name.starts_with("CRM_meta_")
        {
            params.insert(name.to_owned(), value);
        }
    }
    let instance = std::env::var("OCF_RESOURCE_INSTANCE").unwrap_or_default();
    let driver = OcfDriver::new(
        &conf::OcfResource {
            agent: args.agent,
            ocf_root: args.ocf_root,
            params,
        },
        Arc::new(RscTmp::new(args.rsctmp)),
    );
    let ctx = ActionContext {
        group: "ocf-exec".into(),
        resource: instance,
        node: args.node,
        reason: StartReason::Start,
        previous_owner: None,
        previous_owner_fenced: false,
        timeout,
    };
    match args.action.as_str() {
        "start" => outcome_code(driver.start(&ctx).await),
        "stop" => outcome_code(driver.stop(&ctx).await),
        "monitor" => match driver.probe(&ctx).await {
            Probe::Running => code::SUCCESS,
            Probe::Stopped => code::NOT_RUNNING,
            Probe::Failed(why) | Probe::Unknown(why) => {
                eprintln!("ocf-exec: monitor: {why}");
                code::ERR_GENERIC
            }
        },
        "meta-data" => match driver.meta_data(timeout).await {
            Ok(xml) => {
                print!("{xml}");
                code::SUCCESS
            }
            Err(e) => {
                eprintln!("ocf-exec: {e}");
                code::ERR_GENERIC
            }
        },
        other if !ocf::is_action(other) => {
            eprintln!("ocf-exec: `{other}` is not an OCF action");
            code::ERR_UNIMPLEMENTED
        }
        other => match driver.run_action(&ctx, other).await {
            AgentExit::Exited { code, .. } => code,
            exit => {
                eprintln!("ocf-exec: {other}: {}", exit.describe());
                code::ERR_GENERIC
            }
        },
    }
}

fn outcome_code(outcome: ActionOutcome) -> i32 {
    match outcome {
        ActionOutcome::Ok => code::SUCCESS,
        ActionOutcome::Failed { message, hard } => {
            eprintln!("ocf-exec: {message} (hard: {hard})");
            code::ERR_GENERIC
        }
        ActionOutcome::TimedOut => {
            eprintln!("ocf-exec: timed out");
            code::ERR_GENERIC
        }
    }
}
