//! Client <-> node messages. Each frame body is a MessagePack map with field
//! names (see `protocol/README.md`); enums are tagged by a string field
//! (`op` for requests, `type` for responses) so other languages can build
//! and read them as plain maps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A request with its correlation id and optional W3C trace context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the answer; 1 or above (0 is reserved
    /// for errors about the connection itself).
    pub id: u64,
    /// W3C `traceparent` of the caller's span, if it is tracing.
    #[serde(default)]
    pub trace: Option<String>,
    /// The operation.
    pub body: Request,
    /// Do not forward to the leader: a node that doesn't lead answers
    /// `not_leader` with the leader's address instead.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_forward: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (ReadIndex:
    /// the leader confirms it still leads with a heartbeat round).
    #[default]
    Linearizable,
    /// Linearizable while the leader's lease holds (no round trip); it rests
    /// on bounded clock drift between nodes. Falls back to ReadIndex.
    Lease,
    /// Served by whichever node gets it from its own applied state, which may
    /// be behind; the answer says how far.
    Stale,
}

impl Consistency {
    /// The name used on the wire and in query strings.
    pub fn as_str(&self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "linearizable" => Ok(Consistency::Linearizable),
            "lease" => Ok(Consistency::Lease),
            "stale" => Ok(Consistency::Stale),
            other => Err(format!(
                "unknown consistency {other:?}; use linearizable, lease or stale"
            )),
        }
    }
}

/// How far behind a stale read's node was when it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staleness {
    /// The node that answered.
    pub node_id: u64,
    /// Index of the last write applied there.
    pub applied_index: u64,
    /// Commit index the node knows of; `commit_index - applied_index` entries
    /// were committed and not yet applied there.
    pub commit_index: u64,
    /// Milliseconds since the node last heard from a leader (0 on the leader;
    /// nil if it never has).
    pub leader_contact_ms: Option<u64>,
}

/// A cluster member as `cluster_status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: u64,
    /// Its TCP address (clients and peers).
    pub addr: String,
    /// Known to the leader only: the highest log index the member has.
    pub match_index: Option<u64>,
    /// Known to the leader only: entries the member is behind the leader's last index.
    pub lag: Option<u64>,
    /// Milliseconds since the answering node last heard from this member
    /// (absent for itself, or if it never has). A leader hears from every
    /// member; a follower from the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// The answering node expected to hear from this member (it leads, or
    /// this member does) and has not for an election timeout: the member
    /// is down or cut off.
    #[serde(default)]
    pub unreachable: bool,
}

/// Why a node is ready to serve: it knows a live leader and has applied
/// nearly all of what it committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The node answering.
    pub node_id: u64,
    /// The leader it follows (itself if it leads).
    pub leader: u64,
    /// Milliseconds since it last heard from that leader (0 on the leader).
    pub leader_contact_ms: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// The leader's commit index as far as it knows.
    pub leader_commit_index: u64,
}

/// One node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub node_id: u64,
    /// Its role: leader, follower, pre_candidate or candidate.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of (absent if none).
    pub leader: Option<u64>,
    /// The leader's TCP address, if known.
    pub leader_addr: Option<String>,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Its last log index.
    pub last_index: u64,
    /// The index its log is compacted up to (entries before it are in the
    /// checkpointed state, not the log).
    #[serde(default)]
    pub snapshot_index: u64,
    /// Every member, itself included.
    pub members: Vec<MemberStatus>,
    /// Voting members of the configuration in force (the incoming ones
    /// during a joint change).
    #[serde(default)]
    pub voters: Vec<u64>,
    /// During a joint change, the outgoing voters (decisions need a
    /// majority of both sets); empty otherwise.
    #[serde(default)]
    pub voters_outgoing: Vec<u64>,
    /// Members that receive the log but do not vote.
    #[serde(default)]
    pub learners: Vec<u64>,
}

/// A cluster's configuration after a membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voting members.
    pub voters: Vec<u64>,
    /// Members that receive the log but do not vote.
    pub learners: Vec<u64>,
    /// Every member's TCP address, by id.
    pub addresses: BTreeMap<u64, String>,
}

