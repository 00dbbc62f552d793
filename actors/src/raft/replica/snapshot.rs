//! Snapshots between replicas. Raft's snapshot carries only a position (the
//! compacted index); the state itself goes out of band, so no node ever
//! holds a whole state in memory:
//!
//! - A leader asked for a snapshot (`PrepareSnapshot`, from the TCP op
//!   `snapshot_prepare`) writes its state to a dump file between two applied
//!   entries (`kv::dump`); the follower reads it in chunks (`snapshot_chunk`,
//!   served by the front door straight from the file).
//! - A follower whose ready carries a snapshot past its state fetches a dump
//!   from the leader, builds a fresh storage from it next to its own, then
//!   swaps the directories and opens the new one; only then does it persist
//!   the snapshot record and go on. Readies wait meanwhile.
//!
//! A crash during an install leaves either the old storage (with `.new`
//! beside it: dropped at start) or, between the two renames, only `.new`
//! (renamed into place at start); see `settle_install`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use harmonydb_protocol::{Client, Request, Response};
use tracing::{info, warn};

use super::super::wal_log::{records_for, records_for_snapshot};
use super::super::Ready;
use super::RaftReplica;
use crate::kv::{dump, KvError, KvState};
use crate::storage::buffer::{BufferPool, Policy, PoolConfig};
use crate::storage::checkpoint::Storage;
use crate::storage::manager::SwitchStorage;

/// Bytes asked for per `snapshot_chunk`.
pub const SNAPSHOT_CHUNK_BYTES: u32 = 1 << 20;

/// A dump younger than this is handed out again instead of writing a new one.
const DUMP_REUSE_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a follower waits before fetching a snapshot again after a failure.
const INSTALL_RETRY: Duration = Duration::from_secs(1);

/// Asks a replica for a dump of its state at an applied index of at least
/// `min_index`.
pub struct PrepareSnapshot {
    /// The snapshot index the asking follower was sent.
    pub min_index: u64,
}

impl Message for PrepareSnapshot {
    type Result = Result<SnapshotDump, String>;
}

/// A dump ready to be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDump {
    /// The applied index it is the state at.
    pub index: u64,
    /// Its size.
    pub size_bytes: u64,
    /// Where it is.
    pub path: PathBuf,
}

/// The dump file for applied index `index` in `dir`.
pub fn dump_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.dump"))
}

/// Finishes or drops an install a crash interrupted, before the storage in
/// `storage_dir` is opened.
pub fn settle_install(storage_dir: &Path) -> std::io::Result<()> {
    let new = storage_dir.with_extension("new");
    let old = storage_dir.with_extension("old");
    if new.exists() {
        if storage_dir.exists() {
            // The swap never happened: the old storage is whole.
            std::fs::remove_dir_all(&new)?;
        } else {
            // Between the two renames: the new storage is complete.
            std::fs::rename(&new, storage_dir)?;
        }
    }
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

impl Handler<PrepareSnapshot> for RaftReplica {
    type Result = MessageResult<PrepareSnapshot>;

    fn handle(&mut self, request: PrepareSnapshot, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.prepare_snapshot(request.min_index))
    }
}

impl RaftReplica {
    fn prepare_snapshot(&mut self, min_index: u64) -> Result<SnapshotDump, String> {
        if let Some(reason) = &self.failed {
            return Err(format!("this node's storage failed: {reason}"));
        }
        let applied = self.state.applied_index();
        if applied < min_index {
            return Err(format!(
                "this node has applied up to {applied}, before the snapshot at {min_index}"
            ));
        }
        if let Some((dump, made)) = &self.last_dump {
            if dump.index >= min_index && made.elapsed() < DUMP_REUSE_MAX_AGE {
                return Ok(dump.clone());
            }
        }
        std::fs::create_dir_all(&self.snapshot_dir)
            .map_err(|e| format!("create {}: {e}", self.snapshot_dir.display()))?;
        let path = dump_path(&self.snapshot_dir, applied);
        let temporary = path.with_extension("tmp");
        let started = Instant::now();
        // Written here, between two applied entries, so it is the state at
        // one index; this holds the replica up for as long as it takes.
        let info = dump::write(&self.state, 0, &temporary).map_err(|e| e.to_string())?;
        std::fs::rename(&temporary, &path)
            .map_err(|e| format!("rename {}: {e}", path.display()))?;
        info!(
            index = applied,
            keys = info.keys,
            size_bytes = info.size_bytes,
            duration_ms = started.elapsed().as_millis() as u64,
            "snapshot dump written"
        );
        metrics::counter!("harmonydb_raft_snapshots_sent_total").increment(1);
        let dump = SnapshotDump {
            index: applied,
            size_bytes: info.size_bytes,
            path,
        };
        if let Some((previous, _)) = self.last_dump.replace((dump.clone(), Instant::now())) {
            if previous.path != dump.path {
                let _ = std::fs::remove_file(&previous.path);
            }
        }
        Ok(dump)
    }

