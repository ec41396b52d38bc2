//! Cross-checks between sections, run once every section has deserialized.
//! Each problem is a key path and a message; the loader gives it a line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Component, Path};

use ipnet::IpNet;

use crate::model::*;

type Problems = Vec<(String, String)>;

/// Names of entries that failed to deserialize (and so are missing from the
/// config being checked): references to them are not reported again.
#[derive(Debug, Default)]
pub(crate) struct Unparsed {
    /// `[heartbeat]` failed: its defaults stand in, so links are not checked.
    pub(crate) heartbeat: bool,
    pub(crate) nodes: BTreeSet<String>,
    pub(crate) groups: BTreeSet<String>,
    pub(crate) resources: BTreeSet<String>,
}

/// Every cross-section problem of `config`.
pub(crate) fn check(config: &Config, unparsed: &Unparsed) -> Problems {
    let mut p = Problems::new();
    names(config, &mut p);
    if !unparsed.heartbeat {
        heartbeat(config, &mut p);
    }
    nodes(config, unparsed, &mut p);
    quorum(config, &mut p);
    fencing(config, unparsed, &mut p);
    groups(config, unparsed, &mut p);
    resources(config, &mut p);
    api(config, &mut p);
    linkage(config, &mut p);
    p
}

fn push(p: &mut Problems, key: impl Into<String>, msg: impl Into<String>) {
    p.push((key.into(), msg.into()));
}

/// Report every name that appears twice; `key` gives each item's path.
fn unique<'a>(p: &mut Problems, what: &str, items: impl Iterator<Item = (String, &'a str)>) {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (key, name) in items {
        if name.is_empty() {
            push(p, key, format!("{what} name must not be empty"));
        } else if let Some(first) = seen.get(name) {
            push(
                p,
                key,
                format!("duplicate {what} name `{name}` (first at `{first}`)"),
            );
        } else {
            seen.insert(name, key);
        }
    }
}

fn names(c: &Config, p: &mut Problems) {
    unique(
        p,
        "node",
        c.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("nodes[{i}].name"), n.name.as_str())),
    );
    unique(
        p,
        "group",
        c.groups
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("groups[{i}].name"), g.name.as_str())),
    );
    unique(
        p,
        "resource",
        c.groups.iter().enumerate().flat_map(|(g, group)| {
            group.resources.iter().enumerate().map(move |(r, res)| {
                (
                    format!("groups[{g}].resources[{r}].name"),
                    res.name.as_str(),
                )
            })
        }),
    );
    for (g, group) in c.groups.iter().enumerate() {
        unique(
            p,
            "monitor",
            group
                .monitors
                .iter()
                .enumerate()
                .map(|(m, mon)| (format!("groups[{g}].monitors[{m}].name"), mon.name.as_str())),
        );
    }
    unique(
        p,
        "fencing device",
        c.fencing
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("fencing[{i}].name"), f.name.as_str())),
    );
    unique(
        p,
        "alert",
        c.alerts
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("alerts[{i}].name"), a.name.as_str())),
    );
    unique(
        p,
        "link",
        c.heartbeat
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("heartbeat.links[{i}].name"), l.name.as_str())),
    );
}

fn heartbeat(c: &Config, p: &mut Problems) {
    let hb = &c.heartbeat;
    if hb.interval.is_zero() {
        push(p, "heartbeat.interval", "must be greater than zero");
    }
    if hb.timeout <= hb.interval {
        push(
            p,
            "heartbeat.timeout",
            format!(
                "must be greater than heartbeat.interval ({}), or one late packet loses a node",
                hb.interval
            ),
        );
    }
    if hb.initdead < hb.timeout {
        push(
            p,
            "heartbeat.initdead",
            format!("must be at least heartbeat.timeout ({})", hb.timeout),
        );
    }
    if hb.links.is_empty() {
        push(
            p,
            "heartbeat.links",
            "at least one heartbeat link is needed",
        );
    }
}

