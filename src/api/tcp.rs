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
//! Connections follow the node's [`ConnectionPolicy`] (see
//! [`super::connections`]): admitted into a small pool of unidentified
//! connections, each must send a whole first frame within the read
//! timeout, and it then becomes a client (under the client caps) or, if it
//! is a member's `raft` frame, a peer link (under none). Any frame, once
//! begun, must arrive in full within the read timeout, and a client
//! connection with nothing in flight is closed after the idle timeout.
//!
//! Memory: every request reserves, before it runs, the most its answer can
//! take while it is made (twice the largest value, or scan page: the data
//! read and its encoding) from its connection's budget and from the node's; the reader stops reading while
//! either is used up, and the reservation shrinks to the answer's real
//! size once it is encoded and is given back when it is written. So what
//! answers may hold is bounded before anything is computed, however many
//! requests a client pipelines without reading.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use harmonydb_actors::cluster::transport::{frame_traces, PeerError, PeerInbox};
use harmonydb_actors::observe;
use harmonydb_protocol::frame::{codec, is_frame_too_large, write_queued_frames};
use harmonydb_protocol::message::{decode_request, encode, encode_response};
use harmonydb_protocol::{
    ErrorCode, Request, RequestFrame, Response, ResponseFrame, FRAME_SIZE_DEFAULT_MAX_BYTES,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn, Instrument};

use super::connections::{Admission, Pool, Slot};
use super::error::ApiError;
use super::service::Service;

/// Requests one connection may have in the store at once; past it the
/// reader stops reading, which pushes back on the client through TCP.
pub const CONNECTION_INFLIGHT_MAX: usize = 1024;

/// Bytes of answers (reserved, queued or unflushed) the node holds for all
/// connections together. A request waits for room before it runs, so
/// clients that pipeline large reads and never read can't make the node
/// hold more.
pub const ANSWER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// Bytes of answers one connection may hold, so that one client that
/// stops reading can take at most this much of the node-wide budget.
pub const CONNECTION_ANSWER_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// What an answer adds to the data it carries: keys, field names, framing.
const ANSWER_OVERHEAD_BYTES: usize = 64 * 1024;

/// The codes a connection can be closed with (counted by code in
/// `harmonydb_tcp_protocol_errors_total`).
pub const CONNECTION_ERROR_CODES: [ErrorCode; 6] = [
    ErrorCode::FrameTooLarge,
    ErrorCode::MalformedFrame,
    ErrorCode::UnknownOperation,
    ErrorCode::Forbidden,
    ErrorCode::RequestTimeout,
    ErrorCode::Overloaded,
];

/// Answers queued for one connection's socket.
const ANSWER_QUEUE_CAPACITY: usize = 1024;

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
    /// Largest value a get may answer (for the answer budget).
    pub value_size_max_bytes: usize,
    /// Who may connect, and for how long they may take.
    pub admission: Admission,
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
    let answer_budget = Arc::new(Semaphore::new(ANSWER_BUDGET_BYTES));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Refused connections close at once; the refusal is
                    // counted and logged (at a bounded rate) by the admission.
                    let Ok(slot) = targets.admission.admit(Pool::Unidentified, peer.ip()) else {
                        continue;
                    };
                    let connection = Connection {
                        peer,
                        targets: targets.clone(),
                        answer_budget: answer_budget.clone(),
                        stop: stop.clone(),
                        slot,
                    };
                    connections.spawn(connection.run(stream));
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

/// Bytes read from a connection and bytes of whole frames taken from them:
/// when the first is ahead, a frame has begun and not ended.
#[derive(Default)]
struct FrameClock {
    read_bytes: AtomicU64,
    consumed_bytes: AtomicU64,
}

