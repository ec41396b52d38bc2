//! The OCF executor against Debian's resource agents (`resource-agents`,
//! installed by `scripts/setup-debian`), for real: `Dummy`, `IPaddr2`
//! adding an address inside a network namespace, `Filesystem` mounting an
//! ext4 image on a loop device, and `ocf-tester` driving `Dummy` through
//! our executor. Needs root (namespaces, addresses, mounts, loop devices),
//! as CI has.
//!
//! Namespaces: the agents must act inside a namespace of the test's own,
//! as they do inside the namespace `guest-clusterd` runs in on the testbed
//! (`ip netns exec`). Rather than teach the driver to prefix its commands,
//! each such test runs the driver on a thread of its own that first
//! `unshare`s a fresh network (or mount) namespace: the agents the driver
//! starts from that thread, and all they start, are in it, as under
//! `ip netns exec`. The namespace has no name to leak and goes away with
//! the thread, also when the test fails.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_core::resource::{
    ActionContext, ActionOutcome, CheckOutcome, MonitorDriver, Probe, ResourceDriver, StartReason,
};
use guest_cluster::ocf::{OcfDriver, OcfMonitor, RscTmp};
use nix::sched::CloneFlags;

const OCF_ROOT: &str = "/usr/lib/ocf";
const TIMEOUT: Duration = Duration::from_secs(20);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn need_agent(kind: &str) {
    let path = Path::new(OCF_ROOT).join("resource.d/heartbeat").join(kind);
    assert!(
        path.exists(),
        "{} is missing: install `resource-agents` (scripts/setup-debian)",
        path.display()
    );
}

