//! Structure changes are all-or-nothing when the store refuses pages, and
//! latches are taken in order: a reverse scan never waits right to left,
//! and an underflowing leaf takes its left sibling before itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::storage::memory::{MemoryRead, MemoryWrite};

/// `MemoryPages` that can refuse allocations and counts failed `try_read`s.
struct Flaky {
    pages: MemoryPages,
    allocations_left: AtomicUsize,
    busy: AtomicUsize,
}

impl Flaky {
    fn new() -> Flaky {
        Flaky {
            pages: MemoryPages::new(),
            allocations_left: AtomicUsize::new(usize::MAX),
            busy: AtomicUsize::new(0),
        }
    }
}

impl PageStore for Flaky {
    type Read = MemoryRead;
    type Write = MemoryWrite;

    fn read(&self, id: PageId) -> Result<MemoryRead, StorageError> {
        self.pages.read(id)
    }

    fn write(&self, id: PageId) -> Result<MemoryWrite, StorageError> {
        self.pages.write(id)
    }

    fn try_read(&self, id: PageId) -> Result<Option<MemoryRead>, StorageError> {
        let page = self.pages.try_read(id)?;
        if page.is_none() {
            self.busy.fetch_add(1, Ordering::Relaxed);
        }
        Ok(page)
    }

    fn allocate(&self, kind: PageKind) -> Result<MemoryWrite, StorageError> {
        let granted =
            self.allocations_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                });
        if granted.is_err() {
            return Err(StorageError::PoolExhausted {
                frames: 0,
                waited_ms: 0,
            });
        }
        self.pages.allocate(kind)
    }

    fn free(&self, id: PageId) -> Result<(), StorageError> {
        self.pages.free(id)
    }
}

#[test]
fn a_split_that_cannot_allocate_leaves_the_tree_as_it_was() {
    let store = Arc::new(Flaky::new());
    let tree = BTree::create(store.clone()).unwrap();
    let mut count = 0;
    while tree.stats().splits == 0 {
        tree.insert(&key(count), &[1; 500]).unwrap();
        count += 1;
    }
    let before = contents(&tree);
    store.allocations_left.store(0, Ordering::Relaxed);
    let mut refused = 0;
    for i in count..count + 200 {
        match tree.insert(&key(i), &[2; 500]) {
            Ok(()) => {}
            Err(StorageError::PoolExhausted { .. }) => refused += 1,
            Err(other) => panic!("{other}"),
        }
        // An overflow value needs pages before the tree is touched.
        assert!(tree.insert(&key(i), &[3; 9000]).is_err());
    }
    assert!(refused > 0, "some insert needed a split");
    let shape = tree.check().unwrap();
    assert_eq!(store.pages.pages_in_use() as u64, shape.pages());
    let after = contents(&tree);
    assert_eq!(after.len(), before.len() + 200 - refused);
    for (k, v) in &before {
        assert_eq!(tree.get(k).unwrap().as_ref(), Some(v));
    }
}

#[test]
fn a_root_split_refused_its_second_page_gives_back_the_first() {
    let store = Arc::new(Flaky::new());
    let tree = BTree::create(store.clone()).unwrap();
    let value = [4u8; 500];
    let cost = cell::leaf_cell_inline(&key(0), &value).len() + node::SLOT_SIZE_BYTES;
    let mut count = 0;
    loop {
        let fill = {
            let page = store.read(tree.root()).unwrap();
            node::Node::parse(&page).unwrap().fill()
        };
        if fill + cost > node::LEAF_USABLE_BYTES {
            break;
        }
        tree.insert(&key(count), &value).unwrap();
        count += 1;
    }
    let before = contents(&tree);
    // The leaf's new right half gets a page, the new root doesn't.
    store.allocations_left.store(1, Ordering::Relaxed);
    assert!(matches!(
        tree.insert(&key(count), &value),
        Err(StorageError::PoolExhausted { .. })
    ));
    assert_eq!(contents(&tree), before);
    assert_eq!(
        store.pages.pages_in_use(),
        1,
        "the right half's page was freed"
    );
    assert_eq!(tree.check().unwrap().height, 1);
    store.allocations_left.store(usize::MAX, Ordering::Relaxed);
    tree.insert(&key(count), &value).unwrap();
    assert_eq!(tree.check().unwrap().height, 2);
    assert_eq!(tree.stats().splits, 1);
}

