//! The `BufferPoolManager` actor: the background checkpointer. It runs on an
//! arbiter of its own, because writing a checkpoint is blocking I/O
//! (double-write file, pages in place, syncs) that must never hold up Raft.
//!
//! Only a replica can begin a checkpoint, at a moment between two applied
//! entries when its tree is consistent; the manager tells replicas when one
//! is due (on a timer, and when the pool runs out of evictable frames:
//! memory pressure), writes what they begin, and publishes the pool's
//! counters as metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{info, warn};

use super::checkpoint::{CheckpointReport, PendingCheckpoint, Storage};
use super::StorageError;

/// A checkpoint is due: begin one if there is anything to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointDue {
    /// Why it is due.
    pub reason: CheckpointReason,
}

impl Message for CheckpointDue {
    type Result = ();
}

/// Why a checkpoint was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointReason {
    /// The checkpoint interval passed.
    Timer,
    /// A request found no frame to evict.
    MemoryPressure,
}

/// Registers a replica to be told when checkpoints are due.
pub struct RegisterReplica(pub Recipient<CheckpointDue>);

impl Message for RegisterReplica {
    type Result = ();
}

/// Writes a begun checkpoint of `storage`.
pub struct WriteCheckpoint {
    /// The storage it belongs to.
    pub storage: Arc<Storage>,
    /// The checkpoint, as begun by the replica.
    pub pending: PendingCheckpoint,
}

impl Message for WriteCheckpoint {
    type Result = Result<CheckpointReport, StorageError>;
}

/// From now on the node's storage is `0` (a snapshot was installed).
pub struct SwitchStorage(pub Arc<Storage>);

impl Message for SwitchStorage {
    type Result = ();
}

/// Memory pressure from the pool (sent by its pressure callback).
pub struct Pressure;

impl Message for Pressure {
    type Result = ();
}

/// The background checkpointer of one node.
pub struct BufferPoolManager {
    storage: Arc<Storage>,
    interval: Duration,
    replicas: Vec<Recipient<CheckpointDue>>,
    /// When pressure last asked the replicas, so a storm of waiting
    /// requests makes one request for a checkpoint, not thousands.
    pressure_asked: Option<Instant>,
}

impl BufferPoolManager {
    /// A manager for `storage` that asks for a checkpoint every `interval`.
    pub fn new(storage: Arc<Storage>, interval: Duration) -> Self {
        BufferPoolManager {
            storage,
            interval,
            replicas: Vec::new(),
            pressure_asked: None,
        }
    }

    fn ask(&self, reason: CheckpointReason) {
        for replica in &self.replicas {
            replica.do_send(CheckpointDue { reason });
        }
    }

    fn publish_metrics(&self) {
        let stats = self.storage.pool().stats();
        metrics::gauge!("harmonydb_storage_buffer_pool_frames").set(stats.frames as f64);
        metrics::gauge!("harmonydb_storage_buffer_pool_dirty_frames").set(stats.dirty as f64);
        metrics::gauge!("harmonydb_storage_buffer_pool_pinned_frames").set(stats.pinned as f64);
        metrics::counter!("harmonydb_storage_buffer_pool_hits_total").absolute(stats.hits);
        metrics::counter!("harmonydb_storage_buffer_pool_misses_total").absolute(stats.misses);
        metrics::counter!("harmonydb_storage_buffer_pool_evictions_total")
            .absolute(stats.evictions);
    }
}

/// How often pool counters are published.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two pressure requests.
const PRESSURE_DEBOUNCE: Duration = Duration::from_millis(100);

impl Actor for BufferPoolManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        watch_pressure(&self.storage, ctx);
        ctx.run_interval(self.interval, |manager, _| {
            manager.ask(CheckpointReason::Timer);
        });
        ctx.run_interval(METRICS_INTERVAL, |manager, _| manager.publish_metrics());
    }
}

fn watch_pressure(storage: &Storage, ctx: &mut Context<BufferPoolManager>) {
    let address = ctx.address();
    storage.pool().on_pressure(Box::new(move || {
        address.do_send(Pressure);
    }));
}

impl Handler<SwitchStorage> for BufferPoolManager {
    type Result = ();

    fn handle(&mut self, SwitchStorage(storage): SwitchStorage, ctx: &mut Self::Context) {
        let _handling = crate::observe::Handling::start("BufferPoolManager", "SwitchStorage");
        watch_pressure(&storage, ctx);
        self.storage = storage;
    }
}

impl Handler<RegisterReplica> for BufferPoolManager {
    type Result = ();

    fn handle(&mut self, RegisterReplica(replica): RegisterReplica, _: &mut Self::Context) {
        let _handling = crate::observe::Handling::start("BufferPoolManager", "RegisterReplica");
        self.replicas.push(replica);
    }
}

impl Handler<Pressure> for BufferPoolManager {
    type Result = ();

    fn handle(&mut self, _: Pressure, _: &mut Self::Context) {
        let _handling = crate::observe::Handling::start("BufferPoolManager", "Pressure");
        if self
            .pressure_asked
            .is_some_and(|at| at.elapsed() < PRESSURE_DEBOUNCE)
        {
            return;
        }
        self.pressure_asked = Some(Instant::now());
        metrics::counter!("harmonydb_storage_memory_pressure_total").increment(1);
        self.ask(CheckpointReason::MemoryPressure);
    }
}

impl Handler<WriteCheckpoint> for BufferPoolManager {
    type Result = Result<CheckpointReport, StorageError>;

    fn handle(&mut self, request: WriteCheckpoint, _: &mut Self::Context) -> Self::Result {
        let _handling = crate::observe::Handling::start("BufferPoolManager", "WriteCheckpoint");
        let result = request.storage.write_checkpoint(request.pending, None);
        match &result {
            Ok(report) => {
                metrics::histogram!("harmonydb_storage_checkpoint_duration_seconds")
                    .record(report.duration.as_secs_f64());
                metrics::counter!("harmonydb_storage_checkpoints_total").increment(1);
                metrics::counter!("harmonydb_storage_checkpoint_pages_total")
                    .increment(report.pages as u64);
                info!(
                    checkpoint = report.checkpoint,
                    pages = report.pages,
                    duration_ms = report.duration.as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(error) => {
                metrics::counter!("harmonydb_storage_checkpoint_failures_total").increment(1);
                warn!(%error, "checkpoint failed; its pages stay dirty for the next one");
            }
        }
        self.publish_metrics();
        result
    }
}
