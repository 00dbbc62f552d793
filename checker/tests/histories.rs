//! Hand-written histories, each a small story: the linearizable ones must
//! pass, and the broken ones must fail with a report that names the key and
//! the operation that could not be placed. Times are in milliseconds.

use harmonydb_checker::{
    check, CheckOptions, OpKind, Operation, Outcome, Output, Reason, Verdict, Violation,
};

const MS: u64 = 1_000_000;

/// A completed operation on key 1.
fn done(client: u64, call_ms: u64, ret_ms: u64, kind: OpKind, output: Output) -> Operation {
    Operation {
        client,
        key: 1,
        call: call_ms * MS,
        kind,
        outcome: Outcome::Ok {
            at: ret_ms * MS,
            output,
        },
    }
}

fn get(client: u64, call_ms: u64, ret_ms: u64, value: u64, version: u64) -> Operation {
    done(
        client,
        call_ms,
        ret_ms,
        OpKind::Get,
        Output::Found { value, version },
    )
}

fn absent(client: u64, call_ms: u64, ret_ms: u64) -> Operation {
    done(client, call_ms, ret_ms, OpKind::Get, Output::NotFound)
}

fn put(client: u64, call_ms: u64, ret_ms: u64, value: u64, version: u64) -> Operation {
    done(
        client,
        call_ms,
        ret_ms,
        OpKind::Put { value },
        Output::Written { version },
    )
}

fn cas(
    client: u64,
    call_ms: u64,
    ret_ms: u64,
    expected: u64,
    value: u64,
    output: Output,
) -> Operation {
    done(
        client,
        call_ms,
        ret_ms,
        OpKind::Cas { expected, value },
        output,
    )
}

fn unknown(mut operation: Operation) -> Operation {
    operation.outcome = Outcome::Unknown;
    operation
}

fn failed(mut operation: Operation) -> Operation {
    operation.outcome = Outcome::Failed {
        at: operation.completed_at().unwrap_or(operation.call),
    };
    operation
}

fn on_key(key: u64, mut operation: Operation) -> Operation {
    operation.key = key;
    operation
}

