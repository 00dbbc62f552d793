//! The double-write file: every page a checkpoint writes goes here first,
//! all of them, synced, before any is written in place. A crash while pages
//! are written in place can tear one; the intact copy is here. Recovery
//! finishes the checkpoint from this file if the meta page doesn't show it
//! done, and repairs any torn page of a finished one.
//!
//! Layout (little-endian; `docs/storage-format.md`):
//!
//! ```text
//! 0..8     magic "HDBDW001"
//! 8..16    checkpoint number
//! 16..24   pages that follow (n)
//! 24..     n pages of 8 KiB, each sealed (its own checksum)
//! then     CRC32C (u32) of everything before it, then magic "HDBDWEND"
//! ```
//!
//! A file without its trailer, or whose trailer checksum fails, was cut
//! short by a crash: that checkpoint never reached its in-place writes, so
//! the file is ignored.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use super::pager::io_error;
use super::{Page, StorageError, PAGE_SIZE};

const MAGIC: &[u8; 8] = b"HDBDW001";
const END: &[u8; 8] = b"HDBDWEND";
const HEADER_SIZE: usize = 24;

/// Writes a double-write file page by page.
pub struct DoubleWriter {
    file: BufWriter<File>,
    path: std::path::PathBuf,
    /// The file is new: its directory entry must be synced too.
    new_file: bool,
    crc: u32,
    pages: u64,
    expected: u64,
}

impl DoubleWriter {
    /// Starts the file for checkpoint `checkpoint`, which will hold `pages` pages.
    pub fn create(path: &Path, checkpoint: u64, pages: u64) -> Result<DoubleWriter, StorageError> {
        let new_file = !path.exists();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io_error("create", path, &e))?;
        let mut writer = DoubleWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            new_file,
            crc: 0,
            pages: 0,
            expected: pages,
        };
        let mut header = [0u8; HEADER_SIZE];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&checkpoint.to_le_bytes());
        header[16..24].copy_from_slice(&pages.to_le_bytes());
        writer.put(&header)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.file
            .write_all(bytes)
            .map_err(|e| io_error("write", &self.path, &e))
    }

    /// Appends one sealed page.
    pub fn append(&mut self, page: &Page) -> Result<(), StorageError> {
        self.pages += 1;
        self.put(page.bytes())
    }

    /// Writes the trailer and syncs: from here the pages are safe.
    pub fn finish(mut self) -> Result<(), StorageError> {
        if self.pages != self.expected {
            return Err(StorageError::Malformed {
                page: 0,
                reason: format!(
                    "double-write file announced {} pages but got {}",
                    self.expected, self.pages
                ),
            });
        }
        let crc = self.crc;
        self.file
            .write_all(&crc.to_le_bytes())
            .and_then(|()| self.file.write_all(END))
            .and_then(|()| self.file.flush())
            .map_err(|e| io_error("write", &self.path, &e))?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|e| io_error("sync", &self.path, &e))?;
        if self.new_file {
            if let Some(dir) = self.path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_error("sync", dir, &e))?;
            }
        }
        Ok(())
    }
}

/// A complete double-write file: its checkpoint and its pages.
pub struct DoubleWritten {
    /// The checkpoint that wrote it.
    pub checkpoint: u64,
    /// Its pages, each as sealed.
    pub pages: Vec<Box<Page>>,
}

/// Reads the double-write file; None if there is none or it is incomplete.
pub fn read(path: &Path) -> Result<Option<DoubleWritten>, StorageError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file
            .read_to_end(&mut bytes)
            .map_err(|e| io_error("read", path, &e))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("open", path, &error)),
    };
    if bytes.len() < HEADER_SIZE + 12 || &bytes[..8] != MAGIC {
        return Ok(None);
    }
    let count = super::page::read_u64(&bytes, 16);
    let Some(body_end) = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(PAGE_SIZE))
        .and_then(|n| n.checked_add(HEADER_SIZE))
    else {
        return Ok(None);
    };
    if bytes.len() != body_end + 12 || &bytes[body_end + 4..] != END {
        return Ok(None);
    }
    let stored = u32::from_le_bytes([
        bytes[body_end],
        bytes[body_end + 1],
        bytes[body_end + 2],
        bytes[body_end + 3],
    ]);
    if crc32c::crc32c(&bytes[..body_end]) != stored {
        return Ok(None);
    }
    let pages = bytes[HEADER_SIZE..body_end]
        .chunks_exact(PAGE_SIZE)
        .map(|chunk| {
            let mut page = Page::new(0);
            page.bytes_mut().copy_from_slice(chunk);
            page
        })
        .collect();
    Ok(Some(DoubleWritten {
        checkpoint: super::page::read_u64(&bytes, 8),
        pages,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PageKind;

    #[test]
    fn a_complete_file_reads_back_and_a_cut_one_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doublewrite");
        assert!(read(&path).expect("none").is_none());
        let mut writer = DoubleWriter::create(&path, 7, 2).expect("create");
        for id in [4, 9] {
            let mut page = Page::new(id);
            page.reset(PageKind::Leaf);
            page.seal(70);
            writer.append(&page).expect("append");
        }
        writer.finish().expect("finish");
        let written = read(&path).expect("read").expect("complete");
        assert_eq!(written.checkpoint, 7);
        let ids: Vec<u64> = written.pages.iter().map(|p| p.id()).collect();
        assert_eq!(ids, vec![4, 9]);
        // Cut anywhere: ignored.
        let bytes = std::fs::read(&path).expect("read");
        for cut in [10, HEADER_SIZE + 100, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).expect("write");
            assert!(read(&path).expect("read").is_none(), "cut at {cut}");
        }
        // A flipped byte inside: ignored too.
        let mut flipped = bytes.clone();
        flipped[HEADER_SIZE + 5000] ^= 1;
        std::fs::write(&path, &flipped).expect("write");
        assert!(read(&path).expect("read").is_none());
    }
}
