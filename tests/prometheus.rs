//! The monitoring half of the compose demo, checked against real nodes:
//! every metric a Grafana dashboard names is one a running node exports
//! (with the labels the dashboard groups and filters by, and the type its
//! functions need), the compose Prometheus config passes `promtool check
//! config`, and a real Prometheus scraping three local nodes sees them up,
//! reads their Raft term, and evaluates every dashboard expression.
//! The Prometheus checks are skipped, with the reason printed, where
//! Debian's `prometheus` package (promtool, prometheus) is not installed.
//! Reading dashboards, expressions and `/metrics` text is in
//! `prometheus/dashboards.rs`.

mod common;
#[path = "prometheus/dashboards.rs"]
mod dashboards;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{block_on, free_port, http, http_agent, Cluster};
use dashboards::{
    as_sent, dashboards, expressions, identifiers, label_names, metric_names, panels, promql,
    without_strings, Exported,
};
use serde_json::{json, Value};

/// The compose demo's Prometheus config.
const PROMETHEUS_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/compose/prometheus/prometheus.yml"
);

/// The compose file whose nodes that config scrapes.
const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/docker-compose.yml");

/// Grafana's provisioned datasource, which every dashboard must use.
const DATASOURCE_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/compose/grafana/provisioning/datasources/prometheus.yml"
);

/// The provisioned datasource's uid.
const DATASOURCE_UID: &str = "prometheus";

/// Fewest panels with queries a dashboard may have.
const PANELS_MIN: usize = 8;

/// Labels every scraped series has (Prometheus adds them).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Flags for the nodes: checkpoints and log compaction often, so the
/// storage and snapshot metrics have values within the test, and the fault
/// route, so the test can make the leader drop messages.
const NODE_ARGS: &[&str] = &[
    "--checkpoint-interval-ms",
    "200",
    "--log-retain-entries",
    "10",
    "--enable-fault-injection",
];

/// How long nodes may take to export every metric a dashboard names.
const METRICS_TIMEOUT: Duration = Duration::from_secs(15);

/// How long Prometheus may take to start and scrape the nodes.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP writes the workload makes, spread over the nodes.
const WORKLOAD_PUTS: usize = 60;

/// Requests of every kind through every node, so the request, storage and
/// transport metrics all have samples: HTTP writes, reads, a miss, a scan
/// and a delete; TCP writes and reads (a follower forwards them); a frame
/// over the size limit (a protocol error); and a moment of dropped Raft
/// messages from the leader to a follower.
fn workload(cluster: &Cluster, leader: u64) {
    let agent = http_agent();
    let ids = cluster.running();
    for id in &ids {
        for i in 0..WORKLOAD_PUTS / ids.len() {
            let request = agent
                .put(&cluster.node(*id).url(&format!("/kv/dash-{id}-{i}")))
                .set("Content-Type", "application/json");
            let body = json!({ "value": format!("value {i} through node {id}") }).to_string();
            let (status, answer) = http(request, Some(&body));
            assert_eq!(status, 200, "PUT through node {id}: {answer}");
        }
    }
    for id in &ids {
        let key = format!("/kv/dash-{}-3", ids[(*id as usize) % ids.len()]);
        assert_eq!(http(agent.get(&cluster.node(*id).url(&key)), None).0, 200);
        assert_eq!(
            http(agent.get(&cluster.node(*id).url("/kv/absent")), None).0,
            404
        );
        assert_eq!(
            http(agent.get(&cluster.node(*id).url("/kv?prefix=dash-")), None).0,
            200
        );
    }
    let delete = agent.delete(&cluster.node(leader).url("/kv/dash-1-0"));
    assert_eq!(http(delete, None).0, 200);
    for id in &ids {
        block_on(async {
            let client = harmonydb_protocol::Client::connect(cluster.node(*id).tcp)
                .await
                .expect("connect over TCP");
            let key = format!("tcp-{id}");
            client.put(key.as_bytes(), b"v").await.expect("TCP put");
            let item = client.get(key.as_bytes()).await.expect("TCP get");
            assert_eq!(item.map(|i| i.value), Some(b"v".to_vec()));
        });
    }
    // A length prefix over any frame limit: the node answers and closes.
    let mut stream = std::net::TcpStream::connect(cluster.node(leader).tcp).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream.write_all(&[0xff; 4]).expect("write a bad length");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let follower = *ids.iter().find(|id| **id != leader).expect("a follower");
    cluster.fault(leader, &[follower], true);
    std::thread::sleep(Duration::from_millis(300));
    cluster.fault(leader, &[follower], false);
}

