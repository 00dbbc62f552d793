//! Logs (tracing), traces (OpenTelemetry over OTLP/HTTP) and metrics
//! (Prometheus text via `metrics-exporter-prometheus`).
//!
//! Every metric is named `harmonydb_<subsystem>_<name>_<unit>`, has a help
//! text, and histograms have real buckets so Grafana can take quantiles.
//!
//! Trace spans use the target `harmonydb_trace`: the log output never shows
//! them, and when no OTLP endpoint is set no layer wants them, so tracing
//! costs nothing but a check per request.

use std::io::Read;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// The target of every span meant for traces rather than logs.
pub const TRACE_TARGET: &str = "harmonydb_trace";

/// How long an export to the collector may take before it is given up.
const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the batch processor sends what it has.
const OTLP_EXPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Where traces go and how many are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added).
    pub endpoint: String,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
    /// `service.name` of the spans; `instance` tells nodes apart.
    pub instance: String,
}

/// Keeps the trace exporter alive; `shutdown` sends what is buffered.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes buffered spans and stops the exporter. Call it off the actix
    /// runtime (after the node stopped): it blocks until the export ends.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown_with_timeout(OTLP_EXPORT_TIMEOUT) {
                eprintln!("warning: traces not all exported at shutdown: {error}");
            }
        }
    }
}

/// OTLP over HTTP through ureq: the SDK's batch processor exports from a
/// thread of its own, so a blocking client is the right fit and needs no
/// runtime.
#[derive(Debug)]
struct OtlpHttpClient(ureq::Agent);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        /// A collector's answer is a small status message; more is not read.
        const ANSWER_SIZE_MAX_BYTES: u64 = 1 << 20;
        let (parts, body) = request.into_parts();
        let mut call = self
            .0
            .request(parts.method.as_str(), &parts.uri.to_string());
        for (name, value) in &parts.headers {
            if let Ok(value) = value.to_str() {
                call = call.set(name.as_str(), value);
            }
        }
        let response = match call.send_bytes(&body) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(error) => return Err(Box::new(error)),
        };
        let status = response.status();
        let mut answer = Vec::new();
        response
            .into_reader()
            .take(ANSWER_SIZE_MAX_BYTES)
            .read_to_end(&mut answer)?;
        Ok(opentelemetry_http::Response::builder()
            .status(status)
            .body(answer.into())?)
    }
}

/// The tracer provider exporting to `settings.endpoint`.
fn tracer_provider(settings: &TraceSettings) -> Result<SdkTracerProvider, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(OTLP_EXPORT_TIMEOUT)
        .build();
    let endpoint = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .with_timeout(OTLP_EXPORT_TIMEOUT)
        .with_http_client(OtlpHttpClient(agent))
        .build()
        .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(OTLP_EXPORT_INTERVAL)
                .build(),
        )
        .build();
    let resource = Resource::builder()
        .with_service_name("harmonydb")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            settings.instance.clone(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Bucket bounds for latencies, 50 µs to 10 s.
const DURATION_BUCKETS_SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Bucket bounds for batch sizes.
const BATCH_BUCKETS_RECORDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Parses a log filter such as `info` or `warn,harmonydb_actors=debug`.
/// A bare word must be a level: tracing would read `loud` as "everything
/// from target loud", which hides a typo instead of reporting it.
pub fn parse_log_filter(text: &str) -> Result<Targets, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let hint = "try info, debug or warn,harmonydb=debug";
    for directive in text.split(',').map(str::trim) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} in log filter {text:?} is not a level; {hint}"
            ));
        }
    }
    Targets::from_str(text).map_err(|e| format!("{text:?} is not a log filter ({e}); {hint}"))
}

