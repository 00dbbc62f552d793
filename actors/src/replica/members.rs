//! Membership on the replica: changes asked for by operators (add a
//! learner, promote it, remove a member) proposed to the core and answered
//! once the final configuration commits; the member book kept current from
//! the configuration in force; and this node's own removal.
//!
//! A node learns it was removed when a configuration that leaves it out is
//! committed as far as it knows (the leader keeps replicating to leaving
//! members for an election timeout after the change commits, so they do
//! learn). It then writes `REMOVED` next to its storage, refuses every
//! request (health included) with `removed`, and ignores peers: it takes no
//! further part, also after a restart.

use std::collections::BTreeMap;
use std::path::Path;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::RaftReplica;
use crate::cluster::members::check_address;
use crate::kv::{KvError, NodeFault};
use crate::observe::Envelope;
use harmonydb_raft::{ConfChange, Configuration, NodeId, RaftError, Role};

/// How far (in entries) a learner's log may trail the leader's commit
/// index and still count as caught up for promotion.
pub const LEARNER_CATCH_UP_ENTRIES: u64 = 1000;

/// The name of the marker a removed node leaves in its data directory.
pub const REMOVED_MARKER: &str = "REMOVED";

/// A membership change an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Add `id`, reachable at `address`, as a learner.
    AddLearner {
        /// The new node's id.
        id: NodeId,
        /// Its TCP address (`host:port`).
        address: String,
    },
    /// Make learner `id` a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove voter or learner `id`.
    Remove {
        /// The member.
        id: NodeId,
    },
}

/// Asks the leader to change the membership; answered with the committed
/// configuration once the change is complete (a voter change goes through
/// a joint configuration first).
pub struct ChangeMembership {
    /// The change.
    pub change: MemberChange,
    /// Mailbox accounting and the asking request's span.
    pub envelope: Envelope,
}

impl ChangeMembership {
    /// A change requested on behalf of the current span.
    pub fn new(change: MemberChange) -> Self {
        ChangeMembership {
            change,
            envelope: Envelope::new("RaftReplica", "ChangeMembership"),
        }
    }
}

impl actix::Message for ChangeMembership {
    type Result = Result<Configuration, MembershipError>;
}

/// Why a membership change was refused or has no known outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// This node does not lead (0: no leader known).
    #[error("this node does not lead")]
    NotLeader {
        /// The leader it knows of.
        leader: NodeId,
    },
    /// Another change is under way.
    #[error("a membership change is already in progress; wait for it to finish and ask again")]
    InProgress,
    /// Leadership is being handed over; the next leader takes changes.
    #[error("a leadership transfer is in progress; ask again once the new leader leads")]
    TransferInProgress,
    /// The node named is not a member.
    #[error("node {id} is not a member (members: {members:?})")]
    UnknownNode {
        /// The id asked for.
        id: NodeId,
        /// The members there are.
        members: Vec<NodeId>,
    },
    /// The id is taken by a member at another address.
    #[error("node {id} is already a member, at {address}")]
    AlreadyMember {
        /// The id.
        id: NodeId,
        /// Where that member is.
        address: String,
    },
    /// The learner's log is too far behind to vote yet.
    #[error("learner {id} is not caught up: it has the log to index {match_index}, the leader has committed {commit} (it must have the entry that added it and trail by at most {LEARNER_CATCH_UP_ENTRIES}); ask again once it has caught up")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// What it is known to have.
        match_index: u64,
        /// The leader's commit index.
        commit: u64,
    },
    /// Removing the last voter would leave nobody to decide.
    #[error("node {id} is the last voter; add another voter before removing it")]
    LastVoter {
        /// The id.
        id: NodeId,
    },
    /// The request itself is not valid (id 0, a bad address).
    #[error("{0}")]
    Invalid(String),
    /// The leader lost leadership before the change completed; it may or
    /// may not take effect (read `/cluster` to see).
    #[error("leadership was lost before the change completed; it may or may not take effect")]
    OutcomeUnknown,
    /// The replica is not serving (storage failure, removed, shutting down).
    #[error(transparent)]
    Unavailable(#[from] KvError),
}

/// A change this leader proposed and has not answered yet.
pub(super) struct PendingChange {
    /// The index of its (first) configuration entry.
    index: u64,
    /// The term it was proposed in.
    term: u64,
    reply: oneshot::Sender<Result<Configuration, MembershipError>>,
}

