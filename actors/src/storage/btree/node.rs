//! Slotted node pages: the byte layout of leaf and internal nodes
//! (`docs/storage-format.md`, "B+ tree pages") and a validating read-only
//! view over a latched page. Edits in place are in `edit.rs`, whole-node
//! rewrites (splits, merges) go through `cell.rs`'s images.
//!
//! A node body starts with a small header, then an array of u16 slots (cell
//! offsets into the body) sorted by key, growing forward; cells are packed
//! from the end of the body backward. Removing a cell leaves a hole counted
//! in the header's fragmented bytes; an insert that finds no contiguous room
//! compacts the node first. Everything read from a page is checked before
//! it is used: a header, slot or length pointing outside the body is
//! `StorageError::Malformed`, never a panic, because a page can come from
//! disk damaged in a way its checksum missed.

use std::cmp::Ordering;

use crate::storage::page::read_u64;
use crate::storage::{Page, PageId, PageKind, StorageError, PAGE_BODY_SIZE};

use super::cell::cell_key;
use super::KEY_SIZE_MAX_BYTES;

/// Bytes of a leaf's header: cell count, cell area start, fragmented bytes,
/// reserved, previous leaf, next leaf.
pub const LEAF_HEADER_SIZE_BYTES: usize = 24;

/// Bytes of an internal node's header: cell count, cell area start,
/// fragmented bytes, level, leftmost child.
pub const INTERNAL_HEADER_SIZE_BYTES: usize = 16;

/// Bytes of one slot (a cell's u16 offset in the body).
pub const SLOT_SIZE_BYTES: usize = 2;

/// Bytes of a leaf cell before its key: key length (u16), value length
/// (u32), value place (u8).
pub const LEAF_CELL_HEADER_SIZE_BYTES: usize = 7;

/// Bytes of an internal cell before its key: key length (u16), child (u64).
pub const INTERNAL_CELL_HEADER_SIZE_BYTES: usize = 10;

/// The largest leaf cell (header, key and inline value). A key and value
/// whose cell would be larger keep the value in overflow pages instead, so
/// a leaf cell is never more than this (an overflow cell is at most
/// 7 + 1024 + 8 = 1039 bytes).
pub const LEAF_CELL_SIZE_MAX_BYTES: usize = 1600;

/// The largest internal cell: a maximum-length key and its child.
pub const INTERNAL_CELL_SIZE_MAX_BYTES: usize =
    INTERNAL_CELL_HEADER_SIZE_BYTES + KEY_SIZE_MAX_BYTES;

/// Bytes a leaf can give to slots and cells.
pub const LEAF_USABLE_BYTES: usize = PAGE_BODY_SIZE - LEAF_HEADER_SIZE_BYTES;

/// Bytes an internal node can give to slots and cells.
pub const INTERNAL_USABLE_BYTES: usize = PAGE_BODY_SIZE - INTERNAL_HEADER_SIZE_BYTES;

/// A non-root leaf holds at least this many bytes of slots and cells (25%
/// of its usable bytes) once an operation finishes; below it, it underflows.
pub const LEAF_FILL_MIN_BYTES: usize = LEAF_USABLE_BYTES / 4;

/// A non-root internal node holds at least this many bytes of slots and
/// cells once an operation finishes.
pub const INTERNAL_FILL_MIN_BYTES: usize = INTERNAL_USABLE_BYTES / 4;

/// The most a leaf cell costs a node: the cell and its slot.
pub const LEAF_CELL_COST_MAX_BYTES: usize = LEAF_CELL_SIZE_MAX_BYTES + SLOT_SIZE_BYTES;

/// The most an internal cell costs a node: the cell and its slot.
pub const INTERNAL_CELL_COST_MAX_BYTES: usize = INTERNAL_CELL_SIZE_MAX_BYTES + SLOT_SIZE_BYTES;

// Splits, merges and redistributions keep every non-root node at least 25%
// full only because one cell is at most a quarter of a node: a balanced cut
// of more than a node's worth of cells then leaves both halves above
// (usable / 2 - cell) >= usable / 4 (rebalance.rs). Four cells of maximum
// size fit in any node.
const _: () = assert!(LEAF_CELL_COST_MAX_BYTES <= LEAF_USABLE_BYTES / 4);
const _: () = assert!(INTERNAL_CELL_COST_MAX_BYTES <= INTERNAL_USABLE_BYTES / 4);
const _: () = assert!(
    LEAF_CELL_HEADER_SIZE_BYTES + KEY_SIZE_MAX_BYTES + 8 <= LEAF_CELL_SIZE_MAX_BYTES,
    "an overflow cell with a maximum key must fit the leaf cell bound"
);
// Offsets in a body must fit the u16 slots and header fields.
const _: () = assert!(PAGE_BODY_SIZE <= u16::MAX as usize);

