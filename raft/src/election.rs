//! Elections: term checks on every message, pre-vote, votes, becoming
//! leader, check-quorum, and leadership transfer (TimeoutNow).

use std::collections::BTreeSet;

use super::node::{Raft, Role};
use super::progress::Progress;
use super::types::{EntryPayload, Message, MessageBody, NodeId, RaftError};

/// Terms above this are refused as garbage (a peer bug or an attack).
pub(crate) const TERM_MAX: u64 = 1 << 62;

impl Raft {
    /// Applies the term rules to an incoming message. Returns whether the
    /// message should be handled further.
    pub(crate) fn step_term(&mut self, message: &Message) -> bool {
        use MessageBody::*;
        // No real cluster gets near this; refusing it keeps `term + 1` from overflowing.
        if message.term > TERM_MAX {
            return false;
        }
        if message.term > self.term {
            match &message.body {
                RequestVote {
                    transfer, pre_vote, ..
                } => {
                    // Leader stickiness: while this member hears from a leader
                    // it ignores candidates, so a partitioned node that comes
                    // back can't depose a healthy leader (unless the leader
                    // itself asked, by leadership transfer).
                    if self.config.check_quorum
                        && !transfer
                        && self.leader != 0
                        && self.election_elapsed < self.config.election_timeout_ticks
                    {
                        return false;
                    }
                    if *pre_vote {
                        // A pre-vote never changes this member's term.
                        return true;
                    }
                    self.become_follower(message.term, 0);
                }
                RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {
                    // Granted pre-votes carry the term the candidate would use.
                }
                AppendEntries { .. } | Heartbeat { .. } | InstallSnapshot { .. } => {
                    self.become_follower(message.term, message.from)
                }
                _ => self.become_follower(message.term, 0),
            }
        } else if message.term < self.term {
            match &message.body {
                // A stale leader learns the newer term from the answer and
                // steps down; without this, pre-vote could leave it stuck.
                AppendEntries { .. } | Heartbeat { .. } | InstallSnapshot { .. } => {
                    self.send(
                        message.from,
                        AppendEntriesResponse {
                            success: false,
                            index: 0,
                            hint_index: 0,
                            conflict_term: 0,
                        },
                    );
                }
                RequestVote { pre_vote: true, .. } => {
                    self.send(
                        message.from,
                        RequestVoteResponse {
                            granted: false,
                            pre_vote: true,
                        },
                    );
                }
                _ => {}
            }
            return false;
        }
        true
    }

