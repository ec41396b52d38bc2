//! The host<->guest channel.
//!
//! A host daemon and each guest daemon on it keep one session over a Unix
//! socket or TCP (vsock is refused until it can be tested). A session
//! opens with a handshake in which the guest and the host each prove they
//! hold the guest's own linkage key ([`LinkKey`]); every frame after it
//! carries a [`Frame`] (protocol version, sequence number, one
//! [`Message`]) tagged with a key of its direction, so a frame forged,
//! changed, replayed or reflected ends the session (see [`session`]).
//!
//! - [`client::HostLink`]: the guest's side, opened again whenever it
//!   breaks; requests (`Fence`, `WhereAmI`) and their answers, liveness
//!   every second, and what the host pushes.
//! - [`server::LinkServer`]: the host's side; authenticated guests'
//!   messages go to a [`server::GuestHandler`]; status lists the sessions.

pub mod client;
mod frame;
mod key;
mod message;
pub mod server;
pub mod session;
pub mod transport;

pub use client::{FenceAnswer, HostLink, LIVENESS_EVERY, LinkError, LinkState, request_once};
pub use frame::{Frame, FrameError, MAX_FRAME, PROTOCOL_VERSION};
pub use key::LinkKey;
pub use message::Message;
pub use server::{GuestHandler, GuestSession, LinkServer};
pub use session::{GuestId, SessionError};
pub use transport::{BoxStream, Listener, TransportError};
