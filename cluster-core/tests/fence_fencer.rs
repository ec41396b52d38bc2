//! The retrying `Fencer`: retries with backoff until a device succeeds,
//! tries devices in order, waits the fence delay, stops on cancellation
//! (killing an agent in flight), and refuses a target no device can fence.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_core::fence::{
    AgentDevice, AgentOutput, Backoff, Device, FenceAttempt, FenceError, FenceFuture, Fencer,
    FencerError,
};

/// Write an executable `/bin/sh` script named `name` into `dir`.
///
/// A child `sh` writes the file: had this process opened it for writing,
/// another test thread forking at that moment would inherit the descriptor
/// and running the script could fail with "Text file busy" (ETXTBSY).
fn write_agent(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut writer = std::process::Command::new("/bin/sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    writer
        .stdin
        .take()
        .unwrap_or_else(|| panic!("no stdin"))
        .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let status = writer.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "writing {} failed", path.display());
    path
}

fn agent_device(agent: &Path, timeout: Duration) -> AgentDevice {
    let config = conf::FenceDevice {
        name: "script".to_owned(),
        targets: vec!["node2".to_owned()],
        timeout: timeout.into(),
        delay: conf::Duration::default(),
        kind: conf::FenceKind::Agent(conf::FenceAgent {
            agent: agent.to_string_lossy().into_owned(),
            params: BTreeMap::new(),
            plugs: BTreeMap::new(),
        }),
    };
    AgentDevice::from_config(&config).unwrap_or_else(|e| panic!("{e}"))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

/// An in-process device: succeeds or fails as told, and records when it
/// was called.
#[derive(Debug)]
struct Fake {
    name: &'static str,
    targets: Vec<&'static str>,
    delay: Duration,
    succeed: bool,
    calls: Arc<Mutex<Vec<(&'static str, Instant)>>>,
}

impl Fake {
    fn new(
        name: &'static str,
        succeed: bool,
        calls: &Arc<Mutex<Vec<(&'static str, Instant)>>>,
    ) -> Self {
        Self {
            name,
            targets: vec!["node2"],
            delay: Duration::ZERO,
            succeed,
            calls: Arc::clone(calls),
        }
    }
}

impl Device for Fake {
    fn name(&self) -> &str {
        self.name
    }

    fn can_fence(&self, target: &str) -> bool {
        self.targets.contains(&target)
    }

    fn delay(&self) -> Duration {
        self.delay
    }

    fn fence_off<'a>(&'a self, _target: &'a str) -> FenceFuture<'a> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap_or_else(|e| panic!("{e}"))
                .push((self.name, Instant::now()));
            if self.succeed {
                Ok(())
            } else {
                Err(FenceError::Failed {
                    device: self.name.to_owned(),
                    agent: PathBuf::from("/fake"),
                    target: "node2".to_owned(),
                    status: std::process::ExitStatus::from_raw(1 << 8),
                    output: Box::new(AgentOutput {
                        stdout: String::new(),
                        stderr: "fake failure".to_owned(),
                    }),
                })
            }
        })
    }
}

fn calls() -> Arc<Mutex<Vec<(&'static str, Instant)>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn names(calls: &Arc<Mutex<Vec<(&'static str, Instant)>>>) -> Vec<&'static str> {
    calls
        .lock()
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|(n, _)| *n)
        .collect()
}

/// Whether `pid` is a live (not zombie) `sleep` process.
fn sleep_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    comm == "sleep" && !matches!(state, Some('Z' | 'X'))
}

