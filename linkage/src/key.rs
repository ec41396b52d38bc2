//! A guest's linkage key and what is derived from it.
//!
//! Each guest has its own secret, in a file on the guest
//! (`linkage.key_file`) and on its host (`linkage.guests[].key_file`). The
//! handshake proves to each side that the other holds it, without sending
//! it, and derives one key per direction for the session, so that a frame
//! can be neither forged, changed, replayed nor reflected back to its
//! sender.

use std::path::Path;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Length of every tag and derived key.
pub(crate) const TAG_BYTES: usize = 32;

/// A guest's linkage secret.
#[derive(Clone)]
pub struct LinkKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// A key from secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
        }
    }

    /// Read a key file (the rules of [`conf::read_secret_file`]).
    ///
    /// # Errors
    /// Unreadable, readable by group or others, or too short.
    pub fn load(path: &Path) -> Result<Self, conf::SecretFileError> {
        conf::read_secret_file("linkage key", path).map(|s| Self::new(&s))
    }

    /// A key for `label` derived from `secret` (the hosts of a host
    /// cluster talk to each other with one derived from their cluster
    /// key), so the secret itself is used for nothing else.
    pub fn derive(secret: &[u8], label: &str) -> Self {
        Self::new(&mac_with(
            secret,
            &[b"kvmha-linkage/1 derived", label.as_bytes()],
        ))
    }

    /// HMAC-SHA256 of `parts` (each length-prefixed, so that no two lists
    /// of parts give the same input) under this secret.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        mac_with(&self.secret, parts)
    }
}

/// A key of one direction of one session.
#[derive(Clone)]
pub(crate) struct SessionKey([u8; TAG_BYTES]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    pub(crate) fn derive(key: &LinkKey, label: &str, client: &[u8], server: &[u8]) -> Self {
        Self(key.mac(&[b"kvmha-linkage/1 session", label.as_bytes(), client, server]))
    }

    pub(crate) fn tag(&self, seq: u64, body: &[u8]) -> [u8; TAG_BYTES] {
        mac_with(&self.0, &[&seq.to_be_bytes(), body])
    }

    pub(crate) fn verify(&self, seq: u64, body: &[u8], tag: &[u8]) -> bool {
        verify_with(&self.0, &[&seq.to_be_bytes(), body], tag)
    }
}

fn hmac_of(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this branch cannot be taken.
        HmacSha256::new_from_slice(&[0u8; TAG_BYTES]).unwrap_or_else(|_| unreachable!())
    });
    for p in parts {
        mac.update(&(p.len() as u64).to_be_bytes());
        mac.update(p);
    }
    mac
}

fn mac_with(secret: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
    hmac_of(secret, parts).finalize().into_bytes().into()
}

/// Constant-time comparison of `tag` with the MAC of `parts`.
pub(crate) fn verify_with(secret: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    hmac_of(secret, parts).verify_slice(tag).is_ok()
}

impl LinkKey {
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        verify_with(&self.secret, parts, tag)
    }
}

/// A fresh random nonce.
pub(crate) fn nonce() -> [u8; TAG_BYTES] {
    rand::random()
}
