//! What a failed search keeps for its report: the dead end that got furthest,
//! with the state there, the end of the prefix placed, and every candidate
//! that could have gone next with why it did not.

use std::cmp::Reverse;

use crate::entries::MAIN;
use crate::history::Nanos;
use crate::model::Model;
use crate::report::Reason;

use super::candidates::{Cursor, Group};
use super::Search;

/// How many operations of the linearized prefix a dead end remembers.
const PREFIX_TAIL_LEN: usize = 5;

/// The furthest point a failed search reached.
#[derive(Clone, Debug)]
pub(crate) struct DeadEnd<S> {
    /// How many operations were linearized there.
    pub linearized: usize,
    /// The model state after them.
    pub state: S,
    /// The last few of them, in order.
    pub prefix_tail: Vec<usize>,
    /// The operation that could not be placed: the earliest-returning doomed
    /// candidate if there is one, else the earliest-returning definite
    /// operation not linearized (nothing can be placed after its return).
    pub blocking: usize,
    /// Every operation that could have gone next (the blocking one
    /// included), with why it did not.
    pub candidates: Vec<(usize, Reason)>,
}

/// How far a dead end got: its blocking operation's return time, the
/// definite operations placed, and the unknown ones placed (fewer is better).
pub(super) type Rank = (Nanos, usize, Reverse<usize>);

impl<M: Model> Search<'_, M> {
    /// Remembers this dead end if it got further than any before (see `Rank`).
    pub(super) fn record_dead_end(&mut self, blocking: usize) {
        let rank = (
            self.entries.time(blocking),
            self.stack.len() - self.unknown_placed,
            Reverse(self.unknown_placed),
        );
        if self.deepest.as_ref().is_some_and(|(best, _)| *best >= rank) {
            return;
        }
        let mut candidates = Vec::new();
        let mut cursor = Cursor {
            group: Group::Definite,
            entry: self.entries.next(MAIN),
        };
        while let Some(at) = self.next_candidate(cursor, blocking) {
            let op = self.entries.op(at.entry);
            // A candidate that passes `evaluate` here was tried and every way
            // on failed, or was in the cache, or the level was cut short
            // because another candidate is doomed: a dead end in every case.
            let reason = self.evaluate(op).err().unwrap_or(Reason::Explored);
            candidates.push((op, reason));
            cursor = Cursor {
                group: at.group,
                entry: self.entries.next(at.entry),
            };
        }
        // A doomed candidate is what stopped this level (`level_start`).
        let doomed = candidates
            .iter()
            .filter(|(_, reason)| *reason == Reason::Doomed)
            .map(|(op, _)| *op)
            .min_by_key(|op| (self.ops[*op].ret, *op));
        let tail_start = self.stack.len().saturating_sub(PREFIX_TAIL_LEN);
        let dead_end = DeadEnd {
            linearized: self.stack.len(),
            state: self.state.clone(),
            prefix_tail: self.stack[tail_start..].iter().map(|f| f.op).collect(),
            blocking: doomed.unwrap_or_else(|| self.entries.op(blocking)),
            candidates,
        };
        self.deepest = Some((rank, dead_end));
    }
}
