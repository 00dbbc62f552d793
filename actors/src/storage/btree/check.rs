//! The invariant checker, for tests: walks every page of the tree and
//! reports the first broken invariant in words.
//!
//! Checked: each page is a node of the kind and level its parent implies
//! and is reached once; cells lie within the cell area without overlap and
//! the fragmented-bytes count is exact; keys are strictly ascending within
//! a node and inside the range the separators above give it; internal
//! nodes have at least one separator; every leaf is at the same depth;
//! non-root nodes are at least 25% full; leaf links run through the whole
//! level in key order, both ways; a value is in overflow pages only if it
//! would not fit inline, and its chain holds exactly its bytes.

use std::collections::HashSet;

use crate::storage::{PageId, PageStore};

use super::cell::fits_inline;
use super::node::{fill_min_bytes, Node, Value};
use super::{overflow, BTree, TreeShape};

/// A leaf as the level-wide checks need it.
struct LeafSeen {
    id: PageId,
    prev: PageId,
    next: PageId,
    first: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
}

/// What the walk has found so far.
struct Walk<'s, S> {
    store: &'s S,
    seen: HashSet<PageId>,
    leaves: Vec<LeafSeen>,
    leaf_depth: Option<usize>,
    shape: TreeShape,
}

/// A node to visit: its page, the key range its parent gives it, and the
/// level its parent implies (`None` for the root).
struct Visit<'k> {
    id: PageId,
    lower: Option<&'k [u8]>,
    upper: Option<&'k [u8]>,
    level: Option<u16>,
    depth: usize,
}

/// Checks `tree` (see `BTree::check`).
pub(super) fn check<S: PageStore>(tree: &BTree<S>) -> Result<TreeShape, String> {
    let root = tree.root();
    let mut walk = Walk {
        store: &*tree.store,
        seen: HashSet::new(),
        leaves: Vec::new(),
        leaf_depth: None,
        shape: TreeShape::default(),
    };
    let level = walk.node(Visit {
        id: root,
        lower: None,
        upper: None,
        level: None,
        depth: 0,
    })?;
    walk.links()?;
    walk.shape.height = usize::from(level) + 1;
    Ok(walk.shape)
}

impl<S: PageStore> Walk<'_, S> {
    /// Checks the subtree at `visit.id`; returns its level.
    fn node(&mut self, visit: Visit<'_>) -> Result<u16, String> {
        let id = visit.id;
        if !self.seen.insert(id) {
            return Err(format!("page {id} is reached twice"));
        }
        let page = self.store.read(id).map_err(|e| e.to_string())?;
        if page.id() != id {
            return Err(format!("page {id} says it is page {}", page.id()));
        }
        let node = Node::parse(&page).map_err(|e| e.to_string())?;
        if let Some(level) = visit.level {
            node.expect_level(level).map_err(|e| e.to_string())?;
        }
        node.verify_layout()?;
        let is_root = visit.level.is_none();
        if !is_root && node.fill() < fill_min_bytes(node.is_leaf()) {
            return Err(format!(
                "page {id} is underfull: {} of {} bytes, below {}",
                node.fill(),
                node.usable(),
                fill_min_bytes(node.is_leaf())
            ));
        }
        let mut keys = Vec::with_capacity(node.count());
        for index in 0..node.count() {
            let key = node.key(index).map_err(|e| e.to_string())?;
            if let Some(previous) = keys.last() {
                if *previous >= key {
                    return Err(format!("page {id}: keys out of order at cell {index}"));
                }
            }
            if visit.lower.is_some_and(|lower| key < lower)
                || visit.upper.is_some_and(|upper| key >= upper)
            {
                return Err(format!(
                    "page {id}: key {index} is outside the range its parent gives it"
                ));
            }
            keys.push(key);
        }
        if node.is_leaf() {
            self.leaf(&node, visit.depth)?;
            return Ok(0);
        }
        if node.count() == 0 {
            return Err(format!("internal page {id} has no separator"));
        }
        self.shape.internal += 1;
        let children = (0..=node.count())
            .map(|child| node.child(child))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let keys: Vec<Vec<u8>> = keys.into_iter().map(<[u8]>::to_vec).collect();
        let level = node.level();
        // One page latched at a time: the children are read after this
        // node is let go.
        drop(page);
        for (index, child) in children.into_iter().enumerate() {
            self.node(Visit {
                id: child,
                lower: if index == 0 {
                    visit.lower
                } else {
                    Some(&keys[index - 1])
                },
                upper: keys.get(index).map(Vec::as_slice).or(visit.upper),
                level: Some(level - 1),
                depth: visit.depth + 1,
            })?;
        }
        Ok(level)
    }

    /// Checks a leaf's values and records it for the level-wide checks.
    fn leaf(&mut self, node: &Node<'_>, depth: usize) -> Result<(), String> {
        let id = node.id();
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(expected) if expected != depth => {
                return Err(format!(
                    "leaf {id} is at depth {depth}, others at {expected}"
                ));
            }
            Some(_) => {}
        }
        for index in 0..node.count() {
            let key = node.key(index).map_err(|e| e.to_string())?;
            if let Value::Overflow { len, first } = node.value(index).map_err(|e| e.to_string())? {
                if fits_inline(key.len(), len as usize) {
                    return Err(format!(
                        "leaf {id}: a {len}-byte value in overflow would fit inline"
                    ));
                }
                self.shape.overflow +=
                    overflow::check_chain(self.store, first, len, &mut self.seen)
                        .map_err(|e| format!("leaf {id}, cell {index}: {e}"))?;
            }
        }
        let key = |index: usize| {
            node.key(index)
                .map(<[u8]>::to_vec)
                .map_err(|e| e.to_string())
        };
        self.leaves.push(LeafSeen {
            id,
            prev: node.prev(),
            next: node.next(),
            first: if node.count() > 0 {
                Some(key(0)?)
            } else {
                None
            },
            last: if node.count() > 0 {
                Some(key(node.count() - 1)?)
            } else {
                None
            },
        });
        self.shape.leaves += 1;
        self.shape.keys += node.count() as u64;
        Ok(())
    }

    /// Checks the leaf level as a whole: linked in order both ways, the
    /// first and last leaves linking nowhere, keys ascending across leaves.
    fn links(&self) -> Result<(), String> {
        let (Some(first), Some(last)) = (self.leaves.first(), self.leaves.last()) else {
            return Err("the tree has no leaf".into());
        };
        if first.prev != 0 {
            return Err(format!(
                "the first leaf {} has a previous leaf {}",
                first.id, first.prev
            ));
        }
        if last.next != 0 {
            return Err(format!(
                "the last leaf {} has a next leaf {}",
                last.id, last.next
            ));
        }
        for pair in self.leaves.windows(2) {
            let (left, right) = (&pair[0], &pair[1]);
            if left.next != right.id || right.prev != left.id {
                return Err(format!(
                    "leaves {} and {} are neighbours but link to {} and {}",
                    left.id, right.id, left.next, right.prev
                ));
            }
            if let (Some(last), Some(first)) = (&left.last, &right.first) {
                if last >= first {
                    return Err(format!(
                        "leaf {} ends above where leaf {} starts",
                        left.id, right.id
                    ));
                }
            }
        }
        Ok(())
    }
}
