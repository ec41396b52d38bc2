//! Planned maintenance of a node: `clusterctl maintenance on|off`.
//!
//! `on`: an optional preparation (a host hands its guests' applications
//! over first, through the linkage), then the node is put in maintenance
//! (placement moves every group away; the flag is kept across restarts),
//! then the procedure waits until no group runs, starts or stops here,
//! then an optional last step (a host shuts its remaining guests down).
//! `off`: the flag is cleared; groups come back as their fail-back says.
//!
//! The request returns at once; the procedure runs in the background and
//! reports its steps in `clusterctl status` ([`MaintenanceReport`]), which
//! `clusterctl maintenance` follows. One procedure at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::runtime::Runtime;
use crate::status::MaintenanceReport;

/// The future of a preparation or last step.
pub type StepFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A preparation or last step: given the progress to report to and the
/// deadline of the whole procedure.
pub type Hook = Box<dyn FnOnce(Progress, Instant) -> StepFuture + Send>;

/// The newest procedure's report; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<Mutex<Option<MaintenanceReport>>>);

impl Progress {
    fn with<T>(&self, f: impl FnOnce(&mut Option<MaintenanceReport>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Record a step, in words.
    pub fn step(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!("maintenance: {text}");
        self.with(|r| {
            if let Some(r) = r {
                r.steps.push(text);
            }
        });
    }

    /// The newest procedure's report.
    pub fn report(&self) -> Option<MaintenanceReport> {
        self.with(|r| r.clone())
    }

    fn finish(&self, ok: bool) {
        self.with(|r| {
            if let Some(r) = r {
                r.done = true;
                r.ok = ok;
            }
        });
    }
}

/// Why a procedure was not started.
#[derive(Debug, thiserror::Error)]
#[error("a maintenance procedure is already running (started {started_ms} ms since the epoch)")]
pub struct AlreadyRunning {
    /// When it started.
    pub started_ms: u64,
}

/// Begin putting this node in (`on`) or out of maintenance, within
/// `timeout`; `prepare` runs before the flag is set, `last` once no group
/// runs here (both only for `on`).
///
/// # Errors
/// Another procedure is still running.
pub fn begin(
    progress: &Progress,
    runtime: Runtime,
    on: bool,
    timeout: Duration,
    prepare: Option<Hook>,
    last: Option<Hook>,
) -> Result<(), AlreadyRunning> {
    progress.with(|r| {
        if let Some(r) = r.as_ref().filter(|r| !r.done) {
            return Err(AlreadyRunning {
                started_ms: r.started_ms,
            });
        }
        *r = Some(MaintenanceReport {
            on,
            started_ms: crate::events::now_ms(),
            steps: Vec::new(),
            done: false,
            ok: false,
        });
        Ok(())
    })?;
    let progress = progress.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        let ok = if on {
            enter(&progress, &runtime, deadline, prepare, last).await
        } else {
            runtime.set_maintenance(false);
            progress
                .step("out of maintenance: groups may run here again (as their fail-back says)");
            true
        };
        progress.finish(ok);
    });
    Ok(())
}

async fn enter(
    progress: &Progress,
    runtime: &Runtime,
    deadline: Instant,
    prepare: Option<Hook>,
    last: Option<Hook>,
) -> bool {
    let started = Instant::now();
    if let Some(prepare) = prepare
        && let Err(e) = prepare(progress.clone(), deadline).await
    {
        // The node goes into maintenance anyway: the operator asked for
        // it, and what could not be handed over is said.
        progress.step(format!("preparation incomplete: {e}"));
    }
    runtime.set_maintenance(true);
    progress.step("in maintenance: placement moves every group away from this node");
    loop {
        let status = runtime.status();
        let here: Vec<usize> = status
            .here
            .iter()
            .enumerate()
            .filter_map(|(g, s)| s.map(|_| g))
            .collect();
        if status.maintenance && here.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            progress.step(format!(
                "timed out: {} group(s) still run or stop here",
                here.len()
            ));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.step(format!(
        "no group runs here ({} ms)",
        started.elapsed().as_millis()
    ));
    if let Some(last) = last
        && let Err(e) = last(progress.clone(), deadline).await
    {
        progress.step(format!("not finished: {e}"));
        return false;
    }
    progress.step(format!(
        "done in {} ms: this node may be taken down",
        started.elapsed().as_millis()
    ));
    true
}
