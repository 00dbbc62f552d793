//! How a pessimistic writer's latched path changes: from the edited leaf
//! upward, each node either fits, splits (a separator goes up), merges
//! with or borrows from its latched sibling (a separator goes or changes
//! above), or, at the root, grows a new root or collapses into its only
//! child. The plan is computed on node images and allocates every new page
//! before anything is written, so a failure (an allocation, a damaged page)
//! leaves the tree as it was; `apply` then writes it all, and cannot fail.

use std::ops::DerefMut;

use crate::storage::{Page, PageId, PageKind, PageStore, StorageError};

use super::cell::{cell_child, internal_cell, Links, NodeImage};
use super::edit::set_prev;
use super::node::{fill_min_bytes, usable_bytes, Node};
use super::rebalance::{self, Rebalanced, Split};
use super::write::{Level, Path};
use super::BTree;

/// What a node's change does to its parent.
#[derive(Debug)]
enum Change {
    /// A split: a new separator and child, at this cell index (the new
    /// child goes right of the split one).
    Insert {
        at: usize,
        key: Vec<u8>,
        child: PageId,
    },
    /// A merge: the separator at this index goes, with the absorbed child.
    Remove { at: usize },
    /// A redistribution: the separator at this index changes.
    Replace { at: usize, key: Vec<u8> },
}

impl Change {
    fn apply(self, image: &mut NodeImage) {
        match self {
            Change::Insert { at, key, child } => image.cells.insert(at, internal_cell(&key, child)),
            Change::Remove { at } => {
                image.cells.remove(at);
            }
            Change::Replace { at, key } => {
                let child = cell_child(&image.cells[at]);
                image.cells[at] = internal_cell(&key, child);
            }
        }
    }
}

/// Everything a structure change writes, allocates and frees.
pub(super) struct Plan<W> {
    /// Pages to overwrite with these images (all latched or allocated).
    writes: Vec<(PageId, NodeImage)>,
    /// New pages, latched, not yet linked from anywhere.
    allocated: Vec<(PageId, W)>,
    /// A leaf whose back link changes, and to what.
    relink: Option<(PageId, PageId)>,
    /// The new root page and its level.
    new_root: Option<(PageId, u16)>,
    /// Pages unlinked, to free once unlatched.
    freed: Vec<PageId>,
    splits: u64,
    merges: u64,
    redistributions: u64,
}

impl<W: DerefMut<Target = Page>> Plan<W> {
    fn new() -> Plan<W> {
        Plan {
            writes: Vec::new(),
            allocated: Vec::new(),
            relink: None,
            new_root: None,
            freed: Vec::new(),
            splits: 0,
            merges: 0,
            redistributions: 0,
        }
    }

    fn allocate<S: PageStore<Write = W>>(
        &mut self,
        store: &S,
        kind: PageKind,
    ) -> Result<PageId, StorageError> {
        let page = store.allocate(kind)?;
        let id = page.id();
        self.allocated.push((id, page));
        Ok(id)
    }

    /// Records a merge: `survivor` holds `merged`, `absorbed` goes.
    fn merged(&mut self, merged: NodeImage, survivor: PageId, absorbed: PageId) {
        if let Links::Leaf { next, .. } = merged.links {
            if next != 0 {
                self.relink = Some((next, survivor));
            }
        }
        self.writes.push((survivor, merged));
        self.freed.push(absorbed);
        self.merges += 1;
    }

    /// Records a redistribution between siblings `left` and `right`.
    fn redistributed(&mut self, split: Split, left: PageId, right: PageId) -> Vec<u8> {
        self.writes.push((left, split.left));
        self.writes.push((right, split.right));
        self.redistributions += 1;
        split.separator
    }

