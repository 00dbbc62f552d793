//! The storage of one node as a whole: opening it (with crash recovery) and
//! checkpointing it.
//!
//! A checkpoint makes the pages on disk equal to the trees as they were at
//! one moment, and records each shard's applied Raft index at that moment
//! in the meta page. Its steps, in order:
//!
//! 1. begin (at a moment when no write is in progress): every dirty frame
//!    becomes a checkpoint frame (`BufferPool::begin_checkpoint`); writers
//!    carry on and copy such a page aside before changing it;
//! 2. write every checkpoint page, the free list and the new meta page to
//!    the double-write file, and sync it;
//! 3. write the same pages in place in the page file, and sync it;
//! 4. write the meta page in its slot, and sync;
//! 5. the checkpoint frames become clean (evictable) again.
//!
//! Recovery on open: if the double-write file is complete and newer than
//! the meta page, the crash came after step 2: its pages (the meta page
//! among them) are written in place again, finishing the checkpoint. If it
//! is the checkpoint the meta page names, every page it holds is compared
//! with the page in place and a torn one is repaired. Otherwise (no file,
//! or one cut short) the crash came before step 3 and the page file still
//! holds the previous checkpoint, untouched. The caller then replays the
//! Raft log from each shard's applied index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::buffer::{BufferPool, CheckpointPlan, PoolConfig};
use super::doublewrite::{self, DoubleWriter};
use super::freelist;
use super::meta::{Meta, ShardMeta};
use super::pager::Pager;
use super::{PageId, StorageError, PAGE_SIZE};

/// Name of the page file in the storage directory.
pub const PAGE_FILE: &str = "pages";

/// Name of the double-write file in the storage directory.
pub const DOUBLE_WRITE_FILE: &str = "doublewrite";

/// Where a test makes a checkpoint stop, as if the process died there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Some pages are in the double-write file, which is not finished.
    DuringDoubleWrite,
    /// The double-write file is complete and synced; nothing is in place.
    AfterDoubleWrite,
    /// This many pages are in place and the next one is half written (torn).
    DuringInPlace {
        /// Pages fully written in place first.
        pages_written: usize,
    },
    /// Every page is in place and synced; the meta page is half written (torn).
    DuringMeta,
    /// Every page is in place and synced; the meta page is not.
    AfterInPlace,
    /// The meta page is written: only the in-memory bookkeeping is missing.
    AfterMeta,
    /// Not a crash: writing in place fails after this many pages, as a
    /// failing disk would (the process goes on).
    FailDuringInPlace {
        /// Pages written in place before the failure.
        pages_written: usize,
    },
}

/// What a checkpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Its number.
    pub checkpoint: u64,
    /// Pages written (tree pages, free list and meta).
    pub pages: usize,
    /// How long it took.
    pub duration: Duration,
    /// Set when a test made it stop early.
    pub crashed_at: Option<CrashPoint>,
}

/// What recovery found and did when the storage was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The checkpoint the storage opened at.
    pub checkpoint: u64,
    /// The double-write file finished a checkpoint the crash interrupted.
    pub rolled_forward: bool,
    /// Pages found torn in place and repaired from the double-write file.
    pub repaired: Vec<PageId>,
    /// Free pages listed.
    pub free_pages: usize,
    /// Pages in use or free.
    pub page_count: PageId,
}

/// A checkpoint begun but not yet written.
pub struct PendingCheckpoint {
    plan: CheckpointPlan,
    meta: Meta,
}

impl PendingCheckpoint {
    /// Its number.
    pub fn checkpoint(&self) -> u64 {
        self.meta.checkpoint
    }

    /// Pages it will write besides the free list and meta page.
    pub fn pages(&self) -> usize {
        self.plan.pages.len()
    }
}

/// One node's page file, buffer pool and checkpoints.
pub struct Storage {
    dir: PathBuf,
    pool: Arc<BufferPool>,
    /// The meta of the last finished checkpoint.
    meta: Mutex<Meta>,
    /// Set when a checkpoint failed after its double-write file was synced:
    /// nothing may be written until a restart finishes that checkpoint.
    stopped: Mutex<Option<String>>,
}

