//! Buffer pool tests on real page files: pinning, eviction by policy,
//! exhaustion, memory pressure, copy on write during a checkpoint, and
//! concurrent readers.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A page file with pages 2..2+count written, each with its id in its body.
fn file_with_pages(dir: &std::path::Path, count: u64) -> Arc<Pager> {
    let pager = Pager::open(&dir.join("pages")).expect("open");
    for id in FIRST_DATA_PAGE..FIRST_DATA_PAGE + count {
        let mut page = Page::new(id);
        page.reset(PageKind::Leaf);
        page.body_mut()[..8].copy_from_slice(&id.to_le_bytes());
        page.seal(1);
        pager.write(&page).expect("write");
    }
    pager.sync().expect("sync");
    Arc::new(pager)
}

fn pool(pager: Arc<Pager>, frames: usize, policy: Policy, pages: u64) -> BufferPool {
    let config = PoolConfig {
        frames,
        policy,
        wait_max: Duration::from_millis(200),
    };
    BufferPool::new(pager, config, FIRST_DATA_PAGE + pages, [])
}

fn body_id(page: &Page) -> u64 {
    super::super::page::read_u64(page.body(), 0)
}

/// Writes every page of a checkpoint in place, as the checkpointer does.
fn checkpoint(pool: &BufferPool) {
    let plan = pool.begin_checkpoint().expect("begin");
    for id in plan.pages {
        let mut page = pool.checkpoint_copy(id).expect("copy");
        page.seal(2);
        pool.pager().write(&page).expect("write");
    }
    pool.pager().sync().expect("sync");
    pool.finish_checkpoint();
}

#[test]
fn a_pinned_page_is_never_evicted() {
    let dir = tempfile::tempdir().expect("tempdir");
    for policy in [Policy::Clock, Policy::Lru2] {
        let pool = pool(file_with_pages(dir.path(), 20), 4, policy, 20);
        let held = pool.read(2).expect("read");
        for round in 0..3 {
            for id in 3..22 {
                let page = pool.read(id).expect("read");
                assert_eq!(body_id(&page), id, "{policy} round {round}");
                assert!(pool.is_resident(2), "{policy}: the pinned page was evicted");
            }
        }
        assert_eq!(body_id(&held), 2);
        assert!(pool.stats().evictions > 0);
        drop(held);
        assert_eq!(pool.pinned_frames(), 0);
    }
}

#[test]
fn lru_k_keeps_the_pages_used_twice_through_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool(file_with_pages(dir.path(), 20), 4, Policy::Lru2, 20);
    // Pages 2 and 3 are used twice; then a scan reads 4..20 once each.
    for id in [2, 3, 2, 3] {
        drop(pool.read(id).expect("read"));
    }
    for id in 4..21 {
        drop(pool.read(id).expect("read"));
    }
    assert!(
        pool.is_resident(2) && pool.is_resident(3),
        "the scan flushed the hot pages"
    );
    // Clock has no such memory: the same pattern flushes them.
    let clock = self::pool(file_with_pages(dir.path(), 20), 4, Policy::Clock, 20);
    for id in [2, 3, 2, 3] {
        drop(clock.read(id).expect("read"));
    }
    for id in 4..21 {
        drop(clock.read(id).expect("read"));
    }
    assert!(!clock.is_resident(2) && !clock.is_resident(3));
}

#[test]
fn clock_evicts_the_page_whose_bit_is_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool(file_with_pages(dir.path(), 10), 3, Policy::Clock, 10);
    for id in [2, 3, 4] {
        drop(pool.read(id).expect("read"));
    }
    // All three bits set: the hand clears them and takes frame 0 (page 2).
    drop(pool.read(5).expect("read"));
    assert!(!pool.is_resident(2));
    // Page 3 is used again, so it survives the next sweep; page 4 goes.
    drop(pool.read(3).expect("read"));
    drop(pool.read(6).expect("read"));
    assert!(pool.is_resident(3) && !pool.is_resident(4));
}

