//! `guest-clusterd`: the daemon inside guests (or on physical servers). It
//! reports through the shared control API; application resources, monitors
//! and the linkage client are built on the shared engine as it lands.

pub mod disk_monitor;
pub mod drivers;
pub mod exec;
pub mod floating_ip;
pub mod mount;
pub mod net_monitors;
pub mod ocf;
pub mod process_monitor;
pub mod service;
pub mod service_monitors;
pub mod systemd;
#[cfg(test)]
mod testnet;
