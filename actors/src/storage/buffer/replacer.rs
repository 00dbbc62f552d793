//! Which frame to evict: Clock or LRU-K. A replacer only ranks frames; the
//! pool tells it, at each choice, which frames may go (unpinned, clean, not
//! part of a checkpoint in flight), so the ranking never has to be updated
//! on every pin and unpin.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

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
    LruK(Mutex<LruK>),
}

impl Replacer {
    /// A replacer for `frames` frames.
    pub fn new(policy: Policy, frames: usize) -> Replacer {
        match policy {
            Policy::Clock => Replacer::Clock(Clock::new(frames)),
            Policy::Lru2 => Replacer::LruK(Mutex::new(LruK::new(frames, 2))),
        }
    }

    /// Notes an access to `frame`.
    pub fn record_access(&self, frame: FrameId) {
        match self {
            Replacer::Clock(clock) => clock.record_access(frame),
            Replacer::LruK(lru) => lru.lock().record_access(frame),
        }
    }

    /// The frame to evict among those `evictable` allows, if any.
    pub fn victim(&self, evictable: impl Fn(FrameId) -> bool) -> Option<FrameId> {
        match self {
            Replacer::Clock(clock) => clock.victim(evictable),
            Replacer::LruK(lru) => lru.lock().victim(evictable),
        }
    }

    /// Forgets `frame`'s history: it no longer holds a page.
    pub fn remove(&self, frame: FrameId) {
        match self {
            Replacer::Clock(clock) => clock.remove(frame),
            Replacer::LruK(lru) => lru.lock().remove(frame),
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

/// The LRU-K policy's bookkeeping: each frame's last K access times, and the
/// frames ordered by eviction priority.
pub(crate) struct LruK {
    k: usize,
    now: u64,
    history: Vec<VecDeque<u64>>,
    /// (seen fewer than K times ? 0 : 1, rank time, frame): the first is the
    /// victim. Rank time is the oldest remembered access, which for a frame
    /// seen K times is its K-th most recent.
    order: BTreeSet<(u8, u64, FrameId)>,
}

impl LruK {
    fn new(frames: usize, k: usize) -> LruK {
        LruK {
            k,
            now: 0,
            history: vec![VecDeque::new(); frames],
            order: BTreeSet::new(),
        }
    }

    fn rank(&self, frame: FrameId) -> Option<(u8, u64, FrameId)> {
        let history = &self.history[frame];
        let oldest = *history.front()?;
        Some((u8::from(history.len() >= self.k), oldest, frame))
    }

    fn record_access(&mut self, frame: FrameId) {
        if let Some(rank) = self.rank(frame) {
            self.order.remove(&rank);
        }
        self.now += 1;
        let history = &mut self.history[frame];
        history.push_back(self.now);
        if history.len() > self.k {
            history.pop_front();
        }
        if let Some(rank) = self.rank(frame) {
            self.order.insert(rank);
        }
    }

    fn victim(&mut self, evictable: impl Fn(FrameId) -> bool) -> Option<FrameId> {
        self.order
            .iter()
            .map(|(_, _, frame)| *frame)
            .find(|frame| evictable(*frame))
    }

    fn remove(&mut self, frame: FrameId) {
        if let Some(rank) = self.rank(frame) {
            self.order.remove(&rank);
        }
        self.history[frame].clear();
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
