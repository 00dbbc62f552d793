//! The in-memory Raft log: a snapshot point followed by entries, with the
//! commit, applied and stable (persisted) marks. The caller's WAL holds the
//! durable copy; this is what the core reasons about. Compaction keeps it bounded.

use super::types::{Configuration, Entry, EntryPayload, SnapshotMeta};

/// Entries after a snapshot point, and how far they are committed, applied and persisted.
#[derive(Clone, Debug)]
pub(crate) struct RaftLog {
    /// The compaction point: everything up to `snapshot.index` is in the snapshot.
    pub snapshot: SnapshotMeta,
    /// `entries[i].index == snapshot.index + 1 + i`.
    entries: Vec<Entry>,
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
}

impl RaftLog {
    /// A log starting after `snapshot` with `entries` (all persisted).
    pub fn new(snapshot: SnapshotMeta, entries: Vec<Entry>, committed: u64) -> Self {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot.index + 1 + offset as u64,
                "log entries are not contiguous"
            );
        }
        let last = snapshot.index + entries.len() as u64;
        let applied = snapshot.index;
        RaftLog {
            committed: committed.max(snapshot.index).min(last),
            applied,
            stable: last,
            snapshot,
            entries,
        }
    }

    /// Highest index known committed.
    pub fn committed(&self) -> u64 {
        self.committed
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
    }

    /// First index still held as an entry.
    pub fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// Index of the last entry (the snapshot's index if there are none).
    pub fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// Term at `index`, or `None` if it is compacted away or past the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        self.entries.get((index - self.snapshot.index - 1) as usize)
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
        self.entries.push(entry);
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
                        return Some((self.committed, removed));
                    }
                    let keep = (entry.index - self.snapshot.index - 1) as usize;
                    removed.extend(self.entries.drain(keep..));
                    self.stable = self.stable.min(entry.index - 1);
                    self.entries.push(entry);
                }
                None => self.entries.push(entry),
            }
        }
        Some((last_new, removed))
    }

    /// The fast back-off hint for a rejected append at `prev_index`: the
    /// index the leader should try next and the conflicting term (0 if the
    /// follower's log is just shorter).
    pub fn conflict_hint(&self, prev_index: u64) -> (u64, u64) {
        if prev_index > self.last_index() {
            return (self.last_index() + 1, 0);
        }
        let conflict_term = self.term(prev_index).unwrap_or(0);
        let mut index = prev_index;
        while index > self.first_index() && self.term(index - 1) == Some(conflict_term) {
            index -= 1;
        }
        (index, conflict_term)
    }

    /// Last index whose term is `term`, if this log has one.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.term == term)
            .map(|e| e.index)
    }

    /// Entries in `from..=to`, at most `count_max` of them and about
    /// `size_max_bytes` (always at least one if the range is not empty).
    pub fn slice(&self, from: u64, to: u64, count_max: usize, size_max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut size = 0usize;
        let mut index = from.max(self.first_index());
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

    /// Entries not yet persisted.
    pub fn unstable(&self) -> &[Entry] {
        let from = (self.stable.max(self.snapshot.index) - self.snapshot.index) as usize;
        &self.entries[from.min(self.entries.len())..]
    }

    /// Drops entries up to `index` (which must be applied), keeping its term
    /// and the configuration in force there as the new snapshot point.
    pub fn compact(&mut self, index: u64, config: Configuration) {
        assert!(index <= self.applied, "compacting past the applied index");
        if index <= self.snapshot.index {
            return;
        }
        let term = self.term(index).expect("an applied index has a term");
        let drop = (index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
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
            let drop = (meta.index - self.snapshot.index) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
            Vec::new()
        } else {
            std::mem::take(&mut self.entries)
        };
        self.committed = self.committed.max(meta.index);
        self.applied = meta.index;
        self.stable = meta.index;
        self.snapshot = meta;
        removed
    }

    /// The configuration in force: the last one in the log, or the snapshot's.
    pub fn config(&self) -> (u64, Configuration) {
        self.entries
            .iter()
            .rev()
            .find_map(|e| match &e.payload {
                EntryPayload::Config(config) => Some((e.index, config.clone())),
                _ => None,
            })
            .unwrap_or_else(|| (self.snapshot.index, self.snapshot.config.clone()))
    }

    /// The configuration in force at `index` (for snapshots).
    pub fn config_at(&self, index: u64) -> Configuration {
        self.entries
            .iter()
            .rev()
            .filter(|e| e.index <= index)
            .find_map(|e| match &e.payload {
                EntryPayload::Config(config) => Some(config.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.snapshot.config.clone())
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
        let mut log = RaftLog::new(SnapshotMeta::default(), entries, 0);
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