    /// Starts an election now instead of waiting for the election timeout
    /// (with a pre-vote first if configured). A member that may not
    /// campaign, or already leads, does nothing. A group of one voter uses
    /// this at start so it leads at once.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader && self.promotable() {
            self.start_election(false);
        }
    }

    /// Starts a (pre-)election. `transfer` = asked by the leader (TimeoutNow).
    pub(crate) fn start_election(&mut self, transfer: bool) {
        if self.config.pre_vote && !transfer {
            self.campaign(true, false);
        } else {
            self.campaign(false, transfer);
        }
    }

    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        if pre_vote {
            self.role = Role::PreCandidate;
        } else {
            self.term += 1;
            self.vote = self.id;
            self.role = Role::Candidate;
            self.elections.started += 1;
        }
        self.leader = 0;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.election_won() {
            self.on_election_won(pre_vote);
            return;
        }
        let term = if pre_vote { self.term + 1 } else { self.term };
        let voters: BTreeSet<NodeId> = self
            .membership
            .voters
            .iter()
            .chain(&self.membership.voters_outgoing)
            .copied()
            .filter(|id| *id != self.id)
            .collect();
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for voter in voters {
            self.send_with_term(
                voter,
                term,
                MessageBody::RequestVote {
                    last_log_index,
                    last_log_term,
                    pre_vote,
                    transfer,
                },
            );
        }
    }

    fn election_won(&self) -> bool {
        let granted: BTreeSet<NodeId> = self
            .votes
            .iter()
            .filter(|(_, g)| **g)
            .map(|(id, _)| *id)
            .collect();
        self.membership.has_quorum(&granted)
    }

    fn election_lost(&self) -> bool {
        // Lost once the members not yet answered can't make a quorum even if they all grant.
        let not_rejected: BTreeSet<NodeId> = self
            .membership
            .members()
            .into_iter()
            .filter(|id| self.votes.get(id) != Some(&false))
            .collect();
        !self.membership.has_quorum(&not_rejected)
    }

    fn on_election_won(&mut self, pre_vote: bool) {
        if pre_vote {
            self.campaign(false, false);
        } else {
            self.become_leader();
        }
    }

    pub(crate) fn handle_request_vote(
        &mut self,
        from: NodeId,
        term: u64,
        last_log_index: u64,
        last_log_term: u64,
        pre_vote: bool,
        transfer: bool,
    ) {
        // With leases, a member that just started may have acknowledged a
        // leader's heartbeat before it restarted; it waits one election
        // timeout before voting so that leader's lease stays sound.
        if self.config.lease_drift_ticks.is_some()
            && !transfer
            && self.now < self.config.election_timeout_ticks
        {
            self.send(
                from,
                MessageBody::RequestVoteResponse {
                    granted: false,
                    pre_vote,
                },
            );
            return;
        }
        // A member that sees itself as a learner still answers: it may have
        // been promoted by a config entry it hasn't received yet, and refusing
        // could leave the group without a quorum (the simulator found such a
        // deadlock). A learner's vote never counts: candidates only count the
        // voters of their own configuration (`Configuration::has_quorum`).
        let can_vote = self.vote == from
            || (self.vote == 0 && self.leader == 0)
            || (pre_vote && term > self.term);
        #[cfg(not(feature = "mutation-vote-stale-log"))]
        let up_to_date = self.log.is_up_to_date(last_log_index, last_log_term);
        // Test-only mutation: vote without the up-to-date check (Raft §5.4.1),
        // so the simulator can show that it catches the resulting data loss.
        #[cfg(feature = "mutation-vote-stale-log")]
        let up_to_date = {
            let _ = (last_log_index, last_log_term);
            true
        };
        let granted = can_vote && up_to_date;
        if granted && !pre_vote {
            assert!(
                self.vote == 0 || self.vote == from,
                "voted for node {from} in term {} after voting for node {}",
                self.term,
                self.vote
            );
            self.vote = from;
            self.reset_election_timer();
        }
        // A granted pre-vote answers in the candidate's prospective term so it counts.
        let answer_term = if pre_vote && granted { term } else { self.term };
        self.send_with_term(
            from,
            answer_term,
            MessageBody::RequestVoteResponse { granted, pre_vote },
        );
    }

    pub(crate) fn handle_vote_response(
        &mut self,
        from: NodeId,
        term: u64,
        granted: bool,
        pre_vote: bool,
    ) {
        let expected = match (self.role, pre_vote) {
            (Role::PreCandidate, true) => term == self.term + 1 || !granted,
            (Role::Candidate, false) => term == self.term,
            _ => false,
        };
        if !expected {
            return;
        }
        self.votes.insert(from, granted);
        if self.election_won() {
            self.on_election_won(pre_vote);
        } else if self.election_lost() {
            self.become_follower(self.term, 0);
        }
    }

    pub(crate) fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        self.role = Role::Leader;
        self.elections.won += 1;
        self.leader = self.id;
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        let last_index = self.log.last_index();
        self.progress.clear();
        self.departing.clear();
        for id in self.membership.members() {
            if id != self.id {
                self.progress.insert(id, Progress::new(last_index));
            }
        }
        // Entries of earlier terms commit only through one of this term
        // (Raft §5.4.2, Figure 8), so a new leader appends an empty one.
        self.append_entry(EntryPayload::Noop);
        self.broadcast_append();
    }

    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.expire_departing();
        if self.election_elapsed >= self.config.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // Partitioned from a quorum: stop pretending to lead.
                self.become_follower(self.term, 0);
                return;
            }
            for progress in self.progress.values_mut() {
                progress.recent_active = false;
            }
            if self.transfer.is_some_and(|(_, started)| {
                self.now - started >= self.config.election_timeout_ticks
            }) {
                // The target didn't take over within an election timeout: give up.
                self.transfer = None;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
            self.tick_round_seq = self.read_seq;
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let mut active: BTreeSet<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.recent_active)
            .map(|(id, _)| *id)
            .collect();
        active.insert(self.id);
        self.membership.has_quorum(&active)
    }

    /// The voter leadership is being handed to, while a transfer is under
    /// way (it is given up after an election timeout).
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|(target, _)| target)
    }

    /// Starts handing leadership to `target`: replicate until it is caught
    /// up, then tell it to campaign at once. Proposals wait meanwhile.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.membership.is_voter(target) {
            return Err(RaftError::InvalidConfChange(format!(
                "{target} is not a voter"
            )));
        }
        // Only the first request starts the clock: repeating it must not
        // postpone check-quorum or the transfer's abandonment.
        if self.transfer.map(|(t, _)| t) != Some(target) {
            self.transfer = Some((target, self.now));
        }
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(target);
        } else {
            // Catch it up from what it is known to have, rather than waiting
            // for optimistic appends that may have been lost to time out.
            if let Some(progress) = self.progress.get_mut(&target) {
                let from = progress.match_index + 1;
                progress.reject(from);
            }
            self.send_append(target);
        }
        Ok(())
    }

    /// Called when a follower's match index moved: finish a transfer to it.
    pub(crate) fn maybe_finish_transfer(&mut self, follower: NodeId) {
        if let Some((target, _)) = self.transfer {
            let caught_up = self
                .progress
                .get(&target)
                .is_some_and(|p| p.match_index == self.log.last_index());
            if target == follower && caught_up {
                self.send_timeout_now(target);
            }
        }
    }

    fn send_timeout_now(&mut self, target: NodeId) {
        self.timeout_now_sent_tick = Some(self.now);
        self.send(target, MessageBody::TimeoutNow);
    }

    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if from == self.leader && self.promotable() && self.role == Role::Follower {
            self.start_election(true);
        }
    }
}
