//! The shipped examples load, broken copies of them fail with the right
//! file, line and key, and the schema and the docs match the model.

use std::path::{Path, PathBuf};

use conf::{ClusterKind, Diagnostic, ResourceKind};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(examples_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn errors(name: &str, src: &str) -> Vec<Diagnostic> {
    match conf::load_str(name, src) {
        Ok(_) => panic!("{name} should not load"),
        Err(d) => d.0,
    }
}

/// The 1-based line of the first occurrence of `needle` in `src`.
fn line_of(src: &str, needle: &str) -> usize {
    let at = src
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in source"));
    src[..at].matches('\n').count() + 1
}

/// Replace the first `from` by `to`, insisting it was there.
fn edit(src: &str, from: &str, to: &str) -> String {
    assert!(src.contains(from), "`{from}` not in source");
    src.replacen(from, to, 1)
}

fn assert_one(errors: &[Diagnostic], line: usize, key: &str, message_part: &str) {
    assert!(
        errors.iter().any(|e| e.line == line
            && e.key == key
            && e.message.contains(message_part)
            && e.file == "broken.toml"),
        "no error at line {line} key `{key}` containing `{message_part}` in:\n{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_shipped_example_loads() {
    let mut count = 0;
    for entry in std::fs::read_dir(examples_dir())
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = conf::load(&path) {
                panic!("{} does not load:\n{e}", path.display());
            }
            count += 1;
        }
    }
    assert!(
        count >= 5,
        "expected the examples of the issue and the demo, found {count}"
    );
}

#[test]
fn examples_cover_the_cluster_shapes() {
    let hosts = conf::load_str("two-hosts.toml", &example("two-hosts.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hosts.cluster.kind, ClusterKind::Host);
    assert!(
        hosts
            .resources()
            .all(|(_, r)| matches!(r.kind, ResourceKind::Vm(_)))
    );

    let nplus1 = conf::load_str("guest-nplus1.toml", &example("guest-nplus1.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let spare_groups = nplus1
        .groups
        .iter()
        .filter(|g| g.nodes.last().is_some_and(|n| n == "spare"))
        .count();
    assert_eq!(spare_groups, 3, "three actives share one spare");
}

#[test]
fn dr_overrides_give_the_dr_node_its_own_address() {
    let dr =
        conf::load_str("dr.toml", &example("dr-asymmetric.toml")).unwrap_or_else(|e| panic!("{e}"));
    let on = |node| match dr.resource_on(node, "erp-vip").map(|r| &r.kind) {
        Some(ResourceKind::FloatingIp(f)) => (f.address.to_string(), f.interface.clone()),
        other => panic!("erp-vip on {node}: {other:?}"),
    };
    assert_eq!(on("erp-main"), ("203.0.113.50/24".into(), "bond0".into()));
    assert_eq!(on("erp-dr"), ("198.51.100.50/24".into(), "ens3".into()));
    let app = dr
        .resource_on("erp-dr", "erp-app")
        .map(|r| r.start_timeout.to_string());
    assert_eq!(app.as_deref(), Some("10m"));
    assert_eq!(
        dr.group("erp").map(|g| g.failback),
        Some(conf::Failback::Manual)
    );
    assert!(dr.quorum.witness.is_some());
}

#[test]
fn unknown_key_names_its_line_and_path() {
    let src = edit(
        &example("guest-1plus1.toml"),
        "interface = \"eth0\"\n",
        "interface = \"eth0\"\ncolour = \"red\"\n",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "colour"),
        "groups[0].resources[0].colour",
        "unknown key",
    );
}

#[test]
fn unknown_key_in_a_plain_section() {
    let src = edit(
        &example("two-hosts.toml"),
        "timeout = \"800ms\"",
        "timeout = \"800ms\"\ntimout = \"1s\"",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "timout"),
        "heartbeat.timout",
        "unknown field",
    );
}

#[test]
fn bad_duration_names_its_line_and_path() {
    let src = edit(
        &example("two-hosts.toml"),
        "stop_timeout = \"2m\"",
        "stop_timeout = \"2 fortnights\"",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "2 fortnights"),
        "groups[0].resources[0].stop_timeout",
        "invalid duration",
    );

    let src = edit(
        &example("guest-nplus1.toml"),
        "interval = \"250ms\"",
        "interval = \"250\"",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "\"250\""),
        "heartbeat.interval",
        "a unit is required",
    );
}

