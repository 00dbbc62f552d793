//! Snapshots: the caller compacts the log up to an applied index with the
//! state machine's bytes; a follower that needs compacted entries receives
//! those bytes in chunks, one in flight at a time (a lost chunk is resent on
//! the next heartbeat answer), installs them and resumes from there.

use super::node::{Raft, Role};
use super::progress::ReplicationMode;
use super::types::{DroppedProposal, MessageBody, NodeId, RaftError, Snapshot, SnapshotMeta};

impl Raft {
    /// Replaces the log up to `index` (which must be applied) by a snapshot
    /// holding `data`, the state machine as of `index`.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), RaftError> {
        if index > self.log.applied() {
            return Err(RaftError::InvalidCompaction {
                index,
                reason: format!("only {} is applied", self.log.applied()),
            });
        }
        if index <= self.log.snapshot.index {
            return Err(RaftError::InvalidCompaction {
                index,
                reason: format!("already compacted to {}", self.log.snapshot.index),
            });
        }
        let config = self.log.config_at(index);
        self.log.compact(index, config);
        self.snapshot = Snapshot {
            meta: self.log.snapshot.clone(),
            data,
        };
        Ok(())
    }

    /// The latest snapshot (what a restarting caller should have persisted).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub(crate) fn start_snapshot(&mut self, peer: NodeId) {
        let index = self.snapshot.meta.index;
        if let Some(progress) = self.progress.get_mut(&peer) {
            progress.mode = ReplicationMode::Snapshot {
                index,
                next_offset: 0,
                in_flight: 0,
            };
            progress.in_flight.clear();
        }
        self.send_snapshot_chunk(peer);
    }

    pub(crate) fn send_snapshot_chunk(&mut self, peer: NodeId) {
        let current_index = self.snapshot.meta.index;
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        let ReplicationMode::Snapshot {
            index,
            next_offset,
            in_flight,
        } = &mut progress.mode
        else {
            return;
        };
        if *index != current_index {
            // A newer snapshot was taken meanwhile: send that one from the start.
            *index = current_index;
            *next_offset = 0;
            *in_flight = 0;
        }
        if *in_flight > 0 {
            return;
        }
        let data = &self.snapshot.data;
        let start = (*next_offset as usize).min(data.len());
        let end = (start + self.config.snapshot_chunk_bytes).min(data.len());
        *in_flight = 1;
        let body = MessageBody::InstallSnapshot {
            meta: self.snapshot.meta.clone(),
            offset: start as u64,
            data: data[start..end].to_vec(),
            done: end == data.len(),
        };
        self.send(peer, body);
    }

    pub(crate) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) {
        if self.role != Role::Follower {
            self.become_follower(self.term, from);
        }
        self.leader = from;
        self.election_elapsed = 0;
        let index = meta.index;
        if index > super::election::TERM_MAX || meta.term > super::election::TERM_MAX {
            // No real log gets there; a peer bug or attack. Ignore it.
            return;
        }
        if index <= self.log.committed() {
            // Everything it covers is already committed here.
            self.incoming_snapshot = None;
            self.send(
                from,
                MessageBody::InstallSnapshotResponse {
                    index,
                    next_offset: offset,
                    done: true,
                },
            );
            return;
        }
        if offset == 0 {
            self.incoming_snapshot = Some(Snapshot {
                meta: meta.clone(),
                data: Vec::new(),
            });
        }
        let expected = match &self.incoming_snapshot {
            Some(incoming) if incoming.meta == meta => incoming.data.len() as u64,
            _ => 0,
        };
        if offset != expected {
            // Out of order or from an older transfer: say where to resume.
            self.send(
                from,
                MessageBody::InstallSnapshotResponse {
                    index,
                    next_offset: expected,
                    done: false,
                },
            );
            return;
        }
        let size_max_bytes = self.config.snapshot_size_max_bytes;
        let Some(incoming) = self.incoming_snapshot.as_mut() else {
            return;
        };
        if incoming.data.len() + data.len() > size_max_bytes {
            // Bounded: a snapshot over the limit is abandoned, not buffered.
            self.incoming_snapshot = None;
            return;
        }
        incoming.data.extend_from_slice(&data);
        let received = incoming.data.len() as u64;
        if !done {
            self.send(
                from,
                MessageBody::InstallSnapshotResponse {
                    index,
                    next_offset: received,
                    done: false,
                },
            );
            return;
        }
        let Some(snapshot) = self.incoming_snapshot.take() else {
            return;
        };
        self.install_snapshot(snapshot);
        self.send(
            from,
            MessageBody::InstallSnapshotResponse {
                index,
                next_offset: received,
                done: true,
            },
        );
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.meta.clone();
        let removed = self.log.restore(meta.clone());
        // Everything after the snapshot goes to disk again, after it (and
        // readies taken before now no longer count as persisting it).
        self.mark_emitted_up_to(meta.index);
        self.snapshot_installs += 1;
        // Proposals inside the snapshot: their entries are gone from this
        // log, so their fate can't be told unless it is the snapshot's own
        // entry. (Settled before the removed entries: those at or below the
        // snapshot may have committed, so they are not "dropped".)
        let settled: Vec<(u64, u64)> = self
            .proposals
            .range(..=meta.index)
            .map(|(i, t)| (*i, *t))
            .collect();
        for (index, term) in settled {
            self.proposals.remove(&index);
            if index == meta.index && term == meta.term {
                continue;
            }
            self.dropped_proposals.push(DroppedProposal {
                index,
                term,
                reason: RaftError::ProposalOutcomeUnknown,
            });
        }
        // Removed entries after the snapshot conflicted with the leader's log
        // at the snapshot point, so the leader can't have them: dropped.
        self.on_entries_removed(&removed);
        self.refresh_membership();
        self.snapshot_to_persist = Some(snapshot.clone());
        self.snapshot = snapshot;
    }

    pub(crate) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        index: u64,
        next_offset: u64,
        done: bool,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        let ReplicationMode::Snapshot {
            index: sending,
            next_offset: next,
            in_flight,
        } = &mut progress.mode
        else {
            return;
        };
        if *sending != index {
            return;
        }
        if done {
            progress.match_index = progress.match_index.max(index);
            progress.next_index = index + 1;
            progress.mode = ReplicationMode::Probe;
            progress.probe_sent = false;
            self.maybe_commit();
            self.maybe_finish_transfer(from);
            self.send_append(from);
            return;
        }
        *next = next_offset;
        *in_flight = 0;
        self.send_snapshot_chunk(from);
    }
}
