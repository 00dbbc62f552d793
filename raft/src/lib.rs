//! The Raft consensus core: a deterministic state machine with no I/O, no
//! clock and no unseeded randomness (the etcd raft shape).
//!
//! The caller drives it:
//! - [`Raft::tick`] on a timer, [`Raft::step`] with each message from a peer,
//!   [`Raft::propose`], [`Raft::read_index`] and friends for requests;
//! - then, while [`Raft::has_ready`], takes a [`Ready`] and must, in order:
//!   1. durably persist `ready.snapshot`, then `ready.entries` (first removing
//!      any stored entries at or after `entries[0].index`), then `ready.hard_state`;
//!   2. send `ready.messages` (they may depend on what was just persisted);
//!   3. restore the state machine from `ready.snapshot` if any, then apply
//!      `ready.committed_entries` in order and serve `ready.read_states` once applied;
//!   4. report `ready.dropped_proposals` and `ready.dropped_reads` as failed;
//!   5. call [`Raft::advance`] with the ready.
//!
//!   `step`, `tick` and requests may be called between taking a ready and
//!   advancing it (while it is being persisted); readies must be persisted in
//!   the order they were taken.
//!
//! Files: `types` (data), `log` (in-memory log and marks), `progress`
//! (per-follower replication state), `node` (the `Raft` struct, ready/advance,
//! ticks, message dispatch), `election` (pre-vote, votes, check-quorum,
//! leadership transfer), `replication` (AppendEntries both sides, commit),
//! `read` (ReadIndex and leases), `membership` (joint consensus, learners),
//! `snapshot` (compaction and chunked transfer). The core is a crate of its
//! own with no actix, tokio or I/O crate among its dependencies, so that
//! it does no I/O is a compile error rather than a rule: the
//! `RaftReplica` actor (crate `harmonydb-actors`, `replica/`) drives it
//! with the WAL and the KV state.

mod election;
mod log;
mod membership;
mod node;
mod progress;
mod read;
mod replication;
mod snapshot;
mod types;

pub use node::{
    ElectionCounts, LogRead, Raft, RaftConfig, Ready, Role, Status, ELECTION_TIMEOUT_DEFAULT_TICKS,
    HEARTBEAT_INTERVAL_DEFAULT_TICKS, LOG_CACHE_DEFAULT_BYTES,
};
pub use types::{
    ConfChange, Configuration, DroppedProposal, DroppedRead, Entry, EntryPayload, HardState,
    Message, MessageBody, NodeId, RaftError, ReadState, Snapshot, SnapshotMeta,
};

/// What a node recovers from its own disk at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistedState {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The last persisted snapshot (at least the bootstrap one).
    pub snapshot: Snapshot,
    /// Persisted entries after the snapshot, in order.
    pub entries: Vec<Entry>,
}

impl PersistedState {
    /// The state of a brand-new member of a group whose voters are `voters`:
    /// an empty snapshot at index 0 holding the initial configuration.
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> Self {
        PersistedState {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    config: Configuration::with_voters(voters),
                },
                data: Vec::new(),
            },
            ..PersistedState::default()
        }
    }
}
