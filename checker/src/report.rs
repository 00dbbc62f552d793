//! What the checker says about a key that is not linearizable: where the search
//! got furthest, in a form a person can follow: the state reached, the last
//! operations placed, the operation that could not be placed next and every
//! other operation that could have gone there, each with why it did not.

use std::fmt;

use crate::history::Operation;
use crate::model::RegState;

/// How many candidates besides the blocking one a report prints; with many
/// unknown writes pending the full list would bury the interesting lines.
const CONCURRENT_SHOWN_MAX: usize = 20;

/// Why an operation could not go next at the point the search got stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The model forbids its answer in this state.
    Illegal,
    /// The model forbids its answer in this state and in every later one
    /// (it needs an older version, say), so no way on from here can succeed.
    Doomed,
    /// An unknown operation that would change nothing here.
    NoEffect,
    /// Placing it here does no better than had the last unknown operation
    /// placed before it not happened, and that alternative was explored.
    Redundant,
    /// Legal, but leads to a dead end: every way on from there was explored,
    /// or another candidate here is doomed.
    Explored,
}

/// A candidate operation at the point of failure, and why it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The operation, as recorded.
    pub operation: Operation,
    /// Why it could not go next.
    pub reason: Reason,
}

/// One key's history is not linearizable; this is the furthest the search got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: u64,
    /// How many of its operations were checked (failed ones and unknown reads are not).
    pub operations: usize,
    /// How many operations the longest linearizable prefix found holds.
    pub linearized: usize,
    /// The model state after that prefix.
    pub state: RegState,
    /// The last few operations of that prefix, in linearization order.
    pub prefix_tail: Vec<Operation>,
    /// The operation that cannot go next: one that can never go after this
    /// prefix if there is one, else the earliest-returning operation not in
    /// the prefix (nothing can go after its return before it).
    pub blocking: Refused,
    /// The other operations that could have gone next, concurrent with it.
    pub concurrent: Vec<Refused>,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Illegal => "illegal in this state",
            Reason::Doomed => "illegal in this state and in any later one",
            Reason::NoEffect => "no effect in this state",
            Reason::Redundant => "no better than had the last unknown operation not happened",
            Reason::Explored => "legal, but leads to a dead end",
        })
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}   ({})", self.operation, self.reason)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: not linearizable ({} operations; longest linearizable prefix {})",
            self.key, self.operations, self.linearized
        )?;
        writeln!(f, "  state after that prefix: {}", self.state)?;
        if self.prefix_tail.is_empty() {
            writeln!(f, "  the prefix is empty: stuck at the first operation")?;
        } else {
            writeln!(f, "  last operations of the prefix:")?;
            for operation in &self.prefix_tail {
                writeln!(f, "    {operation}")?;
            }
        }
        writeln!(
            f,
            "  no operation can go next; the first that cannot be linearized:"
        )?;
        write!(f, "    {}", self.blocking)?;
        // Stale unknown operations that cannot take effect here are noise
        // next to the others: listed after them, or only counted.
        let (idle, telling): (Vec<&Refused>, Vec<&Refused>) = self
            .concurrent
            .iter()
            .partition(|r| r.reason == Reason::NoEffect);
        if !self.concurrent.is_empty() {
            write!(f, "\n  other operations concurrent with it:")?;
        }
        let shown = telling.iter().chain(&idle).take(CONCURRENT_SHOWN_MAX);
        for refused in shown {
            write!(f, "\n    {refused}")?;
        }
        let hidden = self.concurrent.len().saturating_sub(CONCURRENT_SHOWN_MAX);
        let idle_hidden = hidden.min(idle.len());
        if hidden > idle_hidden {
            write!(f, "\n    ... and {} more", hidden - idle_hidden)?;
        }
        if idle_hidden > 0 {
            write!(
                f,
                "\n    ... and {idle_hidden} more unknown operations with no effect in this state"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpKind, Outcome, Output};
    use crate::model::Version;

    fn operation(client: u64, call_ms: u64, kind: OpKind, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: 3,
            call: call_ms * 1_000_000,
            kind,
            outcome,
        }
    }

    fn violation(concurrent: usize) -> Violation {
        let put = operation(
            2,
            12_100,
            OpKind::Put { value: 1234 },
            Outcome::Ok {
                at: 12_130_000_000,
                output: Output::Written { version: 5678 },
            },
        );
        let get = operation(
            3,
            12_300,
            OpKind::Get,
            Outcome::Ok {
                at: 12_346_000_000,
                output: Output::Found {
                    value: 1200,
                    version: 5600,
                },
            },
        );
        let pending = Refused {
            operation: operation(7, 12_310, OpKind::Put { value: 1300 }, Outcome::Unknown),
            reason: Reason::Explored,
        };
        Violation {
            key: 3,
            operations: 1530,
            linearized: 812,
            state: RegState {
                value: Some(1234),
                version: Version::Exact(5678),
            },
            prefix_tail: vec![put],
            blocking: Refused {
                operation: get,
                reason: Reason::Illegal,
            },
            concurrent: vec![pending; concurrent],
        }
    }

    #[test]
    fn a_violation_prints_the_window_around_the_stuck_operation() {
        let text = violation(1).to_string();
        let expected = "\
key 3: not linearizable (1530 operations; longest linearizable prefix 812)
  state after that prefix: value 1234 at version 5678
  last operations of the prefix:
    client 2  [12.100000s, 12.130000s]  put 1234 -> written at version 5678
  no operation can go next; the first that cannot be linearized:
    client 3  [12.300000s, 12.346000s]  get -> 1200 at version 5600   (illegal in this state)
  other operations concurrent with it:
    client 7  [12.310000s, ∞]  put 1300 -> unknown   (legal, but leads to a dead end)";
        assert_eq!(text, expected);
    }

    #[test]
    fn long_candidate_lists_are_cut_short() {
        let text = violation(CONCURRENT_SHOWN_MAX + 3).to_string();
        assert_eq!(text.matches("put 1300").count(), CONCURRENT_SHOWN_MAX);
        assert!(text.ends_with("... and 3 more"), "{text}");
        let alone = violation(0).to_string();
        assert!(!alone.contains("concurrent"), "{alone}");
    }

    #[test]
    fn unknown_operations_with_no_effect_come_last_and_are_counted() {
        let mut violation = violation(2);
        let idle = Refused {
            operation: Operation {
                client: 8,
                ..violation.concurrent[0].operation.clone()
            },
            reason: Reason::NoEffect,
        };
        violation
            .concurrent
            .splice(0..0, vec![idle; CONCURRENT_SHOWN_MAX]);
        let text = violation.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let first_concurrent = lines
            .iter()
            .position(|line| line.contains("concurrent with it"))
            .expect("the section is there");
        assert!(lines[first_concurrent + 1].contains("client 7"), "{text}");
        assert!(lines[first_concurrent + 2].contains("client 7"), "{text}");
        assert!(
            lines[first_concurrent + 3].contains("(no effect in this state)"),
            "{text}"
        );
        assert!(
            text.ends_with("... and 2 more unknown operations with no effect in this state"),
            "{text}"
        );
    }
}
