//! Serves the HTTP app on a bound listener, with a guard in front of
//! actix-web's HTTP/1 parser.
//!
//! actix answers a request head it can't parse (a request line over the
//! `http` crate's 65,534-byte limit, more than 96 headers, a head over
//! 128 KiB, bad syntax) and a first head that is too slow with an empty
//! 400, 408 or 431 from inside its dispatcher, where no handler or
//! middleware runs: the client gets no JSON error and no reason. So every
//! connection's bytes pass through [`GuardedStream`], which runs actix's own
//! request decoder over them one step ahead of the dispatcher. Bytes are
//! handed on only once the decoder has accounted for them (a complete head,
//! or body bytes), so the dispatcher never sees a head the decoder refused.
//! In its place it gets a small request to [`REJECTED_ROUTE`] that says
//! why, asks to close the connection, and is answered like any other error
//! by the app, in the JSON error format; nothing after it is read. Answers
//! to requests before it go out first, in order, as HTTP/1 requires.
//!
//! The guard also holds the connection to the node's
//! [`ConnectionPolicy`](super::connections::ConnectionPolicy): a head must
//! arrive in full within the read timeout (the first one counts from
//! connecting), and a body within the read timeout of its head; a body
//! that is late or whose chunked framing is malformed is cut where it
//! stands, the connection's [`BodyCut`] says why, and the handler's body
//! error becomes 408 `request_timeout` or 400 `bad_request`. Each
//! connection holds its place from the front door's admission (caps in
//! all and per source) until it closes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite, Decoder, ReadBuf};
use actix_http::error::ParseError;
use actix_http::h1::{Codec, Message, MessageType};
use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt as _};
use actix_web::dev::AppConfig;
use bytes::{Buf, BytesMut};
use harmonydb_protocol::ErrorCode;

use super::connections::{Admission, Pool, Slot};
use super::error::ApiError;
use super::http::{app, HttpState};

/// The route a refused request head is replaced by. Its query says why
/// ([`HeadRejection::to_query`]); a client calling it gets an error too.
pub const REJECTED_ROUTE: &str = "/_harmonydb/rejected";

/// Longest request line the `http` crate's URI type takes (its limit is
/// 65,534 bytes of target; the method and version add a few).
const REQUEST_TARGET_MAX_BYTES: usize = 65_534;

/// Headers actix's decoder takes in one request.
const HEADERS_MAX: usize = 96;

/// actix's dispatcher waits for a first head this many read timeouts
/// before answering an empty 408 itself; the guard's own deadline (one
/// read timeout) fires first.
const DISPATCHER_HEAD_TIMEOUTS: u32 = 3;

/// Why a request head was refused before the app saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadRejection {
    /// The request line is longer than any URI this node takes.
    UriTooLong {
        /// Its length so far.
        bytes: usize,
    },
    /// Too many headers, or a head too large to buffer.
    HeadersTooLarge {
        /// The head's length so far.
        bytes: usize,
    },
    /// The head did not arrive in full within the read timeout.
    Timeout {
        /// The read timeout.
        ms: u128,
    },
    /// The head is not valid HTTP/1.
    Malformed(&'static str),
}

impl HeadRejection {
    /// Why `error` refused the head that starts `pending` (the bytes not
    /// handed on yet).
    fn from_parse_error(error: &ParseError, pending: &[u8]) -> HeadRejection {
        let line_bytes = pending
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(pending.len());
        match error {
            ParseError::TooLarge | ParseError::Uri(_)
                if line_bytes > REQUEST_TARGET_MAX_BYTES =>
            {
                HeadRejection::UriTooLong { bytes: line_bytes }
            }
            ParseError::TooLarge => HeadRejection::HeadersTooLarge {
                bytes: pending.len(),
            },
            ParseError::Uri(_) => HeadRejection::Malformed("the request target is not a valid URI"),
            ParseError::Method => HeadRejection::Malformed("the method is not valid"),
            ParseError::Version => HeadRejection::Malformed("the HTTP version is not 1.0 or 1.1"),
            ParseError::Header => HeadRejection::Malformed(
                "a header is malformed or missing (HTTP/1.1 needs Host; Content-Length and Transfer-Encoding must agree)",
            ),
            _ => HeadRejection::Malformed("the request head is not valid HTTP/1"),
        }
    }

    /// The query string that carries this rejection to [`REJECTED_ROUTE`].
    fn to_query(&self) -> String {
        match self {
            HeadRejection::UriTooLong { bytes } => format!("reason=uri_too_long&bytes={bytes}"),
            HeadRejection::HeadersTooLarge { bytes } => {
                format!("reason=headers_too_large&bytes={bytes}")
            }
            HeadRejection::Timeout { ms } => format!("reason=timeout&ms={ms}"),
            HeadRejection::Malformed(why) => format!(
                "reason=malformed&why={}",
                percent_encoding::utf8_percent_encode(why, percent_encoding::NON_ALPHANUMERIC)
            ),
        }
    }

