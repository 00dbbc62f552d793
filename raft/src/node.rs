//! The `Raft` struct: its state, the caller's API (tick, step, propose,
//! ready/advance), role changes, and message dispatch. The rules for each
//! kind of message live in the sibling modules.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::log::RaftLog;
use super::progress::Progress;
use super::types::{
    Configuration, DroppedProposal, DroppedRead, Entry, EntryPayload, HardState, Message,
    MessageBody, NodeId, RaftError, ReadState, Snapshot,
};
use super::PersistedState;

/// Tunables of one Raft member. Times are in ticks of the caller's clock.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This member's id (not 0).
    pub id: NodeId,
    /// Base election timeout; each election waits a random time in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)`.
    pub election_timeout_ticks: u64,
    /// Leader heartbeat interval; must be well below the election timeout.
    pub heartbeat_interval_ticks: u64,
    /// Most entries in one AppendEntries.
    pub append_entries_max: usize,
    /// About the most entry bytes in one AppendEntries (at least one entry is sent).
    pub append_size_max_bytes: usize,
    /// AppendEntries in flight to one follower before waiting for answers.
    pub in_flight_max: usize,
    /// Bytes of snapshot data per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Campaign with a pre-vote first, so a node that can't win doesn't raise terms.
    pub pre_vote: bool,
    /// A leader that hasn't heard from a quorum for an election timeout steps
    /// down, and voters ignore candidates while they hear from a leader.
    pub check_quorum: bool,
    /// Enable lease reads, with this many ticks subtracted from the lease for
    /// clock drift between members. Needs `check_quorum`.
    pub lease_drift_ticks: Option<u64>,
    /// About the most committed entry bytes handed out in one ready.
    pub apply_size_max_bytes: usize,
    /// Reads waiting for confirmation at once.
    pub pending_reads_max: usize,
    /// This member's proposals waiting to commit at once; more are refused
    /// as overloaded instead of growing the log without bound.
    pub pending_proposals_max: usize,
    /// Largest snapshot accepted from a leader, in bytes.
    pub snapshot_size_max_bytes: usize,
    /// Seed of the election-timeout randomness (the core has no other).
    pub seed: u64,
    /// About the most bytes of entries kept in memory once the caller has
    /// applied them ([`Raft::release_applied`]); older ones are read back
    /// from the caller's log when a follower needs them
    /// ([`Ready::log_reads`]). Entries not yet applied or persisted stay
    /// whatever their size.
    pub log_cache_max_bytes: usize,
}

/// Ticks without a leader before a follower campaigns, by default
/// (randomized up to twice this).
pub const ELECTION_TIMEOUT_DEFAULT_TICKS: u64 = 10;

/// Bytes of applied entries kept in memory by default.
pub const LOG_CACHE_DEFAULT_BYTES: usize = 64 * 1024 * 1024;

/// Ticks between a leader's heartbeats, by default.
pub const HEARTBEAT_INTERVAL_DEFAULT_TICKS: u64 = 1;

impl RaftConfig {
    /// Sensible defaults for member `id`: election timeout 10 ticks, heartbeat 1.
    pub fn new(id: NodeId) -> Self {
        RaftConfig {
            id,
            election_timeout_ticks: ELECTION_TIMEOUT_DEFAULT_TICKS,
            heartbeat_interval_ticks: HEARTBEAT_INTERVAL_DEFAULT_TICKS,
            append_entries_max: 256,
            append_size_max_bytes: 1024 * 1024,
            in_flight_max: 64,
            snapshot_chunk_bytes: 64 * 1024,
            pre_vote: true,
            check_quorum: true,
            lease_drift_ticks: None,
            apply_size_max_bytes: 4 * 1024 * 1024,
            pending_reads_max: 4096,
            pending_proposals_max: 65_536,
            snapshot_size_max_bytes: 1 << 30,
            seed: id,
            log_cache_max_bytes: LOG_CACHE_DEFAULT_BYTES,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("node id 0 is reserved".into());
        }
        if self.heartbeat_interval_ticks == 0
            || self.heartbeat_interval_ticks >= self.election_timeout_ticks
        {
            return Err(
                "the heartbeat interval must be at least 1 tick and below the election timeout"
                    .into(),
            );
        }
        if self.append_entries_max == 0 || self.in_flight_max == 0 || self.snapshot_chunk_bytes == 0
        {
            return Err("batch sizes and windows must be at least 1".into());
        }
        if let Some(drift) = self.lease_drift_ticks {
            if !self.check_quorum || drift >= self.election_timeout_ticks {
                return Err(
                    "lease reads need check_quorum and a drift below the election timeout".into(),
                );
            }
        }
        Ok(())
    }
}

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes; the term is not raised yet.
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Leads the term.
    Leader,
}

