//! What the node knows about its disk: free space (read from the file
//! system every half second), whether the WAL is blocked waiting for space
//! for a new segment, and a reserve file it gives up so that recovery,
//! checkpoints and log compaction can still finish when the disk fills.
//!
//! The rules it supports (ARCHITECTURE.md, "Out of space is not a failure"):
//! - Writes are refused at admission, before they enter the log, while the
//!   free space is under the floor or the WAL is blocked: `storage_full`.
//!   Never at apply time: every replica applies the same entries.
//! - A WAL that can't create a segment writes nothing and waits, retrying;
//!   it first gives up the reserve so its retry can succeed at once.
//! - Once space is back above the floor (plus the reserve), the reserve is
//!   made again, and the node carries on by itself.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

/// The reserve file's name in the data directory.
pub const RESERVE_FILE: &str = "RESERVE";

/// How often free space is read from the file system.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Why writes are refused for lack of space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFull {
    /// Bytes free for this process on the data directory's file system.
    pub free_bytes: u64,
    /// The free-space floor under which writes are refused.
    pub floor_bytes: u64,
    /// Bytes the WAL is waiting for (a new segment), if it is blocked.
    pub wal_needs_bytes: Option<u64>,
    /// The data directory.
    pub dir: PathBuf,
}

impl std::fmt::Display for DiskFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: u64 = 1024 * 1024;
        write!(
            f,
            "the disk of {} is full: {} MiB free",
            self.dir.display(),
            self.free_bytes / MIB
        )?;
        match self.wal_needs_bytes {
            Some(needed) => write!(
                f,
                "; the WAL waits for {} MiB for a new segment",
                needed.div_ceil(MIB)
            ),
            None => write!(
                f,
                ", under the floor of {} MiB (--min-free-disk-mb); free {} MiB more",
                self.floor_bytes / MIB,
                (self.floor_bytes - self.free_bytes).div_ceil(MIB)
            ),
        }
    }
}

struct Inner {
    dir: PathBuf,
    floor_bytes: u64,
    reserve_bytes: u64,
    free_bytes: AtomicU64,
    /// Bytes the WAL waits for; 0 when it isn't blocked.
    wal_needs_bytes: AtomicU64,
    /// Whether the last check found the disk full (for logging changes).
    reported_full: AtomicBool,
    /// Serializes making and giving up the reserve.
    reserve: Mutex<()>,
}

/// The node's view of its disk, shared by the WAL writer, the front door's
/// admission and readiness. Cheap to clone.
#[derive(Clone)]
pub struct DiskMonitor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskMonitor")
            .field("dir", &self.inner.dir)
            .field("free_bytes", &self.free_bytes())
            .finish()
    }
}