/// Every node's `/metrics`, merged.
fn scrape(cluster: &Cluster) -> Exported {
    let mut exported = Exported::default();
    for id in cluster.running() {
        let (status, text) = http(http_agent().get(&cluster.node(id).url("/metrics")), None);
        assert_eq!(status, 200, "GET /metrics of node {id}");
        exported.add(&text);
    }
    exported
}

#[test]
fn dashboards_have_panels_with_queries_on_the_provisioned_datasource() {
    let datasources = std::fs::read_to_string(DATASOURCE_FILE).expect("read datasource file");
    assert!(
        datasources.contains(&format!("uid: {DATASOURCE_UID}")),
        "{DATASOURCE_FILE} provisions uid {DATASOURCE_UID}"
    );
    let mut uids = BTreeSet::new();
    for dashboard in dashboards() {
        let name = &dashboard.name;
        let json = &dashboard.json;
        assert!(
            json["schemaVersion"].as_u64() >= Some(39),
            "{name}: schemaVersion"
        );
        assert!(
            json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: title"
        );
        let uid = json["uid"].as_str().expect("uid").to_string();
        assert!(uids.insert(uid.clone()), "{name}: uid {uid} used twice");
        let all = panels(json);
        let mut ids = BTreeSet::new();
        let mut with_queries = 0;
        for panel in &all {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(
                !title.is_empty(),
                "{name}: a panel without a title: {panel}"
            );
            let id = panel["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{name}: panel id {id} used twice");
            assert!(
                panel["gridPos"]["w"].as_u64().is_some(),
                "{name}/{title}: gridPos"
            );
            let Some(targets) = panel["targets"].as_array() else {
                assert_eq!(
                    panel["type"], "row",
                    "{name}/{title}: a panel without targets"
                );
                continue;
            };
            assert!(!targets.is_empty(), "{name}/{title}: no targets");
            assert_eq!(
                panel["datasource"]["uid"], DATASOURCE_UID,
                "{name}/{title}: datasource"
            );
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.trim().is_empty(),
                    "{name}/{title}: a target without expr"
                );
                assert_eq!(
                    target["datasource"]["uid"], DATASOURCE_UID,
                    "{name}/{title}: target datasource"
                );
            }
            with_queries += 1;
        }
        assert!(
            with_queries >= PANELS_MIN,
            "{name}: {with_queries} panels with queries, fewer than {PANELS_MIN}"
        );
        assert!(
            !promql(json).is_empty() && expressions(json).len() > promql(json).len(),
            "{name}: expressions and a templating query"
        );
    }
}

/// Metric names, each with the dashboards that use it.
type MetricUses = BTreeMap<String, Vec<String>>;

/// Every metric name the dashboards use, with the dashboards using it,
/// and every (dashboard, expression).
fn dashboard_uses() -> (MetricUses, Vec<(String, String)>) {
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut uses: Vec<(String, String)> = Vec::new();
    for dashboard in dashboards() {
        for expr in expressions(&dashboard.json) {
            for name in metric_names(&expr) {
                names.entry(name).or_default().push(dashboard.name.clone());
            }
            uses.push((dashboard.name.clone(), expr));
        }
    }
    assert!(
        names.len() >= 40,
        "the dashboards name only {} metrics",
        names.len()
    );
    (names, uses)
}

/// What the dashboards need that `exported` lacks: metric names no node
/// exports, and expressions whose functions, quantiles or labels don't fit
/// what is exported.
fn dashboard_gaps(
    names: &MetricUses,
    uses: &[(String, String)],
    exported: &Exported,
) -> (Vec<String>, Vec<String>) {
    let missing: Vec<String> = names
        .iter()
        .filter(|(name, _)| !exported.has(name))
        .map(|(name, boards)| format!("{name} (in {})", boards.join(", ")))
        .collect();
    let mut problems = Vec::new();
    for (board, expr) in uses {
        let used = metric_names(expr);
        let present: Vec<&String> = used.iter().filter(|n| exported.has(n)).collect();
        // Functions over counters need counters; quantiles need buckets.
        let bare = without_strings(expr);
        let idents = identifiers(&bare);
        for window in idents.windows(2) {
            let (function, metric) = (&window[0].0, &window[1].0);
            if ["rate", "irate", "increase"].contains(&function.as_str()) && exported.has(metric) {
                let kind = exported.types.get(metric).map(String::as_str);
                if kind != Some("counter") && exported.histogram_of(metric).is_none() {
                    problems.push(format!(
                        "{board}: {function}() of {metric}, a {kind:?}: {expr}"
                    ));
                }
            }
        }
        if expr.contains("histogram_quantile") {
            for name in &present {
                if !(name.ends_with("_bucket") && exported.histogram_of(name).is_some()) {
                    problems.push(format!("{board}: histogram_quantile over {name}, not a histogram's buckets: {expr}"));
                }
            }
        }
        // Labels grouped by or matched on must be on the metrics' samples.
        if present.is_empty() {
            continue;
        }
        let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for name in &present {
            available.extend(exported.labels.get(*name).into_iter().flatten().cloned());
        }
        for label in label_names(expr) {
            if !available.contains(&label) {
                problems.push(format!(
                    "{board}: label {label} is on none of {present:?}: {expr}"
                ));
            }
        }
    }
    (missing, problems)
}