/// Header field (u16): cells in the node.
pub(super) const COUNT_AT: usize = 0;
/// Header field (u16): offset of the cell area, which runs to the body's end.
pub(super) const CELLS_AT: usize = 2;
/// Header field (u16): bytes in the cell area no cell uses (holes).
pub(super) const FRAGMENTED_AT: usize = 4;
/// Header field (u16): an internal node's height above the leaves (>= 1);
/// reserved, zero, in leaves.
pub(super) const LEVEL_AT: usize = 6;
/// Leaf header field (u64): the previous leaf (0: none).
pub(super) const PREV_AT: usize = 8;
/// Leaf header field (u64): the next leaf (0: none).
pub(super) const NEXT_AT: usize = 16;
/// Internal header field (u64): the child holding keys below every separator.
pub(super) const LEFTMOST_AT: usize = 8;

/// Leaf cell's value place byte: the value follows the key.
pub(crate) const VALUE_INLINE: u8 = 0;
/// Leaf cell's value place byte: the first overflow page id follows the key.
pub(crate) const VALUE_OVERFLOW: u8 = 1;

/// A leaf cell's value as stored: in the cell, or in an overflow chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// The value's bytes.
    Inline(&'a [u8]),
    /// The value's total length and its first overflow page.
    Overflow {
        /// Total bytes of the value.
        len: u32,
        /// First page of the chain.
        first: PageId,
    },
}

/// A validated view of a leaf or internal node page.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    id: PageId,
    body: &'a [u8],
    /// 0 for a leaf, the height above the leaves for an internal node.
    level: u16,
    count: usize,
    cells_at: usize,
    fragmented: usize,
}