    /// The request that replaces the refused head.
    fn request(&self) -> Vec<u8> {
        format!(
            "GET {REJECTED_ROUTE}?{} HTTP/1.1\r\nhost: harmonydb\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            self.to_query()
        )
        .into_bytes()
    }

    /// The error a client gets for a rejection described by `query`.
    pub fn error_for_query(query: &str) -> ApiError {
        let field = |name: &str| {
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key == name).then(|| {
                    percent_encoding::percent_decode_str(value)
                        .decode_utf8_lossy()
                        .into_owned()
                })
            })
        };
        let bytes = field("bytes").unwrap_or_default();
        match field("reason").as_deref() {
            Some("uri_too_long") => ApiError::new(
                ErrorCode::UriTooLong,
                format!(
                    "the request line is over {bytes} bytes; this node reads at most {REQUEST_TARGET_MAX_BYTES} (a key is at most 1024 bytes)"
                ),
            ),
            Some("headers_too_large") => ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!(
                    "the request head is {bytes} bytes or has more than {HEADERS_MAX} headers; send fewer or smaller headers"
                ),
            ),
            Some("timeout") => ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request head did not arrive within {} ms; the connection is closed",
                    field("ms").unwrap_or_default()
                ),
            ),
            Some("malformed") => ApiError::bad_request(format!(
                "malformed HTTP request: {}",
                field("why").unwrap_or_default()
            )),
            _ => ApiError::bad_request(format!(
                "{REJECTED_ROUTE} answers requests this node refused before reading them; it is not for clients"
            )),
        }
    }
}

/// Why a connection's request body was cut short, if it was: shared by
/// the guard and the app (as connection data), whose body errors then say
/// so.
#[derive(Debug, Default)]
pub struct BodyCut(AtomicU8);

impl BodyCut {
    // 0, the default, is "not cut".
    const LATE: u8 = 1;
    const MALFORMED: u8 = 2;

    fn set(&self, why: u8) {
        self.0.store(why, Ordering::Relaxed);
    }

    /// The error a handler whose body failed should answer, if the guard
    /// cut it.
    pub fn error(&self, read_timeout: Duration) -> Option<ApiError> {
        match self.0.load(Ordering::Relaxed) {
            Self::LATE => Some(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive in full within {} ms of its head; the connection is closed",
                    read_timeout.as_millis()
                ),
            )),
            Self::MALFORMED => Some(ApiError::bad_request(
                "the request body's chunked encoding is malformed; the connection is closed",
            )),
            _ => None,
        }
    }
}

/// A connection's guard state the app can read: why its body was cut, and
/// the read timeout it was held to.
#[derive(Clone, Debug)]
pub struct GuardState {
    /// Why the body was cut, if it was.
    pub cut: Arc<BodyCut>,
    /// The connection's read timeout.
    pub read_timeout: Duration,
}

impl GuardState {
    /// The error for a failed body read, if the guard cut the body.
    pub fn body_error(&self) -> Option<ApiError> {
        self.cut.error(self.read_timeout)
    }
}

/// A client connection as actix's dispatcher reads it: bytes pass once
/// actix's decoder has accepted them, and a refused head is replaced (see
/// the module docs).
pub struct GuardedStream<S> {
    inner: S,
    /// Its place in the front door's admission, given back when it closes.
    _slot: Option<Slot>,
    /// What the app may learn about this connection.
    state: GuardState,
    /// Bytes read from the socket and not handed on yet; the first
    /// `accepted` of them passed the decoder.
    pending: BytesMut,
    accepted: usize,
    /// The decoder's copy of `pending[accepted..]`, which it consumes.
    undecoded: BytesMut,
    decoder: Codec,
    /// A head or body is on its way (or the first head is awaited) until
    /// this timer fires.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A head was refused or a body cut: what is pending is all the
    /// dispatcher gets.
    refused: bool,
}

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

impl<S> GuardedStream<S> {
    /// Guards a new connection, whose first head must arrive within
    /// `read_timeout`. `config` is the worker's (each one keeps a clock
    /// task for dates, so it is made once per worker, not per connection).
    pub fn new(
        inner: S,
        config: actix_http::ServiceConfig,
        read_timeout: Duration,
        slot: Option<Slot>,
    ) -> Self {
        GuardedStream {
            inner,
            _slot: slot,
            state: GuardState {
                cut: Arc::new(BodyCut::default()),
                read_timeout,
            },
            pending: BytesMut::new(),
            accepted: 0,
            undecoded: BytesMut::new(),
            decoder: Codec::new(config),
            deadline: Some(Box::pin(tokio::time::sleep(read_timeout))),
            refused: false,
        }
    }

