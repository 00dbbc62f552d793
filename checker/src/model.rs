//! The sequential specification the search checks histories against: a
//! [`Model`] says which operation outputs are legal in which state. The search
//! is generic over it; [`KvModel`] is the one HarmonyDB needs, a single key of
//! the replicated store with versions taken from the global log.

use std::fmt;
use std::hash::Hash;

use crate::history::{OpKind, Output};

/// A sequential specification of one partition (one key) of the store.
pub trait Model {
    /// What the model remembers between operations.
    type State: Clone + Eq + Hash + fmt::Debug;

    /// The state before any operation.
    fn init() -> Self::State;

    /// The state after `kind` answered `output` in `state` (`None` output: the
    /// outcome is unknown and the operation is taken to have happened), or None
    /// if that answer is impossible in that state.
    fn step(state: &Self::State, kind: &OpKind, output: Option<&Output>) -> Option<Self::State>;

    /// Whether `wider` allows everything `narrower` does: every definite
    /// operation legal from `narrower` is legal from `wider` and the results
    /// again cover each other; for an unknown operation, placing it or leaving
    /// it out on the wider side keeps the cover. The search uses it to skip
    /// placements of unknown operations that can never help.
    fn covers(wider: &Self::State, narrower: &Self::State) -> bool;

    /// Whether an operation with a definite `output` can never be placed any
    /// more: illegal in `state` and in every state reachable from it. Since
    /// every definite operation must be placed, the search abandons such a
    /// state at once. False is always safe; true must be certain.
    fn doomed(state: &Self::State, kind: &OpKind, output: &Output) -> bool;
}

/// What the model knows about a key's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// Exactly this version.
    Exact(u64),
    /// Unknown, but strictly greater than this (after a write with an unknown outcome).
    After(u64),
}

impl Version {
    /// Whether the key's version could be `n`.
    fn could_be(self, n: u64) -> bool {
        match self {
            Version::Exact(m) => m == n,
            Version::After(m) => n > m,
        }
    }

    /// Whether the key's version is certainly `n`.
    fn is_certainly(self, n: u64) -> bool {
        self == Version::Exact(n)
    }

    /// Whether a write could give the key version `n`, i.e. some possible
    /// current version is below it. For `After(m)` the current version x
    /// satisfies m < x < n, so n must exceed m + 1.
    fn could_precede(self, n: u64) -> bool {
        match self {
            Version::Exact(m) => n > m,
            Version::After(m) => m.checked_add(1).is_some_and(|floor| n > floor),
        }
    }

    /// The bound a write with an unknown version leaves: its version is greater
    /// than every version the key could have had before it, so greater than m
    /// after `Exact(m)` and greater than m + 1 after `After(m)`.
    fn floor_after_write(self) -> u64 {
        match self {
            Version::Exact(m) => m,
            Version::After(m) => m.saturating_add(1),
        }
    }

    /// The least version the key could have. It never decreases: every step
    /// keeps the version or moves it to one the key could have, or higher.
    fn least(self) -> u64 {
        match self {
            Version::Exact(m) => m,
            Version::After(m) => m.saturating_add(1),
        }
    }

    /// Whether every version `other` allows is one `self` allows.
    fn contains(self, other: Version) -> bool {
        match (self, other) {
            (Version::Exact(m), Version::Exact(n)) => m == n,
            (Version::Exact(_), Version::After(_)) => false,
            (Version::After(m), Version::Exact(n)) => n > m,
            (Version::After(m), Version::After(n)) => m <= n,
        }
    }
}

/// The model's knowledge of one key: its value (None = absent) and version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegState {
    /// The key's value, None while absent.
    pub value: Option<u64>,
    /// What is known of the key's version.
    pub version: Version,
}

impl RegState {
    /// Whether the key could be at version `n`; version 0 also means absent.
    fn could_have_version(&self, n: u64) -> bool {
        self.version.could_be(n) && (n != 0 || self.value.is_none())
    }

    /// The state after writing `value` at the definite version `version`.
    fn written(value: u64, version: u64) -> RegState {
        RegState {
            value: Some(value),
            version: Version::Exact(version),
        }
    }
}