fn nodes(c: &Config, u: &Unparsed, p: &mut Problems) {
    let links: BTreeSet<&str> = c.heartbeat.links.iter().map(|l| l.name.as_str()).collect();
    for (i, node) in c.nodes.iter().enumerate() {
        for link in links.iter().filter(|_| !u.heartbeat) {
            if node.links.get(*link).is_none_or(|a| a.is_empty()) {
                push(
                    p,
                    format!("nodes[{i}].links"),
                    format!(
                        "node `{}` has no address on heartbeat link `{link}`",
                        node.name
                    ),
                );
            }
        }
        for name in node.links.keys() {
            if !u.heartbeat && !links.contains(name.as_str()) {
                push(
                    p,
                    format!("nodes[{i}].links.{name}"),
                    format!(
                        "no heartbeat link named `{name}` (declared links: {})",
                        list(links.iter().copied())
                    ),
                );
            }
        }
        if c.cluster.kind == ClusterKind::Guest
            && (node.libvirt_uri.is_some() || node.capacity.is_some())
        {
            let key = if node.libvirt_uri.is_some() {
                "libvirt_uri"
            } else {
                "capacity"
            };
            push(
                p,
                format!("nodes[{i}].{key}"),
                "only nodes of a host cluster have a hypervisor",
            );
        }
        for (bridge, nics) in &node.uplinks {
            let key = format!("nodes[{i}].uplinks.{bridge}");
            if c.cluster.kind != ClusterKind::Host {
                push(p, key, "only hosts have uplinks for their guests");
                continue;
            }
            if nics.is_empty() {
                push(p, key.clone(), "name at least one host NIC");
            }
            for name in std::iter::once(bridge).chain(nics) {
                if let Some(msg) = interface_name_problem(name) {
                    push(p, key.clone(), msg);
                }
            }
        }
        for (l, e) in node.linkage_listen.iter().enumerate() {
            let key = format!("nodes[{i}].linkage_listen[{l}]");
            if !matches!(c.linkage, Some(Linkage::Host(_))) {
                push(
                    p,
                    key,
                    "only hosts of a host cluster with a `[linkage]` listen for guests",
                );
            } else if matches!(e, crate::Endpoint::Vsock { .. }) {
                push(p, key, NO_VSOCK);
            }
        }
        if let Some(e) = &node.linkage_connect {
            let key = format!("nodes[{i}].linkage_connect");
            if !matches!(c.linkage, Some(Linkage::Guest(_))) {
                push(
                    p,
                    key,
                    "only guests of a guest cluster with a `[linkage]` connect to a host daemon",
                );
            } else if matches!(e, crate::Endpoint::Vsock { .. }) {
                push(p, key, NO_VSOCK);
            }
        }
        for res in node.overrides.keys() {
            let runs_here = c
                .resources()
                .any(|(g, r)| &r.name == res && g.nodes.iter().any(|n| n == &node.name));
            let exists = c.resources().any(|(_, r)| &r.name == res);
            if exists && !runs_here {
                push(
                    p,
                    format!("nodes[{i}].overrides.{res}"),
                    format!(
                        "resource `{res}` is in no group that may run on node `{}`",
                        node.name
                    ),
                );
            }
        }
    }
    if c.nodes.len() > crate::MAX_NODES {
        push(
            p,
            "nodes",
            format!("at most {} nodes are supported", crate::MAX_NODES),
        );
    }
}

fn quorum(c: &Config, p: &mut Problems) {
    if let Some(w) = &c.quorum.witness
        && !(w.url.starts_with("http://") || w.url.starts_with("https://"))
    {
        push(
            p,
            "quorum.witness.url",
            "must start with `http://` or `https://`",
        );
    }
    if c.nodes.len() == 2 && c.quorum.witness.is_none() && c.quorum.ping_targets.is_empty() {
        push(
            p,
            "quorum",
            "a two-node cluster needs `witness` or `ping_targets` to resolve a partition; without them neither side may take over",
        );
    }
}

fn fencing(c: &Config, u: &Unparsed, p: &mut Problems) {
    for (i, dev) in c.fencing.iter().enumerate() {
        if dev.targets.is_empty() {
            push(
                p,
                format!("fencing[{i}].targets"),
                "a fencing device must fence at least one node",
            );
        }
        for (t, target) in dev.targets.iter().enumerate() {
            if c.node(target).is_none() && !u.nodes.contains(target) {
                push(
                    p,
                    format!("fencing[{i}].targets[{t}]"),
                    unknown_node(c, target),
                );
            }
        }
        match (&dev.kind, c.cluster.kind) {
            (FenceKind::Host(_), ClusterKind::Host) => {
                push(
                    p,
                    format!("fencing[{i}].kind"),
                    "`host` fencing is for guest clusters (the host destroys the VM)",
                );
            }
            (FenceKind::Host(_), ClusterKind::Guest)
                if !matches!(c.linkage, Some(Linkage::Guest(_))) =>
            {
                push(
                    p,
                    format!("fencing[{i}].kind"),
                    "`host` fencing goes through the linkage: add `[linkage]` with `connect` and `key_file`",
                );
            }
            (FenceKind::Agent(a), _)
                if !a.agent.starts_with("fence_") && !a.agent.starts_with('/') =>
            {
                push(
                    p,
                    format!("fencing[{i}].agent"),
                    "expected a fence agent name such as `fence_ipmilan`, or an absolute path",
                );
            }
            (FenceKind::Redfish(r), _)
                if !r.url.starts_with("https://") && !r.url.starts_with("http://") =>
            {
                push(
                    p,
                    format!("fencing[{i}].url"),
                    "must start with `https://` (or `http://`)",
                );
            }
            _ => {}
        }
    }
}

