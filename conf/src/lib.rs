//! The configuration model of the KVM HA cluster manager.
//!
//! One TOML file describes one cluster, host or guest, and is the same on
//! every node. [`load`] reads and validates it; every problem comes back as a
//! [`Diagnostic`] naming the file, line, column and dotted key path, and all
//! of them are reported in one run. [`json_schema`] describes the format for
//! editors and other tools.

mod diag;
mod duration;
mod endpoint;
mod load;
mod model;
mod reference;
mod secret;
mod validate;

pub use diag::{Diagnostic, Diagnostics};
pub use duration::{Duration, ParseDurationError};
pub use endpoint::{Endpoint, ParseEndpointError, VSOCK_CID_ANY, VSOCK_CID_HOST};
pub use load::{LoadError, load, load_str};
pub use model::*;
pub use reference::reference_markdown;
pub use secret::{MIN_SECRET_BYTES, SecretFileError, read_secret_file};

/// The most nodes one cluster may have.
pub const MAX_NODES: usize = 64;

/// The JSON schema of the configuration file.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Config);
    serde_json::to_value(&schema).unwrap_or_default()
}
