//! A shard's state as one file: what a leader streams to a follower too far
//! behind for its log (the Raft snapshot carries only the position). Every
//! key with its version and value, in key order, written between two applied
//! entries so it is exactly the state at one applied index.
//!
//! Layout (little-endian; `docs/storage-format.md`):
//!
//! ```text
//! header   magic "HDBSNAP1", shard (u64), applied index (u64)
//! records  key length (u32), key, version (u64), value length (u32), value
//! trailer  record count (u64), CRC32C (u32) of everything before it,
//!          magic "HDBSEND1"
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{KvState, StateError, Versioned};
use crate::storage::ordered::OrderedStore;

const MAGIC: &[u8; 8] = b"HDBSNAP1";
const END: &[u8; 8] = b"HDBSEND1";
const HEADER_SIZE: usize = 24;
const TRAILER_SIZE: usize = 20;

/// What a dump holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpInfo {
    /// The shard.
    pub shard: u64,
    /// The applied index it is the state at.
    pub applied_index: u64,
    /// Keys in it.
    pub keys: u64,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// Why a dump could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DumpError {
    /// A file operation failed.
    #[error("{action} {}: {reason}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The kind of failure (for callers that tell a full disk apart).
        kind: std::io::ErrorKind,
        /// The operating system's message.
        reason: String,
    },
    /// The file is not a whole, intact dump.
    #[error("snapshot {}: {reason}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

fn io(action: &'static str, path: &Path, error: std::io::Error) -> StateError {
    StateError::Dump(DumpError::Io {
        action,
        path: path.to_path_buf(),
        kind: error.kind(),
        reason: error.to_string(),
    })
}

fn damaged(path: &Path, reason: &'static str) -> StateError {
    StateError::Dump(DumpError::Damaged {
        path: path.to_path_buf(),
        reason,
    })
}

/// A writer that checksums what it writes.
struct Summed<W: Write> {
    inner: W,
    crc: u32,
    written: u64,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

/// Writes `state` to `path` (replacing it). Call between applied entries.
pub fn write<O: OrderedStore>(
    state: &KvState<O>,
    shard: u64,
    path: &Path,
) -> Result<DumpInfo, StateError> {
    let file = File::create(path).map_err(|e| io("create", path, e))?;
    let mut out = Summed {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: 0,
        written: 0,
    };
    let applied_index = state.applied_index();
    let mut header = [0u8; HEADER_SIZE];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&shard.to_le_bytes());
    header[16..24].copy_from_slice(&applied_index.to_le_bytes());
    out.put(&header).map_err(|e| io("write", path, e))?;
    let mut keys = 0u64;
    state.for_each(|key, versioned| {
        keys += 1;
        let key_len = u32::try_from(key.len()).unwrap_or(u32::MAX);
        let value_len = u32::try_from(versioned.value.len()).unwrap_or(u32::MAX);
        out.put(&key_len.to_le_bytes())
            .and_then(|()| out.put(key))
            .and_then(|()| out.put(&versioned.version.to_le_bytes()))
            .and_then(|()| out.put(&value_len.to_le_bytes()))
            .and_then(|()| out.put(&versioned.value))
            .map_err(|e| io("write", path, e))
    })?;
    out.put(&keys.to_le_bytes())
        .map_err(|e| io("write", path, e))?;
    let crc = out.crc;
    let size_bytes = out.written + 4 + END.len() as u64;
    out.inner
        .write_all(&crc.to_le_bytes())
        .and_then(|()| out.inner.write_all(END))
        .and_then(|()| out.inner.flush())
        .map_err(|e| io("write", path, e))?;
    Ok(DumpInfo {
        shard,
        applied_index,
        keys,
        size_bytes,
    })
}

