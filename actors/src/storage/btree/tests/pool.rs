//! The tree on the real buffer pool, with a pool small enough that pages
//! are evicted and read back from the page file between checkpoints: every
//! guard is given back (no frame stays pinned), no page is freed while
//! pinned, and the pages in use are the tree's.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::storage::buffer::{BufferPool, CheckpointPlan, Policy, PoolConfig, FIRST_DATA_PAGE};
use crate::storage::pager::Pager;

/// Writes the dirty pages to the page file, as the checkpointer does, so
/// their frames can be evicted; returns the checkpoint's plan.
fn checkpoint(pool: &BufferPool) -> CheckpointPlan {
    let plan = pool.begin_checkpoint().expect("begin");
    for id in &plan.pages {
        let mut page = pool.checkpoint_copy(*id).expect("copy");
        page.seal(1);
        pool.pager().write(&page).expect("write");
    }
    pool.finish_checkpoint();
    plan
}

#[test]
fn the_tree_runs_on_the_buffer_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pager = Arc::new(Pager::open(&dir.path().join("pages")).expect("pager"));
    let config = PoolConfig {
        frames: crate::storage::buffer::FRAMES_MIN,
        policy: Policy::Lru2,
        wait_max: Duration::from_secs(2),
    };
    let pool = Arc::new(BufferPool::new(pager, config, FIRST_DATA_PAGE, []));
    let tree = BTree::create(pool.clone()).expect("create");
    let mut model = BTreeMap::new();
    for op in 0..4000usize {
        let n = (op * 7919) % 1500;
        let key = format!("{}{n:05}", "k".repeat(n % 200)).into_bytes();
        if op % 3 == 2 {
            assert_eq!(tree.delete(&key).unwrap(), model.remove(&key).is_some());
        } else {
            let value = vec![(op % 251) as u8; (op * 37) % 12_000];
            tree.insert(&key, &value).unwrap();
            model.insert(key, value);
        }
        if op % 20 == 19 {
            checkpoint(&pool);
        }
    }
    assert!(
        pool.stats().evictions > 0,
        "pages went to the file and back"
    );
    assert_eq!(pool.pinned_frames(), 0, "every guard was given back");
    let expected: Vec<_> = model.into_iter().collect();
    assert_eq!(contents(&tree), expected);
    let shape = tree.check().expect("check");
    assert!(shape.height >= 2 && shape.overflow > 0, "{shape:?}");
    let plan = checkpoint(&pool);
    let in_use = plan.page_count - FIRST_DATA_PAGE - plan.free.len() as u64;
    assert_eq!(in_use, shape.pages(), "{shape:?}");
    assert_eq!(pool.pinned_frames(), 0);
}
