//! The values the Raft core exchanges with its caller and its peers: log
//! entries, hard state, messages, snapshots, read states. All are plain data
//! (serde-serializable) so the caller can put them on disk and on the wire.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A member's id. 0 is never a valid id (it means "none").
pub type NodeId = u64;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by a new leader to commit entries of earlier terms (Raft §5.4.2).
    Noop,
    /// An application command.
    Command(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A membership configuration; it takes effect as soon as it is in the log.
    Config(Configuration),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created it.
    pub term: u64,
    /// Its position in the log, from 1.
    pub index: u64,
    /// What it carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes this entry counts for in message size limits.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 24;
        HEADER_BYTES
            + match &self.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(data) => data.len(),
                EntryPayload::Config(config) => {
                    8 * config.member_count()
                        + config.addresses.values().map(String::len).sum::<usize>()
                }
            }
    }
}

/// What must be durable before a node acts on it: current term, vote, commit index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate voted for in `term` (0 = none).
    pub vote: NodeId,
    /// Highest index known committed.
    pub commit: u64,
}

/// Voters and learners of the group. During a joint change `voters_outgoing`
/// holds the old voter set, and every decision needs a majority of both sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// Voters (C_new during a joint change).
    pub voters: BTreeSet<NodeId>,
    /// Voters of C_old while a joint change is in progress; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote.
    pub learners: BTreeSet<NodeId>,
    /// How members reach each other, as the proposer knew it. Opaque to the
    /// core, which only carries it: a member that learns the configuration
    /// (from the log or a snapshot) learns where its peers are with it.
    #[serde(default)]
    pub addresses: BTreeMap<NodeId, String>,
    /// Ids removed by earlier changes. They are never added again: a node
    /// that was removed (and may still run on its old state) must not be
    /// mistaken for a new one under its id.
    #[serde(default)]
    pub removed: BTreeSet<NodeId>,
}

impl Configuration {
    /// A simple configuration of voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Configuration {
            voters: voters.into_iter().collect(),
            ..Configuration::default()
        }
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Every member: voters of both halves and learners, sorted.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(&self.voters_outgoing)
            .chain(&self.learners)
            .copied()
            .collect()
    }

    /// Number of distinct members.
    pub fn member_count(&self) -> usize {
        self.members().len()
    }

    /// Whether the nodes in `agreed` form a quorum: a majority of `voters`
    /// and, during a joint change, also of `voters_outgoing`.
    pub fn has_quorum(&self, agreed: &BTreeSet<NodeId>) -> bool {
        let majority = |set: &BTreeSet<NodeId>| {
            set.is_empty() || set.iter().filter(|id| agreed.contains(id)).count() * 2 > set.len()
        };
        majority(&self.voters) && majority(&self.voters_outgoing)
    }

    /// The highest index that a quorum has reached, given each voter's match index.
    pub fn quorum_index(&self, match_index: impl Fn(NodeId) -> u64) -> u64 {
        let half = |set: &BTreeSet<NodeId>| {
            if set.is_empty() {
                return u64::MAX;
            }
            let mut indexes: Vec<u64> = set.iter().map(|id| match_index(*id)).collect();
            indexes.sort_unstable_by(|a, b| b.cmp(a));
            indexes[set.len() / 2]
        };
        half(&self.voters).min(half(&self.voters_outgoing))
    }
}

/// A membership change a leader can propose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChange {
    /// Add a voter (a learner being promoted keeps its log).
    AddVoter(NodeId),
    /// Add a learner.
    AddLearner(NodeId),
    /// Remove a voter or learner.
    Remove(NodeId),
}

/// Metadata of a snapshot: the log up to `index` is replaced by it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last index the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Configuration as of `index`.
    pub config: Configuration,
}

/// A snapshot of the state machine at `meta.index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Where it sits in the log.
    pub meta: SnapshotMeta,
    /// The state machine's bytes, opaque to Raft.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A message between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sender's term (for pre-votes: the term it would campaign in).
    pub term: u64,
    /// What it says.
    pub body: MessageBody,
}