#[test]
fn unknown_node_in_a_group_names_its_line_and_path() {
    let src = edit(
        &example("guest-nplus1.toml"),
        "nodes = [\"app-2\", \"spare\"]",
        "nodes = [\"app-2\", \"sapre\"]",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "sapre"),
        "groups[1].nodes[1]",
        "no node named `sapre`",
    );
}

#[test]
fn dependency_cycle_names_its_line_and_path() {
    let src = edit(
        &example("two-hosts.toml"),
        "name = \"db-vm\"\nnodes = [\"host-a\", \"host-b\"]",
        "name = \"db-vm\"\nnodes = [\"host-a\", \"host-b\"]\nstart_after = [\"app-vm\"]",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "start_after = [\"app-vm\"]"),
        "groups[0].start_after",
        "db-vm -> app-vm -> db-vm",
    );
}

#[test]
fn fencing_device_for_an_unknown_node() {
    let src = edit(
        &example("two-hosts.toml"),
        "targets = [\"host-b\"]",
        "targets = [\"host-c\"]",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "host-c"),
        "fencing[1].targets[0]",
        "no node named `host-c`",
    );
}

#[test]
fn host_fencing_needs_the_linkage() {
    let src = example("guest-1plus1.toml");
    let cut = src.find("[linkage]").unwrap_or(src.len());
    let src = format!("{}\n", &src[..cut]);
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "kind = \"host\""),
        "fencing[0].kind",
        "add `[linkage]`",
    );
}

#[test]
fn node_missing_an_address_on_a_link() {
    let src = edit(
        &example("two-hosts.toml"),
        ", storage = [\"198.51.100.12/24\"] }",
        " }",
    );
    let errs = errors("broken.toml", &src);
    let line = line_of(&src, "links = { lan = [\"192.0.2.12/24\"");
    assert_one(
        &errs,
        line,
        "nodes[1].links",
        "no address on heartbeat link `storage`",
    );
}

#[test]
fn heartbeat_timeout_must_exceed_interval() {
    let src = edit(
        &example("two-hosts.toml"),
        "timeout = \"800ms\"",
        "timeout = \"200ms\"",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "timeout = \"200ms\""),
        "heartbeat.timeout",
        "greater than heartbeat.interval",
    );
}

#[test]
fn floating_ip_outside_every_subnet() {
    let src = edit(
        &example("guest-1plus1.toml"),
        "192.0.2.100/24",
        "203.0.113.100/24",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "203.0.113.100"),
        "groups[0].resources[0].address",
        "outside every subnet",
    );

    // On the DR node the override's address is what counts.
    let src = edit(
        &example("dr-asymmetric.toml"),
        "address = \"198.51.100.50/24\"",
        "address = \"203.0.113.51/24\"",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "203.0.113.51"),
        "nodes[1].overrides.erp-vip.address",
        "node `erp-dr`",
    );
}

#[test]
fn duplicate_names() {
    let src = edit(
        &example("guest-nplus1.toml"),
        "name = \"app-3\"",
        "name = \"app-2\"",
    );
    let errs = errors("broken.toml", &src);
    let second = src
        .match_indices("name = \"app-2\"")
        .nth(1)
        .map(|(i, _)| src[..i].matches('\n').count() + 1);
    assert_one(
        &errs,
        second.unwrap_or(0),
        "nodes[2].name",
        "duplicate node name `app-2`",
    );
}

