//! The heartbeat datagram: a fixed header, the sender's view as JSON, and an
//! HMAC-SHA256 tag over both.
//!
//! ```text
//! 0      4    5     6         8             16      24        26        26+len    +32
//! | KVHB | ver | link | sender | incarnation | seq | len | view (JSON) | HMAC tag |
//! ```
//!
//! Integers are big-endian. The tag covers the cluster name (not sent), the
//! header and the view, so a datagram of another cluster sharing the key, or
//! one whose link or sequence number was changed, fails authentication.
//! Replay and staleness are judged by the receiver from `incarnation` and
//! `seq` (see `membership::tracker`).

use std::path::Path;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"KVHB";
const VERSION: u8 = 1;
const HEADER: usize = 26;
const TAG: usize = 32;
/// Largest datagram sent or accepted. Views carry the newest placement,
/// which grows with the number of groups; IP fragments it on the wire.
pub const MAX_DATAGRAM: usize = 60_000;

/// What a node tells its peers in every heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Groups the sender runs, with their state.
    #[serde(default)]
    pub groups: Vec<GroupView>,
    /// The sender is in maintenance.
    #[serde(default)]
    pub maintenance: bool,
    /// Hash of the sender's configuration file.
    pub config_generation: u64,
    /// Newest placement epoch the sender has seen.
    #[serde(default)]
    pub epoch: u64,
    /// Indexes (in the configuration's node list) of the peers the sender
    /// currently sees alive.
    #[serde(default)]
    pub sees: Vec<u16>,
    /// The sender holds quorum.
    #[serde(default)]
    pub quorate: bool,
    /// The sender's engine: its groups, newest placement and pending
    /// requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::node::EngineView>,
}

/// One group in a [`View`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// Group name.
    pub name: String,
    /// Its state on the sender (`running`, `starting`, `stopping`, `failed`).
    pub state: String,
}

/// A decoded, authenticated heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Link index (in `heartbeat.links`) the sender sent it on.
    pub link: u8,
    /// Sender's index in the configuration's node list.
    pub sender: u16,
    /// Sender's incarnation: grows on every daemon start.
    pub incarnation: u64,
    /// Sender's sequence number: grows on every heartbeat round.
    pub seq: u64,
    /// Sender's view.
    pub view: View,
}

/// Why a datagram was dropped before it reached membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Too short, wrong magic or version, bad length or unreadable view.
    /// Carries the claimed sender when the header was readable.
    #[error("malformed heartbeat")]
    Malformed(Option<u16>),
    /// The tag does not match: wrong key, other cluster, or tampering.
    #[error("heartbeat fails authentication")]
    Forged(u16),
}

/// The cluster's heartbeat key, read from `cluster.auth_key_file`.
#[derive(Clone)]
pub struct ClusterKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why the key file was refused.
pub type KeyError = conf::SecretFileError;

impl ClusterKey {
    /// A key from secret bytes, bound to `cluster` (its name is part of
    /// every tag).
    pub fn new(cluster: &str, secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| {
            // HMAC accepts keys of any length; this branch cannot be taken.
            HmacSha256::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable!())
        });
        mac.update(&(cluster.len() as u32).to_be_bytes());
        mac.update(cluster.as_bytes());
        Self { mac }
    }

    /// Read the key file (mode 0600 or stricter, at least 16 bytes once
    /// surrounding whitespace is trimmed).
    pub fn load(cluster: &str, path: &Path) -> Result<Self, KeyError> {
        let secret = conf::read_secret_file("cluster key", path)?;
        Ok(Self::new(cluster, &secret))
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG] {
        let mut mac = self.mac.clone();
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(bytes);
        mac.verify_slice(tag).is_ok()
    }
}

/// Encode and sign a heartbeat. Fails only if the view is too large.
pub fn encode(key: &ClusterKey, hb: &Heartbeat) -> Option<Vec<u8>> {
    let view = serde_json::to_vec(&hb.view).ok()?;
    let len = u16::try_from(view.len()).ok()?;
    if HEADER + view.len() + TAG > MAX_DATAGRAM {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER + view.len() + TAG);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(hb.link);
    out.extend_from_slice(&hb.sender.to_be_bytes());
    out.extend_from_slice(&hb.incarnation.to_be_bytes());
    out.extend_from_slice(&hb.seq.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&view);
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    Some(out)
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The authenticated header of a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Link index (in `heartbeat.links`) the sender sent it on.
    pub link: u8,
    /// Sender's index in the configuration's node list.
    pub sender: u16,
    /// Sender's incarnation: grows on every daemon start.
    pub incarnation: u64,
    /// Sender's sequence number: grows on every heartbeat round.
    pub seq: u64,
}

