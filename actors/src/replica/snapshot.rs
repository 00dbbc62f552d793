//! Snapshots between replicas. Raft's snapshot carries only a position (the
//! compacted index); the state itself goes out of band, so no node ever
//! holds a whole state in memory and Raft never waits for it:
//!
//! - A follower persists a snapshot from the leader like any ready (the
//!   snapshot record voids its log up to there) and goes on voting and
//!   acknowledging. If its state is behind the snapshot it stops applying,
//!   fetches a dump of the leader's state (TCP `snapshot_prepare`, then
//!   `snapshot_chunk` in chunks) in the background, builds a fresh storage
//!   from it beside its own, swaps the directories, opens the new one, and
//!   applies on from the dump's index (the core keeps the entries after the
//!   snapshot in its log meanwhile). A failed fetch is tried again a
//!   second later; a restart with the state behind the log's start fetches
//!   the same way.
//! - A leader asked for a dump writes one from its last checkpoint, read
//!   straight from the page file (`storage::file_view`) on a blocking
//!   thread while checkpoints are held off, so the replica never stops for
//!   it. At most one dump is written at a time, and a recent one is reused.
//!
//! A crash during an install leaves either the old storage (with `.new`
//! beside it: dropped at start) or, between the two renames, only `.new`
//! (renamed into place at start); see `settle_install`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use harmonydb_protocol::{ErrorCode, Request, Response};
use tracing::{info, warn};

use crate::cluster::rpc::{PeerClient, RpcError};

use super::machine::StateMachine;
use super::wal_log::records_for_installed_snapshot;
use super::RaftReplica;
use crate::kv::{KvState, NodeFault, StateError};
use crate::storage::btree::BTree;
use crate::storage::buffer::{BufferPool, Policy, PoolConfig};
use crate::storage::checkpoint::Storage;
use crate::storage::file_view::FilePages;
use crate::storage::manager::SwitchStorage;
use crate::storage::meta::ShardMeta;
use crate::storage::pager::Pager;
use crate::storage::StorageError;
use harmonydb_raft::{NodeId, Ready};

/// Why a dump could not be written, fetched or installed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SnapshotError {
    /// This node's storage failed; it serves nothing.
    #[error("this node's storage failed: {0}")]
    Failed(NodeFault),
    /// A dump is being written for another follower.
    #[error("a dump is being written; ask again")]
    Dumping,
    /// A checkpoint is being written (a dump reads the last one).
    #[error("a checkpoint is being written; ask again")]
    Checkpointing,
    /// Nothing is checkpointed yet.
    #[error("this node has no checkpoint yet; ask again")]
    NoCheckpoint,
    /// The last checkpoint is older than the snapshot the follower needs
    /// (one was begun).
    #[error("the last checkpoint here is at {checkpointed}, before {wanted}; ask again")]
    CheckpointBehind {
        /// The checkpoint's applied index.
        checkpointed: u64,
        /// The index asked for.
        wanted: u64,
    },
    /// Reading or writing the state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Opening or checkpointing a storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A background task ended without finishing (it panicked or was
    /// cancelled).
    #[error("the {task} stopped: {reason}")]
    TaskStopped {
        /// Which task.
        task: &'static str,
        /// How it ended.
        reason: String,
    },
    /// The leader could not be asked (cut off, unreachable, no answer).
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The leader answered with an error.
    #[error("the leader refused: {code}: {message}")]
    Refused {
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The leader answered something other than what was asked for.
    #[error("unexpected answer to {request}: {answer}")]
    Unexpected {
        /// The request.
        request: &'static str,
        /// The answer, as debug text.
        answer: String,
    },
    /// The leader's dump is older than the snapshot this node needs.
    #[error("the leader's dump is at {index}, before the snapshot at {wanted}")]
    DumpBehind {
        /// The dump's index.
        index: u64,
        /// The index needed.
        wanted: u64,
    },
    /// The leader's dump ended before its announced size.
    #[error("the dump ended at {offset} of {size_bytes} bytes")]
    CutShort {
        /// Bytes received.
        offset: u64,
        /// Bytes announced.
        size_bytes: u64,
    },
    /// The dump is of another shard, or older than needed.
    #[error("the dump is shard {shard} at {index}, not shard 0 at {wanted} or later")]
    WrongDump {
        /// Its shard.
        shard: u64,
        /// Its index.
        index: u64,
        /// The index needed.
        wanted: u64,
    },
    /// The storage swapped in has no shard.
    #[error("the installed storage has no shard 0")]
    NoShard,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |error| SnapshotError::Io {
        action,
        path,
        source: Arc::new(error),
    }
}

