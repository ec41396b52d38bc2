//! The OCF driver against a small shell agent of our own, in a temporary
//! OCF root: the environment contract, exit codes, timeouts. The tests
//! against Debian's agents are in `tests/ocf_agents.rs`.

use super::*;

use std::os::unix::fs::PermissionsExt;

use cluster_core::resource::StartReason;
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

/// The agent: logs each call's OCF environment to `$dir/env.<action>` and
/// the action to `$dir/calls`; `$dir/rc.<action>` (and
/// `$dir/reason.<action>`) force an exit code (and exit reason);
/// `$dir/hang.<action>` makes it hang with a grandchild. Otherwise it acts
/// like `Dummy`, with its flag in `HA_RSCTMP`.
const AGENT: &str = r#"#!/bin/sh
dir=$OCF_RESKEY_dir
action=$1
if [ "$action" = meta-data ]; then
    cat <<'END'
<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="agent" version="1.0">
<actions>
<action name="start" timeout="7s" />
<action name="stop"  timeout="2min" />
<action name="monitor" timeout="20" interval="10s" depth="0" />
<action name="meta-data" timeout="5s" />
</actions>
</resource-agent>
END
    exit 0
fi
env | grep -E '^(OCF_|HA_RSCTMP=|__OCF_ACTION=)' | sort > "$dir/env.$action"
echo "$action" >> "$dir/calls"
if [ -f "$dir/hang.$action" ]; then
    echo $$ > "$dir/leader.pid"
    sleep 100 &
    echo $! > "$dir/grandchild.pid"
    wait
fi
if [ -f "$dir/rc.$action" ]; then
    echo "some log line" >&2
    if [ -f "$dir/reason.$action" ]; then
        echo "ocf-exit-reason:$(cat "$dir/reason.$action")" >&2
    fi
    exit "$(cat "$dir/rc.$action")"
fi
flag="$HA_RSCTMP/$OCF_RESOURCE_INSTANCE.running"
case $action in
start) touch "$flag" ;;
stop) rm -f "$flag" ;;
monitor) [ -f "$flag" ] || exit 7 ;;
validate-all) [ -n "$OCF_RESKEY_dir" ] || exit 6 ;;
*) exit 3 ;;
esac
exit 0
"#;

