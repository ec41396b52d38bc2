//! PostgreSQL failing over for real, on a shared disk. Guest daemons in
//! network namespaces run one group: a `mount` of an ext4 file system on a
//! loop device (both simulated guests are on this machine, so they see the
//! same device, as two VMs see one shared disk), a `floating_ip`, and
//! PostgreSQL 15 started by an `exec` resource, watched by a `pgsql`
//! monitor. A client in a namespace of its own commits rows through the
//! floating address. Needs root, PostgreSQL and loop devices.
//!
//! `ip netns exec` gives every daemon a mount namespace of its own (a copy
//! of the machine's), so what a node mounts is visible on that node only,
//! and it is released when the node's last process dies, as a power loss
//! releases a disk. A watcher reads every node's processes, mounts and
//! addresses throughout and fails the test if two nodes ever hold any part
//! of the group at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cluster_core::events::now_ms;
use serde_json::Value;
use testbed::cluster::{Cluster, Spec};
use testbed::{run, wait_until};

/// What of the group nodes hold: (node index, `postgres` | `mount` | `vip`).
type Holdings = BTreeSet<(usize, &'static str)>;

/// The floating address (link 0's subnet is 10.0.0.0/24).
const VIP: &str = "10.0.0.100";
const GROUP: &str = "db";
/// n0 and n1 may run the group; n2 only votes.
const NODES: usize = 3;
/// The client's namespace: a bystander on the same bridge (10.0.0.4).
const CLIENT: usize = NODES;
/// One attempt to connect; a client retries at once after it.
const CONNECT_ATTEMPT: Duration = Duration::from_millis(250);
/// One INSERT; past it the connection is taken for dead.
const STATEMENT: Duration = Duration::from_millis(500);

const LADDER: &str = r#"{ restart = 1, failover = 1, final_action = "stop_group" }"#;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Run `command`; panic with its output unless it succeeds; its stdout.
fn sh(command: &mut Command) -> String {
    let out = must(command.output(), &format!("{command:?}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A program of the newest installed PostgreSQL.
fn pg_bin(program: &str) -> PathBuf {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    majors
        .pop()
        .map(|(_, dir)| dir.join("bin").join(program))
        .unwrap_or_else(|| panic!("PostgreSQL is not installed (scripts/setup-debian)"))
}

fn give_to_postgres(path: &Path, mode: u32) {
    must(
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        &path.display().to_string(),
    );
    sh(Command::new("chown").arg("postgres:postgres").arg(path));
}

/// Whether no file system (in any mount namespace) uses block device
/// `device` any more: it can be opened `O_EXCL`.
fn released(device: &str) -> bool {
    Command::new("perl")
        .args([
            "-MFcntl",
            "-e",
            "sysopen(my $f, $ARGV[0], O_RDONLY | O_EXCL) or exit 1",
            device,
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// The shared disk: a loop device over a sparse image, ext4 with a
/// PostgreSQL data directory made once (then unmounted). Its directory in
/// /tmp (mode 0755, so user postgres reaches it) also holds the mount
/// point and, off the disk, the servers' sockets and logs. On drop the
/// loop device is released whatever happened.
struct SharedDisk {
    dir: tempfile::TempDir,
    device: String,
}

impl SharedDisk {
    fn new() -> Self {
        let dir = must(
            tempfile::Builder::new()
                .prefix("kvmha-pgdisk-")
                .tempdir_in("/tmp"),
            "tempdir",
        );
        must(
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)),
            "chmod",
        );
        let image = dir.path().join("disk.img");
        let file = must(std::fs::File::create(&image), "image");
        must(file.set_len(256 << 20), "image size");
        drop(file);
        let device = sh(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        let disk = Self { dir, device };
        sh(Command::new("mkfs.ext4").args(["-q", "-F", &disk.device]));
        let mnt = disk.mountpoint();
        must(std::fs::create_dir(&mnt), "mount point");
        let run = disk.run_dir();
        must(std::fs::create_dir(&run), "run directory");
        give_to_postgres(&run, 0o755);
        for k in 0..NODES {
            let sock = run.join(format!("sock-n{k}"));
            must(std::fs::create_dir(&sock), "socket directory");
            give_to_postgres(&sock, 0o755);
        }
        // The data directory is made in a mount namespace of its own: the
        // machine's root mount is private (no systemd), so a mount made in
        // the root namespace would be copied into every mount namespace
        // created meanwhile (any `ip netns exec`, of any test) and stay
        // active there after its umount.
        sh(Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(INIT_DISK)
            .arg("init-disk")
            .arg(&disk.device)
            .arg(&mnt)
            .arg(pg_bin("initdb")));
        disk
    }

    fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn data(&self) -> PathBuf {
        self.mountpoint().join("data")
    }

    /// Sockets and server logs, per node (not on the shared disk).
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The server log node `k` wrote.
    fn server_log(&self, k: usize) -> String {
        std::fs::read_to_string(self.run_dir().join(format!("n{k}.log"))).unwrap_or_default()
    }
}

impl Drop for SharedDisk {
    fn drop(&mut self) {
        let _ = wait_until(
            "the shared disk to be released",
            Duration::from_secs(5),
            || released(&self.device),
        );
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
    }
}

/// Mount the shared disk (`$1` on `$2`), make the data directory with
/// initdb (`$3`), unmount. `recovery_init_sync_method = syncfs` is the
/// tuning an operator makes for fast takeovers: a start after a crash
/// first syncs the whole data directory, file by file by default (0.2-3 s
/// here, with the machine's disk busy), with one `syncfs` in milliseconds.
const INIT_DISK: &str = r#"set -e
mount -t ext4 "$1" "$2"
data="$2/data"
mkdir "$data"
chown postgres:postgres "$data"
chmod 700 "$data"
cd /tmp
runuser -u postgres -- "$3" --no-sync -U postgres --auth-local=trust --auth-host=trust -D "$data" >/dev/null
echo 'host all all 0.0.0.0/0 trust' >> "$data/pg_hba.conf"
printf 'shared_buffers = 16MB\nmax_connections = 30\nrecovery_init_sync_method = syncfs\n' >> "$data/postgresql.conf"
umount "$2"
"#;

/// PostgreSQL as an `exec` resource: start, stop, and status (0 running,
/// 7 stopped), its data directory on the shared disk.
const PG_SCRIPT: &str = r#"#!/bin/sh
data={data}
run={run}
pg_ctl() { runuser -u postgres -- {bin} "$@"; }
# Whether postmaster.pid names a process of this node. All simulated guests
# share one PID space: a pid file left by a node that died names a process
# of that node (or a zombie nobody reaped yet), which PostgreSQL and pg_ctl
# would take for a live server; on separate machines it names nothing here.
ours() {
    pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$(readlink /proc/self/ns/net)" ]
}
status() {
    [ -d "$data" ] || return 7
    if [ -f "$data/postmaster.pid" ] && ! ours; then return 7; fi
    pg_ctl -D "$data" status >/dev/null 2>&1
    case $? in 0) return 0 ;; 3|4) return 7 ;; *) return 1 ;; esac
}
case "$1" in
start)
    status
    case $? in 0) exit 0 ;; 7) ;; *) exit 1 ;; esac
    if [ -f "$data/postmaster.pid" ] && ! ours; then
        echo "removing the stale postmaster.pid of process $(head -n 1 "$data/postmaster.pid")" >&2
        rm -f "$data/postmaster.pid"
    fi
    pg_ctl -w -t 20 -D "$data" -l "$run/$KVMHA_NODE.log" \
        -o "-p {port} -k $run/sock-$KVMHA_NODE -h '*'" start || exit 1
    echo "$KVMHA_NODE start $KVMHA_REASON prev=$KVMHA_PREVIOUS_OWNER fenced=$KVMHA_PREVIOUS_OWNER_FENCED" >> {dir}/pg.log
    ;;
