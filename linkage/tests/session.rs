//! Sessions over in-memory streams: the handshake's refusals, and frames
//! forged, replayed or reflected on the way.

use linkage::session::{self, GuestId, SessionError};
use linkage::{LinkKey, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn g1() -> GuestId {
    GuestId {
        name: "g1".into(),
        cluster: "web".into(),
    }
}

fn key(s: &str) -> LinkKey {
    LinkKey::new(s.as_bytes())
}

/// The host's keys: only g1 of `web`, with `secret`.
fn keys(secret: &'static str) -> impl Fn(&GuestId) -> Option<LinkKey> + Send + Sync {
    move |id: &GuestId| (*id == g1()).then(|| key(secret))
}

type Opened = (
    Result<session::Session<DuplexStream>, SessionError>,
    Result<session::Session<DuplexStream>, SessionError>,
);

async fn open(me: GuestId, guest_key: &str, host_secret: &'static str) -> Opened {
    let (g, h) = tokio::io::duplex(1 << 16);
    let host_keys = keys(host_secret);
    let host = tokio::spawn(async move { session::accept(h, &host_keys).await });
    let guest = session::connect(g, &me, &key(guest_key)).await;
    let host = host
        .await
        .unwrap_or_else(|e| panic!("host side panicked: {e}"));
    (guest, host)
}

#[tokio::test]
async fn both_sides_prove_the_key_and_frames_flow_both_ways() {
    let (guest, host) = open(g1(), "0123456789abcdef", "0123456789abcdef").await;
    let mut guest = guest.unwrap_or_else(|e| panic!("{e}"));
    let mut host = host.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.guest, g1());
    for i in 0..3 {
        guest
            .writer
            .send(Message::Liveness { incarnation: i })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            host.reader.recv().await.ok(),
            Some(Message::Liveness { incarnation: i })
        );
    }
    host.writer
        .send(Message::HostIsolated)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest.reader.recv().await.ok(), Some(Message::HostIsolated));
}

#[tokio::test]
async fn a_wrong_key_or_an_unknown_guest_is_refused() {
    let (guest, host) = open(g1(), "not-the-right-key-at-all", "0123456789abcdef").await;
    // The guest sees the host's proof fail first and stops there.
    assert!(
        matches!(guest, Err(SessionError::BadProof("host"))),
        "{guest:?}"
    );
    assert!(host.is_err());

    let stranger = GuestId {
        name: "g9".into(),
        cluster: "web".into(),
    };
    let (guest, host) = open(stranger.clone(), "0123456789abcdef", "0123456789abcdef").await;
    match guest {
        Err(SessionError::Refused(why)) => assert!(why.contains("g9"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(host, Err(SessionError::UnknownGuest(id)) if id == stranger));

    // g1 of another guest cluster is another guest.
    let other_cluster = GuestId {
        name: "g1".into(),
        cluster: "db".into(),
    };
    let (guest, _) = open(other_cluster, "0123456789abcdef", "0123456789abcdef").await;
    assert!(matches!(guest, Err(SessionError::Refused(_))));
}

/// What the relay does with the `n`th frame (length prefix, body and tag
/// as read) from the guest: the frames to hand to the host instead.
type Tamper = Box<dyn Fn(usize, Vec<u8>) -> Vec<Vec<u8>> + Send>;

async fn read_whole(r: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize + 32];
    r.read_exact(&mut rest).await.ok()?;
    let mut whole = len.to_vec();
    whole.extend_from_slice(&rest);
    Some(whole)
}

/// A guest and a host joined through a relay: frames from the guest go
/// through `tamper`; with `reflect`, the host's `reflect`th frame also
/// goes back to the host, as if the guest had sent it.
async fn relayed(
    tamper: Tamper,
    reflect: Option<usize>,
) -> (
    session::Session<DuplexStream>,
    session::Session<DuplexStream>,
) {
    let (g, relay_g) = tokio::io::duplex(1 << 16);
    let (relay_h, h) = tokio::io::duplex(1 << 16);
    let (mut gr, mut gw) = tokio::io::split(relay_g);
    let (mut hr, mut hw) = tokio::io::split(relay_h);
    let (to_host, mut to_host_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(f) = to_host_rx.recv().await {
            if hw.write_all(&f).await.is_err() {
                return;
            }
        }
    });
    let back = to_host.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(f) = read_whole(&mut hr).await {
            if reflect == Some(n) {
                let _ = back.send(f.clone());
            }
            if gw.write_all(&f).await.is_err() {
                return;
            }
            n += 1;
        }
    });
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(f) = read_whole(&mut gr).await {
            for out in tamper(n, f) {
                let _ = to_host.send(out);
            }
            n += 1;
        }
    });
    let host_keys = keys("0123456789abcdef");
    let host = tokio::spawn(async move { session::accept(h, &host_keys).await });
    let guest = session::connect(g, &g1(), &key("0123456789abcdef"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let host = host
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    (guest, host)
}

// Frames 0 and 1 from the guest are its handshake; 2 is its first
// session frame.

#[tokio::test]
async fn a_replayed_frame_ends_the_session() {
    let (mut guest, mut host) = relayed(
        Box::new(|n, f| if n == 2 { vec![f.clone(), f] } else { vec![f] }),
        None,
    )
    .await;
    guest
        .writer
        .send(Message::Liveness { incarnation: 1 })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(host.reader.recv().await.is_ok());
    assert!(matches!(
        host.reader.recv().await,
        Err(SessionError::Forged { seq: 2 })
    ));
}

#[tokio::test]
async fn a_changed_frame_ends_the_session() {
    let (mut guest, mut host) = relayed(
        Box::new(|n, mut f| {
            if n == 2 {
                // "g2" for "g1" in the fence request's peer.
                let at = f.windows(2).position(|w| w == b"g1");
                if let Some(at) = at {
                    f[at + 1] = b'2';
                }
            }
            vec![f]
        }),
        None,
    )
    .await;
    guest
        .writer
        .send(Message::Fence {
            request_id: 1,
            peer: "g1".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        host.reader.recv().await,
        Err(SessionError::Forged { seq: 1 })
    ));
}

#[tokio::test]
async fn a_frame_reflected_back_to_its_sender_is_refused() {
    // The host's first session frame (its frames 0 and 1 are the
    // handshake's) comes back to it as the guest's first: it has the
    // right sequence number, but each direction has its own key.
    let (mut guest, mut host) = relayed(Box::new(|_, f| vec![f]), Some(2)).await;
    host.writer
        .send(Message::HostIsolated)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest.reader.recv().await.ok(), Some(Message::HostIsolated));
    assert!(matches!(
        host.reader.recv().await,
        Err(SessionError::Forged { seq: 1 })
    ));
}