struct Fixture {
    /// The OCF root, the agent's scratch directory and HA_RSCTMP.
    root: tempfile::TempDir,
    rsctmp: Arc<RscTmp>,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let provider = root.path().join("ocf/resource.d/test");
        std::fs::create_dir_all(&provider).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(root.path().join("scratch")).unwrap_or_else(|e| panic!("{e}"));
        let agent = provider.join("agent");
        std::fs::write(&agent, AGENT).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let rsctmp = Arc::new(RscTmp::new(root.path().join("rsctmp")));
        Self { root, rsctmp }
    }

    fn scratch(&self) -> PathBuf {
        self.root.path().join("scratch")
    }

    fn config(&self) -> conf::OcfResource {
        let mut params = BTreeMap::new();
        params.insert("dir".to_owned(), self.scratch().display().to_string());
        params.insert("extra".to_owned(), "a value with spaces".to_owned());
        // The contract's own variables win over a parameter of that name.
        params.insert("CRM_meta_timeout".to_owned(), "1".to_owned());
        conf::OcfResource {
            agent: "test:agent".into(),
            ocf_root: self.root.path().join("ocf"),
            params,
        }
    }

    fn driver(&self) -> OcfDriver {
        OcfDriver::new(&self.config(), self.rsctmp.clone())
    }

    fn monitor(&self, depth: u32) -> OcfMonitor {
        let monitor = conf::Monitor {
            name: "agent-health".into(),
            interval: conf::Duration::from_millis(2500),
            timeout: conf::Duration::from_millis(5000),
            start_delay: conf::Duration::from_millis(0),
            while_active: true,
            resource: None,
            recovery: conf::Recovery::default(),
            kind: conf::MonitorKind::Ocf(conf::OcfMonitor { depth }),
        };
        OcfMonitor::new(
            "web",
            "node-a",
            &monitor,
            depth,
            Some(("app", &self.config())),
            self.rsctmp.clone(),
        )
    }

    /// Make `action` exit with `rc` (and `reason`).
    fn force(&self, action: &str, rc: i32, reason: Option<&str>) {
        let dir = self.scratch();
        std::fs::write(dir.join(format!("rc.{action}")), rc.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let reason_file = dir.join(format!("reason.{action}"));
        match reason {
            Some(r) => std::fs::write(reason_file, r).unwrap_or_else(|e| panic!("{e}")),
            None => {
                let _ = std::fs::remove_file(reason_file);
            }
        }
    }

    fn hang(&self, action: &str) {
        std::fs::write(self.scratch().join(format!("hang.{action}")), "")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The environment the agent saw for its last `action`.
    fn env_of(&self, action: &str) -> BTreeMap<String, String> {
        let path = self.scratch().join(format!("env.{action}"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.scratch().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.scratch().join("calls"));
    }
}

fn ctx(timeout: Duration) -> ActionContext {
    ActionContext {
        group: "web".into(),
        resource: "app".into(),
        node: "node-a".into(),
        reason: StartReason::Start,
        previous_owner: None,
        previous_owner_fenced: false,
        timeout,
    }
}

fn ms(env: &BTreeMap<String, String>, key: &str) -> u64 {
    env.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing or not a number in {env:?}"))
}

#[tokio::test]
async fn the_agent_sees_the_ocf_environment() {
    let f = Fixture::new();
    let d = f.driver();
    assert_eq!(
        d.start(&ctx(Duration::from_secs(5))).await,
        ActionOutcome::Ok
    );
    assert_eq!(
        f.calls(),
        ["validate-all", "start"],
        "meta-data is not logged"
    );

    let env = f.env_of("start");
    let rsctmp = f.rsctmp.path().display().to_string();
    let expected = [
        ("OCF_ROOT", f.root.path().join("ocf").display().to_string()),
        ("OCF_RA_VERSION_MAJOR", "1".into()),
        ("OCF_RA_VERSION_MINOR", "1".into()),
        ("OCF_RESOURCE_INSTANCE", "app".into()),
        ("OCF_RESOURCE_TYPE", "agent".into()),
        ("OCF_RESOURCE_PROVIDER", "test".into()),
        ("OCF_RESKEY_dir", f.scratch().display().to_string()),
        ("OCF_RESKEY_extra", "a value with spaces".into()),
        ("OCF_RESKEY_CRM_meta_interval", "0".into()),
        ("OCF_RESKEY_CRM_meta_on_node", "node-a".into()),
        ("HA_RSCTMP", rsctmp.clone()),
        ("__OCF_ACTION", "start".into()),
    ];
    for (key, value) in &expected {
        assert_eq!(env.get(*key), Some(value), "{key} in {env:?}");
    }
    assert!(!env.contains_key("OCF_CHECK_LEVEL"), "{env:?}");
    // The start's time covers meta-data and validate-all: the agent is
    // told what is left of the 5 s.
    let timeout = ms(&env, "OCF_RESKEY_CRM_meta_timeout");
    assert!((3000..=5000).contains(&timeout), "{timeout}");
    assert_eq!(
        f.env_of("validate-all")
            .get("__OCF_ACTION")
            .map(String::as_str),
        Some("validate-all")
    );
    assert!(
        f.rsctmp.path().join("app.running").exists(),
        "the agent's flag is in HA_RSCTMP"
    );

    // validate-all (and meta-data) run once: before the first start.
    f.clear_calls();
    assert_eq!(
        d.start(&ctx(Duration::from_secs(5))).await,
        ActionOutcome::Ok
    );
    assert_eq!(f.calls(), ["start"]);

    // A probe: monitor at depth 0, interval 0, the probe's own timeout.
    assert_eq!(
        d.probe(&ctx(Duration::from_millis(1500))).await,
        Probe::Running
    );
    let env = f.env_of("monitor");
    assert_eq!(env.get("OCF_CHECK_LEVEL").map(String::as_str), Some("0"));
    assert_eq!(ms(&env, "OCF_RESKEY_CRM_meta_interval"), 0);
    assert_eq!(ms(&env, "OCF_RESKEY_CRM_meta_timeout"), 1500);
    assert_eq!(env.get("__OCF_ACTION").map(String::as_str), Some("monitor"));

    // A monitor: its depth, its interval and the check's timeout.
    assert_eq!(
        f.monitor(20).check(Duration::from_millis(1200)).await,
        CheckOutcome::Ok
    );
    let env = f.env_of("monitor");
    assert_eq!(env.get("OCF_CHECK_LEVEL").map(String::as_str), Some("20"));
    assert_eq!(ms(&env, "OCF_RESKEY_CRM_meta_interval"), 2500);
    assert_eq!(ms(&env, "OCF_RESKEY_CRM_meta_timeout"), 1200);
    assert_eq!(
        env.get("OCF_RESOURCE_INSTANCE").map(String::as_str),
        Some("app")
    );

    // A stop gets exactly its timeout.
    assert_eq!(
        d.stop(&ctx(Duration::from_secs(3))).await,
        ActionOutcome::Ok
    );
    assert_eq!(ms(&f.env_of("stop"), "OCF_RESKEY_CRM_meta_timeout"), 3000);
    assert_eq!(d.probe(&ctx(Duration::from_secs(5))).await, Probe::Stopped);
    let message = match f.monitor(0).check(Duration::from_secs(5)).await {
        CheckOutcome::Failed(m) => m,
        CheckOutcome::Ok => panic!("a stopped resource passed its monitor"),
    };
    assert_eq!(message, "exit 7, not running (OCF_NOT_RUNNING)");
}

#[tokio::test]
async fn the_advertised_timeouts_are_read_from_meta_data() {
    let f = Fixture::new();
    let d = f.driver();
    assert_eq!(
        d.start(&ctx(Duration::from_secs(5))).await,
        ActionOutcome::Ok
    );
    let advertised = d
        .advertised
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(advertised.get("start"), Some(&Duration::from_secs(7)));
    assert_eq!(advertised.get("stop"), Some(&Duration::from_secs(120)));
    assert_eq!(advertised.get("monitor"), Some(&Duration::from_secs(20)));
    let xml = d
        .meta_data(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(xml.contains("<resource-agent name=\"agent\""), "{xml}");
}

#[tokio::test]
async fn start_and_stop_exit_codes_map_as_pacemaker_reads_them() {
    let f = Fixture::new();
    let c = ctx(Duration::from_secs(5));
    // (code, hard) for a start; `None` is success.
    let cases: [(i32, Option<bool>); 11] = [
        (0, None),
        (1, Some(false)),
        (2, Some(true)),
        (3, Some(true)),
        (4, Some(true)),
        (5, Some(true)),
        (6, Some(true)),
        (7, Some(false)),
        (8, Some(false)),
        (9, Some(false)),
        (42, Some(false)),
    ];
    let d = f.driver();
    for (rc, hard) in cases {
        f.force("start", rc, Some("the reason"));
        let outcome = d.start(&c).await;
        match hard {
            None => assert_eq!(outcome, ActionOutcome::Ok, "start exit {rc}"),
            Some(hard) => assert_eq!(
                outcome,
                ActionOutcome::Failed {
                    message: format!("start: exit {rc}, {}: the reason", code_meaning(rc)),
                    hard,
                },
                "start exit {rc}"
            ),
        }
    }
    // The agent ran a start, so a stop it cannot do is a failure.
    for (rc, outcome) in [
        (0, ActionOutcome::Ok),
        (7, ActionOutcome::Ok),
        (
            1,
            ActionOutcome::Failed {
                message: "stop: exit 1, generic error (OCF_ERR_GENERIC): some log line".into(),
                hard: false,
            },
        ),
    ] {
        f.force("stop", rc, None);
        assert_eq!(d.stop(&c).await, outcome, "stop exit {rc}");
    }
    // A successful stop cleared "may run": start again first.
    f.force("start", 0, None);
    assert_eq!(d.start(&c).await, ActionOutcome::Ok);
    for rc in 2..=6 {
        f.force("stop", rc, None);
        assert!(
            matches!(d.stop(&c).await, ActionOutcome::Failed { hard: true, .. }),
            "stop exit {rc}"
        );
    }
}

#[tokio::test]
async fn probe_exit_codes_map_to_running_stopped_failed_and_unknown() {
    let f = Fixture::new();
    let d = f.driver();
    let c = ctx(Duration::from_secs(5));
    for (rc, expected) in [
        (0, "running"),
        (7, "stopped"),
        (8, "running"),
        (190, "running"),
        (191, "running"),
        (1, "failed"),
        (9, "failed"),
        (42, "failed"),
        (2, "unknown"),
        (3, "unknown"),
        (4, "unknown"),
        (5, "unknown"),
        (6, "unknown"),
    ] {
        f.force("monitor", rc, Some("why"));
        let probe = d.probe(&c).await;
        let found = match &probe {
            Probe::Running => "running",
            Probe::Stopped => "stopped",
            Probe::Failed(m) | Probe::Unknown(m) => {
                assert_eq!(m, &format!("exit {rc}, {}: why", code_meaning(rc)));
                if matches!(probe, Probe::Failed(_)) {
                    "failed"
                } else {
                    "unknown"
                }
            }
        };
        assert_eq!(found, expected, "probe exit {rc}");
    }
}

#[tokio::test]
async fn monitor_exit_codes_fail_with_their_meaning() {
    let f = Fixture::new();
    let m = f.monitor(10);
    let t = Duration::from_secs(5);
    for rc in [0, 190] {
        f.force("monitor", rc, None);
        assert_eq!(m.check(t).await, CheckOutcome::Ok, "monitor exit {rc}");
    }
    f.force("monitor", 1, Some("the daemon does not answer"));
    assert_eq!(
        m.check(t).await,
        CheckOutcome::Failed(
            "exit 1, generic error (OCF_ERR_GENERIC): the daemon does not answer".into()
        )
    );
    f.force("monitor", 5, None);
    assert_eq!(
        m.check(t).await,
        CheckOutcome::Failed("exit 5, not installed (OCF_ERR_INSTALLED): some log line".into())
    );
    f.force("monitor", 8, None);
    assert!(
        matches!(m.check(t).await, CheckOutcome::Failed(msg) if msg.contains("OCF_RUNNING_PROMOTED"))
    );
}

#[tokio::test]
async fn a_failed_validate_all_is_hard_and_skips_the_start() {
    let f = Fixture::new();
    let d = f.driver();
    f.force("validate-all", 1, Some("the config names no device"));
    let outcome = d.start(&ctx(Duration::from_secs(5))).await;
    assert_eq!(
        outcome,
        ActionOutcome::Failed {
            message:
                "validate-all: exit 1, generic error (OCF_ERR_GENERIC): the config names no device"
                    .into(),
            hard: true,
        }
    );
    assert_eq!(f.calls(), ["validate-all"]);
    // It ran no start: a stop it cannot do is not a failure (no fencing
    // for a broken configuration).
    f.force("stop", 6, None);
    assert_eq!(
        d.stop(&ctx(Duration::from_secs(5))).await,
        ActionOutcome::Ok
    );

    // validate-all runs again before the next start; "unimplemented" lets
    // the start go on.
    f.force("validate-all", 3, None);
    f.clear_calls();
    assert_eq!(
        d.start(&ctx(Duration::from_secs(5))).await,
        ActionOutcome::Ok
    );
    assert_eq!(f.calls(), ["validate-all", "start"]);
}

#[tokio::test]
async fn a_missing_agent_is_hard_to_start_unknown_to_probe() {
    let f = Fixture::new();
    let mut config = f.config();
    config.agent = "test:no-such-agent".into();
    let d = OcfDriver::new(&config, f.rsctmp.clone());
    let c = ctx(Duration::from_secs(5));
    match d.start(&c).await {
        ActionOutcome::Failed { message, hard } => {
            assert!(hard, "{message}");
            assert!(message.contains("no-such-agent"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(d.probe(&c).await, Probe::Unknown(m) if m.contains("no-such-agent")));
    // Never started: nothing to stop.
    assert_eq!(d.stop(&c).await, ActionOutcome::Ok);

    // An agent that disappears under a started resource cannot stop it.
    let d = f.driver();
    assert_eq!(d.start(&c).await, ActionOutcome::Ok);
    let agent = f.root.path().join("ocf/resource.d/test/agent");
    std::fs::rename(&agent, agent.with_extension("gone")).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        d.stop(&c).await,
        ActionOutcome::Failed { hard: true, .. }
    ));
}

#[tokio::test]
async fn bad_configurations_fail_hard_without_running_anything() {
    let f = Fixture::new();
    let c = ctx(Duration::from_secs(5));
    for agent in [
        "agent",
        "test:",
        "test:../../bin/sh",
        "a:b:c",
        ":agent",
        "test:..",
    ] {
        let mut config = f.config();
        config.agent = agent.into();
        let d = OcfDriver::new(&config, f.rsctmp.clone());
        assert_eq!(
            d.start(&c).await,
            ActionOutcome::Failed {
                message: AgentError::BadName(agent.into()).to_string(),
                hard: true
            }
        );
        assert!(matches!(d.probe(&c).await, Probe::Unknown(_)));
        assert_eq!(d.stop(&c).await, ActionOutcome::Ok);
    }
    let mut config = f.config();
    config.params.insert("bad-name".into(), "x".into());
    let d = OcfDriver::new(&config, f.rsctmp.clone());
    assert!(matches!(
        d.start(&c).await,
        ActionOutcome::Failed { hard: true, message } if message.contains("bad-name")
    ));
    assert!(f.calls().is_empty(), "{:?}", f.calls());
}

#[test]
fn agent_names_parse() {
    let ok = |s: &str| parse_agent(s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok("heartbeat:IPaddr2"),
        ("heartbeat".into(), "IPaddr2".into())
    );
    assert_eq!(
        ok("ocf:heartbeat:Dummy"),
        ("heartbeat".into(), "Dummy".into())
    );
    assert!(parse_agent("heartbeat/IPaddr2").is_err());
    assert!(parse_agent("lsb:heartbeat:IPaddr2").is_err());
}

/// Wait until `path` holds a pid.
async fn pid_in(path: &Path) -> Pid {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return Pid::from_raw(pid);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no pid in {}", path.display());
}

/// `pid` is gone: reaped if it became our orphan (this process is a
/// subreaper in these tests), then absent.
async fn assert_gone(pid: Pid) {
    for _ in 0..250 {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) | Err(_) => break,
        }
    }
    assert_eq!(
        kill(pid, None),
        Err(Errno::ESRCH),
        "process {pid} is still there"
    );
}

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_start_that_runs_out_of_time_is_killed_with_its_process_group() {
    become_subreaper();
    let f = Fixture::new();
    let d = f.driver();
    f.hang("start");
    let started = std::time::Instant::now();
    let c = ctx(Duration::from_millis(1200));
    let (outcome, grandchild) = tokio::join!(d.start(&c), async {
        let grandchild = pid_in(&f.scratch().join("grandchild.pid")).await;
        assert_eq!(kill(grandchild, None), Ok(()), "the grandchild should run");
        grandchild
    });
    assert_eq!(outcome, ActionOutcome::TimedOut);
    let elapsed = started.elapsed();
    // 1.2 s in all (validate-all took some of it), SIGTERM ends the group.
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    let leader = pid_in(&f.scratch().join("leader.pid")).await;
    assert_eq!(
        kill(leader, None),
        Err(Errno::ESRCH),
        "the leader was not reaped"
    );
    assert_gone(grandchild).await;
    // The agent was told the time it had.
    let told = ms(&f.env_of("start"), "OCF_RESKEY_CRM_meta_timeout");
    assert!((500..=1200).contains(&told), "{told}");
}

#[tokio::test]
async fn a_probe_or_monitor_that_runs_out_of_time_is_never_stopped() {
    become_subreaper();
    let f = Fixture::new();
    let d = f.driver();
    f.hang("monitor");
    let probe = d.probe(&ctx(Duration::from_millis(300))).await;
    assert_eq!(probe, Probe::Unknown("timed out after 300ms".into()));
    assert_gone(pid_in(&f.scratch().join("grandchild.pid")).await).await;

    let _ = std::fs::remove_file(f.scratch().join("grandchild.pid"));
    let started = std::time::Instant::now();
    let check = f.monitor(0).check(Duration::from_millis(300)).await;
    assert_eq!(check, CheckOutcome::Failed("timed out after 300ms".into()));
    // Monitors get SIGKILL at once, no grace.
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_gone(pid_in(&f.scratch().join("grandchild.pid")).await).await;
}

#[tokio::test]
async fn a_monitor_without_an_ocf_resource_fails_saying_so() {
    let f = Fixture::new();
    let monitor = conf::Monitor {
        name: "health".into(),
        interval: conf::Duration::from_millis(1000),
        timeout: conf::Duration::from_millis(1000),
        start_delay: conf::Duration::from_millis(0),
        while_active: true,
        resource: None,
        recovery: conf::Recovery::default(),
        kind: conf::MonitorKind::Ocf(conf::OcfMonitor { depth: 0 }),
    };
    let m = OcfMonitor::new("web", "node-a", &monitor, 0, None, f.rsctmp.clone());
    assert_eq!(
        m.check(Duration::from_secs(1)).await,
        CheckOutcome::Failed(
            "the `ocf` monitor `health` has no `ocf` resource to check in group `web`".into()
        )
    );
}

#[test]
fn rsctmp_is_cleared_after_a_reboot_only() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("rsctmp");
    let boot = std::fs::read_to_string(BOOT_ID).unwrap_or_else(|e| panic!("{e}"));

    // First use: created, marked, nothing removed.
    let tmp = RscTmp::new(&path);
    tmp.prepare();
    assert_eq!(
        std::fs::read_to_string(path.join(BOOT_MARKER)).unwrap_or_default(),
        format!("{}\n", boot.trim())
    );
    std::fs::write(path.join("Dummy-app.state"), "").unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(path.join("sub")).unwrap_or_else(|e| panic!("{e}"));

    // The same boot (a daemon restart): kept.
    RscTmp::new(&path).prepare();
    assert!(path.join("Dummy-app.state").exists());

    // Another boot: emptied, re-marked.
    std::fs::write(path.join(BOOT_MARKER), "an-older-boot\n").unwrap_or_else(|e| panic!("{e}"));
    RscTmp::new(&path).prepare();
    assert!(!path.join("Dummy-app.state").exists());
    assert!(!path.join("sub").exists());
    assert_eq!(
        std::fs::read_to_string(path.join(BOOT_MARKER)).unwrap_or_default(),
        format!("{}\n", boot.trim())
    );
}

#[test]
fn advertised_timeouts_parse() {
    let xml = r#"<resource-agent><actions>
        <action name="start"   timeout="20s" />
        <action name='stop' timeout='100ms'/>
        <action timeout="2min" name="monitor" depth="0" interval="10s"/>
        <action name="monitor" timeout="1h" depth="10"/>
        <action name="reload" timeout="soon"/>
        <action name="notify"/>
    </actions></resource-agent>"#;
    let found = advertised_timeouts(xml);
    assert_eq!(
        found,
        BTreeMap::from([
            ("start".to_owned(), Duration::from_secs(20)),
            ("stop".to_owned(), Duration::from_millis(100)),
            ("monitor".to_owned(), Duration::from_secs(120)),
        ])
    );
    assert_eq!(parse_ocf_duration("15"), Some(Duration::from_secs(15)));
    assert_eq!(parse_ocf_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_ocf_duration("s"), None);
}

/// `drivers::build` gives `ocf` resources and monitors (the group's last
/// `ocf` resource, as the node runs it) and `process` monitors.
#[tokio::test]
async fn drivers_are_built_from_the_configuration() {
    let f = Fixture::new();
    let state = f.root.path().join("state");
    let toml = format!(
        r#"
[cluster]
name = "t"
kind = "guest"
auth_key_file = "/nonexistent/key"
state_dir = "{state}"

[heartbeat]
interval = "200ms"
timeout = "800ms"

[quorum]
ping_targets = ["192.0.2.1"]

[[nodes]]
name = "node-a"
links = {{ lan = ["192.0.2.21/24"] }}

[[nodes]]
name = "node-b"
links = {{ lan = ["192.0.2.22/24"] }}

[[groups]]
name = "web"
nodes = ["node-a", "node-b"]

[[groups.resources]]
name = "app"
kind = "ocf"
agent = "test:agent"
ocf_root = "{root}"
params = {{ dir = "{scratch}" }}

[[groups.monitors]]
name = "agent-health"
kind = "ocf"
depth = 10
interval = "3s"

[[groups.monitors]]
name = "init"
kind = "process"
pid_file = "{scratch}/no-such.pid"
"#,
        state = state.display(),
        root = f.root.path().join("ocf").display(),
        scratch = f.scratch().display(),
    );
    let config = conf::load_str("t.toml", &toml).unwrap_or_else(|e| panic!("{e:?}"));
    let drivers = crate::drivers::build(&config, "node-a", &state.join("node-a"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let app = &drivers.resources[0][0];
    assert_eq!(
        app.start(&ctx(Duration::from_secs(5))).await,
        ActionOutcome::Ok
    );
    // HA_RSCTMP is per node, under its state directory.
    assert!(state.join("node-a/rsctmp/app.running").exists());
    assert_eq!(
        drivers.monitors[0][0].check(Duration::from_secs(5)).await,
        CheckOutcome::Ok
    );
    let env = f.env_of("monitor");
    assert_eq!(env.get("OCF_CHECK_LEVEL").map(String::as_str), Some("10"));
    assert_eq!(ms(&env, "OCF_RESKEY_CRM_meta_interval"), 3000);
    assert!(matches!(
        drivers.monitors[0][1].check(Duration::from_secs(5)).await,
        CheckOutcome::Failed(m) if m.contains("no-such.pid")
    ));

    // Another node has its own HA_RSCTMP: the resource is not running there.
    let other = crate::drivers::build(&config, "node-b", &state.join("node-b"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        other.resources[0][0]
            .probe(&ctx(Duration::from_secs(5)))
            .await,
        Probe::Stopped
    );
}
