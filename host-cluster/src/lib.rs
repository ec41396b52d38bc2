//! `host-clusterd`: the daemon on each KVM host. It reaches its hypervisor
//! through libvirt ([`hypervisor`]) and reports through the shared control
//! API; VM failover, host NIC watching and the maintenance coordinator are
//! built on the shared engine as it lands.

pub mod drivers;
pub mod guest_fence;
pub mod hypervisor;
pub mod libvirt_events;
pub mod linkage_service;
pub mod service;
pub mod uplinks;
pub mod vm;
