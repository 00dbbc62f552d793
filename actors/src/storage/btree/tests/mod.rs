//! Unit tests of the tree as a whole: `basic` runs operations and scans on
//! `MemoryPages`; `latching` uses a store that refuses allocations or
//! reports busy latches, to show structure changes are all-or-nothing and
//! latches are taken in order; `damage` corrupts pages and shows `check`
//! reports it and operations fail instead of panicking or looping; `pool`
//! runs the tree on the real buffer pool.

mod basic;
mod damage;
mod latching;
mod pool;

use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use super::*;
use crate::storage::memory::MemoryPages;

fn tree() -> BTree<MemoryPages> {
    BTree::create(Arc::new(MemoryPages::new())).expect("create")
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// A key whose distinguishing bytes come after a long common prefix, so
/// separators stay long and internal nodes narrow: trees grow tall fast.
fn long_key(i: usize) -> Vec<u8> {
    format!("{}{i:06}", "p".repeat(200)).into_bytes()
}

fn collect<S: PageStore>(
    tree: &BTree<S>,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
    direction: Direction,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    tree.scan(start, end, direction, |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })
    .expect("scan");
    out
}

/// The tree's pages are exactly the store's pages in use.
fn assert_balanced(tree: &BTree<MemoryPages>) -> TreeShape {
    let shape = tree.check().expect("check");
    assert_eq!(
        tree.store().pages_in_use() as u64,
        shape.pages(),
        "{shape:?}"
    );
    shape
}

/// Everything in the tree, in order.
fn contents<S: PageStore>(tree: &BTree<S>) -> Vec<(Vec<u8>, Vec<u8>)> {
    collect(tree, Bound::Unbounded, Bound::Unbounded, Direction::Forward)
}