    /// Handles a ready that carries a snapshot from the leader.
    pub(super) fn install(&mut self, ready: Ready, ctx: &mut Context<Self>) {
        let Some(index) = ready.snapshot.as_ref().map(|s| s.meta.index) else {
            return;
        };
        if index <= self.state.applied_index() {
            // The state already covers it: only the log changes.
            self.persist_installed(ready, ctx);
            return;
        }
        // Readies wait until the state is swapped in.
        self.persisting = true;
        self.installing = true;
        if self.checkpoints.in_flight() {
            // The storage is about to be replaced: let its checkpoint finish.
            ctx.run_later(Duration::from_millis(20), move |replica, ctx| {
                replica.retry_install(ready, ctx);
            });
            return;
        }
        let leader = self.raft.leader();
        let Some(addr) = self.members.get(&leader).cloned() else {
            warn!(leader, "no address for the leader to fetch a snapshot from");
            ctx.run_later(INSTALL_RETRY, move |replica, ctx| {
                replica.retry_install(ready, ctx);
            });
            return;
        };
        info!(index, leader, %addr, "fetching a snapshot from the leader");
        let job = InstallJob {
            addr,
            min_index: index,
            storage_dir: self.storage_dir.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            pool: self.pool_config,
        };
        ctx.spawn(job.run().into_actor(self).map(move |result, replica, ctx| {
            replica.installed(result, ready, ctx);
        }));
    }

    fn retry_install(&mut self, ready: Ready, ctx: &mut Context<Self>) {
        self.persisting = false;
        self.installing = false;
        self.install(ready, ctx);
    }

    fn installed(
        &mut self,
        result: Result<(Arc<Storage>, KvState<BufferPool>), String>,
        ready: Ready,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Ok((storage, state)) => {
                info!(
                    applied_index = state.applied_index(),
                    keys = state.len(),
                    "snapshot installed"
                );
                metrics::counter!("harmonydb_raft_snapshots_received_total").increment(1);
                self.checkpoints.installed(state.applied_index());
                self.manager.do_send(SwitchStorage(storage.clone()));
                self.storage = storage;
                self.state = state;
                self.persisting = false;
                self.installing = false;
                self.persist_installed(ready, ctx);
            }
            Err(reason) => {
                warn!(%reason, "installing a snapshot failed; retrying");
                ctx.run_later(INSTALL_RETRY, move |replica, ctx| {
                    replica.retry_install(ready, ctx);
                });
            }
        }
    }

    /// Persists a ready whose snapshot the state already covers: the
    /// snapshot record with the hard state, then its entries.
    fn persist_installed(&mut self, mut ready: Ready, ctx: &mut Context<Self>) {
        let Some(snapshot) = ready.snapshot.clone() else {
            return;
        };
        let hard_state = ready
            .hard_state
            .or(self.deferred_hard_state)
            .unwrap_or(self.written_hard_state);
        let (mut records, next) = records_for_snapshot(&snapshot, hard_state, self.wal_next_index);
        records.extend(records_for(&ready.entries, None, next));
        self.wal_next_index = ready.entries.last().map_or(next, |last| last.index + 1);
        self.written_hard_state = hard_state;
        self.deferred_hard_state = None;
        self.deferred_since = None;
        self.apply(&mut ready);
        if self.failed.is_some() {
            return;
        }
        // A follower: its messages go after the records are durable.
        self.persist(records, Some((ready, true)), ctx);
    }
}

/// Fetching a dump from the leader and building a storage from it.
struct InstallJob {
    addr: String,
    min_index: u64,
    storage_dir: PathBuf,
    snapshot_dir: PathBuf,
    pool: PoolConfig,
}

impl InstallJob {
    async fn run(self) -> Result<(Arc<Storage>, KvState<BufferPool>), String> {
        let incoming = self.fetch().await?;
        tokio::task::spawn_blocking(move || self.build(&incoming))
            .await
            .map_err(|e| format!("the snapshot build stopped: {e}"))?
    }

