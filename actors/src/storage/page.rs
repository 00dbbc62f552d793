//! The page: 8 KiB, the unit of the page file, the buffer pool and the B+
//! tree. Every page starts with a 24-byte header (`docs/storage-format.md`):
//!
//! ```text
//! 0..8    page id (u64, little-endian): where the page belongs in the file
//! 8..16   LSN (u64): the applied Raft index of the checkpoint that wrote it
//! 16..20  CRC32C (u32) of the whole page with these four bytes zeroed
//! 20      kind (u8): free, meta, leaf, internal, overflow, free list
//! 21..24  reserved, zero
//! ```
//!
//! The rest, the body, belongs to whoever owns the page (the B+ tree, the
//! free list, the meta page). The checksum and LSN are filled in when the
//! checkpointer writes a page and checked when the pager reads one, so a
//! torn or corrupted page is never taken for data.

use std::fmt;

/// Bytes in a page.
pub const PAGE_SIZE: usize = 8192;

/// Bytes of the common header at the start of every page.
pub const PAGE_HEADER_SIZE: usize = 24;

/// Bytes of a page's body.
pub const PAGE_BODY_SIZE: usize = PAGE_SIZE - PAGE_HEADER_SIZE;

const ID_AT: usize = 0;
const LSN_AT: usize = 8;
const CRC_AT: usize = 16;
const KIND_AT: usize = 20;

/// A page's number: its offset in the page file is `id * PAGE_SIZE`.
/// Page 0 and 1 are the two meta slots; no tree page is ever 0, so 0 also
/// means "no page" in links.
pub type PageId = u64;

/// What a page holds, as recorded in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageKind {
    /// Unused (never written, or freed).
    Free = 0,
    /// One of the two meta slots.
    Meta = 1,
    /// A B+ tree leaf.
    Leaf = 2,
    /// A B+ tree internal node.
    Internal = 3,
    /// Part of a value too large for a leaf.
    Overflow = 4,
    /// Part of the persisted free-page list.
    FreeList = 5,
}

impl PageKind {
    /// The kind a header byte names, if any.
    pub fn from_byte(byte: u8) -> Option<PageKind> {
        Some(match byte {
            0 => PageKind::Free,
            1 => PageKind::Meta,
            2 => PageKind::Leaf,
            3 => PageKind::Internal,
            4 => PageKind::Overflow,
            5 => PageKind::FreeList,
            _ => return None,
        })
    }
}

/// One page's bytes, header included.
#[derive(Clone)]
#[repr(C, align(64))]
pub struct Page {
    bytes: [u8; PAGE_SIZE],
}

impl Page {
    /// A zeroed page (kind `Free`) with id `id`.
    pub fn new(id: PageId) -> Box<Page> {
        let mut page = Box::new(Page {
            bytes: [0; PAGE_SIZE],
        });
        page.set_id(id);
        page
    }

    /// The whole page.
    pub fn bytes(&self) -> &[u8; PAGE_SIZE] {
        &self.bytes
    }

    /// The whole page, writable (header included: the pager's business).
    pub fn bytes_mut(&mut self) -> &mut [u8; PAGE_SIZE] {
        &mut self.bytes
    }

    /// The body: everything after the header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[PAGE_HEADER_SIZE..]
    }

    /// The body, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[PAGE_HEADER_SIZE..]
    }

    /// The id in the header.
    pub fn id(&self) -> PageId {
        read_u64(&self.bytes, ID_AT)
    }

    /// Sets the id in the header.
    pub fn set_id(&mut self, id: PageId) {
        self.bytes[ID_AT..ID_AT + 8].copy_from_slice(&id.to_le_bytes());
    }

    /// The LSN in the header.
    pub fn lsn(&self) -> u64 {
        read_u64(&self.bytes, LSN_AT)
    }

    /// The kind in the header (`None`: a byte no kind has).
    pub fn kind(&self) -> Option<PageKind> {
        PageKind::from_byte(self.bytes[KIND_AT])
    }

    /// Sets the kind in the header.
    pub fn set_kind(&mut self, kind: PageKind) {
        self.bytes[KIND_AT] = kind as u8;
    }

    /// Zeroes the body and sets the kind: the page starts over.
    pub fn reset(&mut self, kind: PageKind) {
        self.body_mut().fill(0);
        self.set_kind(kind);
    }

    /// Stamps LSN and checksum, as the checkpointer does before writing.
    pub fn seal(&mut self, lsn: u64) {
        self.bytes[LSN_AT..LSN_AT + 8].copy_from_slice(&lsn.to_le_bytes());
        let crc = self.compute_crc();
        self.bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Checks a page read from disk: its checksum, and that it is the page
    /// asked for. A page never written reads as all zeroes and is accepted
    /// as a fresh free page.
    pub fn verify(&self, expected: PageId) -> Result<(), PageDamage> {
        if self.bytes.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let stored = u32::from_le_bytes([
            self.bytes[CRC_AT],
            self.bytes[CRC_AT + 1],
            self.bytes[CRC_AT + 2],
            self.bytes[CRC_AT + 3],
        ]);
        let computed = self.compute_crc();
        if stored != computed {
            return Err(PageDamage::Checksum { stored, computed });
        }
        if self.id() != expected {
            return Err(PageDamage::WrongId { found: self.id() });
        }
        if self.kind().is_none() {
            return Err(PageDamage::UnknownKind(self.bytes[KIND_AT]));
        }
        Ok(())
    }

    fn compute_crc(&self) -> u32 {
        let crc = crc32c::crc32c(&self.bytes[..CRC_AT]);
        let crc = crc32c::crc32c_append(crc, &[0; 4]);
        crc32c::crc32c_append(crc, &self.bytes[CRC_AT + 4..])
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("id", &self.id())
            .field("lsn", &self.lsn())
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// What is wrong with a page read from disk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageDamage {
    /// The bytes don't match their checksum (torn write, bit rot).
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The page names another page id (a misdirected write).
    #[error("the page says it is page {found}")]
    WrongId {
        /// The id in the header.
        found: PageId,
    },
    /// The kind byte is none of the known kinds.
    #[error("unknown page kind {0}")]
    UnknownKind(u8),
}

/// A little-endian u64 at `at`.
pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_page_verifies_and_a_flipped_bit_does_not() {
        let mut page = Page::new(7);
        page.reset(PageKind::Leaf);
        page.body_mut()[100] = 42;
        page.seal(99);
        assert_eq!(page.verify(7), Ok(()));
        assert_eq!(page.lsn(), 99);
        assert_eq!(page.kind(), Some(PageKind::Leaf));
        assert_eq!(page.verify(8), Err(PageDamage::WrongId { found: 7 }));
        let mut flipped = page.clone();
        flipped.bytes_mut()[5000] ^= 1;
        assert!(matches!(
            flipped.verify(7),
            Err(PageDamage::Checksum { .. })
        ));
    }

    #[test]
    fn a_never_written_page_reads_as_free() {
        let zero = Box::new(Page {
            bytes: [0; PAGE_SIZE],
        });
        assert_eq!(zero.verify(3), Ok(()));
        assert_eq!(zero.kind(), Some(PageKind::Free));
    }
}
