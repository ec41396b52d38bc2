//! From TOML text to a [`Config`], keeping every error's exact place.
//!
//! serde stops at the first error, so the document is parsed once into a
//! spanned tree and then deserialized piece by piece (each section, each
//! array entry, each resource), collecting every error with its span and
//! key path. Entries chosen by a `kind` key are split into their common keys
//! and their kind's keys and each part is deserialized directly from the
//! spanned tree, so no error loses its position to serde's buffering.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use serde::Deserializer;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::diag::{Diagnostic, Diagnostics, SourceMap, join};
use crate::model::*;
use crate::validate;

/// Why a configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Load and validate the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: name.clone(),
        source,
    })?;
    load_str(&name, &src).map_err(LoadError::Invalid)
}

/// Load and validate configuration text; `file` names it in diagnostics.
pub fn load_str(file: &str, src: &str) -> Result<Config, Diagnostics> {
    let mut map = SourceMap::new(file, src);
    let (root, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        let diags = syntax
            .iter()
            .map(|e| map.at_offset(e.span().map_or(0, |s| s.start), "", e.message()))
            .collect();
        return Err(Diagnostics(diags));
    }
    index_table("", root.get_ref(), &mut map);

    let mut errors = Vec::new();
    let mut unparsed = validate::Unparsed::default();
    let config = build(root.into_inner(), &mut errors, &mut unparsed);
    let mut diags: Vec<Diagnostic> = errors.iter().map(|e| e.locate(&map)).collect();
    // Cross-checks run even after errors in some entries (so that one run
    // reports everything), skipping references to the entries that failed.
    if let Some(config) = &config {
        let problems = validate::check(config, &unparsed);
        diags.extend(problems.iter().map(|(key, msg)| map.at_key(key, msg)));
    }
    match config {
        Some(config) if diags.is_empty() => Ok(config),
        _ => {
            diags.sort_by_key(|d| (d.line, d.column));
            diags.dedup();
            Err(Diagnostics(diags))
        }
    }
}

/// An error found while deserializing, before it is given a line.
#[derive(Debug)]
pub(crate) struct FieldError {
    /// Key path relative to the value being deserialized.
    path: String,
    /// Byte range in the source, when known.
    span: Option<Range<usize>>,
    message: String,
}

impl FieldError {
    fn new(
        path: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            span,
            message: message.into(),
        }
    }

    fn under(mut self, prefix: &str) -> Self {
        self.path = join(prefix, &self.path);
        self
    }

    fn locate(&self, map: &SourceMap<'_>) -> Diagnostic {
        match &self.span {
            Some(span) => map.at_offset(span.start, &self.path, &self.message),
            None => map.at_key(&self.path, &self.message),
        }
    }
}

type Errors = Vec<FieldError>;

fn index_table(prefix: &str, table: &DeTable<'_>, map: &mut SourceMap<'_>) {
    for (key, value) in table.iter() {
        index_value(join(prefix, key.get_ref()), value, map);
    }
}

fn index_value(path: String, value: &Spanned<DeValue<'_>>, map: &mut SourceMap<'_>) {
    match value.get_ref() {
        DeValue::Table(t) => index_table(&path, t, map),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                index_value(format!("{path}[{i}]"), item, map);
            }
        }
        _ => {}
    }
    map.record(path, value.span());
}

/// Deserialize one value, reporting the first error inside it with its path.
fn de<T: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Result<T, FieldError> {
    let outer = value.span();
    let deserializer = ValueDeserializer::from(value);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = path_string(e.path());
        let inner = e.into_inner();
        FieldError::new(path, Some(inner.span().unwrap_or(outer)), inner.message())
    })
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => out = join(&out, key),
            Segment::Unknown => {}
        }
    }
    out
}

/// The names of the fields of a struct that derives `Deserialize`.
pub(crate) fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor, value};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
            Err(value::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, value::Error> {
            *self.0 = fields;
            Err(value::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The `kind` enum of a [`Tagged`] entry.
pub(crate) trait KindEnum: Sized {
    /// The accepted `kind` values.
    const KINDS: &'static [&'static str];
    /// The keys of one kind (besides the common ones).
    fn fields(kind: &str) -> &'static [&'static str];
    /// Deserialize one kind's keys.
    fn parse(kind: &str, params: Spanned<DeValue<'_>>) -> Result<Self, FieldError>;
}

/// An entry whose keys depend on its `kind`: common keys plus one kind's keys.
pub(crate) trait Tagged: Sized {
    /// The keys every kind has.
    type Common: DeserializeOwned;
    /// The enum chosen by `kind`.
    type Kind: KindEnum;
    /// What the entries are called in messages (`resource`).
    const WHAT: &'static str;
    /// Put the two parts together.
    fn assemble(common: Self::Common, kind: Self::Kind) -> Self;
}

macro_rules! kinds {
    ($enum:ident { $($name:literal => $variant:ident($inner:ty)),+ $(,)? }) => {
        impl KindEnum for $enum {
            const KINDS: &'static [&'static str] = &[$($name),+];

            fn fields(kind: &str) -> &'static [&'static str] {
                match kind {
                    $($name => struct_fields::<$inner>(),)+
                    _ => &[],
                }
            }

            fn parse(kind: &str, params: Spanned<DeValue<'_>>) -> Result<Self, FieldError> {
                match kind {
                    $($name => de::<$inner>(params).map(Self::$variant),)+
                    other => Err(FieldError::new("kind", None, format!("unknown kind `{other}`"))),
                }
            }
        }
    };
}

