//! Requests the replica holds until the log or the state catches up:
//! writes waiting for their entry to be applied, and reads waiting first
//! for the core to confirm their read index, then for the state to apply
//! up to it. Each is answered exactly once: with its outcome, with the
//! reason it was dropped, or with the reason the replica stopped.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::oneshot;

use super::machine::KvRead;
use crate::kv::{KvAnswer, KvError, KvReply, WriteOutcome};

/// Where a request's answer goes.
pub(super) type Reply = oneshot::Sender<Result<KvAnswer, KvError>>;

/// A write this member proposed, waiting for its entry to commit and apply.
pub(super) struct PendingWrite {
    /// The term it was proposed in: an entry of another term at its index
    /// means it was replaced.
    term: u64,
    reply: Reply,
    /// When it was proposed (for the commit latency).
    pub(super) proposed: Instant,
    /// The request's span (disabled when not traced): its apply joins it.
    pub(super) span: tracing::Span,
}

/// How a write's wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// Its own entry was applied: it was answered with the outcome.
    Applied,
    /// Another entry took its index (a new leader's): it was answered that
    /// it was dropped.
    Replaced,
}

/// The writes and reads waiting in one replica.
#[derive(Default)]
pub(super) struct Waiting {
    writes: HashMap<u64, PendingWrite>,
    next_read_id: u64,
    /// Reads whose read index the core has not confirmed yet, by request id.
    confirming: HashMap<u64, (KvRead, Reply)>,
    /// Reads with a read index, waiting for the state to apply up to it.
    applying: Vec<(u64, KvRead, Reply)>,
}

impl Waiting {
    /// A write proposed at `index` in `term`.
    pub(super) fn write_proposed(
        &mut self,
        index: u64,
        term: u64,
        reply: Reply,
        span: tracing::Span,
    ) {
        self.writes.insert(
            index,
            PendingWrite {
                term,
                reply,
                proposed: Instant::now(),
                span,
            },
        );
    }

    /// The write waiting at `index`.
    pub(super) fn write(&self, index: u64) -> Option<&PendingWrite> {
        self.writes.get(&index)
    }

    /// Writes waiting.
    pub(super) fn writes_waiting(&self) -> usize {
        self.writes.len()
    }

    /// Answers the write at `index` with `error` (the core dropped it);
    /// whether one was waiting.
    pub(super) fn write_dropped(&mut self, index: u64, error: KvError) -> bool {
        match self.writes.remove(&index) {
            Some(write) => {
                let _ = write.reply.send(Err(error));
                true
            }
            None => false,
        }
    }

    /// The entry at `index`, of term `term`, was applied with `outcome`:
    /// answers the write waiting there, if any. Its own entry gets the
    /// outcome; another term's entry means it was replaced, answered with
    /// `replaced`.
    pub(super) fn write_applied(
        &mut self,
        index: u64,
        term: u64,
        outcome: Result<WriteOutcome, KvError>,
        replaced: impl FnOnce() -> KvError,
    ) -> Option<Settled> {
        let write = self.writes.remove(&index)?;
        if write.term == term {
            let answer = outcome.map(|o| KvAnswer::fresh(KvReply::Written(o)));
            let _ = write.reply.send(answer);
            Some(Settled::Applied)
        } else {
            let _ = write.reply.send(Err(replaced()));
            Some(Settled::Replaced)
        }
    }

    /// A fresh id for a read the core is asked to confirm.
    pub(super) fn read_id(&mut self) -> u64 {
        self.next_read_id += 1;
        self.next_read_id
    }

    /// A read the core is confirming under `id`.
    pub(super) fn read_confirming(&mut self, id: u64, read: KvRead, reply: Reply) {
        self.confirming.insert(id, (read, reply));
    }

    /// The core confirmed read `id` at read index `index`.
    pub(super) fn read_confirmed(&mut self, id: u64, index: u64) {
        if let Some((read, reply)) = self.confirming.remove(&id) {
            self.applying.push((index, read, reply));
        }
    }

    /// The core dropped read `id`: answers it with `error`.
    pub(super) fn read_dropped(&mut self, id: u64, error: KvError) {
        if let Some((_, reply)) = self.confirming.remove(&id) {
            let _ = reply.send(Err(error));
        }
    }

