//! Traces and profiles, end to end against real nodes:
//!
//! - an OTLP/HTTP receiver in this process takes the spans of a three-node
//!   cluster; one write must be one trace with spans from the front door,
//!   the leader's `RaftReplica` and `WalWriter`, and every follower;
//! - `/debug/pprof/profile` answers a CPU profile that decodes as pprof, and
//!   a flame graph; the debug routes are off without `--enable-debug` and
//!   need the admin token when one is set;
//! - the new metrics (process, actors, Raft append/commit, bytes) are there.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use common::{http, http_agent, Cluster, Node};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

/// One span as the receiver got it.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    /// `service.instance.id` of the node that sent it (`node-N`).
    instance: String,
    name: String,
    trace_id: Vec<u8>,
}

/// An OTLP/HTTP receiver on 127.0.0.1, run on a thread of its own, keeping
/// every span it is sent.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    server: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (ready, started) = std::sync::mpsc::channel();
        let kept = spans.clone();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let kept = web::Data::new(kept);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(kept.clone())
                        .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                        .route("/v1/traces", web::post().to(receive))
                })
                .workers(1)
                .bind(("127.0.0.1", 0))
                .expect("bind the OTLP receiver");
                let port = server.addrs()[0].port();
                let server = server.run();
                ready
                    .send((port, server.handle()))
                    .expect("test thread waits");
                server.await.expect("OTLP receiver runs");
            });
        });
        let (port, server) = started
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver started");
        Receiver {
            port,
            spans,
            server,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        common::block_on(self.server.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn receive(kept: web::Data<Arc<Mutex<Vec<ReceivedSpan>>>>, body: web::Bytes) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        return HttpResponse::BadRequest().body("not an ExportTraceServiceRequest");
    };
    let mut spans = kept.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let instance = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == "service.instance.id")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    instance: instance.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                });
            }
        }
    }
    HttpResponse::Ok().finish()
}

