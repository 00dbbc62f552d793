//! The buffer pool: a fixed number of frames holding pages, a shared page
//! table (DashMap) from page id to frame so that fetching a page is not an
//! actor message, pin counts held by RAII guards, a latch per frame, and a
//! replacer (Clock or LRU-K) choosing victims among frames nobody pins.
//!
//! Dirty pages are never stolen: only the checkpointer writes them, so a
//! frame is evictable only when unpinned, clean and not part of the
//! checkpoint in flight. A checkpoint starts by turning every dirty frame
//! into a checkpoint frame; the first writer to touch one after that copies
//! the page aside first (copy on write), so the checkpointer always writes
//! the page as it was when the checkpoint began. When no frame can be
//! evicted, a request asks for a checkpoint (memory pressure) and waits a
//! bounded time before it fails with `PoolExhausted`, never deadlocking.

mod replacer;

use std::collections::{BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::lock_api::{ArcRwLockReadGuard, ArcRwLockWriteGuard};
use parking_lot::{Condvar, Mutex, RawRwLock, RwLock};

use replacer::Replacer;
pub use replacer::{FrameId, Policy};

use super::pager::Pager;
use super::{Page, PageId, PageKind, PageStore, StorageError, PAGE_SIZE};

/// A frame holding no page.
const NO_PAGE: PageId = u64::MAX;

/// The page table's hash: page ids are integers the engine hands out, not
/// keys a client chooses, so a multiply by the golden ratio spreads them
/// over the table's shards and buckets for a fraction of SipHash's cost
/// (it is paid once per tree level on every read).
#[derive(Clone, Copy, Debug, Default)]
struct PageIdHasher(u64);

impl std::hash::Hasher for PageIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Page id to the frame holding it.
type PageTable = DashMap<PageId, FrameId, std::hash::BuildHasherDefault<PageIdHasher>>;

/// The first page id the pool hands out: 0 and 1 are the meta slots.
pub const FIRST_DATA_PAGE: PageId = 2;

/// How a pool is sized and behaves.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Frames (each one page).
    pub frames: usize,
    /// The replacement policy.
    pub policy: Policy,
    /// How long a request waits for a frame before it fails.
    pub wait_max: Duration,
}

impl PoolConfig {
    /// A pool of about `megabytes` MiB.
    pub fn with_megabytes(megabytes: usize, policy: Policy) -> PoolConfig {
        PoolConfig {
            frames: (megabytes * 1024 * 1024 / PAGE_SIZE).max(FRAMES_MIN),
            policy,
            wait_max: Duration::from_secs(5),
        }
    }
}

/// Fewer frames than this can't hold one request's pages (a 1 MiB value is
/// 128 overflow pages, plus the path through the tree and its splits).
pub const FRAMES_MIN: usize = 256;

/// One frame: a page buffer behind its latch, and what the pool knows of it.
struct Frame {
    latch: Arc<RwLock<Box<Page>>>,
    page: AtomicU64,
    pins: AtomicU32,
    dirty: AtomicBool,
    /// Dirty when the checkpoint in flight began and not written to since:
    /// the buffer is the checkpoint's copy until the checkpoint ends.
    checkpoint: AtomicBool,
}

impl Frame {
    fn new() -> Frame {
        Frame {
            latch: Arc::new(RwLock::new(Page::new(NO_PAGE))),
            page: AtomicU64::new(NO_PAGE),
            pins: AtomicU32::new(0),
            dirty: AtomicBool::new(false),
            checkpoint: AtomicBool::new(false),
        }
    }

    fn evictable(&self) -> bool {
        self.pins.load(Ordering::Acquire) == 0
            && !self.dirty.load(Ordering::Acquire)
            && !self.checkpoint.load(Ordering::Acquire)
    }
}

/// Counters the pool keeps, readable at any time.
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    dirty: AtomicUsize,
    waiting: AtomicUsize,
}

/// A snapshot of the pool's counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Frames in the pool.
    pub frames: usize,
    /// Fetches that found their page in a frame.
    pub hits: u64,
    /// Fetches that read their page from the file.
    pub misses: u64,
    /// Pages evicted to make room.
    pub evictions: u64,
    /// Frames changed since the last checkpoint began.
    pub dirty: usize,
    /// Frames pinned right now.
    pub pinned: usize,
    /// Frames waiting to be written by the checkpoint in flight.
    pub checkpointing: usize,
}

