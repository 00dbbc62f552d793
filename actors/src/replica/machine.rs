//! What the replica replicates: the [`StateMachine`] interface, and the KV
//! state's implementation of it.
//!
//! The replica hands a state machine committed commands in batches, in
//! index order, and reads from it once its applied index reaches a read's
//! index; it never looks inside a command or an outcome. Two kinds of
//! result come back and must never be confused:
//!
//! - an **outcome**, computed the same by every replica from the same
//!   state (a write's new version, a version mismatch, a missing key; with
//!   transactions a write conflict or a lock held): the index is applied
//!   and the outcome is the client's answer;
//! - a **fault** of this node ([`StateError`]: no free frame in the buffer
//!   pool, an unreadable page, a failed file operation): the index is not
//!   applied, nothing is answered as an outcome, and the replica either
//!   tries again later (a transient fault) or stops serving until a
//!   restart recovers from the checkpoint and the log.
//!
//! How the transactions issue fits without changing the trait (a sketch,
//! not code that exists):
//!
//! ```text
//! impl StateMachine for MvccState {
//!     type Command = TxnCommand;   // Prewrite { txn, start_ts, writes, primary }
//!                                  // Commit { txn, start_ts, commit_ts, keys }
//!                                  // Rollback { txn, keys }
//!                                  // ResolveIntent { key, txn, status }
//!     type Outcome = Result<TxnOutcome, TxnRefusal>;
//!                                  // TxnRefusal::WriteConflict { key, committed_ts }
//!                                  // TxnRefusal::LockHeld { key, holder }
//!                                  // (every replica sees the same locks and
//!                                  // versions, so the same refusal)
//!     type Read = MvccRead;        // Get { key, read_ts }, Scan { range, read_ts }
//!     type ReadAnswer = Result<KvReply, TxnRefusal>;  // LockHeld if an intent
//!                                  // below read_ts must be resolved first
//!     type DecodeError = UndecodableTxnCommand;
//! }
//! ```
//!
//! A prewrite writes intents and locks at its index; a commit turns them
//! into versions at `commit_ts`; both are ordinary commands in the log, and
//! a full pool while writing an intent is a fault like any other.

use std::path::Path;

use crate::kv::dump::{self, DumpInfo};
use crate::kv::{
    KvCommand, KvReply, KvState, Outcome, Refusal, ScanRange, StateError, UndecodableCommand,
    Versioned,
};
use crate::storage::ordered::OrderedStore;

/// A deterministic state machine the replica applies committed commands to.
pub trait StateMachine {
    /// A command as a log entry carries it.
    type Command;
    /// What applying a command did: the same on every replica.
    type Outcome;
    /// A read.
    type Read;
    /// A read's answer: the same on every replica at the same applied index.
    type ReadAnswer;
    /// Why a log entry's payload is not a command.
    type DecodeError: std::error::Error;

    /// Reads a command back from a log entry's payload.
    fn decode(payload: &[u8]) -> Result<Self::Command, Self::DecodeError>;

    /// The index of the last command applied (or skipped).
    fn applied_index(&self) -> u64;

    /// Counts `index` as applied without applying anything (an entry that
    /// carries no command, such as a leader's no-op or a configuration).
    fn skip_to(&mut self, index: u64);

    /// Applies `batch`, commands at consecutive indexes after the applied
    /// one, in order. It stops at the first fault: the outcomes of the
    /// commands before it are returned, and the rest are not applied.
    fn apply(&mut self, batch: Vec<(u64, Self::Command)>) -> Applied<Self::Outcome>;

    /// Answers `read` from the state as applied now (the replica calls it
    /// only once the applied index reaches the read's index).
    fn read(&self, read: &Self::Read) -> Result<Self::ReadAnswer, StateError>;

    /// Writes the state as applied now to `path`, key by key (never whole
    /// in memory); followers fetch the file in chunks.
    fn snapshot_out(&self, path: &Path) -> Result<DumpInfo, StateError>;

    /// Fills this (empty) state from the snapshot at `path`, checked whole
    /// first, key by key; `between` runs between keys (to checkpoint a
    /// state that fills its pool). The applied index becomes the
    /// snapshot's.
    fn snapshot_in(
        &mut self,
        path: &Path,
        between: &mut dyn FnMut(&Self) -> Result<(), StateError>,
    ) -> Result<DumpInfo, StateError>;
}

/// What applying a batch did.
#[derive(Debug)]
pub struct Applied<O> {
    /// The outcomes of the commands applied, with their indexes, in order.
    pub outcomes: Vec<(u64, O)>,
    /// The fault that stopped the batch, and the index it stopped at (not
    /// applied).
    pub fault: Option<(u64, StateError)>,
}

