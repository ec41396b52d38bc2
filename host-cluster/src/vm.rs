//! `kind = "vm"` resources and monitors: virtual machines run through
//! libvirt, every call on the hypervisor's libvirt thread
//! ([`Hypervisor::call`]).
//!
//! # The VM and its name
//!
//! The resource's name is the libvirt domain name (as `clusterctl status`
//! and the quorum-loss stop see it); the domain XML must name the same
//! domain. The XML is read from `domain_xml` (shared storage, per-node
//! overrides applied) at every start, so an edited file is used at the
//! next start.
//!
//! # Start
//!
//! The VM is created as a *transient* domain (`virDomainCreateXML`):
//! libvirt keeps no definition of it, so its autostart can never start a
//! second copy on a host that comes back. A persistent definition of the
//! same name on this host is refused (hard failure naming it): the
//! cluster owns the VM. A VM already running here is a successful start;
//! one left paused, crashed or suspended here is destroyed and created
//! again. An unreadable or invalid XML, or a domain XML libvirt rejects,
//! is a hard failure; other libvirt errors are soft.
//!
//! # Stop
//!
//! ACPI shutdown (`virDomainShutdown`), then the VM's lifecycle events and
//! a 200 ms state poll until it is gone; at the stop timeout less a margin
//! (a quarter of the timeout, at most 10 s) it is destroyed. A VM that is
//! paused, crashed or suspended is destroyed at once (it cannot act on a
//! shutdown request). The stop succeeds only once libvirt reports the VM
//! gone or shut off; a VM that is not there is stopped.
//!
//! # Probe
//!
//! | libvirt | probe |
//! |---|---|
//! | no such domain, shut off | stopped |
//! | running, blocked, shutting down, paused by a migration, save, dump or snapshot in progress | running |
//! | paused (by a user, an I/O error, a watchdog, a guest panic...), crashed, suspended by the guest (PM) | failed, with the reason |
//! | libvirt unreachable or no answer in time, no state | unknown (never stopped) |
//!
//! # Monitor
//!
//! A `vm` monitor watches the VM its `resource` names (else the group's
//! last resource) and every `vm` resource after it in the group: the VMs a
//! recovery restart from that resource restarts. A check fails when one
//! of them is not running here (shut off behind the cluster's back),
//! crashed, suspended by the guest, being shut down, or paused; with
//! `paused_is_failure = false` a VM paused by a user or an error (I/O
//! error, watchdog) passes, one paused by a guest panic never does.
//!
//! Lifecycle events come first: a crash, or a pause counted as a failure,
//! marks that run of the VM (its domain id) failed as soon as the event
//! arrives, so the next check fails even if the VM was reset or resumed
//! in the meantime; a new run (the VM restarted, new id) starts clean.
//! State polling at every check is the backstop for missed events (a
//! reconnection, a lagging receiver). When libvirt cannot be reached the
//! check cannot tell and passes, with a warning: the VMs keep running
//! without libvirtd, and a restart would need libvirt anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cluster_core::resource::{
    ActionContext, ActionOutcome, BoxFuture, CheckOutcome, MonitorDriver, Probe, ResourceDriver,
};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::time::Instant;
use virt::connect::Connect;
use virt::domain::{
    Domain, DomainCrashedReason, DomainPausedReason, DomainShutoffReason, DomainState,
    DomainStateReason,
};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;

use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::libvirt_events::{DomainEvent, EventKind};

/// How often a stop looks at the VM's state between events.
const STOP_POLL: Duration = Duration::from_millis(200);
/// Longest time kept back from a stop's timeout for the destroy.
const MAX_DESTROY_MARGIN: Duration = Duration::from_secs(10);
/// Part of a monitor check's timeout kept back, so that "cannot tell"
/// is answered before the engine counts the check as late.
const CHECK_MARGIN: Duration = Duration::from_millis(100);

/// What a VM needs of a host, read from its domain XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainNeeds {
    /// The domain name (`<name>`).
    pub name: String,
    /// Memory in MiB (`<memory>`, or the sum of the NUMA cells), rounded up.
    pub memory_mib: u64,
    /// Virtual CPUs (`<vcpu>`: the maximum, not `current`; 1 if absent).
    pub vcpus: u32,
}

/// Why a domain XML cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The file could not be read.
    #[error("cannot read domain XML {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the file took longer than the action may.
    #[error("reading domain XML {} did not finish in time", path.display())]
    ReadTimedOut {
        /// The file.
        path: PathBuf,
    },
    /// The XML is not a usable domain description.
    #[error("domain XML: {0}")]
    Xml(String),
}

