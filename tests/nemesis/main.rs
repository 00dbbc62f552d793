//! Nemesis runs against real clusters: five `harmonydb` processes, clients
//! doing get, put and compare-and-set on a few keys, and a nemesis that
//! partitions, isolates the leader, bridges, loses one way, kills and
//! pauses nodes, and replaces members (join a new node, remove an old one)
//! on a schedule. Each run is judged by the linearizability
//! checker and the split-brain checks in `verify`, and prints one row of
//! the results table in `docs/verification.md`.
//!
//! Link faults are injected two ways: through the nodes' own fault filter
//! (`/admin/fault`, on loopback) and as real partitions between network
//! namespaces (iptables). Where namespaces can't be made (not root, no
//! `ip`/`iptables`), those runs print why and pass without running.
//!
//! Each run lasts `HARMONYDB_NEMESIS_SECONDS` (30 by default);
//! `HARMONYDB_NEMESIS_SEED` replays a run's fault choices;
//! `HARMONYDB_NEMESIS_RESULTS=<file>` appends each row to a file;
//! `HARMONYDB_NEMESIS_LOGS=<text>` prints the nodes' log lines holding it.
//! The long
//! run by hand is `scripts/nemesis-long` (10 minutes per scenario).

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod cluster;
mod nemesis;
mod netns;
mod verify;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clients::{key_name, nanos_since, Record, Workload};
use cluster::{Backend, NemesisCluster};
use harmonydb_checker::{OpKind, Operation, Outcome, Output};
use harmonydb_protocol::{Client, ClientError, ErrorCode, Request, Response};
use nemesis::{Scenario, Schedule};

/// Nodes in every nemesis cluster: five, so a minority can be two.
const NODES: u64 = 5;

/// Fast elections, and a server-side timeout below the clients' own, so
/// most unknown outcomes are the server saying so.
const NODE_ARGS: &[&str] = &["--raft-tick-ms", "50", "--request-timeout-ms", "1500"];

const WORKLOAD: Workload = Workload {
    clients: 10,
    keys: 4,
    key_epoch: Duration::from_secs(10),
    think_max: Duration::from_millis(20),
    op_timeout: Duration::from_secs(3),
};

/// Faults last longer than an election (0.5 to 1 s at a 50 ms tick).
const SCHEDULE: Schedule = Schedule {
    quiet: Duration::from_secs(1),
    hold: Duration::from_secs(3),
};

/// The end of each run is fault-free: the cluster must serve writes again.
const RECOVERY: Duration = Duration::from_secs(6);

