//! A linearizability checker for histories recorded by HarmonyDB's fault
//! ("nemesis") tests of its replicated key-value store.
//!
//! A history is a list of [`Operation`]s: what each client asked, when, and
//! what came back. [`check`] decides whether some order of the operations,
//! each taking effect at one instant between its call and its return, explains
//! every answer under the store's sequential specification ([`KvModel`]).
//!
//! How: keys are independent (P-compositionality), so each key's operations
//! are checked on their own. Operations that certainly did not happen
//! (`Failed`) and reads with unknown outcome are dropped; the rest go to a
//! Wing-Gong-Lowe depth-first search with Porcupine's optimisations (`search`):
//! dancing-links entry lists (`entries`) and a cache of explored
//! configurations with incremental hashing (`cache`). Operations with an
//! unknown outcome may take effect any time after their call, or never; the
//! search prunes the ways of placing them that cannot matter (see `search`),
//! which keeps histories with many timeouts tractable. When a key fails, the
//! furthest point the search reached becomes a [`Violation`] (`report`) that
//! prints the operations around the failure.
//!
//! The search takes at most [`CheckOptions::step_budget_per_key`] model steps
//! per key and answers [`Verdict::Inconclusive`] beyond: checking
//! linearizability is NP-complete, and a key whose history is long, very
//! concurrent and full of unknown outcomes can need more.

mod cache;
mod entries;
mod history;
mod model;
mod report;
mod search;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use history::{Nanos, OpKind, Operation, Outcome, Output};
pub use model::{KvModel, Model, RegState, Version};
pub use report::{Reason, Refused, Violation};

use search::{search, Ending, SearchOp};

/// How hard to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Model steps the search may take on one key before giving up on it.
    pub step_budget_per_key: u64,
}

impl Default for CheckOptions {
    /// A budget that takes seconds, not hours, on a hard key.
    fn default() -> CheckOptions {
        CheckOptions {
            step_budget_per_key: 20_000_000,
        }
    }
}

/// What the checker concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations explains every answer.
    Linearizable,
    /// No order does.
    NotLinearizable,
    /// The step budget ran out before the search could tell.
    Inconclusive,
}

/// The result for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyResult {
    /// The key.
    pub key: u64,
    /// What the search concluded for it.
    pub verdict: Verdict,
    /// Operations checked (failed ones and unknown reads are dropped first).
    pub operations: usize,
    /// Model steps the search took.
    pub steps: u64,
}

/// The result for a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// NotLinearizable if any key is; otherwise Inconclusive if any key is.
    pub verdict: Verdict,
    /// One result per key, in key order.
    pub keys: Vec<KeyResult>,
    /// One per key that is not linearizable, in key order.
    pub violations: Vec<Violation>,
}

/// Checks whether `history` is linearizable, key by key.
pub fn check(history: &[Operation], options: &CheckOptions) -> CheckResult {
    // BTreeMap: keys in order, so results and reports are deterministic.
    let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        by_key.entry(operation.key).or_default().push(index);
    }
    let mut keys = Vec::with_capacity(by_key.len());
    let mut violations = Vec::new();
    for (key, indices) in by_key {
        let (ops, sources) = searchable(history, &indices);
        let (ending, steps) = search::<KvModel>(&ops, options.step_budget_per_key);
        let verdict = match ending {
            Ending::Linearizable => Verdict::Linearizable,
            Ending::Inconclusive => Verdict::Inconclusive,
            Ending::NotLinearizable(dead_end) => {
                let at = |op: usize| history[sources[op]].clone();
                let refused = |(op, reason): (usize, Reason)| Refused {
                    operation: at(op),
                    reason,
                };
                let (blocking, concurrent): (Vec<_>, Vec<_>) = dead_end
                    .candidates
                    .iter()
                    .partition(|(op, _)| *op == dead_end.blocking);
                let blocking = blocking.first().copied().map(refused).expect(
                    "the blocking operation is a candidate: a doomed one, or the one whose \
                     return entry ends the scan (its call entry comes first)",
                );
                violations.push(Violation {
                    key,
                    operations: ops.len(),
                    linearized: dead_end.linearized,
                    state: dead_end.state,
                    prefix_tail: dead_end.prefix_tail.iter().map(|op| at(*op)).collect(),
                    blocking,
                    concurrent: concurrent.into_iter().map(refused).collect(),
                });
                Verdict::NotLinearizable
            }
        };
        keys.push(KeyResult {
            key,
            verdict,
            operations: ops.len(),
            steps,
        });
    }
    let verdict = if keys.iter().any(|k| k.verdict == Verdict::NotLinearizable) {
        Verdict::NotLinearizable
    } else if keys.iter().any(|k| k.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Linearizable
    };
    CheckResult {
        verdict,
        keys,
        violations,
    }
}