stop)
    status
    if [ $? -ne 7 ]; then
        pg_ctl -w -t 20 -D "$data" -m fast stop
        status
        [ $? -eq 7 ] || exit 1
    fi
    echo "$KVMHA_NODE stop" >> {dir}/pg.log
    ;;
status)
    status
    exit $?
    ;;
*) exit 3 ;;
esac
"#;

fn group(disk: &SharedDisk, port: u16, recovery: &str) -> String {
    format!(
        r#"{fence}
[[groups]]
name = "{GROUP}"
nodes = ["n0", "n1"]

[[groups.resources]]
name = "disk"
kind = "mount"
device = "{device}"
mountpoint = "{mnt}"
fstype = "ext4"
fsck = true
start_timeout = "30s"
stop_timeout = "30s"

[[groups.resources]]
name = "vip"
kind = "floating_ip"
address = "{VIP}/24"
interface = "eth0"

[[groups.resources]]
name = "pg"
kind = "exec"
start = ["{{dir}}/pg", "start"]
stop = ["{{dir}}/pg", "stop"]
status = ["{{dir}}/pg", "status"]
start_timeout = "30s"
stop_timeout = "30s"

[[groups.monitors]]
name = "sql"
kind = "pgsql"
connection = "host=127.0.0.1 port={port} user=postgres dbname=postgres"
interval = "200ms"
timeout = "2s"
recovery = {recovery}
"#,
        fence = testbed::fence::config(NODES),
        device = disk.device,
        mnt = disk.mountpoint().display(),
    )
}

