//! The `Transport` actor: one outgoing TCP link per peer carrying batches of
//! Raft messages, framed exactly like client requests: a length-prefixed
//! MessagePack `RequestFrame` whose body is the `raft` operation (sender,
//! receiver, and the messages as MessagePack bytes). Peers connect to each
//! other's client TCP port; the node's TCP server hands `raft` frames to a
//! [`PeerInbox`], which checks them and delivers the messages as `Step`s.
//!
//! Links are opened when a peer is first sent to, at the address the
//! [`MemberBook`] gives (members added later are reached the same way), and
//! reopened if the book moves the peer. Each peer has a bounded queue; over the bound a batch is dropped and
//! counted (Raft resends what matters). A writer task per peer connects with
//! exponential backoff, drains everything queued into one frame, and
//! reconnects after a failure. The node's [`FaultFilter`] is asked about
//! every batch, so tests can cut, thin out, duplicate or slow links one way.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use harmonydb_protocol::frame::codec;
use harmonydb_protocol::message::{decode_request, encode};
use harmonydb_protocol::{Request, RequestFrame};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, warn};

use super::fault::{Delivery, FaultFilter};
use super::members::MemberBook;
use crate::cluster::messages::{Outbox, Step};
use crate::observe;
use crate::observe::EntryTraces;
use harmonydb_raft::{Message as RaftMessage, NodeId};

/// Batches queued per peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 1024;

/// Largest peer frame, in bytes (entries are batched below this by Raft).
pub const PEER_FRAME_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Queued batches are gathered for one write up to about this many bytes.
const FRAME_BATCH_SIZE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Default size of one frame's messages; `Transport::with_frame_budget`
/// lowers it to fit the receiving nodes' frame limit.
pub const FRAME_BUDGET_DEFAULT_BYTES: usize = 4 * 1024 * 1024;

const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A connection attempt with no answer by then is given up and retried:
/// during a partition the kernel's SYN retries back off to many seconds,
/// and the link would stay down that long after the partition heals.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Data the peer has not acknowledged for this long ends the connection
/// (`TCP_USER_TIMEOUT`), and the writer connects again. Without it a link
/// cut by a partition stays in the kernel's retransmission back-off, which
/// doubles to seconds, and carries nothing for that long after the
/// partition heals (the nemesis's power-cut rounds over iptables saw a
/// connected majority go 7.9 s without a leader so). A peer's kernel acknowledges
/// even while the peer process is stopped or slow, so only the network
/// trips it.
const UNACKED_TIMEOUT: Duration = Duration::from_secs(1);

/// What travels on a peer link: Raft messages from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFrame {
    /// Sending node.
    pub from: NodeId,
    /// Receiving node.
    pub to: NodeId,
    /// The messages, in order.
    pub messages: Vec<RaftMessage>,
}

impl PeerFrame {
    /// The frame body as it goes on the wire: a `raft` request with id `id`
    /// and the W3C `traceparent`s of the traced writes whose entries it
    /// carries (the first as the frame's trace, the rest in the body).
    pub fn to_wire(&self, id: u64, mut traces: Vec<String>) -> Vec<u8> {
        let messages = rmp_serde::to_vec(&self.messages).expect("Raft messages always serialize");
        let trace = (!traces.is_empty()).then(|| traces.remove(0));
        encode(&RequestFrame {
            id,
            trace,
            body: Request::Raft {
                from: self.from,
                to: self.to,
                messages,
                traces,
            },
            no_forward: true,
        })
    }

    /// The trace contexts, of `traces` (by entry index), of the entries
    /// this frame's messages carry.
    fn traces_of(&self, traces: &EntryTraces) -> Vec<String> {
        if traces.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<String> = entry_indexes(&self.messages)
            .filter_map(|index| traces.get(&index).cloned())
            .collect();
        found.dedup();
        found
    }
}

/// Why a peer frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The sender is not a node this one knows (a member, or one that was).
    #[error("node {from} is not a member of this cluster")]
    NotAMember {
        /// The claimed sender.
        from: NodeId,
    },
    /// The frame is addressed to another node.
    #[error("frame is for node {to}, but this is node {node_id}")]
    Misrouted {
        /// The addressee.
        to: NodeId,
        /// This node.
        node_id: NodeId,
    },
    /// A message inside claims another sender or receiver than the frame.
    #[error("frame from node {from} carries a message from {message_from} to {message_to}")]
    Forged {
        /// The frame's sender.
        from: NodeId,
        /// The message's sender.
        message_from: NodeId,
        /// The message's receiver.
        message_to: NodeId,
    },
    /// The messages don't decode.
    #[error("Raft messages do not decode: {0}")]
    Undecodable(String),
}