kinds!(ResourceKind {
    "vm" => Vm(VmResource),
    "exec" => Exec(ExecResource),
    "ocf" => Ocf(OcfResource),
    "systemd" => Systemd(SystemdResource),
    "floating_ip" => FloatingIp(FloatingIpResource),
    "mount" => Mount(MountResource),
});

kinds!(MonitorKind {
    "ip" => Ip(IpMonitor),
    "nic" => Nic(NicMonitor),
    "process" => Process(ProcessMonitor),
    "tcp" => Tcp(TcpMonitor),
    "http" => Http(HttpMonitor),
    "pgsql" => Pgsql(PgsqlMonitor),
    "disk" => Disk(DiskMonitor),
    "ocf" => Ocf(OcfMonitor),
    "custom" => Custom(CustomMonitor),
    "vm" => Vm(VmMonitor),
});

kinds!(FenceKind {
    "agent" => Agent(FenceAgent),
    "redfish" => Redfish(FenceRedfish),
    "host" => Host(FenceHost),
});

kinds!(AlertKind {
    "snmp_trap" => SnmpTrap(SnmpTrapAlert),
    "webhook" => Webhook(WebhookAlert),
    "command" => Command(CommandAlert),
});

impl Tagged for Resource {
    type Common = ResourceCommon;
    type Kind = ResourceKind;
    const WHAT: &'static str = "resource";
    fn assemble(c: ResourceCommon, kind: ResourceKind) -> Self {
        Self {
            name: c.name,
            start_timeout: c.start_timeout,
            stop_timeout: c.stop_timeout,
            on_stop_failure: c.on_stop_failure,
            monitor_interval: c.monitor_interval,
            monitor_timeout: c.monitor_timeout,
            monitor_recovery: c.monitor_recovery,
            kind,
        }
    }
}

impl Tagged for Monitor {
    type Common = MonitorCommon;
    type Kind = MonitorKind;
    const WHAT: &'static str = "monitor";
    fn assemble(c: MonitorCommon, kind: MonitorKind) -> Self {
        Self {
            name: c.name,
            interval: c.interval,
            timeout: c.timeout,
            start_delay: c.start_delay,
            while_active: c.while_active,
            resource: c.resource,
            recovery: c.recovery,
            kind,
        }
    }
}

impl Tagged for FenceDevice {
    type Common = FenceCommon;
    type Kind = FenceKind;
    const WHAT: &'static str = "fencing device";
    fn assemble(c: FenceCommon, kind: FenceKind) -> Self {
        Self {
            name: c.name,
            targets: c.targets,
            timeout: c.timeout,
            delay: c.delay,
            kind,
        }
    }
}