    /// What the app may learn about this connection.
    pub fn state(&self) -> GuardState {
        self.state.clone()
    }

    fn arm_deadline(&mut self) {
        self.deadline = Some(Box::pin(tokio::time::sleep(self.state.read_timeout)));
    }

    /// Runs the decoder over what it has not seen, accepting what it takes.
    fn decode(&mut self) {
        while !self.refused && !self.undecoded.is_empty() {
            let before = self.undecoded.len();
            let in_body = self.decoder_in_body();
            match self.decoder.decode(&mut self.undecoded) {
                Ok(item) => {
                    self.accepted += before - self.undecoded.len();
                    match item {
                        // A head: its body (if any) has the read timeout
                        // from now; without one, the next head starts the
                        // clock when it begins.
                        Some(Message::Item(_)) => {
                            if self.decoder_in_body() {
                                self.arm_deadline();
                            } else {
                                self.deadline = None;
                            }
                        }
                        Some(Message::Chunk(None)) => self.deadline = None,
                        Some(Message::Chunk(Some(_))) => {}
                        None => {
                            if !in_body && !self.undecoded.is_empty() && self.deadline.is_none() {
                                // A later request's head has begun: it gets the same time.
                                self.arm_deadline();
                            }
                            break;
                        }
                    }
                }
                // A body whose framing is broken: cut it where it stands;
                // the handler's body error says why.
                Err(_) if in_body => self.cut_body(BodyCut::MALFORMED),
                // The decoder may have consumed the refused head before it
                // found the fault: the head starts where accepted bytes end.
                Err(error) => {
                    let rejection =
                        HeadRejection::from_parse_error(&error, &self.pending[self.accepted..]);
                    self.refuse(rejection);
                }
            }
        }
    }

    /// Ends the stream inside a body: the dispatcher gets the body up to
    /// here, then the end, and the app learns why from [`BodyCut`].
    fn cut_body(&mut self, why: u8) {
        tracing::debug!(why, "HTTP request body cut");
        self.state.cut.set(why);
        self.pending.truncate(self.accepted);
        self.undecoded.clear();
        self.deadline = None;
        self.refused = true;
    }

    /// Whether the decoder is inside a body (its next bytes are no head).
    fn decoder_in_body(&self) -> bool {
        self.decoder.message_type() != MessageType::None
    }

    /// Drops the refused head and everything after it, and queues the
    /// request that says why in its place.
    fn refuse(&mut self, rejection: HeadRejection) {
        tracing::debug!(?rejection, "HTTP request head refused");
        self.pending.truncate(self.accepted);
        self.pending.extend_from_slice(&rejection.request());
        self.accepted = self.pending.len();
        self.undecoded.clear();
        self.deadline = None;
        self.refused = true;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.accepted > 0 {
                let n = this.accepted.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                this.accepted -= n;
                return Poll::Ready(Ok(()));
            }
            if this.refused {
                // Everything before the refused head, and the request that
                // replaced it, went out: the dispatcher answers and closes.
                return Poll::Ready(Ok(()));
            }
            if let Some(deadline) = this.deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    if this.decoder_in_body() {
                        this.cut_body(BodyCut::LATE);
                    } else {
                        let ms = this.state.read_timeout.as_millis();
                        this.refuse(HeadRejection::Timeout { ms });
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of stream: what is left never made a whole head;
                    // the dispatcher sees the end and closes.
                    this.pending.clear();
                    this.undecoded.clear();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    let data = read.filled();
                    this.pending.extend_from_slice(data);
                    this.undecoded.extend_from_slice(data);
                    this.decode();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How the node's HTTP server runs.
pub struct HttpSettings {
    /// Worker threads (each runs the app on its own arbiter).
    pub workers: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// Who may connect, and how long they may take.
    pub admission: Admission,
}

/// Starts serving `state`'s app on `listener` (already bound); returns the
/// server (a future that ends when it stops) and the address it serves on.
pub fn serve(
    listener: std::net::TcpListener,
    state: HttpState,
    settings: HttpSettings,
) -> io::Result<(actix_server::Server, SocketAddr)> {
    let local_addr = listener.local_addr()?;
    let admission = settings.admission;
    let policy = admission.policy();
    let builder = actix_server::Server::build()
        .workers(settings.workers)
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout.as_secs());
    let shutdown = builder.graceful_shutdown_signal();
    let server = builder
        .listen("harmonydb-http", listener, move || {
            let state = state.clone();
            let shutdown = shutdown.clone();
            let admission = admission.clone();
            let http = HttpService::build()
                .keep_alive(KeepAlive::Timeout(policy.idle_timeout))
                .client_request_timeout(policy.read_timeout * DISPATCHER_HEAD_TIMEOUTS)
                .local_addr(local_addr)
                // The app reads why a body was cut (see `BodyCut`).
                .on_connect_ext(|io: &GuardedStream<actix_rt::net::TcpStream>, data| {
                    data.insert(io.state());
                })
                // Idle keep-alive connections close as soon as shutdown
                // begins instead of holding it up.
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .h1(map_config(
                    app(state)
                        .into_factory()
                        .map_err(|error| error.error_response()),
                    |_| AppConfig::default(),
                ));
            let decoder_config = actix_http::ServiceConfig::default();
            fn_service(move |stream: actix_rt::net::TcpStream| {
                let decoder_config = decoder_config.clone();
                let admission = admission.clone();
                async move {
                    let peer = stream.peer_addr().ok();
                    // Refused (counted and logged by the admission): the
                    // connection is dropped, which closes it.
                    let slot = match peer {
                        Some(peer) => Some(admission.admit(Pool::Clients, peer.ip()).map_err(
                            |refusal| {
                                actix_http::error::DispatchError::Io(io::Error::other(
                                    refusal.as_str(),
                                ))
                            },
                        )?),
                        None => None,
                    };
                    let _ = stream.set_nodelay(true);
                    let guarded =
                        GuardedStream::new(stream, decoder_config, policy.read_timeout, slot);
                    Ok((guarded, peer))
                }
            })
            .and_then(http)
        })?
        .run();
    Ok((server, local_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the dispatcher would read from a connection on which `sent` arrives.
    async fn as_the_dispatcher_reads(sent: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&sent).await.expect("fits the pipe");
        let mut guarded = GuardedStream::new(
            server,
            actix_http::ServiceConfig::default(),
            Duration::from_secs(5),
            None,
        );
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(2), guarded.read(&mut buf))
                .await
                .expect("no stall")
                .expect("read");
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buf[..n]);
            if read.ends_with(b"\r\n\r\n") && read.windows(9).any(|w| w == b"rejected?") {
                break;
            }
        }
        drop(client);
        read
    }

