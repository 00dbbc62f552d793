//! The key-value subsystem: the state machine (`state`), which the node's
//! `RaftReplica` owns and applies committed entries to, and the
//! [`KvHandle`] (`handle`) that front doors call it through.

pub mod dump;
mod handle;
mod state;

use std::time::Duration;

pub use handle::{BeginShutdown, KvAnswer, KvHandle, KvRequest};
pub use harmonydb_protocol::{Consistency, Staleness};
pub use state::{
    KvCommand, KvState, ScanItem, ScanPage, ScanRange, Versioned, WriteOutcome,
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
    /// The WAL failed. Whether this write was stored is unknown; the node must restart.
    #[error("storage unavailable, write outcome unknown: {0}")]
    Storage(String),
    /// A WAL record that passed its checksum but is not a valid command.
    #[error("WAL entry {index} is not a valid KV command: {reason}")]
    CorruptEntry {
        /// The record's index.
        index: u64,
        /// Why it failed to decode.
        reason: String,
    },
}

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