/// Membership bookkeeping of a replica.
pub(super) struct Membership {
    /// The index of the configuration last published to the book.
    published_index: Option<u64>,
    /// This node has been a member of a configuration it knows (a joining
    /// node's log holds older configurations without it: those don't remove it).
    has_been_member: bool,
    pending: Option<PendingChange>,
}

impl Membership {
    pub(super) fn new() -> Self {
        Membership {
            published_index: None,
            has_been_member: false,
            pending: None,
        }
    }
}

impl RaftReplica {
    /// Publishes the configuration in force to the member book, notices
    /// this node's removal, and answers a pending change that completed
    /// (or whose leader lost its term). Called after every ready.
    pub(super) fn check_membership(&mut self) {
        // Runs after every ready: the usual case (nothing new, nothing
        // pending) must not copy the configuration.
        let id = self.raft.id();
        let (config, index) = self.raft.membership();
        let committed = index <= self.raft.commit_index();
        let is_member = config.is_voter(id) || config.learners.contains(&id);
        let joint = config.is_joint();
        if self.membership.published_index != Some(index) {
            self.membership.published_index = Some(index);
            self.book.learn(&config.addresses);
            let members = config.members();
            // A joining node has no configuration yet: it keeps the book it
            // was seeded with until it gets one.
            if !members.is_empty() {
                self.book.set_members(members);
            }
            metrics::gauge!("harmonydb_raft_voters").set(config.voters.len() as f64);
            metrics::gauge!("harmonydb_raft_learners").set(config.learners.len() as f64);
            metrics::gauge!("harmonydb_raft_joint_configuration").set(f64::from(u8::from(joint)));
            metrics::gauge!("harmonydb_raft_removed")
                .set(f64::from(u8::from(self.book.removed_at().is_some())));
        }
        if is_member {
            self.membership.has_been_member = true;
        } else if committed
            && self.membership.has_been_member
            && self.book.removed_at().is_none()
            && self.state.applied_index() >= index
        {
            // Only once applied: writes committed before the change are
            // answered first (applying goes on after the removal).
            self.on_removed(index);
        }
        let Some(pending) = &self.membership.pending else {
            return;
        };
        let outcome = if committed && !joint && index >= pending.index {
            metrics::counter!("harmonydb_raft_membership_changes_total").increment(1);
            Ok(self.raft.membership().0.clone())
        } else if self.raft.role() != Role::Leader || self.raft.term() != pending.term {
            Err(MembershipError::OutcomeUnknown)
        } else {
            return;
        };
        if let Some(pending) = self.membership.pending.take() {
            let _ = pending.reply.send(outcome);
        }
    }

    /// This node was left out of a committed configuration at `index`.
    fn on_removed(&mut self, index: u64) {
        warn!(
            index,
            "this node was removed from the cluster (committed configuration at index {index}); it takes no further part"
        );
        self.book.mark_removed(index);
        metrics::gauge!("harmonydb_raft_removed").set(1.0);
        let marker = self.storage_dir.with_file_name(REMOVED_MARKER);
        if let Err(error) = write_marker(&marker, index) {
            // Without the marker a restart would not know: stop serving
            // now, and say why.
            self.fail(NodeFault::new(
                format!(
                    "this node was removed, and recording it in {} failed",
                    marker.display()
                ),
                error,
            ));
        }
        // A write not applied yet may still commit through the others.
        self.waiting.answer_all(
            || {
                KvError::OutcomeUnknown(format!(
                    "this node was removed from the cluster (configuration at index {index}) before the write's outcome was known"
                ))
            },
            || KvError::Removed { index },
        );
    }

