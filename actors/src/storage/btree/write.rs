//! The writers' latching protocol (latch crabbing).
//!
//! Optimistic first: read latches coupled down to the leaf's parent, then
//! the leaf's write latch taken while the parent is still read-latched.
//! If the edit fits the leaf without a split or an underflow, it is done in
//! place and nothing else is touched.
//!
//! Otherwise everything is let go and the writer starts again
//! pessimistically: the root lock exclusively, then write latches from the
//! root down. Whenever the node just latched is safe (whatever happens
//! below, it won't split, underflow or collapse), every ancestor is let go.
//! A node that may underflow also gets a sibling latched, in the latch
//! order: the left sibling before the node (the node is let go and taken
//! again, which is safe because its parent is held), or the right sibling
//! after it when the node is its parent's leftmost child. A leaf that may
//! split or merge also gets the leaf after it latched, whose back link
//! changes. `plan.rs` then works out the change on node images, and only
//! when every page it needs is latched or allocated writes them.

use parking_lot::RwLockWriteGuard;

use crate::storage::{Page, PageId, PageStore, StorageError};

use super::cell::NodeImage;
use super::edit::{insert_cell, remove_cell};
use super::node::{
    fill_min_bytes, malformed, usable_bytes, Node, Value, INTERNAL_CELL_COST_MAX_BYTES,
    INTERNAL_FILL_MIN_BYTES, INTERNAL_USABLE_BYTES, SLOT_SIZE_BYTES,
};
use super::{overflow, BTree};

/// An edit of one key's leaf cell.
#[derive(Clone, Copy, Debug)]
pub(super) enum Edit<'c> {
    /// Insert or replace with this cell (for the key edited).
    Put(&'c [u8]),
    /// Remove the key's cell.
    Delete,
}

/// What an edit did, and what it leaves to free once every latch is let go.
#[derive(Debug)]
pub(super) struct Edited {
    /// Whether the key was in the tree.
    existed: bool,
    /// The overflow chain of the value replaced or deleted (first, length).
    old_chain: Option<(PageId, u32)>,
    /// Pages the edit unlinked: merged-away nodes, a collapsed root.
    freed: Vec<PageId>,
}

/// What an edit does to its leaf's cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// A delete of a key that isn't there: nothing.
    Absent,
    /// A new cell at this index.
    Insert(usize),
    /// The cell at this index replaced.
    Replace(usize),
    /// The cell at this index removed.
    Remove(usize),
}

/// How an edit leaves a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fit {
    /// Within the fill bounds.
    Fits,
    /// Over a page: it must split.
    Overflows,
    /// Under 25% (not the root): it must merge or take cells from a sibling.
    Underflows,
}

/// One node of a pessimistic writer's path, with the siblings it may need.
pub(super) struct Level<W> {
    /// The node's page.
    pub(super) id: PageId,
    /// Its write latch.
    pub(super) guard: W,
    /// Which child of the level above it is (0: leftmost); `None`: the root.
    pub(super) child_index: Option<usize>,
    /// The left sibling, latched before the node, if it may underflow.
    pub(super) left: Option<(PageId, W)>,
    /// The right sibling, if it may underflow and is the leftmost child.
    pub(super) right: Option<(PageId, W)>,
}

/// The latches a pessimistic writer holds, top to bottom.
pub(super) struct Path<'t, W> {
    /// The root lock, held while the root may split or collapse.
    pub(super) root: Option<RwLockWriteGuard<'t, PageId>>,
    /// From the highest node a change may reach down to the leaf.
    pub(super) levels: Vec<Level<W>>,
    /// The leaf after the rightmost latched leaf, whose back link a split
    /// or merge changes.
    pub(super) after: Option<(PageId, W)>,
}

impl<W> Path<'_, W> {
    /// Lets go of everything above the node being latched: it is safe.
    fn release_ancestors(&mut self) {
        self.levels.clear();
        self.root = None;
    }

    /// Fails if page `id` is one this writer holds: a damaged link leading
    /// back to it would otherwise wait for its own latch forever.
    fn check_not_held(&self, id: PageId, by: PageId) -> Result<(), StorageError> {
        let held = self.levels.iter().any(|level| {
            level.id == id
                || level.left.as_ref().is_some_and(|(left, _)| *left == id)
                || level.right.as_ref().is_some_and(|(right, _)| *right == id)
        }) || self.after.as_ref().is_some_and(|(after, _)| *after == id);
        if held {
            return Err(malformed(
                by,
                format!("links to page {id}, which is already on the path"),
            ));
        }
        Ok(())
    }
}

