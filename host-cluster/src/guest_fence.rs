//! Fencing guests on request: a guest cluster asks the host cluster to
//! power off (or reboot) the VM of one of its peers, so that it may take
//! the peer's applications over.
//!
//! [`GuestFencer::fence`] is the whole operation; the control API reaches
//! it as `Request::FenceGuest` (`clusterctl guest fence --as GUEST PEER`),
//! and the linkage's `Fence { peer }` from an authenticated guest reaches
//! it with that guest as the requester (`crate::linkage_service`:
//! `FenceResult { off: true }` is an `Ok`, any `Err` is `off: false` with
//! its text).
//!
//! # Authorisation, first
//!
//! Both the requester and the peer must be listed in this host cluster's
//! `[[linkage.guests]]` (by their node names), with the same `cluster`,
//! and they must differ. Anything else is refused, with the reason, and
//! an event `guest_fence_refused`; nothing is looked up in libvirt, so a
//! domain that is not listed is never acted on.
//!
//! # The operation, on this host
//!
//! Everything runs on the hypervisor's libvirt thread and is bounded by
//! the fencer's timeout ([`DEFAULT_TIMEOUT`]); one fence at a time.
//!
//! - **The VM is active here** (running, paused, crashed...): it is
//!   destroyed (`virDomainDestroy`) and the answer waits until libvirt
//!   shows it shut off or gone, or running again as a *new* run (another
//!   domain id: the old run is off), polling every 50 ms, a failed destroy
//!   retried. Only then is it "confirmed off". For a VM of this host
//!   cluster, another live host that reports its group in any state makes
//!   the answer an error instead (two copies: not confirmed).
//! - **Reboot**: after the confirmation, a VM that is not a `vm` resource
//!   of this host cluster is started again (a persistent definition with
//!   `virDomainCreate`; a transient domain from the XML taken before the
//!   destroy, `VIR_DOMAIN_XML_SECURE | MIGRATABLE`). A `vm` resource is
//!   not started by the fencer: the host cluster's engine restarts it
//!   through its recovery ladder (a `vm` monitor or the resource's
//!   `monitor_interval`), as after a crash; the answer says which, or that
//!   nothing watches it. A failed restart does not undo the fence: the
//!   answer is still "off", with the restart's error.
//! - **Off** of a `vm` resource: the same restart by the host cluster
//!   follows; the answer says so (stop the group to keep it off).
//!
//! # The VM is not active here
//!
//! The fencer does not forward the request itself: its answer is an
//! error that names the host that runs the VM, or says that is unknown,
//! and the linkage (`crate::linkage_service`) forwards it there, or to
//! every other live host:
//!
//! - a `vm` resource of this host cluster whose group another live host
//!   reports (in any state), or that the newest placement assigns to
//!   another host: "not on this host", naming it;
//! - a `vm` resource that no host reports and that the placement assigns
//!   to no other host, while this host is quorate (it hears every host
//!   that may run it): off, nothing destroyed;
//! - anything else is unknown, and unknown is never off: a VM that is
//!   not a `vm` resource (the cluster does not know what other hosts run),
//!   no engine, no quorum, or libvirt unreachable here.
//!
//! # Events
//!
//! `guest_fence_refused` (requester, peer, action, reason),
//! `guest_fence_requested` (requester, peer, domain, action),
//! `guest_fence_succeeded` (…, `destroyed`, `restart`, `elapsed_ms`),
//! `guest_fence_failed` (…, `error`, `runs_on` when known, `elapsed_ms`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cluster_core::api::{ApiError, GuestFenceAction, Response};
use cluster_core::engine::Engine;
use cluster_core::events::EventLog;
use cluster_core::status::GroupStatus;
use serde_json::json;
use tokio::time::Instant;
use virt::connect::Connect;
use virt::error::ErrorNumber;

use crate::hypervisor::Hypervisor;
use crate::vm::{VmState, VmStatus, vm_status};

/// How long one fence may take, from the request to the confirmation
/// (and the restart of a reboot), unless [`GuestFencer::with_timeout`]
/// says otherwise. Below the control API client's 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the VM's state is read while waiting for it to be off.
const CONFIRM_POLL: Duration = Duration::from_millis(50);