#[test]
fn resource_kind_must_fit_the_cluster_kind() {
    let src = edit(
        &example("guest-1plus1.toml"),
        "kind = \"exec\"",
        "kind = \"vm\"\ndomain_xml = \"/x.xml\"",
    );
    let errs = errors("broken.toml", &src);
    assert!(
        errs.iter().any(|e| e.message.contains("unknown key")),
        "exec keys on a vm"
    );
    let src = edit(
        &example("guest-1plus1.toml"),
        "kind = \"exec\"\nstart = [\"/opt/web/bin/start\"]\nstop = [\"/opt/web/bin/stop\"]\nenv = { WEB_PORT = \"8080\" }",
        "kind = \"vm\"\ndomain_xml = \"/x.xml\"",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "kind = \"vm\""),
        "groups[0].resources[2].kind",
        "a guest cluster holds",
    );
}

#[test]
fn override_of_an_unknown_key_is_reported_at_the_override() {
    let src = edit(
        &example("dr-asymmetric.toml"),
        "interface = \"ens3\"",
        "interfaces = \"ens3\"",
    );
    let errs = errors("broken.toml", &src);
    assert_one(
        &errs,
        line_of(&src, "interfaces"),
        "nodes[1].overrides.erp-vip.interfaces",
        "unknown key",
    );
}

#[test]
fn every_error_is_reported_in_one_run() {
    let mut src = example("guest-1plus1.toml");
    src = edit(&src, "interval = \"200ms\"", "interval = \"200\"");
    src = edit(
        &src,
        "interface = \"eth0\"\n",
        "interface = \"eth0\"\ncolour = \"red\"\n",
    );
    src = edit(&src, "start_timeout = \"30s\"", "start_timeout = \"soon\"");
    src = edit(
        &src,
        "body_contains = \"ok\"",
        "body_contains = \"ok\"\nretries = 3",
    );
    src = edit(
        &src,
        "targets = [\"web-1\", \"web-2\"]",
        "targets = [\"web-1\", \"web-9\"]",
    );
    src = edit(
        &src,
        "[[alerts]]\nname = \"ops\"\nkind = \"command\"",
        "[[alerts]]\nname = \"ops\"\nkind = \"pager\"",
    );
    let errs = errors("broken.toml", &src);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "heartbeat.interval",
        "groups[0].resources[0].colour",
        "groups[0].resources[2].start_timeout",
        "groups[0].monitors[0].retries",
        "fencing[0].targets[1]",
        "alerts[0].kind",
    ] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
    }
    let mut lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    let sorted = {
        let mut l = lines.clone();
        l.sort_unstable();
        l
    };
    assert_eq!(lines, sorted, "reported in file order");
    lines.dedup();
}

#[test]
fn syntax_errors_have_a_position() {
    let errs = errors("broken.toml", "[cluster]\nname = \"x\nkind = \"guest\"\n");
    assert_eq!(errs.first().map(|e| e.line), Some(2));
}

#[test]
fn missing_sections_are_named() {
    let errs = errors(
        "broken.toml",
        "[heartbeat]\ninterval = \"1s\"\ntimeout = \"3s\"\n",
    );
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert!(
        keys.contains(&"cluster") && keys.contains(&"nodes"),
        "{keys:?}"
    );
}

#[test]
fn display_reads_file_line_column_key_message() {
    let src = edit(
        &example("guest-nplus1.toml"),
        "nodes = [\"app-2\", \"spare\"]",
        "nodes = [\"app-2\", \"sapre\"]",
    );
    let errs = errors("broken.toml", &src);
    let line = line_of(&src, "sapre");
    let text = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains(&format!(
            "broken.toml:{line}:19: groups[1].nodes[1]: no node named `sapre`"
        )),
        "{text}"
    );
}

