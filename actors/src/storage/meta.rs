//! The meta page: where each shard's tree is and how far into its Raft log
//! the checkpointed tree goes. There are two slots, pages 0 and 1;
//! checkpoint number n writes slot n % 2, so a torn meta write leaves the
//! other slot, the previous checkpoint, intact. On open the valid slot with
//! the higher checkpoint number wins.
//!
//! Body layout (little-endian; `docs/storage-format.md`):
//!
//! ```text
//! 0..8    magic "HDBMETA1"
//! 8..16   checkpoint number (0: none yet)
//! 16..24  page count: pages in use or free (the file may be longer)
//! 24..32  first free-list page (0: none)
//! 32..40  free pages listed (holders included)
//! 40..44  shards (u32), then per shard 32 bytes:
//!         shard id (u64), root page (u64), applied Raft index (u64),
//!         keys in the tree (u64)
//! ```

use super::page::read_u64;
use super::pager::Pager;
use super::{Page, PageId, PageKind, StorageError, PAGE_BODY_SIZE};

const MAGIC: &[u8; 8] = b"HDBMETA1";
const SHARDS_AT: usize = 40;
const SHARD_SIZE: usize = 32;

/// Most shards one node's meta page can describe.
pub const SHARDS_MAX: usize = (PAGE_BODY_SIZE - SHARDS_AT - 4) / SHARD_SIZE;

/// One shard's tree as checkpointed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardMeta {
    /// The shard (Raft group).
    pub shard: u64,
    /// Its tree's root page.
    pub root: PageId,
    /// The last Raft index applied to the tree as checkpointed.
    pub applied_index: u64,
    /// Keys in the tree.
    pub keys: u64,
}

/// What the meta page says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The checkpoint that wrote it (0: no checkpoint yet, an empty store).
    pub checkpoint: u64,
    /// Pages in use or free.
    pub page_count: PageId,
    /// First page of the persisted free list (0: none).
    pub free_list_head: PageId,
    /// Free pages it lists.
    pub free_count: u64,
    /// Every shard's tree.
    pub shards: Vec<ShardMeta>,
}

impl Meta {
    /// The slot (page id) checkpoint number `checkpoint` writes.
    pub fn slot(checkpoint: u64) -> PageId {
        checkpoint % 2
    }

    /// The meta page for this checkpoint, sealed.
    pub fn to_page(&self) -> Result<Box<Page>, StorageError> {
        if self.shards.len() > SHARDS_MAX {
            return Err(StorageError::TooLarge(format!(
                "{} shards exceed the meta page's {SHARDS_MAX}",
                self.shards.len()
            )));
        }
        let mut page = Page::new(Meta::slot(self.checkpoint));
        page.reset(PageKind::Meta);
        let body = page.body_mut();
        body[..8].copy_from_slice(MAGIC);
        body[8..16].copy_from_slice(&self.checkpoint.to_le_bytes());
        body[16..24].copy_from_slice(&self.page_count.to_le_bytes());
        body[24..32].copy_from_slice(&self.free_list_head.to_le_bytes());
        body[32..40].copy_from_slice(&self.free_count.to_le_bytes());
        let count = u32::try_from(self.shards.len()).unwrap_or(u32::MAX);
        body[SHARDS_AT..SHARDS_AT + 4].copy_from_slice(&count.to_le_bytes());
        for (i, shard) in self.shards.iter().enumerate() {
            let at = SHARDS_AT + 4 + i * SHARD_SIZE;
            body[at..at + 8].copy_from_slice(&shard.shard.to_le_bytes());
            body[at + 8..at + 16].copy_from_slice(&shard.root.to_le_bytes());
            body[at + 16..at + 24].copy_from_slice(&shard.applied_index.to_le_bytes());
            body[at + 24..at + 32].copy_from_slice(&shard.keys.to_le_bytes());
        }
        page.seal(self.checkpoint);
        Ok(page)
    }

