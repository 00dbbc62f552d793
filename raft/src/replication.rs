//! Log replication: the leader's batched, pipelined AppendEntries with fast
//! back-off, the follower's side, heartbeats, and the commit rule.

use super::node::{LogRead, Raft, Role};
use super::progress::ReplicationMode;
use super::types::{Entry, MessageBody, NodeId};

/// Heartbeat rounds (one each heartbeat interval) in which a follower
/// answered while behind and not moving, after which the leader assumes
/// its in-flight appends were lost and resends: at least 3, and at least an
/// election timeout's worth, so a follower with a slow disk is not flooded
/// with resends.
fn stalled_heartbeats_max(election_timeout_ticks: u64, heartbeat_interval_ticks: u64) -> u32 {
    let per_timeout = election_timeout_ticks / heartbeat_interval_ticks.max(1);
    u32::try_from(per_timeout).unwrap_or(u32::MAX).max(3)
}

impl Raft {
    /// Sends what each follower is missing, as far as its window allows.
    pub(crate) fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer);
        }
    }

    /// Sends appends to `peer` while its window has room and it is missing
    /// entries (one probe at a time while the match point is unknown).
    pub(crate) fn send_append(&mut self, peer: NodeId) {
        loop {
            let Some(progress) = self.progress.get(&peer) else {
                return;
            };
            if !progress.can_send(self.config.in_flight_max) {
                if matches!(progress.mode, ReplicationMode::Snapshot { .. }) {
                    self.send_snapshot_chunk(peer);
                }
                return;
            }
            let next = progress.next_index;
            let probing = progress.mode == ReplicationMode::Probe;
            if next < self.log.first_index() {
                self.start_snapshot(peer);
                return;
            }
            if progress.reading.is_some() {
                return;
            }
            let prev_log_index = next - 1;
            let Some(prev_log_term) = self.log.term(prev_log_index) else {
                self.start_snapshot(peer);
                return;
            };
            if next < self.log.cache_first() {
                if progress.read_retry_round <= self.tick_round_seq {
                    self.read_evicted(peer, next);
                }
                return;
            }
            let entries = self.log.slice(
                next,
                self.log.last_index(),
                self.config.append_entries_max,
                self.config.append_size_max_bytes,
            );
            if entries.is_empty() && !probing {
                return;
            }
            self.send_entries(peer, prev_log_index, prev_log_term, entries);
            if probing {
                return;
            }
        }
    }

    /// Asks the caller for evicted entries from `from` on, which `peer` needs next.
    fn read_evicted(&mut self, peer: NodeId, from: u64) {
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        progress.reading = Some(from);
        self.log_reads.push(LogRead {
            peer,
            from,
            to: self.log.cache_first() - 1,
            count_max: self.config.append_entries_max,
            size_max_bytes: self.config.append_size_max_bytes,
        });
    }

    /// The caller's answer to a [`LogRead`] for `peer` from `from`: the
    /// entries it read from its log, or `None` if it could not read them
    /// (then the follower gets the snapshot if that reaches `from`, or the
    /// read is asked again after the next tick round). An answer that no longer fits
    /// (another leadership, the follower moved on meanwhile) is dropped and
    /// what the follower needs now is sent instead; entries whose terms
    /// differ from this log's are treated as unreadable.
    pub fn log_read_done(&mut self, peer: NodeId, from: u64, entries: Option<Vec<Entry>>) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        if progress.reading != Some(from) {
            return;
        }
        progress.reading = None;
        let current = progress.next_index == from && progress.can_send(self.config.in_flight_max);
        if !current {
            self.send_append(peer);
            return;
        }
        let prev_log_index = from - 1;
        let prev_log_term = self.log.term(prev_log_index);
        let readable = entries.filter(|entries| {
            !entries.is_empty()
                && entries.iter().enumerate().all(|(i, e)| {
                    e.index == from + i as u64 && self.log.term(e.index) == Some(e.term)
                })
        });
        let (Some(prev_log_term), Some(entries)) = (prev_log_term, readable) else {
            // The snapshot helps only if it reaches what the follower
            // lacks; else the read is asked again next tick round (the
            // caller's log may be busy) or a later snapshot will cover it.
            if self.snapshot.meta.index >= from {
                self.start_snapshot(peer);
            } else if let Some(progress) = self.progress.get_mut(&peer) {
                progress.read_retry_round = self.tick_round_seq + 1;
            }
            return;
        };
        self.send_entries(peer, prev_log_index, prev_log_term, entries);
        self.send_append(peer);
    }

    /// One AppendEntries to `peer` after `(prev_log_index, prev_log_term)`,
    /// counted in its window.
    fn send_entries(
        &mut self,
        peer: NodeId,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
    ) {
        let last = entries.last().map_or(prev_log_index, |e| e.index);
        if let Some(progress) = self.progress.get_mut(&peer) {
            progress.sent(last);
        }
        let leader_commit = self.log.committed();
        self.send(
            peer,
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            },
        );
    }

    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
        leader_commit: u64,
    ) {
        if self.role != Role::Follower {
            // A candidate hearing from the term's leader follows it.
            self.become_follower(self.term, from);
        }
        self.leader = from;
        self.election_elapsed = 0;
        if prev_log_index < self.log.committed() {
            // Already committed here; answer with what we know matches.
            let committed = self.log.committed();
            let skip = (committed - prev_log_index) as usize;
            // Unless what the leader says of that prefix contradicts it: a
            // committed entry was lost somewhere. Refused, and counted.
            let differs =
                |index: u64, term: u64| self.log.term(index).is_some_and(|held| held != term);
            if differs(prev_log_index, prev_log_term)
                || entries.iter().take(skip).any(|e| differs(e.index, e.term))
            {
                self.log.note_committed_conflict();
                return;
            }
            let rest: Vec<Entry> = entries.into_iter().skip(skip).collect();
            let Some(committed_term) = self.log.term(committed) else {
                return;
            };
            return self.handle_append(from, committed, committed_term, rest, leader_commit);
        }
        let has_config = entries
            .iter()
            .any(|e| matches!(e.payload, super::types::EntryPayload::Config(_)));
        match self
            .log
            .maybe_append(prev_log_index, prev_log_term, entries)
        {
            Some((last_new, removed)) => {
                self.on_entries_removed(&removed);
                if has_config {
                    self.refresh_membership();
                }
                let commit = leader_commit.min(last_new);
                if commit > self.log.committed() {
                    self.log.commit_to(commit);
                }
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        success: true,
                        index: last_new,
                        hint_index: 0,
                        conflict_term: 0,
                    },
                );
            }
            None => {
                let (hint_index, conflict_term) = self.log.conflict_hint(prev_log_index);
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        success: false,
                        index: prev_log_index,
                        hint_index,
                        conflict_term,
                    },
                );
            }
        }
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: u64,
        hint_index: u64,
        conflict_term: u64,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        // Fast back-off: skip the follower's whole conflicting term at once.
        // If this log has that term, resume after its last entry of it; else
        // at the first index the follower has of it.
        let next_try = (!success).then(|| match conflict_term {
            0 => hint_index,
            term => self
                .log
                .last_index_of_term(term)
                .map_or(hint_index, |i| i + 1),
        });
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        match next_try {
            None => {
                let moved = progress.acknowledge(index.min(last_index));
                if moved {
                    self.maybe_commit();
                    self.maybe_finish_transfer(from);
                }
            }
            Some(next) => {
                // A rejection at or below the match point is an old answer
                // (the follower has that prefix); index 0 came from
                // step_term (newer term). Neither moves the probe.
                if index == 0
                    || index <= progress.match_index
                    || matches!(progress.mode, ReplicationMode::Snapshot { .. })
                {
                    return;
                }
                // Always move strictly back from what was rejected, so probing ends.
                progress.reject(next.min(index).max(1));
            }
        }
        self.send_append(from);
    }

    /// Sends heartbeats carrying a new read-confirmation round.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        self.read_round_requested = false;
        self.read_seq += 1;
        let seq = self.read_seq;
        self.seq_sent_tick.insert(seq, self.now);
        // Rounds older than an election timeout can't extend a lease or confirm a read.
        let horizon = self
            .now
            .saturating_sub(2 * self.config.election_timeout_ticks);
        self.seq_sent_tick.retain(|_, tick| *tick >= horizon);
        self.send_heartbeats(seq);
    }

    /// A heartbeat to every follower, carrying round `seq` and the commit
    /// index capped at what each is known to have.
    fn send_heartbeats(&mut self, seq: u64) {
        let peers: Vec<(NodeId, u64)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index))
            .collect();
        for (peer, match_index) in peers {
            let commit = self.log.committed().min(match_index);
            self.send(peer, MessageBody::Heartbeat { commit, seq });
        }
    }
    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit: u64, seq: u64) {
        if self.role != Role::Follower {
            self.become_follower(self.term, from);
        }
        self.leader = from;
        self.election_elapsed = 0;
        // The leader sends at most what it knows this follower has, so this is safe.
        if commit > self.log.committed() && commit <= self.log.last_index() {
            self.log.commit_to(commit);
        }
        self.send(from, MessageBody::HeartbeatResponse { seq });
    }

    pub(crate) fn handle_heartbeat_response(&mut self, from: NodeId, seq: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let in_flight_max = self.config.in_flight_max;
        let tick_round = self.tick_round_seq;
        let stalled_max = stalled_heartbeats_max(
            self.config.election_timeout_ticks,
            self.config.heartbeat_interval_ticks,
        );
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.acked_seq = progress.acked_seq.max(seq);
        let behind = progress.match_index < last_index;
        // Judged once per tick's round: heartbeats for reads and new
        // commit indexes go out many times a tick under load, and a
        // follower busy syncing answers a run of them before its append
        // answers; counted per answer, such a run looked like lost appends
        // and sent everything again.
        let new_round = seq >= tick_round && tick_round > progress.stall_round;
        if new_round {
            progress.stall_round = tick_round;
        }
        if !behind {
            progress.stalled_heartbeats = 0;
        } else if new_round {
            progress.stalled_heartbeats += 1;
        }
        match progress.mode {
            _ if !new_round => {}
            // A lost probe or a lost snapshot chunk is retried once a round.
            ReplicationMode::Probe => progress.probe_sent = false,
            ReplicationMode::Replicate if progress.stalled_heartbeats >= stalled_max => {
                // Appends sent optimistically were lost (nothing moved for a
                // while although the follower answers): resend from its match.
                let restart = progress.match_index + 1;
                progress.reject(restart);
                progress.stalled_heartbeats = 0;
            }
            ReplicationMode::Replicate if progress.in_flight.len() >= in_flight_max => {
                // The window is full and answers may be lost: free a slot.
                progress.in_flight.pop_front();
            }
            ReplicationMode::Snapshot { .. } => {
                if let ReplicationMode::Snapshot { in_flight, .. } = &mut progress.mode {
                    *in_flight = 0;
                }
            }
            _ => {}
        }
        self.advance_reads();
        if behind {
            self.send_append(from);
        }
    }

    /// Commits the highest index a quorum has persisted, if it is of this
    /// term (Raft §5.4.2: never by counting replicas of older entries).
    pub(crate) fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let own_match = self.log.stable();
        let quorum_index = self.membership.quorum_index(|id| {
            if id == self.id {
                own_match
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        if quorum_index <= self.log.committed() || self.log.term(quorum_index) != Some(self.term) {
            return;
        }
        self.log.commit_to(quorum_index);
        self.on_commit_advanced();
    }

    fn on_commit_advanced(&mut self) {
        self.on_leader_commit_for_membership();
        if self.role != Role::Leader {
            return;
        }
        self.release_reads_after_commit();
        // Followers learn the new commit index with the next ready rather
        // than at the next heartbeat: once per ready, however many
        // acknowledgements moved it.
        self.commit_pending = true;
    }

    /// Leader: what piled up since the last ready goes out once. New
    /// entries in one append per follower (not one per proposal); one
    /// confirmation round for every read that arrived since the last,
    /// which carries the commit index too; else, if the commit index
    /// moved, heartbeats of the current round (they confirm no new reads).
    pub(crate) fn flush_leader_messages(&mut self) {
        if std::mem::take(&mut self.append_pending) {
            self.broadcast_append();
        }
        let commit_moved = std::mem::take(&mut self.commit_pending);
        if self.read_round_requested {
            self.broadcast_heartbeat();
        } else if commit_moved {
            self.send_heartbeats(self.read_seq);
        }
    }
}
