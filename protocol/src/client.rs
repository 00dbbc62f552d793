//! An async client over one TCP connection. Requests are pipelined: any
//! number of tasks may call it at once (it is `Clone`), each request gets an
//! id, and answers are matched by id in whatever order they arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::frame::{codec, write_queued_frames, FRAME_SIZE_DEFAULT_MAX_BYTES};
use crate::message::{
    encode, Consistency, ErrorCode, Item, LeaderHint, Request, RequestFrame, Response,
    ResponseFrame,
};

/// Requests queued for the socket before `request` waits for room.
const OUTGOING_QUEUE_CAPACITY: usize = 1024;

/// Largest answer the client reads. Answers are bounded by the node (values
/// by its value limit, scans by their byte budget), so this only guards
/// against a peer that is not a HarmonyDB node.
const ANSWER_SIZE_MAX_BYTES: usize = 80 * 1024 * 1024;

/// How long a request waits for its answer by default.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Why a request did not get a successful answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The OS's reason.
        reason: String,
    },
    /// The connection closed or failed before the answer came.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node answered with an error.
    #[error("{code}: {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
        /// With `not_leader`: where the leader is.
        leader: Option<LeaderHint>,
        /// With `version_mismatch`: the key's version when the write was refused (0 = absent).
        current_version: Option<u64>,
    },
    /// The request is larger than a frame may be; nothing was sent.
    #[error("request of {size_bytes} bytes exceeds the frame limit of {size_max_bytes} bytes")]
    RequestTooLarge {
        /// The encoded request's size.
        size_bytes: usize,
        /// The frame limit.
        size_max_bytes: usize,
    },
    /// `Client::scan` was given a request that is not a scan; nothing was sent.
    #[error("scan was given a {0} request")]
    NotAScan(&'static str),
    /// The node answered with a response that doesn't fit the request.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
}

impl ClientError {
    /// The server's error code, if the node answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Waiter = oneshot::Sender<Result<Response, ClientError>>;

/// State shared by the client's handles and its reader task.
struct Shared {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Waiter>>,
    /// Set once the connection is gone; later requests fail with it at once.
    closed: Mutex<Option<ClientError>>,
}

impl Shared {
    fn fail_all(&self, error: ClientError) {
        if let Ok(mut closed) = self.closed.lock() {
            closed.get_or_insert(error.clone());
        }
        let waiters: Vec<Waiter> = match self.pending.lock() {
            Ok(mut pending) => pending.drain().map(|(_, w)| w).collect(),
            Err(_) => Vec::new(),
        };
        for waiter in waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

/// A connection to one node.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<(Bytes, ())>,
    timeout: Duration,
    request_size_max_bytes: usize,
}

impl Client {
    /// Connects to a node's TCP address.
    pub async fn connect(
        addr: impl ToSocketAddrs + std::fmt::Display,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        // Requests are small and latency-bound; batching is done by the writer task.
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
        });
        let (outgoing, queue) = mpsc::channel::<(Bytes, ())>(OUTGOING_QUEUE_CAPACITY);

        let writer_shared = shared.clone();
        tokio::spawn(async move {
            let written = write_queued_frames(write_half, queue, ANSWER_SIZE_MAX_BYTES).await;
            if let Err(error) = written {
                writer_shared.fail_all(ClientError::ConnectionLost(error.to_string()));
            }
        });

