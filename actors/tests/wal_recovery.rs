//! Property tests of WAL recovery: write random records, damage the files the
//! way a crash or a bad disk would (cut at a byte, flip a byte), reopen, and
//! check that recovery returns exactly a prefix of what was written, never a
//! damaged record, and that appends after recovery land where they should.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use harmonydb_actors::wal::{Wal, WalError, WalOptions};
use proptest::prelude::*;

const SEGMENT_HEADER_BYTES: u64 = 32;
const RECORD_HEADER_BYTES: u64 = 17;

fn options(segment_size_bytes: u64) -> WalOptions {
    WalOptions {
        segment_size_bytes,
        truncate_corrupt_tail: false,
    }
}

/// Writes `payloads` as records 1..=n, synced, and returns the segment files
/// (sorted) with the first index each holds.
fn write_log(dir: &Path, segment_size_bytes: u64, payloads: &[Vec<u8>]) -> Vec<(u64, PathBuf)> {
    let (mut wal, _) = Wal::open(dir, options(segment_size_bytes)).expect("open");
    for (i, payload) in payloads.iter().enumerate() {
        wal.append(
            i as u64 + 1,
            harmonydb_actors::wal::RecordKind::Entry,
            payload,
        )
        .expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    segments(dir)
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).expect("name");
            (stem.parse().expect("index"), p)
        })
        .collect();
    found.sort();
    found
}

fn read_all(wal: &Wal) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    wal.read_from::<()>(wal.first_index(), |record| {
        out.push(record.payload.to_vec());
        Ok(())
    })
    .expect("read");
    out
}

/// End offset of each record of the segment starting at `first` (1-based
/// indexes `first..next_first`), within that segment's file.
fn record_ends(payloads: &[Vec<u8>], first: u64, next_first: u64) -> Vec<u64> {
    let mut offset = SEGMENT_HEADER_BYTES;
    (first..next_first)
        .map(|index| {
            offset += RECORD_HEADER_BYTES + payloads[index as usize - 1].len() as u64;
            offset
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Damage {
    /// Truncate the segment file to this many bytes.
    Cut(u64),
    /// XOR the byte at this offset with a non-zero mask.
    Flip(u64, u8),
}

fn apply(path: &Path, damage: &Damage) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    match *damage {
        Damage::Cut(at) => file.set_len(at).expect("truncate"),
        Damage::Flip(at, mask) => {
            let mut byte = [0u8; 1];
            file.read_at(&mut byte, at).expect("read byte");
            byte[0] ^= mask;
            file.write_all_at(&byte, at).expect("write byte");
        }
    }
}

/// Which records recovery must return when the last segment (holding records
/// `first..`) is damaged: `None` means recovery must refuse (header damage).
/// `original` is the segment's bytes before the damage: the part of a record
/// a truncation removes reads back as zeros, so a record whose removed bytes
/// were all zeros is still intact.
fn expected_survivors(
    payloads: &[Vec<u8>],
    first: u64,
    damage: &Damage,
    original: &[u8],
) -> Option<usize> {
    let ends = record_ends(payloads, first, payloads.len() as u64 + 1);
    let before = first as usize - 1;
    let at = match *damage {
        Damage::Cut(at) => at,
        Damage::Flip(at, _) => at,
    };
    if at < SEGMENT_HEADER_BYTES {
        return None;
    }
    let intact = match damage {
        // A record survives a cut if all of its bytes are before the cut,
        // or those after it were zeros anyway (records are a prefix: the
        // first one that doesn't survive ends the count).
        Damage::Cut(at) => ends
            .iter()
            .take_while(|end| {
                let (from, to) = ((*at as usize).min(**end as usize), **end as usize);
                original
                    .get(from..to)
                    .is_some_and(|bytes| bytes.iter().all(|b| *b == 0))
            })
            .count(),
        // A record survives a flip if the flipped byte is after its end.
        Damage::Flip(at, _) => ends.iter().filter(|end| **end <= *at).count(),
    };
    Some(before + intact)
}

fn payloads_strategy(max_len: usize, max_count: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..max_len), 1..max_count)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// One segment: damage anywhere in it, including past the written part.
    #[test]
    fn damaged_tail_recovers_to_a_prefix(
        payloads in payloads_strategy(300, 40),
        position in 0.0f64..1.0,
        cut in any::<bool>(),
        mask in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment_size = 64 * 1024;
        let files = write_log(dir.path(), segment_size, &payloads);
        prop_assert_eq!(files.len(), 1);
        let written_end = *record_ends(&payloads, 1, payloads.len() as u64 + 1).last().expect("records");
        let at = (position * (written_end + 64) as f64) as u64;
        let damage = if cut { Damage::Cut(at) } else { Damage::Flip(at, mask) };
        let original = fs::read(&files[0].1).expect("read segment");
        apply(&files[0].1, &damage);
        // A flip always leaves a bad byte to cut. A truncation leaves one only
        // if it ends inside a record's non-zero bytes: cut exactly at a record
        // boundary (or inside zeros) and there is nothing left to cut.
        let cut_expected = match damage {
            Damage::Flip(..) => true,
            Damage::Cut(at) => {
                // The end of the last record that survives (see expected_survivors).
                let ends = record_ends(&payloads, 1, payloads.len() as u64 + 1);
                let survivors = expected_survivors(&payloads, 1, &damage, &original).unwrap_or(0);
                let intact_end = survivors.checked_sub(1).map_or(SEGMENT_HEADER_BYTES, |last| ends[last]);
                original[intact_end.min(at) as usize..at as usize].iter().any(|b| *b != 0)
            }
        };
        check_recovery(dir.path(), segment_size, &payloads, 1, &damage, cut_expected, &original)?;
    }

    /// Several segments: damage in the last one is a torn tail and is cut;
    /// damage in an earlier one hits synced data and recovery refuses.
    #[test]
    fn damage_before_the_last_segment_is_refused(
        payloads in payloads_strategy(700, 60),
        segment_pick in any::<prop::sample::Index>(),
        position in 0.0f64..1.0,
        mask in 1u8..=255,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment_size = 4096;
        let files = write_log(dir.path(), segment_size, &payloads);
        let pick = segment_pick.index(files.len());
        let (first, path) = &files[pick];
        let next_first = files.get(pick + 1).map_or(payloads.len() as u64 + 1, |f| f.0);
        let ends = record_ends(&payloads, *first, next_first);
        let written_end = ends.last().copied().unwrap_or(SEGMENT_HEADER_BYTES);
        let at = (position * written_end as f64) as u64;
        let damage = Damage::Flip(at, mask);
        let original = fs::read(path).expect("read segment");
        apply(path, &damage);
        if pick + 1 == files.len() {
            check_recovery(dir.path(), segment_size, &payloads, *first, &damage, true, &original)?;
        } else {
            let opened = Wal::open(dir.path(), options(segment_size));
            prop_assert!(
                matches!(opened, Err(WalError::Corrupt { .. })),
                "damage at {} of closed segment {} was not refused: {:?}", at, path.display(), opened.map(|(_, r)| r)
            );
        }
    }
}

