//! The member book: where every node this one knows of can be reached, and
//! whether this node has been removed. The replica keeps it current from
//! the configuration in force (which carries members' addresses); the
//! transport, the peer inbox and the front doors read it. Addresses of
//! members that leave stay in the book: the leader keeps replicating to a
//! leaving member until it has learned of its removal, and its answers must
//! still be accepted meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use harmonydb_raft::NodeId;

#[derive(Debug, Default)]
struct Book {
    /// Every node known, members or not, with its TCP address.
    addresses: BTreeMap<NodeId, String>,
    /// The members of the configuration in force (all known nodes until
    /// the node has a configuration).
    members: Vec<NodeId>,
    /// Bumped on every change, so readers can tell cheaply.
    version: u64,
    /// The index of the committed configuration that removed this node.
    removed_at: Option<u64>,
    /// False while a joining node has no configuration yet.
    configured: bool,
}

/// Longest member address accepted.
const ADDRESS_LEN_MAX: usize = 255;

/// Checks a member's TCP address (`--peers`, `--join`, `--advertise-addr`,
/// an added member): `host:port` with a port from 1, a host the other
/// members can dial (not a wildcard such as 0.0.0.0), at most 255 bytes.
/// The reason, if not.
pub fn check_address(address: &str) -> Result<(), String> {
    let valid = address.len() <= ADDRESS_LEN_MAX
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !matches!(host, "0.0.0.0" | "[::]" | "::")
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "address {address:?} is not host:port (a host the other members can reach, not 0.0.0.0, at most {ADDRESS_LEN_MAX} bytes)"
        ))
    }
}

/// Shared, cheaply cloned view of the cluster's members.
#[derive(Clone, Debug, Default)]
pub struct MemberBook {
    inner: Arc<RwLock<Book>>,
}

impl MemberBook {
    /// A book that starts with `addresses` (from `--peers`, or the node a
    /// joining node asks).
    pub fn new(addresses: BTreeMap<NodeId, String>) -> Self {
        let members = addresses.keys().copied().collect();
        MemberBook {
            inner: Arc::new(RwLock::new(Book {
                addresses,
                members,
                version: 1,
                removed_at: None,
                configured: true,
            })),
        }
    }

    /// The book of a node joining a running cluster: until it gets a
    /// configuration it knows only itself, and accepts the leader's frames
    /// (whoever that is) so catching up starts at once.
    pub fn joining(id: NodeId, address: String) -> Self {
        let book = MemberBook::new(BTreeMap::from([(id, address)]));
        book.write(|b| b.configured = false);
        book
    }

    /// Whether frames from `id` are taken: a node this one knows, or any
    /// node while this one is joining and has no configuration.
    pub fn accepts(&self, id: NodeId) -> bool {
        self.read(|b| !b.configured || b.addresses.contains_key(&id))
    }

    fn read<T>(&self, f: impl FnOnce(&Book) -> T) -> T {
        // A writer that panicked left a complete book behind (every write
        // below is a single assignment or insert), so a poisoned lock is
        // still safe to read.
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    fn write<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// `id`'s address, if known.
    pub fn address(&self, id: NodeId) -> Option<String> {
        self.read(|b| b.addresses.get(&id).cloned())
    }

    /// Whether `id` is a node this one knows (a member, or one that was).
    pub fn knows(&self, id: NodeId) -> bool {
        self.read(|b| b.addresses.contains_key(&id))
    }

    /// Every known node's address.
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        self.read(|b| b.addresses.clone())
    }

    /// The members of the configuration in force with their addresses.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        self.read(|b| {
            b.members
                .iter()
                .map(|id| (*id, b.addresses.get(id).cloned().unwrap_or_default()))
                .collect()
        })
    }

    /// A number that changes whenever the book does.
    pub fn version(&self) -> u64 {
        self.read(|b| b.version)
    }

    /// Learns addresses (a later address for a node replaces the earlier).
    pub fn learn(&self, addresses: &BTreeMap<NodeId, String>) {
        self.write(|b| {
            let mut changed = false;
            for (id, address) in addresses {
                if b.addresses.get(id) != Some(address) {
                    b.addresses.insert(*id, address.clone());
                    changed = true;
                }
            }
            if changed {
                b.version += 1;
            }
        });
    }

    /// Sets the members of the configuration in force.
    pub fn set_members(&self, members: impl IntoIterator<Item = NodeId>) {
        let members: Vec<NodeId> = members.into_iter().collect();
        self.write(|b| {
            b.configured = true;
            if b.members != members {
                b.members = members;
                b.version += 1;
            }
        });
    }

    /// Records that a committed configuration at `index` left this node out.
    pub fn mark_removed(&self, index: u64) {
        self.write(|b| {
            b.removed_at.get_or_insert(index);
            b.version += 1;
        });
    }

    /// The index of the configuration that removed this node, if it was.
    pub fn removed_at(&self) -> Option<u64> {
        self.read(|b| b.removed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_keeps_leavers_and_bumps_the_version_only_on_change() {
        let book = MemberBook::new(BTreeMap::from([(1, "a:1".to_string()), (2, "b:2".into())]));
        let v1 = book.version();
        book.learn(&BTreeMap::from([(1, "a:1".to_string())]));
        assert_eq!(book.version(), v1, "nothing new");
        book.learn(&BTreeMap::from([(3, "c:3".to_string())]));
        assert!(book.version() > v1);
        book.set_members([1, 3]);
        assert_eq!(book.members().keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert!(book.knows(2), "a node that left is still known");
        assert_eq!(book.address(3).as_deref(), Some("c:3"));
        assert_eq!(book.removed_at(), None);
        let joining = MemberBook::joining(4, "d:4".into());
        assert!(
            joining.accepts(1),
            "a joining node takes the leader's frames"
        );
        joining.set_members([1, 4]);
        assert!(!joining.accepts(7), "once configured, only known nodes");
        book.mark_removed(9);
        book.mark_removed(12);
        assert_eq!(book.removed_at(), Some(9), "the first removal counts");
    }
}