fn assert_linearizable(history: &[Operation]) {
    let result = check(history, &CheckOptions::default());
    assert_eq!(
        result.verdict,
        Verdict::Linearizable,
        "{result}\n{}",
        result
            .violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Checks that `history` fails on key 1 with `blocking` as the operation that
/// could not be placed, and that the report says so; returns the violation.
fn assert_violation(history: &[Operation], blocking: &Operation) -> Violation {
    let result = check(history, &CheckOptions::default());
    assert_eq!(result.verdict, Verdict::NotLinearizable, "{result}");
    assert!(
        result.to_string().starts_with("NOT linearizable: key 1;"),
        "{result}"
    );
    assert_eq!(result.violations.len(), 1, "{result}");
    let violation = result.violations[0].clone();
    let text = violation.to_string();
    println!("{text}");
    assert_eq!(violation.key, 1);
    assert!(text.starts_with("key 1: not linearizable"), "{text}");
    assert_eq!(violation.blocking.operation, *blocking, "{text}");
    assert!(
        text.contains(&format!("cannot be linearized:\n    {blocking}")),
        "{text}"
    );
    violation
}

#[test]
fn a_sequential_history_is_linearizable() {
    assert_linearizable(&[
        absent(1, 0, 1),
        put(1, 2, 3, 10, 1),
        get(2, 4, 5, 10, 1),
        cas(1, 6, 7, 1, 11, Output::Written { version: 2 }),
        get(2, 8, 9, 11, 2),
    ]);
}

#[test]
fn concurrent_puts_are_ordered_by_what_the_reads_saw() {
    // Put 1 is called first, but the versions and the reads say put 2 went
    // first: the search has to try the other order.
    assert_linearizable(&[
        put(1, 0, 10, 1, 7),
        put(2, 1, 10, 2, 4),
        get(3, 2, 9, 2, 4),
        get(4, 11, 12, 1, 7),
    ]);
}

#[test]
fn a_chain_of_compare_and_sets_is_linearizable() {
    assert_linearizable(&[
        cas(1, 0, 2, 0, 10, Output::Written { version: 3 }),
        cas(2, 1, 2, 0, 20, Output::Mismatch { current: Some(3) }),
        cas(1, 3, 6, 3, 11, Output::Written { version: 8 }),
        cas(2, 4, 9, 3, 21, Output::Mismatch { current: Some(8) }),
        cas(3, 5, 9, 7, 31, Output::Mismatch { current: None }),
        cas(1, 7, 8, 8, 12, Output::Written { version: 9 }),
        get(3, 10, 11, 12, 9),
    ]);
}

#[test]
fn an_unknown_put_that_a_later_read_observes_took_effect() {
    assert_linearizable(&[
        put(1, 0, 1, 10, 1),
        unknown(put(2, 2, 3, 20, 0)),
        get(3, 10, 11, 20, 4),
        get(3, 12, 13, 20, 4),
    ]);
}

#[test]
fn an_unknown_put_never_observed_may_never_have_happened() {
    assert_linearizable(&[
        unknown(put(1, 0, 1, 20, 0)),
        absent(2, 10, 11),
        put(2, 12, 13, 30, 2),
        get(3, 14, 15, 30, 2),
    ]);
}

#[test]
fn an_unknown_compare_and_set_must_have_succeeded_when_its_value_is_read() {
    assert_linearizable(&[
        put(1, 0, 1, 10, 3),
        unknown(cas(2, 2, 3, 3, 20, Output::NotFound)),
        get(3, 10, 11, 20, 7),
        cas(3, 12, 13, 7, 30, Output::Written { version: 8 }),
    ]);
}

#[test]
fn failed_operations_are_ignored_even_when_they_could_not_have_happened() {
    // Each failed write, had it happened, would contradict a read after it.
    assert_linearizable(&[
        failed(put(1, 0, 1, 10, 1)),
        absent(2, 2, 3),
        put(1, 4, 5, 20, 2),
        failed(cas(3, 6, 7, 2, 30, Output::Written { version: 3 })),
        failed(get(3, 8, 9, 99, 99)),
        get(2, 10, 11, 20, 2),
    ]);
}

#[test]
fn keys_are_checked_independently() {
    // Mixed into one register these would fail: key 2 is absent after key 1
    // was written, and key 2's version is below key 1's.
    assert_linearizable(&[
        put(1, 0, 10, 10, 5),
        on_key(2, absent(2, 11, 12)),
        get(3, 13, 14, 10, 5),
        on_key(2, put(2, 15, 16, 20, 3)),
        on_key(2, get(1, 17, 18, 20, 3)),
    ]);
}

#[test]
fn versions_may_skip_positions_of_the_shared_log() {
    assert_linearizable(&[
        put(1, 0, 1, 10, 3),
        put(2, 2, 3, 20, 10),
        cas(1, 4, 5, 10, 30, Output::Written { version: 25 }),
        get(2, 6, 7, 30, 25),
    ]);
}

#[test]
fn operations_that_touch_are_concurrent() {
    // The read is called the instant the put returns: it may still go first.
    assert_linearizable(&[put(1, 0, 10, 10, 1), absent(2, 10, 20)]);
}

#[test]
fn a_stale_read_after_a_newer_put_completed_is_caught() {
    let stale = get(3, 6, 7, 10, 1);
    let violation = assert_violation(
        &[
            put(1, 0, 1, 10, 1),
            put(2, 2, 3, 20, 2),
            unknown(put(4, 5, 6, 30, 0)),
            stale.clone(),
        ],
        &stale,
    );
    // Once the newer put is in place, the read needs an older version.
    assert_eq!(violation.blocking.reason, Reason::Doomed);
    assert_eq!(violation.linearized, 2);
    let text = violation.to_string();
    assert!(
        text.contains("state after that prefix: value 20 at version 2"),
        "{text}"
    );
    assert!(
        text.contains("(illegal in this state and in any later one)"),
        "{text}"
    );
    // The unknown put is concurrent with the read, and no help.
    assert_eq!(violation.concurrent.len(), 1, "{text}");
    assert!(
        text.contains("put 30 -> unknown   (legal, but leads to a dead end)"),
        "{text}"
    );
}

#[test]
fn a_lost_write_is_caught() {
    // The second put was acknowledged, but later reads still see the first.
    let lost = get(3, 6, 7, 10, 1);
    assert_violation(
        &[
            put(1, 0, 1, 10, 1),
            put(2, 2, 5, 20, 2),
            get(3, 3, 4, 10, 1),
            lost.clone(),
            cas(3, 8, 9, 1, 30, Output::Written { version: 3 }),
        ],
        &lost,
    );
}

#[test]
fn a_read_of_a_value_nobody_wrote_is_caught() {
    let invented = get(2, 2, 3, 77, 1);
    assert_violation(&[put(1, 0, 1, 10, 1), invented.clone()], &invented);
}

#[test]
fn a_read_of_an_unknown_put_called_after_the_read_returned_is_caught() {
    let early = get(1, 0, 5, 9, 4);
    assert_violation(&[early.clone(), unknown(put(2, 6, 7, 9, 0))], &early);
}

#[test]
fn a_version_going_backwards_is_caught() {
    let backwards = put(2, 4, 5, 20, 3);
    assert_violation(
        &[put(1, 0, 1, 10, 5), get(2, 2, 3, 10, 5), backwards.clone()],
        &backwards,
    );
}

#[test]
fn a_compare_and_set_succeeding_with_the_wrong_expected_version_is_caught() {
    let wrong = cas(2, 2, 3, 4, 20, Output::Written { version: 6 });
    assert_violation(&[put(1, 0, 1, 10, 5), wrong.clone()], &wrong);
}

#[test]
fn a_mismatch_reporting_a_version_a_completed_put_replaced_is_caught() {
    let contradiction = cas(2, 4, 5, 3, 20, Output::Mismatch { current: Some(4) });
    assert_violation(
        &[
            put(1, 0, 1, 10, 4),
            put(1, 2, 3, 11, 5),
            contradiction.clone(),
        ],
        &contradiction,
    );
}

#[test]
fn two_puts_with_the_same_version_are_caught() {
    let duplicate = put(2, 2, 3, 20, 5);
    assert_violation(&[put(1, 0, 1, 10, 5), duplicate.clone()], &duplicate);
    // Concurrent, so either could go first; neither order works. The search
    // gets furthest placing the first: then the second cannot follow.
    let second = put(2, 1, 11, 20, 5);
    let violation = assert_violation(&[put(1, 0, 10, 10, 5), second.clone()], &second);
    assert_eq!(violation.blocking.reason, Reason::Doomed);
}

#[test]
fn not_found_after_a_completed_put_is_caught() {
    let missing = absent(2, 2, 3);
    assert_violation(&[put(1, 0, 1, 10, 1), missing.clone()], &missing);
}
