//! Cells and node images: the encodings of leaf and internal cells (layout
//! in `node.rs` and `docs/storage-format.md`), and `NodeImage`, a node's
//! links and cells held outside its page. Structure changes (splits,
//! merges, redistributions in `rebalance.rs`) are computed on images and
//! written back to pages only once every page they need is latched and
//! allocated, so a failure midway leaves the tree untouched.

use crate::storage::page::read_u64;
use crate::storage::{Page, PageId, StorageError};

use super::edit::{init_internal, init_leaf, pack_cells};
use super::node::{
    malformed, read_u16, usable_bytes, Node, INTERNAL_CELL_HEADER_SIZE_BYTES,
    LEAF_CELL_HEADER_SIZE_BYTES, LEAF_CELL_SIZE_MAX_BYTES, SLOT_SIZE_BYTES, VALUE_INLINE,
    VALUE_OVERFLOW,
};
use super::KEY_SIZE_MAX_BYTES;

/// The key of a cell already checked (read through `Node::cell`, or built
/// by the functions below).
pub(crate) fn cell_key(leaf: bool, cell: &[u8]) -> &[u8] {
    let key_len = read_u16(cell, 0);
    let at = if leaf {
        LEAF_CELL_HEADER_SIZE_BYTES
    } else {
        INTERNAL_CELL_HEADER_SIZE_BYTES
    };
    &cell[at..at + key_len]
}

/// The child of an internal cell already checked.
pub(crate) fn cell_child(cell: &[u8]) -> PageId {
    read_u64(cell, 2)
}

/// Whether a leaf cell with a `key_len`-byte key and an inline value of
/// `value_len` bytes stays within `LEAF_CELL_SIZE_MAX_BYTES`.
pub(crate) fn fits_inline(key_len: usize, value_len: usize) -> bool {
    LEAF_CELL_HEADER_SIZE_BYTES + key_len + value_len <= LEAF_CELL_SIZE_MAX_BYTES
}

/// A leaf cell holding `value` inline (the caller checked `fits_inline`).
pub(crate) fn leaf_cell_inline(key: &[u8], value: &[u8]) -> Vec<u8> {
    assert!(fits_inline(key.len(), value.len()), "inline cell too large");
    let mut cell = Vec::with_capacity(LEAF_CELL_HEADER_SIZE_BYTES + key.len() + value.len());
    cell.extend_from_slice(&(key.len() as u16).to_le_bytes());
    cell.extend_from_slice(&(value.len() as u32).to_le_bytes());
    cell.push(VALUE_INLINE);
    cell.extend_from_slice(key);
    cell.extend_from_slice(value);
    cell
}

/// A leaf cell whose `len`-byte value lives in the chain starting at `first`.
pub(crate) fn leaf_cell_overflow(key: &[u8], len: u32, first: PageId) -> Vec<u8> {
    assert!(key.len() <= KEY_SIZE_MAX_BYTES, "key too long for a cell");
    let mut cell = Vec::with_capacity(LEAF_CELL_HEADER_SIZE_BYTES + key.len() + 8);
    cell.extend_from_slice(&(key.len() as u16).to_le_bytes());
    cell.extend_from_slice(&len.to_le_bytes());
    cell.push(VALUE_OVERFLOW);
    cell.extend_from_slice(key);
    cell.extend_from_slice(&first.to_le_bytes());
    cell
}

/// An internal cell: separator `key`, and `child` holding keys >= it.
pub(crate) fn internal_cell(key: &[u8], child: PageId) -> Vec<u8> {
    assert!(
        key.len() <= KEY_SIZE_MAX_BYTES,
        "separator too long for a cell"
    );
    let mut cell = Vec::with_capacity(INTERNAL_CELL_HEADER_SIZE_BYTES + key.len());
    cell.extend_from_slice(&(key.len() as u16).to_le_bytes());
    cell.extend_from_slice(&child.to_le_bytes());
    cell.extend_from_slice(key);
    cell
}

/// The header fields of a node that are not about its cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Links {
    /// A leaf and its neighbours on the leaf level (0: none).
    Leaf {
        /// The leaf before it.
        prev: PageId,
        /// The leaf after it.
        next: PageId,
    },
    /// An internal node: its height above the leaves, and its leftmost child.
    Internal {
        /// Height above the leaves (>= 1).
        level: u16,
        /// The child holding keys below the first separator.
        leftmost: PageId,
    },
}

