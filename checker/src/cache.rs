//! The search's memory of configurations already explored: pairs of (set of
//! linearized operations, model state). Reaching one again cannot lead anywhere
//! new, so the search skips it (Lowe's optimisation, as in Porcupine).
//!
//! The set is a bitset with an incrementally maintained Zobrist hash: each
//! operation has a fixed pseudo-random word, XORed in when it is linearized and
//! out when that is undone, so a step costs O(1) hashing however long the
//! history. Stored sets drop their all-ones prefix and all-zeros suffix: the
//! linearized operations are mostly the earliest ones, so what remains is the
//! few words around the search's frontier.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// The set of linearized operations, with its Zobrist hash.
pub(crate) struct Linearized {
    words: Vec<u64>,
    /// Each operation's Zobrist word.
    keys: Vec<u64>,
    hash: u64,
}

/// splitmix64: a fixed, well-mixed pseudo-random word per index, so runs are
/// deterministic and each operation's Zobrist word is independent of the others.
pub(crate) fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Linearized {
    /// The empty set over `ops` operations.
    pub(crate) fn new(ops: usize) -> Linearized {
        Linearized {
            words: vec![0; ops.div_ceil(64)],
            keys: (0..ops as u64).map(splitmix64).collect(),
            hash: 0,
        }
    }

    /// Adds `op`, which must not be in the set.
    pub(crate) fn insert(&mut self, op: usize) {
        debug_assert_eq!(
            self.words[op / 64] & (1 << (op % 64)),
            0,
            "op {op} already linearized"
        );
        self.words[op / 64] |= 1 << (op % 64);
        self.hash ^= self.keys[op];
    }

    /// Whether `op` is in the set.
    pub(crate) fn contains(&self, op: usize) -> bool {
        self.words[op / 64] & (1 << (op % 64)) != 0
    }

    /// Removes `op`, which must be in the set.
    pub(crate) fn remove(&mut self, op: usize) {
        debug_assert_ne!(
            self.words[op / 64] & (1 << (op % 64)),
            0,
            "op {op} not linearized"
        );
        self.words[op / 64] &= !(1 << (op % 64));
        self.hash ^= self.keys[op];
    }
}

/// A stored set: `full` leading all-ones words, then `middle`, then all zeros.
struct Stored<S> {
    full: usize,
    middle: Box<[u64]>,
    state: S,
    /// The next stored pair with the same hash (`usize::MAX`: none).
    next: usize,
}

impl<S: Eq> Stored<S> {
    fn matches(&self, set: &Linearized, state: &S) -> bool {
        let words = &set.words;
        let end = self.full + self.middle.len();
        self.state == *state
            && words[..self.full].iter().all(|w| *w == u64::MAX)
            && words[self.full..end] == *self.middle
            && words[end..].iter().all(|w| *w == 0)
    }
}

/// A hasher for keys that are already uniformly distributed hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are u64); fold bytes just in case.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The configurations explored so far.
pub(crate) struct Visited<S> {
    /// Hash of (set, state) to the first stored pair with that hash.
    heads: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    stored: Vec<Stored<S>>,
}

impl<S: Clone + Eq + Hash> Visited<S> {
    /// Nothing explored yet.
    pub(crate) fn new() -> Visited<S> {
        Visited {
            heads: HashMap::default(),
            stored: Vec::new(),
        }
    }

    /// Records (`set`, `state`); false if it was already there.
    pub(crate) fn insert(&mut self, set: &Linearized, state: &S) -> bool {
        // DefaultHasher::new() always uses the same keys: deterministic.
        let mut hasher = DefaultHasher::new();
        state.hash(&mut hasher);
        let hash = set.hash ^ hasher.finish();
        let head = self.heads.get(&hash).copied().unwrap_or(usize::MAX);
        let mut at = head;
        while at != usize::MAX {
            if self.stored[at].matches(set, state) {
                return false;
            }
            at = self.stored[at].next;
        }
        let words = &set.words;
        let full = words.iter().take_while(|w| **w == u64::MAX).count();
        let end = full.max(words.len() - words.iter().rev().take_while(|w| **w == 0).count());
        self.stored.push(Stored {
            full,
            middle: words[full..end].into(),
            state: state.clone(),
            next: head,
        });
        self.heads.insert(hash, self.stored.len() - 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_only_on_the_set_not_the_order() {
        let mut a = Linearized::new(200);
        let mut b = Linearized::new(200);
        for op in [3, 150, 64, 0] {
            a.insert(op);
        }
        for op in [0, 64, 150, 3, 99] {
            b.insert(op);
        }
        b.remove(99);
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.words, b.words);
        a.remove(3);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn a_configuration_is_new_once() {
        let mut visited = Visited::new();
        let mut set = Linearized::new(300);
        assert!(visited.insert(&set, &1u8));
        assert!(!visited.insert(&set, &1u8));
        assert!(visited.insert(&set, &2u8), "same set, different state");
        for op in 0..130 {
            set.insert(op);
        }
        set.insert(250);
        assert!(visited.insert(&set, &1u8));
        assert!(!visited.insert(&set, &1u8));
        set.remove(250);
        assert!(
            visited.insert(&set, &1u8),
            "differs only in the trimmed tail"
        );
        set.remove(5);
        assert!(
            visited.insert(&set, &1u8),
            "differs only in the trimmed prefix"
        );
    }

    #[test]
    fn colliding_hashes_are_told_apart_by_the_full_comparison() {
        let mut visited = Visited::new();
        let set = Linearized::new(10);
        let mut other = Linearized::new(10);
        other.insert(4);
        // Force a collision: make both sets hash alike.
        other.hash = set.hash;
        assert!(visited.insert(&set, &0u8));
        assert!(visited.insert(&other, &0u8));
        assert!(!visited.insert(&other, &0u8));
        assert!(!visited.insert(&set, &0u8));
    }
}
