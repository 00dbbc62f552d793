//! Checkpoints and recovery at the page level: a checkpoint stopped at every
//! step (as a crash would stop it) opens as exactly the previous checkpoint
//! or exactly the new one, never a mix; a torn page is repaired from the
//! double-write file; a page damaged on disk with no intact copy is reported
//! by its number.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use harmonydb_actors::storage::buffer::{Policy, PoolConfig};
use harmonydb_actors::storage::checkpoint::{CrashPoint, Storage, PAGE_FILE};
use harmonydb_actors::storage::meta::ShardMeta;
use harmonydb_actors::storage::{PageId, PageKind, PageStore, StorageError, PAGE_SIZE};

fn config() -> PoolConfig {
    PoolConfig {
        frames: 64,
        policy: Policy::Lru2,
        wait_max: std::time::Duration::from_secs(2),
    }
}

fn open(dir: &Path) -> Arc<Storage> {
    Storage::open(dir, config()).expect("open").0
}

/// Stamps every byte of a page's body region we use with `generation`.
fn stamp(storage: &Storage, id: PageId, generation: u8) {
    let mut page = storage.pool().write(id).expect("write");
    page.body_mut()[..64].fill(generation);
}

fn generation_of(storage: &Storage, id: PageId) -> Result<u8, StorageError> {
    let page = storage.pool().read(id)?;
    let body = page.body();
    assert!(
        body[..64].iter().all(|b| *b == body[0]),
        "page {id} mixes generations"
    );
    Ok(body[0])
}

fn shard(applied_index: u64) -> Vec<ShardMeta> {
    vec![ShardMeta {
        shard: 0,
        root: 2,
        applied_index,
        keys: 0,
    }]
}

/// Checkpoint 1: pages 2..34 at generation 1. Then generation 2 on the even
/// pages, ten new pages, and page 33 freed; checkpoint 2 stopped at `crash`.
/// Returns what generation 2 looks like.
fn two_checkpoints(dir: &Path, crash: CrashPoint) -> BTreeMap<PageId, u8> {
    let storage = open(dir);
    let mut pages = Vec::new();
    for _ in 0..32 {
        let page = storage.pool().allocate(PageKind::Leaf).expect("allocate");
        pages.push(page.id());
    }
    for id in &pages {
        stamp(&storage, *id, 1);
    }
    let pending = storage.begin_checkpoint(shard(10)).expect("begin");
    let report = storage
        .write_checkpoint(pending, None)
        .expect("checkpoint 1");
    assert_eq!(report.crashed_at, None);

    let mut second: BTreeMap<PageId, u8> = pages.iter().map(|id| (*id, 1)).collect();
    for id in pages.iter().filter(|id| *id % 2 == 0) {
        stamp(&storage, *id, 2);
        second.insert(*id, 2);
    }
    for _ in 0..10 {
        let id = storage
            .pool()
            .allocate(PageKind::Leaf)
            .expect("allocate")
            .id();
        stamp(&storage, id, 2);
        second.insert(id, 2);
    }
    storage.pool().free(33).expect("free");
    second.remove(&33);
    let pending = storage.begin_checkpoint(shard(20)).expect("begin");
    let report = storage
        .write_checkpoint(pending, Some(crash))
        .expect("checkpoint 2");
    assert_eq!(report.crashed_at, Some(crash));
    second
}

#[test]
fn a_checkpoint_stopped_at_any_step_opens_as_one_checkpoint_or_the_other() {
    let crashes = [
        (CrashPoint::DuringDoubleWrite, 1),
        (CrashPoint::AfterDoubleWrite, 2),
        (CrashPoint::DuringInPlace { pages_written: 0 }, 2),
        (CrashPoint::DuringInPlace { pages_written: 7 }, 2),
        (CrashPoint::AfterInPlace, 2),
        (CrashPoint::DuringMeta, 2),
        (CrashPoint::AfterMeta, 2),
    ];
    for (crash, expected_checkpoint) in crashes {
        let dir = tempfile::tempdir().expect("tempdir");
        let second = two_checkpoints(dir.path(), crash);
        let (storage, recovery) = Storage::open(dir.path(), config()).expect("reopen");
        assert_eq!(recovery.checkpoint, expected_checkpoint, "{crash:?}");
        let meta = storage.meta();
        assert_eq!(
            meta.shard(0).map(|s| s.applied_index),
            Some(10 * expected_checkpoint),
            "{crash:?}"
        );
        if expected_checkpoint == 1 {
            for id in 2..34 {
                assert_eq!(
                    generation_of(&storage, id).expect("read"),
                    1,
                    "{crash:?} page {id}"
                );
            }
            assert_eq!(recovery.page_count, 34);
        } else {
            for (id, generation) in &second {
                assert_eq!(
                    generation_of(&storage, *id).expect("read"),
                    *generation,
                    "{crash:?} page {id}"
                );
            }
            assert_eq!(recovery.page_count, 44, "{crash:?}");
            assert_eq!(recovery.free_pages, 1, "{crash:?}: page 33 is free");
            assert!(
                recovery.rolled_forward || matches!(crash, CrashPoint::AfterMeta),
                "{crash:?}: {recovery:?}"
            );
        }
        // The reopened storage checkpoints and reopens cleanly again.
        stamp(&storage, 2, 3);
        let pending = storage.begin_checkpoint(shard(30)).expect("begin");
        storage.write_checkpoint(pending, None).expect("checkpoint");
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(generation_of(&storage, 2).expect("read"), 3);
        // The freed page is reused, not lost.
        let reused = storage
            .pool()
            .allocate(PageKind::Leaf)
            .expect("allocate")
            .id();
        if expected_checkpoint == 2 {
            assert_eq!(reused, 33, "{crash:?}");
        }
    }
}