/// Page ids: the free ones and the next never used.
struct PageSpace {
    free: BTreeSet<PageId>,
    next: PageId,
}

/// Pages as they were when a checkpoint began, for the checkpointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointPlan {
    /// Pages to write, in id order.
    pub pages: Vec<PageId>,
    /// Free page ids at that moment.
    pub free: Vec<PageId>,
    /// Pages the file must have (one past the highest id in use or free).
    pub page_count: PageId,
}

/// What a pin guard needs to give its pin back.
struct Pin {
    frame: usize,
    shared: Arc<Shared>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let frame = &self.shared.frames[self.frame];
        if frame.pins.fetch_sub(1, Ordering::AcqRel) == 1
            && self.shared.counters.waiting.load(Ordering::Acquire) > 0
        {
            self.shared.wake();
        }
    }
}

/// What guards share with the pool.
struct Shared {
    frames: Vec<Frame>,
    counters: Counters,
    wait_lock: Mutex<()>,
    wait: Condvar,
}

impl Shared {
    fn wake(&self) {
        let _lock = self.wait_lock.lock();
        self.wait.notify_all();
    }
}

/// A page latched for reading; unlatched and unpinned on drop.
pub struct PoolRead {
    guard: ArcRwLockReadGuard<RawRwLock, Box<Page>>,
    _pin: Pin,
}

impl Deref for PoolRead {
    type Target = Page;
    fn deref(&self) -> &Page {
        &self.guard
    }
}

impl std::fmt::Debug for PoolRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolRead({:?})", **self.guard)
    }
}

/// A page latched for writing (and so dirty); unlatched and unpinned on drop.
pub struct PoolWrite {
    guard: ArcRwLockWriteGuard<RawRwLock, Box<Page>>,
    _pin: Pin,
}

impl Deref for PoolWrite {
    type Target = Page;
    fn deref(&self) -> &Page {
        &self.guard
    }
}

impl DerefMut for PoolWrite {
    fn deref_mut(&mut self) -> &mut Page {
        &mut self.guard
    }
}

