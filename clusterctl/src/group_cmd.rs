//! `clusterctl group start|stop|move` and `clusterctl clear`.

use std::process::ExitCode;

use cluster_core::api::{Request, Response};

use crate::target::{Client, Target, unexpected};

/// Send a group request and print what the daemon accepted.
pub(crate) fn run(target: &Target, json: bool, request: &Request) -> anyhow::Result<ExitCode> {
    let client = Client::new(target)?;
    match client.call(request)? {
        Response::Accepted { message } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "accepted": true,
                        "message": message,
                    }))?
                );
            } else {
                println!("{message}");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(&other)),
    }
}
