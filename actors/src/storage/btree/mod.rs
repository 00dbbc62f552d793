//! The B+ tree: byte-string keys to byte-string values, ordered by key,
//! over pages reached only through the [`PageStore`] trait (the buffer
//! pool, or `MemoryPages` in tests). The KV layer above keeps one tree per
//! shard and puts a version in front of each value; the tree doesn't care.
//!
//! Code map: `node` is the slotted page layout and its validating view,
//! `edit` in-place edits of a node, `cell` the cell encodings and
//! whole-node images, `overflow` the chains
//! holding large values, `search` the readers' descent and `get`, `scan`
//! ordered scans, `write` the writers' latching protocol, `plan` how a
//! latched path is split or merged, `rebalance` the split, merge and
//! redistribution of node images, and `check` the invariant checker.
//! The byte layout is in `docs/storage-format.md`, "B+ tree pages".
//!
//! Concurrency is latch crabbing. Every page latch is taken top-down and,
//! on one level, left to right; nothing ever waits for a latch against
//! that order (a reverse scan uses `try_read` and re-descends instead), so
//! there is no deadlock. The root page id sits behind its own lock, taken
//! exclusively only by a writer that may change the root. Readers couple
//! read latches down the tree; writers first try optimistically (read
//! latches down, the leaf's write latch) and only when the leaf would
//! split or underflow restart with write latches, keeping ancestors only
//! while a change could reach them (`write.rs`).

mod cell;
mod check;
mod cursor;
mod edit;
mod node;
mod overflow;
mod plan;
mod rebalance;
mod scan;
mod search;
mod write;

use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{PageId, PageKind, PageStore, StorageError};

pub use cursor::TreeCursor;
pub use node::{
    INTERNAL_CELL_SIZE_MAX_BYTES, INTERNAL_FILL_MIN_BYTES, INTERNAL_HEADER_SIZE_BYTES,
    LEAF_CELL_SIZE_MAX_BYTES, LEAF_FILL_MIN_BYTES, LEAF_HEADER_SIZE_BYTES,
};
pub use overflow::{OVERFLOW_DATA_MAX_BYTES, OVERFLOW_HEADER_SIZE_BYTES};

/// The longest key the tree takes; longer ones are `StorageError::TooLarge`.
pub const KEY_SIZE_MAX_BYTES: usize = 1024;

/// Which way a scan walks the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys.
    Forward,
    /// Descending keys.
    Reverse,
}

/// What `check` found: the tree's size, once every invariant held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeShape {
    /// Levels, leaves included (a lone root leaf: 1).
    pub height: usize,
    /// Keys in the leaves.
    pub keys: u64,
    /// Leaf pages.
    pub leaves: u64,
    /// Internal pages.
    pub internal: u64,
    /// Overflow pages.
    pub overflow: u64,
}

impl TreeShape {
    /// Pages the tree holds: every page it should have allocated and not freed.
    pub fn pages(&self) -> u64 {
        self.leaves + self.internal + self.overflow
    }
}

/// Counters of structure changes since the tree was created or opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Nodes split in two (a root split counts once).
    pub splits: u64,
    /// Pairs of siblings merged into one node.
    pub merges: u64,
    /// Pairs of siblings that moved cells between them.
    pub redistributions: u64,
    /// Levels, leaves included, as last seen (0 before an opened tree's first use).
    pub height: u64,
}

/// The counters behind `TreeStats`.
#[derive(Default)]
struct Counters {
    splits: AtomicU64,
    merges: AtomicU64,
    redistributions: AtomicU64,
    height: AtomicU64,
}

/// A concurrent B+ tree over the pages of `S`.
pub struct BTree<S: PageStore> {
    store: Arc<S>,
    /// The root page. Shared while a reader or writer latches the root page
    /// (the lock is the root's parent in the latch order); exclusive for a
    /// writer that may split or collapse the root.
    root: RwLock<PageId>,
    counters: Counters,
}

impl<S: PageStore> BTree<S> {
    /// A new, empty tree: one root leaf, allocated from `store`.
    pub fn create(store: Arc<S>) -> Result<BTree<S>, StorageError> {
        let root = {
            let mut page = store.allocate(PageKind::Leaf)?;
            edit::init_leaf(&mut page, 0, 0);
            page.id()
        };
        let tree = BTree::open(store, root);
        tree.counters.height.store(1, Ordering::Relaxed);
        Ok(tree)
    }