/// The kinds of messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Ask for a (pre-)vote.
    RequestVote {
        /// Candidate's last log index.
        last_log_index: u64,
        /// Candidate's last log term.
        last_log_term: u64,
        /// A pre-vote: nobody changes term or vote because of it.
        pre_vote: bool,
        /// Campaign started by leadership transfer: voters ignore that they
        /// heard from a leader recently.
        transfer: bool,
    },
    /// Answer to `RequestVote`.
    RequestVoteResponse {
        /// Vote granted.
        granted: bool,
        /// Answer to a pre-vote.
        pre_vote: bool,
    },
    /// Replicate entries (empty = probe).
    AppendEntries {
        /// Index of the entry before `entries`.
        prev_log_index: u64,
        /// Its term.
        prev_log_term: u64,
        /// Entries to append.
        entries: Vec<Entry>,
        /// Leader's commit index.
        leader_commit: u64,
    },
    /// Answer to `AppendEntries`.
    AppendEntriesResponse {
        /// The entries matched and were appended.
        success: bool,
        /// On success, the last index now known to match; on rejection, the
        /// `prev_log_index` that did not match.
        index: u64,
        /// On rejection, where the follower suggests trying next (fast back-off).
        hint_index: u64,
        /// On rejection, the term of the follower's conflicting entry (0 if
        /// its log is just shorter).
        conflict_term: u64,
    },
    /// Leader liveness, commit index, and ReadIndex confirmation round `seq`.
    Heartbeat {
        /// Leader's commit index, capped at what the follower is known to have.
        commit: u64,
        /// Read round being confirmed.
        seq: u64,
    },
    /// Answer to `Heartbeat`.
    HeartbeatResponse {
        /// The round being acknowledged.
        seq: u64,
    },
    /// One chunk of a snapshot.
    InstallSnapshot {
        /// The snapshot's position.
        meta: SnapshotMeta,
        /// Offset of this chunk in the snapshot data.
        offset: u64,
        /// The chunk.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// This is the last chunk.
        done: bool,
    },
    /// Answer to `InstallSnapshot`.
    InstallSnapshotResponse {
        /// Snapshot index being acknowledged.
        index: u64,
        /// Offset the follower expects next (all of it when done).
        next_offset: u64,
        /// The follower has installed it.
        done: bool,
    },
    /// Leadership transfer: campaign now.
    TimeoutNow,
}

/// A linearizable read the caller may serve once its applied index reaches `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's id for the read.
    pub request_id: u64,
    /// Serve the read at or after this applied index.
    pub index: u64,
}

/// Why a proposal, read or request was refused or dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// This node is not the leader; `leader` is the one it knows (0 = unknown).
    #[error("not the leader (leader is {leader})")]
    NotLeader {
        /// The known leader, or 0.
        leader: NodeId,
    },
    /// A leadership transfer is in progress; proposals wait for it.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Only one membership change at a time.
    #[error("a membership change is already in progress")]
    ConfChangeInProgress,
    /// The membership change does not make sense.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// The lease is not valid now (no quorum contact recently or a transfer started).
    #[error("leader lease not held")]
    LeaseNotHeld,
    /// The entry was overwritten by another leader's entry: it will never commit.
    #[error("proposal dropped: overwritten by a newer leader")]
    ProposalDropped,
    /// The log was replaced by a snapshot before the node learned the entry's fate.
    #[error("proposal outcome unknown: replaced by a snapshot")]
    ProposalOutcomeUnknown,
    /// The node stopped being leader before it could confirm the read.
    #[error("read dropped: leadership lost")]
    ReadDropped,
    /// Too many reads or proposals waiting.
    #[error("too many requests in flight")]
    Overloaded,
    /// Compaction asked for an index that is not applied, or already compacted.
    #[error("cannot compact to index {index}: {reason}")]
    InvalidCompaction {
        /// The index asked for.
        index: u64,
        /// Why not.
        reason: String,
    },
}

/// A proposal this node made that will not be applied as proposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedProposal {
    /// Index it was appended at.
    pub index: u64,
    /// Term it was appended in.
    pub term: u64,
    /// Why.
    pub reason: RaftError,
}

/// A read this node accepted and will not confirm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedRead {
    /// The caller's id for it.
    pub request_id: u64,
    /// Why.
    pub reason: RaftError,
}
