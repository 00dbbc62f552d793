//! Write-ahead log: segment files written through `memmap2`, checksummed
//! records, recovery that cuts a torn tail, and the `WalWriter` actor that
//! turns many concurrent appends into one sync (group commit).
//!
//! The byte layout is in `docs/wal-format.md`.

mod format;
mod log;
mod writer;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use format::{RecordKind, RecordRef, RECORD_PAYLOAD_SIZE_MAX_BYTES};
pub use log::{
    ReadError, RecoveryReport, StoredRecord, TailCut, Wal, WalOptions, SEGMENT_SIZE_DEFAULT_BYTES,
    SEGMENT_SIZE_MIN_BYTES,
};
pub use writer::{
    Append, DeleteBelow, FsyncPolicy, GetStats, ReadEntries, Sync, WalEntry, WalFaults, WalStats,
    WalWriter, WAL_MAILBOX_CAPACITY,
};

/// Everything that can go wrong in the WAL.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("WAL I/O error: {action} {}: {source}", path.display())]
    Io {
        /// What the WAL was doing.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// On-disk data that recovery may not cut (it is not the unsynced tail).
    #[error("WAL corrupt in {} at offset {offset}: {reason}", segment.display())]
    Corrupt {
        /// The damaged segment file.
        segment: PathBuf,
        /// Byte offset of the damage inside it.
        offset: u64,
        /// Which check failed.
        reason: String,
    },
    /// A record payload over the format's limit.
    #[error("WAL record of {size_bytes} bytes exceeds the maximum of {size_max_bytes}")]
    RecordTooLarge {
        /// The payload's size.
        size_bytes: usize,
        /// The limit.
        size_max_bytes: usize,
    },
    /// Invalid options.
    #[error("invalid WAL configuration: {0}")]
    Config(String),
    /// An earlier write or sync failed, so nothing after it can be made durable;
    /// the node must restart and recover.
    #[error("WAL stopped accepting writes after an earlier failure: {0}")]
    Failed(String),
    /// The writer stopped before answering.
    #[error("WAL writer stopped")]
    Stopped,
    /// No space for a new segment: nothing was written, and the append can
    /// be made again once there is room.
    #[error("no space for a new WAL segment of {needed_bytes} bytes in {}: {source}", path.display())]
    NoSpace {
        /// The segment that could not be made.
        path: PathBuf,
        /// Its size.
        needed_bytes: u64,
        /// The operating system's error (ENOSPC or EDQUOT).
        #[source]
        source: Arc<io::Error>,
    },
}

/// Whether an I/O error means the file system is out of space (or quota).
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

impl WalError {
    fn io(source: io::Error, action: &'static str, path: &std::path::Path) -> Self {
        WalError::Io {
            action,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}
