//! The Raft log kept in the node's WAL. Not part of the pure core: this is
//! the bridge between the core's persistence contract (`Ready`) and WAL
//! records, used by whatever drives the core.
//!
//! - Each entry is an `Entry` record at its index; payload = MessagePack of
//!   `(term, EntryPayload)`.
//! - Replacing a conflicting suffix writes a `Truncate` record at the first
//!   replaced index, then the new entries.
//! - The hard state is a `HardState` record positioned after the last entry;
//!   payload = term, vote, commit as three little-endian u64.
//! - A snapshot (the log compacted up to an index, or a snapshot installed
//!   from the leader) is a `Snapshot` record at its index; payload =
//!   MessagePack of the `Snapshot` (position, configuration, data). The
//!   latest one decides where the log starts, wherever it sits in the WAL.
//!
//! Replaying the records in order gives back exactly the persisted state.

use serde::{Deserialize, Serialize};

use crate::wal::{ReadError, RecordKind, Wal, WalEntry};
use harmonydb_raft::{Entry, EntryPayload, HardState, PersistedState, Snapshot};

/// Size of a hard-state payload.
const HARD_STATE_SIZE_BYTES: usize = 24;

#[derive(Deserialize)]
struct StoredEntry {
    term: u64,
    payload: EntryPayload,
}

/// `StoredEntry` as written: the same encoding, borrowing the payload.
#[derive(Serialize)]
struct StoredEntryRef<'a> {
    term: u64,
    payload: &'a EntryPayload,
}

/// The WAL records that persist a ready's entries and hard state, given the
/// WAL's next index before them. Entries that start below it replace a
/// suffix, so a truncation record comes first.
pub fn records_for(
    entries: &[Entry],
    hard_state: Option<HardState>,
    wal_next_index: u64,
) -> Vec<WalEntry> {
    let mut records = Vec::with_capacity(entries.len() + 2);
    let mut next_index = wal_next_index;
    if let Some(first) = entries.first() {
        if first.index < next_index {
            records.push(WalEntry {
                index: first.index,
                kind: RecordKind::Truncate,
                payload: Vec::new(),
            });
        }
        next_index = first.index;
    }
    for entry in entries {
        // Borrowed: encoding must not copy every command on the write path.
        let stored = StoredEntryRef {
            term: entry.term,
            payload: &entry.payload,
        };
        records.push(WalEntry {
            index: entry.index,
            kind: RecordKind::Entry,
            payload: rmp_serde::to_vec(&stored).expect("a Raft entry always serializes"),
        });
        next_index = entry.index + 1;
    }
    if let Some(hard_state) = hard_state {
        records.push(WalEntry {
            index: next_index - 1,
            kind: RecordKind::HardState,
            payload: hard_state_payload(hard_state),
        });
    }
    records
}

/// The WAL records that persist a snapshot: the log up to its index is
/// replaced by it. `wal_next_index` is the WAL's next index before them; the
/// returned next index is where entries continue. The hard state is
/// written again with it, since older records holding it may be deleted
/// with the segments the snapshot replaces.
pub fn records_for_snapshot(
    snapshot: &Snapshot,
    hard_state: HardState,
    wal_next_index: u64,
) -> (Vec<WalEntry>, u64) {
    let index = snapshot.meta.index;
    let next_index = wal_next_index.max(index + 1);
    let records = vec![
        WalEntry {
            index,
            kind: RecordKind::Snapshot,
            payload: rmp_serde::to_vec(snapshot).expect("a snapshot always serializes"),
        },
        WalEntry {
            index: next_index - 1,
            kind: RecordKind::HardState,
            payload: hard_state_payload(hard_state),
        },
    ];
    (records, next_index)
}

/// The WAL records that persist a snapshot received from the leader, with
/// the entries the core kept or took after it and the hard state: the
/// snapshot record, a truncation voiding whatever the WAL held after the
/// snapshot (the core re-emits every entry it keeps), the entries, then
/// the hard state. Returns the records and the WAL's next index after them.
pub fn records_for_installed_snapshot(
    snapshot: &Snapshot,
    entries: &[Entry],
    hard_state: HardState,
    wal_next_index: u64,
) -> (Vec<WalEntry>, u64) {
    let index = snapshot.meta.index;
    let mut records = vec![WalEntry {
        index,
        kind: RecordKind::Snapshot,
        payload: rmp_serde::to_vec(snapshot).expect("a snapshot always serializes"),
    }];
    let mut next_index = wal_next_index.max(index + 1);
    if next_index > index + 1 {
        records.push(WalEntry {
            index: index + 1,
            kind: RecordKind::Truncate,
            payload: Vec::new(),
        });
        next_index = index + 1;
    }
    records.extend(records_for(entries, Some(hard_state), next_index));
    let next_index = entries.last().map_or(next_index, |last| last.index + 1);
    (records, next_index)
}

