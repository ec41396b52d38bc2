//! The witness over the network: the router served on IPv4 and IPv6
//! loopback, `WitnessClient` as the cluster nodes use it, the bearer token,
//! and an unreachable witness.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use cluster_witness::{
    VoteBook, VoteReply, VoteRequest, WitnessClient, WitnessError, WitnessStatus, router,
};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Serve `app` on `addr` (port 0: any free port) until the test ends.
async fn start(app: Router, addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let local = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    local
}

fn client(addr: SocketAddr, token: Option<&str>) -> WitnessClient {
    WitnessClient::new(&format!("http://{addr}"), TIMEOUT, None, token)
        .unwrap_or_else(|e| panic!("client of {addr}: {e}"))
}

fn set(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|n| (*n).to_owned()).collect()
}

fn req(cluster: &str, node: &str, view: &[&str], lease_ms: u64) -> VoteRequest {
    VoteRequest {
        cluster: cluster.into(),
        node: node.into(),
        view: set(view),
        lease_ms,
    }
}

async fn vote(client: &WitnessClient, req: &VoteRequest) -> VoteReply {
    client
        .vote(req)
        .await
        .unwrap_or_else(|e| panic!("vote {req:?}: {e}"))
}

async fn status(addr: SocketAddr, token: Option<&str>) -> reqwest::Response {
    let mut get = reqwest::Client::new().get(format!("http://{addr}/v1/status"));
    if let Some(token) = token {
        get = get.bearer_auth(token);
    }
    get.send()
        .await
        .unwrap_or_else(|e| panic!("GET /v1/status: {e}"))
}

#[tokio::test]
async fn two_node_partition_grants_exactly_one_side_over_ipv4_and_ipv6() {
    let app = router(VoteBook::default(), None);
    let v4 = start(app.clone(), "127.0.0.1:0").await;
    let v6 = start(app, "[::1]:0").await;
    assert!(v4.is_ipv4() && v6.is_ipv6());
    // Node a reaches the witness over IPv4, node b over IPv6.
    let a = client(v4, None);
    let b = client(v6, None);
    assert_eq!(a.vote_url(), format!("http://{v4}/v1/vote"));
    assert_eq!(b.vote_url(), format!("http://[::1]:{}/v1/vote", v6.port()));

    // Several clusters, so that the race between the two sides is run many
    // times; each cluster must end with exactly one winner.
    let mut winners = BTreeSet::new();
    for i in 0..20 {
        let cluster = format!("c{i}");
        for (node, c) in [("a", &a), ("b", &b)] {
            let healthy = vote(c, &req(&cluster, node, &["a", "b"], 10_000)).await;
            assert!(healthy.granted, "{healthy:?}");
            assert_eq!(healthy.holder, set(&["a", "b"]));
        }

        // The link between a and b breaks: both report alone, at once.
        let alone_a = req(&cluster, "a", &["a"], 10_000);
        let alone_b = req(&cluster, "b", &["b"], 10_000);
        let (ra, rb) = tokio::join!(vote(&a, &alone_a), vote(&b, &alone_b));
        assert!(ra.granted != rb.granted, "{cluster}: a {ra:?}, b {rb:?}");
        let (winner, loser, win_req, lose_req, win_reply, lose_reply) = if ra.granted {
            (&a, &b, &alone_a, &alone_b, ra, rb)
        } else {
            (&b, &a, &alone_b, &alone_a, rb, ra)
        };
        assert_eq!(win_reply.holder, win_req.view);
        assert_eq!(win_reply.lease_ms, 10_000);
        assert_eq!(
            lose_reply.holder, win_req.view,
            "the loser learns who holds"
        );
        assert_eq!(lose_reply.lease_ms, 0);
        winners.insert(win_req.node.clone());

        // The winner keeps the vote by renewing; the loser keeps being denied.
        for _ in 0..3 {
            assert!(vote(winner, win_req).await.granted);
            assert!(!vote(loser, lose_req).await.granted);
        }
    }
    assert!(!winners.is_empty());

    let body = status(v6, None).await;
    assert_eq!(body.status(), reqwest::StatusCode::OK);
    let snapshot: WitnessStatus = body
        .json()
        .await
        .unwrap_or_else(|e| panic!("status body: {e}"));
    assert_eq!(snapshot.clusters.len(), 20, "{snapshot:?}");
    for held in snapshot.clusters.values() {
        assert_eq!(held.members.len(), 1, "{snapshot:?}");
        assert!(held.remaining_ms > 0 && held.remaining_ms <= 10_000);
    }
}