    /// Validates `change` against the configuration in force and proposes it.
    pub(super) fn propose_member_change(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<Result<Configuration, MembershipError>>,
    ) {
        let status = self.raft.status();
        if status.role != Role::Leader {
            let _ = reply.send(Err(MembershipError::NotLeader {
                leader: status.leader,
            }));
            return;
        }
        let config = &status.config;
        let members: Vec<NodeId> = config.members().into_iter().collect();
        let mut addresses: BTreeMap<NodeId, String> = self.book.addresses();
        let unknown = |id| MembershipError::UnknownNode {
            id,
            members: members.clone(),
        };
        let core_change = match &change {
            MemberChange::AddLearner { id, address } => {
                if *id == 0 {
                    let _ = reply.send(Err(MembershipError::Invalid(
                        "node id 0 is reserved".into(),
                    )));
                    return;
                }
                if let Err(reason) = check_address(address) {
                    let _ = reply.send(Err(MembershipError::Invalid(reason)));
                    return;
                }
                if config.members().contains(id) {
                    let known = self.book.address(*id).unwrap_or_default();
                    let (_, config_index) = self.raft.membership();
                    // Asking again (a joining node that restarted) is not an
                    // error, once the first ask has committed.
                    let answer = if known == *address && config_index <= status.commit {
                        Ok(config.clone())
                    } else if known == *address {
                        Err(MembershipError::InProgress)
                    } else {
                        Err(MembershipError::AlreadyMember {
                            id: *id,
                            address: known,
                        })
                    };
                    let _ = reply.send(answer);
                    return;
                }
                addresses.insert(*id, address.clone());
                ConfChange::AddLearner(*id)
            }
            MemberChange::Promote { id } => {
                let (_, config_index) = self.raft.membership();
                if config.voters.contains(id) && !config.is_joint() && config_index <= status.commit
                {
                    // Already done (a retry whose first answer was lost).
                    let _ = reply.send(Ok(config.clone()));
                    return;
                }
                if config.is_voter(*id) {
                    let _ = reply.send(Err(MembershipError::InProgress));
                    return;
                }
                if !config.learners.contains(id) {
                    let _ = reply.send(Err(unknown(*id)));
                    return;
                }
                let match_index = status.match_index.get(id).copied().unwrap_or(0);
                // It must at least have the entry that made it a learner:
                // one that never answered is not caught up however short
                // the log is.
                let (_, config_index) = self.raft.membership();
                if match_index < config_index
                    || match_index + LEARNER_CATCH_UP_ENTRIES < status.commit
                {
                    let _ = reply.send(Err(MembershipError::NotCaughtUp {
                        id: *id,
                        match_index,
                        commit: status.commit,
                    }));
                    return;
                }
                ConfChange::AddVoter(*id)
            }
            MemberChange::Remove { id } => {
                if !config.members().contains(id) {
                    let _ = reply.send(Err(unknown(*id)));
                    return;
                }
                if config.voters.len() == 1 && config.voters.contains(id) {
                    let _ = reply.send(Err(MembershipError::LastVoter { id: *id }));
                    return;
                }
                ConfChange::Remove(*id)
            }
        };
        if self.membership.pending.is_some() {
            let _ = reply.send(Err(MembershipError::InProgress));
            return;
        }
        match self.raft.propose_conf_change(core_change, &addresses) {
            Ok(index) => {
                info!(
                    ?change,
                    index,
                    term = status.term,
                    "membership change proposed"
                );
                if let MemberChange::AddLearner { id, address } = &change {
                    // The first appends to it go out before this entry is
                    // persisted and published.
                    self.book.learn(&BTreeMap::from([(*id, address.clone())]));
                }
                self.membership.pending = Some(PendingChange {
                    index,
                    term: status.term,
                    reply,
                });
            }
            Err(error) => {
                let error = match error {
                    RaftError::NotLeader { leader } => MembershipError::NotLeader { leader },
                    RaftError::ConfChangeInProgress => MembershipError::InProgress,
                    RaftError::TransferInProgress => MembershipError::TransferInProgress,
                    RaftError::InvalidConfChange(reason) => MembershipError::Invalid(reason),
                    other => MembershipError::Unavailable(KvError::Unavailable(other.to_string())),
                };
                let _ = reply.send(Err(error));
            }
        }
    }
}

impl Handler<ChangeMembership> for RaftReplica {
    type Result = ResponseFuture<Result<Configuration, MembershipError>>;

    fn handle(&mut self, request: ChangeMembership, ctx: &mut Self::Context) -> Self::Result {
        let handling = request.envelope.open();
        let _entered = handling.span().enter();
        let (reply, answer) = oneshot::channel();
        match self.serving() {
            Err(error) => {
                let _ = reply.send(Err(error.into()));
            }
            Ok(()) => {
                self.catch_up_ticks();
                self.propose_member_change(request.change, reply);
                self.schedule_drive(ctx);
            }
        }
        Box::pin(async move {
            answer
                .await
                .unwrap_or(Err(MembershipError::Unavailable(KvError::ShuttingDown)))
        })
    }
}

/// Writes the removal marker durably (write, sync, rename, sync directory).
fn write_marker(path: &Path, index: u64) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    writeln!(file, "{index}")?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the removal marker in `data_dir`: the index of the configuration
/// that removed this node, if it was removed.
pub fn read_removed_marker(data_dir: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(data_dir.join(REMOVED_MARKER)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{REMOVED_MARKER} holds {:?}: {error}", text.trim()),
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}
