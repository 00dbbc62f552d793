//! The readers' descent: read latches coupled from the root to a leaf (the
//! child latched before the parent is let go, so no writer can change the
//! link being followed), and `get` on top of it.

use crate::storage::{PageStore, StorageError};

use super::node::{malformed, Node, Value};
use super::{overflow, BTree};

/// Which leaf a descent is after.
#[derive(Clone, Copy, Debug)]
pub(super) enum Seek<'k> {
    /// The leftmost leaf.
    First,
    /// The rightmost leaf.
    Last,
    /// The leaf whose range holds `key`.
    Key(&'k [u8]),
    /// The leaf whose range holds the keys just below `key`.
    Below(&'k [u8]),
}

/// A leaf reached by a descent, latched for reading.
pub(super) struct Found<R> {
    /// The leaf.
    pub(super) leaf: R,
    /// The separator that bounds the leaf's range from below (its keys are
    /// >= it), if asked for; `None` on the leftmost path.
    pub(super) fence: Option<Vec<u8>>,
}

impl<S: PageStore> BTree<S> {
    /// Descends to the leaf `seek` names with read latch coupling. With
    /// `fence`, also returns the lower bound of the leaf's range.
    pub(super) fn descend_read(
        &self,
        seek: Seek<'_>,
        fence: bool,
    ) -> Result<Found<S::Read>, StorageError> {
        let root = self.root.read();
        let mut page = self.store.read(*root)?;
        drop(root);
        let mut lower: Option<Vec<u8>> = None;
        let mut expected_level = None;
        loop {
            // Each page is parsed once, here: its level is checked against
            // what its parent's implies (the root's is noted instead).
            let child = {
                let node = Node::parse(&page)?;
                match expected_level {
                    None => self.note_root_level(node.level()),
                    Some(level) => node.expect_level(level)?,
                }
                if node.is_leaf() {
                    break;
                }
                let index = match seek {
                    Seek::First => 0,
                    Seek::Last => node.count(),
                    Seek::Key(key) => node.upper_bound(key)?,
                    Seek::Below(key) => node.lower_bound(key)?,
                };
                if fence && index > 0 {
                    lower = Some(node.key(index - 1)?.to_vec());
                }
                let child = node.child(index)?;
                if child == node.id() {
                    return Err(malformed(child, "a node is its own child"));
                }
                expected_level = Some(node.level() - 1);
                child
            };
            // The child's latch is taken before the parent's is let go.
            page = self.store.read(child)?;
        }
        Ok(Found {
            leaf: page,
            fence: lower,
        })
    }

    /// `get` without the key check.
    pub(super) fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let found = self.descend_read(Seek::Key(key), false)?;
        let node = Node::parse(&found.leaf)?;
        let Ok(index) = node.search(key)? else {
            return Ok(None);
        };
        match node.value(index)? {
            Value::Inline(value) => Ok(Some(value.to_vec())),
            Value::Overflow { len, first } => {
                // The leaf stays latched while the chain is read: it is what
                // keeps a writer from freeing the chain under us.
                let mut value = Vec::new();
                overflow::read_chain(&*self.store, first, len, &mut value)?;
                Ok(Some(value))
            }
        }
    }

    /// The value of leaf cell `index` as a slice: the page's bytes for an
    /// inline value, `buffer` filled from the chain for an overflow one.
    pub(super) fn value_in<'a>(
        &self,
        node: &Node<'a>,
        index: usize,
        buffer: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], StorageError> {
        match node.value(index)? {
            Value::Inline(value) => Ok(value),
            Value::Overflow { len, first } => {
                overflow::read_chain(&*self.store, first, len, buffer)?;
                Ok(buffer)
            }
        }
    }
}