    /// Reads a meta page; None for a slot never written.
    pub fn from_page(page: &Page) -> Result<Option<Meta>, StorageError> {
        let id = page.id();
        if page.bytes().iter().all(|b| *b == 0) {
            return Ok(None);
        }
        page.verify(id)
            .map_err(|damage| StorageError::Corrupt { page: id, damage })?;
        let body = page.body();
        if page.kind() != Some(PageKind::Meta) || &body[..8] != MAGIC {
            return Err(StorageError::Malformed {
                page: id,
                reason: "not a meta page (wrong kind or magic)".into(),
            });
        }
        let count = u32::from_le_bytes([
            body[SHARDS_AT],
            body[SHARDS_AT + 1],
            body[SHARDS_AT + 2],
            body[SHARDS_AT + 3],
        ]) as usize;
        if count > SHARDS_MAX {
            return Err(StorageError::Malformed {
                page: id,
                reason: format!("{count} shards, more than a meta page holds"),
            });
        }
        let shards = (0..count)
            .map(|i| {
                let at = SHARDS_AT + 4 + i * SHARD_SIZE;
                ShardMeta {
                    shard: read_u64(body, at),
                    root: read_u64(body, at + 8),
                    applied_index: read_u64(body, at + 16),
                    keys: read_u64(body, at + 24),
                }
            })
            .collect();
        Ok(Some(Meta {
            checkpoint: read_u64(body, 8),
            page_count: read_u64(body, 16),
            free_list_head: read_u64(body, 24),
            free_count: read_u64(body, 32),
            shards,
        }))
    }

    /// The newest valid meta of the two slots (the default, checkpoint 0, if
    /// neither was ever written). One damaged slot is a torn meta write and
    /// the other one stands; both damaged is an error naming page 0.
    pub fn load(pager: &Pager) -> Result<Meta, StorageError> {
        let slots = [pager.read_raw(0)?, pager.read_raw(1)?];
        let read: Vec<Result<Option<Meta>, StorageError>> =
            slots.iter().map(|page| Meta::from_page(page)).collect();
        let valid: Vec<&Meta> = read
            .iter()
            .filter_map(|r| r.as_ref().ok()?.as_ref())
            .collect();
        if let Some(newest) = valid.iter().max_by_key(|meta| meta.checkpoint) {
            return Ok((*newest).clone());
        }
        match read.into_iter().find_map(Result::err) {
            Some(error) => Err(error),
            None => Ok(Meta::default()),
        }
    }

    /// The shard's entry, if it has a tree.
    pub fn shard(&self, shard: u64) -> Option<ShardMeta> {
        self.shards.iter().copied().find(|s| s.shard == shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_the_newest_valid_slot_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pager = Pager::open(&dir.path().join("pages")).expect("open");
        assert_eq!(Meta::load(&pager).expect("fresh"), Meta::default());
        let meta = |checkpoint| Meta {
            checkpoint,
            page_count: 10 + checkpoint,
            free_list_head: 4,
            free_count: 7,
            shards: vec![ShardMeta {
                shard: 0,
                root: 3,
                applied_index: 100 * checkpoint,
                keys: 5,
            }],
        };
        pager
            .write(&meta(1).to_page().expect("page"))
            .expect("write");
        pager
            .write(&meta(2).to_page().expect("page"))
            .expect("write");
        assert_eq!(Meta::load(&pager).expect("load"), meta(2));
        // A torn write of slot 0 (checkpoint 2): slot 1 (checkpoint 1) stands.
        let mut torn = meta(2).to_page().expect("page");
        torn.body_mut()[50] ^= 0xFF;
        pager.write(&torn).expect("write");
        assert_eq!(Meta::load(&pager).expect("load"), meta(1));
        assert_eq!(meta(1).shard(0).map(|s| s.applied_index), Some(100));
        assert_eq!(meta(1).shard(9), None);
    }
}
