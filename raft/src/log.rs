//! The in-memory Raft log: a snapshot point followed by entries, with the
//! commit, applied and stable (persisted) marks. The caller's WAL holds the
//! durable copy; this is what the core reasons about. Compaction keeps it
//! bounded in entries; the cache bound keeps it bounded in bytes between
//! compactions: entries the caller has applied and persisted leave memory
//! oldest first once the cached bytes pass the bound, and only their terms
//! (as runs) and configurations stay. A leader that must send evicted
//! entries asks the caller to read them back (`Ready::log_reads`).

use std::collections::VecDeque;

use super::types::{Configuration, Entry, EntryPayload, SnapshotMeta};

/// Entries after a snapshot point, and how far they are committed, applied and persisted.
#[derive(Clone, Debug)]
pub(crate) struct RaftLog {
    /// The compaction point: everything up to `snapshot.index` is in the snapshot.
    pub snapshot: SnapshotMeta,
    /// The entries held in memory: `entries[i].index == cache_first + i`,
    /// up to the last index. Those from `snapshot.index + 1` to
    /// `cache_first - 1` were evicted: applied, persisted, and readable
    /// from the caller's log.
    entries: VecDeque<Entry>,
    /// Index of the first entry held in memory (`last_index() + 1` when none is).
    cache_first: u64,
    /// Sum of `size_bytes` of the entries held.
    cached_bytes: usize,
    /// Above this many cached bytes, evictable entries leave memory.
    cache_max_bytes: usize,
    /// The term of every entry after the snapshot, as runs: `(first index,
    /// term)`, first indexes rising, neighbours of different terms; a run
    /// lasts until the next one starts (the last until the last index).
    /// A few words per leader change, so terms outlive eviction.
    terms: Vec<(u64, u64)>,
    /// Every configuration entry after the snapshot, by index (they are few
    /// and must outlive eviction: the configuration in force is read from them).
    configs: Vec<(u64, Configuration)>,
    /// Highest index known committed: only grows, never past the last
    /// index ([`RaftLog::commit_to`]).
    committed: u64,
    /// Highest index handed to the caller to apply: only grows, never past
    /// what is committed and persisted ([`RaftLog::applied_to`]).
    applied: u64,
    /// Highest index the caller has persisted: grows as readies are
    /// persisted ([`RaftLog::stable_to`]), and falls back only when a
    /// conflicting suffix is cut off.
    stable: u64,
    /// Highest index the caller says its state machine applied, so it no
    /// longer needs the entry from this log ([`RaftLog::release_to`]).
    released: u64,
    /// Appends refused because they conflicted with an entry committed
    /// here: evidence that a committed entry was lost somewhere.
    committed_conflicts: u64,
}

