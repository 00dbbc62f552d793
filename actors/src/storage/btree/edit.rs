//! In-place edits of node pages: starting a page over as an empty leaf or
//! internal node, packing cells into it, relinking a leaf, and the writers'
//! fast path of inserting or removing one cell (compacting a fragmented
//! node first when the free bytes are there but not in one piece). The
//! layout is `node.rs`'s; every offset read back from the page is checked
//! through its `Node` view before it is used.

use crate::storage::{Page, PageId, PageKind, StorageError, PAGE_BODY_SIZE};

use super::node::{
    header_size, malformed, read_u16, usable_bytes, write_u16, write_u64, Node, CELLS_AT, COUNT_AT,
    FRAGMENTED_AT, LEFTMOST_AT, LEVEL_AT, NEXT_AT, PREV_AT, SLOT_SIZE_BYTES,
};

/// Starts `page` over as an empty leaf between `prev` and `next`.
pub(crate) fn init_leaf(page: &mut Page, prev: PageId, next: PageId) {
    page.reset(PageKind::Leaf);
    let body = page.body_mut();
    write_u16(body, CELLS_AT, PAGE_BODY_SIZE);
    write_u64(body, PREV_AT, prev);
    write_u64(body, NEXT_AT, next);
}

/// Starts `page` over as an empty internal node at `level` whose only
/// child is `leftmost`.
pub(crate) fn init_internal(page: &mut Page, level: u16, leftmost: PageId) {
    assert!(level >= 1, "internal nodes are above the leaves");
    page.reset(PageKind::Internal);
    let body = page.body_mut();
    write_u16(body, CELLS_AT, PAGE_BODY_SIZE);
    write_u16(body, LEVEL_AT, usize::from(level));
    write_u64(body, LEFTMOST_AT, leftmost);
}

/// Sets a leaf's previous-leaf link.
pub(crate) fn set_prev(page: &mut Page, prev: PageId) {
    debug_assert_eq!(page.kind(), Some(PageKind::Leaf), "links are leaves'");
    write_u64(page.body_mut(), PREV_AT, prev);
}

/// Fills a node just started over (`init_leaf`/`init_internal`) with
/// `cells`, in order; the caller has checked that they fit.
pub(crate) fn pack_cells(page: &mut Page, cells: &[Vec<u8>]) {
    let leaf = page.kind() == Some(PageKind::Leaf);
    let header = header_size(leaf);
    let body = page.body_mut();
    assert_eq!(
        read_u16(body, COUNT_AT),
        0,
        "cells are packed into an empty node"
    );
    let bytes: usize = cells.iter().map(Vec::len).sum();
    assert!(
        header + cells.len() * SLOT_SIZE_BYTES + bytes <= PAGE_BODY_SIZE,
        "the caller checks that the cells fit the node"
    );
    let mut at = PAGE_BODY_SIZE;
    for (index, cell) in cells.iter().enumerate() {
        at -= cell.len();
        body[at..at + cell.len()].copy_from_slice(cell);
        write_u16(body, header + index * SLOT_SIZE_BYTES, at);
    }
    write_u16(body, COUNT_AT, cells.len());
    write_u16(body, CELLS_AT, at);
}

/// The header fields of a parsed node, so a page can be changed after its
/// view is dropped.
struct Header {
    leaf: bool,
    count: usize,
    cells_at: usize,
    fragmented: usize,
    fill: usize,
}

fn header_of(page: &Page) -> Result<Header, StorageError> {
    let node = Node::parse(page)?;
    Ok(Header {
        leaf: node.is_leaf(),
        count: node.count(),
        cells_at: node.cells_at(),
        fragmented: node.fragmented(),
        fill: node.fill(),
    })
}

/// Puts `cell` at slot `index`, shifting later slots right. The caller has
/// checked that the node's free bytes (not necessarily contiguous) hold the
/// cell and its slot; a fragmented node is compacted first.
pub(crate) fn insert_cell(page: &mut Page, index: usize, cell: &[u8]) -> Result<(), StorageError> {
    let mut header = header_of(page)?;
    let cost = cell.len() + SLOT_SIZE_BYTES;
    assert!(index <= header.count, "slot {index} past {}", header.count);
    assert!(
        header.fill + cost <= usable_bytes(header.leaf),
        "the caller checks that a cell fits before inserting it"
    );
    let slots_end = header_size(header.leaf) + header.count * SLOT_SIZE_BYTES;
    if header.cells_at - slots_end < cost {
        compact(page)?;
        header = header_of(page)?;
        // The header's count of fragmented bytes promised room that the
        // cells, laid out again, don't leave: the page lies about itself.
        if header.cells_at - slots_end < cost {
            return Err(malformed(
                page.id(),
                "fragmented-bytes count disagrees with the cells",
            ));
        }
    }
    let body = page.body_mut();
    let at = header.cells_at - cell.len();
    body[at..at + cell.len()].copy_from_slice(cell);
    let slot_at = header_size(header.leaf) + index * SLOT_SIZE_BYTES;
    body.copy_within(slot_at..slots_end, slot_at + SLOT_SIZE_BYTES);
    write_u16(body, slot_at, at);
    write_u16(body, COUNT_AT, header.count + 1);
    write_u16(body, CELLS_AT, at);
    Ok(())
}