fn stopped(task: &'static str) -> impl FnOnce(tokio::task::JoinError) -> SnapshotError {
    move |error| SnapshotError::TaskStopped {
        task,
        reason: error.to_string(),
    }
}

/// Bytes asked for per `snapshot_chunk`.
pub const SNAPSHOT_CHUNK_BYTES: u32 = 1 << 20;

/// A dump younger than this is handed out again instead of writing a new one.
const DUMP_REUSE_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a follower waits before fetching a snapshot again after a failure.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// How long a finished fetch waits for a checkpoint in flight before the swap.
const SWAP_RETRY: Duration = Duration::from_millis(20);

/// The replica's snapshot bookkeeping.
#[derive(Default)]
pub(super) struct Snapshots {
    /// The state must reach this index (the log's start) before applying.
    wanted: u64,
    /// A fetch and build is under way.
    fetching: bool,
    /// A built storage waiting for the checkpoint in flight to finish.
    built: Option<Built>,
    /// A dump is being written for a follower: checkpoints wait.
    dumping: bool,
    /// The last dump written for a follower, and when.
    last_dump: Option<(SnapshotDump, Instant)>,
}

impl Snapshots {
    /// Whether a state at `applied` must wait for a snapshot before applying.
    pub(super) fn state_behind(&self, applied: u64) -> bool {
        applied < self.wanted
    }

    /// Whether checkpoints must wait (a dump reads the page file, or a built
    /// storage waits to replace this one).
    pub(super) fn holds_checkpoints(&self) -> bool {
        self.dumping || self.built.is_some()
    }
}

/// A storage built from a dump, in `<storage>.new`, not yet swapped in.
#[derive(Debug)]
struct Built {
    new_dir: PathBuf,
    applied_index: u64,
}

/// Asks a replica for a dump of its state at an applied index of at least
/// `min_index`.
pub struct PrepareSnapshot {
    /// The snapshot index the asking follower was sent.
    pub min_index: u64,
    /// Mailbox accounting and the asking request's span.
    pub envelope: crate::observe::Envelope,
}

impl PrepareSnapshot {
    /// A dump request on behalf of the current span.
    pub fn new(min_index: u64) -> PrepareSnapshot {
        PrepareSnapshot {
            min_index,
            envelope: crate::observe::Envelope::new("RaftReplica", "PrepareSnapshot"),
        }
    }
}