fn groups(c: &Config, u: &Unparsed, p: &mut Problems) {
    for (g, group) in c.groups.iter().enumerate() {
        if group.nodes.is_empty() {
            push(
                p,
                format!("groups[{g}].nodes"),
                "a group needs at least one node",
            );
        }
        let mut seen = BTreeSet::new();
        for (n, node) in group.nodes.iter().enumerate() {
            if c.node(node).is_none() {
                if !u.nodes.contains(node) {
                    push(p, format!("groups[{g}].nodes[{n}]"), unknown_node(c, node));
                }
            } else if !seen.insert(node) {
                push(
                    p,
                    format!("groups[{g}].nodes[{n}]"),
                    format!("node `{node}` is listed twice"),
                );
            }
        }
        for (field, list) in [
            ("start_after", &group.start_after),
            ("anti_affinity", &group.anti_affinity),
        ] {
            for (i, other) in list.iter().enumerate() {
                if other == &group.name {
                    push(
                        p,
                        format!("groups[{g}].{field}[{i}]"),
                        "a group cannot refer to itself",
                    );
                } else if c.group(other).is_none() && !u.groups.contains(other) {
                    push(
                        p,
                        format!("groups[{g}].{field}[{i}]"),
                        format!("no group named `{other}`"),
                    );
                }
            }
        }
        for (m, mon) in group.monitors.iter().enumerate() {
            monitor(c, u, group, g, m, mon, p);
        }
    }
    if let Some(cycle) = dependency_cycle(c) {
        let g = c
            .groups
            .iter()
            .position(|x| x.name == cycle[0])
            .unwrap_or(0);
        push(
            p,
            format!("groups[{g}].start_after"),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        );
    }
}

fn monitor(
    c: &Config,
    u: &Unparsed,
    group: &Group,
    g: usize,
    m: usize,
    mon: &Monitor,
    p: &mut Problems,
) {
    let key = format!("groups[{g}].monitors[{m}]");
    if mon.interval.is_zero() {
        push(p, format!("{key}.interval"), "must be greater than zero");
    }
    if mon.timeout.is_zero() {
        push(p, format!("{key}.timeout"), "must be greater than zero");
    }
    for (field, msg) in monitor_params(&mon.kind) {
        push(p, format!("{key}.{field}"), msg);
    }
    if !mon.while_active && matches!(mon.kind, MonitorKind::Ocf(_) | MonitorKind::Vm(_)) {
        push(
            p,
            format!("{key}.while_active"),
            format!(
                "a `{}` monitor checks the group's own resource, which is stopped where the \
                 group does not run: `while_active = false` would make every standby ineligible",
                mon.kind.name()
            ),
        );
    }
    let target = match &mon.resource {
        Some(r) => match group.resources.iter().find(|x| &x.name == r) {
            Some(res) => Some(res),
            None => {
                if !u.resources.contains(r) {
                    push(
                        p,
                        format!("{key}.resource"),
                        format!("group `{}` has no resource `{r}`", group.name),
                    );
                }
                return;
            }
        },
        None => group.resources.last(),
    };
    let host = c.cluster.kind == ClusterKind::Host;
    match &mon.kind {
        MonitorKind::Vm(_) if !host => push(
            p,
            format!("{key}.kind"),
            "`vm` monitors are for host clusters",
        ),
        MonitorKind::Vm(_) | MonitorKind::Ocf(_) => {
            let want = if matches!(mon.kind, MonitorKind::Vm(_)) {
                "vm"
            } else {
                "ocf"
            };
            if target.is_none_or(|r| r.kind.name() != want) {
                push(
                    p,
                    format!("{key}.resource"),
                    format!(
                        "a `{want}` monitor needs `resource` to name a `{want}` resource of the group"
                    ),
                );
            }
        }
        MonitorKind::Process(pm) if pm.pid_file.is_none() == pm.process_name.is_none() => {
            push(
                p,
                key,
                "a `process` monitor needs exactly one of `pid_file` and `process_name`",
            );
        }
        MonitorKind::Ip(ip) if ip.targets.is_empty() => {
            push(p, format!("{key}.targets"), "at least one target is needed")
        }
        MonitorKind::Custom(cm) if cm.command.is_empty() => {
            push(p, format!("{key}.command"), "the command must not be empty")
        }
        MonitorKind::Http(h)
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) =>
        {
            push(
                p,
                format!("{key}.url"),
                "must start with `http://` or `https://`",
            );
        }
        _ if host
            && !matches!(
                mon.kind,
                MonitorKind::Ip(_) | MonitorKind::Nic(_) | MonitorKind::Custom(_)
            ) =>
        {
            push(
                p,
                format!("{key}.kind"),
                format!("`{}` monitors are for guest clusters", mon.kind.name()),
            );
        }
        _ => {}
    }
}

