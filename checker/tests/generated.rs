//! Generated histories. Each comes from a random sequential execution of the
//! store's specification: every operation takes effect at its own instant, and
//! its client-visible interval is drawn around that instant, so the history is
//! linearizable by construction. Some writes become unknown (taking effect or
//! not), some operations fail (and do not take effect). Then the tests corrupt
//! single answers in ways that are certainly not linearizable.

use std::time::Instant;

use harmonydb_checker::{check, CheckOptions, OpKind, Operation, Outcome, Output, Verdict};
use proptest::prelude::*;

/// A value no generated write uses.
const NEVER_WRITTEN: u64 = u64::MAX;

/// splitmix64 as a stream: deterministic, so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What kind of history to generate.
#[derive(Clone, Copy, Debug)]
struct Shape {
    ops: usize,
    clients: u64,
    keys: u64,
    /// Writes (and reads) whose outcome becomes unknown.
    unknown_percent: u64,
    /// Operations that fail, i.e. certainly do not happen.
    failed_percent: u64,
}

/// One generated operation before it gets its times.
struct Planned {
    client: u64,
    key: u64,
    kind: OpKind,
    outcome: Outcome,
}

/// A linearizable history of `shape`, in client order (not time order).
fn generate(seed: u64, shape: Shape) -> Vec<Operation> {
    let mut rng = Rng(seed);
    // Per key: (value, version); versions come from one log shared by all keys.
    let mut store = vec![(None::<u64>, 0u64); shape.keys as usize];
    let mut log = 0u64;
    let mut planned = Vec::with_capacity(shape.ops);
    for index in 0..shape.ops as u64 {
        let client = rng.below(shape.clients);
        let key = rng.below(shape.keys);
        let (value, version) = store[key as usize];
        let roll = rng.below(100);
        let fails = rng.chance(shape.failed_percent);
        let unknown = !fails && rng.chance(shape.unknown_percent);
        // An unknown operation took effect or not; a failed one did not.
        let happens = !fails && (!unknown || rng.chance(50));
        let new_value = index + 1;
        let (kind, output) = if roll < 45 {
            let output = match value {
                Some(value) => Output::Found { value, version },
                None => Output::NotFound,
            };
            (OpKind::Get, output)
        } else if roll < 75 {
            let kind = OpKind::Put { value: new_value };
            if happens {
                log += 1 + rng.below(3);
                store[key as usize] = (Some(new_value), log);
            }
            (kind, Output::Written { version: log })
        } else {
            let expected = match rng.below(5) {
                0 => 0,
                1 => rng.below(log + 2),
                _ => version,
            };
            let kind = OpKind::Cas {
                expected,
                value: new_value,
            };
            if expected == version {
                if happens {
                    log += 1 + rng.below(3);
                    store[key as usize] = (Some(new_value), log);
                }
                (kind, Output::Written { version: log })
            } else {
                // A refused compare-and-set may take a log position too.
                log += rng.below(2);
                let current = rng.chance(70).then_some(version);
                (kind, Output::Mismatch { current })
            }
        };
        let outcome = if fails {
            Outcome::Failed { at: 0 }
        } else if unknown {
            Outcome::Unknown
        } else {
            Outcome::Ok { at: 0, output }
        };
        planned.push(Planned {
            client,
            key,
            kind,
            outcome,
        });
    }
    timed(&mut rng, planned)
}