/// Installs the global subscriber: logs to stderr, and trace spans to an
/// OTLP collector when `traces` is given.
pub fn init_logging(
    filter: &str,
    format: LogFormat,
    traces: Option<&TraceSettings>,
) -> Result<TelemetryGuard, String> {
    // Trace spans never show in the logs, whatever the log filter says.
    let log_targets = parse_log_filter(filter)?.with_target(TRACE_TARGET, LevelFilter::OFF);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(log_targets)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(log_targets)
            .boxed(),
    };
    let provider = traces.map(tracer_provider).transpose()?;
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("harmonydb"))
            .with_filter(Targets::new().with_target(TRACE_TARGET, LevelFilter::TRACE))
    });
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(TelemetryGuard { provider })
}

/// This process's CPU, memory, files and threads, as `harmonydb_process_*`.
static PROCESS_METRICS: LazyLock<metrics_process::Collector> =
    LazyLock::new(|| metrics_process::Collector::new("harmonydb_"));

/// Metrics labelled by another node: `peer` (the transport, heartbeat
/// round trips) or `leader` (forwarding).
const PEER_LABELLED: &[(&str, &str)] = &[
    ("harmonydb_transport_messages_sent_total", "peer"),
    ("harmonydb_transport_messages_dropped_total", "peer"),
    ("harmonydb_transport_messages_received_total", "peer"),
    ("harmonydb_api_forwarded_total", "leader"),
];

/// Histograms labelled by another node.
const PEER_LABELLED_HISTOGRAMS: &[(&str, &str)] =
    &[("harmonydb_raft_peer_round_trip_seconds", "peer")];