/// One key of HarmonyDB's store: no deletes; every successful write gives the
/// key a version strictly greater than before, but not necessarily one more,
/// since versions are positions in a log shared by all keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = RegState;

    fn init() -> RegState {
        RegState {
            value: None,
            version: Version::Exact(0),
        }
    }

    fn step(s: &RegState, kind: &OpKind, output: Option<&Output>) -> Option<RegState> {
        match (*kind, output.copied()) {
            (OpKind::Get, Some(Output::Found { value, version })) => (s.value == Some(value)
                && s.could_have_version(version))
            .then(|| RegState::written(value, version)),
            (OpKind::Get, Some(Output::NotFound)) => s.value.is_none().then_some(*s),
            // A read that may not have happened constrains nothing; `check`
            // drops these before searching, this keeps the model total.
            (OpKind::Get, None) => Some(*s),
            (OpKind::Put { value }, Some(Output::Written { version })) => s
                .version
                .could_precede(version)
                .then(|| RegState::written(value, version)),
            (OpKind::Put { value }, None) => Some(RegState {
                value: Some(value),
                version: Version::After(s.version.floor_after_write()),
            }),
            (OpKind::Cas { expected, value }, Some(Output::Written { version })) => {
                (s.could_have_version(expected) && version > expected)
                    .then(|| RegState::written(value, version))
            }
            (OpKind::Cas { expected, .. }, Some(Output::Mismatch { current: Some(c) })) => {
                (c != expected && s.could_have_version(c)).then_some(RegState {
                    value: s.value,
                    version: Version::Exact(c),
                })
            }
            (OpKind::Cas { expected, .. }, Some(Output::Mismatch { current: None })) => {
                (!s.version.is_certainly(expected)).then_some(*s)
            }
            // Taking effect whenever it could is enough: the search can also
            // place the operation where it cannot, or leave it out entirely.
            (OpKind::Cas { expected, value }, None) => Some(if s.could_have_version(expected) {
                RegState {
                    value: Some(value),
                    version: Version::After(expected),
                }
            } else {
                *s
            }),
            // An answer of the wrong kind for the request (a get that wrote).
            _ => None,
        }
    }

    fn covers(wider: &RegState, narrower: &RegState) -> bool {
        wider.value == narrower.value && wider.version.contains(narrower.version)
    }

    /// The version only grows and a key once written never becomes absent
    /// again, so an answer that needs an older version, or absence, is lost.
    fn doomed(s: &RegState, kind: &OpKind, output: &Output) -> bool {
        let least = s.version.least();
        let written = s.value.is_some();
        match (*kind, *output) {
            // At the least version the value can no longer change.
            (OpKind::Get, Output::Found { value, version }) => {
                version < least || (version == least && s.value != Some(value))
            }
            (OpKind::Get, Output::NotFound) => written,
            // A put needs some current version below its new one.
            (OpKind::Put { .. }, Output::Written { version }) => version <= least,
            (OpKind::Cas { expected, .. }, Output::Written { version }) => {
                version <= expected || expected < least || (expected == 0 && written)
            }
            (OpKind::Cas { expected, .. }, Output::Mismatch { current: Some(c) }) => {
                c == expected || c < least || (c == 0 && written)
            }
            // Legal again as soon as the version moves past `expected`.
            (OpKind::Cas { .. }, Output::Mismatch { current: None }) => false,
            // An answer of the wrong kind for the request is never legal.
            _ => true,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Exact(n) => write!(f, "version {n}"),
            Version::After(n) => write!(f, "a version above {n}"),
        }
    }
}