/// Checks peer frames for this node and delivers their messages to the replica.
#[derive(Clone)]
pub struct PeerInbox {
    node_id: NodeId,
    members: MemberBook,
    replica: Recipient<Step>,
}

impl PeerInbox {
    /// An inbox for `node_id` that accepts frames from the nodes in `members`.
    pub fn new(node_id: NodeId, members: MemberBook, replica: Recipient<Step>) -> Self {
        PeerInbox {
            node_id,
            members,
            replica,
        }
    }

    /// Checks one frame's sender, receiver and messages; delivers them all
    /// or none, under the trace contexts it carries (see
    /// [`observe::span_from_traceparents`]). Returns how many were delivered.
    pub fn deliver(
        &self,
        from: NodeId,
        to: NodeId,
        payload: &[u8],
        traces: &[&str],
    ) -> Result<usize, PeerError> {
        if from == self.node_id || !self.members.accepts(from) {
            return Err(PeerError::NotAMember { from });
        }
        if to != self.node_id {
            return Err(PeerError::Misrouted {
                to,
                node_id: self.node_id,
            });
        }
        let messages: Vec<RaftMessage> = rmp_serde::from_slice(payload)
            .map_err(|error| PeerError::Undecodable(error.to_string()))?;
        if let Some(forged) = messages
            .iter()
            .find(|m| m.from != from || m.to != self.node_id)
        {
            return Err(PeerError::Forged {
                from,
                message_from: forged.from,
                message_to: forged.to,
            });
        }
        let count = messages.len();
        metrics::counter!("harmonydb_transport_messages_received_total", "peer" => from.to_string())
            .increment(count as u64);
        let span = observe::span_from_traceparents("Transport receive", traces);
        for message in messages {
            self.replica.do_send(Step::with_span(message, span.clone()));
        }
        Ok(count)
    }
}

/// Asks how many batches were dropped per peer (full queue or fault).
pub struct GetDropped;

impl actix::Message for GetDropped {
    type Result = BTreeMap<NodeId, u64>;
}

/// A batch for one peer, with the trace contexts of the traced writes
/// whose entries it carries.
type Batch = (Vec<RaftMessage>, EntryTraces);

/// The indexes of the log entries `messages` carry.
fn entry_indexes(messages: &[RaftMessage]) -> impl Iterator<Item = u64> + '_ {
    messages.iter().flat_map(|message| match &message.body {
        harmonydb_raft::MessageBody::AppendEntries { entries, .. } => {
            entries.iter().map(|entry| entry.index).collect::<Vec<_>>()
        }
        _ => Vec::new(),
    })
}

struct Link {
    /// The address the link's writer connects to.
    addr: String,
    queue: mpsc::Sender<Batch>,
}

/// Outgoing links to the peers of one node.
pub struct Transport {
    node_id: NodeId,
    frame_budget: usize,
    faults: FaultFilter,
    links: BTreeMap<NodeId, Link>,
    dropped: BTreeMap<NodeId, u64>,
    members: MemberBook,
    /// The book's version when links were last pruned.
    pruned_at: u64,
}

impl Transport {
    /// A transport for `node_id` that finds its peers in `members`
    /// (`host:port`, resolved at every connect so a peer may move).
    pub fn new(node_id: NodeId, members: MemberBook) -> Self {
        Transport {
            node_id,
            frame_budget: FRAME_BUDGET_DEFAULT_BYTES,
            faults: FaultFilter::default(),
            links: BTreeMap::new(),
            dropped: BTreeMap::new(),
            members,
            pruned_at: 0,
        }
    }

    /// Once the book changes, closes links to nodes that are no longer
    /// members or have moved (a node still sent to, such as a departing
    /// one, gets a new link on its next message). Between changes every
    /// link is current, so sending needs no lookup.
    fn prune(&mut self) {
        let version = self.members.version();
        if version == self.pruned_at {
            return;
        }
        self.pruned_at = version;
        let members = self.members.members();
        self.links
            .retain(|id, link| members.get(id).is_some_and(|addr| *addr == link.addr));
    }