/// Runs one at a time: two clusters of five on two cores would make each
/// other's timeouts.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long each run lasts: `HARMONYDB_NEMESIS_SECONDS`, else `default`.
fn run_seconds(default: u64) -> u64 {
    std::env::var("HARMONYDB_NEMESIS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run_seed() -> u64 {
    std::env::var("HARMONYDB_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// What a run saw, for its row in the results table.
struct RunReport {
    scenario: Scenario,
    backend: Backend,
    seconds: u64,
    events: Vec<nemesis::FaultEvent>,
    verification: verify::Verification,
}

impl RunReport {
    /// The row of `docs/verification.md`'s table.
    fn row(&self) -> String {
        let counts = self.verification.counts;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for event in &self.events {
            *kinds.entry(event.kind.name()).or_default() += 1;
        }
        let faults = if self.scenario == Scenario::Mixed {
            let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            format!("{} ({})", self.events.len(), parts.join(", "))
        } else {
            self.events.len().to_string()
        };
        let verdict = if self.verification.anomalies.is_empty() {
            format!(
                "linearizable ({} keys, checked in {:.2} s), no split brain",
                self.verification.check.keys.len(),
                self.verification.check_time.as_secs_f64()
            )
        } else {
            format!("**{} anomalies**", self.verification.anomalies.len())
        };
        format!(
            "| {} | {} | {} s | {} | {} | {} | {} | {} |",
            self.scenario.name(),
            self.backend.name(),
            self.seconds,
            counts.ok,
            counts.failed,
            counts.unknown,
            faults,
            verdict
        )
    }
}

/// Runs `scenario` with link faults through `backend`; None if the machine
/// can't host that backend (the reason is printed).
fn run_scenario(scenario: Scenario, backend: Backend, seconds: u64) -> Option<RunReport> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if backend == Backend::Netns {
        if let Some(reason) = netns::unavailable_reason() {
            println!(
                "SKIPPED {} over network namespaces: {reason}",
                scenario.name()
            );
            return None;
        }
    }
    let seed = run_seed();
    println!(
        "nemesis: {} ({}), {seconds} s, seed {seed} (HARMONYDB_NEMESIS_SEED={seed} replays the fault choices)",
        scenario.name(),
        backend.name()
    );
    let mut cluster = NemesisCluster::start(NODES, backend, NODE_ARGS)
        .unwrap_or_else(|error| panic!("starting the cluster: {error}"));
    cluster
        .wait_agreed_leader(Duration::from_secs(30))
        .expect("the cluster elects a leader");

    let duration = Duration::from_secs(seconds);
    let start = Instant::now();
    let until = start + duration;
    let faults_until = until - RECOVERY.min(duration / 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let targets: clients::Targets = std::sync::Arc::new(std::sync::Mutex::new(
        cluster
            .ids()
            .iter()
            .map(|id| (*id, cluster.tcp[id]))
            .collect(),
    ));
    let clients: Vec<_> = (0..WORKLOAD.clients)
        .map(|client| {
            runtime.spawn(clients::run_client(
                client,
                targets.clone(),
                WORKLOAD,
                start,
                until,
                seed ^ (client + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ))
        })
        .collect();
    let mut rng = common::Rng::new(seed);
    let events = nemesis::run(
        &mut cluster,
        &targets,
        scenario,
        SCHEDULE,
        start,
        faults_until,
        &mut rng,
    );
    let recovered_from = nanos_since(start);
    let mut records: Vec<Record> = runtime.block_on(async {
        let mut all = Vec::new();
        for client in clients {
            all.extend(client.await.expect("client task"));
        }
        all
    });
    let leader = cluster.wait_agreed_leader(Duration::from_secs(30));
    // A last read of every key, after healing, pins down what happened to
    // writes whose outcome was unknown.
    if let Some(leader) = leader {
        let reader = WORKLOAD.clients;
        let final_reads = runtime.block_on(final_reads(
            reader,
            leader,
            cluster.tcp[&leader],
            start,
            seconds,
        ));
        records.extend(final_reads);
    }
    let logs = cluster.logs();
    // `HARMONYDB_NEMESIS_LOGS=<text>`: every node's log lines holding it,
    // for looking into a run (leader changes, power cuts, ...).
    if let Ok(needle) = std::env::var("HARMONYDB_NEMESIS_LOGS") {
        for (node, lines) in &logs {
            for line in lines.iter().filter(|l| l.contains(&needle)) {
                println!("  node {node}: {line}");
            }
        }
    }
    let mut verification = verify::verify(&records, &events, &logs, recovered_from);
    if leader.is_none() {
        verification
            .anomalies
            .push("no leader agreed on within 30 s of healing".to_string());
    }
    let report = RunReport {
        scenario,
        backend,
        seconds,
        events,
        verification,
    };
    print_report(&report, &records, seed);
    Some(report)
}

async fn final_reads(
    reader: u64,
    node: u64,
    addr: std::net::SocketAddr,
    start: Instant,
    seconds: u64,
) -> Vec<Record> {
    let mut records = Vec::new();
    let Ok(client) = Client::connect(addr).await else {
        return records;
    };
    let client = client.with_timeout(WORKLOAD.op_timeout);
    for key in clients::keys_used(WORKLOAD, Duration::from_secs(seconds)) {
        let call = nanos_since(start);
        let answer = client
            .request_with(
                Request::Get {
                    key: key_name(key),
                    consistency: None,
                },
                false,
            )
            .await;
        let at = nanos_since(start);
        let output = match answer {
            Ok(Response::Value { value, version, .. }) => Output::Found {
                value: std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX),
                version,
            },
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Output::NotFound,
            // A failed read constrains nothing; the run's other checks see the cluster's health.
            _ => continue,
        };
        records.push(Record {
            op: Operation {
                client: reader,
                key,
                call,
                kind: OpKind::Get,
                outcome: Outcome::Ok { at, output },
            },
            node,
            error: None,
            unexpected: false,
        });
    }
    records
}

fn print_report(report: &RunReport, records: &[Record], seed: u64) {
    let verification = &report.verification;
    for event in &report.events {
        println!(
            "  fault {:>8.3}s..{:>8.3}s  {}",
            event.start as f64 / 1e9,
            event.end as f64 / 1e9,
            event.description
        );
    }
    println!(
        "  operations: {} ok, {} failed, {} unknown; errors: {:?}",
        verification.counts.ok,
        verification.counts.failed,
        verification.counts.unknown,
        verification.errors
    );
    println!(
        "  checker: {} in {:.2?}",
        verification.check, verification.check_time
    );
    println!(
        "  leaders acknowledged writes in {} terms, one leader each unless reported below",
        verification.leader_terms
    );
    let row = report.row();
    println!("{row}");
    if let Ok(path) = std::env::var("HARMONYDB_NEMESIS_RESULTS") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = writeln!(file, "{row}");
        }
    }
    if !verification.anomalies.is_empty() {
        let name = format!("{}-{}", report.scenario.name(), report.backend.name())
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("nemesis-{name}-{seed}.history"));
        let mut text = String::new();
        for record in records {
            text.push_str(&format!(
                "node {}  {}  {}\n",
                record.node,
                record.op,
                record.error.as_deref().unwrap_or("")
            ));
        }
        match std::fs::write(&path, text) {
            Ok(()) => println!("  history written to {}", path.display()),
            Err(error) => println!("  could not write the history: {error}"),
        }
        for anomaly in &verification.anomalies {
            println!("ANOMALY: {anomaly}");
        }
    }
}

