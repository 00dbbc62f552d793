//! The messages that carry Raft traffic between the replica and the
//! transport, in both directions: [`Outbox`] (the replica's messages for
//! peers, to the `Transport`) and [`Step`] (a peer's message, to the
//! replica). They live here, beside the transport, so that neither side
//! imports the other: the replica reaches the transport through a
//! `Recipient<Outbox>`, the peer inbox the replica through a
//! `Recipient<Step>`.

use harmonydb_raft::Message as RaftMessage;

use crate::observe::{EntryTraces, Envelope};

/// Messages a replica wants delivered to peers, in order.
#[derive(Debug)]
pub struct Outbox {
    /// The messages, each addressed to its `to`.
    pub messages: Vec<RaftMessage>,
    /// The trace contexts of the traced writes whose entries the messages
    /// carry, by entry index: each travels with its entry, whichever
    /// ready (and frame) the entry goes out in, so every write's trace
    /// reaches every follower.
    pub traces: EntryTraces,
    /// Mailbox accounting, and the span the messages were sent in.
    pub envelope: Envelope,
}

impl Outbox {
    /// Messages sent on behalf of the current span.
    pub fn new(messages: Vec<RaftMessage>) -> Outbox {
        Outbox::with_span(messages, tracing::Span::current())
    }

    /// Messages sent on behalf of `span`.
    pub fn with_span(messages: Vec<RaftMessage>, span: tracing::Span) -> Outbox {
        Outbox {
            messages,
            traces: EntryTraces::new(),
            envelope: Envelope::with_span("Transport", "Outbox", span),
        }
    }

    /// The same, carrying the trace contexts of the entries' writes.
    pub fn with_traces(mut self, traces: EntryTraces) -> Outbox {
        self.traces = traces;
        self
    }
}

impl actix::Message for Outbox {
    type Result = ();
}

/// A message from a peer.
#[derive(Debug)]
pub struct Step {
    /// The message.
    pub message: RaftMessage,
    /// Mailbox accounting, and the span of the peer's traced write (if the
    /// frame carried a trace context).
    pub envelope: Envelope,
}

impl Step {
    /// A peer's message, handled on behalf of the current span.
    pub fn new(message: RaftMessage) -> Step {
        Step::with_span(message, tracing::Span::current())
    }

    /// A peer's message, handled on behalf of `span`.
    pub fn with_span(message: RaftMessage, span: tracing::Span) -> Step {
        Step {
            message,
            envelope: Envelope::with_span("RaftReplica", "Step", span),
        }
    }
}

impl actix::Message for Step {
    type Result = ();
}
