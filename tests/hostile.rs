//! Staying up against hostile clients: half-open TCP connections from one
//! address lock out neither clients nor peers; pipelining readers that
//! never read stay within the answer budget, and the memory comes back;
//! an HTTP body that never ends or is malformed is answered and closed.
//! Each prints its figures (docs/verification.md has a run's).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{block_on, http, http_agent, Cluster, Node};
use harmonydb_protocol::{Client, Consistency, Request};

/// The nodes' read timeout here: a half-open connection loses its slot
/// after it.
const READ_TIMEOUT: Duration = Duration::from_millis(2000);

/// How long the half-open attack runs.
const ATTACK_DURATION: Duration = Duration::from_secs(20);

/// Half-open connections the attacker keeps re-opening.
const ATTACK_CONNECTIONS: usize = 2000;

/// Raises this process's open-file limit to its hard limit (the attacker
/// holds thousands of sockets).
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct for this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Keeps `count` connections from 127.0.0.2 to `target` open, each having
/// sent two bytes of a frame's length prefix and nothing more; re-opens
/// each as soon as the node closes it, until `stop`. Returns how many it
/// opened.
fn attack(target: SocketAddr, count: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let opened = Arc::new(AtomicU64::new(0));
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..count {
                let (stop, opened) = (stop.clone(), opened.clone());
                tasks.spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                            break;
                        };
                        let source: SocketAddr = "127.0.0.2:0".parse().expect("addr");
                        if socket.bind(source).is_err() {
                            break;
                        }
                        if let Ok(mut stream) = socket.connect(target).await {
                            opened.fetch_add(1, Ordering::Relaxed);
                            let _ = stream.write_all(&[0, 0]).await;
                            let mut sink = [0u8; 256];
                            // Held until the node closes it (or the attack ends).
                            let _ = tokio::time::timeout(READ_TIMEOUT * 3, async {
                                while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                            })
                            .await;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
        opened.load(Ordering::Relaxed)
    })
}

/// One put through a new connection from 127.0.0.1: how long until answered.
fn serve_one(target: SocketAddr, i: u64) -> Duration {
    let started = Instant::now();
    block_on(async {
        let client = Client::connect(target)
            .await
            .expect("a client is let in")
            .with_timeout(Duration::from_secs(10));
        client
            .put(format!("during-{i}").as_bytes(), b"served")
            .await
            .expect("served");
    });
    started.elapsed()
}

