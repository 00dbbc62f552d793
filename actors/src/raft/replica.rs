//! The `RaftReplica` actor: drives one Raft core for one group. It ticks the
//! core on a timer, persists each ready through the `WalWriter` (the WAL is
//! the Raft log; group commit batches every replica's records), sends the
//! ready's messages only once that is durable, applies committed entries to
//! the KV state, and answers each proposal after its entry is applied.
//!
//! Not wired into the node yet: the cluster issue adds the network transport
//! and the front doors. Peers' messages come in as `Step`, and outgoing ones
//! go to an `Outbox` recipient.
//!
//! Requirements on the WAL it is given: the writer must use
//! `FsyncPolicy::Always` (votes and acknowledgements are sent once their
//! append is answered, which only `Always` makes durable), and the WAL's
//! indexes are this group's Raft indexes, so one WAL serves one group until
//! records carry a group id.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::wal_log::records_for;
use super::{EntryPayload, Message as RaftMessage, NodeId, Raft, RaftError, Ready};
use crate::kv::{KvCommand, KvError, KvState, Versioned, WriteOutcome};
use crate::wal::{Append, WalError, WalWriter};

/// Messages a replica wants delivered to peers, in order.
#[derive(Debug)]
pub struct Outbox {
    /// The messages, each addressed to its `to`.
    pub messages: Vec<RaftMessage>,
}

impl actix::Message for Outbox {
    type Result = ();
}

/// A message from a peer.
#[derive(Debug)]
pub struct Step(pub RaftMessage);

impl actix::Message for Step {
    type Result = ();
}

/// Why a replica could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// Not the leader; ask `leader` (0 = unknown).
    #[error("not the leader (leader is {leader})")]
    NotLeader {
        /// The known leader.
        leader: NodeId,
    },
    /// The consensus core refused or dropped the request.
    #[error(transparent)]
    Raft(RaftError),
    /// The KV state machine refused the command (version mismatch, not found).
    #[error(transparent)]
    Kv(KvError),
    /// The WAL failed; the outcome is unknown and the replica stops.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<RaftError> for ReplicaError {
    fn from(error: RaftError) -> Self {
        match error {
            RaftError::NotLeader { leader } => ReplicaError::NotLeader { leader },
            other => ReplicaError::Raft(other),
        }
    }
}

/// Proposes a KV write; answered once applied.
pub struct ProposeWrite {
    /// The command.
    pub command: KvCommand,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<WriteOutcome, ReplicaError>>,
}

impl actix::Message for ProposeWrite {
    type Result = ();
}

/// A linearizable read of one key (ReadIndex); answered once applied up to the read index.
pub struct LinearizableGet {
    /// The key.
    pub key: Vec<u8>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Option<Versioned>, ReplicaError>>,
}

impl actix::Message for LinearizableGet {
    type Result = ();
}

/// Asks for the core's status.
pub struct GetStatus;

impl actix::Message for GetStatus {
    type Result = super::Status;
}

/// Internal: a ready's records are durable (or failed).
struct Persisted {
    ready: Ready,
    result: Result<(), WalError>,
}

impl actix::Message for Persisted {
    type Result = ();
}

/// Where a write's outcome goes.
type WriteReply = oneshot::Sender<Result<WriteOutcome, ReplicaError>>;

/// Where a read's answer goes.
type ReadReply = oneshot::Sender<Result<Option<Versioned>, ReplicaError>>;

/// A read waiting for its read index to be applied.
struct WaitingRead {
    index: u64,
    key: Vec<u8>,
    reply: oneshot::Sender<Result<Option<Versioned>, ReplicaError>>,
}

/// One member of one Raft group, with its KV state machine.
pub struct RaftReplica {
    raft: Raft,
    wal: Addr<WalWriter>,
    /// The WAL's next index (where the next entry record goes).
    wal_next_index: u64,
    outbox: Recipient<Outbox>,
    state: KvState,
    tick_interval: Duration,
    /// A ready is being persisted; the next waits (readies persist in order).
    persisting: bool,
    writes: HashMap<u64, (u64, WriteReply)>,
    next_read_id: u64,
    reads_pending: HashMap<u64, (Vec<u8>, ReadReply)>,
    reads_ready: Vec<WaitingRead>,
    failed: Option<String>,
}

impl RaftReplica {
    /// A replica over a core restored from the WAL (see `wal_log::load`).
    pub fn new(
        raft: Raft,
        wal: Addr<WalWriter>,
        wal_next_index: u64,
        outbox: Recipient<Outbox>,
        tick_interval: Duration,
    ) -> Self {
        RaftReplica {
            raft,
            wal,
            wal_next_index,
            outbox,
            state: KvState::new(),
            tick_interval,
            persisting: false,
            writes: HashMap::new(),
            next_read_id: 1,
            reads_pending: HashMap::new(),
            reads_ready: Vec::new(),
            failed: None,
        }
    }

