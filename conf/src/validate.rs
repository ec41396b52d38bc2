//! Cross-checks between sections, run once every section has deserialized.
//! Each problem is a key path and a message; the loader gives it a line.

use std::collections::{BTreeMap, BTreeSet};

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
                ResourceKind::Ocf(o) if !o.agent.contains(':') => {
                    push(
                        p,
                        format!("{key}.agent"),
                        "expected `provider:type`, e.g. `heartbeat:IPaddr2`",
                    );
                }
                ResourceKind::Vm(vm) => vm_fits(c, group, g, r, vm, p),
                _ => {}
            }
            // Checked per node, with that node's overrides applied.
            for node in group.nodes.iter().filter_map(|n| c.node(n)) {
                let Some(ResourceKind::FloatingIp(fip)) =
                    c.resource_on(&node.name, &res.name).map(|x| &x.kind)
                else {
                    continue;
                };
                if !node.subnets().any(|net| net.contains(&fip.address.addr())) {
                    let key = match node.overrides.get(&res.name).and_then(|o| o.get("address")) {
                        Some(_) => format!(
                            "nodes[{}].overrides.{}.address",
                            node_index(c, &node.name),
                            res.name
                        ),
                        None => format!("{key}.address"),
                    };
                    push(
                        p,
                        key,
                        format!(
                            "floating IP {} is outside every subnet of node `{}` ({})",
                            fip.address.addr(),
                            node.name,
                            list(node.subnets().map(|n| n.trunc().to_string()))
                        ),
                    );
                }
            }
        }
    }
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

fn linkage(c: &Config, p: &mut Problems) {
    let Some(Linkage::Host(h)) = &c.linkage else {
        return;
    };
    if h.listen.is_empty() {
        push(p, "linkage.listen", "at least one endpoint is needed");
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