    /// The tree whose root is page `root`. Nothing is read now; the root's
    /// kind is checked by every operation as it latches the root.
    pub fn open(store: Arc<S>, root: PageId) -> BTree<S> {
        BTree {
            store,
            root: RwLock::new(root),
            counters: Counters::default(),
        }
    }

    /// The root page now, for the checkpointer's meta page.
    pub fn root(&self) -> PageId {
        *self.root.read()
    }

    /// The page store the tree lives in.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The value of `key`, if it is in the tree.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        self.lookup(key)
    }

    /// Puts `value` under `key`, replacing (and freeing the overflow pages
    /// of) any value it had.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        let len = u32::try_from(value.len()).map_err(|_| {
            StorageError::TooLarge(format!(
                "a {}-byte value is over the {}-byte limit",
                value.len(),
                u32::MAX
            ))
        })?;
        let (cell, chain) = if cell::fits_inline(key.len(), value.len()) {
            (cell::leaf_cell_inline(key, value), None)
        } else {
            let first = overflow::write_chain(&*self.store, value)?;
            (cell::leaf_cell_overflow(key, len, first), Some(first))
        };
        match self.edit(key, write::Edit::Put(&cell)) {
            Ok(edited) => self.release(edited).map(|_| ()),
            Err(error) => {
                if let Some(first) = chain {
                    // The cell never reached the tree: its chain is ours alone.
                    overflow::free_chain(&*self.store, first, len)?;
                }
                Err(error)
            }
        }
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&self, key: &[u8]) -> Result<bool, StorageError> {
        check_key(key)?;
        let edited = self.edit(key, write::Edit::Delete)?;
        self.release(edited)
    }

    /// Visits the keys in the range from `start` to `end` in order, forward
    /// or reverse, calling `visit(key, value)` until it returns
    /// `ControlFlow::Break` or the range ends. `visit` runs while a leaf is
    /// latched for reading, so it must not call into this tree.
    pub fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        match direction {
            Direction::Forward => self.scan_forward(start, end, visit),
            Direction::Reverse => self.scan_reverse(start, end, visit),
        }
    }

    /// Checks every structural invariant (key order, separator ranges, one
    /// depth for all leaves, leaf links, fill bounds, overflow chains) and
    /// returns the tree's shape, or what is wrong. For tests: it reads the
    /// pages one at a time, so run it while no writer is active.
    pub fn check(&self) -> Result<TreeShape, String> {
        check::check(self)
    }

    /// The structure-change counters and the height.
    pub fn stats(&self) -> TreeStats {
        TreeStats {
            splits: self.counters.splits.load(Ordering::Relaxed),
            merges: self.counters.merges.load(Ordering::Relaxed),
            redistributions: self.counters.redistributions.load(Ordering::Relaxed),
            height: self.counters.height.load(Ordering::Relaxed),
        }
    }

    /// Records that the root is at `level` (height `level + 1`).
    fn note_root_level(&self, level: u16) {
        let height = u64::from(level) + 1;
        // A load first: the common case writes nothing, so readers on many
        // threads don't fight over the cache line.
        if self.counters.height.load(Ordering::Relaxed) != height {
            self.counters.height.store(height, Ordering::Relaxed);
        }
    }
}

/// Refuses keys over `KEY_SIZE_MAX_BYTES`.
fn check_key(key: &[u8]) -> Result<(), StorageError> {
    if key.len() > KEY_SIZE_MAX_BYTES {
        return Err(StorageError::TooLarge(format!(
            "a {}-byte key is over the {KEY_SIZE_MAX_BYTES}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

/// Whether `key` is at or past `start` (the low end of a range).
fn after_start(key: &[u8], start: Bound<&[u8]>) -> bool {
    match start {
        Bound::Unbounded => true,
        Bound::Included(start) => key >= start,
        Bound::Excluded(start) => key > start,
    }
}

/// Whether `key` is before `end` (the high end of a range).
fn before_end(key: &[u8], end: Bound<&[u8]>) -> bool {
    match end {
        Bound::Unbounded => true,
        Bound::Included(end) => key <= end,
        Bound::Excluded(end) => key < end,
    }
}

#[cfg(test)]
mod tests;