#[tokio::test]
async fn fence_fencer_retries_with_backoff_until_the_agent_succeeds() {
    let dir = tempdir();
    let counter = dir.path().join("count");
    let agent = write_agent(
        dir.path(),
        "fence_flaky",
        &format!(
            "cat > /dev/null\n\
             n=$(cat '{c}' 2>/dev/null || echo 0)\n\
             n=$((n + 1))\n\
             echo $n > '{c}'\n\
             if [ $n -lt 3 ]; then echo \"simulated failure $n\" >&2; exit 1; fi\n\
             exit 0",
            c = counter.display()
        ),
    );
    let backoff = Backoff {
        initial: Duration::from_millis(60),
        max: Duration::from_secs(1),
    };
    let fencer = Fencer::new(vec![Box::new(agent_device(
        &agent,
        Duration::from_secs(10),
    ))])
    .with_backoff(backoff);
    assert!(fencer.can_fence("node2"));

    let mut attempts: Vec<FenceAttempt> = Vec::new();
    let started = Instant::now();
    let done = fencer
        .fence("node2", std::future::pending(), |a| attempts.push(a))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = started.elapsed();

    assert_eq!(done.attempt, 3);
    assert_eq!(done.outcome, Ok(()));
    let summary: Vec<(u32, bool)> = attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.is_ok()))
        .collect();
    assert_eq!(summary, [(1, false), (2, false), (3, true)]);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!((a.target.as_str(), a.device.as_str()), ("node2", "script"));
        if let Err(why) = &a.outcome {
            assert!(
                why.contains(&format!("simulated failure {}", i + 1))
                    && why.contains("exit status: 1"),
                "{why}"
            );
        }
    }
    assert_eq!(attempts.last(), Some(&done));
    assert_eq!(
        std::fs::read_to_string(&counter)
            .map(|s| s.trim().to_owned())
            .ok(),
        Some("3".to_owned())
    );
    // Two failed rounds: 60 ms, then 120 ms.
    let waited = backoff.after_round(1) + backoff.after_round(2);
    assert_eq!(waited, Duration::from_millis(180));
    assert!(
        elapsed >= waited,
        "backoff not waited: {elapsed:?} < {waited:?}"
    );
}

#[tokio::test]
async fn fence_fencer_tries_capable_devices_in_order() {
    let log = calls();
    let mut other = Fake::new("other-node", true, &log);
    other.targets = vec!["node1"];
    let fencer = Fencer::new(vec![
        Box::new(other),
        Box::new(Fake::new("ipmi", false, &log)),
        Box::new(Fake::new("pdu", true, &log)),
    ]);
    let mut attempts = Vec::new();
    let done = fencer
        .fence("node2", std::future::pending(), |a| attempts.push(a))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.device, "pdu");
    assert_eq!(names(&log), ["ipmi", "pdu"]);
    let summary: Vec<(&str, u32, bool)> = attempts
        .iter()
        .map(|a| (a.device.as_str(), a.attempt, a.outcome.is_ok()))
        .collect();
    assert_eq!(summary, [("ipmi", 1, false), ("pdu", 2, true)]);
    let Err(why) = &attempts[0].outcome else {
        panic!("ipmi reported success");
    };
    assert!(why.contains("fake failure"), "{why}");
}

