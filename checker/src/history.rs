//! The history a fault test records: one [`Operation`] per client request, with
//! when it was called, what it asked for and what came back. These are the
//! checker's input types; the nemesis harness builds them and prints them, so
//! their `Display` forms are meant to be read by people.

use std::fmt;

/// Nanoseconds since the start of the test, from one monotonic clock.
pub type Nanos = u64;

/// One operation as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Who issued it (for the report).
    pub client: u64,
    /// The key it touched; keys are checked independently.
    pub key: u64,
    /// When it was invoked.
    pub call: Nanos,
    /// What it asked the store to do.
    pub kind: OpKind,
    /// What came back, if anything.
    pub outcome: Outcome,
}

/// What an operation asked the store to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// A linearizable read.
    Get,
    /// An unconditional write of a unique value id.
    Put {
        /// The value written; every write in a test writes a different one.
        value: u64,
    },
    /// A compare-and-set on the key's version; `expected` 0 means the key must be absent.
    Cas {
        /// The version the key must have for the write to happen.
        expected: u64,
        /// The value written if it does.
        value: u64,
    },
}

/// How an operation ended, as far as the client could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed with a definite answer at `at`.
    Ok {
        /// When the answer arrived.
        at: Nanos,
        /// The answer.
        output: Output,
    },
    /// Completed with an error that means it certainly did not happen (refused
    /// before being carried out). Such operations are removed before checking.
    Failed {
        /// When the error arrived.
        at: Nanos,
    },
    /// No answer, or one that leaves open whether it happened (timeout, lost
    /// connection): it may have taken effect at any time after `call`, or never,
    /// so it is checked with a return time of infinity.
    Unknown,
}

/// A definite answer from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A get found the key with this value at this version.
    Found {
        /// The value read.
        value: u64,
        /// The key's version when it was read.
        version: u64,
    },
    /// A get found the key absent.
    NotFound,
    /// A put or a successful compare-and-set gave the key this new version.
    Written {
        /// The key's version after the write.
        version: u64,
    },
    /// A compare-and-set was refused because the key's version was not the expected one.
    Mismatch {
        /// The version the store reported, if it did (0 = absent).
        current: Option<u64>,
    },
}

impl Operation {
    /// When the client got its answer, or None if it never learned the outcome.
    pub fn completed_at(&self) -> Option<Nanos> {
        match self.outcome {
            Outcome::Ok { at, .. } | Outcome::Failed { at } => Some(at),
            Outcome::Unknown => None,
        }
    }
}

/// A time printed as seconds with microsecond precision, e.g. `12.345678s`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seconds(pub Nanos);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Integer arithmetic: exact for any u64, unlike going through f64.
        write!(
            f,
            "{}.{:06}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000 / 1_000
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}  [{}, ", self.client, Seconds(self.call))?;
        match self.completed_at() {
            Some(at) => write!(f, "{}]", Seconds(at))?,
            None => write!(f, "∞]")?,
        }
        write!(f, "  {} -> ", self.kind)?;
        match &self.outcome {
            Outcome::Ok { output, .. } => write!(f, "{output}"),
            Outcome::Failed { .. } => write!(f, "failed"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Get => write!(f, "get"),
            OpKind::Put { value } => write!(f, "put {value}"),
            OpKind::Cas { expected: 0, value } => write!(f, "cas {value} if absent"),
            OpKind::Cas { expected, value } => write!(f, "cas {value} if version {expected}"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Found { value, version } => write!(f, "{value} at version {version}"),
            Output::NotFound => write!(f, "not found"),
            Output::Written { version } => write!(f, "written at version {version}"),
            Output::Mismatch { current: Some(0) } => write!(f, "refused: key absent"),
            Output::Mismatch {
                current: Some(version),
            } => write!(f, "refused: version is {version}"),
            Output::Mismatch { current: None } => write!(f, "refused: version not reported"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(kind: OpKind, outcome: Outcome) -> Operation {
        Operation {
            client: 2,
            key: 3,
            call: 12_100_000_000,
            kind,
            outcome,
        }
    }

    #[test]
    fn seconds_print_six_decimals_truncated() {
        assert_eq!(Seconds(0).to_string(), "0.000000s");
        assert_eq!(Seconds(12_345_678_999).to_string(), "12.345678s");
        assert_eq!(Seconds(u64::MAX).to_string(), "18446744073.709551s");
    }

    #[test]
    fn operations_print_client_interval_request_and_answer() {
        let put = operation(
            OpKind::Put { value: 1234 },
            Outcome::Ok {
                at: 12_130_000_000,
                output: Output::Written { version: 5678 },
            },
        );
        assert_eq!(
            put.to_string(),
            "client 2  [12.100000s, 12.130000s]  put 1234 -> written at version 5678"
        );
        let get = operation(
            OpKind::Get,
            Outcome::Ok {
                at: 12_346_000_000,
                output: Output::Found {
                    value: 1200,
                    version: 5600,
                },
            },
        );
        assert!(
            get.to_string().ends_with("get -> 1200 at version 5600"),
            "{get}"
        );
        let cas = operation(
            OpKind::Cas {
                expected: 0,
                value: 7,
            },
            Outcome::Unknown,
        );
        assert_eq!(
            cas.to_string(),
            "client 2  [12.100000s, ∞]  cas 7 if absent -> unknown"
        );
        let refused = operation(
            OpKind::Cas {
                expected: 4,
                value: 7,
            },
            Outcome::Ok {
                at: 12_200_000_000,
                output: Output::Mismatch { current: Some(9) },
            },
        );
        assert!(refused
            .to_string()
            .ends_with("cas 7 if version 4 -> refused: version is 9"));
        let failed = operation(OpKind::Get, Outcome::Failed { at: 12_200_000_000 });
        assert!(
            failed.to_string().ends_with("12.200000s]  get -> failed"),
            "{failed}"
        );
    }

    #[test]
    fn completed_at_is_none_only_for_unknown_outcomes() {
        let ok = Outcome::Ok {
            at: 5,
            output: Output::NotFound,
        };
        assert_eq!(operation(OpKind::Get, ok).completed_at(), Some(5));
        assert_eq!(
            operation(OpKind::Get, Outcome::Failed { at: 6 }).completed_at(),
            Some(6)
        );
        assert_eq!(
            operation(OpKind::Get, Outcome::Unknown).completed_at(),
            None
        );
    }
}
