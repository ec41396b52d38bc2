//! The host's end of the linkage: the guests of `[[linkage.guests]]`
//! connect (each proving its own key), ask where they run and ask to
//! fence a peer of their guest cluster.
//!
//! A `Fence { peer }` goes to the [`GuestFencer`] with the session's
//! guest as the requester: the guest is authenticated by its key, and the
//! fencer's authorisation (both listed, same guest cluster, not itself)
//! applies as for `clusterctl guest fence`. The answer is
//! `FenceResult { off: true }` only once the peer's VM is confirmed off;
//! anything else is `off: false` with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use linkage::server::Answer;
use linkage::{GuestHandler, GuestId, LinkKey, LinkServer, Listener, Message};

use crate::guest_fence::GuestFencer;
use cluster_core::api::GuestFenceAction;
use cluster_core::status::{LinkageStatus, LinkedGuestStatus};

/// Why the linkage could not start.
#[derive(Debug, thiserror::Error)]
pub enum LinkageStartError {
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

/// What the host answers its guests.
#[derive(Debug)]
struct Answers {
    node: String,
    cluster: String,
    fencer: Arc<GuestFencer>,
}

impl GuestHandler for Answers {
    fn handle<'a>(&'a self, guest: &'a GuestId, message: Message) -> Answer<'a> {
        Box::pin(async move {
            match message {
                Message::WhereAmI { request_id } => Some(Message::YouAreOn {
                    request_id,
                    host: self.node.clone(),
                    cluster: self.cluster.clone(),
                }),
                Message::Fence { request_id, peer } => {
                    tracing::info!(%guest, peer, "linkage: fence requested");
                    let result = self
                        .fencer
                        .fence(&guest.name, &peer, GuestFenceAction::Off)
                        .await;
                    Some(match result {
                        Ok(done) => {
                            tracing::info!(%guest, "linkage: {}", done.message());
                            Message::FenceResult {
                                request_id,
                                off: true,
                                error: None,
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%guest, peer, "linkage: fence not confirmed: {e}");
                            Message::FenceResult {
                                request_id,
                                off: false,
                                error: Some(e.to_string()),
                            }
                        }
                    })
                }
                other => {
                    tracing::warn!(%guest, message = ?other, "linkage: a message a guest does not send; ignored");
                    None
                }
            }
        })
    }
}

/// The running linkage of a host daemon.
#[derive(Debug)]
pub struct HostLinkage {
    server: LinkServer,
    listen: Vec<String>,
    guests: Vec<conf::LinkedGuest>,
    serving: Vec<tokio::task::JoinHandle<()>>,
}

impl HostLinkage {
    /// Start the linkage of `config`'s `[linkage]` (a host's) for host
    /// `node`, listening on the node's `linkage_listen` or the section's
    /// `listen`, fencing through `fencer`; `None` without a `[linkage]`.
    ///
    /// # Errors
    /// A guest's key file cannot be used, or an endpoint cannot be
    /// listened on.
    pub async fn start(
        config: &conf::Config,
        node: &str,
        fencer: Arc<GuestFencer>,
    ) -> Result<Option<Self>, LinkageStartError> {
        let Some(conf::Linkage::Host(h)) = &config.linkage else {
            return Ok(None);
        };
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
        let server = LinkServer::new(
            Arc::new(move |id: &GuestId| keys.get(id).cloned()),
            Arc::new(Answers {
                node: node.to_owned(),
                cluster: config.cluster.name.clone(),
                fencer,
            }),
        );
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
        Ok(Some(Self {
            server,
            listen,
            guests: h.guests.clone(),
            serving,
        }))
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
