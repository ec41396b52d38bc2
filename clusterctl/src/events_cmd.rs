//! `clusterctl events`: the daemon's event log, once or followed.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use cluster_core::api::{Request, Response};
use serde_json::Value;

use crate::target::{Client, Target, unexpected};

/// How often `--follow` asks for newer events.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// What `clusterctl events` shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Query {
    /// Events at or after this time (ms since the epoch).
    pub(crate) since_ms: Option<u64>,
    /// The last this many.
    pub(crate) limit: Option<usize>,
    /// Keep asking for newer events until interrupted.
    pub(crate) follow: bool,
}

pub(crate) fn run(target: &Target, json: bool, query: Query) -> anyhow::Result<ExitCode> {
    let client = Client::new(target)?;
    // With nothing shown and no `--since`, follow from now (not the log's start).
    let started = cluster_core::events::now_ms();
    let fetch = |since_ms, limit| -> anyhow::Result<Vec<Value>> {
        match client.call(&Request::Events { since_ms, limit })? {
            Response::Events(events) => Ok(events),
            other => Err(unexpected(&other)),
        }
    };
    let events = fetch(query.since_ms, query.limit)?;
    let mut last = Shown::default();
    print(&events, json, &mut last)?;
    if !query.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut failing = false;
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        // Ask from the time of the newest event shown (events of the same
        // millisecond may have arrived since) and skip what was shown.
        match fetch(last.ts_ms.or(query.since_ms).or(Some(started)), None) {
            Ok(events) => {
                if failing {
                    eprintln!("clusterctl: the daemon answers again");
                    failing = false;
                }
                let new: Vec<Value> = events.into_iter().filter(|e| !last.contains(e)).collect();
                print(&new, json, &mut last)?;
            }
            Err(e) => {
                // A daemon restart should not end the watch: say so once.
                if !failing {
                    eprintln!("clusterctl: {e:#} (retrying)");
                    failing = true;
                }
            }
        }
    }
}

/// The newest time shown and the events shown at that time.
#[derive(Debug, Default)]
struct Shown {
    ts_ms: Option<u64>,
    at_ts: HashSet<String>,
}

impl Shown {
    fn contains(&self, event: &Value) -> bool {
        let ts = event["ts_ms"].as_u64();
        ts.is_some_and(|t| self.ts_ms.is_some_and(|last| t < last))
            || ts == self.ts_ms && self.at_ts.contains(&event.to_string())
    }

    fn add(&mut self, event: &Value) {
        let Some(ts) = event["ts_ms"].as_u64() else {
            return;
        };
        if self.ts_ms != Some(ts) {
            self.ts_ms = Some(ts);
            self.at_ts.clear();
        }
        self.at_ts.insert(event.to_string());
    }
}

fn print(events: &[Value], json: bool, shown: &mut Shown) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for e in events {
        if json {
            writeln!(out, "{e}")?;
        } else {
            writeln!(out, "{}", render(e))?;
        }
        shown.add(e);
    }
    out.flush()?;
    Ok(())
}

/// One event as a line: local time, node, kind, then the other fields as
/// `key=value`.
pub(crate) fn render(event: &Value) -> String {
    let time = event["ts_ms"]
        .as_u64()
        .map_or_else(|| "--:--:--.---".to_owned(), local_time);
    let text = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
    let mut line = format!("{time} {} {}", text("node"), text("kind"));
    if let Value::Object(fields) = event {
        for (key, value) in fields {
            if matches!(key.as_str(), "ts_ms" | "node" | "kind") {
                continue;
            }
            let _ = write!(line, " {key}={}", value_text(value));
        }
    }
    line
}

/// A field's value: strings bare unless they need quotes, the rest as JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(s)
            if !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=') =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// `HH:MM:SS.mmm` of `ts_ms` (ms since the epoch) in the local time zone.
pub(crate) fn local_time(ts_ms: u64) -> String {
    static ZONE: OnceLock<jiff::tz::TimeZone> = OnceLock::new();
    let zone = ZONE.get_or_init(jiff::tz::TimeZone::system);
    let Ok(ts) = i64::try_from(ts_ms)
        .map_err(|_| ())
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).map_err(|_| ()))
    else {
        return format!("@{ts_ms}");
    };
    let t = zone.to_datetime(ts);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_is_one_line_of_time_node_kind_and_fields() {
        let e = json!({
            "ts_ms": 1_700_000_000_123_u64,
            "node": "n0",
            "kind": "peer_lost",
            "peer": "n2",
            "silent_ms": 512,
            "reason": "all links silent",
            "links": ["l0", "l1"],
        });
        let line = render(&e);
        let (time, rest) = line.split_once(' ').unwrap_or_default();
        assert_eq!(time.len(), 12, "{line}");
        assert!(time.ends_with(".123"), "{line}");
        assert_eq!(
            rest,
            r#"n0 peer_lost links=["l0","l1"] peer=n2 reason="all links silent" silent_ms=512"#
        );
        assert_eq!(render(&json!({"kind": "x"})), "--:--:--.--- - x");
    }

    #[test]
    fn follow_skips_what_it_has_shown() {
        let mut shown = Shown::default();
        let a = json!({"ts_ms": 10, "kind": "a"});
        let b = json!({"ts_ms": 20, "kind": "b"});
        let c = json!({"ts_ms": 20, "kind": "c"});
        shown.add(&a);
        shown.add(&b);
        assert!(shown.contains(&a) && shown.contains(&b));
        assert!(!shown.contains(&c));
        shown.add(&c);
        assert!(shown.contains(&b) && shown.contains(&c));
        assert!(!shown.contains(&json!({"ts_ms": 21, "kind": "d"})));
    }
}