/// A summary of a member's state, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This member.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Known leader (0 = none).
    pub leader: NodeId,
    /// Commit index.
    pub commit: u64,
    /// Applied index (handed to the caller).
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Configuration in force.
    pub config: Configuration,
    /// On a leader: each follower's match index.
    pub match_index: BTreeMap<NodeId, u64>,
}

/// What the caller must persist, send and apply; see the module docs for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, to persist and restore from.
    pub snapshot: Option<Snapshot>,
    /// Entries to persist (replacing any stored from `entries[0].index` on).
    pub entries: Vec<Entry>,
    /// Messages to send once the above is durable, or at once when
    /// `send_before_persist` says so.
    pub messages: Vec<Message>,
    /// The messages may go out before this ready is durable: a leader's
    /// (Raft thesis §10.2.1: its own entries count towards a commit only
    /// once [`Raft::advance`] says they are persisted, so its and its
    /// followers' writes overlap). Anyone else's messages promise what is
    /// on disk (votes, acknowledgements) and wait for it.
    pub send_before_persist: bool,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads to serve once the applied index reaches theirs.
    pub read_states: Vec<ReadState>,
    /// This node's proposals that will not be applied as proposed.
    pub dropped_proposals: Vec<DroppedProposal>,
    /// Reads this node accepted and will not confirm.
    pub dropped_reads: Vec<DroppedRead>,
    /// Entries a follower needs that this leader no longer holds in
    /// memory: the caller reads each range from its log and hands it back
    /// with [`Raft::log_read_done`] (every one, or `None` if it can't).
    pub log_reads: Vec<LogRead>,
    /// Snapshots installed from a leader before this ready was taken. An
    /// install makes the entries it keeps unpersisted again (the caller
    /// rewrites them after the snapshot), so a ready taken before it must
    /// not mark them persisted when it is advanced.
    installs_before: u64,
}

/// A range of persisted, committed entries the leader must send to `peer`
/// but evicted from memory; the caller's log has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRead {
    /// The follower that needs them.
    pub peer: NodeId,
    /// First index to read.
    pub from: u64,
    /// Last index that may be read (all of them are committed and persisted).
    pub to: u64,
    /// Most entries to read.
    pub count_max: usize,
    /// About the most entry bytes to read (at least one entry).
    pub size_max_bytes: usize,
}

/// A read waiting for a heartbeat round to confirm leadership.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingRead {
    pub request_id: u64,
    pub index: u64,
    pub seq: u64,
}