/// An answer, matched to its request by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's id, or 0 for a connection-level error.
    pub id: u64,
    /// The result.
    pub body: Response,
}

/// Every operation a client can ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Read one key.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// How fresh the answer must be (default linearizable).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consistency: Option<Consistency>,
    },
    /// Write one key; with `expected_version` a compare-and-set (0 = must not exist).
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The version the key must have for the write to happen.
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// Delete one key; with `expected_version` only at that version.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The version the key must have for the delete to happen.
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// Read keys in order: those with `prefix`, from `start` (inclusive) to `end` (exclusive).
    Scan {
        /// Only keys starting with this (empty = all keys).
        #[serde(default, with = "serde_bytes")]
        prefix: Vec<u8>,
        /// First key, inclusive.
        #[serde(default, with = "serde_bytes")]
        start: Option<Vec<u8>>,
        /// Last key, exclusive.
        #[serde(default, with = "serde_bytes")]
        end: Option<Vec<u8>>,
        /// Most items to return (default 1000, at most 10000).
        #[serde(default)]
        limit: Option<u32>,
        /// How fresh the answer must be (default linearizable).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consistency: Option<Consistency>,
    },
    /// Is the node serving?
    Health,
    /// This node's view of the cluster: members, leader, term, indexes.
    ClusterStatus,
    /// Is this node ready to serve: does it know a live leader, and has it
    /// applied nearly all the leader committed? Answered `ready`, or an
    /// error saying why not.
    Ready,
    /// Moves leadership to `target`, or to the most caught-up other voter
    /// when absent; answered with `leader_transferred` once a new leader
    /// leads (run by the leader: other nodes forward it).
    TransferLeader {
        /// The voter to lead next.
        #[serde(default)]
        target: Option<u64>,
    },
    /// Adds node `id`, reachable at `address`, as a learner: it gets the
    /// log but does not vote until promoted. Asking again for a member at
    /// the same address answers with the configuration as it is. Answered
    /// with `membership` once the change commits (run by the leader).
    AddMember {
        /// The new node's id (not 0, not a member's).
        id: u64,
        /// Its TCP address, `host:port`, as the other members reach it.
        address: String,
    },
    /// Makes learner `id` a voter, through a joint configuration. Refused
    /// while the learner's log is far behind the leader's.
    PromoteMember {
        /// The learner.
        id: u64,
    },
    /// Removes member `id` (voter or learner, the leader included), through
    /// a joint configuration for a voter. The removed node stops taking
    /// part once it learns of it.
    RemoveMember {
        /// The member.
        id: u64,
    },
    /// Node to node: prepare a dump of this node's state at an applied
    /// index of at least `min_index`, for a follower too far behind the
    /// leader's log (answered with `snapshot_ready`).
    SnapshotPrepare {
        /// The snapshot index the follower was sent.
        min_index: u64,
    },
    /// Node to node: bytes of a prepared dump, from `offset`.
    SnapshotChunk {
        /// The dump's applied index, as `snapshot_ready` said.
        index: u64,
        /// Where to start.
        offset: u64,
        /// Most bytes to return.
        max_bytes: u32,
    },
    /// Raft messages from one node to another (peer links only). Never
    /// answered unless refused; see `protocol/README.md`.
    Raft {
        /// Sending node.
        from: u64,
        /// Receiving node.
        to: u64,
        /// The messages, MessagePack-encoded by the Raft transport.
        #[serde(with = "serde_bytes")]
        messages: Vec<u8>,
        /// W3C `traceparent`s of the traced writes whose log entries the
        /// messages carry besides the frame's own `trace` (several writes'
        /// entries often travel in one frame), so each write's trace
        /// reaches the follower.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        traces: Vec<String>,
    },
}

/// What an operation does, which decides where it may run and what a
/// lost answer means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    /// Reads state; served by the leader unless the read is stale.
    Read,
    /// Changes the replicated state (keys, leadership, membership): run by
    /// the leader, and once sent its outcome is unknown until answered.
    Write,
    /// Answered by whichever node gets it, from its own state.
    Local,
    /// Node to node only (snapshots, Raft).
    Peer,
}