/// The first cycle in `start_after`, as group names ending where it began.
fn dependency_cycle(c: &Config) -> Option<Vec<String>> {
    fn visit<'a>(
        c: &'a Config,
        name: &'a str,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = stack[pos..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if !done.insert(name) {
            return None;
        }
        stack.push(name);
        // A group naming itself is reported on its own, not as a cycle.
        let deps = c
            .group(name)
            .map(|g| g.start_after.as_slice())
            .unwrap_or_default();
        for dep in deps.iter().filter(|d| d.as_str() != name) {
            if let Some(cycle) = visit(c, dep, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    c.groups
        .iter()
        .find_map(|g| visit(c, &g.name, &mut Vec::new(), &mut done))
}

fn resources(c: &Config, p: &mut Problems) {
    let host = c.cluster.kind == ClusterKind::Host;
    for (g, group) in c.groups.iter().enumerate() {
        for (r, res) in group.resources.iter().enumerate() {
            let key = format!("groups[{g}].resources[{r}]");
            let is_vm = matches!(res.kind, ResourceKind::Vm(_));
            if host != is_vm {
                let (what, allowed) = if host {
                    ("host", "`vm`")
                } else {
                    ("guest", "`exec`, `ocf`, `systemd`, `floating_ip`, `mount`")
                };
                push(
                    p,
                    format!("{key}.kind"),
                    format!("a {what} cluster holds {allowed} resources"),
                );
                continue;
            }
            match &res.kind {
                ResourceKind::Exec(e) if e.start.is_empty() || e.stop.is_empty() => {
                    let which = if e.start.is_empty() { "start" } else { "stop" };
                    push(p, format!("{key}.{which}"), "the command must not be empty");
                }
                ResourceKind::Vm(vm) => vm_fits(c, group, g, r, vm, p),
                _ => {}
            }
            for (field, msg) in resource_params(&res.kind)
                .into_iter()
                .chain(resource_probe(res))
            {
                push(p, format!("{key}.{field}"), msg);
            }
            // Checked per node, with that node's overrides applied.
            for node in group.nodes.iter().filter_map(|n| c.node(n)) {
                let Some(effective) = c.resource_on(&node.name, &res.name) else {
                    continue;
                };
                let overrides = node.overrides.get(&res.name);
                // Where a problem of `field` is reported: at the override
                // when this node's override sets it.
                let at = |field: &str| {
                    let top = field.split(['.', '[']).next().unwrap_or(field);
                    overrides.and_then(|o| o.get(top)).map(|_| {
                        format!(
                            "nodes[{}].overrides.{}.{field}",
                            node_index(c, &node.name),
                            res.name
                        )
                    })
                };
                if overrides.is_some() {
                    // What the base entry holds is reported there, once.
                    let problems = resource_params(&effective.kind)
                        .into_iter()
                        .chain(resource_probe(effective));
                    for (field, msg) in problems {
                        if let Some(key) = at(&field) {
                            push(p, key, format!("{msg} (on node `{}`)", node.name));
                        }
                    }
                }
                let ResourceKind::FloatingIp(fip) = &effective.kind else {
                    continue;
                };
                let key = at("address").unwrap_or_else(|| format!("{key}.address"));
                if floating_address_problem(&fip.address).is_some() {
                    // Reported above: no route to judge.
                    continue;
                }
                if let Some(msg) = floating_ip_fits(node, fip) {
                    push(p, key, msg);
                }
            }
        }
    }
}

/// Problems in a resource's periodic probe settings (`monitor_interval`,
/// `monitor_timeout`), as `(key below the resource, message)`.
fn resource_probe(res: &Resource) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if res.monitor_interval.is_some_and(|i| i.is_zero()) {
        out.push((
            "monitor_interval".to_owned(),
            "must be greater than zero (leave it unset for no periodic probe)".to_owned(),
        ));
    }
    if res.monitor_interval.is_some()
        && matches!(&res.kind, ResourceKind::Exec(e) if e.status.is_empty())
    {
        out.push((
            "monitor_interval".to_owned(),
            "an `exec` resource without a `status` command cannot be probed (every probe would \
             be unknown): add `status` or leave `monitor_interval` unset"
                .to_owned(),
        ));
    }
    if res.monitor_timeout.is_zero() {
        out.push((
            "monitor_timeout".to_owned(),
            "must be greater than zero".to_owned(),
        ));
    }
    out
}

/// Whether the floating address fits a subnet of `node`: the address is
/// inside one, and its prefix is no wider than that subnet (a wider one
/// would add a route covering addresses outside the node's network).
fn floating_ip_fits(node: &Node, fip: &FloatingIpResource) -> Option<String> {
    let addr = fip.address.addr();
    if !node.subnets().any(|net| net.contains(&addr)) {
        return Some(format!(
            "floating IP {addr} is outside every subnet of node `{}` ({})",
            node.name,
            list(node.subnets().map(|n| n.trunc().to_string()))
        ));
    }
    if !node.subnets().any(|net| net.contains(&fip.address.trunc())) {
        return Some(format!(
            "the prefix of floating IP {} does not fit node `{}`: /{} is wider than its subnet \
             ({}), so the route it adds would send traffic for other networks to this link",
            fip.address,
            node.name,
            fip.address.prefix_len(),
            list(
                node.subnets()
                    .filter(|net| net.contains(&addr))
                    .map(|n| n.trunc().to_string())
            )
        ));
    }
    None
}