    /// The reads whose read index the state has reached at `applied`, in
    /// the order they were confirmed; the rest wait on.
    pub(super) fn reads_due(&mut self, applied: u64) -> Vec<(KvRead, Reply)> {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.applying)
            .into_iter()
            .partition(|(index, _, _)| *index <= applied);
        self.applying = waiting;
        due.into_iter()
            .map(|(_, read, reply)| (read, reply))
            .collect()
    }

    /// Answers everything waiting: writes with `write`'s error, reads with
    /// `read`'s (the replica stopped, or this node was removed).
    pub(super) fn answer_all(&mut self, write: impl Fn() -> KvError, read: impl Fn() -> KvError) {
        for (_, pending) in self.writes.drain() {
            let _ = pending.reply.send(Err(write()));
        }
        for (_, (_, reply)) in self.confirming.drain() {
            let _ = reply.send(Err(read()));
        }
        for (_, _, reply) in self.applying.drain(..) {
            let _ = reply.send(Err(read()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Answer = oneshot::Receiver<Result<KvAnswer, KvError>>;

    fn reply() -> (Reply, Answer) {
        oneshot::channel()
    }

    fn answered(answer: &mut Answer) -> Option<Result<KvAnswer, KvError>> {
        answer.try_recv().ok()
    }

    #[test]
    fn a_write_gets_its_outcome_only_from_its_own_entry() {
        let mut waiting = Waiting::default();
        let (ours, mut our_answer) = reply();
        let (replaced, mut replaced_answer) = reply();
        waiting.write_proposed(5, 2, ours, tracing::Span::none());
        waiting.write_proposed(6, 2, replaced, tracing::Span::none());
        assert_eq!(waiting.writes_waiting(), 2);

        let written = Ok(WriteOutcome::Written { version: 5 });
        let settled = waiting.write_applied(5, 2, written, || KvError::NoLeader);
        assert_eq!(settled, Some(Settled::Applied));
        assert_eq!(
            answered(&mut our_answer),
            Some(Ok(KvAnswer::fresh(KvReply::Written(
                WriteOutcome::Written { version: 5 }
            ))))
        );
        // A new leader's entry of term 3 took index 6.
        let other = Ok(WriteOutcome::Written { version: 6 });
        let settled = waiting.write_applied(6, 3, other, || KvError::Unavailable("dropped".into()));
        assert_eq!(settled, Some(Settled::Replaced));
        assert_eq!(
            answered(&mut replaced_answer),
            Some(Err(KvError::Unavailable("dropped".into())))
        );
        // Nobody waits at an index applied a second time, or never proposed here.
        assert_eq!(
            waiting.write_applied(5, 2, Ok(WriteOutcome::Written { version: 5 }), || {
                KvError::NoLeader
            }),
            None
        );
        assert_eq!(waiting.writes_waiting(), 0);
    }

    #[test]
    fn a_read_waits_for_its_confirmation_then_for_the_state() {
        let mut waiting = Waiting::default();
        let (first, mut first_answer) = reply();
        let (second, mut second_answer) = reply();
        let (dropped, mut dropped_answer) = reply();
        let a = waiting.read_id();
        let b = waiting.read_id();
        let c = waiting.read_id();
        assert!(a != b && b != c && a != c, "ids are fresh");
        waiting.read_confirming(a, KvRead::Get(b"a".to_vec()), first);
        waiting.read_confirming(b, KvRead::Get(b"b".to_vec()), second);
        waiting.read_confirming(c, KvRead::Get(b"c".to_vec()), dropped);
        // Nothing is due before the core confirms.
        assert!(waiting.reads_due(u64::MAX).is_empty());
        waiting.read_confirmed(a, 10);
        waiting.read_confirmed(b, 12);
        waiting.read_dropped(c, KvError::NoLeader);
        assert_eq!(answered(&mut dropped_answer), Some(Err(KvError::NoLeader)));
        // Confirmed, but the state is at 9: still waiting.
        assert!(waiting.reads_due(9).is_empty());
        let due = waiting.reads_due(11);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, KvRead::Get(b"a".to_vec()));
        let due = waiting.reads_due(12);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, KvRead::Get(b"b".to_vec()));
        assert!(
            answered(&mut first_answer).is_none(),
            "the replica answers due reads"
        );
        assert!(answered(&mut second_answer).is_none());
    }

    #[test]
    fn answering_all_reaches_every_writer_and_reader() {
        let mut waiting = Waiting::default();
        let (write, mut write_answer) = reply();
        let (confirming, mut confirming_answer) = reply();
        let (applying, mut applying_answer) = reply();
        waiting.write_proposed(3, 1, write, tracing::Span::none());
        let id = waiting.read_id();
        waiting.read_confirming(id, KvRead::Get(b"x".to_vec()), confirming);
        let id = waiting.read_id();
        waiting.read_confirming(id, KvRead::Get(b"y".to_vec()), applying);
        waiting.read_confirmed(id, 50);
        waiting.answer_all(
            || KvError::OutcomeUnknown("removed".into()),
            || KvError::Removed { index: 7 },
        );
        assert_eq!(
            answered(&mut write_answer),
            Some(Err(KvError::OutcomeUnknown("removed".into())))
        );
        assert_eq!(
            answered(&mut confirming_answer),
            Some(Err(KvError::Removed { index: 7 }))
        );
        assert_eq!(
            answered(&mut applying_answer),
            Some(Err(KvError::Removed { index: 7 }))
        );
        assert_eq!(waiting.writes_waiting(), 0);
        assert!(waiting.reads_due(u64::MAX).is_empty());
    }
}