/// Where the host cluster runs its groups, as this host knows it now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlacementView {
    /// This host's partition is quorate: the hosts it hears are all the
    /// hosts that may run a group.
    pub quorate: bool,
    /// The groups as `clusterctl status` shows them (`running_on` the
    /// other live hosts that report each, `target` the newest placement).
    pub groups: Vec<GroupStatus>,
}

/// The host cluster's view of where groups run, for the fencer.
pub trait ClusterView: Send + Sync + fmt::Debug {
    /// The view now; `None` when this host cannot tell (then a fence of
    /// a VM not found here is not confirmed).
    fn placement(&self) -> Option<PlacementView>;
}

/// [`ClusterView`] of a running engine.
#[derive(Debug)]
pub struct EngineView {
    config: conf::Config,
    node: String,
    engine: Arc<Engine>,
}

impl EngineView {
    /// The view of `engine`, run by `node` with `config`.
    pub fn new(config: conf::Config, node: &str, engine: Arc<Engine>) -> Self {
        Self {
            config,
            node: node.to_owned(),
            engine,
        }
    }
}

impl ClusterView for EngineView {
    fn placement(&self) -> Option<PlacementView> {
        let core = self.engine.runtime().status();
        Some(PlacementView {
            quorate: self.engine.quorum().is_some_and(|q| q.quorate),
            groups: cluster_core::control::group_status(&self.config, &self.node, &core),
        })
    }
}

/// A fence that did not confirm the peer off.
#[derive(Debug, thiserror::Error)]
pub enum GuestFenceError {
    /// Not authorised; nothing was done.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer's VM is not active on this host, and it is not known to
    /// be off (it runs on `host`, or where it runs is unknown).
    #[error("`{peer}` (domain `{domain}`) is not on this host: {detail}")]
    NotHere {
        /// The peer.
        peer: String,
        /// Its domain.
        domain: String,
        /// The host that runs it, when known.
        host: Option<String>,
        /// Where it runs, or why that is unknown.
        detail: String,
    },
    /// libvirt could not answer, or the VM was not seen off in time.
    #[error("`{peer}` (domain `{domain}`) is not confirmed off: {detail}")]
    NotConfirmed {
        /// The peer.
        peer: String,
        /// Its domain.
        domain: String,
        /// Why.
        detail: String,
    },
}

impl GuestFenceError {
    /// The host that runs the peer, when this answer knows it.
    pub fn runs_on(&self) -> Option<&str> {
        match self {
            Self::NotHere { host, .. } => host.as_deref(),
            _ => None,
        }
    }
}

impl From<&GuestFenceError> for ApiError {
    fn from(e: &GuestFenceError) -> Self {
        match e {
            GuestFenceError::Refused(_) => Self::bad_request(e.to_string()),
            GuestFenceError::NotHere { .. } => Self::not_found(e.to_string()),
            GuestFenceError::NotConfirmed { .. } => Self::unavailable(e.to_string()),
        }
    }
}

/// What happens to the VM after a confirmed fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Off was asked: it stays off.
    StaysOff,
    /// A `vm` resource of this host cluster: the engine restarts it (or
    /// nothing watches it, `watcher` is `None`).
    ByCluster {
        /// Its group.
        group: String,
        /// What notices it is gone (`monitor `m``, ...).
        watcher: Option<String>,
    },
    /// Started again here by the fencer (a reboot).
    Started,
    /// The reboot's start failed (the VM is off).
    StartFailed(String),
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaysOff => f.write_str("it stays off"),
            Self::ByCluster {
                group,
                watcher: Some(w),
            } => write!(
                f,
                "it is a VM of this host cluster (group `{group}`): the host cluster restarts it \
                 as after a crash ({w} notices it); stop the group to keep it off"
            ),
            Self::ByCluster {
                group,
                watcher: None,
            } => write!(
                f,
                "it is a VM of this host cluster (group `{group}`), but neither a `vm` monitor nor \
                 a `monitor_interval` watches it: it stays off until the group is restarted"
            ),
            Self::Started => f.write_str("started again"),
            Self::StartFailed(e) => write!(f, "it is off, but starting it again failed: {e}"),
        }
    }
}

/// A fence that confirmed the peer off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFenced {
    /// The peer.
    pub peer: String,
    /// Its domain.
    pub domain: String,
    /// This host.
    pub host: String,
    /// What was asked.
    pub action: GuestFenceAction,
    /// This fence destroyed it (`false`: it was already off).
    pub destroyed: bool,
    /// What happens to it next.
    pub restart: Restart,
    /// From the request to the confirmation (and restart).
    pub elapsed: Duration,
}