impl Tagged for Alert {
    type Common = AlertCommon;
    type Kind = AlertKind;
    const WHAT: &'static str = "alert";
    fn assemble(c: AlertCommon, kind: AlertKind) -> Self {
        Self {
            name: c.name,
            events: c.events,
            kind,
        }
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Build a [`Tagged`] entry from its table, collecting every error.
pub(crate) fn tagged<T: Tagged>(value: Spanned<DeValue<'_>>) -> Result<T, Errors> {
    let kinds = <T::Kind as KindEnum>::KINDS;
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        return Err(vec![FieldError::new(
            "",
            Some(span),
            format!("expected a table ({})", T::WHAT),
        )]);
    };
    let kind = match table.remove("kind") {
        None => {
            return Err(vec![FieldError::new(
                "kind",
                Some(span),
                format!(
                    "missing key `kind`; a {} is one of {}",
                    T::WHAT,
                    quoted(kinds)
                ),
            )]);
        }
        Some(k) => match k.get_ref().as_str() {
            Some(s) if kinds.contains(&s) => s.to_owned(),
            _ => {
                return Err(vec![FieldError::new(
                    "kind",
                    Some(k.span()),
                    format!(
                        "unknown {} kind; expected one of {}",
                        T::WHAT,
                        quoted(kinds)
                    ),
                )]);
            }
        },
    };
    let common_fields = struct_fields::<T::Common>();
    let kind_fields = T::Kind::fields(&kind);
    let mut errors = Vec::new();
    let mut common = DeTable::new();
    let mut params = DeTable::new();
    for (key, value) in table {
        let name: &str = key.get_ref();
        if common_fields.contains(&name) {
            common.insert(key, value);
        } else if kind_fields.contains(&name) {
            params.insert(key, value);
        } else {
            let mut all: Vec<&str> = common_fields.to_vec();
            all.push("kind");
            all.extend_from_slice(kind_fields);
            errors.push(FieldError::new(
                name,
                Some(key.span()),
                format!(
                    "unknown key for a {} of kind `{kind}`; expected one of {}",
                    T::WHAT,
                    quoted(&all)
                ),
            ));
        }
    }
    let common = de::<T::Common>(Spanned::new(span.clone(), DeValue::Table(common)));
    let kind = T::Kind::parse(&kind, Spanned::new(span, DeValue::Table(params)));
    match (common, kind) {
        (Ok(c), Ok(k)) if errors.is_empty() => Ok(T::assemble(c, k)),
        (c, k) => {
            errors.extend(c.err());
            errors.extend(k.err());
            Err(errors)
        }
    }
}

/// Deserialize an array-of-tables section entry by entry.
fn each<T>(
    path: &str,
    value: Spanned<DeValue<'_>>,
    errors: &mut Errors,
    failed: &mut BTreeSet<String>,
    mut build: impl FnMut(Spanned<DeValue<'_>>) -> Result<T, Errors>,
) -> Vec<T> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        errors.push(FieldError::new(
            path,
            Some(span),
            format!("expected an array of tables `[[{path}]]`"),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let name = item
            .get_ref()
            .get("name")
            .and_then(|n| n.get_ref().as_str())
            .map(str::to_owned);
        match build(item) {
            Ok(v) => out.push(v),
            Err(es) => {
                failed.extend(name);
                errors.extend(es.into_iter().map(|e| e.under(&format!("{path}[{i}]"))));
            }
        }
    }
    out
}

fn group(value: Spanned<DeValue<'_>>, failed: &mut validate::Unparsed) -> Result<Group, Errors> {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        return Err(vec![FieldError::new(
            "",
            Some(span),
            "expected a table (group)",
        )]);
    };
    let mut errors = Vec::new();
    let resources = table
        .remove("resources")
        .map(|v| {
            each("resources", v, &mut errors, &mut failed.resources, |v| {
                tagged::<Resource>(v)
            })
        })
        .unwrap_or_default();
    let monitors = table
        .remove("monitors")
        .map(|v| {
            each("monitors", v, &mut errors, &mut BTreeSet::new(), |v| {
                tagged::<Monitor>(v)
            })
        })
        .unwrap_or_default();
    let common = de::<GroupCommon>(Spanned::new(span, DeValue::Table(table)));
    match common {
        Ok(c) if errors.is_empty() => Ok(Group {
            name: c.name,
            nodes: c.nodes,
            failback: c.failback,
            autostart: c.autostart,
            start_after: c.start_after,
            anti_affinity: c.anti_affinity,
            resources,
            monitors,
        }),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.insert(0, e);
            Err(errors)
        }
    }
}

const SECTIONS: &[&str] = &[
    "cluster",
    "heartbeat",
    "quorum",
    "watchdog",
    "nodes",
    "fencing",
    "groups",
    "alerts",
    "linkage",
    "api",
];

fn section<T: DeserializeOwned>(
    root: &mut DeTable<'_>,
    key: &str,
    errors: &mut Errors,
) -> Option<Option<T>> {
    match root.remove(key).map(de::<T>) {
        None => Some(None),
        Some(Ok(v)) => Some(Some(v)),
        Some(Err(e)) => {
            errors.push(e.under(key));
            None
        }
    }
}

