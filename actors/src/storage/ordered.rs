//! An ordered key-value store and its cursor: what the state machines
//! build on (the KV state now, MVCC versions and intents next). The B+
//! tree implements it over pages; [`MemoryOrdered`] implements it over a
//! `BTreeMap` for tests, so a state machine can be checked against the
//! same operations on both.
//!
//! A cursor holds no latch and no lock between calls: it keeps a copy of
//! the entries of one leaf (or, in memory, of the one entry it is on), and
//! every step past what it holds seeks again from the last key it held. So
//! it may be kept across an `.await`, and it stays correct while other
//! threads split and merge the tree's nodes: keys come strictly in order,
//! each leaf as it was at one instant (a step within the copy shows the
//! copy; a step past it shows the store as it is then), and a key present
//! throughout a walk is never skipped.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::StorageError;

/// Keys in byte order, each with a value.
pub trait OrderedStore: Send + Sync {
    /// A cursor over this store.
    type Cursor<'a>: Cursor
    where
        Self: 'a;

    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Puts `value` under `key`, replacing what it had.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError>;

    /// Removes `key`; whether it was there.
    fn delete(&self, key: &[u8]) -> Result<bool, StorageError>;

    /// A cursor, positioned nowhere until it seeks.
    fn cursor(&self) -> Self::Cursor<'_>;
}

/// A position in an ordered store. After a seek or a step it is either on
/// an entry (`key` and `value` are `Some`) or past one end of the store.
pub trait Cursor {
    /// Moves to the first key at or after `key` (`&[]`: the first key).
    fn seek(&mut self, key: &[u8]) -> Result<(), StorageError>;

    /// Moves to the last key at or before `key`.
    fn seek_for_prev(&mut self, key: &[u8]) -> Result<(), StorageError>;

    /// Moves to the last key in the store.
    fn seek_last(&mut self) -> Result<(), StorageError>;

    /// Moves to the first key after the current one (no effect when not on
    /// an entry).
    fn next(&mut self) -> Result<(), StorageError>;

    /// Moves to the last key before the current one (no effect when not on
    /// an entry).
    fn prev(&mut self) -> Result<(), StorageError>;

    /// The key it is on.
    fn key(&self) -> Option<&[u8]>;

    /// The value of the key it is on, as it was when the cursor reached it.
    fn value(&self) -> Option<&[u8]>;
}

/// An ordered store in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryOrdered {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryOrdered {
    /// Runs `f` on the map. A poisoned lock (a panic in a test while it was
    /// held) still holds a map whose every change finished.
    fn read<T>(&self, f: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> T) -> T {
        match self.map.read() {
            Ok(map) => f(&map),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>) -> T) -> T {
        match self.map.write() {
            Ok(mut map) => f(&mut map),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

impl OrderedStore for MemoryOrdered {
    type Cursor<'a> = MemoryCursor<'a>;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.read(|map| map.get(key).cloned()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.write(|map| map.insert(key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.write(|map| map.remove(key).is_some()))
    }

    fn cursor(&self) -> MemoryCursor<'_> {
        MemoryCursor {
            store: self,
            at: None,
        }
    }
}

/// A cursor over a [`MemoryOrdered`]: the entry it is on, copied.
pub struct MemoryCursor<'a> {
    store: &'a MemoryOrdered,
    at: Option<(Vec<u8>, Vec<u8>)>,
}

impl MemoryCursor<'_> {
    fn land(&mut self, lower: Bound<&[u8]>, upper: Bound<&[u8]>, last: bool) {
        self.at = self.store.read(|map| {
            let mut range = map.range::<[u8], _>((lower, upper));
            let found = if last {
                range.next_back()
            } else {
                range.next()
            };
            found.map(|(k, v)| (k.clone(), v.clone()))
        });
    }
}

impl Cursor for MemoryCursor<'_> {
    fn seek(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.land(Bound::Included(key), Bound::Unbounded, false);
        Ok(())
    }

    fn seek_for_prev(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.land(Bound::Unbounded, Bound::Included(key), true);
        Ok(())
    }

    fn seek_last(&mut self) -> Result<(), StorageError> {
        self.land(Bound::Unbounded, Bound::Unbounded, true);
        Ok(())
    }

    fn next(&mut self) -> Result<(), StorageError> {
        if let Some((key, _)) = self.at.take() {
            self.land(Bound::Excluded(&key), Bound::Unbounded, false);
        }
        Ok(())
    }

    fn prev(&mut self) -> Result<(), StorageError> {
        if let Some((key, _)) = self.at.take() {
            self.land(Bound::Unbounded, Bound::Excluded(&key), true);
        }
        Ok(())
    }

    fn key(&self) -> Option<&[u8]> {
        self.at.as_ref().map(|(k, _)| k.as_slice())
    }

    fn value(&self) -> Option<&[u8]> {
        self.at.as_ref().map(|(_, v)| v.as_slice())
    }
}
