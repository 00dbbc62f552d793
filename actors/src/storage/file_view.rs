//! The page file as a read-only [`PageStore`]: the trees exactly as the
//! last checkpoint wrote them, read straight from the file (checked, not
//! cached). While no checkpoint writes in place the file does not change,
//! so a tree opened here at a checkpoint's root is a consistent view of the
//! state at that checkpoint's applied index, whatever the live trees in the
//! buffer pool do meanwhile. Snapshot dumps for followers are read this way,
//! off the replica's thread.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::pager::Pager;
use super::{Page, PageId, PageKind, PageStore, StorageError};

/// Read-only pages from the page file.
pub struct FilePages {
    pager: Arc<Pager>,
}

impl FilePages {
    /// A view of `pager`'s file; the caller keeps checkpoints from writing
    /// in place while it is used.
    pub fn new(pager: Arc<Pager>) -> FilePages {
        FilePages { pager }
    }
}

/// A page read from the file (owned: nothing else can change it).
pub struct FilePage(Box<Page>);

impl Deref for FilePage {
    type Target = Page;
    fn deref(&self) -> &Page {
        &self.0
    }
}

impl DerefMut for FilePage {
    fn deref_mut(&mut self) -> &mut Page {
        &mut self.0
    }
}

fn read_only(page: PageId) -> StorageError {
    StorageError::Malformed {
        page,
        reason: "the checkpoint view is read-only".into(),
    }
}

impl PageStore for FilePages {
    type Read = FilePage;
    type Write = FilePage;

    fn read(&self, id: PageId) -> Result<FilePage, StorageError> {
        let mut page = Page::new(id);
        self.pager.read(id, &mut page)?;
        Ok(FilePage(page))
    }

    fn write(&self, id: PageId) -> Result<FilePage, StorageError> {
        Err(read_only(id))
    }

    fn try_read(&self, id: PageId) -> Result<Option<FilePage>, StorageError> {
        self.read(id).map(Some)
    }

    fn allocate(&self, _: PageKind) -> Result<FilePage, StorageError> {
        Err(read_only(0))
    }

    fn free(&self, id: PageId) -> Result<(), StorageError> {
        Err(read_only(id))
    }
}
