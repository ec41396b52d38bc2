//! `AgentDevice` against fake agents (shell scripts in a temporary
//! directory) and against Debian's real `fence_dummy`: the stdin protocol,
//! exit statuses, the timeout that kills the agent's whole process group,
//! and construction errors.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_core::fence::{AgentDevice, Device, FenceError};

const FENCE_DUMMY: &str = "/usr/sbin/fence_dummy";

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

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn agent_config(
    agent: &str,
    timeout: Duration,
    params: &[(&str, &str)],
    plugs: &[(&str, &str)],
) -> conf::FenceDevice {
    conf::FenceDevice {
        name: "pdu-a".to_owned(),
        targets: vec!["node1".to_owned(), "node2".to_owned()],
        timeout: timeout.into(),
        delay: conf::Duration::default(),
        kind: conf::FenceKind::Agent(conf::FenceAgent {
            agent: agent.to_owned(),
            params: map(params),
            plugs: map(plugs),
        }),
    }
}

fn device(config: &conf::FenceDevice) -> AgentDevice {
    AgentDevice::from_config(config).unwrap_or_else(|e| panic!("{e}"))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
async fn fence_agent_receives_action_plug_and_params_on_stdin() {
    let dir = tempdir();
    let record = dir.path().join("stdin.txt");
    let agent = write_agent(
        dir.path(),
        "fence_record",
        &format!("cat > '{}'\nexit 0", record.display()),
    );
    let config = agent_config(
        &agent.to_string_lossy(),
        Duration::from_secs(10),
        &[
            ("ip", "192.0.2.10"),
            ("username", "admin"),
            ("password", "s3cret"),
            ("lanplus", "1"),
        ],
        &[("node2", "port-7")],
    );
    let dev = device(&config);
    assert_eq!(dev.name(), "pdu-a");
    assert_eq!(dev.agent(), agent);

    dev.fence_off("node2")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read(&record),
        "action=off\nplug=port-7\nip=192.0.2.10\nlanplus=1\npassword=s3cret\nusername=admin\n"
    );

    // node1 has no entry in `plugs`: no plug line.
    dev.fence_off("node1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read(&record),
        "action=off\nip=192.0.2.10\nlanplus=1\npassword=s3cret\nusername=admin\n"
    );

    // Not a target of this device: refused without running the agent.
    std::fs::remove_file(&record).unwrap_or_else(|e| panic!("{e}"));
    let err = dev.fence_off("node3").await;
    assert!(matches!(err, Err(FenceError::NotATarget { .. })), "{err:?}");
    assert!(
        !record.exists(),
        "the agent ran for a node it does not fence"
    );
    assert!(dev.can_fence("node1") && !dev.can_fence("node3"));
}

#[tokio::test]
async fn fence_agent_nonzero_exit_is_failure_with_stderr_tail_and_no_secret() {
    let dir = tempdir();
    let agent = write_agent(
        dir.path(),
        "fence_broken",
        "cat > /dev/null\necho 'probing bmc'\necho 'login refused for password s3cret' >&2\nexit 3",
    );
    let config = agent_config(
        &agent.to_string_lossy(),
        Duration::from_secs(10),
        &[("password", "s3cret")],
        &[],
    );
    let err = device(&config).fence_off("node1").await;
    let Err(err @ FenceError::Failed { .. }) = err else {
        panic!("expected a failure, got {err:?}");
    };
    let message = err.to_string();
    if let FenceError::Failed { status, output, .. } = &err {
        assert_eq!(status.code(), Some(3));
        assert_eq!(output.stdout.trim(), "probing bmc");
        assert_eq!(
            output.stderr.trim(),
            "login refused for password [redacted]"
        );
    }
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("login refused"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test]
async fn fence_agent_timeout_kills_the_whole_process_group() {
    let dir = tempdir();
    let bg_pid = dir.path().join("bg.pid");
    let agent = write_agent(
        dir.path(),
        "fence_hang",
        &format!(
            "sleep 100 &\necho $! > '{}'\necho started\nsleep 100",
            bg_pid.display()
        ),
    );
    let timeout = Duration::from_millis(500);
    let config = agent_config(&agent.to_string_lossy(), timeout, &[], &[]);
    let dev = device(&config);

    let started = Instant::now();
    let err = dev.fence_off("node1").await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, Err(FenceError::Timeout { output, .. }) if output.stdout.trim() == "started"),
        "{err:?}"
    );
    assert!(
        elapsed >= timeout,
        "returned before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_secs(3),
        "took {elapsed:?} for a {timeout:?} timeout"
    );

    let pid: i32 = read(&bg_pid)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(3);
    while sleep_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !sleep_alive(pid),
        "the agent's background child {pid} survived the timeout"
    );
}

