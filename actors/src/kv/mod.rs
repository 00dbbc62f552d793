//! The key-value subsystem: the state machine (`state`), which the node's
//! `RaftReplica` owns and applies committed entries to, and the
//! [`KvHandle`] (`handle`) that front doors call it through.

pub mod dump;
mod handle;
mod state;

use std::sync::Arc;
use std::time::Duration;

use crate::storage::StorageError;

pub use handle::{BeginShutdown, KvAnswer, KvHandle, KvRequest};
pub use harmonydb_protocol::{Consistency, Staleness};
pub use state::{
    KvCommand, KvState, ScanItem, ScanPage, ScanRange, UndecodableCommand, Versioned, WriteOutcome,
    SCAN_RESPONSE_SIZE_MAX_BYTES,
};

/// Requests in the replica at once by default; one more is refused as overloaded.
pub const INFLIGHT_REQUESTS_DEFAULT_MAX: usize = 8192;

/// How long a request waits for its outcome by default.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Longest key accepted, in bytes: the storage engine's limit, which keeps
/// at least four keys in every 8 KiB B+ tree page.
pub const KEY_SIZE_MAX_BYTES: usize = crate::storage::btree::KEY_SIZE_MAX_BYTES;

/// Default limit on a value's size (configurable per node).
pub const VALUE_SIZE_DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// Most items one scan may ask for.
pub const SCAN_LIMIT_MAX: usize = 10_000;

/// Everything the KV subsystem can answer instead of a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The key is empty or too long.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The value is over the configured limit.
    #[error("value of {size_bytes} bytes exceeds the limit of {size_max_bytes} bytes")]
    ValueTooLarge {
        /// The value's size.
        size_bytes: usize,
        /// The node's limit.
        size_max_bytes: usize,
    },
    /// A scan asked for an invalid range or limit.
    #[error("invalid scan: {0}")]
    InvalidScan(String),
    /// The key does not exist.
    #[error("key not found")]
    NotFound,
    /// Compare-and-set failed: the key's version is not the expected one.
    #[error("version mismatch: expected version {expected}, but the key's version is {current} (0 = absent)")]
    VersionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What the key has (0 if absent).
        current: u64,
    },
    /// Too many requests in flight.
    #[error("the node is overloaded; retry later")]
    Overloaded,
    /// This node does not lead; `leader` does.
    #[error("node {leader} is the leader")]
    NotLeader {
        /// The leader's id.
        leader: u64,
    },
    /// No leader is known (an election is under way or this node is cut off).
    #[error("no leader is known to this node; an election may be under way or the node may be cut off from a majority")]
    NoLeader,
    /// The request was not carried out and may be retried.
    #[error("not carried out: {0}")]
    Unavailable(String),
    /// Whether a write was applied is unknown (timeout, lost leadership).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node was removed from the cluster and takes no further part.
    #[error("this node was removed from the cluster (by the configuration at index {index}); ask another node")]
    Removed {
        /// The index of the configuration that removed it.
        index: u64,
    },
    /// This node's storage failed and it stopped serving: whether this
    /// write was stored is unknown; the node must restart.
    #[error("storage unavailable, write outcome unknown: {0}")]
    Storage(NodeFault),
    /// A WAL record that passed its checksum but is not a valid command.
    #[error("WAL entry {index} is not a valid KV command: {reason}")]
    CorruptEntry {
        /// The record's index.
        index: u64,
        /// Why it failed to decode.
        reason: String,
    },
}

/// Why a replica stopped serving: a fault of this node (its disk, its
/// pages, its WAL), never the outcome of a command, which every replica
/// computes the same. It keeps the error that caused it, typed, for the
/// log and for `source()`; clients see its text.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{during}: {source}")]
pub struct NodeFault {
    /// What the replica was doing ("applying entry 12", "syncing the WAL
    /// for a checkpoint").
    pub during: String,
    /// The error.
    #[source]
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

/// Two faults are the same when they say the same: what was being done
/// and the error's text (its type is erased behind the `Arc`).
impl PartialEq for NodeFault {
    fn eq(&self, other: &Self) -> bool {
        self.during == other.during && self.source.to_string() == other.source.to_string()
    }
}

impl Eq for NodeFault {}

impl NodeFault {
    /// A fault met while doing `during`.
    pub fn new(
        during: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        NodeFault {
            during: during.into(),
            source: Arc::new(source),
        }
    }

