//! The storage engine beside redb and `std::collections::BTreeMap`, in one
//! run: inserts, point reads and range scans per second on a million keys,
//! with a buffer pool smaller than the data and one larger than it.
//!
//! Durability is the same on both disk engines: one sync per batch of 1,000
//! inserts (HarmonyDB: a checkpoint; redb: a commit with its default,
//! immediate durability, its cache set to the pool's size). The BTreeMap
//! has no disk at all: the upper bound.
//!
//! `cargo bench -p harmonydb-actors --bench storage`; `HARMONYDB_BENCH_KEYS`
//! changes the key count (default 1,000,000).

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::time::{Duration, Instant};

use harmonydb_actors::storage::btree::{BTree, Direction};
use harmonydb_actors::storage::buffer::{BufferPool, Policy, PoolConfig};
use harmonydb_actors::storage::checkpoint::Storage;
use harmonydb_actors::storage::meta::ShardMeta;
use redb::{ReadableDatabase, TableDefinition};

const VALUE_SIZE: usize = 100;
const BATCH: usize = 1_000;
const SCAN_LENGTH: usize = 100;
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

fn key(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..3].copy_from_slice(b"key");
    key[3..].copy_from_slice(format!("{i:013}").as_bytes());
    key
}

fn value(i: u64) -> Vec<u8> {
    let mut value = vec![(i % 251) as u8; VALUE_SIZE];
    value[..8].copy_from_slice(&i.to_le_bytes());
    value
}

/// A fixed permutation of 0..n (multiplicative hashing), so every engine
/// sees the same random order.
fn shuffled(n: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

/// Operations per second.
#[derive(Clone, Copy, Debug, Default)]
struct Rates {
    inserts: f64,
    reads: f64,
    scans: f64,
}

fn per_second(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn harmonydb(keys: u64, pool_mb: usize, dir: &std::path::Path) -> Rates {
    let config = PoolConfig::with_megabytes(pool_mb, Policy::Lru2);
    let (storage, _) = Storage::open(dir, config).expect("open");
    let tree: BTree<BufferPool> = BTree::create(storage.pool().clone()).expect("tree");
    let checkpoint = |applied: u64| {
        let pending = storage
            .begin_checkpoint(vec![ShardMeta {
                shard: 0,
                root: tree.root(),
                applied_index: applied,
                keys: applied,
            }])
            .expect("begin");
        storage.write_checkpoint(pending, None).expect("checkpoint");
    };
    let order = shuffled(keys);
    let started = Instant::now();
    for (batch, chunk) in order.chunks(BATCH).enumerate() {
        for i in chunk {
            tree.insert(&key(*i), &value(*i)).expect("insert");
        }
        checkpoint(((batch + 1) * BATCH) as u64);
    }
    let inserts = per_second(order.len(), started.elapsed());
    let started = Instant::now();
    for i in &order {
        let found = tree.get(&key(*i)).expect("get").expect("present");
        assert_eq!(found.len(), VALUE_SIZE);
    }
    let reads = per_second(order.len(), started.elapsed());
    let scans = (keys / 100).max(1) as usize;
    let started = Instant::now();
    for i in order.iter().take(scans) {
        let mut seen = 0;
        tree.scan(
            Bound::Included(&key(*i)[..]),
            Bound::Unbounded,
            Direction::Forward,
            |_, _| {
                seen += 1;
                if seen == SCAN_LENGTH {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .expect("scan");
    }
    let scans = per_second(scans, started.elapsed());
    let stats = storage.pool().stats();
    println!(
        "    harmonydb pool {pool_mb} MiB: {} frames, {} hits, {} misses, {} evictions",
        stats.frames, stats.hits, stats.misses, stats.evictions
    );
    Rates {
        inserts,
        reads,
        scans,
    }
}

fn redb(keys: u64, cache_mb: usize, dir: &std::path::Path) -> Rates {
    let db = redb::Database::builder()
        .set_cache_size(cache_mb * 1024 * 1024)
        .create(dir.join("redb"))
        .expect("create");
    let order = shuffled(keys);
    let started = Instant::now();
    for chunk in order.chunks(BATCH) {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(TABLE).expect("table");
            for i in chunk {
                table.insert(&key(*i)[..], &value(*i)[..]).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let inserts = per_second(order.len(), started.elapsed());
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(TABLE).expect("table");
    let started = Instant::now();
    for i in &order {
        let found = table.get(&key(*i)[..]).expect("get").expect("present");
        assert_eq!(found.value().len(), VALUE_SIZE);
    }
    let reads = per_second(order.len(), started.elapsed());
    let scans = (keys / 100).max(1) as usize;
    let started = Instant::now();
    for i in order.iter().take(scans) {
        let start = key(*i);
        let seen = table
            .range(&start[..]..)
            .expect("range")
            .take(SCAN_LENGTH)
            .count();
        assert!(seen > 0);
    }
    let scans = per_second(scans, started.elapsed());
    Rates {
        inserts,
        reads,
        scans,
    }
}

fn btreemap(keys: u64) -> Rates {
    let mut map = BTreeMap::new();
    let order = shuffled(keys);
    let started = Instant::now();
    for i in &order {
        map.insert(key(*i).to_vec(), value(*i));
    }
    let inserts = per_second(order.len(), started.elapsed());
    let started = Instant::now();
    for i in &order {
        assert_eq!(map.get(&key(*i)[..]).expect("present").len(), VALUE_SIZE);
    }
    let reads = per_second(order.len(), started.elapsed());
    let scans = (keys / 100).max(1) as usize;
    let started = Instant::now();
    for i in order.iter().take(scans) {
        let start = key(*i).to_vec();
        let seen = map.range(start..).take(SCAN_LENGTH).count();
        assert!(seen > 0);
    }
    let scans = per_second(scans, started.elapsed());
    Rates {
        inserts,
        reads,
        scans,
    }
}

fn main() {
    let keys: u64 = std::env::var("HARMONYDB_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // About 140 bytes a key with page overhead: ~140 MB at a million keys.
    let data_mb = (keys as usize * 140 / (1024 * 1024)).max(1);
    let small = (data_mb / 8).max(8);
    let large = data_mb * 4;
    println!(
        "{keys} keys of 16 bytes, values of {VALUE_SIZE} bytes (about {data_mb} MiB of data); \
         inserts in random order, one sync per {BATCH}; point reads in random order; \
         scans of {SCAN_LENGTH} keys from {} random starts",
        (keys / 100).max(1)
    );
    let map = btreemap(keys);
    let mut rows = Vec::new();
    for (label, pool_mb) in [
        ("pool smaller than the data", small),
        ("pool larger than the data", large),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = harmonydb(keys, pool_mb, dir.path());
        let dir = tempfile::tempdir().expect("tempdir");
        let theirs = redb(keys, pool_mb, dir.path());
        rows.push((label, pool_mb, ours, theirs));
    }
    println!();
    println!("| cache | operation | HarmonyDB /s | redb /s | BTreeMap /s | HarmonyDB ÷ redb | HarmonyDB ÷ BTreeMap |");
    println!("|---|---|---|---|---|---|---|");
    for (label, pool_mb, ours, theirs) in rows {
        for (operation, a, b, c) in [
            ("inserts", ours.inserts, theirs.inserts, map.inserts),
            ("point reads", ours.reads, theirs.reads, map.reads),
            ("range scans", ours.scans, theirs.scans, map.scans),
        ] {
            println!(
                "| {label} ({pool_mb} MiB) | {operation} | {a:.0} | {b:.0} | {c:.0} | {:.2} | {:.3} |",
                a / b,
                a / c
            );
        }
    }
}
