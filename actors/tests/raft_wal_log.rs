//! The Raft log in the WAL under crashes: random sequences of what readies
//! persist (new entries, replaced suffixes, hard states), then the WAL file
//! cut at a random byte. Loading must give exactly the state after some
//! prefix of the records: never a mix, never a record that wasn't written.
//! And entries read back from the WAL (for a follower the leader evicted
//! them for) are the log's latest versions, with replaced ones skipped.

use std::fs::OpenOptions;

use harmonydb_actors::replica::wal_log::{decode_entry, load, records_for};
use harmonydb_actors::wal::{RecordKind, Wal, WalOptions};
use harmonydb_raft::{Entry, EntryPayload, HardState, PersistedState};
use proptest::prelude::*;

/// One ready's worth of persistence: replace from `from` (at most one past
/// the end) with `count` entries of `term`, and maybe a new hard state.
#[derive(Clone, Debug)]
struct Step {
    from_back: u64,
    count: u64,
    term_bump: bool,
    hard_state: bool,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    (0u64..4, 0u64..5, any::<bool>(), any::<bool>()).prop_map(
        |(from_back, count, term_bump, hard_state)| Step {
            from_back,
            count,
            term_bump,
            hard_state,
        },
    )
}

/// Applies one record to a model state, as the loader should.
fn apply_record(
    state: &mut PersistedState,
    kind: RecordKind,
    index: u64,
    entry: Option<&Entry>,
    hard: Option<HardState>,
) {
    match kind {
        RecordKind::Entry => state.entries.push(entry.cloned().expect("entry")),
        RecordKind::Truncate => state.entries.truncate(index as usize - 1),
        RecordKind::HardState => state.hard_state = hard.expect("hard state"),
        RecordKind::Snapshot => unreachable!("this test writes no snapshots"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn a_cut_wal_loads_as_the_state_after_some_prefix_of_records(
        steps in prop::collection::vec(step_strategy(), 1..25),
        cut_position in 0.0f64..1.0,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = WalOptions { segment_size_bytes: 1 << 20, truncate_corrupt_tail: true };
        let (mut wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        let mut model = PersistedState::bootstrap([1, 2, 3]);
        // States after each record, in order (index 0 = before any).
        let mut states = vec![model.clone()];
        let mut term = 1;
        let mut hard_term = 0;
        for step in &steps {
            if step.term_bump {
                term += 1;
            }
            let last = model.entries.len() as u64;
            let from = (last + 1).saturating_sub(step.from_back).max(1);
            let entries: Vec<Entry> = (from..from + step.count)
                .map(|index| Entry { term, index, payload: EntryPayload::Command(format!("{index}:{term}").into_bytes()) })
                .collect();
            let hard = step.hard_state.then(|| {
                hard_term += 1;
                HardState { term: hard_term, vote: hard_term % 3, commit: from.saturating_sub(1) }
            });
            if entries.is_empty() && hard.is_none() {
                continue;
            }
            let records = records_for(&entries, hard, wal.last_index() + 1);
            for record in &records {
                wal.append(record.index, record.kind, &record.payload).expect("append");
                let entry = entries.iter().find(|e| e.index == record.index);
                apply_record(&mut model, record.kind, record.index, entry, hard);
                states.push(model.clone());
            }
        }
        wal.sync().expect("sync");
        drop(wal);

        let segment = std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "seg")).expect("segment");
        let written_end = {
            let bytes = std::fs::read(&segment).expect("read");
            bytes.iter().rposition(|b| *b != 0).map_or(32, |p| p + 1) as u64
        };
        let cut = 32 + ((written_end - 32) as f64 * cut_position) as u64;
        OpenOptions::new().write(true).open(&segment).expect("open").set_len(cut).expect("cut");

        let (wal, _) = Wal::open(dir.path(), options).expect("reopen");
        let loaded = load(&wal, PersistedState::bootstrap([1, 2, 3])).expect("load");
        prop_assert!(states.contains(&loaded), "loaded state is not any prefix state: {:?}", loaded);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Random readies (suffixes replaced under new terms, entries of up to
    /// 40 KB so segments roll and reads start from positions inside them),
    /// then ranges read back with random limits, before and after a reopen
    /// and after old segments are deleted: each read is a non-empty prefix
    /// of the log's entries from its first index, within the limits.
    #[test]
    fn entries_read_back_are_the_latest_versions(
        steps in prop::collection::vec(step_strategy(), 1..30),
        sizes in prop::collection::vec(0usize..40_000, 8),
        reads in prop::collection::vec((0.0f64..1.0, 1usize..20, 1usize..200_000), 12),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = WalOptions { segment_size_bytes: 256 * 1024, truncate_corrupt_tail: false };
        let (mut wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        let mut model: Vec<Entry> = Vec::new();
        let mut term = 1;
        for (n, step) in steps.iter().enumerate() {
            if step.term_bump {
                term += 1;
            }
            let last = model.len() as u64;
            let from = (last + 1).saturating_sub(step.from_back).max(1);
            let entries: Vec<Entry> = (from..from + step.count)
                .map(|index| Entry {
                    term,
                    index,
                    payload: EntryPayload::Command(vec![index as u8; sizes[(n + index as usize) % sizes.len()]]),
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            for record in records_for(&entries, None, wal.last_index() + 1) {
                wal.append(record.index, record.kind, &record.payload).expect("append");
            }
            model.truncate(from as usize - 1);
            model.extend(entries);
        }
        let check = |wal: &Wal, first: u64| -> Result<(), TestCaseError> {
            let last = model.len() as u64;
            if last < first {
                return Ok(());
            }
            for (at, count_max, size_max) in &reads {
                let from = first + ((last - first) as f64 * at) as u64;
                let records = wal.read_entries(from, last, *count_max, *size_max).expect("read");
                prop_assert!(!records.is_empty(), "nothing read from {}", from);
                prop_assert!(records.len() <= *count_max);
                let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
                prop_assert!(records.len() == 1 || bytes <= *size_max, "{} bytes read, limit {}", bytes, size_max);
                for (i, record) in records.iter().enumerate() {
                    let entry = decode_entry(record.index, &record.payload).expect("decode");
                    prop_assert_eq!(&entry, &model[(from - 1) as usize + i], "read from {}", from);
                }
            }
            Ok(())
        };
        check(&wal, 1)?;
        wal.sync().expect("sync");
        drop(wal);
        let (mut wal, _) = Wal::open(dir.path(), options).expect("reopen");
        check(&wal, 1)?;
        let below = model.len() as u64 / 2;
        wal.delete_below(below.max(1)).expect("delete");
        check(&wal, wal.first_index().max(below).max(1))?;
    }
}
