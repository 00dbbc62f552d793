//! The `Transport` actor: one outgoing TCP link per peer carrying batches of
//! Raft messages as length-prefixed MessagePack frames (`PeerFrame`).
//!
//! Each peer has a bounded queue; over the bound a batch is dropped and
//! counted (Raft resends what matters). A writer task per peer connects with
//! exponential backoff, drains everything queued into one frame, and
//! reconnects after a failure. A fault filter (drop, delay) per peer lets
//! tests cut links one way; `listen` accepts peers' links and hands their
//! messages to a recipient, refusing frames from unknown or wrong nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use harmonydb_protocol::frame::codec;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, warn};

use crate::raft::replica::{Outbox, Step};
use crate::raft::{Message as RaftMessage, NodeId};

/// Batches queued per peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 1024;

/// Largest peer frame, in bytes (entries are batched below this by Raft).
pub const PEER_FRAME_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Frames are filled with queued batches up to about this many entry bytes.
const FRAME_BATCH_SIZE_MAX_BYTES: usize = 8 * 1024 * 1024;

const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

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

/// Faults injected on the link to one peer (this direction only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Drop everything sent to the peer.
    pub drop: bool,
    /// Hold every batch this long before sending it.
    pub delay: Duration,
}

/// Sets (or, with the default, clears) the fault on the link to `peer`.
pub struct SetFault {
    /// The peer.
    pub peer: NodeId,
    /// The fault.
    pub fault: Fault,
}

impl actix::Message for SetFault {
    type Result = ();
}

/// Asks how many batches were dropped per peer (full queue or fault).
pub struct GetDropped;

impl actix::Message for GetDropped {
    type Result = BTreeMap<NodeId, u64>;
}

struct Link {
    queue: mpsc::Sender<Vec<RaftMessage>>,
    fault: Fault,
    dropped: u64,
}

/// Outgoing links to every peer of one node.
pub struct Transport {
    node_id: NodeId,
    links: BTreeMap<NodeId, Link>,
    peers: BTreeMap<NodeId, SocketAddr>,
    receivers: BTreeMap<NodeId, mpsc::Receiver<Vec<RaftMessage>>>,
}

impl Transport {
    /// A transport for `node_id` with its peers' addresses.
    pub fn new(node_id: NodeId, peers: BTreeMap<NodeId, SocketAddr>) -> Self {
        let mut links = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for peer in peers.keys() {
            let (queue, receiver) = mpsc::channel(PEER_QUEUE_CAPACITY);
            links.insert(
                *peer,
                Link {
                    queue,
                    fault: Fault::default(),
                    dropped: 0,
                },
            );
            receivers.insert(*peer, receiver);
        }
        Transport {
            node_id,
            links,
            peers,
            receivers,
        }
    }
}

impl Actor for Transport {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for (peer, receiver) in std::mem::take(&mut self.receivers) {
            let addr = self.peers[&peer];
            let node_id = self.node_id;
            // Faults are read from the actor at send time; the writer only delays.
            let delays = ctx.address();
            actix::spawn(write_to_peer(node_id, peer, addr, receiver, delays));
        }
    }
}

impl Handler<Outbox> for Transport {
    type Result = ();

    fn handle(&mut self, outbox: Outbox, _: &mut Self::Context) {
        let mut batches: BTreeMap<NodeId, Vec<RaftMessage>> = BTreeMap::new();
        for message in outbox.messages {
            batches.entry(message.to).or_default().push(message);
        }
        for (peer, batch) in batches {
            let Some(link) = self.links.get_mut(&peer) else {
                debug!(peer, "no link to this node; message dropped");
                continue;
            };
            if link.fault.drop || link.queue.try_send(batch).is_err() {
                link.dropped += 1;
                metrics::counter!("harmonydb_transport_batches_dropped_total", "peer" => peer.to_string()).increment(1);
            }
        }
    }
}

impl Handler<SetFault> for Transport {
    type Result = ();

    fn handle(&mut self, request: SetFault, _: &mut Self::Context) {
        if let Some(link) = self.links.get_mut(&request.peer) {
            link.fault = request.fault;
        }
    }
}