/// The name, memory and vCPUs of the domain described by `xml`.
///
/// Memory units are libvirt's: `b`/`bytes`, `KB`/`MB`/`GB`/`TB`/`PB`/`EB`
/// (powers of 1000), `k`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`,
/// `P`/`PiB`, `E`/`EiB` (powers of 1024), case-insensitive, `KiB` when
/// there is no `unit`.
pub fn domain_needs(xml: &str) -> Result<DomainNeeds, VmError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| VmError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(VmError::Xml(format!(
            "the root element is <{}>, not <domain>",
            root.tag_name().name()
        )));
    }
    let name = child(root, "name")
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| VmError::Xml("no <name>".into()))?
        .to_owned();
    let bytes = match child(root, "memory") {
        Some(m) => scaled(m.text().unwrap_or(""), m.attribute("unit"), "<memory>")?,
        None => numa_memory(root)?
            .ok_or_else(|| VmError::Xml("no <memory> (nor NUMA cells with memory)".into()))?,
    };
    if bytes == 0 {
        return Err(VmError::Xml("<memory> is 0".into()));
    }
    let memory_mib = u64::try_from(bytes.div_ceil(1 << 20))
        .map_err(|_| VmError::Xml("<memory> is too large".into()))?;
    let vcpus = match child(root, "vcpu") {
        None => 1,
        Some(v) => {
            let text = v.text().unwrap_or("").trim();
            match text.parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(VmError::Xml(format!(
                        "<vcpu> must be a positive number, not `{text}`"
                    )));
                }
            }
        }
    };
    Ok(DomainNeeds {
        name,
        memory_mib,
        vcpus,
    })
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == tag)
}

/// The memory of `<cpu><numa><cell memory=... unit=...>`, summed.
fn numa_memory(root: roxmltree::Node<'_, '_>) -> Result<Option<u128>, VmError> {
    let Some(numa) = child(root, "cpu").and_then(|c| child(c, "numa")) else {
        return Ok(None);
    };
    let mut total: Option<u128> = None;
    for cell in numa
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "cell")
    {
        if let Some(m) = cell.attribute("memory") {
            let b = scaled(m, cell.attribute("unit"), "NUMA cell memory")?;
            total = Some(total.unwrap_or(0).saturating_add(b));
        }
    }
    Ok(total)
}

/// `value` `unit` in bytes, as libvirt's `virScaleInteger` reads them.
fn scaled(value: &str, unit: Option<&str>, what: &str) -> Result<u128, VmError> {
    let value = value.trim();
    let n: u128 = value
        .parse::<u64>()
        .map_err(|_| VmError::Xml(format!("{what} must be a whole number, not `{value}`")))?
        .into();
    let unit = unit.unwrap_or("KiB").trim().to_ascii_lowercase();
    let bad = || VmError::Xml(format!("{what}: unknown unit `{unit}`"));
    let scale: u128 = if unit == "b" || unit == "bytes" {
        1
    } else {
        let mut chars = unit.chars();
        let power = match chars.next() {
            Some('k') => 1,
            Some('m') => 2,
            Some('g') => 3,
            Some('t') => 4,
            Some('p') => 5,
            Some('e') => 6,
            _ => return Err(bad()),
        };
        let base: u128 = match chars.as_str() {
            "" | "ib" => 1024,
            "b" => 1000,
            _ => return Err(bad()),
        };
        base.pow(power)
    };
    n.checked_mul(scale)
        .ok_or_else(|| VmError::Xml(format!("{what} is too large")))
}

/// Read and check the domain XML at `path` for the VM `name`, within `limit`.
async fn read_domain_xml(
    path: &Path,
    name: &str,
    limit: Duration,
) -> Result<(String, DomainNeeds), VmError> {
    // A hung shared-storage mount blocks the read: bounded here, the
    // blocking thread is left to finish on its own.
    let xml = tokio::time::timeout(limit, tokio::fs::read_to_string(path))
        .await
        .map_err(|_| VmError::ReadTimedOut {
            path: path.to_owned(),
        })?
        .map_err(|source| VmError::Read {
            path: path.to_owned(),
            source,
        })?;
    let needs = domain_needs(&xml)?;
    if needs.name != name {
        return Err(VmError::Xml(format!(
            "{} describes the domain `{}`, but the resource is `{name}` (the resource name is the domain name)",
            path.display(),
            needs.name
        )));
    }
    Ok((xml, needs))
}

