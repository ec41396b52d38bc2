//! What a daemon answers to operators about its groups: group commands
//! handed to the engine's runtime (and confirmed by a published placement),
//! and the groups' part of `clusterctl status`. Both daemons use this, so
//! the answers are the same whatever the cluster kind.

use std::time::Duration;

use crate::api::{self, ApiError, GroupCommand, Response};
use crate::node::{Op, Published};
use crate::placement::RunState;
use crate::runtime::{CoreStatus, Runtime};
use crate::status::{EngineStatus, GroupStatus, ResourceState, RunningOn};

/// How long a group command waits for the coordinator to publish a
/// placement that applied it.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A group request (`group start|stop|move`, `clear`) to `engine`'s
/// daemon: see [`group_command`]. Any other request is refused.
///
/// # Errors
/// As [`group_command`]; a request that is not a group request.
pub async fn group_request(
    config: &conf::Config,
    engine: &crate::engine::Engine,
    request: &api::Request,
) -> Result<Response, ApiError> {
    let Some((group, command)) = request.group_command() else {
        return Err(ApiError::bad_request("not a group request"));
    };
    group_command(config, engine.runtime(), engine.me(), group, command).await
}

/// Check `command` against the configuration, hand it to the runtime and
/// wait until a published placement applied it.
///
/// # Errors
/// Unknown group or node, a move to a node the group may not run on
/// (from [`api::check_group_command`]); the request was queued but no
/// placement applied it
/// within [`APPLY_TIMEOUT`] (unavailable: typically no quorum).
pub async fn group_command(
    config: &conf::Config,
    runtime: &Runtime,
    me: usize,
    group: &str,
    command: GroupCommand,
) -> Result<Response, ApiError> {
    api::check_group_command(config, group, &command)?;
    let gid = config
        .groups
        .iter()
        .position(|g| g.name == group)
        .ok_or_else(|| ApiError::not_found(format!("no group named `{group}`")))?;
    let op = match &command {
        GroupCommand::Start => Op::Start,
        GroupCommand::Stop => Op::Stop,
        GroupCommand::Clear => Op::Clear,
        GroupCommand::Move { node } => Op::Move {
            to: match node {
                None => None,
                Some(n) => Some(
                    config
                        .nodes
                        .iter()
                        .position(|x| &x.name == n)
                        .and_then(|i| u16::try_from(i).ok())
                        .ok_or_else(|| ApiError::not_found(format!("no node named `{n}`")))?,
                ),
            },
        },
    };
    let Some(id) = runtime.request(gid, op).await else {
        return Err(ApiError::unavailable(
            "the engine is shutting down; the request was not queued",
        ));
    };
    let Some(published) = runtime.applied(me, id, APPLY_TIMEOUT).await else {
        return Err(ApiError::unavailable(format!(
            "`{command}` of `{group}` is queued on {} but no coordinator applied it within {} s \
             (is the partition quorate? see `clusterctl status`); it applies when one does",
            runtime.names().get(me).map_or("this node", String::as_str),
            APPLY_TIMEOUT.as_secs()
        )));
    };
    Ok(Response::Accepted {
        message: accepted_message(config, runtime.names(), &published, gid, group, &command),
    })
}

fn accepted_message(
    config: &conf::Config,
    names: &[String],
    published: &Published,
    gid: usize,
    group: &str,
    command: &GroupCommand,
) -> String {
    let name = |n: Option<u16>| {
        n.and_then(|n| names.get(usize::from(n)))
            .map_or_else(|| "no node".to_owned(), Clone::clone)
    };
    let target = published.groups.get(gid).map(|a| {
        let topo = crate::placement::Topology::from_config(config);
        format!("target {} ({})", name(a.node), a.reason.describe(&topo))
    });
    format!(
        "{group}: {command} applied in placement epoch {}{}",
        published.epoch,
        target.map(|t| format!("; {t}")).unwrap_or_default()
    )
}