impl Message for PrepareSnapshot {
    type Result = Result<SnapshotDump, SnapshotError>;
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
/// `storage_dir` is opened; clears dumps left in `snapshot_dir`.
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

/// Removes dumps and partial downloads left by an earlier run.
pub fn clear_dumps(snapshot_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(snapshot_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
}

impl Handler<PrepareSnapshot> for RaftReplica {
    type Result = ResponseActFuture<Self, Result<SnapshotDump, SnapshotError>>;

    fn handle(&mut self, request: PrepareSnapshot, ctx: &mut Self::Context) -> Self::Result {
        let PrepareSnapshot {
            min_index,
            envelope,
        } = request;
        let _handling = envelope.open();
        let job = match self.dump_job(min_index, ctx) {
            Ok(DumpJob::Ready(dump)) => return Box::pin(fut::ready(Ok(dump))),
            Ok(DumpJob::Write { pager, shard, path }) => (pager, shard, path),
            Err(reason) => return Box::pin(fut::ready(Err(reason))),
        };
        self.snapshots.dumping = true;
        let (pager, shard, path) = job;
        let write = tokio::task::spawn_blocking(move || write_dump(pager, shard, &path));
        Box::pin(write.into_actor(self).map(|result, replica, ctx| {
            replica.snapshots.dumping = false;
            let result = result.map_err(stopped("dump")).and_then(|r| r);
            if let Ok(dump) = &result {
                metrics::counter!("harmonydb_raft_snapshots_sent_total").increment(1);
                if let Some((previous, _)) = replica
                    .snapshots
                    .last_dump
                    .replace((dump.clone(), Instant::now()))
                {
                    if previous.path != dump.path {
                        let _ = std::fs::remove_file(&previous.path);
                    }
                }
            }
            // Checkpoints held off meanwhile may be due.
            replica.maybe_checkpoint(None, ctx);
            result
        }))
    }
}

/// What answering a `PrepareSnapshot` takes.
enum DumpJob {
    /// A recent dump does.
    Ready(SnapshotDump),
    /// A dump of the last checkpoint must be written.
    Write {
        pager: Arc<Pager>,
        shard: ShardMeta,
        path: PathBuf,
    },
}

/// Writes a dump of the tree as checkpointed (blocking; checkpoints are held
/// off by the caller, so the page file does not change meanwhile).
fn write_dump(
    pager: Arc<Pager>,
    shard: ShardMeta,
    path: &Path,
) -> Result<SnapshotDump, SnapshotError> {
    let started = Instant::now();
    let state = KvState::open(Arc::new(FilePages::new(pager)), shard);
    let temporary = path.with_extension("tmp");
    let info = state.snapshot_out(&temporary)?;
    std::fs::rename(&temporary, path).map_err(io("rename", path))?;
    info!(
        index = info.applied_index,
        keys = info.keys,
        size_bytes = info.size_bytes,
        duration_ms = started.elapsed().as_millis() as u64,
        "snapshot dump written from the last checkpoint"
    );
    Ok(SnapshotDump {
        index: info.applied_index,
        size_bytes: info.size_bytes,
        path: path.to_path_buf(),
    })
}

impl RaftReplica {
    /// Decides how to answer a request for a dump at `min_index` or later.
    fn dump_job(
        &mut self,
        min_index: u64,
        ctx: &mut Context<Self>,
    ) -> Result<DumpJob, SnapshotError> {
        if let Some(fault) = &self.failed {
            return Err(SnapshotError::Failed(fault.clone()));
        }
        if let Some((dump, made)) = &self.snapshots.last_dump {
            if dump.index >= min_index && made.elapsed() < DUMP_REUSE_MAX_AGE {
                return Ok(DumpJob::Ready(dump.clone()));
            }
        }
        if self.snapshots.dumping {
            return Err(SnapshotError::Dumping);
        }
        if self.checkpoints.in_flight() {
            return Err(SnapshotError::Checkpointing);
        }
        let Some(shard) = self.storage.meta().shard(0) else {
            return Err(SnapshotError::NoCheckpoint);
        };
        if shard.applied_index < min_index {
            self.maybe_checkpoint(Some(crate::storage::manager::CheckpointReason::Timer), ctx);
            return Err(SnapshotError::CheckpointBehind {
                checkpointed: shard.applied_index,
                wanted: min_index,
            });
        }
        std::fs::create_dir_all(&self.snapshot_dir).map_err(io("create", &self.snapshot_dir))?;
        Ok(DumpJob::Write {
            pager: self.storage.pool().pager().clone(),
            path: dump_path(&self.snapshot_dir, shard.applied_index),
            shard,
        })
    }

    /// Persists a ready that carries a snapshot from the leader: the
    /// snapshot record, a truncation of what followed it, the entries the
    /// core kept, and the hard state; the state follows out of band.
    pub(super) fn persist_snapshot(&mut self, ready: Ready, ctx: &mut Context<Self>) {
        let Some(snapshot) = ready.snapshot.clone() else {
            return;
        };
        let hard_state = self.hard_states.newest(ready.hard_state);
        let (records, next) = records_for_installed_snapshot(
            &snapshot,
            &ready.entries,
            hard_state,
            self.wal_next_index,
        );
        self.wal_next_index = next;
        self.need_state(snapshot.meta.index, ctx);
        // A follower: its messages go after the records are durable.
        self.persist(records, Some((ready, true)), ctx);
    }

    /// The state must reach `index` before it applies anything more: fetch
    /// it from the leader if it is behind.
    pub(super) fn need_state(&mut self, index: u64, ctx: &mut Context<Self>) {
        self.snapshots.wanted = self.snapshots.wanted.max(index);
        if self.snapshots.state_behind(self.state.applied_index()) {
            self.start_fetch(ctx);
        }
    }

    fn start_fetch(&mut self, ctx: &mut Context<Self>) {
        if self.snapshots.fetching
            || self.failed.is_some()
            || !self.snapshots.state_behind(self.state.applied_index())
        {
            return;
        }
        let leader = self.raft.leader();
        if leader == 0 || leader == self.raft.id() {
            // No leader known yet (or this node leads with its state behind,
            // which a restart can't cause): try again soon.
            ctx.run_later(FETCH_RETRY, |replica, ctx| replica.start_fetch(ctx));
            return;
        };
        self.snapshots.fetching = true;
        let job = FetchJob {
            leader,
            peers: self.peers.clone(),
            min_index: self.snapshots.wanted,
            storage_dir: self.storage_dir.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
        };
        info!(
            min_index = job.min_index,
            leader,
            applied_index = self.state.applied_index(),
            "fetching a snapshot from the leader"
        );
        ctx.spawn(job.run().into_actor(self).map(|result, replica, ctx| {
            replica.snapshots.fetching = false;
            match result {
                Ok(built) => {
                    replica.snapshots.built = Some(built);
                    replica.swap_in(ctx);
                }
                Err(reason) => {
                    warn!(%reason, "fetching a snapshot failed; trying again");
                    ctx.run_later(FETCH_RETRY, |replica, ctx| replica.start_fetch(ctx));
                }
            }
        }));
    }

    /// Puts the built storage in place of this one, once no checkpoint of
    /// this one is being written, and applies on from it.
    fn swap_in(&mut self, ctx: &mut Context<Self>) {
        if self.checkpoints.in_flight() {
            ctx.run_later(SWAP_RETRY, |replica, ctx| replica.swap_in(ctx));
            return;
        }
        let Some(built) = self.snapshots.built.take() else {
            return;
        };
        match swap_and_open(&self.storage_dir, &built.new_dir, self.pool_config) {
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
                self.apply_committed(ctx);
            }
            Err(error) => {
                self.fail(NodeFault::new(
                    format!("installing the snapshot at {}", built.applied_index),
                    error,
                ));
            }
        }
    }
}

/// Fetching a dump from the leader (through the node's one peer client,
/// so the fault filter and the configured timeouts apply) and building a
/// storage from it.
struct FetchJob {
    leader: NodeId,
    peers: PeerClient,
    min_index: u64,
    storage_dir: PathBuf,
    snapshot_dir: PathBuf,
}

impl FetchJob {
    async fn run(self) -> Result<Built, SnapshotError> {
        let incoming = self.fetch().await?;
        let new_dir = self.storage_dir.with_extension("new");
        let min_index = self.min_index;
        tokio::task::spawn_blocking(move || build(&incoming, &new_dir, min_index))
            .await
            .map_err(stopped("snapshot build"))?
    }

