//! The storage engine in real nodes: a follower that missed 100,000 writes
//! comes back by snapshot; one that missed more than the leader keeps of
//! its log in memory comes back from entries read back from the WAL; a
//! node's resident memory stays within its pool, its log cache and a margin
//! under 4 KB values many times the pool; an overwrite load keeps the WAL and the page
//! file bounded; `kill -9` while checkpoints run keeps every acknowledged
//! write and a sound tree; a damaged page is named, and nothing wrong is
//! served.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{binary, block_on, http, http_agent, Cluster, Node};
use futures_util::StreamExt;
use harmonydb_protocol::{Client, Consistency};

/// Puts `count` writes through `addr` with many in flight; key `i % keys`
/// gets value `v{i}`. Returns the last acknowledged version and value of
/// each key.
fn write_load(addr: SocketAddr, count: u64, keys: u64) -> HashMap<String, (String, u64)> {
    block_on(async {
        let client = Client::connect(addr)
            .await
            .expect("connect")
            .with_timeout(Duration::from_secs(60));
        let acked = futures_util::stream::iter(0..count)
            .map(|i| {
                let client = client.clone();
                async move {
                    let key = format!("k{:06}", i % keys);
                    let value = format!("v{i}");
                    let version = put_retrying(&client, &key, &value).await;
                    (key, value, version)
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let mut last: HashMap<String, (String, u64)> = HashMap::new();
        for (key, value, version) in acked {
            let entry = last.entry(key).or_insert((String::new(), 0));
            if version > entry.1 {
                *entry = (value, version);
            }
        }
        last
    })
}

/// Puts a key, retrying while the cluster changes leader (an overwrite
/// of the same key and value again is harmless here).
async fn put_retrying(client: &Client, key: &str, value: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.put(key.as_bytes(), value.as_bytes()).await {
            Ok(version) => return version,
            Err(error) if Instant::now() < deadline => {
                eprintln!("put {key}: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("put {key}: {error}"),
        }
    }
}

fn dir_size_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn metric(node: &Node, name: &str) -> f64 {
    let (_, body) = http(http_agent().get(&node.url("/metrics")), None);
    body.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Puts `count` values through `addr`, 32 in flight: put `i` writes
/// `value_of(i)` under `key_of(i)`.
fn put_many(
    addr: SocketAddr,
    count: u64,
    key_of: impl Fn(u64) -> String,
    value_of: impl Fn(u64) -> String,
) {
    block_on(async {
        let client = Client::connect(addr)
            .await
            .expect("connect")
            .with_timeout(Duration::from_secs(60));
        futures_util::stream::iter(0..count)
            .map(|i| {
                let client = client.clone();
                let (key, value) = (key_of(i), value_of(i));
                async move { put_retrying(&client, &key, &value).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
    });
}

/// Waits up to `timeout` for `wrong` to return `None`; it returns what is
/// still wrong, which the failure names.
fn wait_until(timeout: Duration, mut wrong: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let Some(what) = wrong() else {
            return;
        };
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `follower` again and waits until it has applied everything the
/// leader had committed then.
fn rejoin(cluster: &mut Cluster, follower: u64, leader: u64) {
    cluster.start_node(follower);
    let commit = cluster.status(leader)["commit_index"]
        .as_u64()
        .expect("commit");
    cluster.wait_applied(follower, commit, Duration::from_secs(120));
}

#[test]
fn a_follower_behind_the_log_cache_catches_up_from_the_wal_without_a_snapshot() {
    // 1 MiB of applied entries in memory; 3,000 writes of 4 KB are 12 MiB.
    let mut cluster = Cluster::start(3, &["--raft-tick-ms", "50", "--raft-log-cache-mb", "1"]);
    let all = cluster.running();
    let leader = cluster.wait_leader(&all, Duration::from_secs(20));
    let follower = *all.iter().find(|id| **id != leader).expect("a follower");
    cluster.kill9(follower);
    let value = "x".repeat(4096);
    let value_of = |i: u64| format!("{i}:{value}");
    put_many(
        cluster.tcp[&leader],
        3000,
        |i| format!("big{i:04}"),
        value_of,
    );
    // Once everything is applied the leader holds about the cache in memory.
    wait_until(Duration::from_secs(30), || {
        let cached = metric(cluster.node(leader), "harmonydb_raft_log_cache_bytes");
        let about_the_cache = cached > 0.0 && cached <= 1.5 * 1024.0 * 1024.0;
        (!about_the_cache)
            .then(|| format!("the leader holds {cached} bytes of entries with a 1 MiB cache"))
    });

    rejoin(&mut cluster, follower, leader);
    let read_back: f64 = cluster
        .running()
        .into_iter()
        .filter(|id| *id != follower)
        .map(|id| metric(cluster.node(id), "harmonydb_wal_read_records_total"))
        .sum();
    println!("{read_back} entries read back from the WAL for node {follower}");
    assert!(
        read_back >= 2000.0,
        "only {read_back} entries were read back from the WAL"
    );
    assert_eq!(
        metric(
            cluster.node(follower),
            "harmonydb_raft_snapshots_received_total"
        ),
        0.0,
        "the follower was sent a snapshot"
    );
    block_on(async {
        let client = Client::connect(cluster.tcp[&follower])
            .await
            .expect("connect");
        for i in [0u64, 1500, 2999] {
            let key = format!("big{i:04}");
            let item = client
                .get_with(key.as_bytes(), Consistency::Stale)
                .await
                .expect("stale read")
                .unwrap_or_else(|| panic!("{key} missing on the follower"));
            assert_eq!(item.value, value_of(i).into_bytes());
        }
    });
}

/// A process's resident memory in KiB: (VmRSS, RssAnon), from /proc.
fn resident_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

#[test]
fn resident_memory_stays_within_pool_log_cache_and_a_margin_under_large_values() {
    const POOL_MB: u64 = 16;
    const CACHE_MB: u64 = 8;
    const MARGIN_MB: u64 = 64;
    if !Path::new("/proc/self/status").exists() {
        println!("skipping: no /proc to read resident memory from");
        return;
    }
    let (pool, cache) = (POOL_MB.to_string(), CACHE_MB.to_string());
    let cluster = Cluster::start(
        3,
        &[
            "--raft-tick-ms",
            "50",
            "--buffer-pool-mb",
            &pool,
            "--raft-log-cache-mb",
            &cache,
        ],
    );
    let all = cluster.running();
    let leader = cluster.wait_leader(&all, Duration::from_secs(20));
    let pids: Vec<(u64, u32)> = all
        .iter()
        .map(|id| (*id, cluster.node(*id).pid()))
        .collect();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peaks: HashMap<u64, (u64, u64)> = HashMap::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                for (id, pid) in &pids {
                    if let Some((rss, anon)) = resident_kib(*pid) {
                        let peak = peaks.entry(*id).or_default();
                        *peak = (peak.0.max(rss), peak.1.max(anon));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peaks
        })
    };
    // 8,000 keys of 4 KB (32 MiB, twice the pool), written three times over:
    // 96 MiB through the Raft log, twelve times the log cache.
    let value = "y".repeat(4096);
    put_many(
        cluster.tcp[&leader],
        24_000,
        |i| format!("m{:04}", i % 8000),
        |i| format!("{i}:{value}"),
    );
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peaks = sampler.join().expect("sampler");
    let bound_kib = (POOL_MB + CACHE_MB + MARGIN_MB) * 1024;
    for (id, (rss, anon)) in &peaks {
        println!(
            "node {id}: peak resident {} MiB ({} MiB anonymous), bound {} MiB",
            rss / 1024,
            anon / 1024,
            bound_kib / 1024
        );
        assert!(
            *rss <= bound_kib,
            "node {id} peaked at {} MiB resident, over pool {POOL_MB} + log cache {CACHE_MB} + {MARGIN_MB} MiB",
            rss / 1024
        );
    }
    assert_eq!(peaks.len(), 3, "not every node was sampled");
}

#[test]
fn a_follower_that_missed_100000_writes_comes_back_by_snapshot() {
    let mut cluster = Cluster::start(
        3,
        &[
            "--raft-tick-ms",
            "50",
            "--checkpoint-entries",
            "10000",
            "--log-retain-entries",
            "1000",
            "--checkpoint-interval-ms",
            "1000",
        ],
    );
    let all = cluster.running();
    let leader = cluster.wait_leader(&all, Duration::from_secs(20));
    let follower = *all.iter().find(|id| **id != leader).expect("a follower");
    cluster.kill9(follower);

    let started = Instant::now();
    let acked = write_load(cluster.tcp[&leader], 100_000, 100_000);
    println!(
        "100,000 writes with node {follower} down in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The leader's log no longer reaches back to where the follower stopped.
    wait_until(Duration::from_secs(30), || {
        let snapshot_index = cluster.status(leader)["snapshot_index"]
            .as_u64()
            .unwrap_or(0);
        (snapshot_index <= 50_000)
            .then(|| format!("the leader never compacted its log: {snapshot_index}"))
    });

    rejoin(&mut cluster, follower, leader);
    assert!(
        cluster
            .node(follower)
            .wait_log("snapshot installed", Duration::from_secs(10)),
        "the follower caught up without a snapshot:\n{}",
        cluster.node(follower).log().join("\n")
    );
    // Whoever leads when the follower returns sends the snapshot: under
    // load an election may have moved leadership since the writes.
    let sent: f64 = cluster
        .running()
        .into_iter()
        .filter(|id| *id != follower)
        .map(|id| metric(cluster.node(id), "harmonydb_raft_snapshots_sent_total"))
        .sum();
    assert!(sent >= 1.0, "no node counted a snapshot sent");
    assert!(
        metric(
            cluster.node(follower),
            "harmonydb_raft_snapshots_received_total"
        ) >= 1.0
    );
    // The follower serves what it got, at the versions the leader gave.
    block_on(async {
        let client = Client::connect(cluster.tcp[&follower])
            .await
            .expect("connect");
        for key in ["k000000", "k050000", "k099999"] {
            let item = client
                .get_with(key.as_bytes(), Consistency::Stale)
                .await
                .expect("stale read")
                .unwrap_or_else(|| panic!("{key} missing on the follower"));
            let (value, version) = &acked[key];
            assert_eq!(
                (item.value.as_slice(), item.version),
                (value.as_bytes(), *version)
            );
        }
    });

    // Its storage lost while it is down: it starts with an empty state
    // behind the start of its log, and fetches the state again.
    let data_dir = cluster.node(follower).data_dir.clone();
    cluster.kill9(follower);
    std::fs::remove_dir_all(data_dir.join("storage")).expect("remove the storage");
    rejoin(&mut cluster, follower, leader);
    assert!(cluster.node(follower).wait_log(
        "the state is behind the start of the log",
        Duration::from_secs(10)
    ));
    block_on(async {
        let client = Client::connect(cluster.tcp[&follower])
            .await
            .expect("connect");
        let item = client
            .get_with(b"k077777", Consistency::Stale)
            .await
            .expect("stale read")
            .expect("k077777 on the follower");
        assert_eq!(item.value, acked["k077777"].0.as_bytes());
    });
}

#[test]
fn overwrites_keep_the_wal_and_the_page_file_bounded() {
    // A million overwrites by hand (HARMONYDB_LONG_TESTS=1, about minutes);
    // 200,000 in the normal run, with the same bound.
    let writes: u64 = if std::env::var("HARMONYDB_LONG_TESTS").is_ok() {
        1_000_000
    } else {
        200_000
    };
    let cluster = Cluster::start(
        3,
        &[
            "--raft-tick-ms",
            "50",
            "--wal-segment-bytes",
            "4194304",
            "--checkpoint-entries",
            "20000",
            "--log-retain-entries",
            "5000",
            "--checkpoint-interval-ms",
            "500",
        ],
    );
    let all = cluster.running();
    let leader = cluster.wait_leader(&all, Duration::from_secs(20));
    let started = Instant::now();
    let acked = write_load(cluster.tcp[&leader], writes, 10_000);
    println!(
        "{writes} overwrites of 10,000 keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(acked.len(), 10_000);
    // Let the last checkpoint and compaction land everywhere.
    std::thread::sleep(Duration::from_secs(3));
    let limit = 64 * 1024 * 1024;
    for id in &all {
        let data_dir = &cluster.node(*id).data_dir;
        let wal = dir_size_bytes(&data_dir.join("wal"));
        let pages = dir_size_bytes(&data_dir.join("storage"));
        println!(
            "node {id}: WAL {:.1} MiB, storage {:.1} MiB",
            wal as f64 / 1048576.0,
            pages as f64 / 1048576.0
        );
        assert!(
            wal < limit,
            "node {id}'s WAL is {wal} bytes after {writes} overwrites"
        );
        assert!(pages < limit, "node {id}'s storage is {pages} bytes");
    }
}

/// Runs `harmonydb storage check` on a stopped node's data directory.
fn storage_check(data_dir: &Path) -> std::process::Output {
    Command::new(binary())
        .args(["storage", "check", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run harmonydb storage check")
}

#[test]
fn kill9_while_checkpointing_keeps_every_acknowledged_write_and_a_sound_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Checkpoints all the time, so kills land in the middle of them.
    let args = [
        "--checkpoint-interval-ms",
        "20",
        "--checkpoint-entries",
        "300",
        "--log-retain-entries",
        "100",
        "--buffer-pool-mb",
        "8",
    ];
    let mut acked: HashMap<String, (String, u64)> = HashMap::new();
    for round in 0..5u64 {
        let mut node = Node::start(dir.path(), &args);
        let addr = node.tcp;
        let writer = std::thread::spawn(move || {
            block_on(async {
                let client = Client::connect(addr).await.expect("connect");
                let mut acked = Vec::new();
                // Values large enough to need overflow pages now and then.
                for i in 0..100_000u64 {
                    let key = format!("r{round}/k{:05}", i % 2_000);
                    let value = format!("{i}:{}", "x".repeat((i % 7) as usize * 1500));
                    match client.put(key.as_bytes(), value.as_bytes()).await {
                        Ok(version) => acked.push((key, value, version)),
                        Err(_) => break,
                    }
                }
                acked
            })
        });
        std::thread::sleep(Duration::from_millis(700 + round * 150));
        node.kill9();
        for (key, value, version) in writer.join().expect("writer") {
            let entry = acked.entry(key).or_insert((String::new(), 0));
            if version > entry.1 {
                *entry = (value, version);
            }
        }
        let check = storage_check(dir.path());
        assert!(
            check.status.success(),
            "round {round}: storage check failed: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let report = String::from_utf8_lossy(&check.stdout).into_owned();
        assert!(report.contains("sound"), "{report}");
    }
    let node = Node::start(dir.path(), &args);
    block_on(async {
        let client = Client::connect(node.tcp).await.expect("connect");
        for (key, (value, version)) in &acked {
            let item = client
                .get(key.as_bytes())
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("acknowledged {key} is missing"));
            assert_eq!(
                (item.value.as_slice(), item.version),
                (value.as_bytes(), *version),
                "{key}"
            );
        }
    });
    println!("{} acknowledged keys checked after 5 kills", acked.len());
}

#[test]
fn a_damaged_page_is_named_and_nothing_wrong_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--checkpoint-interval-ms", "100"];
    let mut node = Node::start(dir.path(), &args);
    write_load(node.tcp, 3_000, 3_000);
    // A later checkpoint of one key: the double-write file then holds only
    // its path, and the other leaves have no copy to be repaired from.
    std::thread::sleep(Duration::from_millis(500));
    write_load(node.tcp, 1, 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.terminate().code(), Some(0));

    let storage = dir.path().join("storage");
    let copied = double_write_page_ids(&storage.join("doublewrite"));
    let mut pages = std::fs::read(storage.join("pages")).expect("read pages");
    let page_size = 8192;
    let victim = (2..pages.len() / page_size)
        .find(|id| pages[id * page_size + 20] == 2 && !copied.contains(&(*id as u64)))
        .expect("a leaf with no copy in the double-write file");
    pages[victim * page_size + 4000] ^= 0x5A;
    std::fs::write(storage.join("pages"), &pages).expect("write pages");

    let check = storage_check(dir.path());
    assert!(!check.status.success(), "the damage went unnoticed");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains(&format!("page {victim}")), "{stderr}");

    // The node starts (the damage is found when the page is read), refuses
    // the read that needs the page, naming it, and serves nothing after.
    let node = Node::start(dir.path(), &args);
    let (status, body) = http(http_agent().get(&node.url("/kv?limit=10000")), None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage_unavailable"), "{body}");
    assert!(body.contains(&format!("page {victim}")), "{body}");
    let (status, _) = http(http_agent().get(&node.url("/kv/k000000")), None);
    assert_eq!(status, 503, "a node with a damaged page serves nothing");
}

/// Page ids the double-write file holds (8 KiB pages after a 24-byte header).
fn double_write_page_ids(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .get(24..)
        .unwrap_or_default()
        .chunks_exact(8192)
        .map(|page| u64::from_le_bytes(page[..8].try_into().expect("8 bytes")))
        .collect()
}
