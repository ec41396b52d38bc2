//! An authenticated session: the handshake, then frames tagged per
//! direction.
//!
//! Handshake (bodies in JSON, zero tags):
//!
//! ```text
//! guest -> host   client_hello  { guest, cluster, nonce_g }
//! host  -> guest  server_hello  { nonce_h, proof_h }   or refused { reason }
//! guest -> host   client_proof  { proof_g }
//! host  -> guest  welcome                               or refused { reason }
//! ```
//!
//! `proof_h` and `proof_g` are HMAC-SHA256 under the guest's key of a
//! side label, the guest's name and cluster and both nonces: each side
//! proves it holds the key, for this session only, without sending it.
//! The guest checks the host's proof before it sends its own. Each
//! direction then has its own key, derived from the guest's key and both
//! nonces; a frame's tag covers its sequence number and body, and frames
//! must arrive numbered 1, 2, 3...: a forged, changed, replayed, dropped
//! or reflected frame ends the session.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::frame::{self, FrameError, PROTOCOL_VERSION};
use crate::key::{LinkKey, SessionKey, TAG_BYTES, nonce};
use crate::{Frame, Message};

/// A guest, as it names itself on the linkage.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GuestId {
    /// Its node name in its guest cluster.
    pub name: String,
    /// Its guest cluster.
    pub cluster: String,
}

impl std::fmt::Display for GuestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (guest cluster {})", self.name, self.cluster)
    }
}

/// Why a session could not be opened or went on no longer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or writing a frame failed (the transport closed, an
    /// oversized or malformed frame, another protocol version).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The host refused this guest.
    #[error("the host refused the session: {0}")]
    Refused(String),
    /// A guest the host does not know.
    #[error("unknown guest {0}")]
    UnknownGuest(GuestId),
    /// The other side did not prove it holds the guest's key.
    #[error(
        "the {0} did not prove it holds the guest's linkage key (a different key, or not our peer)"
    )]
    BadProof(&'static str),
    /// A frame whose tag does not verify: forged, changed, replayed or out
    /// of order.
    #[error("frame {seq} failed authentication (forged, changed, replayed or out of order)")]
    Forged {
        /// The sequence number it was expected to have.
        seq: u64,
    },
    /// A handshake step came out of order.
    #[error("unexpected handshake message: {0}")]
    Unexpected(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Handshake {
    ClientHello {
        version: u16,
        guest: String,
        cluster: String,
        nonce: String,
    },
    ServerHello {
        version: u16,
        nonce: String,
        proof: String,
    },
    ClientProof {
        version: u16,
        proof: String,
    },
    Welcome {
        version: u16,
    },
    Refused {
        version: u16,
        reason: String,
    },
}

impl Handshake {
    fn name(&self) -> &'static str {
        match self {
            Self::ClientHello { .. } => "client_hello",
            Self::ServerHello { .. } => "server_hello",
            Self::ClientProof { .. } => "client_proof",
            Self::Welcome { .. } => "welcome",
            Self::Refused { .. } => "refused",
        }
    }
}

const ZERO_TAG: [u8; TAG_BYTES] = [0; TAG_BYTES];

async fn send_hs<W: AsyncWrite + Unpin>(w: &mut W, hs: &Handshake) -> Result<(), SessionError> {
    let body = serde_json::to_vec(hs).map_err(FrameError::Malformed)?;
    frame::write_body(w, &body, &ZERO_TAG).await?;
    Ok(())
}

async fn recv_hs<R: AsyncRead + Unpin>(r: &mut R) -> Result<Handshake, SessionError> {
    let (body, _) = frame::read_body(r).await?;
    Ok(frame::parse_versioned(&body)?)
}

/// What a side's proof is the MAC of.
fn proof_parts<'a>(
    side: &'a str,
    id: &'a GuestId,
    client: &'a [u8],
    server: &'a [u8],
) -> [&'a [u8]; 6] {
    [
        b"kvmha-linkage/1 proof",
        side.as_bytes(),
        id.name.as_bytes(),
        id.cluster.as_bytes(),
        client,
        server,
    ]
}

