//! The B+ tree under concurrent writers and scanners, on one tree.
//!
//! Four writers each own the keys ending in their number (interleaved in
//! key order with everyone else's, so they share leaves) and keep their own
//! `BTreeMap` model while they insert, update and delete at random in
//! waves of growth and shrinkage, with values from a few bytes to overflow
//! chains, so leaves and internal nodes split and merge under contention.
//! Two scanners meanwhile scan random ranges forward and reverse: every
//! scan must be strictly ordered, every key must belong to some writer (or
//! to the stable keys written before the start and never touched) with a
//! value that writer could have written, and an unlimited scan must see
//! every stable key in its range. (Cursors walking the tree alongside the
//! same writers are held to the same rules.) After the join, the tree equals the
//! union of the models, its invariants hold, and its pages are exactly the
//! store's pages in use.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use harmonydb_actors::storage::btree::{BTree, Direction};
use harmonydb_actors::storage::memory::MemoryPages;
use harmonydb_actors::storage::ordered::{Cursor, OrderedStore};

const WRITERS: usize = 4;
const SCANNERS: usize = 2;
/// Key numbers per writer (and for the stable keys).
const KEYS_PER_WRITER: u32 = 1500;
/// Operations per writer.
const OPS_PER_WRITER: u64 = 12_000;
/// Every this many key numbers holds a stable key.
const STABLE_EVERY: u32 = 7;
/// The owner byte of stable keys.
const STABLE: u8 = b's';

/// A small deterministic generator (splitmix64): seeds make runs repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Bytes every key starts with: with the distinguishing bytes after it,
/// separators stay long, internal nodes narrow and the tree tall, so
/// internal nodes split and merge under contention too.
const PREFIX_LEN: usize = 400;

/// Key number `n` of owner `owner` (a writer's digit or `STABLE`).
fn key(n: u32, owner: u8) -> Vec<u8> {
    format!("{}{n:05}-{}", "k".repeat(PREFIX_LEN), owner as char).into_bytes()
}

/// The key's number and owner, if it is one of ours.
fn parse_key(key: &[u8]) -> Option<(u32, u8)> {
    let text = std::str::from_utf8(key).ok()?;
    let rest = text.strip_prefix("k".repeat(PREFIX_LEN).as_str())?;
    let (number, owner) = rest.split_once('-')?;
    let owner = owner.as_bytes();
    (owner.len() == 1).then_some(())?;
    Some((number.parse().ok()?, owner[0]))
}

/// The length of version `version` of key `n`'s value: mostly small, some
/// near the inline limit, some in overflow pages.
fn value_len(n: u32, owner: u8, version: u32) -> usize {
    let mix = (u64::from(n) * 31 + u64::from(owner) * 17 + u64::from(version) * 7) % 100;
    match mix {
        0..=69 => 16 + (mix as usize * 13) % 300,
        70..=89 => 1400 + (mix as usize * 7) % 300,
        _ => 2000 + (mix as usize * 997) % 20_000,
    }
}

/// Version `version` of key `n`'s value: a header naming what it is for,
/// then bytes derived from it. A scanner can tell a value its writer could
/// have written from anything else.
fn value(n: u32, owner: u8, version: u32) -> Vec<u8> {
    let len = value_len(n, owner, version);
    let mut value = Vec::with_capacity(len);
    value.extend_from_slice(&n.to_le_bytes());
    value.push(owner);
    value.extend_from_slice(&version.to_le_bytes());
    let seed = n.wrapping_mul(2_654_435_761) ^ version;
    value.extend((value.len()..len).map(|i| (seed as usize).wrapping_add(i * 7) as u8));
    value
}

/// Whether `value` is one the owner of key `(n, owner)` could have written.
fn plausible(n: u32, owner: u8, value_bytes: &[u8]) -> bool {
    if value_bytes.len() < 9 {
        return false;
    }
    let version = u32::from_le_bytes(value_bytes[5..9].try_into().expect("4 bytes"));
    value_bytes == value(n, owner, version).as_slice()
}

fn writer(tree: &BTree<MemoryPages>, id: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let owner = b'0' + id as u8;
    let mut rng = Rng(0x5EED_0000 + id as u64);
    let mut model = BTreeMap::new();
    let mut version = 0u32;
    for op in 0..OPS_PER_WRITER {
        // Waves: grow for 2,000 operations, then shrink for 2,000.
        let growing = (op / 2000) % 2 == 0;
        let n = rng.below(u64::from(KEYS_PER_WRITER)) as u32;
        let key = key(n, owner);
        let roll = rng.below(100);
        let insert_below = if growing { 75 } else { 25 };
        if roll < insert_below {
            version += 1;
            let value = value(n, owner, version);
            tree.insert(&key, &value).expect("insert");
            model.insert(key, value);
        } else if roll < 92 {
            let existed = tree.delete(&key).expect("delete");
            assert_eq!(
                existed,
                model.remove(&key).is_some(),
                "writer {id}: delete of {key:?}"
            );
        } else {
            // The writer owns the key: nobody else changes it.
            assert_eq!(
                tree.get(&key).expect("get").as_ref(),
                model.get(&key),
                "writer {id}"
            );
        }
    }
    model
}