/// A port of this test's own (each namespace has its own port space; this
/// keeps the servers' socket names apart too).
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    15432 + (std::process::id() % 1000) as u16 * 10 + NEXT.fetch_add(1, Ordering::Relaxed) % 10
}

/// Kills every process of the cluster's namespaces (daemons, servers) when
/// the test ends, however it ends, so their mount namespaces and with them
/// the shared disk are released.
struct Reap(Vec<String>);

impl Drop for Reap {
    fn drop(&mut self) {
        for ns in &self.0 {
            for _ in 0..20 {
                let out = Command::new("ip").args(["netns", "pids", ns]).output();
                let pids: Vec<i32> = out
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .filter_map(|p| p.parse().ok())
                            // Never this test (its client threads enter
                            // the client's namespace).
                            .filter(|p| u32::try_from(*p).ok() != Some(std::process::id()))
                            .collect()
                    })
                    .unwrap_or_default();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The test bed. Fields drop in order: the namespaces' processes are
/// killed, then the cluster (daemons, namespaces) goes, then the disk.
struct Bed {
    _reap: Reap,
    c: Cluster,
    disk: SharedDisk,
    port: u16,
    /// `net:[inode]` of every node's network namespace.
    nets: Vec<String>,
}

impl Bed {
    fn new(recovery: &str) -> Self {
        let port = next_port();
        let disk = SharedDisk::new();
        let script = PG_SCRIPT
            .replace("{data}", &disk.data().display().to_string())
            .replace("{run}", &disk.run_dir().display().to_string())
            .replace("{bin}", &pg_bin("pg_ctl").display().to_string())
            .replace("{port}", &port.to_string());
        let c = ok(Cluster::start_with(
            &Spec {
                nodes: NODES,
                bystanders: 1,
                extra: group(&disk, port, recovery),
                ..Spec::default()
            },
            |dir| {
                let path = dir.join("pg");
                must(
                    std::fs::write(&path, script.replace("{dir}", &dir.display().to_string())),
                    "pg script",
                );
                must(
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)),
                    "pg script",
                );
                testbed::fence::install(dir);
            },
        ));
        let reap = Reap((0..=CLIENT).map(|k| c.net.ns(k)).collect());
        testbed::fence::arm(&c);
        let nets = (0..NODES)
            .map(|k| {
                let meta = must(
                    std::fs::metadata(format!("/run/netns/{}", c.net.ns(k))),
                    "netns",
                );
                format!("net:[{}]", meta.ino())
            })
            .collect();
        let bed = Self {
            _reap: reap,
            c,
            disk,
            port,
            nets,
        };
        ok(bed.c.wait_converged(Duration::from_secs(10)));
        bed
    }

    fn client_ns(&self) -> String {
        self.c.net.ns(CLIENT)
    }

    fn holdings(&self) -> Holdings {
        holdings(&self.nets, &self.disk.device)
    }