/// A node latched with the sibling it may merge with or borrow from.
struct Latched<W> {
    node: W,
    left: Option<(PageId, W)>,
    right: Option<(PageId, W)>,
}

fn leaf_effect(
    node: &Node<'_>,
    key: &[u8],
    edit: Edit<'_>,
) -> Result<(Effect, usize), StorageError> {
    let fill = node.fill();
    // What the cell at `index` gives back when it goes; a header whose
    // fragmented count hides live bytes could make that more than the fill.
    let without = |index: usize| -> Result<usize, StorageError> {
        fill.checked_sub(node.cell(index)?.len() + SLOT_SIZE_BYTES)
            .ok_or_else(|| malformed(node.id(), "fill below the cells it holds"))
    };
    Ok(match (edit, node.search(key)?) {
        (Edit::Put(cell), Ok(index)) => (
            Effect::Replace(index),
            without(index)? + cell.len() + SLOT_SIZE_BYTES,
        ),
        (Edit::Put(cell), Err(index)) => {
            (Effect::Insert(index), fill + cell.len() + SLOT_SIZE_BYTES)
        }
        (Edit::Delete, Ok(index)) => (Effect::Remove(index), without(index)?),
        (Edit::Delete, Err(_)) => (Effect::Absent, fill),
    })
}

fn classify(fill: usize, leaf: bool, is_root: bool) -> Fit {
    if fill > usable_bytes(leaf) {
        Fit::Overflows
    } else if !is_root && fill < fill_min_bytes(leaf) {
        Fit::Underflows
    } else {
        Fit::Fits
    }
}

/// Whether an internal node stays within bounds whatever one change below
/// does to it: a separator added (a child split), removed (a merge) or
/// replaced by a longer or shorter one (a redistribution).
fn internal_safe(node: &Node<'_>, is_root: bool) -> bool {
    let room = node.fill() + INTERNAL_CELL_COST_MAX_BYTES <= INTERNAL_USABLE_BYTES;
    let stays = if is_root {
        node.count() >= 2
    } else {
        node.fill() >= INTERNAL_FILL_MIN_BYTES + INTERNAL_CELL_COST_MAX_BYTES
    };
    room && stays
}

/// Whether one change below could leave a non-root internal node underfull.
fn internal_may_underflow(node: &Node<'_>, is_root: bool) -> bool {
    !is_root && node.fill() < INTERNAL_FILL_MIN_BYTES + INTERNAL_CELL_COST_MAX_BYTES
}

/// The overflow chain of the cell an effect replaces or removes.
fn old_chain(node: &Node<'_>, effect: Effect) -> Result<Option<(PageId, u32)>, StorageError> {
    match effect {
        Effect::Replace(index) | Effect::Remove(index) => Ok(match node.value(index)? {
            Value::Overflow { len, first } => Some((first, len)),
            Value::Inline(_) => None,
        }),
        Effect::Absent | Effect::Insert(_) => Ok(None),
    }
}

fn existed(effect: Effect) -> bool {
    matches!(effect, Effect::Replace(_) | Effect::Remove(_))
}

/// Checks that `left` and `right` are nodes at `level` and, for leaves,
/// linked to each other both ways: merges rely on it to relink them.
fn check_siblings(left: &Page, right: &Page, level: u16) -> Result<(), StorageError> {
    let (left_node, right_node) = (Node::parse(left)?, Node::parse(right)?);
    left_node.expect_level(level)?;
    right_node.expect_level(level)?;
    if level == 0 && (left_node.next() != right_node.id() || right_node.prev() != left_node.id()) {
        return Err(malformed(
            left_node.id(),
            format!(
                "siblings {} and {} are not linked",
                left_node.id(),
                right_node.id()
            ),
        ));
    }
    Ok(())
}

impl<S: PageStore> BTree<S> {
    /// Applies `edit` to `key`'s leaf, optimistically if it can.
    pub(super) fn edit(&self, key: &[u8], edit: Edit<'_>) -> Result<Edited, StorageError> {
        if let Some(edited) = self.edit_optimistic(key, edit)? {
            return Ok(edited);
        }
        self.edit_pessimistic(key, edit)
    }