    /// Asks the leader, answering an error answer as a failure.
    async fn ask(&self, request: Request) -> Result<Response, SnapshotError> {
        match self.peers.call(self.leader, request, None).await? {
            Response::Error { code, message, .. } => Err(SnapshotError::Refused { code, message }),
            answer => Ok(answer),
        }
    }

    /// Streams the leader's dump into a local file.
    async fn fetch(&self) -> Result<PathBuf, SnapshotError> {
        let prepared = self
            .ask(Request::SnapshotPrepare {
                min_index: self.min_index,
            })
            .await?;
        let Response::SnapshotReady { index, size_bytes } = prepared else {
            return Err(SnapshotError::Unexpected {
                request: "snapshot_prepare",
                answer: format!("{prepared:?}"),
            });
        };
        if index < self.min_index {
            return Err(SnapshotError::DumpBehind {
                index,
                wanted: self.min_index,
            });
        }
        tokio::fs::create_dir_all(&self.snapshot_dir)
            .await
            .map_err(io("create", &self.snapshot_dir))?;
        let path = self.snapshot_dir.join("incoming.dump");
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(io("create", &path))?;
        let mut offset = 0u64;
        while offset < size_bytes {
            let answer = self
                .ask(Request::SnapshotChunk {
                    index,
                    offset,
                    max_bytes: SNAPSHOT_CHUNK_BYTES,
                })
                .await?;
            let Response::SnapshotChunk { data, .. } = answer else {
                return Err(SnapshotError::Unexpected {
                    request: "snapshot_chunk",
                    answer: format!("{answer:?}"),
                });
            };
            if data.is_empty() {
                return Err(SnapshotError::CutShort { offset, size_bytes });
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &data)
                .await
                .map_err(io("write", &path))?;
            offset += data.len() as u64;
            metrics::counter!("harmonydb_raft_snapshot_bytes_received_total")
                .increment(data.len() as u64);
        }
        file.sync_all().await.map_err(io("sync", &path))?;
        Ok(path)
    }
}

/// Builds a storage from the dump in `new_dir` (blocking): checked whole
/// first, then key by key, checkpointed as it fills the pool and at the end.
fn build(dump_path: &Path, new_dir: &Path, min_index: u64) -> Result<Built, SnapshotError> {
    if new_dir.exists() {
        std::fs::remove_dir_all(new_dir).map_err(io("remove", new_dir))?;
    }
    // Building needs few frames: checkpoints keep the dirty ones few.
    let build_pool = PoolConfig::with_megabytes(16, Policy::Lru2);
    let (storage, _) = Storage::open(new_dir, build_pool)?;
    let mut state = KvState::create(storage.pool().clone(), 0)?;
    let checkpoint = |state: &KvState<BTree<BufferPool>>| -> Result<(), StorageError> {
        let pending = storage.begin_checkpoint(vec![state.shard_meta()])?;
        storage.write_checkpoint(pending, None).map(|_| ())
    };
    let info = state.snapshot_in(dump_path, &mut |state| {
        if storage.pool().dirty_frames() > storage.pool().frames() / 4 {
            checkpoint(state)?;
        }
        Ok(())
    })?;
    if info.shard != 0 || info.applied_index < min_index {
        return Err(SnapshotError::WrongDump {
            shard: info.shard,
            index: info.applied_index,
            wanted: min_index,
        });
    }
    checkpoint(&state)?;
    let _ = std::fs::remove_file(dump_path);
    Ok(Built {
        new_dir: new_dir.to_path_buf(),
        applied_index: info.applied_index,
    })
}

/// Puts the storage in `new_dir` in place of the one in `storage_dir` and
/// opens it. Once the second rename is done the swap stands: a failure to
/// sync the directory or remove the old storage is only logged (`settle_install`
/// removes it at the next start).
fn swap_and_open(
    storage_dir: &Path,
    new_dir: &Path,
    pool: PoolConfig,
) -> Result<(Arc<Storage>, KvState<BTree<BufferPool>>), SnapshotError> {
    let old = storage_dir.with_extension("old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
    }
    let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(io("rename", from));
    rename(storage_dir, &old)?;
    rename(new_dir, storage_dir)?;
    if let Some(parent) = storage_dir.parent() {
        if let Err(error) = std::fs::File::open(parent).and_then(|dir| dir.sync_all()) {
            warn!(%error, dir = %parent.display(), "syncing the data directory after a snapshot install failed");
        }
    }
    if let Err(error) = std::fs::remove_dir_all(&old) {
        warn!(%error, dir = %old.display(), "removing the replaced storage failed");
    }
    let (storage, _) = Storage::open(storage_dir, pool)?;
    let meta = storage.meta().shard(0).ok_or(SnapshotError::NoShard)?;
    let state = KvState::open(storage.pool().clone(), meta);
    Ok((storage, state))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::net::TcpListener;

    use super::*;
    use crate::cluster::fault::{Fault, FaultFilter};
    use crate::cluster::members::MemberBook;
    use crate::cluster::rpc::RpcSettings;

    #[tokio::test]
    async fn a_follower_cut_off_from_the_leader_fetches_nothing() {
        let leader_socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let leader_addr = leader_socket.local_addr().expect("address").to_string();
        let faults = FaultFilter::default();
        faults.set(
            1,
            Fault {
                drop: true,
                ..Fault::default()
            },
        );
        let peers = PeerClient::new(
            MemberBook::new(BTreeMap::from([(1, leader_addr)])),
            faults,
            RpcSettings::default(),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let job = FetchJob {
            leader: 1,
            peers,
            min_index: 10,
            storage_dir: dir.path().join("storage"),
            snapshot_dir: dir.path().join("snapshots"),
        };
        let result = job.run().await;
        match result {
            Err(SnapshotError::Rpc(RpcError::Cut { peer: 1, .. })) => {}
            other => panic!("a cut-off fetch ended as {other:?}"),
        }
        let connected =
            tokio::time::timeout(Duration::from_millis(200), leader_socket.accept()).await;
        assert!(connected.is_err(), "the cut-off fetch reached the leader");
        assert!(
            !dir.path().join("snapshots").exists(),
            "nothing is written for a fetch that never left"
        );
    }
}