#[cfg(not(any(
    feature = "mutation-follower-local-reads",
    feature = "mutation-ack-before-sync",
    feature = "mutation-leader-counts-unsynced"
)))]
mod scenarios {
    use super::*;

    /// Runs a scenario and fails the test on any anomaly.
    fn assert_clean(scenario: Scenario, backend: Backend) {
        let Some(report) = run_scenario(scenario, backend, run_seconds(30)) else {
            return;
        };
        assert!(
            report.verification.anomalies.is_empty(),
            "{} over {}: {}",
            scenario.name(),
            backend.name(),
            report.verification.anomalies.join("\n")
        );
    }

    /// Process faults don't depend on how links are cut; they run in
    /// namespaces where the machine allows, else on loopback.
    fn process_backend() -> Backend {
        if netns::unavailable_reason().is_none() {
            Backend::Netns
        } else {
            Backend::Filter
        }
    }

    #[test]
    fn partition_majority_minority_by_fault_filter() {
        assert_clean(Scenario::PartitionMajorityMinority, Backend::Filter);
    }

    #[test]
    fn partition_majority_minority_by_netns() {
        assert_clean(Scenario::PartitionMajorityMinority, Backend::Netns);
    }

    #[test]
    fn isolate_the_leader_by_fault_filter() {
        assert_clean(Scenario::IsolateLeader, Backend::Filter);
    }

    #[test]
    fn isolate_the_leader_by_netns() {
        assert_clean(Scenario::IsolateLeader, Backend::Netns);
    }

    #[test]
    fn bridge_by_fault_filter() {
        assert_clean(Scenario::Bridge, Backend::Filter);
    }

    #[test]
    fn bridge_by_netns() {
        assert_clean(Scenario::Bridge, Backend::Netns);
    }

    #[test]
    fn one_way_loss_by_fault_filter() {
        assert_clean(Scenario::OneWayLoss, Backend::Filter);
    }