/// Fill in the memory and vCPUs of every `vm` resource of `config` that
/// does not give them, from its domain XML (each read bounded by
/// `limit`), so that placement counts them against the hosts' capacity.
/// Also checks that each XML names the resource's domain. Every problem is
/// returned, with its resource.
pub async fn fill_needs(
    config: &mut conf::Config,
    limit: Duration,
) -> Result<(), Vec<(String, VmError)>> {
    let mut problems = Vec::new();
    for res in config
        .groups
        .iter_mut()
        .flat_map(|g| g.resources.iter_mut())
    {
        let conf::ResourceKind::Vm(vm) = &mut res.kind else {
            continue;
        };
        if vm.memory_mib.is_some() && vm.vcpus.is_some() {
            continue;
        }
        match read_domain_xml(&vm.domain_xml, &res.name, limit).await {
            Ok((_, needs)) => {
                vm.memory_mib.get_or_insert(needs.memory_mib);
                vm.vcpus.get_or_insert(needs.vcpus);
            }
            Err(e) => problems.push((res.name.clone(), e)),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Why a VM is paused, as the cluster sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseKind {
    /// By a libvirt operation in progress (migration, save, dump,
    /// snapshot, starting up, shutting down): not a failure.
    Operation,
    /// By a user, or for an unknown reason.
    User,
    /// For an error: I/O error, watchdog, API error, failed post-copy
    /// migration.
    Error,
    /// After a guest panic (`on_crash = preserve` on a paused VM).
    Panicked,
}

/// A VM's state, as the cluster sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// libvirt has no domain of that name here.
    Absent,
    /// Running or blocked.
    Running,
    /// Being shut down.
    ShuttingDown,
    /// Paused.
    Paused(PauseKind),
    /// Shut off (only a persistent definition can be).
    Shutoff,
    /// Crashed.
    Crashed,
    /// Suspended by the guest (ACPI S3/S4).
    PmSuspended,
    /// libvirt has no state for it.
    NoState,
}

/// What libvirt says about one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStatus {
    /// Its state.
    pub state: VmState,
    /// libvirt's reason for the state, in words (`user`, `io-error`...).
    pub reason: &'static str,
    /// The domain id of this run (`None` when not active).
    pub id: Option<u32>,
    /// A persistent definition exists.
    pub persistent: bool,
}

impl VmStatus {
    const ABSENT: Self = Self {
        state: VmState::Absent,
        reason: "",
        id: None,
        persistent: false,
    };

    /// The state in words, with libvirt's reason.
    pub fn describe(&self) -> String {
        let state = match self.state {
            VmState::Absent => "not defined",
            VmState::Running => "running",
            VmState::ShuttingDown => "shutting down",
            VmState::Paused(_) => "paused",
            VmState::Shutoff => "shut off",
            VmState::Crashed => "crashed",
            VmState::PmSuspended => "suspended by the guest",
            VmState::NoState => "in no state",
        };
        if self.reason.is_empty() || self.reason == "unknown" {
            state.to_owned()
        } else {
            format!("{state} ({})", self.reason)
        }
    }

    /// Gone from this host as far as the cluster cares.
    fn is_gone(&self) -> bool {
        matches!(self.state, VmState::Absent | VmState::Shutoff)
    }
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code().is(ErrorNumber::NoDomain)
}

/// The status of the VM `name` (on the libvirt thread). `Err` carries
/// libvirt's message when it could not tell.
pub fn vm_status(conn: &Connect, name: &str) -> Result<VmStatus, String> {
    match conn.lookup_domain_by_name(name) {
        Ok(dom) => status_of(&dom),
        Err(e) if is_no_domain(&e) => Ok(VmStatus::ABSENT),
        Err(e) => Err(e.message().to_owned()),
    }
}

fn status_of(dom: &Domain) -> Result<VmStatus, String> {
    // virt 0.5's `state()` reports libvirt's error as an unknown state;
    // `info()` returns the error itself.
    let (state, reason) = dom.state().map_err(|e| e.message().to_owned())?;
    let (state, reason) = match (state, reason) {
        (Enum::Known(s), Enum::Known(r)) => (s, reason_text(r)),
        (Enum::Known(s), Enum::Unknown(_)) => (s, ("unknown", None)),
        (Enum::Unknown(raw), _) => match dom.info() {
            Err(e) if is_no_domain(&e) => return Ok(VmStatus::ABSENT),
            Err(e) => return Err(e.message().to_owned()),
            Ok(info) => match info.state {
                Enum::Known(s) => (s, ("unknown", None)),
                Enum::Unknown(_) => return Err(format!("libvirt reported an unknown state {raw}")),
            },
        },
    };
    let persistent = match dom.is_persistent() {
        Ok(p) => p,
        Err(e) if is_no_domain(&e) => return Ok(VmStatus::ABSENT),
        Err(e) => return Err(e.message().to_owned()),
    };
    let (text, pause) = reason;
    let state = match state {
        DomainState::Running | DomainState::Blocked => VmState::Running,
        DomainState::Shutdown => VmState::ShuttingDown,
        DomainState::Paused => VmState::Paused(pause.unwrap_or(PauseKind::User)),
        DomainState::Shutoff => VmState::Shutoff,
        DomainState::Crashed => VmState::Crashed,
        DomainState::PMSuspended => VmState::PmSuspended,
        DomainState::NoState => VmState::NoState,
    };
    Ok(VmStatus {
        state,
        reason: text,
        id: dom.id(),
        persistent,
    })
}

/// libvirt's state reason in words, and for a pause what kind it is.
fn reason_text(r: DomainStateReason) -> (&'static str, Option<PauseKind>) {
    match r {
        DomainStateReason::Paused(Enum::Known(p)) => {
            use DomainPausedReason as P;
            let (text, kind) = match p {
                P::Unknown => ("unknown", PauseKind::User),
                P::User => ("user", PauseKind::User),
                P::Migration => ("migration", PauseKind::Operation),
                P::Save => ("save", PauseKind::Operation),
                P::Dump => ("dump", PauseKind::Operation),
                P::IOError => ("io-error", PauseKind::Error),
                P::Watchdog => ("watchdog", PauseKind::Error),
                P::FromSnapshot => ("from-snapshot", PauseKind::Operation),
                P::ShuttingDown => ("shutting-down", PauseKind::Operation),
                P::Snapshot => ("snapshot", PauseKind::Operation),
                P::Crashed => ("panicked", PauseKind::Panicked),
                P::StartingUp => ("starting-up", PauseKind::Operation),
                P::PostCopy => ("post-copy", PauseKind::Operation),
                P::PostCopyFailed => ("post-copy-failed", PauseKind::Error),
                P::APIError => ("api-error", PauseKind::Error),
            };
            (text, Some(kind))
        }
        DomainStateReason::Shutoff(Enum::Known(s)) => (
            match s {
                DomainShutoffReason::Unknown => "unknown",
                DomainShutoffReason::Shutdown => "shutdown",
                DomainShutoffReason::Destroyed => "destroyed",
                DomainShutoffReason::Crashed => "crashed",
                DomainShutoffReason::Migrated => "migrated",
                DomainShutoffReason::Saved => "saved",
                DomainShutoffReason::Failed => "failed",
                DomainShutoffReason::FromSnapshot => "from-snapshot",
                DomainShutoffReason::Daemon => "daemon",
            },
            None,
        ),
        DomainStateReason::Crashed(Enum::Known(c)) => (
            match c {
                DomainCrashedReason::Unknown => "unknown",
                DomainCrashedReason::Panicked => "panicked",
            },
            None,
        ),
        _ => ("", None),
    }
}

/// How a start ended on the libvirt thread.
enum Started {
    Created(Option<u32>),
    AlreadyRunning(Option<u32>),
}

/// A failed start: message, and whether it is hard.
struct StartFailure {
    message: String,
    hard: bool,
}

impl StartFailure {
    fn soft(message: String) -> Self {
        Self {
            message,
            hard: false,
        }
    }

    fn hard(message: String) -> Self {
        Self {
            message,
            hard: true,
        }
    }

    /// A failed `virDomainCreateXML`: a definition libvirt cannot use
    /// will not work on a retry either.
    fn create(name: &str, e: &virt::error::Error) -> Self {
        let hard = [
            ErrorNumber::XmlError,
            ErrorNumber::XmlDetail,
            ErrorNumber::XmlInvalidSchema,
            ErrorNumber::ConfigUnsupported,
            ErrorNumber::NoSupport,
            ErrorNumber::OperationUnsupported,
            ErrorNumber::InvalidArg,
            ErrorNumber::DomExist,
        ]
        .into_iter()
        .any(|code| e.code().is(code))
            || e.message().contains("already exists");
        Self {
            message: format!("libvirt cannot create `{name}`: {}", e.message()),
            hard,
        }
    }
}

/// Start `name` from `xml` here, as a transient domain.
fn start_on(conn: &Connect, name: &str, xml: &str) -> Result<Started, StartFailure> {
    match conn.lookup_domain_by_name(name) {
        Ok(dom) => {
            let status = status_of(&dom).map_err(StartFailure::soft)?;
            if status.persistent {
                return Err(StartFailure::hard(format!(
                    "a persistent libvirt definition of `{name}` exists on this host ({}); \
                     the cluster owns this VM and runs it as a transient domain only: \
                     remove the definition (`virsh undefine {name}`)",
                    status.describe()
                )));
            }
            match status.state {
                VmState::Absent => {}
                VmState::Running => return Ok(Started::AlreadyRunning(status.id)),
                VmState::ShuttingDown => {
                    return Err(StartFailure::soft(format!(
                        "`{name}` is still shutting down here"
                    )));
                }
                VmState::Paused(_)
                | VmState::Shutoff
                | VmState::Crashed
                | VmState::PmSuspended
                | VmState::NoState => {
                    tracing::warn!(
                        vm = name,
                        state = %status.describe(),
                        "destroying the VM's earlier run before starting it again"
                    );
                    match dom.destroy() {
                        Ok(()) => {}
                        Err(e) if is_no_domain(&e) => {}
                        Err(e) => {
                            return Err(StartFailure::soft(format!(
                                "cannot destroy the earlier run of `{name}` ({}): {}",
                                status.describe(),
                                e.message()
                            )));
                        }
                    }
                }
            }
        }
        Err(e) if is_no_domain(&e) => {}
        Err(e) => return Err(StartFailure::soft(e.message().to_owned())),
    }
    let dom = conn
        .create_domain_xml(xml, virt::sys::VIR_DOMAIN_NONE)
        .map_err(|e| StartFailure::create(name, &e))?;
    Ok(Started::Created(dom.id()))
}

/// The first step of a stop, on the libvirt thread.
enum StopStep {
    /// Nothing to stop.
    Gone,
    /// The guest was asked to shut down (or already is).
    ShutdownRequested,
    /// It must be destroyed: why.
    Destroy(String),
}

fn request_shutdown(conn: &Connect, name: &str) -> Result<StopStep, String> {
    let dom = match conn.lookup_domain_by_name(name) {
        Ok(d) => d,
        Err(e) if is_no_domain(&e) => return Ok(StopStep::Gone),
        Err(e) => return Err(e.message().to_owned()),
    };
    let status = status_of(&dom)?;
    match status.state {
        VmState::Absent | VmState::Shutoff => Ok(StopStep::Gone),
        VmState::ShuttingDown => Ok(StopStep::ShutdownRequested),
        VmState::Running => match dom.shutdown() {
            Ok(()) => Ok(StopStep::ShutdownRequested),
            Err(e) if is_no_domain(&e) => Ok(StopStep::Gone),
            Err(e) => Ok(StopStep::Destroy(format!(
                "the shutdown request failed: {}",
                e.message()
            ))),
        },
        VmState::Paused(_) | VmState::Crashed | VmState::PmSuspended | VmState::NoState => {
            Ok(StopStep::Destroy(format!("it is {}", status.describe())))
        }
    }
}

fn destroy_on(conn: &Connect, name: &str) -> Result<VmStatus, String> {
    // A shut-off persistent definition cannot be destroyed: already off.
    if let Ok(status) = vm_status(conn, name)
        && status.is_gone()
    {
        return Ok(status);
    }
    match conn.lookup_domain_by_name(name) {
        Ok(dom) => match dom.destroy() {
            Ok(()) => {}
            Err(e) if is_no_domain(&e) => return Ok(VmStatus::ABSENT),
            Err(e) => return Err(e.message().to_owned()),
        },
        Err(e) if is_no_domain(&e) => return Ok(VmStatus::ABSENT),
        Err(e) => return Err(e.message().to_owned()),
    }
    vm_status(conn, name)
}

/// Driver of one `kind = "vm"` resource.
#[derive(Clone, Debug)]
pub struct VmDriver {
    name: String,
    config: conf::VmResource,
    hypervisor: Hypervisor,
}

impl VmDriver {
    /// A driver for the VM `name` as configured by `config` (as this node
    /// runs it, overrides applied), on `hypervisor`.
    pub fn new(name: &str, config: conf::VmResource, hypervisor: Hypervisor) -> Self {
        Self {
            name: name.to_owned(),
            config,
            hypervisor,
        }
    }

    /// The VM's status on this host.
    pub async fn status(&self) -> Result<Result<VmStatus, String>, HypervisorError> {
        let name = self.name.clone();
        self.hypervisor.call(move |c| vm_status(c, &name)).await
    }

    async fn start_inner(&self, ctx: &ActionContext) -> ActionOutcome {
        let (xml, needs) =
            match read_domain_xml(&self.config.domain_xml, &self.name, ctx.timeout).await {
                Ok(x) => x,
                Err(VmError::ReadTimedOut { .. }) => return ActionOutcome::TimedOut,
                Err(e) => {
                    return ActionOutcome::Failed {
                        message: e.to_string(),
                        hard: true,
                    };
                }
            };
        let name = self.name.clone();
        match self
            .hypervisor
            .call(move |c| start_on(c, &name, &xml))
            .await
        {
            Ok(Ok(Started::Created(id))) => {
                tracing::info!(
                    group = %ctx.group,
                    vm = %self.name,
                    id = ?id,
                    memory_mib = needs.memory_mib,
                    vcpus = needs.vcpus,
                    reason = %ctx.reason,
                    "VM started (transient domain)"
                );
                ActionOutcome::Ok
            }
            Ok(Ok(Started::AlreadyRunning(id))) => {
                tracing::info!(group = %ctx.group, vm = %self.name, id = ?id, "VM already running here");
                ActionOutcome::Ok
            }
            Ok(Err(f)) => ActionOutcome::Failed {
                message: f.message,
                hard: f.hard,
            },
            Err(e) => ActionOutcome::Failed {
                message: e.to_string(),
                hard: false,
            },
        }
    }

    async fn stop_inner(&self, ctx: &ActionContext) -> ActionOutcome {
        let margin = (ctx.timeout / 4).min(MAX_DESTROY_MARGIN);
        let destroy_at = Instant::now() + ctx.timeout.saturating_sub(margin);
        // Subscribed before the shutdown request, so its event is not missed.
        let mut events = self.hypervisor.subscribe();
        let name = self.name.clone();
        let step = self
            .hypervisor
            .call(move |c| request_shutdown(c, &name))
            .await;
        let why_destroy = match step {
            Ok(Ok(StopStep::Gone)) => {
                tracing::info!(group = %ctx.group, vm = %self.name, "VM not running here: stopped");
                return ActionOutcome::Ok;
            }
            Ok(Ok(StopStep::Destroy(why))) => why,
            Ok(Ok(StopStep::ShutdownRequested)) => {
                tracing::info!(group = %ctx.group, vm = %self.name, "ACPI shutdown requested");
                match self.wait_gone(&mut events, destroy_at).await {
                    Ok(()) => {
                        tracing::info!(group = %ctx.group, vm = %self.name, "VM shut down");
                        return ActionOutcome::Ok;
                    }
                    Err(state) => format!(
                        "it did not shut down within {:?} ({state})",
                        ctx.timeout.saturating_sub(margin)
                    ),
                }
            }
            Ok(Err(e)) => format!("libvirt could not ask it to shut down: {e}"),
            Err(e) => {
                // libvirt unreachable: wait for it (the VM may still run).
                match self.wait_gone(&mut events, destroy_at).await {
                    Ok(()) => return ActionOutcome::Ok,
                    Err(state) => format!("{e}; then {state}"),
                }
            }
        };
        tracing::warn!(group = %ctx.group, vm = %self.name, "destroying the VM: {why_destroy}");
        self.destroy(ctx, "VM destroyed").await
    }

    /// Destroy the VM and confirm it gone; `done` is logged on success.
    async fn destroy(&self, ctx: &ActionContext, done: &str) -> ActionOutcome {
        let name = self.name.clone();
        match self.hypervisor.call(move |c| destroy_on(c, &name)).await {
            Ok(Ok(status)) if status.is_gone() => {
                tracing::warn!(group = %ctx.group, vm = %self.name, "{done}");
                ActionOutcome::Ok
            }
            Ok(Ok(status)) => ActionOutcome::Failed {
                message: format!(
                    "`{}` is still {} after being destroyed",
                    self.name,
                    status.describe()
                ),
                hard: false,
            },
            Ok(Err(e)) => ActionOutcome::Failed {
                message: format!("cannot destroy `{}`: {e}", self.name),
                hard: false,
            },
            Err(e) => ActionOutcome::Failed {
                message: format!("cannot destroy `{}`: {e}", self.name),
                hard: false,
            },
        }
    }

    /// Wait until the VM is gone (or shut off), looking at its state on
    /// each of its lifecycle events and every [`STOP_POLL`]; `Err` with
    /// the last state seen when `until` comes first.
    async fn wait_gone(
        &self,
        events: &mut broadcast::Receiver<DomainEvent>,
        until: Instant,
    ) -> Result<(), String> {
        loop {
            let last = match self.status().await {
                Ok(Ok(s)) if s.is_gone() => return Ok(()),
                Ok(Ok(s)) => s.describe(),
                Ok(Err(e)) => format!("libvirt: {e}"),
                Err(e) => e.to_string(),
            };
            let poll = (Instant::now() + STOP_POLL).min(until);
            if Instant::now() >= until {
                return Err(last);
            }
            // Until the next poll, or sooner on an event of this VM.
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.name == self.name
                            && matches!(ev.kind, EventKind::Stopped | EventKind::Undefined) => break,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            tokio::time::sleep_until(poll).await;
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(poll) => break,
                }
            }
        }
    }
}

