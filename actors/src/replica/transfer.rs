//! Leadership transfer on the replica: asked for by an operator (or by a
//! leader whose disk is full), started in the core, and answered here once
//! it has an outcome, as membership changes are: the new leader leads,
//! another node won the election, or the core gave the transfer up after
//! an election timeout. Nothing outside the replica polls for it.

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::info;

use super::{most_caught_up_other_voter, RaftReplica};
use crate::kv::KvError;
use crate::observe::Envelope;
use harmonydb_raft::{NodeId, RaftError, Role};

/// Asks the leader to hand leadership to `target`, or to the most
/// caught-up other voter; answered once a new leader leads (with it and its
/// term), or with why not.
pub struct TransferLeadership {
    /// The voter to lead next, if the caller chose one.
    pub target: Option<NodeId>,
    /// Mailbox accounting and the asking request's span.
    pub envelope: Envelope,
}

impl TransferLeadership {
    /// A transfer request on behalf of the current span.
    pub fn new(target: Option<NodeId>) -> TransferLeadership {
        TransferLeadership {
            target,
            envelope: Envelope::new("RaftReplica", "TransferLeadership"),
        }
    }
}

/// Who leads after a transfer, and in which term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transferred {
    /// The new leader (the target).
    pub leader: NodeId,
    /// Its term.
    pub term: u64,
}

impl actix::Message for TransferLeadership {
    type Result = Result<Transferred, TransferError>;
}

/// Why leadership wasn't handed over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This member doesn't lead (0: no leader known).
    #[error("this node does not lead")]
    NotLeader {
        /// The leader it knows of, if any.
        leader: NodeId,
    },
    /// The target is not a voter of the configuration in force.
    #[error("node {target} is not a voter (voters: {voters:?})")]
    NotAVoter {
        /// The requested target.
        target: NodeId,
        /// The voters there are.
        voters: Vec<NodeId>,
    },
    /// The leader is the only voter.
    #[error("no other voter to hand leadership to")]
    NoOtherVoter,
    /// Another node won the election the transfer started.
    #[error("node {leader} won the election instead of node {target}; ask again to move it")]
    OtherWon {
        /// The target asked for.
        target: NodeId,
        /// Who leads now.
        leader: NodeId,
    },
    /// The target never caught up or never won: the leader gave the
    /// transfer up after an election timeout and leads on.
    #[error("the transfer to node {target} was given up after an election timeout; this node still leads")]
    Abandoned {
        /// The target asked for.
        target: NodeId,
    },
    /// The replica is not serving (storage failure, shutting down).
    #[error(transparent)]
    Unavailable(#[from] KvError),
}

/// Transfers waiting for their outcome.
#[derive(Default)]
pub(super) struct Transfers {
    waiting: Vec<(NodeId, oneshot::Sender<Result<Transferred, TransferError>>)>,
}

impl Transfers {
    /// Answers every waiting transfer that has an outcome now: `leader`
    /// leads in `term` (0: none known), and the core's transfer, if any,
    /// is to `in_progress`; this node is `id` and still leads if `leads`.
    fn settle(
        &mut self,
        id: NodeId,
        leader: NodeId,
        term: u64,
        leads: bool,
        in_progress: Option<NodeId>,
    ) {
        self.waiting.retain_mut(|(target, reply)| {
            let outcome = if leader == *target && leader != 0 {
                Ok(Transferred { leader, term })
            } else if leader != 0 && leader != id {
                Err(TransferError::OtherWon {
                    target: *target,
                    leader,
                })
            } else if leads && in_progress.is_none() {
                Err(TransferError::Abandoned { target: *target })
            } else {
                return !reply.is_closed();
            };
            let reply = std::mem::replace(reply, oneshot::channel().0);
            let _ = reply.send(outcome);
            false
        });
    }
}

impl RaftReplica {
    /// Answers the transfers that have an outcome (called whenever the
    /// leader may have changed, and every tick).
    pub(super) fn settle_transfers(&mut self) {
        if self.transfers.waiting.is_empty() {
            return;
        }
        let id = self.raft.id();
        let leads = self.raft.role() == Role::Leader;
        self.transfers.settle(
            id,
            self.raft.leader(),
            self.raft.term(),
            leads,
            self.raft.transfer_target(),
        );
    }
}

impl Handler<TransferLeadership> for RaftReplica {
    type Result = ResponseFuture<Result<Transferred, TransferError>>;

    fn handle(&mut self, request: TransferLeadership, ctx: &mut Self::Context) -> Self::Result {
        let handling = request.envelope.open();
        let _entered = handling.span().enter();
        let refused = |error| -> Self::Result { Box::pin(async move { Err(error) }) };
        if let Some(fault) = &self.failed {
            return refused(TransferError::Unavailable(KvError::Storage(fault.clone())));
        }
        self.catch_up_ticks();
        let status = self.raft.status();
        if status.role != Role::Leader {
            return refused(TransferError::NotLeader {
                leader: status.leader,
            });
        }
        let voters: Vec<NodeId> = status.config.voters.iter().copied().collect();
        let target = match request.target {
            Some(target) if !status.config.is_voter(target) => {
                return refused(TransferError::NotAVoter { target, voters });
            }
            Some(target) => target,
            None => match most_caught_up_other_voter(&status) {
                Some(target) => target,
                None => return refused(TransferError::NoOtherVoter),
            },
        };
        if target == status.id {
            let done = Transferred {
                leader: status.id,
                term: status.term,
            };
            return Box::pin(async move { Ok(done) });
        }
        match self.raft.transfer_leadership(target) {
            Ok(()) => {
                info!(target, term = status.term, "handing leadership over");
                let (reply, answer) = oneshot::channel();
                self.transfers.waiting.push((target, reply));
                self.schedule_drive(ctx);
                Box::pin(async move {
                    answer
                        .await
                        .unwrap_or_else(|_| Err(TransferError::Unavailable(KvError::ShuttingDown)))
                })
            }
            Err(RaftError::NotLeader { leader }) => refused(TransferError::NotLeader { leader }),
            Err(_) => refused(TransferError::NotAVoter { target, voters }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(
        target: NodeId,
    ) -> (
        Transfers,
        oneshot::Receiver<Result<Transferred, TransferError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        (
            Transfers {
                waiting: vec![(target, reply)],
            },
            answer,
        )
    }

    #[test]
    fn a_transfer_is_answered_once_it_has_an_outcome() {
        // Still under way: no answer.
        let (mut transfers, mut answer) = waiting(2);
        transfers.settle(1, 1, 3, true, Some(2));
        assert!(answer.try_recv().is_err());
        // The target leads.
        transfers.settle(1, 2, 4, false, None);
        assert_eq!(
            answer.try_recv(),
            Ok(Ok(Transferred { leader: 2, term: 4 }))
        );
        assert!(transfers.waiting.is_empty());

        let (mut transfers, mut answer) = waiting(2);
        transfers.settle(1, 3, 4, false, None);
        assert_eq!(
            answer.try_recv(),
            Ok(Err(TransferError::OtherWon {
                target: 2,
                leader: 3
            }))
        );

        let (mut transfers, mut answer) = waiting(2);
        transfers.settle(1, 1, 3, true, None);
        assert_eq!(
            answer.try_recv(),
            Ok(Err(TransferError::Abandoned { target: 2 }))
        );
    }
}
