//! The storage engine: pages in one file per node, read through a read-only
//! memory map and written only by the checkpointer (`pager`); a bounded
//! buffer pool of frames with pinning, latches and Clock or LRU-K
//! replacement (`buffer`); a concurrent B+ tree over it (`btree`); and
//! checkpoints through a double-write file with crash recovery
//! (`checkpoint`). The Raft log is the redo log: the tree on disk is the
//! state at the last checkpoint, and a node replays the log from there.
//!
//! The tree reaches pages only through the [`PageStore`] trait, which the
//! buffer pool implements; `memory::MemoryPages` implements it over plain
//! memory for tests of the tree alone.

pub mod btree;
pub mod buffer;
pub mod checkpoint;
mod doublewrite;
pub mod file_view;
mod freelist;
pub mod manager;
pub mod memory;
pub mod meta;
pub mod ordered;
pub mod page;
pub mod pager;

use std::ops::{Deref, DerefMut};

pub use page::{Page, PageDamage, PageId, PageKind, PAGE_BODY_SIZE, PAGE_SIZE};

/// Why a storage operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// A page read from disk is damaged and no intact copy exists.
    #[error("page {page} is corrupt: {damage}")]
    Corrupt {
        /// The page.
        page: PageId,
        /// What is wrong with it.
        damage: PageDamage,
    },
    /// Every frame of the buffer pool stayed pinned (or dirty and waiting
    /// for a checkpoint) for longer than the pool waits.
    #[error("buffer pool exhausted: all {frames} frames are pinned or dirty after waiting {waited_ms} ms")]
    PoolExhausted {
        /// Frames in the pool.
        frames: usize,
        /// How long the request waited.
        waited_ms: u64,
    },
    /// A file operation failed.
    #[error("{action} {path}: {reason}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The OS's reason.
        reason: String,
    },
    /// The structure on disk is not what the engine wrote (a tree page of the
    /// wrong kind, a link out of range): a bug or damage the checksum missed.
    #[error("page {page}: {reason}")]
    Malformed {
        /// The page.
        page: PageId,
        /// What is wrong.
        reason: String,
    },
    /// A key or value over the engine's limits.
    #[error("{0}")]
    TooLarge(String),
    /// A checkpoint failed after its double-write file was synced, with some
    /// pages possibly written in place: only a restart (which finishes it
    /// from that file) can make the page file consistent again.
    #[error("the storage stopped: {0}; restart the node to finish the checkpoint from the double-write file")]
    Stopped(String),
}

/// Pages as the B+ tree sees them: latched, pinned while a guard lives.
/// A read guard shares the page's latch, a write guard holds it alone; a
/// write guard marks the page dirty.
pub trait PageStore: Send + Sync {
    /// A page held for reading.
    type Read: Deref<Target = Page>;
    /// A page held for writing.
    type Write: DerefMut<Target = Page>;

    /// Latches page `id` for reading, waiting while a writer holds it.
    fn read(&self, id: PageId) -> Result<Self::Read, StorageError>;

    /// Latches page `id` for writing, waiting while anyone holds it.
    fn write(&self, id: PageId) -> Result<Self::Write, StorageError>;

    /// Like `read`, but gives up at once (None) if a writer holds the latch;
    /// for walks that go against the usual latch order. (Only the latch is
    /// not waited for: a page that must first be read into a frame may
    /// still wait, bounded, for a free frame.)
    fn try_read(&self, id: PageId) -> Result<Option<Self::Read>, StorageError>;

    /// A new page, zeroed, of kind `kind`, latched for writing.
    fn allocate(&self, kind: PageKind) -> Result<Self::Write, StorageError>;

    /// Returns page `id` to the free pages. The caller must hold no guard on
    /// it, and nothing may link to it any more.
    fn free(&self, id: PageId) -> Result<(), StorageError>;
}
