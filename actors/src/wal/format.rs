//! The WAL's on-disk layout: segment headers and records, encoded and decoded
//! byte by byte as `docs/wal-format.md` describes them. Nothing here touches a
//! file; `log.rs` does the I/O.

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"HDBWAL\r\n";

/// Version of the segment and record layout written by this code.
pub const FORMAT_VERSION: u32 = 1;

/// Size of the segment header that precedes the first record.
pub const SEGMENT_HEADER_SIZE_BYTES: usize = 32;

/// Size of a record header: payload length, CRC32C, kind, index.
pub const RECORD_HEADER_SIZE_BYTES: usize = 17;

/// Largest payload a record may carry. A length field above it is treated as
/// corruption at recovery, so a flipped high bit can't make us read gigabytes.
pub const RECORD_PAYLOAD_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// What a record holds. The byte `0` is never a kind: a zeroed header marks the
/// end of the written part of a preallocated segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// One entry of the log; its index is the log's next index.
    Entry = 1,
    /// A consensus hard state (term, vote, commit). It takes no index of its
    /// own: its index field is the last entry's index at the time.
    HardState = 2,
    /// Voids every entry at or after its index (a Raft leader replaced a
    /// conflicting suffix); the next entry takes that index again.
    Truncate = 3,
    /// The log up to its index is replaced by a snapshot (compaction, or a
    /// snapshot installed from the leader). Entries after it continue at
    /// the log's next index, or right after the snapshot if that is later.
    Snapshot = 4,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordKind::Entry),
            2 => Some(RecordKind::HardState),
            3 => Some(RecordKind::Truncate),
            4 => Some(RecordKind::Snapshot),
            _ => None,
        }
    }

    /// Checks that a record of this kind may carry `index` when the log's
    /// next index is `next_index`, and returns the next index after it.
    pub fn sequence(self, index: u64, next_index: u64) -> Result<u64, String> {
        match self {
            RecordKind::Entry if index == next_index => Ok(next_index + 1),
            RecordKind::Entry => Err(format!(
                "entry index {index} where {next_index} was expected"
            )),
            RecordKind::HardState if index + 1 == next_index => Ok(next_index),
            RecordKind::HardState => Err(format!(
                "hard state positioned at {index} where the last entry is {}",
                next_index.saturating_sub(1)
            )),
            RecordKind::Truncate if index >= 1 && index < next_index => Ok(index),
            RecordKind::Truncate => Err(format!(
                "truncation at {index} outside the log's entries (next index {next_index})"
            )),
            RecordKind::Snapshot if index >= 1 => Ok(next_index.max(index + 1)),
            RecordKind::Snapshot => Err("a snapshot at index 0".to_string()),
        }
    }
}

/// The fixed header at the start of each segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Index of the first record this segment holds (or will hold).
    pub first_index: u64,
}

impl SegmentHeader {
    /// Encodes the header into its 32 on-disk bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_SIZE_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 12..16 reserved, zero.
        bytes[16..24].copy_from_slice(&self.first_index.to_le_bytes());
        // 24..28 reserved, zero.
        let crc = crc32c::crc32c(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes a header, saying what is wrong with it if it is not one.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < SEGMENT_HEADER_SIZE_BYTES {
            return Err(format!(
                "segment header truncated: {} of {SEGMENT_HEADER_SIZE_BYTES} bytes",
                bytes.len()
            ));
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("not a HarmonyDB WAL segment (bad magic)".to_string());
        }
        let stored_crc = read_u32(bytes, 28);
        let actual_crc = crc32c::crc32c(&bytes[0..28]);
        if stored_crc != actual_crc {
            return Err(format!(
                "segment header checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
            ));
        }
        let version = read_u32(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "unsupported WAL format version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        Ok(SegmentHeader {
            first_index: read_u64(bytes, 16),
        })
    }
}

/// Number of bytes a record with `payload_len` bytes of payload occupies.
pub fn record_size_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_SIZE_BYTES + payload_len
}

/// Writes one record into `out`, which must be exactly `record_size_bytes(payload.len())` long.
pub fn encode_record(out: &mut [u8], index: u64, kind: RecordKind, payload: &[u8]) {
    assert_eq!(
        out.len(),
        record_size_bytes(payload.len()),
        "record buffer has the wrong size"
    );
    assert!(
        payload.len() <= RECORD_PAYLOAD_SIZE_MAX_BYTES,
        "record payload over the format's limit"
    );
    let len = payload.len() as u32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[8] = kind as u8;
    out[9..17].copy_from_slice(&index.to_le_bytes());
    out[17..].copy_from_slice(payload);
    let crc = record_crc(&out[0..4], &out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The checksum covers the length field and everything after the CRC field,
/// so a damaged length can't silently select a different payload.
fn record_crc(len_field: &[u8], rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_field), rest)
}

