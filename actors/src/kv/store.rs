//! The `KvStore` actor: owns the state machine, gives each write the next log
//! index, hands writes to the `WalWriter`, and applies them in index order
//! once the WAL says they are durable; only then is the caller answered.
//! Reads see applied state only, so nothing a reader sees can vanish in a crash.
//!
//! Writes that arrive while the mailbox drains go to the WAL as one `Append`
//! (the same notify-after-drain trick as the writer's group commit).

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, info};

use super::state::{KvCommand, KvState};
use super::{KvError, KvLimits, KvOp, KvReply};
use crate::wal::{Append, ReadError, RecordKind, Wal, WalEntry, WalError, WalWriter};

/// Mailbox bound of the store; a request that finds it full is refused as overloaded.
pub const KV_MAILBOX_CAPACITY: usize = 8192;

/// Where the answer to a request goes.
type Reply = oneshot::Sender<Result<KvReply, KvError>>;

/// A request and the channel its answer goes to.
pub struct KvRequest {
    /// What to do.
    pub op: KvOp,
    /// Where to answer.
    pub reply: Reply,
}

impl Message for KvRequest {
    type Result = ();
}

/// Stop taking requests and answer once every accepted write is applied.
pub struct BeginShutdown;

impl Message for BeginShutdown {
    type Result = ();
}

/// Internal: send the writes gathered during this mailbox drain to the WAL.
struct SendAppends;

impl Message for SendAppends {
    type Result = ();
}

/// A write sent to the WAL and not yet applied.
struct PendingWrite {
    index: u64,
    command: KvCommand,
    reply: Reply,
}

/// Owns the KV state; the only writer of it.
pub struct KvStore {
    state: KvState,
    wal: Addr<WalWriter>,
    next_index: u64,
    pending: VecDeque<PendingWrite>,
    unsent: Vec<WalEntry>,
    appends_scheduled: bool,
    durable_index: u64,
    failure: Option<String>,
    closing: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

/// Rebuilds the state by applying every command in the WAL.
pub fn recover_state(wal: &Wal) -> Result<KvState, KvError> {
    let mut state = KvState::new();
    let result = wal.read_from(wal.first_index(), |record| {
        debug_assert_eq!(record.kind, RecordKind::Entry);
        let command =
            KvCommand::decode(record.payload).map_err(|reason| KvError::CorruptEntry {
                index: record.index,
                reason,
            })?;
        // A refused compare-and-set is part of the history too; its error is not a replay error.
        let _ = state.apply(record.index, command);
        Ok(())
    });
    match result {
        Ok(()) => Ok(state),
        Err(ReadError::Visitor(error)) => Err(error),
        Err(ReadError::Wal(error)) => Err(KvError::Storage(error.to_string())),
    }
}

impl KvStore {
    /// A store over a recovered state whose next write gets index `next_index`.
    pub fn new(state: KvState, next_index: u64, wal: Addr<WalWriter>) -> Self {
        assert!(
            next_index > state.applied_index(),
            "next index {next_index} is not past the applied index {}",
            state.applied_index()
        );
        metrics::gauge!("harmonydb_kv_keys").set(state.len() as f64);
        KvStore {
            durable_index: next_index - 1,
            state,
            wal,
            next_index,
            pending: VecDeque::new(),
            unsent: Vec::new(),
            appends_scheduled: false,
            failure: None,
            closing: false,
            shutdown_waiters: Vec::new(),
        }
    }

    /// Starts the store on `arbiter` with a bounded mailbox.
    pub fn start_on(self, arbiter: &ArbiterHandle) -> Addr<KvStore> {
        KvStore::start_in_arbiter(arbiter, move |ctx: &mut Context<KvStore>| {
            ctx.set_mailbox_capacity(KV_MAILBOX_CAPACITY);
            self
        })
    }

    fn submit_write(&mut self, command: KvCommand, reply: Reply, ctx: &mut Context<Self>) {
        let index = self.next_index;
        self.next_index += 1;
        self.unsent.push(WalEntry {
            index,
            kind: RecordKind::Entry,
            payload: command.encode(),
        });
        self.pending.push_back(PendingWrite {
            index,
            command,
            reply,
        });
        if !self.appends_scheduled {
            self.appends_scheduled = true;
            ctx.notify(SendAppends);
        }
    }

    fn on_appended(&mut self, batch: (u64, u64), result: Result<u64, WalError>) {
        match result {
            Ok(last_index) => {
                self.durable_index = self.durable_index.max(last_index);
                self.apply_durable();
            }
            Err(error) => {
                let reason = error.to_string();
                self.failure.get_or_insert(reason.clone());
                // Writes of this batch may or may not be on disk; their callers hear "unknown".
                while let Some(write) = self.pending.front() {
                    if write.index > batch.1 {
                        break;
                    }
                    let write = self.pending.pop_front().expect("front exists");
                    let _ = write.reply.send(Err(KvError::Storage(reason.clone())));
                }
                debug!(first = batch.0, last = batch.1, "failed WAL batch answered");
            }
        }
        self.maybe_finish_shutdown();
    }

