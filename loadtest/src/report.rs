//! Results: the JSON schema (every figure and the exact parameters), the
//! readable table, and the comparison of two results.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::store::TargetKind;
use crate::workload::Params;

/// The schema version written in every result; readers refuse others.
pub const SCHEMA_VERSION: u32 = 1;

/// Latency percentiles of a set of operations, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Latency {
    /// The summary of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            count: histogram.len(),
            mean_us: round_to(histogram.mean(), 3),
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// The figures of one operation type (or of all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figures {
    /// Operations done (= ok + errors).
    pub operations: u64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Failures by kind (`not_found`, `version_mismatch`, `timeout`, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Latency of every operation, failed ones included.
    pub latency: Latency,
}

/// One phase's result, as written by `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// `SCHEMA_VERSION` of the writer.
    pub schema_version: u32,
    /// The tool and its version.
    pub tool: String,
    /// The system measured.
    pub target: TargetKind,
    /// The addresses the clients used.
    pub endpoints: Vec<String>,
    /// Exactly how the phase was run.
    pub params: Params,
    /// When the phase started (Unix time, ms).
    pub started_at_unix_ms: u64,
    /// Wall time from the first operation's start to the last's end.
    pub elapsed_seconds: f64,
    /// Completed operations per second over `elapsed_seconds`.
    pub throughput_ops_per_second: f64,
    /// Open loop: the operations that started over 1 ms later than
    /// scheduled (the target, or this tool, could not keep up); 0 in
    /// closed loop.
    pub operations_started_late: u64,
    /// All operations together.
    pub total: Figures,
    /// By operation type (`read`, `update`, `insert`, `scan`, `read_modify_write`).
    pub by_operation: BTreeMap<String, Figures>,
}

impl Report {
    /// The result as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Reads a result, refusing other schemas and missing fields.
    pub fn from_json(path: &str, text: &str) -> Result<Report, LoadError> {
        let schema = |reason: String| LoadError::Schema {
            path: path.to_string(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| schema(e.to_string()))?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(version) if version == u64::from(SCHEMA_VERSION) => {}
            Some(version) => {
                return Err(schema(format!(
                    "schema version {version}, this tool reads {SCHEMA_VERSION}"
                )))
            }
            None => return Err(schema("no schema_version".into())),
        }
        serde_json::from_value(value).map_err(|e| schema(e.to_string()))
    }

    /// Reads a result file.
    pub fn read(path: &str) -> Result<Report, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::File {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        Report::from_json(path, &text)
    }

