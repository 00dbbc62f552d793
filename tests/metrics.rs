//! `/metrics` serves Prometheus text with every metric named `harmonydb_*`,
//! request counts by route and status, real histogram buckets for request
//! latency, WAL fsync latency and WAL batch size, and the Raft gauges and
//! counters (the per-peer ones are checked in tests/cluster.rs).

mod common;

use common::{http, http_agent, Node};

#[test]
fn metrics_cover_requests_and_the_wal_with_histogram_buckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), &[]);
    let agent = http_agent();
    for i in 0..5 {
        let request = agent
            .put(&node.url(&format!("/kv/m{i}")))
            .set("Content-Type", "application/json");
        assert_eq!(http(request, Some(r#"{"value": "x"}"#)).0, 200);
    }
    assert_eq!(http(agent.get(&node.url("/kv/absent")), None).0, 404);
    common::block_on(async {
        let client = harmonydb_protocol::Client::connect(node.tcp)
            .await
            .expect("connect");
        client.put(b"t", b"v").await.expect("put");
    });

    let (status, text) = http(agent.get(&node.url("/metrics")), None);
    assert_eq!(status, 200);
    for expected in [
        r#"harmonydb_http_requests_total{route="/kv/{key:.*}",method="PUT",status="200"} 5"#,
        r#"harmonydb_http_requests_total{route="/kv/{key:.*}",method="GET",status="404"} 1"#,
        r#"harmonydb_http_request_duration_seconds_bucket{route="/kv/{key:.*}",method="PUT",status="200",le="0.005"}"#,
        "harmonydb_wal_fsync_duration_seconds_bucket{le=\"0.001\"}",
        "harmonydb_wal_batch_size_records_bucket{le=\"1\"}",
        "harmonydb_wal_write_bytes_total ",
        r#"harmonydb_tcp_requests_total{op="put",status="ok"} 1"#,
        "# HELP harmonydb_wal_fsync_duration_seconds ",
        // A node of one leads its own group.
        "harmonydb_raft_has_leader 1",
        "harmonydb_raft_is_leader 1",
        "harmonydb_raft_leader_changes_total 1",
        "harmonydb_raft_term 1",
        "harmonydb_raft_proposals_committed_total 6",
        "harmonydb_raft_proposals_pending 0",
        "harmonydb_raft_commit_index ",
        "harmonydb_raft_applied_index ",
        "# HELP harmonydb_raft_proposals_committed_total ",
        "# HELP harmonydb_raft_is_leader ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(
            line.starts_with("harmonydb_"),
            "metric not named harmonydb_*: {line}"
        );
    }
}