impl ResourceDriver for VmDriver {
    fn start<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            tracing::info!(
                group = %ctx.group,
                vm = %self.name,
                reason = %ctx.reason,
                previous_owner = ?ctx.previous_owner,
                xml = %self.config.domain_xml.display(),
                "starting VM"
            );
            let outcome = tokio::time::timeout(ctx.timeout, self.start_inner(ctx))
                .await
                .unwrap_or(ActionOutcome::TimedOut);
            log_outcome(ctx, &self.name, "start", &outcome);
            outcome
        })
    }

    fn stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            tracing::info!(group = %ctx.group, vm = %self.name, "stopping VM");
            let outcome = tokio::time::timeout(ctx.timeout, self.stop_inner(ctx))
                .await
                .unwrap_or(ActionOutcome::TimedOut);
            log_outcome(ctx, &self.name, "stop", &outcome);
            outcome
        })
    }

    fn force_stop<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, ActionOutcome> {
        Box::pin(async move {
            // No ACPI shutdown: the guest must stop writing to shared
            // storage before another host may start it.
            let outcome = tokio::time::timeout(
                ctx.timeout,
                self.destroy(ctx, "VM destroyed: this host has no quorum"),
            )
            .await
            .unwrap_or(ActionOutcome::TimedOut);
            log_outcome(ctx, &self.name, "force-stop", &outcome);
            outcome
        })
    }

    fn probe<'a>(&'a self, ctx: &'a ActionContext) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            let probe = match tokio::time::timeout(ctx.timeout, self.status()).await {
                Err(_) => {
                    Probe::Unknown(format!("libvirt did not answer within {:?}", ctx.timeout))
                }
                Ok(Err(e)) => Probe::Unknown(e.to_string()),
                Ok(Ok(Err(e))) => Probe::Unknown(format!("libvirt: {e}")),
                Ok(Ok(Ok(status))) => probe_of(&status),
            };
            tracing::debug!(group = %ctx.group, vm = %self.name, probe = ?probe, "probed VM");
            probe
        })
    }
}

