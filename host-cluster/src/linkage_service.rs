//! The host's end of the linkage: the guests of `[[linkage.guests]]`
//! connect (each proving its own key), ask where they run and ask to
//! fence a peer of their guest cluster; the other hosts of this host
//! cluster connect (proving a key derived from the cluster key) to hand
//! over a fence whose VM runs here.
//!
//! A `Fence { peer }` goes to the [`GuestFencer`] with the session's
//! guest as the requester: the guest is authenticated by its key, and the
//! fencer's authorisation (both listed, same guest cluster, not itself)
//! applies as for `clusterctl guest fence`. When the peer's VM is not on
//! this host, the request is forwarded (`ForwardFence`) to the host that
//! runs it, or, when that is unknown (a VM that is not a `vm` resource of
//! this host cluster), to every other live host at once: the one that has
//! the VM destroys it and confirms. The answer is
//! `FenceResult { off: true }` only once some host confirmed the VM off;
//! anything else is `off: false` with every host's reason. A forwarded
//! request is never forwarded again.
//!
//! When no host has the VM, it is off only if this host is quorate, this
//! host and every live host it asked said the VM is not active there, and
//! every other host of the cluster is known powered off by a fence device
//! (what the coordinator knows, in its answer; an expired lease is not
//! enough). Linked guests run on hosts of this host cluster: a guest whose
//! host lost power is off once that host is fenced.
//!
//! Another host is reached at its node's `linkage_listen` (or
//! `linkage.listen`): a TCP endpoint on an unspecified address
//! (`0.0.0.0`, `::`) is reached at the host's first heartbeat address of
//! that family; a Unix socket only where hosts share a file system (the
//! testbed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster_core::api::GuestFenceAction;
use cluster_core::engine::Engine;
use cluster_core::events::EventLog;
use cluster_core::status::{LinkageStatus, LinkedGuestStatus, MemberState};
use conf::Endpoint;
use linkage::server::Answer;
use linkage::{GuestHandler, GuestId, LinkKey, LinkServer, Listener, Message};
use serde_json::json;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use cluster_core::maintenance::{Hook, Progress};
use tokio::sync::{mpsc, oneshot, watch};

use crate::guest_fence::{GuestFenceError, GuestFencer};
use crate::hypervisor::Hypervisor;
use crate::uplinks::{self, Bridge};

/// Longest a libvirt call of the uplink notices may take.
const LIBVIRT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a forwarded fence may take, all hosts at once.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

/// What the hosts of one host cluster derive their linkage key with.
const HOST_KEY_LABEL: &str = "host-to-host";

