//! Real QEMU guests for host-cluster tests: one `libvirtd` per simulated
//! host, small direct-boot guests under TCG, and a LAN on which a client
//! reaches them.
//!
//! What it needs is installed by `scripts/setup-qemu` (libvirt 11 and
//! QEMU 10 from bookworm-backports, busybox-static, and a guest kernel
//! unpacked into `/var/cache/kvmha-qemu`); [`Assets::find`] fails with a
//! message saying so when something is missing.
//!
//! - [`Libvirtd`]: a `libvirtd` in a host's network namespace and in a
//!   mount namespace of its own, where private directories of the test
//!   are bind-mounted over `/etc/libvirt`, `/run/libvirt`,
//!   `/var/lib/libvirt`, `/var/cache/libvirt` and `/var/log/libvirt`. It
//!   runs under `kvmha-subreaper`, which reaps its QEMUs at once (the
//!   testbed's PID 1 reaps orphans only every ~1.4 s). The host daemon
//!   reaches it at `qemu+unix:///system?socket=DIR/run/libvirt-sock`.
//!   Everything in the namespace is killed when it drops.
//! - [`write_initramfs`]: a `newc` archive with busybox, the kernel's
//!   virtio, ACPI button and pvpanic modules and an `/init` that puts the
//!   address given on the kernel command line on `eth0`, serves
//!   `NAME BOOT_ID` over HTTP on port 80, and powers off on the ACPI
//!   power button (busybox `acpid`). Two CGI scripts make the guest fail
//!   on request: `/cgi-bin/panic` crashes its kernel (sysrq `c`), which
//!   the pvpanic device reports to QEMU; `/cgi-bin/fill` writes 64 MiB to
//!   its data disk `/dev/vda` with `O_DIRECT` (on a [`ThinPool`] that
//!   cannot hold them, the VM pauses on the I/O error).
//! - [`Guest::domain_xml`]: a 128 MiB, one-vCPU TCG domain booting that
//!   kernel and initramfs directly, its NIC on the host's `vmbr0`, its
//!   serial console in a file, an ISA pvpanic device, and optionally a
//!   data disk that stops the VM on an I/O error.
//! - [`ThinPool`]: a small tmpfs mounted in a host's libvirtd mount
//!   namespace, holding a sparse disk image far larger than itself:
//!   thin-provisioned storage that runs full.
//! - [`VmLan`]: `vmbr0` in every host namespace, joined through veth
//!   pairs to one bridge in a LAN namespace, and a client namespace on
//!   it; [`VmLan::get`] fetches a guest's page from the client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Proc, bin};

/// The first address of the guests' LAN: the client has `.1`.
const LAN: [u8; 3] = [10, 77, 0];

/// What the guests and their hosts are made of, found on this machine.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The guest kernel.
    pub vmlinuz: PathBuf,
    /// Its modules, in load order.
    pub modules: Vec<PathBuf>,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

