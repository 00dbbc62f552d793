//! Damaged pages: `check` names what is wrong, and operations return
//! `Malformed` instead of panicking or going round in circles.

use super::*;
use crate::storage::PAGE_BODY_SIZE;

#[test]
fn a_root_of_the_wrong_kind_is_malformed() {
    let store = Arc::new(MemoryPages::new());
    let id = store.allocate(PageKind::Overflow).unwrap().id();
    let tree = BTree::open(store, id);
    assert!(matches!(tree.get(b"a"), Err(StorageError::Malformed { page, .. }) if page == id));
    assert!(matches!(
        tree.insert(b"a", b"b"),
        Err(StorageError::Malformed { .. })
    ));
    assert!(tree.check().is_err());
}

/// A tree of a few levels, and the id of a leaf in its middle.
fn tree_with_leaves() -> (BTree<MemoryPages>, PageId) {
    let tree = tree();
    for i in 0..600 {
        tree.insert(&key(i), &[5; 300]).unwrap();
    }
    let leaf = tree
        .descend_read(search::Seek::Key(&key(300)), false)
        .unwrap()
        .leaf
        .id();
    (tree, leaf)
}

#[test]
fn check_reports_corruption() {
    fn corrupt(change: impl FnOnce(&BTree<MemoryPages>, PageId)) -> String {
        let (tree, leaf) = tree_with_leaves();
        tree.check().expect("intact");
        change(&tree, leaf);
        tree.check().expect_err("corrupted")
    }
    // Two keys swapped: out of order.
    let error = corrupt(|tree, leaf| {
        let mut page = tree.store().write(leaf).unwrap();
        let slots = LEAF_HEADER_SIZE_BYTES;
        let body = page.body_mut();
        let (first, second) = (
            [body[slots], body[slots + 1]],
            [body[slots + 2], body[slots + 3]],
        );
        body[slots..slots + 2].copy_from_slice(&second);
        body[slots + 2..slots + 4].copy_from_slice(&first);
    });
    assert!(error.contains("out of order"), "{error}");
    // A key moved to another leaf, outside its parent's range.
    let error = corrupt(|tree, leaf| {
        let first_key = key(0);
        let mut page = tree.store().write(leaf).unwrap();
        let mut image = cell::NodeImage::read(&page).unwrap();
        image.cells[0] = cell::leaf_cell_inline(&first_key, b"x");
        image.write(&mut page);
    });
    assert!(error.contains("outside the range"), "{error}");
    // A broken back link.
    let error = corrupt(|tree, leaf| {
        let mut page = tree.store().write(leaf).unwrap();
        edit::set_prev(&mut page, leaf);
    });
    assert!(error.contains("link"), "{error}");
    // An underfull leaf.
    let error = corrupt(|tree, leaf| {
        let mut page = tree.store().write(leaf).unwrap();
        let mut image = cell::NodeImage::read(&page).unwrap();
        image.cells.truncate(1);
        image.write(&mut page);
    });
    assert!(error.contains("underfull"), "{error}");
    // A page reached from two parents.
    let error = corrupt(|tree, _| {
        let root = tree.root();
        let mut page = tree.store().write(root).unwrap();
        let mut image = cell::NodeImage::read(&page).unwrap();
        let cell::Links::Internal { leftmost, .. } = image.links else {
            panic!("a root above leaves")
        };
        let separator = cell::cell_key(false, &image.cells[0]).to_vec();
        image.cells[0] = cell::internal_cell(&separator, leftmost);
        image.write(&mut page);
    });
    assert!(error.contains("twice"), "{error}");
}

#[test]
fn scans_stop_at_damaged_links_instead_of_looping() {
    let (tree, leaf) = tree_with_leaves();
    let scan = |direction| {
        tree.scan(Bound::Unbounded, Bound::Unbounded, direction, |_, _| {
            ControlFlow::Continue(())
        })
    };
    // The leaf links back to itself.
    {
        let mut page = tree.store().write(leaf).unwrap();
        edit::set_prev(&mut page, leaf);
    }
    assert!(matches!(
        scan(Direction::Reverse),
        Err(StorageError::Malformed { .. })
    ));
    assert!(matches!(
        scan(Direction::Forward),
        Err(StorageError::Malformed { .. })
    ));
    // The leaf links on to the root, an internal node.
    {
        let mut page = tree.store().write(leaf).unwrap();
        let mut image = cell::NodeImage::read(&page).unwrap();
        let cell::Links::Leaf { prev, .. } = image.links else {
            panic!("a leaf")
        };
        image.links = cell::Links::Leaf {
            prev,
            next: tree.root(),
        };
        image.write(&mut page);
    }
    assert!(matches!(
        scan(Direction::Forward),
        Err(StorageError::Malformed { .. })
    ));
}

#[test]
fn a_leaf_whose_header_lies_about_its_fill_is_malformed_not_a_panic() {
    let (tree, leaf) = tree_with_leaves();
    {
        let mut page = tree.store().write(leaf).unwrap();
        let lie = {
            let node = node::Node::parse(&page).unwrap();
            (node.fragmented() + 500).min(PAGE_BODY_SIZE - node.cells_at())
        };
        page.body_mut()[node::FRAGMENTED_AT..node::FRAGMENTED_AT + 2]
            .copy_from_slice(&(lie as u16).to_le_bytes());
    }
    assert!(tree.check().is_err());
    let mut malformed = 0;
    for i in 0..40 {
        let key = [key(300), format!("x{i:02}").into_bytes()].concat();
        match tree.insert(&key, &[7; 300]) {
            Ok(()) => {}
            Err(StorageError::Malformed { page, .. }) if page == leaf => malformed += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(malformed > 0, "the lie was found");
}