    /// Streams the leader's dump into a local file.
    async fn fetch(&self) -> Result<PathBuf, String> {
        let client = Client::connect(self.addr.as_str())
            .await
            .map_err(|e| e.to_string())?
            .with_timeout(Duration::from_secs(60));
        let prepared = client
            .request_with(
                Request::SnapshotPrepare {
                    min_index: self.min_index,
                },
                true,
            )
            .await
            .map_err(|e| e.to_string())?;
        let Response::SnapshotReady { index, size_bytes } = prepared else {
            return Err(format!(
                "unexpected answer to snapshot_prepare: {prepared:?}"
            ));
        };
        tokio::fs::create_dir_all(&self.snapshot_dir)
            .await
            .map_err(|e| format!("create {}: {e}", self.snapshot_dir.display()))?;
        let path = self.snapshot_dir.join("incoming.dump");
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("create {}: {e}", path.display()))?;
        let mut offset = 0u64;
        while offset < size_bytes {
            let answer = client
                .request_with(
                    Request::SnapshotChunk {
                        index,
                        offset,
                        max_bytes: SNAPSHOT_CHUNK_BYTES,
                    },
                    true,
                )
                .await
                .map_err(|e| e.to_string())?;
            let Response::SnapshotChunk { data, .. } = answer else {
                return Err(format!("unexpected answer to snapshot_chunk: {answer:?}"));
            };
            if data.is_empty() {
                return Err(format!("the dump ended at {offset} of {size_bytes} bytes"));
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &data)
                .await
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            offset += data.len() as u64;
            metrics::counter!("harmonydb_raft_snapshot_bytes_received_total")
                .increment(data.len() as u64);
        }
        file.sync_all()
            .await
            .map_err(|e| format!("sync {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Builds a storage from the dump beside the current one, swaps the
    /// directories, and opens the result (blocking).
    fn build(&self, dump_path: &Path) -> Result<(Arc<Storage>, KvState<BufferPool>), String> {
        let new_dir = self.storage_dir.with_extension("new");
        if new_dir.exists() {
            std::fs::remove_dir_all(&new_dir)
                .map_err(|e| format!("remove {}: {e}", new_dir.display()))?;
        }
        // Building needs few frames: checkpoints keep the dirty ones few.
        let build_pool = PoolConfig::with_megabytes(16, Policy::Lru2);
        let (storage, _) = Storage::open(&new_dir, build_pool).map_err(|e| e.to_string())?;
        let mut state = KvState::create(storage.pool().clone(), 0).map_err(|e| e.to_string())?;
        let checkpoint = |state: &KvState<BufferPool>| -> Result<(), KvError> {
            let pending = storage
                .begin_checkpoint(vec![state.shard_meta()])
                .map_err(|e| KvError::Storage(e.to_string()))?;
            storage
                .write_checkpoint(pending, None)
                .map(|_| ())
                .map_err(|e| KvError::Storage(e.to_string()))
        };
        let info = dump::read(dump_path, |key, versioned| {
            state.restore(key, versioned)?;
            if storage.pool().dirty_frames() > storage.pool().frames() / 4 {
                checkpoint(&state)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        state.skip_to(info.applied_index);
        checkpoint(&state).map_err(|e| e.to_string())?;
        drop(state);
        drop(storage);
        swap_dirs(&self.storage_dir, &new_dir)?;
        let _ = std::fs::remove_file(dump_path);
        let (storage, _) =
            Storage::open(&self.storage_dir, self.pool).map_err(|e| e.to_string())?;
        let meta = storage
            .meta()
            .shard(0)
            .ok_or("the installed storage has no shard 0")?;
        let state = KvState::open(storage.pool().clone(), meta);
        Ok((storage, state))
    }
}

/// Puts the storage in `new_dir` in place of the one in `storage_dir`.
fn swap_dirs(storage_dir: &Path, new_dir: &Path) -> Result<(), String> {
    let old = storage_dir.with_extension("old");
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to)
            .map_err(|e| format!("rename {} to {}: {e}", from.display(), to.display()))
    };
    rename(storage_dir, &old)?;
    rename(new_dir, storage_dir)?;
    if let Some(parent) = storage_dir.parent() {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| format!("sync {}: {e}", parent.display()))?;
    }
    std::fs::remove_dir_all(&old).map_err(|e| format!("remove {}: {e}", old.display()))
}
