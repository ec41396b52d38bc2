//! `clusterctl guest fence`: ask a host daemon to fence a linked guest's
//! VM on behalf of another guest, as the guest cluster would over the
//! linkage.

use std::process::ExitCode;

use cluster_core::api::{GuestFenceAction, Request, Response};

use crate::target::{Client, Target, unexpected};

/// Send `Request::FenceGuest` and print the confirmation. A fence that is
/// refused or not confirmed is an error (exit 1).
pub(crate) fn fence(
    target: &Target,
    json: bool,
    requester: String,
    peer: String,
    reboot: bool,
) -> anyhow::Result<ExitCode> {
    let action = if reboot {
        GuestFenceAction::Reboot
    } else {
        GuestFenceAction::Off
    };
    let client = Client::new(target)?;
    let answer = client.call(&Request::FenceGuest {
        requester,
        peer,
        action,
    })?;
    match answer {
        Response::GuestFenced { .. } if json => {
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(ExitCode::SUCCESS)
        }
        Response::GuestFenced { message, .. } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected(&other)),
    }
}
