//! The MessagePack TCP API. Each connection has a reader that decodes frames
//! and starts one task per request (bounded per connection), and a writer
//! that sends answers as they complete, in any order, matched by id.
//!
//! A frame over the limit, a body that doesn't decode, or an unknown `op`
//! gets an error frame (with the request's id when it can be read, else 0),
//! after which the connection stops reading and closes once in-flight
//! answers are written. Nothing a peer sends can panic or stall the node.
//!
//! Peers use the same port and framing: a `raft` frame is checked by the
//! [`PeerInbox`] and its messages go to the replica, with no answer (Raft
//! answers with messages of its own on the other node's link). A refused
//! peer frame gets a `forbidden` or `malformed_frame` error frame and the
//! link is closed. A connection that has carried Raft traffic keeps reading
//! through shutdown until the replica is done, so in-flight writes can still
//! commit.
//!
//! Bounds: connections (`CONNECTIONS_MAX`), requests in flight per
//! connection (`CONNECTION_INFLIGHT_MAX`), and bytes of answers held for all
//! connections (`ANSWER_BUDGET_BYTES`); each waits rather than grows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use harmonydb_actors::cluster::transport::{frame_traces, PeerError, PeerInbox};
use harmonydb_actors::observe;
use harmonydb_protocol::frame::{codec, is_frame_too_large, write_queued_frames};
use harmonydb_protocol::message::{decode_request, encode};
use harmonydb_protocol::{
    ErrorCode, Request, RequestFrame, Response, ResponseFrame, FRAME_SIZE_DEFAULT_MAX_BYTES,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn, Instrument};

use super::service::Service;

/// Requests one connection may have in the store at once; past it the
/// reader stops reading, which pushes back on the client through TCP.
pub const CONNECTION_INFLIGHT_MAX: usize = 1024;

/// Open client connections at once; a connection over it is closed at accept.
pub const CONNECTIONS_MAX: usize = 1024;

/// Bytes of encoded answers the node holds for all connections together
/// (waiting in queues or unflushed). An answer waits for room, so a client
/// that pipelines large scans and never reads can't make the node hold more.
pub const ANSWER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// Bytes of encoded answers one connection may hold, so that one client that
/// stops reading can take at most this much of the node-wide budget.
pub const CONNECTION_ANSWER_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// Answers queued for one connection's socket.
const ANSWER_QUEUE_CAPACITY: usize = 1024;

/// The codes a connection can be closed with (counted by code in
/// `harmonydb_tcp_protocol_errors_total`).
pub const CONNECTION_ERROR_CODES: [ErrorCode; 4] = [
    ErrorCode::FrameTooLarge,
    ErrorCode::MalformedFrame,
    ErrorCode::UnknownOperation,
    ErrorCode::Forbidden,
];

/// Bytes of the length prefix before every frame, counted in the byte metrics.
const FRAME_LENGTH_PREFIX_BYTES: u64 = 4;

/// An encoded answer and the budget permits it holds until it is flushed.
type Answer = (Bytes, Vec<OwnedSemaphorePermit>);

/// Where a TCP server sends what it reads.
#[derive(Clone)]
pub struct TcpTargets {
    /// Client requests.
    pub service: Service,
    /// Peers' Raft frames.
    pub peers: PeerInbox,
    /// Largest frame read.
    pub frame_size_max_bytes: usize,
}

/// When connections stop reading.
#[derive(Clone)]
pub struct TcpShutdown {
    /// Client connections stop (and the listener closes) when this turns true.
    pub clients: watch::Receiver<bool>,
    /// Peer links stop when this turns true.
    pub peers: watch::Receiver<bool>,
}

/// Accepts connections until client shutdown, then waits for every
/// connection to finish: each stops reading, writes the answers of the
/// requests it had started, and closes (peer links once peer shutdown comes).
pub async fn serve(listener: TcpListener, targets: TcpTargets, stop: TcpShutdown) {
    let mut shutdown = stop.clients.clone();
    let connection_slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let answer_budget = Arc::new(Semaphore::new(ANSWER_BUDGET_BYTES));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
                        warn!(%peer, limit = CONNECTIONS_MAX, "refusing a TCP connection: too many open");
                        metrics::counter!("harmonydb_tcp_connections_refused_total").increment(1);
                        continue;
                    };
                    let connection = Connection {
                        peer,
                        targets: targets.clone(),
                        answer_budget: answer_budget.clone(),
                        stop: stop.clone(),
                    };
                    connections.spawn(async move {
                        connection.run(stream).await;
                        drop(slot);
                    });
                }
                // Accept errors (EMFILE, a reset before accept) concern one peer; keep listening.
                Err(error) => warn!(%error, "accepting a TCP connection failed"),
            },
            // Finished connections are reaped as they end, so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    info!(
        open_connections = connections.len(),
        "TCP listener closed; draining connections"
    );
    while connections.join_next().await.is_some() {}
    info!("TCP connections drained");
}

