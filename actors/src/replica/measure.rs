//! The replica's own measurements: when it last heard from each node and
//! from a leader, the leader's commit index as heard, heartbeat round
//! trips per peer, and the gauges and counters it publishes from the
//! core's and the state's figures once a tick (`docs/observability.md`
//! lists them).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use harmonydb_raft::{Message as RaftMessage, MessageBody, NodeId};

use crate::storage::btree::TreeStats;

/// Heartbeat rounds per peer remembered for round-trip times.
const HEARTBEAT_ROUNDS_TRACKED: usize = 16;

/// When each recent heartbeat round went to each peer.
#[derive(Default)]
pub(super) struct RoundTrips {
    sent: HashMap<NodeId, VecDeque<(u64, Instant)>>,
}

impl RoundTrips {
    /// Round `seq` went to `peer` at `at`. Rounds answered late still
    /// count, up to a bound per peer.
    pub(super) fn sent(&mut self, peer: NodeId, seq: u64, at: Instant) {
        let sent = self.sent.entry(peer).or_default();
        if sent.len() == HEARTBEAT_ROUNDS_TRACKED {
            sent.pop_front();
        }
        sent.push_back((seq, at));
    }

    /// `peer` answered round `seq`: its round-trip time, if the round is
    /// remembered. Older rounds are forgotten (answers come in order).
    pub(super) fn answered(&mut self, peer: NodeId, seq: u64) -> Option<Duration> {
        let sent = self.sent.get_mut(&peer)?;
        let position = sent.iter().position(|(s, _)| *s == seq)?;
        let (_, at) = sent[position];
        sent.retain(|(s, _)| *s > seq);
        Some(at.elapsed())
    }
}

/// What the replica has heard from other nodes, for its status.
#[derive(Default)]
pub(super) struct Contacts {
    /// When each node was last heard from (any message).
    last_heard: HashMap<NodeId, Instant>,
    /// When a leader (of this member's term or a later one) was last heard.
    leader_contact: Option<Instant>,
    /// The highest commit index a leader sent, and in which term.
    leader_commit: (u64, u64),
    /// Heartbeat rounds sent, for round-trip times.
    round_trips: RoundTrips,
}

impl Contacts {
    /// Notes `message`, which arrived while this member is in `term`; a
    /// heartbeat answer's round trip, if its round is remembered.
    pub(super) fn heard(&mut self, message: &RaftMessage, term: u64) -> Option<Duration> {
        let now = Instant::now();
        self.last_heard.insert(message.from, now);
        if message.term < term {
            // A deposed leader's messages say nothing about the current one.
            if let MessageBody::HeartbeatResponse { seq } = message.body {
                return self.round_trips.answered(message.from, seq);
            }
            return None;
        }
        match message.body {
            MessageBody::AppendEntries {
                leader_commit: commit,
                ..
            }
            | MessageBody::Heartbeat { commit, .. } => {
                let (heard_term, heard) = self.leader_commit;
                if message.term > heard_term || commit > heard {
                    self.leader_commit = (message.term, commit);
                }
                self.leader_contact = Some(now);
                None
            }
            MessageBody::InstallSnapshot { .. } => {
                self.leader_contact = Some(now);
                None
            }
            MessageBody::HeartbeatResponse { seq } => self.round_trips.answered(message.from, seq),
            _ => None,
        }
    }

    /// A heartbeat round `seq` went to `peer`.
    pub(super) fn heartbeat_sent(&mut self, peer: NodeId, seq: u64, at: Instant) {
        self.round_trips.sent(peer, seq, at);
    }

    /// How long ago a leader was last heard from.
    pub(super) fn since_leader(&self) -> Option<Duration> {
        self.leader_contact.map(|at| at.elapsed())
    }

    /// The leader's commit index as far as this member knows in `term`:
    /// the highest a leader of `term` sent, or `own` if higher.
    pub(super) fn leader_commit(&self, term: u64, own: u64) -> u64 {
        let (heard_term, heard) = self.leader_commit;
        if heard_term == term {
            heard.max(own)
        } else {
            own
        }
    }

    /// How long ago each node was last heard from.
    pub(super) fn last_heard(&self) -> BTreeMap<NodeId, Duration> {
        self.last_heard
            .iter()
            .map(|(id, at)| (*id, at.elapsed()))
            .collect()
    }
}

/// What the replica publishes once a tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Figures {
    /// The leader known (0: none).
    pub(super) leader: NodeId,
    /// Whether this member leads.
    pub(super) leads: bool,
    /// The current term.
    pub(super) term: u64,
    /// The commit index.
    pub(super) commit: u64,
    /// The state's applied index.
    pub(super) applied: u64,
    /// The index the log is compacted to.
    pub(super) snapshot: u64,
    /// Writes waiting for their entries.
    pub(super) writes_waiting: usize,
    /// Elections this member started and won.
    pub(super) elections_started: u64,
    /// Elections it won.
    pub(super) elections_won: u64,
    /// Keys in the state.
    pub(super) keys: u64,
    /// Bytes of log entries the core holds in memory.
    pub(super) log_cache_bytes: usize,
    /// The tree's height and structure changes.
    pub(super) tree: TreeStats,
}