fn build(
    mut root: DeTable<'_>,
    errors: &mut Errors,
    unparsed: &mut validate::Unparsed,
) -> Option<Config> {
    let unknown: Vec<_> = root
        .iter()
        .filter(|(k, _)| !SECTIONS.contains(&k.get_ref().as_ref()))
        .map(|(k, _)| (k.get_ref().to_string(), k.span()))
        .collect();
    for (key, span) in unknown {
        errors.push(FieldError::new(
            key,
            Some(span),
            format!("unknown section; expected one of {}", quoted(SECTIONS)),
        ));
    }

    let cluster = section::<ClusterSection>(&mut root, "cluster", errors);
    let cluster = match cluster {
        Some(Some(c)) => Some(c),
        Some(None) => {
            errors.push(FieldError::new(
                "cluster",
                Some(0..0),
                "missing section `[cluster]` (name, kind, auth_key_file)",
            ));
            None
        }
        None => None,
    };
    let heartbeat = section::<HeartbeatSection>(&mut root, "heartbeat", errors);
    unparsed.heartbeat = heartbeat.is_none();
    let quorum = section::<QuorumSection>(&mut root, "quorum", errors);
    let watchdog = section::<WatchdogSection>(&mut root, "watchdog", errors);
    let api = section::<ApiSection>(&mut root, "api", errors);
    let nodes = match root.remove("nodes") {
        Some(v) => each("nodes", v, errors, &mut unparsed.nodes, |v| {
            de::<Node>(v).map_err(|e| vec![e])
        }),
        None => {
            errors.push(FieldError::new(
                "nodes",
                Some(0..0),
                "missing `[[nodes]]`: a cluster needs at least one node",
            ));
            Vec::new()
        }
    };
    let fencing = root
        .remove("fencing")
        .map(|v| {
            each("fencing", v, errors, &mut BTreeSet::new(), |v| {
                tagged::<FenceDevice>(v)
            })
        })
        .unwrap_or_default();
    let groups = root
        .remove("groups")
        .map(|v| {
            let mut names = BTreeSet::new();
            let groups = each("groups", v, errors, &mut names, |v| group(v, unparsed));
            unparsed.groups = names;
            groups
        })
        .unwrap_or_default();
    let alerts = root
        .remove("alerts")
        .map(|v| {
            each("alerts", v, errors, &mut BTreeSet::new(), |v| {
                tagged::<Alert>(v)
            })
        })
        .unwrap_or_default();
    let linkage = match (root.remove("linkage"), &cluster) {
        (None, _) | (Some(_), None) => None,
        (Some(v), Some(c)) => {
            let built = match c.kind {
                ClusterKind::Host => de::<LinkageHost>(v).map(Linkage::Host),
                ClusterKind::Guest => de::<LinkageGuest>(v).map(Linkage::Guest),
            };
            match built {
                Ok(l) => Some(l),
                Err(e) => {
                    errors.push(e.under("linkage"));
                    None
                }
            }
        }
    };

    let mut config = Config {
        cluster: cluster?,
        heartbeat: heartbeat.flatten().unwrap_or_default(),
        quorum: quorum.flatten().unwrap_or_default(),
        watchdog: watchdog.flatten().unwrap_or_default(),
        nodes,
        fencing,
        groups,
        alerts,
        linkage,
        api: api.flatten().unwrap_or_default(),
        effective: BTreeMap::new(),
    };
    apply_overrides(&mut config, errors);
    Some(config)
}

/// Resolve `nodes.overrides` into per-node effective resources, checking
/// that each override names a resource and yields a valid one.
fn apply_overrides(config: &mut Config, errors: &mut Errors) {
    let mut effective = BTreeMap::new();
    for (n, node) in config.nodes.iter().enumerate() {
        for (res_name, table) in &node.overrides {
            let path = format!("nodes[{n}].overrides.{res_name}");
            let Some((_, base)) = config.resources().find(|(_, r)| &r.name == res_name) else {
                errors.push(FieldError::new(
                    &path,
                    None,
                    format!("no resource named `{res_name}` to override"),
                ));
                continue;
            };
            match override_resource(base, table) {
                Ok(r) => {
                    effective.insert((node.name.clone(), res_name.clone()), r);
                }
                Err(es) => {
                    // Spans from the re-parsed text mean nothing here: point
                    // at the override's own keys instead.
                    errors.extend(
                        es.into_iter()
                            .map(|e| FieldError::new(join(&path, &e.path), None, e.message)),
                    );
                }
            }
        }
    }
    config.effective = effective;
}

fn override_resource(base: &Resource, overrides: &toml::Table) -> Result<Resource, Errors> {
    let mut table = toml::Table::try_from(base).map_err(|e| {
        vec![FieldError::new(
            "",
            None,
            format!("cannot apply overrides: {e}"),
        )]
    })?;
    for (key, value) in overrides {
        if key == "name" || key == "kind" {
            return Err(vec![FieldError::new(
                key.as_str(),
                None,
                "`name` and `kind` cannot be overridden per node",
            )]);
        }
        table.insert(key.clone(), value.clone());
    }
    let text = toml::to_string(&table).map_err(|e| {
        vec![FieldError::new(
            "",
            None,
            format!("cannot apply overrides: {e}"),
        )]
    })?;
    let parsed = DeTable::parse(&text).map_err(|e| vec![FieldError::new("", None, e.message())])?;
    let span = parsed.span();
    tagged::<Resource>(Spanned::new(span, DeValue::Table(parsed.into_inner())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_fields_lists_a_structs_keys() {
        assert_eq!(struct_fields::<Capacity>(), &["memory_mib", "vcpus"]);
    }
}