    #[actix_web::test]
    async fn a_head_the_decoder_consumed_before_refusing_it_is_still_replaced() {
        // actix's decoder takes the whole head before it finds Host missing.
        let read = as_the_dispatcher_reads(b"GET /health HTTP/1.1\r\n\r\n".to_vec()).await;
        let text = String::from_utf8_lossy(&read);
        assert!(
            text.starts_with("GET /_harmonydb/rejected?reason=malformed"),
            "{text}"
        );
    }

    #[actix_web::test]
    async fn the_replacement_request_is_one_actix_takes() {
        for (rejection, code) in [
            (
                HeadRejection::UriTooLong { bytes: 70_000 },
                ErrorCode::UriTooLong,
            ),
            (
                HeadRejection::HeadersTooLarge { bytes: 140_000 },
                ErrorCode::HeadersTooLarge,
            ),
            (
                HeadRejection::Timeout { ms: 5000 },
                ErrorCode::RequestTimeout,
            ),
            (
                HeadRejection::Malformed("the method is not valid"),
                ErrorCode::BadRequest,
            ),
        ] {
            let mut codec = Codec::new(actix_http::ServiceConfig::default());
            let mut request = BytesMut::from(&rejection.request()[..]);
            match codec.decode(&mut request) {
                Ok(Some(Message::Item(head))) => {
                    assert_eq!(head.path(), REJECTED_ROUTE);
                    let query = head.uri().query().unwrap_or_default();
                    let error = HeadRejection::error_for_query(query);
                    assert_eq!(error.code, code, "{rejection:?}: {error:?}");
                    if let HeadRejection::Malformed(why) = rejection {
                        assert!(error.message.contains(why), "{error:?}");
                    }
                }
                other => panic!("{rejection:?}: {:?}", other.map(|m| m.is_some())),
            }
            assert!(request.is_empty());
        }
    }

    #[actix_web::test]
    async fn a_huge_request_line_is_replaced_by_the_rejection() {
        let mut sent = b"GET /kv/a HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        sent.extend_from_slice(b"GET /kv/");
        sent.extend(std::iter::repeat_n(b'k', 100_000));
        sent.extend_from_slice(b" HTTP/1.1\r\nhost: x\r\n\r\n");
        let read = as_the_dispatcher_reads(sent).await;
        let text = String::from_utf8_lossy(&read);
        assert!(
            text.starts_with(
                "GET /kv/a HTTP/1.1\r\nhost: x\r\n\r\nGET /_harmonydb/rejected?reason=uri_too_long"
            ),
            "{}",
            &text[..text.len().min(300)]
        );
    }
}
