//! Ordered scans over a key range.
//!
//! Forward scans walk the leaf level left to right with latch coupling:
//! the next leaf is latched before the current one is let go, which is the
//! latch order, so it may wait. Reverse scans must not wait for a latch
//! right to left: they `try_read` the previous leaf while still holding the
//! current one, and if a writer holds it, they let go and descend again
//! from the root to the leaf holding the keys below the last position
//! (using the leaf's lower fence, so every descent makes progress).
//!
//! A merge relinks leaves only while holding the latches of every leaf it
//! relinks, so a link read under a latch never leads to a freed page.

use std::ops::{Bound, ControlFlow};

use crate::storage::{Page, PageId, PageStore, StorageError};

use super::node::{malformed, Node};
use super::search::{Found, Seek};
use super::{after_start, before_end, BTree};

impl<S: PageStore> BTree<S> {
    /// A forward scan (see `BTree::scan`).
    pub(super) fn scan_forward(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let seek = match start {
            Bound::Unbounded => Seek::First,
            Bound::Included(key) | Bound::Excluded(key) => Seek::Key(key),
        };
        let mut leaf = self.descend_read(seek, false)?.leaf;
        let mut index = {
            let node = Node::parse(&leaf)?;
            match start {
                Bound::Unbounded => 0,
                Bound::Included(key) => node.lower_bound(key)?,
                Bound::Excluded(key) => node.upper_bound(key)?,
            }
        };
        let mut buffer = Vec::new();
        loop {
            let (id, next) = {
                let node = Node::parse(&leaf)?;
                while index < node.count() {
                    let key = node.key(index)?;
                    if !before_end(key, end) {
                        return Ok(());
                    }
                    let value = self.value_in(&node, index, &mut buffer)?;
                    if visit(key, value).is_break() {
                        return Ok(());
                    }
                    index += 1;
                }
                (node.id(), node.next())
            };
            if next == 0 {
                return Ok(());
            }
            if next == id {
                return Err(malformed(id, "a leaf links to itself"));
            }
            let following = self.store.read(next)?;
            check_order(&Node::parse(&leaf)?, &Node::parse(&following)?)?;
            leaf = following;
            index = 0;
        }
    }

    /// A reverse scan (see `BTree::scan`).
    pub(super) fn scan_reverse(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        // Keys still to visit are below `upper`: the range's end at first,
        // then a leaf's lower fence or first key as the scan moves left.
        let mut upper: Bound<Vec<u8>> = end.map(<[u8]>::to_vec);
        let seek = match end {
            Bound::Unbounded => Seek::Last,
            Bound::Included(key) => Seek::Key(key),
            Bound::Excluded(key) => Seek::Below(key),
        };
        let Found {
            mut leaf,
            mut fence,
        } = self.descend_read(seek, true)?;
        let mut descended = true;
        let mut buffer = Vec::new();
        loop {
            let prev = {
                let node = Node::parse(&leaf)?;
                let mut index = match &upper {
                    Bound::Unbounded => node.count(),
                    Bound::Included(key) => node.upper_bound(key)?,
                    Bound::Excluded(key) => node.lower_bound(key)?,
                };
                while index > 0 {
                    index -= 1;
                    let key = node.key(index)?;
                    if !after_start(key, start) {
                        return Ok(());
                    }
                    let value = self.value_in(&node, index, &mut buffer)?;
                    if visit(key, value).is_break() {
                        return Ok(());
                    }
                }
                // Everything left to visit is below this leaf's range.
                let below = if descended {
                    match (fence.take(), node.prev()) {
                        (Some(fence), prev) if prev != 0 => fence,
                        (None, 0) => return Ok(()),
                        (Some(_), _) => {
                            return Err(malformed(
                                node.id(),
                                "a leaf with a lower fence has no previous leaf",
                            ))
                        }
                        (None, _) => {
                            return Err(malformed(
                                node.id(),
                                "the leftmost leaf has a previous leaf",
                            ))
                        }
                    }
                } else if node.prev() == 0 {
                    return Ok(());
                } else if node.count() > 0 {
                    node.key(0)?.to_vec()
                } else {
                    return Err(malformed(node.id(), "an empty leaf that is not the root"));
                };
                upper = Bound::Excluded(below);
                node.prev()
            };
            if let Some(previous) = self.try_previous(&leaf, prev)? {
                leaf = previous;
                descended = false;
                continue;
            }
            // A writer holds the previous leaf: waiting for it here would go
            // against the latch order, so start again from the root.
            drop(leaf);
            let Bound::Excluded(below) = &upper else {
                unreachable!("set just above")
            };
            let found = self.descend_read(Seek::Below(below), true)?;
            leaf = found.leaf;
            fence = found.fence;
            descended = true;
        }
    }

    /// The previous leaf `prev` of the `current` leaf, latched for reading, or
    /// `None` if a writer holds it.
    fn try_previous(&self, current: &Page, prev: PageId) -> Result<Option<S::Read>, StorageError> {
        if prev == current.id() {
            return Err(malformed(prev, "a leaf links to itself"));
        }
        let Some(previous) = self.store.try_read(prev)? else {
            return Ok(None);
        };
        check_order(&Node::parse(&previous)?, &Node::parse(current)?)?;
        Ok(Some(previous))
    }
}

/// Checks that leaf `right` follows leaf `left` (both latched, so their
/// links can't be stale): linked both ways, both holding keys, and all of
/// `right`'s above `left`'s. A scan that didn't check could go round a
/// damaged level forever.
pub(super) fn check_order(left: &Node<'_>, right: &Node<'_>) -> Result<(), StorageError> {
    right.expect_level(0)?;
    left.expect_level(0)?;
    if left.next() != right.id() || right.prev() != left.id() {
        return Err(malformed(
            left.id(),
            format!(
                "leaves {} and {} don't link to each other",
                left.id(),
                right.id()
            ),
        ));
    }
    if left.count() == 0 || right.count() == 0 {
        return Err(malformed(left.id(), "an empty leaf beside another"));
    }
    if left.key(left.count() - 1)? >= right.key(0)? {
        return Err(malformed(
            left.id(),
            format!(
                "leaf {} holds keys above those of the next leaf {}",
                left.id(),
                right.id()
            ),
        ));
    }
    Ok(())
}
