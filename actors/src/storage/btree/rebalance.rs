//! Splits, merges and redistributions, computed on node images with no
//! pages involved: `plan.rs` decides which to do and writes the results.
//!
//! All three keep every non-root node between 25% and 100% full. The
//! argument: a cut is made only through more than a node's worth of cells
//! (`total > usable`), at the point that balances the two sides, so each
//! side gets at least `total / 2 - cell > usable / 2 - usable / 4`, because
//! no cell costs more than a quarter of a node (asserted at compile time in
//! `node.rs`); and at most `total / 2 + cell`, which is below `usable`
//! because `total` is below `usable + usable / 4 + cell` (a full node plus
//! an underfull one plus a separator, or a full node plus one cell).

use super::cell::{cell_child, cell_key, internal_cell, Links, NodeImage};
use super::node::{fill_min_bytes, usable_bytes, SLOT_SIZE_BYTES};

/// Two nodes that were one, and the separator between them.
#[derive(Debug)]
pub(crate) struct Split {
    /// Keys below `separator`; a leaf keeps the old node's links.
    pub(crate) left: NodeImage,
    /// Keys from `separator` up; a leaf's links are left for the caller.
    pub(crate) right: NodeImage,
    /// The key the parent puts between them.
    pub(crate) separator: Vec<u8>,
}

/// What became of an underfull node and its sibling.
#[derive(Debug)]
pub(crate) enum Rebalanced {
    /// Both fit in one node: the left one's page keeps them.
    Merged(NodeImage),
    /// Cells moved between them; the parent's separator becomes the key.
    Redistributed(Split),
}

fn cost(cell: &[u8]) -> usize {
    cell.len() + SLOT_SIZE_BYTES
}

/// Where to cut `cells` so the two sides are as even as possible. For
/// leaves the sides are `cells[..cut]` and `cells[cut..]`; for internal
/// nodes cell `cut` moves up to the parent, and the sides are the cells
/// either side of it.
fn balanced_cut(cells: &[Vec<u8>], leaf: bool) -> usize {
    let total: usize = cells.iter().map(|cell| cost(cell)).sum();
    let (first, last) = if leaf {
        (1, cells.len() - 1)
    } else {
        (0, cells.len() - 1)
    };
    let mut best = (usize::MAX, first);
    let mut prefix: usize = cells[..first].iter().map(|cell| cost(cell)).sum();
    for (cut, cell) in cells.iter().enumerate().take(last + 1).skip(first) {
        let right = if leaf {
            total - prefix
        } else {
            total - prefix - cost(cell)
        };
        let larger = prefix.max(right);
        if larger < best.0 {
            best = (larger, cut);
        }
        prefix += cost(cell);
    }
    best.1
}

/// The shortest key `s` with `below < s <= from`: the separator a parent
/// needs between a node whose last key is `below` and one whose first is
/// `from` (suffix truncation keeps internal nodes wide).
pub(crate) fn shortest_separator(below: &[u8], from: &[u8]) -> Vec<u8> {
    let common = below
        .iter()
        .zip(from)
        .take_while(|(left, right)| left == right)
        .count();
    from[..(common + 1).min(from.len())].to_vec()
}

/// Cuts `cells` (more than one node's worth) into two balanced nodes.
fn cut(mut cells: Vec<Vec<u8>>, links: Links) -> Split {
    let leaf = matches!(links, Links::Leaf { .. });
    let total: usize = cells.iter().map(|cell| cost(cell)).sum();
    assert!(
        total > usable_bytes(leaf),
        "only more than a node's worth is cut"
    );
    let at = balanced_cut(&cells, leaf);
    let (separator, right) = if leaf {
        let right = cells.split_off(at);
        let separator =
            shortest_separator(cell_key(true, &cells[at - 1]), cell_key(true, &right[0]));
        let right = NodeImage {
            links: Links::Leaf { prev: 0, next: 0 },
            cells: right,
        };
        (separator, right)
    } else {
        let right_cells = cells.split_off(at + 1);
        let up = cells.pop().expect("the cut cell is in the left part");
        let level = match links {
            Links::Internal { level, .. } => level,
            Links::Leaf { .. } => unreachable!("checked above"),
        };
        let right = NodeImage {
            links: Links::Internal {
                level,
                leftmost: cell_child(&up),
            },
            cells: right_cells,
        };
        (cell_key(false, &up).to_vec(), right)
    };
    let left = NodeImage { links, cells };
    for side in [&left, &right] {
        assert!(
            side.fill() >= fill_min_bytes(leaf) && side.fill() <= usable_bytes(leaf),
            "a balanced cut leaves both sides between 25% and 100% full ({} of {})",
            side.fill(),
            usable_bytes(leaf)
        );
    }
    Split {
        left,
        right,
        separator,
    }
}

