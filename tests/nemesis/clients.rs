//! The workload: concurrent clients doing get, put and compare-and-set on a
//! few keys, each bound to one node, recording every operation with its
//! invocation and completion time and its outcome: ok, failed (certainly
//! not carried out) or unknown (it may or may not have happened).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harmonydb_checker::{Nanos, OpKind, Operation, Outcome, Output};
use harmonydb_protocol::{Client, ClientError, Consistency, ErrorCode, Request, Response};

use crate::common::Rng;

/// What the clients do.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Concurrent clients, spread over the nodes.
    pub clients: u64,
    /// Keys in use at once. Every `key_epoch` the clients move on to fresh
    /// keys, so each key's history stays short and the checker's search
    /// stays small however long the run (Jepsen's independent keys).
    pub keys: u64,
    /// How long a set of keys is in use.
    pub key_epoch: Duration,
    /// Longest pause between one client's operations (drawn uniformly).
    pub think_max: Duration,
    /// How long a client waits for an answer before the outcome is unknown.
    pub op_timeout: Duration,
}

/// One operation as recorded, with where it went and what error it got.
#[derive(Clone, Debug)]
pub struct Record {
    /// The operation for the checker.
    pub op: Operation,
    /// The node the client talks to.
    pub node: u64,
    /// The error code or client failure, when there was one.
    pub error: Option<String>,
    /// Whether the error is one no fault explains (a bug in the node or the harness).
    pub unexpected: bool,
}

impl Record {
    /// Whether the operation completed and wrote.
    pub fn wrote(&self) -> bool {
        matches!(
            self.op.outcome,
            Outcome::Ok {
                output: Output::Written { .. },
                ..
            }
        )
    }

    /// When it completed, if it did.
    pub fn completed_at(&self) -> Option<Nanos> {
        match self.op.outcome {
            Outcome::Ok { at, .. } | Outcome::Failed { at } => Some(at),
            Outcome::Unknown => None,
        }
    }
}

/// Writes one client can make before its values would run into the next
/// client's (about seven hours at the think time's pace).
const WRITES_PER_CLIENT_MAX: u64 = 1_000_000;

/// Extra pause after an operation that was refused.
const FAILURE_BACKOFF: Duration = Duration::from_millis(50);

/// The key's name on the wire.
pub fn key_name(key: u64) -> Vec<u8> {
    format!("k{key}").into_bytes()
}