/// Waits until `store` has seen `count` failed `try_read`s.
fn wait_busy(store: &Flaky, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.busy.load(Ordering::Relaxed) < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the scanner never tried the busy leaf"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the scanner reach the wait that follows (a descent, top-down).
    std::thread::sleep(Duration::from_millis(20));
}

#[test]
fn a_reverse_scan_never_waits_for_a_latch_right_to_left() {
    let store = Arc::new(Flaky::new());
    let tree = Arc::new(BTree::create(store.clone()).unwrap());
    for i in 0..400 {
        tree.insert(&key(i), &[9; 200]).unwrap();
    }
    assert!(tree.check().unwrap().leaves > 4);
    // Latch, as writers would, the leaf holding key 100 and the one before.
    let leaf = tree
        .descend_read(search::Seek::Key(&key(100)), false)
        .unwrap()
        .leaf
        .id();
    let before = {
        let page = store.read(leaf).unwrap();
        node::Node::parse(&page).unwrap().prev()
    };
    assert_ne!(before, 0);
    let held_before = store.pages.write(before).unwrap();
    let held = store.pages.write(leaf).unwrap();
    let scanner = {
        let tree = tree.clone();
        std::thread::spawn(move || {
            collect(
                &tree,
                Bound::Unbounded,
                Bound::Excluded(&key(300)),
                Direction::Reverse,
            )
        })
    };
    // The scanner finds the leaf busy from the right, lets go and descends
    // again, which waits top-down for the writer: allowed.
    wait_busy(&store, 1);
    drop(held);
    // Now it holds the leaf (found by descent) and finds the one before it
    // busy: it descends again from the leaf's lower fence.
    wait_busy(&store, 2);
    drop(held_before);
    let scanned = scanner.join().unwrap();
    let expected: Vec<_> = (0..300).rev().map(|i| (key(i), vec![9; 200])).collect();
    assert_eq!(scanned, expected);
}

#[test]
fn an_underflowing_leaf_latches_its_left_sibling_before_itself() {
    let tree = Arc::new(tree());
    for i in 0..300 {
        tree.insert(&key(i), &[1; 100]).unwrap();
    }
    assert_eq!(
        tree.check().unwrap().height,
        2,
        "every leaf is a child of the root"
    );
    let leaf = tree
        .descend_read(search::Seek::Key(&key(150)), false)
        .unwrap()
        .leaf
        .id();
    let cost = cell::leaf_cell_inline(&key(0), &[1; 100]).len() + node::SLOT_SIZE_BYTES;
    // Empty the leaf down to where one more delete underflows it.
    let (first, left) = loop {
        let (fill, first, left) = {
            let page = tree.store().read(leaf).unwrap();
            let node = node::Node::parse(&page).unwrap();
            (node.fill(), node.key(0).unwrap().to_vec(), node.prev())
        };
        if fill - cost < LEAF_FILL_MIN_BYTES {
            break (first, left);
        }
        assert!(tree.delete(&first).unwrap());
    };
    assert_ne!(left, 0);
    // A forward scanner holding the left leaf, about to step right.
    let scanner_at = tree.store().read(left).unwrap();
    let deleter = {
        let tree = tree.clone();
        std::thread::spawn(move || tree.delete(&first))
    };
    std::thread::sleep(Duration::from_millis(50));
    // The deleter waits for the left leaf without holding the underflowing
    // one, so the scanner can step onto it: no deadlock.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let stepped = loop {
        if let Some(page) = tree.store().try_read(leaf).unwrap() {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deleter holds the leaf while waiting leftward"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    drop(scanner_at);
    drop(stepped);
    assert_eq!(deleter.join().unwrap(), Ok(true));
    let stats = tree.stats();
    assert_eq!(stats.merges + stats.redistributions, 1, "{stats:?}");
    assert_balanced(&tree);
}
