//! The replica's side of checkpoints and log compaction.
//!
//! A checkpoint is begun here, between two applied entries, so the trees it
//! writes are consistent with one applied index; the `BufferPoolManager`
//! writes it on its own arbiter. It is due when a quarter of the pool's
//! frames are dirty, when `checkpoint_entries` entries were applied since the
//! last one, or when the manager says so (its timer, or memory pressure).
//! While one is written, applying waits if dirty and checkpointing frames
//! would leave less than a quarter of the pool evictable.
//!
//! Once a checkpoint is on disk, the Raft log is compacted up to
//! `log_retain_entries` below its index (followers that lag a little
//! still catch up from entries, not a snapshot), a snapshot record goes to
//! the WAL with the hard state, and WAL segments wholly below the compacted
//! index are deleted. Disk use then stays bounded under any overwrite load.

use actix::prelude::*;
use tracing::{debug, warn};

use std::path::Path;
use std::time::Duration;

use super::snapshot::clear_dumps;
use super::wal_log::records_for_snapshot;
use super::{settle_install, DeleteBelow, RaftReplica, ReplicaStorage};
use crate::cluster::members::MemberBook;
use crate::kv::{KvState, NodeFault};
use crate::storage::buffer::PoolConfig;
use crate::storage::checkpoint::{CheckpointReport, Recovery, Storage};
use crate::storage::manager::{
    BufferPoolManager, CheckpointDue, CheckpointReason, WriteCheckpoint,
};
use crate::storage::StorageError;
use crate::wal::Sync;

impl ReplicaStorage {
    /// Opens the storage under `data_dir` (finishing an interrupted
    /// snapshot install, recovering from a crash in a checkpoint), shard
    /// 0's state in it, and starts the checkpointer on `arbiter`.
    pub fn open(
        data_dir: &Path,
        pool: PoolConfig,
        checkpoint_interval: Duration,
        policy: CheckpointPolicy,
        members: MemberBook,
        arbiter: &actix::dev::ArbiterHandle,
    ) -> Result<(ReplicaStorage, Recovery), StorageError> {
        let storage_dir = data_dir.join("storage");
        settle_install(&storage_dir).map_err(|e| {
            crate::storage::pager::io_error("settle an install in", &storage_dir, &e)
        })?;
        let (storage, recovery) = Storage::open(&storage_dir, pool)?;
        let snapshot_dir = data_dir.join("snapshots");
        clear_dumps(&snapshot_dir);
        let state = match storage.meta().shard(0) {
            Some(meta) => KvState::open(storage.pool().clone(), meta),
            None => KvState::create(storage.pool().clone(), 0)?,
        };
        let manager_storage = storage.clone();
        let manager = BufferPoolManager::start_in_arbiter(arbiter, move |_| {
            BufferPoolManager::new(manager_storage, checkpoint_interval)
        });
        Ok((
            ReplicaStorage {
                storage,
                state,
                manager,
                storage_dir,
                snapshot_dir,
                pool,
                members,
                policy,
            },
            recovery,
        ))
    }
}

/// When checkpoints are due and how much log they leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Entries applied since the last checkpoint that make the next one
    /// due, however few pages they dirtied (an overwrite load dirties few
    /// pages but grows the log).
    pub checkpoint_entries: u64,
    /// Entries kept in the log below the checkpointed index, so that a
    /// follower a little behind catches up by entries, not a snapshot.
    pub log_retain_entries: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            checkpoint_entries: 50_000,
            log_retain_entries: 10_000,
        }
    }
}

/// The replica's checkpoint bookkeeping.
pub(super) struct Checkpoints {
    policy: CheckpointPolicy,
    /// The checkpoint being written: its applied index and pages.
    in_flight: Option<(u64, usize)>,
    /// Applied index of the last checkpoint on disk.
    last_applied: u64,
    /// A compaction to do once no WAL write is in flight.
    compact_to: Option<u64>,
    /// WAL segments below this may be deleted once the snapshot record
    /// written for the compaction is durable.
    delete_below: Option<u64>,
    /// The WAL is being synced before a checkpoint begins; applying waits.
    syncing: bool,
}

impl Checkpoints {
    /// Bookkeeping for a state opened at a checkpoint of `applied`.
    pub(super) fn new(applied: u64, policy: CheckpointPolicy) -> Self {
        Checkpoints {
            policy,
            in_flight: None,
            last_applied: applied,
            compact_to: None,
            delete_below: None,
            syncing: false,
        }
    }

    /// A checkpoint is being written.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A freshly installed snapshot is on disk up to `applied`.
    pub(super) fn installed(&mut self, applied: u64) {
        self.last_applied = applied;
    }
}

