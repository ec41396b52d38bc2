//! The event stream: every membership, quorum and fencing change as one
//! JSON object per line (`ts_ms`, `node`, `kind`, then details), appended
//! to `STATE_DIR/events.jsonl` and logged. Tests and `clusterctl` read it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An append-only JSON-lines event log.
#[derive(Debug)]
pub struct EventLog {
    node: String,
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl EventLog {
    /// Open (create or append to) `dir/events.jsonl` for `node`.
    pub fn open(dir: &Path, node: &str) -> std::io::Result<Self> {
        let path = dir.join("events.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            node: node.to_owned(),
            path,
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record one event. `details` must be a JSON object (others are
    /// stored under `details`). `ts_ms`, `node` and `kind` are the
    /// event's own: a detail of one of those names is kept as
    /// `detail_NAME` (and is a bug of its emitter).
    pub fn emit(&self, kind: &str, details: Value) {
        let line = Value::Object(record(now_ms(), &self.node, kind, details)).to_string();
        tracing::info!(target: "event", "{line}");
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write the event log");
        }
    }
}

/// The JSON object of one event.
fn record(ts_ms: u64, node: &str, kind: &str, details: Value) -> Map<String, Value> {
    const OWN: [&str; 3] = ["ts_ms", "node", "kind"];
    let mut obj = Map::new();
    obj.insert("ts_ms".into(), ts_ms.into());
    obj.insert("node".into(), node.into());
    obj.insert("kind".into(), kind.into());
    match details {
        Value::Object(m) => {
            for (k, v) in m {
                if OWN.contains(&k.as_str()) {
                    tracing::warn!(kind, detail = %k, "an event detail has the name of an event field; renamed");
                    obj.insert(format!("detail_{k}"), v);
                } else {
                    obj.insert(k, v);
                }
            }
        }
        Value::Null => {}
        other => {
            obj.insert("details".into(), other);
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_with_time_node_and_kind() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = EventLog::open(dir.path(), "n1").unwrap_or_else(|e| panic!("{e}"));
        log.emit("peer_lost", serde_json::json!({"peer": "n2"}));
        log.emit("quorum_lost", Value::Null);
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "peer_lost");
        assert_eq!(lines[0]["peer"], "n2");
        assert_eq!(lines[1]["node"], "n1");
        assert_eq!(lines[1]["kind"], "quorum_lost");
        assert!(
            lines[1]["ts_ms"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000_000)
        );
    }

    #[test]
    fn a_detail_never_hides_the_event_s_own_fields() {
        let e = record(
            5,
            "n0",
            "watchdog_armed",
            serde_json::json!({"kind": "none", "node": "n2", "ts_ms": 1, "lease_ms": 10}),
        );
        assert_eq!(e["kind"], "watchdog_armed");
        assert_eq!(e["node"], "n0");
        assert_eq!(e["ts_ms"], 5);
        assert_eq!(e["detail_kind"], "none");
        assert_eq!(e["detail_node"], "n2");
        assert_eq!(e["lease_ms"], 10);
    }
}
