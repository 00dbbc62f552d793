//! The Wing-Gong-Lowe search for one key's history, with Porcupine's
//! optimisations, written as a loop over an explicit stack. The order in which
//! candidates are tried lives in `candidates`, the report's raw material in
//! `dead_end`.
//!
//! The search builds a linearization one operation at a time. The operations
//! that may go next are those called before the earliest return among the
//! definite operations still to place (the blocking operation). They are tried
//! in three groups: the definite ones in call order; then the unknown ones that
//! would make the blocking operation legal; then the other unknown ones.
//! Trying definite operations first keeps the search greedy, and the second
//! group finds the write an observation needs without first placing every
//! stale unknown write in turn. Each placement is checked against the model
//! and against the cache of configurations already explored; at a dead end the
//! search undoes the last placement and tries the next candidate after it.
//!
//! Four prunings go beyond Porcupine, each sound because it only skips what
//! can never lead to a linearization, or what another branch covers (the
//! brute-force oracle in `tests/oracle.rs` checks them against each other):
//! - A state in which some definite candidate is doomed (illegal there and in
//!   every later state, per the model) is a dead end at once: every definite
//!   operation must be placed. This cuts a wrong early placement off at the
//!   next step instead of after exploring everything below it.
//! - Unknown operations may be placed anywhere after their call or left out,
//!   so placing one that changes nothing is never useful.
//! - Nor is placing one, then definite operations that are all legal without
//!   it too, until the state without it covers the state with it (the model's
//!   `covers`): a stale unknown put followed by a newer put, say. The search
//!   tracks that shadow state along the path; once it covers, the branch that
//!   leaves the unknown operation out, explored from the same parent through
//!   the same definite operations, can do everything this one can.
//! - Unknown operations the caller marks as twins (`SearchOp::twin`) are
//!   interchangeable: a path can use any twin that could go at that point in
//!   place of another. So among twins that could go next only the one called
//!   last is tried, which keeps the earlier ones, usable wherever it is, for
//!   later.
//!
//! When the history cannot be linearized, the search keeps the dead end that
//! got furthest for the report: the one whose blocking operation returns
//! latest, then the one with the most definite operations placed, then the one
//! with the fewest unknown operations placed (those are guesses, and a report
//! reads best with only the guesses some observation needed).

mod candidates;
mod dead_end;

use crate::cache::{Linearized, Visited};
use crate::entries::{Entries, MAIN};
use crate::history::{Nanos, OpKind, Output};
use crate::model::Model;
use crate::report::Reason;
use candidates::{later_twins, Cursor, Group};
use dead_end::Rank;

pub(crate) use dead_end::DeadEnd;

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SearchOp {
    /// What it asked for.
    pub kind: OpKind,
    /// Its answer; None when the outcome is unknown.
    pub output: Option<Output>,
    /// When it was called.
    pub call: Nanos,
    /// When it returned; None when the outcome is unknown (infinitely late).
    pub ret: Option<Nanos>,
    /// For an unknown operation interchangeable with others: what it shares
    /// with them (unknown operations with equal `twin` are interchangeable).
    pub twin: Option<OpKind>,
}

/// How a search ended.
#[derive(Clone, Debug)]
pub(crate) enum Ending<S> {
    /// A linearization exists.
    Linearizable,
    /// None exists; where the search got furthest.
    NotLinearizable(Box<DeadEnd<S>>),
    /// The step budget ran out first.
    Inconclusive,
}

/// One placement on the stack, with what is needed to undo it.
struct Frame<S> {
    op: usize,
    /// The group it was picked from, to resume iteration after it.
    group: Group,
    /// The model state before it.
    previous: S,
    /// The shadow state before it.
    shadow: Option<S>,
    /// The blocking return entry before it.
    blocking: usize,
}

/// The search's state for one key.
struct Search<'a, M: Model> {
    ops: &'a [SearchOp],
    entries: Entries,
    linearized: Linearized,
    visited: Visited<M::State>,
    state: M::State,
    /// The state had the last unknown operation on the path not happened,
    /// while every definite operation since is legal without it too.
    shadow: Option<M::State>,
    stack: Vec<Frame<M::State>>,
    /// How many operations on the stack have an unknown outcome.
    unknown_placed: usize,
    /// Each unknown operation's next twin in call order (`usize::MAX`: none).
    later_twin: Vec<usize>,
    steps: u64,
    budget: u64,
    /// The furthest dead end so far, and its rank.
    deepest: Option<(Rank, DeadEnd<M::State>)>,
}