/// One operation of the protocol: its wire name (`op`) and what it does.
/// [`OPERATIONS`] lists them all; every layer asks it instead of keeping
/// a list of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The name on the wire.
    pub name: &'static str,
    /// What it does.
    pub kind: OperationKind,
}

impl Operation {
    /// Whether it changes replicated state (its outcome is unknown once
    /// sent and unanswered).
    pub fn is_write(&self) -> bool {
        self.kind == OperationKind::Write
    }

    /// Whether a client may send it (peers' operations excluded).
    pub fn is_client_operation(&self) -> bool {
        self.kind != OperationKind::Peer
    }
}

const fn operation(name: &'static str, kind: OperationKind) -> Operation {
    Operation { name, kind }
}

/// Every request operation, in the order of [`Request`]'s variants.
pub const OPERATIONS: [Operation; 14] = [
    operation("get", OperationKind::Read),
    operation("put", OperationKind::Write),
    operation("delete", OperationKind::Write),
    operation("scan", OperationKind::Read),
    operation("health", OperationKind::Local),
    operation("cluster_status", OperationKind::Local),
    operation("ready", OperationKind::Local),
    operation("transfer_leader", OperationKind::Write),
    operation("add_member", OperationKind::Write),
    operation("promote_member", OperationKind::Write),
    operation("remove_member", OperationKind::Write),
    operation("snapshot_prepare", OperationKind::Peer),
    operation("snapshot_chunk", OperationKind::Peer),
    operation("raft", OperationKind::Peer),
];

impl Request {
    /// The operation this request is, from [`OPERATIONS`].
    pub fn operation(&self) -> &'static Operation {
        let at = match self {
            Request::Get { .. } => 0,
            Request::Put { .. } => 1,
            Request::Delete { .. } => 2,
            Request::Scan { .. } => 3,
            Request::Health => 4,
            Request::ClusterStatus => 5,
            Request::Ready => 6,
            Request::TransferLeader { .. } => 7,
            Request::AddMember { .. } => 8,
            Request::PromoteMember { .. } => 9,
            Request::RemoveMember { .. } => 10,
            Request::SnapshotPrepare { .. } => 11,
            Request::SnapshotChunk { .. } => 12,
            Request::Raft { .. } => 13,
        };
        &OPERATIONS[at]
    }

    /// The operation's name as it appears on the wire (`op`).
    pub fn op_name(&self) -> &'static str {
        self.operation().name
    }

    /// Whether it changes replicated state.
    pub fn is_write(&self) -> bool {
        self.operation().is_write()
    }

    /// Whether only the leader can do this (writes, and reads that aren't stale).
    pub fn needs_leader(&self) -> bool {
        match self.operation().kind {
            OperationKind::Write => true,
            OperationKind::Read => self.consistency().unwrap_or_default() != Consistency::Stale,
            OperationKind::Local | OperationKind::Peer => false,
        }
    }

    /// The consistency a read asks for (None for other operations, or the default).
    pub fn consistency(&self) -> Option<Consistency> {
        match self {
            Request::Get { consistency, .. } | Request::Scan { consistency, .. } => *consistency,
            _ => None,
        }
    }
}

/// The operation named `name`, if there is one.
pub fn operation_named(name: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|op| op.name == name)
}

/// One key of a scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Its version.
    pub version: u64,
}