impl DiskMonitor {
    /// A monitor of the file system `dir` is on, refusing writes under
    /// `floor_bytes` free and keeping a reserve file of `reserve_bytes`
    /// (none when 0).
    pub fn new(dir: &Path, floor_bytes: u64, reserve_bytes: u64) -> DiskMonitor {
        let monitor = DiskMonitor {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                floor_bytes,
                reserve_bytes,
                free_bytes: AtomicU64::new(u64::MAX),
                wal_needs_bytes: AtomicU64::new(0),
                reported_full: AtomicBool::new(false),
                reserve: Mutex::new(()),
            }),
        };
        monitor.refresh();
        monitor
    }

    /// A monitor that never finds the disk full (tests of other parts).
    pub fn unlimited(dir: &Path) -> DiskMonitor {
        DiskMonitor::new(dir, 0, 0)
    }

    /// Bytes free on the file system, as last read.
    pub fn free_bytes(&self) -> u64 {
        self.inner.free_bytes.load(Ordering::Relaxed)
    }

    /// Why writes must be refused for lack of space now, if they must.
    pub fn full(&self) -> Option<DiskFull> {
        let free_bytes = self.free_bytes();
        let needed = self.inner.wal_needs_bytes.load(Ordering::Relaxed);
        if needed == 0 && free_bytes >= self.inner.floor_bytes {
            return None;
        }
        Some(DiskFull {
            free_bytes,
            floor_bytes: self.inner.floor_bytes,
            wal_needs_bytes: (needed > 0).then_some(needed),
            dir: self.inner.dir.clone(),
        })
    }

    /// Whether the WAL is waiting for space.
    pub fn wal_blocked(&self) -> bool {
        self.inner.wal_needs_bytes.load(Ordering::Relaxed) > 0
    }

    /// The WAL could not create a segment of `needed_bytes`: it waits.
    /// Gives up the reserve (so the wait may end at once); says whether
    /// there was one to give.
    pub fn wal_blocked_on(&self, needed_bytes: u64) -> bool {
        let first = self
            .inner
            .wal_needs_bytes
            .swap(needed_bytes.max(1), Ordering::Relaxed)
            == 0;
        if first {
            warn!(
                needed_bytes,
                dir = %self.inner.dir.display(),
                "no space for a new WAL segment: writes are refused and the WAL waits for space"
            );
        }
        let released = self.release_reserve();
        self.refresh();
        released
    }

    /// The WAL has its segment: it is no longer blocked.
    pub fn wal_unblocked(&self) {
        if self.inner.wal_needs_bytes.swap(0, Ordering::Relaxed) > 0 {
            info!("the WAL has space again");
            self.refresh();
        }
    }

    /// Reads the free space again, makes the reserve when there is room
    /// for it above the floor, reports the state in metrics, and logs a
    /// change between full and not.
    pub fn refresh(&self) {
        if let Some(free) = free_bytes(&self.inner.dir) {
            self.inner.free_bytes.store(free, Ordering::Relaxed);
        }
        let free = self.free_bytes();
        if self.inner.reserve_bytes > 0
            && free
                >= self
                    .inner
                    .floor_bytes
                    .saturating_add(self.inner.reserve_bytes)
            && !self.wal_blocked()
        {
            self.make_reserve();
        }
        let full = self.full();
        metrics::gauge!("harmonydb_storage_disk_free_bytes").set(self.free_bytes() as f64);
        metrics::gauge!("harmonydb_storage_disk_full").set(f64::from(u8::from(full.is_some())));
        let was_full = self
            .inner
            .reported_full
            .swap(full.is_some(), Ordering::Relaxed);
        match (&full, was_full) {
            (Some(full), false) => {
                warn!(%full, "disk full: writes are refused until space is freed")
            }
            (None, true) => info!(
                free_bytes = self.free_bytes(),
                "disk space is back above the floor: writes are taken again"
            ),
            _ => {}
        }
    }

    fn reserve_path(&self) -> PathBuf {
        self.inner.dir.join(RESERVE_FILE)
    }

    /// Creates the reserve file with its blocks allocated, if it isn't there.
    fn make_reserve(&self) {
        let Ok(_guard) = self.inner.reserve.lock() else {
            return;
        };
        let path = self.reserve_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= self.inner.reserve_bytes) {
            return;
        }
        let made = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|file| allocate(&file, self.inner.reserve_bytes));
        match made {
            Ok(()) => info!(
                bytes = self.inner.reserve_bytes,
                path = %path.display(),
                "disk reserve in place"
            ),
            Err(error) => {
                // Not enough room after all: try again at a later check.
                let _ = std::fs::remove_file(&path);
                warn!(%error, path = %path.display(), "could not make the disk reserve");
            }
        }
        if let Some(free) = free_bytes(&self.inner.dir) {
            self.inner.free_bytes.store(free, Ordering::Relaxed);
        }
    }

    /// Deletes the reserve file, giving its space back; whether there was one.
    pub fn release_reserve(&self) -> bool {
        let Ok(_guard) = self.inner.reserve.lock() else {
            return false;
        };
        let path = self.reserve_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                warn!(
                    bytes = self.inner.reserve_bytes,
                    path = %path.display(),
                    "gave up the disk reserve so the node can finish what it must write"
                );
                if let Some(free) = free_bytes(&self.inner.dir) {
                    self.inner.free_bytes.store(free, Ordering::Relaxed);
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Bytes available to this process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs fills `stats` for a NUL-terminated path; it is read only on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so `stats` is initialized.
    let stats = unsafe { stats.assume_init() };
    // The field types differ between platforms (u32 on some).
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_size) = (stats.f_bavail as u64, stats.f_frsize as u64);
    Some(blocks.saturating_mul(block_size))
}

/// Allocates `bytes` of blocks to `file` (not a sparse hole: the space is
/// really taken, so giving the file up really frees it).
fn allocate(file: &std::fs::File, bytes: u64) -> std::io::Result<()> {
    let length = libc::off_t::try_from(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "reserve too large"))?;
    // SAFETY: posix_fallocate only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(file), 0, length) };
    if rc == 0 {
        file.sync_all()
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_and_a_blocked_wal_refuse_writes_and_the_reserve_comes_and_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(dir.path()).expect("statvfs");
        let roomy = DiskMonitor::new(dir.path(), 1, 4096);
        assert_eq!(roomy.full(), None);
        // The reserve is made while there is room for it.
        assert!(dir.path().join(RESERVE_FILE).exists());
        assert!(
            roomy.wal_blocked_on(64 * 1024 * 1024),
            "the reserve was given up"
        );
        assert!(!dir.path().join(RESERVE_FILE).exists());
        let full = roomy.full().expect("blocked");
        assert_eq!(full.wal_needs_bytes, Some(64 * 1024 * 1024));
        assert!(
            full.to_string().contains("the WAL waits for 64 MiB"),
            "{full}"
        );
        roomy.wal_unblocked();
        assert_eq!(roomy.full(), None);
        assert!(dir.path().join(RESERVE_FILE).exists(), "made again");

        // A floor above what is free refuses writes and says how much to free.
        let floor = free.saturating_add(1024 * 1024 * 1024);
        let tight = DiskMonitor::new(dir.path(), floor, 0);
        let full = tight.full().expect("under the floor");
        assert!(full.to_string().contains("under the floor"), "{full}");
    }
}
