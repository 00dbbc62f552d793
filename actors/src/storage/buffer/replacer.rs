//! Which frame to evict: Clock or LRU-K. A replacer only ranks frames; the
//! pool tells it, at each choice, which frames may go (unpinned, clean, not
//! part of a checkpoint in flight), so the ranking never has to be updated
//! on every pin and unpin.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

/// A frame's index in the pool.
pub type FrameId = usize;

/// The replacement policy, chosen per node (`--buffer-pool-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Second chance: a sweeping hand clears reference bits and takes the
    /// first frame whose bit is already clear. Cheap: an access only sets a bit.
    Clock,
    /// LRU-2 (O'Neil, O'Neil and Weikum, 1993): evicts the frame whose second
    /// most recent access is oldest, and frames seen only once before all
    /// others, oldest first, so one scan can't flush the hot pages.
    #[default]
    Lru2,
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "clock" => Ok(Policy::Clock),
            "lru-k" | "lru2" | "lru-2" => Ok(Policy::Lru2),
            other => Err(format!(
                "unknown buffer pool policy {other:?}; use lru-k or clock"
            )),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Clock => "clock",
            Policy::Lru2 => "lru-k",
        })
    }
}

/// Ranks frames for eviction.
pub(crate) enum Replacer {
    Clock(Clock),
    LruK(LruK),
}

impl Replacer {
    /// A replacer for `frames` frames.
    pub fn new(policy: Policy, frames: usize) -> Replacer {
        match policy {
            Policy::Clock => Replacer::Clock(Clock::new(frames)),
            Policy::Lru2 => Replacer::LruK(LruK::new(frames)),
        }
    }

    /// Notes an access to `frame`.
    pub fn record_access(&self, frame: FrameId) {
        match self {
            Replacer::Clock(clock) => clock.record_access(frame),
            Replacer::LruK(lru) => lru.record_access(frame),
        }
    }

    /// The frame to evict among those `evictable` allows, if any.
    pub fn victim(&self, evictable: impl Fn(FrameId) -> bool) -> Option<FrameId> {
        match self {
            Replacer::Clock(clock) => clock.victim(evictable),
            Replacer::LruK(lru) => lru.victim(evictable),
        }
    }

    /// Forgets `frame`'s history: it no longer holds a page.
    pub fn remove(&self, frame: FrameId) {
        match self {
            Replacer::Clock(clock) => clock.remove(frame),
            Replacer::LruK(lru) => lru.remove(frame),
        }
    }
}

/// The Clock policy: a reference bit per frame and a hand.
pub(crate) struct Clock {
    referenced: Vec<AtomicBool>,
    holds_page: Vec<AtomicBool>,
    hand: Mutex<usize>,
}

impl Clock {
    fn new(frames: usize) -> Clock {
        Clock {
            referenced: (0..frames).map(|_| AtomicBool::new(false)).collect(),
            holds_page: (0..frames).map(|_| AtomicBool::new(false)).collect(),
            hand: Mutex::new(0),
        }
    }

    fn record_access(&self, frame: FrameId) {
        self.referenced[frame].store(true, Ordering::Relaxed);
        self.holds_page[frame].store(true, Ordering::Relaxed);
    }

    fn victim(&self, evictable: impl Fn(FrameId) -> bool) -> Option<FrameId> {
        let frames = self.referenced.len();
        let mut hand = self.hand.lock();
        // Two sweeps: the first may only clear reference bits.
        for _ in 0..2 * frames {
            let frame = *hand;
            *hand = (*hand + 1) % frames;
            if !self.holds_page[frame].load(Ordering::Relaxed) || !evictable(frame) {
                continue;
            }
            if self.referenced[frame].swap(false, Ordering::Relaxed) {
                continue;
            }
            return Some(frame);
        }
        None
    }

    fn remove(&self, frame: FrameId) {
        self.referenced[frame].store(false, Ordering::Relaxed);
        self.holds_page[frame].store(false, Ordering::Relaxed);
    }
}

/// A frame's LRU-2 rank: (seen twice ? 1 : 0, its second most recent
/// access if seen twice, else its only one). The lowest goes first.
type Rank = (u8, u64);

/// LRU-2 with nothing locked on an access: each frame's last two access
/// times are atomics, and the ordered set of frames is brought up to date
/// only when a victim is chosen. That works because a frame's rank only
/// grows with accesses: the set holds every frame that holds a page at a
/// rank no higher than its current one, so the first entry found current
/// has the lowest current rank of all (any other frame's current rank is at
/// least its entry's, which is at least this one's). Entries found stale
/// are moved to their current rank on the way.
pub(crate) struct LruK {
    clock: AtomicU64,
    /// Each frame's last access (0: it holds no page).
    last: Vec<AtomicU64>,
    /// Each frame's access before the last (0: seen once).
    previous: Vec<AtomicU64>,
    ranked: Mutex<Ranked>,
}

