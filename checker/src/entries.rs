//! The two doubly linked lists the search walks (Porcupine's entry list).
//!
//! The main list holds a call entry and a return entry for every operation with
//! a definite outcome, sorted by time; the pending list holds the call entries
//! of operations whose outcome is unknown (they never return), sorted by call
//! time. Linearizing an operation lifts its entries out in O(1) and undoing it
//! puts them back in O(1) (dancing links), so the search never copies a list.

use crate::history::Nanos;

/// The main list's sentinel: `next[MAIN]` is its first entry.
pub(crate) const MAIN: usize = 0;
/// The pending list's sentinel.
pub(crate) const PENDING: usize = 1;

/// What an entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// One of the two sentinels.
    Sentinel,
    /// A definite operation's invocation (main list).
    Call,
    /// A definite operation's response (main list).
    Return,
    /// An unknown operation's invocation (pending list).
    Pending,
}

/// Both lists in one arena: entries 0 and 1 are the sentinels, then one or two
/// entries per operation. Lists are circular through their sentinel.
pub(crate) struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    role: Vec<Role>,
    time: Vec<Nanos>,
    /// The operation each entry belongs to (unused for sentinels).
    op: Vec<usize>,
    /// Each operation's call entry (main or pending list).
    call_entry: Vec<usize>,
    /// Each definite operation's return entry.
    return_entry: Vec<Option<usize>>,
}

impl Entries {
    /// Builds the lists from each operation's call time and return time (None:
    /// unknown outcome). A return time before the call is taken as the call
    /// time, so a clock glitch cannot make an operation impossible to place.
    pub(crate) fn new(times: &[(Nanos, Option<Nanos>)]) -> Entries {
        let mut entries = Entries {
            next: vec![MAIN, PENDING],
            prev: vec![MAIN, PENDING],
            role: vec![Role::Sentinel, Role::Sentinel],
            time: vec![0, 0],
            op: vec![usize::MAX, usize::MAX],
            call_entry: vec![usize::MAX; times.len()],
            return_entry: vec![None; times.len()],
        };
        // Sort keys: on equal times calls come before returns, so operations
        // that touch count as concurrent (a permissive choice: timing ties
        // never cause false alarms); then by operation, for determinism.
        let mut main: Vec<(Nanos, bool, usize)> = Vec::new();
        let mut pending: Vec<(Nanos, usize)> = Vec::new();
        for (op, &(call, ret)) in times.iter().enumerate() {
            match ret {
                Some(ret) => {
                    main.push((call, false, op));
                    main.push((ret.max(call), true, op));
                }
                None => pending.push((call, op)),
            }
        }
        main.sort_unstable();
        pending.sort_unstable();
        for (time, is_return, op) in main {
            let entry = entries.append(
                MAIN,
                time,
                op,
                if is_return { Role::Return } else { Role::Call },
            );
            if is_return {
                entries.return_entry[op] = Some(entry);
            } else {
                entries.call_entry[op] = entry;
            }
        }
        for (time, op) in pending {
            entries.call_entry[op] = entries.append(PENDING, time, op, Role::Pending);
        }
        entries
    }

    /// Adds an entry at the end of `list` and returns it.
    fn append(&mut self, list: usize, time: Nanos, op: usize, role: Role) -> usize {
        let entry = self.next.len();
        let last = self.prev[list];
        self.next.push(list);
        self.prev.push(last);
        self.role.push(role);
        self.time.push(time);
        self.op.push(op);
        self.next[last] = entry;
        self.prev[list] = entry;
        entry
    }

    /// The entry after `entry` in its list (its sentinel after the last).
    pub(crate) fn next(&self, entry: usize) -> usize {
        self.next[entry]
    }

    /// The operation `entry` belongs to.
    pub(crate) fn op(&self, entry: usize) -> usize {
        self.op[entry]
    }

    /// When `entry` happens.
    pub(crate) fn time(&self, entry: usize) -> Nanos {
        self.time[entry]
    }

    /// Whether `entry` is a definite operation's call entry.
    pub(crate) fn is_call(&self, entry: usize) -> bool {
        self.role[entry] == Role::Call
    }

    /// The call entry of `op`, in whichever list it belongs to.
    pub(crate) fn call_entry(&self, op: usize) -> usize {
        self.call_entry[op]
    }

    /// The first return entry of the main list: the earliest-returning definite
    /// operation not yet linearized. None once the main list is empty.
    pub(crate) fn first_return(&self) -> Option<usize> {
        let mut entry = self.next[MAIN];
        while entry != MAIN {
            if self.role[entry] == Role::Return {
                return Some(entry);
            }
            entry = self.next[entry];
        }
        None
    }

    /// Takes `op`'s entries out of their list.
    pub(crate) fn lift(&mut self, op: usize) {
        self.unlink(self.call_entry[op]);
        if let Some(ret) = self.return_entry[op] {
            self.unlink(ret);
        }
    }

    /// Puts back the entries of `op`, which must be the operation lifted last.
    pub(crate) fn unlift(&mut self, op: usize) {
        // Reverse order of `lift`: each entry's neighbours are then exactly
        // as they were when it was taken out.
        if let Some(ret) = self.return_entry[op] {
            self.relink(ret);
        }
        self.relink(self.call_entry[op]);
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operations of `list` in order, calls as `+op` and returns as `-op`.
    fn walk(entries: &Entries, list: usize) -> Vec<i64> {
        let mut seen = Vec::new();
        let mut entry = entries.next(list);
        while entry != list {
            let op = i64::try_from(entries.op(entry)).expect("small test op ids");
            seen.push(if entries.role[entry] == Role::Return {
                -op
            } else {
                op
            });
            entry = entries.next(entry);
        }
        seen
    }

    #[test]
    fn entries_sort_by_time_with_calls_before_returns_on_ties() {
        // Op 0 returns at 20 exactly when op 1 is called; op 2 is unknown.
        let entries = Entries::new(&[(10, Some(20)), (20, Some(30)), (5, None), (1, None)]);
        assert_eq!(walk(&entries, MAIN), vec![0, 1, -0, -1]);
        assert_eq!(walk(&entries, PENDING), vec![3, 2]);
        assert_eq!(entries.first_return().map(|e| entries.op(e)), Some(0));
        assert_eq!(entries.role[entries.call_entry(2)], Role::Pending);
        assert!(entries.is_call(entries.call_entry(1)));
    }

    #[test]
    fn a_return_before_its_call_is_clamped_to_the_call() {
        let entries = Entries::new(&[(10, Some(5)), (7, Some(8))]);
        assert_eq!(walk(&entries, MAIN), vec![1, -1, 0, -0]);
    }

    #[test]
    fn lifting_and_unlifting_in_reverse_order_restores_the_lists() {
        let mut entries = Entries::new(&[(0, Some(10)), (1, Some(5)), (2, Some(3)), (4, None)]);
        let original = walk(&entries, MAIN);
        entries.lift(1);
        assert_eq!(walk(&entries, MAIN), vec![0, 2, -2, -0]);
        entries.lift(2);
        entries.lift(3);
        assert_eq!(walk(&entries, MAIN), vec![0, -0]);
        assert!(walk(&entries, PENDING).is_empty());
        entries.unlift(3);
        entries.unlift(2);
        entries.unlift(1);
        assert_eq!(walk(&entries, MAIN), original);
        assert_eq!(walk(&entries, PENDING), vec![3]);
        entries.lift(0);
        entries.lift(1);
        entries.lift(2);
        assert_eq!(entries.first_return(), None);
    }
}