/// A record read back from a segment, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's log index.
    pub index: u64,
    /// What the payload is.
    pub kind: RecordKind,
    /// The bytes the writer gave.
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// The log's next index after this record, given the one before it.
    pub fn next_index_after(&self, next_index: u64) -> u64 {
        self.kind
            .sequence(self.index, next_index)
            .unwrap_or(next_index)
    }
}

/// Why decoding stopped at an offset instead of returning a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeStop {
    /// The header is all zeros, or fewer bytes than a header remain: nothing
    /// was ever written here.
    End,
    /// Bytes are present but are not a valid record; the reason says which check failed.
    Corrupt(String),
}

/// Decodes the record starting at `bytes[0]` when the log's next index is
/// `next_index` (its index must fit its kind, see `RecordKind::sequence`).
pub fn decode_record(bytes: &[u8], next_index: u64) -> Result<RecordRef<'_>, DecodeStop> {
    if bytes.len() < RECORD_HEADER_SIZE_BYTES {
        return if bytes.iter().all(|b| *b == 0) {
            Err(DecodeStop::End)
        } else {
            Err(DecodeStop::Corrupt(format!(
                "record header truncated: {} of {RECORD_HEADER_SIZE_BYTES} bytes",
                bytes.len()
            )))
        };
    }
    let header = &bytes[..RECORD_HEADER_SIZE_BYTES];
    if header.iter().all(|b| *b == 0) {
        return Err(DecodeStop::End);
    }
    let payload_len = read_u32(header, 0) as usize;
    if payload_len > RECORD_PAYLOAD_SIZE_MAX_BYTES {
        return Err(DecodeStop::Corrupt(format!(
            "record length {payload_len} exceeds the maximum {RECORD_PAYLOAD_SIZE_MAX_BYTES}"
        )));
    }
    let total = record_size_bytes(payload_len);
    if bytes.len() < total {
        return Err(DecodeStop::Corrupt(format!(
            "record of {total} bytes runs past the end of the segment ({} bytes left)",
            bytes.len()
        )));
    }
    let stored_crc = read_u32(header, 4);
    let actual_crc = record_crc(&bytes[0..4], &bytes[8..total]);
    if stored_crc != actual_crc {
        return Err(DecodeStop::Corrupt(format!(
            "record checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
        )));
    }
    let kind = RecordKind::from_byte(header[8])
        .ok_or_else(|| DecodeStop::Corrupt(format!("unknown record kind {}", header[8])))?;
    let index = read_u64(header, 9);
    kind.sequence(index, next_index)
        .map_err(DecodeStop::Corrupt)?;
    Ok(RecordRef {
        index,
        kind,
        payload: &bytes[RECORD_HEADER_SIZE_BYTES..total],
    })
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let payload = b"hello";
        let mut buf = vec![0u8; record_size_bytes(payload.len())];
        encode_record(&mut buf, 42, RecordKind::Entry, payload);
        let record = decode_record(&buf, 42).expect("valid record");
        assert_eq!(record.index, 42);
        assert_eq!(record.kind, RecordKind::Entry);
        assert_eq!(record.payload, payload);
    }

    #[test]
    fn zeroed_bytes_are_the_end_not_corruption() {
        assert_eq!(decode_record(&[0u8; 64], 1), Err(DecodeStop::End));
        assert_eq!(decode_record(&[0u8; 3], 1), Err(DecodeStop::End));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let payload = b"some payload bytes";
        let mut buf = vec![0u8; record_size_bytes(payload.len())];
        encode_record(&mut buf, 7, RecordKind::Entry, payload);
        for at in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[at] ^= 0x5a;
            assert!(
                decode_record(&damaged, 7).is_err(),
                "flip at byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn each_kind_has_its_index_rule() {
        assert_eq!(RecordKind::Entry.sequence(5, 5), Ok(6));
        assert!(RecordKind::Entry.sequence(6, 5).is_err());
        assert_eq!(RecordKind::HardState.sequence(4, 5), Ok(5));
        assert!(RecordKind::HardState.sequence(5, 5).is_err());
        assert_eq!(RecordKind::Truncate.sequence(3, 5), Ok(3));
        assert!(RecordKind::Truncate.sequence(5, 5).is_err());
        assert!(RecordKind::Truncate.sequence(0, 5).is_err());
    }

    #[test]
    fn wrong_index_is_corruption() {
        let mut buf = vec![0u8; record_size_bytes(1)];
        encode_record(&mut buf, 5, RecordKind::Entry, b"x");
        assert!(matches!(
            decode_record(&buf, 6),
            Err(DecodeStop::Corrupt(_))
        ));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = SegmentHeader { first_index: 1234 };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for at in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[at] ^= 1;
            assert!(SegmentHeader::decode(&damaged).is_err(), "flip at {at}");
        }
        assert!(SegmentHeader::decode(&bytes[..10]).is_err());
    }
}