#[test]
fn one_write_is_one_trace_across_the_front_door_leader_wal_and_followers() {
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let cluster = Cluster::start(
        3,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--trace-sample-ratio",
            "1.0",
            "--raft-tick-ms",
            "50",
        ],
    );
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();

    // Through node 1, whichever it is: a follower forwards over TCP, and
    // the trace context goes with the forwarded frame.
    let request = http_agent()
        .put(&cluster.node(1).url("/kv/traced"))
        .set("Content-Type", "application/json");
    let (status, body) = http(request, Some(r#"{"value": "one trace"}"#));
    assert_eq!(status, 200, "{body}");

    let front_door = "PUT /kv/{key:.*}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let (trace, by_node) = loop {
        let spans = receiver.spans();
        let trace = spans
            .iter()
            .find(|s| s.name == front_door && s.instance == "node-1")
            .map(|s| s.trace_id.clone());
        let mut by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if let Some(trace) = &trace {
            for span in spans.iter().filter(|s| &s.trace_id == trace) {
                by_node
                    .entry(span.instance.clone())
                    .or_default()
                    .insert(span.name.clone());
            }
        }
        let leader_done = by_node.get(&format!("node-{leader}")).is_some_and(|names| {
            names.contains("RaftReplica KvRequest")
                && names.contains("WalWriter Append")
                && names.contains("WalWriter sync")
                && names.contains("RaftReplica apply")
        });
        let followers_done = followers.iter().all(|id| {
            by_node.get(&format!("node-{id}")).is_some_and(|names| {
                names.contains("RaftReplica Step") && names.contains("WalWriter Append")
            })
        });
        if trace.is_some() && leader_done && followers_done {
            break (trace, by_node);
        }
        assert!(
            Instant::now() < deadline,
            "the write's trace is incomplete after 20 s (leader {leader}): {by_node:#?}\nall spans: {:#?}",
            spans.iter().map(|s| (&s.instance, &s.name)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let trace = trace.expect("trace found");
    assert_eq!(trace.len(), 16, "a W3C trace id has 16 bytes");
    // Every span of the write, on every node, shares the front door's trace id.
    assert_eq!(
        by_node.keys().cloned().collect::<BTreeSet<_>>(),
        ["node-1", "node-2", "node-3"]
            .into_iter()
            .map(String::from)
            .collect(),
        "spans of the write's trace by node: {by_node:#?}"
    );
    assert!(by_node["node-1"].contains(front_door));
    println!("spans of the write's trace by node (leader {leader}): {by_node:#?}");
}

#[test]
fn untraced_nodes_export_nothing_and_cost_no_spans() {
    // Without --otlp-endpoint nothing is sent; with an endpoint nobody
    // answers, requests still succeed (export is off the request path).
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = common::free_port();
    let node = Node::start(dir.path(), &["--otlp-endpoint", &format!("http://{dead}")]);
    let agent = http_agent();
    for i in 0..20 {
        let request = agent
            .put(&node.url(&format!("/kv/k{i}")))
            .set("Content-Type", "application/json");
        assert_eq!(http(request, Some(r#"{"value": "v"}"#)).0, 200);
    }
}

/// Keeps a node busy with writes until dropped, so a profile has samples.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let agent = http_agent();
            let started = Instant::now();
            let mut i = 0u64;
            // Bounded in time as well, whatever the test does.
            while !stopping.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(60)
            {
                let request = agent
                    .put(&format!("{url}/kv/load{}", i % 100))
                    .set("Content-Type", "application/json");
                let _ = http(request, Some(r#"{"value": "busy"}"#));
                i += 1;
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_two_second_cpu_profile_decodes_as_pprof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        dir.path(),
        &[
            "--enable-debug",
            "--admin-token",
            "letmein",
            "--fsync",
            "never",
        ],
    );
    let agent = http_agent();
    let profile_url = node.url("/debug/pprof/profile?seconds=2");

    // The token is required, and checked.
    let (status, body) = http(agent.get(&profile_url), None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, body) = http(
        agent.get(&profile_url).set("Authorization", "Bearer wrong"),
        None,
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(
        agent
            .get(&node.url("/debug/pprof/profile?seconds=0"))
            .set("Authorization", "Bearer letmein"),
        None,
    );
    assert_eq!(status, 400, "{body}");

    let base = format!("http://{}", node.http);
    let load = Load::start(base);
    let started = Instant::now();
    let response = agent
        .get(&profile_url)
        .set("Authorization", "Bearer letmein")
        .timeout(Duration::from_secs(30))
        .call()
        .expect("profile answered");
    let took = started.elapsed();
    assert_eq!(response.status(), 200);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).expect("profile body");
    let profile = {
        use pprof::protos::Message;
        pprof::protos::Profile::decode(bytes.as_slice()).expect("the answer decodes as pprof")
    };
    assert!(
        took >= Duration::from_secs(2),
        "a 2 s profile came back after {took:?}"
    );
    assert!(!profile.sample.is_empty(), "a busy node gives samples");
    assert!(
        profile.duration_nanos >= 1_900_000_000,
        "profile covers {} ns",
        profile.duration_nanos
    );
    let names: Vec<&String> = profile
        .function
        .iter()
        .filter_map(|f| profile.string_table.get(usize::try_from(f.name).ok()?))
        .collect();
    assert!(
        names.iter().any(|n| n.contains("harmonydb")),
        "the profile names HarmonyDB's functions ({} functions)",
        names.len()
    );

    let response = agent
        .get(&node.url("/debug/pprof/profile?seconds=1&format=flamegraph"))
        .set("Authorization", "Bearer letmein")
        .timeout(Duration::from_secs(30))
        .call()
        .expect("flame graph answered");
    assert_eq!(response.content_type(), "image/svg+xml");
    let svg = response.into_string().expect("svg");
    assert!(svg.contains("<svg"), "a flame graph is an SVG");
    drop(load);

    // A heap profile needs the jemalloc build; this one says so.
    #[cfg(not(feature = "heap-profiling"))]
    {
        let (status, body) = http(
            agent
                .get(&node.url("/debug/pprof/heap"))
                .set("Authorization", "Bearer letmein"),
            None,
        );
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("heap-profiling"), "{body}");
    }
}

#[test]
fn debug_routes_are_off_without_their_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), &[]);
    let (status, body) = http(
        http_agent().get(&node.url("/debug/pprof/profile?seconds=1")),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--enable-debug"), "{body}");
}

#[test]
fn admin_routes_need_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        dir.path(),
        &["--enable-fault-injection", "--admin-token", "s3cret"],
    );
    let (status, body) = http(http_agent().get(&node.url("/admin/fault")), None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(
        http_agent()
            .get(&node.url("/admin/fault"))
            .set("Authorization", "Bearer s3cret"),
        None,
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn process_actor_raft_and_byte_metrics_are_exported() {
    let cluster = Cluster::start(3, &["--raft-tick-ms", "50"]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let agent = http_agent();
    for i in 0..10 {
        let request = agent
            .put(&cluster.node(leader).url(&format!("/kv/m{i}")))
            .set("Content-Type", "application/json");
        assert_eq!(http(request, Some(r#"{"value": "x"}"#)).0, 200);
    }
    common::block_on(async {
        let client = harmonydb_protocol::Client::connect(cluster.tcp[&leader])
            .await
            .expect("connect");
        client.put(b"t", b"v").await.expect("put");
    });
    let (status, text) = http(agent.get(&cluster.node(leader).url("/metrics")), None);
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{text}"))
    };
    assert!(value("harmonydb_process_resident_memory_bytes") > 1e6);
    assert!(value("harmonydb_process_threads") >= 2.0);
    assert!(value("harmonydb_process_open_fds") >= 3.0);
    assert!(value("harmonydb_raft_elections_won_total") >= 1.0);
    assert!(value("harmonydb_raft_elections_started_total") >= 1.0);
    assert!(value("harmonydb_raft_commit_duration_seconds_count") >= 11.0);
    assert!(value("harmonydb_raft_append_duration_seconds_count") >= 1.0);
    assert!(value("harmonydb_http_received_bytes_total") >= 10.0 * 14.0);
    assert!(value("harmonydb_http_sent_bytes_total") > 0.0);
    assert!(value("harmonydb_tcp_received_bytes_total") > 0.0);
    assert!(value("harmonydb_tcp_sent_bytes_total") > 0.0);
    for expected in [
        r#"harmonydb_actor_handling_duration_seconds_bucket{actor="RaftReplica",message="KvRequest",le="0.001"}"#,
        r#"harmonydb_actor_handling_duration_seconds_bucket{actor="WalWriter",message="Append",le="0.001"}"#,
        r#"harmonydb_actor_queue_duration_seconds_count{actor="Transport",message="Outbox"}"#,
        r#"harmonydb_actor_mailbox_depth{actor="RaftReplica",message="KvRequest"}"#,
        "# TYPE harmonydb_process_cpu_seconds_total counter",
        "# HELP harmonydb_raft_commit_duration_seconds ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Every metric has a help text.
    let declared = |prefix: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect()
    };
    let without_help: Vec<String> = declared("# TYPE ")
        .difference(&declared("# HELP "))
        .cloned()
        .collect();
    assert!(without_help.is_empty(), "no help text: {without_help:?}");
    // Every request has been handled: nothing is left counted in a mailbox.
    for line in text
        .lines()
        .filter(|l| l.starts_with("harmonydb_actor_mailbox_depth{") && l.contains("KvRequest"))
    {
        let depth: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        assert_eq!(depth, 0.0, "{line}");
    }
}

/// Only in a build with jemalloc's sampling:
/// `cargo test --features heap-profiling --test observability heap`.
#[cfg(feature = "heap-profiling")]
#[test]
fn a_heap_profile_is_gzipped_pprof_of_memory_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), &["--enable-debug"]);
    let agent = http_agent();
    for i in 0..50 {
        let request = agent
            .put(&node.url(&format!("/kv/h{i}")))
            .set("Content-Type", "application/json");
        assert_eq!(http(request, Some(r#"{"value": "heap"}"#)).0, 200);
    }
    let response = agent
        .get(&node.url("/debug/pprof/heap"))
        .call()
        .expect("heap profile answered");
    assert_eq!(response.status(), 200);
    let mut gzipped = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut gzipped).expect("body");
    // gzip magic, then a pprof Profile whose sample type is in-use space.
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "the heap profile is gzipped");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(gzipped.as_slice()),
        &mut bytes,
    )
    .expect("gunzip");
    let profile = {
        use pprof::protos::Message;
        pprof::protos::Profile::decode(bytes.as_slice()).expect("the heap profile decodes as pprof")
    };
    assert!(
        profile.string_table.iter().any(|s| s == "inuse_space"),
        "sample types: {:?}",
        profile.sample_type
    );
}