#[tokio::test]
async fn the_other_side_takes_the_vote_when_the_winner_goes_silent() {
    // The witness caps leases at 300 ms whatever is asked.
    let app = router(VoteBook::new(Duration::from_millis(300)), None);
    let addr = start(app, "[::1]:0").await;
    let (a, b) = (client(addr, None), client(addr, None));
    let alone_a = req("c", "a", &["a"], 60_000);
    let alone_b = req("c", "b", &["b"], 60_000);
    let won = vote(&a, &alone_a).await;
    assert!(won.granted);
    assert_eq!(won.lease_ms, 300, "lease capped");
    let lost = vote(&b, &alone_b).await;
    assert!(!lost.granted);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = vote(&b, &alone_b).await;
    assert!(taken.granted, "{taken:?}");
    assert_eq!(taken.holder, set(&["b"]));
    assert!(!vote(&a, &alone_a).await.granted);
}

#[tokio::test]
async fn malformed_requests_get_400_with_the_reason() {
    let addr = start(router(VoteBook::default(), None), "127.0.0.1:0").await;
    let err = client(addr, None)
        .vote(&req("c", "a", &["b"], 1_000))
        .await
        .err();
    let Some(WitnessError::Status {
        status, message, ..
    }) = &err
    else {
        panic!("expected a 400, got {err:?}");
    };
    assert_eq!(*status, 400);
    assert_eq!(message, "node `a` is not in its own view");

    // Not even JSON: still a JSON error body.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/vote"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let addr = start(router(VoteBook::default(), Some("s3cr3t")), "[::1]:0").await;
    let request = req("c", "a", &["a"], 1_000);

    for (token, why) in [
        (None, "missing bearer token"),
        (Some("wrong"), "wrong bearer token"),
        (Some("s3cr3t-but-longer"), "wrong bearer token"),
    ] {
        let err = client(addr, token).vote(&request).await.err();
        let Some(WitnessError::Status {
            status, message, ..
        }) = &err
        else {
            panic!("token {token:?}: expected a 401, got {err:?}");
        };
        assert_eq!(*status, 401);
        assert!(message.contains(why), "{message}");
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("answered 401"), "{text}");
    }

    let reply = vote(&client(addr, Some("s3cr3t")), &request).await;
    assert!(reply.granted);

    // The status is behind the token too; the health check is not.
    assert_eq!(
        status(addr, None).await.status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(addr, Some("s3cr3t")).await.status(),
        reqwest::StatusCode::OK
    );
    let health = reqwest::get(format!("http://{addr}/v1/health"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert_eq!(health.text().await.unwrap_or_default().trim(), "ok");
}

#[tokio::test]
async fn unreachable_witness_is_reported_within_the_timeout() {
    let timeout = Duration::from_millis(500);
    let request = req("c", "a", &["a"], 1_000);

    // Nothing listens: the connection is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    let refused = WitnessClient::new(&format!("http://{closed}"), timeout, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let err = refused.vote(&request).await.err();
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    assert!(
        matches!(
            err,
            Some(WitnessError::Unreachable {
                timed_out: false,
                ..
            })
        ),
        "{err:?}"
    );

    // Something listens but never answers: the timeout runs out.
    let silent = std::net::TcpListener::bind("[::1]:0").unwrap_or_else(|e| panic!("{e}"));
    let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mute = WitnessClient::new(&format!("http://{silent_addr}"), timeout, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let err = mute.vote(&request).await.err();
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "{took:?}"
    );
    let Some(
        err @ WitnessError::Unreachable {
            timed_out: true, ..
        },
    ) = err
    else {
        panic!("expected a timeout, got {err:?}");
    };
    assert!(err.to_string().contains("unreachable (timed out)"), "{err}");
    drop(silent);
}

#[test]
fn a_ca_file_is_accepted_as_an_extra_root() {
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ca.pem");
    let client = WitnessClient::new("https://[::1]:7450", TIMEOUT, Some(&ca), None);
    assert!(client.is_ok(), "{:?}", client.err());
}