    /// Writes the plan into the latched pages. Infallible: everything that
    /// could fail happened while planning.
    pub(super) fn apply(&mut self, path: &mut Path<'_, W>) {
        let Plan {
            writes,
            allocated,
            relink,
            new_root,
            ..
        } = self;
        for (id, image) in writes.iter() {
            image.write(page_mut(path, allocated, *id));
        }
        if let Some((leaf, prev)) = *relink {
            set_prev(page_mut(path, allocated, leaf), prev);
        }
        if let Some((root, _)) = *new_root {
            **path
                .root
                .as_mut()
                .expect("the root changes only under the root lock") = root;
        }
    }

    /// After `apply` and with the path let go: unlatches the new pages,
    /// counts the changes and returns the pages to free.
    pub(super) fn finish<S: PageStore<Write = W>>(self, tree: &BTree<S>) -> Vec<PageId> {
        drop(self.allocated);
        let counters = &tree.counters;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        counters.splits.fetch_add(self.splits, relaxed);
        counters.merges.fetch_add(self.merges, relaxed);
        counters
            .redistributions
            .fetch_add(self.redistributions, relaxed);
        if let Some((_, level)) = self.new_root {
            tree.note_root_level(level);
        }
        self.freed
    }

    /// Gives back the pages a failed plan allocated.
    fn abandon<S: PageStore<Write = W>>(self, store: &S) {
        for (id, page) in self.allocated {
            drop(page);
            // Nothing links to the page, so freeing it can only fail as the
            // store already did; the planning error is the one to report.
            let _ = store.free(id);
        }
    }
}

/// The latched page `id`: on the path or newly allocated.
fn page_mut<'a, W: DerefMut<Target = Page>>(
    path: &'a mut Path<'_, W>,
    allocated: &'a mut [(PageId, W)],
    id: PageId,
) -> &'a mut Page {
    let on_path = path.levels.iter_mut().flat_map(|level: &mut Level<W>| {
        std::iter::once((level.id, &mut level.guard))
            .chain(level.left.as_mut().map(|(id, guard)| (*id, guard)))
            .chain(level.right.as_mut().map(|(id, guard)| (*id, guard)))
    });
    let after = path.after.as_mut().map(|(id, guard)| (*id, guard));
    let new = allocated.iter_mut().map(|(id, guard)| (*id, guard));
    on_path
        .chain(after)
        .chain(new)
        .find(|(held, _)| *held == id)
        .map(|(_, guard)| &mut **guard)
        .unwrap_or_else(|| panic!("page {id} is written by a plan that has not latched it"))
}

impl<S: PageStore> BTree<S> {
    /// Plans the changes a pessimistic edit makes, given the edited leaf.
    pub(super) fn plan(
        &self,
        path: &Path<'_, S::Write>,
        leaf: NodeImage,
    ) -> Result<Plan<S::Write>, StorageError> {
        let mut plan = Plan::new();
        match self.plan_levels(path, leaf, &mut plan) {
            Ok(()) => Ok(plan),
            Err(error) => {
                plan.abandon(&*self.store);
                Err(error)
            }
        }
    }

    fn plan_levels(
        &self,
        path: &Path<'_, S::Write>,
        leaf: NodeImage,
        plan: &mut Plan<S::Write>,
    ) -> Result<(), StorageError> {
        let mut depth = path.levels.len() - 1;
        let mut image = leaf;
        while let Some(change) = self.plan_level(path, depth, image, plan)? {
            assert!(
                depth > 0,
                "a change reached past the latched path: the descent misjudged a node as safe"
            );
            depth -= 1;
            image = NodeImage::read(&path.levels[depth].guard)?;
            change.apply(&mut image);
        }
        Ok(())
    }