/// Recovers after `damage` to the last segment (whose first record is
/// `last_segment_first`). Default recovery must refuse when intact records
/// follow a corrupt one (they may be acknowledged); recovery told to truncate
/// must then return exactly the records before the damage.
fn check_recovery(
    dir: &Path,
    segment_size: u64,
    payloads: &[Vec<u8>],
    last_segment_first: u64,
    damage: &Damage,
    cut_expected: bool,
    original: &[u8],
) -> Result<(), TestCaseError> {
    let expected = expected_survivors(payloads, last_segment_first, damage, original);
    let opened = Wal::open(dir, options(segment_size));
    let Some(survivors) = expected else {
        prop_assert!(
            matches!(opened, Err(WalError::Corrupt { .. })),
            "header damage {:?} was not refused",
            damage
        );
        return Ok(());
    };
    // A flip inside a record that has intact records after it.
    let corrupt_with_intact_after =
        matches!(damage, Damage::Flip(..)) && survivors + 1 < payloads.len();
    let opened = if corrupt_with_intact_after {
        prop_assert!(
            matches!(&opened, Err(WalError::Corrupt { reason, .. }) if reason.contains("intact records follow")),
            "corruption before intact records was cut silently: {:?} {:?}",
            damage,
            opened.map(|(_, r)| r)
        );
        let truncating = WalOptions {
            truncate_corrupt_tail: true,
            ..options(segment_size)
        };
        Wal::open(dir, truncating)
    } else {
        opened
    };
    let (mut wal, report) = opened.map_err(|e| TestCaseError::fail(format!("{damage:?}: {e}")))?;
    prop_assert_eq!(
        report.last_index,
        survivors as u64,
        "{:?} {:?}",
        damage,
        report
    );
    prop_assert_eq!(&read_all(&wal), &payloads[..survivors].to_vec());
    prop_assert_eq!(
        report.cut.is_some(),
        cut_expected,
        "{:?} {:?}",
        damage,
        report
    );

    // The log goes on from the cut, and what was cut never comes back.
    let next = survivors as u64 + 1;
    wal.append(
        next,
        harmonydb_actors::wal::RecordKind::Entry,
        b"after recovery",
    )
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    wal.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
    drop(wal);
    let (wal, report) =
        Wal::open(dir, options(segment_size)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(report.cut, None);
    let mut expected_records = payloads[..survivors].to_vec();
    expected_records.push(b"after recovery".to_vec());
    prop_assert_eq!(read_all(&wal), expected_records);
    Ok(())
}

#[test]
fn a_first_record_larger_than_a_segment_grows_the_empty_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), options(4096)).expect("open");
    let big = vec![7u8; 20_000];
    wal.append(1, harmonydb_actors::wal::RecordKind::Entry, &big)
        .expect("append");
    wal.append(2, harmonydb_actors::wal::RecordKind::Entry, b"small")
        .expect("append");
    wal.sync().expect("sync");
    // The empty first segment grew to hold record 1; record 2 rolled over.
    assert_eq!(segments(dir.path()).len(), 2);
    assert_eq!(wal.segment_count(), 2);
    assert_eq!(wal.delete_below(1).expect("delete"), 0);
    drop(wal);
    let (mut wal, report) = Wal::open(dir.path(), options(4096)).expect("reopen");
    assert_eq!(report.last_index, 2);
    assert_eq!(read_all(&wal), vec![big, b"small".to_vec()]);
    // Deleting below 2 removes the first segment and never the active one.
    assert_eq!(wal.delete_below(2).expect("delete"), 1);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), options(4096)).expect("reopen");
    assert_eq!((report.first_index, report.last_index), (2, 2));
    assert_eq!(read_all(&wal), vec![b"small".to_vec()]);
}