fn log_outcome(ctx: &ActionContext, name: &str, action: &str, outcome: &ActionOutcome) {
    match outcome {
        ActionOutcome::Ok => {}
        ActionOutcome::Failed { message, hard } => {
            tracing::warn!(group = %ctx.group, vm = name, action, hard, "VM {action} failed: {message}");
        }
        ActionOutcome::TimedOut => {
            tracing::warn!(group = %ctx.group, vm = name, action, "VM {action} timed out after {:?}", ctx.timeout);
        }
    }
}

/// The probe answer for a VM's status.
pub fn probe_of(status: &VmStatus) -> Probe {
    match status.state {
        VmState::Absent | VmState::Shutoff => Probe::Stopped,
        VmState::Running | VmState::ShuttingDown | VmState::Paused(PauseKind::Operation) => {
            Probe::Running
        }
        VmState::Paused(_) | VmState::Crashed | VmState::PmSuspended => {
            Probe::Failed(status.describe())
        }
        VmState::NoState => Probe::Unknown(status.describe()),
    }
}

/// What the monitor has learnt from events since its last check.
#[derive(Debug)]
struct Seen {
    events: broadcast::Receiver<DomainEvent>,
    /// Per VM: a run (domain id) that an event showed failed, and how.
    failed_runs: HashMap<String, (u32, String)>,
    /// Per VM: its last event, for the failure message.
    last: HashMap<String, DomainEvent>,
}