impl Assets {
    /// Find everything the real-QEMU tests need, or say what is missing
    /// and how to install it.
    pub fn find() -> anyhow::Result<Self> {
        let cache = std::env::var_os("KVMHA_QEMU_CACHE")
            .map_or_else(|| PathBuf::from("/var/cache/kvmha-qemu"), PathBuf::from);
        let mut missing = Vec::new();
        let vmlinuz = cache.join("vmlinuz");
        if !vmlinuz.is_file() {
            missing.push(vmlinuz.display().to_string());
        }
        let order = cache.join("modules/order");
        let modules: Vec<PathBuf> = std::fs::read_to_string(&order)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| cache.join("modules").join(format!("{m}.ko")))
            .collect();
        if modules.is_empty() {
            missing.push(order.display().to_string());
        }
        missing.extend(
            modules
                .iter()
                .filter(|m| !m.is_file())
                .map(|m| m.display().to_string()),
        );
        let busybox = PathBuf::from("/bin/busybox");
        if !is_static(&busybox) {
            missing.push("/bin/busybox (statically linked: busybox-static)".into());
        }
        for program in ["libvirtd", "virsh", "qemu-system-x86_64", "curl"] {
            if which(program).is_none() {
                missing.push(program.into());
            }
        }
        if !missing.is_empty() {
            bail!(
                "the real-QEMU tests need `scripts/setup-qemu` (run as root) first; missing: {}",
                missing.join(", ")
            );
        }
        let version = Command::new("libvirtd").arg("--version").output();
        if let Ok(out) = version {
            let text = String::from_utf8_lossy(&out.stdout);
            let major = text
                .split_whitespace()
                .last()
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.parse::<u32>().ok());
            if major.is_some_and(|m| m < 11) {
                bail!(
                    "libvirtd is `{}`; the real-QEMU tests need libvirt 11 from bookworm-backports: run `scripts/setup-qemu` as root",
                    text.trim()
                );
            }
        }
        Ok(Self {
            vmlinuz,
            modules,
            busybox,
        })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// An ELF executable with no `PT_INTERP` (no dynamic loader): static.
fn is_static(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) {
        return false;
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff + i * usize::from(phentsize);
        // p_type 3 = PT_INTERP
        bytes
            .get(at..at + 4)
            .is_some_and(|t| t != 3u32.to_le_bytes())
    })
}

/// The guest's `/init`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "kvmha-guest: cannot load $m"; done
name=guest
for a in $(cat /proc/cmdline); do
    case "$a" in
    kvmha.ip=*) ip=${a#kvmha.ip=} ;;
    kvmha.name=*) name=${a#kvmha.name=} ;;
    esac
done
hostname "$name"
ip link set lo up
ip addr add "$ip" dev eth0
ip link set eth0 up
echo "$name $(cat /proc/sys/kernel/random/boot_id)" >/www/index.html
# In the foreground: as a daemon it would log to the missing /var/log.
acpid -f -c /etc/acpi -l /dev/console &
httpd -p 80 -h /www
echo "kvmha-guest: $name serving on $ip after $(cut -d' ' -f1 /proc/uptime) s"
while :; do sleep 3600; done
"#;

/// busybox `acpid`'s action for the power button.
const POWER_BUTTON: &str =
    "#!/bin/sh\necho 'kvmha-guest: ACPI power button, powering off'\nsync\npoweroff -f\n";

/// `GET /cgi-bin/panic`: answer, then crash the kernel.
const CGI_PANIC: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\npanicking\n'
echo 'kvmha-guest: kernel panic requested' >/dev/console
(sleep 1; echo c >/proc/sysrq-trigger) >/dev/null 2>&1 </dev/null &
"#;

/// `GET /cgi-bin/fill`: answer, then write 64 MiB to the data disk.
const CGI_FILL: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
if [ ! -b /dev/vda ]; then echo 'no data disk'; exit 0; fi
echo 'filling /dev/vda'
echo 'kvmha-guest: writing 64 MiB to /dev/vda' >/dev/console
(dd if=/dev/zero of=/dev/vda bs=64k count=1024 oflag=direct >/dev/console 2>&1) >/dev/null 2>&1 </dev/null &
"#;

/// One member of a `newc` archive.
enum Entry<'a> {
    Dir,
    File(&'a [u8], u32),
    CharDev(u32, u32),
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, entry: &Entry<'_>) {
    let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
        Entry::Dir => (0o040_755, &[], (0, 0)),
        Entry::File(data, perm) => (0o100_000 | perm, data, (0, 0)),
        Entry::CharDev(major, minor) => (0o020_600, &[], (*major, *minor)),
    };
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Write the guests' initramfs (an uncompressed `newc` cpio archive) to
/// `path`.
pub fn write_initramfs(assets: &Assets, path: &Path) -> anyhow::Result<()> {
    let busybox = std::fs::read(&assets.busybox)
        .with_context(|| format!("read {}", assets.busybox.display()))?;
    let mut modules = Vec::new();
    for m in &assets.modules {
        let data = std::fs::read(m).with_context(|| format!("read {}", m.display()))?;
        let name = m
            .file_stem()
            .and_then(|s| s.to_str())
            .context("module name")?
            .to_owned();
        modules.push((name, data));
    }
    let order: String = modules.iter().map(|(n, _)| format!("{n}\n")).collect();
    let mut out = Vec::new();
    let mut ino = 1;
    let mut add = |name: &str, entry: Entry<'_>| {
        cpio_entry(&mut out, ino, name, &entry);
        ino += 1;
    };
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "www",
        "www/cgi-bin",
        "etc",
        "etc/acpi",
        "etc/acpi/PWRF",
        "modules",
    ] {
        add(dir, Entry::Dir);
    }
    add("dev/console", Entry::CharDev(5, 1));
    add("bin/busybox", Entry::File(&busybox, 0o755));
    add("init", Entry::File(INIT.as_bytes(), 0o755));
    add(
        "etc/acpi/PWRF/00000080",
        Entry::File(POWER_BUTTON.as_bytes(), 0o755),
    );
    add(
        "www/cgi-bin/panic",
        Entry::File(CGI_PANIC.as_bytes(), 0o755),
    );
    add("www/cgi-bin/fill", Entry::File(CGI_FILL.as_bytes(), 0o755));
    add("modules/order", Entry::File(order.as_bytes(), 0o644));
    for (name, data) in &modules {
        add(&format!("modules/{name}.ko"), Entry::File(data, 0o644));
    }
    add("TRAILER!!!", Entry::File(&[], 0));
    std::fs::write(path, out).with_context(|| format!("write {}", path.display()))
}