/// A node's content outside its page: links and raw cells in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeImage {
    /// Header fields other than the cell bookkeeping.
    pub(crate) links: Links,
    /// Cells, each as stored (header, key, value or child).
    pub(crate) cells: Vec<Vec<u8>>,
}

impl NodeImage {
    /// Copies a node out of its page, checking every cell.
    pub(crate) fn read(page: &Page) -> Result<NodeImage, StorageError> {
        let node = Node::parse(page)?;
        let links = if node.is_leaf() {
            Links::Leaf {
                prev: node.prev(),
                next: node.next(),
            }
        } else {
            Links::Internal {
                level: node.level(),
                leftmost: node.child(0)?,
            }
        };
        let cells = (0..node.count())
            .map(|index| node.cell(index).map(<[u8]>::to_vec))
            .collect::<Result<Vec<_>, _>>()?;
        let image = NodeImage { links, cells };
        // Writers decide from the header's fill whether a node is safe; the
        // plan then works with the cells' own sizes, so the two must agree.
        if image.fill() != node.fill() {
            return Err(malformed(
                node.id(),
                format!(
                    "header says {} bytes used, cells use {}",
                    node.fill(),
                    image.fill()
                ),
            ));
        }
        Ok(image)
    }

    /// Whether this is a leaf.
    pub(crate) fn is_leaf(&self) -> bool {
        matches!(self.links, Links::Leaf { .. })
    }

    /// 0 for a leaf; an internal node's level.
    pub(crate) fn level(&self) -> u16 {
        match self.links {
            Links::Leaf { .. } => 0,
            Links::Internal { level, .. } => level,
        }
    }

    /// Bytes of slots and cells this content needs.
    pub(crate) fn fill(&self) -> usize {
        self.cells
            .iter()
            .map(|cell| cell.len() + SLOT_SIZE_BYTES)
            .sum()
    }

    /// Writes the image over `page`, which starts over as this node.
    pub(crate) fn write(&self, page: &mut Page) {
        assert!(
            self.fill() <= usable_bytes(self.is_leaf()),
            "an image is written only to a node it fits"
        );
        match self.links {
            Links::Leaf { prev, next } => init_leaf(page, prev, next),
            Links::Internal { level, leftmost } => init_internal(page, level, leftmost),
        }
        pack_cells(page, &self.cells);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::btree::node::FRAGMENTED_AT;

    #[test]
    fn an_image_read_from_a_page_writes_back_the_same_node() {
        let mut page = Page::new(4);
        let image = NodeImage {
            links: Links::Leaf { prev: 2, next: 3 },
            cells: vec![
                leaf_cell_inline(b"a", b"1"),
                leaf_cell_overflow(b"b", 20_000, 9),
                leaf_cell_inline(b"c", &[5; 1000]),
            ],
        };
        image.write(&mut page);
        let read = NodeImage::read(&page).unwrap();
        assert_eq!(read, image);
        assert_eq!(cell_key(true, &read.cells[1]), b"b");
        assert_eq!(Node::parse(&page).unwrap().fill(), image.fill());
        Node::parse(&page).unwrap().verify_layout().unwrap();

        let internal = NodeImage {
            links: Links::Internal {
                level: 3,
                leftmost: 10,
            },
            cells: vec![internal_cell(b"k", 11), internal_cell(&[9; 1024], 12)],
        };
        internal.write(&mut page);
        let read = NodeImage::read(&page).unwrap();
        assert_eq!(read, internal);
        assert_eq!(cell_child(&read.cells[1]), 12);
        assert_eq!(read.level(), 3);
    }

    #[test]
    fn an_image_of_a_node_whose_header_lies_about_its_fill_is_malformed() {
        let mut page = Page::new(4);
        let image = NodeImage {
            links: Links::Internal {
                level: 1,
                leftmost: 10,
            },
            cells: vec![internal_cell(b"k", 11), internal_cell(b"q", 12)],
        };
        image.write(&mut page);
        // Claim one live byte is a hole: the header's fill is now 1 short,
        // so a writer could take the node for safe when it isn't.
        page.body_mut()[FRAGMENTED_AT] = 1;
        assert!(matches!(
            NodeImage::read(&page),
            Err(StorageError::Malformed { page: 4, .. })
        ));
    }
}
