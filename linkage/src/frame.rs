//! Framing: length-prefixed JSON with a version and a sequence number.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Message;

/// Major protocol version; a peer with another one is refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame body accepted, in bytes.
pub const MAX_FRAME: u32 = 64 * 1024;

/// One unit on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Increases by one per frame sent on a session.
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
    /// The body is not a frame.
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    /// The peer speaks another protocol version.
    #[error("peer speaks linkage protocol {0}, this side {PROTOCOL_VERSION}")]
    Version(u16),
}

/// Write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(frame).map_err(FrameError::Malformed)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame, refusing oversized, malformed and foreign-version ones.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u16,
    }
    let v: VersionOnly = serde_json::from_slice(&body).map_err(FrameError::Malformed)?;
    if v.version != PROTOCOL_VERSION {
        return Err(FrameError::Version(v.version));
    }
    serde_json::from_slice(&body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, message: Message) -> Frame {
        Frame {
            version: PROTOCOL_VERSION,
            seq,
            message,
        }
    }

    #[tokio::test]
    async fn frames_cross_a_stream_in_order() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let sent = vec![
            frame(1, Message::WhereAmI { request_id: 7 }),
            frame(
                2,
                Message::NicDown {
                    host_interface: "eno1".into(),
                    guest_macs: vec!["52:54:00:00:00:01".into()],
                },
            ),
            frame(
                3,
                Message::Fence {
                    request_id: 8,
                    peer: "web-2".into(),
                },
            ),
        ];
        for f in &sent {
            write_frame(&mut a, f)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for f in &sent {
            assert_eq!(
                &read_frame(&mut b).await.unwrap_or_else(|e| panic!("{e}")),
                f
            );
        }
    }

    #[tokio::test]
    async fn oversized_foreign_and_garbage_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&(MAX_FRAME + 1).to_be_bytes())
            .await
            .unwrap_or_default();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(FrameError::TooLarge(_))
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        let body = br#"{"version":2,"seq":1,"message":{"type":"host_isolated"}}"#;
        a.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap_or_default();
        a.write_all(body).await.unwrap_or_default();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(FrameError::Version(2))
        ));

        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&5u32.to_be_bytes()).await.unwrap_or_default();
        a.write_all(b"hello").await.unwrap_or_default();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(FrameError::Malformed(_))
        ));
    }
}