    /// Frees what an edit unlinked (its latches are all let go) and says
    /// whether the key existed. Frees as much as it can and reports the
    /// first failure; the edit itself is done either way.
    pub(super) fn release(&self, edited: Edited) -> Result<bool, StorageError> {
        let mut result = Ok(edited.existed);
        for id in edited.freed {
            if let Err(error) = self.store.free(id) {
                result = result.and(Err(error));
            }
        }
        if let Some((first, len)) = edited.old_chain {
            if let Err(error) = overflow::free_chain(&*self.store, first, len) {
                result = result.and(Err(error));
            }
        }
        result
    }

    /// The optimistic descent: the leaf for `key` latched for writing, and
    /// whether it is the root.
    fn latch_leaf(&self, key: &[u8]) -> Result<(S::Write, bool), StorageError> {
        let root = self.root.read();
        let top = self.store.read(*root)?;
        let level = Node::parse(&top)?.level();
        self.note_root_level(level);
        if level == 0 {
            drop(top);
            // The root lock, still shared, keeps this page the root leaf:
            // only a writer holding it exclusively splits the root.
            let leaf = self.store.write(*root)?;
            Node::parse(&leaf)?.expect_level(0)?;
            return Ok((leaf, true));
        }
        drop(root);
        let mut parent = top;
        loop {
            let (child, level) = {
                let node = Node::parse(&parent)?;
                let child = node.child(node.upper_bound(key)?)?;
                if child == node.id() {
                    return Err(malformed(child, "a node is its own child"));
                }
                (child, node.level())
            };
            if level == 1 {
                // Taken while the parent is read-latched, so no split or
                // merge can move the key elsewhere in between.
                let leaf = self.store.write(child)?;
                Node::parse(&leaf)?.expect_level(0)?;
                return Ok((leaf, false));
            }
            let next = self.store.read(child)?;
            Node::parse(&next)?.expect_level(level - 1)?;
            parent = next;
        }
    }

    /// The edit done in place, or `None` if the leaf would split or
    /// underflow (nothing changed then).
    fn edit_optimistic(&self, key: &[u8], edit: Edit<'_>) -> Result<Option<Edited>, StorageError> {
        let (mut leaf, is_root) = self.latch_leaf(key)?;
        let (effect, old_chain) = {
            let node = Node::parse(&leaf)?;
            let (effect, fill) = leaf_effect(&node, key, edit)?;
            if effect != Effect::Absent && classify(fill, true, is_root) != Fit::Fits {
                return Ok(None);
            }
            (effect, old_chain(&node, effect)?)
        };
        match (effect, edit) {
            (Effect::Insert(index), Edit::Put(cell)) => insert_cell(&mut leaf, index, cell)?,
            (Effect::Replace(index), Edit::Put(cell)) => {
                remove_cell(&mut leaf, index)?;
                insert_cell(&mut leaf, index, cell)?;
            }
            (Effect::Remove(index), Edit::Delete) => remove_cell(&mut leaf, index)?,
            (Effect::Absent, _) => {}
            (effect, edit) => unreachable!("{effect:?} does not come of {edit:?}"),
        }
        Ok(Some(Edited {
            existed: existed(effect),
            old_chain,
            freed: Vec::new(),
        }))
    }

    /// The edit with write latches from the root down, splitting, merging
    /// or redistributing as needed.
    fn edit_pessimistic(&self, key: &[u8], edit: Edit<'_>) -> Result<Edited, StorageError> {
        let mut path = self.latch_path(key, edit)?;
        let (effect, old_chain, image) = {
            let leaf = &path
                .levels
                .last()
                .expect("a latched path ends at a leaf")
                .guard;
            let node = Node::parse(leaf)?;
            let (effect, _) = leaf_effect(&node, key, edit)?;
            let mut image = NodeImage::read(leaf)?;
            match (effect, edit) {
                (Effect::Absent, _) => {
                    return Ok(Edited {
                        existed: false,
                        old_chain: None,
                        freed: Vec::new(),
                    })
                }
                (Effect::Insert(index), Edit::Put(cell)) => {
                    image.cells.insert(index, cell.to_vec())
                }
                (Effect::Replace(index), Edit::Put(cell)) => image.cells[index] = cell.to_vec(),
                (Effect::Remove(index), Edit::Delete) => {
                    image.cells.remove(index);
                }
                (effect, edit) => unreachable!("{effect:?} does not come of {edit:?}"),
            }
            (effect, old_chain(&node, effect)?, image)
        };
        let mut plan = self.plan(&path, image)?;
        plan.apply(&mut path);
        drop(path);
        let freed = plan.finish(self);
        Ok(Edited {
            existed: existed(effect),
            old_chain,
            freed,
        })
    }