    /// Wait until node `k`, and no other, holds the whole group (disk
    /// mounted, address, server) and its daemon has finished starting it;
    /// how long that took.
    fn wait_held_by(&self, k: usize, timeout: Duration) -> Duration {
        let want: Holdings = [(k, "mount"), (k, "postgres"), (k, "vip")].into();
        let t0 = Instant::now();
        loop {
            let have = self.holdings();
            if have == want
                && self.c.status(k).is_ok_and(|s| {
                    s.groups
                        .iter()
                        .any(|g| g.name == GROUP && g.state_here.as_deref() == Some("running"))
                })
            {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "the group is not held by n{k} alone within {timeout:?}: {have:?}\nscript log:\n{}\nn{k} log:\n{}",
                self.pg_log().join("\n"),
                self.c.log(k)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until every node's newest placement puts the group on `node`.
    fn wait_all_agree(&self, node: &str) {
        ok(wait_until(
            "every node knows the placement",
            Duration::from_secs(10),
            || {
                (0..NODES).all(|k| {
                    self.c.status(k).is_ok_and(|s| {
                        s.groups
                            .iter()
                            .any(|g| g.name == GROUP && g.target.as_deref() == Some(node))
                    })
                })
            },
        ));
    }

    /// What the `pg` script logged: `NODE start REASON prev=.. fenced=..`
    /// and `NODE stop`.
    fn pg_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.c.dir().join("pg.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn starts(&self) -> Vec<String> {
        self.pg_log()
            .into_iter()
            .filter(|l| l.contains(" start "))
            .collect()
    }

    /// Wait until the server has been started `n` times in all; the last.
    fn wait_starts(&self, n: usize, timeout: Duration) -> String {
        ok(wait_until("the server to start", timeout, || {
            self.starts().len() >= n
        }));
        self.starts().pop().unwrap_or_default()
    }

    /// Stop node `k`'s server behind the cluster's back, as a crash would
    /// (`pg_ctl stop -m immediate`, run in the node's mount namespace,
    /// where the shared disk is mounted).
    fn crash_server(&mut self, k: usize) {
        let pid = self
            .c
            .daemon(k)
            .map(|d| d.pid())
            .unwrap_or_else(|| panic!("n{k} has no daemon"));
        let out = must(
            Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-m", "--"])
                .args(["runuser", "-u", "postgres", "--"])
                .arg(pg_bin("pg_ctl"))
                .args(["-w", "-D"])
                .arg(self.disk.data())
                .args(["-m", "immediate", "stop"])
                .output(),
            "nsenter",
        );
        assert!(
            out.status.success(),
            "pg_ctl stop -m immediate on n{k}: {}{}\nscript log:\n{}\nserver log:\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.pg_log().join("\n"),
            self.disk.server_log(k),
            self.c.log(k)
        );
    }

    /// `clusterctl` against node `k`.
    fn ctl(&self, k: usize, args: &[&str]) -> std::process::Output {
        let sock = self.c.dir().join(format!("n{k}.sock"));
        let sock = sock.display().to_string();
        let mut all = args.to_vec();
        all.extend(["--socket", &sock]);
        run("clusterctl", &all)
    }
}

/// What of the group each node holds now: `postgres` processes, the shared
/// device mounted in its mount namespace, the floating address. A node is
/// seen through its processes (a node without any is off).
fn holdings(nets: &[String], device: &str) -> Holdings {
    let mut out = BTreeSet::new();
    let mut mount_ns_seen = HashSet::new();
    let mut net_seen = HashSet::new();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in proc.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(net) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let Some(k) = nets.iter().position(|n| Path::new(n) == net) else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "postgres")
        {
            out.insert((k, "postgres"));
        }
        if let Ok(mnt) = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            && mount_ns_seen.insert(mnt)
            && std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|t| {
                t.lines().any(|l| {
                    l.split_once(" - ")
                        .and_then(|(_, r)| r.split_whitespace().nth(1))
                        == Some(device)
                })
            })
        {
            out.insert((k, "mount"));
        }
        if net_seen.insert(k)
            && std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).is_ok_and(|t| {
                let lines: Vec<&str> = t.lines().map(str::trim).collect();
                lines
                    .windows(2)
                    .any(|w| w[0] == format!("|-- {VIP}") && w[1].contains("/32 host LOCAL"))
            })
        {
            out.insert((k, "vip"));
        }
    }
    out
}

/// Every process (pid, command, mount namespace) whose mount namespace
/// has `device` mounted.
fn mounted_by(device: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let mounted = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|t| {
            t.lines().any(|l| {
                l.split_once(" - ")
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    == Some(device)
            })
        });
        if mounted {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push((pid, cmd, ns));
        }
    }
    out
}

/// Samples every node's holdings every 10 ms until finished; remembers
/// every sample in which two nodes held something of the group.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<Holdings>)>>,
}