    fn apply_durable(&mut self) {
        while let Some(write) = self.pending.front() {
            if write.index > self.durable_index {
                break;
            }
            let write = self.pending.pop_front().expect("front exists");
            let outcome = self.state.apply(write.index, write.command);
            let _ = write.reply.send(outcome.map(KvReply::Written));
        }
        metrics::gauge!("harmonydb_kv_pending_writes").set(self.pending.len() as f64);
        metrics::gauge!("harmonydb_kv_keys").set(self.state.len() as f64);
    }

    fn maybe_finish_shutdown(&mut self) {
        if self.closing && self.pending.is_empty() {
            for waiter in self.shutdown_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for KvStore {
    type Context = Context<Self>;
}

impl Handler<KvRequest> for KvStore {
    type Result = ();

    fn handle(&mut self, request: KvRequest, ctx: &mut Self::Context) {
        let KvRequest { op, reply } = request;
        if self.closing {
            let _ = reply.send(Err(KvError::ShuttingDown));
            return;
        }
        match op {
            KvOp::Get { key } => {
                let answer = self
                    .state
                    .get(&key)
                    .cloned()
                    .map(KvReply::Value)
                    .ok_or(KvError::NotFound);
                let _ = reply.send(answer);
            }
            KvOp::Scan(range) => {
                let _ = reply.send(Ok(KvReply::Page(self.state.scan(&range))));
            }
            KvOp::Health => {
                let answer = match &self.failure {
                    Some(reason) => Err(KvError::Storage(reason.clone())),
                    None => Ok(KvReply::Healthy {
                        applied_index: self.state.applied_index(),
                    }),
                };
                let _ = reply.send(answer);
            }
            KvOp::Put { .. } | KvOp::Delete { .. } if self.failure.is_some() => {
                let reason = self.failure.clone().unwrap_or_default();
                let _ = reply.send(Err(KvError::Storage(reason)));
            }
            KvOp::Put {
                key,
                value,
                expected_version,
            } => self.submit_write(
                KvCommand::Put {
                    key,
                    value,
                    expected_version,
                },
                reply,
                ctx,
            ),
            KvOp::Delete {
                key,
                expected_version,
            } => self.submit_write(
                KvCommand::Delete {
                    key,
                    expected_version,
                },
                reply,
                ctx,
            ),
        }
    }
}

impl Handler<SendAppends> for KvStore {
    type Result = ();

    fn handle(&mut self, _: SendAppends, ctx: &mut Self::Context) {
        self.appends_scheduled = false;
        if self.unsent.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.unsent);
        metrics::gauge!("harmonydb_kv_pending_writes").set(self.pending.len() as f64);
        let batch = (entries[0].index, entries[entries.len() - 1].index);
        metrics::histogram!("harmonydb_kv_append_batch_size_records").record(entries.len() as f64);
        // `send` waits for room in the writer's bounded mailbox: back-pressure, not loss.
        let append = self.wal.send(Append { entries });
        ctx.spawn(append.into_actor(self).map(move |result, store, _| {
            let result = result.unwrap_or(Err(WalError::Stopped));
            store.on_appended(batch, result);
        }));
    }
}

impl Handler<BeginShutdown> for KvStore {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: BeginShutdown, _: &mut Self::Context) -> Self::Result {
        info!(
            pending_writes = self.pending.len(),
            "KV store stops taking requests"
        );
        self.closing = true;
        let (done, wait) = oneshot::channel();
        self.shutdown_waiters.push(done);
        self.maybe_finish_shutdown();
        Box::pin(async move {
            let _ = wait.await;
        })
    }
}

/// How front doors call the store: checks limits, refuses at once when too
/// many requests are already in the store, and awaits the answer.
///
/// The bound is a semaphore rather than the mailbox's capacity because
/// actix gives every clone of an `Addr` its own extra slot, so a mailbox bound
/// alone does not bound a server that clones the address per request.
#[derive(Clone)]
pub struct KvHandle {
    addr: Addr<KvStore>,
    limits: KvLimits,
    inflight: Arc<Semaphore>,
}

impl KvHandle {
    /// A handle to a running store.
    pub fn new(addr: Addr<KvStore>, limits: KvLimits) -> Self {
        let inflight = Arc::new(Semaphore::new(limits.inflight_requests_max));
        KvHandle {
            addr,
            limits,
            inflight,
        }
    }