/// A `kind = "vm"` monitor.
#[derive(Debug)]
pub struct VmMonitor {
    group: String,
    monitor: String,
    vms: Vec<String>,
    paused_is_failure: bool,
    hypervisor: Hypervisor,
    seen: Mutex<Seen>,
}

impl VmMonitor {
    /// A monitor `monitor` of `group` watching `vms` on `hypervisor`. It
    /// subscribes to lifecycle events at once.
    pub fn new(
        group: &str,
        monitor: &str,
        config: &conf::VmMonitor,
        vms: Vec<String>,
        hypervisor: Hypervisor,
    ) -> Self {
        let events = hypervisor.subscribe();
        Self {
            group: group.to_owned(),
            monitor: monitor.to_owned(),
            vms,
            paused_is_failure: config.paused_is_failure,
            hypervisor,
            seen: Mutex::new(Seen {
                events,
                failed_runs: HashMap::new(),
                last: HashMap::new(),
            }),
        }
    }

    /// The VMs it watches.
    pub fn vms(&self) -> &[String] {
        &self.vms
    }

    /// Take in the events that arrived since the last check.
    fn drain_events(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let ev = match seen.events.try_recv() {
                Ok(ev) => ev,
                Err(TryRecvError::Lagged(n)) => {
                    // Usual after the group ran elsewhere for a while (no
                    // checks drain the events then); the poll covers them.
                    tracing::debug!(group = %self.group, monitor = %self.monitor, missed = n, "VM monitor missed lifecycle events");
                    continue;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            };
            if !self.vms.contains(&ev.name) {
                continue;
            }
            if let (Some(id), true) = (ev.id, self.event_is_failure(&ev)) {
                tracing::warn!(group = %self.group, monitor = %self.monitor, vm = %ev.name, id, event = %ev, "VM failure event");
                seen.failed_runs
                    .insert(ev.name.clone(), (id, format!("{ev} (lifecycle event)")));
            }
            seen.last.insert(ev.name.clone(), ev);
        }
    }