/// A guest: its name, MAC and address on the LAN.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Domain name (also the `vm` resource's name).
    pub name: String,
    /// Index on the LAN: address `10.77.0.(10 + index)`.
    pub index: u8,
    /// libvirt's `<on_crash>` action after a guest panic: `destroy` (the
    /// default), `preserve` (the crashed VM stays, as for a dump), ...
    pub on_crash: String,
    /// A raw data disk (`/dev/vda` in the guest) whose I/O errors stop
    /// the VM (`error_policy='stop'`).
    pub data_disk: Option<PathBuf>,
}

impl Guest {
    /// Guest `index` named `name`, destroyed on a panic, no data disk.
    pub fn new(name: &str, index: u8) -> Self {
        Self {
            name: name.to_owned(),
            index,
            on_crash: "destroy".into(),
            data_disk: None,
        }
    }

    /// Its address on the LAN.
    pub fn ip(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(LAN[0], LAN[1], LAN[2], 10 + self.index)
    }

    /// The domain XML: TCG, 128 MiB, direct kernel boot of `assets`'
    /// kernel with `initrd`, the NIC on `vmbr0` (no option ROM), the
    /// serial console appended to `serial`, an ISA pvpanic device, the
    /// data disk if there is one.
    pub fn domain_xml(&self, assets: &Assets, initrd: &Path, serial: &Path) -> String {
        let disk = self.data_disk.as_ref().map_or_else(String::new, |path| {
            format!(
                "
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' error_policy='stop'/>
      <source file='{}'/>
      <target dev='vda' bus='virtio'/>
    </disk>",
                path.display()
            )
        });
        format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet mitigations=off tsc=reliable no_timer_check kvmha.ip={ip}/24 kvmha.name={name}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>{on_crash}</on_crash>
  <devices>{disk}
    <interface type='bridge'>
      <source bridge='vmbr0'/>
      <mac address='52:54:00:4d:00:{index:02x}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <serial type='file'>
      <source path='{serial}' append='on'/>
      <target port='0'/>
    </serial>
    <panic model='isa'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
            name = self.name,
            kernel = assets.vmlinuz.display(),
            initrd = initrd.display(),
            ip = self.ip(),
            index = self.index,
            serial = serial.display(),
            on_crash = self.on_crash,
        )
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim().to_owned()
                + String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn virsh_at(uri: &str, args: &[&str]) -> anyhow::Result<String> {
    run(
        Command::new("virsh").arg("-c").arg(uri).args(args),
        &format!("virsh {}", args.join(" ")),
    )
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
    .map(drop)
}

/// The inode of network namespace `ns`, which identifies it (and finds
/// its processes) also once its name is deleted.
pub fn netns_inode(ns: &str) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/run/netns/{ns}"))
        .map(|m| m.ino())
        .with_context(|| format!("no network namespace {ns}"))
}