    /// The error, if it is an `E`.
    pub fn cause<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref::<E>()
    }
}

/// Why the state machine could not read or change its state here: a fault
/// of this node's storage, never an outcome (see `Refusal`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The pages under the state failed (a full buffer pool is transient;
    /// anything else stops the node).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored value is shorter than the version every value starts with.
    #[error("a stored value of {size_bytes} bytes has no version")]
    Unversioned {
        /// Its size.
        size_bytes: usize,
    },
    /// A snapshot file could not be written or read back.
    #[error(transparent)]
    Dump(#[from] dump::DumpError),
}

impl StateError {
    /// Whether trying again later can succeed without a restart: no frame
    /// was free in the buffer pool, and nothing was changed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StateError::Storage(StorageError::PoolExhausted { .. })
        )
    }
}

impl From<StateError> for KvError {
    /// How a fault met while reading looks to a client: a full pool is
    /// `Overloaded` (retry later); anything else is a storage failure.
    fn from(error: StateError) -> Self {
        if error.is_transient() {
            KvError::Overloaded
        } else {
            KvError::Storage(NodeFault::new("reading the state", error))
        }
    }
}

/// A command's outcome when it changes nothing: computed the same by every
/// replica from the same state, so it is answered to the client as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key to delete does not exist.
    #[error("key not found")]
    NotFound,
    /// Compare-and-set failed.
    #[error("version mismatch: expected version {expected}, but the key's version is {current} (0 = absent)")]
    VersionMismatch {
        /// What the command expected.
        expected: u64,
        /// What the key had (0 if absent).
        current: u64,
    },
}

impl From<Refusal> for KvError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound => KvError::NotFound,
            Refusal::VersionMismatch { expected, current } => {
                KvError::VersionMismatch { expected, current }
            }
        }
    }
}

/// What a command did, the same on every replica: a write, or a refusal.
pub type Outcome = Result<WriteOutcome, Refusal>;

/// Size limits enforced before a request reaches the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest value accepted, in bytes.
    pub value_size_max_bytes: usize,
    /// Requests in the replica at once (queued, replicating or waiting for a
    /// read round); one more is refused as overloaded instead of queueing.
    pub inflight_requests_max: usize,
    /// How long a request waits for its outcome before the caller is told
    /// it is unknown.
    pub request_timeout: Duration,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            value_size_max_bytes: VALUE_SIZE_DEFAULT_MAX_BYTES,
            inflight_requests_max: INFLIGHT_REQUESTS_DEFAULT_MAX,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
        }
    }
}

impl KvLimits {
    /// Checks keys, values and scan limits of an operation.
    pub fn check(&self, op: &KvOp) -> Result<(), KvError> {
        match op {
            KvOp::Get { key } | KvOp::Delete { key, .. } => check_key(key),
            KvOp::Put { key, value, .. } => {
                check_key(key)?;
                if value.len() > self.value_size_max_bytes {
                    return Err(KvError::ValueTooLarge {
                        size_bytes: value.len(),
                        size_max_bytes: self.value_size_max_bytes,
                    });
                }
                Ok(())
            }
            KvOp::Scan(range) => {
                if range.limit == 0 || range.limit > SCAN_LIMIT_MAX {
                    return Err(KvError::InvalidScan(format!(
                        "limit {} is outside 1..={SCAN_LIMIT_MAX}",
                        range.limit
                    )));
                }
                Ok(())
            }
            KvOp::Health => Ok(()),
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidKey("the key is empty".to_string()));
    }
    if key.len() > KEY_SIZE_MAX_BYTES {
        return Err(KvError::InvalidKey(format!(
            "the key is {} bytes; the maximum is {KEY_SIZE_MAX_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// An operation on the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Read one key.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Write one key, optionally compare-and-set.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The version the key must have (0 = absent), if any.
        expected_version: Option<u64>,
    },
    /// Delete one key, optionally only at a version.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The version the key must have, if any.
        expected_version: Option<u64>,
    },
    /// Read keys in order.
    Scan(ScanRange),
    /// Is the store serving, and how far has it applied?
    Health,
}

/// The store's answer to a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvReply {
    /// The key's value and version.
    Value(Versioned),
    /// A write was applied.
    Written(WriteOutcome),
    /// A page of scan results.
    Page(ScanPage),
    /// The store is serving.
    Healthy {
        /// Index of the last applied write.
        applied_index: u64,
    },
}
