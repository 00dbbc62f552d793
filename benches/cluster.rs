//! Cluster benchmark: a 3-node cluster of release `harmonydb` processes on
//! loopback with fsync on, measured over the TCP protocol. Prints writes/s
//! and latency quantiles at 1, 16 and 64 concurrent clients (each client one
//! connection to the leader, one request at a time), then linearizable
//! reads/s at 64 clients.
//!
//! Run: `cargo bench --bench cluster`
//! `HARMONYDB_BENCH_SECONDS` sets the time per run (default 5),
//! `HARMONYDB_BENCH_CLIENTS=1,16,64` the client counts,
//! `HARMONYDB_BENCH_DIR` where the nodes keep their data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harmonydb_protocol::{Client, Consistency};
use hdrhistogram::Histogram;

const VALUE_SIZE_BYTES: usize = 100;
const CLIENT_COUNTS: [usize; 3] = [1, 16, 64];
const READ_CLIENTS: usize = 64;
const KEYS: u64 = 10_000;

/// The node processes; killed when dropped.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn seconds_per_run() -> Duration {
    let seconds = std::env::var("HARMONYDB_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(seconds)
}

fn start_cluster(dir: &std::path::Path) -> (Nodes, Vec<SocketAddr>) {
    let tcp: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let peers = tcp
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, addr) in tcp.iter().enumerate() {
        let data = dir.join(format!("node{}", i + 1));
        let log = std::fs::File::create(dir.join(format!("node{}.log", i + 1))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_harmonydb"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--node-id", &(i + 1).to_string(), "--peers", &peers])
            .args([
                "--tcp-addr",
                &addr.to_string(),
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--fsync", "always", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start harmonydb");
        children.push(child);
    }
    (Nodes(children), tcp)
}

async fn find_leader(tcp: &[SocketAddr]) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for addr in tcp {
            if let Ok(client) = Client::connect(*addr).await {
                if let Ok(status) = client.cluster_status().await {
                    if status.role == "leader" {
                        return *addr;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct RunResult {
    ops_per_second: f64,
    latency: Histogram<u64>,
    errors: u64,
}

/// `clients` connections each doing one operation at a time for `duration`.
async fn run(leader: SocketAddr, clients: usize, duration: Duration, reads: bool) -> RunResult {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let stop = stop.clone();
        let client = Client::connect(leader).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
            let mut errors = 0u64;
            let value = vec![b'v'; VALUE_SIZE_BYTES];
            let mut i = c as u64 * 7919;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key{:05}", i % KEYS);
                i += 1;
                let started = Instant::now();
                let ok = if reads {
                    client
                        .get_with(key.as_bytes(), Consistency::Linearizable)
                        .await
                        .is_ok()
                } else {
                    client.put(key.as_bytes(), &value).await.is_ok()
                };
                if ok {
                    let micros = started.elapsed().as_micros().max(1);
                    let _ = latency.record(u64::try_from(micros).unwrap_or(u64::MAX));
                } else {
                    errors += 1;
                }
            }
            (latency, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await.expect("client task");
        latency.add(&h).expect("same bounds");
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    RunResult {
        ops_per_second: latency.len() as f64 / elapsed,
        latency,
        errors,
    }
}

fn print_row(label: &str, clients: usize, result: &RunResult) {
    let ms = |q: f64| result.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label:>7} {clients:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
        result.ops_per_second,
        ms(0.5),
        ms(0.99),
        result.latency.max() as f64 / 1000.0,
        result.errors
    );
}

fn main() {
    // Test runners that enumerate targets (cargo nextest) call with --list.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("HARMONYDB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let duration = seconds_per_run();
    let client_counts: Vec<usize> = match std::env::var("HARMONYDB_BENCH_CLIENTS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => CLIENT_COUNTS.to_vec(),
    };
    let (_nodes, tcp) = start_cluster(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let leader = find_leader(&tcp).await;
        println!(
            "3-node cluster on loopback, fsync=always, {VALUE_SIZE_BYTES}-byte values, \
             {KEYS} keys, {duration:?} per run, clients connected to the leader ({leader})"
        );
        println!("data: {}", dir.path().display());
        println!(
            "{:>7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>7}",
            "op", "clients", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        // Warm-up: connections, allocations, the first segment's pages.
        let _ = run(leader, 8, Duration::from_secs(1), false).await;
        for clients in client_counts {
            let result = run(leader, clients, duration, false).await;
            print_row("put", clients, &result);
        }
        let result = run(leader, READ_CLIENTS, duration, true).await;
        print_row("get", READ_CLIENTS, &result);
    });
}