#[test]
fn the_schema_accepts_every_example_and_rejects_a_bad_kind() {
    let schema = conf::json_schema();
    let validator =
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema is invalid: {e}"));
    for name in [
        "two-hosts.toml",
        "guest-1plus1.toml",
        "guest-nplus1.toml",
        "dr-asymmetric.toml",
        "demo-hosts.toml",
    ] {
        let value: serde_json::Value =
            toml::from_str(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let problems: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            problems.is_empty(),
            "{name} against the schema: {problems:?}"
        );
    }
    let bad: serde_json::Value = toml::from_str(&edit(
        &example("guest-1plus1.toml"),
        "kind = \"exec\"",
        "kind = \"rpc\"",
    ))
    .unwrap_or_default();
    assert!(!validator.is_valid(&bad));
}

#[test]
fn docs_configuration_reference_is_up_to_date() {
    const BEGIN: &str = "<!-- BEGIN GENERATED: clusterctl config reference -->\n";
    const END: &str = "<!-- END GENERATED -->";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/configuration.md lacks the generated-reference markers");
    };
    let fresh = conf::reference_markdown();
    let current = &doc[b + BEGIN.len()..e];
    if current.trim() != fresh.trim() {
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let updated = format!("{}{BEGIN}\n{}\n{}", &doc[..b], fresh.trim(), &doc[e..]);
            std::fs::write(&path, updated).unwrap_or_else(|e| panic!("{e}"));
        } else {
            panic!(
                "docs/configuration.md is out of date with the model: run `UPDATE_DOCS=1 cargo test -p conf`"
            );
        }
    }
    // Every key the model accepts is documented.
    for key in [
        "cluster.auth_key_file",
        "groups.resources.address",
        "groups.monitors.recovery",
        "linkage.connect",
    ] {
        assert!(
            fresh.contains(&format!("`{key}`")),
            "{key} missing from the reference"
        );
    }
}

// ---------------------------------------------------------------------------
// Parameters a driver could not use are refused at load, at their line.

/// `src` fails with an error at the line of `needle`, under `key`, whose
/// message contains `message_part`.
fn refused_at(src: &str, needle: &str, key: &str, message_part: &str) {
    let errs = errors("broken.toml", src);
    assert_one(&errs, line_of(src, needle), key, message_part);
}

#[test]
fn systemd_unit_must_be_a_unit_name() {
    let base = example("guest-nplus1.toml");
    for (unit, message) in [
        ("rabbitmq-server", "expected NAME.TYPE"),
        ("rabbitmq-server.servic", "`.servic` is not a unit type"),
        ("../../etc/passwd.service", "'/' is not allowed"),
        ("rabbit mq.service", "' ' is not allowed"),
        ("getty@.service", "is a template, which cannot be started"),
        ("@tty1.service", "starts with `@`"),
    ] {
        let src = edit(
            &base,
            "unit = \"rabbitmq-server.service\"",
            &format!("unit = \"{unit}\""),
        );
        refused_at(&src, unit, "groups[1].resources[1].unit", message);
    }
    // Instances and escaped names are fine.
    for unit in ["getty@tty1.service", "dev-disk-by\\\\x2did-x.device"] {
        let src = edit(
            &base,
            "unit = \"rabbitmq-server.service\"",
            &format!("unit = \"{unit}\""),
        );
        conf::load_str("ok.toml", &src).unwrap_or_else(|e| panic!("{unit}: {e}"));
    }
}

