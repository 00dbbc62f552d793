//! The segmented log itself: open with recovery, append, sync, read back, and
//! delete old segments. Plain Rust with file I/O and no actors; the
//! `WalWriter` actor owns one `Wal` and adds group commit on top.
//!
//! Invariant that recovery leans on: every segment except the last is fully
//! synced before the first byte is written to the next one. So a torn or
//! corrupt record can only be in the last segment, where it is the unsynced
//! tail of a crash and is cut; damage anywhere else is media corruption of
//! acknowledged data and the WAL refuses to open.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};
use tracing::{info, warn};

use super::format::{
    decode_record, encode_record, record_size_bytes, DecodeStop, RecordKind, RecordRef,
    SegmentHeader, RECORD_HEADER_SIZE_BYTES, RECORD_PAYLOAD_SIZE_MAX_BYTES,
    SEGMENT_HEADER_SIZE_BYTES,
};
use super::WalError;

/// Default size of a preallocated segment file.
pub const SEGMENT_SIZE_DEFAULT_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest segment size accepted, so a segment always holds a header and some records.
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 4096;

const SEGMENT_SUFFIX: &str = ".seg";
const TEMP_SUFFIX: &str = ".seg.tmp";

/// How the log is laid out on disk.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size each new segment file is preallocated to. A record larger than a
    /// segment gets a segment of its own, sized to fit.
    pub segment_size_bytes: u64,
    /// Cut the last segment at a corrupt record even when intact records
    /// follow it. Off by default: such records may be acknowledged writes
    /// damaged by the disk, so recovery refuses and names the damage instead.
    pub truncate_corrupt_tail: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: SEGMENT_SIZE_DEFAULT_BYTES,
            truncate_corrupt_tail: false,
        }
    }
}

/// What recovery found and what it had to cut.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files kept.
    pub segments: usize,
    /// Index of the first record in the log (or the next to be written, if empty).
    pub first_index: u64,
    /// Index of the last intact record, `first_index - 1` when the log is empty.
    pub last_index: u64,
    /// The torn or corrupt tail that was cut, if any.
    pub cut: Option<TailCut>,
}

/// A tail removed at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailCut {
    /// The segment file holding the first bad byte.
    pub segment: PathBuf,
    /// Offset of the first bad record inside that segment.
    pub offset: u64,
    /// Bytes cut: from `offset` to the last non-zero byte of the segment.
    pub bytes: u64,
    /// Which check failed.
    pub reason: String,
}

/// Bytes of a segment between two remembered entry positions.
const MARK_SPACING_BYTES: usize = 256 * 1024;

/// Where a record sits: its segment (by first index), its offset in it, and
/// its index. Positions compare in log order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    segment: u64,
    offset: usize,
    index: u64,
}

/// An entry record read back: its index and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// The entry's index.
    pub index: u64,
    /// The bytes the writer gave.
    pub payload: Vec<u8>,
}

/// A segment that is complete and synced.
#[derive(Debug)]
struct ClosedSegment {
    first_index: u64,
    last_index: u64,
    path: PathBuf,
}

/// The segment being appended to, mapped writable.
#[derive(Debug)]
struct ActiveSegment {
    first_index: u64,
    path: PathBuf,
    file: File,
    map: MmapMut,
    write_offset: usize,
    synced_offset: usize,
    /// Below this offset the mapping's pages were handed back (see `sync`).
    released_offset: usize,
}

/// A segmented, checksummed, append-only log of records numbered 1, 2, 3, ...
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    closed: Vec<ClosedSegment>,
    active: ActiveSegment,
    next_index: u64,
    /// An entry record every `MARK_SPACING_BYTES` or so, in log order, so
    /// reading old entries starts near them instead of at the first segment.
    marks: Vec<Position>,
    /// Every truncation record, in log order: the entries a read collected
    /// before one of them may be replaced after it.
    truncations: Vec<Position>,
}