/// Problems in a resource's own parameters (no I/O), as `(key below the
/// resource, message)`.
fn resource_params(kind: &ResourceKind) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |field: &str, msg: String| out.push((field.to_owned(), msg));
    match kind {
        ResourceKind::Exec(e) => {
            for (which, command) in [
                ("start", &e.start),
                ("stop", &e.stop),
                ("status", &e.status),
            ] {
                if command.first().is_some_and(String::is_empty) {
                    add(
                        &format!("{which}[0]"),
                        "the program must not be empty".into(),
                    );
                }
            }
            if let Some(dir) = e.working_dir.as_ref().filter(|d| !d.is_absolute()) {
                add(
                    "working_dir",
                    format!("must be an absolute path, not `{}`", dir.display()),
                );
            }
        }
        ResourceKind::Ocf(o) => {
            if let Some(msg) = ocf_agent_problem(&o.agent) {
                add("agent", msg);
            }
            if !o.ocf_root.is_absolute() {
                add(
                    "ocf_root",
                    format!("must be an absolute path, not `{}`", o.ocf_root.display()),
                );
            }
            for name in o.params.keys() {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    add(
                        &format!("params.{name}"),
                        format!(
                            "`{name}` cannot be passed to the agent as OCF_RESKEY_{name}: \
                             letters, digits and `_` only"
                        ),
                    );
                }
            }
        }
        ResourceKind::Systemd(s) => {
            if let Some(msg) = unit_name_problem(&s.unit) {
                add("unit", msg);
            }
        }
        ResourceKind::FloatingIp(f) => {
            if let Some(msg) = interface_name_problem(&f.interface) {
                add("interface", msg);
            }
            if let Some(msg) = floating_address_problem(&f.address) {
                add("address", msg);
            }
        }
        ResourceKind::Mount(m) => {
            if !m.mountpoint.is_absolute() {
                add(
                    "mountpoint",
                    format!("must be an absolute path, not `{}`", m.mountpoint.display()),
                );
            } else if m
                .mountpoint
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::CurDir))
            {
                add("mountpoint", "cannot be `/`".into());
            }
            if let Some(msg) = mount_device_problem(&m.device) {
                add("device", msg);
            } else if m.fsck && !m.device.is_absolute() {
                add(
                    "fsck",
                    format!(
                        "fsck needs the device as an absolute path, not `{}`",
                        m.device.display()
                    ),
                );
            }
            if m.fstype.is_empty()
                || m.fstype.starts_with('-')
                || m.fstype.contains(|c: char| c == ',' || c.is_whitespace())
            {
                add(
                    "fstype",
                    format!("`{}` is not a file system type", m.fstype),
                );
            }
        }
        ResourceKind::Vm(_) => {}
    }
    out
}

/// Problems in a monitor's own parameters (no I/O), as `(key below the
/// monitor, message)`.
fn monitor_params(kind: &MonitorKind) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |field: &str, msg: String| out.push((field.to_owned(), msg));
    let absolute = |path: &Path| {
        (!path.is_absolute()).then(|| format!("must be an absolute path, not `{}`", path.display()))
    };
    match kind {
        MonitorKind::Nic(n) => {
            if let Some(msg) = interface_name_problem(&n.interface) {
                add("interface", msg);
            }
        }
        MonitorKind::Ip(ip) => {
            for (i, target) in ip.targets.iter().enumerate() {
                if let Some(msg) = ping_target_problem(*target) {
                    add(&format!("targets[{i}]"), msg);
                }
            }
        }
        MonitorKind::Process(pm) => {
            if let Some(msg) = pm.pid_file.as_deref().and_then(absolute) {
                add("pid_file", msg);
            }
            if pm.process_name.as_deref() == Some("") {
                add("process_name", "must not be empty".into());
            }
        }
        MonitorKind::Tcp(t) => {
            if let Err(msg) = host_port(&t.address) {
                add("address", msg);
            }
        }
        MonitorKind::Http(h) => {
            if let Some(msg) = http_url_problem(&h.url) {
                add("url", msg);
            }
            if !(100..=599).contains(&h.expect_status) {
                add(
                    "expect_status",
                    format!("{} is not an HTTP status (100 to 599)", h.expect_status),
                );
            }
        }
        MonitorKind::Pgsql(pg) => {
            if let Some(msg) = pg.password_file.as_deref().and_then(absolute) {
                add("password_file", msg);
            }
            if pg.query.trim().is_empty() {
                add("query", "must not be empty".into());
            }
        }
        MonitorKind::Disk(d) => {
            if let Some(msg) = absolute(&d.device) {
                add("device", msg);
            }
            if d.block_size == 0 || d.block_size % 512 != 0 || d.block_size > MAX_DISK_BLOCK {
                add(
                    "block_size",
                    format!(
                        "{} is not a multiple of 512 from 512 to {MAX_DISK_BLOCK} (an O_DIRECT \
                         read is a whole number of the device's sectors)",
                        d.block_size
                    ),
                );
            }
        }
        MonitorKind::Custom(cm) => {
            if cm.command.first().is_some_and(String::is_empty) {
                add("command[0]", "the program must not be empty".into());
            }
        }
        MonitorKind::Ocf(_) | MonitorKind::Vm(_) => {}
    }
    out
}