/// Nanoseconds since `start`.
pub fn nanos_since(start: Instant) -> Nanos {
    Nanos::try_from(start.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
}

/// A value written by client `client` as its `seq`-th write: unique in the
/// run, and readable in reports (client 4's 17th write is 5000017).
fn unique_value(client: u64, seq: u64) -> u64 {
    (client + 1) * WRITES_PER_CLIENT_MAX + seq
}

/// A value read back; one the harness can't have written maps to `u64::MAX`,
/// which no write uses, so the checker flags it.
fn parse_value(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The nodes clients connect to, by id; the nemesis updates it as
/// membership changes.
pub type Targets = std::sync::Arc<std::sync::Mutex<Vec<(u64, SocketAddr)>>>;

/// One client's loop: operations on random keys until `until`, each
/// recorded with the node it went through. Each connection goes to the
/// member at the client's index (its id modulo the number of targets) when
/// it is made.
pub async fn run_client(
    client_id: u64,
    targets: Targets,
    workload: Workload,
    start: Instant,
    until: Instant,
    seed: u64,
) -> Vec<Record> {
    let mut rng = Rng::new(seed);
    let mut node = 0;
    let mut connection: Option<Client> = None;
    let mut records = Vec::new();
    let mut writes = 0u64;
    // The version this client last saw per key, for compare-and-set.
    let mut known_versions: HashMap<u64, u64> = HashMap::new();
    while Instant::now() < until {
        let key = key_epoch(start, workload) * workload.keys + rng.below(workload.keys);
        let roll = rng.below(100);
        let (kind, request) = if roll < 50 {
            // A quarter of reads use the leader lease; they must be just as linearizable.
            let consistency = (rng.below(4) == 0).then_some(Consistency::Lease);
            (
                OpKind::Get,
                Request::Get {
                    key: key_name(key),
                    consistency,
                },
            )
        } else {
            writes += 1;
            let value = unique_value(client_id, writes);
            let expected =
                (roll >= 75).then(|| known_versions.get(&key).copied().unwrap_or_default());
            let kind = match expected {
                Some(expected) => OpKind::Cas { expected, value },
                None => OpKind::Put { value },
            };
            let request = Request::Put {
                key: key_name(key),
                value: value.to_string().into_bytes(),
                expected_version: expected,
            };
            (kind, request)
        };
        let client = match &connection {
            Some(client) if !client.is_closed() => client.clone(),
            _ => match connect(
                {
                    // Each (re)connection goes to the client's share of the
                    // current members (membership changes replace nodes).
                    let targets = targets.lock().unwrap_or_else(|e| e.into_inner());
                    let (id, addr) = targets[(client_id % targets.len() as u64) as usize];
                    node = id;
                    addr
                },
                workload.op_timeout,
            )
            .await
            {
                Ok(client) => {
                    connection = Some(client.clone());
                    client
                }
                Err(error) => {
                    // Nothing was sent: the operation certainly did not happen.
                    let call = nanos_since(start);
                    records.push(Record {
                        op: Operation {
                            client: client_id,
                            key,
                            call,
                            kind,
                            outcome: Outcome::Failed {
                                at: nanos_since(start),
                            },
                        },
                        node,
                        error: Some(format!("connect: {error}")),
                        unexpected: false,
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let call = nanos_since(start);
        let answer = client.request_with(request, false).await;
        let at = nanos_since(start);
        let (outcome, error, unexpected) = classify(&kind, answer, at);
        if let Outcome::Ok { output, .. } = &outcome {
            match output {
                Output::Found { version, .. }
                | Output::Written { version }
                | Output::Mismatch {
                    current: Some(version),
                } => {
                    known_versions.insert(key, *version);
                }
                Output::NotFound => {
                    known_versions.insert(key, 0);
                }
                Output::Mismatch { current: None } => {}
            }
        }
        if matches!(outcome, Outcome::Unknown) || error.as_deref() == Some("removed") {
            // A stalled connection would make every next operation unknown
            // too; a removed node refuses everything from now on.
            connection = None;
        }
        records.push(Record {
            op: Operation {
                client: client_id,
                key,
                call,
                kind,
                outcome,
            },
            node,
            error,
            unexpected,
        });
        let think_max_us = u64::try_from(workload.think_max.as_micros()).unwrap_or(1);
        let mut think = Duration::from_micros(rng.below(think_max_us.max(1)));
        if matches!(
            records.last().map(|r| &r.op.outcome),
            Some(Outcome::Failed { .. })
        ) {
            // Back off after a refusal, as a real client would, instead of
            // filling the history with instant refusals from a cut-off node.
            think += FAILURE_BACKOFF;
        }
        tokio::time::sleep(think).await;
    }
    records
}

/// Which set of keys is in use now.
fn key_epoch(start: Instant, workload: Workload) -> u64 {
    let epoch_ms = workload.key_epoch.as_millis().max(1);
    u64::try_from(start.elapsed().as_millis() / epoch_ms).unwrap_or(u64::MAX / 2)
}

/// Every key the clients can have used in a run of `duration`.
pub fn keys_used(workload: Workload, duration: Duration) -> std::ops::Range<u64> {
    let epochs = duration.as_millis() / workload.key_epoch.as_millis().max(1) + 1;
    0..u64::try_from(epochs).unwrap_or(1) * workload.keys
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, String> {
    match tokio::time::timeout(timeout, Client::connect(addr)).await {
        Ok(Ok(client)) => Ok(client.with_timeout(timeout)),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

/// What an answer means for the history: the outcome, the error's name,
/// and whether that error is unexpected.
fn classify(
    kind: &OpKind,
    answer: Result<Response, ClientError>,
    at: Nanos,
) -> (Outcome, Option<String>, bool) {
    let is_write = !matches!(kind, OpKind::Get);
    let ok = |output| (Outcome::Ok { at, output }, None, false);
    match answer {
        Ok(Response::Value { value, version, .. }) if !is_write => ok(Output::Found {
            value: parse_value(&value),
            version,
        }),
        Ok(Response::Written { version, .. }) if is_write => ok(Output::Written { version }),
        Ok(other) => (
            Outcome::Unknown,
            Some(format!("answer that does not fit the request: {other:?}")),
            true,
        ),
        Err(ClientError::Server {
            code: ErrorCode::NotFound,
            ..
        }) if !is_write => ok(Output::NotFound),
        Err(ClientError::Server {
            code: ErrorCode::VersionMismatch,
            current_version,
            ..
        }) if matches!(kind, OpKind::Cas { .. }) => ok(Output::Mismatch {
            current: current_version,
        }),
        Err(ClientError::Server { code, .. }) => {
            let name = Some(code.as_str().to_string());
            match code {
                // Refused before anything was done.
                ErrorCode::NotLeader
                | ErrorCode::NoLeader
                | ErrorCode::Unavailable
                | ErrorCode::Removed
                | ErrorCode::Overloaded => (Outcome::Failed { at }, name, false),
                // A read that timed out constrains nothing; a write may have happened.
                ErrorCode::Timeout if !is_write => (Outcome::Failed { at }, name, false),
                ErrorCode::Timeout => (Outcome::Unknown, name, false),
                // Nothing the nemesis does should produce these (it never
                // stops a node gracefully, nor breaks its disk).
                _ => (
                    if is_write {
                        Outcome::Unknown
                    } else {
                        Outcome::Failed { at }
                    },
                    name,
                    true,
                ),
            }
        }
        Err(error @ (ClientError::Timeout(_) | ClientError::ConnectionLost(_))) => {
            let outcome = if is_write {
                Outcome::Unknown
            } else {
                Outcome::Failed { at }
            };
            (outcome, Some(error.to_string()), false)
        }
        Err(error @ ClientError::Connect { .. }) => {
            (Outcome::Failed { at }, Some(error.to_string()), false)
        }
        Err(error) => (
            if is_write {
                Outcome::Unknown
            } else {
                Outcome::Failed { at }
            },
            Some(error.to_string()),
            true,
        ),
    }
}