        let reader_shared = shared.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(read_half, codec(ANSWER_SIZE_MAX_BYTES));
            let mut connection_error = None;
            let reason = loop {
                let bytes = match frames.next().await {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(error)) => break error.to_string(),
                    None => break "the node closed the connection".to_string(),
                };
                let frame: ResponseFrame = match rmp_serde::from_slice(&bytes) {
                    Ok(frame) => frame,
                    Err(error) => break format!("undecodable response frame: {error}"),
                };
                if frame.id == 0 {
                    // An error about the connection itself. The node still
                    // answers requests it had already started before it
                    // closes, so keep reading; what is left unanswered at
                    // the close fails with this error.
                    if let Response::Error {
                        code,
                        message,
                        leader,
                        current_version,
                    } = frame.body
                    {
                        connection_error = Some(ClientError::Server {
                            code,
                            message,
                            leader,
                            current_version,
                        });
                    }
                    continue;
                }
                let waiter = reader_shared
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&frame.id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(frame.body));
                }
            };
            reader_shared.fail_all(connection_error.unwrap_or(ClientError::ConnectionLost(reason)));
        });

        Ok(Client {
            shared,
            outgoing,
            timeout: REQUEST_TIMEOUT_DEFAULT,
            request_size_max_bytes: FRAME_SIZE_DEFAULT_MAX_BYTES,
        })
    }

    /// The same connection with a different per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same connection for a node whose `max_frame_bytes` is not the
    /// default: requests up to `frame_size_max_bytes` are sent.
    pub fn with_frame_limit(mut self, frame_size_max_bytes: usize) -> Self {
        self.request_size_max_bytes = frame_size_max_bytes;
        self
    }

    /// Sends a request and waits for its answer. An error answer from the
    /// node is returned as `ClientError::Server`.
    pub async fn request(&self, body: Request) -> Result<Response, ClientError> {
        self.request_with(body, false).await
    }

    /// Like `request`; with `no_forward` a node that doesn't lead answers
    /// `not_leader` (as `ClientError::Server` with the leader) instead of
    /// forwarding to the leader.
    pub async fn request_with(
        &self,
        body: Request,
        no_forward: bool,
    ) -> Result<Response, ClientError> {
        match self.exchange(body, no_forward).await? {
            Response::Error {
                code,
                message,
                leader,
                current_version,
            } => Err(ClientError::Server {
                code,
                message,
                leader,
                current_version,
            }),
            other => Ok(other),
        }
    }

    /// Sends a request and returns whatever the node answers, error answers
    /// included. With `no_forward` a node that doesn't lead answers
    /// `not_leader` instead of forwarding to the leader.
    pub async fn exchange(&self, body: Request, no_forward: bool) -> Result<Response, ClientError> {
        self.exchange_traced(body, no_forward, None).await
    }

    /// The same, with the W3C `traceparent` of the caller's span, so the
    /// node's spans for this request join the caller's trace.
    pub async fn exchange_traced(
        &self,
        body: Request,
        no_forward: bool,
        traceparent: Option<String>,
    ) -> Result<Response, ClientError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&RequestFrame {
            id,
            trace: traceparent,
            body,
            no_forward,
        });
        // Checked here so one oversized request fails alone instead of
        // failing the connection's writer and every request on it.
        if frame.len() > self.request_size_max_bytes {
            return Err(ClientError::RequestTooLarge {
                size_bytes: frame.len(),
                size_max_bytes: self.request_size_max_bytes,
            });
        }
        let (waiter, answer) = oneshot::channel();
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.insert(id, waiter);
        }
        // Registered first, checked second: `fail_all` marks the connection
        // closed before it drains the pending map, so a request either is
        // drained (and answered with the error) or sees the mark here.
        if let Some(error) = self.shared.closed.lock().ok().and_then(|c| c.clone()) {
            self.forget(id);
            return Err(error);
        }
        if self.outgoing.send((Bytes::from(frame), ())).await.is_err() {
            self.forget(id);
            return Err(ClientError::ConnectionLost(
                "the connection's writer stopped".into(),
            ));
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::ConnectionLost(
                "the connection's reader stopped".into(),
            )),
            Err(_) => {
                self.forget(id);
                Err(ClientError::Timeout(self.timeout))
            }
        }
    }

    /// Whether the connection has failed (later requests would fail at once).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.lock().map_or(true, |c| c.is_some())
    }

    fn forget(&self, id: u64) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.remove(&id);
        }
    }

    /// Reads a key: its value and version, or `None` if it does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Item>, ClientError> {
        self.get_with(key, Consistency::Linearizable).await
    }

    /// Reads a key with the given consistency.
    pub async fn get_with(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Item>, ClientError> {
        let request = Request::Get {
            key: key.to_vec(),
            consistency: Some(consistency),
        };
        match self.request(request).await {
            Ok(Response::Value {
                key,
                value,
                version,
                ..
            }) => Ok(Some(Item {
                key,
                value,
                version,
            })),
            Ok(other) => Err(unexpected("get", &other)),
            Err(error) if error.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Writes a key; returns its new version.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.write(key, value, None).await
    }

    /// Writes a key only if its version is `expected_version` (0 = it must not
    /// exist); returns the new version, or a `version_mismatch` error.
    pub async fn cas(
        &self,
        key: &[u8],
        expected_version: u64,
        value: &[u8],
    ) -> Result<u64, ClientError> {
        self.write(key, value, Some(expected_version)).await
    }

    async fn write(
        &self,
        key: &[u8],
        value: &[u8],
        expected_version: Option<u64>,
    ) -> Result<u64, ClientError> {
        let request = Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            expected_version,
        };
        match self.request(request).await? {
            Response::Written { version, .. } => Ok(version),
            other => Err(unexpected("put", &other)),
        }
    }

    /// Deletes a key (only at `expected_version`, if given); returns the version it had.
    pub async fn delete(
        &self,
        key: &[u8],
        expected_version: Option<u64>,
    ) -> Result<u64, ClientError> {
        let request = Request::Delete {
            key: key.to_vec(),
            expected_version,
        };
        match self.request(request).await? {
            Response::Deleted {
                deleted_version, ..
            } => Ok(deleted_version),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Scans keys in order; returns the items and whether more match.
    pub async fn scan(&self, request: Request) -> Result<(Vec<Item>, bool), ClientError> {
        if !matches!(request, Request::Scan { .. }) {
            return Err(ClientError::NotAScan(request.op_name()));
        }
        match self.request(request).await? {
            Response::Items { items, more, .. } => Ok((items, more)),
            other => Err(unexpected("scan", &other)),
        }
    }

    /// Asks whether the node is serving; returns its applied index.
    pub async fn health(&self) -> Result<u64, ClientError> {
        match self.request(Request::Health).await? {
            Response::Health { applied_index } => Ok(applied_index),
            other => Err(unexpected("health", &other)),
        }
    }

    /// The node's view of the cluster.
    pub async fn cluster_status(&self) -> Result<crate::ClusterStatus, ClientError> {
        match self.request(Request::ClusterStatus).await? {
            Response::ClusterStatus(status) => Ok(status),
            other => Err(unexpected("cluster_status", &other)),
        }
    }
}

fn unexpected(op: &str, response: &Response) -> ClientError {
    ClientError::UnexpectedResponse(format!("{op} was answered with {response:?}"))
}
