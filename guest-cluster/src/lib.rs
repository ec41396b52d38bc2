//! `guest-clusterd`: the daemon inside guests (or on physical servers). It
//! runs application resources and monitors on the shared engine, reports
//! through the shared control API, and keeps a linkage session to its host
//! daemon ([`host_link`]) when configured.

pub mod disk_monitor;
pub mod drivers;
pub mod exec;
pub mod floating_ip;
pub mod host_link;
pub mod mount;
pub mod net_monitors;
pub mod ocf;
pub mod process_monitor;
pub mod service;
pub mod service_monitors;
pub mod systemd;
#[cfg(test)]
mod testnet;