/// The largest `block_size` of a `disk` monitor (16 MiB).
const MAX_DISK_BLOCK: u32 = 16 << 20;

/// `provider:type` or `ocf:provider:type`, each part a file name.
fn ocf_agent_problem(agent: &str) -> Option<String> {
    let parts: Vec<&str> = agent.split(':').collect();
    let (provider, kind) = match parts.as_slice() {
        [provider, kind] | ["ocf", provider, kind] => (*provider, *kind),
        _ => return Some("expected `provider:type`, e.g. `heartbeat:IPaddr2`".into()),
    };
    [("provider", provider), ("type", kind)]
        .into_iter()
        .find(|(_, part)| {
            part.is_empty() || *part == "." || *part == ".." || part.contains(['/', '\0'])
        })
        .map(|(what, part)| {
            format!(
                "the agent's {what} `{part}` is not a name: it must not be empty, `.` or `..`, \
                 nor contain `/`"
            )
        })
}

/// The unit types systemd knows (the suffix of a unit name).
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// A unit name systemd accepts for a unit that can be started: a name or
/// an instance (`name@instance.type`), not a template, as systemd's own
/// `unit_name_is_valid` reads it.
fn unit_name_problem(unit: &str) -> Option<String> {
    let Some((name, suffix)) = unit.rsplit_once('.').filter(|(n, _)| !n.is_empty()) else {
        return Some(format!(
            "`{unit}` is not a unit name: expected NAME.TYPE, e.g. `nginx.service`"
        ));
    };
    if unit.len() > 255 {
        return Some("a unit name is at most 255 bytes".into());
    }
    if !UNIT_TYPES.contains(&suffix) {
        return Some(format!(
            "`.{suffix}` is not a unit type (one of {})",
            UNIT_TYPES.join(", ")
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Some(format!(
            "`{unit}` is not a unit name: {bad:?} is not allowed (letters, digits and `:-_.\\@`; \
             escape others as systemd-escape does)"
        ));
    }
    match name.split_once('@') {
        Some(("", _)) => Some(format!("`{unit}` is not a unit name: it starts with `@`")),
        Some((_, "")) => Some(format!(
            "`{unit}` is a template, which cannot be started: name an instance, e.g. \
             `{}@INSTANCE.{suffix}`",
            name.trim_end_matches('@')
        )),
        _ => None,
    }
}

/// A name the kernel accepts for a network interface.
fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the interface name must not be empty".into());
    }
    if name.len() > 15 {
        return Some(format!(
            "`{name}` is not an interface name: at most 15 bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        return Some(format!(
            "`{name}` is not an interface name (no `/`, `:` or spaces; not `.` or `..`)"
        ));
    }
    None
}

/// An address that cannot float, or whose prefix makes it a network's own
/// address.
fn floating_address_problem(net: &IpNet) -> Option<String> {
    let addr = net.addr();
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Some(format!(
            "{addr} cannot be a floating address (unspecified, multicast or loopback)"
        ));
    }
    if net.prefix_len() == 0 {
        return Some(format!(
            "the prefix of {net} does not fit: /0 would make every address on-link"
        ));
    }
    match net {
        IpNet::V4(v4) if v4.prefix_len() <= 30 => {
            if v4.addr() == v4.network() {
                return Some(format!(
                    "the prefix of {net} does not fit: {addr} is the network address of {}",
                    v4.trunc()
                ));
            }
            if v4.addr() == v4.broadcast() {
                return Some(format!(
                    "the prefix of {net} does not fit: {addr} is the broadcast address of {}",
                    v4.trunc()
                ));
            }
        }
        IpNet::V6(v6) if v6.prefix_len() <= 126 && v6.addr() == v6.network() => {
            return Some(format!(
                "the prefix of {net} does not fit: {addr} is the subnet-router anycast address \
                 of {}",
                v6.trunc()
            ));
        }
        _ => {}
    }
    None
}