/// Removes the cell at slot `index`; its bytes become fragmented space
/// (or return to the free gap if it was the first cell of the area).
pub(crate) fn remove_cell(page: &mut Page, index: usize) -> Result<(), StorageError> {
    let header = header_of(page)?;
    let (at, size) = Node::parse(page)?.cell_extent(index)?;
    let body = page.body_mut();
    let slot_at = header_size(header.leaf) + index * SLOT_SIZE_BYTES;
    let slots_end = header_size(header.leaf) + header.count * SLOT_SIZE_BYTES;
    body.copy_within(slot_at + SLOT_SIZE_BYTES..slots_end, slot_at);
    write_u16(body, COUNT_AT, header.count - 1);
    if at == header.cells_at {
        write_u16(body, CELLS_AT, at + size);
    } else {
        write_u16(body, FRAGMENTED_AT, header.fragmented + size);
    }
    Ok(())
}

/// Packs the cells against the end of the body in slot order, so all free
/// bytes form one gap between the slots and the cells.
pub(crate) fn compact(page: &mut Page) -> Result<(), StorageError> {
    let node = Node::parse(page)?;
    let header = header_size(node.is_leaf());
    let mut cells = Vec::with_capacity(PAGE_BODY_SIZE - node.cells_at());
    let mut sizes = Vec::with_capacity(node.count());
    for index in 0..node.count() {
        let cell = node.cell(index)?;
        cells.extend_from_slice(cell);
        sizes.push(cell.len());
    }
    // Overlapping cells would add up to more than the body holds.
    if header + node.count() * SLOT_SIZE_BYTES + cells.len() > PAGE_BODY_SIZE {
        return Err(malformed(node.id(), "cells add up to more than the page"));
    }
    let count = node.count();
    let body = page.body_mut();
    let mut at = PAGE_BODY_SIZE;
    let mut from = 0;
    for (index, size) in sizes.into_iter().enumerate() {
        at -= size;
        body[at..at + size].copy_from_slice(&cells[from..from + size]);
        from += size;
        write_u16(body, header + index * SLOT_SIZE_BYTES, at);
    }
    debug_assert!(
        header + count * SLOT_SIZE_BYTES <= at,
        "compaction overran the slots"
    );
    write_u16(body, CELLS_AT, at);
    write_u16(body, FRAGMENTED_AT, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::btree::cell::leaf_cell_inline;
    use crate::storage::btree::node::{Value, LEAF_CELL_HEADER_SIZE_BYTES};

    fn leaf_page() -> Box<Page> {
        let mut page = Page::new(5);
        init_leaf(&mut page, 3, 9);
        page
    }

    fn keys(page: &Page) -> Vec<Vec<u8>> {
        let node = Node::parse(page).expect("parse");
        (0..node.count())
            .map(|i| node.key(i).expect("key").to_vec())
            .collect()
    }

    #[test]
    fn cells_inserted_out_of_order_read_back_sorted_and_searchable() {
        let mut page = leaf_page();
        for key in [b"m".as_slice(), b"c", b"x", b"a", b"mm"] {
            let at = Node::parse(&page)
                .unwrap()
                .search(key)
                .unwrap()
                .unwrap_err();
            insert_cell(&mut page, at, &leaf_cell_inline(key, b"value")).unwrap();
        }
        assert_eq!(
            keys(&page),
            [
                b"a".to_vec(),
                b"c".to_vec(),
                b"m".to_vec(),
                b"mm".to_vec(),
                b"x".to_vec()
            ]
        );
        let node = Node::parse(&page).unwrap();
        assert_eq!(node.search(b"m").unwrap(), Ok(2));
        assert_eq!(node.search(b"b").unwrap(), Err(1));
        assert_eq!(node.search(b"z").unwrap(), Err(5));
        assert_eq!(node.lower_bound(b"mm").unwrap(), 3);
        assert_eq!(node.upper_bound(b"mm").unwrap(), 4);
        assert_eq!(node.value(0).unwrap(), Value::Inline(b"value"));
        assert_eq!((node.prev(), node.next()), (3, 9));
        let expected = 5 * (SLOT_SIZE_BYTES + LEAF_CELL_HEADER_SIZE_BYTES + 5) + 1 + 1 + 1 + 2 + 1;
        assert_eq!(node.fill(), expected);
        node.verify_layout().unwrap();
    }

    #[test]
    fn removing_cells_fragments_and_an_insert_that_needs_the_room_compacts() {
        let mut page = leaf_page();
        let value = vec![7u8; 1000];
        let mut count = 0;
        loop {
            let key = format!("{count:04}");
            let cell = leaf_cell_inline(key.as_bytes(), &value);
            let node = Node::parse(&page).unwrap();
            if node.fill() + cell.len() + SLOT_SIZE_BYTES > node.usable() {
                break;
            }
            insert_cell(&mut page, count, &cell).unwrap();
            count += 1;
        }
        assert_eq!(count, 8, "eight 1013-byte cells fill a leaf");
        // Remove every other cell: holes, not a contiguous gap.
        for index in (0..count).rev().step_by(2) {
            remove_cell(&mut page, index).unwrap();
        }
        let node = Node::parse(&page).unwrap();
        assert!(node.fragmented() > 0, "holes are counted as fragmented");
        node.verify_layout().unwrap();
        let big = leaf_cell_inline(b"0000a", &[1u8; 1500]);
        insert_cell(&mut page, 1, &big).unwrap();
        let node = Node::parse(&page).unwrap();
        assert_eq!(node.fragmented(), 0, "the insert compacted the node");
        node.verify_layout().unwrap();
        assert_eq!(
            keys(&page)[..3],
            [b"0000".to_vec(), b"0000a".to_vec(), b"0002".to_vec()]
        );
        assert_eq!(node.value(1).unwrap(), Value::Inline(&[1u8; 1500]));
        assert_eq!(node.value(2).unwrap(), Value::Inline(&value[..]));
    }
}
