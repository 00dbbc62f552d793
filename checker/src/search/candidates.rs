//! Which operations the search tries next, and in what order: definite
//! operations first, then unknown ones that would make the blocking operation
//! legal, then the other unknown ones, skipping unknown operations whose twin
//! called later could go instead.

use crate::entries::PENDING;
use crate::history::{Nanos, OpKind};
use crate::model::Model;

use super::{Search, SearchOp};

/// The groups of candidates, in the order they are tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Group {
    /// Definite operations (call entries of the main list).
    Definite,
    /// Unknown operations that make the blocking operation legal.
    Enabling,
    /// The other unknown operations.
    OtherUnknown,
}

/// Where candidate iteration stands: a group and the next entry to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cursor {
    /// The group being tried.
    pub group: Group,
    /// The next entry to look at.
    pub entry: usize,
}

impl Cursor {
    /// A cursor with nothing left to try: the level is a dead end.
    pub const EXHAUSTED: Cursor = Cursor {
        group: Group::OtherUnknown,
        entry: PENDING,
    };
}

/// Links each unknown operation with a twin to the next one in call order.
pub(super) fn later_twins(ops: &[SearchOp]) -> Vec<usize> {
    let mut twins: Vec<(OpKind, Nanos, usize)> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.output.is_none())
        .filter_map(|(index, op)| op.twin.map(|twin| (twin, op.call, index)))
        .collect();
    // Grouped by twin class, then in the pending list's order.
    twins.sort_unstable();
    let mut later = vec![usize::MAX; ops.len()];
    for pair in twins.windows(2) {
        if pair[0].0 == pair[1].0 {
            later[pair[0].2] = pair[1].2;
        }
    }
    later
}

impl<M: Model> Search<'_, M> {
    /// The next candidate from `cursor` on, if any: definite operations up to
    /// the blocking return entry, then unknown operations called no later than
    /// that return (on equal times calls count as earlier, as in the main
    /// list), first those that enable the blocking operation, then the rest.
    pub(super) fn next_candidate(&self, mut cursor: Cursor, blocking: usize) -> Option<Cursor> {
        loop {
            match cursor.group {
                Group::Definite => {
                    if self.entries.is_call(cursor.entry) {
                        return Some(cursor);
                    }
                    cursor = Cursor {
                        group: Group::Enabling,
                        entry: self.entries.next(PENDING),
                    };
                }
                Group::Enabling | Group::OtherUnknown => {
                    let entry = cursor.entry;
                    if entry == PENDING || self.entries.time(entry) > self.entries.time(blocking) {
                        if cursor.group == Group::OtherUnknown {
                            return None;
                        }
                        cursor = Cursor {
                            group: Group::OtherUnknown,
                            entry: self.entries.next(PENDING),
                        };
                        continue;
                    }
                    let op = self.entries.op(entry);
                    let wanted = !self.has_usable_later_twin(op, blocking)
                        && self.enables(op, self.entries.op(blocking))
                            == (cursor.group == Group::Enabling);
                    if wanted {
                        return Some(cursor);
                    }
                    cursor.entry = self.entries.next(entry);
                }
            }
        }
    }

    /// Whether a twin of unknown operation `op` called after it could go next
    /// instead (not placed, called no later than the blocking return).
    fn has_usable_later_twin(&self, op: usize, blocking: usize) -> bool {
        let limit = self.entries.time(blocking);
        let mut twin = self.later_twin[op];
        while twin != usize::MAX && self.ops[twin].call <= limit {
            if !self.linearized.contains(twin) {
                return true;
            }
            twin = self.later_twin[twin];
        }
        false
    }

    /// Whether placing unknown operation `op` now would make the illegal
    /// definite operation `blocking` legal.
    fn enables(&self, op: usize, blocking: usize) -> bool {
        let SearchOp { kind, output, .. } = &self.ops[blocking];
        M::step(&self.state, kind, output.as_ref()).is_none()
            && M::step(&self.state, &self.ops[op].kind, None)
                .is_some_and(|after| M::step(&after, kind, output.as_ref()).is_some())
    }
}
