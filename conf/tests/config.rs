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
