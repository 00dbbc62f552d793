//! Group commit benchmark: durable appends per second with fsync on, at 1, 8
//! and 64 concurrent writers, next to the disk's raw sync rate measured in
//! the same run and directory (a write + fdatasync loop).
//!
//! Writers go through the real write path, laid out on threads as in the
//! node: `KvHandle::call(Put)` -> RaftReplica of a one-member group (assigns
//! the index; on the same arbiter as the callers, as the TCP connections are
//! in the node) -> WalWriter (own arbiter; writes through the mapping, one
//! msync per batch) -> commit -> apply -> answer. One put is one WAL record
//! (plus a hard-state record per batch).
//!
//! Run: `cargo bench -p harmonydb-actors --bench wal_group_commit`
//! Set `HARMONYDB_BENCH_DIR` to measure another disk, `HARMONYDB_BENCH_SECONDS`
//! to change the time per configuration (default 3),
//! `HARMONYDB_BENCH_WRITERS=1,64` to choose the writer counts.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix::Arbiter;
use harmonydb_actors::cluster::transport::Transport;
use harmonydb_actors::kv::{KvHandle, KvLimits, KvOp};
use harmonydb_actors::replica::wal_log::load;
use harmonydb_actors::replica::{RaftReplica, ReplicaStorage};
use harmonydb_actors::storage::buffer::{Policy, PoolConfig};
use harmonydb_actors::wal::{FsyncPolicy, GetStats, Wal, WalOptions, WalWriter};
use harmonydb_raft::{PersistedState, Raft, RaftConfig};

const PAYLOAD_SIZE_BYTES: usize = 100;
const WRITER_COUNTS: [usize; 3] = [1, 8, 64];

fn bench_dir() -> PathBuf {
    std::env::var_os("HARMONYDB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn seconds_per_run() -> Duration {
    let seconds = std::env::var("HARMONYDB_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(seconds)
}

/// Syncs per second of a plain loop: write a record-sized block, fdatasync.
fn raw_fsync_rate(duration: Duration) -> f64 {
    let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw"))
        .expect("open");
    // Preallocated like a WAL segment, so the loop measures syncs, not growth.
    file.set_len(64 * 1024 * 1024).expect("size");
    let block = [0xabu8; PAYLOAD_SIZE_BYTES + 17];
    let started = Instant::now();
    let mut syncs = 0u64;
    let mut offset = 0u64;
    while started.elapsed() < duration {
        file.write_all_at(&block, offset).expect("write");
        file.sync_data().expect("fdatasync");
        offset = (offset + block.len() as u64) % (60 * 1024 * 1024);
        syncs += 1;
    }
    syncs as f64 / started.elapsed().as_secs_f64()
}

struct RunResult {
    appends_per_second: f64,
    syncs_per_second: f64,
    records_per_sync: f64,
    sync_mean_us: f64,
}

fn group_commit_rate(writers: usize, duration: Duration) -> RunResult {
    let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
    let system = actix::System::new();
    system.block_on(async move {
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open WAL");
        let persisted = load(&wal, PersistedState::bootstrap([1])).expect("load");
        let raft = Raft::new(RaftConfig::new(1), persisted).expect("core");
        let next_index = wal.last_index() + 1;
        let wal_arbiter = Arbiter::new();
        let writer = WalWriter::new(wal, FsyncPolicy::Always).start_on(&wal_arbiter.handle());
        let transport = Transport::new(1, Default::default()).start();
        let (storage, _) = ReplicaStorage::open(
            dir.path(),
            PoolConfig::with_megabytes(64, Policy::Lru2),
            Duration::from_secs(30),
            Default::default(),
            Default::default(),
            &wal_arbiter.handle(),
        )
        .expect("open storage");
        let replica = RaftReplica::new(
            raft,
            writer.clone(),
            next_index,
            transport.recipient(),
            Duration::from_millis(100),
            storage,
        )
        .start();
        let kv = KvHandle::new(replica.recipient(), KvLimits::default());

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let before = writer.send(GetStats).await.expect("stats");
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (kv, stop, done) = (kv.clone(), stop.clone(), done.clone());
                actix_rt::spawn(async move {
                    let value = vec![b'v'; PAYLOAD_SIZE_BYTES];
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let op = KvOp::Put {
                            key: format!("w{w}/{}", i % 1000).into_bytes(),
                            value: value.clone(),
                            expected_version: None,
                        };
                        kv.call(op).await.expect("durable put");
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        actix_rt::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("writer task");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = writer.send(GetStats).await.expect("stats");
        wal_arbiter.stop();
        let appends = done.load(Ordering::Relaxed) as f64;
        let syncs = (after.syncs - before.syncs) as f64;
        RunResult {
            appends_per_second: appends / elapsed,
            syncs_per_second: syncs / elapsed,
            records_per_sync: (after.records - before.records) as f64 / syncs.max(1.0),
            sync_mean_us: (after.sync_time_total_us - before.sync_time_total_us) as f64
                / syncs.max(1.0),
        }
    })
}

fn main() {
    // Test runners that enumerate targets (cargo nextest) call with --list: there is nothing to list.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let duration = seconds_per_run();
    println!(
        "WAL group commit, fsync=always, {PAYLOAD_SIZE_BYTES}-byte values, {duration:?} per run"
    );
    println!("directory: {}", bench_dir().display());
    let raw = raw_fsync_rate(duration);
    println!(
        "raw sync rate (pwrite {} B + fdatasync loop): {raw:.0}/s",
        PAYLOAD_SIZE_BYTES + 17
    );
    println!();
    println!(
        "{:>8} {:>12} {:>9} {:>13} {:>13} {:>12}",
        "writers", "appends/s", "syncs/s", "records/sync", "sync mean us", "x raw fsync"
    );
    // HARMONYDB_BENCH_WRITERS=64 runs one configuration (for profiling).
    let writer_counts: Vec<usize> = match std::env::var("HARMONYDB_BENCH_WRITERS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => WRITER_COUNTS.to_vec(),
    };
    for writers in writer_counts {
        let result = group_commit_rate(writers, duration);
        println!(
            "{:>8} {:>12.0} {:>9.0} {:>13.1} {:>13.0} {:>12.1}",
            writers,
            result.appends_per_second,
            result.syncs_per_second,
            result.records_per_sync,
            result.sync_mean_us,
            result.appends_per_second / raw
        );
    }
}
