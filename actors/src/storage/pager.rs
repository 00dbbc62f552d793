//! The page file: fixed-size pages at `id * PAGE_SIZE`. Reads (pread) copy
//! a page into a buffer-pool frame; writes go only through `write`
//! (pwrite), called by the checkpointer, never through a writable mapping,
//! so the OS can never write back a page the engine has not released
//! (Crotty, Leis and Pavlo, CIDR 2022). Not a read-only mapping either:
//! every page ever read through one stays in the process's resident set
//! (as mapped file pages), so a node's memory would grow with its data
//! however small its pool; with pread the pool is what the node holds, and
//! the rest is the kernel's page cache.
//!
//! The file grows when the checkpointer writes a page past its end; the
//! number of whole pages is kept, and read again from the file on a read
//! beyond it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Page, PageId, StorageError, PAGE_SIZE};

/// One node's page file.
pub struct Pager {
    path: PathBuf,
    file: File,
    /// Whole pages the file holds, as last known (it only grows).
    pages: AtomicU64,
}

impl Pager {
    /// Opens (or creates) the page file at `path`. A file whose length is not
    /// a whole number of pages (a crash while it grew) is extended to the
    /// next page: the partial page is torn, and recovery repairs it from the
    /// double-write file or reports it.
    pub fn open(path: &Path) -> Result<Pager, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error("open", path, &e))?;
        let pager = Pager {
            path: path.to_path_buf(),
            file,
            pages: AtomicU64::new(0),
        };
        let length = pager.length()?;
        let page_size = PAGE_SIZE as u64;
        if length % page_size != 0 {
            let whole = length.div_ceil(page_size) * page_size;
            pager
                .file
                .set_len(whole)
                .map_err(|e| io_error("extend", path, &e))?;
        }
        pager.pages.store(pager.page_count()?, Ordering::Release);
        Ok(pager)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn length(&self) -> Result<u64, StorageError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| io_error("stat", &self.path, &e))
    }

    /// Pages the file holds now.
    pub fn page_count(&self) -> Result<u64, StorageError> {
        Ok(self.length()? / PAGE_SIZE as u64)
    }

    /// Reads page `id` into `into` and checks it. A page past the end of the
    /// file reads as a fresh, zeroed page.
    pub fn read(&self, id: PageId, into: &mut Page) -> Result<(), StorageError> {
        self.read_bytes(id, into.bytes_mut())?;
        if into.bytes().iter().all(|b| *b == 0) {
            // Never written: a fresh page of this id.
            into.set_id(id);
            return Ok(());
        }
        into.verify(id)
            .map_err(|damage| StorageError::Corrupt { page: id, damage })
    }

    /// Reads page `id` as it is on disk, without checking it (recovery
    /// decides what to do with a damaged page).
    pub fn read_raw(&self, id: PageId) -> Result<Box<Page>, StorageError> {
        let mut page = Page::new(id);
        self.read_bytes(id, page.bytes_mut())?;
        Ok(page)
    }

    /// Page `id`'s bytes as on disk (pread), or zeros past the end of the
    /// file. The page count is the one kept; the file is asked only for a
    /// page beyond it (another process or a crash may have grown it).
    fn read_bytes(&self, id: PageId, bytes: &mut [u8]) -> Result<(), StorageError> {
        let inside = id < self.pages.load(Ordering::Acquire) || {
            let pages = self.page_count()?;
            self.pages.fetch_max(pages, Ordering::AcqRel);
            id < pages
        };
        if !inside {
            bytes.fill(0);
            return Ok(());
        }
        let offset = id
            .checked_mul(PAGE_SIZE as u64)
            .ok_or_else(|| StorageError::Malformed {
                page: id,
                reason: "page id beyond any file".into(),
            })?;
        self.file
            .read_exact_at(bytes, offset)
            .map_err(|e| io_error("read", &self.path, &e))
    }

    /// Writes a sealed page in place (the checkpointer's job only).
    pub fn write(&self, page: &Page) -> Result<(), StorageError> {
        self.file
            .write_all_at(page.bytes(), page.id() * PAGE_SIZE as u64)
            .map_err(|e| io_error("write", &self.path, &e))?;
        // The file now reaches past this page: reads of it need not ask.
        self.pages.fetch_max(page.id() + 1, Ordering::AcqRel);
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|e| io_error("sync", &self.path, &e))
    }
}

/// An I/O failure as a storage error naming the file.
pub fn io_error(action: &'static str, path: &Path, error: &std::io::Error) -> StorageError {
    StorageError::Io {
        action,
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PageKind;

    #[test]
    fn pages_written_are_read_back_and_damage_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pages");
        let pager = Pager::open(&path).expect("open");
        let mut fresh = Page::new(0);
        pager.read(5, &mut fresh).expect("a page past the end");
        assert_eq!((fresh.id(), fresh.kind()), (5, Some(PageKind::Free)));

        let mut page = Page::new(3);
        page.reset(PageKind::Leaf);
        page.body_mut()[..4].copy_from_slice(b"tree");
        page.seal(17);
        pager.write(&page).expect("write");
        pager.sync().expect("sync");
        let mut read = Page::new(0);
        pager.read(3, &mut read).expect("read");
        assert_eq!(&read.body()[..4], b"tree");
        assert_eq!(read.lsn(), 17);
        // Page 1 lies inside the grown file but was never written.
        pager.read(1, &mut read).expect("a hole reads as fresh");
        assert_eq!(read.kind(), Some(PageKind::Free));

        // A flipped byte on disk: the read names the page.
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&[0xFF], 3 * PAGE_SIZE as u64 + 100)
            .expect("damage");
        let error = pager.read(3, &mut read).expect_err("damaged");
        assert!(
            matches!(error, StorageError::Corrupt { page: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("page 3"), "{error}");
    }

    #[test]
    fn a_partial_last_page_is_extended_to_a_whole_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pages");
        std::fs::write(&path, vec![7u8; PAGE_SIZE + 100]).expect("write");
        let pager = Pager::open(&path).expect("open");
        assert_eq!(pager.page_count().expect("count"), 2);
        let mut page = Page::new(0);
        assert!(
            pager.read(1, &mut page).is_err(),
            "the torn page is not data"
        );
    }
}