    /// The limits this handle enforces.
    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// Runs one operation.
    pub async fn call(&self, op: KvOp) -> Result<KvReply, KvError> {
        self.limits.check(&op)?;
        let Ok(_permit) = self.inflight.try_acquire() else {
            metrics::counter!("harmonydb_kv_overloaded_total").increment(1);
            return Err(KvError::Overloaded);
        };
        let (reply, answer) = oneshot::channel();
        self.addr
            .try_send(KvRequest { op, reply })
            .map_err(|error| match error {
                SendError::Full(_) => {
                    metrics::counter!("harmonydb_kv_overloaded_total").increment(1);
                    KvError::Overloaded
                }
                SendError::Closed(_) => KvError::ShuttingDown,
            })?;
        answer.await.map_err(|_| KvError::ShuttingDown)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{ScanRange, Versioned, WriteOutcome};
    use crate::wal::{FsyncPolicy, WalOptions};

    fn start(dir: &std::path::Path) -> (KvHandle, Addr<KvStore>, Addr<WalWriter>) {
        let (wal, _) = Wal::open(dir, WalOptions::default()).expect("open WAL");
        let state = recover_state(&wal).expect("recover");
        let next_index = wal.last_index() + 1;
        let writer = WalWriter::new(wal, FsyncPolicy::Always).start();
        let store = KvStore::new(state, next_index, writer.clone()).start();
        (
            KvHandle::new(store.clone(), KvLimits::default()),
            store,
            writer,
        )
    }

    fn put(key: &str, value: &str, expected_version: Option<u64>) -> KvOp {
        KvOp::Put {
            key: key.into(),
            value: value.into(),
            expected_version,
        }
    }

    #[actix_rt::test]
    async fn writes_are_answered_after_apply_and_survive_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kv, store, writer) = start(dir.path());
        // Sent together, so they are applied in the order the store received them.
        let answers = concurrently(
            &kv,
            vec![
                put("a", "1", None),
                put("b", "2", Some(0)),
                put("a", "3", Some(1)),
                put("a", "4", Some(1)),
            ],
        )
        .await;
        assert_eq!(
            answers[0],
            Ok(KvReply::Written(WriteOutcome::Written { version: 1 }))
        );
        assert_eq!(
            answers[1],
            Ok(KvReply::Written(WriteOutcome::Written { version: 2 }))
        );
        assert_eq!(
            answers[2],
            Ok(KvReply::Written(WriteOutcome::Written { version: 3 }))
        );
        assert_eq!(
            answers[3],
            Err(KvError::VersionMismatch {
                expected: 1,
                current: 3
            })
        );
        assert_eq!(
            kv.call(KvOp::Get { key: "a".into() }).await,
            Ok(KvReply::Value(Versioned {
                value: b"3".to_vec(),
                version: 3
            }))
        );
        store.send(BeginShutdown).await.expect("shutdown");
        assert_eq!(
            kv.call(KvOp::Get { key: "a".into() }).await,
            Err(KvError::ShuttingDown)
        );
        drop((store, writer, kv));
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;

        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        let state = recover_state(&wal).expect("recover");
        assert_eq!(state.applied_index(), 4);
        assert_eq!(state.get(b"a").map(|v| v.version), Some(3));
        assert_eq!(
            state.get(b"b").map(|v| v.value.clone()),
            Some(b"2".to_vec())
        );
        let page = state.scan(&ScanRange {
            limit: 10,
            ..ScanRange::default()
        });
        assert_eq!(page.items.len(), 2);
    }

    #[actix_rt::test]
    async fn limits_are_checked_before_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kv, _, _) = start(dir.path());
        let limits = KvLimits {
            value_size_max_bytes: 4,
            ..KvLimits::default()
        };
        let small = KvHandle::new(kv.addr.clone(), limits);
        assert!(matches!(
            small.call(put("k", "12345", None)).await,
            Err(KvError::ValueTooLarge { .. })
        ));
        assert!(matches!(
            small.call(put("", "1", None)).await,
            Err(KvError::InvalidKey(_))
        ));
        let long_key = "k".repeat(crate::kv::KEY_SIZE_MAX_BYTES + 1);
        assert!(matches!(
            small
                .call(KvOp::Get {
                    key: long_key.into()
                })
                .await,
            Err(KvError::InvalidKey(_))
        ));
        let scan = KvOp::Scan(ScanRange {
            limit: 0,
            ..ScanRange::default()
        });
        assert!(matches!(
            small.call(scan).await,
            Err(KvError::InvalidScan(_))
        ));
    }

    #[actix_rt::test]
    async fn requests_over_the_inflight_bound_are_refused_as_overloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, store, _) = start(dir.path());
        let limits = KvLimits {
            inflight_requests_max: 2,
            ..KvLimits::default()
        };
        let kv = KvHandle::new(store, limits);
        // The store runs on this same thread, so it can't drain its mailbox
        // until all eight callers have tried to send.
        let ops = (0..8).map(|i| put(&format!("k{i}"), "v", None)).collect();
        let results = concurrently(&kv, ops).await;
        let refused = results
            .iter()
            .filter(|r| **r == Err(KvError::Overloaded))
            .count();
        assert_eq!(refused, 6, "{results:?}");
        // Once the first two are answered there is room again.
        assert!(kv.call(KvOp::Get { key: "k0".into() }).await.is_ok());
    }

    async fn concurrently(kv: &KvHandle, ops: Vec<KvOp>) -> Vec<Result<KvReply, KvError>> {
        let tasks: Vec<_> = ops
            .into_iter()
            .map(|op| {
                let kv = kv.clone();
                actix_rt::spawn(async move { kv.call(op).await })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.expect("task"));
        }
        out
    }
}