fn proof(key: &LinkKey, side: &str, id: &GuestId, client: &[u8], server: &[u8]) -> [u8; TAG_BYTES] {
    key.mac(&proof_parts(side, id, client, server))
}

fn proof_ok(
    key: &LinkKey,
    side: &str,
    id: &GuestId,
    client: &[u8],
    server: &[u8],
    got: &str,
) -> bool {
    hex::decode(got).is_ok_and(|got| key.verify(&proof_parts(side, id, client, server), &got))
}

fn decode_nonce(hexed: &str) -> Result<Vec<u8>, SessionError> {
    hex::decode(hexed)
        .ok()
        .filter(|n| n.len() == TAG_BYTES)
        .ok_or_else(|| SessionError::Unexpected("a nonce that is not 32 bytes of hex".into()))
}

/// An open session, either side.
#[derive(Debug)]
pub struct Session<S> {
    /// Receives the other side's frames.
    pub reader: SessionReader<ReadHalf<S>>,
    /// Sends this side's frames.
    pub writer: SessionWriter<WriteHalf<S>>,
    /// The guest of this session (the guest itself on the guest's side).
    pub guest: GuestId,
}

/// The receiving half of a [`Session`].
#[derive(Debug)]
pub struct SessionReader<R> {
    r: R,
    key: SessionKey,
    next: u64,
}

/// The sending half of a [`Session`].
#[derive(Debug)]
pub struct SessionWriter<W> {
    w: W,
    key: SessionKey,
    next: u64,
}

impl<R: AsyncRead + Unpin> SessionReader<R> {
    /// The next message. Not cancel-safe: a frame half read is lost, so
    /// run it in a task of its own rather than in a `select!`.
    ///
    /// # Errors
    /// The transport closed or failed, or a frame failed authentication
    /// (the session is then unusable).
    pub async fn recv(&mut self) -> Result<Message, SessionError> {
        let (body, tag) = frame::read_body(&mut self.r).await?;
        let seq = self.next;
        if !self.key.verify(seq, &body, &tag) {
            return Err(SessionError::Forged { seq });
        }
        let f: Frame = frame::parse_versioned(&body)?;
        if f.seq != seq {
            return Err(SessionError::Forged { seq });
        }
        self.next += 1;
        Ok(f.message)
    }
}

impl<W: AsyncWrite + Unpin> SessionWriter<W> {
    /// Send `message` as the next frame.
    ///
    /// # Errors
    /// The transport failed, or the message is too large.
    pub async fn send(&mut self, message: Message) -> Result<(), SessionError> {
        let f = Frame {
            version: PROTOCOL_VERSION,
            seq: self.next,
            message,
        };
        let body = serde_json::to_vec(&f).map_err(FrameError::Malformed)?;
        let tag = self.key.tag(f.seq, &body);
        frame::write_body(&mut self.w, &body, &tag).await?;
        self.next += 1;
        Ok(())
    }
}

fn split<S: AsyncRead + AsyncWrite>(
    stream: S,
    guest: GuestId,
    recv_key: SessionKey,
    send_key: SessionKey,
) -> Session<S> {
    let (r, w) = tokio::io::split(stream);
    Session {
        reader: SessionReader {
            r,
            key: recv_key,
            next: 1,
        },
        writer: SessionWriter {
            w,
            key: send_key,
            next: 1,
        },
        guest,
    }
}

const TO_HOST: &str = "guest->host";
const TO_GUEST: &str = "host->guest";