/// Splits a node holding more than a page's worth of cells in two. A
/// leaf's left half keeps its links; the caller relinks both halves.
pub(crate) fn split(image: NodeImage) -> Split {
    cut(image.cells, image.links)
}

/// Joins an underfull node with its sibling, or if the two don't fit in
/// one node, moves cells between them. `left` and `right` are siblings in
/// that order; `separator` is the parent's key between them (pulled down
/// into internal nodes, unused for leaves). A merged leaf takes the left
/// one's prev and the right one's next link.
pub(crate) fn merge_or_redistribute(
    left: NodeImage,
    separator: &[u8],
    right: NodeImage,
) -> Rebalanced {
    assert_eq!(left.level(), right.level(), "siblings are on one level");
    let leaf = left.is_leaf();
    let (links, cells) = match (left.links, right.links) {
        (Links::Leaf { prev, .. }, Links::Leaf { next, .. }) => {
            let mut cells = left.cells;
            cells.extend(right.cells);
            (Links::Leaf { prev, next }, cells)
        }
        (
            Links::Internal { level, leftmost },
            Links::Internal {
                leftmost: right_leftmost,
                ..
            },
        ) => {
            let mut cells = left.cells;
            cells.push(internal_cell(separator, right_leftmost));
            cells.extend(right.cells);
            (Links::Internal { level, leftmost }, cells)
        }
        _ => unreachable!("levels checked above"),
    };
    let merged = NodeImage { links, cells };
    if merged.fill() <= usable_bytes(leaf) {
        return Rebalanced::Merged(merged);
    }
    let mut split = cut(merged.cells, merged.links);
    if leaf {
        // Redistribution moves cells, not pages: each leaf keeps its links.
        split.left.links = left.links;
        split.right.links = right.links;
    }
    Rebalanced::Redistributed(split)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::btree::cell::leaf_cell_inline;
    use crate::storage::btree::node::{
        INTERNAL_FILL_MIN_BYTES, INTERNAL_USABLE_BYTES, LEAF_FILL_MIN_BYTES, LEAF_USABLE_BYTES,
    };

    fn leaf(prev: u64, next: u64, keys: impl IntoIterator<Item = (String, usize)>) -> NodeImage {
        NodeImage {
            links: Links::Leaf { prev, next },
            cells: keys
                .into_iter()
                .map(|(key, len)| leaf_cell_inline(key.as_bytes(), &vec![1; len]))
                .collect(),
        }
    }

    fn keys(image: &NodeImage) -> Vec<Vec<u8>> {
        (0..image.cells.len())
            .map(|i| key(image, i).to_vec())
            .collect()
    }

    fn key(image: &NodeImage, index: usize) -> &[u8] {
        cell_key(image.is_leaf(), &image.cells[index])
    }

    #[test]
    fn a_full_leaf_splits_evenly_with_a_short_separator() {
        // 9 cells of ~1010 bytes: one more than a leaf holds.
        let image = leaf(
            7,
            8,
            (0..9).map(|i| (format!("key-{i:02}-long-suffix"), 990)),
        );
        assert!(image.fill() > LEAF_USABLE_BYTES);
        let Split {
            left,
            right,
            separator,
        } = split(image.clone());
        assert_eq!(left.cells.len() + right.cells.len(), 9);
        assert!(left.fill().abs_diff(right.fill()) <= 1100, "balanced");
        assert!(left.fill() >= LEAF_FILL_MIN_BYTES && right.fill() >= LEAF_FILL_MIN_BYTES);
        assert_eq!(left.links, Links::Leaf { prev: 7, next: 8 });
        assert!(key(&left, left.cells.len() - 1) < &separator[..]);
        assert!(&separator[..] <= key(&right, 0));
        assert_eq!(separator, b"key-04".to_vec(), "the separator is cut short");
        let mut all = keys(&left);
        all.extend(keys(&right));
        assert_eq!(all, keys(&image));
    }

    #[test]
    fn shortest_separators_sit_between_their_neighbours() {
        assert_eq!(shortest_separator(b"abc", b"abd"), b"abd");
        assert_eq!(shortest_separator(b"abc", b"abcd"), b"abcd");
        assert_eq!(shortest_separator(b"ab", b"b"), b"b");
        assert_eq!(shortest_separator(b"a", b"azzz"), b"az");
        assert_eq!(shortest_separator(b"", b"q"), b"q");
    }

    #[test]
    fn an_internal_split_moves_the_middle_key_up() {
        let cells: Vec<_> = (0..10u64)
            .map(|i| internal_cell(&[b'a' + i as u8; 1000], 100 + i))
            .collect();
        let image = NodeImage {
            links: Links::Internal {
                level: 2,
                leftmost: 99,
            },
            cells,
        };
        assert!(image.fill() > INTERNAL_USABLE_BYTES);
        let Split {
            left,
            right,
            separator,
        } = split(image);
        assert_eq!(
            (left.cells.len(), right.cells.len()),
            (4, 5),
            "one cell went up"
        );
        assert_eq!(separator, vec![b'a' + 4; 1000]);
        assert_eq!(
            left.links,
            Links::Internal {
                level: 2,
                leftmost: 99
            }
        );
        assert_eq!(
            right.links,
            Links::Internal {
                level: 2,
                leftmost: 104
            }
        );
        assert!(left.fill() >= INTERNAL_FILL_MIN_BYTES && right.fill() >= INTERNAL_FILL_MIN_BYTES);
    }

    #[test]
    fn small_siblings_merge_and_large_ones_share() {
        let left = leaf(1, 2, (0..2).map(|i| (format!("a{i}"), 900)));
        let right = leaf(3, 4, (0..2).map(|i| (format!("b{i}"), 900)));
        match merge_or_redistribute(left, b"", right) {
            Rebalanced::Merged(merged) => {
                assert_eq!(merged.links, Links::Leaf { prev: 1, next: 4 });
                assert_eq!(merged.cells.len(), 4);
            }
            other => panic!("expected a merge, got {other:?}"),
        }

        // An underfull right leaf (1 cell) beside a full left one (8 cells).
        let left = leaf(1, 2, (0..8).map(|i| (format!("a{i}"), 990)));
        let right = leaf(3, 4, [("b".to_string(), 990)]);
        match merge_or_redistribute(left, b"", right) {
            Rebalanced::Redistributed(Split {
                left,
                right,
                separator,
            }) => {
                assert_eq!(left.links, Links::Leaf { prev: 1, next: 2 });
                assert_eq!(right.links, Links::Leaf { prev: 3, next: 4 });
                assert!(
                    right.fill() >= LEAF_FILL_MIN_BYTES,
                    "the underfull side gained cells"
                );
                assert!(left.fill() >= LEAF_FILL_MIN_BYTES);
                assert_eq!(left.cells.len() + right.cells.len(), 9);
                assert_eq!(separator, key(&right, 0)[..2].to_vec());
            }
            other => panic!("expected a redistribution, got {other:?}"),
        }
    }

    #[test]
    fn internal_siblings_pull_the_separator_down() {
        let node = |leftmost: u64, first: u8, count: u8| NodeImage {
            links: Links::Internal { level: 1, leftmost },
            cells: (0..count)
                .map(|i| internal_cell(&[first + i; 900], u64::from(first + i)))
                .collect(),
        };
        match merge_or_redistribute(node(10, b'a', 2), b"m", node(20, b'n', 2)) {
            Rebalanced::Merged(merged) => {
                assert_eq!(merged.cells.len(), 5);
                assert_eq!(cell_key(false, &merged.cells[2]), b"m");
                assert_eq!(cell_child(&merged.cells[2]), 20);
                assert_eq!(
                    merged.links,
                    Links::Internal {
                        level: 1,
                        leftmost: 10
                    }
                );
            }
            other => panic!("expected a merge, got {other:?}"),
        }
        match merge_or_redistribute(node(10, b'a', 8), b"m", node(20, b'n', 1)) {
            Rebalanced::Redistributed(Split {
                left,
                right,
                separator,
            }) => {
                assert_eq!(left.cells.len() + right.cells.len(), 9, "10 cells, one up");
                assert!(right.fill() >= INTERNAL_FILL_MIN_BYTES);
                assert!(left.fill() >= INTERNAL_FILL_MIN_BYTES);
                let Links::Internal { leftmost, .. } = right.links else {
                    panic!("internal")
                };
                // The cell that went up gave its child to the right node.
                assert_eq!(u64::from(separator[0]), leftmost);
            }
            other => panic!("expected a redistribution, got {other:?}"),
        }
    }

    #[test]
    fn every_worst_case_cut_stays_within_the_fill_bounds() {
        // The claim the compile-time asserts stand for, exercised: cells of
        // the maximum size next to tiny ones, in every proportion.
        for big in 0..=5 {
            let mut cells: Vec<(String, usize)> = (0..big)
                .map(|i| {
                    (
                        format!("big{i}"),
                        crate::storage::btree::LEAF_CELL_SIZE_MAX_BYTES - 11,
                    )
                })
                .collect();
            let mut small = 0;
            while leaf(0, 0, cells.clone()).fill() <= LEAF_USABLE_BYTES {
                cells.push((format!("small{small:04}"), 20));
                small += 1;
            }
            cells.sort();
            let image = leaf(0, 0, cells);
            let Split { left, right, .. } = split(image);
            assert!(left.fill() >= LEAF_FILL_MIN_BYTES, "big={big}");
            assert!(right.fill() >= LEAF_FILL_MIN_BYTES, "big={big}");
        }
    }
}
