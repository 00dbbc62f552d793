//! What travels with every actor message besides its content: its place in
//! the mailbox-depth gauge, the time it waited, and the tracing span of the
//! request it serves, so a trace follows a write from actor to actor.
//!
//! A sender wraps the span that is current when it sends (`Envelope::new`);
//! the handler opens the envelope (`Envelope::open`), which counts the
//! message out of the mailbox and, when the request is traced, enters a span
//! for the handling under the sender's. The envelope counts itself out when
//! dropped unopened too (an actor that stopped), so the gauge never drifts.
//!
//! Every span here has the target `harmonydb_trace`, which only the node's
//! OpenTelemetry layer takes: without an OTLP endpoint they are disabled
//! and cost nothing.

use std::collections::HashMap;
use std::time::Instant;

use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Every actor and message kind whose handling is measured, and whether it
/// comes in an [`Envelope`] (which counts it in the mailbox-depth gauge).
/// Listed so their series exist from the start at 0 ([`register_metrics`]);
/// a kind missing here fails a debug assertion when first used.
pub const ACTOR_MESSAGES: &[(&str, &str, bool)] = &[
    ("RaftReplica", "KvRequest", true),
    ("RaftReplica", "Step", true),
    ("RaftReplica", "GetStatus", true),
    ("RaftReplica", "TransferLeadership", true),
    ("RaftReplica", "ChangeMembership", true),
    ("RaftReplica", "PrepareSnapshot", true),
    ("RaftReplica", "DriveNow", false),
    ("RaftReplica", "Persisted", false),
    ("RaftReplica", "BeginShutdown", false),
    ("RaftReplica", "CheckpointDue", false),
    ("WalWriter", "Append", true),
    ("WalWriter", "Flush", false),
    ("WalWriter", "Sync", false),
    ("WalWriter", "DeleteBelow", false),
    ("WalWriter", "ReadEntries", false),
    ("WalWriter", "GetStats", false),
    ("WalWriter", "RetryBlocked", false),
    ("Transport", "Outbox", true),
    ("Transport", "GetDropped", false),
    ("BufferPoolManager", "SwitchStorage", false),
    ("BufferPoolManager", "RegisterReplica", false),
    ("BufferPoolManager", "Pressure", false),
    ("BufferPoolManager", "WriteCheckpoint", false),
];

/// Creates every actor metric series at 0: a mailbox-depth gauge per
/// enveloped message kind, and the queue and handling histograms, so
/// dashboards show 0 rather than no data before the first message.
pub fn register_metrics() {
    for (actor, message, enveloped) in ACTOR_MESSAGES {
        if *enveloped {
            metrics::gauge!("harmonydb_actor_mailbox_depth", "actor" => *actor, "message" => *message)
                .increment(0.0);
            // Creating the handle registers the series; nothing is recorded.
            let _ = metrics::histogram!("harmonydb_actor_queue_duration_seconds", "actor" => *actor, "message" => *message);
        }
        // Creating the handle registers the series; nothing is recorded.
        let _ = metrics::histogram!("harmonydb_actor_handling_duration_seconds", "actor" => *actor, "message" => *message);
    }
}

fn listed(actor: &str, message: &str) -> bool {
    ACTOR_MESSAGES
        .iter()
        .any(|(a, m, _)| *a == actor && *m == message)
}

/// A message's accounting while it waits in an actor's mailbox.
#[derive(Debug)]
pub struct Envelope {
    actor: &'static str,
    message: &'static str,
    queued_at: Instant,
    span: Span,
    counted: bool,
}

impl Envelope {
    /// A message for `actor` of kind `message`, sent now, on behalf of the
    /// current span.
    pub fn new(actor: &'static str, message: &'static str) -> Envelope {
        Envelope::with_span(actor, message, Span::current())
    }

    /// The same, on behalf of `span` (a batch sent for one traced request).
    pub fn with_span(actor: &'static str, message: &'static str, span: Span) -> Envelope {
        debug_assert!(
            listed(actor, message),
            "{actor} {message} is missing from observe::ACTOR_MESSAGES"
        );
        metrics::gauge!("harmonydb_actor_mailbox_depth", "actor" => actor, "message" => message)
            .increment(1.0);
        Envelope {
            actor,
            message,
            queued_at: Instant::now(),
            span,
            counted: true,
        }
    }

    /// The span of the request this message serves (disabled if none).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Takes the message out of the mailbox count and starts timing its
    /// handling; the returned guard records the time when dropped.
    pub fn open(mut self) -> Handling {
        self.uncount();
        let queued = self.queued_at.elapsed();
        metrics::histogram!("harmonydb_actor_queue_duration_seconds", "actor" => self.actor, "message" => self.message)
            .record(queued.as_secs_f64());
        let span = std::mem::replace(&mut self.span, Span::none());
        Handling::start_in(self.actor, self.message, &span)
    }