/// A target an ICMP echo can be sent to without a scope or a group.
fn ping_target_problem(target: IpAddr) -> Option<String> {
    if target.is_unspecified() || target.is_multicast() {
        return Some(format!(
            "{target} cannot be pinged (unspecified or multicast)"
        ));
    }
    if let IpAddr::V6(v6) = target
        && v6.is_unicast_link_local()
    {
        return Some(format!(
            "{target} is link-local: it needs an interface the configuration cannot give; use a \
             global or unique-local address"
        ));
    }
    None
}

/// `HOST:PORT`, an IPv6 literal in brackets.
fn host_port(address: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{address}` is not HOST:PORT: {why}"));
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return bad("an IPv6 address in brackets needs `]:PORT` after it");
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return bad("the address in brackets is not an IPv6 address");
        }
        (host, port)
    } else {
        let Some((host, port)) = address.rsplit_once(':') else {
            return bad("no port");
        };
        if host.contains(':') {
            return bad("IPv6 addresses go in brackets: [ADDRESS]:PORT");
        }
        (host, port)
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return bad("no host, or a host with spaces or `/`");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => bad("the port is not a number from 1 to 65535"),
    }
}

/// What an `http://` or `https://` URL needs for any HTTP client: a host,
/// a port that is a number, no spaces. (The scheme is checked on its own;
/// the client library parses the rest when the monitor is built.)
fn http_url_problem(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("must not contain spaces or control characters (percent-encode them)".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Some("the IPv6 address has no closing `]`".into());
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Some(format!("`{v6}` is not an IPv6 address"));
        }
        match after {
            "" => (v6, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return Some(format!("unexpected `{after}` after the IPv6 address")),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Some("the URL has no host".into());
    }
    if let Some(port) = port.filter(|p| !p.is_empty())
        && port.parse::<u16>().is_err()
    {
        return Some(format!("the port `{port}` is not a number from 0 to 65535"));
    }
    None
}

/// A device to mount: an absolute path, or a network source
/// (`server:/export`, `//server/share`); not a tag, not an option.
fn mount_device_problem(device: &Path) -> Option<String> {
    let text = device.to_string_lossy();
    if text.is_empty() || text.starts_with('-') {
        return Some(format!("`{text}` is not a device"));
    }
    if let Some((tag, _)) = text.split_once('=')
        && ["UUID", "LABEL", "PARTUUID", "PARTLABEL"].contains(&tag)
    {
        return Some(format!(
            "`{text}`: tags are not supported (mountinfo shows the device, never the tag); \
             name the device by path, e.g. /dev/disk/by-uuid/..."
        ));
    }
    let network = text
        .split_once(":/")
        .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'));
    if !device.is_absolute() && !network {
        return Some(format!(
            "`{text}` must be an absolute path (`/dev/...`) or a network source \
             (`server:/export`)"
        ));
    }
    None
}

fn vm_fits(c: &Config, group: &Group, g: usize, r: usize, vm: &VmResource, p: &mut Problems) {
    let fits = |cap: &Capacity| {
        vm.memory_mib.is_none_or(|m| m <= cap.memory_mib) && vm.vcpus.is_none_or(|v| v <= cap.vcpus)
    };
    let any_fits = group
        .nodes
        .iter()
        .filter_map(|n| c.node(n))
        .any(|n| n.capacity.as_ref().is_none_or(fits));
    if !any_fits && !group.nodes.is_empty() {
        push(
            p,
            format!("groups[{g}].resources[{r}]"),
            "this VM needs more memory or vCPUs than any of its group's hosts offers (`capacity`)",
        );
    }
}

fn api(c: &Config, p: &mut Problems) {
    if !c.api.listen.is_empty() && c.api.token_file.is_none() {
        push(
            p,
            "api.token_file",
            "required when `api.listen` is set: the management API never runs without a token",
        );
    }
    if c.api.tls.is_some() && c.api.listen.is_empty() {
        push(p, "api.tls", "TLS applies to `api.listen`, which is empty");
    }
}

const NO_VSOCK: &str = "vsock endpoints are not supported yet (no vsock transport to test them on); use `tcp:HOST:PORT` or `unix:PATH`";

fn linkage(c: &Config, p: &mut Problems) {
    if let Some(Linkage::Guest(g)) = &c.linkage
        && matches!(g.connect, crate::Endpoint::Vsock { .. })
    {
        push(p, "linkage.connect", NO_VSOCK);
    }
    let Some(Linkage::Host(h)) = &c.linkage else {
        return;
    };
    for (i, e) in h.listen.iter().enumerate() {
        if matches!(e, crate::Endpoint::Vsock { .. }) {
            push(p, format!("linkage.listen[{i}]"), NO_VSOCK);
        }
    }
    if h.listen.is_empty() {
        for (i, n) in c.nodes.iter().enumerate() {
            if n.linkage_listen.is_empty() {
                push(
                    p,
                    format!("nodes[{i}].linkage_listen"),
                    "this host has no endpoint to listen on for guests: set `linkage.listen` or the node's `linkage_listen`",
                );
            }
        }
    }
    for (i, g) in h.guests.iter().enumerate() {
        if g.cluster == c.cluster.name {
            push(
                p,
                format!("linkage.guests[{i}].cluster"),
                "a guest cluster cannot have the host cluster's name (the hosts use it among themselves on the linkage)",
            );
        }
    }
    unique(
        p,
        "linked guest",
        h.guests
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("linkage.guests[{i}].name"), g.name.as_str())),
    );
    unique(
        p,
        "linked domain",
        h.guests
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("linkage.guests[{i}].domain"), g.domain.as_str())),
    );
}

