//! The `RaftReplica` actor: drives one Raft core for one group and owns the
//! KV state machine. It ticks the core on a timer, persists each ready
//! through the `WalWriter` (the WAL is the Raft log; group commit batches
//! every record handed to it), applies committed entries, and answers each
//! write once its entry is applied and each read once the applied index
//! reaches its read index.
//!
//! Ordering rules it keeps (see the core's module docs for the contract):
//! - Readies are persisted in order, at most `PERSIST_DEPTH_MAX` (two) in
//!   the WAL writer's hands at once: the next one is written while the
//!   current one syncs, so the disk never waits for this actor. Proposals
//!   that arrive meanwhile pile up in the core and go out together in the
//!   next ready, and a new ready is taken only once the mailbox is
//!   drained, so requests that arrive together share one: that is where
//!   batching comes from. Readies are finished (messages sent, the core
//!   advanced) in the order they were taken, whatever order the writer's
//!   answers are seen in; a ready holding a snapshot waits for an empty
//!   pipeline.
//! - A ready's committed entries are applied, and their writes answered, as
//!   soon as it is taken: the core hands out only entries already durable,
//!   so they need not wait for the ready's own new entries to be written.
//! - A follower or candidate sends a ready's messages only once the ready
//!   is durable (votes and acknowledgements promise what is on disk). A
//!   leader sends its AppendEntries before its own write finishes (Raft
//!   thesis §10.2.1): its own entries count towards a commit only once
//!   durable, so the leader's and the followers' fsyncs overlap. The core
//!   says which (`Ready::send_before_persist`).
//! - A hard state that only moves the commit index is not worth an fsync
//!   of its own, nor bytes in every sync: it rides along with entries at
//!   most once a tick, or is written on its own when the replica is idle. A commit index found lower at restart is learned
//!   again from the leader (a single member recommits with its first entry).
//!
//! - The KV state is a B+ tree in the node's storage. Checkpoints (begun
//!   here between two applied entries, written by the `BufferPoolManager`)
//!   make it durable up to an index; the log is then compacted up to a
//!   margin below it and WAL segments before that are deleted (`storage`).
//!   Entries at or below the checkpointed index are not applied again
//!   after a restart.
//! - A follower too far behind gets a snapshot: Raft carries only its
//!   position; the state itself is streamed from the leader over TCP in
//!   chunks, built into a fresh storage and swapped in (`snapshot`).
//!
//! Peers' messages come in as `Step`; outgoing ones go to an `Outbox`
//! recipient (the `Transport` in a node).

mod machine;
mod measure;
mod members;
mod persist;
mod snapshot;
mod storage;
mod transfer;
mod waiting;
pub mod wal_log;

pub use machine::{Applied, KvRead, StateMachine};
pub use members::{
    read_removed_marker, ChangeMembership, MemberChange, MembershipError, LEARNER_CATCH_UP_ENTRIES,
    REMOVED_MARKER,
};
pub use snapshot::{
    dump_path, settle_install, PrepareSnapshot, SnapshotDump, SnapshotError, SNAPSHOT_CHUNK_BYTES,
};
pub use storage::CheckpointPolicy;
pub use transfer::{TransferError, TransferLeadership, Transferred};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use harmonydb_protocol::{Consistency, Staleness};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use self::measure::{Contacts, Figures};
use self::persist::HardStates;
use self::waiting::{Reply, Settled, Waiting};
use self::wal_log::{decode_entry, records_for};
use crate::cluster::fault::FaultFilter;
use crate::cluster::members::MemberBook;
use crate::cluster::messages::{Outbox, Step};
use crate::cluster::rpc::{PeerClient, RpcSettings};
use crate::disk::DiskMonitor;
use crate::kv::{
    BeginShutdown, KvAnswer, KvCommand, KvError, KvOp, KvReply, KvRequest, KvState, NodeFault,
    WriteOutcome,
};
use crate::observe::{EntryTraces, Envelope, Handling};
use crate::storage::btree::BTree;
use crate::storage::buffer::{BufferPool, PoolConfig};
use crate::storage::checkpoint::Storage;
use crate::storage::manager::{
    BufferPoolManager, CheckpointDue, CheckpointReason, RegisterReplica,
};
use crate::wal::{Append, DeleteBelow, ReadEntries, WalError, WalWriter};
use harmonydb_raft::{
    EntryPayload, LogRead, Message as RaftMessage, MessageBody, NodeId, Raft, RaftError, Ready,
    Role, Status,
};

/// Most commands applied in one batch: the pool's room for them is checked
/// before each batch, and a checkpoint that is due begins between batches.
const APPLY_BATCH_MAX: usize = 16;

/// How long applying waits before trying again after the pool had no frame.
const APPLY_RETRY: Duration = Duration::from_millis(20);

/// Least time between two handovers a leader with a full disk starts (so
/// nodes whose disks are all full don't pass leadership round and round).
const DISK_FULL_HANDOVER_INTERVAL: Duration = Duration::from_secs(10);

/// Asks for the replica's status.
pub struct GetStatus {
    /// Mailbox accounting and the asking request's span.
    pub envelope: Envelope,
}

impl GetStatus {
    /// A status request on behalf of the current span.
    pub fn new() -> GetStatus {
        GetStatus {
            envelope: Envelope::new("RaftReplica", "GetStatus"),
        }
    }
}

impl Default for GetStatus {
    fn default() -> Self {
        GetStatus::new()
    }
}

impl actix::Message for GetStatus {
    type Result = ReplicaStatus;
}