    /// What becomes of the node at `depth` holding `image`, and the change
    /// it makes to its parent.
    fn plan_level(
        &self,
        path: &Path<'_, S::Write>,
        depth: usize,
        image: NodeImage,
        plan: &mut Plan<S::Write>,
    ) -> Result<Option<Change>, StorageError> {
        let level = &path.levels[depth];
        let leaf = image.is_leaf();
        let fill = image.fill();
        if fill > usable_bytes(leaf) {
            return self.plan_split(level, image, plan);
        }
        match level.child_index {
            None => {
                match image.links {
                    Links::Internal {
                        level: at,
                        leftmost,
                    } if image.cells.is_empty() => {
                        // An internal root with a single child: the child
                        // becomes the root.
                        plan.new_root = Some((leftmost, at - 1));
                        plan.freed.push(level.id);
                    }
                    _ => plan.writes.push((level.id, image)),
                }
                Ok(None)
            }
            Some(_) if fill >= fill_min_bytes(leaf) => {
                plan.writes.push((level.id, image));
                Ok(None)
            }
            Some(index) => self
                .plan_underflow(path, depth, index, image, plan)
                .map(Some),
        }
    }

    fn plan_split(
        &self,
        level: &Level<S::Write>,
        image: NodeImage,
        plan: &mut Plan<S::Write>,
    ) -> Result<Option<Change>, StorageError> {
        let (node_level, links) = (image.level(), image.links);
        let kind = if image.is_leaf() {
            PageKind::Leaf
        } else {
            PageKind::Internal
        };
        let Split {
            mut left,
            mut right,
            separator,
        } = rebalance::split(image);
        let right_id = plan.allocate(&*self.store, kind)?;
        if let Links::Leaf { prev, next } = links {
            left.links = Links::Leaf {
                prev,
                next: right_id,
            };
            right.links = Links::Leaf {
                prev: level.id,
                next,
            };
            if next != 0 {
                plan.relink = Some((next, right_id));
            }
        }
        plan.writes.push((level.id, left));
        plan.writes.push((right_id, right));
        plan.splits += 1;
        let Some(at) = level.child_index else {
            // The root split: a new root above the two halves.
            let root = plan.allocate(&*self.store, PageKind::Internal)?;
            let image = NodeImage {
                links: Links::Internal {
                    level: node_level + 1,
                    leftmost: level.id,
                },
                cells: vec![internal_cell(&separator, right_id)],
            };
            plan.writes.push((root, image));
            plan.new_root = Some((root, node_level + 1));
            return Ok(None);
        };
        Ok(Some(Change::Insert {
            at,
            key: separator,
            child: right_id,
        }))
    }

    /// An underfull node (child `index` of the node above it) merges with
    /// or borrows from the sibling the descent latched.
    fn plan_underflow(
        &self,
        path: &Path<'_, S::Write>,
        depth: usize,
        index: usize,
        image: NodeImage,
        plan: &mut Plan<S::Write>,
    ) -> Result<Change, StorageError> {
        assert!(depth > 0, "an underfull node's parent is latched with it");
        let level = &path.levels[depth];
        let parent = Node::parse(&path.levels[depth - 1].guard)?;
        let leaf = image.is_leaf();
        if let Some((left_id, left)) = &level.left {
            let separator = if leaf {
                Vec::new()
            } else {
                parent.key(index - 1)?.to_vec()
            };
            let left = NodeImage::read(left)?;
            return Ok(
                match rebalance::merge_or_redistribute(left, &separator, image) {
                    Rebalanced::Merged(merged) => {
                        plan.merged(merged, *left_id, level.id);
                        Change::Remove { at: index - 1 }
                    }
                    Rebalanced::Redistributed(split) => Change::Replace {
                        at: index - 1,
                        key: plan.redistributed(split, *left_id, level.id),
                    },
                },
            );
        }
        let Some((right_id, right)) = &level.right else {
            panic!("the descent latches a sibling of every node that may underflow");
        };
        let separator = if leaf {
            Vec::new()
        } else {
            parent.key(index)?.to_vec()
        };
        let right = NodeImage::read(right)?;
        Ok(
            match rebalance::merge_or_redistribute(image, &separator, right) {
                Rebalanced::Merged(merged) => {
                    plan.merged(merged, level.id, *right_id);
                    Change::Remove { at: index }
                }
                Rebalanced::Redistributed(split) => Change::Replace {
                    at: index,
                    key: plan.redistributed(split, level.id, *right_id),
                },
            },
        )
    }
}