fn scanner(tree: &BTree<MemoryPages>, id: usize, done: &AtomicBool, scans: &AtomicU64) {
    let mut rng = Rng(0xC0FF_EE00 + id as u64);
    while !done.load(Ordering::Acquire) {
        let low = rng.below(u64::from(KEYS_PER_WRITER)) as u32;
        let high = low + rng.below(400) as u32;
        let start = key(low, b'0');
        let end = key(high, b'9');
        let (start_bound, end_bound) = match rng.below(4) {
            0 => (Bound::Included(&start[..]), Bound::Excluded(&end[..])),
            1 => (Bound::Excluded(&start[..]), Bound::Included(&end[..])),
            2 => (Bound::Unbounded, Bound::Excluded(&end[..])),
            _ => (Bound::Included(&start[..]), Bound::Unbounded),
        };
        let reverse = rng.below(2) == 0;
        let limit = if rng.below(4) == 0 { 50 } else { usize::MAX };
        let direction = if reverse {
            Direction::Reverse
        } else {
            Direction::Forward
        };
        let mut keys: Vec<Vec<u8>> = Vec::new();
        tree.scan(start_bound, end_bound, direction, |k, v| {
            if let Some(last) = keys.last() {
                let ordered = if reverse {
                    k < last.as_slice()
                } else {
                    k > last.as_slice()
                };
                assert!(
                    ordered,
                    "scanner {id}: {k:?} after {last:?} ({direction:?})"
                );
            }
            let (n, owner) =
                parse_key(k).unwrap_or_else(|| panic!("scanner {id}: stray key {k:?}"));
            assert!(
                owner == STABLE || (b'0'..b'0' + WRITERS as u8).contains(&owner),
                "scanner {id}: key {k:?} of nobody"
            );
            assert!(
                plausible(n, owner, v),
                "scanner {id}: {k:?} has a value nobody wrote"
            );
            keys.push(k.to_vec());
            if keys.len() == limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("scan");
        if limit == usize::MAX {
            // Every stable key in the range was there throughout the scan.
            let stable: Vec<Vec<u8>> = (0..KEYS_PER_WRITER)
                .step_by(STABLE_EVERY as usize)
                .map(|n| key(n, STABLE))
                .filter(|k| {
                    let above = match start_bound {
                        Bound::Included(s) => k.as_slice() >= s,
                        Bound::Excluded(s) => k.as_slice() > s,
                        Bound::Unbounded => true,
                    };
                    let below = match end_bound {
                        Bound::Included(e) => k.as_slice() <= e,
                        Bound::Excluded(e) => k.as_slice() < e,
                        Bound::Unbounded => true,
                    };
                    above && below
                })
                .collect();
            let seen: Vec<&Vec<u8>> = keys.iter().filter(|k| k.ends_with(b"-s")).collect();
            let mut expected: Vec<&Vec<u8>> = stable.iter().collect();
            if reverse {
                expected.reverse();
            }
            assert_eq!(
                seen, expected,
                "scanner {id}: stable keys missing ({direction:?})"
            );
        }
        scans.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keys and values as one or more writers left them.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A tree holding only the stable keys, and them.
fn tree_with_stable_keys() -> (Arc<BTree<MemoryPages>>, Model) {
    let tree = Arc::new(BTree::create(Arc::new(MemoryPages::new())).expect("create"));
    let mut stable = BTreeMap::new();
    for n in (0..KEYS_PER_WRITER).step_by(STABLE_EVERY as usize) {
        let value = value(n, STABLE, 0);
        tree.insert(&key(n, STABLE), &value).expect("insert");
        stable.insert(key(n, STABLE), value);
    }
    (tree, stable)
}

/// Walks a cursor from a random key to one end of the tree and back a
/// little, again and again: keys strictly ordered in each direction, each
/// one some writer's with a value it could have written, and every stable
/// key on the walk's side of its start seen.
fn cursor_walker(tree: &BTree<MemoryPages>, id: usize, done: &AtomicBool, walks: &AtomicU64) {
    let mut rng = Rng(0xC0C0_0000 + id as u64);
    while !done.load(Ordering::Acquire) {
        let start = key(rng.below(u64::from(KEYS_PER_WRITER)) as u32, b'0');
        let forward = rng.below(2) == 0;
        let mut cursor = tree.cursor();
        if forward {
            cursor.seek(&start).expect("seek");
        } else {
            cursor.seek_for_prev(&start).expect("seek");
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut held_max = 0;
        while let (Some(k), Some(v)) = (cursor.key(), cursor.value()) {
            let in_order = keys.last().is_none_or(|last| {
                if forward {
                    k > last.as_slice()
                } else {
                    k < last.as_slice()
                }
            });
            assert!(in_order, "walker {id}: {k:?} after {:?}", keys.last());
            assert!(
                if forward {
                    k >= &start[..]
                } else {
                    k <= &start[..]
                },
                "walker {id}: {k:?} on the wrong side of the start"
            );
            let (n, owner) = parse_key(k).unwrap_or_else(|| panic!("walker {id}: stray key {k:?}"));
            assert!(
                plausible(n, owner, v),
                "walker {id}: {k:?} has a value nobody wrote"
            );
            keys.push(k.to_vec());
            held_max = held_max.max(cursor.held());
            if forward {
                cursor.next().expect("next");
            } else {
                cursor.prev().expect("prev");
            }
        }
        // A leaf holds at most a page of cells: keys here are over 400 bytes.
        assert!(
            held_max <= 20,
            "walker {id}: held {held_max} entries at once"
        );
        let mut expected: Vec<Vec<u8>> = (0..KEYS_PER_WRITER)
            .step_by(STABLE_EVERY as usize)
            .map(|n| key(n, STABLE))
            .filter(|k| if forward { k >= &start } else { k <= &start })
            .collect();
        if !forward {
            expected.reverse();
        }
        let seen: Vec<Vec<u8>> = keys.into_iter().filter(|k| k.ends_with(b"-s")).collect();
        assert_eq!(seen, expected, "walker {id}: stable keys missing");
        // Turning round: the key behind the one a step ahead is before it.
        if let Some(k) = (0..3).find_map(|_| {
            cursor.seek(&start).ok()?;
            cursor.next().ok()?;
            cursor.key().map(<[u8]>::to_vec)
        }) {
            cursor.prev().expect("prev");
            if let Some(back) = cursor.key() {
                assert!(back < &k[..], "walker {id}: prev of {k:?} is {back:?}");
            }
        }
        walks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the writers on `tree` with `SCANNERS` readers beside them until the
/// writers are done; what the writers left, and how many rounds the
/// readers finished.
fn alongside_writers(
    tree: &Arc<BTree<MemoryPages>>,
    reader: fn(&BTree<MemoryPages>, usize, &AtomicBool, &AtomicU64),
) -> (Model, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..SCANNERS)
        .map(|id| {
            let (tree, done, rounds) = (tree.clone(), done.clone(), rounds.clone());
            thread::spawn(move || reader(&tree, id, &done, &rounds))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let tree = tree.clone();
            thread::spawn(move || writer(&tree, id))
        })
        .collect();
    let mut written = Model::new();
    for writer in writers {
        written.extend(writer.join().expect("writer"));
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().expect("reader");
    }
    (written, rounds.load(Ordering::Relaxed))
}

#[test]
fn cursors_walk_one_tree_while_writers_split_and_merge_it() {
    let (tree, _) = tree_with_stable_keys();
    let (_, walks) = alongside_writers(&tree, cursor_walker);
    let stats = tree.stats();
    eprintln!("{walks} cursor walks alongside the writers, {stats:?}");
    assert!(stats.splits > 500 && stats.merges > 100, "{stats:?}");
    assert!(walks > 10, "walks ran alongside the writers");
}

#[test]
fn writers_and_scanners_share_one_tree() {
    let started = Instant::now();
    let (tree, mut expected) = tree_with_stable_keys();
    let (written, scans) = alongside_writers(&tree, scanner);
    expected.extend(written);

    let shape = tree.check().expect("invariants");
    assert_eq!(
        tree.store().pages_in_use() as u64,
        shape.pages(),
        "{shape:?}"
    );
    assert_eq!(shape.keys, expected.len() as u64);
    let mut contents = Vec::new();
    tree.scan(
        Bound::Unbounded,
        Bound::Unbounded,
        Direction::Forward,
        |k, v| {
            contents.push((k.to_vec(), v.to_vec()));
            ControlFlow::Continue(())
        },
    )
    .expect("scan");
    assert!(
        contents.iter().map(|(k, v)| (k, v)).eq(expected.iter()),
        "the tree is the union of the models"
    );

    let stats = tree.stats();
    eprintln!(
        "{} writer ops, {scans} scans, {shape:?}, {stats:?} in {:?}",
        WRITERS as u64 * OPS_PER_WRITER,
        started.elapsed()
    );
    assert!(stats.splits > 500 && stats.merges > 100, "{stats:?}");
    assert!(shape.height >= 3 || stats.height >= 3, "{shape:?}");
    assert!(scans > 10, "scans ran alongside the writers");

    for key in expected.keys() {
        assert!(tree.delete(key).expect("delete"));
    }
    let shape = tree.check().expect("invariants");
    assert_eq!((shape.pages(), tree.store().pages_in_use()), (1, 1));
}