#[test]
fn a_torn_page_of_a_finished_checkpoint_is_repaired_from_the_double_write_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(dir.path());
    let id = storage
        .pool()
        .allocate(PageKind::Leaf)
        .expect("allocate")
        .id();
    stamp(&storage, id, 5);
    let pending = storage.begin_checkpoint(shard(1)).expect("begin");
    storage.write_checkpoint(pending, None).expect("checkpoint");
    drop(storage);
    // Half the page overwritten with garbage, as a torn write leaves it.
    let path = dir.path().join(PAGE_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = id as usize * PAGE_SIZE;
    bytes[at + PAGE_SIZE / 2..at + PAGE_SIZE].fill(0xAB);
    std::fs::write(&path, &bytes).expect("write");
    let (storage, recovery) = Storage::open(dir.path(), config()).expect("reopen");
    assert_eq!(recovery.repaired, vec![id]);
    assert_eq!(generation_of(&storage, id).expect("repaired"), 5);
}

#[test]
fn a_damaged_page_without_a_copy_is_reported_by_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(dir.path());
    let ids: Vec<PageId> = (0..3)
        .map(|_| {
            storage
                .pool()
                .allocate(PageKind::Leaf)
                .expect("allocate")
                .id()
        })
        .collect();
    for id in &ids {
        stamp(&storage, *id, 1);
    }
    let pending = storage.begin_checkpoint(shard(1)).expect("begin");
    storage.write_checkpoint(pending, None).expect("checkpoint");
    // A second checkpoint of another page: the double-write file no longer
    // holds ids[1].
    stamp(&storage, ids[0], 2);
    let pending = storage.begin_checkpoint(shard(2)).expect("begin");
    storage.write_checkpoint(pending, None).expect("checkpoint");
    drop(storage);
    let path = dir.path().join(PAGE_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[ids[1] as usize * PAGE_SIZE + 1000] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let storage = open(dir.path());
    let error = generation_of(&storage, ids[1]).expect_err("damaged");
    assert!(
        matches!(error, StorageError::Corrupt { page, .. } if page == ids[1]),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!("page {}", ids[1])),
        "{error}"
    );
    assert_eq!(generation_of(&storage, ids[2]).expect("intact"), 1);
}

#[test]
fn a_checkpoint_failing_after_its_double_write_stops_the_storage_until_a_restart_finishes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(dir.path());
    let ids: Vec<PageId> = (0..10)
        .map(|_| {
            storage
                .pool()
                .allocate(PageKind::Leaf)
                .expect("allocate")
                .id()
        })
        .collect();
    for id in &ids {
        stamp(&storage, *id, 1);
    }
    let pending = storage.begin_checkpoint(shard(1)).expect("begin");
    storage
        .write_checkpoint(pending, None)
        .expect("checkpoint 1");
    for id in &ids {
        stamp(&storage, *id, 2);
    }
    let pending = storage.begin_checkpoint(shard(2)).expect("begin");
    let failed = storage.write_checkpoint(
        pending,
        Some(CrashPoint::FailDuringInPlace { pages_written: 4 }),
    );
    assert!(
        matches!(failed, Err(StorageError::Stopped(_))),
        "{failed:?}"
    );
    assert!(storage.stopped().is_some());
    // No new checkpoint may overwrite the double-write file now.
    assert!(matches!(
        storage.begin_checkpoint(shard(3)),
        Err(StorageError::Stopped(_))
    ));
    drop(storage);
    let (storage, recovery) = Storage::open(dir.path(), config()).expect("reopen");
    assert!(recovery.rolled_forward);
    assert_eq!(recovery.checkpoint, 2);
    for id in &ids {
        assert_eq!(generation_of(&storage, *id).expect("read"), 2);
    }
}

#[test]
fn a_torn_meta_page_of_the_very_first_checkpoint_is_finished_from_the_double_write_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(dir.path());
    let id = storage
        .pool()
        .allocate(PageKind::Leaf)
        .expect("allocate")
        .id();
    stamp(&storage, id, 7);
    let pending = storage.begin_checkpoint(shard(5)).expect("begin");
    let report = storage
        .write_checkpoint(pending, Some(CrashPoint::DuringMeta))
        .expect("checkpoint");
    assert_eq!(report.crashed_at, Some(CrashPoint::DuringMeta));
    drop(storage);
    // Slot 0 was never written and slot 1 is torn: neither is a meta page.
    let (storage, recovery) = Storage::open(dir.path(), config()).expect("reopen");
    assert!(recovery.rolled_forward);
    assert_eq!(recovery.checkpoint, 1);
    assert_eq!(generation_of(&storage, id).expect("read"), 7);
}
