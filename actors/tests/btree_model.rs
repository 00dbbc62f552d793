//! The B+ tree against `std::collections::BTreeMap` as a model: random
//! sequences of inserts, updates, deletes, gets and bounded scans in both
//! directions, with keys drawn from a small alphabet (so they collide and
//! prefix each other) and some of 1000+ bytes (so separators are long and
//! internal nodes split and merge), and values from empty to 30,000 bytes
//! (so they move between inline cells and overflow chains). After every
//! batch the tree's invariants hold and its pages are exactly the store's
//! pages in use: nothing leaked, nothing freed twice. Deleting everything
//! leaves one empty root leaf.
//!
//! PROPTEST_CASES=n runs more cases than the default.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use harmonydb_actors::storage::btree::{BTree, Direction, TreeStats, KEY_SIZE_MAX_BYTES};
use harmonydb_actors::storage::memory::MemoryPages;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// Cases when PROPTEST_CASES doesn't say: keeps this file near 20 s in a
/// debug build.
const CASES_DEFAULT: u32 = 128;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

/// Keys: often 1 to 3 letters of "ab" (14 keys, each a prefix of others:
/// many collisions), or up to 6 of "abcd" (the tree grows), some after a
/// 60-byte stem, and some after stems of 300 or 1020 bytes, up to the
/// 1024-byte limit (long separators, narrow internal nodes, tall trees).
fn key() -> impl Strategy<Value = Vec<u8>> {
    let letters = |alphabet: &[u8], range| {
        proptest::collection::vec(prop::sample::select(alphabet.to_vec()), range)
    };
    prop_oneof![
        8 => letters(b"ab", 1..=3),
        6 => letters(b"abcd", 1..=6),
        2 => letters(b"ab", 0..=4).prop_map(|tail| [vec![b'm'; 60], tail].concat()),
        1 => letters(b"abcd", 0..=4).prop_map(|tail| [vec![b'z'; 300], tail].concat()),
        3 => letters(b"abcd", 0..=4).prop_map(|tail| [vec![b'z'; KEY_SIZE_MAX_BYTES - 4], tail].concat()),
    ]
}

/// A value by length and seed: small, near the inline limit, or large.
fn value() -> impl Strategy<Value = (usize, u8)> {
    let len = prop_oneof![
        6 => 0usize..100,
        2 => 100usize..1700,
        2 => 1700usize..=30_000,
    ];
    (len, any::<u8>())
}

fn make_value((len, seed): (usize, u8)) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 253) as u8))
        .collect()
}

fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
    prop_oneof![
        1 => Just(Bound::Unbounded),
        2 => key().prop_map(Bound::Included),
        2 => key().prop_map(Bound::Excluded),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u8>, (usize, u8)),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Scan {
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
        limit: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
        5 => key().prop_map(Op::Delete),
        2 => key().prop_map(Op::Get),
        2 => (bound(), bound(), any::<bool>(), proptest::option::of(1usize..20)).prop_map(
            |(start, end, reverse, limit)| Op::Scan { start, end, reverse, limit }
        ),
    ]
}

fn in_range(key: &[u8], start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    let above = match start {
        Bound::Unbounded => true,
        Bound::Included(start) => key >= &start[..],
        Bound::Excluded(start) => key > &start[..],
    };
    let below = match end {
        Bound::Unbounded => true,
        Bound::Included(end) => key <= &end[..],
        Bound::Excluded(end) => key < &end[..],
    };
    above && below
}

fn as_slice(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    bound.as_ref().map(Vec::as_slice)
}

