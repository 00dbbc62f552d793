//! The tree's cursor (`storage::ordered::Cursor`): it copies out the
//! entries of one leaf at a time and holds no latch between calls. A step
//! within the copy costs nothing; a step past it descends from the root
//! again (O(log n)) to the key after (or before) the copy's last (first)
//! key, so a split or merge between two steps changes nothing it relies
//! on. At most one leaf is latched while copying, two for the instant of a
//! forward step from a leaf to the next (latch coupling, in latch order);
//! backward it never waits right to left, it descends again from the root
//! (as `scan` does).
//!
//! Memory is one leaf's entries: up to a page of inline keys and values,
//! plus the values of that leaf kept in overflow pages.

use std::ops::Bound;

use crate::storage::ordered::{Cursor, OrderedStore};
use crate::storage::{PageStore, StorageError};

use super::node::{malformed, Node};
use super::scan::check_order;
use super::search::{Found, Seek};
use super::BTree;

/// A cursor over a [`BTree`].
pub struct TreeCursor<'t, S: PageStore> {
    tree: &'t BTree<S>,
    /// The entries of one leaf (those in the direction of travel), copied.
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Which of them the cursor is on (none past the end).
    index: usize,
}

impl<'t, S: PageStore> TreeCursor<'t, S> {
    fn new(tree: &'t BTree<S>) -> Self {
        TreeCursor {
            tree,
            entries: Vec::new(),
            index: 0,
        }
    }

    /// Copies the entries at or after `start` (as the bound says) of the
    /// first leaf that has any, and stands on the first.
    fn load_forward(&mut self, start: Bound<&[u8]>) -> Result<(), StorageError> {
        self.entries.clear();
        self.index = 0;
        let seek = match start {
            Bound::Unbounded => Seek::First,
            Bound::Included(key) | Bound::Excluded(key) => Seek::Key(key),
        };
        let mut leaf = self.tree.descend_read(seek, false)?.leaf;
        loop {
            let (id, next) = {
                let node = Node::parse(&leaf)?;
                let from = match start {
                    Bound::Unbounded => 0,
                    Bound::Included(key) => node.lower_bound(key)?,
                    Bound::Excluded(key) => node.upper_bound(key)?,
                };
                self.copy(&node, from, node.count())?;
                (node.id(), node.next())
            };
            if !self.entries.is_empty() || next == 0 {
                return Ok(());
            }
            if next == id {
                return Err(malformed(id, "a leaf links to itself"));
            }
            // The next leaf is latched before this one is let go.
            let following = self.tree.store.read(next)?;
            check_order(&Node::parse(&leaf)?, &Node::parse(&following)?)?;
            leaf = following;
        }
    }

    /// Copies the entries at or before `end` (as the bound says) of the
    /// last leaf that has any, and stands on the last.
    fn load_reverse(&mut self, end: Bound<&[u8]>) -> Result<(), StorageError> {
        self.entries.clear();
        self.index = 0;
        let mut upper: Bound<Vec<u8>> = end.map(<[u8]>::to_vec);
        loop {
            let seek = match &upper {
                Bound::Unbounded => Seek::Last,
                Bound::Included(key) => Seek::Key(key),
                Bound::Excluded(key) => Seek::Below(key),
            };
            let Found { leaf, fence } = self.tree.descend_read(seek, true)?;
            let node = Node::parse(&leaf)?;
            let to = match &upper {
                Bound::Unbounded => node.count(),
                Bound::Included(key) => node.upper_bound(key)?,
                Bound::Excluded(key) => node.lower_bound(key)?,
            };
            self.copy(&node, 0, to)?;
            if !self.entries.is_empty() {
                self.index = self.entries.len() - 1;
                return Ok(());
            }
            // Nothing here below the bound: look below this leaf's range
            // (its lower fence is below the bound, so this ends).
            match fence {
                Some(fence) => upper = Bound::Excluded(fence),
                None => return Ok(()),
            }
        }
    }

    /// Copies cells `from..to` of a latched leaf.
    fn copy(&mut self, node: &Node<'_>, from: usize, to: usize) -> Result<(), StorageError> {
        let mut buffer = Vec::new();
        for index in from..to {
            let key = node.key(index)?.to_vec();
            let value = self.tree.value_in(node, index, &mut buffer)?.to_vec();
            self.entries.push((key, value));
        }
        Ok(())
    }

    fn current(&self) -> Option<&(Vec<u8>, Vec<u8>)> {
        self.entries.get(self.index)
    }
}