/// Open a session as guest `me` with `key` over `stream` (to the host
/// daemon). Bound it with a timeout: a silent peer is waited for.
///
/// # Errors
/// The host refused, did not prove it holds the key, or the transport
/// failed.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    me: &GuestId,
    key: &LinkKey,
) -> Result<Session<S>, SessionError> {
    let nonce_g = nonce();
    send_hs(
        &mut stream,
        &Handshake::ClientHello {
            version: PROTOCOL_VERSION,
            guest: me.name.clone(),
            cluster: me.cluster.clone(),
            nonce: hex::encode(nonce_g),
        },
    )
    .await?;
    let (nonce_h, proof_h) = match recv_hs(&mut stream).await? {
        Handshake::ServerHello { nonce, proof, .. } => (decode_nonce(&nonce)?, proof),
        Handshake::Refused { reason, .. } => return Err(SessionError::Refused(reason)),
        other => return Err(SessionError::Unexpected(other.name().into())),
    };
    if !proof_ok(key, "host", me, &nonce_g, &nonce_h, &proof_h) {
        return Err(SessionError::BadProof("host"));
    }
    let proof_g = proof(key, "guest", me, &nonce_g, &nonce_h);
    send_hs(
        &mut stream,
        &Handshake::ClientProof {
            version: PROTOCOL_VERSION,
            proof: hex::encode(proof_g),
        },
    )
    .await?;
    match recv_hs(&mut stream).await? {
        Handshake::Welcome { .. } => {}
        Handshake::Refused { reason, .. } => return Err(SessionError::Refused(reason)),
        other => return Err(SessionError::Unexpected(other.name().into())),
    }
    let to_host = SessionKey::derive(key, TO_HOST, &nonce_g, &nonce_h);
    let to_guest = SessionKey::derive(key, TO_GUEST, &nonce_g, &nonce_h);
    Ok(split(stream, me.clone(), to_guest, to_host))
}

/// Accept a session from a guest over `stream`: `key_of` gives the key of
/// a guest this host knows. Bound it with a timeout.
///
/// # Errors
/// An unknown guest, one that did not prove it holds its key (both are
/// told `refused`), or the transport failed.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    key_of: &(dyn Fn(&GuestId) -> Option<LinkKey> + Send + Sync),
) -> Result<Session<S>, SessionError> {
    let (id, nonce_g) = match recv_hs(&mut stream).await? {
        Handshake::ClientHello {
            guest,
            cluster,
            nonce,
            ..
        } => (
            GuestId {
                name: guest,
                cluster,
            },
            decode_nonce(&nonce)?,
        ),
        other => return Err(SessionError::Unexpected(other.name().into())),
    };
    let refuse = |reason: String| Handshake::Refused {
        version: PROTOCOL_VERSION,
        reason,
    };
    let Some(key) = key_of(&id) else {
        send_hs(
            &mut stream,
            &refuse(format!(
                "{id} is not a guest of this host's [[linkage.guests]]"
            )),
        )
        .await?;
        return Err(SessionError::UnknownGuest(id));
    };
    let nonce_h = nonce();
    let proof_h = proof(&key, "host", &id, &nonce_g, &nonce_h);
    send_hs(
        &mut stream,
        &Handshake::ServerHello {
            version: PROTOCOL_VERSION,
            nonce: hex::encode(nonce_h),
            proof: hex::encode(proof_h),
        },
    )
    .await?;
    let proof_g = match recv_hs(&mut stream).await? {
        Handshake::ClientProof { proof, .. } => proof,
        other => return Err(SessionError::Unexpected(other.name().into())),
    };
    if !proof_ok(&key, "guest", &id, &nonce_g, &nonce_h, &proof_g) {
        send_hs(
            &mut stream,
            &refuse("wrong linkage key for this guest".into()),
        )
        .await?;
        return Err(SessionError::BadProof("guest"));
    }
    send_hs(
        &mut stream,
        &Handshake::Welcome {
            version: PROTOCOL_VERSION,
        },
    )
    .await?;
    let to_host = SessionKey::derive(&key, TO_HOST, &nonce_g, &nonce_h);
    let to_guest = SessionKey::derive(&key, TO_GUEST, &nonce_g, &nonce_h);
    Ok(split(stream, id, to_host, to_guest))
}