/// Checks the tree's invariants and that its pages are the store's;
/// returns the height.
fn check(
    tree: &BTree<MemoryPages>,
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<usize, TestCaseError> {
    let shape = tree.check().map_err(TestCaseError::fail)?;
    prop_assert_eq!(shape.keys, model.len() as u64);
    prop_assert_eq!(
        tree.store().pages_in_use() as u64,
        shape.pages(),
        "{:?}",
        shape
    );
    Ok(shape.height)
}

/// Runs `ops` on a new tree and its model; returns the greatest height seen
/// and the tree's counters at the end.
fn run(ops: Vec<Op>) -> Result<(usize, TreeStats), TestCaseError> {
    let mut height = 1;
    let tree = BTree::create(Arc::new(MemoryPages::new())).expect("create");
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            Op::Insert(key, value) => {
                let value = make_value(value);
                tree.insert(&key, &value).expect("insert");
                model.insert(key, value);
            }
            Op::Delete(key) => {
                let existed = tree.delete(&key).expect("delete");
                prop_assert_eq!(existed, model.remove(&key).is_some());
            }
            Op::Get(key) => {
                let found = tree.get(&key).expect("get");
                prop_assert_eq!(found.as_ref(), model.get(&key));
            }
            Op::Scan {
                start,
                end,
                reverse,
                limit,
            } => {
                let limit = limit.unwrap_or(usize::MAX);
                let mut scanned = Vec::new();
                let direction = if reverse {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                tree.scan(as_slice(&start), as_slice(&end), direction, |k, v| {
                    scanned.push((k.to_vec(), v.to_vec()));
                    if scanned.len() == limit {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .expect("scan");
                let matching = model.iter().filter(|(k, _)| in_range(k, &start, &end));
                let expected: Vec<_> = if reverse {
                    matching
                        .rev()
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                } else {
                    matching
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                prop_assert_eq!(scanned, expected);
            }
        }
        if n % 25 == 24 {
            height = height.max(check(&tree, &model)?);
        }
    }
    height = height.max(check(&tree, &model)?);
    for (key, value) in &model {
        let found = tree.get(key).expect("get");
        prop_assert_eq!(found.as_ref(), Some(value));
    }
    for key in model.keys() {
        prop_assert!(tree.delete(key).expect("delete"));
    }
    let shape = tree.check().map_err(TestCaseError::fail)?;
    prop_assert_eq!((shape.height, shape.keys, shape.pages()), (1, 0, 1));
    prop_assert_eq!(tree.store().pages_in_use(), 1);
    Ok((height, tree.stats()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_tree_behaves_like_a_btreemap(ops in proptest::collection::vec(op(), 1..1200)) {
        run(ops)?;
    }
}

/// Keys for the long run: 3,000 numbers behind stems of 0, 300 or 1,018
/// bytes, so the tree gets wide and, with long separators, tall.
fn wide_key() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0usize, 300, KEY_SIZE_MAX_BYTES - 6]),
        0u32..3000,
    )
        .prop_map(|(stem, n)| [vec![b'z'; stem], format!("{n:04}").into_bytes()].concat())
}

/// Many more operations than a proptest case, on one sequence, so the tree
/// reaches several levels and shrinks back: internal splits, merges,
/// redistributions and root collapses.
#[test]
fn a_long_run_grows_and_shrinks_through_every_structure_change() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut draw = |strategy: &dyn Fn() -> BoxedStrategy<Op>, count: usize| {
        proptest::collection::vec(strategy(), count)
            .new_tree(&mut runner)
            .expect("ops")
            .current()
    };
    let grow = || {
        prop_oneof![
            8 => (wide_key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
            1 => wide_key().prop_map(Op::Delete),
            1 => op(),
        ]
        .boxed()
    };
    let shrink = || {
        prop_oneof![
            2 => (wide_key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
            7 => wide_key().prop_map(Op::Delete),
            1 => op(),
        ]
        .boxed()
    };
    let mut sequence = draw(&grow, 6000);
    sequence.extend(draw(&shrink, 8000));
    let (height, stats) = run(sequence).expect("model run");
    eprintln!("long run: height {height}, {stats:?}");
    assert!(height >= 4, "the tree grew to {height} levels");
    assert!(
        stats.merges > 100 && stats.redistributions > 10,
        "{stats:?}"
    );
}