    #[test]
    fn one_way_loss_by_netns() {
        assert_clean(Scenario::OneWayLoss, Backend::Netns);
    }

    #[test]
    fn kill_and_restart() {
        assert_clean(Scenario::Kill, process_backend());
    }

    #[test]
    fn pause_and_resume() {
        assert_clean(Scenario::Pause, process_backend());
    }

    #[test]
    fn power_cut_with_writes_in_flight() {
        assert_clean(Scenario::PowerCut, process_backend());
    }

    #[test]
    fn everything_mixed_by_fault_filter() {
        assert_clean(Scenario::Mixed, Backend::Filter);
    }

    #[test]
    fn everything_mixed_by_netns() {
        assert_clean(Scenario::Mixed, Backend::Netns);
    }

    /// Nodes replaced (a new node joins, an old one, often the leader, is
    /// removed) among partitions and crashes. On loopback only: joining
    /// nodes would need namespaces made during the run.
    #[test]
    fn membership_changes_mixed_with_faults_by_fault_filter() {
        assert_clean(Scenario::MembershipMixed, Backend::Filter);
    }
}

/// With followers answering linearizable reads from their own state, the
/// harness must find a violation (`cargo test --features
/// mutation-follower-local-reads --test nemesis`).
#[cfg(feature = "mutation-follower-local-reads")]
#[test]
fn the_harness_catches_followers_serving_linearizable_reads_locally() {
    let seconds = run_seconds(10);
    let report = run_scenario(
        Scenario::PartitionMajorityMinority,
        Backend::Filter,
        seconds,
    )
    .expect("the fault filter backend always runs");
    let check = &report.verification.check;
    assert_eq!(
        check.verdict,
        harmonydb_checker::Verdict::NotLinearizable,
        "stale follower reads went unnoticed: {check}"
    );
    let first = check
        .violations
        .iter()
        .map(|v| v.blocking.operation.call)
        .min()
        .unwrap_or_default();
    println!(
        "caught in a {seconds} s run: {} keys of {} not linearizable; the earliest operation that could not be linearized was invoked {:.3} s into the run",
        check.violations.len(),
        check.keys.len(),
        first as f64 / 1e9
    );
}

/// With members acknowledging before their write is durable, a power cut of
/// a follower must lose acknowledged writes and the harness must find it
/// (`cargo test --features mutation-ack-before-sync --test nemesis`).
#[cfg(feature = "mutation-ack-before-sync")]
#[test]
fn the_harness_catches_acknowledgements_before_the_sync() {
    catches_lost_writes("acknowledgements before the sync");
}

/// With a leader counting (and applying) its entries before its write is
/// durable, a power cut of the leader must lose acknowledged writes and the
/// harness must find it (`cargo test --features
/// mutation-leader-counts-unsynced --test nemesis`).
#[cfg(feature = "mutation-leader-counts-unsynced")]
#[test]
fn the_harness_catches_a_leader_counting_itself_before_its_sync() {
    catches_lost_writes("a leader counting its unsynced entries");
}

#[cfg(any(
    feature = "mutation-ack-before-sync",
    feature = "mutation-leader-counts-unsynced"
))]
fn catches_lost_writes(mutation: &str) {
    let seconds = run_seconds(30);
    let report = run_scenario(Scenario::PowerCut, Backend::Filter, seconds)
        .expect("the fault filter backend always runs");
    // Lost acknowledged writes show as reads the checker can't linearize
    // when a client reads the key before writing it again, and always as a
    // member refusing a new leader's log that conflicts with its committed
    // entries once the partition heals.
    let caught: Vec<&String> = report
        .verification
        .anomalies
        .iter()
        .filter(|a| a.starts_with("not linearizable") || a.starts_with("committed entry lost"))
        .collect();
    assert!(
        !caught.is_empty(),
        "{mutation} went unnoticed in a {seconds} s run: {}",
        report.verification.check
    );
    println!(
        "{mutation} caught in a {seconds} s run: {} anomalies showing lost writes (the checker: {})",
        caught.len(),
        report.verification.check
    );
}