impl Wal {
    /// Opens the log in `dir` (created if missing), recovering it: segments are
    /// scanned, a torn or corrupt tail of the last segment is cut and reported.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        if options.segment_size_bytes < SEGMENT_SIZE_MIN_BYTES {
            return Err(WalError::Config(format!(
                "segment size {} is below the minimum {SEGMENT_SIZE_MIN_BYTES} bytes",
                options.segment_size_bytes
            )));
        }
        fs::create_dir_all(dir).map_err(|e| io_error(e, "create WAL directory", dir))?;
        let segment_paths = list_segments(dir)?;
        if segment_paths.is_empty() {
            let active = create_segment(dir, 1, options.segment_size_bytes)?;
            let wal = Wal {
                dir: dir.to_path_buf(),
                options,
                closed: Vec::new(),
                active,
                next_index: 1,
                marks: Vec::new(),
                truncations: Vec::new(),
            };
            let report = wal.report(None);
            return Ok((wal, report));
        }

        let mut closed = Vec::new();
        let mut expected_first: Option<u64> = None;
        let last_position = segment_paths.len() - 1;
        for (position, (named_first, path)) in segment_paths.iter().enumerate() {
            if let Some(expected) = expected_first {
                // A segment named above where the previous one ended is
                // one started after truncations: it opens with a
                // truncation back to that point (see `roll`).
                let reopened = *named_first > expected
                    && opens_with_truncation_to(path, *named_first, expected)?;
                if *named_first != expected && !reopened {
                    return Err(WalError::Corrupt {
                        segment: path.clone(),
                        offset: 0,
                        reason: format!(
                            "segment starts at index {named_first}, but the previous one ended at {}",
                            expected - 1
                        ),
                    });
                }
            }
            if position < last_position {
                let last_index = scan_closed_segment(path, *named_first)?;
                closed.push(ClosedSegment {
                    first_index: *named_first,
                    last_index,
                    path: path.clone(),
                });
                expected_first = Some(last_index + 1);
            } else {
                let (active, cut) = recover_last_segment(path, *named_first, &options)?;
                let next_index = next_index_of(&active);
                let mut wal = Wal {
                    dir: dir.to_path_buf(),
                    options,
                    closed,
                    active,
                    next_index,
                    marks: Vec::new(),
                    truncations: Vec::new(),
                };
                wal.find_positions()?;
                let report = wal.report(cut);
                return Ok((wal, report));
            }
        }
        unreachable!("the loop returns at the last segment");
    }

    fn report(&self, cut: Option<TailCut>) -> RecoveryReport {
        RecoveryReport {
            segments: self.closed.len() + 1,
            first_index: self.first_index(),
            last_index: self.last_index(),
            cut,
        }
    }

    /// Index of the oldest record still in the log.
    pub fn first_index(&self) -> u64 {
        self.closed
            .first()
            .map_or(self.active.first_index, |s| s.first_index)
    }

    /// Index of the newest record, or `first_index() - 1` if the log is empty.
    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// Number of segment files, the active one included.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    /// Bytes written to the active segment but not yet synced.
    pub fn unsynced_bytes(&self) -> usize {
        self.active.write_offset - self.active.synced_offset
    }

    /// Appends a record. It is in the OS page cache once this returns (so it
    /// survives a process crash) and durable after the next `sync`.
    /// Returns the number of bytes written.
    pub fn append(
        &mut self,
        index: u64,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<usize, WalError> {
        let next_index = match kind.sequence(index, self.next_index) {
            Ok(next_index) => next_index,
            Err(reason) => panic!("WAL append out of order: {reason}"),
        };
        if payload.len() > RECORD_PAYLOAD_SIZE_MAX_BYTES {
            return Err(WalError::RecordTooLarge {
                size_bytes: payload.len(),
                size_max_bytes: RECORD_PAYLOAD_SIZE_MAX_BYTES,
            });
        }
        let size = record_size_bytes(payload.len());
        if self.active.write_offset + size > self.active.map.len() {
            self.roll(size)?;
        }
        let start = self.active.write_offset;
        encode_record(
            &mut self.active.map[start..start + size],
            index,
            kind,
            payload,
        );
        self.active.write_offset += size;
        self.next_index = next_index;
        let position = Position {
            segment: self.active.first_index,
            offset: start,
            index,
        };
        self.remember(kind, position);
        Ok(size)
    }

    /// Keeps `position` as a mark (an entry far enough from the last one)
    /// or as a truncation.
    fn remember(&mut self, kind: RecordKind, position: Position) {
        match kind {
            RecordKind::Entry => {
                let far = self.marks.last().is_none_or(|mark| {
                    mark.segment != position.segment
                        || position.offset >= mark.offset + MARK_SPACING_BYTES
                });
                if far {
                    self.marks.push(position);
                }
            }
            RecordKind::Truncate => self.truncations.push(position),
            RecordKind::HardState | RecordKind::Snapshot => {}
        }
    }

    /// Finds the marks and truncations of the records already in the log (at open).
    fn find_positions(&mut self) -> Result<(), WalError> {
        let mut found = Vec::new();
        for segment in &self.closed {
            let map = map_readonly(&segment.path)?;
            positions_in(&map, segment.first_index, &mut found);
        }
        let written = &self.active.map[..self.active.write_offset];
        positions_in(written, self.active.first_index, &mut found);
        for (kind, position) in found {
            self.remember(kind, position);
        }
        Ok(())
    }

    /// The entry records at `from..=to` as the log holds them now (a
    /// replaced entry is read in its latest version), at most `count_max`
    /// of them and about `size_max_bytes` of payload (at least one). The
    /// indexes must be ones no later record can replace (committed
    /// entries). Fewer come back where the log doesn't reach: none if
    /// `from` is not in it.
    pub fn read_entries(
        &self,
        from: u64,
        to: u64,
        count_max: usize,
        size_max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, WalError> {
        // The latest entry record at or below `from` in log order: the
        // entry at `from` as it is now was written at or after it, since
        // going back below `from` later would have taken a truncation
        // that replaced it.
        let start = self
            .marks
            .iter()
            .rev()
            .find(|mark| mark.index <= from)
            .copied();
        let mut read: Vec<StoredRecord> = Vec::new();
        // Payload bytes in `read`.
        let mut size = 0usize;
        let segments = self
            .closed
            .iter()
            .map(|s| (s.first_index, s.path.as_path()))
            .chain(std::iter::once((
                self.active.first_index,
                self.active.path.as_path(),
            )));
        for (first_index, path) in segments {
            if start.is_some_and(|start| first_index < start.segment) {
                continue;
            }
            let closed_map;
            let bytes: &[u8] = if first_index == self.active.first_index {
                &self.active.map[..self.active.write_offset]
            } else {
                closed_map = map_readonly(path)?;
                &closed_map
            };
            let begin = start
                .filter(|start| start.segment == first_index)
                .map_or(SEGMENT_HEADER_SIZE_BYTES, |start| start.offset);
            let next_index = start
                .filter(|start| start.segment == first_index)
                .map_or(first_index, |start| start.index);
            let flow = scan_records_at(bytes, (begin, next_index), |record, offset| {
                match record.kind {
                    RecordKind::Entry if record.index >= from && record.index <= to => {
                        let keep = (record.index - from) as usize;
                        if keep > read.len() {
                            // A gap: this is not the log's entry sequence.
                            return Err(WalError::Corrupt {
                                segment: path.to_path_buf(),
                                offset: offset as u64,
                                reason: format!(
                                    "entry {} follows entry {} when read back",
                                    record.index,
                                    from + read.len() as u64 - 1
                                ),
                            });
                        }
                        size -= read.drain(keep..).map(|r| r.payload.len()).sum::<usize>();
                        size += record.payload.len();
                        read.push(StoredRecord {
                            index: record.index,
                            payload: record.payload.to_vec(),
                        });
                    }
                    RecordKind::Truncate => {
                        let keep = (record.index.saturating_sub(from) as usize).min(read.len());
                        size -= read.drain(keep..).map(|r| r.payload.len()).sum::<usize>();
                    }
                    _ => return Ok(ControlFlow::Continue(())),
                }
                let Some(last) = read.last().map(|r| r.index) else {
                    return Ok(ControlFlow::Continue(()));
                };
                let full = read.len() >= count_max || size >= size_max_bytes || last >= to;
                // Stop once full, unless a later truncation replaces some of it.
                let here = Position {
                    segment: first_index,
                    offset,
                    index: record.index,
                };
                let replaced_later = || {
                    self.truncations
                        .iter()
                        .any(|t| *t > here && t.index <= last)
                };
                Ok(if full && !replaced_later() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
            if flow.is_break() {
                break;
            }
        }
        let mut kept = 0usize;
        let mut bytes = 0usize;
        for record in &read {
            if kept > 0 && (kept >= count_max || bytes + record.payload.len() > size_max_bytes) {
                break;
            }
            kept += 1;
            bytes += record.payload.len();
        }
        read.truncate(kept);
        Ok(read)
    }

    /// Loses what was appended since the last sync, as a power cut would:
    /// its bytes are zeroed and the next record goes where the first of
    /// them was. Returns the bytes lost. Only the power-cut fault uses it,
    /// and the process ends right after: nothing else here is rewound.
    pub fn drop_unsynced(&mut self) -> usize {
        let active = &mut self.active;
        let lost = active.write_offset - active.synced_offset;
        active.map[active.synced_offset..active.write_offset].fill(0);
        active.write_offset = active.synced_offset;
        lost
    }

    /// Makes every appended record durable (msync of the written range, which
    /// the kernel runs as an fdatasync of that range).
    pub fn sync(&mut self) -> Result<(), WalError> {
        let active = &mut self.active;
        if active.synced_offset < active.write_offset {
            let len = active.write_offset - active.synced_offset;
            active
                .map
                .flush_range(active.synced_offset, len)
                .map_err(|e| io_error(e, "sync WAL segment", &active.path))?;
            active.synced_offset = active.write_offset;
            active.release_synced();
        }
        Ok(())
    }

    /// Closes the active segment (synced in full, to keep the invariant at the
    /// top of this file) and starts a new one whose first record is `index`.
    fn roll(&mut self, record_size: usize) -> Result<(), WalError> {
        // A segment is named after the log's next index when it starts,
        // unless truncations took that back to or below the active
        // segment's name: names must rise (they order the log), so the new
        // segment is named just above and opens with a truncation back to
        // the next index.
        let index = self.next_index;
        let name = index.max(self.active.first_index + 1);
        self.sync()?;
        let opening = if name > index {
            record_size_bytes(0)
        } else {
            0
        };
        let size = self
            .options
            .segment_size_bytes
            .max((SEGMENT_HEADER_SIZE_BYTES + opening + record_size) as u64);
        if self.active.write_offset == SEGMENT_HEADER_SIZE_BYTES {
            // The active segment holds no record yet, and a new segment
            // would have the same name: grow this one to fit instead.
            let active = &mut self.active;
            preallocate(&active.file, size)
                .map_err(|e| io_error(e, "grow WAL segment", &active.path))?;
            active
                .file
                .sync_all()
                .map_err(|e| io_error(e, "sync WAL segment", &active.path))?;
            active.map = map_writable(&active.file, &active.path)?;
            return Ok(());
        }
        let next = create_segment(&self.dir, name, size)?;
        let previous = std::mem::replace(&mut self.active, next);
        self.closed.push(ClosedSegment {
            first_index: previous.first_index,
            last_index: index.saturating_sub(1),
            path: previous.path,
        });
        if opening > 0 {
            let start = self.active.write_offset;
            encode_record(
                &mut self.active.map[start..start + opening],
                index,
                RecordKind::Truncate,
                &[],
            );
            self.active.write_offset += opening;
            let position = Position {
                segment: name,
                offset: start,
                index,
            };
            self.remember(RecordKind::Truncate, position);
        }
        metrics::counter!("harmonydb_wal_segments_created_total").increment(1);
        Ok(())
    }

    /// Calls `visit` with every entry record whose index is at least
    /// `from_index`, and every hard-state and truncation record, in order.
    pub fn read_from<E>(
        &self,
        from_index: u64,
        mut visit: impl FnMut(RecordRef<'_>) -> Result<(), E>,
    ) -> Result<(), ReadError<E>> {
        // Every segment is read, even one whose entries are all below
        // `from_index`: it may hold the latest hard state.
        for segment in &self.closed {
            let map = map_readonly(&segment.path)?;
            visit_records(
                &segment.path,
                &map,
                segment.first_index,
                from_index,
                &mut visit,
            )?;
        }
        let written = &self.active.map[..self.active.write_offset];
        visit_records(
            &self.active.path,
            written,
            self.active.first_index,
            from_index,
            &mut visit,
        )
    }

    /// Deletes every segment all of whose records are below `index`. The active
    /// segment is never deleted. Returns how many segment files were removed.
    pub fn delete_below(&mut self, index: u64) -> Result<usize, WalError> {
        let keep_from = self
            .closed
            .iter()
            .position(|s| s.last_index >= index)
            .unwrap_or(self.closed.len());
        let first_kept = self
            .closed
            .get(keep_from)
            .map_or(self.active.first_index, |s| s.first_index);
        self.marks.retain(|mark| mark.segment >= first_kept);
        self.truncations.retain(|t| t.segment >= first_kept);
        for segment in self.closed.drain(..keep_from) {
            fs::remove_file(&segment.path)
                .map_err(|e| io_error(e, "delete WAL segment", &segment.path))?;
            info!(segment = %segment.path.display(), last_index = segment.last_index, "deleted WAL segment");
        }
        if keep_from > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(keep_from)
    }
}

/// Reading the log back failed: either the log itself or the visitor.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The WAL could not be read.
    Wal(WalError),
    /// The visitor returned an error, which stopped the read.
    Visitor(E),
}

impl<E> From<WalError> for ReadError<E> {
    fn from(error: WalError) -> Self {
        ReadError::Wal(error)
    }
}

/// Where and why a scan of one segment's records stopped.
struct ScanEnd {
    /// Offset just past the last valid record.
    offset: usize,
    /// The log's next index after the last valid record.
    next_index: u64,
    /// The zeroed end, or the first bad record.
    stop: DecodeStop,
}

/// Decodes the records of one segment in order, from just after its header,
/// handing each to `visit`, until the zeroed end or the first bad record.
fn scan_records<'a, E>(
    segment_bytes: &'a [u8],
    first_index: u64,
    mut visit: impl FnMut(RecordRef<'a>) -> Result<(), E>,
) -> Result<ScanEnd, E> {
    let start = (SEGMENT_HEADER_SIZE_BYTES, first_index);
    match scan_records_at(segment_bytes, start, |record, _| {
        visit(record).map(|()| ControlFlow::Continue(()))
    })? {
        ControlFlow::Continue(end) => Ok(end),
        ControlFlow::Break(()) => unreachable!("this visitor never stops the scan"),
    }
}

/// The one loop every reader of segments shares (recovery, replay,
/// positions, entries read back): decodes the records of a segment from
/// `start` (an offset at a record boundary, and the log's next index
/// there), handing each with its offset to `visit`, until the zeroed end or
/// the first bad record (`Continue` with where and why), or until `visit`
/// breaks (`Break`).
fn scan_records_at<'a, E>(
    segment_bytes: &'a [u8],
    start: (usize, u64),
    mut visit: impl FnMut(RecordRef<'a>, usize) -> Result<ControlFlow<()>, E>,
) -> Result<ControlFlow<(), ScanEnd>, E> {
    let (mut offset, mut next_index) = start;
    loop {
        match decode_record(
            &segment_bytes[offset.min(segment_bytes.len())..],
            next_index,
        ) {
            Ok(record) => {
                let at = offset;
                offset += record_size_bytes(record.payload.len());
                next_index = record.next_index_after(next_index);
                if visit(record, at)?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Err(stop) => {
                return Ok(ControlFlow::Continue(ScanEnd {
                    offset,
                    next_index,
                    stop,
                }))
            }
        }
    }
}

/// Every entry and truncation record of a segment with its position.
fn positions_in(segment_bytes: &[u8], first_index: u64, found: &mut Vec<(RecordKind, Position)>) {
    let start = (SEGMENT_HEADER_SIZE_BYTES, first_index);
    let _ = scan_records_at(segment_bytes, start, |record, offset| {
        if matches!(record.kind, RecordKind::Entry | RecordKind::Truncate) {
            found.push((
                record.kind,
                Position {
                    segment: first_index,
                    offset,
                    index: record.index,
                },
            ));
        }
        Ok::<_, std::convert::Infallible>(ControlFlow::Continue(()))
    });
}

/// `scan_records` without a visitor: just where the segment's records end.
fn scan_all(segment_bytes: &[u8], first_index: u64) -> ScanEnd {
    match scan_records(segment_bytes, first_index, |_| {
        Ok::<(), std::convert::Infallible>(())
    }) {
        Ok(end) => end,
        Err(never) => match never {},
    }
}

fn visit_records<E>(
    path: &Path,
    segment_bytes: &[u8],
    first_index: u64,
    from_index: u64,
    visit: &mut impl FnMut(RecordRef<'_>) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    let end = scan_records(segment_bytes, first_index, |record| {
        // Hard states and truncations are always visited: they say
        // something about the log, not about one index.
        if record.kind != RecordKind::Entry || record.index >= from_index {
            visit(record).map_err(ReadError::Visitor)?;
        }
        Ok::<(), ReadError<E>>(())
    })?;
    match end.stop {
        // Recovery already validated these bytes; End is the normal way out.
        DecodeStop::End => Ok(()),
        DecodeStop::Corrupt(reason) => Err(ReadError::Wal(WalError::Corrupt {
            segment: path.to_path_buf(),
            offset: end.offset as u64,
            reason: format!("record changed on disk after recovery: {reason}"),
        })),
    }
}

/// The log's next index after the records of the active segment.
fn next_index_of(active: &ActiveSegment) -> u64 {
    // Recovery validated these bytes up to write_offset, so this reads them all.
    let written = &active.map[..active.write_offset];
    scan_all(written, active.first_index).next_index
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

/// Lists segment files sorted by first index, removing leftovers of a crash
/// during segment creation (`.seg.tmp` files, which never held a record).
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_error(e, "list WAL directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(e, "list WAL directory", dir))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(TEMP_SUFFIX) {
            warn!(file = %path.display(), "removing an unfinished WAL segment left by a crash");
            fs::remove_file(&path).map_err(|e| io_error(e, "remove unfinished segment", &path))?;
            continue;
        }
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        let first_index = stem
            .parse::<u64>()
            .ok()
            .filter(|index| stem.len() == 20 && *index >= 1)
            .ok_or_else(|| WalError::Corrupt {
                segment: path.clone(),
                offset: 0,
                reason: "segment file name is not a 20-digit index of 1 or more".to_string(),
            })?;
        segments.push((first_index, path));
    }
    segments.sort();
    Ok(segments)
}

fn create_segment(
    dir: &Path,
    first_index: u64,
    size_bytes: u64,
) -> Result<ActiveSegment, WalError> {
    let final_path = segment_path(dir, first_index);
    let temp_path = dir.join(format!("{first_index:020}{TEMP_SUFFIX}"));
    // Out of space: the half-made file goes (its blocks back to the file
    // system) and nothing else changed, so the append can be made again.
    let no_space = |source: io::Error| {
        let _ = fs::remove_file(&temp_path);
        if super::is_no_space(&source) {
            WalError::NoSpace {
                path: final_path.clone(),
                needed_bytes: size_bytes,
                source: std::sync::Arc::new(source),
            }
        } else {
            io_error(source, "preallocate WAL segment", &temp_path)
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)
        .map_err(no_space)?;
    preallocate(&file, size_bytes).map_err(no_space)?;
    let header = SegmentHeader { first_index }.encode();
    file.write_all_at(&header, 0)
        .map_err(|e| io_error(e, "write WAL segment header", &temp_path))?;
    file.sync_all()
        .map_err(|e| io_error(e, "sync WAL segment", &temp_path))?;
    // The rename publishes a segment whose header is already durable, so a
    // crash never leaves a half-made segment under a real segment name.
    fs::rename(&temp_path, &final_path)
        .map_err(|e| io_error(e, "rename WAL segment", &final_path))?;
    sync_dir(dir)?;
    let map = map_writable(&file, &final_path)?;
    Ok(ActiveSegment {
        first_index,
        path: final_path,
        file,
        map,
        write_offset: SEGMENT_HEADER_SIZE_BYTES,
        synced_offset: SEGMENT_HEADER_SIZE_BYTES,
        released_offset: 0,
    })
}

/// Synced bytes of the active segment after which its pages are handed
/// back to the kernel.
const RELEASE_STEP_BYTES: usize = 4 * 1024 * 1024;

impl ActiveSegment {
    /// Hands back the mapping's pages below the synced offset once another
    /// `RELEASE_STEP_BYTES` were synced: else every page written stays in
    /// the node's resident set until the segment is closed (64 MiB by
    /// default). They stay in the page cache, and a later read (entries
    /// read back for a follower) maps them again from it.
    fn release_synced(&mut self) {
        const PAGE_BYTES: usize = 4096;
        let upto = self.synced_offset / PAGE_BYTES * PAGE_BYTES;
        if upto < self.released_offset + RELEASE_STEP_BYTES {
            return;
        }
        // SAFETY: a shared mapping of a file: MADV_DONTNEED only drops this
        // process's page-table entries for the range, and the next access
        // faults the page back in from the page cache, which holds every
        // byte written (and synced, below `synced_offset`). No reference
        // into the range is held across this call (`&mut self`).
        let advised = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.released_offset,
                upto - self.released_offset,
            )
        };
        // Only a hint: on failure the pages just stay resident.
        if advised.is_ok() {
            self.released_offset = upto;
        }
    }
}

/// Reserves the segment's blocks up front so appends never hit ENOSPC halfway
/// through a record written through the mapping (which would be a SIGBUS).
fn preallocate(file: &File, size_bytes: u64) -> io::Result<()> {
    file.set_len(size_bytes)?;
    let length = libc::off_t::try_from(size_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment size too large"))?;
    // SAFETY: posix_fallocate only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(file), 0, length) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate (tmpfs on old kernels, some overlays) fall back to the sparse file.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn map_writable(file: &File, path: &Path) -> Result<MmapMut, WalError> {
    // SAFETY: the data directory is locked by this process (see the node's lock
    // file), so no other process truncates or writes the segment while mapped.
    unsafe { MmapOptions::new().map_mut(file) }.map_err(|e| io_error(e, "map WAL segment", path))
}

fn map_readonly(path: &Path) -> Result<Mmap, WalError> {
    let file = File::open(path).map_err(|e| io_error(e, "open WAL segment", path))?;
    // SAFETY: as in `map_writable`; closed segments are also never written again.
    unsafe { MmapOptions::new().map(&file) }.map_err(|e| io_error(e, "map WAL segment", path))
}

/// Validates a segment that is not the last one: all of it must be intact.
/// Returns the index of its last record.
fn scan_closed_segment(path: &Path, named_first: u64) -> Result<u64, WalError> {
    let map = map_readonly(path)?;
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let header = SegmentHeader::decode(&map).map_err(|reason| corrupt(0, reason))?;
    if header.first_index != named_first {
        return Err(corrupt(
            0,
            format!(
                "header says first index {}, file name says {named_first}",
                header.first_index
            ),
        ));
    }
    let end = scan_all(&map, named_first);
    match end.stop {
        DecodeStop::End => {
            if let Some(garbage) = last_nonzero(&map[end.offset.min(map.len())..]) {
                return Err(corrupt(
                    end.offset + garbage,
                    "non-zero bytes after the last record of a closed segment".to_string(),
                ));
            }
            Ok(end.next_index - 1)
        }
        DecodeStop::Corrupt(reason) => Err(corrupt(
            end.offset,
            format!("{reason}; this segment was synced before the next one was started, so acknowledged records are damaged"),
        )),
    }
}

/// Whether the segment's first record is a truncation to `index`.
fn opens_with_truncation_to(path: &Path, named_first: u64, index: u64) -> Result<bool, WalError> {
    let map = map_readonly(path)?;
    let first = decode_record(
        &map[SEGMENT_HEADER_SIZE_BYTES.min(map.len())..],
        named_first,
    );
    Ok(matches!(first, Ok(record) if record.kind == RecordKind::Truncate && record.index == index))
}

/// Opens the last segment for appending, cutting a torn or corrupt tail.
fn recover_last_segment(
    path: &Path,
    named_first: u64,
    options: &WalOptions,
) -> Result<(ActiveSegment, Option<TailCut>), WalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_error(e, "open WAL segment", path))?;
    let length = file
        .metadata()
        .map_err(|e| io_error(e, "stat WAL segment", path))?
        .len();
    let mut header_bytes = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    let header_read = file
        .read_at(&mut header_bytes, 0)
        .map_err(|e| io_error(e, "read WAL segment", path))?;
    let header = SegmentHeader::decode(&header_bytes[..header_read]).map_err(|reason| {
        WalError::Corrupt {
            segment: path.to_path_buf(),
            offset: 0,
            reason,
        }
    })?;
    if header.first_index != named_first {
        return Err(WalError::Corrupt {
            segment: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "header says first index {}, file name says {named_first}",
                header.first_index
            ),
        });
    }
    // A file cut short (a copy gone wrong, a truncating tool) is grown back to
    // a full segment; the missing bytes read as zeros, which is the log's end.
    if length < options.segment_size_bytes {
        preallocate(&file, options.segment_size_bytes)
            .map_err(|e| io_error(e, "grow WAL segment", path))?;
    }
    let mut map = map_writable(&file, path)?;
    let ScanEnd {
        offset,
        next_index: index,
        stop,
    } = scan_all(&map, named_first);
    if let DecodeStop::Corrupt(reason) = &stop {
        let intact_after = count_intact_records_after(&map, offset + 1, index);
        if intact_after > 0 && !options.truncate_corrupt_tail {
            return Err(WalError::Corrupt {
                segment: path.to_path_buf(),
                offset: offset as u64,
                reason: format!(
                    "{reason}; {intact_after} intact records follow it, which may be acknowledged writes, so recovery will not cut them (restart with --wal-truncate-corrupt-tail to drop everything from this offset on)"
                ),
            });
        }
    }
    let garbage_end = last_nonzero(&map[offset..]).map(|at| offset + at + 1);
    let cut = match (stop, garbage_end) {
        (DecodeStop::End, None) => None,
        (DecodeStop::End, Some(end)) => {
            Some((end, "non-zero bytes after the last record".to_string()))
        }
        (DecodeStop::Corrupt(reason), end) => Some((end.unwrap_or(offset), reason)),
    };
    let cut = match cut {
        None => None,
        Some((end, reason)) => {
            // Zero the cut region so a later append that is shorter than it
            // can't be followed by stale bytes that look like a record.
            map[offset..end].fill(0);
            map.flush_range(offset, end - offset)
                .map_err(|e| io_error(e, "sync WAL segment", path))?;
            let cut = TailCut {
                segment: path.to_path_buf(),
                offset: offset as u64,
                bytes: (end - offset) as u64,
                reason,
            };
            warn!(
                segment = %cut.segment.display(),
                offset = cut.offset,
                bytes = cut.bytes,
                reason = %cut.reason,
                "cut the WAL's torn or corrupt tail"
            );
            Some(cut)
        }
    };
    Ok((
        ActiveSegment {
            first_index: named_first,
            path: path.to_path_buf(),
            file,
            map,
            write_offset: offset,
            synced_offset: offset,
            released_offset: 0,
        },
        cut,
    ))
}