/// The operations of one key the search needs, with each one's index in the
/// history. Failed operations certainly did not happen, and a read that may not
/// have happened constrains nothing: both are dropped.
fn searchable(history: &[Operation], indices: &[usize]) -> (Vec<SearchOp>, Vec<usize>) {
    // Values some completed read returned: an unknown write of any other value
    // is never observed except through versions.
    let read: BTreeSet<u64> = indices
        .iter()
        .filter_map(|&index| match history[index].outcome {
            Outcome::Ok {
                output: Output::Found { value, .. },
                ..
            } => Some(value),
            _ => None,
        })
        .collect();
    let mut ops = Vec::with_capacity(indices.len());
    let mut sources = Vec::with_capacity(indices.len());
    for &index in indices {
        let operation = &history[index];
        let (output, ret) = match operation.outcome {
            Outcome::Ok { at, output } => (Some(output), Some(at)),
            Outcome::Failed { .. } => continue,
            Outcome::Unknown if operation.kind == OpKind::Get => continue,
            Outcome::Unknown => (None, None),
        };
        ops.push(SearchOp {
            kind: operation.kind,
            output,
            call: operation.call,
            ret,
            twin: output
                .is_none()
                .then(|| unobserved_twin(operation.kind, &read))
                .flatten(),
        });
        sources.push(index);
    }
    (ops, sources)
}