/// The processes in the network namespace with inode `ino`.
fn netns_pids(ino: u64) -> Vec<i32> {
    let want = format!("net:[{ino}]");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.as_os_str() == want.as_str())
        })
        .collect()
}

/// SIGKILL every process in the network namespace with inode `ino` until
/// none is left (at most 5 s).
pub fn kill_netns(ino: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let pids = netns_pids(ino);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of the live QEMU processes of domain `name` in the network
/// namespace with inode `ino` (zombies have an empty command line).
pub fn qemu_pids(ino: u64, name: &str) -> Vec<i32> {
    let want_arg = format!("guest={name},");
    netns_pids(ino)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first()
                    .is_some_and(|a| a.ends_with(b"qemu-system-x86_64"))
                    && args.iter().any(|a| a.starts_with(want_arg.as_bytes()))
            })
        })
        .collect()
}

/// Thin-provisioned storage that runs full: a tmpfs of `capacity_kib`
/// mounted on `dir` in a host's libvirtd mount namespace (each host gets
/// its own at the same path, so one domain XML fits both), holding the
/// sparse raw image `image` of `image_mib`. A guest writing more than the
/// capacity gets `ENOSPC` in QEMU.
#[derive(Debug, Clone)]
pub struct ThinPool {
    /// Where it is mounted (created if missing).
    pub dir: PathBuf,
    /// The tmpfs's size.
    pub capacity_kib: u64,
    /// The image's file name in `dir`.
    pub image: String,
    /// The image's (sparse) size.
    pub image_mib: u64,
}

impl ThinPool {
    /// The image's path.
    pub fn image_path(&self) -> PathBuf {
        self.dir.join(&self.image)
    }

    /// The shell lines that set it up (run in the mount namespace).
    fn setup_script(&self) -> String {
        format!(
            "mount -t tmpfs -o size={cap}k kvmha-thin '{dir}'\ntruncate -s {img}M '{path}'\n",
            cap = self.capacity_kib,
            dir = self.dir.display(),
            img = self.image_mib,
            path = self.image_path().display(),
        )
    }
}

/// A `libvirtd` of one simulated host.
#[derive(Debug)]
pub struct Libvirtd {
    ns: String,
    ino: u64,
    dir: PathBuf,
    /// The subreaper above libvirtd (its drop kills only that one; the
    /// namespace's drop kills the rest).
    proc: Proc,
}

impl Libvirtd {
    /// Start a `libvirtd` in network namespace `ns`, its private
    /// directories under `dir`, and wait until it answers.
    pub fn start(ns: &str, dir: &Path) -> anyhow::Result<Self> {
        let mut me = Self::spawn(ns, dir)?;
        me.wait_ready(Duration::from_secs(20))?;
        Ok(me)
    }

    /// Start it without waiting (see [`Libvirtd::wait_ready`]), so that
    /// several start at once.
    pub fn spawn(ns: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with(ns, dir, None)
    }

