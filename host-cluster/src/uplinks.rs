//! The host NICs behind the bridges guests are on (a node's `uplinks`),
//! and the guests' interfaces on each bridge.
//!
//! The NICs are read from `/sys/class/net` every [`POLL`]: a NIC is up
//! when its `operstate` is `up` (or `unknown` with carrier, as some
//! drivers report). A bridge is down when every one of its NICs is.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

/// How often the NICs are read.
pub const POLL: Duration = Duration::from_millis(100);

/// One bridge's NICs and whether each is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// Its NICs, with whether each is up.
    pub nics: Vec<(String, bool)>,
}

impl Bridge {
    /// Every NIC is down: guests on the bridge are cut off.
    pub fn down(&self) -> bool {
        self.nics.iter().all(|(_, up)| !up)
    }

    /// The NICs, in words (`eno1, eno2`).
    pub fn names(&self) -> String {
        self.nics
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether NIC `name` is up, by `sys` (normally `/sys/class/net`).
fn nic_up(sys: &Path, name: &str) -> bool {
    let read = |f: &str| std::fs::read_to_string(sys.join(name).join(f)).unwrap_or_default();
    match read("operstate").trim() {
        "up" => true,
        "unknown" => read("carrier").trim() == "1",
        _ => false,
    }
}

fn read_all(sys: &Path, uplinks: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Bridge> {
    uplinks
        .iter()
        .map(|(bridge, nics)| {
            (
                bridge.clone(),
                Bridge {
                    nics: nics.iter().map(|n| (n.clone(), nic_up(sys, n))).collect(),
                },
            )
        })
        .collect()
}

/// Watch `uplinks` (bridge -> NICs); the receiver always holds the
/// newest state and changes only when some NIC changes.
pub fn watch(uplinks: BTreeMap<String, Vec<String>>) -> watch::Receiver<BTreeMap<String, Bridge>> {
    let sys = Path::new("/sys/class/net");
    let (tx, rx) = watch::channel(read_all(sys, &uplinks));
    if uplinks.is_empty() {
        return rx;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let now = read_all(sys, &uplinks);
            let changed = tx.send_if_modified(|old| {
                if *old == now {
                    false
                } else {
                    for (bridge, b) in &now {
                        if old.get(bridge).map(Bridge::down) != Some(b.down()) {
                            tracing::warn!(bridge, nics = %b.names(), down = b.down(), "uplink state changed");
                        }
                    }
                    *old = now;
                    true
                }
            });
            if tx.is_closed() {
                return;
            }
            let _ = changed;
        }
    });
    rx
}

/// The interfaces of a domain XML: (MAC in lower case, bridge) for each
/// `<interface>` with a `<source bridge=...>`.
pub fn bridged_interfaces(xml: &str) -> Vec<(String, String)> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return Vec::new();
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("interface"))
        .filter_map(|i| {
            let child = |tag: &str| i.children().find(|c| c.has_tag_name(tag));
            let mac = child("mac")?.attribute("address")?.to_ascii_lowercase();
            let bridge = child("source")?.attribute("bridge")?.to_owned();
            Some((mac, bridge))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nic_is_up_by_its_operstate_or_its_carrier() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let nic = |name: &str, oper: &str, carrier: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(d.join("operstate"), format!("{oper}\n")).unwrap_or_default();
            std::fs::write(d.join("carrier"), format!("{carrier}\n")).unwrap_or_default();
        };
        nic("eno1", "up", "1");
        nic("eno2", "down", "0");
        nic("eno3", "unknown", "1");
        nic("eno4", "lowerlayerdown", "0");
        let uplinks = BTreeMap::from([
            ("br0".to_owned(), vec!["eno1".to_owned(), "eno2".to_owned()]),
            ("br1".to_owned(), vec!["eno3".to_owned()]),
            (
                "br2".to_owned(),
                vec!["eno4".to_owned(), "missing".to_owned()],
            ),
        ]);
        let state = read_all(dir.path(), &uplinks);
        assert!(!state["br0"].down(), "one of two NICs up");
        assert!(!state["br1"].down());
        assert!(state["br2"].down(), "lower layer down and a missing NIC");
    }

    #[test]
    fn a_domain_s_bridged_interfaces_are_found() {
        let xml = "<domain><devices>\
            <interface type='bridge'><mac address='52:54:00:AA:00:01'/><source bridge='vmbr0'/></interface>\
            <interface type='network'><mac address='52:54:00:aa:00:02'/><source network='default'/></interface>\
            </devices></domain>";
        assert_eq!(
            bridged_interfaces(xml),
            [("52:54:00:aa:00:01".to_owned(), "vmbr0".to_owned())]
        );
    }
}