/// For an unknown write of a value no read returned: its kind with the value
/// blanked. Two such writes of the same kind (a put, or a compare-and-set
/// expecting the same version) act alike on everything any operation can
/// observe, since values are only ever compared with the values reads return;
/// so the search may treat them as interchangeable.
fn unobserved_twin(kind: OpKind, read: &BTreeSet<u64>) -> Option<OpKind> {
    match kind {
        OpKind::Get => None,
        OpKind::Put { value } => (!read.contains(&value)).then_some(OpKind::Put { value: 0 }),
        OpKind::Cas { expected, value } => {
            (!read.contains(&value)).then_some(OpKind::Cas { expected, value: 0 })
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "NOT linearizable",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

impl fmt::Display for CheckResult {
    /// One line: the verdict, the keys it is about, and totals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operations: usize = self.keys.iter().map(|k| k.operations).sum();
        let steps: u64 = self.keys.iter().map(|k| k.steps).sum();
        let totals = format!(
            "{} keys, {operations} operations, {steps} steps",
            self.keys.len()
        );
        let culprits: Vec<&KeyResult> = self
            .keys
            .iter()
            .filter(|k| k.verdict == self.verdict)
            .collect();
        match self.verdict {
            Verdict::Linearizable => write!(f, "{}: {totals}", self.verdict),
            Verdict::NotLinearizable => {
                write!(f, "{}: {}; {totals}", self.verdict, key_list(&culprits))
            }
            Verdict::Inconclusive => write!(
                f,
                "{}: step budget exhausted on {}; {totals}",
                self.verdict,
                key_list(&culprits)
            ),
        }
    }
}

/// "key 3" or "keys 3, 7 and 2 more", for the summary line.
fn key_list(keys: &[&KeyResult]) -> String {
    const SHOWN_MAX: usize = 5;
    let shown: Vec<String> = keys
        .iter()
        .take(SHOWN_MAX)
        .map(|k| k.key.to_string())
        .collect();
    let noun = if keys.len() == 1 { "key" } else { "keys" };
    let more = keys.len().saturating_sub(SHOWN_MAX);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{noun} {}{tail}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(verdicts: &[Verdict]) -> CheckResult {
        let keys: Vec<KeyResult> = verdicts
            .iter()
            .enumerate()
            .map(|(i, verdict)| KeyResult {
                key: i as u64 + 1,
                verdict: *verdict,
                operations: 10,
                steps: 100,
            })
            .collect();
        let verdict = verdicts.iter().copied().max_by_key(|v| match v {
            Verdict::Linearizable => 0,
            Verdict::Inconclusive => 1,
            Verdict::NotLinearizable => 2,
        });
        CheckResult {
            verdict: verdict.unwrap_or(Verdict::Linearizable),
            keys,
            violations: Vec::new(),
        }
    }

    #[test]
    fn the_summary_names_the_verdict_the_keys_and_the_totals() {
        use Verdict::*;
        assert_eq!(
            result(&[Linearizable, Linearizable]).to_string(),
            "linearizable: 2 keys, 20 operations, 200 steps"
        );
        assert_eq!(
            result(&[Linearizable, NotLinearizable, Inconclusive]).to_string(),
            "NOT linearizable: key 2; 3 keys, 30 operations, 300 steps"
        );
        assert_eq!(
            result(&[Inconclusive, Linearizable, Inconclusive]).to_string(),
            "inconclusive: step budget exhausted on keys 1, 3; 3 keys, 30 operations, 300 steps"
        );
        let many = result(&[NotLinearizable; 7]).to_string();
        assert!(
            many.starts_with("NOT linearizable: keys 1, 2, 3, 4, 5 and 2 more;"),
            "{many}"
        );
    }

    #[test]
    fn failed_operations_and_unknown_reads_are_not_searched() {
        let op = |kind, outcome| Operation {
            client: 1,
            key: 1,
            call: 0,
            kind,
            outcome,
        };
        let history = [
            op(OpKind::Get, Outcome::Unknown),
            op(OpKind::Put { value: 1 }, Outcome::Failed { at: 3 }),
            op(OpKind::Put { value: 2 }, Outcome::Unknown),
            op(
                OpKind::Get,
                Outcome::Ok {
                    at: 4,
                    output: Output::NotFound,
                },
            ),
        ];
        let (ops, sources) = searchable(&history, &[0, 1, 2, 3]);
        assert_eq!(sources, vec![2, 3]);
        assert_eq!(ops[0].ret, None);
        assert_eq!(ops[1].output, Some(Output::NotFound));
    }

    #[test]
    fn unknown_writes_of_values_nobody_read_are_twins() {
        let op = |kind, outcome| Operation {
            client: 1,
            key: 1,
            call: 0,
            kind,
            outcome,
        };
        let found = |value| Outcome::Ok {
            at: 9,
            output: Output::Found { value, version: 1 },
        };
        let history = [
            op(OpKind::Put { value: 1 }, Outcome::Unknown),
            op(OpKind::Put { value: 2 }, Outcome::Unknown),
            op(
                OpKind::Cas {
                    expected: 4,
                    value: 3,
                },
                Outcome::Unknown,
            ),
            op(OpKind::Get, found(2)),
            op(
                OpKind::Put { value: 5 },
                Outcome::Ok {
                    at: 1,
                    output: Output::Written { version: 1 },
                },
            ),
            op(OpKind::Get, found(5)),
        ];
        let (ops, _) = searchable(&history, &[0, 1, 2, 3, 4, 5]);
        let twins: Vec<Option<OpKind>> = ops.iter().map(|op| op.twin).collect();
        let blank_cas = OpKind::Cas {
            expected: 4,
            value: 0,
        };
        assert_eq!(
            twins,
            vec![
                Some(OpKind::Put { value: 0 }),
                None,
                Some(blank_cas),
                None,
                None,
                None
            ]
        );
    }
}
