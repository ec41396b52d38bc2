//! The host<->guest channel.
//!
//! A host daemon and each guest daemon on it keep one session over vsock, a
//! Unix socket or TCP. Everything on it is a [`Frame`]: a protocol version,
//! a sequence number and one [`Message`], written as a 4-byte big-endian
//! length followed by JSON. Frames above [`MAX_FRAME`] bytes or of another
//! major version are refused before they are parsed.
//!
//! Per-guest authentication of the session and the transports themselves
//! come with the linkage work; the message set is fixed here so both daemons
//! and the docs agree on it.

mod frame;
mod message;

pub use frame::{Frame, FrameError, MAX_FRAME, PROTOCOL_VERSION, read_frame, write_frame};
pub use message::Message;