fn config(kind: &str, params: &[(&str, &str)]) -> conf::OcfResource {
    need_agent(kind);
    conf::OcfResource {
        agent: format!("heartbeat:{kind}"),
        ocf_root: OCF_ROOT.into(),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn ctx(resource: &str, node: &str) -> ActionContext {
    ActionContext {
        group: "g".into(),
        resource: resource.into(),
        node: node.into(),
        reason: StartReason::Start,
        previous_owner: None,
        previous_owner_fenced: false,
        timeout: TIMEOUT,
    }
}

fn monitor(
    resource: &str,
    config: &conf::OcfResource,
    depth: u32,
    rsctmp: &Arc<RscTmp>,
) -> OcfMonitor {
    let m = conf::Monitor {
        name: format!("{resource}-check"),
        interval: conf::Duration::from_millis(10_000),
        timeout: conf::Duration::from_millis(20_000),
        start_delay: conf::Duration::from_millis(0),
        while_active: true,
        resource: None,
        recovery: conf::Recovery::default(),
        kind: conf::MonitorKind::Ocf(conf::OcfMonitor { depth }),
    };
    OcfMonitor::new(
        "g",
        "node-a",
        &m,
        depth,
        Some((resource, config)),
        rsctmp.clone(),
    )
}

/// Run `program args`, which must succeed; its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `test` on a thread of its own in fresh namespaces of `flags`, with
/// a runtime of that thread (so every process the driver starts is in
/// them). A panic inside is the test's.
fn in_new_namespaces<F, Fut>(flags: CloneFlags, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(flags).unwrap_or_else(|e| panic!("unshare {flags:?} (root?): {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn dummy_starts_monitors_and_stops_with_per_node_state() {
    let dir = tempdir();
    let node_a = Arc::new(RscTmp::new(dir.path().join("node-a")));
    let node_b = Arc::new(RscTmp::new(dir.path().join("node-b")));
    let config = config("Dummy", &[]);
    let on_a = OcfDriver::new(&config, node_a.clone());
    let on_b = OcfDriver::new(&config, node_b.clone());
    let (a, b) = (ctx("app", "node-a"), ctx("app", "node-b"));

    assert_eq!(on_a.probe(&a).await, Probe::Stopped);
    let started = Instant::now();
    assert_eq!(on_a.start(&a).await, ActionOutcome::Ok);
    let start_took = started.elapsed();
    // Dummy keeps its flag in HA_RSCTMP: node A's, not node B's.
    assert!(node_a.path().join("Dummy-app.state").exists());
    assert_eq!(on_a.probe(&a).await, Probe::Running);
    assert_eq!(on_b.probe(&b).await, Probe::Stopped);
    let check = monitor("app", &config, 0, &node_a);
    let checked = Instant::now();
    assert_eq!(check.check(TIMEOUT).await, CheckOutcome::Ok);
    let check_took = checked.elapsed();

    assert_eq!(on_a.stop(&a).await, ActionOutcome::Ok);
    assert_eq!(on_a.probe(&a).await, Probe::Stopped);
    assert!(!node_a.path().join("Dummy-app.state").exists());
    // The monitor of a stopped Dummy fails with the code's meaning and
    // the agent's exit reason.
    assert_eq!(
        check.check(TIMEOUT).await,
        CheckOutcome::Failed(
            "exit 7, not running (OCF_NOT_RUNNING): No process state file found".into()
        )
    );
    // Stopping what is stopped succeeds.
    assert_eq!(on_a.stop(&a).await, ActionOutcome::Ok);
    eprintln!(
        "Dummy: first start (meta-data, validate-all, start) {start_took:?}, monitor {check_took:?}"
    );
}

#[tokio::test]
async fn dummy_with_an_unwritable_state_fails_validation_hard() {
    let dir = tempdir();
    let rsctmp = Arc::new(RscTmp::new(dir.path().join("rsctmp")));
    let state = dir.path().join("no-such-dir/app.state");
    let config = config("Dummy", &[("state", &state.display().to_string())]);
    let driver = OcfDriver::new(&config, rsctmp);
    match driver.start(&ctx("app", "node-a")).await {
        ActionOutcome::Failed { message, hard } => {
            assert!(hard, "{message}");
            assert!(
                message.starts_with("validate-all: exit 2, invalid arguments (OCF_ERR_ARGS)"),
                "{message}"
            );
            assert!(message.contains("is not writable"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Never started here: its stop is no reason to fence.
    assert_eq!(driver.stop(&ctx("app", "node-a")).await, ActionOutcome::Ok);
}

#[test]
fn ipaddr2_adds_and_removes_an_address_in_a_namespace() {
    need_agent("IPaddr2");
    let dir = tempdir();
    let rsctmp = Arc::new(RscTmp::new(dir.path().join("rsctmp")));
    in_new_namespaces(CloneFlags::CLONE_NEWNET, move || async move {
        run("ip", &["link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "link", "add", "kvha0", "type", "veth", "peer", "name", "kvha1",
            ],
        );
        run("ip", &["link", "set", "kvha0", "up"]);
        run("ip", &["link", "set", "kvha1", "up"]);
        let addresses = || run("ip", &["-4", "-o", "addr", "show", "dev", "kvha0"]);

        let config = config(
            "IPaddr2",
            &[
                ("ip", "192.0.2.10"),
                ("cidr_netmask", "24"),
                ("nic", "kvha0"),
            ],
        );
        let driver = OcfDriver::new(&config, rsctmp.clone());
        let c = ctx("vip", "node-a");
        assert_eq!(driver.probe(&c).await, Probe::Stopped);
        let started = Instant::now();
        assert_eq!(driver.start(&c).await, ActionOutcome::Ok);
        let start_took = started.elapsed();
        assert!(
            addresses().contains("inet 192.0.2.10/24"),
            "{}",
            addresses()
        );
        assert_eq!(driver.probe(&c).await, Probe::Running);
        let check = monitor("vip", &config, 0, &rsctmp);
        assert_eq!(check.check(TIMEOUT).await, CheckOutcome::Ok);

        let stopped = Instant::now();
        assert_eq!(driver.stop(&c).await, ActionOutcome::Ok);
        let stop_took = stopped.elapsed();
        assert!(!addresses().contains("192.0.2.10"), "{}", addresses());
        assert_eq!(driver.probe(&c).await, Probe::Stopped);
        assert!(matches!(
            check.check(TIMEOUT).await,
            CheckOutcome::Failed(m) if m.starts_with("exit 7,")
        ));
        eprintln!("IPaddr2: first start {start_took:?}, stop {stop_took:?}");
    });
}

/// A loop device over an image file, detached when dropped.
struct LoopDevice(String);

impl LoopDevice {
    fn new(image: &Path) -> Self {
        let device = run("losetup", &["-f", "--show", &image.display().to_string()]);
        Self(device.trim().to_owned())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Busy (still mounted somewhere): the kernel detaches it once free.
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn mounted_at(mounts: &str, dir: &Path) -> bool {
    let dir = dir.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.as_str()))
}

#[test]
fn filesystem_mounts_an_ext4_image_on_a_loop_device() {
    need_agent("Filesystem");
    let dir = tempdir();
    let image = dir.path().join("fs.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap_or_else(|e| panic!("{e}"));
    run("mkfs.ext4", &["-q", "-F", &image.display().to_string()]);
    let device = LoopDevice::new(&image);
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap_or_else(|e| panic!("{e}"));
    let rsctmp = Arc::new(RscTmp::new(dir.path().join("rsctmp")));
    let dev = device.0.clone();
    let mnt = mountpoint.clone();
    // A mount namespace of its own: a failing test leaves no mount behind.
    in_new_namespaces(CloneFlags::CLONE_NEWNS, move || async move {
        run("mount", &["--make-rprivate", "/"]);
        let mounts = || {
            std::fs::read_to_string("/proc/thread-self/mounts").unwrap_or_else(|e| panic!("{e}"))
        };
        let config = config(
            "Filesystem",
            &[
                ("device", &dev),
                ("directory", &mnt.display().to_string()),
                ("fstype", "ext4"),
            ],
        );
        let driver = OcfDriver::new(&config, rsctmp.clone());
        let c = ctx("data", "node-a");
        assert_eq!(driver.probe(&c).await, Probe::Stopped);
        let started = Instant::now();
        assert_eq!(driver.start(&c).await, ActionOutcome::Ok);
        let start_took = started.elapsed();
        assert!(mounted_at(&mounts(), &mnt), "{}", mounts());
        // Only in this namespace: the rest of the machine does not see it.
        let outside = std::fs::read_to_string("/proc/1/mounts").unwrap_or_default();
        assert!(!mounted_at(&outside, &mnt));
        std::fs::write(mnt.join("hello"), "data").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(driver.probe(&c).await, Probe::Running);
        // Depth 20: the agent writes and reads a file on the filesystem.
        assert_eq!(
            monitor("data", &config, 20, &rsctmp).check(TIMEOUT).await,
            CheckOutcome::Ok
        );

        assert_eq!(driver.stop(&c).await, ActionOutcome::Ok);
        assert!(!mounted_at(&mounts(), &mnt), "{}", mounts());
        assert!(!mnt.join("hello").exists());
        assert_eq!(driver.probe(&c).await, Probe::Stopped);
        eprintln!("Filesystem: first start {start_took:?}");
    });
    drop(device);
}

/// The example `ocf-exec`, built beside this test (`cargo test` builds a
/// package's examples).
fn ocf_exec() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} has no profile directory", exe.display()));
    let path = profile.join("examples/ocf-exec");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p guest-cluster --examples`",
        path.display()
    );
    path
}

#[test]
fn ocf_tester_passes_dummy_through_our_executor() {
    need_agent("Dummy");
    let tester = Path::new("/usr/sbin/ocf-tester");
    assert!(
        tester.exists(),
        "ocf-tester is missing: install resource-agents"
    );
    let dir = tempdir();
    // ocf-tester checks that `nobody` may run the agent's meta-data: the
    // wrapper, and our executor copied beside it, must be reachable.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    let exe = dir.path().join("ocf-exec");
    std::fs::copy(ocf_exec(), &exe).unwrap_or_else(|e| panic!("{e}"));
    let calls = dir.path().join("calls");
    let wrapper = dir.path().join("Dummy-via-kvmha");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$1\" >> {calls} 2>/dev/null\nexec {exe} --ocf-root {OCF_ROOT} --rsctmp {rsctmp} heartbeat:Dummy \"$@\"\n",
            calls = calls.display(),
            exe = exe.display(),
            rsctmp = dir.path().join("rsctmp").display(),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));

    let started = Instant::now();
    let out = Command::new(tester)
        .args(["-n", &format!("kvmha-tester-{}", std::process::id())])
        .arg(&wrapper)
        .env("OCF_ROOT", OCF_ROOT)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("passed all tests"),
        "ocf-tester: {}\n{stdout}\n{stderr}",
        out.status
    );
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    for action in ["meta-data", "validate-all", "start", "monitor", "stop"] {
        assert!(calls.lines().any(|l| l == action), "no {action} in {calls}");
    }
    eprintln!(
        "ocf-tester: {} agent calls through ocf-exec in {took:?}",
        calls.lines().count()
    );
}