fn node_index(c: &Config, name: &str) -> usize {
    c.nodes.iter().position(|n| n.name == name).unwrap_or(0)
}

fn unknown_node(c: &Config, name: &str) -> String {
    format!(
        "no node named `{name}` (nodes: {})",
        list(c.nodes.iter().map(|n| n.name.as_str()))
    )
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    /// A guest cluster of two nodes, one group, with `resource` and
    /// `monitor` keys added to its one resource and one monitor, and
    /// `overrides` on node `b`.
    fn load(resource: &str, monitor: &str, overrides: &str) -> Result<crate::Config, String> {
        let src = format!(
            r#"
[cluster]
name = "t"
kind = "guest"
auth_key_file = "/dev/null"

[quorum]
ping_targets = ["192.0.2.254"]

[[nodes]]
name = "a"
links = {{ lan = ["192.0.2.1/24"] }}

[[nodes]]
name = "b"
links = {{ lan = ["192.0.2.2/24"] }}
{overrides}

[[groups]]
name = "g"
nodes = ["a", "b"]

[[groups.resources]]
name = "vip"
kind = "floating_ip"
address = "192.0.2.100/24"
interface = "eth0"
{resource}

[[groups.monitors]]
name = "m"
kind = "ocf"
resource = "vip2"
{monitor}

[[groups.resources]]
name = "vip2"
kind = "ocf"
agent = "heartbeat:IPaddr2"
"#
        );
        crate::load_str("t.toml", &src).map_err(|d| d.to_string())
    }

    /// A one-node cluster with one `exec` resource and `keys` added to it.
    fn exec_with(keys: &str) -> String {
        format!(
            r#"
[cluster]
name = "t"
kind = "guest"
auth_key_file = "/dev/null"

[[nodes]]
name = "a"
links = {{ lan = ["192.0.2.1/24"] }}

[[groups]]
name = "g"
nodes = ["a"]

[[groups.resources]]
name = "app"
kind = "exec"
start = ["/bin/true"]
stop = ["/bin/true"]
{keys}
"#
        )
    }

    #[test]
    fn periodic_probe_settings_are_read_and_checked() {
        let c = load(
            "monitor_interval = \"2s\"\nmonitor_timeout = \"5s\"\nmonitor_recovery = { restart = 3 }",
            "",
            "",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = &c.groups[0].resources[0];
        assert_eq!(
            r.monitor_interval.map(crate::Duration::get),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(r.monitor_timeout.get(), std::time::Duration::from_secs(5));
        assert_eq!(r.monitor_recovery.restart, 3);
        assert_eq!(r.monitor_recovery.failover, 1, "defaults as a monitor's");
        // Off by default.
        let c = load("", "", "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.groups[0].resources[0].monitor_interval, None);

        let e = load("monitor_interval = \"0s\"", "", "")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("groups[0].resources[0].monitor_interval: must be greater than zero"),
            "{e}"
        );
        let e = load("monitor_timeout = \"0s\"", "", "")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("groups[0].resources[0].monitor_timeout: must be greater than zero"),
            "{e}"
        );
        let e = crate::load_str("x.toml", &exec_with("monitor_interval = \"1s\""))
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("groups[0].resources[0].monitor_interval: an `exec` resource without a `status` command cannot be probed"),
            "{e}"
        );
        crate::load_str(
            "x.toml",
            &exec_with("monitor_interval = \"1s\"\nstatus = [\"/bin/true\"]"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Set per node: reported at the override.
        let e = load(
            "",
            "",
            "overrides = { vip = { monitor_interval = \"0s\" } }",
        )
        .err()
        .unwrap_or_default();
        assert!(
            e.contains("nodes[1].overrides.vip.monitor_interval: must be greater than zero"),
            "{e}"
        );
    }

    #[test]
    fn while_active_false_is_refused_for_monitors_of_the_groups_own_resource() {
        let e = load("", "while_active = false", "")
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("groups[0].monitors[0].while_active: a `ocf` monitor checks the group's own resource"),
            "{e}"
        );
        load("", "while_active = true", "").unwrap_or_else(|e| panic!("{e}"));
    }
}