/// A connection's read half that enforces the read timeout: the first
/// frame must be whole within it of connecting, and any later frame within
/// it of its first byte. It fails the read with `TimedOut` when one is not.
struct DeadlineReader<R> {
    inner: R,
    clock: Arc<FrameClock>,
    read_timeout: Duration,
    /// When the current deadline fires; `None` between frames (after the first).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R> DeadlineReader<R> {
    fn new(inner: R, clock: Arc<FrameClock>, read_timeout: Duration) -> Self {
        DeadlineReader {
            inner,
            clock,
            read_timeout,
            deadline: Some(Box::pin(tokio::time::sleep(read_timeout))),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DeadlineReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let read = this.clock.read_bytes.load(Ordering::Relaxed);
        let consumed = this.clock.consumed_bytes.load(Ordering::Relaxed);
        let first_frame_pending = consumed == 0;
        if read == consumed && !first_frame_pending {
            // Between frames: no deadline (the idle timeout is the loop's).
            this.deadline = None;
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "frame not complete within the read timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got = (buf.filled().len() - before) as u64;
        if got > 0 {
            if read == consumed && this.deadline.is_none() {
                // A frame begins: it has the read timeout to finish.
                let mut deadline = Box::pin(tokio::time::sleep(this.read_timeout));
                // Registered now, so its expiry wakes this reader.
                let _ = deadline.as_mut().poll(cx);
                this.deadline = Some(deadline);
            }
            this.clock.read_bytes.fetch_add(got, Ordering::Relaxed);
        }
        polled
    }
}

/// The most the answer to `request` can take while it is made, reserved
/// before it runs: the data read from the store and its encoding exist
/// together for a moment, so twice the largest value (or scan page).
fn answer_reservation_bytes(request: &Request, value_size_max_bytes: usize) -> usize {
    let data = match request {
        Request::Get { .. } => value_size_max_bytes,
        Request::Scan { .. } => {
            harmonydb_actors::kv::SCAN_RESPONSE_SIZE_MAX_BYTES + value_size_max_bytes
        }
        _ => 0,
    };
    2 * data + ANSWER_OVERHEAD_BYTES
}

/// One client or peer connection.
struct Connection {
    peer: SocketAddr,
    targets: TcpTargets,
    answer_budget: Arc<Semaphore>,
    stop: TcpShutdown,
    slot: Slot,
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
        let policy = self.targets.admission.policy();
        let inflight = Arc::new(Semaphore::new(CONNECTION_INFLIGHT_MAX));
        let connection_budget = Arc::new(Semaphore::new(CONNECTION_ANSWER_BUDGET_BYTES));
        let clock = Arc::new(FrameClock::default());
        let reader = DeadlineReader::new(read_half, clock.clone(), policy.read_timeout);
        let mut frames = FramedRead::new(reader, codec(frame_size_max_bytes));
        let peer = self.peer;
        let mut last_active = Instant::now();

        loop {
            let is_peer_link = self.slot.pool() == Pool::Peers;
            let stop = if is_peer_link {
                &mut self.stop.peers
            } else {
                &mut self.stop.clients
            };
            if *stop.borrow() || answers.is_closed() {
                break;
            }
            // A client with nothing in flight and nothing begun may sit
            // idle only so long; peers heartbeat and are never idle.
            let busy = inflight.available_permits() < CONNECTION_INFLIGHT_MAX
                || clock.read_bytes.load(Ordering::Relaxed)
                    > clock.consumed_bytes.load(Ordering::Relaxed);
            if busy {
                last_active = Instant::now();
            }
            let idle_deadline = if is_peer_link || busy {
                None
            } else {
                Some(last_active + policy.idle_timeout)
            };
            let next = tokio::select! {
                next = frames.next() => next,
                // Shutdown: stop reading; what was started is still answered.
                changed = stop.changed() => match changed {
                    Ok(()) => continue,
                    // The node is gone; nothing more will be served.
                    Err(_) => break,
                },
                () = sleep_until_or_forever(idle_deadline) => {
                    let pending = clock.read_bytes.load(Ordering::Relaxed)
                        > clock.consumed_bytes.load(Ordering::Relaxed);
                    if pending || inflight.available_permits() < CONNECTION_INFLIGHT_MAX {
                        continue;
                    }
                    debug!(%peer, idle_ms = policy.idle_timeout.as_millis() as u64, "closing an idle TCP connection");
                    break;
                }
            };
            let bytes = match next {
                None => break,
                Some(Ok(bytes)) => {
                    let frame_bytes = bytes.len() as u64 + FRAME_LENGTH_PREFIX_BYTES;
                    clock
                        .consumed_bytes
                        .fetch_add(frame_bytes, Ordering::Relaxed);
                    last_active = Instant::now();
                    metrics::counter!("harmonydb_tcp_received_bytes_total").increment(frame_bytes);
                    bytes
                }
                Some(Err(error)) if is_frame_too_large(&error) => {
                    let message =
                        format!("frame exceeds the limit of {frame_size_max_bytes} bytes");
                    reject(&answers, 0, ErrorCode::FrameTooLarge, message, peer).await;
                    break;
                }
                Some(Err(error)) if error.kind() == std::io::ErrorKind::TimedOut => {
                    let message = format!(
                        "a frame did not arrive in full within {} ms (the first frame counts from connecting)",
                        policy.read_timeout.as_millis()
                    );
                    reject(&answers, 0, ErrorCode::RequestTimeout, message, peer).await;
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
            drop(bytes);
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
                        // A member's link: no client cap applies to it.
                        let _ = self.slot.move_to(Pool::Peers);
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
            if self.slot.pool() == Pool::Unidentified && self.slot.move_to(Pool::Clients).is_err() {
                let message = "too many client connections (from this address or in all); connect again later".to_string();
                reject(&answers, frame.id, ErrorCode::Overloaded, message, peer).await;
                break;
            }
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break;
            };
            // Room for the largest answer this request can get, before it
            // runs: the reader waits here while the budgets are used up.
            let reserved = answer_reservation_bytes(&frame.body, self.targets.value_size_max_bytes)
                .min(CONNECTION_ANSWER_BUDGET_BYTES);
            let reserved_permits = u32::try_from(reserved).unwrap_or(u32::MAX);
            let mut held = Vec::with_capacity(2);
            for budget in [&connection_budget, &self.answer_budget] {
                // A budget is never closed, so this only waits for room.
                match budget.clone().acquire_many_owned(reserved_permits).await {
                    Ok(permits) => held.push(permits),
                    Err(_) => break,
                }
            }
            let service = self.targets.service.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                let answer = Bytes::from(encode_response(&handle(&service, frame).await));
                // Keep what the answer takes; give the rest of the reservation back.
                let keep = answer.len().min(reserved);
                for permits in &mut held {
                    if let Some(excess) = permits.split(reserved - keep) {
                        drop(excess);
                    }
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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
        .call(frame.body, frame.no_forward)
        .instrument(span)
        .await
        .unwrap_or_else(ApiError::into_response);
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