#[test]
fn fence_agent_construction_errors() {
    let dir = tempdir();

    // A bare name is looked up in the sbin/bin directories.
    let config = agent_config(
        "fence_kvmha_does_not_exist",
        Duration::from_secs(5),
        &[],
        &[],
    );
    let err = AgentDevice::from_config(&config).map(|_| ());
    let Err(err @ FenceError::AgentNotFound { .. }) = err else {
        panic!("expected agent not found, got {err:?}");
    };
    let message = err.to_string();
    assert!(
        message.contains("fence_kvmha_does_not_exist") && message.contains("/usr/sbin"),
        "{message}"
    );

    // An absolute path that does not exist.
    let missing = dir.path().join("fence_missing");
    let config = agent_config(&missing.to_string_lossy(), Duration::from_secs(5), &[], &[]);
    let err = AgentDevice::from_config(&config).map(|_| ());
    assert!(
        matches!(err, Err(FenceError::AgentNotFound { .. })),
        "{err:?}"
    );

    // An absolute path that is not executable.
    let plain = dir.path().join("fence_plain");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = agent_config(&plain.to_string_lossy(), Duration::from_secs(5), &[], &[]);
    let err = AgentDevice::from_config(&config).map(|_| ());
    assert!(
        matches!(&err, Err(e @ FenceError::AgentNotFound { .. }) if e.to_string().contains("not executable")),
        "{err:?}"
    );

    // A relative path.
    let config = agent_config("sbin/fence_dummy", Duration::from_secs(5), &[], &[]);
    let err = AgentDevice::from_config(&config).map(|_| ());
    assert!(
        matches!(err, Err(FenceError::AgentNotFound { .. })),
        "{err:?}"
    );

    // Other kinds of device.
    let mut config = agent_config("/bin/true", Duration::from_secs(5), &[], &[]);
    config.kind = conf::FenceKind::Host(conf::FenceHost::default());
    let err = AgentDevice::from_config(&config).map(|_| ());
    assert!(
        matches!(err, Err(FenceError::WrongKind { kind: "host", .. })),
        "{err:?}"
    );
    config.kind = conf::FenceKind::Redfish(conf::FenceRedfish {
        url: "https://bmc.example".to_owned(),
        username: "admin".to_owned(),
        password_file: "/etc/kvmha/bmc.pw".into(),
        system_id: None,
        insecure: false,
    });
    let err = AgentDevice::from_config(&config).map(|_| ());
    assert!(
        matches!(
            err,
            Err(FenceError::WrongKind {
                kind: "redfish",
                ..
            })
        ),
        "{err:?}"
    );

    // A zero timeout could never succeed.
    let config = agent_config("/bin/true", Duration::ZERO, &[], &[]);
    let err = AgentDevice::from_config(&config).map(|_| ());
    assert!(
        matches!(err, Err(FenceError::InvalidConfig { .. })),
        "{err:?}"
    );
}

fn require_fence_dummy() {
    assert!(
        Path::new(FENCE_DUMMY).is_file(),
        "{FENCE_DUMMY} is missing: run scripts/setup-debian (as root) to install Debian's fence-agents package"
    );
}

#[tokio::test]
async fn fence_dummy_powers_off_through_the_status_file() {
    require_fence_dummy();
    let dir = tempdir();
    let status = dir.path().join("node2.status");
    // fence_dummy compares the file's whole content: no newline.
    std::fs::write(&status, "on").unwrap_or_else(|e| panic!("{e}"));
    let config = agent_config(
        "fence_dummy",
        Duration::from_secs(30),
        &[("type", "file"), ("status_file", &status.to_string_lossy())],
        &[],
    );
    let dev = device(&config);
    assert_eq!(dev.agent(), Path::new(FENCE_DUMMY));

    dev.fence_off("node2")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(&status), "off");
}

#[tokio::test]
async fn fence_dummy_failing_type_is_reported_as_failure() {
    require_fence_dummy();
    let config = agent_config(
        "fence_dummy",
        Duration::from_secs(30),
        // `type=fail` never reaches "off"; `power_timeout` bounds its wait
        // for it (20 s by default).
        &[("type", "fail"), ("power_timeout", "1")],
        &[],
    );
    let err = device(&config).fence_off("node2").await;
    let Err(err @ FenceError::Failed { .. }) = err else {
        panic!("expected a failure, got {err:?}");
    };
    if let FenceError::Failed { status, .. } = &err {
        assert_eq!(status.code(), Some(1), "{err}");
    }
    assert!(err.to_string().contains("Failed"), "{err}");
}