/// One Raft member.
pub struct Raft {
    pub(crate) config: RaftConfig,
    pub(crate) id: NodeId,
    pub(crate) term: u64,
    pub(crate) vote: NodeId,
    pub(crate) role: Role,
    pub(crate) leader: NodeId,
    pub(crate) log: RaftLog,
    /// Configuration in force and the index of the entry (or snapshot) it came from.
    pub(crate) membership: Configuration,
    pub(crate) membership_index: u64,
    /// Logical time: ticks since start.
    pub(crate) now: u64,
    pub(crate) election_elapsed: u64,
    pub(crate) heartbeat_elapsed: u64,
    pub(crate) randomized_timeout: u64,
    rng: u64,
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// Leader only: every other member's replication state (and that of
    /// members a change left out, while they are `departing`).
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Leader only: nodes the configuration no longer has that still get
    /// the log, until the tick given (None: until the change commits).
    pub(crate) departing: BTreeMap<NodeId, Option<u64>>,
    /// Leader only: the configuration departing nodes must reach.
    pub(crate) departing_config_index: u64,
    /// Leader only: transfer target and the tick the transfer started.
    pub(crate) transfer: Option<(NodeId, u64)>,
    /// Leader only: tick of the last TimeoutNow sent. Its target may win
    /// without the voters' leader stickiness, so no lease is trusted for an
    /// election timeout after it, even if the transfer is abandoned.
    pub(crate) timeout_now_sent_tick: Option<u64>,
    /// Leader only: read-confirmation rounds and the tick each was sent.
    pub(crate) read_seq: u64,
    pub(crate) seq_sent_tick: BTreeMap<u64, u64>,
    /// Reads wait for a round not sent yet; `ready` sends it.
    pub(crate) read_round_requested: bool,
    /// Leader only: the round of the latest heartbeats sent on a tick. A
    /// follower's stall is judged once per such round, however many
    /// heartbeats (for reads or new commit indexes) went out in between.
    pub(crate) tick_round_seq: u64,
    /// Leader only: entries were proposed since the last ready; `ready`
    /// sends them, one append per follower for all of them, instead of
    /// one append per proposal.
    pub(crate) append_pending: bool,
    /// Leader only: the commit index moved since the last ready; `ready`
    /// tells followers once, instead of once per acknowledgement.
    pub(crate) commit_pending: bool,
    pub(crate) pending_reads: VecDeque<PendingRead>,
    /// Reads accepted before this leader committed an entry of its term.
    pub(crate) reads_before_commit: Vec<u64>,
    /// This node's proposals awaiting their fate: index -> term.
    pub(crate) proposals: BTreeMap<u64, u64>,
    /// The latest local snapshot (with data), served to followers that need it.
    pub(crate) snapshot: Snapshot,
    /// Follower: snapshot chunks being received.
    pub(crate) incoming_snapshot: Option<Snapshot>,
    // Outputs, drained by `ready`.
    pub(crate) messages: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) dropped_proposals: Vec<DroppedProposal>,
    pub(crate) dropped_reads: Vec<DroppedRead>,
    pub(crate) snapshot_to_persist: Option<Snapshot>,
    pub(crate) log_reads: Vec<LogRead>,
    /// Hard state last handed out in a ready.
    emitted_hard_state: HardState,
    /// Highest entry index handed out in a ready (persisting or persisted).
    emitted_index: u64,
    /// Snapshots installed from a leader since this member was created.
    pub(crate) snapshot_installs: u64,
    /// Elections this member started (pre-votes excluded) and won, since
    /// it was created: counters for the replica's metrics.
    pub(crate) elections: ElectionCounts,
}

/// How many elections a member started and won since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElectionCounts {
    /// Real elections (a new term) this member started.
    pub started: u64,
    /// Elections it won, becoming leader.
    pub won: u64,
}

