//! The key reference of `docs/configuration.md`, generated from the JSON
//! schema so that the documentation cannot drift from the model.

use std::fmt::Write as _;

use serde_json::Value;

/// Markdown tables of every key: its type, default and description.
pub fn reference_markdown() -> String {
    let schema = crate::json_schema();
    let mut out = String::new();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return out;
    };
    let required = required(&schema);
    // Sections in the order an operator writes them.
    let order = [
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
    for name in order {
        let Some(prop) = props.get(name) else {
            continue;
        };
        let target = resolve(&schema, prop);
        let is_array = target.get("type").and_then(Value::as_str) == Some("array");
        let header = if is_array {
            format!("[[{name}]]")
        } else {
            format!("[{name}]")
        };
        let _ = writeln!(out, "### `{header}`\n");
        let _ = writeln!(out, "{}", one_line(description(prop)));
        if required.contains(&name) {
            let _ = writeln!(out, "Required.");
        }
        out.push('\n');
        section(&schema, name, prop, &mut out);
    }
    out
}

/// One section: its own table, then nested tables and kinds.
fn section(schema: &Value, path: &str, prop: &Value, out: &mut String) {
    let mut node = resolve(schema, prop);
    if let Some(items) = node.get("items") {
        node = resolve(schema, items);
    }
    if let Some(variants) = node.get("anyOf").and_then(Value::as_array) {
        // `[linkage]`: one shape per cluster kind.
        for v in variants {
            let _ = writeln!(out, "{}:\n", one_line(description(v)));
            section(schema, path, v, out);
        }
        return;
    }
    let mut nested = Vec::new();
    table(schema, path, node, out, &mut nested);
    if let Some(kinds) = node.get("oneOf").and_then(Value::as_array) {
        for kind in kinds {
            let name = kind
                .pointer("/properties/kind/const")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let _ = writeln!(
                out,
                "With `kind = \"{name}\"`: {}\n",
                one_line(description(kind))
            );
            table(schema, path, kind, out, &mut nested);
        }
    }
    for (key, prop) in nested {
        let _ = writeln!(out, "#### `{key}`\n");
        section(schema, &key, prop, out);
    }
}

/// The table of one object's keys; objects nested in it are queued.
fn table<'a>(
    schema: &'a Value,
    path: &str,
    node: &'a Value,
    out: &mut String,
    nested: &mut Vec<(String, &'a Value)>,
) {
    let Some(props) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required = required(node);
    let mut rows = String::new();
    for (key, prop) in props {
        if key == "kind" && prop.get("const").is_some() {
            continue;
        }
        let full = format!("{path}.{key}");
        let target = resolve(schema, prop);
        let items = target.get("items").map(|i| resolve(schema, i));
        if is_section(target) || items.is_some_and(is_section) {
            nested.push((full.clone(), prop));
        }
        let default = if required.contains(&key.as_str()) {
            "required".to_owned()
        } else {
            prop.get("default")
                .map_or_else(|| "unset".to_owned(), |d| format!("`{}`", toml_value(d)))
        };
        let _ = writeln!(
            rows,
            "| `{full}` | {} | {default} | {} |",
            type_name(schema, prop),
            one_line(description(prop)).replace('|', "\\|")
        );
    }
    if rows.is_empty() {
        return;
    }
    out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    out.push_str(&rows);
    out.push('\n');
}

/// Whether a schema is an object with keys of its own (documented apart).
fn is_section(node: &Value) -> bool {
    node.get("properties").is_some()
        || node
            .get("oneOf")
            .is_some_and(|o| o.get(0).and_then(|v| v.get("properties")).is_some())
}

fn required(node: &Value) -> Vec<&str> {
    node.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Follow a `$ref` (and an `Option`'s `anyOf [T, null]`) to its definition.
fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        if let Some(def) = schema.pointer(&format!("/$defs/{name}")) {
            return resolve(schema, def);
        }
    }
    if let Some(any) = node.get("anyOf").and_then(Value::as_array) {
        let non_null: Vec<&Value> = any
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .collect();
        if let [only] = non_null.as_slice() {
            return resolve(schema, only);
        }
    }
    node
}

fn description(node: &Value) -> &str {
    node.get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn type_name(schema: &Value, prop: &Value) -> String {
    let named = prop
        .get("$ref")
        .or_else(|| prop.pointer("/anyOf/0/$ref"))
        .and_then(Value::as_str)
        .map(|r| r.trim_start_matches("#/$defs/"));
    match named {
        Some("Duration") => return "duration".into(),
        Some("Cidr") => return "address/prefix".into(),
        Some("Endpoint") => return "endpoint".into(),
        _ => {}
    }
    let node = resolve(schema, prop);
    if let Some(variants) = node.get("oneOf").and_then(Value::as_array) {
        let consts: Vec<String> = variants
            .iter()
            .filter_map(|v| v.get("const").and_then(Value::as_str))
            .map(|c| format!("`\"{c}\"`"))
            .collect();
        if !consts.is_empty() {
            return consts.join(" \\| ");
        }
    }
    let ty = match node.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("any")
            .to_owned(),
        _ if node.get("properties").is_some() || node.get("oneOf").is_some() => "table".into(),
        _ => "any".into(),
    };
    match ty.as_str() {
        "array" => {
            let item = node
                .get("items")
                .map_or_else(|| "any".to_owned(), |i| type_name(schema, i));
            format!("array of {item}")
        }
        "object" if node.get("properties").is_none() => "table".into(),
        "object" => "table".into(),
        "integer" => "integer".into(),
        other if node.get("format").and_then(Value::as_str) == Some("ip") => {
            format!("{other} (IP address)")
        }
        other => other.to_owned(),
    }
}

/// A JSON default written as TOML.
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) if o.is_empty() => "{}".to_owned(),
        Value::Object(o) => format!(
            "{{ {} }}",
            o.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}