/// Every answer a node can give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `get`.
    Value {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Its value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Its version.
        version: u64,
        /// For stale reads: how far behind the answering node was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staleness: Option<Staleness>,
    },
    /// Answer to `put`.
    Written {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The key's new version.
        version: u64,
    },
    /// Answer to `delete`.
    Deleted {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The version the key had before it was deleted.
        deleted_version: u64,
    },
    /// Answer to `scan`.
    Items {
        /// Keys in order.
        items: Vec<Item>,
        /// More keys match after the last item.
        more: bool,
        /// For stale reads: how far behind the answering node was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staleness: Option<Staleness>,
    },
    /// Answer to `health`.
    Health {
        /// Index of the last applied write.
        applied_index: u64,
    },
    /// Answer to `cluster_status`.
    ClusterStatus(ClusterStatus),
    /// Answer to `ready` when the node is ready.
    Ready(Readiness),
    /// Answer to `transfer_leader`: who leads now, and in which term.
    LeaderTransferred {
        /// The new leader.
        leader: u64,
        /// Its term.
        term: u64,
    },
    /// Answer to `add_member`, `promote_member` and `remove_member`: the
    /// configuration once the change has committed.
    Membership(Membership),
    /// Answer to `snapshot_prepare`: a dump is ready.
    SnapshotReady {
        /// The applied index it is the state at.
        index: u64,
        /// Its size.
        size_bytes: u64,
    },
    /// Answer to `snapshot_chunk`.
    SnapshotChunk {
        /// The dump's applied index.
        index: u64,
        /// Where these bytes start.
        offset: u64,
        /// The bytes (empty at or past the end).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What went wrong, for a person.
        message: String,
        /// With `not_leader`: the leader to ask instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<LeaderHint>,
        /// With `version_mismatch`: the key's version when the write was
        /// refused (0 = absent), so a client can retry without a read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_version: Option<u64>,
    },
}

/// Where the leader is, for a client told `not_leader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    /// Its node id.
    pub id: u64,
    /// Its TCP address.
    pub addr: String,
}

/// Machine-readable error codes, the same on HTTP and TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not well formed (body, parameters).
    BadRequest,
    /// The key is empty or too long.
    InvalidKey,
    /// The key does not exist.
    NotFound,
    /// A compare-and-set found a different version.
    VersionMismatch,
    /// The value is over the node's limit.
    ValueTooLarge,
    /// The request body has the wrong content type (HTTP).
    UnsupportedMediaType,
    /// The route exists but not for this HTTP method.
    MethodNotAllowed,
    /// An HTTP request line longer than the node reads (a key is at most
    /// 1 KiB, so a key-value request never needs one this long).
    UriTooLong,
    /// An HTTP request's headers are too many or too large.
    HeadersTooLarge,
    /// An HTTP request did not arrive in full within the node's deadline.
    RequestTimeout,
    /// A TCP frame longer than the node's limit.
    FrameTooLarge,
    /// A TCP frame that is not a valid request.
    MalformedFrame,
    /// A TCP request whose `op` the node does not know.
    UnknownOperation,
    /// Too many requests in flight; retry later.
    Overloaded,
    /// This node doesn't lead and the client asked not to be forwarded (or
    /// leadership moved while the request was on its way); the error names
    /// the leader.
    NotLeader,
    /// The cluster has no leader this node knows of (an election is under
    /// way, or this node is cut off from a majority). Nothing was done.
    NoLeader,
    /// The request was not carried out (a newer leader replaced it, or the
    /// leader could not be reached before sending); it is safe to retry.
    Unavailable,
    /// No outcome within the node's request timeout: a write may or may not
    /// have been applied.
    Timeout,
    /// The route or operation is disabled on this node (admin routes without
    /// their flag, peer traffic from a non-member).
    Forbidden,
    /// An operator route was called without the node's admin token.
    Unauthorized,
    /// The node is shutting down.
    ShuttingDown,
    /// The request conflicts with the cluster's state now (a membership
    /// change already in progress, a learner not caught up, an id taken);
    /// it may succeed later.
    Conflict,
    /// This node was removed from the cluster and takes no further part;
    /// ask another node.
    Removed,
    /// The node's storage failed; the write's outcome is unknown.
    StorageUnavailable,
    /// The node's disk is full (under its free-space floor, or the WAL
    /// waits for space): writes are refused before they are logged; reads
    /// go on. Nothing was done.
    StorageFull,
    /// A bug in the node.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownOperation => "unknown_operation",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Removed => "removed",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Encodes a frame body as MessagePack with field names.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(message).expect("protocol messages always serialize")
}