/// An authenticated datagram whose view has not been parsed yet: a
/// receiver that already holds a view with these exact bytes need not
/// parse it again (the common case: views change rarely, beats are sent
/// several times a second to every peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The header.
    pub header: Header,
    /// The view, as JSON bytes covered by the tag.
    pub view: &'a [u8],
}

impl Opened<'_> {
    /// Parse the view.
    pub fn parse_view(&self) -> Result<View, DecodeError> {
        serde_json::from_slice(self.view)
            .map_err(|_| DecodeError::Malformed(Some(self.header.sender)))
    }
}

/// Authenticate a datagram and read its header, leaving the view unparsed.
pub fn open<'a>(key: &ClusterKey, buf: &'a [u8]) -> Result<Opened<'a>, DecodeError> {
    if buf.len() < HEADER + TAG || &buf[..4] != MAGIC || buf[4] != VERSION {
        return Err(DecodeError::Malformed(None));
    }
    let sender = be_u16(buf, 6).ok_or(DecodeError::Malformed(None))?;
    let malformed = DecodeError::Malformed(Some(sender));
    let len = usize::from(be_u16(buf, 24).ok_or(malformed)?);
    if buf.len() != HEADER + len + TAG {
        return Err(malformed);
    }
    let (signed, tag) = buf.split_at(HEADER + len);
    if !key.verify(signed, tag) {
        return Err(DecodeError::Forged(sender));
    }
    Ok(Opened {
        header: Header {
            link: buf[5],
            sender,
            incarnation: be_u64(buf, 8).ok_or(malformed)?,
            seq: be_u64(buf, 16).ok_or(malformed)?,
        },
        view: &signed[HEADER..],
    })
}

/// Authenticate and decode a datagram.
pub fn decode(key: &ClusterKey, buf: &[u8]) -> Result<Heartbeat, DecodeError> {
    let opened = open(key, buf)?;
    let Header {
        link,
        sender,
        incarnation,
        seq,
    } = opened.header;
    Ok(Heartbeat {
        link,
        sender,
        incarnation,
        seq,
        view: opened.parse_view()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb() -> Heartbeat {
        Heartbeat {
            link: 1,
            sender: 2,
            incarnation: 1_700_000_000_000,
            seq: 42,
            view: View {
                groups: vec![GroupView {
                    name: "web".into(),
                    state: "running".into(),
                }],
                config_generation: 7,
                sees: vec![0, 1],
                ..View::default()
            },
        }
    }

    #[test]
    fn round_trips() {
        let key = ClusterKey::new("c", b"0123456789abcdef");
        let bytes = encode(&key, &hb()).unwrap_or_default();
        assert_eq!(decode(&key, &bytes), Ok(hb()));
    }

    #[test]
    fn any_flipped_bit_is_forged_or_malformed() {
        let key = ClusterKey::new("c", b"0123456789abcdef");
        let bytes = encode(&key, &hb()).unwrap_or_default();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                decode(&key, &b).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn other_key_or_cluster_is_forged() {
        let bytes = encode(&ClusterKey::new("c", b"0123456789abcdef"), &hb()).unwrap_or_default();
        assert_eq!(
            decode(&ClusterKey::new("c", b"fedcba9876543210"), &bytes),
            Err(DecodeError::Forged(2))
        );
        assert_eq!(
            decode(&ClusterKey::new("other", b"0123456789abcdef"), &bytes),
            Err(DecodeError::Forged(2))
        );
    }

    #[test]
    fn truncated_and_garbage_are_malformed() {
        let key = ClusterKey::new("c", b"0123456789abcdef");
        let bytes = encode(&key, &hb()).unwrap_or_default();
        for cut in [0, 3, 10, HEADER, bytes.len() - 1] {
            assert!(
                matches!(decode(&key, &bytes[..cut]), Err(DecodeError::Malformed(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            decode(&key, b"GET / HTTP/1.1\r\n\r\n"),
            Err(DecodeError::Malformed(None))
        ));
    }

    #[test]
    fn key_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("k");
        std::fs::write(&path, "0123456789abcdef\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            ClusterKey::load("c", &path),
            Err(KeyError::Mode { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(ClusterKey::load("c", &path).is_ok());
        std::fs::write(&path, "short").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            ClusterKey::load("c", &path),
            Err(KeyError::Short { .. })
        ));
    }
}