/// The groups of `clusterctl status`: the configuration, overlaid with
/// what the runtime knows (target, reason, state here and elsewhere,
/// restart and failover counts, excluded nodes).
pub fn group_status(config: &conf::Config, me: &str, core: &CoreStatus) -> Vec<GroupStatus> {
    let mut groups = crate::status::configured_groups(config);
    let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
    let name = |n: u16| names.get(usize::from(n)).map(|s| (*s).to_owned());
    for (i, g) in groups.iter_mut().enumerate() {
        let here = core.here.get(i).copied().flatten();
        g.state_here =
            Some(here.map_or_else(|| "stopped".to_owned(), |s| run_state_name(s).to_owned()));
        for r in &mut g.resources {
            r.state = match here {
                None => ResourceState::Stopped,
                Some(RunState::Running) => ResourceState::Running,
                Some(RunState::Failed | RunState::StopFailed) => ResourceState::Failed,
                Some(_) => ResourceState::Unknown,
            };
        }
        g.restarts = core.restarts.get(i).copied().unwrap_or(0);
        g.reason = core.reasons.get(i).cloned().flatten();
        g.running_on = core
            .elsewhere
            .get(i)
            .map(|v| {
                v.iter()
                    .map(|(node, state)| RunningOn {
                        node: node.clone(),
                        state: run_state_name(*state).to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(a) = core.published.as_ref().and_then(|p| p.groups.get(i)) {
            g.target = a.node.and_then(name);
            g.wanted = Some(a.wanted);
            g.failovers = a.failovers.len();
            g.excluded = a.excluded.keys().filter_map(|n| name(*n)).collect();
        }
        g.owner = if here == Some(RunState::Running) {
            Some(me.to_owned())
        } else {
            g.running_on
                .iter()
                .find(|r| r.state == "running" && r.node != me)
                .map(|r| r.node.clone())
        };
    }
    groups
}

/// The engine's own line of `clusterctl status`.
pub fn engine_status(core: &CoreStatus, names: &[String]) -> EngineStatus {
    EngineStatus {
        epoch: core.published.as_ref().map(|p| p.epoch),
        coordinator: core
            .published
            .as_ref()
            .and_then(|p| names.get(usize::from(p.coordinator)).cloned()),
        coordinating_here: core.coordinator,
        settled: core.settled,
        maintenance: core.maintenance,
    }
}

/// Per node with a capacity budget: the budget and what the newest
/// placement (as `core` has it) puts there, by the groups' demands.
pub fn capacity_status(
    config: &conf::Config,
    core: &CoreStatus,
) -> Vec<crate::status::NodeCapacity> {
    let topo = crate::placement::Topology::from_config(config);
    let assignments = core
        .published
        .as_ref()
        .map(|p| p.groups.as_slice())
        .unwrap_or_default();
    topo.nodes
        .iter()
        .enumerate()
        .filter_map(|(n, name)| {
            let budget = topo.capacity.get(n).copied().flatten()?;
            let mut used = crate::placement::Demand::default();
            let mut groups = 0;
            for (g, a) in assignments.iter().enumerate() {
                if a.node.map(usize::from) == Some(n)
                    && let Some(spec) = topo.groups.get(g)
                {
                    used = used.plus(spec.demand);
                    groups += 1;
                }
            }
            Some(crate::status::NodeCapacity {
                node: name.clone(),
                memory_mib: budget.memory_mib,
                vcpus: budget.vcpus,
                used_memory_mib: used.memory_mib,
                used_vcpus: used.vcpus,
                groups,
            })
        })
        .collect()
}

/// A run state as status shows it.
pub fn run_state_name(s: RunState) -> &'static str {
    match s {
        RunState::Starting => "starting",
        RunState::Running => "running",
        RunState::Stopping => "stopping",
        RunState::Failed => "failed",
        RunState::StopFailed => "stop_failed",
        RunState::Unknown => "unknown",
    }
}

/// Begin a maintenance procedure of this node (see
/// [`crate::maintenance`]); the answer says how to follow it.
///
/// # Errors
/// Another procedure is still running.
pub fn maintenance_request(
    progress: &crate::maintenance::Progress,
    runtime: &Runtime,
    on: bool,
    timeout_ms: u64,
    prepare: Option<crate::maintenance::Hook>,
    last: Option<crate::maintenance::Hook>,
) -> Result<Response, ApiError> {
    crate::maintenance::begin(
        progress,
        runtime.clone(),
        on,
        Duration::from_millis(timeout_ms),
        prepare,
        last,
    )
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Response::Accepted {
        message: if on {
            "going into maintenance; `clusterctl status` shows the steps".into()
        } else {
            "leaving maintenance".into()
        },
    })
}