/// The core's status plus what only the replica knows.
#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    /// The consensus core's view.
    pub raft: Status,
    /// How long ago this member last heard from a leader (None: never, or it leads).
    pub leader_contact: Option<Duration>,
    /// Why the replica stopped taking requests, if it did.
    pub failed: Option<String>,
    /// The index the log is compacted up to.
    pub snapshot_index: u64,
    /// The last index applied to the state machine (it can run ahead of
    /// the core's after a restart, and behind it while a snapshot is fetched).
    pub applied_index: u64,
    /// The leader's commit index as far as this member knows: its own on
    /// the leader, else the highest the current term's leader sent it
    /// (its own commit index can be lower while its log catches up).
    pub leader_commit: u64,
    /// How long ago this member last heard anything from each node.
    pub last_heard: BTreeMap<NodeId, Duration>,
    /// The core's election timeout in real time: a leader not heard from
    /// for this long is presumed gone, and so is a member a leader has
    /// not heard from.
    pub election_timeout: Duration,
    /// Why the replica refuses requests now (removed, failed storage,
    /// shutting down), if it does.
    pub refusing: Option<KvError>,
}

/// Internal: take the next ready now that the mailbox is drained.
struct DriveNow;

impl actix::Message for DriveNow {
    type Result = ();
}

/// Internal: the batch of records handed to the WAL writer as `seq` is
/// durable (or failed).
struct Persisted {
    seq: u64,
    result: Result<(), WalError>,
}

/// The error a member logs when a leader's append conflicts with an entry
/// it holds as committed (the nemesis looks for it).
pub const COMMITTED_ENTRY_CONFLICT: &str =
    "a leader's log conflicts with an entry committed here: a committed entry was lost";

/// At most one log line per this interval about refused conflicting appends.
const COMMITTED_CONFLICT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Most batches of records in the WAL writer's hands at once: one syncing
/// and the next one written meanwhile. More would only split the batches
/// that group commit makes.
const PERSIST_DEPTH_MAX: usize = 2;

/// A batch of records handed to the WAL writer, waiting to be finished in
/// the order handed over.
struct InFlight {
    seq: u64,
    /// The ready the records came from and whether its messages are still
    /// to be sent; `None` for records of their own (a hard state, a
    /// compaction).
    ready: Option<(Ready, bool)>,
    /// The writer's answer, once seen.
    result: Option<Result<(), WalError>>,
}

impl actix::Message for Persisted {
    type Result = ();
}

/// Committed commands to apply together, with the terms of their entries.
struct Batch {
    commands: Vec<(u64, KvCommand)>,
    terms: HashMap<u64, u64>,
}

/// A broken promise of the core to the replica: the replica stops rather
/// than apply out of order.
#[derive(Debug, thiserror::Error)]
enum ReplicaInvariant {
    /// A committed entry the state has not applied is gone from the log.
    #[error("committed entry {index} is not in the log (the log starts after {log_start})")]
    EntryMissing { index: u64, log_start: u64 },
}

/// Where a replica keeps its state machine, and what it needs to
/// checkpoint it, compact its log and install snapshots.
pub struct ReplicaStorage {
    /// The node's storage (page file, buffer pool).
    pub storage: Arc<Storage>,
    /// The shard's state, opened from the storage's last checkpoint.
    pub state: KvState<BTree<BufferPool>>,
    /// The background checkpointer.
    pub manager: Addr<BufferPoolManager>,
    /// The storage directory (a snapshot is installed by replacing it).
    pub storage_dir: PathBuf,
    /// Where snapshot dumps are written and received.
    pub snapshot_dir: PathBuf,
    /// The pool's size and policy, for a storage opened after an install.
    pub pool: PoolConfig,
    /// Where members are (to fetch a snapshot from the leader); the
    /// replica keeps it current from the configuration in force.
    pub members: MemberBook,
    /// When checkpoints are due and how much log they leave.
    pub policy: CheckpointPolicy,
}

/// One member of one Raft group, with its KV state machine.
pub struct RaftReplica {
    raft: Raft,
    wal: Addr<WalWriter>,
    /// The WAL's next index (where the next entry record goes).
    wal_next_index: u64,
    outbox: Recipient<Outbox>,
    state: KvState<BTree<BufferPool>>,
    storage: Arc<Storage>,
    manager: Addr<BufferPoolManager>,
    storage_dir: PathBuf,
    snapshot_dir: PathBuf,
    pool_config: PoolConfig,
    book: MemberBook,
    membership: members::Membership,
    /// Checkpoints and compaction (see `storage`).
    checkpoints: storage::Checkpoints,
    /// The highest committed index the core has handed out; the state
    /// applies up to it, entry by entry, as the pool has room.
    apply_target: u64,
    /// Snapshots: the state fetched from the leader, dumps for followers.
    snapshots: snapshot::Snapshots,
    tick_interval: Duration,
    /// Batches of records handed to the WAL writer and not finished yet,
    /// oldest first (at most `PERSIST_DEPTH_MAX`).
    in_flight: VecDeque<InFlight>,
    /// Sequence number of the next batch handed to the writer.
    next_persist_seq: u64,
    /// Appends the core refused for conflicting with a committed entry,
    /// as last reported.
    committed_conflicts_seen: u64,
    /// When such a refusal was last logged.
    committed_conflict_logged: Option<Instant>,
    /// The hard state as handed to the WAL, and a commit-only one waiting.
    hard_states: HardStates,
    /// A drive is scheduled for when the mailbox is drained.
    drive_scheduled: bool,
    /// Writes and reads waiting for the log or the state.
    waiting: Waiting,
    /// The span of a traced request whose entries go out with the next
    /// ready: its WAL append and the messages to followers join its trace.
    batch_span: Option<tracing::Span>,
    /// A traced write was proposed here once: from then on, messages
    /// carry their entries' trace contexts.
    traced_writes_seen: bool,
    /// The node's disk, if it is watched: a leader whose disk is full
    /// hands leadership over.
    disk: Option<DiskMonitor>,
    /// When this member last handed leadership over for a full disk.
    disk_handover_at: Option<Instant>,
    /// Leadership transfers waiting for their outcome.
    transfers: transfer::Transfers,
    /// The node's client to other nodes (snapshot fetches).
    peers: PeerClient,
    /// Why the replica stopped serving, if it did.
    failed: Option<NodeFault>,
    closing: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    /// When each node and a leader were last heard, the leader's commit
    /// as heard, heartbeat round trips.
    contacts: Contacts,
    /// Leader as last reported in metrics, to count changes.
    reported_leader: NodeId,
    /// The known leader (0 = none), readable without a message.
    leader_hint: Arc<AtomicU64>,
    /// When the core's clock last caught up with real time.
    ticked_at: Instant,
    /// The last term in which this member acknowledged a write as leader
    /// (logged once per term, so tests can check no two members did so in one term).
    acknowledged_term: u64,
}