#[tokio::test]
async fn fence_fencer_waits_the_delay_before_the_first_attempt() {
    let log = calls();
    let mut dev = Fake::new("ipmi", true, &log);
    let delay = Duration::from_millis(300);
    dev.delay = delay;
    let fencer = Fencer::new(vec![Box::new(dev)]);
    let started = Instant::now();
    fencer
        .fence("node2", std::future::pending(), |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = log.lock().unwrap_or_else(|e| panic!("{e}"))[0].1;
    assert!(
        first.duration_since(started) >= delay,
        "first attempt after {:?}, delay is {delay:?}",
        first.duration_since(started)
    );
}

#[tokio::test]
async fn fence_fencer_cancellation_stops_the_retry_loop() {
    let log = calls();
    let fencer = Arc::new(
        Fencer::new(vec![Box::new(Fake::new("ipmi", false, &log))]).with_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(40),
        }),
    );
    let (cancel_tx, mut cancel_rx) = tokio::sync::watch::channel(false);
    let (report_tx, mut report_rx) = tokio::sync::mpsc::unbounded_channel();
    // Spawned: the fencing future is `Send`.
    let task = tokio::spawn({
        let fencer = Arc::clone(&fencer);
        async move {
            fencer
                .fence(
                    "node2",
                    async move {
                        let _ = cancel_rx.wait_for(|c| *c).await;
                    },
                    move |a| {
                        let _ = report_tx.send(a);
                    },
                )
                .await
        }
    });

    tokio::time::sleep(Duration::from_millis(250)).await;
    let cancelled_at = Instant::now();
    cancel_tx.send_replace(true);
    let result = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap_or_else(|e| panic!("the fencer did not stop on cancellation: {e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cancelled_at.elapsed() < Duration::from_millis(500));
    let Err(FencerError::Cancelled { target, attempts }) = result else {
        panic!("expected cancellation, got {result:?}");
    };
    assert_eq!(target, "node2");
    assert!(attempts >= 3, "only {attempts} attempts in 250 ms");

    let mut reported = Vec::new();
    while let Ok(a) = report_rx.try_recv() {
        reported.push(a);
    }
    assert_eq!(
        reported.len(),
        usize::try_from(attempts).unwrap_or(usize::MAX)
    );
    assert!(reported.iter().all(|a| a.outcome.is_err()));
    let before = names(&log).len();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        names(&log).len(),
        before,
        "attempts continued after cancellation"
    );
}

#[tokio::test]
async fn fence_fencer_cancellation_during_the_delay() {
    let log = calls();
    let mut dev = Fake::new("ipmi", true, &log);
    dev.delay = Duration::from_secs(30);
    let fencer = Fencer::new(vec![Box::new(dev)]);
    let started = Instant::now();
    let result = fencer
        .fence(
            "node2",
            tokio::time::sleep(Duration::from_millis(50)),
            |_| {},
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        result,
        Err(FencerError::Cancelled {
            target: "node2".to_owned(),
            attempts: 0
        })
    );
    assert!(names(&log).is_empty(), "attempted before the delay ended");
}

#[tokio::test]
async fn fence_fencer_cancellation_kills_an_agent_in_flight() {
    let dir = tempdir();
    let bg_pid = dir.path().join("bg.pid");
    let agent = write_agent(
        dir.path(),
        "fence_hang",
        &format!("sleep 100 &\necho $! > '{}'\nsleep 100", bg_pid.display()),
    );
    let fencer = Fencer::new(vec![Box::new(agent_device(
        &agent,
        Duration::from_secs(60),
    ))]);
    let mut reports = 0;
    let started = Instant::now();
    let result = fencer
        .fence(
            "node2",
            tokio::time::sleep(Duration::from_millis(400)),
            |_| reports += 1,
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(result, Err(FencerError::Cancelled { attempts: 0, .. })),
        "{result:?}"
    );
    assert_eq!(reports, 0, "an interrupted attempt was reported");

    let pid: i32 = std::fs::read_to_string(&bg_pid)
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(3);
    while sleep_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !sleep_alive(pid),
        "the agent's background child {pid} survived the cancellation"
    );
}

#[tokio::test]
async fn fence_fencer_without_a_capable_device_fails_at_once() {
    let log = calls();
    let mut dev = Fake::new("ipmi", true, &log);
    dev.targets = vec!["node1"];
    for fencer in [Fencer::new(vec![Box::new(dev)]), Fencer::new(Vec::new())] {
        assert!(!fencer.can_fence("node2"));
        let mut reports = 0;
        let result = tokio::time::timeout(
            Duration::from_millis(100),
            fencer.fence("node2", std::future::pending(), |_| reports += 1),
        )
        .await
        .unwrap_or_else(|_| panic!("not immediate"));
        assert_eq!(
            result,
            Err(FencerError::NoDevice {
                target: "node2".to_owned()
            })
        );
        assert_eq!(reports, 0);
    }
    assert!(names(&log).is_empty());
}