impl Raft {
    /// A member restarting from (or starting with) what its disk holds.
    pub fn new(config: RaftConfig, persisted: PersistedState) -> Result<Raft, String> {
        config.validate()?;
        let PersistedState {
            hard_state,
            snapshot,
            entries,
        } = persisted;
        let log = RaftLog::new(
            snapshot.meta.clone(),
            entries,
            hard_state.commit,
            config.log_cache_max_bytes,
        );
        let (membership_index, membership) = log.config();
        let last_index = log.last_index();
        let mut raft = Raft {
            id: config.id,
            rng: config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            config,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: 0,
            elections: ElectionCounts::default(),
            log,
            membership,
            membership_index,
            now: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            departing: BTreeMap::new(),
            departing_config_index: 0,
            transfer: None,
            timeout_now_sent_tick: None,
            read_seq: 0,
            seq_sent_tick: BTreeMap::new(),
            read_round_requested: false,
            tick_round_seq: 0,
            append_pending: false,
            commit_pending: false,
            pending_reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            proposals: BTreeMap::new(),
            snapshot,
            incoming_snapshot: None,
            messages: Vec::new(),
            read_states: Vec::new(),
            dropped_proposals: Vec::new(),
            dropped_reads: Vec::new(),
            snapshot_to_persist: None,
            log_reads: Vec::new(),
            emitted_hard_state: hard_state,
            emitted_index: last_index,
            snapshot_installs: 0,
        };
        raft.reset_election_timer();
        Ok(raft)
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// How many times a leader's append conflicted with an entry this
    /// member holds as committed (and was refused). Never more than 0 in a
    /// correct cluster: each one means a committed entry was lost
    /// somewhere, such as by a member that acknowledged what it had not
    /// persisted. The caller reports it loudly.
    pub fn committed_conflicts(&self) -> u64 {
        self.log.committed_conflicts()
    }

    /// Elections this member started and won since it was created.
    pub fn elections(&self) -> ElectionCounts {
        self.elections
    }

    /// This member's role now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The leader this member knows of (0 = none).
    pub fn leader(&self) -> NodeId {
        self.leader
    }

    /// Index of the last entry handed to the caller to apply.
    pub fn applied_index(&self) -> u64 {
        self.log.applied()
    }

    /// The entry at `index`, if this member holds it in memory (not
    /// compacted, and not evicted after [`Raft::release_applied`]).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// The caller's state machine has applied the entries up to `index`
    /// (at most what ready handed out): from now on the caller reads them
    /// from its own log, so they may leave memory once the cached entries
    /// pass `log_cache_max_bytes`. Without this call nothing is evicted.
    pub fn release_applied(&mut self, index: u64) {
        self.log.release_to(index);
    }

    /// Bytes of entries this member holds in memory, and the first index
    /// held (entries from the snapshot up to it are in the caller's log only).
    pub fn log_cache(&self) -> (usize, u64) {
        (self.log.cached_bytes(), self.log.cache_first())
    }

    /// Term of the entry at `index` (also for the snapshot's last index).
    pub fn entry_term(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }

    /// Index of the snapshot this member's log starts after.
    pub fn snapshot_index(&self) -> u64 {
        self.log.snapshot.index
    }

    /// A summary of the member's state.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit: self.log.committed(),
            applied: self.log.applied(),
            last_index: self.log.last_index(),
            config: self.membership.clone(),
            match_index: self
                .progress
                .iter()
                .map(|(id, p)| (*id, p.match_index))
                .collect(),
        }
    }

    /// The configuration in force (the last in the log, committed or not)
    /// and the index of the entry or snapshot it came from.
    pub fn membership(&self) -> (&Configuration, u64) {
        (&self.membership, self.membership_index)
    }

    /// The commit index this member knows.
    pub fn commit_index(&self) -> u64 {
        self.log.committed()
    }

    /// Term, vote and commit index as they are now (persisted or not).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    /// The base election timeout, in ticks (the randomized one is up to twice it).
    pub fn election_timeout_ticks(&self) -> u64 {
        self.config.election_timeout_ticks
    }

    /// Advances logical time by one tick: elections on followers, heartbeats
    /// and check-quorum on leaders.
    pub fn tick(&mut self) {
        self.now += 1;
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.election_elapsed >= self.randomized_timeout && self.promotable() {
            self.start_election(false);
        } else if self.election_elapsed >= 2 * self.config.election_timeout_ticks
            && self.membership.learners.contains(&self.id)
        {
            // A learner never campaigns, so one cut off when it was removed
            // would never be heard from again: it calls on the voters it
            // knows, and whichever leads tells it (`remind_removed`), or,
            // if it is still a learner, catches it up.
            self.election_elapsed = 0;
            let voters: Vec<NodeId> = self.membership.voters.iter().copied().collect();
            for voter in voters {
                self.send(voter, MessageBody::HeartbeatResponse { seq: 0 });
            }
        }
    }

    /// Handles a message from a peer. Messages from unknown terms, stale
    /// leaders or non-members are answered or ignored as Raft says; nothing
    /// a peer sends can panic the core.
    pub fn step(&mut self, message: Message) {
        if message.to != self.id || message.from == self.id || message.from == 0 {
            return;
        }
        if !self.step_term(&message) {
            return;
        }
        let Message {
            from, term, body, ..
        } = message;
        match body {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                pre_vote,
                transfer,
            } => self.handle_request_vote(
                from,
                term,
                last_log_index,
                last_log_term,
                pre_vote,
                transfer,
            ),
            MessageBody::RequestVoteResponse { granted, pre_vote } => {
                self.handle_vote_response(from, term, granted, pre_vote)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => self.handle_append(from, prev_log_index, prev_log_term, entries, leader_commit),
            MessageBody::AppendEntriesResponse {
                success,
                index,
                hint_index,
                conflict_term,
            } => self.handle_append_response(from, success, index, hint_index, conflict_term),
            MessageBody::Heartbeat { commit, seq } => self.handle_heartbeat(from, commit, seq),
            MessageBody::HeartbeatResponse { seq } => self.handle_heartbeat_response(from, seq),
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => self.handle_snapshot_chunk(from, meta, offset, data, done),
            MessageBody::InstallSnapshotResponse {
                index,
                next_offset,
                done,
            } => self.handle_snapshot_response(from, index, next_offset, done),
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
        }
    }

    /// Appends a command if this member leads; returns the index it was
    /// given. Its fate is reported later: applied (a committed entry at that
    /// index and term) or dropped (in `Ready::dropped_proposals`).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, RaftError> {
        self.propose_payload(EntryPayload::Command(data))
    }

    pub(crate) fn propose_payload(&mut self, payload: EntryPayload) -> Result<u64, RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        if self.proposals.len() >= self.config.pending_proposals_max {
            return Err(RaftError::Overloaded);
        }
        let index = self.append_entry(payload);
        self.proposals.insert(index, self.term);
        self.append_pending = true;
        Ok(index)
    }

    /// Appends an entry of this leader's term to its own log.
    pub(crate) fn append_entry(&mut self, payload: EntryPayload) -> u64 {
        let index = self.log.last_index() + 1;
        let is_config = matches!(payload, EntryPayload::Config(_));
        self.log.append(Entry {
            term: self.term,
            index,
            payload,
        });
        if is_config {
            self.refresh_membership();
        }
        index
    }

    /// Whether the next ready holds a snapshot to persist. A caller that
    /// persists several readies at once waits for the ones in flight before
    /// taking such a ready (its state is restored out of order otherwise).
    pub fn snapshot_pending(&self) -> bool {
        self.snapshot_to_persist.is_some()
    }

    /// Whether a ready is waiting.
    pub fn has_ready(&self) -> bool {
        !self.messages.is_empty()
            || self.read_round_requested
            || self.append_pending
            || self.commit_pending
            || self.hard_state() != self.emitted_hard_state
            || self.snapshot_to_persist.is_some()
            || self.log.last_index() > self.emitted_index
            || self.log.applied() < self.log.committed().min(self.log.stable())
            || !self.read_states.is_empty()
            || !self.dropped_proposals.is_empty()
            || !self.dropped_reads.is_empty()
            || !self.log_reads.is_empty()
    }

    /// Takes what the caller must persist, send and apply now. When it holds
    /// a snapshot, the caller drops its stored entries and stores the
    /// snapshot, then `entries` (which then start right after the snapshot).
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.flush_leader_messages();
        }
        let hard_state = self.hard_state();
        let entries: Vec<Entry> = self
            .log
            .unstable()
            .filter(|e| e.index > self.emitted_index)
            .cloned()
            .collect();
        let mut ready = Ready {
            hard_state: (hard_state != self.emitted_hard_state).then_some(hard_state),
            snapshot: self.snapshot_to_persist.take(),
            entries,
            messages: std::mem::take(&mut self.messages),
            committed_entries: Vec::new(),
            read_states: std::mem::take(&mut self.read_states),
            dropped_proposals: Vec::new(),
            dropped_reads: std::mem::take(&mut self.dropped_reads),
            log_reads: std::mem::take(&mut self.log_reads),
            send_before_persist: self.role == Role::Leader,
            installs_before: self.snapshot_installs,
        };
        // Test-only mutation: every member's messages go out before its
        // write, so acknowledgements and votes promise what the disk may
        // not hold; the simulator and the nemesis must catch it.
        #[cfg(feature = "mutation-ack-before-sync")]
        {
            ready.send_before_persist = true;
        }
        self.emitted_hard_state = hard_state;
        self.emitted_index = self.log.last_index();
        // Test-only mutation: a leader takes its entries as persisted as
        // soon as it hands them out, so it counts them towards a commit
        // (and applies them) before its write is durable; the simulator
        // and the nemesis must catch it.
        #[cfg(feature = "mutation-leader-counts-unsynced")]
        if self.role == Role::Leader && self.log.last_index() > self.log.stable() {
            self.log.stable_to(self.log.last_index());
            self.maybe_commit();
        }
        // Only persisted entries are applied: a node never applies what its
        // own disk might not have after a crash.
        let applicable = self.log.committed().min(self.log.stable());
        if self.log.applied() < applicable {
            let entries = self.log.slice(
                self.log.applied() + 1,
                applicable,
                usize::MAX,
                self.config.apply_size_max_bytes,
            );
            if let Some(last) = entries.last() {
                self.log.applied_to(last.index);
            }
            for entry in &entries {
                self.settle_proposal(entry);
            }
            ready.committed_entries = entries;
        }
        ready.dropped_proposals = std::mem::take(&mut self.dropped_proposals);
        ready
    }

    /// The caller has done everything `ready` asked. Readies are advanced
    /// in the order they were taken; several may be taken before the first
    /// is advanced (persisted while the next is written).
    pub fn advance(&mut self, ready: &Ready) {
        if ready.installs_before != self.snapshot_installs {
            // A snapshot was installed since this ready was taken (so this
            // member follows): what it wrote is replaced by what the
            // install's ready writes.
            return;
        }
        if let Some(snapshot) = &ready.snapshot {
            if snapshot.meta.index > self.log.stable() {
                self.log.stable_to(snapshot.meta.index);
            }
        }
        if let Some(last) = ready.entries.last() {
            // The entries may have been replaced since (a new leader); only
            // what is still in the log at that term counts as persisted.
            if self.log.term(last.index) == Some(last.term) && last.index > self.log.stable() {
                self.log.stable_to(last.index);
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// A proposal of this node reached the caller for applying (or not).
    fn settle_proposal(&mut self, entry: &Entry) {
        if let Some(term) = self.proposals.remove(&entry.index) {
            if term != entry.term {
                self.dropped_proposals.push(DroppedProposal {
                    index: entry.index,
                    term,
                    reason: RaftError::ProposalDropped,
                });
            }
        }
    }

    /// Entries removed from this node's log: proposals among them are dropped.
    /// Proposals among removed entries are not reported here: another member
    /// may still hold the entry and commit it. Their fate is settled when an
    /// entry commits at their index (`settle_proposal`).
    pub(crate) fn on_entries_removed(&mut self, removed: &[Entry]) {
        if removed
            .iter()
            .any(|e| matches!(e.payload, EntryPayload::Config(_)))
        {
            self.refresh_membership();
        }
        // Replacement entries from the first removed index on must reach the
        // disk even if entries at those indexes were handed out before.
        if let Some(first) = removed.first() {
            self.emitted_index = self.emitted_index.min(first.index - 1);
        }
    }

    /// Entries after `index` will be handed out again in the next ready.
    pub(crate) fn mark_emitted_up_to(&mut self, index: u64) {
        self.emitted_index = index;
    }

    /// Recomputes the configuration in force from the log.
    pub(crate) fn refresh_membership(&mut self) {
        let (index, config) = self.log.config();
        self.membership = config;
        self.membership_index = index;
        if self.role == Role::Leader {
            let last_index = self.log.last_index();
            let members: BTreeSet<NodeId> = self.membership.members();
            for id in self.progress.keys() {
                if !members.contains(id) {
                    self.departing.entry(*id).or_insert(None);
                }
            }
            let departing = &self.departing;
            self.progress
                .retain(|id, _| members.contains(id) || departing.contains_key(id));
            for id in members {
                // One that was departing comes back (a change was undone by
                // a truncation): what it had is unknown, so probe afresh.
                if id != self.id && self.departing.remove(&id).is_some() {
                    self.progress.insert(id, Progress::new(last_index));
                }
                if id != self.id {
                    self.progress
                        .entry(id)
                        .or_insert_with(|| Progress::new(last_index));
                }
            }
        }
    }

    /// Whether this member may campaign: it is a voter in the configuration
    /// in force, or that configuration is not committed yet and it was a
    /// voter in the one before. Without the second case a leader that
    /// appended C_new (without itself) and then lost its quorum would never
    /// campaign again, and if it holds the longest log nobody else can win
    /// either (found by the simulator, seed 7365).
    pub(crate) fn promotable(&self) -> bool {
        if self.membership.is_voter(self.id) {
            return true;
        }
        self.membership_index > self.log.committed()
            && self.membership_index > 0
            && self
                .log
                .config_at(self.membership_index - 1)
                .is_voter(self.id)
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        self.messages.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    /// Draws a fresh randomized election timeout (xorshift64*, seeded).
    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let random = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let base = self.config.election_timeout_ticks;
        self.randomized_timeout = base + random % base;
    }

    /// Becomes a follower in `term` (following `leader`, 0 = unknown).
    pub(crate) fn become_follower(&mut self, term: u64, leader: NodeId) {
        assert!(
            term >= self.term,
            "became a follower in term {term}, older than its term {}",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = 0;
        }
        if self.role == Role::Leader {
            self.step_down_leader();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
    }

    /// Leader-only state is dropped; reads it accepted can't be confirmed now.
    fn step_down_leader(&mut self) {
        self.progress.clear();
        self.departing.clear();
        self.transfer = None;
        self.timeout_now_sent_tick = None;
        self.seq_sent_tick.clear();
        self.read_round_requested = false;
        self.append_pending = false;
        self.commit_pending = false;
        for read in self.pending_reads.drain(..) {
            self.dropped_reads.push(DroppedRead {
                request_id: read.request_id,
                reason: RaftError::ReadDropped,
            });
        }
        for request_id in self.reads_before_commit.drain(..) {
            self.dropped_reads.push(DroppedRead {
                request_id,
                reason: RaftError::ReadDropped,
            });
        }
    }
}