/// Bytes an answer's encoding adds to the data it carries, per item and in all.
const ENCODING_OVERHEAD_BYTES: usize = 256;

impl Response {
    /// About how many bytes this answer takes encoded: its keys and
    /// values, plus field names and framing.
    pub fn encoded_size_hint(&self) -> usize {
        let data = match self {
            Response::Value { key, value, .. } => key.len() + value.len(),
            Response::Items { items, .. } => items
                .iter()
                .map(|item| item.key.len() + item.value.len() + ENCODING_OVERHEAD_BYTES)
                .sum(),
            Response::SnapshotChunk { data, .. } => data.len(),
            _ => 0,
        };
        data + ENCODING_OVERHEAD_BYTES
    }
}

/// Encodes an answer frame into a buffer sized for it up front, so a large
/// value is copied once rather than through a series of doublings (each of
/// which holds the old buffer and the new one at once).
pub fn encode_response(frame: &ResponseFrame) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(frame.body.encoded_size_hint());
    rmp_serde::encode::write_named(&mut bytes, frame).expect("protocol messages always serialize");
    bytes
}

/// What a server can tell about a frame body that failed to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeFailure {
    /// The request id, if the body had a readable one.
    pub id: u64,
    /// `UnknownOperation` if `body.op` is a string the node doesn't know, else `MalformedFrame`.
    pub code: ErrorCode,
    /// The decoder's complaint.
    pub message: String,
}

