//! Entries of several traced writes that travel to a follower in one frame
//! keep their own traces: the frame carries every write's trace context,
//! and the follower records its receipt in each write's trace (the first
//! write's span linked to the others, theirs linked back to it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use harmonydb_actors::cluster::members::MemberBook;
use harmonydb_actors::cluster::messages::{Outbox, Step};
use harmonydb_actors::cluster::transport::{listen, PeerInbox, Transport};
use harmonydb_actors::observe::{self, EntryTraces};
use harmonydb_raft::{Entry, EntryPayload, Message as RaftMessage, MessageBody};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tokio::net::TcpListener;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

/// Keeps every span the provider exports.
#[derive(Clone, Debug, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("spans").extend(batch);
        Ok(())
    }
}

/// Counts the messages node 2 receives.
#[derive(Default)]
struct Follower {
    received: usize,
}

impl Actor for Follower {
    type Context = Context<Self>;
}

impl Handler<Step> for Follower {
    type Result = ();
    fn handle(&mut self, step: Step, _: &mut Self::Context) {
        // Opening the envelope records the handling under the frame's span.
        let _handling = step.envelope.open();
        self.received += 1;
    }
}

struct Received;

impl Message for Received {
    type Result = usize;
}

impl Handler<Received> for Follower {
    type Result = usize;
    fn handle(&mut self, _: Received, _: &mut Self::Context) -> usize {
        self.received
    }
}

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        payload: EntryPayload::Command(vec![index as u8]),
    }
}

#[actix_rt::test]
async fn entries_batched_into_one_append_keep_their_own_traces() {
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("test"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_target(
            "harmonydb_trace",
            tracing::level_filters::LevelFilter::TRACE,
        ));
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .expect("the only subscriber in this test binary");
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    // Two writes, each its own trace, whose entries 5 and 6 go out together.
    let writes = [
        observe::request_span(|| "PUT a".into(), None),
        observe::request_span(|| "PUT b".into(), None),
    ];
    let trace_ids: Vec<_> = writes
        .iter()
        .map(|span| span.context().span().span_context().trace_id())
        .collect();
    assert_ne!(trace_ids[0], trace_ids[1]);
    let traces: EntryTraces = [5, 6]
        .into_iter()
        .zip(&writes)
        .map(|(index, span)| (index, observe::traceparent(span).expect("traced")))
        .collect();

    let follower = Follower::default().start();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let book =
        |ids: &[u64]| MemberBook::new(ids.iter().map(|id| (*id, format!("n{id}:1"))).collect());
    actix::spawn(listen(
        listener,
        PeerInbox::new(2, book(&[1, 2]), follower.clone().recipient()),
    ));
    let transport =
        Transport::new(1, MemberBook::new(BTreeMap::from([(2, addr.to_string())]))).start();
    let append = RaftMessage {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log_index: 4,
            prev_log_term: 1,
            entries: vec![entry(5), entry(6)],
            leader_commit: 4,
        },
    };
    let heartbeat = RaftMessage {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Heartbeat { commit: 4, seq: 1 },
    };
    transport.do_send(Outbox::with_span(vec![append], tracing::Span::none()).with_traces(traces));
    // An untraced message records nothing on the follower.
    transport.do_send(Outbox::with_span(vec![heartbeat], tracing::Span::none()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while follower.send(Received).await.expect("follower") < 2 {
        assert!(Instant::now() < deadline, "the follower got its messages");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    drop(writes);
    provider.force_flush().expect("flush");

    let spans = collected.0.lock().expect("spans").clone();
    let received: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.name == "Transport receive")
        .collect();
    assert_eq!(
        received.len(),
        2,
        "one receipt per traced write, none for the heartbeat: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let in_trace = |trace| {
        received
            .iter()
            .find(|span| span.span_context.trace_id() == trace)
            .unwrap_or_else(|| panic!("no receipt in trace {trace}"))
    };
    let first = in_trace(trace_ids[0]);
    let second = in_trace(trace_ids[1]);
    let linked = |span: &SpanData| -> Vec<_> {
        span.links
            .iter()
            .map(|link| link.span_context.trace_id())
            .collect()
    };
    assert_eq!(linked(first), vec![trace_ids[1]]);
    assert_eq!(linked(second), vec![trace_ids[0]]);
    // The follower's handling of the append joined the first write's trace.
    assert!(
        spans.iter().any(|span| span.name == "RaftReplica Step"
            && span.span_context.trace_id() == trace_ids[0]
            && span.parent_span_id == first.span_context.span_id()),
        "the follower's handling is a child of the receipt"
    );
}