    fn event_is_failure(&self, ev: &DomainEvent) -> bool {
        match ev.kind {
            EventKind::Crashed => true,
            EventKind::Suspended => match ev.detail_text() {
                "paused" | "io-error" | "watchdog" | "api-error" | "postcopy-failed" => {
                    self.paused_is_failure
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Why `vm` in `status` fails this monitor, if it does.
    fn failure(&self, vm: &str, status: &VmStatus) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let last = seen
            .last
            .get(vm)
            .map(|ev| format!("; last event: {ev}"))
            .unwrap_or_default();
        match status.state {
            VmState::Absent => Some(format!("VM `{vm}` is not running here{last}")),
            VmState::Running | VmState::Paused(PauseKind::Operation) => {
                match (seen.failed_runs.get(vm), status.id) {
                    (Some((run, how)), Some(id)) if *run == id => Some(format!("VM `{vm}` {how}")),
                    _ => None,
                }
            }
            VmState::Paused(PauseKind::User | PauseKind::Error) if !self.paused_is_failure => None,
            VmState::NoState => {
                tracing::warn!(group = %self.group, monitor = %self.monitor, vm, "libvirt reports no state for the VM");
                None
            }
            VmState::Paused(_)
            | VmState::ShuttingDown
            | VmState::Shutoff
            | VmState::Crashed
            | VmState::PmSuspended => Some(format!("VM `{vm}` is {}{last}", status.describe())),
        }
    }

    async fn check_inner(&self) -> CheckOutcome {
        self.drain_events();
        let names = self.vms.clone();
        let statuses = match self
            .hypervisor
            .call(move |c| {
                names
                    .iter()
                    .map(|n| vm_status(c, n))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.cannot_tell(&format!("libvirt: {e}")),
            Err(e) => return self.cannot_tell(&e.to_string()),
        };
        // Events that arrived while the states were read count too.
        self.drain_events();
        let failures: Vec<String> = self
            .vms
            .iter()
            .zip(&statuses)
            .filter_map(|(vm, status)| self.failure(vm, status))
            .collect();
        if failures.is_empty() {
            CheckOutcome::Ok
        } else {
            CheckOutcome::Failed(failures.join("; "))
        }
    }

    fn cannot_tell(&self, why: &str) -> CheckOutcome {
        tracing::warn!(
            group = %self.group,
            monitor = %self.monitor,
            "cannot check the VMs ({why}); counted as healthy until libvirt answers"
        );
        CheckOutcome::Ok
    }
}

impl MonitorDriver for VmMonitor {
    fn check(&self, timeout: Duration) -> BoxFuture<'_, CheckOutcome> {
        Box::pin(async move {
            let limit = timeout.saturating_sub(CHECK_MARGIN).max(timeout / 2);
            match tokio::time::timeout(limit, self.check_inner()).await {
                Ok(outcome) => outcome,
                Err(_) => self.cannot_tell(&format!("libvirt did not answer within {limit:?}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(xml: &str) -> DomainNeeds {
        domain_needs(xml).unwrap_or_else(|e| panic!("{e}: {xml}"))
    }

    fn memory(value: &str, unit: Option<&str>) -> u64 {
        let unit = unit.map(|u| format!(" unit='{u}'")).unwrap_or_default();
        needs(&format!(
            "<domain type='kvm'><name>a</name><memory{unit}>{value}</memory></domain>"
        ))
        .memory_mib
    }

    #[test]
    fn memory_units_are_libvirts() {
        assert_eq!(memory("1048576", None), 1024, "KiB by default");
        assert_eq!(memory("1048576", Some("KiB")), 1024);
        assert_eq!(memory("1048576", Some("k")), 1024);
        assert_eq!(memory("512", Some("MiB")), 512);
        assert_eq!(memory("512", Some("M")), 512);
        assert_eq!(memory("2", Some("GiB")), 2048);
        assert_eq!(memory("2", Some("g")), 2048);
        assert_eq!(memory("1", Some("TiB")), 1024 * 1024);
        assert_eq!(memory("134217728", Some("b")), 128);
        assert_eq!(memory("134217728", Some("bytes")), 128);
        // Powers of 1000, rounded up to whole MiB.
        assert_eq!(memory("1000000", Some("KB")), 954);
        assert_eq!(memory("1000", Some("MB")), 954);
        assert_eq!(memory("1", Some("GB")), 954);
        assert_eq!(memory("1", Some("b")), 1, "a byte still needs a MiB");
        assert_eq!(memory(" 256 ", Some(" MiB ")), 256, "whitespace");
    }

    #[test]
    fn bad_memory_is_refused() {
        for xml in [
            "<domain><name>a</name><memory unit='parsec'>1</memory></domain>",
            "<domain><name>a</name><memory unit='MiX'>1</memory></domain>",
            "<domain><name>a</name><memory>lots</memory></domain>",
            "<domain><name>a</name><memory>-1</memory></domain>",
            "<domain><name>a</name><memory>0</memory></domain>",
            "<domain><name>a</name><memory unit='EiB'>18446744073709551615</memory></domain>",
            "<domain><name>a</name></domain>",
        ] {
            assert!(
                matches!(domain_needs(xml), Err(VmError::Xml(_))),
                "{xml}: {:?}",
                domain_needs(xml)
            );
        }
    }

    #[test]
    fn name_and_vcpus_are_read() {
        let n = needs(
            "<domain type='kvm'>\n  <name> db1 </name>\n  <memory unit='MiB'>256</memory>\n  \
             <currentMemory unit='MiB'>128</currentMemory>\n  \
             <vcpu placement='static' current='2'>4</vcpu>\n</domain>",
        );
        assert_eq!(
            n,
            DomainNeeds {
                name: "db1".into(),
                memory_mib: 256,
                vcpus: 4
            },
            "<memory> (not currentMemory) and the maximum vCPUs count"
        );
        assert_eq!(
            needs("<domain><name>a</name><memory>1024</memory></domain>").vcpus,
            1,
            "libvirt's default"
        );
        for bad in ["0", "two", ""] {
            let xml =
                format!("<domain><name>a</name><memory>1</memory><vcpu>{bad}</vcpu></domain>");
            assert!(domain_needs(&xml).is_err(), "{xml}");
        }
    }

    #[test]
    fn numa_cells_count_when_memory_is_absent() {
        let n = needs(
            "<domain><name>n</name><vcpu>2</vcpu><cpu><numa>\
             <cell id='0' cpus='0' memory='512' unit='MiB'/>\
             <cell id='1' cpus='1' memory='524288'/>\
             </numa></cpu></domain>",
        );
        assert_eq!(n.memory_mib, 1024);
    }

    #[test]
    fn not_a_domain_is_refused() {
        for xml in [
            "<network><name>a</name></network>",
            "<domain><memory>1</memory></domain>",
            "<domain><name> </name><memory>1</memory></domain>",
            "<domain><name>a</name><memory>1</memory>",
            "",
        ] {
            assert!(matches!(domain_needs(xml), Err(VmError::Xml(_))), "{xml}");
        }
    }

    #[test]
    fn probes_never_read_unknown_as_stopped() {
        let s = |state| VmStatus {
            state,
            reason: "",
            id: Some(1),
            persistent: false,
        };
        assert_eq!(probe_of(&s(VmState::Absent)), Probe::Stopped);
        assert_eq!(probe_of(&s(VmState::Shutoff)), Probe::Stopped);
        assert_eq!(probe_of(&s(VmState::Running)), Probe::Running);
        assert_eq!(probe_of(&s(VmState::ShuttingDown)), Probe::Running);
        assert_eq!(
            probe_of(&s(VmState::Paused(PauseKind::Operation))),
            Probe::Running
        );
        for failed in [
            VmState::Paused(PauseKind::User),
            VmState::Paused(PauseKind::Error),
            VmState::Paused(PauseKind::Panicked),
            VmState::Crashed,
            VmState::PmSuspended,
        ] {
            assert!(
                matches!(probe_of(&s(failed)), Probe::Failed(_)),
                "{failed:?}"
            );
        }
        assert!(matches!(probe_of(&s(VmState::NoState)), Probe::Unknown(_)));
    }
}
