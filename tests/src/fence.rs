//! A fence device for the testbed: a fence agent (the fence-agents stdin
//! protocol) that "powers off" a simulated node by killing every process
//! in its network namespace and taking its interfaces down, as a power
//! loss would: its groups die and its addresses stop answering.
//!
//! Use [`config`] in a cluster's `extra` TOML, [`install`] in the
//! `prepare` step of [`Cluster::start_with`](crate::cluster::Cluster), and
//! [`arm`] once the cluster runs (it tells the agent the namespaces'
//! prefix). The agent appends `NODE off` to `{dir}/fence.log` per fence.
//!
//! Shared disks: `ip netns exec` gives every daemon a mount namespace of
//! its own, so what a node mounts lives in its namespace only and is
//! released when its last process dies, as a power loss releases a disk.
//! "Off" is confirmed only once every block device the node had mounted
//! for itself can be opened `O_EXCL` (no file system uses it any more), so
//! a taker never mounts a disk the fenced node still holds (each is logged
//! as `NODE released DEVICE`).

use std::path::Path;

use crate::cluster::Cluster;

const AGENT: &str = r#"#!/bin/sh
action=off
while IFS='=' read -r k v; do
    case "$k" in action) action=$v ;; plug|port) plug=$v ;; esac
done
ns="$(cat {dir}/ns-prefix)$plug"
# The sources of the mounts in mountinfo lines on stdin that are devices.
sources() { awk '{ for (i = 7; i < NF; i++) if ($i == "-") { print $(i + 2); break } }' | grep '^/dev/' | sort -u; }
# The devices mounted in the mount namespaces of namespace $1's processes
# but neither in this agent's nor in the machine's: the node's own mounts.
node_disks() {
    mine=$(cat /proc/self/mountinfo /proc/1/mountinfo | sources)
    for p in $(ip netns pids "$1" 2>/dev/null); do cat "/proc/$p/mountinfo" 2>/dev/null; done | sources |
    while read -r d; do
        printf '%s\n' "$mine" | grep -qxF "$d" || echo "$d"
    done
}
[ -n "$plug" ] && ip netns pids "$ns" >/dev/null 2>&1 || { echo "no namespace for plug '$plug'" >&2; exit 1; }
case "$action" in
off|reboot)
    disks=$(node_disks "$ns"; cat "{dir}/held-$plug" 2>/dev/null)
    for i in 1 2 3 4 5; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -z "$pids" ] && break
        kill -9 $pids 2>/dev/null
        sleep 0.05
    done
    for d in $(printf '%s\n' "$disks" | sort -u); do
        n=0
        while [ -b "$d" ] && ! perl -MFcntl -e 'sysopen(my $f, $ARGV[0], O_RDONLY | O_EXCL) or exit 1' "$d"; do
            n=$((n + 1))
            if [ $n -ge 100 ]; then
                printf '%s\n' "$disks" > "{dir}/held-$plug"
                echo "$d is still in use after $plug was powered off" >&2
                exit 1
            fi
            sleep 0.02
        done
        echo "$plug released $d" >> {dir}/fence.log
    done
    rm -f "{dir}/held-$plug"
    for l in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
        [ "$l" = lo ] || ip -n "$ns" link set "$l" down
    done
    echo "$plug off" >> {dir}/fence.log
    exit 0 ;;
on)
    for l in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip -n "$ns" link set "$l" up
    done
    exit 0 ;;
status)
    [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && exit 0
    exit 2 ;;
*) exit 0 ;;
esac
"#;

/// The `[[fencing]]` entry for nodes `n0..n{nodes-1}` (in a `Spec`'s
/// `extra`, where `{dir}` is the test directory).
pub fn config(nodes: usize) -> String {
    let names: Vec<String> = (0..nodes).map(|k| format!("\"n{k}\"")).collect();
    let plugs: Vec<String> = (0..nodes).map(|k| format!("n{k} = \"n{k}\"")).collect();
    format!(
        "[[fencing]]\nname = \"netns-power\"\nkind = \"agent\"\nagent = \"{{dir}}/fence-netns\"\n\
         targets = [{}]\nplugs = {{ {} }}\ntimeout = \"5s\"\n\n",
        names.join(", "),
        plugs.join(", ")
    )
}

/// Write the agent into the test directory.
pub fn install(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fence-netns");
    std::fs::write(&path, AGENT.replace("{dir}", &dir.display().to_string()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Tell the agent which namespaces belong to `cluster`.
pub fn arm(cluster: &Cluster) {
    let first = cluster.net.ns(0);
    let prefix = first.strip_suffix("n0").unwrap_or(&first);
    std::fs::write(cluster.dir().join("ns-prefix"), prefix).unwrap_or_else(|e| panic!("{e}"));
}

/// The nodes fenced so far, in order.
pub fn fenced(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("fence.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_suffix(" off").map(str::to_owned))
        .collect()
}