#[test]
fn mount_paths_must_be_absolute() {
    let base = example("guest-nplus1.toml");
    let src = edit(
        &base,
        "mountpoint = \"/srv/pgsql\"",
        "mountpoint = \"srv/pgsql\"",
    );
    refused_at(
        &src,
        "\"srv/pgsql\"",
        "groups[0].resources[0].mountpoint",
        "must be an absolute path",
    );
    let src = edit(&base, "mountpoint = \"/srv/pgsql\"", "mountpoint = \"/\"");
    refused_at(
        &src,
        "mountpoint = \"/\"",
        "groups[0].resources[0].mountpoint",
        "cannot be `/`",
    );
    let device = "device = \"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4\"\nmountpoint";
    let src = edit(&base, device, "device = \"sdb1\"\nmountpoint");
    refused_at(
        &src,
        "\"sdb1\"",
        "groups[0].resources[0].device",
        "must be an absolute path (`/dev/...`) or a network source",
    );
    let src = edit(&base, device, "device = \"UUID=0b2c\"\nmountpoint");
    refused_at(
        &src,
        "UUID=0b2c",
        "groups[0].resources[0].device",
        "tags are not supported",
    );
    let src = edit(&base, device, "device = \"-oremount\"\nmountpoint");
    refused_at(
        &src,
        "-oremount",
        "groups[0].resources[0].device",
        "is not a device",
    );
    // A network source mounts, but fsck cannot check it.
    let src = edit(&base, device, "device = \"nas:/export/pg\"\nmountpoint");
    refused_at(
        &src,
        "fsck = true",
        "groups[0].resources[0].fsck",
        "fsck needs the device as an absolute path",
    );
    let src = edit(&src, "fsck = true", "fsck = false");
    conf::load_str("ok.toml", &src).unwrap_or_else(|e| panic!("{e}"));
    let src = edit(&base, "fstype = \"ext4\"", "fstype = \"ext4,ro\"");
    refused_at(
        &src,
        "ext4,ro",
        "groups[0].resources[0].fstype",
        "is not a file system type",
    );
}

#[test]
fn disk_monitor_device_must_be_absolute_and_block_size_whole_sectors() {
    let base = example("guest-nplus1.toml");
    let device = "device = \"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4\"\ninterval";
    let src = edit(
        &base,
        device,
        "device = \"disk/by-id/wwn-0x5000\"\ninterval",
    );
    refused_at(
        &src,
        "disk/by-id/wwn-0x5000\"",
        "groups[0].monitors[1].device",
        "must be an absolute path",
    );
    let src = edit(
        &base,
        device,
        "device = \"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4\"\nblock_size = 1000\ninterval",
    );
    refused_at(
        &src,
        "block_size = 1000",
        "groups[0].monitors[1].block_size",
        "not a multiple of 512",
    );
}

#[test]
fn floating_ip_prefix_must_fit() {
    let base = example("guest-1plus1.toml");
    for (address, message) in [
        (
            "192.0.2.100/16",
            "/16 is wider than its subnet (192.0.2.0/24)",
        ),
        ("192.0.2.255/24", "is the broadcast address of 192.0.2.0/24"),
        ("192.0.2.0/24", "is the network address of 192.0.2.0/24"),
        ("192.0.2.100/0", "/0 would make every address on-link"),
    ] {
        let src = edit(&base, "192.0.2.100/24", address);
        refused_at(&src, address, "groups[0].resources[0].address", message);
    }
    let src = edit(&base, "2001:db8:0:1::100/64", "2001:db8:0:1::/64");
    refused_at(
        &src,
        "2001:db8:0:1::/64",
        "groups[0].resources[1].address",
        "subnet-router anycast address",
    );
    // A longer prefix than the subnet's is fine (a /32 address).
    let src = edit(&base, "192.0.2.100/24", "192.0.2.100/32");
    conf::load_str("ok.toml", &src).unwrap_or_else(|e| panic!("{e}"));
    // On the DR node, the override's prefix is what counts.
    let src = edit(
        &example("dr-asymmetric.toml"),
        "address = \"198.51.100.50/24\"",
        "address = \"198.51.100.50/20\"",
    );
    refused_at(
        &src,
        "198.51.100.50/20",
        "nodes[1].overrides.erp-vip.address",
        "does not fit node `erp-dr`",
    );
}