impl Storage {
    /// Opens the storage in `dir` (creating it if empty), recovering from a
    /// crash during a checkpoint.
    pub fn open(dir: &Path, config: PoolConfig) -> Result<(Arc<Storage>, Recovery), StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| super::pager::io_error("create", dir, &e))?;
        let pager = Pager::open(&dir.join(PAGE_FILE))?;
        let mut recovery = Recovery::default();
        let double_written = doublewrite::read(&dir.join(DOUBLE_WRITE_FILE))?;
        let mut meta = match Meta::load(&pager) {
            Ok(meta) => meta,
            // Both meta slots unreadable: the first checkpoint's meta write
            // was torn (the other slot never written). A complete
            // double-write file holds that meta page: finish from it.
            Err(error) => match &double_written {
                Some(written) => {
                    for page in &written.pages {
                        pager.write(page)?;
                    }
                    pager.sync()?;
                    recovery.rolled_forward = true;
                    Meta::load(&pager)?
                }
                None => return Err(error),
            },
        };
        if let Some(written) = double_written {
            if written.checkpoint > meta.checkpoint {
                for page in &written.pages {
                    pager.write(page)?;
                }
                pager.sync()?;
                meta = Meta::load(&pager)?;
                if meta.checkpoint != written.checkpoint {
                    return Err(StorageError::Malformed {
                        page: 0,
                        reason: format!(
                            "the double-write file finishes checkpoint {} but the meta page then says {}",
                            written.checkpoint, meta.checkpoint
                        ),
                    });
                }
                recovery.rolled_forward = true;
            } else if written.checkpoint == meta.checkpoint {
                for page in &written.pages {
                    let in_place = pager.read_raw(page.id())?;
                    if in_place.bytes() != page.bytes() {
                        pager.write(page)?;
                        recovery.repaired.push(page.id());
                    }
                }
                if !recovery.repaired.is_empty() {
                    pager.sync()?;
                }
            }
        }
        let free = freelist::load(&pager, meta.free_list_head, meta.free_count)?;
        recovery.checkpoint = meta.checkpoint;
        recovery.free_pages = free.len();
        recovery.page_count = meta.page_count;
        let pool = Arc::new(BufferPool::new(
            Arc::new(pager),
            config,
            meta.page_count,
            free,
        ));
        Ok((
            Arc::new(Storage {
                dir: dir.to_path_buf(),
                pool,
                meta: Mutex::new(meta),
                stopped: Mutex::new(None),
            }),
            recovery,
        ))
    }

    /// The buffer pool (the trees' page store).
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// The meta page of the last finished checkpoint.
    pub fn meta(&self) -> Meta {
        self.meta.lock().clone()
    }

    /// Starts a checkpoint of the trees as they are now; `shards` says where
    /// each tree's root is and how far its log is applied. Call it when no
    /// write to any tree is in progress; it is quick (no I/O).
    pub fn begin_checkpoint(
        &self,
        shards: Vec<ShardMeta>,
    ) -> Result<PendingCheckpoint, StorageError> {
        if let Some(reason) = self.stopped() {
            return Err(StorageError::Stopped(reason));
        }
        let plan = self.pool.begin_checkpoint()?;
        let previous = self.meta.lock().checkpoint;
        let meta = Meta {
            checkpoint: previous + 1,
            page_count: plan.page_count,
            free_list_head: 0,
            free_count: plan.free.len() as u64,
            shards,
        };
        Ok(PendingCheckpoint { plan, meta })
    }

    /// Why the storage stopped, if a checkpoint failed midway.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.lock().clone()
    }

    /// Writes a begun checkpoint (blocking I/O: run it off the threads that
    /// serve requests). A failure before the double-write file is synced
    /// leaves the page file untouched: the checkpoint's pages stay dirty for
    /// the next one. A failure after it may have written pages in place:
    /// the storage stops (`StorageError::Stopped`), because a new
    /// checkpoint would overwrite that file, the only intact copy; a restart
    /// finishes the checkpoint from it. `crash` is for tests: stop at that
    /// point, as a crash would.
    pub fn write_checkpoint(
        &self,
        pending: PendingCheckpoint,
        crash: Option<CrashPoint>,
    ) -> Result<CheckpointReport, StorageError> {
        let started = Instant::now();
        let checkpoint = pending.meta.checkpoint;
        let mut double_written = false;
        match self.write_pages(pending, crash, &mut double_written) {
            Ok((pages, crashed_at)) => {
                if crashed_at.is_none() {
                    self.pool.finish_checkpoint();
                }
                Ok(CheckpointReport {
                    checkpoint,
                    pages,
                    duration: started.elapsed(),
                    crashed_at,
                })
            }
            Err(error) if double_written => {
                let reason = format!(
                    "checkpoint {checkpoint} failed after its double-write file was synced: {error}"
                );
                *self.stopped.lock() = Some(reason.clone());
                Err(StorageError::Stopped(reason))
            }
            Err(error) => {
                self.pool.abandon_checkpoint();
                Err(error)
            }
        }
    }

    /// Gives up the begun checkpoint, which will not be written (the
    /// message carrying it was lost): its pages are dirty again.
    pub fn abandon_checkpoint(&self) {
        self.pool.abandon_checkpoint();
    }

    fn write_pages(
        &self,
        pending: PendingCheckpoint,
        crash: Option<CrashPoint>,
        double_written: &mut bool,
    ) -> Result<(usize, Option<CrashPoint>), StorageError> {
        let PendingCheckpoint { plan, mut meta } = pending;
        let lsn = meta
            .shards
            .iter()
            .map(|s| s.applied_index)
            .max()
            .unwrap_or(0);
        let (mut free_pages, head) = freelist::build(&plan.free);
        meta.free_list_head = head;
        let mut meta_page = meta.to_page()?;
        meta_page.seal(lsn);
        for page in &mut free_pages {
            page.seal(lsn);
        }
        let total = plan.pages.len() + free_pages.len() + 1;
        let copy = |id: PageId| -> Result<Box<super::Page>, StorageError> {
            let mut page = self.pool.checkpoint_copy(id)?;
            page.seal(lsn);
            Ok(page)
        };

        // 2. Everything into the double-write file, synced.
        let path = self.dir.join(DOUBLE_WRITE_FILE);
        let mut writer = DoubleWriter::create(&path, meta.checkpoint, total as u64)?;
        for (i, id) in plan.pages.iter().enumerate() {
            if crash == Some(CrashPoint::DuringDoubleWrite) && i == plan.pages.len() / 2 {
                return Ok((i, crash));
            }
            writer.append(&*copy(*id)?)?;
        }
        for page in free_pages.iter().chain(std::iter::once(&meta_page)) {
            writer.append(page)?;
        }
        writer.finish()?;
        *double_written = true;
        if crash == Some(CrashPoint::AfterDoubleWrite) {
            return Ok((total, crash));
        }

        // 3. The same pages in place, synced.
        let pager = self.pool.pager();
        for (i, id) in plan.pages.iter().enumerate() {
            let page = copy(*id)?;
            match crash {
                Some(CrashPoint::DuringInPlace { pages_written }) if i == pages_written => {
                    tear(pager, &page)?;
                    return Ok((i, crash));
                }
                Some(CrashPoint::FailDuringInPlace { pages_written }) if i == pages_written => {
                    return Err(StorageError::Io {
                        action: "write",
                        path: pager.path().display().to_string(),
                        reason: "injected failure".into(),
                    });
                }
                _ => {}
            }
            pager.write(&page)?;
        }
        for page in &free_pages {
            pager.write(page)?;
        }
        pager.sync()?;
        if crash == Some(CrashPoint::AfterInPlace) {
            return Ok((total, crash));
        }

        // 4. The meta page, synced: the checkpoint counts from here.
        if crash == Some(CrashPoint::DuringMeta) {
            tear(pager, &meta_page)?;
            return Ok((total, crash));
        }
        pager.write(&meta_page)?;
        pager.sync()?;
        *self.meta.lock() = meta;
        if crash == Some(CrashPoint::AfterMeta) {
            return Ok((total, crash));
        }
        Ok((total, None))
    }
}

/// Writes `page` in place torn: its first half, then garbage where the rest
/// should be, as a crash in the middle of a page write can leave it (the
/// garbage makes sure the tear shows even where the page ends in zeroes).
fn tear(pager: &Pager, page: &super::Page) -> Result<(), StorageError> {
    let mut torn = page.clone();
    torn.bytes_mut()[PAGE_SIZE / 2..].fill(0xEE);
    pager.write(&torn)?;
    pager.sync()
}