impl RaftReplica {
    /// A replica over a core restored from the WAL (see `wal_log::load`)
    /// whose next WAL record index is `wal_next_index`, and a state opened
    /// at its last checkpoint; committed entries after that are applied as
    /// the core hands them out.
    pub fn new(
        raft: Raft,
        wal: Addr<WalWriter>,
        wal_next_index: u64,
        outbox: Recipient<Outbox>,
        tick_interval: Duration,
        storage: ReplicaStorage,
    ) -> Self {
        let book_for_peers = storage.members.clone();
        RaftReplica {
            hard_states: HardStates::new(raft.hard_state()),
            raft,
            wal,
            wal_next_index,
            outbox,
            checkpoints: storage::Checkpoints::new(storage.state.applied_index(), storage.policy),
            state: storage.state,
            storage: storage.storage,
            manager: storage.manager,
            storage_dir: storage.storage_dir,
            snapshot_dir: storage.snapshot_dir,
            pool_config: storage.pool,
            book: storage.members,
            membership: members::Membership::new(),
            apply_target: 0,
            snapshots: snapshot::Snapshots::default(),
            tick_interval,
            in_flight: VecDeque::new(),
            next_persist_seq: 0,
            committed_conflicts_seen: 0,
            committed_conflict_logged: None,
            drive_scheduled: false,
            waiting: Waiting::default(),
            batch_span: None,
            traced_writes_seen: false,
            disk: None,
            disk_handover_at: None,
            transfers: transfer::Transfers::default(),
            // A replica of its own until `with_peers` hands it the node's.
            peers: PeerClient::new(
                book_for_peers,
                FaultFilter::default(),
                RpcSettings::default(),
            ),
            failed: None,
            closing: false,
            shutdown_waiters: Vec::new(),
            contacts: Contacts::default(),
            reported_leader: 0,
            leader_hint: Arc::new(AtomicU64::new(0)),
            acknowledged_term: 0,
            ticked_at: Instant::now(),
        }
    }

    /// Asks other nodes (a snapshot fetch) through `peers`, the node's one
    /// client, which obeys its timeouts and fault filter.
    pub fn with_peers(mut self, peers: PeerClient) -> Self {
        self.peers = peers;
        self
    }

    /// Watches `disk`: as leader, this member hands leadership over while
    /// the disk is full, and serves reads while its WAL waits for space if
    /// it is the only voter.
    pub fn with_disk(mut self, disk: DiskMonitor) -> Self {
        self.disk = Some(disk);
        self
    }

    /// The leader this replica knows of (0 = none), kept current as it
    /// changes, so front doors can route requests without asking the actor.
    pub fn leader_hint(&self) -> Arc<AtomicU64> {
        self.leader_hint.clone()
    }

    /// Ticks the core for every tick interval of real time since the last
    /// catch-up. The core's clock is its ticks; if the process stood still
    /// (SIGSTOP, a paused VM, a starved thread), a leader that counted
    /// ticks only as its timer fired would trust a lease that expired in
    /// real time while the others elected a new leader, and serve a stale
    /// read. Catching up before every request closes that window whatever
    /// order the timer and the request are handled in after the stall.
    fn catch_up_ticks(&mut self) {
        let interval_nanos = self.tick_interval.as_nanos().max(1);
        let due = self.ticked_at.elapsed().as_nanos() / interval_nanos;
        if due == 0 {
            return;
        }
        // Past twice the longest election timeout every timer has fired;
        // more ticks would only queue more heartbeats.
        let due_max = 2 * u128::from(self.raft.election_timeout_ticks()) + 2;
        if due > due_max {
            for _ in 0..due_max {
                self.raft.tick();
            }
            self.ticked_at = Instant::now();
        } else {
            for _ in 0..due {
                self.raft.tick();
            }
            let caught_up = u32::try_from(due).unwrap_or(u32::MAX);
            self.ticked_at += self.tick_interval * caught_up;
        }
    }