    /// The queue to `peer`, opening its link if there is none (or its
    /// writer ended); None if the book has no address for it.
    fn link(&mut self, peer: NodeId) -> Option<&mpsc::Sender<Batch>> {
        let current = self
            .links
            .get(&peer)
            .is_some_and(|link| !link.queue.is_closed());
        if !current {
            let addr = self.members.address(peer)?;
            // Dropping an old link's queue ends its writer.
            let (queue, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
            actix::spawn(write_to_peer(
                self.node_id,
                peer,
                addr.clone(),
                receiver,
                self.faults.clone(),
                self.frame_budget,
            ));
            self.links.insert(peer, Link { addr, queue });
        }
        self.links.get(&peer).map(|link| &link.queue)
    }
}

impl Transport {
    /// Limits each frame's messages to about `bytes` (Raft messages above it
    /// go alone), so frames stay within the peers' frame limit.
    pub fn with_frame_budget(mut self, bytes: usize) -> Self {
        self.frame_budget = bytes.max(1);
        self
    }

    /// The fault filter this transport obeys; setting a fault on it takes
    /// effect from the next batch.
    pub fn faults(&self) -> FaultFilter {
        self.faults.clone()
    }
}

impl Actor for Transport {
    type Context = Context<Self>;
}

impl Handler<Outbox> for Transport {
    type Result = ();

    fn handle(&mut self, outbox: Outbox, _: &mut Self::Context) {
        let Outbox {
            messages,
            traces,
            envelope,
        } = outbox;
        let _handling = envelope.open();
        self.prune();
        let mut batches: BTreeMap<NodeId, Vec<RaftMessage>> = BTreeMap::new();
        for message in messages {
            batches.entry(message.to).or_default().push(message);
        }
        for (peer, batch) in batches {
            let decision = self.faults.decide(peer);
            let Some(queue) = self.link(peer) else {
                debug!(peer, "no address for this node; message dropped");
                continue;
            };
            let count = batch.len() as u64;
            let batch_traces = if traces.is_empty() {
                EntryTraces::new()
            } else {
                entry_indexes(&batch)
                    .filter_map(|index| traces.get(&index).map(|t| (index, t.clone())))
                    .collect()
            };
            let batch = (batch, batch_traces);
            let queued = match decision {
                Delivery::Drop => false,
                Delivery::Send { copies: 1 } => queue.try_send(batch).is_ok(),
                // Raft must tolerate a peer's messages arriving twice.
                Delivery::Send { .. } => {
                    queue.try_send(batch.clone()).is_ok() && queue.try_send(batch).is_ok()
                }
            };
            if !queued {
                *self.dropped.entry(peer).or_default() += 1;
                metrics::counter!("harmonydb_transport_messages_dropped_total", "peer" => peer.to_string()).increment(count);
            }
        }
    }
}

impl Handler<GetDropped> for Transport {
    type Result = MessageResult<GetDropped>;