/// The Prometheus text of every metric, process figures read just now.
/// Series labelled by another node exist for every member but this one
/// (at 0 until something happens), and only for members: a node that was
/// removed leaves the scrape, so its series end rather than linger.
pub fn render_metrics(handle: &PrometheusHandle, this_node: u64, members: &[u64]) -> String {
    PROCESS_METRICS.collect();
    for peer in members.iter().filter(|id| **id != this_node) {
        let peer = peer.to_string();
        for (name, label) in PEER_LABELLED {
            metrics::counter!(*name, *label => peer.clone()).increment(0);
        }
        for (name, label) in PEER_LABELLED_HISTOGRAMS {
            // Creating the handle registers the series; nothing is recorded.
            let _ = metrics::histogram!(*name, *label => peer.clone());
        }
    }
    let text = handle.render();
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if !line.starts_with('#') && names_a_former_member(line, members) {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// Whether a sample line is labelled (`peer` or `leader`) with a node that
/// is not a member.
fn names_a_former_member(line: &str, members: &[u64]) -> bool {
    ["peer=\"", "leader=\""].iter().any(|label| {
        line.split_once(label)
            .and_then(|(_, rest)| rest.split_once('"'))
            .and_then(|(id, _)| id.parse::<u64>().ok())
            .is_some_and(|id| !members.contains(&id))
    })
}

/// Installs the Prometheus recorder and describes every metric.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS_SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_records".into()), BATCH_BUCKETS_RECORDS)
        })
        .map_err(|e| format!("invalid metric buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe_metrics();
    // Counters exist from the start at 0, so rate() and dashboards work
    // before the first event (labelled ones appear with their first label).
    for name in UNLABELLED_COUNTERS {
        metrics::counter!(*name).absolute(0);
    }
    register_series();
    harmonydb_actors::observe::register_metrics();
    PROCESS_METRICS.describe();
    PROCESS_METRICS.collect();
    Ok(handle)
}

/// Creates, at 0, every series a dashboard may name that no event has
/// made yet, so panels of a fresh node show 0 rather than no data: the
/// gauges and histograms without labels, requests by TCP operation and
/// HTTP route, and protocol errors by code. (Series by peer come with
/// every scrape, from the members then: [`render_metrics`].)
fn register_series() {
    for name in UNLABELLED_GAUGES {
        metrics::gauge!(*name).increment(0.0);
    }
    for name in UNLABELLED_HISTOGRAMS {
        // Creating the handle registers the series; nothing is recorded.
        let _ = metrics::histogram!(*name);
    }
    for operation in harmonydb_protocol::OPERATIONS
        .iter()
        .filter(|op| op.is_client_operation())
    {
        let labels = [("op", operation.name), ("status", "ok")];
        metrics::counter!("harmonydb_tcp_requests_total", &labels).increment(0);
        // Creating the handle registers the series; nothing is recorded.
        let _ = metrics::histogram!("harmonydb_tcp_request_duration_seconds", &labels);
    }
    for (route, method) in crate::api::http::HTTP_ROUTES {
        let labels = [("route", *route), ("method", *method), ("status", "200")];
        metrics::counter!("harmonydb_http_requests_total", &labels).increment(0);
        // Creating the handle registers the series; nothing is recorded.
        let _ = metrics::histogram!("harmonydb_http_request_duration_seconds", &labels);
    }
    for api in ["tcp", "http"] {
        for refusal in crate::api::connections::Refusal::ALL {
            metrics::counter!(
                format!("harmonydb_{api}_connections_refused_total"),
                "reason" => refusal.as_str()
            )
            .increment(0);
        }
    }
    for code in crate::api::tcp::CONNECTION_ERROR_CODES {
        metrics::counter!("harmonydb_tcp_protocol_errors_total", "code" => code.as_str())
            .increment(0);
    }
}

/// Gauges without labels, created at 0 when the node starts (the
/// subsystems set them as soon as they know better).
const UNLABELLED_GAUGES: &[&str] = &[
    "harmonydb_tcp_requests_in_flight",
    "harmonydb_http_requests_in_flight",
    "harmonydb_tcp_connections",
    "harmonydb_wal_segments",
    "harmonydb_kv_keys",
    "harmonydb_raft_has_leader",
    "harmonydb_raft_is_leader",
    "harmonydb_raft_term",
    "harmonydb_raft_voters",
    "harmonydb_raft_learners",
    "harmonydb_raft_joint_configuration",
    "harmonydb_raft_removed",
    "harmonydb_raft_commit_index",
    "harmonydb_raft_applied_index",
    "harmonydb_raft_snapshot_index",
    "harmonydb_raft_proposals_pending",
    "harmonydb_raft_log_cache_bytes",
    "harmonydb_storage_buffer_pool_frames",
    "harmonydb_storage_buffer_pool_dirty_frames",
    "harmonydb_storage_buffer_pool_pinned_frames",
    "harmonydb_storage_btree_height",
    "harmonydb_storage_disk_free_bytes",
    "harmonydb_storage_disk_full",
    "harmonydb_wal_blocked",
];

/// Histograms without labels, created empty when the node starts.
const UNLABELLED_HISTOGRAMS: &[&str] = &[
    "harmonydb_raft_append_duration_seconds",
    "harmonydb_raft_commit_duration_seconds",
    "harmonydb_wal_fsync_duration_seconds",
    "harmonydb_wal_batch_size_records",
    "harmonydb_storage_checkpoint_duration_seconds",
];

/// Counters without labels, registered at 0 when the node starts.
const UNLABELLED_COUNTERS: &[&str] = &[
    "harmonydb_http_received_bytes_total",
    "harmonydb_http_sent_bytes_total",
    "harmonydb_tcp_received_bytes_total",
    "harmonydb_tcp_sent_bytes_total",
    "harmonydb_wal_write_bytes_total",
    "harmonydb_wal_read_records_total",
    "harmonydb_wal_segments_created_total",
    "harmonydb_wal_failures_total",
    "harmonydb_kv_overloaded_total",
    "harmonydb_raft_leader_changes_total",
    "harmonydb_raft_membership_changes_total",
    "harmonydb_raft_elections_started_total",
    "harmonydb_raft_elections_won_total",
    "harmonydb_raft_proposals_committed_total",
    "harmonydb_raft_proposals_failed_total",
    "harmonydb_raft_committed_conflicts_total",
    "harmonydb_raft_snapshots_sent_total",
    "harmonydb_raft_snapshots_received_total",
    "harmonydb_raft_snapshot_bytes_received_total",
    "harmonydb_storage_buffer_pool_hits_total",
    "harmonydb_storage_buffer_pool_misses_total",
    "harmonydb_storage_buffer_pool_evictions_total",
    "harmonydb_storage_memory_pressure_total",
    "harmonydb_storage_checkpoints_total",
    "harmonydb_storage_checkpoint_pages_total",
    "harmonydb_storage_checkpoint_failures_total",
    "harmonydb_storage_btree_splits_total",
    "harmonydb_storage_btree_merges_total",
    "harmonydb_storage_btree_redistributions_total",
    "harmonydb_storage_writes_refused_disk_full_total",
];

fn describe_metrics() {
    describe_counter!(
        "harmonydb_http_received_bytes_total",
        Unit::Bytes,
        "Bytes of HTTP request bodies received."
    );
    describe_counter!(
        "harmonydb_http_sent_bytes_total",
        Unit::Bytes,
        "Bytes of HTTP response bodies sent."
    );
    describe_counter!(
        "harmonydb_tcp_received_bytes_total",
        Unit::Bytes,
        "Bytes of TCP frames received from clients and peers, length prefixes included."
    );
    describe_counter!(
        "harmonydb_tcp_sent_bytes_total",
        Unit::Bytes,
        "Bytes of TCP answer frames sent, length prefixes included."
    );
    describe_gauge!(
        "harmonydb_tcp_requests_in_flight",
        "TCP client requests being handled now."
    );
    describe_counter!(
        "harmonydb_raft_elections_started_total",
        "Elections this node started as a candidate (a new term; pre-votes not counted)."
    );
    describe_counter!(
        "harmonydb_raft_elections_won_total",
        "Elections this node won, becoming leader."
    );
    describe_histogram!(
        "harmonydb_raft_append_duration_seconds",
        Unit::Seconds,
        "Time for a batch of Raft entries (and hard state) to be appended to this node's WAL and made durable."
    );
    describe_histogram!(
        "harmonydb_raft_commit_duration_seconds",
        Unit::Seconds,
        "Leader: time from proposing a write to learning its entry is committed."
    );
    describe_gauge!(
        "harmonydb_actor_mailbox_depth",
        "Messages waiting in an actor's mailbox, by actor and message type (messages that carry an envelope)."
    );
    describe_histogram!(
        "harmonydb_actor_queue_duration_seconds",
        Unit::Seconds,
        "Time a message waited in an actor's mailbox, by actor and message type."
    );
    describe_histogram!(
        "harmonydb_actor_handling_duration_seconds",
        Unit::Seconds,
        "Time an actor spent handling one message, by actor and message type."
    );
    describe_counter!(
        "harmonydb_http_requests_total",
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        "harmonydb_http_request_duration_seconds",
        Unit::Seconds,
        "Time from an HTTP request's arrival to its answer, by route, method and status."
    );
    describe_gauge!(
        "harmonydb_http_requests_in_flight",
        "HTTP requests being handled now."
    );
    describe_counter!(
        "harmonydb_tcp_requests_total",
        "TCP requests answered, by operation and status."
    );
    describe_histogram!(
        "harmonydb_tcp_request_duration_seconds",
        Unit::Seconds,
        "Time from a TCP request's decoding to its answer being queued, by operation and status."
    );
    describe_gauge!("harmonydb_tcp_connections", "Open client TCP connections.");
    describe_counter!(
        "harmonydb_tcp_connections_refused_total",
        "TCP connections closed at once, by reason: too_many (the pool is full) or too_many_from_source (the source has its share)."
    );
    describe_counter!(
        "harmonydb_http_connections_refused_total",
        "HTTP connections closed at once, by reason: too_many (the pool is full) or too_many_from_source (the source has its share)."
    );
    describe_counter!(
        "harmonydb_tcp_protocol_errors_total",
        "TCP connections closed for a bad frame, by error code."
    );
    describe_histogram!(
        "harmonydb_wal_fsync_duration_seconds",
        Unit::Seconds,
        "Time one WAL sync (msync of the written range) took."
    );
    describe_histogram!(
        "harmonydb_wal_batch_size_records",
        "Records made durable by one WAL sync (group commit batch)."
    );
    describe_counter!(
        "harmonydb_wal_write_bytes_total",
        Unit::Bytes,
        "Bytes appended to the WAL."
    );
    describe_gauge!("harmonydb_wal_segments", "WAL segment files on disk.");
    describe_counter!(
        "harmonydb_wal_read_records_total",
        "Raft entries read back from the WAL for a follower, the leader having evicted them from memory."
    );
    describe_gauge!(
        "harmonydb_raft_log_cache_bytes",
        Unit::Bytes,
        "Bytes of Raft log entries held in memory (applied ones beyond --raft-log-cache-mb are read back from the WAL)."
    );
    describe_counter!(
        "harmonydb_wal_segments_created_total",
        "WAL segments created by roll-over."
    );
    describe_counter!(
        "harmonydb_wal_failures_total",
        "WAL write or sync failures; after one the node refuses writes until restarted."
    );
    describe_gauge!("harmonydb_kv_keys", "Keys in the KV state.");
    describe_counter!(
        "harmonydb_kv_overloaded_total",
        "Requests refused because too many were already in the replica."
    );
    describe_gauge!(
        "harmonydb_raft_has_leader",
        "1 if this node knows a leader, else 0."
    );
    describe_gauge!("harmonydb_raft_is_leader", "1 if this node leads, else 0.");
    describe_gauge!("harmonydb_raft_term", "This node's current Raft term.");
    describe_gauge!(
        "harmonydb_raft_voters",
        "Voters in the configuration in force on this node (the incoming set during a joint change)."
    );
    describe_gauge!(
        "harmonydb_raft_learners",
        "Learners in the configuration in force on this node."
    );
    describe_gauge!(
        "harmonydb_raft_joint_configuration",
        "1 while a joint configuration (a change of voters) is in force on this node, else 0."
    );
    describe_gauge!(
        "harmonydb_raft_removed",
        "1 once this node was removed from the cluster, else 0."
    );
    describe_counter!(
        "harmonydb_raft_membership_changes_total",
        "Membership changes this node completed as leader."
    );
    describe_counter!(
        "harmonydb_raft_leader_changes_total",
        "Times this node saw a new leader (itself included)."
    );
    describe_gauge!(
        "harmonydb_raft_commit_index",
        "Highest log index this node knows is committed."
    );
    describe_gauge!(
        "harmonydb_raft_applied_index",
        "Highest log index applied to this node's state machine."
    );
    describe_counter!(
        "harmonydb_raft_proposals_committed_total",
        "Writes proposed by this node (as leader) that committed and were applied."
    );
    describe_counter!(
        "harmonydb_raft_proposals_failed_total",
        "Writes proposed by this node that a newer leader replaced: never applied."
    );
    describe_counter!(
        "harmonydb_raft_committed_conflicts_total",
        "Appends refused because the leader's log contradicted an entry committed here: a committed entry was lost somewhere. Always 0 in a healthy cluster."
    );
    describe_gauge!(
        "harmonydb_raft_proposals_pending",
        "Writes proposed by this node and not yet committed or dropped."
    );
    describe_histogram!(
        "harmonydb_raft_peer_round_trip_seconds",
        Unit::Seconds,
        "Leader's heartbeat to a peer and back, including the peer's handling, by peer."
    );
    describe_counter!(
        "harmonydb_transport_messages_sent_total",
        "Raft messages written to a peer's link, by peer."
    );
    describe_counter!(
        "harmonydb_transport_messages_dropped_total",
        "Raft messages dropped (full queue or mailbox, fault filter, failed link), by peer; Raft resends."
    );
    describe_counter!(
        "harmonydb_transport_messages_received_total",
        "Raft messages accepted from a peer, by peer."
    );
    describe_counter!(
        "harmonydb_api_forwarded_total",
        "Client requests this node forwarded to the leader, by leader."
    );
    describe_gauge!(
        "harmonydb_raft_snapshot_index",
        "Index the Raft log is compacted up to (entries before it are in the checkpointed state)."
    );
    describe_counter!(
        "harmonydb_raft_snapshots_sent_total",
        "State dumps this node wrote for followers too far behind its log."
    );
    describe_counter!(
        "harmonydb_raft_snapshots_received_total",
        "Snapshots this node fetched from a leader and installed."
    );
    describe_counter!(
        "harmonydb_raft_snapshot_bytes_received_total",
        Unit::Bytes,
        "Bytes of state dumps fetched from a leader."
    );
    describe_storage_metrics();
}

/// The storage engine's metrics (`BufferPoolManager` and the replica).
fn describe_storage_metrics() {
    describe_gauge!(
        "harmonydb_storage_buffer_pool_frames",
        "Page frames in the buffer pool."
    );
    describe_gauge!(
        "harmonydb_storage_buffer_pool_dirty_frames",
        "Frames changed since the last checkpoint began (never evicted before a checkpoint writes them)."
    );
    describe_gauge!(
        "harmonydb_storage_buffer_pool_pinned_frames",
        "Frames pinned by a request right now."
    );
    describe_counter!(
        "harmonydb_storage_buffer_pool_hits_total",
        "Page fetches served from a frame."
    );
    describe_counter!(
        "harmonydb_storage_buffer_pool_misses_total",
        "Page fetches that read the page file."
    );
    describe_counter!(
        "harmonydb_storage_buffer_pool_evictions_total",
        "Pages evicted from the buffer pool to make room."
    );
    describe_counter!(
        "harmonydb_storage_memory_pressure_total",
        "Times a request found no frame to evict and asked for an early checkpoint."
    );
    describe_histogram!(
        "harmonydb_storage_checkpoint_duration_seconds",
        Unit::Seconds,
        "Time to write a checkpoint: double-write file, pages in place, meta page, syncs."
    );
    describe_counter!(
        "harmonydb_storage_checkpoints_total",
        "Checkpoints written."
    );
    describe_counter!(
        "harmonydb_storage_checkpoint_pages_total",
        "Pages written by checkpoints (tree pages, free list and meta)."
    );
    describe_counter!(
        "harmonydb_storage_checkpoint_failures_total",
        "Checkpoints that failed (their pages stay dirty for the next one)."
    );
    describe_gauge!(
        "harmonydb_storage_btree_height",
        "Levels of the B+ tree, leaves included."
    );
    describe_counter!(
        "harmonydb_storage_btree_splits_total",
        "B+ tree nodes split in two."
    );
    describe_counter!(
        "harmonydb_storage_btree_merges_total",
        "Pairs of B+ tree nodes merged into one."
    );
    describe_counter!(
        "harmonydb_storage_btree_redistributions_total",
        "Pairs of B+ tree nodes that moved entries between them instead of merging."
    );
    describe_gauge!(
        "harmonydb_storage_disk_free_bytes",
        Unit::Bytes,
        "Bytes free for the node on its data directory's file system (read every 500 ms)."
    );
    describe_gauge!(
        "harmonydb_storage_disk_full",
        "1 while the disk is full (free space under --min-free-disk-mb, or the WAL waiting for space): writes are refused, else 0."
    );
    describe_counter!(
        "harmonydb_storage_writes_refused_disk_full_total",
        "Writes refused with storage_full because the disk was full."
    );
    describe_gauge!(
        "harmonydb_wal_blocked",
        "1 while the WAL waits for space for a new segment (nothing is lost; it retries), else 0."
    );
}
