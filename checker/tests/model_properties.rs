//! Properties of the store's model that the search's prunings rely on,
//! checked on random states and operation sequences: a doomed answer stays
//! illegal whatever happens next (so a state where one is pending can be
//! abandoned), and a covering state allows everything the covered one does
//! (so a branch whose state is covered by a sibling's can be skipped).

use harmonydb_checker::{KvModel, Model, OpKind, Output, RegState, Version};
use proptest::prelude::*;
use Version::{After, Exact};

/// Operations over a few values and versions, so they often interact.
fn any_step() -> impl Strategy<Value = (OpKind, Option<Output>)> {
    let kind = prop_oneof![
        Just(OpKind::Get),
        (1..4u64).prop_map(|value| OpKind::Put { value }),
        (0..8u64, 1..4u64).prop_map(|(expected, value)| OpKind::Cas { expected, value }),
    ];
    let output = prop_oneof![
        (1..4u64, 0..8u64).prop_map(|(value, version)| Some(Output::Found { value, version })),
        Just(Some(Output::NotFound)),
        (0..8u64).prop_map(|version| Some(Output::Written { version })),
        proptest::option::of(0..8u64).prop_map(|current| Some(Output::Mismatch { current })),
        Just(None),
    ];
    (kind, output)
}

/// The state after the legal ones among `steps`.
fn reach(steps: &[(OpKind, Option<Output>)]) -> RegState {
    steps.iter().fold(KvModel::init(), |s, (kind, output)| {
        KvModel::step(&s, kind, output.as_ref()).unwrap_or(s)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn a_doomed_answer_stays_illegal_whatever_happens_next(
        prefix in proptest::collection::vec(any_step(), 0..12),
        (kind, output) in any_step(),
        suffix in proptest::collection::vec(any_step(), 0..12),
    ) {
        let Some(output) = output else { return Ok(()) };
        let mut s = reach(&prefix);
        prop_assume!(KvModel::doomed(&s, &kind, &output));
        for (next_kind, next_output) in &suffix {
            prop_assert_eq!(KvModel::step(&s, &kind, Some(&output)), None, "{:?}", s);
            s = KvModel::step(&s, next_kind, next_output.as_ref()).unwrap_or(s);
        }
        prop_assert_eq!(KvModel::step(&s, &kind, Some(&output)), None, "{:?}", s);
    }

    #[test]
    fn a_covering_state_allows_everything_the_covered_one_does(
        prefix in proptest::collection::vec(any_step(), 0..12),
        widen in 0..4u64,
        suffix in proptest::collection::vec(any_step(), 0..12),
    ) {
        let mut narrow = reach(&prefix);
        // A wider state: the same value, a lower bound on the version.
        let floor = match narrow.version {
            Exact(n) | After(n) => n.checked_sub(widen),
        };
        let Some(floor) = floor.filter(|_| narrow.value.is_some()) else { return Ok(()) };
        let mut wide = RegState { value: narrow.value, version: After(floor) };
        prop_assume!(KvModel::covers(&wide, &narrow));
        for (kind, output) in &suffix {
            let Some(next_narrow) = KvModel::step(&narrow, kind, output.as_ref()) else {
                continue;
            };
            let next_wide = KvModel::step(&wide, kind, output.as_ref());
            if output.is_some() {
                prop_assert!(next_wide.is_some(), "{:?} refused from {:?}", kind, wide);
            }
            // An unknown operation the wide side may also leave out.
            wide = next_wide
                .filter(|w| KvModel::covers(w, &next_narrow))
                .unwrap_or(wide);
            narrow = next_narrow;
            prop_assert!(KvModel::covers(&wide, &narrow), "{:?} vs {:?}", wide, narrow);
        }
    }
}