impl Figures {
    /// Sets the gauges and counters to these figures.
    pub(super) fn publish(&self) {
        metrics::gauge!("harmonydb_raft_has_leader").set(f64::from(u8::from(self.leader != 0)));
        metrics::gauge!("harmonydb_raft_is_leader").set(f64::from(u8::from(self.leads)));
        metrics::gauge!("harmonydb_raft_term").set(self.term as f64);
        metrics::gauge!("harmonydb_raft_commit_index").set(self.commit as f64);
        metrics::gauge!("harmonydb_raft_applied_index").set(self.applied as f64);
        metrics::gauge!("harmonydb_raft_snapshot_index").set(self.snapshot as f64);
        metrics::gauge!("harmonydb_raft_proposals_pending").set(self.writes_waiting as f64);
        metrics::gauge!("harmonydb_raft_log_cache_bytes").set(self.log_cache_bytes as f64);
        metrics::counter!("harmonydb_raft_elections_started_total")
            .absolute(self.elections_started);
        metrics::counter!("harmonydb_raft_elections_won_total").absolute(self.elections_won);
        metrics::gauge!("harmonydb_kv_keys").set(self.keys as f64);
        metrics::gauge!("harmonydb_storage_btree_height").set(self.tree.height as f64);
        metrics::counter!("harmonydb_storage_btree_splits_total").absolute(self.tree.splits);
        metrics::counter!("harmonydb_storage_btree_merges_total").absolute(self.tree.merges);
        metrics::counter!("harmonydb_storage_btree_redistributions_total")
            .absolute(self.tree.redistributions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(from: NodeId, term: u64, body: MessageBody) -> RaftMessage {
        RaftMessage {
            from,
            to: 1,
            term,
            body,
        }
    }

    fn heartbeat(commit: u64) -> MessageBody {
        MessageBody::Heartbeat { commit, seq: 1 }
    }

    #[test]
    fn a_leader_is_heard_only_from_messages_of_the_current_term_or_later() {
        let mut contacts = Contacts::default();
        assert_eq!(contacts.since_leader(), None);
        // A vote request is no leader's.
        contacts.heard(
            &message(
                2,
                3,
                MessageBody::RequestVote {
                    last_log_index: 0,
                    last_log_term: 0,
                    pre_vote: false,
                    transfer: false,
                },
            ),
            3,
        );
        assert_eq!(contacts.since_leader(), None);
        assert!(
            contacts.last_heard().contains_key(&2),
            "but node 2 was heard"
        );
        // An old leader's heartbeat is not contact with the current one.
        contacts.heard(&message(3, 2, heartbeat(40)), 3);
        assert_eq!(contacts.since_leader(), None);
        assert_eq!(contacts.leader_commit(3, 10), 10);
        contacts.heard(&message(2, 3, heartbeat(25)), 3);
        assert!(contacts.since_leader().is_some());
        assert_eq!(contacts.leader_commit(3, 10), 25);
        assert_eq!(contacts.leader_commit(3, 30), 30, "its own, when higher");
        // A lower commit from the same term never moves it back.
        contacts.heard(&message(2, 3, heartbeat(20)), 3);
        assert_eq!(contacts.leader_commit(3, 0), 25);
        // In a later term, what term 3's leader sent no longer counts.
        assert_eq!(contacts.leader_commit(4, 0), 0);
        contacts.heard(&message(3, 4, heartbeat(5)), 4);
        assert_eq!(contacts.leader_commit(4, 0), 5);
    }

    #[test]
    fn a_heartbeat_answer_gives_its_round_trip() {
        let mut contacts = Contacts::default();
        contacts.heartbeat_sent(2, 7, Instant::now());
        let answer = message(2, 3, MessageBody::HeartbeatResponse { seq: 7 });
        assert!(contacts.heard(&answer, 3).is_some());
        assert!(
            contacts.heard(&answer, 3).is_none(),
            "a round is timed once"
        );
    }

    #[test]
    fn a_round_trip_is_timed_from_its_own_round_and_older_rounds_are_forgotten() {
        let mut trips = RoundTrips::default();
        let long_ago = Instant::now() - Duration::from_secs(5);
        trips.sent(2, 1, long_ago);
        trips.sent(2, 2, Instant::now());
        trips.sent(3, 2, long_ago);
        let two = trips.answered(2, 2).expect("round 2 is remembered");
        assert!(two < Duration::from_secs(5), "timed from round 2: {two:?}");
        // Round 1 was before the answered one: forgotten.
        assert_eq!(trips.answered(2, 1), None);
        // Another peer's rounds are its own.
        let three = trips.answered(3, 2).expect("peer 3's round");
        assert!(three >= Duration::from_secs(5), "{three:?}");
        assert_eq!(trips.answered(4, 1), None, "never sent");
    }

    #[test]
    fn only_the_last_rounds_are_remembered() {
        let mut trips = RoundTrips::default();
        let rounds = HEARTBEAT_ROUNDS_TRACKED as u64 + 4;
        for seq in 1..=rounds {
            trips.sent(2, seq, Instant::now());
        }
        for seq in 1..=4 {
            assert_eq!(
                trips.answered(2, seq),
                None,
                "round {seq} is past the bound"
            );
        }
        assert!(trips.answered(2, 5).is_some());
        assert!(trips.answered(2, rounds).is_some());
    }
}