/// One client or peer connection.
struct Connection {
    peer: SocketAddr,
    targets: TcpTargets,
    answer_budget: Arc<Semaphore>,
    stop: TcpShutdown,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        metrics::gauge!("harmonydb_tcp_connections").increment(1.0);
        let (read_half, write_half) = stream.into_split();
        let (answers, queue) = mpsc::channel::<Answer>(ANSWER_QUEUE_CAPACITY);
        // Scan answers are bounded by the store's byte budget, not the request
        // frame limit, so answers may use the larger of the two limits.
        let frame_size_max_bytes = self.targets.frame_size_max_bytes;
        let answer_size_max_bytes = frame_size_max_bytes.max(FRAME_SIZE_DEFAULT_MAX_BYTES);
        let writer = tokio::spawn(write_queued_frames(
            write_half,
            queue,
            answer_size_max_bytes,
        ));
        let inflight = Arc::new(Semaphore::new(CONNECTION_INFLIGHT_MAX));
        let connection_budget = Arc::new(Semaphore::new(CONNECTION_ANSWER_BUDGET_BYTES));
        let mut frames = FramedRead::new(read_half, codec(frame_size_max_bytes));
        let peer = self.peer;
        // Set by the first Raft frame: from then on this is a peer link.
        let mut is_peer_link = false;

        loop {
            let stop = if is_peer_link {
                &mut self.stop.peers
            } else {
                &mut self.stop.clients
            };
            if *stop.borrow() {
                break;
            }
            let next = tokio::select! {
                next = frames.next() => next,
                // Shutdown: stop reading; what was started is still answered.
                changed = stop.changed() => match changed {
                    Ok(()) => continue,
                    // The node is gone; nothing more will be served.
                    Err(_) => break,
                },
            };
            let bytes = match next {
                None => break,
                Some(Ok(bytes)) => {
                    metrics::counter!("harmonydb_tcp_received_bytes_total")
                        .increment(bytes.len() as u64 + FRAME_LENGTH_PREFIX_BYTES);
                    bytes
                }
                Some(Err(error)) if is_frame_too_large(&error) => {
                    let message =
                        format!("frame exceeds the limit of {frame_size_max_bytes} bytes");
                    reject(&answers, 0, ErrorCode::FrameTooLarge, message, peer).await;
                    break;
                }
                Some(Err(error)) => {
                    debug!(%peer, %error, "TCP connection read failed");
                    break;
                }
            };
            let frame = match decode_request(&bytes) {
                Ok(frame) => frame,
                Err(failure) => {
                    reject(&answers, failure.id, failure.code, failure.message, peer).await;
                    break;
                }
            };
            if let Request::Raft {
                from,
                to,
                messages,
                traces,
            } = &frame.body
            {
                let traces = frame_traces(&frame.trace, traces);
                match self.targets.peers.deliver(*from, *to, messages, &traces) {
                    Ok(_) => {
                        is_peer_link = true;
                        continue;
                    }
                    Err(error) => {
                        let code = match error {
                            PeerError::Undecodable(_) => ErrorCode::MalformedFrame,
                            _ => ErrorCode::Forbidden,
                        };
                        reject(&answers, frame.id, code, error.to_string(), peer).await;
                        break;
                    }
                }
            }
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break;
            };
            let service = self.targets.service.clone();
            let answers = answers.clone();
            let budgets = [connection_budget.clone(), self.answer_budget.clone()];
            tokio::spawn(async move {
                let answer = Bytes::from(encode(&handle(&service, frame).await));
                let mut held = Vec::with_capacity(budgets.len());
                for budget in budgets {
                    // A budget is never closed, so this only waits for room; an
                    // answer larger than a whole budget takes all of it.
                    let bytes = answer.len().min(CONNECTION_ANSWER_BUDGET_BYTES);
                    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
                    held.extend(budget.acquire_many_owned(bytes).await.ok());
                }
                metrics::counter!("harmonydb_tcp_sent_bytes_total")
                    .increment(answer.len() as u64 + FRAME_LENGTH_PREFIX_BYTES);
                // The writer is gone only if the socket failed; the client won't read this anyway.
                let _ = answers.send((answer, held)).await;
                drop(permit);
            });
        }
        drop(answers);
        let _ = writer.await;
        metrics::gauge!("harmonydb_tcp_connections").decrement(1.0);
    }
}

/// Sends a connection-ending error frame.
async fn reject(
    answers: &mpsc::Sender<Answer>,
    id: u64,
    code: ErrorCode,
    message: String,
    peer: SocketAddr,
) {
    debug_assert!(
        CONNECTION_ERROR_CODES.contains(&code),
        "{code} is not listed"
    );
    warn!(%peer, id, code = code.as_str(), %message, "closing TCP connection after a bad frame");
    metrics::counter!("harmonydb_tcp_protocol_errors_total", "code" => code.as_str()).increment(1);
    let frame = ResponseFrame {
        id,
        body: Response::Error {
            code,
            message,
            leader: None,
            current_version: None,
        },
    };
    let _ = answers
        .send((Bytes::from(encode(&frame)), Vec::new()))
        .await;
}

/// Runs one request and builds its answer frame.
async fn handle(service: &Service, frame: RequestFrame) -> ResponseFrame {
    let started = Instant::now();
    let op_name = frame.body.op_name();
    let span = observe::request_span(|| format!("TCP {op_name}"), frame.trace.as_deref());
    metrics::gauge!("harmonydb_tcp_requests_in_flight").increment(1.0);
    let body = service
        .handle(frame.body, frame.no_forward)
        .instrument(span)
        .await;
    metrics::gauge!("harmonydb_tcp_requests_in_flight").decrement(1.0);
    let status = match &body {
        Response::Error { code, .. } => code.as_str(),
        _ => "ok",
    };
    let labels = [("op", op_name), ("status", status)];
    metrics::counter!("harmonydb_tcp_requests_total", &labels).increment(1);
    metrics::histogram!("harmonydb_tcp_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    ResponseFrame { id: frame.id, body }
}