/// A little-endian u16 at `at`, widened (the caller checked the bounds).
pub(crate) fn read_u16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// A little-endian u32 at `at`.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Writes `value` as a little-endian u16 at `at`; offsets and counts in a
/// body always fit (asserted at compile time above).
pub(crate) fn write_u16(bytes: &mut [u8], at: usize, value: usize) {
    let value = u16::try_from(value).expect("node offsets and counts fit in u16");
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// Writes `value` as a little-endian u64 at `at`.
pub(crate) fn write_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// An error naming page `page`.
pub(crate) fn malformed(page: PageId, reason: impl Into<String>) -> StorageError {
    StorageError::Malformed {
        page,
        reason: reason.into(),
    }
}

impl<'a> Node<'a> {
    /// Reads and checks a node's header: the page must be a leaf or an
    /// internal node whose slot array and cell area lie inside the body.
    pub(crate) fn parse(page: &'a Page) -> Result<Node<'a>, StorageError> {
        let id = page.id();
        let body = page.body();
        let (header, level) = match page.kind() {
            Some(PageKind::Leaf) => (LEAF_HEADER_SIZE_BYTES, 0),
            Some(PageKind::Internal) => {
                let level = u16::from_le_bytes([body[LEVEL_AT], body[LEVEL_AT + 1]]);
                if level == 0 {
                    return Err(malformed(id, "internal node at level 0"));
                }
                (INTERNAL_HEADER_SIZE_BYTES, level)
            }
            other => return Err(malformed(id, format!("not a tree node (kind {other:?})"))),
        };
        let count = read_u16(body, COUNT_AT);
        let cells_at = read_u16(body, CELLS_AT);
        let fragmented = read_u16(body, FRAGMENTED_AT);
        if header + count * SLOT_SIZE_BYTES > cells_at || cells_at > PAGE_BODY_SIZE {
            return Err(malformed(
                id,
                format!("{count} slots and cell area at {cells_at} overlap or overrun the body"),
            ));
        }
        if fragmented > PAGE_BODY_SIZE - cells_at {
            return Err(malformed(
                id,
                format!(
                    "{fragmented} fragmented bytes in a cell area of {}",
                    PAGE_BODY_SIZE - cells_at
                ),
            ));
        }
        Ok(Node {
            id,
            body,
            level,
            count,
            cells_at,
            fragmented,
        })
    }

    /// The page id in the header.
    pub(crate) fn id(&self) -> PageId {
        self.id
    }

    /// Whether this is a leaf.
    pub(crate) fn is_leaf(&self) -> bool {
        self.level == 0
    }

    /// 0 for a leaf; an internal node's height above the leaves.
    pub(crate) fn level(&self) -> u16 {
        self.level
    }

    /// Fails unless the node is at `level` (what its parent's level implies).
    pub(crate) fn expect_level(&self, level: u16) -> Result<(), StorageError> {
        if self.level == level {
            Ok(())
        } else {
            Err(malformed(
                self.id,
                format!(
                    "node at level {} where level {level} was expected",
                    self.level
                ),
            ))
        }
    }

    /// Cells in the node.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Where the cell area starts (cells run from here to the body's end).
    pub(super) fn cells_at(&self) -> usize {
        self.cells_at
    }

    /// Bytes in the cell area that no cell uses.
    pub(super) fn fragmented(&self) -> usize {
        self.fragmented
    }

    fn header_size(&self) -> usize {
        header_size(self.is_leaf())
    }

    /// Bytes of slots and live cells: what the fill bounds are about.
    pub(crate) fn fill(&self) -> usize {
        self.count * SLOT_SIZE_BYTES + (PAGE_BODY_SIZE - self.cells_at - self.fragmented)
    }

    /// Bytes this kind of node can give to slots and cells.
    pub(crate) fn usable(&self) -> usize {
        usable_bytes(self.is_leaf())
    }

    /// A leaf's previous leaf (0: none).
    pub(crate) fn prev(&self) -> PageId {
        debug_assert!(self.is_leaf(), "prev links are leaves'");
        read_u64(self.body, PREV_AT)
    }

    /// A leaf's next leaf (0: none).
    pub(crate) fn next(&self) -> PageId {
        debug_assert!(self.is_leaf(), "next links are leaves'");
        read_u64(self.body, NEXT_AT)
    }

    /// Offset and size of cell `index`, checked against the body.
    pub(super) fn cell_extent(&self, index: usize) -> Result<(usize, usize), StorageError> {
        assert!(index < self.count, "cell {index} of {}", self.count);
        let at = read_u16(self.body, self.header_size() + index * SLOT_SIZE_BYTES);
        let cell_header = if self.is_leaf() {
            LEAF_CELL_HEADER_SIZE_BYTES
        } else {
            INTERNAL_CELL_HEADER_SIZE_BYTES
        };
        if at < self.cells_at || at + cell_header > PAGE_BODY_SIZE {
            return Err(malformed(
                self.id,
                format!("slot {index} points at {at}, outside the cell area"),
            ));
        }
        let key_len = read_u16(self.body, at);
        if key_len > KEY_SIZE_MAX_BYTES {
            return Err(malformed(
                self.id,
                format!("cell {index} has a {key_len}-byte key"),
            ));
        }
        let size = if self.is_leaf() {
            match self.body[at + 6] {
                VALUE_INLINE => {
                    // Capped, so a damaged length can't overflow the sum.
                    let value_len = read_u32(self.body, at + 2) as usize;
                    let size =
                        LEAF_CELL_HEADER_SIZE_BYTES + key_len + value_len.min(PAGE_BODY_SIZE);
                    if size > LEAF_CELL_SIZE_MAX_BYTES {
                        return Err(malformed(
                            self.id,
                            format!("inline cell {index} over {LEAF_CELL_SIZE_MAX_BYTES} bytes"),
                        ));
                    }
                    size
                }
                VALUE_OVERFLOW => LEAF_CELL_HEADER_SIZE_BYTES + key_len + 8,
                place => {
                    return Err(malformed(
                        self.id,
                        format!("cell {index} has value place {place}"),
                    ))
                }
            }
        } else {
            INTERNAL_CELL_HEADER_SIZE_BYTES + key_len
        };
        if at + size > PAGE_BODY_SIZE {
            return Err(malformed(
                self.id,
                format!("cell {index} at {at} of {size} bytes overruns the body"),
            ));
        }
        Ok((at, size))
    }

    /// The bytes of cell `index` (`index < count`).
    pub(crate) fn cell(&self, index: usize) -> Result<&'a [u8], StorageError> {
        let (at, size) = self.cell_extent(index)?;
        Ok(&self.body[at..at + size])
    }

    /// The key of cell `index`.
    pub(crate) fn key(&self, index: usize) -> Result<&'a [u8], StorageError> {
        Ok(cell_key(self.is_leaf(), self.cell(index)?))
    }

    /// The value of leaf cell `index`.
    pub(crate) fn value(&self, index: usize) -> Result<Value<'a>, StorageError> {
        debug_assert!(self.is_leaf(), "values are in leaves");
        let cell = self.cell(index)?;
        let key_len = read_u16(cell, 0);
        let value_len = read_u32(cell, 2);
        let rest = &cell[LEAF_CELL_HEADER_SIZE_BYTES + key_len..];
        if cell[6] == VALUE_INLINE {
            return Ok(Value::Inline(rest));
        }
        let first = read_u64(rest, 0);
        if first == 0 {
            return Err(malformed(
                self.id,
                format!("cell {index} has no overflow page"),
            ));
        }
        Ok(Value::Overflow {
            len: value_len,
            first,
        })
    }

    /// Child `child` of an internal node: 0 is the leftmost child, `i + 1`
    /// the child of cell `i` (keys from cell `i`'s key up).
    pub(crate) fn child(&self, child: usize) -> Result<PageId, StorageError> {
        debug_assert!(!self.is_leaf(), "children are internal nodes'");
        let id = if child == 0 {
            read_u64(self.body, LEFTMOST_AT)
        } else {
            read_u64(self.cell(child - 1)?, 2)
        };
        if id == 0 {
            return Err(malformed(self.id, format!("child {child} is page 0")));
        }
        Ok(id)
    }

    /// Binary search over the keys: `Ok(index)` of an equal key, or
    /// `Err(index)` where it would go.
    pub(crate) fn search(&self, key: &[u8]) -> Result<Result<usize, usize>, StorageError> {
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.key(middle)?.cmp(key) {
                Ordering::Less => low = middle + 1,
                Ordering::Greater => high = middle,
                Ordering::Equal => return Ok(Ok(middle)),
            }
        }
        Ok(Err(low))
    }

    /// Index of the first key >= `key`.
    pub(crate) fn lower_bound(&self, key: &[u8]) -> Result<usize, StorageError> {
        Ok(self.search(key)?.unwrap_or_else(|at| at))
    }

    /// Index of the first key > `key`.
    pub(crate) fn upper_bound(&self, key: &[u8]) -> Result<usize, StorageError> {
        Ok(match self.search(key)? {
            Ok(at) => at + 1,
            Err(at) => at,
        })
    }

    /// Checks the cell area in full, for the tree checker: every cell inside
    /// it, no two overlapping, and the fragmented-bytes count equal to the
    /// bytes no cell uses.
    pub(crate) fn verify_layout(&self) -> Result<(), String> {
        let mut extents = Vec::with_capacity(self.count);
        for index in 0..self.count {
            extents.push(self.cell_extent(index).map_err(|e| e.to_string())?);
        }
        extents.sort_unstable();
        let mut end = self.cells_at;
        let mut live = 0;
        for (at, size) in extents {
            if at < end {
                return Err(format!("page {}: cells overlap at offset {at}", self.id));
            }
            end = at + size;
            live += size;
        }
        let area = PAGE_BODY_SIZE - self.cells_at;
        if live + self.fragmented != area {
            return Err(format!(
                "page {}: {live} live + {} fragmented bytes in a cell area of {area}",
                self.id, self.fragmented
            ));
        }
        Ok(())
    }
}

