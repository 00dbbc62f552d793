//! Why a load test could not run (as opposed to an operation failing,
//! which is counted, not raised: see `store::OpError`).

/// A load test that cannot start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A parameter is missing, malformed or out of range.
    #[error("bad parameter: {0}")]
    Parameter(String),
    /// The target could not be reached or did not answer a probe.
    #[error("cannot reach {target} at {endpoint}: {reason}")]
    Unreachable {
        /// The target's kind.
        target: String,
        /// The address tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// A result file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A result file is not a result of this tool's schema.
    #[error("{path} is not a load test result: {reason}")]
    Schema {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}