/// Reads the dump at `path`, checking it whole first, then calls `visit`
/// with every key in order.
pub fn read(
    path: &Path,
    mut visit: impl FnMut(&[u8], &Versioned) -> Result<(), StateError>,
) -> Result<DumpInfo, StateError> {
    let size_bytes = std::fs::metadata(path)
        .map_err(|e| io("stat", path, e))?
        .len();
    let info = check(path, size_bytes)?;
    let bad = |reason: &'static str| damaged(path, reason);
    let file = File::open(path).map_err(|e| io("open", path, e))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_SIZE];
    input
        .read_exact(&mut header)
        .map_err(|e| io("read", path, e))?;
    // Records end where the trailer (count, checksum, magic) begins.
    let end = size_bytes - TRAILER_SIZE as u64;
    let mut position = HEADER_SIZE as u64;
    let mut keys = 0u64;
    let mut word4 = [0u8; 4];
    let mut word8 = [0u8; 8];
    while position < end {
        input
            .read_exact(&mut word4)
            .map_err(|e| io("read", path, e))?;
        let key_len = u32::from_le_bytes(word4) as u64;
        if position + 4 + key_len + 12 > end {
            return Err(bad("a record runs past the end"));
        }
        let mut key = vec![0u8; key_len as usize];
        input
            .read_exact(&mut key)
            .map_err(|e| io("read", path, e))?;
        input
            .read_exact(&mut word8)
            .map_err(|e| io("read", path, e))?;
        let version = u64::from_le_bytes(word8);
        input
            .read_exact(&mut word4)
            .map_err(|e| io("read", path, e))?;
        let value_len = u32::from_le_bytes(word4) as u64;
        if position + 4 + key_len + 12 + value_len > end {
            return Err(bad("a value runs past the end"));
        }
        let mut value = vec![0u8; value_len as usize];
        input
            .read_exact(&mut value)
            .map_err(|e| io("read", path, e))?;
        position += 4 + key_len + 12 + value_len;
        keys += 1;
        visit(&key, &Versioned { value, version })?;
    }
    if keys != info.keys {
        return Err(bad("the record count does not match the trailer"));
    }
    Ok(info)
}

/// Checks a dump's header and trailer (checksum over everything), and
/// returns what it holds.
pub fn check(path: &Path, size_bytes: u64) -> Result<DumpInfo, StateError> {
    let bad = |reason: &'static str| damaged(path, reason);
    if size_bytes < (HEADER_SIZE + TRAILER_SIZE) as u64 {
        return Err(bad("too short"));
    }
    let file = File::open(path).map_err(|e| io("open", path, e))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut crc = 0u32;
    let mut header = [0u8; HEADER_SIZE];
    input
        .read_exact(&mut header)
        .map_err(|e| io("read", path, e))?;
    if &header[..8] != MAGIC {
        return Err(bad("not a snapshot (bad magic)"));
    }
    crc = crc32c::crc32c_append(crc, &header);
    let mut remaining = size_bytes - HEADER_SIZE as u64 - 12;
    let mut buffer = vec![0u8; 1 << 20];
    while remaining > 0 {
        let take = remaining.min(buffer.len() as u64) as usize;
        input
            .read_exact(&mut buffer[..take])
            .map_err(|e| io("read", path, e))?;
        crc = crc32c::crc32c_append(crc, &buffer[..take]);
        remaining -= take as u64;
    }
    let mut trailer = [0u8; 12];
    input
        .read_exact(&mut trailer)
        .map_err(|e| io("read", path, e))?;
    if &trailer[4..] != END {
        return Err(bad("cut short (no trailer)"));
    }
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if stored != crc {
        return Err(bad("checksum mismatch"));
    }
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let mut count = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(
        input.get_ref(),
        &mut count,
        size_bytes - TRAILER_SIZE as u64,
    )
    .map_err(|e| io("read", path, e))?;
    Ok(DumpInfo {
        shard: word(8),
        applied_index: word(16),
        keys: u64::from_le_bytes(count),
        size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvCommand;

    #[test]
    fn a_dump_reads_back_key_by_key_and_damage_is_refused() {
        let mut state = KvState::in_memory();
        for i in 0..500u64 {
            let command = KvCommand::Put {
                key: format!("key/{i:04}").into_bytes(),
                value: vec![i as u8; (i as usize * 37) % 20_000],
                expected_version: None,
            };
            state.apply(i + 1, command).expect("put").expect("written");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dump");
        let info = write(&state, 3, &path).expect("write");
        assert_eq!((info.shard, info.applied_index, info.keys), (3, 500, 500));
        assert_eq!(
            info.size_bytes,
            std::fs::metadata(&path).expect("stat").len()
        );
        let mut copy = KvState::in_memory();
        let read_info = read(&path, |key, versioned| copy.restore(key, versioned)).expect("read");
        assert_eq!(read_info, info);
        for i in (0..500u64).step_by(7) {
            let key = format!("key/{i:04}");
            assert_eq!(
                copy.get(key.as_bytes()).expect("get"),
                state.get(key.as_bytes()).expect("get")
            );
        }
        assert_eq!(copy.len(), 500);

        let bytes = std::fs::read(&path).expect("read");
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        std::fs::write(&path, &flipped).expect("write");
        assert!(
            read(&path, |_, _| Ok(())).is_err(),
            "a flipped byte is refused"
        );
        std::fs::write(&path, &bytes[..bytes.len() - 5]).expect("write");
        assert!(read(&path, |_, _| Ok(())).is_err(), "a cut dump is refused");
    }
}