/// An entry record's payload read back as the entry at `index`.
pub fn decode_entry(index: u64, payload: &[u8]) -> Result<Entry, WalLogError> {
    let stored: StoredEntry = rmp_serde::from_slice(payload).map_err(|e| WalLogError::Invalid {
        index,
        reason: e.to_string(),
    })?;
    Ok(Entry {
        term: stored.term,
        index,
        payload: stored.payload,
    })
}

fn hard_state_payload(hard_state: HardState) -> Vec<u8> {
    let mut payload = Vec::with_capacity(HARD_STATE_SIZE_BYTES);
    payload.extend_from_slice(&hard_state.term.to_le_bytes());
    payload.extend_from_slice(&hard_state.vote.to_le_bytes());
    payload.extend_from_slice(&hard_state.commit.to_le_bytes());
    payload
}

/// Why the Raft log could not be read back from the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalLogError {
    /// The WAL itself failed.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    /// A record passed its checksum but is not a valid Raft record.
    #[error("WAL record {index} is not a valid Raft record: {reason}")]
    Invalid {
        /// The record's index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Rebuilds what the core persisted: the hard state and the entries after
/// `base`'s snapshot (the bootstrap state on a first start).
pub fn load(wal: &Wal, base: PersistedState) -> Result<PersistedState, WalLogError> {
    let mut state = base;
    // The latest snapshot decides where the log starts. Its record comes
    // after the entries it covers (and after segments holding them were
    // deleted), so it is found first.
    let latest = wal.read_from(wal.first_index(), |record| {
        if record.kind == RecordKind::Snapshot {
            let snapshot: Snapshot =
                rmp_serde::from_slice(record.payload).map_err(|e| WalLogError::Invalid {
                    index: record.index,
                    reason: format!("snapshot record does not decode: {e}"),
                })?;
            if snapshot.meta.index != record.index {
                return Err(WalLogError::Invalid {
                    index: record.index,
                    reason: format!("snapshot of index {} in its record", snapshot.meta.index),
                });
            }
            if snapshot.meta.index >= state.snapshot.meta.index {
                state.snapshot = snapshot;
            }
        }
        Ok(())
    });
    match latest {
        Ok(()) => {}
        Err(ReadError::Wal(error)) => return Err(WalLogError::Wal(error)),
        Err(ReadError::Visitor(error)) => return Err(error),
    }
    let first_entry = state.snapshot.meta.index + 1;
    let result = wal.read_from(wal.first_index().min(first_entry), |record| {
        let invalid = |reason: String| WalLogError::Invalid {
            index: record.index,
            reason,
        };
        match record.kind {
            RecordKind::Entry => {
                let stored: StoredEntry =
                    rmp_serde::from_slice(record.payload).map_err(|e| invalid(e.to_string()))?;
                if record.index < first_entry {
                    return Ok(());
                }
                let expected = first_entry + state.entries.len() as u64;
                if record.index != expected {
                    return Err(invalid(format!(
                        "entry {} where {expected} was expected",
                        record.index
                    )));
                }
                state.entries.push(Entry {
                    term: stored.term,
                    index: record.index,
                    payload: stored.payload,
                });
            }
            RecordKind::Truncate => {
                let keep = record.index.saturating_sub(first_entry) as usize;
                state.entries.truncate(keep);
            }
            // Read in the first pass.
            RecordKind::Snapshot => {}
            RecordKind::HardState => {
                if record.payload.len() != HARD_STATE_SIZE_BYTES {
                    return Err(invalid(format!(
                        "hard state of {} bytes",
                        record.payload.len()
                    )));
                }
                let word = |at: usize| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(&record.payload[at..at + 8]);
                    u64::from_le_bytes(bytes)
                };
                state.hard_state = HardState {
                    term: word(0),
                    vote: word(8),
                    commit: word(16),
                };
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(state),
        Err(ReadError::Wal(error)) => Err(WalLogError::Wal(error)),
        Err(ReadError::Visitor(error)) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalOptions;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Command(format!("{index}/{term}").into_bytes()),
        }
    }

    /// Persists what a ready would: entries and hard state.
    fn persist(wal: &mut Wal, entries: &[Entry], hard_state: Option<HardState>) {
        let records = records_for(entries, hard_state, wal.last_index() + 1);
        for record in records {
            wal.append(record.index, record.kind, &record.payload)
                .expect("append");
        }
        wal.sync().expect("sync");
    }

    #[test]
    fn a_replaced_suffix_and_the_latest_hard_state_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        let first: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        let hard = HardState {
            term: 1,
            vote: 2,
            commit: 3,
        };
        persist(&mut wal, &first, Some(hard));
        // A new leader replaces 4..5 with 4..6 of term 2.
        let second: Vec<Entry> = (4..=6).map(|i| entry(i, 2)).collect();
        let hard = HardState {
            term: 2,
            vote: 3,
            commit: 4,
        };
        persist(&mut wal, &second, Some(hard));
        // A vote alone, with no entries.
        let hard = HardState {
            term: 3,
            vote: 1,
            commit: 4,
        };
        persist(&mut wal, &[], Some(hard));
        drop(wal);

        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        let state = load(&wal, PersistedState::bootstrap([1, 2, 3])).expect("load");
        let terms: Vec<(u64, u64)> = state.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(terms, [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]);
        assert_eq!(
            state.hard_state,
            HardState {
                term: 3,
                vote: 1,
                commit: 4
            }
        );
        assert_eq!(
            state.entries[3].payload,
            EntryPayload::Command(b"4/2".to_vec())
        );
    }

    fn snapshot_at(index: u64, term: u64) -> Snapshot {
        let mut snapshot = PersistedState::bootstrap([1, 2, 3]).snapshot;
        snapshot.meta.index = index;
        snapshot.meta.term = term;
        snapshot.data = format!("state at {index}").into_bytes();
        snapshot
    }

    fn persist_snapshot(wal: &mut Wal, snapshot: &Snapshot, hard_state: HardState) {
        let (records, next) = records_for_snapshot(snapshot, hard_state, wal.last_index() + 1);
        for record in records {
            wal.append(record.index, record.kind, &record.payload)
                .expect("append");
        }
        assert_eq!(wal.last_index() + 1, next);
        wal.sync().expect("sync");
    }

    #[test]
    fn a_compaction_survives_deleting_the_segments_it_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = WalOptions {
            segment_size_bytes: 4096,
            ..WalOptions::default()
        };
        let (mut wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        let hard = HardState {
            term: 2,
            vote: 1,
            commit: 200,
        };
        for index in 1..=200 {
            persist(&mut wal, &[entry(index, 2)], Some(hard));
        }
        // Compacted up to 150 while entries 151..200 exist: they stay.
        persist_snapshot(&mut wal, &snapshot_at(150, 2), hard);
        persist(&mut wal, &[entry(201, 2)], None);
        let deleted = wal.delete_below(151).expect("delete");
        assert!(
            deleted > 0,
            "small segments: some hold only entries below 151"
        );
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), options).expect("reopen");
        let state = load(&wal, PersistedState::bootstrap([1, 2, 3])).expect("load");
        assert_eq!(state.snapshot, snapshot_at(150, 2));
        let indexes: Vec<u64> = state.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (151..=201).collect::<Vec<_>>());
        assert_eq!(state.hard_state, hard);
    }

    #[test]
    fn an_installed_snapshot_past_the_log_restarts_it_after_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        persist(&mut wal, &[entry(1, 1), entry(2, 1), entry(3, 1)], None);
        let hard = HardState {
            term: 4,
            vote: 0,
            commit: 100,
        };
        persist_snapshot(&mut wal, &snapshot_at(100, 4), hard);
        persist(&mut wal, &[entry(101, 4), entry(102, 4)], None);
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        let state = load(&wal, PersistedState::bootstrap([1, 2, 3])).expect("load");
        assert_eq!(state.snapshot.meta.index, 100);
        assert_eq!(state.entries, vec![entry(101, 4), entry(102, 4)]);
        assert_eq!(state.hard_state, hard);
    }

    #[test]
    fn an_installed_snapshot_voids_the_stale_entries_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        persist(
            &mut wal,
            &(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            None,
        );
        // A leader's snapshot at 5 whose term disagrees: 6..10 are stale.
        let hard = HardState {
            term: 3,
            vote: 0,
            commit: 5,
        };
        let (records, next) =
            records_for_installed_snapshot(&snapshot_at(5, 3), &[], hard, wal.last_index() + 1);
        for record in records {
            wal.append(record.index, record.kind, &record.payload)
                .expect("append");
        }
        assert_eq!(next, 6);
        wal.sync().expect("sync");
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        let state = load(&wal, PersistedState::bootstrap([1, 2, 3])).expect("load");
        assert_eq!(state.snapshot.meta.index, 5);
        assert!(state.entries.is_empty(), "{:?}", state.entries);
        assert_eq!(state.hard_state, hard);
    }

    #[test]
    fn a_truncation_below_everything_empties_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        persist(&mut wal, &[entry(1, 1), entry(2, 1)], None);
        persist(&mut wal, &[entry(1, 5)], None);
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        let state = load(&wal, PersistedState::bootstrap([1])).expect("load");
        assert_eq!(state.entries, vec![entry(1, 5)]);
    }
}
