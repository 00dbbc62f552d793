//! Reading the Grafana dashboards and the nodes' `/metrics`: the
//! dashboards and their panels, the PromQL expressions in them, the metric
//! and label names those expressions use, and the names, types and label
//! names of what nodes export. Text scanning, not a PromQL parser: enough
//! to tell a metric from a function, a label or a number.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Where the dashboards are.
pub const DASHBOARDS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/grafana/dashboards");

/// The dashboards the issue asks for.
pub const DASHBOARDS: [&str; 4] = ["cluster-health", "performance", "storage", "system"];

/// A dashboard file, parsed.
pub struct Dashboard {
    pub name: String,
    pub json: Value,
}

/// Every dashboard in compose/grafana/dashboards, which must be the four
/// the issue asks for.
pub fn dashboards() -> Vec<Dashboard> {
    let mut found: Vec<Dashboard> = std::fs::read_dir(DASHBOARDS_DIR)
        .expect("read the dashboards directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            let name = path
                .file_stem()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            Dashboard { name, json }
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, DASHBOARDS, "dashboards in {DASHBOARDS_DIR}");
    found
}

/// Every panel, those inside rows included.
pub fn panels(json: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    let mut stack: Vec<&Value> = json["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        all.push(panel);
    }
    all
}

/// Every PromQL expression anywhere in the dashboard (panel targets,
/// annotations: any `expr`), and the templating variables' queries.
pub fn expressions(json: &Value) -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("expr", Value::String(expr)) => found.push(expr.clone()),
                        _ => walk(inner, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(json, &mut found);
    for variable in json["templating"]["list"].as_array().into_iter().flatten() {
        let query = &variable["query"];
        let query = query["query"].as_str().or(query.as_str());
        found.extend(query.map(str::to_string));
        found.extend(variable["definition"].as_str().map(str::to_string));
    }
    found
}

/// The PromQL expressions panels and annotations run (not the templating
/// queries, which are Grafana's `label_values(...)`, not PromQL).
pub fn promql(json: &Value) -> Vec<String> {
    let templating: BTreeSet<String> = json["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| {
            [
                v["query"]["query"].as_str(),
                v["query"].as_str(),
                v["definition"].as_str(),
            ]
        })
        .flatten()
        .map(str::to_string)
        .collect();
    expressions(json)
        .into_iter()
        .filter(|e| !templating.contains(e))
        .collect()
}

/// The expression with each string literal emptied, so a label value is
/// never taken for a name.
pub fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            out.push_str("\"\"");
            while let Some(inner) = chars.next() {
                if inner == '\\' && c != '`' {
                    chars.next();
                } else if inner == c {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The identifiers of an expression (strings emptied, numbers skipped),
/// each with the byte offset just past it.
pub fn identifiers(expr: &str) -> Vec<(String, usize)> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            found.push((expr[start..i].to_string(), i));
        } else if c.is_ascii_digit() || c == b'$' {
            // A number (0.99, 1e3) or a Grafana variable ($instance): not a name.
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'.'
                    || bytes[i] == b'_'
                    || bytes[i] == b'$')
            {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    found
}

/// The HarmonyDB metric names an expression uses, as written (a
/// histogram's `_bucket`, `_sum` or `_count` included).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    identifiers(&without_strings(expr))
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("harmonydb_"))
        .collect()
}

/// The labels an expression groups by (`by (...)`, `without (...)`) or
/// matches on (`name{label=...}`).
pub fn label_names(expr: &str) -> BTreeSet<String> {
    let expr = without_strings(expr);
    let mut labels = BTreeSet::new();
    let list = |from: usize, close: char| -> Vec<String> {
        let rest = &expr[from..];
        let end = rest.find(close).unwrap_or(rest.len());
        rest[..end]
            .split(',')
            .filter_map(|item| {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                (!name.is_empty()).then_some(name)
            })
            .collect()
    };
    for (name, end) in identifiers(&expr) {
        let rest = expr[end..].trim_start();
        let opening = end + (expr.len() - end - rest.len());
        if (name == "by" || name == "without") && rest.starts_with('(') {
            labels.extend(list(opening + 1, ')'));
        } else if name.starts_with("harmonydb_") && rest.starts_with('{') {
            labels.extend(list(opening + 1, '}'));
        }
    }
    labels
}

/// The metrics a set of nodes export: each name's type (`# TYPE`) and the
/// label names its samples carry.
#[derive(Default)]
pub struct Exported {
    pub types: BTreeMap<String, String>,
    pub labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    /// Adds one node's `/metrics` text.
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    self.types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (name, labels) = parse_sample(line);
                self.labels.entry(name).or_default().extend(labels);
            }
        }
    }

    /// The histogram a `_bucket`, `_sum` or `_count` name belongs to.
    pub fn histogram_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
        })
    }

    /// Whether `name` (or the histogram it is part of) is exported.
    pub fn has(&self, name: &str) -> bool {
        self.types.contains_key(name)
            || self.labels.contains_key(name)
            || self.histogram_of(name).is_some()
    }
}

/// A sample line's metric name and label names.
pub fn parse_sample(line: &str) -> (String, BTreeSet<String>) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let mut labels = BTreeSet::new();
    if line[name_end..].starts_with('{') {
        let mut chars = line[name_end + 1..].chars();
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '}' => break,
                '=' => {
                    labels.insert(std::mem::take(&mut label));
                    // The quoted value, with backslash escapes.
                    chars.next();
                    while let Some(v) = chars.next() {
                        if v == '\\' {
                            chars.next();
                        } else if v == '"' {
                            break;
                        }
                    }
                }
                ',' | ' ' => {}
                other => label.push(other),
            }
        }
    }
    (name, labels)
}

/// A dashboard expression as Grafana would send it: its variables filled in.
pub fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "5s")
        .replace("$__range", "1m")
        .replace("$instance", ".*")
}

#[test]
fn expression_parsing_finds_names_and_labels() {
    let expr = r#"histogram_quantile(0.99, sum by (le, op) (rate(harmonydb_tcp_request_duration_seconds_bucket{instance=~"$instance", status!="harmonydb_x"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["harmonydb_tcp_request_duration_seconds_bucket"]
    );
    assert_eq!(
        label_names(expr).into_iter().collect::<Vec<_>>(),
        ["instance", "le", "op", "status"]
    );
    let (name, labels) = parse_sample(
        r#"harmonydb_http_requests_total{route="/kv/{key:.*}",method="PUT",status="200"} 5"#,
    );
    assert_eq!(name, "harmonydb_http_requests_total");
    assert_eq!(
        labels.into_iter().collect::<Vec<_>>(),
        ["method", "route", "status"]
    );
    let mut exported = Exported::default();
    exported.add("# TYPE harmonydb_h histogram\nharmonydb_h_bucket{le=\"1\"} 0\n# TYPE harmonydb_c counter\nharmonydb_c 0\n");
    assert!(exported.has("harmonydb_h_bucket") && exported.has("harmonydb_h_count"));
    assert!(exported.has("harmonydb_c") && !exported.has("harmonydb_c_count"));
    assert!(!exported.has("harmonydb_missing"));
}
