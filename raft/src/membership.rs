//! Membership changes by joint consensus: a change of voters first appends
//! C_old,new (decisions need majorities of both), and once that commits the
//! leader appends C_new. Learners are added and removed directly; they get
//! the log but never vote. A leader that is not in C_new steps down once
//! C_new commits.
//!
//! Members a change leaves out keep getting heartbeats (and the log) until
//! an election timeout after the change commits, so that they learn the
//! commit and see for themselves that they were removed.

use std::collections::BTreeMap;

use super::node::{Raft, Role};
use super::progress::Progress;
use super::types::{ConfChange, Configuration, EntryPayload, NodeId, RaftError};

impl Raft {
    /// Proposes a membership change; returns the index of its config entry.
    /// `addresses` is how the caller reaches members; the entry carries the
    /// part of it that names members of the new configuration.
    pub fn propose_conf_change(
        &mut self,
        change: ConfChange,
        addresses: &BTreeMap<NodeId, String>,
    ) -> Result<u64, RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.membership.is_joint() || self.membership_index > self.log.committed() {
            return Err(RaftError::ConfChangeInProgress);
        }
        let current = self.membership.clone();
        let target = apply_change(&current, &change)?;
        let mut entry = if target.voters == current.voters {
            target
        } else {
            Configuration {
                voters: target.voters,
                voters_outgoing: current.voters,
                learners: target.learners,
                addresses: BTreeMap::new(),
                removed: target.removed,
            }
        };
        let members = entry.members();
        entry.addresses = current
            .addresses
            .iter()
            .chain(addresses)
            .filter(|(id, _)| members.contains(id))
            .map(|(id, address)| (*id, address.clone()))
            .collect();
        self.propose_payload(EntryPayload::Config(entry))
    }

    /// After a commit on the leader: finish a joint change, or step down if
    /// the committed configuration no longer has this node as a voter.
    pub(crate) fn on_leader_commit_for_membership(&mut self) {
        if self.membership_index > self.log.committed() {
            return;
        }
        let now = self.now;
        let linger = self.config.election_timeout_ticks;
        for deadline in self.departing.values_mut() {
            deadline.get_or_insert(now + linger);
        }
        self.departing_config_index = self.membership_index;
        if self.membership.is_joint() {
            let mut final_config = Configuration {
                voters: self.membership.voters.clone(),
                voters_outgoing: Default::default(),
                learners: self.membership.learners.clone(),
                addresses: BTreeMap::new(),
                removed: self.membership.removed.clone(),
            };
            let members = final_config.members();
            final_config.addresses = self
                .membership
                .addresses
                .iter()
                .filter(|(id, _)| members.contains(id))
                .map(|(id, address)| (*id, address.clone()))
                .collect();
            self.append_entry(EntryPayload::Config(final_config));
            self.broadcast_append();
        } else if !self.membership.voters.contains(&self.id) {
            // Removed: hand over by stopping; the remaining voters elect a leader.
            self.become_follower(self.term, 0);
        }
    }

    /// Leader: node `id`, which the configuration does not have, is still
    /// sending (it missed its removal, say cut off when the change
    /// committed): replicate to it again, as to a departing member, so it
    /// learns the configuration that left it out. Nothing if it is a member
    /// or already being told.
    pub fn remind_removed(&mut self, id: NodeId) {
        let member = self.membership.is_voter(id) || self.membership.learners.contains(&id);
        if self.role != Role::Leader
            || id == self.id
            || member
            || self.progress.contains_key(&id)
            || self.membership_index > self.log.committed()
        {
            return;
        }
        self.progress
            .insert(id, Progress::new(self.log.last_index()));
        self.departing
            .insert(id, Some(self.now + self.config.election_timeout_ticks));
        self.departing_config_index = self.membership_index;
        self.send_append(id);
    }

    /// Leader: stops replicating to members left out of the configuration
    /// once they have had an election timeout to learn the commit.
    /// A departing node goes once it has the configuration that left it out
    /// (and so learns the commit from the next heartbeat) and its time is
    /// up, or after ten times that if it never catches up (it is down).
    pub(crate) fn expire_departing(&mut self) {
        let now = self.now;
        let cap = 10 * self.config.election_timeout_ticks;
        let needed = self.departing_config_index;
        let progress = &self.progress;
        let expired: Vec<NodeId> = self
            .departing
            .iter()
            .filter(|(id, deadline)| {
                deadline.is_some_and(|d| {
                    let has_it = progress.get(id).is_some_and(|p| p.match_index >= needed);
                    (d <= now && has_it) || d + cap <= now
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.departing.remove(&id);
            self.progress.remove(&id);
        }
    }
}

/// The configuration after `change`, or why it is not allowed.
fn apply_change(current: &Configuration, change: &ConfChange) -> Result<Configuration, RaftError> {
    let mut next = current.clone();
    match *change {
        ConfChange::AddVoter(id) | ConfChange::AddLearner(id) if current.removed.contains(&id) => {
            return Err(RaftError::InvalidConfChange(format!(
                "{id} was removed from the cluster; a removed node's id is not used again"
            )));
        }
        ConfChange::AddVoter(id) => {
            if id == 0 || current.voters.contains(&id) {
                return Err(RaftError::InvalidConfChange(format!(
                    "{id} is already a voter or invalid"
                )));
            }
            next.learners.remove(&id);
            next.voters.insert(id);
        }
        ConfChange::AddLearner(id) => {
            if id == 0 || current.members().contains(&id) {
                return Err(RaftError::InvalidConfChange(format!(
                    "{id} is already a member or invalid"
                )));
            }
            next.learners.insert(id);
        }
        ConfChange::Remove(id) => {
            if !current.members().contains(&id) {
                return Err(RaftError::InvalidConfChange(format!(
                    "{id} is not a member"
                )));
            }
            next.voters.remove(&id);
            next.learners.remove(&id);
            next.removed.insert(id);
            if next.voters.is_empty() {
                return Err(RaftError::InvalidConfChange(
                    "cannot remove the last voter".into(),
                ));
            }
        }
    }
    Ok(next)
}