#[test]
fn odd_segment_names_are_refused() {
    for name in ["5.seg", "00000000000000000000.seg"] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(name), [0u8; 64]).expect("write");
        let opened = Wal::open(dir.path(), options(4096));
        assert!(
            matches!(opened, Err(WalError::Corrupt { .. })),
            "{name}: {:?}",
            opened.map(|(_, r)| r)
        );
    }
}

#[test]
fn segments_roll_over_and_old_ones_can_be_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payloads: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; 100]).collect();
    let files = write_log(dir.path(), 4096, &payloads);
    assert!(
        files.len() > 3,
        "200 records of 117 bytes fill more than 3 segments of 4 KiB"
    );

    let (mut wal, report) = Wal::open(dir.path(), options(4096)).expect("open");
    assert_eq!(
        (report.first_index, report.last_index, report.cut),
        (1, 200, None)
    );
    let third_first = files[2].0;
    let deleted = wal.delete_below(third_first).expect("delete");
    assert_eq!(deleted, 2);
    assert_eq!(wal.first_index(), third_first);
    assert_eq!(segments(dir.path()).len(), files.len() - 2);
    // Deleting never removes the segment being written.
    wal.delete_below(u64::MAX).expect("delete all closed");
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(wal.last_index(), 200);
    drop(wal);

    let (wal, report) = Wal::open(dir.path(), options(4096)).expect("reopen");
    assert_eq!(report.last_index, 200);
    let survivors = read_all(&wal);
    assert_eq!(survivors.last(), payloads.last());
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payloads = vec![vec![1u8; 10], vec![2u8; 20_000], vec![3u8; 10]];
    let files = write_log(dir.path(), 4096, &payloads);
    assert_eq!(files.len(), 3);
    let (wal, _) = Wal::open(dir.path(), options(4096)).expect("open");
    assert_eq!(read_all(&wal), payloads);
}

#[test]
fn a_missing_segment_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payloads: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 100]).collect();
    let files = write_log(dir.path(), 4096, &payloads);
    fs::remove_file(&files[1].1).expect("remove");
    let opened = Wal::open(dir.path(), options(4096));
    assert!(
        matches!(opened, Err(WalError::Corrupt { .. })),
        "{:?}",
        opened.map(|(_, r)| r)
    );
}
