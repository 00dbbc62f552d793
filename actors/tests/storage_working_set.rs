//! A working set far larger than the buffer pool: 2 GiB of keys and values
//! in a tree over a 64 MiB pool, checkpointed as a node does, then every
//! key read back in random order through evictions. Long (minutes, and
//! 2 GiB of disk), so it runs only when asked:
//! `HARMONYDB_LONG_TESTS=1 cargo test --release -p harmonydb-actors --test storage_working_set -- --nocapture`.
//! `HARMONYDB_WORKING_SET_MB` changes the size (a normal `cargo test` runs
//! it at 64 MiB over an 8 MiB pool, so it stays a real test of eviction).

use std::time::Instant;

use harmonydb_actors::storage::btree::BTree;
use harmonydb_actors::storage::buffer::{BufferPool, Policy, PoolConfig};
use harmonydb_actors::storage::checkpoint::Storage;
use harmonydb_actors::storage::meta::ShardMeta;

const VALUE_SIZE: usize = 1000;

fn value(i: u64) -> Vec<u8> {
    let mut value = vec![(i % 253) as u8; VALUE_SIZE];
    value[..8].copy_from_slice(&i.to_le_bytes());
    value
}

#[test]
fn a_working_set_many_times_the_pool_is_written_and_read_back() {
    let long = std::env::var("HARMONYDB_LONG_TESTS").is_ok();
    let working_set_mb: u64 = std::env::var("HARMONYDB_WORKING_SET_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if long { 2048 } else { 64 });
    let pool_mb = if long { 64 } else { 8 };
    let keys = working_set_mb * 1024 * 1024 / (VALUE_SIZE as u64 + 16);
    let dir = tempfile::tempdir().expect("tempdir");
    let (storage, _) = Storage::open(
        dir.path(),
        PoolConfig::with_megabytes(pool_mb, Policy::Lru2),
    )
    .expect("open");
    let pool = storage.pool().clone();
    let tree: BTree<BufferPool> = BTree::create(pool.clone()).expect("tree");
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
    // Every key once, in a scrambled order (multiplying by a prime that
    // doesn't divide the count is a permutation), so inserts land all over
    // the tree.
    const PRIME: u64 = 1_000_003;
    assert_ne!(keys % PRIME, 0);
    let scrambled = |i: u64| ((u128::from(i) * u128::from(PRIME)) % u128::from(keys)) as u64;
    let started = Instant::now();
    for i in 0..keys {
        let k = scrambled(i);
        tree.insert(format!("key{k:012}").as_bytes(), &value(k))
            .expect("insert");
        // As a replica does: a checkpoint once a quarter of the frames are dirty.
        if pool.dirty_frames() > pool.frames() / 4 {
            checkpoint(i);
        }
    }
    checkpoint(keys);
    let written = started.elapsed();
    let started = Instant::now();
    let mut present = 0u64;
    for i in (0..keys).rev() {
        let k = scrambled(i);
        if let Some(found) = tree.get(format!("key{k:012}").as_bytes()).expect("get") {
            assert_eq!(found, value(k), "key {k}");
            present += 1;
        }
    }
    let read = started.elapsed();
    let shape = tree.check().expect("the tree is sound");
    let stats = pool.stats();
    println!(
        "{working_set_mb} MiB working set ({keys} keys with {VALUE_SIZE}-byte values) over a {pool_mb} MiB pool: written in {:.1} s, read back in {:.1} s; {} misses, {} evictions; tree height {}",
        written.as_secs_f64(),
        read.as_secs_f64(),
        stats.misses,
        stats.evictions,
        shape.height
    );
    assert_eq!(present, keys, "every key written is read back");
    assert_eq!(shape.keys, keys);
    assert!(stats.evictions > 0, "the working set never left the pool");
    let file_bytes = std::fs::metadata(dir.path().join("pages"))
        .expect("stat")
        .len();
    assert!(
        file_bytes > pool_mb as u64 * 1024 * 1024 * 4,
        "the data ({file_bytes} bytes) is not many times the pool"
    );
}
