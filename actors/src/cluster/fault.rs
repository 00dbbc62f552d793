//! The fault filter: what tests inject into one node's outgoing traffic to
//! each peer (drop everything, lose a share at random, duplicate, delay).
//! It is shared, not an actor: the `Transport` asks it for every batch of
//! Raft messages and the front door asks it before forwarding a request to
//! the leader, so a cut link cuts both kinds of traffic, as a real network
//! partition would. Only the sending side's filter applies, which is what
//! makes one-way faults possible.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use harmonydb_raft::NodeId;

/// Faults on the traffic this node sends to one peer. The default is none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Drop everything sent to the peer.
    pub drop: bool,
    /// Drop each batch with this probability, in percent (0 to 100).
    pub loss_percent: u8,
    /// Send every Raft batch twice (forwarded client requests are never duplicated).
    pub duplicate: bool,
    /// Hold everything this long before sending it.
    pub delay: Duration,
}

impl Fault {
    /// Whether this is no fault at all.
    pub fn is_none(&self) -> bool {
        *self == Fault::default()
    }
}

/// What to do with one batch for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Don't send it.
    Drop,
    /// Send it this many times (1, or 2 when duplicating).
    Send {
        /// Copies to send.
        copies: u8,
    },
}

/// Per-peer faults of one node, readable from any thread.
#[derive(Clone)]
pub struct FaultFilter {
    faults: Arc<RwLock<BTreeMap<NodeId, Fault>>>,
    /// xorshift state for random loss; a mutex because batches are rare
    /// enough under faults that contention does not matter.
    random: Arc<Mutex<u64>>,
}

impl Default for FaultFilter {
    fn default() -> Self {
        // Seeded from the clock and pid so that nodes lose different batches.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = (u64::from(nanos) << 20) ^ u64::from(std::process::id()) ^ 0x9E37_79B9_7F4A_7C15;
        FaultFilter {
            faults: Arc::default(),
            random: Arc::new(Mutex::new(seed.max(1))),
        }
    }
}

impl FaultFilter {
    /// Sets the fault on traffic to `peer` (the default clears it).
    pub fn set(&self, peer: NodeId, fault: Fault) {
        if let Ok(mut faults) = self.faults.write() {
            if fault.is_none() {
                faults.remove(&peer);
            } else {
                faults.insert(peer, fault);
            }
        }
    }

    /// The fault on traffic to `peer`.
    pub fn get(&self, peer: NodeId) -> Fault {
        self.faults
            .read()
            .ok()
            .and_then(|faults| faults.get(&peer).copied())
            .unwrap_or_default()
    }

    /// Every peer with a fault set.
    pub fn all(&self) -> BTreeMap<NodeId, Fault> {
        self.faults.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// Decides the fate of one batch (or one forwarded request) for `peer`.
    pub fn decide(&self, peer: NodeId) -> Delivery {
        let fault = self.get(peer);
        if fault.drop || (fault.loss_percent > 0 && self.roll_percent() < fault.loss_percent) {
            return Delivery::Drop;
        }
        Delivery::Send {
            copies: if fault.duplicate { 2 } else { 1 },
        }
    }

    /// A uniformly random number in 0..100.
    fn roll_percent(&self) -> u8 {
        let Ok(mut state) = self.random.lock() else {
            return 0;
        };
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state % 100) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_fault_sends_once() {
        let filter = FaultFilter::default();
        assert_eq!(filter.decide(2), Delivery::Send { copies: 1 });
        assert!(filter.all().is_empty());
    }

    #[test]
    fn drop_duplicate_and_clear() {
        let filter = FaultFilter::default();
        filter.set(
            2,
            Fault {
                drop: true,
                ..Fault::default()
            },
        );
        filter.set(
            3,
            Fault {
                duplicate: true,
                ..Fault::default()
            },
        );
        assert_eq!(filter.decide(2), Delivery::Drop);
        assert_eq!(filter.decide(3), Delivery::Send { copies: 2 });
        assert_eq!(filter.decide(4), Delivery::Send { copies: 1 });
        filter.set(2, Fault::default());
        assert_eq!(filter.decide(2), Delivery::Send { copies: 1 });
        assert_eq!(filter.all().keys().copied().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn loss_drops_about_its_share() {
        let filter = FaultFilter::default();
        filter.set(
            2,
            Fault {
                loss_percent: 30,
                ..Fault::default()
            },
        );
        let dropped = (0..10_000)
            .filter(|_| filter.decide(2) == Delivery::Drop)
            .count();
        assert!(
            (2_500..3_500).contains(&dropped),
            "dropped {dropped} of 10000"
        );
        filter.set(
            2,
            Fault {
                loss_percent: 100,
                ..Fault::default()
            },
        );
        assert!((0..100).all(|_| filter.decide(2) == Delivery::Drop));
    }
}