impl RaftLog {
    /// A log starting after `snapshot` with `entries` (all persisted),
    /// holding at most about `cache_max_bytes` of entries the caller has
    /// released.
    pub fn new(
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
        committed: u64,
        cache_max_bytes: usize,
    ) -> Self {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot.index + 1 + offset as u64,
                "log entries are not contiguous"
            );
        }
        let last = snapshot.index + entries.len() as u64;
        let applied = snapshot.index;
        let mut log = RaftLog {
            committed: committed.max(snapshot.index).min(last),
            applied,
            stable: last,
            released: snapshot.index,
            committed_conflicts: 0,
            cache_first: snapshot.index + 1,
            cached_bytes: 0,
            cache_max_bytes,
            terms: Vec::new(),
            configs: Vec::new(),
            entries: VecDeque::with_capacity(entries.len()),
            snapshot,
        };
        for entry in entries {
            log.push(entry);
        }
        log
    }

    /// Highest index known committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Appends refused because they conflicted with a committed entry.
    pub fn committed_conflicts(&self) -> u64 {
        self.committed_conflicts
    }

    /// Counts an append refused for conflicting with a committed entry.
    pub fn note_committed_conflict(&mut self) {
        self.committed_conflicts += 1;
    }

    /// Highest index handed to the caller to apply.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Highest index the caller has persisted.
    pub fn stable(&self) -> u64 {
        self.stable
    }

    /// Moves the commit index up to `index` (etcd raft's `commitTo`). A
    /// commit index that went back, or past the log, would apply entries
    /// twice or apply ones that don't exist: both stop the program.
    pub fn commit_to(&mut self, index: u64) {
        assert!(
            index >= self.committed,
            "commit index moved back from {} to {index}",
            self.committed
        );
        assert!(
            index <= self.last_index(),
            "commit index {index} is past the last index {}",
            self.last_index()
        );
        self.committed = index;
    }

    /// Records that entries up to `index` were handed out to apply
    /// (etcd raft's `appliedTo`): only forward, and never past what is
    /// committed and persisted (a node applies only what its own disk has).
    pub fn applied_to(&mut self, index: u64) {
        assert!(
            index >= self.applied,
            "applied index moved back from {} to {index}",
            self.applied
        );
        assert!(
            index <= self.committed.min(self.stable),
            "applying up to {index}, past the commit index {} or the persisted index {}",
            self.committed,
            self.stable
        );
        // Nothing more becomes evictable: the released mark is at most the
        // applied one before this call.
        self.applied = index;
    }

    /// Records that entries up to `index` are persisted: only forward, and
    /// never past the last index.
    pub fn stable_to(&mut self, index: u64) {
        assert!(
            index >= self.stable,
            "persisted index moved back from {} to {index}",
            self.stable
        );
        assert!(
            index <= self.last_index(),
            "persisted index {index} is past the last index {}",
            self.last_index()
        );
        self.stable = index;
        self.evict();
    }

    /// Records that the caller's state machine has applied entries up to
    /// `index` and reads them from its own log from now on: they may leave
    /// memory. Only forward; an index past what was handed out to apply
    /// counts only up to that.
    pub fn release_to(&mut self, index: u64) {
        self.released = self.released.max(index.min(self.applied));
        self.evict();
    }

    /// Drops the oldest cached entries while the cache is over its bound
    /// and they are applied by the caller and persisted. Committed entries
    /// never change, so what is evicted is exactly what the caller's log
    /// holds at those indexes.
    fn evict(&mut self) {
        let evictable = self.released.min(self.applied).min(self.stable);
        while self.cached_bytes > self.cache_max_bytes {
            match self.entries.front() {
                Some(front) if front.index <= evictable => {
                    self.cached_bytes -= front.size_bytes();
                    self.entries.pop_front();
                    self.cache_first += 1;
                }
                _ => break,
            }
        }
    }

    /// First index still held as an entry, in memory or in the caller's log.
    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// First index held in memory; entries from `first_index()` up to this
    /// one (not included) must be read from the caller's log.
    pub fn cache_first(&self) -> u64 {
        self.cache_first
    }

    /// Bytes of entries held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Index of the last entry (the snapshot's index if there are none).
    pub fn last_index(&self) -> u64 {
        self.cache_first + self.entries.len() as u64 - 1
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.terms
            .last()
            .map_or(self.snapshot.term, |(_, term)| *term)
    }

    /// Term at `index`, or `None` if it is compacted away or past the end.
    /// Evicted entries still have a term.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index <= self.snapshot.index || index > self.last_index() {
            return None;
        }
        let run = self.terms.partition_point(|(first, _)| *first <= index);
        run.checked_sub(1).map(|run| self.terms[run].1)
    }

    /// The entry at `index`, if held in memory.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index < self.cache_first {
            return None;
        }
        self.entries.get((index - self.cache_first) as usize)
    }

    /// Whether this log has an entry `(index, term)`. Indexes inside the
    /// snapshot match: they are committed, and committed entries are the
    /// same on every node.
    pub fn matches(&self, index: u64, term: u64) -> bool {
        index < self.snapshot.index || self.term(index) == Some(term)
    }

    /// Whether a candidate's log is at least as up to date as this one (Raft §5.4.1).
    // The mutation-test build skips this check on purpose (see election.rs).
    #[cfg_attr(feature = "mutation-vote-stale-log", allow(dead_code))]
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries created by this node as leader.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "leader appended out of order"
        );
        self.push(entry);
        self.evict();
    }

    /// Adds the entry after the last one, keeping the term runs, the
    /// configurations and the byte count.
    fn push(&mut self, entry: Entry) {
        if self.terms.last().map(|(_, term)| *term) != Some(entry.term) {
            self.terms.push((entry.index, entry.term));
        }
        if let EntryPayload::Config(config) = &entry.payload {
            self.configs.push((entry.index, config.clone()));
        }
        self.cached_bytes += entry.size_bytes();
        self.entries.push_back(entry);
    }

    /// Removes the entries from `index` on (none of them evicted: only
    /// entries past the commit index are ever replaced) and returns them.
    fn truncate_from(&mut self, index: u64) -> Vec<Entry> {
        assert!(
            index >= self.cache_first,
            "cutting the log at {index}, below the first entry in memory {}",
            self.cache_first
        );
        let keep = (index - self.cache_first) as usize;
        let removed: Vec<Entry> = self.entries.drain(keep.min(self.entries.len())..).collect();
        self.cached_bytes -= removed.iter().map(Entry::size_bytes).sum::<usize>();
        self.terms.retain(|(first, _)| *first < index);
        self.configs.retain(|(at, _)| *at < index);
        removed
    }

    /// Removes everything up to `index` from the front (compaction or an
    /// installed snapshot); the caller sets the new snapshot point.
    fn drop_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            if let Some(entry) = self.entries.pop_front() {
                self.cached_bytes -= entry.size_bytes();
            }
        }
        self.cache_first = self.cache_first.max(index + 1);
        // Runs that start at or below `index` go, except the one that
        // goes on past it: that one now starts at `index + 1`.
        let run = self.terms.partition_point(|(first, _)| *first <= index);
        let next_starts_after = self.terms.get(run).map(|(first, _)| *first) == Some(index + 1);
        if run > 0 && index < self.last_index() && !next_starts_after {
            self.terms[run - 1].0 = index + 1;
            self.terms.drain(..run - 1);
        } else {
            self.terms.drain(..run);
        }
        self.configs.retain(|(at, _)| *at > index);
    }

    /// Follower side of AppendEntries: if `(prev_index, prev_term)` matches,
    /// truncate any conflicting suffix and append what is new. Returns the
    /// index of the last entry of the message and the entries removed by
    /// truncation, or `None` on mismatch.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
    ) -> Option<(u64, Vec<Entry>)> {
        if !self.matches(prev_index, prev_term) {
            return None;
        }
        // A peer's entries must follow `prev_index` one by one; anything else
        // is a broken or hostile message and changes nothing.
        let contiguous = entries
            .iter()
            .enumerate()
            .all(|(i, e)| Some(e.index) == prev_index.checked_add(1 + i as u64));
        if !contiguous {
            return Some((self.last_index().min(prev_index), Vec::new()));
        }
        let last_new = prev_index + entries.len() as u64;
        let mut removed = Vec::new();
        for entry in entries {
            if entry.index <= self.snapshot.index {
                continue;
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // A conflict: everything from here on is replaced. A
                    // committed entry can never conflict (Log Matching), so a
                    // message that claims otherwise is refused unapplied.
                    if entry.index <= self.committed {
                        self.note_committed_conflict();
                        return Some((self.committed, removed));
                    }
                    removed.extend(self.truncate_from(entry.index));
                    self.stable = self.stable.min(entry.index - 1);
                    self.push(entry);
                }
                None => self.push(entry),
            }
        }
        self.evict();
        Some((last_new, removed))
    }

    /// The fast back-off hint for a rejected append at `prev_index`: the
    /// index the leader should try next and the conflicting term (0 if the
    /// follower's log is just shorter).
    pub fn conflict_hint(&self, prev_index: u64) -> (u64, u64) {
        if prev_index > self.last_index() {
            return (self.last_index() + 1, 0);
        }
        let Some(conflict_term) = self.term(prev_index) else {
            return (prev_index, 0);
        };
        if prev_index <= self.first_index() {
            return (prev_index, conflict_term);
        }
        // The first index of the run of `conflict_term` holding `prev_index`.
        let run = self
            .terms
            .partition_point(|(first, _)| *first <= prev_index);
        let run_first = run
            .checked_sub(1)
            .map_or(self.first_index(), |run| self.terms[run].0);
        (run_first.max(self.first_index()), conflict_term)
    }

    /// Last index whose term is `term`, if this log has one.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        let run = self.terms.iter().rposition(|(_, t)| *t == term)?;
        Some(
            self.terms
                .get(run + 1)
                .map_or(self.last_index(), |(next_first, _)| next_first - 1),
        )
    }

    /// Entries in `from..=to` held in memory, at most `count_max` of them
    /// and about `size_max_bytes` (always at least one if the range is not
    /// empty). Starts at `cache_first()` at the earliest: the caller checks
    /// whether it needs evicted entries first.
    pub fn slice(&self, from: u64, to: u64, count_max: usize, size_max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut size = 0usize;
        let mut index = from.max(self.cache_first);
        while index <= to.min(self.last_index()) && out.len() < count_max {
            let Some(entry) = self.entry(index) else {
                break;
            };
            size += entry.size_bytes();
            if !out.is_empty() && size > size_max_bytes {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// Entries not yet persisted (never evicted: only persisted entries are).
    pub fn unstable(&self) -> impl Iterator<Item = &Entry> {
        let from = (self.stable + 1).saturating_sub(self.cache_first) as usize;
        self.entries.range(from.min(self.entries.len())..)
    }

    /// Drops entries up to `index` (which must be applied), keeping its term
    /// and the configuration in force there as the new snapshot point.
    pub fn compact(&mut self, index: u64, config: Configuration) {
        assert!(index <= self.applied, "compacting past the applied index");
        if index <= self.snapshot.index {
            return;
        }
        let term = self.term(index).expect("an applied index has a term");
        self.drop_through(index);
        self.snapshot = SnapshotMeta {
            index,
            term,
            config,
        };
    }

    /// Replaces the log up to `meta.index` with a snapshot received from the
    /// leader. If this log has the snapshot's last entry, the entries after
    /// it are kept (Raft Figure 13); otherwise the whole log goes. Either way
    /// the kept entries count as unpersisted again, so the caller rewrites
    /// them after the snapshot. Returns the entries that were discarded.
    pub fn restore(&mut self, meta: SnapshotMeta) -> Vec<Entry> {
        let removed = if self.term(meta.index) == Some(meta.term) {
            // Entries after the snapshot are rewritten by the caller, so
            // none of them may be evicted: they are all past the commit
            // index or re-read below.
            self.drop_through(meta.index);
            Vec::new()
        } else {
            let first = self.cache_first;
            let removed = self.truncate_from(first);
            self.terms.clear();
            self.configs.clear();
            self.cache_first = meta.index + 1;
            removed
        };
        self.committed = self.committed.max(meta.index);
        self.applied = meta.index;
        self.stable = meta.index;
        self.released = meta.index;
        self.snapshot = meta;
        removed
    }

    /// The configuration in force: the last one in the log, or the snapshot's.
    pub fn config(&self) -> (u64, Configuration) {
        self.configs
            .last()
            .cloned()
            .unwrap_or_else(|| (self.snapshot.index, self.snapshot.config.clone()))
    }

    /// The configuration in force at `index` (for snapshots).
    pub fn config_at(&self, index: u64) -> Configuration {
        self.configs
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or_else(|| self.snapshot.config.clone(), |(_, c)| c.clone())
    }
}

#[cfg(test)]
mod mark_tests {
    use super::*;
    use crate::types::EntryPayload;

    fn log_of(count: u64) -> RaftLog {
        let entries = (1..=count)
            .map(|index| Entry {
                term: 1,
                index,
                payload: EntryPayload::Noop,
            })
            .collect();
        let mut log = RaftLog::new(SnapshotMeta::default(), entries, 0, usize::MAX);
        log.commit_to(2);
        log.applied_to(1);
        log
    }

    #[test]
    fn marks_move_forward_within_the_log() {
        let mut log = log_of(3);
        log.commit_to(3);
        log.applied_to(3);
        assert_eq!((log.committed(), log.applied(), log.stable()), (3, 3, 3));
    }

    #[test]
    #[should_panic(expected = "commit index moved back")]
    fn the_commit_index_never_moves_back() {
        log_of(3).commit_to(1);
    }

    #[test]
    #[should_panic(expected = "past the last index")]
    fn nothing_commits_past_the_log() {
        log_of(3).commit_to(4);
    }

    #[test]
    #[should_panic(expected = "past the commit index")]
    fn nothing_applies_past_the_commit_index() {
        log_of(3).applied_to(3);
    }

    #[test]
    #[should_panic(expected = "applied index moved back")]
    fn the_applied_index_never_moves_back() {
        log_of(3).applied_to(0);
    }

    #[test]
    #[should_panic(expected = "persisted index")]
    fn nothing_is_persisted_past_the_log() {
        log_of(3).stable_to(4);
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::types::EntryPayload;

    /// xorshift64*: seeded, the same everywhere.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
        }
    }

    fn entry(index: u64, term: u64, rng: &mut Rng) -> Entry {
        let payload = match rng.below(10) {
            0 => EntryPayload::Config(Configuration::with_voters([1, 2, index])),
            1 => EntryPayload::Noop,
            _ => EntryPayload::Command(vec![7; rng.below(40) as usize]),
        };
        Entry {
            term,
            index,
            payload,
        }
    }

    /// The log with every entry kept in a plain vector, and what the cached
    /// log must answer from it: terms, configurations, hints.
    struct Model {
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
    }

    impl Model {
        fn term(&self, index: u64) -> Option<u64> {
            if index == self.snapshot.index {
                return Some(self.snapshot.term);
            }
            let position = index.checked_sub(self.snapshot.index + 1)?;
            self.entries.get(position as usize).map(|e| e.term)
        }

        fn last_index(&self) -> u64 {
            self.snapshot.index + self.entries.len() as u64
        }

        fn conflict_hint(&self, prev_index: u64) -> (u64, u64) {
            if prev_index > self.last_index() {
                return (self.last_index() + 1, 0);
            }
            let conflict_term = self.term(prev_index).unwrap_or(0);
            let mut index = prev_index;
            while index > self.snapshot.index + 1 && self.term(index - 1) == Some(conflict_term) {
                index -= 1;
            }
            (index, conflict_term)
        }

        fn config_at(&self, index: u64) -> Configuration {
            self.entries
                .iter()
                .rev()
                .filter(|e| e.index <= index)
                .find_map(|e| match &e.payload {
                    EntryPayload::Config(c) => Some(c.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| self.snapshot.config.clone())
        }
    }

    /// Random appends (terms rising now and then), conflicting suffixes
    /// replaced, commits, applies, releases and compactions: after each,
    /// the cached log agrees with the model on every question it answers,
    /// holds in memory only what it may, and stays within its byte bound
    /// when what it holds is evictable.
    #[test]
    fn a_cached_log_answers_as_one_holding_every_entry() {
        const CACHE_MAX_BYTES: usize = 300;
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut log = RaftLog::new(SnapshotMeta::default(), Vec::new(), 0, CACHE_MAX_BYTES);
            let mut model = Model {
                snapshot: SnapshotMeta::default(),
                entries: Vec::new(),
            };
            let mut term = 1;
            for _ in 0..400 {
                match rng.below(10) {
                    0..=3 => {
                        if rng.below(8) == 0 {
                            term += 1;
                        }
                        let e = entry(log.last_index() + 1, term, &mut rng);
                        model.entries.push(e.clone());
                        log.append(e);
                    }
                    4 => {
                        // A new leader's entries replacing an uncommitted suffix.
                        let from = log.committed() + 1 + rng.below(3);
                        let prev = from - 1;
                        let Some(prev_term) = log.term(prev) else {
                            continue;
                        };
                        term += 1;
                        let new: Vec<Entry> = (from..from + 1 + rng.below(4))
                            .map(|index| entry(index, term, &mut rng))
                            .collect();
                        if log.maybe_append(prev, prev_term, new.clone()).is_none() {
                            continue;
                        }
                        let keep = (from - model.snapshot.index - 1) as usize;
                        model.entries.truncate(keep);
                        model.entries.extend(new);
                    }
                    5 => log.stable_to(log.last_index().max(log.stable())),
                    6 => {
                        let to = log.committed() + rng.below(4);
                        log.commit_to(to.min(log.last_index()));
                    }
                    7 => {
                        let to = log.committed().min(log.stable());
                        log.applied_to(to.max(log.applied()));
                    }
                    8 => log.release_to(log.applied()),
                    _ => {
                        if rng.below(4) == 0 && log.applied() > log.snapshot.index {
                            let index = log.snapshot.index
                                + 1
                                + rng.below(log.applied() - log.snapshot.index);
                            let config = log.config_at(index);
                            assert_eq!(
                                config,
                                model.config_at(index),
                                "seed {seed}: config at {index}"
                            );
                            log.compact(index, config.clone());
                            let drop = (index - model.snapshot.index) as usize;
                            model.entries.drain(..drop);
                            model.snapshot = SnapshotMeta {
                                index,
                                term: log.snapshot.term,
                                config,
                            };
                        }
                    }
                }
                assert_eq!(log.last_index(), model.last_index(), "seed {seed}");
                assert_eq!(
                    log.last_term(),
                    model.term(model.last_index()).unwrap_or(0),
                    "seed {seed}"
                );
                for index in model.snapshot.index.saturating_sub(1)..=model.last_index() + 1 {
                    assert_eq!(
                        log.term(index),
                        model.term(index),
                        "seed {seed}: term of {index}"
                    );
                    assert_eq!(
                        log.conflict_hint(index),
                        model.conflict_hint(index),
                        "seed {seed}: hint at {index}"
                    );
                    assert_eq!(log.config_at(index), model.config_at(index), "seed {seed}");
                    match log.entry(index) {
                        Some(held) => assert_eq!(
                            Some(held),
                            model
                                .entries
                                .get((index - model.snapshot.index - 1) as usize)
                        ),
                        None => assert!(
                            index < log.cache_first() || index > log.last_index(),
                            "seed {seed}: entry {index} missing from memory"
                        ),
                    }
                }
                for t in 1..=term {
                    let expected = model
                        .entries
                        .iter()
                        .rev()
                        .find(|e| e.term == t)
                        .map(|e| e.index);
                    assert_eq!(
                        log.last_index_of_term(t),
                        expected,
                        "seed {seed}: last of term {t}"
                    );
                }
                // Only entries applied, persisted and released leave memory.
                // (Compaction drops entries too: up to the snapshot point.)
                let evictable = log
                    .released
                    .min(log.applied())
                    .min(log.stable())
                    .max(log.snapshot.index);
                assert!(
                    log.cache_first() <= evictable + 1,
                    "seed {seed}: entry {} evicted past the evictable {evictable}",
                    log.cache_first() - 1
                );
                let held: usize = (log.cache_first()..=log.last_index())
                    .filter_map(|i| log.entry(i))
                    .map(Entry::size_bytes)
                    .sum();
                assert_eq!(held, log.cached_bytes(), "seed {seed}: byte count");
                if log.cache_first() <= evictable {
                    assert!(
                        log.cached_bytes() <= CACHE_MAX_BYTES,
                        "seed {seed}: {} bytes held with entry {} evictable",
                        log.cached_bytes(),
                        log.cache_first()
                    );
                }
                let unstable_first = log.unstable().next().map(|e| e.index);
                assert_eq!(
                    unstable_first,
                    (log.stable() < log.last_index()).then(|| log.stable() + 1),
                    "seed {seed}"
                );
            }
        }
    }
}