    /// Takes the next ready, if the pipeline has room, and persists it.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        if self.failed.is_some() || self.in_flight.len() >= PERSIST_DEPTH_MAX {
            return;
        }
        // A compaction's WAL records go out between readies (in the WAL's
        // order, so after the ones in flight).
        if self.compact(ctx) && self.in_flight.len() >= PERSIST_DEPTH_MAX {
            return;
        }
        if !self.raft.has_ready() {
            return;
        }
        // A snapshot replaces the log and the state: installed with nothing
        // else in flight.
        if self.raft.snapshot_pending() && !self.in_flight.is_empty() {
            return;
        }
        let mut ready = self.raft.ready();
        self.settle(&mut ready);
        self.read_back(std::mem::take(&mut ready.log_reads), ctx);
        if ready.snapshot.is_some() {
            self.apply_committed(ctx);
            if self.failed.is_some() {
                return;
            }
            // Raft's snapshot is only a position; the state follows out of band.
            self.persist_snapshot(ready, ctx);
            return;
        }
        let hard_state = self.hard_states.for_ready(
            ready.hard_state,
            !ready.entries.is_empty(),
            self.tick_interval,
        );
        let records = records_for(&ready.entries, hard_state, self.wal_next_index);
        if let Some(last) = ready.entries.last() {
            self.wal_next_index = last.index + 1;
        }
        let span = self.batch_span.take().unwrap_or_else(tracing::Span::none);
        let messages_sent = ready.send_before_persist && !ready.messages.is_empty();
        if messages_sent {
            let messages = std::mem::take(&mut ready.messages);
            self.send_in(messages, span.clone());
        }
        if records.is_empty() {
            self.apply_committed(ctx);
            if self.failed.is_some() {
                return;
            }
            // Nothing to write, but its messages may promise what the ones
            // in flight write (an acknowledgement of entries a repeated
            // append brought again): it joins the queue already done, and is
            // finished at once if nothing is ahead of it.
            self.track(Some((ready, !messages_sent)), Some(Ok(())));
            self.finish_persisted(ctx);
            return;
        }
        self.persist_in(records, Some((ready, !messages_sent)), span, ctx);
        // Committed entries are durable already (the core hands out only
        // persisted ones): they are applied and answered while the WAL
        // writes this ready's records, not before it is handed them.
        self.apply_committed(ctx);
        // The pipeline has room for the next ready: what arrived while this
        // one was taken goes to the writer while it syncs this one.
        self.schedule_drive(ctx);
    }

    /// Drives once the messages already in the mailbox are handled, so
    /// requests and peer messages that arrive together share one ready (and
    /// one WAL sync) instead of the first going out alone.
    fn schedule_drive(&mut self, ctx: &mut Context<Self>) {
        if !self.drive_scheduled {
            self.drive_scheduled = true;
            ctx.notify(DriveNow);
        }
    }

    fn persist(
        &mut self,
        records: Vec<crate::wal::WalEntry>,
        ready: Option<(Ready, bool)>,
        ctx: &mut Context<Self>,
    ) {
        self.persist_in(records, ready, tracing::Span::none(), ctx);
    }

    /// Hands records to the WAL writer on behalf of `span` (a traced write
    /// whose entries they carry, or none).
    fn persist_in(
        &mut self,
        records: Vec<crate::wal::WalEntry>,
        ready: Option<(Ready, bool)>,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        let seq = self.track(ready, None);
        let started = Instant::now();
        let append = self.wal.send(Append::with_span(records, span));
        ctx.spawn(append.into_actor(self).map(move |answer, _, ctx| {
            metrics::histogram!("harmonydb_raft_append_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            let result = answer.unwrap_or(Err(WalError::Stopped)).map(|_| ());
            ctx.notify(Persisted { seq, result });
        }));
    }

    /// Queues a batch to be finished in order (`result` already in for one
    /// with nothing to write); returns its sequence number.
    fn track(&mut self, ready: Option<(Ready, bool)>, result: Option<Result<(), WalError>>) -> u64 {
        let seq = self.next_persist_seq;
        self.next_persist_seq += 1;
        self.in_flight.push_back(InFlight { seq, ready, result });
        seq
    }

    /// Finishes, in the order they were queued, the batches whose answers
    /// are in, then takes the next ready.
    fn finish_persisted(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight.front().is_some_and(|f| f.result.is_some()) {
            let Some(InFlight {
                ready,
                result: Some(result),
                ..
            }) = self.in_flight.pop_front()
            else {
                break;
            };
            if self.failed.is_some() {
                continue;
            }
            match (result, ready) {
                (Ok(()), Some((ready, send_messages))) => self.finish(ready, send_messages, ctx),
                (Ok(()), None) => self.delete_compacted_segments(),
                (Err(error), _) => {
                    warn!(%error, "persisting Raft state failed");
                    self.fail(NodeFault::new("persisting Raft state", error));
                }
            }
        }
        self.drive(ctx);
    }

    fn send(&mut self, messages: Vec<RaftMessage>) {
        self.send_in(messages, tracing::Span::none());
    }

    /// Sends messages to peers on behalf of `span`.
    fn send_in(&mut self, messages: Vec<RaftMessage>, span: tracing::Span) {
        let now = Instant::now();
        for message in &messages {
            if let MessageBody::Heartbeat { seq, .. } = message.body {
                self.contacts.heartbeat_sent(message.to, seq, now);
            }
        }
        let traces = self.entry_traces(&messages);
        // Over the outbox's bound the messages are dropped: Raft retries.
        let outbox = Outbox::with_span(messages, span).with_traces(traces);
        if let Err(error) = self.outbox.try_send(outbox) {
            let Outbox { messages, .. } = match error {
                SendError::Full(outbox) | SendError::Closed(outbox) => outbox,
            };
            for message in &messages {
                metrics::counter!("harmonydb_transport_messages_dropped_total", "peer" => message.to.to_string())
                    .increment(1);
            }
        }
    }

    /// The trace contexts of the traced writes this member proposed whose
    /// entries `messages` carry. Nothing is looked up until a traced write
    /// was seen. (Not `tracing::enabled!`: with per-layer filters that
    /// query swallows the next log event, tokio-rs/tracing#2519.)
    fn entry_traces(&self, messages: &[RaftMessage]) -> EntryTraces {
        let mut traces = EntryTraces::new();
        if !self.traced_writes_seen {
            return traces;
        }
        for message in messages {
            if let MessageBody::AppendEntries { entries, .. } = &message.body {
                for entry in entries {
                    if traces.contains_key(&entry.index) {
                        continue;
                    }
                    let traced = self
                        .waiting
                        .write(entry.index)
                        .and_then(|write| crate::observe::traceparent(&write.span));
                    if let Some(traceparent) = traced {
                        traces.insert(entry.index, traceparent);
                    }
                }
            }
        }
        traces
    }

    /// Everything after persistence: send (unless already sent), advance.
    fn finish(&mut self, mut ready: Ready, send_messages: bool, ctx: &mut Context<Self>) {
        if send_messages && !ready.messages.is_empty() {
            let messages = std::mem::take(&mut ready.messages);
            self.send(messages);
        }
        self.raft.advance(&ready);
        // Applied first: writes committed before a configuration that
        // removes this node get their real answers.
        self.apply_committed(ctx);
        self.check_membership();
        self.report_metrics();
        self.maybe_finish_shutdown();
    }

    /// Reads back from the WAL the entries the core evicted from memory and
    /// a follower needs, and hands them to the core (`None` if they could
    /// not be read: then the core sends a snapshot if one covers them, or
    /// asks again later).
    fn read_back(&mut self, reads: Vec<LogRead>, ctx: &mut Context<Self>) {
        for read in reads {
            let asked = self.wal.send(ReadEntries {
                from: read.from,
                to: read.to,
                count_max: read.count_max,
                size_max_bytes: read.size_max_bytes,
            });
            ctx.spawn(asked.into_actor(self).map(move |answer, replica, ctx| {
                let entries = match answer {
                    Ok(Ok(records)) => records
                        .iter()
                        .map(|r| decode_entry(r.index, &r.payload))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                let entries = entries
                    .inspect_err(|error| {
                        warn!(peer = read.peer, from = read.from, %error, "could not read entries back from the WAL");
                    })
                    .ok();
                replica.raft.log_read_done(read.peer, read.from, entries);
                replica.schedule_drive(ctx);
            }));
        }
    }

    /// Takes what a ready settles: the committed entries to apply (up to
    /// `apply_target`; the core keeps them in its log until compaction,
    /// which never passes the applied state), dropped proposals, confirmed
    /// and dropped reads.
    fn settle(&mut self, ready: &mut Ready) {
        if let Some(last) = ready.committed_entries.last() {
            self.apply_target = self.apply_target.max(last.index);
        }
        for entry in &ready.committed_entries {
            if let Some(write) = self.waiting.write(entry.index) {
                metrics::histogram!("harmonydb_raft_commit_duration_seconds")
                    .record(write.proposed.elapsed().as_secs_f64());
            }
        }
        ready.committed_entries.clear();
        for dropped in &ready.dropped_proposals {
            if self
                .waiting
                .write_dropped(dropped.index, kv_error(dropped.reason.clone()))
            {
                metrics::counter!("harmonydb_raft_proposals_failed_total").increment(1);
            }
        }
        for read in &ready.read_states {
            self.waiting.read_confirmed(read.request_id, read.index);
        }
        for dropped in &ready.dropped_reads {
            self.waiting
                .read_dropped(dropped.request_id, kv_error(dropped.reason.clone()));
        }
    }

    /// Applies committed entries up to `apply_target`, in batches of
    /// commands, answering the writes they settle. It stops, to resume
    /// later, while the state waits for a snapshot, while a checkpoint
    /// being written leaves too few frames, or when the pool has no frame;
    /// a checkpoint is begun between two batches whenever one is due.
    fn apply_committed(&mut self, ctx: &mut Context<Self>) {
        while self.failed.is_none() && self.state.applied_index() < self.apply_target {
            if self.snapshots.state_behind(self.state.applied_index()) {
                break;
            }
            self.maybe_checkpoint(None, ctx);
            if !self.room_to_apply() {
                break;
            }
            let Some(batch) = self.next_batch() else {
                return;
            };
            if batch.commands.is_empty() {
                continue;
            }
            // A traced write's apply (and its answer) join its trace.
            let span = batch
                .commands
                .iter()
                .find_map(|(index, _)| {
                    self.waiting
                        .write(*index)
                        .filter(|w| !w.span.is_disabled())
                })
                .map_or_else(tracing::Span::none, |write| {
                    let first = batch.commands.first().map_or(0, |(index, _)| *index);
                    tracing::info_span!(target: "harmonydb_trace", parent: &write.span, "RaftReplica apply", index = first)
                });
            let applied = {
                let _entered = span.enter();
                StateMachine::apply(&mut self.state, batch.commands)
            };
            for (index, outcome) in applied.outcomes {
                let term = batch.terms.get(&index).copied().unwrap_or(0);
                self.answer_write(index, term, outcome.map_err(KvError::from));
            }
            match applied.fault {
                None => {}
                Some((_, fault)) if fault.is_transient() => {
                    // No frame in the pool: the entry is not applied; a
                    // checkpoint makes room and applying resumes after it.
                    self.maybe_checkpoint(Some(CheckpointReason::MemoryPressure), ctx);
                    ctx.run_later(APPLY_RETRY, |replica, ctx| replica.apply_committed(ctx));
                    break;
                }
                Some((index, fault)) => {
                    // The tree may be half changed: stop, and recover from
                    // the checkpoint and the log at restart.
                    self.fail(NodeFault::new(format!("applying entry {index}"), fault));
                    return;
                }
            }
        }
        // What the state holds now need not stay in the core's memory.
        self.raft.release_applied(self.state.applied_index());
        self.serve_reads();
        self.maybe_finish_shutdown();
    }

    /// The commands at the indexes after the applied one, up to
    /// `APPLY_BATCH_MAX` of them; entries before the first command that
    /// carry none (a no-op, a configuration) are counted as applied, and
    /// one that does not decode is answered as corrupt. None once the
    /// replica failed (a committed entry missing from the log).
    fn next_batch(&mut self) -> Option<Batch> {
        let mut batch = Batch {
            commands: Vec::new(),
            terms: HashMap::new(),
        };
        let mut index = self.state.applied_index() + 1;
        while index <= self.apply_target && batch.commands.len() < APPLY_BATCH_MAX {
            let Some(entry) = self.raft.entry(index) else {
                self.fail(NodeFault::new(
                    format!("applying entry {index}"),
                    ReplicaInvariant::EntryMissing {
                        index,
                        log_start: self.raft.snapshot_index(),
                    },
                ));
                return None;
            };
            let term = entry.term;
            let decoded = match &entry.payload {
                EntryPayload::Command(bytes) => {
                    Some(<KvState<BTree<BufferPool>> as StateMachine>::decode(bytes))
                }
                _ => None,
            };
            match decoded {
                Some(Ok(command)) => {
                    batch.commands.push((index, command));
                    batch.terms.insert(index, term);
                }
                // Batches hold consecutive commands: the entry waits for the next.
                _ if !batch.commands.is_empty() => break,
                None => StateMachine::skip_to(&mut self.state, index),
                Some(Err(error)) => {
                    error!(index, %error, "committed entry is not a KV command");
                    StateMachine::skip_to(&mut self.state, index);
                    let reason = error.to_string();
                    self.answer_write(index, term, Err(KvError::CorruptEntry { index, reason }));
                }
            }
            index += 1;
        }
        Some(batch)
    }

    /// Answers the write proposed at `index`, if this member is waiting for it.
    fn answer_write(&mut self, index: u64, term: u64, outcome: Result<WriteOutcome, KvError>) {
        let settled = self.waiting.write_applied(index, term, outcome, || {
            kv_error(RaftError::ProposalDropped)
        });
        match settled {
            Some(Settled::Applied) => {
                metrics::counter!("harmonydb_raft_proposals_committed_total").increment(1);
                if term > self.acknowledged_term {
                    // Only a leader proposes, so the entry's term is the one
                    // this member led in when it took the write.
                    self.acknowledged_term = term;
                    info!(term, index, "acknowledging writes as leader of this term");
                }
            }
            Some(Settled::Replaced) => {
                metrics::counter!("harmonydb_raft_proposals_failed_total").increment(1);
            }
            None => {}
        }
    }

    /// Whether requests are taken: not after a storage failure or once closing.
    fn serving(&self) -> Result<(), KvError> {
        if let Some(index) = self.book.removed_at() {
            return Err(KvError::Removed { index });
        }
        if let Some(fault) = &self.failed {
            return Err(KvError::Storage(fault.clone()));
        }
        if self.closing {
            return Err(KvError::ShuttingDown);
        }
        Ok(())
    }

    fn read(&mut self, op: &KvRead) -> Result<KvReply, KvError> {
        match self.state.read(op) {
            Ok(answer) => answer.map_err(KvError::from),
            Err(fault) if fault.is_transient() => Err(KvError::Overloaded),
            Err(fault) => {
                // A page that can't be read correctly: serve nothing rather
                // than risk serving wrong data. (No free frame is answered
                // as overloaded.)
                let fault = NodeFault::new("reading", fault);
                self.fail(fault.clone());
                Err(KvError::Storage(fault))
            }
        }
    }

    /// Answers reads whose index the state has applied.
    fn serve_reads(&mut self) {
        for (read, reply) in self.waiting.reads_due(self.state.applied_index()) {
            let answer = self.read(&read).map(KvAnswer::fresh);
            let _ = reply.send(answer);
        }
    }

    fn staleness(&self) -> Staleness {
        let status = self.raft.status();
        Staleness {
            node_id: status.id,
            applied_index: self.state.applied_index(),
            commit_index: status.commit,
            leader_contact_ms: if status.role == Role::Leader {
                Some(0)
            } else {
                self.contacts
                    .since_leader()
                    .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            },
        }
    }

    fn handle_read(&mut self, op: KvRead, consistency: Consistency, reply: Reply) {
        if consistency != Consistency::Stale && self.sole_voter_waiting_for_space() {
            // No ready can go out while the WAL waits for space, and a
            // ReadIndex needs one; but the only voter acknowledged every
            // write it applied and can acknowledge none now, so what it has
            // applied is what a linearizable read must see.
            let _ = reply.send(self.read(&op).map(KvAnswer::fresh));
            return;
        }
        if consistency == Consistency::Stale {
            let answer = self.read(&op).map(|reply| KvAnswer {
                reply,
                staleness: Some(self.staleness()),
            });
            let _ = reply.send(answer);
            return;
        }
        let id = self.waiting.read_id();
        let mut confirmed = Err(RaftError::LeaseNotHeld);
        if consistency == Consistency::Lease {
            confirmed = self.raft.read_lease(id);
        }
        // Without a lease the read still gets a linearizable answer, by ReadIndex.
        if confirmed == Err(RaftError::LeaseNotHeld) {
            confirmed = self.raft.read_index(id);
        }
        match confirmed {
            Ok(()) => {
                self.waiting.read_confirming(id, op, reply);
            }
            Err(error) => {
                let _ = reply.send(Err(kv_error(error)));
            }
        }
    }

    fn handle_write(&mut self, command: KvCommand, reply: Reply) {
        match self.raft.propose(command.encode()) {
            Ok(index) => {
                let term = self.raft.term();
                let span = tracing::Span::current();
                self.traced_writes_seen |= !span.is_disabled();
                if !span.is_disabled() && self.batch_span.is_none() {
                    self.batch_span = Some(span.clone());
                }
                self.waiting.write_proposed(index, term, reply, span);
            }
            Err(error) => {
                let _ = reply.send(Err(kv_error(error)));
            }
        }
    }

    /// Whether this member leads a group it is the only voter of, and its
    /// WAL is waiting for space with a ready in hand.
    fn sole_voter_waiting_for_space(&self) -> bool {
        !self.in_flight.is_empty()
            && self.disk.as_ref().is_some_and(DiskMonitor::wal_blocked)
            && self.raft.role() == Role::Leader
            && self.raft.membership().0.voters.len() == 1
    }

    /// A leader whose disk is full (under the floor) takes no writes, so it
    /// hands leadership to the most caught-up other voter, at most once per
    /// `DISK_FULL_HANDOVER_INTERVAL`. (A leader whose WAL is blocked can't
    /// send anything: it falls silent and the others elect a leader.)
    fn hand_over_if_disk_full(&mut self, ctx: &mut Context<Self>) {
        let Some(full) = self.disk.as_ref().and_then(DiskMonitor::full) else {
            return;
        };
        if self.raft.role() != Role::Leader
            || self
                .disk_handover_at
                .is_some_and(|at| at.elapsed() < DISK_FULL_HANDOVER_INTERVAL)
        {
            return;
        }
        self.disk_handover_at = Some(Instant::now());
        let status = self.raft.status();
        let Some(target) = most_caught_up_other_voter(&status) else {
            return;
        };
        if self.raft.transfer_leadership(target).is_ok() {
            warn!(%full, target, "disk full: handing leadership over");
            self.schedule_drive(ctx);
        }
    }

    fn fail(&mut self, fault: NodeFault) {
        error!(reason = %fault, "Raft replica stopped accepting requests");
        // Whether these writes reached a quorum is unknown.
        let refusal = || KvError::Storage(fault.clone());
        self.waiting.answer_all(refusal, refusal);
        self.failed = Some(fault);
        self.maybe_finish_shutdown();
    }

    fn maybe_finish_shutdown(&mut self) {
        if self.closing && self.waiting.writes_waiting() == 0 {
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Publishes a change of leader at once (front doors route by the
    /// hint: a stale one sends requests to a node that no longer leads).
    fn note_leader(&mut self) {
        let leader = self.raft.leader();
        if leader != self.reported_leader {
            if leader != 0 {
                metrics::counter!("harmonydb_raft_leader_changes_total").increment(1);
                info!(leader, term = self.raft.term(), "leader elected");
            }
            self.reported_leader = leader;
            self.leader_hint.store(leader, Ordering::Relaxed);
        }
        self.settle_transfers();
    }

    fn report_metrics(&mut self) {
        self.note_leader();
        // Plain accessors: `status()` would clone the configuration on every ready.
        let hard_state = self.raft.hard_state();
        let elections = self.raft.elections();
        Figures {
            leader: self.reported_leader,
            leads: self.raft.role() == Role::Leader,
            term: hard_state.term,
            commit: hard_state.commit,
            applied: self.state.applied_index(),
            snapshot: self.raft.snapshot_index(),
            writes_waiting: self.waiting.writes_waiting(),
            elections_started: elections.started,
            elections_won: elections.won,
            keys: self.state.len(),
            log_cache_bytes: self.raft.log_cache().0,
            tree: self.state.tree().stats(),
        }
        .publish();
    }

    /// Reports, loudly, a leader's append that conflicted with an entry
    /// committed here: a committed entry was lost somewhere (a member
    /// acknowledged, or a leader counted, what it had not persisted). The
    /// core refuses such appends; nothing here can repair it.
    fn check_committed_conflicts(&mut self, from: NodeId) {
        let conflicts = self.raft.committed_conflicts();
        if conflicts > self.committed_conflicts_seen {
            metrics::counter!("harmonydb_raft_committed_conflicts_total")
                .increment(conflicts - self.committed_conflicts_seen);
            self.committed_conflicts_seen = conflicts;
            // The leader retries every heartbeat: one line per interval.
            let due = self
                .committed_conflict_logged
                .is_none_or(|at| at.elapsed() >= COMMITTED_CONFLICT_LOG_INTERVAL);
            if due {
                self.committed_conflict_logged = Some(Instant::now());
                error!(
                    leader = from,
                    commit = self.raft.status().commit,
                    refused_appends = conflicts,
                    "{COMMITTED_ENTRY_CONFLICT}"
                );
            }
        }
    }

    fn note_incoming(&mut self, message: &RaftMessage) {
        if let Some(trip) = self.contacts.heard(message, self.raft.term()) {
            metrics::histogram!("harmonydb_raft_peer_round_trip_seconds", "peer" => message.from.to_string())
                .record(trip.as_secs_f64());
        }
    }
}

/// The voter furthest along the log other than this member: it takes over
/// soonest (the core waits for it to catch up before it campaigns).
fn most_caught_up_other_voter(status: &Status) -> Option<NodeId> {
    status
        .config
        .voters
        .iter()
        .copied()
        .filter(|id| *id != status.id)
        .max_by_key(|id| {
            (
                status.match_index.get(id).copied().unwrap_or(0),
                u64::MAX - id,
            )
        })
}

/// How a refusal or loss from the core looks to a client.
fn kv_error(error: RaftError) -> KvError {
    match error {
        RaftError::NotLeader { leader: 0 } => KvError::NoLeader,
        RaftError::NotLeader { leader } => KvError::NotLeader { leader },
        RaftError::Overloaded => KvError::Overloaded,
        RaftError::ProposalOutcomeUnknown => KvError::OutcomeUnknown(error.to_string()),
        other => KvError::Unavailable(other.to_string()),
    }
}

impl Actor for RaftReplica {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.manager
            .do_send(RegisterReplica(ctx.address().recipient::<CheckpointDue>()));
        // A snapshot record persisted before a crash whose state never
        // arrived (or a storage lost since): fetch the state again.
        if self.raft.snapshot_index() > self.state.applied_index() {
            warn!(
                snapshot_index = self.raft.snapshot_index(),
                applied_index = self.state.applied_index(),
                "the state is behind the start of the log; fetching it from the leader"
            );
            self.need_state(self.raft.snapshot_index(), ctx);
        }
        self.check_membership();
        if let Some(index) = self.book.removed_at() {
            warn!(
                index,
                "this node was removed from the cluster (committed configuration at index {index}); it takes no part and refuses requests"
            );
            return;
        }
        // A group of one has nobody to wait for: it leads at once.
        let status = self.raft.status();
        if status.config.voters.len() == 1 && status.config.voters.contains(&status.id) {
            self.raft.campaign_now();
        }
        ctx.run_interval(self.tick_interval, |replica, ctx| {
            // A failed replica stops ticking so its core queues nothing more.
            if replica.failed.is_some() {
                return;
            }
            replica.catch_up_ticks();
            if replica.in_flight.is_empty() && !replica.raft.has_ready() {
                if let Some(hard_state) = replica.hard_states.take_deferred() {
                    let records = records_for(&[], Some(hard_state), replica.wal_next_index);
                    replica.persist(records, None, ctx);
                }
            }
            replica.drive(ctx);
            replica.report_metrics();
            replica.hand_over_if_disk_full(ctx);
            // A removal is acted on once applied, which may come later
            // than the ready that committed it.
            replica.check_membership();
        });
        self.drive(ctx);
    }
}

impl Handler<Step> for RaftReplica {
    type Result = ();

    fn handle(&mut self, step: Step, ctx: &mut Self::Context) {
        let Step { message, envelope } = step;
        let handling = envelope.open();
        // A removed node takes no further part.
        if self.book.removed_at().is_some() {
            return;
        }
        // A leader's traced entries: this member's WAL append joins the trace.
        if matches!(&message.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
            && !handling.span().is_disabled()
            && self.batch_span.is_none()
        {
            self.batch_span = Some(handling.span().clone());
        }
        self.note_incoming(&message);
        if self.raft.role() == Role::Leader {
            let (config, _) = self.raft.membership();
            let from = message.from;
            if !config.is_voter(from) && !config.learners.contains(&from) && self.book.knows(from) {
                // A removed node that never learned it: tell it.
                self.raft.remind_removed(from);
            }
        }
        let from = message.from;
        self.raft.step(message);
        self.check_committed_conflicts(from);
        self.note_leader();
        self.schedule_drive(ctx);
    }
}

impl Handler<KvRequest> for RaftReplica {
    type Result = ();

    fn handle(&mut self, request: KvRequest, ctx: &mut Self::Context) {
        let KvRequest {
            op,
            consistency,
            reply,
            envelope,
        } = request;
        let handling = envelope.open();
        let _entered = handling.span().enter();
        if let Err(error) = self.serving() {
            let _ = reply.send(Err(error));
            return;
        }
        self.catch_up_ticks();
        match op {
            KvOp::Get { key } => self.handle_read(KvRead::Get(key), consistency, reply),
            KvOp::Scan(range) => self.handle_read(KvRead::Scan(range), consistency, reply),
            KvOp::Put {
                key,
                value,
                expected_version,
            } => self.handle_write(
                KvCommand::Put {
                    key,
                    value,
                    expected_version,
                },
                reply,
            ),
            KvOp::Delete {
                key,
                expected_version,
            } => self.handle_write(
                KvCommand::Delete {
                    key,
                    expected_version,
                },
                reply,
            ),
            KvOp::Health => {
                let _ = reply.send(Ok(KvAnswer::fresh(KvReply::Healthy {
                    applied_index: self.state.applied_index(),
                })));
            }
        }
        self.schedule_drive(ctx);
    }
}

impl Handler<DriveNow> for RaftReplica {
    type Result = ();

    fn handle(&mut self, _: DriveNow, ctx: &mut Self::Context) {
        let _handling = Handling::start("RaftReplica", "DriveNow");
        self.drive_scheduled = false;
        self.drive(ctx);
    }
}

impl Handler<Persisted> for RaftReplica {
    type Result = ();

    fn handle(&mut self, persisted: Persisted, ctx: &mut Self::Context) {
        let _handling = Handling::start("RaftReplica", "Persisted");
        if let Some(in_flight) = self.in_flight.iter_mut().find(|f| f.seq == persisted.seq) {
            in_flight.result = Some(persisted.result);
        }
        self.finish_persisted(ctx);
    }
}

impl Handler<GetStatus> for RaftReplica {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, request: GetStatus, _: &mut Self::Context) -> Self::Result {
        let _handling = request.envelope.open();
        let raft = self.raft.status();
        let leader_contact = if raft.role == Role::Leader {
            None
        } else {
            self.contacts.since_leader()
        };
        let leader_commit = if raft.role == Role::Leader {
            raft.commit
        } else {
            self.contacts.leader_commit(raft.term, raft.commit)
        };
        let ticks = u32::try_from(self.raft.election_timeout_ticks()).unwrap_or(u32::MAX);
        MessageResult(ReplicaStatus {
            raft,
            leader_contact,
            failed: self.failed.as_ref().map(ToString::to_string),
            snapshot_index: self.raft.snapshot_index(),
            applied_index: self.state.applied_index(),
            leader_commit,
            last_heard: self.contacts.last_heard(),
            election_timeout: self.tick_interval * ticks,
            refusing: self.serving().err(),
        })
    }
}

impl Handler<BeginShutdown> for RaftReplica {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: BeginShutdown, _: &mut Self::Context) -> Self::Result {
        let _handling = Handling::start("RaftReplica", "BeginShutdown");
        info!(
            pending_writes = self.waiting.writes_waiting(),
            "replica stops taking requests"
        );
        self.closing = true;
        let (done, wait) = oneshot::channel();
        self.shutdown_waiters.push(done);
        self.maybe_finish_shutdown();
        Box::pin(async move {
            let _ = wait.await;
        })
    }
}
