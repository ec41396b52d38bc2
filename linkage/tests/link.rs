//! A guest's `HostLink` and a host's `LinkServer` over real Unix and TCP
//! sockets.

use std::sync::Arc;
use std::time::Duration;

use conf::Endpoint;
use linkage::server::Answer;
use linkage::{GuestHandler, GuestId, HostLink, LinkKey, LinkServer, Listener, Message};

const SECRET: &str = "0123456789abcdef";

fn g1() -> GuestId {
    GuestId {
        name: "g1".into(),
        cluster: "web".into(),
    }
}

/// A host that runs on `host-a` and can fence `g2` only.
#[derive(Debug)]
struct Host;

impl GuestHandler for Host {
    fn handle<'a>(&'a self, _guest: &'a GuestId, message: Message) -> Answer<'a> {
        Box::pin(async move {
            match message {
                Message::WhereAmI { request_id } => Some(Message::YouAreOn {
                    request_id,
                    host: "host-a".into(),
                    cluster: "kvm".into(),
                }),
                Message::Fence { request_id, peer } => Some(Message::FenceResult {
                    request_id,
                    off: peer == "g2",
                    error: (peer != "g2").then(|| format!("`{peer}` is not a peer")),
                    absent: false,
                    fenced_hosts: Vec::new(),
                }),
                _ => None,
            }
        })
    }
}

fn server(secret: &'static str) -> LinkServer {
    LinkServer::new(
        Arc::new(move |id: &GuestId| (*id == g1()).then(|| LinkKey::new(secret.as_bytes()))),
        Arc::new(Host),
    )
}

async fn exercise(endpoint: Endpoint) {
    let srv = server(SECRET);
    let listener = Listener::bind(&endpoint)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = listener.endpoint();
    let serving = srv.serve(listener);
    let (link, mut pushed) = HostLink::spawn(endpoint, g1(), LinkKey::new(SECRET.as_bytes()), 7);
    assert!(
        link.wait_connected(Duration::from_secs(5)).await,
        "{:?}",
        link.state()
    );
    let fenced = link
        .fence("g2", Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fenced.off);
    let refused = link
        .fence("g3", Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!refused.off && refused.error.is_some_and(|e| e.contains("g3")));
    assert_eq!(
        link.where_am_i(Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        ("host-a".to_owned(), "kvm".to_owned())
    );
    // The first WhereAmI of the session went to the state.
    assert_eq!(link.state().host.as_deref(), Some("host-a"));
    let sessions = srv.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].guest, g1());
    assert!(srv.push(&g1(), Message::HostIsolated));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), pushed.recv())
            .await
            .ok()
            .flatten(),
        Some(Message::HostIsolated)
    );
    serving.abort();
}

#[tokio::test]
async fn a_guest_talks_to_its_host_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    exercise(Endpoint::Unix(dir.path().join("linkage.sock"))).await;
}

#[tokio::test]
async fn a_guest_talks_to_its_host_over_tcp() {
    exercise(Endpoint::Tcp(
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
    ))
    .await;
}

#[tokio::test]
async fn a_guest_connects_once_the_host_listens_and_again_after_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let endpoint = Endpoint::Unix(dir.path().join("linkage.sock"));
    let (link, _pushed) =
        HostLink::spawn(endpoint.clone(), g1(), LinkKey::new(SECRET.as_bytes()), 7);
    // Nobody listens: not connected, and a request says why at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = link.fence("g2", Duration::from_secs(1)).await.err();
    assert!(
        e.as_ref()
            .is_some_and(|e| e.to_string().contains("cannot connect")),
        "{e:?}"
    );
    // A host with another key for g1: refused, still not connected.
    let wrong = server("another-secret-of-16+");
    let listener = Listener::bind(&endpoint)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let serving = wrong.serve(listener);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = link.state();
    assert!(!state.connected);
    assert!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not prove")),
        "{state:?}"
    );
    serving.abort();
    // The right host: connected within the backoff.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let right = server(SECRET);
    let listener = Listener::bind(&endpoint)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _serving = right.serve(listener);
    assert!(
        link.wait_connected(Duration::from_secs(10)).await,
        "{:?}",
        link.state()
    );
}

#[tokio::test]
async fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let endpoint = Endpoint::Unix(dir.path().join("linkage.sock"));
    let first = Listener::bind(&endpoint)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = Listener::bind(&endpoint).await;
    assert!(second.is_err(), "a second listener took a live socket");
    // A socket file left by a process that died: replaced.
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap_or_else(|e| panic!("{e}")));
    assert!(path.exists());
    assert!(Listener::bind(&Endpoint::Unix(path)).await.is_ok());
    drop(first);
}

#[tokio::test]
async fn vsock_is_refused_with_a_clear_error() {
    let e = Listener::bind(&Endpoint::Vsock { cid: 2, port: 5410 })
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("not supported"), "{e}");
}