#[test]
fn interface_names_must_be_names_the_kernel_accepts() {
    let src = edit(
        &example("guest-1plus1.toml"),
        "kind = \"nic\"\ninterface = \"eth0\"",
        "kind = \"nic\"\ninterface = \"enp0s31f6-uplink0\"",
    );
    refused_at(
        &src,
        "enp0s31f6-uplink0",
        "groups[0].monitors[1].interface",
        "at most 15 bytes",
    );
    let src = edit(
        &example("guest-1plus1.toml"),
        "interface = \"eth0\"",
        "interface = \"eth0/1\"",
    );
    refused_at(
        &src,
        "eth0/1",
        "groups[0].resources[0].interface",
        "not an interface name",
    );
    // Through a node's override: reported at the override, naming the node.
    let src = edit(
        &example("dr-asymmetric.toml"),
        "interface = \"ens3\"",
        "interface = \"ens 3\"",
    );
    refused_at(
        &src,
        "ens 3",
        "nodes[1].overrides.erp-vip.interface",
        "(on node `erp-dr`)",
    );
}

#[test]
fn http_url_must_parse() {
    let base = example("guest-1plus1.toml");
    let url = "http://192.0.2.100:8080/health";
    for (bad, message) in [
        (
            "http://192.0.2.100:80a80/health",
            "the port `80a80` is not a number",
        ),
        ("http:///health", "the URL has no host"),
        ("http://192.0.2.100:8080/he alth", "must not contain spaces"),
        ("http://[2001:db8::100:8080/health", "no closing `]`"),
        (
            "http://[2001:db8::zz]:8080/health",
            "is not an IPv6 address",
        ),
    ] {
        let src = edit(&base, url, bad);
        refused_at(&src, bad, "groups[0].monitors[0].url", message);
    }
    let src = edit(&base, url, "http://[2001:db8:0:1::100]:8080/health");
    conf::load_str("ok.toml", &src).unwrap_or_else(|e| panic!("{e}"));
    let src = edit(&base, "body_contains", "expect_status = 42\nbody_contains");
    refused_at(
        &src,
        "expect_status = 42",
        "groups[0].monitors[0].expect_status",
        "not an HTTP status",
    );
}

#[test]
fn ocf_agent_must_be_a_provider_and_a_type() {
    let base = example("guest-nplus1.toml");
    for (agent, message) in [
        ("pgsql", "expected `provider:type`"),
        (
            "heartbeat:../../../bin/sh",
            "the agent's type `../../../bin/sh` is not a name",
        ),
        ("..:pgsql", "the agent's provider `..` is not a name"),
        ("heartbeat:", "the agent's type `` is not a name"),
    ] {
        let src = edit(
            &base,
            "agent = \"heartbeat:pgsql\"",
            &format!("agent = \"{agent}\""),
        );
        refused_at(
            &src,
            &format!("\"{agent}\""),
            "groups[0].resources[2].agent",
            message,
        );
    }
    let src = edit(
        &base,
        "agent = \"heartbeat:pgsql\"",
        "agent = \"ocf:heartbeat:pgsql\"",
    );
    conf::load_str("ok.toml", &src).unwrap_or_else(|e| panic!("{e}"));
    let src = edit(&base, "pgport = \"5432\"", "\"pg-port\" = \"5432\"");
    refused_at(
        &src,
        "\"pg-port\"",
        "groups[0].resources[2].params.pg-port",
        "cannot be passed to the agent as OCF_RESKEY_pg-port",
    );
}

