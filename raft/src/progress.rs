//! What a leader knows about each follower: how far its log matches, what to
//! send next, and how many appends are in flight (the pipelining window).

use std::collections::VecDeque;

/// How the leader is sending to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReplicationMode {
    /// Looking for the match point: one append at a time, waiting for the answer.
    Probe,
    /// Match known: appends are pipelined up to the in-flight window.
    Replicate,
    /// The follower needs the snapshot at `index`; `next_offset` is the next chunk.
    Snapshot {
        /// Index of the snapshot being sent.
        index: u64,
        /// Offset of the next chunk to send.
        next_offset: u64,
        /// Offsets of chunks sent and not yet acknowledged.
        in_flight: usize,
    },
}

/// A follower's replication state.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Sending mode.
    pub mode: ReplicationMode,
    /// Last index of each append in flight, oldest first.
    pub in_flight: VecDeque<u64>,
    /// In probe mode: an append is out and unanswered.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest read-confirmation round it acknowledged.
    pub acked_seq: u64,
    /// Heartbeat answers in a row that found it behind with no progress: a
    /// sign that appends sent optimistically were lost.
    pub stalled_heartbeats: u32,
    /// The latest tick's heartbeat round its stall was judged in.
    pub stall_round: u64,
    /// A read of evicted entries from this index is out with the caller
    /// (at most one at a time; nothing else is sent until it is answered).
    pub reading: Option<u64>,
    /// After a read the caller could not serve, no new one is asked before
    /// this tick round.
    pub read_retry_round: u64,
}

impl Progress {
    /// A follower of a new leader whose last index is `last_index`.
    pub fn new(last_index: u64) -> Self {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            mode: ReplicationMode::Probe,
            in_flight: VecDeque::new(),
            probe_sent: false,
            recent_active: false,
            acked_seq: 0,
            stalled_heartbeats: 0,
            stall_round: 0,
            reading: None,
            read_retry_round: 0,
        }
    }

    /// Whether another append may be sent now.
    pub fn can_send(&self, window: usize) -> bool {
        match self.mode {
            ReplicationMode::Probe => !self.probe_sent,
            ReplicationMode::Replicate => self.in_flight.len() < window,
            ReplicationMode::Snapshot { .. } => false,
        }
    }

    /// Records an append ending at `last_index` as sent.
    pub fn sent(&mut self, last_index: u64) {
        match self.mode {
            ReplicationMode::Probe => self.probe_sent = true,
            ReplicationMode::Replicate => {
                self.next_index = last_index + 1;
                self.in_flight.push_back(last_index);
            }
            ReplicationMode::Snapshot { .. } => {}
        }
    }

    /// A success up to `index`. Returns whether the match index moved.
    pub fn acknowledge(&mut self, index: u64) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
            self.stalled_heartbeats = 0;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.in_flight.front().is_some_and(|last| *last <= index) {
            self.in_flight.pop_front();
        }
        if self.mode == ReplicationMode::Probe {
            self.mode = ReplicationMode::Replicate;
            self.probe_sent = false;
        }
        moved
    }

    /// A rejection: go back to probing from `next_index`.
    pub fn reject(&mut self, next_index: u64) {
        self.next_index = next_index.max(self.match_index + 1);
        self.mode = ReplicationMode::Probe;
        self.probe_sent = false;
        self.in_flight.clear();
    }
}