/// Searches for a linearization of `ops` under model `M`, taking at most
/// `budget` model steps; returns how it ended and the steps taken.
pub(crate) fn search<M: Model>(ops: &[SearchOp], budget: u64) -> (Ending<M::State>, u64) {
    let times: Vec<(Nanos, Option<Nanos>)> = ops.iter().map(|op| (op.call, op.ret)).collect();
    let mut search = Search::<M> {
        ops,
        entries: Entries::new(&times),
        linearized: Linearized::new(ops.len()),
        visited: Visited::new(),
        state: M::init(),
        shadow: None,
        stack: Vec::new(),
        unknown_placed: 0,
        later_twin: later_twins(ops),
        steps: 0,
        budget,
        deepest: None,
    };
    let ending = search.run();
    (ending, search.steps)
}

impl<M: Model> Search<'_, M> {
    fn run(&mut self) -> Ending<M::State> {
        let Some(mut blocking) = self.entries.first_return() else {
            return Ending::Linearizable;
        };
        let mut cursor = self.level_start(blocking);
        loop {
            let Some(at) = self.next_candidate(cursor, blocking) else {
                self.record_dead_end(blocking);
                let Some(frame) = self.stack.pop() else {
                    let (_, deepest) = self
                        .deepest
                        .take()
                        .expect("the dead end with an empty stack was just recorded");
                    return Ending::NotLinearizable(Box::new(deepest));
                };
                self.entries.unlift(frame.op);
                self.linearized.remove(frame.op);
                self.unknown_placed -= usize::from(self.ops[frame.op].output.is_none());
                self.state = frame.previous;
                self.shadow = frame.shadow;
                blocking = frame.blocking;
                cursor = Cursor {
                    group: frame.group,
                    entry: self.entries.next(self.entries.call_entry(frame.op)),
                };
                continue;
            };
            if self.steps >= self.budget {
                return Ending::Inconclusive;
            }
            self.steps += 1;
            let op = self.entries.op(at.entry);
            if let Ok((next_state, next_shadow)) = self.evaluate(op) {
                self.linearized.insert(op);
                if self.visited.insert(&self.linearized, &next_state) {
                    self.entries.lift(op);
                    self.unknown_placed += usize::from(self.ops[op].output.is_none());
                    let previous = std::mem::replace(&mut self.state, next_state);
                    let shadow = std::mem::replace(&mut self.shadow, next_shadow);
                    self.stack.push(Frame {
                        op,
                        group: at.group,
                        previous,
                        shadow,
                        blocking,
                    });
                    match self.entries.first_return() {
                        Some(first) => blocking = first,
                        // Every definite operation is placed; the unknown ones
                        // left over go at the end, where they change nothing.
                        None => return Ending::Linearizable,
                    }
                    cursor = self.level_start(blocking);
                    continue;
                }
                self.linearized.remove(op);
            }
            cursor = Cursor {
                group: at.group,
                entry: self.entries.next(at.entry),
            };
        }
    }

    /// Where candidate iteration starts in the current state: at the first
    /// definite candidate, or nowhere if one of them is doomed.
    fn level_start(&self, blocking: usize) -> Cursor {
        let first = self.entries.next(MAIN);
        let mut entry = first;
        while entry != blocking {
            if self.entries.is_call(entry) && self.is_doomed(self.entries.op(entry)) {
                return Cursor::EXHAUSTED;
            }
            entry = self.entries.next(entry);
        }
        Cursor {
            group: Group::Definite,
            entry: first,
        }
    }

    /// Whether definite operation `op` can never be placed from this state on.
    fn is_doomed(&self, op: usize) -> bool {
        let SearchOp { kind, output, .. } = &self.ops[op];
        output
            .as_ref()
            .is_some_and(|output| M::doomed(&self.state, kind, output))
    }

    /// The state and shadow state after placing `op` next, or why it cannot
    /// or need not go next (only `Reason::Explored` is left to the caller,
    /// which owns the cache).
    fn evaluate(&self, op: usize) -> Result<(M::State, Option<M::State>), Reason> {
        let SearchOp { kind, output, .. } = &self.ops[op];
        let Some(next) = M::step(&self.state, kind, output.as_ref()) else {
            return Err(if self.is_doomed(op) {
                Reason::Doomed
            } else {
                Reason::Illegal
            });
        };
        if output.is_none() && next == self.state {
            return Err(Reason::NoEffect);
        }
        let without = self
            .shadow
            .as_ref()
            .and_then(|shadow| M::step(shadow, kind, output.as_ref()));
        if without
            .as_ref()
            .is_some_and(|without| M::covers(without, &next))
        {
            return Err(Reason::Redundant);
        }
        let shadow = if output.is_none() {
            // Track the newest unknown operation: the state without it.
            Some(self.state.clone())
        } else {
            // None once `op` needs the unknown operation: it was no guess.
            without
        };
        Ok((next, shadow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvModel, RegState, Version};

    fn definite(call: Nanos, ret: Nanos, kind: OpKind, output: Output) -> SearchOp {
        SearchOp {
            kind,
            output: Some(output),
            call,
            ret: Some(ret),
            twin: None,
        }
    }

    fn unknown(call: Nanos, kind: OpKind) -> SearchOp {
        SearchOp {
            kind,
            output: None,
            call,
            ret: None,
            twin: None,
        }
    }

    fn put(call: Nanos, ret: Nanos, value: u64, version: u64) -> SearchOp {
        definite(
            call,
            ret,
            OpKind::Put { value },
            Output::Written { version },
        )
    }

    fn get(call: Nanos, ret: Nanos, value: u64, version: u64) -> SearchOp {
        definite(call, ret, OpKind::Get, Output::Found { value, version })
    }

    #[test]
    fn an_empty_history_is_linearizable_without_steps() {
        let (ending, steps) = search::<KvModel>(&[], 10);
        assert!(matches!(ending, Ending::Linearizable));
        assert_eq!(steps, 0);
        let only_unknown = [unknown(0, OpKind::Put { value: 1 })];
        assert!(matches!(
            search::<KvModel>(&only_unknown, 10).0,
            Ending::Linearizable
        ));
    }

    #[test]
    fn concurrent_operations_are_reordered_when_the_call_order_fails() {
        // The read is called first but must go after the put it observes.
        let ops = [get(0, 10, 7, 3), put(1, 9, 7, 3)];
        let (ending, steps) = search::<KvModel>(&ops, 100);
        assert!(matches!(ending, Ending::Linearizable), "{ending:?}");
        assert!(steps >= 2);
    }

    #[test]
    fn the_dead_end_names_the_blocking_operation_and_the_state() {
        // A read after the put completed sees the key absent.
        let ops = [
            put(0, 5, 7, 3),
            definite(6, 8, OpKind::Get, Output::NotFound),
            get(9, 10, 7, 3),
        ];
        let Ending::NotLinearizable(dead_end) = search::<KvModel>(&ops, 100).0 else {
            panic!("a read of an absent key after a completed put must fail");
        };
        assert_eq!(dead_end.blocking, 1);
        assert_eq!(dead_end.linearized, 1);
        assert_eq!(dead_end.prefix_tail, vec![0]);
        assert_eq!(
            dead_end.state,
            RegState {
                value: Some(7),
                version: Version::Exact(3)
            }
        );
        assert_eq!(dead_end.candidates, vec![(1, Reason::Doomed)]);
    }

    #[test]
    fn unknown_writes_are_not_tried_in_every_combination() {
        // Ten unknown puts concurrent with a definite one, then a read of a
        // value nobody wrote. Unpruned, the search tries the unknown puts in
        // every subset and order (the cache only merges those ending in the
        // same state: still about 10 * 2^10 configurations); placing one right
        // before another put is redundant, so it tries each alone.
        let mut ops: Vec<SearchOp> = (1..=10)
            .map(|value| unknown(0, OpKind::Put { value }))
            .collect();
        ops.push(put(0, 10, 40, 90));
        ops.push(get(11, 12, 99, 90));
        let (ending, steps) = search::<KvModel>(&ops, 100_000);
        let Ending::NotLinearizable(dead_end) = ending else {
            panic!("a read of a value nobody wrote must fail: {ending:?}");
        };
        assert_eq!(dead_end.blocking, 11);
        assert!(steps <= 500, "{steps} steps");
    }

    #[test]
    fn the_budget_stops_the_search() {
        // Three steps: the read (illegal), the put, the read again.
        let ops = [get(0, 10, 7, 3), put(1, 9, 7, 3)];
        assert!(matches!(search::<KvModel>(&ops, 3).0, Ending::Linearizable));
        let (ending, steps) = search::<KvModel>(&ops, 2);
        assert!(matches!(ending, Ending::Inconclusive), "{ending:?}");
        assert_eq!(steps, 2);
    }
}