impl fmt::Display for RegState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(value) => write!(f, "value {value} at {}", self.version),
            None => write!(f, "absent at {}", self.version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Version::{After, Exact};

    fn state(value: Option<u64>, version: Version) -> RegState {
        RegState { value, version }
    }

    fn step(s: RegState, kind: OpKind, output: Option<Output>) -> Option<RegState> {
        KvModel::step(&s, &kind, output.as_ref())
    }

    const PUT: OpKind = OpKind::Put { value: 9 };

    fn cas(expected: u64) -> OpKind {
        OpKind::Cas { expected, value: 9 }
    }

    fn found(value: u64, version: u64) -> Option<Output> {
        Some(Output::Found { value, version })
    }

    fn written(version: u64) -> Option<Output> {
        Some(Output::Written { version })
    }

    fn mismatch(current: Option<u64>) -> Option<Output> {
        Some(Output::Mismatch { current })
    }

    #[test]
    fn get_found_needs_the_value_and_a_possible_version() {
        let s = state(Some(4), Exact(7));
        assert_eq!(step(s, OpKind::Get, found(4, 7)), Some(s));
        assert_eq!(step(s, OpKind::Get, found(4, 8)), None);
        assert_eq!(step(s, OpKind::Get, found(5, 7)), None);
        let after = state(Some(4), After(7));
        assert_eq!(
            step(after, OpKind::Get, found(4, 8)),
            Some(state(Some(4), Exact(8)))
        );
        assert_eq!(step(after, OpKind::Get, found(4, 7)), None);
        assert_eq!(step(KvModel::init(), OpKind::Get, found(4, 0)), None);
    }

    #[test]
    fn get_not_found_needs_an_absent_key() {
        let init = KvModel::init();
        assert_eq!(step(init, OpKind::Get, Some(Output::NotFound)), Some(init));
        let s = state(Some(4), Exact(7));
        assert_eq!(step(s, OpKind::Get, Some(Output::NotFound)), None);
    }

    #[test]
    fn put_needs_a_version_above_any_possible_current_one() {
        let s = state(Some(4), Exact(7));
        assert_eq!(step(s, PUT, written(8)), Some(state(Some(9), Exact(8))));
        assert_eq!(step(s, PUT, written(20)), Some(state(Some(9), Exact(20))));
        assert_eq!(step(s, PUT, written(7)), None);
        let after = state(Some(4), After(7));
        // The unknown version x has 7 < x < n, so n = 8 is impossible.
        assert_eq!(step(after, PUT, written(8)), None);
        assert_eq!(step(after, PUT, written(9)), Some(state(Some(9), Exact(9))));
        assert_eq!(
            step(state(Some(4), After(u64::MAX)), PUT, written(u64::MAX)),
            None
        );
    }

    #[test]
    fn cas_writes_only_from_the_expected_version() {
        let s = state(Some(4), Exact(7));
        assert_eq!(
            step(s, cas(7), written(10)),
            Some(state(Some(9), Exact(10)))
        );
        assert_eq!(step(s, cas(6), written(10)), None);
        assert_eq!(
            step(s, cas(7), written(7)),
            None,
            "the new version must exceed the old"
        );
        let after = state(Some(4), After(7));
        assert_eq!(
            step(after, cas(8), written(12)),
            Some(state(Some(9), Exact(12)))
        );
        assert_eq!(step(after, cas(7), written(12)), None);
    }

    #[test]
    fn cas_expecting_zero_needs_an_absent_key() {
        let init = KvModel::init();
        assert_eq!(
            step(init, cas(0), written(3)),
            Some(state(Some(9), Exact(3)))
        );
        assert_eq!(step(state(Some(4), Exact(7)), cas(0), written(9)), None);
    }

    #[test]
    fn cas_mismatch_with_a_version_pins_the_version() {
        let s = state(Some(4), Exact(7));
        assert_eq!(step(s, cas(5), mismatch(Some(7))), Some(s));
        assert_eq!(step(s, cas(5), mismatch(Some(8))), None);
        assert_eq!(
            step(s, cas(7), mismatch(Some(7))),
            None,
            "current == expected"
        );
        let after = state(Some(4), After(7));
        assert_eq!(
            step(after, cas(5), mismatch(Some(8))),
            Some(state(Some(4), Exact(8)))
        );
        assert_eq!(step(after, cas(5), mismatch(Some(7))), None);
        let init = KvModel::init();
        assert_eq!(step(init, cas(3), mismatch(Some(0))), Some(init));
        assert_eq!(step(s, cas(3), mismatch(Some(0))), None);
    }

    #[test]
    fn cas_mismatch_without_a_version_needs_the_version_not_certainly_expected() {
        let s = state(Some(4), Exact(7));
        assert_eq!(step(s, cas(5), mismatch(None)), Some(s));
        assert_eq!(step(s, cas(7), mismatch(None)), None);
        let after = state(Some(4), After(7));
        assert_eq!(step(after, cas(8), mismatch(None)), Some(after));
        assert_eq!(step(KvModel::init(), cas(0), mismatch(None)), None);
    }

    #[test]
    fn unknown_writes_are_always_legal_and_leave_a_lower_bound() {
        let s = state(Some(4), Exact(7));
        assert_eq!(step(s, PUT, None), Some(state(Some(9), After(7))));
        let after = state(Some(4), After(7));
        assert_eq!(step(after, PUT, None), Some(state(Some(9), After(8))));
        assert_eq!(step(s, cas(7), None), Some(state(Some(9), After(7))));
        assert_eq!(step(s, cas(6), None), Some(s), "cannot match: no effect");
        assert_eq!(step(after, cas(10), None), Some(state(Some(9), After(10))));
        assert_eq!(step(after, cas(7), None), Some(after));
        let init = KvModel::init();
        assert_eq!(step(init, cas(0), None), Some(state(Some(9), After(0))));
    }

    #[test]
    fn answers_of_the_wrong_kind_are_illegal() {
        let s = state(Some(4), Exact(7));
        assert_eq!(step(s, OpKind::Get, written(8)), None);
        assert_eq!(step(s, OpKind::Get, mismatch(Some(7))), None);
        assert_eq!(step(s, PUT, found(4, 7)), None);
        assert_eq!(step(s, PUT, mismatch(None)), None);
        assert_eq!(step(s, cas(7), Some(Output::NotFound)), None);
    }

    #[test]
    fn covering_needs_the_same_value_and_a_wider_version() {
        let exact = state(Some(4), Exact(7));
        let after = state(Some(4), After(6));
        assert!(KvModel::covers(&exact, &exact));
        assert!(KvModel::covers(&after, &exact));
        assert!(!KvModel::covers(&exact, &after));
        assert!(KvModel::covers(&after, &state(Some(4), After(9))));
        assert!(!KvModel::covers(&state(Some(4), After(9)), &after));
        assert!(!KvModel::covers(&state(Some(5), After(0)), &exact));
        assert!(!KvModel::covers(&state(Some(4), After(7)), &exact));
    }

    fn doomed(s: RegState, kind: OpKind, output: Option<Output>) -> bool {
        let output = output.expect("doomed is asked about definite answers only");
        KvModel::doomed(&s, &kind, &output)
    }

    #[test]
    fn answers_needing_an_older_version_or_absence_are_doomed() {
        let s = state(Some(4), Exact(7));
        assert!(doomed(s, OpKind::Get, found(3, 6)));
        assert!(
            !doomed(s, OpKind::Get, found(3, 8)),
            "a later write may give it"
        );
        assert!(!doomed(s, OpKind::Get, found(4, 7)), "legal now");
        assert!(
            doomed(s, OpKind::Get, found(3, 7)),
            "version 7 holds 4 for good"
        );
        assert!(!doomed(state(Some(4), After(6)), OpKind::Get, found(3, 8)));
        assert!(doomed(s, OpKind::Get, Some(Output::NotFound)));
        assert!(!doomed(
            KvModel::init(),
            OpKind::Get,
            Some(Output::NotFound)
        ));
        assert!(doomed(s, PUT, written(7)));
        assert!(!doomed(s, PUT, written(8)));
        assert!(doomed(state(Some(4), After(7)), PUT, written(8)));
        assert!(doomed(s, cas(6), written(12)));
        assert!(!doomed(s, cas(9), written(12)));
        assert!(doomed(s, cas(9), written(9)), "never legal");
        assert!(doomed(s, cas(0), written(9)));
        assert!(doomed(s, cas(3), mismatch(Some(6))));
        assert!(!doomed(s, cas(3), mismatch(Some(9))));
        assert!(doomed(s, cas(9), mismatch(Some(9))), "never legal");
        assert!(!doomed(s, cas(7), mismatch(None)));
        assert!(doomed(s, OpKind::Get, written(8)), "wrong kind of answer");
    }

    #[test]
    fn states_print_value_and_version() {
        assert_eq!(state(Some(4), Exact(7)).to_string(), "value 4 at version 7");
        assert_eq!(
            state(Some(4), After(7)).to_string(),
            "value 4 at a version above 7"
        );
        assert_eq!(KvModel::init().to_string(), "absent at version 0");
    }
}