    fn handle(&mut self, _: GetDropped, _: &mut Self::Context) -> Self::Result {
        let _handling = crate::observe::Handling::start("Transport", "GetDropped");
        MessageResult(
            self.links
                .keys()
                .map(|peer| (*peer, self.dropped.get(peer).copied().unwrap_or(0)))
                .collect(),
        )
    }
}

/// About how many bytes a batch of messages takes (entries and snapshot chunks dominate).
fn batch_size_bytes(messages: &[RaftMessage]) -> usize {
    messages
        .iter()
        .map(|m| match &m.body {
            harmonydb_raft::MessageBody::AppendEntries { entries, .. } => {
                entries.iter().map(|e| e.size_bytes()).sum::<usize>() + 64
            }
            harmonydb_raft::MessageBody::InstallSnapshot { data, .. } => data.len() + 64,
            _ => 64,
        })
        .sum()
}

/// Splits messages into frames of about `budget` bytes each (a message
/// larger than the budget goes alone), in order.
fn split_frames(messages: Vec<RaftMessage>, budget: usize) -> Vec<Vec<RaftMessage>> {
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for message in messages {
        let message_size = batch_size_bytes(std::slice::from_ref(&message));
        if !current.is_empty() && size + message_size > budget {
            frames.push(std::mem::take(&mut current));
            size = 0;
        }
        size += message_size;
        current.push(message);
    }
    if !current.is_empty() {
        frames.push(current);
    }
    frames
}

/// Keeps a connection to `peer` and writes every queued batch to it, in
/// frames of at most about `frame_budget` bytes.
async fn write_to_peer(
    node_id: NodeId,
    peer: NodeId,
    addr: String,
    mut queue: mpsc::Receiver<Batch>,
    faults: FaultFilter,
    frame_budget: usize,
) {
    let mut backoff = BACKOFF_MIN;
    let mut frame_id = 0u64;
    let peer_label = peer.to_string();
    'connect: loop {
        if queue.is_closed() && queue.is_empty() {
            // The link was replaced or pruned.
            return;
        }
        let connected =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
            };
        let stream = match connected {
            Ok(stream) => stream,
            Err(error) => {
                debug!(peer, %addr, %error, "peer unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(UNACKED_TIMEOUT));
        let mut sink = FramedWrite::new(stream, codec(PEER_FRAME_SIZE_MAX_BYTES));
        while let Some((mut messages, mut traces)) = queue.recv().await {
            // Batches queued meanwhile go out with this one, their entries'
            // trace contexts too.
            let mut size = batch_size_bytes(&messages);
            while size < FRAME_BATCH_SIZE_MAX_BYTES {
                let Ok((more, more_traces)) = queue.try_recv() else {
                    break;
                };
                size += batch_size_bytes(&more);
                messages.extend(more);
                traces.extend(more_traces);
            }
            let delay = faults.get(peer).delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let count = messages.len() as u64;
            for messages in split_frames(messages, frame_budget) {
                let frame = PeerFrame {
                    from: node_id,
                    to: peer,
                    messages,
                };
                frame_id += 1;
                let frame_traces = frame.traces_of(&traces);
                let bytes = Bytes::from(frame.to_wire(frame_id, frame_traces));
                // Fed, not flushed, so several frames go out in one write.
                if let Err(error) = SinkExt::<Bytes>::feed(&mut sink, bytes).await {
                    debug!(peer, %error, "peer link failed; reconnecting");
                    metrics::counter!("harmonydb_transport_messages_dropped_total", "peer" => peer_label.clone()).increment(count);
                    continue 'connect;
                }
            }
            let flushed = tokio::time::timeout(
                harmonydb_protocol::frame::FLUSH_TIMEOUT,
                SinkExt::<Bytes>::flush(&mut sink),
            )
            .await;
            if let Err(error) = flushed.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer did not read",
                ))
            }) {
                // The batch is lost with the connection; Raft resends.
                debug!(peer, %error, "peer link failed; reconnecting");
                metrics::counter!("harmonydb_transport_messages_dropped_total", "peer" => peer_label.clone()).increment(count);
                continue 'connect;
            }
            metrics::counter!("harmonydb_transport_messages_sent_total", "peer" => peer_label.clone())
                .increment(count);
        }
        return;
    }
}

/// A received frame's trace contexts: its own, then its body's.
pub fn frame_traces<'a>(trace: &'a Option<String>, more: &'a [String]) -> Vec<&'a str> {
    trace
        .iter()
        .chain(more.iter())
        .map(String::as_str)
        .collect()
}

/// Accepts peers' links on a listener of their own (the node takes them on
/// its client port instead; see `api::tcp`) and hands their frames to
/// `inbox`. A frame that is not a valid `raft` request, or that the inbox
/// refuses, closes that link with a log line.
pub async fn listen(listener: TcpListener, inbox: PeerInbox) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let inbox = inbox.clone();
        actix::spawn(async move {
            let mut frames = FramedRead::new(stream, codec(PEER_FRAME_SIZE_MAX_BYTES));
            while let Some(Ok(bytes)) = frames.next().await {
                let refusal = match decode_request(&bytes) {
                    Ok(RequestFrame {
                        body:
                            Request::Raft {
                                from,
                                to,
                                messages,
                                traces,
                            },
                        trace,
                        ..
                    }) => {
                        match inbox.deliver(from, to, &messages, &frame_traces(&trace, &traces)) {
                            Ok(_) => continue,
                            Err(error) => error.to_string(),
                        }
                    }
                    Ok(frame) => format!("{} is not a peer operation", frame.body.op_name()),
                    Err(failure) => failure.message,
                };
                warn!(%remote, reason = %refusal, "refusing a peer frame; closing the link");
                return;
            }
        });
    }
}