/// The frames in rank order, as of when each was last ranked.
struct Ranked {
    order: BTreeSet<(Rank, FrameId)>,
    /// Each frame's entry in `order`, if it has one.
    entry: Vec<Option<Rank>>,
}

impl LruK {
    fn new(frames: usize) -> LruK {
        LruK {
            clock: AtomicU64::new(0),
            last: (0..frames).map(|_| AtomicU64::new(0)).collect(),
            previous: (0..frames).map(|_| AtomicU64::new(0)).collect(),
            ranked: Mutex::new(Ranked {
                order: BTreeSet::new(),
                entry: vec![None; frames],
            }),
        }
    }

    fn rank(&self, frame: FrameId) -> Option<Rank> {
        let last = self.last[frame].load(Ordering::Acquire);
        if last == 0 {
            return None;
        }
        match self.previous[frame].load(Ordering::Acquire) {
            0 => Some((0, last)),
            previous => Some((1, previous)),
        }
    }

    fn record_access(&self, frame: FrameId) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let before = self.last[frame].swap(now, Ordering::AcqRel);
        if before == 0 {
            // Its first access since it got its page (one thread loads a
            // page into a frame, so this runs once): rank it.
            let mut ranked = self.ranked.lock();
            if let Some(old) = ranked.entry[frame].replace((0, now)) {
                ranked.order.remove(&(old, frame));
            }
            ranked.order.insert(((0, now), frame));
        } else {
            // The maximum, so that two accesses racing can't move it back.
            self.previous[frame].fetch_max(before, Ordering::AcqRel);
        }
    }

    fn victim(&self, evictable: impl Fn(FrameId) -> bool) -> Option<FrameId> {
        let mut ranked = self.ranked.lock();
        let mut after: Option<(Rank, FrameId)> = None;
        // Each entry is passed or moved forward at most once per access
        // made meanwhile; the bound only guards against a frame accessed
        // without pause while this runs.
        for _ in 0..4 * ranked.entry.len() + 16 {
            let next = match after {
                None => ranked.order.first().copied(),
                Some(key) => ranked
                    .order
                    .range((Bound::Excluded(key), Bound::Unbounded))
                    .next()
                    .copied(),
            }?;
            let (stored, frame) = next;
            match self.rank(frame) {
                Some(current) if current == stored => {
                    if evictable(frame) {
                        return Some(frame);
                    }
                    after = Some(next);
                }
                current => {
                    ranked.order.remove(&next);
                    ranked.entry[frame] = current;
                    if let Some(current) = current {
                        ranked.order.insert((current, frame));
                    }
                }
            }
        }
        None
    }

    fn remove(&self, frame: FrameId) {
        let mut ranked = self.ranked.lock();
        if let Some(old) = ranked.entry[frame].take() {
            ranked.order.remove(&(old, frame));
        }
        self.last[frame].store(0, Ordering::Release);
        self.previous[frame].store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: FrameId) -> bool {
        true
    }

    #[test]
    fn lru_k_evicts_once_seen_frames_first_then_the_oldest_second_access() {
        let replacer = Replacer::new(Policy::Lru2, 4);
        // Frames 0 and 1 are hot (twice each), 2 and 3 seen once.
        for frame in [0, 1, 2, 0, 1, 3] {
            replacer.record_access(frame);
        }
        // Once-seen frames go first, oldest first: 2, then 3.
        assert_eq!(replacer.victim(all), Some(2));
        replacer.remove(2);
        assert_eq!(replacer.victim(all), Some(3));
        replacer.remove(3);
        // Among twice-seen frames, the one whose second-last access is
        // oldest: 0 (accesses 1 and 4) before 1 (accesses 2 and 5).
        assert_eq!(replacer.victim(all), Some(0));
        // Another access to 0 moves its second-most-recent access to 4,
        // after 1's (2): now 1 goes first.
        replacer.record_access(0);
        assert_eq!(replacer.victim(all), Some(1));
    }

    #[test]
    fn lru_k_resists_a_scan() {
        let replacer = Replacer::new(Policy::Lru2, 8);
        // Hot frames 0..4 referenced twice; then a scan touches 4..8 once.
        for _ in 0..2 {
            for frame in 0..4 {
                replacer.record_access(frame);
            }
        }
        for frame in 4..8 {
            replacer.record_access(frame);
        }
        // The scan's frames go before any hot one.
        let mut victims = Vec::new();
        while let Some(frame) = replacer.victim(all) {
            victims.push(frame);
            replacer.remove(frame);
        }
        assert_eq!(victims, vec![4, 5, 6, 7, 0, 1, 2, 3]);
    }

    /// A small deterministic generator for the model tests.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// LRU-2 computed from every frame's whole history, the slow way.
    fn model_victim(history: &[Vec<u64>], evictable: impl Fn(FrameId) -> bool) -> Option<FrameId> {
        history
            .iter()
            .enumerate()
            .filter(|(frame, accesses)| !accesses.is_empty() && evictable(*frame))
            .min_by_key(|(frame, accesses)| {
                let n = accesses.len();
                if n >= 2 {
                    (1u8, accesses[n - 2], *frame)
                } else {
                    (0u8, accesses[0], *frame)
                }
            })
            .map(|(frame, _)| frame)
    }

    #[test]
    fn lru_k_chooses_what_the_whole_history_says_on_random_operations() {
        const FRAMES: usize = 32;
        let replacer = Replacer::new(Policy::Lru2, FRAMES);
        let mut history = vec![Vec::new(); FRAMES];
        let mut now = 0;
        let mut state = 0x9E37_79B9_7F4A_7C15;
        for step in 0..50_000 {
            let frame = (next(&mut state) % FRAMES as u64) as usize;
            match next(&mut state) % 10 {
                0..=5 => {
                    now += 1;
                    replacer.record_access(frame);
                    history[frame].push(now);
                }
                6 => {
                    replacer.remove(frame);
                    history[frame].clear();
                }
                _ => {
                    // Some frames may not go (pinned, dirty): a random mask.
                    let mask = next(&mut state);
                    let evictable = |f: FrameId| mask & (1 << f) != 0 || mask.is_multiple_of(3);
                    assert_eq!(
                        replacer.victim(evictable),
                        model_victim(&history, evictable),
                        "step {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn lru_k_ranks_exactly_after_accesses_from_many_threads() {
        const FRAMES: usize = 64;
        let replacer = std::sync::Arc::new(Replacer::new(Policy::Lru2, FRAMES));
        let threads: Vec<_> = (0..4u64)
            .map(|seed| {
                let replacer = replacer.clone();
                std::thread::spawn(move || {
                    let mut state = 0x2545_F491_4F6C_DD1D ^ (seed + 1);
                    for _ in 0..20_000 {
                        replacer.record_access((next(&mut state) % FRAMES as u64) as usize);
                    }
                })
            })
            .collect();
        // Victims chosen meanwhile hold pages.
        for _ in 0..200 {
            if let Some(frame) = replacer.victim(all) {
                assert!(frame < FRAMES);
            }
        }
        for thread in threads {
            thread.join().expect("accessing thread");
        }
        // Afterwards the choices follow the frames' recorded access times
        // exactly, whatever interleaving set them.
        let Replacer::LruK(lru) = &*replacer else {
            panic!("an LRU-2 replacer");
        };
        let mut order: Vec<(Rank, FrameId)> = (0..FRAMES)
            .filter_map(|frame| lru.rank(frame).map(|rank| (rank, frame)))
            .collect();
        order.sort();
        let mut victims = Vec::new();
        while let Some(frame) = replacer.victim(all) {
            victims.push(frame);
            replacer.remove(frame);
        }
        let expected: Vec<FrameId> = order.into_iter().map(|(_, frame)| frame).collect();
        assert_eq!(victims, expected);
    }

    #[test]
    fn clock_gives_a_second_chance_and_skips_what_may_not_go() {
        let replacer = Replacer::new(Policy::Clock, 4);
        for frame in 0..4 {
            replacer.record_access(frame);
        }
        // Every bit set: the first sweep clears them, then frame 0 goes.
        assert_eq!(replacer.victim(all), Some(0));
        replacer.remove(0);
        // Frame 1 is used again: it survives the hand once; 2 goes.
        replacer.record_access(1);
        assert_eq!(replacer.victim(all), Some(2));
        replacer.remove(2);
        // Pinned (not evictable) frames are passed over.
        assert_eq!(replacer.victim(|frame| frame != 3), Some(1));
        // Nothing evictable: no victim.
        assert_eq!(replacer.victim(|_| false), None);
    }

    #[test]
    fn lru_k_skips_frames_that_may_not_go() {
        let replacer = Replacer::new(Policy::Lru2, 3);
        for frame in [0, 1, 2] {
            replacer.record_access(frame);
        }
        assert_eq!(replacer.victim(|frame| frame != 0), Some(1));
        assert_eq!(replacer.victim(|_| false), None);
        assert_eq!("clock".parse::<Policy>(), Ok(Policy::Clock));
        assert_eq!("lru-k".parse::<Policy>(), Ok(Policy::Lru2));
        assert!("random".parse::<Policy>().is_err());
    }
}