/// A read of the KV state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvRead {
    /// One key.
    Get(Vec<u8>),
    /// Keys in order.
    Scan(ScanRange),
}

impl<O: OrderedStore> StateMachine for KvState<O> {
    type Command = KvCommand;
    type Outcome = Outcome;
    type Read = KvRead;
    type ReadAnswer = Result<KvReply, Refusal>;
    type DecodeError = UndecodableCommand;

    fn decode(payload: &[u8]) -> Result<KvCommand, UndecodableCommand> {
        KvCommand::decode(payload)
    }

    fn applied_index(&self) -> u64 {
        KvState::applied_index(self)
    }

    fn skip_to(&mut self, index: u64) {
        KvState::skip_to(self, index);
    }

    fn apply(&mut self, batch: Vec<(u64, KvCommand)>) -> Applied<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (index, command) in batch {
            match KvState::apply(self, index, command) {
                Ok(outcome) => outcomes.push((index, outcome)),
                Err(fault) => {
                    return Applied {
                        outcomes,
                        fault: Some((index, fault)),
                    }
                }
            }
        }
        Applied {
            outcomes,
            fault: None,
        }
    }

    fn read(&self, read: &KvRead) -> Result<Result<KvReply, Refusal>, StateError> {
        Ok(match read {
            KvRead::Get(key) => self.get(key)?.map(KvReply::Value).ok_or(Refusal::NotFound),
            KvRead::Scan(range) => Ok(KvReply::Page(self.scan(range)?)),
        })
    }

    fn snapshot_out(&self, path: &Path) -> Result<DumpInfo, StateError> {
        dump::write(self, self.shard(), path)
    }

    fn snapshot_in(
        &mut self,
        path: &Path,
        between: &mut dyn FnMut(&Self) -> Result<(), StateError>,
    ) -> Result<DumpInfo, StateError> {
        let info = dump::read(path, |key, versioned: &Versioned| {
            self.restore(key, versioned)?;
            between(self)
        })?;
        KvState::skip_to(self, info.applied_index);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::kv::WriteOutcome;
    use crate::storage::memory::MemoryPages;
    use crate::storage::{PageId, PageStore, StorageError};

    fn command(key: u8, value: u8, expected: Option<u64>, delete: bool) -> KvCommand {
        let key = vec![b'k', key];
        if delete {
            KvCommand::Delete {
                key,
                expected_version: expected,
            }
        } else {
            KvCommand::Put {
                key,
                value: vec![value; 3],
                expected_version: expected,
            }
        }
    }

    fn commands() -> impl Strategy<Value = Vec<KvCommand>> {
        prop::collection::vec(
            (
                0u8..8,
                any::<u8>(),
                prop::option::of(0u64..12),
                any::<bool>(),
            )
                .prop_map(|(k, v, e, d)| command(k, v, e, d)),
            1..60,
        )
    }

    proptest! {
        /// Two replicas given the same commands, one in a single batch and
        /// one in batches of every size, compute the same outcomes (refusals
        /// included) and end in the same state.
        #[test]
        fn outcomes_are_the_same_whatever_the_batching(
            commands in commands(),
            split in 1usize..7,
        ) {
            let numbered: Vec<(u64, KvCommand)> = commands
                .into_iter()
                .enumerate()
                .map(|(i, c)| (i as u64 + 1, c))
                .collect();
            let mut whole = KvState::in_memory();
            let all = StateMachine::apply(&mut whole, numbered.clone());
            prop_assert!(all.fault.is_none());
            let mut pieces = KvState::in_memory();
            let mut outcomes = Vec::new();
            for chunk in numbered.chunks(split) {
                let applied = StateMachine::apply(&mut pieces, chunk.to_vec());
                prop_assert!(applied.fault.is_none());
                outcomes.extend(applied.outcomes);
            }
            prop_assert_eq!(&all.outcomes, &outcomes);
            prop_assert_eq!(
                StateMachine::applied_index(&whole),
                numbered.len() as u64
            );
            for key in 0u8..8 {
                let read = KvRead::Get(vec![b'k', key]);
                prop_assert_eq!(whole.read(&read).expect("read"), pieces.read(&read).expect("read"));
            }
        }
    }

    /// Pages that run out of frames while `full` is set, as a buffer pool
    /// whose frames are all dirty does.
    struct Exhaustible {
        pages: MemoryPages,
        full: Arc<AtomicBool>,
    }

    impl Exhaustible {
        fn check(&self) -> Result<(), StorageError> {
            if self.full.load(Ordering::SeqCst) {
                return Err(StorageError::PoolExhausted {
                    frames: 4,
                    waited_ms: 0,
                });
            }
            Ok(())
        }
    }

    impl PageStore for Exhaustible {
        type Read = <MemoryPages as PageStore>::Read;
        type Write = <MemoryPages as PageStore>::Write;

        fn read(&self, id: PageId) -> Result<Self::Read, StorageError> {
            self.check()?;
            self.pages.read(id)
        }

        fn write(&self, id: PageId) -> Result<Self::Write, StorageError> {
            self.check()?;
            self.pages.write(id)
        }

        fn try_read(&self, id: PageId) -> Result<Option<Self::Read>, StorageError> {
            self.check()?;
            self.pages.try_read(id)
        }

        fn allocate(&self, kind: crate::storage::PageKind) -> Result<Self::Write, StorageError> {
            self.check()?;
            self.pages.allocate(kind)
        }

        fn free(&self, id: PageId) -> Result<(), StorageError> {
            self.check()?;
            self.pages.free(id)
        }
    }

    #[test]
    fn a_full_pool_is_a_fault_that_applies_nothing_not_an_outcome() {
        let full = Arc::new(AtomicBool::new(false));
        let store = Arc::new(Exhaustible {
            pages: MemoryPages::new(),
            full: full.clone(),
        });
        let mut state = KvState::create(store, 0).expect("create");
        let batch = |from: u64| -> Vec<(u64, KvCommand)> {
            (from..from + 3)
                .map(|i| (i, command(i as u8, 1, None, false)))
                .collect()
        };
        let applied = StateMachine::apply(&mut state, batch(1));
        assert!(applied.fault.is_none());
        assert_eq!(applied.outcomes.len(), 3);

        full.store(true, Ordering::SeqCst);
        let applied = StateMachine::apply(&mut state, batch(4));
        assert!(applied.outcomes.is_empty(), "{:?}", applied.outcomes);
        let (index, fault) = applied.fault.expect("a fault");
        assert_eq!(index, 4);
        assert!(fault.is_transient(), "{fault}");
        assert_eq!(StateMachine::applied_index(&state), 3, "nothing applied");

        // Room again: the same commands apply, with the outcomes they would
        // have had.
        full.store(false, Ordering::SeqCst);
        let applied = StateMachine::apply(&mut state, batch(4));
        assert!(applied.fault.is_none());
        assert_eq!(
            applied.outcomes,
            vec![
                (4, Ok(WriteOutcome::Written { version: 4 })),
                (5, Ok(WriteOutcome::Written { version: 5 })),
                (6, Ok(WriteOutcome::Written { version: 6 })),
            ]
        );
        // A refusal, by contrast, is an outcome: the index is applied.
        let refused = StateMachine::apply(&mut state, vec![(7, command(1, 0, Some(99), false))]);
        assert_eq!(
            refused.outcomes,
            vec![(
                7,
                Err(Refusal::VersionMismatch {
                    expected: 99,
                    current: 1
                })
            )]
        );
        assert_eq!(StateMachine::applied_index(&state), 7);
    }

    #[test]
    fn a_damaged_page_is_a_fault_that_is_not_transient() {
        let error = StateError::Storage(StorageError::Malformed {
            page: 3,
            reason: "a leaf links to page 0".into(),
        });
        assert!(!error.is_transient());
        let unversioned = StateError::Unversioned { size_bytes: 2 };
        assert!(!unversioned.is_transient());
    }

    #[test]
    fn a_snapshot_out_and_in_gives_the_same_state_at_the_same_index() {
        let mut state = KvState::in_memory();
        let batch: Vec<(u64, KvCommand)> = (1..=300u64)
            .map(|i| (i, command((i % 97) as u8, i as u8, None, i % 11 == 0)))
            .collect();
        let applied = StateMachine::apply(&mut state, batch);
        assert!(applied.fault.is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.dump");
        let out = state.snapshot_out(&path).expect("out");
        assert_eq!(out.applied_index, 300);
        let mut copy = KvState::in_memory();
        let mut calls = 0;
        let info = copy
            .snapshot_in(&path, &mut |_| {
                calls += 1;
                Ok(())
            })
            .expect("in");
        assert_eq!(info, out);
        assert_eq!(calls, out.keys, "`between` runs once per key");
        assert_eq!(StateMachine::applied_index(&copy), 300);
        for key in 0u8..97 {
            let read = KvRead::Get(vec![b'k', key]);
            assert_eq!(
                copy.read(&read).expect("read"),
                state.read(&read).expect("read")
            );
        }
        let scan = KvRead::Scan(ScanRange {
            limit: 1000,
            ..ScanRange::default()
        });
        assert_eq!(
            copy.read(&scan).expect("scan"),
            state.read(&scan).expect("scan")
        );
    }
}
