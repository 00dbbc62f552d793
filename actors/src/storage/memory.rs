//! A [`PageStore`] over plain memory: every page lives in a latched box and
//! nothing is ever evicted or written to disk. For testing the B+ tree on
//! its own, and as the upper bound in benchmarks.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use parking_lot::lock_api::{ArcRwLockReadGuard, ArcRwLockWriteGuard};
use parking_lot::{Mutex, RawRwLock, RwLock};

use super::{Page, PageId, PageKind, PageStore, StorageError};

type Slot = Arc<RwLock<Box<Page>>>;

/// Pages in memory, ids from 2 up (0 and 1 are the meta slots on disk).
#[derive(Default)]
pub struct MemoryPages {
    pages: RwLock<Vec<Option<Slot>>>,
    free: Mutex<Vec<PageId>>,
}

/// First page id handed out.
const FIRST_PAGE: PageId = 2;

impl MemoryPages {
    /// An empty store.
    pub fn new() -> MemoryPages {
        MemoryPages::default()
    }

    /// Pages in use (allocated and not freed).
    pub fn pages_in_use(&self) -> usize {
        self.pages.read().iter().flatten().count()
    }

    fn slot(&self, id: PageId) -> Result<Slot, StorageError> {
        let index = id
            .checked_sub(FIRST_PAGE)
            .and_then(|i| usize::try_from(i).ok());
        index
            .and_then(|i| self.pages.read().get(i).cloned().flatten())
            .ok_or_else(|| StorageError::Malformed {
                page: id,
                reason: "no such page in memory".into(),
            })
    }
}

/// A page of [`MemoryPages`] latched for reading.
pub struct MemoryRead(ArcRwLockReadGuard<RawRwLock, Box<Page>>);

impl Deref for MemoryRead {
    type Target = Page;
    fn deref(&self) -> &Page {
        &self.0
    }
}

/// A page of [`MemoryPages`] latched for writing.
pub struct MemoryWrite(ArcRwLockWriteGuard<RawRwLock, Box<Page>>);

impl Deref for MemoryWrite {
    type Target = Page;
    fn deref(&self) -> &Page {
        &self.0
    }
}

impl DerefMut for MemoryWrite {
    fn deref_mut(&mut self) -> &mut Page {
        &mut self.0
    }
}

impl PageStore for MemoryPages {
    type Read = MemoryRead;
    type Write = MemoryWrite;

    fn read(&self, id: PageId) -> Result<Self::Read, StorageError> {
        Ok(MemoryRead(self.slot(id)?.read_arc()))
    }

    fn write(&self, id: PageId) -> Result<Self::Write, StorageError> {
        Ok(MemoryWrite(self.slot(id)?.write_arc()))
    }

    fn try_read(&self, id: PageId) -> Result<Option<Self::Read>, StorageError> {
        Ok(self.slot(id)?.try_read_arc().map(MemoryRead))
    }

    fn allocate(&self, kind: PageKind) -> Result<Self::Write, StorageError> {
        let reused = self.free.lock().pop();
        let mut pages = self.pages.write();
        let id = match reused {
            Some(id) => id,
            None => {
                pages.push(None);
                FIRST_PAGE + pages.len() as u64 - 1
            }
        };
        let mut page = Page::new(id);
        page.reset(kind);
        let slot = Arc::new(RwLock::new(page));
        let guard = slot.write_arc();
        pages[(id - FIRST_PAGE) as usize] = Some(slot);
        Ok(MemoryWrite(guard))
    }

    fn free(&self, id: PageId) -> Result<(), StorageError> {
        let slot = self.slot(id)?;
        // Ours, the table's: any other holder is a live guard.
        if Arc::strong_count(&slot) > 2 {
            return Err(StorageError::Malformed {
                page: id,
                reason: "freed while a guard holds it".into(),
            });
        }
        drop(slot);
        self.pages.write()[(id - FIRST_PAGE) as usize] = None;
        self.free.lock().push(id);
        Ok(())
    }
}