    /// The pessimistic descent: write latches from the root to `key`'s
    /// leaf, keeping only what the edit may change.
    fn latch_path(&self, key: &[u8], edit: Edit<'_>) -> Result<Path<'_, S::Write>, StorageError> {
        let root = self.root.write();
        let mut id = *root;
        let mut path = Path {
            root: Some(root),
            levels: Vec::new(),
            after: None,
        };
        let mut guard = self.store.write(id)?;
        let mut child_index: Option<usize> = None;
        let mut expected: Option<u16> = None;
        loop {
            let is_root = child_index.is_none();
            let (level, safe, may_underflow, child) = {
                let node = Node::parse(&guard)?;
                match expected {
                    Some(level) => node.expect_level(level)?,
                    None => self.note_root_level(node.level()),
                }
                if node.is_leaf() {
                    let (effect, fill) = leaf_effect(&node, key, edit)?;
                    let fit = match effect {
                        Effect::Absent => Fit::Fits,
                        _ => classify(fill, true, is_root),
                    };
                    (0, fit == Fit::Fits, fit == Fit::Underflows, None)
                } else {
                    let index = node.upper_bound(key)?;
                    let safe = internal_safe(&node, is_root);
                    let may_underflow = !safe && internal_may_underflow(&node, is_root);
                    (
                        node.level(),
                        safe,
                        may_underflow,
                        Some((index, node.child(index)?)),
                    )
                }
            };
            if safe {
                path.release_ancestors();
            }
            let Latched { node, left, right } = if may_underflow {
                let index = child_index.expect("the root never underflows");
                self.latch_sibling(&path, id, guard, index, level)?
            } else {
                Latched {
                    node: guard,
                    left: None,
                    right: None,
                }
            };
            if level == 0 && !safe {
                let rightmost: &Page = match &right {
                    Some((_, right)) => right,
                    None => &node,
                };
                let (rightmost_id, after) = {
                    let leaf = Node::parse(rightmost)?;
                    (leaf.id(), leaf.next())
                };
                if after != 0 {
                    if after == id || left.as_ref().is_some_and(|(left, _)| *left == after) {
                        return Err(malformed(rightmost_id, "leaf links run in a circle"));
                    }
                    path.check_not_held(after, rightmost_id)?;
                    let after_guard = self.store.write(after)?;
                    check_siblings(rightmost, &after_guard, 0)?;
                    path.after = Some((after, after_guard));
                }
            }
            path.levels.push(Level {
                id,
                guard: node,
                child_index,
                left,
                right,
            });
            let Some((index, child)) = child else {
                return Ok(path);
            };
            path.check_not_held(child, id)?;
            guard = self.store.write(child)?;
            id = child;
            child_index = Some(index);
            expected = Some(level - 1);
        }
    }

    /// Latches a sibling of node `id` (child `index` of the last node on
    /// the path) in the latch order: the left one before the node (so the
    /// node is let go and taken again), or the right one after it.
    fn latch_sibling(
        &self,
        path: &Path<'_, S::Write>,
        id: PageId,
        guard: S::Write,
        index: usize,
        level: u16,
    ) -> Result<Latched<S::Write>, StorageError> {
        let parent = &path
            .levels
            .last()
            .expect("an unsafe node's parent stays latched")
            .guard;
        let parent = Node::parse(parent)?;
        if index > 0 {
            let left_id = parent.child(index - 1)?;
            if left_id == id {
                return Err(malformed(
                    parent.id(),
                    format!("page {id} is two of its children"),
                ));
            }
            path.check_not_held(left_id, parent.id())?;
            drop(guard);
            // Nobody can change the node meanwhile: every writer reaches it
            // through the parent, which stays write-latched.
            let left = self.store.write(left_id)?;
            let node = self.store.write(id)?;
            check_siblings(&left, &node, level)?;
            Ok(Latched {
                node,
                left: Some((left_id, left)),
                right: None,
            })
        } else {
            if parent.count() == 0 {
                return Err(malformed(
                    parent.id(),
                    "an internal node with a single child",
                ));
            }
            let right_id = parent.child(1)?;
            if right_id == id {
                return Err(malformed(
                    parent.id(),
                    format!("page {id} is two of its children"),
                ));
            }
            path.check_not_held(right_id, parent.id())?;
            let right = self.store.write(right_id)?;
            check_siblings(&guard, &right, level)?;
            Ok(Latched {
                node: guard,
                left: None,
                right: Some((right_id, right)),
            })
        }
    }
}