/// Counts records that look intact (plausible header, index near or after
/// `bad_index`, valid checksum) anywhere from `from` on. A torn write leaves
/// none after it in the common case; damage in the middle of synced data does.
/// The index check runs before the checksum, so garbage costs little.
fn count_intact_records_after(segment: &[u8], from: usize, bad_index: u64) -> usize {
    let mut count = 0;
    let mut position = from;
    while position + RECORD_HEADER_SIZE_BYTES <= segment.len() {
        let header = &segment[position..position + RECORD_HEADER_SIZE_BYTES];
        let mut index_bytes = [0u8; 8];
        index_bytes.copy_from_slice(&header[9..17]);
        let index = u64::from_le_bytes(index_bytes);
        let kind = header[8];
        let known_kind = (RecordKind::Entry as u8..=RecordKind::Snapshot as u8).contains(&kind);
        let near = index + 1 >= bad_index
            && index.saturating_sub(bad_index) <= (segment.len() / RECORD_HEADER_SIZE_BYTES) as u64;
        // A snapshot record may name an index far below the records around it.
        let plausible = known_kind && (near || kind == RecordKind::Snapshot as u8);
        if plausible {
            // The next index that makes this record's own index valid for its kind.
            let next_for_kind = if kind == RecordKind::Entry as u8 {
                index
            } else {
                index + 1
            };
            if let Ok(record) = decode_record(&segment[position..], next_for_kind) {
                count += 1;
                position += record_size_bytes(record.payload.len());
                continue;
            }
        }
        position += 1;
    }
    count
}

fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    bytes.iter().rposition(|b| *b != 0)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(e, "sync WAL directory", dir))
}

fn io_error(source: io::Error, action: &'static str, path: &Path) -> WalError {
    WalError::io(source, action, path)
}
