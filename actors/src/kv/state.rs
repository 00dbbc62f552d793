//! The key-value state machine: a B+ tree (`storage::btree`) from key to
//! (version, value), changed only by applying logged commands in index
//! order. Applying is deterministic, so replaying the WAL from the last
//! checkpoint rebuilds exactly the state that was acknowledged.
//!
//! In the tree a value is stored as its version (u64, little-endian) followed
//! by the value's bytes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Outcome, Refusal, StateError};
use crate::storage::btree::BTree;
use crate::storage::memory::MemoryPages;
use crate::storage::meta::ShardMeta;
use crate::storage::ordered::{Cursor, OrderedStore};
use crate::storage::{PageStore, StorageError};

/// A scan stops adding items once it holds this many key and value bytes, so
/// an answer always fits in one TCP frame and one HTTP response buffer.
pub const SCAN_RESPONSE_SIZE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// A value and the version that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Log index of the write that stored them. It increases with every
    /// write to the key, including across a delete and re-create.
    pub version: u64,
}

/// A change to the state, as stored in the WAL: MessagePack, compact form
/// (an array `[op, key, value, expected_version]`, no field names; every
/// byte here is in every synced page, see docs/wal-format.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvCommand {
    /// Store a value, if the version matches when one is expected.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Compare-and-set: the version the key must have; 0 = must not exist.
        expected_version: Option<u64>,
    },
    /// Remove a key, if the version matches when one is expected.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Compare-and-delete: the version the key must have.
        expected_version: Option<u64>,
    },
}

impl KvCommand {
    /// Serializes the command for the WAL.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("a KV command always serializes")
    }

    /// Reads a command back from a WAL payload.
    pub fn decode(payload: &[u8]) -> Result<Self, UndecodableCommand> {
        rmp_serde::from_slice(payload).map_err(UndecodableCommand)
    }
}

/// A log entry's payload that is not a KV command (a bug or a damaged
/// record: entries are checksummed in the WAL).
#[derive(Debug, thiserror::Error)]
#[error("not a KV command: {0}")]
pub struct UndecodableCommand(#[source] rmp_serde::decode::Error);

/// What applying a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The key now has this version.
    Written {
        /// The new version.
        version: u64,
    },
    /// The key, which had this version, is gone.
    Deleted {
        /// The version that was removed.
        deleted_version: u64,
    },
}

/// Which keys a scan visits: the intersection of a prefix and `[start, end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanRange {
    /// Only keys starting with these bytes (empty = all).
    pub prefix: Vec<u8>,
    /// First key, inclusive.
    pub start: Option<Vec<u8>>,
    /// Last key, exclusive.
    pub end: Option<Vec<u8>>,
    /// At most this many items.
    pub limit: usize,
}

/// One item of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanItem {
    /// The key.
    pub key: Vec<u8>,
    /// Its value and version.
    pub versioned: Versioned,
}

/// A page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Items in key order.
    pub items: Vec<ScanItem>,
    /// More keys match beyond the last item (ask again from just after it).
    pub more: bool,
}

/// One shard's keys, and how far into its log they have been applied,
/// over an ordered store: the B+ tree in a node (`KvState<BTree<_>>`), a
/// map in memory in tests.
pub struct KvState<O: OrderedStore> {
    store: O,
    shard: u64,
    applied_index: u64,
    keys: u64,
}

impl<O: OrderedStore> std::fmt::Debug for KvState<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvState")
            .field("shard", &self.shard)
            .field("applied_index", &self.applied_index)
            .field("keys", &self.keys)
            .finish()
    }
}

/// Bytes of the version in front of every stored value.
const VERSION_SIZE: usize = 8;

fn encode(version: u64, value: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(VERSION_SIZE + value.len());
    stored.extend_from_slice(&version.to_le_bytes());
    stored.extend_from_slice(value);
    stored
}

fn decode(stored: &[u8]) -> Result<Versioned, StateError> {
    if stored.len() < VERSION_SIZE {
        return Err(StateError::Unversioned {
            size_bytes: stored.len(),
        });
    }
    let mut version = [0u8; VERSION_SIZE];
    version.copy_from_slice(&stored[..VERSION_SIZE]);
    Ok(Versioned {
        value: stored[VERSION_SIZE..].to_vec(),
        version: u64::from_le_bytes(version),
    })
}

impl KvState<BTree<MemoryPages>> {
    /// An empty state in a B+ tree over pages in memory, for tests.
    pub fn in_memory() -> Self {
        KvState::create(Arc::new(MemoryPages::new()), 0).expect("memory pages never fail")
    }
}

