//! Acknowledged writes survive `kill -9`: 10,000 pipelined puts over TCP and
//! 1,000 over HTTP, a crash, a restart, and every acknowledged write is there
//! with its value and version. Also: a SIGTERM shutdown is clean and keeps
//! writes even with fsync off.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{http, http_agent, Node};
use futures_util::StreamExt;
use harmonydb_protocol::Client;

/// The acknowledged write with the highest version wins per key.
fn record(
    acked: &mut HashMap<Vec<u8>, (Vec<u8>, u64)>,
    key: Vec<u8>,
    value: Vec<u8>,
    version: u64,
) {
    let entry = acked.entry(key).or_insert((Vec::new(), 0));
    if version > entry.1 {
        *entry = (value, version);
    }
}

async fn tcp_puts(node: &Node, count: usize, acked: &mut HashMap<Vec<u8>, (Vec<u8>, u64)>) {
    let client = Client::connect(node.tcp).await.expect("connect");
    // Two writes per key, up to 256 in flight on one connection, so answers
    // come back out of order and versions decide which write is the last.
    let writes = futures_util::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let key = format!("tcp/{:05}", i % (count / 2)).into_bytes();
                let value = format!("value-{i}").into_bytes();
                let version = client.put(&key, &value).await.expect("put acknowledged");
                (key, value, version)
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(writes.len(), count);
    for (key, value, version) in writes {
        record(acked, key, value, version);
    }
}

fn http_puts(node: &Node, count: usize) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let url = node.url("");
            std::thread::spawn(move || {
                let agent = http_agent();
                let mut acked = Vec::new();
                for i in (thread..count).step_by(4) {
                    let key = format!("http/{i:04}");
                    let value = format!("http value {i} ünïcode");
                    let body = serde_json::json!({ "value": value }).to_string();
                    let request = agent
                        .put(&format!("{url}/kv/{key}"))
                        .set("Content-Type", "application/json");
                    let (status, answer) = http(request, Some(&body));
                    assert_eq!(status, 200, "{answer}");
                    let answer: serde_json::Value = serde_json::from_str(&answer).expect("json");
                    let version = answer["version"].as_u64().expect("version");
                    acked.push((key.into_bytes(), value.into_bytes(), version));
                }
                acked
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("http thread"))
        .collect()
}

