//! Which hard state goes to the WAL with which records. Term and vote are
//! promises (a vote given must survive a crash), so a change to either is
//! written with the next records, always. A change of the commit index
//! alone is not worth an fsync of its own nor bytes in every sync: it
//! waits, rides with entries at most once a tick, or is written on its own
//! when the replica is idle. A commit index found lower at restart is
//! learned again from the leader (a single member recommits with its first
//! entry).

use std::time::{Duration, Instant};

use harmonydb_raft::HardState;

/// The hard state as written, and a newer commit-only one waiting.
pub(super) struct HardStates {
    written: HardState,
    deferred: Option<(HardState, Instant)>,
}

impl HardStates {
    /// Starting from `written`, the hard state on disk.
    pub(super) fn new(written: HardState) -> Self {
        HardStates {
            written,
            deferred: None,
        }
    }

    /// The hard state to write with a ready's records, if any: the ready's
    /// (or the one waiting) when its term or vote differs from what is
    /// written, or when it has waited `tick` and entries go out anyway.
    /// Otherwise it waits.
    pub(super) fn for_ready(
        &mut self,
        latest: Option<HardState>,
        with_entries: bool,
        tick: Duration,
    ) -> Option<HardState> {
        let latest = latest.or(self.deferred.map(|(hard_state, _)| hard_state))?;
        let term_or_vote_changed =
            latest.term != self.written.term || latest.vote != self.written.vote;
        let piggyback = with_entries
            && self
                .deferred
                .is_some_and(|(_, since)| since.elapsed() >= tick);
        if term_or_vote_changed || piggyback {
            self.wrote(latest);
            Some(latest)
        } else {
            let since = self.deferred.map_or_else(Instant::now, |(_, since)| since);
            self.deferred = Some((latest, since));
            None
        }
    }

    /// The waiting hard state, to write on its own (the replica is idle),
    /// counted as written.
    pub(super) fn take_deferred(&mut self) -> Option<HardState> {
        let (hard_state, _) = self.deferred?;
        self.wrote(hard_state);
        Some(hard_state)
    }

    /// The newest hard state (`latest`, else the one waiting, else what is
    /// written), to write now with a snapshot record; counted as written.
    pub(super) fn newest(&mut self, latest: Option<HardState>) -> HardState {
        let newest = latest
            .or(self.deferred.map(|(hard_state, _)| hard_state))
            .unwrap_or(self.written);
        self.wrote(newest);
        newest
    }

    /// `hard_state` is handed to the WAL; nothing waits any more.
    pub(super) fn wrote(&mut self, hard_state: HardState) {
        self.written = hard_state;
        self.deferred = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn a_term_or_a_vote_is_written_at_once() {
        let mut states = HardStates::new(hard_state(1, 0, 0));
        assert_eq!(
            states.for_ready(Some(hard_state(2, 0, 0)), false, LONG),
            Some(hard_state(2, 0, 0))
        );
        assert_eq!(
            states.for_ready(Some(hard_state(2, 3, 0)), false, LONG),
            Some(hard_state(2, 3, 0))
        );
        assert_eq!(states.take_deferred(), None, "nothing waits");
    }

    #[test]
    fn a_commit_alone_waits_then_rides_with_entries_or_goes_when_idle() {
        let mut states = HardStates::new(hard_state(2, 1, 5));
        // Within the tick it waits, even with entries going out.
        assert_eq!(
            states.for_ready(Some(hard_state(2, 1, 6)), true, LONG),
            None
        );
        assert_eq!(
            states.for_ready(Some(hard_state(2, 1, 7)), true, LONG),
            None
        );
        // Idle: the newest one goes on its own.
        assert_eq!(states.take_deferred(), Some(hard_state(2, 1, 7)));
        assert_eq!(states.take_deferred(), None);
        // Waited a tick (zero here) and entries go out: it rides with them.
        assert_eq!(
            states.for_ready(Some(hard_state(2, 1, 8)), true, Duration::ZERO),
            None
        );
        assert_eq!(
            states.for_ready(None, true, Duration::ZERO),
            Some(hard_state(2, 1, 8))
        );
        // Without entries it keeps waiting, however long.
        assert_eq!(
            states.for_ready(Some(hard_state(2, 1, 9)), false, Duration::ZERO),
            None
        );
        assert_eq!(states.for_ready(None, false, Duration::ZERO), None);
        // A term change takes the waiting commit with it.
        assert_eq!(
            states.for_ready(Some(hard_state(3, 0, 9)), false, LONG),
            Some(hard_state(3, 0, 9))
        );
        assert_eq!(states.take_deferred(), None);
    }

    #[test]
    fn a_snapshot_record_carries_the_newest_hard_state() {
        let mut states = HardStates::new(hard_state(2, 1, 5));
        assert_eq!(states.newest(None), hard_state(2, 1, 5));
        assert_eq!(
            states.for_ready(Some(hard_state(2, 1, 9)), false, LONG),
            None
        );
        assert_eq!(states.newest(None), hard_state(2, 1, 9), "the waiting one");
        assert_eq!(states.take_deferred(), None, "written with the snapshot");
        assert_eq!(
            states.newest(Some(hard_state(4, 2, 9))),
            hard_state(4, 2, 9)
        );
    }
}