    /// Takes the next ready, if the previous one is done, and persists it.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        if self.persisting || self.failed.is_some() || !self.raft.has_ready() {
            return;
        }
        let ready = self.raft.ready();
        let records = records_for(&ready.entries, ready.hard_state, self.wal_next_index);
        if let Some(last) = ready.entries.last() {
            self.wal_next_index = last.index + 1;
        }
        if records.is_empty() && ready.snapshot.is_none() {
            self.finish(ready, ctx);
            return;
        }
        if ready.snapshot.is_some() {
            // Compaction comes with the storage engine; until then no member
            // compacts, so no snapshot is ever sent. Refuse rather than guess.
            self.fail("received a snapshot, which this replica cannot install yet".into());
            return;
        }
        self.persisting = true;
        let append = self.wal.send(Append { entries: records });
        ctx.spawn(append.into_actor(self).map(move |answer, _, ctx| {
            let result = answer.unwrap_or(Err(WalError::Stopped)).map(|_| ());
            ctx.notify(Persisted { ready, result });
        }));
    }

    /// Everything after persistence: send, apply, answer, advance.
    fn finish(&mut self, ready: Ready, ctx: &mut Context<Self>) {
        if !ready.messages.is_empty() {
            // Over the outbox's bound the messages are dropped: Raft retries.
            let _ = self.outbox.try_send(Outbox {
                messages: ready.messages.clone(),
            });
        }
        for entry in &ready.committed_entries {
            let EntryPayload::Command(bytes) = &entry.payload else {
                continue;
            };
            let outcome = match KvCommand::decode(bytes) {
                Ok(command) => self.state.apply(entry.index, command),
                Err(reason) => {
                    error!(index = entry.index, %reason, "committed entry is not a KV command");
                    Err(KvError::CorruptEntry {
                        index: entry.index,
                        reason,
                    })
                }
            };
            if let Some((term, reply)) = self.writes.remove(&entry.index) {
                let answer = if term == entry.term {
                    outcome.map_err(ReplicaError::Kv)
                } else {
                    Err(ReplicaError::Raft(RaftError::ProposalDropped))
                };
                let _ = reply.send(answer);
            }
        }
        for dropped in &ready.dropped_proposals {
            if let Some((_, reply)) = self.writes.remove(&dropped.index) {
                let _ = reply.send(Err(ReplicaError::Raft(dropped.reason.clone())));
            }
        }
        for read in &ready.read_states {
            if let Some((key, reply)) = self.reads_pending.remove(&read.request_id) {
                self.reads_ready.push(WaitingRead {
                    index: read.index,
                    key,
                    reply,
                });
            }
        }
        for dropped in &ready.dropped_reads {
            if let Some((_, reply)) = self.reads_pending.remove(&dropped.request_id) {
                let _ = reply.send(Err(ReplicaError::Raft(dropped.reason.clone())));
            }
        }
        self.raft.advance(&ready);
        self.serve_reads();
        self.drive(ctx);
    }

    /// Whether requests are taken: not after a storage failure.
    fn serving(&self) -> Result<(), ReplicaError> {
        match &self.failed {
            Some(reason) => Err(ReplicaError::Storage(reason.clone())),
            None => Ok(()),
        }
    }

    /// Answers reads whose index is applied.
    fn serve_reads(&mut self) {
        let applied = self.raft.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.reads_ready.drain(..).partition(|r| r.index <= applied);
        self.reads_ready = waiting;
        for read in ready {
            let _ = read.reply.send(Ok(self.state.get(&read.key).cloned()));
        }
    }

    fn fail(&mut self, reason: String) {
        error!(%reason, "Raft replica stopped accepting requests");
        for (_, (_, reply)) in self.writes.drain() {
            let _ = reply.send(Err(ReplicaError::Storage(reason.clone())));
        }
        for (_, (_, reply)) in self.reads_pending.drain() {
            let _ = reply.send(Err(ReplicaError::Storage(reason.clone())));
        }
        for read in self.reads_ready.drain(..) {
            let _ = read.reply.send(Err(ReplicaError::Storage(reason.clone())));
        }
        self.failed = Some(reason);
    }
}

impl Actor for RaftReplica {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.tick_interval, |replica, ctx| {
            // A failed replica stops ticking so its core queues nothing more.
            if replica.failed.is_none() {
                replica.raft.tick();
                replica.drive(ctx);
            }
        });
        self.drive(ctx);
    }
}

impl Handler<Step> for RaftReplica {
    type Result = ();

    fn handle(&mut self, Step(message): Step, ctx: &mut Self::Context) {
        self.raft.step(message);
        self.drive(ctx);
    }
}

impl Handler<ProposeWrite> for RaftReplica {
    type Result = ();

    fn handle(&mut self, request: ProposeWrite, ctx: &mut Self::Context) {
        let proposed = self
            .serving()
            .and_then(|()| Ok(self.raft.propose(request.command.encode())?));
        match proposed {
            Ok(index) => {
                let term = self.raft.term();
                self.writes.insert(index, (term, request.reply));
            }
            Err(error) => {
                let _ = request.reply.send(Err(error));
            }
        }
        self.drive(ctx);
    }
}

impl Handler<LinearizableGet> for RaftReplica {
    type Result = ();

    fn handle(&mut self, request: LinearizableGet, ctx: &mut Self::Context) {
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.serving().and_then(|()| Ok(self.raft.read_index(id)?)) {
            Ok(()) => {
                self.reads_pending.insert(id, (request.key, request.reply));
            }
            Err(error) => {
                let _ = request.reply.send(Err(error));
            }
        }
        self.drive(ctx);
    }
}

impl Handler<Persisted> for RaftReplica {
    type Result = ();

    fn handle(&mut self, persisted: Persisted, ctx: &mut Self::Context) {
        self.persisting = false;
        match persisted.result {
            Ok(()) => self.finish(persisted.ready, ctx),
            Err(error) => {
                warn!(%error, "persisting a Raft ready failed");
                self.fail(error.to_string());
            }
        }
    }
}

impl Handler<GetStatus> for RaftReplica {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.raft.status())
    }
}