    /// [`Libvirtd::spawn`], with `pool` mounted in its mount namespace.
    pub fn spawn_with(ns: &str, dir: &Path, pool: Option<&ThinPool>) -> anyhow::Result<Self> {
        let ino = netns_inode(ns)?;
        if let Some(pool) = pool {
            std::fs::create_dir_all(&pool.dir)
                .with_context(|| format!("create {}", pool.dir.display()))?;
        }
        let pool_setup = pool.map(ThinPool::setup_script).unwrap_or_default();
        for d in ["etc", "run", "lib", "cache", "log"] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("create {}", dir.join(d).display()))?;
        }
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .context("read a random UUID")?;
        std::fs::write(
            dir.join("etc/libvirtd.conf"),
            format!(
                "host_uuid = \"{}\"\nlog_outputs = \"3:file:{}\"\n",
                uuid.trim(),
                dir.join("libvirtd.log").display()
            ),
        )
        .context("write libvirtd.conf")?;
        // Root QEMUs without confinement, cgroups or private /dev (no
        // systemd, a container-like machine); QEMU's output in a file
        // (no virtlogd).
        std::fs::write(
            dir.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nsecurity_driver = \"none\"\n\
             stdio_handler = \"file\"\nnamespaces = []\ncgroup_controllers = []\n",
        )
        .context("write qemu.conf")?;
        // `/dev/kvm` is a PVM-only device here, unusable by QEMU (the
        // domains are `type='qemu'`); left root-only, libvirt's capability
        // probing makes each libvirtd start ~5 s slower (7.7 s against
        // 2-3 s measured). TESTBED.md saw defines take ~48 s.
        let _ = Command::new("chgrp").args(["kvm", "/dev/kvm"]).output();
        let _ = Command::new("chmod").args(["0660", "/dev/kvm"]).output();
        // The mount points must exist to bind over them.
        for m in [
            "/etc/libvirt",
            "/run/libvirt",
            "/var/lib/libvirt",
            "/var/cache/libvirt",
            "/var/log/libvirt",
        ] {
            std::fs::create_dir_all(m).with_context(|| format!("create {m}"))?;
        }
        let d = dir.display();
        let script = format!(
            "set -e
mount --bind '{d}/etc' /etc/libvirt
mount --bind '{d}/run' /run/libvirt
mount --bind '{d}/lib' /var/lib/libvirt
mount --bind '{d}/cache' /var/cache/libvirt
mount --bind '{d}/log' /var/log/libvirt
{pool_setup}exec libvirtd -f '{d}/etc/libvirtd.conf' -p '{d}/libvirtd.pid'"
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "unshare", "--mount", "--uts"])
            .args(["--propagation", "slave", "--"])
            .arg(bin("kvmha-subreaper"))
            .args(["sh", "-c", &script]);
        let proc = Proc::from_command(&format!("libvirtd in {ns}"), cmd, &dir.join("daemon.log"))?;
        Ok(Self {
            ns: ns.to_owned(),
            ino,
            dir: dir.to_owned(),
            proc,
        })
    }

    /// Wait until it answers, at most `within`; how long it took from
    /// the call.
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        while self.virsh(&["version"]).is_err() {
            let failed = if let Some(status) = self.proc.exited() {
                Some(format!("exited ({status})"))
            } else if t0.elapsed() > within {
                Some(format!("does not answer after {within:?}"))
            } else {
                None
            };
            if let Some(why) = failed {
                bail!(
                    "libvirtd in {} {why}:\n{}\n{}",
                    self.ns,
                    std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(t0.elapsed())
    }

    /// The connection URI for the host daemon (and `virsh -c`).
    pub fn uri(&self) -> String {
        Self::uri_in(&self.dir)
    }

    /// The connection URI of a `libvirtd` whose private directories are
    /// under `dir`.
    pub fn uri_in(dir: &Path) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            dir.join("run/libvirt-sock").display()
        )
    }

    /// Run `virsh -c URI ARGS`; its stdout.
    pub fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        virsh_at(&self.uri(), args)
    }

    /// The state of domain `name` as `virsh domstate` says it (`running`,
    /// `paused`...), `None` if there is no such domain or libvirtd does
    /// not answer.
    pub fn state(&self, name: &str) -> Option<String> {
        self.virsh(&["domstate", name])
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// The network namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The inode of its network namespace.
    pub fn netns_inode(&self) -> u64 {
        self.ino
    }

    /// Power the simulated host off: SIGKILL everything in its network
    /// namespace (libvirtd, its QEMUs, the host daemon) at once.
    pub fn power_off(&self) {
        kill_netns(self.ino);
    }

    /// The live QEMU processes of domain `name` on this host.
    pub fn qemu_pids(&self, name: &str) -> Vec<i32> {
        qemu_pids(self.ino, name)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // libvirtd, its QEMUs, the subreaper, and whatever else runs on
        // this simulated host (found by its namespace's inode: its name
        // may be deleted already).
        kill_netns(self.ino);
    }
}