async fn verify(node: &Node, acked: &HashMap<Vec<u8>, (Vec<u8>, u64)>) {
    let client = Client::connect(node.tcp).await.expect("connect");
    let checks = futures_util::stream::iter(acked.iter())
        .map(|(key, expected)| {
            let client = client.clone();
            async move {
                let item = client.get(key).await.expect("get");
                (key, expected, item)
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    for (key, (value, version), item) in checks {
        let item = item
            .unwrap_or_else(|| panic!("acknowledged key {} lost", String::from_utf8_lossy(key)));
        assert_eq!(
            &item.value,
            value,
            "value of {}",
            String::from_utf8_lossy(key)
        );
        assert_eq!(
            item.version,
            *version,
            "version of {}",
            String::from_utf8_lossy(key)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments, so the run crosses many segment roll-overs too.
    let mut node = Node::start(
        dir.path(),
        &["--fsync", "always", "--wal-segment-bytes", "1048576"],
    );
    let mut acked = HashMap::new();
    tcp_puts(&node, 10_000, &mut acked).await;
    let http_node = &node;
    let http_acked = tokio::task::block_in_place(|| http_puts(http_node, 1_000));
    for (key, value, version) in http_acked {
        record(&mut acked, key, value, version);
    }
    assert_eq!(acked.len(), 5_000 + 1_000);
    node.kill9();

    let node = Node::start(dir.path(), &["--wal-segment-bytes", "1048576"]);
    verify(&node, &acked).await;
    // The HTTP side reads the same state.
    let (status, body) = http(http_agent().get(&node.url("/kv/http/0007")), None);
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["value"], "http value 7 ünïcode");
    assert_eq!(
        body["version"].as_u64(),
        Some(acked[&b"http/0007".to_vec()].1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_crash_keeps_writes_even_without_fsync() {
    // With fsync never/interval, an acknowledged write is in the OS page cache
    // (written through the mapping), which a process crash does not lose.
    for policy in ["never", "interval:50"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = Node::start(dir.path(), &["--fsync", policy]);
        let mut acked = HashMap::new();
        tcp_puts(&node, 2_000, &mut acked).await;
        node.kill9();
        let node = Node::start(dir.path(), &[]);
        verify(&node, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start(dir.path(), &["--fsync", "never"]);
    let mut acked = HashMap::new();
    tcp_puts(&node, 1_000, &mut acked).await;
    let status = node.terminate();
    assert!(status.success(), "exit status {status}");
    let log = node.log().join("\n");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(log.contains("WAL synced"), "{log}");

    let mut node = Node::start(dir.path(), &[]);
    verify(&node, &acked).await;
    // SIGINT (Ctrl-C) is handled the same way.
    node.signal(libc::SIGINT);
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_writes_keeps_every_acknowledged_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start(dir.path(), &[]);
    let client = Client::connect(node.tcp).await.expect("connect");
    // Writers keep going while the node is told to stop; some writes are
    // acknowledged, the rest fail (shutting_down or a closed connection).
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..100_000u64 {
                    let key = format!("w{w}/{i}").into_bytes();
                    match client.put(&key, b"v").await {
                        Ok(version) => acked.push((key, version)),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::block_in_place(|| node.terminate());
    assert!(status.success(), "exit status {status}");
    let mut acked = HashMap::new();
    for writer in writers {
        for (key, version) in writer.await.expect("writer") {
            acked.insert(key, (b"v".to_vec(), version));
        }
    }
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the signal"
    );
    let log = node.log().join("\n");
    assert!(log.contains("stopped cleanly"), "{log}");
    let node = Node::start(dir.path(), &[]);
    verify(&node, &acked).await;
}

#[test]
fn a_corrupt_wal_record_before_intact_ones_is_refused_until_the_operator_allows_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start(dir.path(), &[]);
    common::block_on(async {
        let client = Client::connect(node.tcp).await.expect("connect");
        for i in 0..10 {
            client
                .put(format!("k{i}").as_bytes(), b"value")
                .await
                .expect("put");
        }
    });
    node.kill9();
    // Flip a byte inside the third record's payload (records are ~30 bytes).
    let segment = dir.path().join("wal").join("00000000000000000001.seg");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    bytes[32 + 2 * 30 + 25] ^= 0xff;
    std::fs::write(&segment, &bytes).expect("write segment");

    let refused = common::serve_expecting_exit(dir.path());
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("intact records follow"), "{message}");

    let node = Node::start(dir.path(), &["--wal-truncate-corrupt-tail"]);
    let log = node.log().join("\n");
    assert!(log.contains("cut the WAL"), "{log}");
    let (status, body) = http(http_agent().get(&node.url("/health")), None);
    assert_eq!(status, 200, "{body}");
    let applied: serde_json::Value = serde_json::from_str(&body).expect("json");
    let applied = applied["applied_index"].as_u64().expect("applied index");
    assert!(applied < 10, "the cut kept {applied} records");
}

#[test]
fn a_failed_sync_acknowledges_nothing_in_its_range_and_the_node_restarts_to_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start(dir.path(), &["--enable-fault-injection"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Many writes in flight on one connection: a sync covers a batch.
    let writer = {
        let (tcp, stop) = (node.tcp, stop.clone());
        std::thread::spawn(move || {
            common::block_on(async move {
                let client = Client::connect(tcp).await.expect("connect");
                let mut acked = Vec::new();
                let mut next = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && next < 200_000 {
                    let batch: Vec<_> = (next..next + 64)
                        .map(|i| {
                            let client = client.clone();
                            async move {
                                let key = format!("sync/{i:06}").into_bytes();
                                let value = format!("value {i}").into_bytes();
                                (key.clone(), value.clone(), client.put(&key, &value).await)
                            }
                        })
                        .collect();
                    next += 64;
                    for (key, value, outcome) in futures_util::future::join_all(batch).await {
                        match outcome {
                            Ok(version) => acked.push((key, value, version)),
                            Err(_) => return acked,
                        }
                    }
                }
                acked
            })
        })
    };
    // Some writes go through, then one sync fails.
    std::thread::sleep(Duration::from_millis(500));
    let request = http_agent()
        .post(&node.url("/admin/fault"))
        .set("Content-Type", "application/json");
    let (status, body) = http(request, Some(r#"{"wal_sync_failures": 1}"#));
    assert_eq!(status, 200, "{body}");
    let exit = node.wait_exit(Duration::from_secs(30));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.join().expect("writer");
    assert_eq!(exit.code(), Some(1), "the node stops after a failed sync");
    let log = node.log();
    let failure = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("WAL failed"))
        })
        .unwrap_or_else(|| panic!("no WAL failure logged:\n{}", log.join("\n")));
    let from = failure["unsynced_from"].as_u64().expect("unsynced_from");
    let to = failure["unsynced_to"].as_u64().expect("unsynced_to");
    // The sync that failed may have held only a hard-state or compaction
    // record, no entry: then its range of entries is empty (from = to + 1).
    assert!(from <= to + 1, "an unsynced range: {failure}");
    let in_range: Vec<u64> = acked
        .iter()
        .map(|(_, _, version)| *version)
        .filter(|version| (from..=to).contains(version))
        .collect();
    println!(
        "{} writes acknowledged before the failed sync; its unsynced range was {from}..={to}; acknowledged in it: {in_range:?}",
        acked.len()
    );
    assert!(
        in_range.is_empty(),
        "acknowledged in the failed range: {in_range:?}"
    );
    assert!(!acked.is_empty(), "nothing was written before the fault");
    // Restarted, it recovers from the disk: every acknowledged write is there.
    let node = Node::start(dir.path(), &[]);
    common::block_on(async {
        let client = Client::connect(node.tcp).await.expect("connect");
        for (key, value, version) in &acked {
            let item = client
                .get(key)
                .await
                .expect("get")
                .expect("acknowledged write present");
            assert_eq!((&item.value, item.version), (value, *version));
        }
    });
}