    /// Writes the result as JSON.
    pub fn write(&self, path: &str) -> Result<(), LoadError> {
        std::fs::write(path, self.to_json() + "\n").map_err(|e| LoadError::File {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// A readable table: parameters, then one row per operation type.
    pub fn table(&self) -> String {
        let p = &self.params;
        let mut out = String::new();
        let loop_kind = match p.rate_per_second {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "{} {} phase, workload {} ({}), {} records of {} bytes ({} fields), {} clients on {} connections, {}",
            self.target,
            p.phase,
            p.workload,
            p.distribution,
            p.record_count,
            p.value_size_bytes,
            p.field_count,
            p.clients,
            p.connections,
            loop_kind
        );
        let _ = writeln!(
            out,
            "{} operations in {:.2} s: {:.0} ops/s, {} errors{}",
            self.total.operations,
            self.elapsed_seconds,
            self.throughput_ops_per_second,
            self.total.errors,
            if self.operations_started_late > 0 {
                format!(", {} started late", self.operations_started_late)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation",
            "count",
            "ok",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        let rows = self
            .by_operation
            .iter()
            .map(|(name, figures)| (name.as_str(), figures))
            .chain(std::iter::once(("all", &self.total)));
        for (name, figures) in rows {
            let l = &figures.latency;
            let _ = writeln!(
                out,
                "{:<18} {:>10} {:>10} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name,
                figures.operations,
                figures.ok,
                figures.errors,
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.p999_us),
                ms(l.max_us)
            );
        }
        for (kind, count) in &self.total.errors_by_kind {
            let _ = writeln!(out, "  errors {kind}: {count}");
        }
        out
    }
}

/// `value` rounded to `decimals` places: few enough digits that the JSON
/// text reads back as the same number.
pub fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// B's figure over A's, or `-` when A's is zero.
fn ratio(a: f64, b: f64) -> String {
    if a == 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}", b / a)
    }
}

/// The comparison of two results: each headline figure side by side with
/// B / A. A warning line says when the two were not run alike.
pub fn compare(a_name: &str, a: &Report, b_name: &str, b: &Report) -> String {
    let mut out = String::new();
    if a.params.workload != b.params.workload
        || a.params.clients != b.params.clients
        || a.params.phase != b.params.phase
    {
        let _ = writeln!(
            out,
            "note: the runs differ: {} workload {} with {} clients vs {} workload {} with {} clients",
            a.params.phase,
            a.params.workload,
            a.params.clients,
            b.params.phase,
            b.params.workload,
            b.params.clients
        );
    }
    let _ = writeln!(
        out,
        "A = {a_name} ({}), B = {b_name} ({})",
        a.target, b.target
    );
    let _ = writeln!(out, "{:<16} {:>14} {:>14} {:>8}", "figure", "A", "B", "B/A");
    let la = &a.total.latency;
    let lb = &b.total.latency;
    let rows: [(&str, f64, f64); 8] = [
        (
            "ops/s",
            a.throughput_ops_per_second,
            b.throughput_ops_per_second,
        ),
        ("errors", a.total.errors as f64, b.total.errors as f64),
        ("mean ms", la.mean_us / 1000.0, lb.mean_us / 1000.0),
        ("p50 ms", ms(la.p50_us), ms(lb.p50_us)),
        ("p90 ms", ms(la.p90_us), ms(lb.p90_us)),
        ("p99 ms", ms(la.p99_us), ms(lb.p99_us)),
        ("p99.9 ms", ms(la.p999_us), ms(lb.p999_us)),
        ("max ms", ms(la.max_us), ms(lb.max_us)),
    ];
    for (name, va, vb) in rows {
        let _ = writeln!(out, "{name:<16} {va:>14.3} {vb:>14.3} {:>8}", ratio(va, vb));
    }
    out
}

/// One Markdown table row: workload, clients, A's ops/s, p50 and p99, the
/// same for B, then B/A for ops/s and p99 (used by scripts/compare-etcd).
pub fn compare_markdown_row(a: &Report, b: &Report) -> String {
    let la = &a.total.latency;
    let lb = &b.total.latency;
    format!(
        "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {} | {} |",
        a.params.workload,
        a.params.clients,
        a.throughput_ops_per_second,
        ms(la.p50_us),
        ms(la.p99_us),
        b.throughput_ops_per_second,
        ms(lb.p50_us),
        ms(lb.p99_us),
        ratio(a.throughput_ops_per_second, b.throughput_ops_per_second),
        ratio(ms(la.p99_us), ms(lb.p99_us)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Distribution, Phase, Stop, Workload};

    fn sample() -> Report {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for us in 1..=1000 {
            histogram.record(us).expect("in range");
        }
        let figures = Figures {
            operations: 1001,
            ok: 1000,
            errors: 1,
            errors_by_kind: BTreeMap::from([("timeout".to_string(), 1)]),
            latency: Latency::of(&histogram),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            tool: "harmonydb-loadtest test".into(),
            target: TargetKind::Etcd,
            endpoints: vec!["127.0.0.1:2379".into()],
            params: Params {
                phase: Phase::Run,
                workload: Workload::A,
                mix: Workload::A.mix(),
                distribution: Distribution::Zipfian,
                record_count: 1000,
                value_size_bytes: 100,
                field_count: 10,
                scan_length_max: 100,
                clients: 4,
                connections: 1,
                rate_per_second: Some(500.0),
                stop: Stop::DurationSeconds(2.0),
                timeout_ms: 5000,
                seed: 1,
            },
            started_at_unix_ms: 1,
            elapsed_seconds: 2.0,
            throughput_ops_per_second: 500.5,
            operations_started_late: 0,
            total: figures.clone(),
            by_operation: BTreeMap::from([("read".to_string(), figures)]),
        }
    }

    #[test]
    fn json_round_trips() {
        let report = sample();
        let back = Report::from_json("x", &report.to_json()).expect("round trip");
        assert_eq!(back, report);
        assert_eq!(back.total.latency.p50_us, 500);
        assert_eq!(back.total.latency.max_us, 1000);
    }

    #[test]
    fn json_has_every_required_field() {
        let value: serde_json::Value =
            serde_json::from_str(&sample().to_json()).expect("valid JSON");
        for field in [
            "schema_version",
            "tool",
            "target",
            "endpoints",
            "params",
            "started_at_unix_ms",
            "elapsed_seconds",
            "throughput_ops_per_second",
            "operations_started_late",
            "total",
            "by_operation",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        for field in [
            "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "count",
        ] {
            assert!(
                value["total"]["latency"].get(field).is_some(),
                "missing latency {field}"
            );
        }
        for field in [
            "phase",
            "workload",
            "mix",
            "distribution",
            "record_count",
            "value_size_bytes",
            "field_count",
            "clients",
            "connections",
            "rate_per_second",
            "stop",
            "seed",
        ] {
            assert!(
                value["params"].get(field).is_some(),
                "missing params {field}"
            );
        }
        assert_eq!(value["params"]["workload"], "a");
        assert_eq!(value["target"], "etcd");
    }

    #[test]
    fn json_missing_fields_or_other_versions_are_refused() {
        let mut value: serde_json::Value =
            serde_json::from_str(&sample().to_json()).expect("valid JSON");
        value["schema_version"] = 2.into();
        let error = Report::from_json("r.json", &value.to_string()).expect_err("version");
        assert!(error.to_string().contains("schema version 2"), "{error}");
        value["schema_version"] = 1.into();
        value
            .as_object_mut()
            .expect("object")
            .remove("throughput_ops_per_second");
        let error = Report::from_json("r.json", &value.to_string()).expect_err("missing");
        assert!(
            error.to_string().contains("throughput_ops_per_second"),
            "{error}"
        );
        assert!(Report::from_json("r.json", "not json").is_err());
    }

    #[test]
    fn compare_prints_ratios() {
        let a = sample();
        let mut b = sample();
        b.throughput_ops_per_second = 1001.0;
        let text = compare("a.json", &a, "b.json", &b);
        assert!(text.contains("ops/s"), "{text}");
        assert!(text.contains("2.00"), "{text}");
        let row = compare_markdown_row(&a, &b);
        assert!(row.starts_with("| a | 4 | 500 |"), "{row}");
    }
}
