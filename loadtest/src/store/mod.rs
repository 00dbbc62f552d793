//! What a load test talks to: a store with YCSB's operations. Each kind of
//! target (HarmonyDB over TCP or HTTP, etcd over gRPC) implements `Store`;
//! the runner measures them all the same way.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod http;
pub mod tcp;

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// Why one operation failed. Failures are counted by `kind()`, not raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// A read (or the read of a read-modify-write) found no such record.
    NotFound,
    /// A compare-and-set found another version: someone wrote in between.
    VersionMismatch,
    /// No answer within the operation timeout.
    Timeout,
    /// The connection failed.
    Connection(String),
    /// The store answered with an error; the first field is its code.
    Server(String, String),
    /// The answer could not be understood.
    Protocol(String),
}

impl OpError {
    /// A short stable name for counting errors by kind.
    pub fn kind(&self) -> String {
        match self {
            OpError::NotFound => "not_found".into(),
            OpError::VersionMismatch => "version_mismatch".into(),
            OpError::Timeout => "timeout".into(),
            OpError::Connection(_) => "connection".into(),
            OpError::Server(code, _) => format!("server:{code}"),
            OpError::Protocol(_) => "protocol".into(),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::NotFound => f.write_str("not found"),
            OpError::VersionMismatch => f.write_str("version mismatch"),
            OpError::Timeout => f.write_str("timeout"),
            OpError::Connection(reason) => write!(f, "connection: {reason}"),
            OpError::Server(code, message) => write!(f, "{code}: {message}"),
            OpError::Protocol(reason) => write!(f, "unexpected answer: {reason}"),
        }
    }
}

/// A record's version as the store reports it (HarmonyDB's version, etcd's
/// mod_revision), which a compare-and-set compares against.
pub type Version = u64;

/// The operations a workload issues. `client` is the issuing client's
/// index, so a target can spread clients over its connections.
pub trait Store: Send + Sync + 'static {
    /// Reads a record; its version.
    fn read(
        &self,
        client: usize,
        key: Vec<u8>,
    ) -> impl Future<Output = Result<Version, OpError>> + Send;

    /// Writes a record (insert and update alike: a KV store has no partial update).
    fn write(
        &self,
        client: usize,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), OpError>> + Send;

    /// Reads up to `count` records in key order from `start`; how many came.
    fn scan(
        &self,
        client: usize,
        start: Vec<u8>,
        count: u32,
    ) -> impl Future<Output = Result<usize, OpError>> + Send;

    /// Writes a record only if its version is still `expected`.
    fn compare_and_set(
        &self,
        client: usize,
        key: Vec<u8>,
        expected: Version,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), OpError>> + Send;
}

/// Which system, and how it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// HarmonyDB's MessagePack TCP protocol (pipelined client).
    HarmonydbTcp,
    /// HarmonyDB's HTTP JSON API.
    HarmonydbHttp,
    /// etcd's gRPC API.
    Etcd,
}

impl TargetKind {
    /// Where the target listens unless told.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            TargetKind::HarmonydbTcp => "127.0.0.1:7070",
            TargetKind::HarmonydbHttp => "127.0.0.1:8080",
            TargetKind::Etcd => "127.0.0.1:2379",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::HarmonydbTcp => "harmonydb-tcp",
            TargetKind::HarmonydbHttp => "harmonydb-http",
            TargetKind::Etcd => "etcd",
        })
    }
}

impl FromStr for TargetKind {
    type Err = LoadError;

    fn from_str(text: &str) -> Result<TargetKind, LoadError> {
        match text.to_ascii_lowercase().as_str() {
            "harmonydb-tcp" | "tcp" => Ok(TargetKind::HarmonydbTcp),
            "harmonydb-http" | "http" => Ok(TargetKind::HarmonydbHttp),
            "etcd" => Ok(TargetKind::Etcd),
            _ => Err(LoadError::Parameter(format!(
                "unknown target {text:?}: expected harmonydb-tcp, harmonydb-http or etcd"
            ))),
        }
    }
}