/// The guests' LAN: `vmbr0` in every host namespace, a LAN bridge, and
/// a client.
#[derive(Debug)]
pub struct VmLan {
    lan: String,
    client: String,
}

impl VmLan {
    /// Build it for the host namespaces `hosts`.
    pub fn new(hosts: &[String]) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "kq{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let me = Self {
            lan: format!("{prefix}lan"),
            client: format!("{prefix}cli"),
        };
        me.build(hosts).context("building the guests' LAN")?;
        Ok(me)
    }

    fn build(&self, hosts: &[String]) -> anyhow::Result<()> {
        let (lan, client) = (&self.lan, &self.client);
        ip(&["netns", "add", lan])?;
        ip(&["-n", lan, "link", "add", "lanbr", "type", "bridge"])?;
        ip(&["-n", lan, "link", "set", "lanbr", "up"])?;
        for (k, ns) in hosts.iter().enumerate() {
            let port = format!("h{k}");
            ip(&["-n", ns, "link", "add", "vmbr0", "type", "bridge"])?;
            ip(&["-n", ns, "link", "set", "vmbr0", "up"])?;
            ip(&[
                "link", "add", "vmup0", "netns", ns, "type", "veth", "peer", "name", &port,
                "netns", lan,
            ])?;
            ip(&["-n", ns, "link", "set", "vmup0", "master", "vmbr0", "up"])?;
            ip(&["-n", lan, "link", "set", &port, "master", "lanbr", "up"])?;
        }
        ip(&["netns", "add", client])?;
        ip(&[
            "link", "add", "eth0", "netns", client, "type", "veth", "peer", "name", "cli", "netns",
            lan,
        ])?;
        ip(&["-n", lan, "link", "set", "cli", "master", "lanbr", "up"])?;
        let addr = format!("{}.{}.{}.1/24", LAN[0], LAN[1], LAN[2]);
        ip(&["-n", client, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", client, "link", "set", "eth0", "up"])?;
        ip(&["-n", client, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The page `guest` serves (`NAME BOOT_ID`), fetched from the client
    /// within `timeout`; `None` if it does not answer.
    pub fn get(&self, guest: &Guest, timeout: Duration) -> Option<String> {
        self.get_path(guest, "/", timeout)
    }

    /// What `guest` answers at `path` (`/cgi-bin/panic`...) within
    /// `timeout`; `None` if it does not answer.
    pub fn get_path(&self, guest: &Guest, path: &str, timeout: Duration) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client, "curl", "-sf", "--max-time"])
            .arg(format!("{:.3}", timeout.as_secs_f64()))
            .arg(format!("http://{}{path}", guest.ip()))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Wait until `guest` answers with a page `accept` takes; the page.
    pub fn wait_page(
        &self,
        guest: &Guest,
        within: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(page) = self.get(guest, Duration::from_millis(500)) {
                if accept(&page) {
                    return Ok(page);
                }
                last = Some(page);
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!(
            "{} ({}) did not answer as wanted within {within:?} (last answer: {last:?})",
            guest.name,
            guest.ip()
        )
    }
}

impl Drop for VmLan {
    fn drop(&mut self) {
        for ns in [&self.client, &self.lan] {
            if let Ok(ino) = netns_inode(ns) {
                kill_netns(ino);
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