impl Handler<GetDropped> for Transport {
    type Result = MessageResult<GetDropped>;

    fn handle(&mut self, _: GetDropped, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.links
                .iter()
                .map(|(peer, link)| (*peer, link.dropped))
                .collect(),
        )
    }
}

/// Asks the delay configured for a peer's link.
struct GetDelay(NodeId);

impl actix::Message for GetDelay {
    type Result = Duration;
}

impl Handler<GetDelay> for Transport {
    type Result = MessageResult<GetDelay>;

    fn handle(&mut self, GetDelay(peer): GetDelay, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.links
                .get(&peer)
                .map_or(Duration::ZERO, |l| l.fault.delay),
        )
    }
}

/// About how many bytes a batch of messages takes (entries and snapshot chunks dominate).
fn batch_size_bytes(messages: &[RaftMessage]) -> usize {
    messages
        .iter()
        .map(|m| match &m.body {
            crate::raft::MessageBody::AppendEntries { entries, .. } => {
                entries.iter().map(|e| e.size_bytes()).sum::<usize>() + 64
            }
            crate::raft::MessageBody::InstallSnapshot { data, .. } => data.len() + 64,
            _ => 64,
        })
        .sum()
}

/// Keeps a connection to `peer` and writes every queued batch to it.
async fn write_to_peer(
    node_id: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Vec<RaftMessage>>,
    transport: Addr<Transport>,
) {
    let mut backoff = BACKOFF_MIN;
    'connect: loop {
        let stream = match TcpStream::connect(addr).await {
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
        let mut sink = FramedWrite::new(stream, codec(PEER_FRAME_SIZE_MAX_BYTES));
        while let Some(mut messages) = queue.recv().await {
            // Batches queued meanwhile go in the same frame, up to a size
            // well below the frame limit (an oversized frame would be refused).
            let mut size = batch_size_bytes(&messages);
            while size < FRAME_BATCH_SIZE_MAX_BYTES {
                let Ok(more) = queue.try_recv() else { break };
                size += batch_size_bytes(&more);
                messages.extend(more);
            }
            let delay = transport
                .send(GetDelay(peer))
                .await
                .unwrap_or(Duration::ZERO);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let frame = PeerFrame {
                from: node_id,
                to: peer,
                messages,
            };
            let bytes =
                Bytes::from(rmp_serde::to_vec(&frame).expect("Raft messages always serialize"));
            let sent =
                tokio::time::timeout(harmonydb_protocol::frame::FLUSH_TIMEOUT, sink.send(bytes))
                    .await;
            if let Err(error) = sent.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer did not read",
                ))
            }) {
                // The batch is lost with the connection; Raft resends.
                debug!(peer, %error, "peer link failed; reconnecting");
                continue 'connect;
            }
        }
        return;
    }
}

/// Accepts peers' links on `listener` and delivers their messages to
/// `replica` as `Step`s. A frame from a node not in `members`, or addressed
/// to another node, or that doesn't decode, closes that link with a log line.
pub async fn listen(
    listener: TcpListener,
    node_id: NodeId,
    members: BTreeSet<NodeId>,
    replica: Recipient<Step>,
) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let members = members.clone();
        let replica = replica.clone();
        actix::spawn(async move {
            let mut frames = FramedRead::new(stream, codec(PEER_FRAME_SIZE_MAX_BYTES));
            while let Some(Ok(bytes)) = frames.next().await {
                let frame: PeerFrame = match rmp_serde::from_slice(&bytes) {
                    Ok(frame) => frame,
                    Err(error) => {
                        warn!(%remote, %error, "undecodable peer frame; closing the link");
                        return;
                    }
                };
                if !members.contains(&frame.from) || frame.to != node_id {
                    warn!(%remote, from = frame.from, to = frame.to, "peer frame from a non-member or for another node; closing the link");
                    return;
                }
                for message in frame.messages {
                    if message.from != frame.from || message.to != node_id {
                        warn!(%remote, "peer frame carries a message with a forged sender; closing the link");
                        return;
                    }
                    replica.do_send(Step(message));
                }
            }
        });
    }
}