/// Gives each operation an interval around its instant (operation i takes
/// effect at 1000 * (i + 1)), with each client's operations one at a time,
/// then spreads the times so that no two operations share a time.
fn timed(rng: &mut Rng, planned: Vec<Planned>) -> Vec<Operation> {
    let count = planned.len() as u64;
    let instant = |index: usize| 1000 * (index as u64 + 1);
    let mut by_client: Vec<Vec<usize>> = Vec::new();
    for (index, op) in planned.iter().enumerate() {
        let client = op.client as usize;
        if by_client.len() <= client {
            by_client.resize(client + 1, Vec::new());
        }
        by_client[client].push(index);
    }
    let mut history = Vec::with_capacity(planned.len());
    for indices in &by_client {
        let mut free_from = 0;
        for (position, &index) in indices.iter().enumerate() {
            let at = instant(index);
            let next_at = indices
                .get(position + 1)
                .map_or(at + 3000, |next| instant(*next));
            let call = free_from + rng.below(at - free_from) + 1;
            // For an unknown operation this is when the client gave up.
            let end = at + rng.below(next_at - at);
            free_from = end;
            // time * count + index keeps every strict order and breaks ties.
            let spread = |time: u64| time * count + index as u64;
            let op = &planned[index];
            let outcome = match op.outcome {
                Outcome::Ok { output, .. } => Outcome::Ok {
                    at: spread(end),
                    output,
                },
                Outcome::Failed { .. } => Outcome::Failed { at: spread(end) },
                Outcome::Unknown => Outcome::Unknown,
            };
            history.push(Operation {
                client: op.client,
                key: op.key,
                call: spread(call),
                kind: op.kind,
                outcome,
            });
        }
    }
    history
}

fn completed_output(op: &Operation) -> Option<(u64, Output)> {
    match op.outcome {
        Outcome::Ok { at, output } => Some((at, output)),
        _ => None,
    }
}

/// Definite reads, as indices into `history`.
fn definite_reads(history: &[Operation]) -> Vec<usize> {
    (0..history.len())
        .filter(|i| history[*i].kind == OpKind::Get && completed_output(&history[*i]).is_some())
        .collect()
}

/// Checks that `history` fails on exactly the key of `broken`, and that the
/// report's window shows `broken` among the operations that could not go next.
fn assert_caught(history: &[Operation], broken: usize) -> Result<(), TestCaseError> {
    let result = check(history, &CheckOptions::default());
    prop_assert_eq!(result.verdict, Verdict::NotLinearizable, "{}", result);
    prop_assert_eq!(result.violations.len(), 1);
    let violation = &result.violations[0];
    prop_assert_eq!(violation.key, history[broken].key);
    // Times are distinct, so every other operation fits around the broken
    // one, and the furthest dead end is at or after the point where the
    // broken one could first have gone: it is one of the candidates there.
    let refused = std::iter::once(&violation.blocking).chain(&violation.concurrent);
    let found = refused.clone().find(|r| r.operation == history[broken]);
    prop_assert!(found.is_some(), "{} not in\n{}", history[broken], violation);
    let header = format!("key {}: not linearizable", violation.key);
    prop_assert!(violation.to_string().starts_with(&header), "{}", violation);
    Ok(())
}

