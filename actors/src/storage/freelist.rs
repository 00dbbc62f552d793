//! The persisted free-page list: a chain of pages, written by each
//! checkpoint, listing the page ids that were free when it began. The
//! holder pages are themselves free pages (taken from the list), so
//! listing free pages never costs a page in use; loading the list gives
//! back the holders too.
//!
//! Body layout: next holder (u64, 0 = last), ids in this page (u32), then
//! the ids (u64 each).

use super::page::read_u64;
use super::pager::Pager;
use super::{Page, PageId, PageKind, StorageError, PAGE_BODY_SIZE};

const IDS_AT: usize = 12;

/// Ids one holder page lists.
pub const IDS_PER_PAGE: usize = (PAGE_BODY_SIZE - IDS_AT) / 8;

/// The holder pages for `free` (sorted, unsealed) and the head of the chain
/// (0 when nothing is free).
pub fn build(free: &[PageId]) -> (Vec<Box<Page>>, PageId) {
    if free.is_empty() {
        return (Vec::new(), 0);
    }
    // h holders list the other free.len() - h ids: h = ceil((n - h) / C)
    // is satisfied by h = ceil(n / (C + 1)).
    let holders_needed = free.len().div_ceil(IDS_PER_PAGE + 1);
    let (listed, holders) = free.split_at(free.len() - holders_needed);
    let mut pages = Vec::with_capacity(holders.len());
    for (i, holder) in holders.iter().enumerate() {
        let mut page = Page::new(*holder);
        page.reset(PageKind::FreeList);
        let next = holders.get(i + 1).copied().unwrap_or(0);
        let chunk: &[PageId] = listed.chunks(IDS_PER_PAGE).nth(i).unwrap_or(&[]);
        let body = page.body_mut();
        body[..8].copy_from_slice(&next.to_le_bytes());
        body[8..12].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        for (j, id) in chunk.iter().enumerate() {
            let at = IDS_AT + j * 8;
            body[at..at + 8].copy_from_slice(&id.to_le_bytes());
        }
        pages.push(page);
    }
    let head = holders[0];
    (pages, head)
}

/// Every free page id the chain from `head` lists, holders included;
/// `expected` is the count the meta page recorded.
pub fn load(pager: &Pager, head: PageId, expected: u64) -> Result<Vec<PageId>, StorageError> {
    let mut free = Vec::new();
    let mut next = head;
    let mut hops = 0u64;
    while next != 0 {
        hops += 1;
        if hops > expected.max(1) {
            return Err(StorageError::Malformed {
                page: next,
                reason: "the free list is longer than the meta page says (a cycle?)".into(),
            });
        }
        let mut page = Page::new(next);
        pager.read(next, &mut page)?;
        if page.kind() != Some(PageKind::FreeList) {
            return Err(StorageError::Malformed {
                page: next,
                reason: "a free-list link points at a page that is not a free-list page".into(),
            });
        }
        let body = page.body();
        let count = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
        if count > IDS_PER_PAGE {
            return Err(StorageError::Malformed {
                page: next,
                reason: format!("{count} ids in a page that holds {IDS_PER_PAGE}"),
            });
        }
        free.push(next);
        free.extend((0..count).map(|j| read_u64(body, IDS_AT + j * 8)));
        next = read_u64(body, 0);
    }
    if free.len() as u64 != expected {
        return Err(StorageError::Malformed {
            page: head,
            reason: format!(
                "the free list has {} pages, the meta page says {expected}",
                free.len()
            ),
        });
    }
    Ok(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_list_of_any_size_round_trips_through_its_own_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pager = Pager::open(&dir.path().join("pages")).expect("open");
        for size in [
            0usize,
            1,
            2,
            IDS_PER_PAGE,
            IDS_PER_PAGE + 1,
            IDS_PER_PAGE + 2,
            5_000,
        ] {
            let free: Vec<PageId> = (0..size as u64).map(|i| 10 + 3 * i).collect();
            let (pages, head) = build(&free);
            for mut page in pages {
                page.seal(1);
                pager.write(&page).expect("write");
            }
            let mut loaded = load(&pager, head, size as u64).expect("load");
            loaded.sort_unstable();
            assert_eq!(loaded, free, "size {size}");
        }
        assert!(
            load(&pager, 10, 3).is_err(),
            "a count that doesn't match is refused"
        );
    }
}
