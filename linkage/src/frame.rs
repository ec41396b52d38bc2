//! Framing: what crosses the stream.
//!
//! ```text
//! | length (u32, big-endian) | body: JSON, `length` bytes | tag: 32 bytes |
//! ```
//!
//! The body of a session frame is a [`Frame`] (protocol version, sequence
//! number, [`Message`]), and its tag is the HMAC-SHA256 of the sequence
//! number and the body under the sender's session key (see `session`).
//! The handshake's bodies carry their own proofs and a zero tag. Bodies
//! above [`MAX_FRAME`] bytes are refused before they are read, and a
//! body of another major version before it is parsed as a message.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Message;
use crate::key::TAG_BYTES;

/// Major protocol version; a peer with another one is refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame body accepted, in bytes.
pub const MAX_FRAME: u32 = 64 * 1024;

/// One message of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// 1 for the first frame a side sends in a session, then one more per
    /// frame.
    pub seq: u64,
    /// The message.
    pub message: Message,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The transport failed or closed.
    #[error("linkage transport")]
    Io(#[from] std::io::Error),
    /// The length prefix is above [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    /// The body is not what was expected.
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    /// The peer speaks another protocol version.
    #[error("peer speaks linkage protocol {0}, this side {PROTOCOL_VERSION}")]
    Version(u16),
}

/// Write one body and its tag.
pub(crate) async fn write_body<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
    tag: &[u8; TAG_BYTES],
) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(4 + body.len() + TAG_BYTES);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(tag);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Read one body and its tag, refusing an oversized one unread.
pub(crate) async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Vec<u8>, [u8; TAG_BYTES]), FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    let mut tag = [0u8; TAG_BYTES];
    r.read_exact(&mut tag).await?;
    Ok((body, tag))
}

/// Parse a body of type `T` whose JSON has a `version`: another major
/// version is refused before the rest is looked at.
pub(crate) fn parse_versioned<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u16,
    }
    let v: VersionOnly = serde_json::from_slice(body).map_err(FrameError::Malformed)?;
    if v.version != PROTOCOL_VERSION {
        return Err(FrameError::Version(v.version));
    }
    serde_json::from_slice(body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: [u8; TAG_BYTES] = [0; TAG_BYTES];

    #[tokio::test]
    async fn bodies_cross_a_stream_in_order_with_their_tags() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let frames = [
            Frame {
                version: PROTOCOL_VERSION,
                seq: 1,
                message: Message::WhereAmI { request_id: 7 },
            },
            Frame {
                version: PROTOCOL_VERSION,
                seq: 2,
                message: Message::Fence {
                    request_id: 8,
                    peer: "web-2".into(),
                },
            },
        ];
        for (i, f) in frames.iter().enumerate() {
            let body = serde_json::to_vec(f).unwrap_or_default();
            let tag = [u8::try_from(i).unwrap_or(0); TAG_BYTES];
            write_body(&mut a, &body, &tag)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for (i, f) in frames.iter().enumerate() {
            let (body, tag) = read_body(&mut b).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(tag, [u8::try_from(i).unwrap_or(0); TAG_BYTES]);
            let got: Frame = parse_versioned(&body).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&got, f);
        }
    }

    #[tokio::test]
    async fn oversized_foreign_and_garbage_bodies_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&(MAX_FRAME + 1).to_be_bytes())
            .await
            .unwrap_or_default();
        assert!(matches!(
            read_body(&mut b).await,
            Err(FrameError::TooLarge(_))
        ));

        let body = br#"{"version":2,"seq":1,"message":{"type":"host_isolated"}}"#;
        assert!(matches!(
            parse_versioned::<Frame>(body),
            Err(FrameError::Version(2))
        ));
        assert!(matches!(
            parse_versioned::<Frame>(b"hello"),
            Err(FrameError::Malformed(_))
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        write_body(&mut a, b"{}", &ZERO)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(a);
        let (body, _) = read_body(&mut b).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body, b"{}");
        assert!(matches!(read_body(&mut b).await, Err(FrameError::Io(_))));
    }
}