impl<S: PageStore> Cursor for TreeCursor<'_, S> {
    fn seek(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.load_forward(Bound::Included(key))
    }

    fn seek_for_prev(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.load_reverse(Bound::Included(key))
    }

    fn seek_last(&mut self) -> Result<(), StorageError> {
        self.load_reverse(Bound::Unbounded)
    }

    fn next(&mut self) -> Result<(), StorageError> {
        let Some((key, _)) = self.current() else {
            return Ok(());
        };
        if self.index + 1 < self.entries.len() {
            self.index += 1;
            return Ok(());
        }
        let key = key.clone();
        self.load_forward(Bound::Excluded(&key))
    }

    fn prev(&mut self) -> Result<(), StorageError> {
        let Some((key, _)) = self.current() else {
            return Ok(());
        };
        if self.index > 0 {
            self.index -= 1;
            return Ok(());
        }
        let key = key.clone();
        self.load_reverse(Bound::Excluded(&key))
    }

    fn key(&self) -> Option<&[u8]> {
        self.current().map(|(key, _)| key.as_slice())
    }

    fn value(&self) -> Option<&[u8]> {
        self.current().map(|(_, value)| value.as_slice())
    }
}

impl<S: PageStore> OrderedStore for BTree<S> {
    type Cursor<'a>
        = TreeCursor<'a, S>
    where
        S: 'a;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        BTree::get(self, key)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        BTree::insert(self, key, value)
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StorageError> {
        BTree::delete(self, key)
    }

    fn cursor(&self) -> TreeCursor<'_, S> {
        TreeCursor::new(self)
    }
}

impl<S: PageStore> TreeCursor<'_, S> {
    /// How many entries it holds copied: at most one leaf's.
    pub fn held(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::storage::memory::MemoryPages;
    use crate::storage::ordered::MemoryOrdered;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, usize),
        Delete(u16),
    }

    #[derive(Clone, Copy, Debug)]
    enum Move {
        Seek(u16),
        SeekForPrev(u16),
        SeekLast,
        Next,
        Prev,
    }

    fn key(n: u16) -> Vec<u8> {
        format!("key/{n:05}").into_bytes()
    }

    /// Values from a few bytes to overflow chains, so leaves hold from a
    /// handful of keys to dozens and the tree splits and merges.
    fn value(n: u16, len: usize) -> Vec<u8> {
        (0..len).map(|i| (usize::from(n) * 31 + i) as u8).collect()
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0u16..600, prop_oneof![4 => 1usize..200, 2 => 200usize..1500, 1 => 2500usize..9000])
                    .prop_map(|(n, len)| Op::Insert(n, len)),
                1 => (0u16..600).prop_map(Op::Delete),
            ],
            0..400,
        )
    }

    fn moves() -> impl Strategy<Value = Vec<Move>> {
        prop::collection::vec(
            prop_oneof![
                1 => (0u16..620).prop_map(Move::Seek),
                1 => (0u16..620).prop_map(Move::SeekForPrev),
                1 => Just(Move::SeekLast),
                4 => Just(Move::Next),
                4 => Just(Move::Prev),
            ],
            1..120,
        )
    }

    fn step(cursor: &mut impl Cursor, step: Move) {
        let moved = match step {
            Move::Seek(n) => cursor.seek(&key(n)),
            Move::SeekForPrev(n) => cursor.seek_for_prev(&key(n)),
            Move::SeekLast => cursor.seek_last(),
            Move::Next => cursor.next(),
            Move::Prev => cursor.prev(),
        };
        moved.expect("move");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Rounds of writes, then cursor moves: the tree's cursor lands
        /// where a map's does, every time.
        #[test]
        fn the_tree_cursor_moves_as_a_map_cursor_does(
            rounds in prop::collection::vec((ops(), moves()), 1..4),
        ) {
            let tree = BTree::create(Arc::new(MemoryPages::new())).expect("create");
            let map = MemoryOrdered::default();
            for (ops, moves) in rounds {
                for op in ops {
                    match op {
                        Op::Insert(n, len) => {
                            tree.insert(&key(n), &value(n, len)).expect("insert");
                            map.insert(&key(n), &value(n, len)).expect("insert");
                        }
                        Op::Delete(n) => {
                            prop_assert_eq!(
                                OrderedStore::delete(&tree, &key(n)).expect("delete"),
                                map.delete(&key(n)).expect("delete")
                            );
                        }
                    }
                }
                let mut ours = tree.cursor();
                let mut model = map.cursor();
                for (i, moved) in moves.into_iter().enumerate() {
                    step(&mut ours, moved);
                    step(&mut model, moved);
                    prop_assert_eq!(ours.key(), model.key(), "move {} ({:?})", i, moved);
                    prop_assert_eq!(ours.value(), model.value(), "move {} ({:?})", i, moved);
                }
            }
            tree.check().expect("a sound tree");
        }
    }

    #[test]
    fn an_empty_tree_has_nowhere_to_stand() {
        let tree = BTree::create(Arc::new(MemoryPages::new())).expect("create");
        let mut cursor = tree.cursor();
        cursor.seek(b"").expect("seek");
        assert_eq!(cursor.key(), None);
        cursor.seek_last().expect("seek");
        assert_eq!(cursor.key(), None);
        cursor.next().expect("next");
        cursor.prev().expect("prev");
        assert_eq!((cursor.key(), cursor.value()), (None, None));
    }
}