#[test]
fn every_frame_pinned_gives_a_clear_error_after_a_bounded_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool(file_with_pages(dir.path(), 5), 2, Policy::Lru2, 5);
    let first = pool.read(2).expect("read");
    let second = pool.read(3).expect("read");
    let started = std::time::Instant::now();
    let error = pool.read(4).expect_err("no frame left");
    assert!(
        matches!(error, StorageError::PoolExhausted { frames: 2, .. }),
        "{error}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(error.to_string().contains("all 2 frames"), "{error}");
    drop(first);
    assert_eq!(body_id(&pool.read(4).expect("a frame is free again")), 4);
    drop(second);
}

#[test]
fn dirty_pages_are_not_stolen_and_pressure_asks_for_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Arc::new(pool(file_with_pages(dir.path(), 5), 3, Policy::Lru2, 5));
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    pool.on_pressure(Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    for _ in 0..3 {
        let mut page = pool.allocate(PageKind::Leaf).expect("allocate");
        page.body_mut()[0] = 9;
    }
    assert_eq!(pool.dirty_frames(), 3);
    // Every frame is dirty: a read must wait, ask for a checkpoint, and fail.
    assert!(matches!(
        pool.read(2),
        Err(StorageError::PoolExhausted { .. })
    ));
    assert!(asked.load(Ordering::SeqCst) >= 1);
    // A checkpoint while a reader waits lets the reader through.
    let waiting = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.read(2).map(|page| body_id(&page)))
    };
    std::thread::sleep(Duration::from_millis(50));
    checkpoint(&pool);
    assert_eq!(waiting.join().expect("thread").expect("read"), 2);
    assert_eq!(pool.dirty_frames(), 0);
}

#[test]
fn a_write_during_a_checkpoint_keeps_the_checkpoint_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool(file_with_pages(dir.path(), 3), 8, Policy::Lru2, 3);
    pool.write(2).expect("write").body_mut()[100] = 1;
    let plan = pool.begin_checkpoint().expect("begin");
    assert_eq!(plan.pages, vec![2]);
    assert!(pool.begin_checkpoint().is_err(), "one checkpoint at a time");
    // Written after the checkpoint began: the checkpoint still sees 1.
    pool.write(2).expect("write").body_mut()[100] = 2;
    assert_eq!(pool.checkpoint_copy(2).expect("copy").body()[100], 1);
    assert_eq!(pool.read(2).expect("read").body()[100], 2);
    pool.finish_checkpoint();
    assert_eq!(
        pool.dirty_frames(),
        1,
        "the newer write waits for the next checkpoint"
    );
    // An untouched checkpoint page is copied from its frame.
    let plan = pool.begin_checkpoint().expect("begin");
    assert_eq!(plan.pages, vec![2]);
    assert_eq!(pool.checkpoint_copy(2).expect("copy").body()[100], 2);
    pool.abandon_checkpoint();
    assert_eq!(
        pool.dirty_frames(),
        1,
        "an abandoned checkpoint leaves its pages dirty"
    );
}

#[test]
fn freed_pages_are_reused_and_the_plan_lists_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = pool(file_with_pages(dir.path(), 0), 8, Policy::Lru2, 0);
    let a = pool.allocate(PageKind::Leaf).expect("allocate").id();
    let b = pool.allocate(PageKind::Leaf).expect("allocate").id();
    assert_eq!((a, b), (2, 3));
    pool.free(a).expect("free");
    let plan = pool.begin_checkpoint().expect("begin");
    assert_eq!((plan.free.clone(), plan.page_count), (vec![2], 4));
    pool.finish_checkpoint();
    assert_eq!(pool.allocate(PageKind::Overflow).expect("allocate").id(), 2);
    // Freeing a page somebody holds is refused.
    let held = pool.read(3).expect("read");
    assert!(pool.free(3).is_err());
    drop(held);
}

#[test]
fn concurrent_readers_see_the_right_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Arc::new(pool(file_with_pages(dir.path(), 64), 16, Policy::Lru2, 64));
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut state = thread + 1;
                for _ in 0..5_000 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let id = FIRST_DATA_PAGE + (state >> 33) % 64;
                    let page = pool.read(id).expect("read");
                    assert_eq!(body_id(&page), id);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("reader");
    }
    let stats = pool.stats();
    assert_eq!(stats.hits + stats.misses, 20_000);
    assert!(stats.evictions > 0);
    assert_eq!(stats.pinned, 0);
}
