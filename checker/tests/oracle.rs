//! The checker against a brute-force oracle on small random histories.
//!
//! The search prunes a lot: a cache, doomed operations, unknown operations
//! that change nothing or are covered by leaving them out, interchangeable
//! unknown writes. Each pruning must only skip what cannot succeed, and
//! none may make it miss a linearization. The oracle tries every order of
//! every subset of the unknown operations, with nothing but the model and the
//! real-time order, so the two must agree on every history, linearizable or
//! not. The random histories draw values and versions from small ranges so
//! that both outcomes are common.

use harmonydb_checker::{
    check, CheckOptions, KvModel, Model, OpKind, Operation, Outcome, Output, Verdict,
};
use proptest::prelude::*;

/// An operation as the oracle sees it: definite ones have a return time.
struct Op {
    kind: OpKind,
    output: Option<Output>,
    call: u64,
    ret: Option<u64>,
}

/// Whether some order of the definite operations, with any of the unknown
/// ones mixed in, respects real time and the model.
fn oracle(history: &[Operation]) -> bool {
    let ops: Vec<Op> = history
        .iter()
        .filter_map(|op| {
            let (output, ret) = match op.outcome {
                Outcome::Ok { at, output } => (Some(output), Some(at)),
                Outcome::Failed { .. } => return None,
                Outcome::Unknown if op.kind == OpKind::Get => return None,
                Outcome::Unknown => (None, None),
            };
            Some(Op {
                kind: op.kind,
                output,
                call: op.call,
                ret,
            })
        })
        .collect();
    let mut placed = vec![false; ops.len()];
    extend(&ops, &mut placed, KvModel::init())
}

fn extend(ops: &[Op], placed: &mut [bool], state: <KvModel as Model>::State) -> bool {
    let remaining = || (0..ops.len()).filter(|i| !placed[*i]);
    // Every definite operation placed: the unknown ones left never happened.
    if remaining().all(|i| ops[i].ret.is_none()) {
        return true;
    }
    // An operation can go next if no remaining one returned before its call.
    let earliest_return = remaining()
        .filter_map(|i| ops[i].ret)
        .min()
        .unwrap_or(u64::MAX);
    let candidates: Vec<usize> = remaining()
        .filter(|i| ops[*i].call <= earliest_return)
        .collect();
    for i in candidates {
        let op = &ops[i];
        if let Some(next) = KvModel::step(&state, &op.kind, op.output.as_ref()) {
            placed[i] = true;
            let found = extend(ops, placed, next);
            placed[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

fn any_kind() -> impl Strategy<Value = OpKind> {
    prop_oneof![
        Just(OpKind::Get),
        // Writes draw from more values than reads do, so that some unknown
        // writes are never read (and count as interchangeable).
        (1..7u64).prop_map(|value| OpKind::Put { value }),
        (0..4u64, 1..7u64).prop_map(|(expected, value)| OpKind::Cas { expected, value }),
    ]
}

/// An answer that fits the request's kind, from small ranges.
fn any_output(kind: OpKind) -> BoxedStrategy<Output> {
    match kind {
        OpKind::Get => prop_oneof![
            (1..4u64, 1..5u64).prop_map(|(value, version)| Output::Found { value, version }),
            Just(Output::NotFound),
        ]
        .boxed(),
        OpKind::Put { .. } => (1..5u64)
            .prop_map(|version| Output::Written { version })
            .boxed(),
        OpKind::Cas { .. } => prop_oneof![
            (1..5u64).prop_map(|version| Output::Written { version }),
            proptest::option::of(0..5u64).prop_map(|current| Output::Mismatch { current }),
        ]
        .boxed(),
    }
}

fn any_operation() -> impl Strategy<Value = Operation> {
    (any_kind(), 0..20u64, 0..10u64, 0..10u32)
        .prop_flat_map(|(kind, call, length, fate)| {
            (Just((kind, call, length, fate)), any_output(kind))
        })
        .prop_map(|((kind, call, length, fate), output)| Operation {
            client: call,
            key: 1,
            call,
            kind,
            outcome: match fate {
                0 => Outcome::Failed { at: call + length },
                1 | 2 => Outcome::Unknown,
                _ => Outcome::Ok {
                    at: call + length,
                    output,
                },
            },
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

    #[test]
    fn the_checker_agrees_with_brute_force(history in proptest::collection::vec(any_operation(), 1..8)) {
        let expected = if oracle(&history) { Verdict::Linearizable } else { Verdict::NotLinearizable };
        let result = check(&history, &CheckOptions::default());
        prop_assert_eq!(result.verdict, expected, "{}", result);
    }
}