#[test]
fn process_monitor_needs_a_pid_file_or_a_name() {
    let base = example("guest-nplus1.toml");
    let src = edit(&base, "process_name = \"nginx\"", "process_name = \"\"");
    refused_at(
        &src,
        "process_name = \"\"",
        "groups[2].monitors[0].process_name",
        "must not be empty",
    );
    let src = edit(
        &base,
        "process_name = \"nginx\"",
        "pid_file = \"run/nginx.pid\"",
    );
    refused_at(
        &src,
        "run/nginx.pid",
        "groups[2].monitors[0].pid_file",
        "must be an absolute path",
    );
    let src = edit(
        &base,
        "process_name = \"nginx\"",
        "process_name = \"nginx\"\npid_file = \"/run/nginx.pid\"",
    );
    let errs = errors("broken.toml", &src);
    // At the entry: its `[[groups.monitors]]` line.
    assert_one(
        &errs,
        line_of(&src, "name = \"web-proc\"") - 1,
        "groups[2].monitors[0]",
        "exactly one of `pid_file` and `process_name`",
    );
    let src = edit(&base, "process_name = \"nginx\"\n", "");
    let errs = errors("broken.toml", &src);
    // At the entry: its `[[groups.monitors]]` line.
    assert_one(
        &errs,
        line_of(&src, "name = \"web-proc\"") - 1,
        "groups[2].monitors[0]",
        "exactly one of `pid_file` and `process_name`",
    );
}

#[test]
fn tcp_address_must_be_host_and_port() {
    let base = example("guest-nplus1.toml");
    for (address, message) in [
        ("10.10.0.102", "no port"),
        ("10.10.0.102:0", "the port is not a number from 1 to 65535"),
        ("fd00::102:5672", "IPv6 addresses go in brackets"),
        ("[fd00::102]5672", "needs `]:PORT`"),
        (":5672", "no host"),
    ] {
        let src = edit(
            &base,
            "address = \"10.10.0.102:5672\"",
            &format!("address = \"{address}\""),
        );
        refused_at(
            &src,
            &format!("\"{address}\""),
            "groups[1].monitors[0].address",
            message,
        );
    }
}

#[test]
fn ip_monitor_targets_must_be_pingable() {
    let base = example("guest-1plus1.toml");
    let nic = "kind = \"nic\"\ninterface = \"eth0\"";
    for (target, message) in [
        ("fe80::1", "is link-local"),
        ("ff02::1", "cannot be pinged"),
        ("0.0.0.0", "cannot be pinged"),
    ] {
        let src = edit(
            &base,
            nic,
            &format!("kind = \"ip\"\ntargets = [\"192.0.2.1\", \"{target}\"]"),
        );
        refused_at(&src, target, "groups[0].monitors[1].targets[1]", message);
    }
}

#[test]
fn monitor_timeout_and_programs() {
    let base = example("guest-1plus1.toml");
    let src = edit(&base, "timeout = \"1s\"", "timeout = \"0s\"");
    refused_at(
        &src,
        "timeout = \"0s\"",
        "groups[0].monitors[0].timeout",
        "must be greater than zero",
    );
    let src = edit(
        &base,
        "env = { WEB_PORT = \"8080\" }",
        "env = { WEB_PORT = \"8080\" }\nworking_dir = \"opt/web\"",
    );
    refused_at(
        &src,
        "working_dir",
        "groups[0].resources[2].working_dir",
        "must be an absolute path",
    );
    let src = edit(
        &base,
        "start = [\"/opt/web/bin/start\"]",
        "start = [\"\", \"start\"]",
    );
    refused_at(
        &src,
        "start = [\"\"",
        "groups[0].resources[2].start[0]",
        "the program must not be empty",
    );
}

#[test]
fn pgsql_monitor_files_and_query() {
    let base = example("guest-nplus1.toml");
    let conn = "connection = \"host=10.10.0.101 user=monitor dbname=postgres\"";
    let src = edit(
        &base,
        conn,
        &format!("{conn}\npassword_file = \"monitor.pass\""),
    );
    refused_at(
        &src,
        "monitor.pass",
        "groups[0].monitors[0].password_file",
        "must be an absolute path",
    );
    let src = edit(&base, conn, &format!("{conn}\nquery = \" \""));
    refused_at(
        &src,
        "query = \" \"",
        "groups[0].monitors[0].query",
        "must not be empty",
    );
}
