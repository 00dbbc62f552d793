//! Overflow chains: a value too large for its leaf cell lives in a chain of
//! overflow pages, each holding the next page's id, how many bytes it
//! uses, and those bytes. The leaf cell keeps the value's total length and
//! the first page.
//!
//! A chain is written completely before its cell is put in a leaf, and
//! never changed afterwards: a replaced or deleted value gets a new chain
//! or none, and its old chain is freed once the leaf no longer points at
//! it. So a reader holding the leaf's latch can follow the chain without
//! latching anything else in order, and a chain being freed is reachable
//! by nobody.

use std::collections::HashSet;

use crate::storage::page::read_u64;
use crate::storage::{PageId, PageKind, PageStore, StorageError, PAGE_BODY_SIZE};

use super::node::malformed;

/// Bytes of an overflow page's header: next page (u64), bytes used (u32).
pub const OVERFLOW_HEADER_SIZE_BYTES: usize = 12;

/// Value bytes one overflow page holds.
pub const OVERFLOW_DATA_MAX_BYTES: usize = PAGE_BODY_SIZE - OVERFLOW_HEADER_SIZE_BYTES;

const NEXT_AT: usize = 0;
const USED_AT: usize = 8;
const DATA_AT: usize = OVERFLOW_HEADER_SIZE_BYTES;

/// Bytes reserved up front when reading a chain: the length comes from a
/// page, so a damaged one must not make us allocate gigabytes before the
/// chain proves to hold them.
const RESERVE_MAX_BYTES: usize = 1 << 20;

/// Pages in the chain of a `len`-byte value: full pages, the last one
/// partly used; an empty value still takes one (empty) page.
pub(crate) fn chain_pages(len: u64) -> u64 {
    len.div_ceil(OVERFLOW_DATA_MAX_BYTES as u64).max(1)
}

/// Writes `value` to a new chain and returns its first page. Pages are
/// written last to first, so each knows its successor when it is written
/// and only one is latched at a time. On failure, the pages written so far
/// are freed.
pub(crate) fn write_chain<S: PageStore>(store: &S, value: &[u8]) -> Result<PageId, StorageError> {
    let empty: [&[u8]; 1] = [&[]];
    let chunks: Vec<&[u8]> = if value.is_empty() {
        empty.to_vec()
    } else {
        value.chunks(OVERFLOW_DATA_MAX_BYTES).collect()
    };
    let mut written = Vec::with_capacity(chunks.len());
    let mut next: PageId = 0;
    for chunk in chunks.iter().rev() {
        let mut page = match store.allocate(PageKind::Overflow) {
            Ok(page) => page,
            Err(error) => {
                // The chain is reachable by nobody, so freeing it can only
                // fail like the allocation did; the first error is the one
                // worth reporting.
                for id in written {
                    let _ = store.free(id);
                }
                return Err(error);
            }
        };
        let body = page.body_mut();
        body[NEXT_AT..NEXT_AT + 8].copy_from_slice(&next.to_le_bytes());
        body[USED_AT..USED_AT + 4].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        body[DATA_AT..DATA_AT + chunk.len()].copy_from_slice(chunk);
        next = page.id();
        written.push(next);
    }
    Ok(next)
}

/// One page of a chain, read and checked: its data and the next page.
fn read_link<S: PageStore>(
    store: &S,
    id: PageId,
    out: Option<&mut Vec<u8>>,
) -> Result<(usize, PageId), StorageError> {
    let page = store.read(id)?;
    if page.kind() != Some(PageKind::Overflow) {
        return Err(malformed(
            id,
            format!("overflow chain reaches a {:?} page", page.kind()),
        ));
    }
    let body = page.body();
    let used = u32::from_le_bytes([
        body[USED_AT],
        body[USED_AT + 1],
        body[USED_AT + 2],
        body[USED_AT + 3],
    ]) as usize;
    if used > OVERFLOW_DATA_MAX_BYTES {
        return Err(malformed(id, format!("overflow page claims {used} bytes")));
    }
    if let Some(out) = out {
        out.extend_from_slice(&body[DATA_AT..DATA_AT + used]);
    }
    Ok((used, read_u64(body, NEXT_AT)))
}

/// Reads the `len`-byte value whose chain starts at `first` into `out`
/// (replacing its content). The caller holds the latch of the leaf that
/// points at the chain.
pub(crate) fn read_chain<S: PageStore>(
    store: &S,
    first: PageId,
    len: u32,
    out: &mut Vec<u8>,
) -> Result<(), StorageError> {
    out.clear();
    let len = len as usize;
    out.reserve(len.min(RESERVE_MAX_BYTES));
    let mut id = first;
    for _ in 0..chain_pages(len as u64) {
        if id == 0 {
            return Err(malformed(
                first,
                format!("chain ends before its {len} bytes"),
            ));
        }
        let (_, next) = read_link(store, id, Some(out))?;
        if out.len() > len {
            return Err(malformed(
                id,
                format!("chain holds more than its {len} bytes"),
            ));
        }
        id = next;
    }
    if id != 0 || out.len() != len {
        return Err(malformed(
            first,
            format!(
                "chain of a {len}-byte value holds {} bytes or runs on",
                out.len()
            ),
        ));
    }
    Ok(())
}

