//! What the host-cluster integration tests share: a simulated host (a
//! libvirt test-driver node file) and the head of a two-host
//! configuration.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::Path;

/// The namespace of the test driver's extensions in domain XML.
pub(crate) const TEST_NS: &str = "http://libvirt.org/schemas/domain/test/1.0";

/// Write a libvirt test-driver node file at `path`: one host of 16 cores
/// and 64 GiB running `domains` (domain XML, persistent as the test
/// driver loads them). Its `test://` URI.
pub(crate) fn test_node(path: &Path, domains: &str) -> String {
    std::fs::write(
        path,
        format!(
            "<node xmlns:test='{TEST_NS}'>\n\
             <cpu><mhz>2000</mhz><model>x86_64</model><active>16</active><nodes>1</nodes>\
             <sockets>1</sockets><cores>16</cores><threads>1</threads></cpu>\n\
             <memory>67108864</memory>\n{domains}</node>\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("test://{}", path.display())
}

/// The head of a host cluster `hosts` of `host-a` and `host-b` (one
/// heartbeat link, a ping target for the two-node tie-break), for
/// `concat!` with the rest of a test's configuration.
#[macro_export]
macro_rules! two_hosts {
    () => {
        r#"
[cluster]
name = "hosts"
kind = "host"
auth_key_file = "/nonexistent/key"

[heartbeat]
interval = "200ms"
timeout = "800ms"
links = [{ name = "lan" }]

[quorum]
ping_targets = ["192.0.2.1"]

[[nodes]]
name = "host-a"
links = { lan = ["192.0.2.11/24"] }

[[nodes]]
name = "host-b"
links = { lan = ["192.0.2.12/24"] }
"#
    };
}