/// The buffer pool over one page file.
pub struct BufferPool {
    pager: Arc<Pager>,
    shared: Arc<Shared>,
    table: PageTable,
    free_frames: Mutex<Vec<FrameId>>,
    replacer: Replacer,
    pages: Mutex<PageSpace>,
    /// Copies of checkpoint pages taken by writers (copy on write), while a
    /// checkpoint is in flight.
    checkpoint: Mutex<Option<HashMap<PageId, Box<Page>>>>,
    wait_max: Duration,
    /// Called when a request finds no frame to evict: asks for a checkpoint.
    pressure: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl BufferPool {
    /// A pool over `pager` whose page ids in use end before `page_count`,
    /// with `free` among them free.
    pub fn new(
        pager: Arc<Pager>,
        config: PoolConfig,
        page_count: PageId,
        free: impl IntoIterator<Item = PageId>,
    ) -> BufferPool {
        let frames = config.frames.max(1);
        BufferPool {
            pager,
            shared: Arc::new(Shared {
                frames: (0..frames).map(|_| Frame::new()).collect(),
                counters: Counters::default(),
                wait_lock: Mutex::new(()),
                wait: Condvar::new(),
            }),
            table: PageTable::default(),
            free_frames: Mutex::new((0..frames).rev().collect()),
            replacer: Replacer::new(config.policy, frames),
            pages: Mutex::new(PageSpace {
                free: free.into_iter().collect(),
                next: page_count.max(FIRST_DATA_PAGE),
            }),
            checkpoint: Mutex::new(None),
            wait_max: config.wait_max,
            pressure: Mutex::new(None),
        }
    }

    /// Sets what the pool calls when it runs out of evictable frames (the
    /// `BufferPoolManager` asks for an early checkpoint).
    pub fn on_pressure(&self, callback: Box<dyn Fn() + Send + Sync>) {
        *self.pressure.lock() = Some(callback);
    }

    /// The page file.
    pub fn pager(&self) -> &Arc<Pager> {
        &self.pager
    }

    /// Frames in the pool.
    pub fn frames(&self) -> usize {
        self.shared.frames.len()
    }

    /// Frames changed since the last checkpoint began.
    pub fn dirty_frames(&self) -> usize {
        self.shared.counters.dirty.load(Ordering::Acquire)
    }

    /// Whether a checkpoint is in flight.
    pub fn checkpoint_in_flight(&self) -> bool {
        self.checkpoint.lock().is_some()
    }

    /// The pool's counters now.
    pub fn stats(&self) -> PoolStats {
        let counters = &self.shared.counters;
        let frames = &self.shared.frames;
        PoolStats {
            frames: frames.len(),
            hits: counters.hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            evictions: counters.evictions.load(Ordering::Relaxed),
            dirty: counters.dirty.load(Ordering::Relaxed),
            pinned: frames
                .iter()
                .filter(|f| f.pins.load(Ordering::Relaxed) > 0)
                .count(),
            checkpointing: frames
                .iter()
                .filter(|f| f.checkpoint.load(Ordering::Relaxed))
                .count(),
        }
    }

    /// Whether page `id` is in a frame now (for tests of eviction).
    pub fn is_resident(&self, id: PageId) -> bool {
        self.table.contains_key(&id)
    }

    fn pin_of(&self, frame: FrameId) -> Pin {
        Pin {
            frame,
            shared: self.shared.clone(),
        }
    }

    /// Finds page `id` in a frame, or reads it into one; returns it pinned.
    fn fetch(&self, id: PageId) -> Result<(FrameId, Pin), StorageError> {
        if id < FIRST_DATA_PAGE || id == NO_PAGE {
            return Err(StorageError::Malformed {
                page: id,
                reason: "not a data page id".into(),
            });
        }
        // Read the clock only on a miss: a hit never waits.
        let mut deadline = None;
        loop {
            if let Some(entry) = self.table.get(&id) {
                let frame = *entry;
                // Pinned while the table's shard is locked, so eviction
                // (which removes under the shard's write lock) can't race it.
                self.shared.frames[frame]
                    .pins
                    .fetch_add(1, Ordering::AcqRel);
                drop(entry);
                self.shared.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.replacer.record_access(frame);
                return Ok((frame, self.pin_of(frame)));
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.wait_max);
            let frame = self.take_frame(deadline)?;
            let pin = self.pin_of(frame);
            let loaded = {
                let mut page = self.shared.frames[frame].latch.write();
                self.pager.read(id, &mut page)
            };
            if let Err(error) = loaded {
                self.release_frame(frame, pin);
                return Err(error);
            }
            match self.table.entry(id) {
                // Another request read it meanwhile: use that frame.
                Entry::Occupied(_) => {
                    self.release_frame(frame, pin);
                    continue;
                }
                Entry::Vacant(vacant) => {
                    let slot = &self.shared.frames[frame];
                    slot.page.store(id, Ordering::Release);
                    vacant.insert(frame);
                    self.shared.counters.misses.fetch_add(1, Ordering::Relaxed);
                    self.replacer.record_access(frame);
                    return Ok((frame, pin));
                }
            }
        }
    }

    /// Gives back a frame this request took but did not fill.
    fn release_frame(&self, frame: FrameId, pin: Pin) {
        self.shared.frames[frame]
            .page
            .store(NO_PAGE, Ordering::Release);
        drop(pin);
        self.free_frames.lock().push(frame);
    }

    /// A frame holding no page, pinned once by the caller: a free one, or
    /// the replacer's victim. Waits (bounded) when every frame is pinned,
    /// dirty or being checkpointed.
    fn take_frame(&self, deadline: Instant) -> Result<FrameId, StorageError> {
        let frames = &self.shared.frames;
        let mut asked_for_checkpoint = false;
        loop {
            if let Some(frame) = self.free_frames.lock().pop() {
                frames[frame].pins.store(1, Ordering::Release);
                return Ok(frame);
            }
            if let Some(frame) = self.replacer.victim(|f| frames[f].evictable()) {
                let page = frames[frame].page.load(Ordering::Acquire);
                let removed = self
                    .table
                    .remove_if(&page, |_, held| *held == frame && frames[frame].evictable());
                if removed.is_some() {
                    frames[frame].pins.store(1, Ordering::Release);
                    frames[frame].page.store(NO_PAGE, Ordering::Release);
                    self.replacer.remove(frame);
                    self.shared
                        .counters
                        .evictions
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(frame);
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StorageError::PoolExhausted {
                    frames: frames.len(),
                    waited_ms: u64::try_from(self.wait_max.as_millis()).unwrap_or(u64::MAX),
                });
            }
            if !asked_for_checkpoint && self.dirty_frames() > 0 {
                asked_for_checkpoint = true;
                if let Some(pressure) = self.pressure.lock().as_ref() {
                    pressure();
                }
            }
            // Woken by an unpin or a finished checkpoint; a short timeout
            // covers a wake-up that came just before the wait.
            let counters = &self.shared.counters;
            counters.waiting.fetch_add(1, Ordering::AcqRel);
            let mut lock = self.shared.wait_lock.lock();
            let slice = (deadline - now).min(Duration::from_millis(10));
            self.shared.wait.wait_for(&mut lock, slice);
            drop(lock);
            counters.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Marks a frame about to be written: dirty, and if the checkpoint in
    /// flight still needs its old content, that content copied aside first.
    fn before_write(&self, frame: FrameId, page: &Page) {
        let slot = &self.shared.frames[frame];
        if slot.checkpoint.load(Ordering::Acquire) {
            if let Some(copies) = self.checkpoint.lock().as_mut() {
                copies
                    .entry(page.id())
                    .or_insert_with(|| Box::new(page.clone()));
            }
            slot.checkpoint.store(false, Ordering::Release);
        }
        if !slot.dirty.swap(true, Ordering::AcqRel) {
            self.shared.counters.dirty.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Starts a checkpoint: every dirty frame becomes a checkpoint frame,
    /// and the page ids and free list as of now are returned. Call it at a
    /// point where the pages are consistent (no write in progress).
    pub fn begin_checkpoint(&self) -> Result<CheckpointPlan, StorageError> {
        let mut copies = self.checkpoint.lock();
        if copies.is_some() {
            return Err(StorageError::Malformed {
                page: NO_PAGE,
                reason: "a checkpoint is already in flight".into(),
            });
        }
        *copies = Some(HashMap::new());
        let mut pages = Vec::new();
        for frame in &self.shared.frames {
            if frame.dirty.load(Ordering::Acquire) {
                // Flagged before it stops being dirty, so it never looks
                // evictable in between.
                frame.checkpoint.store(true, Ordering::Release);
                frame.dirty.store(false, Ordering::Release);
                self.shared.counters.dirty.fetch_sub(1, Ordering::AcqRel);
                pages.push(frame.page.load(Ordering::Acquire));
            }
        }
        pages.sort_unstable();
        let space = self.pages.lock();
        Ok(CheckpointPlan {
            pages,
            free: space.free.iter().copied().collect(),
            page_count: space.next,
        })
    }

    /// Page `id` as it was when the checkpoint in flight began (a writer's
    /// copy, or the frame itself if nobody wrote it since).
    pub fn checkpoint_copy(&self, id: PageId) -> Result<Box<Page>, StorageError> {
        if let Some(copy) = self
            .checkpoint
            .lock()
            .as_ref()
            .and_then(|copies| copies.get(&id).cloned())
        {
            return Ok(copy);
        }
        let missing = || StorageError::Malformed {
            page: id,
            reason: "a checkpoint page is neither in a frame nor copied".into(),
        };
        let Some(frame) = self.table.get(&id).map(|entry| *entry) else {
            // Freed meanwhile: `free` copied it aside before letting go.
            return self
                .checkpoint
                .lock()
                .as_ref()
                .and_then(|copies| copies.get(&id).cloned())
                .ok_or_else(missing);
        };
        let slot = &self.shared.frames[frame];
        let page = slot.latch.read();
        if slot.checkpoint.load(Ordering::Acquire) && page.id() == id {
            return Ok(Box::new((**page).clone()));
        }
        drop(page);
        // A writer copied it between the two looks.
        self.checkpoint
            .lock()
            .as_ref()
            .and_then(|copies| copies.get(&id).cloned())
            .ok_or_else(missing)
    }

    /// Ends the checkpoint in flight: its frames are clean and evictable
    /// again (they are on disk now) and the copies are dropped.
    pub fn finish_checkpoint(&self) {
        for frame in &self.shared.frames {
            frame.checkpoint.store(false, Ordering::Release);
        }
        *self.checkpoint.lock() = None;
        self.shared.wake();
    }

    /// Abandons the checkpoint in flight (its write failed): its pages are
    /// dirty again, so the next checkpoint writes them.
    pub fn abandon_checkpoint(&self) {
        let copies = self.checkpoint.lock().take();
        for frame in &self.shared.frames {
            if frame.checkpoint.swap(false, Ordering::AcqRel)
                && !frame.dirty.swap(true, Ordering::AcqRel)
            {
                self.shared.counters.dirty.fetch_add(1, Ordering::AcqRel);
            }
        }
        // Pages a writer copied aside were dirtied by that writer already.
        drop(copies);
        self.shared.wake();
    }

    /// Frames pinned right now (for tests: none once every guard is gone).
    pub fn pinned_frames(&self) -> usize {
        self.stats().pinned
    }
}

impl PageStore for BufferPool {
    type Read = PoolRead;
    type Write = PoolWrite;

    fn read(&self, id: PageId) -> Result<PoolRead, StorageError> {
        let (frame, pin) = self.fetch(id)?;
        let guard = self.shared.frames[frame].latch.read_arc();
        Ok(PoolRead { guard, _pin: pin })
    }

    fn write(&self, id: PageId) -> Result<PoolWrite, StorageError> {
        let (frame, pin) = self.fetch(id)?;
        let guard = self.shared.frames[frame].latch.write_arc();
        self.before_write(frame, &guard);
        Ok(PoolWrite { guard, _pin: pin })
    }

    fn try_read(&self, id: PageId) -> Result<Option<PoolRead>, StorageError> {
        let (frame, pin) = self.fetch(id)?;
        Ok(self.shared.frames[frame]
            .latch
            .try_read_arc()
            .map(|guard| PoolRead { guard, _pin: pin }))
    }

    fn allocate(&self, kind: PageKind) -> Result<PoolWrite, StorageError> {
        let id = {
            let mut space = self.pages.lock();
            match space.free.pop_first() {
                Some(id) => id,
                None => {
                    space.next += 1;
                    space.next - 1
                }
            }
        };
        let frame = match self.take_frame(Instant::now() + self.wait_max) {
            Ok(frame) => frame,
            Err(error) => {
                self.pages.lock().free.insert(id);
                return Err(error);
            }
        };
        let pin = self.pin_of(frame);
        let slot = &self.shared.frames[frame];
        let mut guard = slot.latch.write_arc();
        **guard = *Page::new(id);
        guard.reset(kind);
        slot.page.store(id, Ordering::Release);
        match self.table.entry(id) {
            Entry::Vacant(vacant) => {
                vacant.insert(frame);
            }
            Entry::Occupied(_) => {
                drop(guard);
                self.release_frame(frame, pin);
                return Err(StorageError::Malformed {
                    page: id,
                    reason: "a free page id is still in the buffer pool".into(),
                });
            }
        }
        self.replacer.record_access(frame);
        self.before_write(frame, &guard);
        Ok(PoolWrite { guard, _pin: pin })
    }

    fn free(&self, id: PageId) -> Result<(), StorageError> {
        let frames = &self.shared.frames;
        let resident = self.table.get(&id).map(|entry| *entry);
        if let Some(frame) = resident {
            let slot = &frames[frame];
            if slot.pins.load(Ordering::Acquire) > 0 {
                return Err(StorageError::Malformed {
                    page: id,
                    reason: "freed while pinned".into(),
                });
            }
            // The checkpoint in flight still writes the page as it was: the
            // copy is made before the flag is cleared and before the page
            // leaves the table, so the checkpointer always finds one or
            // the other. (Nothing else can reach a page being freed.)
            if slot.checkpoint.load(Ordering::Acquire) {
                let page = slot.latch.read();
                if let Some(copies) = self.checkpoint.lock().as_mut() {
                    copies
                        .entry(id)
                        .or_insert_with(|| Box::new((**page).clone()));
                }
                drop(page);
                slot.checkpoint.store(false, Ordering::Release);
            }
            let removed = self.table.remove_if(&id, |_, held| {
                *held == frame && slot.pins.load(Ordering::Acquire) == 0
            });
            if removed.is_none() {
                return Err(StorageError::Malformed {
                    page: id,
                    reason: "freed while pinned".into(),
                });
            }
            if slot.dirty.swap(false, Ordering::AcqRel) {
                self.shared.counters.dirty.fetch_sub(1, Ordering::AcqRel);
            }
            slot.page.store(NO_PAGE, Ordering::Release);
            self.replacer.remove(frame);
            self.free_frames.lock().push(frame);
        }
        self.pages.lock().free.insert(id);
        self.shared.wake();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
