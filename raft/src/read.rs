//! Linearizable reads: ReadIndex (confirm leadership with a heartbeat round,
//! then serve once applied up to the commit index at the time of the read)
//! and lease reads (serve at once while a quorum is known to follow this
//! leader, minus a clock-drift margin).

use std::collections::BTreeSet;

use super::node::{PendingRead, Raft, Role};
use super::types::{NodeId, RaftError, ReadState};

impl Raft {
    /// Asks for a linearizable read. The answer comes as a `ReadState` in a
    /// later ready (serve it once applied up to its index) or as a dropped
    /// read if leadership is lost first.
    pub fn read_index(&mut self, request_id: u64) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.pending_reads.len() + self.reads_before_commit.len()
            >= self.config.pending_reads_max
        {
            return Err(RaftError::Overloaded);
        }
        if !self.committed_in_current_term() {
            // The commit index of a new leader may lag what was committed
            // before it; wait for its first entry to commit.
            self.reads_before_commit.push(request_id);
            return Ok(());
        }
        self.queue_read(request_id);
        Ok(())
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    fn queue_read(&mut self, request_id: u64) {
        let index = self.log.committed();
        if self.membership.has_quorum(&BTreeSet::from([self.id])) {
            self.read_states.push(ReadState { request_id, index });
            return;
        }
        // Only answers to a round sent after this read arrived prove that
        // this node still led when it did: the read waits for the next round.
        // All reads that arrive before it is sent share it; it goes out at
        // the next ready at the latest (or with the next tick's heartbeat).
        self.read_round_requested = true;
        self.pending_reads.push_back(PendingRead {
            request_id,
            index,
            seq: self.read_seq + 1,
        });
    }

    /// Releases reads whose round a quorum has acknowledged.
    pub(crate) fn advance_reads(&mut self) {
        while let Some(read) = self.pending_reads.front().copied() {
            let mut acked: BTreeSet<NodeId> = self
                .progress
                .iter()
                .filter(|(_, p)| p.acked_seq >= read.seq)
                .map(|(id, _)| *id)
                .collect();
            acked.insert(self.id);
            if !self.membership.has_quorum(&acked) {
                break;
            }
            self.pending_reads.pop_front();
            self.read_states.push(ReadState {
                request_id: read.request_id,
                index: read.index,
            });
        }
    }

    /// A new leader's first commit: reads that waited for it can proceed.
    pub(crate) fn release_reads_after_commit(&mut self) {
        if self.committed_in_current_term() {
            for request_id in std::mem::take(&mut self.reads_before_commit) {
                self.queue_read(request_id);
            }
        }
    }

    /// Serves a read at once from the leader's lease, if it holds one: a
    /// quorum acknowledged heartbeats sent less than an election timeout
    /// (minus the drift margin) ago, so no other leader can exist yet.
    pub fn read_lease(&mut self, request_id: u64) -> Result<(), RaftError> {
        let Some(drift) = self.config.lease_drift_ticks else {
            return Err(RaftError::LeaseNotHeld);
        };
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        // A transfer lets the target campaign at once, so the lease is void.
        let after_timeout_now = self
            .timeout_now_sent_tick
            .is_some_and(|sent| self.now < sent + self.config.election_timeout_ticks);
        if self.transfer.is_some() || after_timeout_now || !self.committed_in_current_term() {
            return Err(RaftError::LeaseNotHeld);
        }
        let lease_start = self.quorum_contact_tick();
        let lease_ticks = self.config.election_timeout_ticks - drift;
        match lease_start {
            Some(start) if self.now < start + lease_ticks => {
                self.read_states.push(ReadState {
                    request_id,
                    index: self.log.committed(),
                });
                Ok(())
            }
            _ => Err(RaftError::LeaseNotHeld),
        }
    }

    /// The latest tick T such that a quorum acknowledged a heartbeat sent at
    /// or after T (this node counts as now).
    fn quorum_contact_tick(&self) -> Option<u64> {
        let mut contact: Vec<(NodeId, u64)> = self
            .progress
            .iter()
            .filter_map(|(id, p)| {
                self.seq_sent_tick
                    .get(&p.acked_seq)
                    .map(|tick| (*id, *tick))
            })
            .collect();
        contact.push((self.id, self.now));
        let mut ticks: Vec<u64> = contact.iter().map(|(_, t)| *t).collect();
        ticks.sort_unstable_by(|a, b| b.cmp(a));
        ticks.dedup();
        ticks.into_iter().find(|tick| {
            let agreed: BTreeSet<NodeId> = contact
                .iter()
                .filter(|(_, t)| t >= tick)
                .map(|(id, _)| *id)
                .collect();
            self.membership.has_quorum(&agreed)
        })
    }
}