#[test]
fn every_dashboard_metric_is_exported_by_a_running_node() {
    let (names, uses) = dashboard_uses();
    let cluster = Cluster::start(3, NODE_ARGS);
    let leader = cluster.wait_leader(&cluster.running(), Duration::from_secs(20));
    workload(&cluster, leader);
    // Gauges such as the buffer pool's are set on a timer: scrape until
    // every name is there or the time is up.
    let deadline = Instant::now() + METRICS_TIMEOUT;
    let exported = loop {
        let exported = scrape(&cluster);
        if names.keys().all(|n| exported.has(n)) || Instant::now() > deadline {
            break exported;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (missing, problems) = dashboard_gaps(&names, &uses, &exported);
    println!(
        "{} metric names in the dashboards; {} exported",
        names.len(),
        names.len() - missing.len()
    );
    assert!(
        missing.is_empty() && problems.is_empty(),
        "dashboard metrics no node exports:\n  {}\nother problems:\n  {}",
        missing.join("\n  "),
        problems.join("\n  ")
    );
}

/// Sample lines of `text` labelled with node `id` as a peer or leader.
fn series_about(text: &str, id: u64) -> Vec<&str> {
    text.lines()
        .filter(|line| {
            !line.starts_with('#')
                && (line.contains(&format!("peer=\"{id}\""))
                    || line.contains(&format!("leader=\"{id}\"")))
        })
        .collect()
}

#[test]
fn every_dashboard_series_is_there_on_a_fresh_cluster_and_peers_come_and_go() {
    let (names, uses) = dashboard_uses();
    // Nothing but the start: no load, no checkpoint, no forwarding, no
    // protocol error has happened; panels must show 0, not "No data".
    let mut cluster = Cluster::start(3, &["--raft-tick-ms", "50"]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    let exported = scrape(&cluster);
    let (missing, problems) = dashboard_gaps(&names, &uses, &exported);
    assert!(
        missing.is_empty() && problems.is_empty(),
        "missing on a fresh cluster:\n  {}\nother problems:\n  {}",
        missing.join("\n  "),
        problems.join("\n  ")
    );
    let text = |cluster: &Cluster, id: u64| {
        let (status, text) = http(http_agent().get(&cluster.node(id).url("/metrics")), None);
        assert_eq!(status, 200);
        text
    };
    for id in [1, 2, 3] {
        let metrics = text(&cluster, id);
        for peer in [1, 2, 3] {
            let about = series_about(&metrics, peer);
            if peer == id {
                assert!(
                    about.is_empty(),
                    "node {id} lists itself as a peer: {about:?}"
                );
            } else {
                // Sent, dropped, received, forwarded, and round trips.
                assert!(about.len() >= 5, "node {id} about peer {peer}: {about:?}");
            }
        }
    }
    // A member that joins gets its series; once removed, they go.
    cluster.join_node(4, leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    while series_about(&text(&cluster, leader), 4).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no series for node 4 after it joined"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once it votes (its promotion is a change of its own), remove it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status(leader);
        let voters = status["voters"].as_array().cloned().unwrap_or_default();
        let joint = status["voters_outgoing"]
            .as_array()
            .is_some_and(|outgoing| !outgoing.is_empty());
        if voters.contains(&json!(4)) && !joint {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 never became a voter: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let request = http_agent().delete(&cluster.node(leader).url("/cluster/members/4"));
    let (status, body) = http(request, None);
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let about: Vec<String> = [1, 2, 3]
            .into_iter()
            .flat_map(|id| {
                series_about(&text(&cluster, id), 4)
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        if about.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series about removed node 4 linger: {about:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.kill9(4);
}

/// A program on PATH, if it is there.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[test]
fn promtool_accepts_the_compose_prometheus_config() {
    let Some(promtool) = find_program("promtool") else {
        println!("SKIPPED promtool check: promtool is not installed (Debian package prometheus)");
        return;
    };
    let output = Command::new(&promtool)
        .args(["check", "config", PROMETHEUS_CONFIG])
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check config {PROMETHEUS_CONFIG}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // It scrapes the compose file's three nodes on their HTTP port.
    let config = std::fs::read_to_string(PROMETHEUS_CONFIG).expect("read config");
    let compose = std::fs::read_to_string(COMPOSE_FILE).expect("read compose file");
    for service in ["harmonydb1", "harmonydb2", "harmonydb3"] {
        assert!(
            config.contains(&format!("{service}:8080")),
            "{service} is scraped"
        );
        assert!(
            compose.contains(&format!("\n  {service}:\n")),
            "{service} is a compose service"
        );
    }
}

/// A Prometheus server run by the test; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` on a free loopback port, scraping `targets` every second.
    fn start(binary: &Path, targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: harmonydb\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write config");
        let address = free_port();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://{address}"),
            log,
            _dir: dir,
        }
    }

    /// The result of an instant query, or Prometheus's error.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let request = http_agent()
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", expr);
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => return Err(error.to_string()),
        };
        let body: Value = response.into_json().map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until `expr` returns `count` series whose values all pass `ok`.
    fn wait_for(&mut self, expr: &str, count: usize, ok: impl Fn(f64) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let result = self.query(expr);
            if let Ok(series) = &result {
                let values_ok = series.iter().all(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .is_some_and(&ok)
                });
                if series.len() == count && values_ok {
                    return series.clone();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{expr} did not return {count} good series within {PROMETHEUS_TIMEOUT:?}: {result:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_three_nodes_and_evaluates_every_dashboard_expression() {
    let Some(binary) = find_program("prometheus") else {
        println!("SKIPPED Prometheus scrape test: prometheus is not installed (Debian package prometheus)");
        return;
    };
    let cluster = Cluster::start(3, NODE_ARGS);
    let leader = cluster.wait_leader(&cluster.running(), Duration::from_secs(20));
    let targets: Vec<String> = cluster
        .running()
        .iter()
        .map(|id| cluster.node(*id).http.to_string())
        .collect();
    let mut prometheus = Prometheus::start(&binary, &targets);

    let up = prometheus.wait_for("up == 1", 3, |v| v == 1.0);
    let instances: BTreeSet<&str> = up
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str())
        .collect();
    let expected: BTreeSet<&str> = targets.iter().map(String::as_str).collect();
    assert_eq!(instances, expected, "the scraped instances are the nodes");
    prometheus.wait_for("harmonydb_raft_term", 3, |term| term >= 1.0);
    prometheus.wait_for("harmonydb_raft_is_leader == 1", 1, |v| v == 1.0);

    workload(&cluster, leader);
    // Every write scraped, then a few scrapes more, so rates over the
    // window have two samples of each new series.
    prometheus.wait_for(
        r#"sum(harmonydb_http_requests_total{route="/kv/{key:.*}",method="PUT",status="200"})"#,
        1,
        |puts| puts >= WORKLOAD_PUTS as f64,
    );
    std::thread::sleep(Duration::from_secs(3));

    let mut failures = Vec::new();
    let mut empty = Vec::new();
    let mut evaluated = 0;
    for dashboard in dashboards() {
        for expr in promql(&dashboard.json) {
            let sent = as_sent(&expr);
            match prometheus.query(&sent) {
                Ok(series) if series.is_empty() => {
                    empty.push(format!("{}: {sent}", dashboard.name))
                }
                Ok(_) => {}
                Err(error) => failures.push(format!("{}: {sent}\n    {error}", dashboard.name)),
            }
            evaluated += 1;
        }
    }
    println!(
        "{evaluated} dashboard expressions evaluated; {} without data now:\n  {}",
        empty.len(),
        empty.join("\n  ")
    );
    assert!(
        failures.is_empty(),
        "expressions Prometheus refused:\n  {}",
        failures.join("\n  ")
    );
    // The panels an operator looks at first show the cluster as it is.
    let leaders = prometheus
        .query(&as_sent(
            r#"sum(harmonydb_raft_is_leader{instance=~"$instance"})"#,
        ))
        .expect("leader count");
    assert_eq!(leaders[0]["value"][1], "1", "one leader: {leaders:?}");
    let lag = prometheus
        .query(&as_sent(r#"scalar(max(harmonydb_raft_commit_index)) - harmonydb_raft_applied_index{instance=~"$instance"}"#))
        .expect("commit lag");
    assert_eq!(lag.len(), 3, "commit lag per node: {lag:?}");
}
