//! Secrets stay out of the logs: a fake agent that echoes its whole input
//! (passwords included) on stdout and stderr, run under a `tracing`
//! subscriber that records everything. Alone in its binary so that the
//! global subscriber sees every event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cluster_core::fence::{AgentDevice, Device, FenceError};

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

/// Log lines written by the test's `tracing` subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn fence_agent_logs_never_show_passwords() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    // Global, and this binary's only test: a thread-local default can miss
    // events whose call site another test thread registered first.
    tracing::subscriber::set_global_default(subscriber).unwrap_or_else(|e| panic!("{e}"));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // The agent echoes its whole input on both outputs, then fails.
    let agent = write_agent(
        dir.path(),
        "fence_echo",
        "input=$(cat)\necho \"$input\"\necho \"$input\" >&2\nexit 1",
    );
    let config = conf::FenceDevice {
        name: "ipmi".to_owned(),
        targets: vec!["node1".to_owned()],
        timeout: conf::Duration::from_secs(10),
        delay: conf::Duration::default(),
        kind: conf::FenceKind::Agent(conf::FenceAgent {
            agent: agent.to_string_lossy().into_owned(),
            params: [
                ("ip", "192.0.2.10"),
                ("password", "s3cret"),
                ("ssh_passwd", "hunter2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            plugs: BTreeMap::new(),
        }),
    };
    let device = AgentDevice::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{device:?}").contains("s3cret"));
    let err = device.fence_off("node1").await;
    assert!(matches!(err, Err(FenceError::Failed { .. })), "{err:?}");
    let message = err
        .map(|()| String::new())
        .unwrap_or_else(|e| e.to_string());

    let logs =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|e| panic!("{e}"))).into_owned();
    assert!(
        logs.contains("ip=192.0.2.10"),
        "the input was not logged: {logs}"
    );
    assert!(logs.contains("password=[redacted]"), "{logs}");
    for secret in ["s3cret", "hunter2"] {
        assert!(!logs.contains(secret), "secret in the logs: {logs}");
        assert!(!message.contains(secret), "secret in the error: {message}");
    }
}
