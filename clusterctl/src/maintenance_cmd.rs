//! `clusterctl maintenance on|off`: put the daemon's node in maintenance
//! (its groups move away; a host first has its guests hand their
//! applications over, and shuts them down after) or take it out, and
//! follow the procedure's steps until it ends.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cluster_core::api::{Request, Response};
use cluster_core::status::MaintenanceReport;

use crate::target::{Client, Target, unexpected};

/// How often the steps are read.
const POLL: Duration = Duration::from_millis(200);

/// Begin the procedure, then print each step as it comes (a spinner
/// meanwhile on a terminal). Exit 0 once it ended with everything done,
/// 1 if it ended otherwise or did not end within `timeout` (+ 10 s).
pub(crate) fn run(
    target: &Target,
    json: bool,
    on: bool,
    timeout: Duration,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(target)?;
    let started_ms = cluster_core::events::now_ms();
    let answer = client.call(&Request::Maintenance {
        on,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    })?;
    let Response::Accepted { message } = answer else {
        return Err(unexpected(&answer));
    };
    if !wait {
        if json {
            println!("{}", serde_json::json!({ "accepted": message }));
        } else {
            println!("{message}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let spinner = (!json).then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.enable_steady_tick(Duration::from_millis(120));
        s.set_message(message.clone());
        s
    });
    let say = |line: &str| match &spinner {
        Some(s) if !s.is_hidden() => s.println(line),
        Some(_) => println!("{line}"),
        None => {}
    };
    let deadline = Instant::now() + timeout + Duration::from_secs(10);
    let mut shown = 0;
    let report: Option<MaintenanceReport> = loop {
        let Response::Status(status) = client.call(&Request::Status)? else {
            anyhow::bail!("the daemon answered a status request with something else");
        };
        // The report of this procedure (not one that ended before).
        let report = status
            .maintenance
            .filter(|r| r.on == on && r.started_ms + 1000 >= started_ms);
        if let Some(r) = &report {
            for step in &r.steps[shown.min(r.steps.len())..] {
                say(&format!("  {step}"));
            }
            shown = r.steps.len();
            if r.done {
                break report;
            }
        }
        if Instant::now() >= deadline {
            break report;
        }
        std::thread::sleep(POLL);
    };
    if let Some(s) = &spinner {
        s.finish_and_clear();
    }
    let ok = report.as_ref().is_some_and(|r| r.done && r.ok);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if ok {
        println!(
            "{}",
            if on {
                "in maintenance: nothing of the cluster runs on this node"
            } else {
                "out of maintenance"
            }
        );
    } else {
        println!(
            "not finished{}: see the steps above and `clusterctl status`",
            if report.as_ref().is_some_and(|r| r.done) {
                ""
            } else {
                " in time"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
