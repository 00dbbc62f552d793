//! How front doors reach the state machine: a [`KvHandle`] checks limits,
//! bounds the requests in flight, sends a [`KvRequest`] to whatever
//! handles them (the node's `RaftReplica`, which owns the KV state: the
//! handle knows it only as a `Recipient`) and waits, up to the request
//! timeout, for the answer.

use std::sync::Arc;

use actix::prelude::*;
use harmonydb_protocol::{Consistency, Staleness};
use tokio::sync::{oneshot, Semaphore};

use super::{KvError, KvLimits, KvOp, KvReply};
use crate::observe::Envelope;

/// What a read or write produced, and for stale reads how stale it may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvAnswer {
    /// The result.
    pub reply: KvReply,
    /// For stale reads: how far behind the answering replica was.
    pub staleness: Option<Staleness>,
}

impl KvAnswer {
    /// An answer that is not a stale read.
    pub fn fresh(reply: KvReply) -> Self {
        KvAnswer {
            reply,
            staleness: None,
        }
    }
}

/// A request and the channel its answer goes to.
pub struct KvRequest {
    /// What to do.
    pub op: KvOp,
    /// How fresh a read must be (ignored by writes).
    pub consistency: Consistency,
    /// Where to answer.
    pub reply: oneshot::Sender<Result<KvAnswer, KvError>>,
    /// Mailbox accounting and the request's span.
    pub envelope: Envelope,
}

impl KvRequest {
    /// A request sent on behalf of the current span.
    pub fn new(
        op: KvOp,
        consistency: Consistency,
        reply: oneshot::Sender<Result<KvAnswer, KvError>>,
    ) -> KvRequest {
        KvRequest {
            op,
            consistency,
            reply,
            envelope: Envelope::new("RaftReplica", "KvRequest"),
        }
    }
}

impl Message for KvRequest {
    type Result = ();
}

/// Stop taking requests and answer once every accepted write is resolved.
pub struct BeginShutdown;

impl Message for BeginShutdown {
    type Result = ();
}

/// Checks limits, refuses at once when too many requests are already in
/// the replica, and awaits the answer up to the request timeout.
///
/// The bound is a semaphore rather than a mailbox capacity because actix
/// gives every clone of an `Addr` its own extra slot, so a mailbox bound
/// alone does not bound a server that clones the address per request.
#[derive(Clone)]
pub struct KvHandle {
    addr: Recipient<KvRequest>,
    limits: KvLimits,
    inflight: Arc<Semaphore>,
}

impl KvHandle {
    /// A handle to what runs requests (a running replica).
    pub fn new(addr: Recipient<KvRequest>, limits: KvLimits) -> Self {
        let inflight = Arc::new(Semaphore::new(limits.inflight_requests_max));
        KvHandle {
            addr,
            limits,
            inflight,
        }
    }

    /// The limits this handle enforces.
    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// Runs one operation; reads are linearizable.
    pub async fn call(&self, op: KvOp) -> Result<KvReply, KvError> {
        Ok(self.call_with(op, Consistency::Linearizable).await?.reply)
    }

    /// Runs one operation, reads at the given consistency.
    pub async fn call_with(&self, op: KvOp, consistency: Consistency) -> Result<KvAnswer, KvError> {
        self.limits.check(&op)?;
        let Ok(_permit) = self.inflight.try_acquire() else {
            metrics::counter!("harmonydb_kv_overloaded_total").increment(1);
            return Err(KvError::Overloaded);
        };
        let (reply, answer) = oneshot::channel();
        self.addr
            .try_send(KvRequest::new(op, consistency, reply))
            .map_err(|error| match error {
                SendError::Full(_) => {
                    metrics::counter!("harmonydb_kv_overloaded_total").increment(1);
                    KvError::Overloaded
                }
                SendError::Closed(_) => KvError::ShuttingDown,
            })?;
        // A write that times out may still commit later: its outcome is unknown.
        match tokio::time::timeout(self.limits.request_timeout, answer).await {
            Ok(answer) => answer.map_err(|_| KvError::ShuttingDown)?,
            Err(_) => Err(KvError::OutcomeUnknown(format!(
                "no outcome within the request timeout of {} ms",
                self.limits.request_timeout.as_millis()
            ))),
        }
    }
}
