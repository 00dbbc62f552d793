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
//!
//! Replaying the records in order gives back exactly the persisted state.

use serde::{Deserialize, Serialize};

use super::types::{Entry, EntryPayload, HardState};
use super::PersistedState;
use crate::wal::{ReadError, RecordKind, Wal, WalEntry};

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
        let mut payload = Vec::with_capacity(HARD_STATE_SIZE_BYTES);
        payload.extend_from_slice(&hard_state.term.to_le_bytes());
        payload.extend_from_slice(&hard_state.vote.to_le_bytes());
        payload.extend_from_slice(&hard_state.commit.to_le_bytes());
        records.push(WalEntry {
            index: next_index - 1,
            kind: RecordKind::HardState,
            payload,
        });
    }
    records
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
