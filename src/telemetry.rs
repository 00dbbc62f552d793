//! Logs (tracing) and metrics (Prometheus text via `metrics-exporter-prometheus`).
//! Every metric is named `harmonydb_<subsystem>_<name>_<unit>`, has a help
//! text, and histograms have real buckets so Grafana can take quantiles.

use std::str::FromStr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

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

/// Installs the global log subscriber, writing to stderr.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let targets = parse_log_filter(filter)?;
    let registry = tracing_subscriber::registry().with(targets);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
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
    Ok(handle)
}

fn describe_metrics() {
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
}