impl GuestFenced {
    /// The answer in words.
    pub fn message(&self) -> String {
        let what = if self.destroyed {
            "destroyed"
        } else {
            "already off (not running on this host, and on no other host of the cluster)"
        };
        format!(
            "`{}` (domain `{}`) confirmed off on host `{}` in {} ms: {what}; {}",
            self.peer,
            self.domain,
            self.host,
            self.elapsed.as_millis(),
            self.restart
        )
    }

    /// The control API's answer.
    pub fn into_response(self) -> Response {
        Response::GuestFenced {
            message: self.message(),
            elapsed_ms: millis(self.elapsed),
            peer: self.peer,
            domain: self.domain,
            host: self.host,
            action: self.action,
            off: true,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A linked guest's VM that is a `vm` resource of this host cluster.
#[derive(Clone, Debug)]
struct ManagedVm {
    group: String,
    /// What notices the VM gone: a `vm` monitor, or the resource's own
    /// periodic probe.
    watcher: Option<String>,
}

/// Fences linked guests' VMs on this host on request.
#[derive(Debug)]
pub struct GuestFencer {
    node: String,
    /// `[[linkage.guests]]`; `None` without a host `[linkage]`.
    guests: Option<Vec<conf::LinkedGuest>>,
    /// By domain name.
    managed: HashMap<String, ManagedVm>,
    hypervisor: Hypervisor,
    cluster: Arc<dyn ClusterView>,
    events: Arc<EventLog>,
    timeout: Duration,
    busy: tokio::sync::Mutex<()>,
}

impl GuestFencer {
    /// A fencer for host `node` of `config`, acting through `hypervisor`,
    /// asking `cluster` where the host cluster runs its VMs, writing to
    /// `events`.
    pub fn new(
        config: &conf::Config,
        node: &str,
        hypervisor: Hypervisor,
        cluster: Arc<dyn ClusterView>,
        events: Arc<EventLog>,
    ) -> Self {
        let guests = match &config.linkage {
            Some(conf::Linkage::Host(h)) => Some(h.guests.clone()),
            _ => None,
        };
        let mut managed = HashMap::new();
        for group in &config.groups {
            for r in &group.resources {
                if !matches!(r.kind, conf::ResourceKind::Vm(_)) {
                    continue;
                }
                let monitor = group
                    .monitors
                    .iter()
                    .filter(|m| matches!(m.kind, conf::MonitorKind::Vm(_)))
                    .find(|m| crate::drivers::watched_vms(group, m).contains(&r.name))
                    .map(|m| format!("its `vm` monitor `{}`", m.name));
                let probe = config
                    .resource_on(node, &r.name)
                    .unwrap_or(r)
                    .monitor_interval
                    .map(|i| format!("its `monitor_interval` probe (every {i:?})"));
                managed.insert(
                    r.name.clone(),
                    ManagedVm {
                        group: group.name.clone(),
                        watcher: monitor.or(probe),
                    },
                );
            }
        }
        Self {
            node: node.to_owned(),
            guests,
            managed,
            hypervisor,
            cluster,
            events,
            timeout: DEFAULT_TIMEOUT,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The same fencer with another bound on each fence.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Is `requester` allowed to fence `peer`? The peer's entry if so,
    /// else why not.
    fn authorise(&self, requester: &str, peer: &str) -> Result<&conf::LinkedGuest, String> {
        let Some(guests) = &self.guests else {
            return Err(
                "this host cluster has no `[linkage]` section: no guest may ask it to fence"
                    .to_owned(),
            );
        };
        let listed = |name: &str| guests.iter().find(|g| g.name == name);
        let Some(req) = listed(requester) else {
            return Err(format!(
                "the requester `{requester}` is not a linked guest of this host cluster \
                 (`[[linkage.guests]]`)"
            ));
        };
        if requester == peer {
            return Err(format!(
                "`{requester}` asked to fence itself; a guest may fence only its peers"
            ));
        }
        let Some(target) = listed(peer) else {
            return Err(format!(
                "`{peer}` is not a linked guest of this host cluster (`[[linkage.guests]]`): \
                 its VM is never touched"
            ));
        };
        if target.cluster != req.cluster {
            return Err(format!(
                "`{peer}` belongs to guest cluster `{}`, not to `{requester}`'s guest cluster `{}`",
                target.cluster, req.cluster
            ));
        }
        Ok(target)
    }

    /// Fence `peer` for `requester`: see the module documentation. `Ok`
    /// only once the peer's VM is confirmed off.
    ///
    /// # Errors
    /// [`GuestFenceError::Refused`] (not authorised, nothing done),
    /// [`GuestFenceError::NotHere`] (it runs on another host, or where is
    /// unknown), [`GuestFenceError::NotConfirmed`] (libvirt could not
    /// answer or the VM was not seen off within the timeout).
    pub async fn fence(
        &self,
        requester: &str,
        peer: &str,
        action: GuestFenceAction,
    ) -> Result<GuestFenced, GuestFenceError> {
        let started = Instant::now();
        let guest = match self.authorise(requester, peer) {
            Ok(g) => g,
            Err(reason) => {
                tracing::warn!(requester, peer, %action, "guest fence refused: {reason}");
                self.events.emit(
                    "guest_fence_refused",
                    json!({
                        "requester": requester,
                        "peer": peer,
                        "action": action.to_string(),
                        "reason": reason,
                    }),
                );
                return Err(GuestFenceError::Refused(reason));
            }
        };
        let domain = guest.domain.clone();
        self.events.emit(
            "guest_fence_requested",
            json!({
                "requester": requester,
                "peer": peer,
                "domain": domain,
                "action": action.to_string(),
            }),
        );
        let deadline = started + self.timeout;
        let result = match tokio::time::timeout_at(
            deadline,
            self.fence_listed(peer, &domain, action, deadline),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(self.not_confirmed(
                peer,
                &domain,
                format!("no answer within {:?}", self.timeout),
            )),
        };
        let elapsed = started.elapsed();
        match result {
            Ok((destroyed, restart)) => {
                let done = GuestFenced {
                    peer: peer.to_owned(),
                    domain: domain.clone(),
                    host: self.node.clone(),
                    action,
                    destroyed,
                    restart,
                    elapsed,
                };
                self.events.emit(
                    "guest_fence_succeeded",
                    json!({
                        "requester": requester,
                        "peer": peer,
                        "domain": domain,
                        "action": action.to_string(),
                        "destroyed": destroyed,
                        "restart": done.restart.to_string(),
                        "elapsed_ms": millis(elapsed),
                    }),
                );
                Ok(done)
            }
            Err(e) => {
                let mut details = json!({
                    "requester": requester,
                    "peer": peer,
                    "domain": domain,
                    "action": action.to_string(),
                    "error": e.to_string(),
                    "elapsed_ms": millis(elapsed),
                });
                if let Some(host) = e.runs_on() {
                    details["runs_on"] = host.into();
                }
                self.events.emit("guest_fence_failed", details);
                Err(e)
            }
        }
    }

    fn not_confirmed(&self, peer: &str, domain: &str, detail: String) -> GuestFenceError {
        GuestFenceError::NotConfirmed {
            peer: peer.to_owned(),
            domain: domain.to_owned(),
            detail,
        }
    }

    /// The operation for an authorised request: whether it destroyed the
    /// VM, and what happens to it next.
    async fn fence_listed(
        &self,
        peer: &str,
        domain: &str,
        action: GuestFenceAction,
        deadline: Instant,
    ) -> Result<(bool, Restart), GuestFenceError> {
        let _one_at_a_time = self.busy.lock().await;
        let managed = self.managed.get(domain);
        let reboot_here = action == GuestFenceAction::Reboot && managed.is_none();
        let here = self
            .off_here(domain, reboot_here, deadline)
            .await
            .map_err(|detail| self.not_confirmed(peer, domain, detail))?;
        let (destroyed, persistent, xml) = match here {
            Here::WasOff => {
                return match self.whereabouts(managed) {
                    Whereabouts::Nowhere => {
                        tracing::info!(
                            peer,
                            domain,
                            "guest VM already off: not running anywhere in the host cluster"
                        );
                        Ok((false, restart_by_cluster(managed, action)))
                    }
                    Whereabouts::On { host, detail } => Err(GuestFenceError::NotHere {
                        peer: peer.to_owned(),
                        domain: domain.to_owned(),
                        host: Some(host),
                        detail,
                    }),
                    Whereabouts::Unknown(why) => Err(GuestFenceError::NotHere {
                        peer: peer.to_owned(),
                        domain: domain.to_owned(),
                        host: None,
                        detail: format!("where it runs is unknown: {why}"),
                    }),
                };
            }
            Here::Destroyed { persistent, xml } => (true, persistent, xml),
        };
        tracing::warn!(
            peer,
            domain,
            "guest VM destroyed on request: confirmed off here"
        );
        // A VM of the cluster that another host also reports is a second
        // copy: this one is off, the peer is not.
        if let Some(m) = managed
            && let Some(view) = self.cluster.placement()
            && let Some(g) = view.groups.iter().find(|g| g.name == m.group)
        {
            let others: Vec<String> = g
                .running_on
                .iter()
                .filter(|r| r.node != self.node)
                .map(|r| format!("`{}` ({})", r.node, r.state))
                .collect();
            if !others.is_empty() {
                return Err(self.not_confirmed(
                    peer,
                    domain,
                    format!(
                        "destroyed on this host, but its group `{}` is also reported by host {}",
                        m.group,
                        others.join(", ")
                    ),
                ));
            }
        }
        if !reboot_here {
            return Ok((destroyed, restart_by_cluster(managed, action)));
        }
        let name = domain.to_owned();
        let start = tokio::time::timeout_at(
            deadline,
            self.hypervisor
                .call(move |c| start_again(c, &name, persistent, xml.as_deref())),
        )
        .await;
        let restart = match start {
            Ok(Ok(Ok(()))) => {
                tracing::info!(peer, domain, "guest VM started again (reboot)");
                Restart::Started
            }
            Ok(Ok(Err(e))) => Restart::StartFailed(e),
            Ok(Err(e)) => Restart::StartFailed(e.to_string()),
            Err(_) => Restart::StartFailed("the start did not finish within the timeout".into()),
        };
        if let Restart::StartFailed(e) = &restart {
            tracing::warn!(
                peer,
                domain,
                "guest VM is off but could not be started again: {e}"
            );
        }
        Ok((destroyed, restart))
    }

    /// Destroy `domain` here if it is active, and wait until libvirt
    /// shows it off. `Err` says why that could not be seen.
    async fn off_here(
        &self,
        domain: &str,
        keep_xml: bool,
        deadline: Instant,
    ) -> Result<Here, String> {
        let mut destroyed: Option<(Option<u32>, bool, Option<String>)> = None;
        let mut last = String::new();
        loop {
            let name = domain.to_owned();
            let old_id = destroyed.as_ref().map(|(id, _, _)| *id);
            let want_xml = keep_xml && destroyed.is_none();
            let step = tokio::time::timeout_at(
                deadline,
                self.hypervisor
                    .call(move |c| destroy_step(c, &name, old_id, want_xml)),
            )
            .await;
            let step = match step {
                Err(_) if last.is_empty() => return Err("libvirt did not answer in time".into()),
                Err(_) => return Err(format!("not seen off in time; last: {last}")),
                Ok(Err(e)) => return Err(format!("cannot reach libvirt: {e}")),
                Ok(Ok(Err(e))) => return Err(format!("libvirt cannot tell its state: {e}")),
                Ok(Ok(Ok(step))) => step,
            };
            match step {
                Step::Off(now) if destroyed.is_none() => {
                    tracing::info!(domain, state = %now.describe(), "the guest VM is not active on this host");
                    return Ok(Here::WasOff);
                }
                Step::Off(now) | Step::NewRun(now) => {
                    // A new run (another domain id) means the destroyed one
                    // ended: the cluster or an operator started it again.
                    tracing::info!(domain, state = %now.describe(), id = ?now.id, "the guest VM's destroyed run is over");
                    let (_, persistent, xml) = destroyed.unwrap_or((None, false, None));
                    return Ok(Here::Destroyed { persistent, xml });
                }
                Step::Destroyed { was, xml, now } => {
                    if destroyed.is_none() {
                        tracing::info!(domain, was = %was.describe(), "destroyed the guest VM");
                        destroyed = Some((was.id, was.persistent, xml));
                    }
                    if is_off(&now) {
                        let (_, persistent, xml) = destroyed.unwrap_or((None, false, None));
                        return Ok(Here::Destroyed { persistent, xml });
                    }
                    last = format!("still {} after the destroy", now.describe());
                }
                Step::DestroyFailed { was, xml, error } => {
                    if destroyed.is_none() {
                        destroyed = Some((was.id, was.persistent, xml));
                    }
                    tracing::warn!(domain, "destroying the guest VM failed (retrying): {error}");
                    last = format!("{}; the destroy failed: {error}", was.describe());
                }
            }
            let next = (Instant::now() + CONFIRM_POLL).min(deadline);
            tokio::time::sleep_until(next).await;
        }
    }

    /// Where the host cluster runs the VM `managed` (not active here).
    fn whereabouts(&self, managed: Option<&ManagedVm>) -> Whereabouts {
        whereabouts(&self.node, managed, self.cluster.placement())
    }
}

/// What [`GuestFencer::off_here`] found.
#[derive(Debug)]
enum Here {
    /// Not active here before anything was done.
    WasOff,
    /// Destroyed, and seen off.
    Destroyed {
        persistent: bool,
        /// Its XML, taken before the destroy (transient VMs to reboot).
        xml: Option<String>,
    },
}

/// One look at the VM, on the libvirt thread.
#[derive(Debug)]
enum Step {
    /// Not active (absent or shut off).
    Off(VmStatus),
    /// Active with another id than the run destroyed: a new run.
    NewRun(VmStatus),
    /// It was active; destroyed; its state after that.
    Destroyed {
        was: VmStatus,
        xml: Option<String>,
        now: VmStatus,
    },
    /// It was active and the destroy failed.
    DestroyFailed {
        was: VmStatus,
        xml: Option<String>,
        error: String,
    },
}

fn is_off(s: &VmStatus) -> bool {
    matches!(s.state, VmState::Absent | VmState::Shutoff)
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code().is(ErrorNumber::NoDomain)
}

/// Look at `name`; destroy it if it is active (and is the run `old_id`
/// when that is given).
fn destroy_step(
    conn: &Connect,
    name: &str,
    old_id: Option<Option<u32>>,
    want_xml: bool,
) -> Result<Step, String> {
    let was = vm_status(conn, name)?;
    if is_off(&was) {
        return Ok(Step::Off(was));
    }
    if let Some(Some(old)) = old_id
        && was.id.is_some_and(|id| id != old)
    {
        return Ok(Step::NewRun(was));
    }
    let dom = match conn.lookup_domain_by_name(name) {
        Ok(d) => d,
        Err(e) if is_no_domain(&e) => return vm_status(conn, name).map(Step::Off),
        Err(e) => return Err(e.message().to_owned()),
    };
    let xml = if want_xml && !was.persistent {
        match dom.xml_desc(virt::sys::VIR_DOMAIN_XML_SECURE | virt::sys::VIR_DOMAIN_XML_MIGRATABLE)
        {
            Ok(x) => Some(x),
            Err(e) => {
                tracing::warn!(
                    vm = name,
                    "cannot keep the VM's XML to start it again: {}",
                    e.message()
                );
                None
            }
        }
    } else {
        None
    };
    match dom.destroy() {
        Ok(()) => {}
        Err(e) if is_no_domain(&e) => {}
        Err(e) => {
            return Ok(Step::DestroyFailed {
                was,
                xml,
                error: e.message().to_owned(),
            });
        }
    }
    let now = vm_status(conn, name)?;
    Ok(Step::Destroyed { was, xml, now })
}

/// Start `name` again after a fence: its persistent definition, or the
/// transient domain from `xml`.
fn start_again(
    conn: &Connect,
    name: &str,
    persistent: bool,
    xml: Option<&str>,
) -> Result<(), String> {
    if persistent {
        let dom = conn
            .lookup_domain_by_name(name)
            .map_err(|e| e.message().to_owned())?;
        dom.create().map_err(|e| e.message().to_owned())
    } else {
        let xml = xml.ok_or_else(|| {
            "a transient domain, and its XML could not be kept: no definition to start".to_owned()
        })?;
        conn.create_domain_xml(xml, virt::sys::VIR_DOMAIN_NONE)
            .map(|_| ())
            .map_err(|e| e.message().to_owned())
    }
}

fn restart_by_cluster(managed: Option<&ManagedVm>, action: GuestFenceAction) -> Restart {
    match (managed, action) {
        (Some(m), _) => Restart::ByCluster {
            group: m.group.clone(),
            watcher: m.watcher.clone(),
        },
        (None, GuestFenceAction::Off) => Restart::StaysOff,
        // Not reached: an unmanaged VM that was off is never confirmed.
        (None, GuestFenceAction::Reboot) => Restart::StartFailed("not started again".into()),
    }
}

/// Where a VM that is not active on this host runs.
#[derive(Debug, PartialEq, Eq)]
enum Whereabouts {
    /// Nowhere in the host cluster.
    Nowhere,
    /// On another host.
    On { host: String, detail: String },
    /// Cannot tell: why.
    Unknown(String),
}

fn whereabouts(me: &str, managed: Option<&ManagedVm>, view: Option<PlacementView>) -> Whereabouts {
    let Some(m) = managed else {
        return Whereabouts::Unknown(
            "it is not a `vm` resource of this host cluster, so this host cannot know whether \
             another host runs it"
                .into(),
        );
    };
    let Some(view) = view else {
        return Whereabouts::Unknown("this host cannot tell where its cluster runs the VM".into());
    };
    if !view.quorate {
        return Whereabouts::Unknown(
            "this host has no quorum, so it cannot know what the other hosts run".into(),
        );
    }
    let Some(g) = view.groups.iter().find(|g| g.name == m.group) else {
        return Whereabouts::Unknown(format!("no status for its group `{}`", m.group));
    };
    let others: Vec<_> = g.running_on.iter().filter(|r| r.node != me).collect();
    if let Some(first) = others.first() {
        let list: Vec<String> = others
            .iter()
            .map(|r| format!("`{}` ({})", r.node, r.state))
            .collect();
        return Whereabouts::On {
            host: first.node.clone(),
            detail: format!(
                "host {} reports its group `{}`; forwarding the request there comes with the linkage",
                list.join(", "),
                m.group
            ),
        };
    }
    match &g.target {
        Some(t) if t != me => Whereabouts::On {
            host: t.clone(),
            detail: format!(
                "the placement assigns its group `{}` to host `{t}`, which does not report it \
                 (it may be starting it, or be lost and not yet fenced); forwarding the request \
                 there comes with the linkage",
                m.group
            ),
        },
        _ => Whereabouts::Nowhere,
    }
}

#[cfg(test)]
mod tests {
    use cluster_core::status::RunningOn;

    use super::*;

    fn group(name: &str, target: Option<&str>, running_on: &[(&str, &str)]) -> GroupStatus {
        GroupStatus {
            target: target.map(Into::into),
            wanted: Some(true),
            state_here: Some("stopped".into()),
            running_on: running_on.iter().copied().map(RunningOn::from).collect(),
            ..GroupStatus::new(name, vec!["h0".into(), "h1".into()])
        }
    }

    fn view(quorate: bool, g: GroupStatus) -> Option<PlacementView> {
        Some(PlacementView {
            quorate,
            groups: vec![g],
        })
    }

    #[test]
    fn where_a_vm_not_here_runs() {
        let m = ManagedVm {
            group: "g".into(),
            watcher: None,
        };
        let m = Some(&m);
        assert_eq!(
            whereabouts("h0", m, view(true, group("g", None, &[]))),
            Whereabouts::Nowhere
        );
        assert_eq!(
            whereabouts("h0", m, view(true, group("g", Some("h0"), &[]))),
            Whereabouts::Nowhere,
            "assigned here and absent here: off (the engine may start a new run)"
        );
        match whereabouts("h0", m, view(true, group("g", None, &[("h1", "stopping")]))) {
            Whereabouts::On { host, detail } => {
                assert_eq!(host, "h1");
                assert!(detail.contains("`h1` (stopping)"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        match whereabouts("h0", m, view(true, group("g", Some("h1"), &[]))) {
            Whereabouts::On { host, .. } => assert_eq!(host, "h1"),
            other => panic!("{other:?}"),
        }
        for (case, v) in [
            ("no quorum", view(false, group("g", None, &[]))),
            ("no engine", None),
            ("no such group", view(true, group("other", None, &[]))),
        ] {
            assert!(
                matches!(whereabouts("h0", m, v), Whereabouts::Unknown(_)),
                "{case}"
            );
        }
        assert!(
            matches!(
                whereabouts("h0", None, view(true, group("g", None, &[]))),
                Whereabouts::Unknown(_)
            ),
            "a VM the cluster does not manage may run on any host"
        );
    }
}
