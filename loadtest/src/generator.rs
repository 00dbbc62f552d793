//! What a YCSB client generates: random numbers, key choices (uniform,
//! zipfian, scrambled zipfian, latest), record keys and values, and the
//! counter of inserted records that the `latest` distribution reads from.
//!
//! The zipfian generator is the one YCSB uses (Gray et al., "Quickly
//! generating billion-record synthetic databases", SIGMOD 1994), so key
//! popularity matches YCSB's for the same parameters.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// YCSB's default skew.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// The item count YCSB's scrambled zipfian draws ranks from before hashing
/// them onto the key space (10^10), so that popularity doesn't depend on the
/// record count.
const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;

/// zeta(10^10, 0.99), as YCSB precomputes it (computing it takes 10^10 steps).
const SCRAMBLED_ZETA: f64 = 26.469_028_201_783_02;

/// A small fast generator (xoshiro256**, seeded by SplitMix64); not for
/// cryptography, only for choosing keys and operations reproducibly.
#[derive(Clone, Debug)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut mix = seed;
        let mut next = || {
            mix = mix.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = mix;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in [0, bound); 0 when `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for load generation, and no division.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// FNV-1a over the 8 bytes of `value`, as YCSB hashes record numbers.
pub fn fnv1a_64(value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// The key of record `number`: `user` and the record number's FNV hash in
/// 20 digits, so records are spread over the key space in hashed order (as
/// YCSB's default `insertorder=hashed`) and every key has the same length.
pub fn record_key(number: u64) -> Vec<u8> {
    format!("user{:020}", fnv1a_64(number)).into_bytes()
}

/// A value of `size_bytes` bytes made of `field_count` fields, laid end to
/// end with no separator: field `i` is bytes `[i * L, (i + 1) * L)` where
/// `L = size_bytes / field_count`, and the last field also takes the
/// remainder. Bytes are printable ASCII (`a`..`z`), so the same value goes
/// as a JSON string over HTTP.
pub fn record_value(rng: &mut Rng, size_bytes: usize, field_count: usize) -> Vec<u8> {
    let field_count = field_count.max(1);
    let field_bytes = size_bytes / field_count;
    let mut value = Vec::with_capacity(size_bytes);
    for field in 0..field_count {
        let length = if field + 1 == field_count {
            size_bytes - field_bytes * (field_count - 1)
        } else {
            field_bytes
        };
        // One random draw per field, stretched: cheap, and fields differ.
        let mut bits = rng.next_u64();
        for _ in 0..length {
            value.push(b'a' + (bits % 26) as u8);
            bits = bits.rotate_left(5) ^ 0x9E37_79B9_7F4A_7C15;
        }
    }
    value
}

/// Sum of 1/i^theta for i in 1..=n.
fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    let mut sum = initial;
    for i in from..to {
        sum += 1.0 / ((i + 1) as f64).powf(theta);
    }
    sum
}

/// Zipfian ranks in [0, n): rank 0 is the most popular, with probability
/// proportional to 1/(rank+1)^theta. The item count may grow between draws
/// (as for `latest`); zeta is then extended incrementally, as YCSB does.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_2: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    /// Ranks over `items` items (at least 1) with skew `theta` (0 < theta < 1).
    pub fn new(items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        Zipfian::with_zeta(items, theta, zeta(0, items, theta, 0.0))
    }

    fn with_zeta(items: u64, theta: f64, zeta_n: f64) -> Zipfian {
        let zeta_2 = zeta(0, 2, theta, 0.0);
        let mut zipfian = Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_2,
            zeta_n,
            eta: 0.0,
        };
        zipfian.eta = zipfian.eta_for(items);
        zipfian
    }

    fn eta_for(&self, items: u64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta_2 / self.zeta_n)
    }

    /// The probability of `rank` among `items` items: 1/((rank+1)^theta * zeta(items)).
    pub fn probability(&self, rank: u64) -> f64 {
        1.0 / (((rank + 1) as f64).powf(self.theta) * self.zeta_n)
    }

    /// A rank in [0, items) over the current item count.
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        self.next_of(rng, self.items)
    }

    /// A rank in [0, items), first growing (or shrinking) the item count to `items`.
    pub fn next_of(&mut self, rng: &mut Rng, items: u64) -> u64 {
        let items = items.max(1);
        if items != self.items {
            self.zeta_n = if items > self.items {
                zeta(self.items, items, self.theta, self.zeta_n)
            } else {
                zeta(0, items, self.theta, 0.0)
            };
            self.items = items;
            self.eta = self.eta_for(items);
        }
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(items - 1);
        }
        let rank = (items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(items - 1)
    }
}

/// YCSB's scrambled zipfian: zipfian ranks over 10^10 items, hashed onto
/// [0, items), so the popular records are scattered over the key space
/// instead of clustered at its start.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    items: u64,
    ranks: Zipfian,
}

impl ScrambledZipfian {
    /// Record numbers in [0, items) with skew theta = 0.99.
    pub fn new(items: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            items: items.max(1),
            ranks: Zipfian::with_zeta(SCRAMBLED_ITEM_COUNT, ZIPFIAN_THETA, SCRAMBLED_ZETA),
        }
    }

    /// A record number in [0, items).
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        fnv1a_64(self.ranks.next(rng)) % self.items
    }
}

/// Counts inserted records. Numbers are handed out in order, but inserts
/// finish out of order; `acknowledged` is the length of the prefix of
/// numbers whose inserts have all finished, which is what reads may pick
/// from (YCSB's acknowledged counter), so `latest` never reads a record
/// still being written.
#[derive(Debug)]
pub struct InsertCounter {
    next: AtomicU64,
    acknowledged: AtomicU64,
    /// Finished numbers above the acknowledged prefix.
    finished_above: Mutex<BTreeSet<u64>>,
}

impl InsertCounter {
    /// A counter whose records `[0, existing)` are already there.
    pub fn new(existing: u64) -> InsertCounter {
        InsertCounter {
            next: AtomicU64::new(existing),
            acknowledged: AtomicU64::new(existing),
            finished_above: Mutex::new(BTreeSet::new()),
        }
    }

    /// The number of the next record to insert.
    pub fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks record `number`'s insert as finished (successfully or not: a
    /// failed insert must not hold the prefix back forever).
    pub fn finish(&self, number: u64) {
        let Ok(mut above) = self.finished_above.lock() else {
            return;
        };
        above.insert(number);
        let mut prefix = self.acknowledged.load(Ordering::Acquire);
        while above.remove(&prefix) {
            prefix += 1;
        }
        self.acknowledged.store(prefix, Ordering::Release);
    }

    /// How many records reads may choose from.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }
}

/// How a workload picks which existing record an operation touches.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Every record alike.
    Uniform,
    /// YCSB's scrambled zipfian over the records loaded.
    Zipfian(ScrambledZipfian),
    /// The most recently inserted records are the most popular: zipfian
    /// ranks counted back from the newest acknowledged record.
    Latest(Zipfian),
}

impl KeyChooser {
    /// A record number in [0, acknowledged): uniform and latest choose
    /// among every acknowledged record, zipfian among those loaded (as
    /// YCSB, whose zipfian key space is fixed when the run starts).
    pub fn next(&mut self, rng: &mut Rng, acknowledged: u64) -> u64 {
        match self {
            KeyChooser::Uniform => rng.below(acknowledged.max(1)),
            KeyChooser::Zipfian(zipfian) => zipfian.next(rng) % acknowledged.max(1),
            KeyChooser::Latest(zipfian) => {
                let newest = acknowledged.max(1);
                newest - 1 - zipfian.next_of(rng, newest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws from the plain zipfian match the zipf pmf for the top ranks.
    #[test]
    fn zipfian_top_ranks_follow_the_pmf() {
        let items = 1000;
        let mut zipfian = Zipfian::new(items, ZIPFIAN_THETA);
        let mut rng = Rng::new(7);
        let draws = 400_000;
        let mut counts = vec![0u64; items as usize];
        for _ in 0..draws {
            let rank = zipfian.next(&mut rng);
            assert!(rank < items, "rank {rank} out of range");
            counts[rank as usize] += 1;
        }
        for rank in 0..10u64 {
            let expected = zipfian.probability(rank);
            let observed = counts[rank as usize] as f64 / draws as f64;
            // Gray's method is exact for ranks 0 and 1 and approximate after;
            // YCSB accepts the same approximation.
            let tolerance = if rank < 2 { 0.05 } else { 0.25 };
            assert!(
                (observed - expected).abs() <= expected * tolerance,
                "rank {rank}: observed {observed:.5}, pmf {expected:.5}"
            );
        }
        // Skew: the top 10% of ranks take most draws (about 70% for theta 0.99).
        let top: u64 = counts[..100].iter().sum();
        let share = top as f64 / draws as f64;
        assert!((0.6..0.8).contains(&share), "top 10% share {share}");
    }

    /// The scrambled zipfian keeps zipf popularity (sorted frequencies
    /// match the pmf over 10^10 items) but scatters the popular records.
    #[test]
    fn scrambled_zipfian_keeps_popularity_and_scatters_it() {
        let records = 100_000;
        let mut chooser = ScrambledZipfian::new(records);
        let mut rng = Rng::new(11);
        let draws = 400_000;
        let mut counts = std::collections::HashMap::<u64, u64>::new();
        for _ in 0..draws {
            let record = chooser.next(&mut rng);
            assert!(record < records);
            *counts.entry(record).or_default() += 1;
        }
        let mut sorted: Vec<(u64, u64)> = counts.into_iter().collect();
        sorted.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let pmf_0 = 1.0 / SCRAMBLED_ZETA;
        let observed_0 = sorted[0].1 as f64 / draws as f64;
        assert!(
            (observed_0 - pmf_0).abs() < pmf_0 * 0.05,
            "most popular record: observed {observed_0:.5}, pmf {pmf_0:.5}"
        );
        let pmf_1 = 1.0 / (2f64.powf(ZIPFIAN_THETA) * SCRAMBLED_ZETA);
        let observed_1 = sorted[1].1 as f64 / draws as f64;
        assert!(
            (observed_1 - pmf_1).abs() < pmf_1 * 0.05,
            "second record: observed {observed_1:.5}, pmf {pmf_1:.5}"
        );
        // Scattered: the ten most popular records are not the first ten numbers.
        let first_ten = sorted[..10].iter().filter(|(r, _)| *r < 10).count();
        assert!(first_ten < 3, "popular records clustered at the start");
    }

    /// `latest` favours the newest records, and follows the inserts.
    #[test]
    fn latest_favours_recent_records() {
        let mut chooser = KeyChooser::Latest(Zipfian::new(1000, ZIPFIAN_THETA));
        let mut rng = Rng::new(3);
        let draws = 200_000;
        let mut newest = 0u64;
        let mut newest_ten = 0u64;
        let mut oldest_half = 0u64;
        for _ in 0..draws {
            let record = chooser.next(&mut rng, 1000);
            assert!(record < 1000);
            newest += u64::from(record == 999);
            newest_ten += u64::from(record >= 990);
            oldest_half += u64::from(record < 500);
        }
        let zipf = Zipfian::new(1000, ZIPFIAN_THETA);
        let expected_newest = zipf.probability(0);
        let observed_newest = newest as f64 / draws as f64;
        assert!(
            (observed_newest - expected_newest).abs() < expected_newest * 0.05,
            "newest record: {observed_newest:.4}, pmf {expected_newest:.4}"
        );
        assert!(newest_ten > oldest_half, "{newest_ten} vs {oldest_half}");

        // After 500 more inserts the newest record is the popular one.
        let mut hits = 0;
        for _ in 0..10_000 {
            hits += u64::from(chooser.next(&mut rng, 1500) == 1499);
        }
        let expected = Zipfian::new(1500, ZIPFIAN_THETA).probability(0);
        let observed = hits as f64 / 10_000.0;
        assert!(
            (observed - expected).abs() < expected * 0.15,
            "{observed} vs {expected}"
        );
    }

    /// Uniform spreads evenly.
    #[test]
    fn uniform_is_flat() {
        let mut chooser = KeyChooser::Uniform;
        let mut rng = Rng::new(5);
        let mut counts = [0u64; 10];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng, 10) as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
    }

    /// The acknowledged prefix only moves over finished inserts.
    #[test]
    fn insert_counter_acknowledges_a_finished_prefix() {
        let counter = InsertCounter::new(10);
        let a = counter.allocate();
        let b = counter.allocate();
        let c = counter.allocate();
        assert_eq!((a, b, c), (10, 11, 12));
        counter.finish(b);
        assert_eq!(counter.acknowledged(), 10);
        counter.finish(a);
        assert_eq!(counter.acknowledged(), 12);
        counter.finish(c);
        assert_eq!(counter.acknowledged(), 13);
    }

    /// Values have the requested size, fields and alphabet.
    #[test]
    fn values_have_their_layout() {
        let mut rng = Rng::new(1);
        let value = record_value(&mut rng, 103, 10);
        assert_eq!(value.len(), 103);
        assert!(value.iter().all(u8::is_ascii_lowercase));
        assert_eq!(record_value(&mut rng, 0, 10).len(), 0);
        assert_eq!(record_key(1).len(), 24);
        assert_ne!(record_key(1), record_key(2));
    }
}