/// Why the linkage could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkageStartError {
    /// The cluster key (for host-to-host sessions) cannot be used.
    #[error("cluster.auth_key_file: {0}")]
    ClusterKey(#[source] conf::SecretFileError),
    /// A guest's key file cannot be used.
    #[error("linkage.guests `{guest}`: {source}")]
    Key {
        /// The guest.
        guest: String,
        /// Why.
        #[source]
        source: conf::SecretFileError,
    },
    /// An endpoint cannot be listened on.
    #[error(transparent)]
    Listen(#[from] linkage::TransportError),
}

/// What the host answers its guests and the other hosts.
#[derive(Debug)]
struct Answers {
    node: String,
    config: conf::Config,
    fencer: Arc<GuestFencer>,
    engine: Arc<Engine>,
    events: Arc<EventLog>,
    host_key: LinkKey,
    /// A guest opened a session (it asks `WhereAmI` first): tell it the
    /// state of its uplinks.
    connected: mpsc::Sender<GuestId>,
    /// `PrepareShutdown`s waiting for their `ShutdownReady`, with the
    /// guest each was sent to.
    ready: Ready,
}

/// `PrepareShutdown`s waiting for their `ShutdownReady`: by request id,
/// the guest asked and who waits.
type Ready = Arc<Mutex<HashMap<u64, (GuestId, oneshot::Sender<()>)>>>;

impl Answers {
    /// Whether `id` is another host of this host cluster.
    fn is_host(&self, id: &GuestId) -> bool {
        id.cluster == self.config.cluster.name
            && id.name != self.node
            && self.config.node(&id.name).is_some()
    }

    fn result(request_id: u64, r: Result<String, String>) -> Message {
        match r {
            Ok(_) => Message::FenceResult {
                request_id,
                off: true,
                error: None,
                absent: false,
                fenced_hosts: Vec::new(),
            },
            Err(e) => Message::FenceResult {
                request_id,
                off: false,
                error: Some(e),
                absent: false,
                fenced_hosts: Vec::new(),
            },
        }
    }

    /// Every other host of this cluster that was not asked is powered off
    /// for certain, by a fence device (`fenced`: what this host and the
    /// hosts asked know as coordinators), and this host is quorate. A
    /// lease that expired is not enough: the watchdog of a daemon that
    /// stopped cleanly is disarmed, and it never stopped VMs that are not
    /// the cluster's.
    fn others_down(&self, asked: &[String], fenced: &[String]) -> Result<Vec<String>, String> {
        if !self.engine.quorum().is_some_and(|q| q.quorate) {
            return Err("this host has no quorum".into());
        }
        let mut down = Vec::new();
        for n in &self.config.nodes {
            if n.name == self.node || asked.contains(&n.name) {
                continue;
            }
            if !fenced.contains(&n.name) {
                return Err(format!(
                    "host {} was not asked and is not known powered off by a fence device",
                    n.name
                ));
            }
            down.push(n.name.clone());
        }
        Ok(down)
    }

    /// Fence `peer` for `requester` here; if its VM is not here, on the
    /// host that runs it or on every other live host.
    async fn fence(&self, requester: &str, peer: &str) -> Result<String, String> {
        match self
            .fencer
            .fence(requester, peer, GuestFenceAction::Off)
            .await
        {
            Ok(done) => Ok(done.message()),
            Err(GuestFenceError::NotHere { host, detail, .. }) => {
                self.forward(requester, peer, host, &detail).await
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Hand the fence to `hint`, or to every other live host.
    async fn forward(
        &self,
        requester: &str,
        peer: &str,
        hint: Option<String>,
        why_not_here: &str,
    ) -> Result<String, String> {
        let unknown_where = hint.is_none();
        let targets: Vec<String> = match hint {
            Some(h) => vec![h],
            None => self
                .engine
                .members()
                .into_iter()
                .filter(|m| m.state == MemberState::Alive)
                .map(|m| m.name)
                .collect(),
        };
        tracing::info!(requester, peer, to = ?targets, "linkage: the VM is not here; forwarding the fence");
        let me = GuestId {
            name: self.node.clone(),
            cluster: self.config.cluster.name.clone(),
        };
        let mut asks = tokio::task::JoinSet::new();
        for host in &targets {
            let Some(endpoint) = endpoint_of(&self.config, host) else {
                continue;
            };
            let (me, key, host) = (me.clone(), self.host_key.clone(), host.clone());
            let (requester, peer) = (requester.to_owned(), peer.to_owned());
            asks.spawn(async move {
                let answer = linkage::request_once(
                    &endpoint,
                    &me,
                    &key,
                    |request_id| Message::ForwardFence {
                        request_id,
                        requester,
                        peer,
                    },
                    FORWARD_TIMEOUT,
                )
                .await;
                (host, answer)
            });
        }
        let mut failures = Vec::new();
        let mut absent = Vec::new();
        let mut fenced = self.engine.fenced_peers();
        while let Some(joined) = asks.join_next().await {
            let Ok((host, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(Message::FenceResult { off: true, .. }) => {
                    asks.abort_all();
                    self.events.emit(
                        "guest_fence_forwarded",
                        json!({"requester": requester, "peer": peer, "to": targets, "confirmed_by": host}),
                    );
                    return Ok(format!("`{peer}` confirmed off by host `{host}`"));
                }
                Ok(Message::FenceResult {
                    absent: true,
                    fenced_hosts,
                    ..
                }) => {
                    absent.push(host);
                    fenced.extend(fenced_hosts);
                }
                Ok(Message::FenceResult { error, .. }) => failures.push(format!(
                    "{host}: {}",
                    error.unwrap_or_else(|| "not off".into())
                )),
                Ok(other) => failures.push(format!("{host}: unexpected answer {other:?}")),
                Err(e) => failures.push(format!("{host}: {e}")),
            }
        }
        // Where it runs is unknown, this host and every live host it asked
        // said it is not active there, and every other host is down for
        // certain: it runs nowhere (a linked guest runs on a host of this
        // cluster).
        if unknown_where && failures.is_empty() && absent.len() == targets.len() {
            match self.others_down(&targets, &fenced) {
                Ok(down) => {
                    self.events.emit(
                        "guest_fence_forwarded",
                        json!({"requester": requester, "peer": peer, "to": targets, "absent_on": absent, "down": down}),
                    );
                    return Ok(format!(
                        "`{peer}` is off: not active on this host nor on {}, and {} down (fenced or lease expired)",
                        absent.join(", "),
                        if down.is_empty() {
                            "no other host is".to_owned()
                        } else {
                            format!("{} is", down.join(", "))
                        }
                    ));
                }
                Err(why) => failures.push(format!(
                    "not active on {}, but it may run elsewhere: {why}",
                    absent.join(", ")
                )),
            }
        } else if !absent.is_empty() {
            failures.push(format!("not active on {}", absent.join(", ")));
        }
        let why = if targets.is_empty() {
            format!(
                "not on this host ({why_not_here}), and no other host is alive to ask{}",
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(": {}", failures.join("; "))
                }
            )
        } else {
            format!(
                "not on this host ({why_not_here}); asked {}: {}",
                targets.join(", "),
                if failures.is_empty() {
                    "no host could be reached".to_owned()
                } else {
                    failures.join("; ")
                }
            )
        };
        self.events.emit(
            "guest_fence_forwarded",
            json!({"requester": requester, "peer": peer, "to": targets, "error": why}),
        );
        Err(why)
    }
}

/// Where host `host` listens for linkage sessions, as another host
/// reaches it.
fn endpoint_of(config: &conf::Config, host: &str) -> Option<Endpoint> {
    let node = config.node(host)?;
    let section = match &config.linkage {
        Some(conf::Linkage::Host(h)) => h.listen.as_slice(),
        _ => &[],
    };
    let listen = if node.linkage_listen.is_empty() {
        section
    } else {
        node.linkage_listen.as_slice()
    };
    let pick = listen
        .iter()
        .find(|e| matches!(e, Endpoint::Tcp(_)))
        .or_else(|| listen.first())?;
    match pick {
        Endpoint::Tcp(a) if a.ip().is_unspecified() => {
            let ip = node
                .links
                .values()
                .flatten()
                .map(ipnet::IpNet::addr)
                .find(|ip| ip.is_ipv4() == a.is_ipv4())?;
            Some(Endpoint::Tcp(SocketAddr::new(ip, a.port())))
        }
        other => Some(other.clone()),
    }
}

impl GuestHandler for Answers {
    fn handle<'a>(&'a self, guest: &'a GuestId, message: Message) -> Answer<'a> {
        Box::pin(async move {
            let from_host = self.is_host(guest);
            match message {
                Message::WhereAmI { request_id } if !from_host => {
                    // Full: the notifier is behind; this guest is told at the
                    // next change of its uplinks.
                    let _ = self.connected.try_send(guest.clone());
                    Some(Message::YouAreOn {
                        request_id,
                        host: self.node.clone(),
                        cluster: self.config.cluster.name.clone(),
                    })
                }
                Message::Fence { request_id, peer } if !from_host => {
                    tracing::info!(%guest, peer, "linkage: fence requested");
                    let r = self.fence(&guest.name, &peer).await;
                    match &r {
                        Ok(done) => tracing::info!(%guest, "linkage: {done}"),
                        Err(e) => tracing::warn!(%guest, peer, "linkage: fence not confirmed: {e}"),
                    }
                    Some(Self::result(request_id, r))
                }
                Message::ForwardFence {
                    request_id,
                    requester,
                    peer,
                } if from_host => {
                    tracing::info!(from = %guest.name, requester, peer, "linkage: fence forwarded by another host");
                    let r = self
                        .fencer
                        .fence(&requester, &peer, GuestFenceAction::Off)
                        .await;
                    Some(match r {
                        Err(e @ GuestFenceError::NotHere { .. }) => Message::FenceResult {
                            request_id,
                            off: false,
                            error: Some(e.to_string()),
                            absent: true,
                            fenced_hosts: self.engine.fenced_peers(),
                        },
                        r => Self::result(
                            request_id,
                            r.map(|done| done.message()).map_err(|e| e.to_string()),
                        ),
                    })
                }
                Message::ShutdownReady { request_id } if !from_host => {
                    // Only the guest that was asked can answer.
                    let waiting = {
                        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
                        match ready.get(&request_id) {
                            Some((asked, _)) if asked == guest => ready.remove(&request_id),
                            _ => None,
                        }
                    };
                    match waiting {
                        Some((_, w)) => {
                            let _ = w.send(());
                        }
                        None => {
                            tracing::warn!(%guest, request_id, "linkage: a ShutdownReady for no request of this guest; ignored")
                        }
                    }
                    None
                }
                Message::ForwardFence { request_id, .. } => {
                    tracing::warn!(%guest, "linkage: a guest sent a host's ForwardFence; refused");
                    Some(Self::result(
                        request_id,
                        Err("only a host of this host cluster may forward a fence".into()),
                    ))
                }
                other => {
                    tracing::warn!(%guest, message = ?other, "linkage: a message this peer does not send; ignored");
                    None
                }
            }
        })
    }
}

/// The running linkage of a host daemon.
#[derive(Debug)]
pub struct HostLinkage {
    maintenance: Arc<MaintenanceCtx>,
    server: LinkServer,
    listen: Vec<String>,
    guests: Vec<conf::LinkedGuest>,
    serving: Vec<tokio::task::JoinHandle<()>>,
}

impl HostLinkage {
    /// Start the linkage of `config`'s `[linkage]` (a host's) for host
    /// `node`, listening on the node's `linkage_listen` or the section's
    /// `listen`, fencing through `fencer`, asking `engine` which hosts are
    /// alive; `None` without a `[linkage]`.
    ///
    /// # Errors
    /// The cluster key or a guest's key file cannot be used, or an
    /// endpoint cannot be listened on.
    pub async fn start(
        config: &conf::Config,
        node: &str,
        fencer: Arc<GuestFencer>,
        engine: Arc<Engine>,
        hypervisor: Hypervisor,
    ) -> Result<Option<Self>, LinkageStartError> {
        let Some(conf::Linkage::Host(h)) = &config.linkage else {
            return Ok(None);
        };
        let cluster_secret = conf::read_secret_file("cluster key", &config.cluster.auth_key_file)
            .map_err(LinkageStartError::ClusterKey)?;
        let host_key = LinkKey::derive(&cluster_secret, HOST_KEY_LABEL);
        let mut keys = BTreeMap::new();
        for g in &h.guests {
            let key = LinkKey::load(&g.key_file).map_err(|source| LinkageStartError::Key {
                guest: g.name.clone(),
                source,
            })?;
            keys.insert(
                GuestId {
                    name: g.name.clone(),
                    cluster: g.cluster.clone(),
                },
                key,
            );
        }
        // Guests by their own keys; the other hosts of this cluster by the
        // key derived from the cluster key.
        let hosts: Vec<String> = config
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .filter(|n| n != node)
            .collect();
        let cluster = config.cluster.name.clone();
        let key_for_hosts = host_key.clone();
        let key_of = move |id: &GuestId| {
            if id.cluster == cluster && hosts.contains(&id.name) {
                Some(key_for_hosts.clone())
            } else {
                keys.get(id).cloned()
            }
        };
        let events = engine.events().clone();
        let (connected, new_sessions) = mpsc::channel(64);
        let ready: Ready = Arc::default();
        let server = LinkServer::new(
            Arc::new(key_of),
            Arc::new(Answers {
                node: node.to_owned(),
                config: config.clone(),
                fencer,
                engine,
                events,
                host_key,
                connected,
                ready: ready.clone(),
            }),
        );
        let uplinks = config
            .node(node)
            .map(|n| n.uplinks.clone())
            .unwrap_or_default();
        let mut serving = Vec::new();
        let mut listen = Vec::new();
        let own = config
            .node(node)
            .map(|n| n.linkage_listen.as_slice())
            .unwrap_or_default();
        let endpoints = if own.is_empty() {
            h.listen.as_slice()
        } else {
            own
        };
        for endpoint in endpoints {
            let l = Listener::bind(endpoint).await?;
            listen.push(l.endpoint().to_string());
            tracing::info!(endpoint = %l.endpoint(), "linkage: listening for guests");
            serving.push(server.serve(l));
        }
        let managed: HashSet<String> = config
            .resources()
            .filter(|(_, r)| matches!(r.kind, conf::ResourceKind::Vm(_)))
            .map(|(_, r)| r.name.clone())
            .collect();
        let maintenance = Arc::new(MaintenanceCtx {
            server: server.clone(),
            hypervisor: hypervisor.clone(),
            guests: h.guests.clone(),
            managed,
            ready,
            next_id: AtomicU64::new(0),
            unconfirmed: Mutex::default(),
        });
        serving.push(tokio::spawn(tell_uplinks(
            server.clone(),
            hypervisor,
            h.guests.clone(),
            uplinks::watch(uplinks),
            new_sessions,
        )));
        Ok(Some(Self {
            server,
            listen,
            guests: h.guests.clone(),
            serving,
            maintenance,
        }))
    }

    /// The preparation of this host's maintenance: every connected guest
    /// whose VM runs here is asked to hand its groups over
    /// (`PrepareShutdown`), and its `ShutdownReady` awaited.
    pub fn hand_guests_over(&self) -> Hook {
        let ctx = self.maintenance.clone();
        Box::new(move |progress, deadline| {
            Box::pin(async move { ctx.hand_over(progress, deadline).await })
        })
    }

    /// The last step of this host's maintenance: the linked guests' VMs
    /// still running here that are not `vm` resources (those the host
    /// cluster moved already) are shut down (ACPI) and seen off.
    pub fn shut_guests_down(&self) -> Hook {
        let ctx = self.maintenance.clone();
        Box::new(move |progress, deadline| {
            Box::pin(async move { ctx.shut_down(progress, deadline).await })
        })
    }

    /// For `clusterctl status`.
    pub fn status(&self) -> LinkageStatus {
        let sessions = self.server.sessions();
        LinkageStatus::Host {
            listen: self.listen.clone(),
            guests: self
                .guests
                .iter()
                .map(|g| {
                    let s = sessions
                        .iter()
                        .find(|s| s.guest.name == g.name && s.guest.cluster == g.cluster);
                    LinkedGuestStatus {
                        name: g.name.clone(),
                        cluster: g.cluster.clone(),
                        domain: g.domain.clone(),
                        connected: s.is_some(),
                        last_heard_ms: s.map(|s| s.last_heard_ms),
                    }
                })
                .collect(),
        }
    }
}

impl Drop for HostLinkage {
    fn drop(&mut self) {
        for s in &self.serving {
            s.abort();
        }
    }
}

/// Tell the connected guests what their uplinks do: every guest when a
/// bridge goes down or comes back, a guest when its session opens.
async fn tell_uplinks(
    server: LinkServer,
    hypervisor: Hypervisor,
    guests: Vec<conf::LinkedGuest>,
    mut uplinks: watch::Receiver<BTreeMap<String, Bridge>>,
    mut new_sessions: mpsc::Receiver<GuestId>,
) {
    loop {
        let targets: Vec<GuestId> = tokio::select! {
            r = uplinks.changed() => {
                if r.is_err() {
                    return;
                }
                server.sessions().into_iter().map(|s| s.guest).collect()
            }
            g = new_sessions.recv() => match g {
                Some(g) => vec![g],
                None => return,
            },
        };
        let state = uplinks.borrow().clone();
        if state.is_empty() {
            continue;
        }
        for guest in targets {
            tell_guest(&server, &hypervisor, &guests, &state, &guest).await;
        }
    }
}

/// Send `guest` a `NicDown` or `NicUp` for each bridge of `state` that one
/// of its interfaces is on (from its domain's XML on this host).
async fn tell_guest(
    server: &LinkServer,
    hypervisor: &Hypervisor,
    guests: &[conf::LinkedGuest],
    state: &BTreeMap<String, Bridge>,
    guest: &GuestId,
) {
    let Some(g) = guests
        .iter()
        .find(|g| g.name == guest.name && g.cluster == guest.cluster)
    else {
        return;
    };
    let domain = g.domain.clone();
    // Bounded: a libvirt that hangs must not stop every later notice.
    let xml = tokio::time::timeout(
        LIBVIRT_TIMEOUT,
        hypervisor.call(move |c| {
            c.lookup_domain_by_name(&domain)
                .and_then(|d| d.xml_desc(0))
                .ok()
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .flatten();
    let Some(xml) = xml else {
        tracing::debug!(%guest, domain = %g.domain, "linkage: the guest's domain is not on this host; no uplink notice");
        return;
    };
    let interfaces = uplinks::bridged_interfaces(&xml);
    for (bridge, b) in state {
        let guest_macs: Vec<String> = interfaces
            .iter()
            .filter(|(_, br)| br == bridge)
            .map(|(mac, _)| mac.clone())
            .collect();
        if guest_macs.is_empty() {
            continue;
        }
        let host_interface = format!("{bridge} ({})", b.names());
        let message = if b.down() {
            tracing::warn!(%guest, bridge, "linkage: telling the guest its uplink is down");
            Message::NicDown {
                host_interface,
                guest_macs,
            }
        } else {
            Message::NicUp {
                host_interface,
                guest_macs,
            }
        };
        if !server.push(guest, message) {
            tracing::warn!(%guest, bridge, "linkage: the uplink notice could not be queued");
        }
    }
}

/// What a host's maintenance needs of the linkage.
#[derive(Debug)]
struct MaintenanceCtx {
    server: LinkServer,
    hypervisor: Hypervisor,
    guests: Vec<conf::LinkedGuest>,
    /// Domains that are `vm` resources of this host cluster.
    managed: HashSet<String>,
    ready: Ready,
    next_id: AtomicU64,
    /// Domains whose guest was asked to hand over and did not confirm:
    /// the last step leaves them running.
    unconfirmed: Mutex<HashSet<String>>,
}

impl MaintenanceCtx {
    fn unconfirmed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `domain` is active on this host: `Err` when libvirt did not
    /// answer by `deadline` (never read as "not active").
    async fn active(&self, domain: &str, deadline: Instant) -> Result<bool, String> {
        let d = domain.to_owned();
        let call = self
            .hypervisor
            .call(move |c| match c.lookup_domain_by_name(&d) {
                Ok(dom) => dom.is_active().map_err(|e| e.to_string()),
                Err(e) if e.code().is(virt::error::ErrorNumber::NoDomain) => Ok(false),
                Err(e) => Err(e.to_string()),
            });
        match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("libvirt did not answer before the deadline".into()),
        }
    }

    /// Ask every linked guest whose VM runs here (or may: libvirt did not
    /// say) to hand its groups over, and wait for each one's
    /// `ShutdownReady`. Every guest not asked or not confirmed is
    /// remembered: the last step leaves its VM running.
    async fn hand_over(&self, progress: Progress, deadline: Instant) -> Result<(), String> {
        self.unconfirmed().clear();
        let sessions: Vec<GuestId> = self
            .server
            .sessions()
            .into_iter()
            .map(|s| s.guest)
            .collect();
        let mut waits = tokio::task::JoinSet::new();
        let mut missing = Vec::new();
        for g in &self.guests {
            let who = format!("guest {} (domain {})", g.name, g.domain);
            match self.active(&g.domain, deadline).await {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    progress.step(format!(
                        "{who}: cannot tell whether its VM runs here ({e}); it is left as it is"
                    ));
                    self.unconfirmed().insert(g.domain.clone());
                    missing.push(who);
                    continue;
                }
            }
            let id = GuestId {
                name: g.name.clone(),
                cluster: g.cluster.clone(),
            };
            if !sessions.contains(&id) {
                progress.step(format!("{who}: its VM runs here but its daemon has no session with this host; its VM is left running"));
                self.unconfirmed().insert(g.domain.clone());
                missing.push(who);
                continue;
            }
            let request_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let (tx, rx) = oneshot::channel();
            self.ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(request_id, (id.clone(), tx));
            let left = deadline.saturating_duration_since(Instant::now());
            let sent = self.server.push(
                &id,
                Message::PrepareShutdown {
                    request_id,
                    deadline_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                },
            );
            if !sent {
                self.ready
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&request_id);
                progress.step(format!(
                    "{who}: could not be asked (its session is gone); its VM is left running"
                ));
                self.unconfirmed().insert(g.domain.clone());
                missing.push(who);
                continue;
            }
            progress.step(format!("{who}: asked to hand its groups over"));
            let asked = Instant::now();
            let domain = g.domain.clone();
            waits.spawn(async move {
                let ok = tokio::time::timeout_at(deadline.into(), rx)
                    .await
                    .is_ok_and(|r| r.is_ok());
                (who, domain, request_id, ok, asked.elapsed())
            });
        }
        while let Some(Ok((who, domain, request_id, ok, took))) = waits.join_next().await {
            if ok {
                progress.step(format!(
                    "{who}: handed its groups over in {} ms",
                    took.as_millis()
                ));
            } else {
                self.ready
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&request_id);
                progress.step(format!(
                    "{who}: did not say it was ready before the deadline; its VM is left running"
                ));
                self.unconfirmed().insert(domain);
                missing.push(who);
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not handed over: {}", missing.join(", ")))
        }
    }

    /// Shut down (ACPI) the linked guests' VMs still running here that
    /// are not `vm` resources and whose guests handed over, and see them
    /// off by `deadline`.
    async fn shut_down(&self, progress: Progress, deadline: Instant) -> Result<(), String> {
        let unconfirmed = self.unconfirmed().clone();
        let mut left = Vec::new();
        for g in &self.guests {
            if self.managed.contains(&g.domain) {
                continue;
            }
            match self.active(&g.domain, deadline).await {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    progress.step(format!("guest VM {}: {e}", g.domain));
                    left.push(g.domain.clone());
                    continue;
                }
            }
            if unconfirmed.contains(&g.domain) {
                // Its applications may still run in it: the operator
                // decides (the guest's own `clusterctl maintenance on`,
                // or `virsh shutdown`).
                left.push(g.domain.clone());
                continue;
            }
            let started = Instant::now();
            let d = g.domain.clone();
            let asked = tokio::time::timeout_at(
                deadline.into(),
                self.hypervisor.call(move |c| {
                    c.lookup_domain_by_name(&d)
                        .and_then(|dom| dom.shutdown())
                        .map(drop)
                        .map_err(|e| e.to_string())
                }),
            )
            .await
            .map_err(|_| "libvirt did not answer before the deadline".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .and_then(|r| r);
            if let Err(e) = asked {
                progress.step(format!("guest VM {}: shutdown refused: {e}", g.domain));
                left.push(g.domain.clone());
                continue;
            }
            loop {
                match self.active(&g.domain, deadline).await {
                    Ok(false) => {
                        progress.step(format!(
                            "guest VM {} shut down in {} ms",
                            g.domain,
                            started.elapsed().as_millis()
                        ));
                        break;
                    }
                    _ if Instant::now() >= deadline => {
                        progress.step(format!(
                            "guest VM {}: still running at the deadline",
                            g.domain
                        ));
                        left.push(g.domain.clone());
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("guest VMs still running here: {}", left.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(linkage: &str, a_listen: &str) -> conf::Config {
        let text = format!(
            r#"
[cluster]
name = "hosts"
kind = "host"
auth_key_file = "/dev/null"

[heartbeat]
interval = "200ms"
timeout = "800ms"
links = [{{ name = "lan" }}]

[quorum]
ping_targets = ["192.0.2.1"]

[[nodes]]
name = "a"
links = {{ lan = ["192.0.2.11/24", "2001:db8::11/64"] }}
{a_listen}

[[nodes]]
name = "b"
links = {{ lan = ["192.0.2.12/24"] }}

{linkage}
"#
        );
        conf::load_str("test.toml", &text).unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn another_host_is_reached_at_its_own_listen_or_its_link_address() {
        let c = config(
            "[linkage]\nlisten = [\"tcp:0.0.0.0:5410\"]\n",
            "linkage_listen = [\"unix:/run/a.sock\", \"tcp:[::]:5411\"]",
        );
        // Its own TCP endpoint first, the unspecified address replaced by
        // its first link address of that family.
        assert_eq!(
            endpoint_of(&c, "a").map(|e| e.to_string()).as_deref(),
            Some("tcp:[2001:db8::11]:5411")
        );
        // The section's endpoint, on its IPv4 link address.
        assert_eq!(
            endpoint_of(&c, "b").map(|e| e.to_string()).as_deref(),
            Some("tcp:192.0.2.12:5410")
        );
        assert_eq!(endpoint_of(&c, "c"), None);
    }
}