/// Frees the chain of a `len`-byte value starting at `first`. The leaf no
/// longer points at it, so nobody else can reach it. Stops at the first
/// page that is not an overflow page rather than free something else.
pub(crate) fn free_chain<S: PageStore>(
    store: &S,
    first: PageId,
    len: u32,
) -> Result<(), StorageError> {
    let mut id = first;
    for _ in 0..chain_pages(u64::from(len)) {
        if id == 0 {
            break;
        }
        let (_, next) = read_link(store, id, None)?;
        store.free(id)?;
        id = next;
    }
    Ok(())
}

/// Checks a chain for the tree checker: every page an overflow page not
/// seen before, all but the last one full, and the bytes adding up to the
/// value's length. Returns the number of pages.
pub(crate) fn check_chain<S: PageStore>(
    store: &S,
    first: PageId,
    len: u32,
    seen: &mut HashSet<PageId>,
) -> Result<u64, String> {
    let expected = chain_pages(u64::from(len));
    let mut id = first;
    let mut total = 0usize;
    for page in 0..expected {
        if id == 0 {
            return Err(format!(
                "chain at {first} ends after {page} of {expected} pages"
            ));
        }
        if !seen.insert(id) {
            return Err(format!("overflow page {id} is reached twice"));
        }
        let (used, next) = read_link(store, id, None).map_err(|e| e.to_string())?;
        if next != 0 && used != OVERFLOW_DATA_MAX_BYTES {
            return Err(format!(
                "overflow page {id} uses {used} bytes but is not the last"
            ));
        }
        total += used;
        id = next;
    }
    if id != 0 {
        return Err(format!("chain at {first} runs past its {expected} pages"));
    }
    if total != len as usize {
        return Err(format!(
            "chain at {first} holds {total} bytes for a {len}-byte value"
        ));
    }
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryPages;

    fn round_trip(len: usize) {
        let store = MemoryPages::new();
        let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let first = write_chain(&store, &value).unwrap();
        let pages = chain_pages(len as u64);
        assert_eq!(store.pages_in_use() as u64, pages, "len {len}");
        let mut out = vec![9; 3];
        read_chain(&store, first, len as u32, &mut out).unwrap();
        assert_eq!(out, value, "len {len}");
        let mut seen = HashSet::new();
        assert_eq!(check_chain(&store, first, len as u32, &mut seen), Ok(pages));
        assert!(
            read_chain(&store, first, len as u32 + 1, &mut out).is_err(),
            "a wrong length is caught"
        );
        free_chain(&store, first, len as u32).unwrap();
        assert_eq!(store.pages_in_use(), 0, "len {len}: freed");
    }

    #[test]
    fn chains_round_trip_at_every_boundary() {
        for len in [
            0,
            1,
            OVERFLOW_DATA_MAX_BYTES - 1,
            OVERFLOW_DATA_MAX_BYTES,
            OVERFLOW_DATA_MAX_BYTES + 1,
            5 * OVERFLOW_DATA_MAX_BYTES + 17,
        ] {
            round_trip(len);
        }
        assert_eq!(chain_pages(0), 1);
        assert_eq!(chain_pages(OVERFLOW_DATA_MAX_BYTES as u64), 1);
        assert_eq!(chain_pages(OVERFLOW_DATA_MAX_BYTES as u64 + 1), 2);
    }

    #[test]
    fn a_damaged_chain_is_malformed() {
        let store = MemoryPages::new();
        let value = vec![3u8; 3 * OVERFLOW_DATA_MAX_BYTES];
        let first = write_chain(&store, &value).unwrap();
        let second = {
            let page = store.read(first).unwrap();
            read_u64(page.body(), NEXT_AT)
        };
        // A used count past the page.
        store.write(second).unwrap().body_mut()[USED_AT..USED_AT + 4]
            .copy_from_slice(&9000u32.to_le_bytes());
        let mut out = Vec::new();
        assert!(matches!(
            read_chain(&store, first, value.len() as u32, &mut out),
            Err(StorageError::Malformed { page, .. }) if page == second
        ));
        // A page of another kind in the chain.
        store.write(second).unwrap().set_kind(PageKind::Leaf);
        assert!(read_chain(&store, first, value.len() as u32, &mut out).is_err());
        assert!(check_chain(&store, first, value.len() as u32, &mut HashSet::new()).is_err());
    }
}