/// Header bytes of a leaf (`true`) or internal node.
pub(crate) fn header_size(leaf: bool) -> usize {
    if leaf {
        LEAF_HEADER_SIZE_BYTES
    } else {
        INTERNAL_HEADER_SIZE_BYTES
    }
}

/// Usable bytes of a leaf (`true`) or internal node.
pub(crate) fn usable_bytes(leaf: bool) -> usize {
    PAGE_BODY_SIZE - header_size(leaf)
}

/// Least fill of a non-root leaf (`true`) or internal node.
pub(crate) fn fill_min_bytes(leaf: bool) -> usize {
    if leaf {
        LEAF_FILL_MIN_BYTES
    } else {
        INTERNAL_FILL_MIN_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::btree::cell::{
        fits_inline, internal_cell, leaf_cell_inline, leaf_cell_overflow,
    };
    use crate::storage::btree::edit::{init_internal, init_leaf, insert_cell, remove_cell};

    fn leaf_page() -> Box<Page> {
        let mut page = Page::new(5);
        init_leaf(&mut page, 3, 9);
        page
    }

    #[test]
    fn internal_nodes_map_keys_to_children() {
        let mut page = Page::new(8);
        init_internal(&mut page, 2, 100);
        insert_cell(&mut page, 0, &internal_cell(b"g", 101)).unwrap();
        insert_cell(&mut page, 1, &internal_cell(b"p", 102)).unwrap();
        let node = Node::parse(&page).unwrap();
        assert_eq!(node.level(), 2);
        assert_eq!(node.child(0).unwrap(), 100);
        assert_eq!(node.child(node.upper_bound(b"a").unwrap()).unwrap(), 100);
        assert_eq!(node.child(node.upper_bound(b"g").unwrap()).unwrap(), 101);
        assert_eq!(node.child(node.upper_bound(b"z").unwrap()).unwrap(), 102);
        assert_eq!(
            node.lower_bound(b"g").unwrap(),
            0,
            "keys below g are left of it"
        );
    }

    #[test]
    fn overflow_cells_keep_the_first_page_and_total_length() {
        let mut page = leaf_page();
        insert_cell(&mut page, 0, &leaf_cell_overflow(b"k", 90_000, 77)).unwrap();
        let node = Node::parse(&page).unwrap();
        assert_eq!(
            node.value(0).unwrap(),
            Value::Overflow {
                len: 90_000,
                first: 77
            }
        );
        assert!(fits_inline(
            KEY_SIZE_MAX_BYTES,
            LEAF_CELL_SIZE_MAX_BYTES - 7 - KEY_SIZE_MAX_BYTES
        ));
        assert!(!fits_inline(10, LEAF_CELL_SIZE_MAX_BYTES));
    }

    #[test]
    fn damaged_headers_and_slots_are_malformed_not_panics() {
        let mut page = leaf_page();
        insert_cell(&mut page, 0, &leaf_cell_inline(b"key", b"value")).unwrap();
        let good = page.clone();

        // A slot pointing past the body.
        let slot = LEAF_HEADER_SIZE_BYTES;
        page.body_mut()[slot..slot + 2].copy_from_slice(&8167u16.to_le_bytes());
        let node = Node::parse(&page).unwrap();
        assert!(matches!(
            node.key(0),
            Err(StorageError::Malformed { page: 5, .. })
        ));
        assert!(node.search(b"key").is_err());
        assert!(remove_cell(&mut page, 0).is_err());

        // A slot pointing into the slot array.
        let mut page = good.clone();
        page.body_mut()[slot..slot + 2].copy_from_slice(&0u16.to_le_bytes());
        assert!(Node::parse(&page).unwrap().cell(0).is_err());

        // A key length running off the end.
        let mut page = good.clone();
        let at = read_u16(page.body(), slot);
        page.body_mut()[at..at + 2].copy_from_slice(&1000u16.to_le_bytes());
        assert!(Node::parse(&page).unwrap().cell(0).is_err());

        // A count whose slots overrun the cell area.
        let mut page = good.clone();
        page.body_mut()[COUNT_AT..COUNT_AT + 2].copy_from_slice(&5000u16.to_le_bytes());
        assert!(Node::parse(&page).is_err());

        // A cell area start past the body.
        let mut page = good.clone();
        page.body_mut()[CELLS_AT..CELLS_AT + 2].copy_from_slice(&9000u16.to_le_bytes());
        assert!(Node::parse(&page).is_err());

        // Not a node at all.
        let mut page = good.clone();
        page.set_kind(PageKind::Overflow);
        assert!(Node::parse(&page).is_err());

        // An internal node claiming level 0.
        let mut page = Page::new(6);
        init_internal(&mut page, 1, 3);
        page.body_mut()[LEVEL_AT] = 0;
        assert!(Node::parse(&page).is_err());

        // A fragmented count that promises room the cells don't leave.
        let mut page = leaf_page();
        for index in 0..8 {
            let key = format!("{index:04}");
            insert_cell(
                &mut page,
                index,
                &leaf_cell_inline(key.as_bytes(), &[0u8; 1000]),
            )
            .unwrap();
        }
        let cells_at = read_u16(page.body(), CELLS_AT);
        let lie = (PAGE_BODY_SIZE - cells_at) as u16;
        page.body_mut()[FRAGMENTED_AT..FRAGMENTED_AT + 2].copy_from_slice(&lie.to_le_bytes());
        assert!(Node::parse(&page).unwrap().verify_layout().is_err());
        let result = insert_cell(&mut page, 8, &leaf_cell_inline(b"big", &[0u8; 1500]));
        assert!(
            matches!(result, Err(StorageError::Malformed { .. })),
            "{result:?}"
        );
    }
}