/// Decodes a request frame body; on failure, salvages the id and says why.
pub fn decode_request(bytes: &[u8]) -> Result<RequestFrame, DecodeFailure> {
    let error = match rmp_serde::from_slice::<RequestFrame>(bytes) {
        Ok(frame) if frame.id == 0 => {
            return Err(DecodeFailure {
                id: 0,
                code: ErrorCode::MalformedFrame,
                message: "request id 0 is reserved for connection errors; use 1 or above".into(),
            })
        }
        Ok(frame) => return Ok(frame),
        Err(error) => error.to_string(),
    };
    // A lenient second look, only to answer the right id with the right code.
    #[derive(Deserialize)]
    struct Probe {
        id: Option<u64>,
        body: Option<ProbeBody>,
    }
    #[derive(Deserialize)]
    struct ProbeBody {
        op: Option<String>,
    }
    let probe = rmp_serde::from_slice::<Probe>(bytes).ok();
    let id = probe.as_ref().and_then(|p| p.id).unwrap_or(0);
    let op = probe.and_then(|p| p.body).and_then(|b| b.op);
    match op {
        Some(op) if operation_named(&op).is_none() => Err(DecodeFailure {
            id,
            code: ErrorCode::UnknownOperation,
            message: format!(
                "unknown operation {op:?}; known: {}",
                OPERATIONS.map(|op| op.name).join(", ")
            ),
        }),
        _ => Err(DecodeFailure {
            id,
            code: ErrorCode::MalformedFrame,
            message: format!("frame body is not a valid request: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: Request) {
        let frame = RequestFrame {
            id: 9,
            trace: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            body: request,
            no_forward: true,
        };
        assert_eq!(decode_request(&encode(&frame)), Ok(frame));
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Get {
            key: b"k".to_vec(),
            consistency: None,
        });
        round_trip(Request::Get {
            key: b"k".to_vec(),
            consistency: Some(Consistency::Stale),
        });
        round_trip(Request::ClusterStatus);
        round_trip(Request::TransferLeader { target: Some(2) });
        round_trip(Request::TransferLeader { target: None });
        round_trip(Request::AddMember {
            id: 4,
            address: "10.0.0.4:7070".into(),
        });
        round_trip(Request::PromoteMember { id: 4 });
        round_trip(Request::RemoveMember { id: 1 });
        round_trip(Request::Raft {
            from: 1,
            to: 2,
            messages: vec![0x90],
            traces: Vec::new(),
        });
        round_trip(Request::Raft {
            from: 1,
            to: 2,
            messages: vec![0x90],
            traces: vec!["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()],
        });
        round_trip(Request::Put {
            key: b"k".to_vec(),
            value: vec![0, 255, 1],
            expected_version: Some(0),
        });
        round_trip(Request::Delete {
            key: b"k".to_vec(),
            expected_version: None,
        });
        round_trip(Request::Scan {
            prefix: b"p".to_vec(),
            start: Some(b"a".to_vec()),
            end: None,
            limit: Some(10),
            consistency: Some(Consistency::Lease),
        });
        round_trip(Request::Health);
        round_trip(Request::SnapshotPrepare { min_index: 9 });
        round_trip(Request::SnapshotChunk {
            index: 9,
            offset: 4096,
            max_bytes: 1 << 20,
        });
    }

    #[test]
    fn responses_round_trip() {
        for body in [
            Response::Items {
                items: vec![Item {
                    key: b"a".to_vec(),
                    value: b"b".to_vec(),
                    version: 3,
                }],
                more: true,
                staleness: Some(Staleness {
                    node_id: 2,
                    applied_index: 7,
                    commit_index: 9,
                    leader_contact_ms: Some(40),
                }),
            },
            Response::Error {
                code: ErrorCode::VersionMismatch,
                message: "x".into(),
                leader: None,
                current_version: Some(7),
            },
            Response::Error {
                code: ErrorCode::NotLeader,
                message: "ask node 3".into(),
                leader: Some(LeaderHint {
                    id: 3,
                    addr: "127.0.0.1:7072".into(),
                }),
                current_version: None,
            },
            Response::Membership(Membership {
                voters: vec![1, 2, 3],
                learners: vec![4],
                addresses: BTreeMap::from([(1, "a:1".into()), (4, "d:4".into())]),
            }),
            Response::Error {
                code: ErrorCode::Removed,
                message: "gone".into(),
                leader: None,
                current_version: None,
            },
        ] {
            let frame = ResponseFrame { id: 4, body };
            let decoded: ResponseFrame = rmp_serde::from_slice(&encode(&frame)).expect("decode");
            assert_eq!(decoded, frame);
        }
    }

    #[test]
    fn the_wire_shape_is_a_map_with_names() {
        let bytes = encode(&RequestFrame {
            id: 1,
            trace: None,
            body: Request::Get {
                key: b"k".to_vec(),
                consistency: None,
            },
            no_forward: false,
        });
        // fixmap of 3: id, trace, body; body is a fixmap of 2: op, key (bin 8).
        assert_eq!(
            bytes,
            [
                &[0x83, 0xa2][..],
                b"id",
                &[0x01, 0xa5],
                b"trace",
                &[0xc0, 0xa4],
                b"body",
                &[0x82, 0xa2],
                b"op",
                &[0xa3],
                b"get",
                &[0xa3],
                b"key",
                &[0xc4, 0x01],
                b"k",
            ]
            .concat()
        );
    }

    #[test]
    fn an_unknown_op_keeps_its_id() {
        #[derive(Serialize)]
        struct Odd {
            id: u64,
            body: OddBody,
        }
        #[derive(Serialize)]
        struct OddBody {
            op: &'static str,
        }
        let bytes = encode(&Odd {
            id: 77,
            body: OddBody { op: "explode" },
        });
        let failure = decode_request(&bytes).expect_err("unknown op");
        assert_eq!(
            (failure.id, failure.code),
            (77, ErrorCode::UnknownOperation)
        );
    }

    /// One request of every operation.
    fn one_of_each() -> Vec<Request> {
        vec![
            Request::Get {
                key: b"k".to_vec(),
                consistency: None,
            },
            Request::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                expected_version: None,
            },
            Request::Delete {
                key: b"k".to_vec(),
                expected_version: None,
            },
            Request::Scan {
                prefix: Vec::new(),
                start: None,
                end: None,
                limit: None,
                consistency: None,
            },
            Request::Health,
            Request::ClusterStatus,
            Request::Ready,
            Request::TransferLeader { target: None },
            Request::AddMember {
                id: 4,
                address: "a:1".into(),
            },
            Request::PromoteMember { id: 4 },
            Request::RemoveMember { id: 4 },
            Request::SnapshotPrepare { min_index: 1 },
            Request::SnapshotChunk {
                index: 1,
                offset: 0,
                max_bytes: 1,
            },
            Request::Raft {
                from: 1,
                to: 2,
                messages: Vec::new(),
                traces: Vec::new(),
            },
        ]
    }

    #[test]
    fn the_operations_table_names_every_request_as_the_wire_does() {
        #[derive(Deserialize)]
        struct Probe {
            op: String,
        }
        let requests = one_of_each();
        assert_eq!(requests.len(), OPERATIONS.len());
        for (request, operation) in requests.iter().zip(OPERATIONS.iter()) {
            let probe: Probe = rmp_serde::from_slice(&encode(request)).expect("op");
            assert_eq!(probe.op, operation.name);
            assert_eq!(request.operation(), operation);
            assert_eq!(operation_named(operation.name), Some(operation));
        }
        let writes: Vec<&str> = OPERATIONS
            .iter()
            .filter(|op| op.is_write())
            .map(|op| op.name)
            .collect();
        assert_eq!(
            writes,
            [
                "put",
                "delete",
                "transfer_leader",
                "add_member",
                "promote_member",
                "remove_member"
            ]
        );
        let stale = Request::Get {
            key: b"k".to_vec(),
            consistency: Some(Consistency::Stale),
        };
        assert!(!stale.needs_leader());
        assert!(requests[0].needs_leader());
        assert!(!Request::Health.needs_leader());
    }

    #[test]
    fn a_known_operation_with_bad_fields_is_malformed_not_unknown() {
        #[derive(Serialize)]
        struct Frame {
            id: u64,
            body: BTreeMap<&'static str, rmpv_like::Value>,
        }
        mod rmpv_like {
            #[derive(serde::Serialize)]
            #[serde(untagged)]
            pub enum Value {
                Text(&'static str),
                Map(std::collections::BTreeMap<&'static str, u8>),
            }
        }
        for operation in OPERATIONS {
            // Every field any request has, each of the wrong type.
            let mut body = BTreeMap::new();
            body.insert("op", rmpv_like::Value::Text(operation.name));
            for field in [
                "key",
                "value",
                "id",
                "address",
                "target",
                "min_index",
                "index",
                "offset",
                "max_bytes",
                "from",
                "to",
                "messages",
                "limit",
            ] {
                body.insert(field, rmpv_like::Value::Map(BTreeMap::from([("x", 1)])));
            }
            let bytes = encode(&Frame { id: 5, body });
            match decode_request(&bytes) {
                // Health, readiness and cluster status have no fields to get wrong.
                Ok(frame) => assert!(
                    matches!(
                        frame.body,
                        Request::Health | Request::ClusterStatus | Request::Ready
                    ),
                    "{}: {frame:?}",
                    operation.name
                ),
                Err(failure) => assert_eq!(
                    (failure.id, failure.code),
                    (5, ErrorCode::MalformedFrame),
                    "{}: {}",
                    operation.name,
                    failure.message
                ),
            }
        }
        let failure = decode_request(&encode(&Frame {
            id: 6,
            body: BTreeMap::from([("op", rmpv_like::Value::Text("explode"))]),
        }))
        .expect_err("unknown");
        assert_eq!(failure.code, ErrorCode::UnknownOperation);
        for operation in OPERATIONS {
            assert!(
                failure.message.contains(operation.name),
                "{}",
                failure.message
            );
        }
    }

    #[test]
    fn garbage_is_malformed_with_id_zero() {
        let failure = decode_request(b"\xff\x00garbage").expect_err("garbage");
        assert_eq!((failure.id, failure.code), (0, ErrorCode::MalformedFrame));
        let reserved_id = encode(&RequestFrame {
            id: 0,
            trace: None,
            body: Request::Health,
            no_forward: false,
        });
        let failure = decode_request(&reserved_id).expect_err("id 0 is reserved");
        assert_eq!((failure.id, failure.code), (0, ErrorCode::MalformedFrame));
    }
}