impl<S: PageStore> KvState<BTree<S>> {
    /// A new, empty shard at index 0 in `store`.
    pub fn create(store: Arc<S>, shard: u64) -> Result<Self, StorageError> {
        Ok(KvState::over(BTree::create(store)?, shard))
    }

    /// A shard as a checkpoint left it.
    pub fn open(store: Arc<S>, meta: ShardMeta) -> Self {
        KvState {
            store: BTree::open(store, meta.root),
            shard: meta.shard,
            applied_index: meta.applied_index,
            keys: meta.keys,
        }
    }

    /// Where the shard's tree is and how far it is applied, for a checkpoint.
    pub fn shard_meta(&self) -> ShardMeta {
        ShardMeta {
            shard: self.shard,
            root: self.store.root(),
            applied_index: self.applied_index,
            keys: self.keys,
        }
    }

    /// The tree (for its statistics and checks).
    pub fn tree(&self) -> &BTree<S> {
        &self.store
    }
}

impl<O: OrderedStore> KvState<O> {
    /// A new shard at index 0 over `store`, which must be empty.
    pub fn over(store: O, shard: u64) -> Self {
        KvState {
            store,
            shard,
            applied_index: 0,
            keys: 0,
        }
    }

    /// The shard this is.
    pub fn shard(&self) -> u64 {
        self.shard
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Counts a command index as applied without applying anything (an
    /// entry that is not a command, such as a leader's no-op).
    pub fn skip_to(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.keys
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// The value and version of a key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StateError> {
        self.store
            .get(key)?
            .map(|stored| decode(&stored))
            .transpose()
    }

    /// Applies the command at `index`. Commands must come in index order.
    /// Its outcome (a refusal included: a failed compare-and-set consumes
    /// its index and changes nothing) is the same on every replica. A
    /// `StateError` is this node's fault, not an outcome: the index is not
    /// applied. A transient one (no frame in the pool) leaves the state as
    /// it was: apply it again later; any other means the node must stop and
    /// recover from its checkpoint and log.
    pub fn apply(&mut self, index: u64, command: KvCommand) -> Result<Outcome, StateError> {
        assert!(
            index > self.applied_index,
            "command {index} applied after {}",
            self.applied_index
        );
        let outcome = self.apply_command(index, command)?;
        self.applied_index = index;
        Ok(outcome)
    }

    fn apply_command(&mut self, index: u64, command: KvCommand) -> Result<Outcome, StateError> {
        match command {
            KvCommand::Put {
                key,
                value,
                expected_version,
            } => {
                let current = self.get(&key)?.map(|v| v.version);
                if let Some(expected) = expected_version {
                    if expected != current.unwrap_or(0) {
                        return Ok(Err(Refusal::VersionMismatch {
                            expected,
                            current: current.unwrap_or(0),
                        }));
                    }
                }
                self.store.insert(&key, &encode(index, &value))?;
                if current.is_none() {
                    self.keys += 1;
                }
                Ok(Ok(WriteOutcome::Written { version: index }))
            }
            KvCommand::Delete {
                key,
                expected_version,
            } => {
                let Some(current) = self.get(&key)?.map(|v| v.version) else {
                    return Ok(Err(Refusal::NotFound));
                };
                if let Some(expected) = expected_version {
                    if expected != current {
                        return Ok(Err(Refusal::VersionMismatch { expected, current }));
                    }
                }
                self.store.delete(&key)?;
                self.keys -= 1;
                Ok(Ok(WriteOutcome::Deleted {
                    deleted_version: current,
                }))
            }
        }
    }

    /// Returns the keys in `range` in order, at most `range.limit` of them and
    /// at most about `SCAN_RESPONSE_SIZE_MAX_BYTES` of data (always at least one item).
    pub fn scan(&self, range: &ScanRange) -> Result<ScanPage, StateError> {
        let lower = match &range.start {
            Some(start) if start.as_slice() > range.prefix.as_slice() => start.as_slice(),
            _ => range.prefix.as_slice(),
        };
        let mut page = ScanPage::default();
        let mut size_bytes = 0usize;
        let mut cursor = self.store.cursor();
        cursor.seek(lower)?;
        while let (Some(key), Some(stored)) = (cursor.key(), cursor.value()) {
            let past_end = range.end.as_ref().is_some_and(|end| key >= end.as_slice());
            if past_end || !key.starts_with(&range.prefix) {
                break;
            }
            let item_size = key.len() + stored.len().saturating_sub(VERSION_SIZE);
            let over_budget =
                !page.items.is_empty() && size_bytes + item_size > SCAN_RESPONSE_SIZE_MAX_BYTES;
            if page.items.len() >= range.limit || over_budget {
                page.more = true;
                break;
            }
            size_bytes += item_size;
            page.items.push(ScanItem {
                key: key.to_vec(),
                versioned: decode(stored)?,
            });
            cursor.next()?;
        }
        Ok(page)
    }

    /// Visits every key in order with its value and version (for snapshots).
    pub fn for_each(
        &self,
        mut visit: impl FnMut(&[u8], Versioned) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut cursor = self.store.cursor();
        cursor.seek(&[])?;
        while let (Some(key), Some(stored)) = (cursor.key(), cursor.value()) {
            visit(key, decode(stored)?)?;
            cursor.next()?;
        }
        Ok(())
    }

    /// Stores a key exactly as a snapshot holds it (version included).
    pub fn restore(&mut self, key: &[u8], versioned: &Versioned) -> Result<(), StateError> {
        let existed = self.store.get(key)?.is_some();
        self.store
            .insert(key, &encode(versioned.version, &versioned.value))?;
        if !existed {
            self.keys += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, expected_version: Option<u64>) -> KvCommand {
        KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            expected_version,
        }
    }

    fn delete(key: &str, expected_version: Option<u64>) -> KvCommand {
        KvCommand::Delete {
            key: key.as_bytes().to_vec(),
            expected_version,
        }
    }

    #[test]
    fn versions_increase_with_every_write_even_across_delete() {
        let mut state = KvState::in_memory();
        assert_eq!(
            state.apply(1, put("a", "1", None)),
            Ok(Ok(WriteOutcome::Written { version: 1 }))
        );
        assert_eq!(
            state.apply(2, put("b", "x", None)),
            Ok(Ok(WriteOutcome::Written { version: 2 }))
        );
        assert_eq!(
            state.apply(3, put("a", "2", None)),
            Ok(Ok(WriteOutcome::Written { version: 3 }))
        );
        assert_eq!(
            state.apply(4, delete("a", None)),
            Ok(Ok(WriteOutcome::Deleted { deleted_version: 3 }))
        );
        assert_eq!(state.get(b"a"), Ok(None));
        assert_eq!(
            state.apply(5, put("a", "3", None)),
            Ok(Ok(WriteOutcome::Written { version: 5 }))
        );
        assert_eq!(
            state.get(b"a"),
            Ok(Some(Versioned {
                value: b"3".to_vec(),
                version: 5
            }))
        );
        assert_eq!(state.applied_index(), 5);
    }

    #[test]
    fn compare_and_set_checks_the_current_version() {
        let mut state = KvState::in_memory();
        assert_eq!(
            state.apply(1, put("k", "v1", Some(0))),
            Ok(Ok(WriteOutcome::Written { version: 1 }))
        );
        assert_eq!(
            state.apply(2, put("k", "v2", Some(0))),
            Ok(Err(Refusal::VersionMismatch {
                expected: 0,
                current: 1
            }))
        );
        assert_eq!(
            state.apply(3, put("k", "v2", Some(7))),
            Ok(Err(Refusal::VersionMismatch {
                expected: 7,
                current: 1
            }))
        );
        assert_eq!(
            state.get(b"k").expect("get").map(|v| v.value),
            Some(b"v1".to_vec())
        );
        assert_eq!(
            state.apply(4, put("k", "v2", Some(1))),
            Ok(Ok(WriteOutcome::Written { version: 4 }))
        );
        assert_eq!(
            state.apply(5, delete("k", Some(1))),
            Ok(Err(Refusal::VersionMismatch {
                expected: 1,
                current: 4
            }))
        );
        assert_eq!(
            state.apply(6, delete("k", Some(4))),
            Ok(Ok(WriteOutcome::Deleted { deleted_version: 4 }))
        );
        assert_eq!(
            state.apply(7, delete("k", None)),
            Ok(Err(Refusal::NotFound))
        );
    }

    impl KvState<BTree<MemoryPages>> {
        fn scan_ok(&self, range: &ScanRange) -> ScanPage {
            self.scan(range).expect("scan")
        }
    }

    fn keys(page: &ScanPage) -> Vec<String> {
        page.items
            .iter()
            .map(|i| String::from_utf8_lossy(&i.key).into_owned())
            .collect()
    }

    #[test]
    fn scan_honours_prefix_bounds_and_limit() {
        let mut state = KvState::in_memory();
        for (i, key) in ["a", "app/1", "app/2", "app/3", "apq", "b"]
            .iter()
            .enumerate()
        {
            state
                .apply(i as u64 + 1, put(key, "v", None))
                .expect("put")
                .expect("written");
        }
        let all = state.scan_ok(&ScanRange {
            limit: 100,
            ..ScanRange::default()
        });
        assert_eq!(keys(&all), ["a", "app/1", "app/2", "app/3", "apq", "b"]);
        assert!(!all.more);

        let prefixed = state.scan_ok(&ScanRange {
            prefix: b"app/".to_vec(),
            limit: 100,
            ..ScanRange::default()
        });
        assert_eq!(keys(&prefixed), ["app/1", "app/2", "app/3"]);

        let limited = state.scan_ok(&ScanRange {
            prefix: b"app/".to_vec(),
            limit: 2,
            ..ScanRange::default()
        });
        assert_eq!(keys(&limited), ["app/1", "app/2"]);
        assert!(limited.more);

        let exactly = state.scan_ok(&ScanRange {
            prefix: b"app/".to_vec(),
            limit: 3,
            ..ScanRange::default()
        });
        assert!(!exactly.more, "no key beyond the third matches the prefix");

        let ranged = state.scan_ok(&ScanRange {
            start: Some(b"app/2".to_vec()),
            end: Some(b"b".to_vec()),
            limit: 100,
            ..ScanRange::default()
        });
        assert_eq!(keys(&ranged), ["app/2", "app/3", "apq"]);

        let both = state.scan_ok(&ScanRange {
            prefix: b"app/".to_vec(),
            start: Some(b"a".to_vec()),
            end: Some(b"app/3".to_vec()),
            limit: 100,
        });
        assert_eq!(keys(&both), ["app/1", "app/2"]);

        let empty = state.scan_ok(&ScanRange {
            start: Some(b"z".to_vec()),
            end: Some(b"a".to_vec()),
            limit: 100,
            ..ScanRange::default()
        });
        assert!(empty.items.is_empty() && !empty.more);
    }

    #[test]
    fn scan_stops_at_the_byte_budget_but_returns_at_least_one_item() {
        let mut state = KvState::in_memory();
        let big = "x".repeat(SCAN_RESPONSE_SIZE_MAX_BYTES / 2 + 1);
        for (i, key) in ["k1", "k2", "k3"].iter().enumerate() {
            state
                .apply(i as u64 + 1, put(key, &big, None))
                .expect("put")
                .expect("written");
        }
        let page = state.scan_ok(&ScanRange {
            limit: 100,
            ..ScanRange::default()
        });
        assert_eq!(keys(&page), ["k1"]);
        assert!(page.more);
    }

    #[test]
    fn the_wal_encoding_is_the_documented_compact_array() {
        // docs/wal-format.md: fixarray(4) "put" bin8(key) bin8(value) nil
        let bytes = put("k", "v", None).encode();
        assert_eq!(bytes, b"\x94\xa3put\xc4\x01k\xc4\x01v\xc0".to_vec());
        let bytes = delete("k", Some(7)).encode();
        assert_eq!(bytes, b"\x93\xa6delete\xc4\x01k\x07".to_vec());
    }

    #[test]
    fn commands_round_trip_through_their_wal_encoding() {
        for command in [put("k", "v", Some(3)), put("", "", None), delete("k", None)] {
            let decoded = KvCommand::decode(&command.encode()).expect("decodes");
            assert_eq!(decoded, command);
        }
        assert!(KvCommand::decode(b"\xc1garbage").is_err());
    }

    /// The state over the B+ tree and over a map in memory: the same
    /// commands give the same outcomes and the same scans, whatever the
    /// range, prefix and limit.
    #[test]
    fn the_state_is_the_same_over_the_tree_and_over_a_map() {
        use crate::storage::ordered::MemoryOrdered;
        let mut tree = KvState::in_memory();
        let mut map = KvState::over(MemoryOrdered::default(), 0);
        for i in 1..=2000u64 {
            let key = format!(
                "{}/{:04}",
                ["a", "ab", "b"][(i % 3) as usize],
                (i * 7919) % 500
            );
            let command = if i % 5 == 0 {
                delete(&key, None)
            } else {
                put(
                    &key,
                    &"v".repeat((i % 300) as usize),
                    (i % 11 == 0).then_some(i - 1),
                )
            };
            assert_eq!(
                tree.apply(i, command.clone()),
                map.apply(i, command),
                "command {i}"
            );
        }
        assert_eq!(tree.len(), map.len());
        for (prefix, start, end, limit) in [
            ("", None, None, 10_000),
            ("ab/", None, None, 10_000),
            ("a", Some("a/0100"), Some("ab/0200"), 10_000),
            ("", Some("ab/0499"), None, 7),
            ("b/", Some("a/"), Some("b/0250"), 50),
            ("c", None, None, 10),
        ] {
            let range = ScanRange {
                prefix: prefix.as_bytes().to_vec(),
                start: start.map(|s: &str| s.as_bytes().to_vec()),
                end: end.map(|e: &str| e.as_bytes().to_vec()),
                limit,
            };
            assert_eq!(tree.scan(&range), map.scan(&range), "{range:?}");
        }
    }
}
