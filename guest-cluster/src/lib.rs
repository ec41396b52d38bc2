//! `guest-clusterd`: the daemon inside guests (or on physical servers). It
//! reports through the shared control API; application resources, monitors
//! and the linkage client are built on the shared engine as it lands.

pub mod drivers;
pub mod exec;
pub mod service;