/// A counter's value in `text` (summed over its labels).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn half_open_connections_from_one_address_lock_out_neither_clients_nor_peers() {
    raise_file_limit();
    let read_timeout = READ_TIMEOUT.as_millis().to_string();
    let mut cluster = Cluster::start(3, &["--read-timeout-ms", &read_timeout]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let term = cluster.status(leader)["term"].as_u64();
    let target = cluster.tcp[&leader];
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = attack(target, ATTACK_CONNECTIONS, stop.clone());
    let started = Instant::now();

    // Clients are served throughout; a follower restarted mid-attack
    // reconnects and catches up.
    let mut slowest = Duration::ZERO;
    let mut served = 0u64;
    let mut restarted = None;
    while started.elapsed() < ATTACK_DURATION {
        slowest = slowest.max(serve_one(target, served));
        served += 1;
        if restarted.is_none() && started.elapsed() > Duration::from_secs(5) {
            let follower = [1, 2, 3]
                .into_iter()
                .find(|id| *id != leader)
                .expect("follower");
            cluster.kill9(follower);
            // Writes it missed, so it must hear from the leader to catch up.
            for i in 0..50 {
                serve_one(target, 1000 + i);
            }
            let commit = cluster.status(leader)["commit_index"]
                .as_u64()
                .expect("commit");
            cluster.start_node(follower);
            let back = Instant::now();
            cluster.wait_applied(follower, commit, Duration::from_secs(15));
            restarted = Some((follower, back.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, metrics) = http(
        http_agent().get(&cluster.node(leader).url("/metrics")),
        None,
    );
    assert_eq!(status, 200);
    stop.store(true, Ordering::Relaxed);
    let opened = attacker.join().expect("attacker");
    let refused = counter(&metrics, "harmonydb_tcp_connections_refused_total");
    let timed_out = metrics
        .lines()
        .find(|l| l.starts_with("harmonydb_tcp_protocol_errors_total{code=\"request_timeout\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let (follower, caught_up) = restarted.expect("a follower was restarted");
    println!(
        "{ATTACK_CONNECTIONS} half-open connections from 127.0.0.2 for {ATTACK_DURATION:?}: {opened} opened, {refused} refused at accept, {timed_out} closed at the read timeout; {served} clients served, the slowest in {} ms; node {follower} restarted and caught up in {} ms",
        slowest.as_millis(),
        caught_up.as_millis()
    );
    let bound = READ_TIMEOUT + Duration::from_secs(1);
    assert!(
        slowest <= bound,
        "a client waited {slowest:?} (bound {bound:?})"
    );
    assert!(
        caught_up <= bound,
        "the restarted peer took {caught_up:?} (bound {bound:?})"
    );
    assert!(refused > 0.0, "the attack was never refused: {metrics}");
    // No election: the same leader in the same term.
    assert_eq!(
        cluster.wait_leader(&[1, 2, 3], Duration::from_secs(5)),
        leader
    );
    assert_eq!(
        cluster.status(leader)["term"].as_u64(),
        term,
        "an election happened"
    );
}

/// Resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Pipelined requests each greedy client sends without reading.
const GREEDY_REQUESTS: usize = 2000;

/// Greedy clients.
const GREEDY_CLIENTS: usize = 8;

const MIB: u64 = 1024 * 1024;

#[test]
fn pipelining_readers_that_never_read_stay_within_the_answer_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), &[]);
    let pid = node.pid();
    let big = vec![b'x'; 1024 * 1024];
    block_on(async {
        let client = Client::connect(node.tcp).await.expect("connect");
        client.put(b"big", &big).await.expect("put big");
        client.put(b"small", b"v").await.expect("put small");
        // Warm up: the same requests, read, so the baseline has its buffers.
        for _ in 0..64 {
            client.get(b"big").await.expect("get");
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss_bytes(pid);

    // Eight clients pipeline 2,000 stale gets of a 1 MiB value each and
    // never read an answer.
    let frame = |id: u64| {
        let body = harmonydb_protocol::message::encode(&harmonydb_protocol::RequestFrame {
            id,
            trace: None,
            body: Request::Get {
                key: b"big".to_vec(),
                consistency: Some(Consistency::Stale),
            },
            no_forward: false,
        });
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes
    };
    let requests: Vec<u8> = (1..=GREEDY_REQUESTS as u64).flat_map(frame).collect();
    let greedy: Vec<TcpStream> = (0..GREEDY_CLIENTS)
        .map(|_| {
            let mut stream = TcpStream::connect(node.tcp).expect("connect");
            stream.set_nonblocking(true).expect("nonblocking");
            // As much as the socket takes; the node stops reading when its
            // budget is used, so the rest would block: that is the point.
            let _ = stream.write(&requests);
            stream
        })
        .collect();

    // Meanwhile another client keeps reading a small key.
    let mut latencies = Vec::new();
    let mut peak = baseline;
    let attack_started = Instant::now();
    block_on(async {
        let client = Client::connect(node.tcp)
            .await
            .expect("connect")
            .with_timeout(Duration::from_secs(30));
        while attack_started.elapsed() < Duration::from_secs(10) {
            let started = Instant::now();
            client.get(b"small").await.expect("small get");
            latencies.push(started.elapsed());
            peak = peak.max(rss_bytes(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    drop(greedy);
    let closed = Instant::now();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    // Memory comes back once they are gone.
    let mut after = rss_bytes(pid);
    while after > baseline + 64 * MIB && closed.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        after = rss_bytes(pid);
    }
    println!(
        "{GREEDY_CLIENTS} clients pipelining {GREEDY_REQUESTS} gets of 1 MiB without reading: RSS baseline {} MiB, peak {} MiB (+{}), {} MiB (+{}) {} ms after they closed; another client's gets: {} served, p99 {} ms, max {} ms",
        baseline / MIB,
        peak / MIB,
        (peak - baseline) / MIB,
        after / MIB,
        after.saturating_sub(baseline) / MIB,
        closed.elapsed().as_millis(),
        latencies.len(),
        p99.as_millis(),
        latencies.last().map_or(0, |l| l.as_millis())
    );
    assert!(
        peak <= baseline + 320 * MIB,
        "peak RSS {peak} over baseline {baseline}"
    );
    assert!(
        after <= baseline + 64 * MIB,
        "RSS {after} after the clients closed, baseline {baseline}"
    );
    assert!(
        p99 <= Duration::from_millis(500),
        "another client's p99 was {p99:?}"
    );
}

/// Sends `parts` on a new HTTP connection, `pause` apart, and reads the
/// answer until the node closes: status, body, and how long it took.
fn http_parts(node: &Node, parts: &[&[u8]], pause: Duration) -> (u16, String, Duration) {
    common::raw_http_exchange(node.http, parts, pause)
}

#[test]
fn an_http_body_that_never_ends_gets_408_and_a_malformed_one_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let read_timeout = READ_TIMEOUT.as_millis().to_string();
    let node = Node::start(dir.path(), &["--read-timeout-ms", &read_timeout]);
    let head: &[u8] = b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    // One byte of chunk a second, for longer than the read timeout.
    let mut parts = vec![head];
    parts.extend(std::iter::repeat_n(&b"1\r\n \r\n"[..], 8));
    let (status, body, took) = http_parts(&node, &parts, Duration::from_millis(1000));
    println!(
        "a chunked body at a byte a second: {status} after {} ms: {body}",
        took.as_millis()
    );
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("\"request_timeout\""), "{body}");
    // The same for a body with a length that never arrives in full.
    let (status, body, _) = http_parts(
        &node,
        &[b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"value\""],
        READ_TIMEOUT + Duration::from_secs(2),
    );
    assert_eq!(status, 408, "{body}");
    // A chunk size that is not hexadecimal.
    let (status, body, took) = http_parts(
        &node,
        &[head, b"zz\r\n{\"value\": \"x\"}\r\n0\r\n\r\n"],
        Duration::ZERO,
    );
    println!(
        "a malformed chunk size: {status} after {} ms: {body}",
        took.as_millis()
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("chunked"), "{body}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The node serves as before.
    let request = http_agent()
        .put(&node.url("/kv/after"))
        .set("Content-Type", "application/json");
    assert_eq!(http(request, Some(r#"{"value": "fine"}"#)).0, 200);
}
