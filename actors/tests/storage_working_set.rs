//! A working set far larger than the buffer pool: 2 GiB of keys and values
//! in a tree over a 64 MiB pool, checkpointed as a node does, then every
//! key read back in random order through evictions. Long (minutes, and
//! 2 GiB of disk), so it runs only when asked:
//! `HARMONYDB_LONG_TESTS=1 cargo test --release -p harmonydb-actors --test storage_working_set -- --nocapture`.
//! `HARMONYDB_WORKING_SET_MB` changes the size (a normal `cargo test` runs
//! it at 64 MiB over an 8 MiB pool, so it stays a real test of eviction).

use std::sync::Arc;
use std::time::Instant;

use harmonydb_actors::storage::btree::BTree;
use harmonydb_actors::storage::buffer::{BufferPool, Policy, PoolConfig};
use harmonydb_actors::storage::checkpoint::Storage;
use harmonydb_actors::storage::meta::ShardMeta;
use harmonydb_actors::storage::ordered::{Cursor, OrderedStore};

const VALUE_SIZE: usize = 1000;

fn value(i: u64) -> Vec<u8> {
    let mut value = vec![(i % 253) as u8; VALUE_SIZE];
    value[..8].copy_from_slice(&i.to_le_bytes());
    value
}

/// A tree over a pool of `pool_mb` MiB in a storage in `dir`.
fn tree_over_pool(
    dir: &std::path::Path,
    pool_mb: usize,
) -> (Arc<Storage>, Arc<BufferPool>, BTree<BufferPool>) {
    let (storage, _) =
        Storage::open(dir, PoolConfig::with_megabytes(pool_mb, Policy::Lru2)).expect("open");
    let pool = storage.pool().clone();
    let tree: BTree<BufferPool> = BTree::create(pool.clone()).expect("tree");
    (storage, pool, tree)
}

/// A checkpoint of `tree` as at `applied`, which makes its dirty frames
/// clean (evictable) again.
fn checkpoint(storage: &Storage, tree: &BTree<BufferPool>, applied: u64) {
    let pending = storage
        .begin_checkpoint(vec![ShardMeta {
            shard: 0,
            root: tree.root(),
            applied_index: applied,
            keys: applied,
        }])
        .expect("begin");
    storage.write_checkpoint(pending, None).expect("checkpoint");
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
    let (storage, pool, tree) = tree_over_pool(dir.path(), pool_mb);
    let checkpoint = |applied: u64| checkpoint(&storage, &tree, applied);
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

/// A million keys, walked end to end by a cursor through an 8 MiB pool:
/// the walk holds one leaf's entries at a time and pins no frame between
/// steps, so its memory does not grow with the keys it has passed.
#[test]
fn a_cursor_walks_a_million_keys_in_bounded_memory() {
    const KEYS: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (storage, pool, tree) = tree_over_pool(dir.path(), 8);
    let started = Instant::now();
    for i in 0..KEYS {
        tree.insert(format!("key{i:08}").as_bytes(), &i.to_le_bytes())
            .expect("insert");
        if pool.dirty_frames() > pool.frames() / 4 {
            checkpoint(&storage, &tree, i);
        }
    }
    checkpoint(&storage, &tree, KEYS);
    let written = started.elapsed();
    let started = Instant::now();
    let mut cursor = tree.cursor();
    cursor.seek(b"").expect("seek");
    let (mut seen, mut held_max) = (0u64, 0usize);
    while let (Some(key), Some(value)) = (cursor.key(), cursor.value()) {
        assert_eq!(key, format!("key{seen:08}").as_bytes());
        assert_eq!(value, seen.to_le_bytes());
        seen += 1;
        held_max = held_max.max(cursor.held());
        if seen % 100_000 == 0 {
            // Between steps the cursor pins nothing: every frame it
            // touched can be evicted.
            assert_eq!(pool.pinned_frames(), 0, "after {seen} keys");
        }
        cursor.next().expect("next");
    }
    let walked = started.elapsed();
    let stats = pool.stats();
    println!(
        "{KEYS} keys written in {:.1} s, walked in {:.1} s through {} frames; at most {held_max} entries held at once; {} evictions",
        written.as_secs_f64(),
        walked.as_secs_f64(),
        pool.frames(),
        stats.evictions
    );
    assert_eq!(seen, KEYS);
    // A leaf of 8 KiB holds at most a few hundred of these small cells.
    assert!(held_max <= 400, "held {held_max} entries at once");
    assert!(stats.evictions > 0, "the keys never left the pool");
}