impl Watcher {
    fn new(bed: &Bed) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, nets, device) = (stop.clone(), bed.nets.clone(), bed.disk.device.clone());
        let thread = std::thread::spawn(move || {
            let (mut samples, mut doubles) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                let h = holdings(&nets, &device);
                samples += 1;
                if h.iter().map(|(k, _)| k).collect::<BTreeSet<_>>().len() > 1 {
                    doubles.push(h);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (samples, doubles)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// How many samples were taken, and those where two nodes held a part.
    fn finish(mut self) -> (usize, Vec<Holdings>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Run `f` on a thread of its own inside network namespace `ns`, with a
/// single-threaded runtime.
fn in_netns<T, Fut>(
    ns: &str,
    f: impl FnOnce() -> Fut + Send + 'static,
) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = must(std::fs::File::open(&path), &path);
        must(
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET),
            "setns",
        );
        let rt = must(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            "runtime",
        );
        rt.block_on(f())
    })
}

/// Run `f` in the client's namespace and wait for it.
fn on_client<T, Fut>(bed: &Bed, f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    match in_netns(&bed.client_ns(), f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// One connection through the floating address, within `within`.
async fn connect(port: u16, within: Duration) -> Result<tokio_postgres::Client, String> {
    let conninfo = format!("host={VIP} port={port} user=postgres dbname=postgres");
    match tokio::time::timeout(
        within,
        tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
    )
    .await
    {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("connecting timed out after {within:?}")),
    }
}

/// A client error, with the server's message if it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// Run `sql` through the floating address, retrying for up to 10 s.
fn execute(bed: &Bed, sql: String) {
    let port = bed.port;
    on_client(bed, move || async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let last = match connect(port, CONNECT_ATTEMPT).await {
                Ok(c) => match c.batch_execute(&sql).await {
                    Ok(()) => return,
                    Err(e) => describe(&e),
                },
                Err(e) => e,
            };
            assert!(Instant::now() < deadline, "{sql}: {last}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Every id in table `t`, read through the floating address.
fn ids(bed: &Bed) -> BTreeSet<i32> {
    let port = bed.port;
    on_client(bed, move || async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let last = match connect(port, CONNECT_ATTEMPT).await {
                Ok(c) => match c.query("SELECT id FROM t", &[]).await {
                    Ok(rows) => return rows.iter().map(|r| r.get::<_, i32>(0)).collect(),
                    Err(e) => describe(&e),
                },
                Err(e) => e,
            };
            assert!(Instant::now() < deadline, "reading t: {last}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// What the writer saw.
#[derive(Debug, Default)]
struct Progress {
    /// Ids whose commit the server confirmed, with when (ms since 1970).
    committed: Vec<(i32, u64)>,
    /// Ids whose INSERT failed or ran out of time: committed or not,
    /// nobody knows.
    in_doubt: Vec<i32>,
    /// When each connection was made.
    connects: Vec<u64>,
    /// Distinct errors, in order.
    errors: Vec<String>,
}

impl Progress {
    fn error(&mut self, e: String) {
        if self.errors.last() != Some(&e) {
            self.errors.push(e);
        }
    }
}

/// A client that commits rows one by one (autocommit INSERTs of ids 1, 2,
/// ...) through the floating address, reconnecting at once whenever its
/// connection fails.
struct Writer {
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<Progress>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(bed: &Bed) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (s, p, port) = (stop.clone(), progress.clone(), bed.port);
        let thread = in_netns(&bed.client_ns(), move || write_rows(port, s, p));
        Self {
            stop,
            progress,
            thread: Some(thread),
        }
    }

    /// Wait until `cond` holds of the progress.
    fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&Progress) -> bool) {
        let r = wait_until(what, timeout, || {
            cond(&self.progress.lock().unwrap_or_else(PoisonError::into_inner))
        });
        if let Err(e) = r {
            let p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
            panic!(
                "{e}: {} committed, connects {:?}, errors {:?}",
                p.committed.len(),
                p.connects,
                p.errors
            );
        }
    }

    fn finish(mut self) -> Progress {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && let Err(panic) = t.join()
        {
            std::panic::resume_unwind(panic);
        }
        std::mem::take(&mut *self.progress.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn write_rows(port: u16, stop: Arc<AtomicBool>, progress: Arc<Mutex<Progress>>) {
    let lock = || progress.lock().unwrap_or_else(PoisonError::into_inner);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next: i32 = 1;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_ref() else {
            match connect(port, CONNECT_ATTEMPT).await {
                Ok(c) => {
                    lock().connects.push(now_ms());
                    client = Some(c);
                }
                Err(e) => {
                    lock().error(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        };
        let insert = "INSERT INTO t (id) VALUES ($1)";
        match tokio::time::timeout(STATEMENT, c.execute(insert, &[&next])).await {
            Ok(Ok(1)) => lock().committed.push((next, now_ms())),
            Ok(Ok(n)) => panic!("INSERT of {next} inserted {n} rows"),
            Ok(Err(e)) => {
                let mut p = lock();
                p.in_doubt.push(next);
                p.error(describe(&e));
                client = None;
            }
            Err(_) => {
                let mut p = lock();
                p.in_doubt.push(next);
                p.error(format!("INSERT timed out after {STATEMENT:?}"));
                client = None;
            }
        }
        next += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The time of day (ms) of the last line of server log `log` containing
/// `what` (lines start `YYYY-MM-DD HH:MM:SS.mmm UTC`).
fn log_time(log: &str, what: &str) -> Option<u64> {
    let line = log.lines().rfind(|l| l.contains(what))?;
    let time = line.split_whitespace().nth(1)?;
    let (hms, ms) = time.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<u64>().ok()?)
}

/// Node `k`'s first event of `kind` about the group (or any, with
/// `resource`) at or after `since`.
fn event_at(c: &Cluster, k: usize, kind: &str, resource: Option<&str>, since: u64) -> Option<u64> {
    c.events(k)
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter(|e| resource.is_none_or(|r| e["resource"] == r))
        .filter_map(|e| e["ts_ms"].as_u64())
        .find(|t| *t >= since)
}

/// The recovery actions node `k`'s monitor failures led to, in order.
fn ladder_steps(c: &Cluster, k: usize) -> Vec<String> {
    c.events(k)
        .iter()
        .filter(|e| e["kind"] == "monitor_failed" && e["group"] == GROUP)
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect()
}

fn wait_ladder(c: &Cluster, k: usize, steps: &[&str]) {
    let r = wait_until("the monitor failure", Duration::from_secs(10), || {
        ladder_steps(c, k) == steps
    });
    if let Err(e) = r {
        panic!(
            "{e}: n{k} took {:?}, expected {steps:?}\nevents:\n{}",
            ladder_steps(c, k),
            c.events(k)
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn kill_9_of_the_active_guest_loses_no_committed_row() {
    let mut bed = Bed::new(LADDER);
    let watcher = Watcher::new(&bed);
    let t_start = bed.wait_held_by(0, Duration::from_secs(30));
    bed.wait_all_agree("n0");
    execute(&bed, "CREATE TABLE t (id int PRIMARY KEY)".into());
    let writer = Writer::start(&bed);
    writer.wait("50 commits", Duration::from_secs(15), |p| {
        p.committed.len() >= 50
    });

    // Power loss of n0: its daemon dies at once; the fence agent kills the
    // rest of its namespace (PostgreSQL dies uncleanly, and with the last
    // process the mount namespace holding the disk goes) and takes its
    // link down, before n1 may take over.
    let killed = now_ms();
    bed.c.kill(0);
    let took = bed.wait_held_by(1, Duration::from_secs(20));
    writer.wait(
        "30 commits after the reconnection",
        Duration::from_secs(15),
        |p| {
            p.connects
                .iter()
                .find(|t| **t > killed)
                .is_some_and(|r| p.committed.iter().filter(|(_, t)| t >= r).count() >= 30)
        },
    );
    let p = writer.finish();
    let (samples, doubles) = watcher.finish();
    assert!(doubles.is_empty(), "two nodes held the group: {doubles:?}");

    // Every committed row is there; beyond them at most the in-doubt ones.
    let have = ids(&bed);
    let committed: BTreeSet<i32> = p.committed.iter().map(|(id, _)| *id).collect();
    let missing: Vec<&i32> = committed.difference(&have).collect();
    assert!(missing.is_empty(), "committed rows lost: {missing:?}");
    let extra: Vec<&i32> = have
        .difference(&committed)
        .filter(|id| !p.in_doubt.contains(id))
        .collect();
    assert!(extra.is_empty(), "rows nobody committed: {extra:?}");

    // The outage, as the client saw it.
    let reconnect = p.connects.iter().copied().find(|t| *t > killed);
    let reconnect = reconnect.unwrap_or_else(|| panic!("no reconnection: {p:?}"));
    let last_before = p
        .committed
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| *t < reconnect)
        .max()
        .unwrap_or(killed);
    let first_after = p
        .committed
        .iter()
        .map(|(_, t)| *t)
        .find(|t| *t >= reconnect)
        .unwrap_or(reconnect);
    let after = |t: Option<u64>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| format!("{} ms", t.saturating_sub(killed)),
        )
    };
    eprintln!(
        "PostgreSQL failover, kill -9 of n0 (heartbeat timeout 500 ms): \
         group held by n0 {} ms after the cluster formed; \
         after the kill: last commit on n0 {}, n1 fenced n0 {}, disk mounted on n1 {}, \
         address {}, server ready {}, client reconnected {} (the outage), first commit after {}; \
         {} rows committed, {} in doubt, all there; group on n1 alone after {} ms; \
         {samples} watcher samples, no double holder; client errors: {:?}",
        t_start.as_millis(),
        after(Some(last_before)),
        after(event_at(&bed.c, 1, "fence_succeeded", None, killed)),
        after(event_at(
            &bed.c,
            1,
            "resource_started",
            Some("disk"),
            killed
        )),
        after(event_at(&bed.c, 1, "resource_started", Some("vip"), killed)),
        after(event_at(&bed.c, 1, "resource_started", Some("pg"), killed)),
        after(Some(reconnect)),
        after(Some(first_after)),
        committed.len(),
        p.in_doubt.len(),
        took.as_millis(),
        p.errors,
    );
    assert!(
        reconnect - killed < 5000,
        "outage of {} ms",
        reconnect - killed
    );

    // n1 took over because n0 was fenced, and its server recovered from a
    // crash: n0's server had died without a shutdown.
    assert_eq!(testbed::fence::fenced(bed.c.dir()), ["n0"]);
    // The fence confirmed n0 off only once the disk it had mounted was
    // released (with n0's last process, its mount namespace went).
    let fence_log = std::fs::read_to_string(bed.c.dir().join("fence.log")).unwrap_or_default();
    assert!(
        fence_log
            .lines()
            .any(|l| l == format!("n0 released {}", bed.disk.device)),
        "{fence_log}"
    );
    assert_eq!(
        bed.starts(),
        [
            "n0 start START prev= fenced=0",
            "n1 start FAILOVER prev=n0 fenced=1"
        ]
    );
    let log = bed.disk.server_log(1);
    let span = |from: &str, to: &str| match (log_time(&log, from), log_time(&log, to)) {
        (Some(a), Some(b)) => format!("{} ms", b.saturating_sub(a)),
        _ => "-".to_owned(),
    };
    eprintln!(
        "n1's server: {} from its start to ready: {} syncing the data directory, {} of redo and end-of-recovery checkpoint",
        span("starting PostgreSQL", "ready to accept connections"),
        span(
            "database system was interrupted",
            "automatic recovery in progress"
        ),
        span(
            "automatic recovery in progress",
            "ready to accept connections"
        ),
    );
    assert!(
        log.contains("database system was interrupted")
            && log.contains("automatic recovery in progress"),
        "{log}"
    );
    let s = ok(bed.c.status(1));
    let g = s.groups.iter().find(|g| g.name == GROUP);
    assert_eq!(g.and_then(|g| g.owner.as_deref()), Some("n1"), "{g:?}");
}

#[test]
fn a_failing_server_walks_the_ladder_and_keeps_its_data() {
    let mut bed = Bed::new(LADDER);
    let watcher = Watcher::new(&bed);
    bed.wait_held_by(0, Duration::from_secs(30));
    bed.wait_all_agree("n0");
    execute(
        &bed,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)".into(),
    );
    let mut rows = 100;
    let mut timings = BTreeMap::new();
    // After each step the data are all there, and more can be written.
    let check = |bed: &Bed, rows: &mut i32| {
        let want: BTreeSet<i32> = (1..=*rows).collect();
        assert_eq!(ids(bed), want);
        execute(
            bed,
            format!(
                "INSERT INTO t SELECT generate_series({}, {})",
                *rows + 1,
                *rows + 10
            ),
        );
        *rows += 10;
    };

    // First crash: the monitor fails, the server is restarted in place.
    let t0 = Instant::now();
    bed.crash_server(0);
    wait_ladder(&bed.c, 0, &["restart"]);
    assert_eq!(
        bed.wait_starts(2, Duration::from_secs(15)),
        "n0 start RECOVER prev= fenced=0"
    );
    bed.wait_held_by(0, Duration::from_secs(5));
    timings.insert("1 restart on n0", t0.elapsed());
    check(&bed, &mut rows);

    // Second: restarts used up, the group fails over (stopped on n0, the
    // disk unmounted, then mounted on n1).
    let t0 = Instant::now();
    bed.crash_server(0);
    wait_ladder(&bed.c, 0, &["restart", "failover"]);
    assert_eq!(
        bed.wait_starts(3, Duration::from_secs(15)),
        "n1 start FAILOVER prev=n0 fenced=0"
    );
    bed.wait_held_by(1, Duration::from_secs(5));
    timings.insert("2 failover to n1", t0.elapsed());
    check(&bed, &mut rows);

    // Third, on n1: restarted there.
    let t0 = Instant::now();
    bed.crash_server(1);
    wait_ladder(&bed.c, 1, &["restart"]);
    assert_eq!(
        bed.wait_starts(4, Duration::from_secs(15)),
        "n1 start RECOVER prev=n0 fenced=0"
    );
    bed.wait_held_by(1, Duration::from_secs(5));
    timings.insert("3 restart on n1", t0.elapsed());
    check(&bed, &mut rows);

    // Fourth: failovers used up too, the final action stops the group.
    let t0 = Instant::now();
    let since = now_ms();
    bed.crash_server(1);
    wait_ladder(&bed.c, 1, &["restart", "final"]);
    ok(bed
        .c
        .wait_event(1, "group_stopped", Duration::from_secs(10), |e| {
            e["group"] == GROUP && e["ts_ms"].as_u64().is_some_and(|t| t >= since)
        }));
    timings.insert("4 final stop", t0.elapsed());
    // The final action's stop request is applied by the next placement,
    // published a moment after the group stopped here.
    let stopped_for_good = || {
        bed.c.status(1).ok().is_some_and(|s| {
            s.groups
                .iter()
                .any(|g| g.name == GROUP && g.wanted == Some(false) && g.owner.is_none())
        })
    };
    if testbed::wait_until(
        "the group wanted stopped",
        Duration::from_secs(5),
        stopped_for_good,
    )
    .is_err()
    {
        let s = ok(bed.c.status(1));
        panic!("{:?}", s.groups.iter().find(|g| g.name == GROUP));
    }
    assert!(bed.holdings().is_empty(), "{:?}", bed.holdings());
    assert_eq!(ladder_steps(&bed.c, 0), ["restart", "failover"]);
    assert_eq!(bed.starts().len(), 4, "{:?}", bed.pg_log());
    // The stop released the disk (nothing uses it any more), and its file
    // system is clean.
    assert!(
        released(&bed.disk.device),
        "the disk is still in use: {:?}\nn1 log:\n{}",
        mounted_by(&bed.disk.device),
        bed.c.log(1)
    );
    sh(Command::new("e2fsck").args(["-f", "-n", &bed.disk.device]));

    // The operator clears the failures and starts the group again: it runs
    // on its preferred node, with every row.
    let out = bed.ctl(2, &["clear", GROUP]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = bed.ctl(2, &["group", "start", GROUP]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    bed.wait_held_by(0, Duration::from_secs(20));
    let want: BTreeSet<i32> = (1..=rows).collect();
    assert_eq!(ids(&bed), want);
    let (samples, doubles) = watcher.finish();
    assert!(doubles.is_empty(), "two nodes held the group: {doubles:?}");
    eprintln!(
        "PostgreSQL recovery ladder (monitor every 200 ms), from pg_ctl stop -m immediate to the group held again: {}; \
         {rows} rows kept; {samples} watcher samples, no double holder",
        timings
            .iter()
            .map(|(k, v)| format!("{k} {} ms", v.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