impl RaftReplica {
    /// Begins a checkpoint if one is due (see the module docs).
    pub(super) fn maybe_checkpoint(
        &mut self,
        reason: Option<CheckpointReason>,
        ctx: &mut Context<Self>,
    ) {
        if self.checkpoints.in_flight()
            || self.checkpoints.syncing
            || self.failed.is_some()
            || self.snapshots.holds_checkpoints()
        {
            return;
        }
        let applied = self.state.applied_index();
        let pool = self.storage.pool();
        let dirty = pool.dirty_frames();
        let behind = applied.saturating_sub(self.checkpoints.last_applied);
        let due = dirty > pool.frames() / 4
            || behind >= self.checkpoints.policy.checkpoint_entries
            || (reason.is_some() && (dirty > 0 || behind > 0));
        if !due {
            return;
        }
        // A checkpoint must never get ahead of the durable log (under
        // `--fsync interval` or `never` the last entries may be unsynced):
        // the WAL is synced first, while applying waits, so every entry the
        // checkpoint holds is also in the log.
        self.checkpoints.syncing = true;
        let sync = self.wal.send(Sync);
        ctx.spawn(sync.into_actor(self).map(move |result, replica, ctx| {
            replica.checkpoints.syncing = false;
            match result {
                Ok(Ok(_)) => replica.begin_checkpoint(reason, ctx),
                Ok(Err(error)) => {
                    replica.fail(NodeFault::new("syncing the WAL for a checkpoint", error))
                }
                Err(_) => warn!("the WAL writer stopped before a checkpoint"),
            }
            replica.apply_committed(ctx);
        }));
    }

    fn begin_checkpoint(&mut self, reason: Option<CheckpointReason>, ctx: &mut Context<Self>) {
        let applied = self.state.applied_index();
        let pending = match self.storage.begin_checkpoint(vec![self.state.shard_meta()]) {
            Ok(pending) => pending,
            Err(error) => {
                warn!(%error, "could not begin a checkpoint");
                return;
            }
        };
        debug!(
            checkpoint = pending.checkpoint(),
            pages = pending.pages(),
            applied,
            ?reason,
            "checkpoint begun"
        );
        self.checkpoints.in_flight = Some((applied, pending.pages()));
        let write = self.manager.send(WriteCheckpoint {
            storage: self.storage.clone(),
            pending,
        });
        ctx.spawn(write.into_actor(self).map(|result, replica, ctx| {
            let result = result.unwrap_or_else(|_| {
                // The message (and the checkpoint in it) was lost: its
                // pages are dirty again for the next one.
                replica.storage.abandon_checkpoint();
                Err(StorageError::Malformed {
                    page: 0,
                    reason: "the buffer pool manager stopped".into(),
                })
            });
            replica.checkpoint_written(result, ctx);
        }));
    }

    fn checkpoint_written(
        &mut self,
        result: Result<CheckpointReport, StorageError>,
        ctx: &mut Context<Self>,
    ) {
        let Some((applied, _)) = self.checkpoints.in_flight.take() else {
            return;
        };
        if let Err(error @ StorageError::Stopped(_)) = &result {
            // Pages may be half written in place: nothing more may be
            // written until a restart finishes the checkpoint.
            self.fail(NodeFault::new("writing a checkpoint", error.clone()));
            return;
        }
        // On another failure the manager logged it; the pages stay dirty
        // for the next one.
        if result.is_ok() {
            self.checkpoints.last_applied = applied;
            let compact_to = applied.saturating_sub(self.checkpoints.policy.log_retain_entries);
            if compact_to > self.raft.snapshot_index() {
                self.checkpoints.compact_to = Some(compact_to);
            }
        }
        self.apply_committed(ctx);
        self.drive(ctx);
    }

    /// Whether applying may go on: while a checkpoint is written, dirty
    /// frames plus those it still holds must leave a quarter of the pool
    /// evictable, or reads and writes would find no frame.
    pub(super) fn room_to_apply(&self) -> bool {
        if self.checkpoints.syncing {
            return false;
        }
        let Some((_, checkpointing)) = self.checkpoints.in_flight else {
            return true;
        };
        let pool = self.storage.pool();
        pool.dirty_frames() + checkpointing <= pool.frames() * 3 / 4
    }

    /// Compacts the log if a checkpoint made it possible: the core drops
    /// its entries up to the index, and a snapshot record (with the hard
    /// state) goes to the WAL. Returns whether a WAL write was started.
    pub(super) fn compact(&mut self, ctx: &mut Context<Self>) -> bool {
        let Some(index) = self.checkpoints.compact_to.take() else {
            return false;
        };
        let index = index.min(self.raft.applied_index());
        if index <= self.raft.snapshot_index() {
            return false;
        }
        // The state itself travels out of band (see `snapshot`): Raft's
        // snapshot carries only its position.
        if let Err(error) = self.raft.compact(index, Vec::new()) {
            warn!(%error, index, "log compaction refused");
            return false;
        }
        let hard_state = self.raft.hard_state();
        let (records, next) =
            records_for_snapshot(self.raft.snapshot(), hard_state, self.wal_next_index);
        self.wal_next_index = next;
        self.hard_states.wrote(hard_state);
        // Segments wholly below the snapshot's index go; the one holding the
        // snapshot record itself always reaches that index, so it stays.
        self.checkpoints.delete_below = Some(index);
        metrics::gauge!("harmonydb_raft_snapshot_index").set(index as f64);
        self.persist(records, None, ctx);
        true
    }

    /// After a compaction's snapshot record is durable: WAL segments before
    /// it go.
    pub(super) fn delete_compacted_segments(&mut self) {
        if let Some(index) = self.checkpoints.delete_below.take() {
            // A control message: the WAL writer's answer only counts files.
            self.wal.do_send(DeleteBelow { index });
        }
    }
}

impl Handler<CheckpointDue> for RaftReplica {
    type Result = ();

    fn handle(&mut self, due: CheckpointDue, ctx: &mut Self::Context) {
        let _handling = crate::observe::Handling::start("RaftReplica", "CheckpointDue");
        self.maybe_checkpoint(Some(due.reason), ctx);
        self.drive(ctx);
    }
}