    fn uncount(&mut self) {
        if self.counted {
            self.counted = false;
            metrics::gauge!("harmonydb_actor_mailbox_depth", "actor" => self.actor, "message" => self.message)
                .decrement(1.0);
        }
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        self.uncount();
    }
}

/// A message being handled: records the handling time when dropped, and
/// keeps the handling span (a child of the request's) entered meanwhile.
pub struct Handling {
    actor: &'static str,
    message: &'static str,
    started: Instant,
    span: Span,
}

impl Handling {
    /// Times the handling of a message that carries no envelope (internal
    /// notifications, status queries).
    pub fn start(actor: &'static str, message: &'static str) -> Handling {
        Handling::start_in(actor, message, &Span::none())
    }

    /// Times the handling and, if `parent` is a traced request, opens a
    /// span for it under `parent`.
    pub fn start_in(actor: &'static str, message: &'static str, parent: &Span) -> Handling {
        debug_assert!(
            listed(actor, message),
            "{actor} {message} is missing from observe::ACTOR_MESSAGES"
        );
        // Untraced messages (heartbeats, most of the traffic) create no span.
        let span = if parent.is_disabled() {
            Span::none()
        } else {
            tracing::info_span!(target: "harmonydb_trace", parent: parent, "handle", otel.name = %format_args!("{actor} {message}"), actor, message)
        };
        Handling {
            actor,
            message,
            started: Instant::now(),
            span,
        }
    }

    /// The handling span (disabled when the message is not traced), for
    /// work the handler starts and that outlives it.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Runs `work` inside the handling span.
    pub fn in_span<T>(&self, work: impl FnOnce() -> T) -> T {
        self.span.in_scope(work)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        metrics::histogram!("harmonydb_actor_handling_duration_seconds", "actor" => self.actor, "message" => self.message)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// The W3C `traceparent`s of traced writes, by the index of their log
/// entry, so each travels to the followers with its entry.
pub type EntryTraces = std::collections::BTreeMap<u64, String>;

/// The W3C `traceparent` of `span`, to send with a frame, when the span is
/// traced (the OpenTelemetry layer is on and the span is enabled).
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier)
    });
    carrier.remove("traceparent")
}

/// The span of a client request arriving at a front door, named `name`
/// (e.g. `PUT /kv/{key}`): a new trace, or a child of the caller's when it
/// sent a valid `traceparent`.
pub fn request_span(name: impl FnOnce() -> String, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(target: "harmonydb_trace", "request", otel.name = tracing::field::Empty, otel.kind = "server");
    // The name is built only for a traced request: untraced ones (no OTLP
    // endpoint) pay for no formatting.
    if span.is_disabled() {
        return span;
    }
    span.record("otel.name", name());
    if let Some(context) = traceparent.and_then(remote_context) {
        let _ = span.set_parent(context);
    }
    span
}

/// The remote span context a `traceparent` header names, if it is valid.
fn remote_context(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    opentelemetry::trace::TraceContextExt::span(&context)
        .span_context()
        .is_valid()
        .then_some(context)
}

/// A span named `name` under the first of `traceparents` that is valid,
/// linked to the others; and, under each of the others, a span of the
/// same name linked back to it. A frame that carries several traced
/// writes' entries is handled once, in the first write's trace, yet every
/// write's trace shows that this node received its entry. Disabled (no
/// cost) when none is valid.
pub fn span_from_traceparents(name: &'static str, traceparents: &[&str]) -> Span {
    let mut contexts = traceparents.iter().filter_map(|t| remote_context(t));
    let Some(first) = contexts.next() else {
        return Span::none();
    };
    let span = tracing::info_span!(target: "harmonydb_trace", "remote", otel.name = name);
    let _ = span.set_parent(first);
    let primary = opentelemetry::trace::TraceContextExt::span(&span.context())
        .span_context()
        .clone();
    for context in contexts {
        let linked = opentelemetry::trace::TraceContextExt::span(&context)
            .span_context()
            .clone();
        span.add_link(linked);
        let batched = tracing::info_span!(target: "harmonydb_trace", "remote", otel.name = name, batched = true);
        let _ = batched.set_parent(context);
        batched.add_link(primary.clone());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untraced_message_opens_no_span() {
        let envelope = Envelope::new("RaftReplica", "GetStatus");
        assert!(envelope.span().is_disabled());
        let handling = envelope.open();
        assert!(handling.span().is_disabled());
    }
}
