//! Operations, growth and shrinkage, and scans on `MemoryPages`.

use std::collections::BTreeMap;

use super::*;

#[test]
fn an_empty_tree_is_one_empty_root_leaf() {
    let tree = tree();
    assert_eq!(tree.get(b"a"), Ok(None));
    assert_eq!(
        collect(
            &tree,
            Bound::Unbounded,
            Bound::Unbounded,
            Direction::Forward
        ),
        []
    );
    assert_eq!(
        collect(
            &tree,
            Bound::Unbounded,
            Bound::Unbounded,
            Direction::Reverse
        ),
        []
    );
    assert_eq!(tree.delete(b"a"), Ok(false));
    let shape = assert_balanced(&tree);
    assert_eq!((shape.height, shape.leaves, shape.keys), (1, 1, 0));
    assert_eq!(tree.stats().height, 1);
}

#[test]
fn values_move_between_inline_and_overflow_on_update() {
    let tree = tree();
    tree.insert(b"k", b"small").unwrap();
    assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"small"[..]));
    let big = vec![42u8; 3 * OVERFLOW_DATA_MAX_BYTES + 5];
    tree.insert(b"k", &big).unwrap();
    assert_eq!(tree.get(b"k").unwrap(), Some(big.clone()));
    assert_eq!(assert_balanced(&tree).overflow, 4);
    tree.insert(b"k", b"").unwrap();
    assert_eq!(tree.get(b"k").unwrap(), Some(Vec::new()));
    assert_eq!(
        assert_balanced(&tree).overflow,
        0,
        "the old chain was freed"
    );
    tree.insert(b"k", &big).unwrap();
    assert_eq!(tree.delete(b"k"), Ok(true));
    assert_eq!(tree.get(b"k"), Ok(None));
    assert_eq!(assert_balanced(&tree).pages(), 1);
}

#[test]
fn keys_over_the_limit_are_refused() {
    let tree = tree();
    let longest = vec![7u8; KEY_SIZE_MAX_BYTES];
    tree.insert(&longest, b"v").unwrap();
    assert_eq!(tree.get(&longest).unwrap().as_deref(), Some(&b"v"[..]));
    let too_long = vec![7u8; KEY_SIZE_MAX_BYTES + 1];
    assert!(matches!(
        tree.insert(&too_long, b"v"),
        Err(StorageError::TooLarge(_))
    ));
    assert!(matches!(
        tree.get(&too_long),
        Err(StorageError::TooLarge(_))
    ));
    assert!(matches!(
        tree.delete(&too_long),
        Err(StorageError::TooLarge(_))
    ));
    tree.insert(b"", b"empty keys are the KV layer's business")
        .unwrap();
    assert!(tree.get(b"").unwrap().is_some());
}

#[test]
fn growing_and_shrinking_splits_merges_and_collapses_the_root() {
    let tree = tree();
    let count = 3000;
    for i in 0..count {
        tree.insert(&long_key(i), &vec![i as u8; 100 + i % 300])
            .unwrap();
    }
    let shape_before = assert_balanced(&tree);
    assert_eq!(shape_before.keys, count as u64);
    assert!(shape_before.height >= 3, "{shape_before:?}");
    assert_eq!(tree.stats().height, shape_before.height as u64);
    // Every page but the first root came of a split (a root split makes two).
    assert_eq!(
        tree.stats().splits,
        shape_before.leaves + shape_before.internal - shape_before.height as u64
    );
    for i in 0..count {
        assert_eq!(
            tree.get(&long_key(i)).unwrap(),
            Some(vec![i as u8; 100 + i % 300]),
            "key {i}"
        );
    }
    // Delete from both ends and the middle, checking as the tree shrinks.
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|i| (i * 7919) % count);
    for (n, i) in order.iter().enumerate() {
        assert_eq!(tree.delete(&long_key(*i)), Ok(true));
        if n % 500 == 0 {
            assert_balanced(&tree);
        }
    }
    let stats = tree.stats();
    assert!(
        stats.merges > shape_before.internal && stats.redistributions > 0,
        "{stats:?}"
    );
    let shape = assert_balanced(&tree);
    assert_eq!((shape.height, shape.leaves, shape.pages()), (1, 1, 1));
    assert_eq!(tree.stats().height, 1);
}

#[test]
fn scans_honour_bounds_in_both_directions() {
    let tree = tree();
    let mut model = BTreeMap::new();
    for i in (0..2000).step_by(3) {
        let value = vec![(i % 251) as u8; i % 700];
        tree.insert(&key(i), &value).unwrap();
        model.insert(key(i), value);
    }
    let bounds = [
        Bound::Unbounded,
        Bound::Included(key(0)),
        Bound::Included(key(300)),
        Bound::Excluded(key(300)),
        Bound::Included(key(301)),
        Bound::Excluded(key(1500)),
        Bound::Included(key(5000)),
    ];
    for start in &bounds {
        for end in &bounds {
            let (start, end) = (
                start.as_ref().map(Vec::as_slice),
                end.as_ref().map(Vec::as_slice),
            );
            let expected: Vec<_> = model
                .iter()
                .filter(|(k, _)| after_start(k, start) && before_end(k, end))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(
                collect(&tree, start, end, Direction::Forward),
                expected,
                "{start:?}..{end:?}"
            );
            let reversed: Vec<_> = expected.into_iter().rev().collect();
            assert_eq!(
                collect(&tree, start, end, Direction::Reverse),
                reversed,
                "{start:?}..{end:?} reversed"
            );
        }
    }
    let mut seen = 0;
    tree.scan(
        Bound::Unbounded,
        Bound::Unbounded,
        Direction::Reverse,
        |_, _| {
            seen += 1;
            if seen == 10 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap();
    assert_eq!(seen, 10, "a scan stops when told");
}
