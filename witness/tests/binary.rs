//! The `cluster-witness` binary as an operator runs it: listening on IPv4
//! and IPv6 with a token, capping leases, stopping on SIGTERM, and refusing
//! to start on an address in use or a token file others can read.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cluster_witness::{VoteRequest, WitnessClient};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-witness");

/// Kills the witness if the test fails before stopping it.
struct Witness(Child);

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap_or_else(|e| panic!("run {BIN}: {e}"))
}

/// Start the witness and return it with the addresses it logs as bound.
fn spawn(args: &[&str], listeners: usize) -> (Witness, Vec<SocketAddr>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let stderr = child.stderr.take();
    let witness = Witness(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("witness: {line}");
            // Keep draining the pipe after the test stops listening.
            let _ = tx.send(line);
        }
    });
    let mut addrs = Vec::new();
    while addrs.len() < listeners {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("witness did not log its listeners: {e}"));
        if !line.contains("listening") {
            continue;
        }
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        addrs.push(addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")));
    }
    (witness, addrs)
}

#[tokio::test]
async fn serves_ipv4_and_ipv6_with_a_token_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = token_file(dir.path(), "  s3cr3t  ", 0o600);
    let token = token
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 temp path"));
    let (mut witness, addrs) = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--token-file",
            token,
            "--max-lease",
            "2s",
        ],
        2,
    );
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");

    let request = VoteRequest {
        cluster: "c".into(),
        node: "a".into(),
        view: ["a".to_owned()].into(),
        lease_ms: 600_000,
    };
    for addr in &addrs {
        let url = format!("http://{addr}");
        let with = WitnessClient::new(&url, Duration::from_secs(2), None, Some("s3cr3t"))
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = with
            .vote(&request)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(reply.granted, "{reply:?}");
        assert_eq!(reply.lease_ms, 2_000, "--max-lease caps the lease");

        let without = WitnessClient::new(&url, Duration::from_secs(2), None, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let err = without.vote(&request).await.err();
        assert!(
            err.as_ref().is_some_and(|e| e.to_string().contains("401")),
            "{err:?}"
        );
    }

    let pid = witness.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(killed.success());
    let mut exit = None;
    for _ in 0..100 {
        exit = witness.0.try_wait().unwrap_or_else(|e| panic!("{e}"));
        if exit.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = exit.unwrap_or_else(|| panic!("still running 5 s after SIGTERM"));
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn refuses_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["--listen", "[::1]:0", "--listen", &addr.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn refuses_a_token_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = token_file(dir.path(), "s3cr3t", 0o644);
    let token = token
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 temp path"));
    let out = run(&["--listen", "127.0.0.1:0", "--token-file", token]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("accessible by group or other"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn refuses_a_zero_or_malformed_max_lease() {
    for lease in ["0s", "soon"] {
        let out = run(&["--listen", "127.0.0.1:0", "--max-lease", lease]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{lease}: {stderr}");
        assert!(stderr.contains("--max-lease"), "{stderr}");
    }
}