fn shapes() -> impl Strategy<Value = (u64, Shape)> {
    (
        any::<u64>(),
        1usize..=120,
        1u64..=8,
        1u64..=3,
        0u64..=30,
        0u64..=20,
    )
        .prop_map(
            |(seed, ops, clients, keys, unknown_percent, failed_percent)| {
                let shape = Shape {
                    ops,
                    clients,
                    keys,
                    unknown_percent,
                    failed_percent,
                };
                (seed, shape)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn generated_executions_are_linearizable((seed, shape) in shapes()) {
        let history = generate(seed, shape);
        let result = check(&history, &CheckOptions::default());
        let reports: Vec<String> = result.violations.iter().map(|v| v.to_string()).collect();
        prop_assert_eq!(result.verdict, Verdict::Linearizable, "{}\n{}", result, reports.join("\n"));
    }

    #[test]
    fn a_read_corrupted_to_a_value_nobody_wrote_is_caught((seed, shape) in shapes(), pick in any::<usize>()) {
        let mut history = generate(seed, shape);
        let reads = definite_reads(&history);
        prop_assume!(!reads.is_empty());
        let broken = reads[pick % reads.len()];
        let Some((at, output)) = completed_output(&history[broken]) else {
            unreachable!("definite_reads returns completed reads");
        };
        let version = match output {
            Output::Found { version, .. } => version,
            _ => 1,
        };
        history[broken].outcome = Outcome::Ok {
            at,
            output: Output::Found { value: NEVER_WRITTEN, version },
        };
        assert_caught(&history, broken)?;
    }

    #[test]
    fn a_read_corrupted_to_a_stale_answer_is_caught((seed, shape) in shapes(), pick in any::<usize>()) {
        let mut history = generate(seed, shape);
        // Reads called after some write on their key completed, with that
        // write's version: once it is in place the key's version is at least
        // that, and a read of an older version, or of no value, is impossible.
        let stale_candidates: Vec<(usize, u64)> = definite_reads(&history)
            .into_iter()
            .filter_map(|read| {
                let floor = history.iter().filter_map(|write| {
                    let (at, output) = completed_output(write)?;
                    let Output::Written { version } = output else { return None };
                    (write.key == history[read].key && at < history[read].call).then_some(version)
                }).max()?;
                Some((read, floor))
            })
            .collect();
        prop_assume!(!stale_candidates.is_empty());
        let (broken, floor) = stale_candidates[pick % stale_candidates.len()];
        // The stale answer: some other read's older version, or "absent".
        let stale = history.iter()
            .filter(|op| op.key == history[broken].key)
            .filter_map(completed_output)
            .find_map(|(_, output)| match output {
                Output::Found { version, .. } if version < floor => Some(output),
                _ => None,
            })
            .unwrap_or(Output::NotFound);
        let Some((at, _)) = completed_output(&history[broken]) else {
            unreachable!("definite_reads returns completed reads");
        };
        history[broken].outcome = Outcome::Ok { at, output: stale };
        assert_caught(&history, broken)?;
    }
}

#[test]
fn five_thousand_operations_on_one_key_check_quickly() {
    let shape = Shape {
        ops: 5_000,
        clients: 10,
        keys: 1,
        unknown_percent: 5,
        failed_percent: 5,
    };
    let history = generate(0x5eed, shape);
    let unknown = history
        .iter()
        .filter(|op| op.outcome == Outcome::Unknown)
        .count();
    let started = Instant::now();
    let result = check(&history, &CheckOptions::default());
    let elapsed = started.elapsed();
    println!("{result} ({unknown} unknown) in {elapsed:.2?}");
    assert_eq!(result.verdict, Verdict::Linearizable, "{result}");
    assert!(result.keys[0].operations > 4_500, "{result}");
}

/// `width` concurrent compare-and-sets refused without a version (legal in
/// any order, changing nothing) and a concurrent read of a value nobody wrote:
/// refuting it means visiting every subset of them, 2^width configurations.
fn hard_history(width: u64) -> Vec<Operation> {
    let refused = |client: u64| Operation {
        client,
        key: 1,
        call: client,
        kind: OpKind::Cas {
            expected: 7,
            value: 100 + client,
        },
        outcome: Outcome::Ok {
            at: 1_000 + client,
            output: Output::Mismatch { current: None },
        },
    };
    let mut history: Vec<Operation> = (0..width).map(refused).collect();
    history.push(Operation {
        client: 99,
        key: 1,
        call: 50,
        kind: OpKind::Get,
        outcome: Outcome::Ok {
            at: 60,
            output: Output::Found {
                value: NEVER_WRITTEN,
                version: 3,
            },
        },
    });
    history
}

#[test]
fn a_hard_history_with_a_tiny_budget_is_inconclusive() {
    let tiny = CheckOptions {
        step_budget_per_key: 1_000,
    };
    let result = check(&hard_history(20), &tiny);
    assert_eq!(result.verdict, Verdict::Inconclusive, "{result}");
    assert_eq!(result.keys[0].steps, 1_000);
    assert!(result.violations.is_empty());
    let summary = result.to_string();
    assert!(
        summary.starts_with("inconclusive: step budget exhausted on key 1;"),
        "{summary}"
    );
    // A narrower one of the same kind is refuted, but needs more than that budget.
    let narrower = check(&hard_history(8), &CheckOptions::default());
    assert_eq!(narrower.verdict, Verdict::NotLinearizable, "{narrower}");
    assert!(narrower.keys[0].steps > 1_000, "{narrower}");
}
