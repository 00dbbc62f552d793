//! The `WalWriter` actor: one per node, on an arbiter of its own because its
//! syncs block the thread.
//!
//! Group commit: an `Append` is written into the mapped segment at once, but
//! its answer waits. The first append of a batch schedules a `Flush` with
//! `notify`, and actix runs notified items only after the mailbox is empty,
//! so the flush sees every append that was waiting: one sync, then every
//! waiter is answered. While a sync blocks, new appends pile up in the
//! mailbox and become the next batch.
//!
//! Out of space: an append that needs a new segment the file system can't
//! give waits inside the writer (nothing of it is lost: the records not
//! written yet are kept, and answered once written), the disk monitor is
//! told (writes are refused at admission meanwhile; the reserve file is
//! given up so the retry may succeed at once), and it is tried again every
//! `BLOCKED_RETRY_INTERVAL` until space comes back.
//!
//! A failed write or sync is another matter: the kernel may have dropped
//! the pages of the unsynced range, so a later sync that succeeds proves
//! nothing. The writer refuses everything after it, none of that range is
//! acknowledged, and the node restarts (crash-only), recovering from what
//! is on disk.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{error, info};

use super::format::RecordKind;
use super::log::{StoredRecord, Wal};
use super::WalError;
use crate::disk::DiskMonitor;
use crate::observe::{Envelope, Handling};

/// How often a WAL waiting for space tries its segment again.
const BLOCKED_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// Unsynced bytes after which an append syncs at once instead of waiting for
/// the mailbox to drain, so a flood of appends can't grow a batch without bound.
const BATCH_SIZE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Mailbox bound of the writer.
pub const WAL_MAILBOX_CAPACITY: usize = 1024;

/// When appended records are synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync before answering an append (with group commit). Survives power loss.
    Always,
    /// Answer after the write; sync on a timer. A crash of the machine loses at
    /// most this interval; a crash of the process loses nothing.
    Interval(Duration),
    /// Never sync except at shutdown; the OS writes back when it likes.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let Some(ms) = text.strip_prefix("interval:") else {
                    return Err(format!(
                        "invalid fsync policy {text:?}: expected always, never or interval:<ms>"
                    ));
                };
                match ms.parse::<u64>() {
                    Ok(ms) if ms > 0 => Ok(FsyncPolicy::Interval(Duration::from_millis(ms))),
                    _ => Err(format!(
                        "invalid fsync interval {ms:?}: expected a whole number of milliseconds above 0"
                    )),
                }
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Interval(every) => write!(f, "interval:{}", every.as_millis()),
            FsyncPolicy::Never => write!(f, "never"),
        }
    }
}

/// One record to append.
#[derive(Clone, Debug)]
pub struct WalEntry {
    /// Its log index, as its kind requires (see `RecordKind::sequence`).
    pub index: u64,
    /// What the record is: a log entry, a hard state, a truncation.
    pub kind: RecordKind,
    /// The bytes to store.
    pub payload: Vec<u8>,
}

/// Appends entries; answers with the index of the last one once they are as
/// durable as the fsync policy promises.
#[derive(Debug)]
pub struct Append {
    /// Entries in index order.
    pub entries: Vec<WalEntry>,
    /// Mailbox accounting, and the span of the traced write these entries
    /// carry (if any): the append and the sync that makes it durable join
    /// that write's trace.
    pub envelope: Envelope,
}

impl Append {
    /// Entries appended on behalf of the current span.
    pub fn new(entries: Vec<WalEntry>) -> Append {
        Append::with_span(entries, tracing::Span::current())
    }

    /// Entries appended on behalf of `span`.
    pub fn with_span(entries: Vec<WalEntry>, span: tracing::Span) -> Append {
        Append {
            entries,
            envelope: Envelope::with_span("WalWriter", "Append", span),
        }
    }
}

impl Message for Append {
    type Result = Result<u64, WalError>;
}

/// Syncs everything appended so far, whatever the policy; answers with the last index.
#[derive(Debug)]
pub struct Sync;

impl Message for Sync {
    type Result = Result<u64, WalError>;
}

/// Deletes segments whose records are all below `index` (log compaction).
/// Only for indexes the state machine has checkpointed: recovery replays
/// from the first index still in the WAL.
#[derive(Debug)]
pub struct DeleteBelow {
    /// Records below this index may go.
    pub index: u64,
}

impl Message for DeleteBelow {
    type Result = Result<usize, WalError>;
}

/// Reads entry records back (entries a follower needs that the Raft core
/// no longer holds in memory); see `Wal::read_entries`.
#[derive(Debug)]
pub struct ReadEntries {
    /// First index to read.
    pub from: u64,
    /// Last index to read; every index up to it must be committed.
    pub to: u64,
    /// Most records to read.
    pub count_max: usize,
    /// About the most payload bytes to read (at least one record).
    pub size_max_bytes: usize,
}

impl Message for ReadEntries {
    type Result = Result<Vec<StoredRecord>, WalError>;
}

/// Asks for counters, for tests and benchmarks.
#[derive(Debug)]
pub struct GetStats;

/// What the writer has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Syncs performed.
    pub syncs: u64,
    /// Time spent in those syncs, in microseconds.
    pub sync_time_total_us: u64,
    /// Records appended.
    pub records: u64,
    /// Index of the last record.
    pub last_index: u64,
}

impl Message for GetStats {
    type Result = WalStats;
}

/// Internal: try again the append that waits for space.
struct RetryBlocked;

impl Message for RetryBlocked {
    type Result = ();
}

/// An append waiting for space: the records not written yet, and who
/// waits for them.
struct Blocked {
    entries: Vec<WalEntry>,
    replies: Vec<oneshot::Sender<Result<u64, WalError>>>,
    span: tracing::Span,
}

/// Faults a test can inject into the WAL writer (`POST /admin/fault`).
#[derive(Debug, Default)]
pub struct WalFaults {
    /// Syncs still to fail, counted down as they fail.
    pub sync_failures: AtomicU32,
    /// At its next sync, the writer loses what it wrote since the last one
    /// and ends the process, as a power cut would (see `cut_power`).
    pub power_cut: AtomicBool,
    /// Milliseconds every sync waits before it starts: a slow disk.
    pub sync_delay_ms: AtomicU64,
}

/// How long the writer holds still after an injected power cut before the
/// process ends.
const POWER_CUT_LINGER: std::time::Duration = std::time::Duration::from_millis(300);

/// Called once when the WAL fails for good (a write or sync error).
pub type FailureHook = Box<dyn Fn(&WalError) + Send>;

/// Internal: flush the current batch after the mailbox drained.
struct Flush;

impl Message for Flush {
    type Result = ();
}

/// Owns the node's WAL and serializes every write to it.
pub struct WalWriter {
    wal: Wal,
    policy: FsyncPolicy,
    waiting: Vec<(u64, oneshot::Sender<Result<u64, WalError>>)>,
    waiting_records: usize,
    /// The first traced append waiting for the next sync: the sync's span
    /// goes under it.
    waiting_span: Option<tracing::Span>,
    flush_scheduled: bool,
    failure: Option<WalError>,
    stats: WalStats,
    /// An append waiting for space, and the ones that came after it.
    blocked: Option<Blocked>,
    disk: Option<DiskMonitor>,
    /// Faults to inject on purpose (for tests).
    faults: Arc<WalFaults>,
    /// Index of the last record a sync made durable.
    synced_index: u64,
    on_failure: Option<FailureHook>,
}

impl WalWriter {
    /// Wraps an opened (recovered) WAL.
    pub fn new(wal: Wal, policy: FsyncPolicy) -> Self {
        let last_index = wal.last_index();
        metrics::gauge!("harmonydb_wal_segments").set(wal.segment_count() as f64);
        WalWriter {
            wal,
            policy,
            waiting: Vec::new(),
            waiting_records: 0,
            waiting_span: None,
            flush_scheduled: false,
            failure: None,
            stats: WalStats {
                last_index,
                ..WalStats::default()
            },
            blocked: None,
            disk: None,
            faults: Arc::new(WalFaults::default()),
            synced_index: last_index,
            on_failure: None,
        }
    }

    /// Reports to `disk` when it waits for space, and takes its reserve.
    pub fn with_disk(mut self, disk: DiskMonitor) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Injects the faults `faults` asks for (for tests: `POST /admin/fault`
    /// with `wal_sync_failures` or `power_cut`).
    pub fn with_faults(mut self, faults: Arc<WalFaults>) -> Self {
        self.faults = faults;
        self
    }

    /// Calls `hook` once if the WAL fails for good, so the node can
    /// restart (crash-only).
    pub fn on_failure(mut self, hook: FailureHook) -> Self {
        self.on_failure = Some(hook);
        self
    }

    /// Starts the writer on an arbiter of its own with a bounded mailbox.
    pub fn start_on(self, arbiter: &ArbiterHandle) -> Addr<WalWriter> {
        WalWriter::start_in_arbiter(arbiter, move |ctx: &mut Context<WalWriter>| {
            ctx.set_mailbox_capacity(WAL_MAILBOX_CAPACITY);
            self
        })
    }

    /// Appends `entries` in order. Out of space, it stops before the entry
    /// that needed the new segment and says how many it wrote.
    fn append_entries(&mut self, entries: &[WalEntry]) -> Result<u64, (usize, WalError)> {
        if let Some(failure) = &self.failure {
            return Err((0, failure.clone()));
        }
        let mut bytes_written = 0usize;
        let mut written = 0;
        let mut outcome = Ok(());
        for entry in entries {
            match self.wal.append(entry.index, entry.kind, &entry.payload) {
                Ok(size) => {
                    bytes_written += size;
                    written += 1;
                }
                Err(error @ WalError::NoSpace { .. }) => {
                    outcome = Err(error);
                    break;
                }
                Err(error) => {
                    self.fail(&error);
                    outcome = Err(error);
                    break;
                }
            }
        }
        self.stats.records += written as u64;
        self.stats.last_index = self.wal.last_index();
        metrics::counter!("harmonydb_wal_write_bytes_total").increment(bytes_written as u64);
        metrics::gauge!("harmonydb_wal_segments").set(self.wal.segment_count() as f64);
        outcome
            .map(|()| self.wal.last_index())
            .map_err(|e| (written, e))
    }

    /// Waits for space with `entries` (not written yet) and `reply`: tells
    /// the disk monitor, which gives up the reserve, and schedules a retry
    /// (at once if the reserve was freed).
    fn block(
        &mut self,
        entries: Vec<WalEntry>,
        reply: oneshot::Sender<Result<u64, WalError>>,
        needed_bytes: u64,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        if let Some(blocked) = &mut self.blocked {
            blocked.entries.extend(entries);
            blocked.replies.push(reply);
            return;
        }
        self.blocked = Some(Blocked {
            entries,
            replies: vec![reply],
            span,
        });
        metrics::gauge!("harmonydb_wal_blocked").set(1.0);
        let freed = self
            .disk
            .as_ref()
            .is_some_and(|disk| disk.wal_blocked_on(needed_bytes));
        if freed {
            ctx.notify(RetryBlocked);
        } else {
            ctx.notify_later(RetryBlocked, BLOCKED_RETRY_INTERVAL);
        }
    }

    /// Answers (or queues for the next sync) an append whose records are
    /// all written, up to `last_index`.
    fn written(
        &mut self,
        reply: oneshot::Sender<Result<u64, WalError>>,
        last_index: u64,
        records: usize,
        span: &tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        if self.policy != FsyncPolicy::Always {
            let _ = reply.send(Ok(last_index));
            return;
        }
        self.waiting.push((last_index, reply));
        self.waiting_records += records;
        if !span.is_disabled() && self.waiting_span.is_none() {
            self.waiting_span = Some(span.clone());
        }
        if self.wal.unsynced_bytes() >= BATCH_SIZE_MAX_BYTES {
            self.flush();
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    fn sync_now(&mut self) -> Result<(), WalError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.wal.unsynced_bytes() == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let delay_ms = self.faults.sync_delay_ms.load(Ordering::Relaxed);
        if delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        }
        // After the slow disk's delay: the power goes while a sync is under
        // way, with whatever the node did meanwhile on the strength of it.
        if self.faults.power_cut.load(Ordering::Relaxed) {
            self.cut_power();
        }
        let injected = self
            .faults
            .sync_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let synced = if injected {
            Err(WalError::Io {
                action: "sync WAL segment (injected fault)",
                path: std::path::PathBuf::from("wal"),
                source: Arc::new(std::io::Error::from_raw_os_error(libc::EIO)),
            })
        } else {
            self.wal.sync()
        };
        if let Err(error) = synced {
            self.fail(&error);
            return Err(error);
        }
        self.synced_index = self.wal.last_index();
        let elapsed = started.elapsed();
        metrics::histogram!("harmonydb_wal_fsync_duration_seconds").record(elapsed.as_secs_f64());
        self.stats.syncs += 1;
        self.stats.sync_time_total_us += elapsed.as_micros() as u64;
        Ok(())
    }

    /// The injected power cut: the records written since the last sync are
    /// lost, as the disk would lose them, and the process ends. Before it
    /// does, the writer holds still for `POWER_CUT_LINGER` while the rest of
    /// the node goes on: messages already handed to the network leave, as
    /// they would from a machine whose disk (not network) was the slow part.
    /// Whatever those messages promised about this write is now false, and
    /// a correct node never promised anything about it.
    fn cut_power(&mut self) -> ! {
        let lost = self.wal.drop_unsynced();
        error!(
            lost_bytes = lost,
            synced_index = self.synced_index,
            "power cut (injected fault): the records written since the last sync are lost; exiting"
        );
        std::thread::sleep(POWER_CUT_LINGER);
        std::process::abort();
    }

    /// Syncs once and answers the whole batch.
    fn flush(&mut self) {
        self.flush_scheduled = false;
        if self.waiting.is_empty() {
            return;
        }
        let span = match self.waiting_span.take() {
            Some(parent) => {
                tracing::info_span!(target: "harmonydb_trace", parent: &parent, "WalWriter sync", records = self.waiting_records)
            }
            None => tracing::Span::none(),
        };
        let result = span.in_scope(|| self.sync_now());
        metrics::histogram!("harmonydb_wal_batch_size_records").record(self.waiting_records as f64);
        self.waiting_records = 0;
        for (last_index, reply) in self.waiting.drain(..) {
            // A waiter that went away (its caller timed out) needs no answer.
            let _ = reply.send(result.clone().map(|()| last_index));
        }
    }

    /// After a failed write or sync nothing later can be trusted to be
    /// durable (a failed fsync may have dropped dirty pages), so the writer
    /// refuses everything from here on and the node must restart to recover.
    fn fail(&mut self, error: &WalError) {
        error!(
            %error,
            unsynced_from = self.synced_index + 1,
            unsynced_to = self.wal.last_index(),
            "WAL failed; the unsynced records were never acknowledged, and nothing more is written until the node restarts"
        );
        metrics::counter!("harmonydb_wal_failures_total").increment(1);
        let failure = WalError::Failed(error.to_string());
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(failure.clone()));
        }
        if let Some(blocked) = self.blocked.take() {
            for reply in blocked.replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
        self.failure = Some(failure);
        if let Some(hook) = self.on_failure.take() {
            hook(error);
        }
    }
}

impl Actor for WalWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let FsyncPolicy::Interval(every) = self.policy {
            ctx.run_interval(every, |writer, _| {
                // A failure is already logged and poisons the writer; nothing else to do here.
                let _ = writer.sync_now();
            });
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.flush();
        match self.sync_now() {
            Ok(()) => info!(last_index = self.wal.last_index(), "WAL synced at shutdown"),
            Err(error) => error!(%error, "WAL sync at shutdown failed"),
        }
    }
}

impl Handler<Append> for WalWriter {
    type Result = ResponseFuture<Result<u64, WalError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) -> Self::Result {
        let Append { entries, envelope } = msg;
        let handling = envelope.open();
        let _entered = handling.span().enter();
        let (reply, answer) = oneshot::channel();
        let answer = Box::pin(async move { answer.await.unwrap_or(Err(WalError::Stopped)) });
        if self.blocked.is_some() {
            // Behind the append that waits for space, in order.
            self.block(entries, reply, 0, handling.span().clone(), ctx);
            return answer;
        }
        match self.append_entries(&entries) {
            Ok(last_index) => {
                self.written(reply, last_index, entries.len(), handling.span(), ctx);
            }
            Err((written, WalError::NoSpace { needed_bytes, .. })) => {
                let rest = entries[written..].to_vec();
                self.block(rest, reply, needed_bytes, handling.span().clone(), ctx);
            }
            Err((_, error)) => {
                let _ = reply.send(Err(error));
            }
        }
        answer
    }
}

impl Handler<RetryBlocked> for WalWriter {
    type Result = ();

    fn handle(&mut self, _: RetryBlocked, ctx: &mut Self::Context) {
        let _handling = Handling::start("WalWriter", "RetryBlocked");
        let Some(mut blocked) = self.blocked.take() else {
            return;
        };
        match self.append_entries(&blocked.entries) {
            Ok(last_index) => {
                info!(
                    records = blocked.entries.len(),
                    "the WAL found space; appends go on"
                );
                metrics::gauge!("harmonydb_wal_blocked").set(0.0);
                if let Some(disk) = &self.disk {
                    disk.wal_unblocked();
                }
                let records = blocked.entries.len();
                for reply in blocked.replies {
                    self.written(reply, last_index, records, &blocked.span, ctx);
                }
            }
            Err((written, WalError::NoSpace { .. })) => {
                blocked.entries.drain(..written);
                self.blocked = Some(blocked);
                if let Some(disk) = &self.disk {
                    disk.refresh();
                }
                ctx.notify_later(RetryBlocked, BLOCKED_RETRY_INTERVAL);
            }
            Err((_, error)) => {
                for reply in blocked.replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

impl Handler<Flush> for WalWriter {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Self::Context) {
        let _handling = Handling::start("WalWriter", "Flush");
        self.flush();
    }
}

impl Handler<Sync> for WalWriter {
    type Result = Result<u64, WalError>;

    fn handle(&mut self, _: Sync, _: &mut Self::Context) -> Self::Result {
        let _handling = Handling::start("WalWriter", "Sync");
        self.flush();
        self.sync_now()?;
        Ok(self.wal.last_index())
    }
}

impl Handler<DeleteBelow> for WalWriter {
    type Result = Result<usize, WalError>;

    fn handle(&mut self, msg: DeleteBelow, ctx: &mut Self::Context) -> Self::Result {
        let _handling = Handling::start("WalWriter", "DeleteBelow");
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        // Whatever the fsync policy, the records that replace the deleted
        // segments (a snapshot record) must be durable before they go.
        self.wal.sync()?;
        let deleted = self.wal.delete_below(msg.index)?;
        metrics::gauge!("harmonydb_wal_segments").set(self.wal.segment_count() as f64);
        // Space just came free: an append waiting for it may go now.
        if deleted > 0 && self.blocked.is_some() {
            ctx.notify(RetryBlocked);
        }
        Ok(deleted)
    }
}

impl Handler<ReadEntries> for WalWriter {
    type Result = Result<Vec<StoredRecord>, WalError>;

    fn handle(&mut self, msg: ReadEntries, _: &mut Self::Context) -> Self::Result {
        let _handling = Handling::start("WalWriter", "ReadEntries");
        // Read between batches, on this thread: the records are in the
        // mapped segments, and no write moves while this runs.
        let records = self
            .wal
            .read_entries(msg.from, msg.to, msg.count_max, msg.size_max_bytes)?;
        metrics::counter!("harmonydb_wal_read_records_total").increment(records.len() as u64);
        Ok(records)
    }
}

impl Handler<GetStats> for WalWriter {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        let _handling = Handling::start("WalWriter", "GetStats");
        MessageResult(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalOptions;

    #[test]
    fn fsync_policy_parses_and_prints() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval:25".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(25)))
        );
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_millis(25)).to_string(),
            "interval:25"
        );
        for bad in [
            "",
            "sometimes",
            "interval:",
            "interval:0",
            "interval:-3",
            "interval:1.5",
        ] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad:?} was accepted");
        }
    }

    fn entry(index: u64) -> WalEntry {
        WalEntry {
            index,
            kind: RecordKind::Entry,
            payload: format!("record {index}").into_bytes(),
        }
    }

    #[actix_rt::test]
    async fn concurrent_appends_share_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        let writer = WalWriter::create(|ctx| {
            ctx.set_mailbox_capacity(WAL_MAILBOX_CAPACITY);
            WalWriter::new(wal, FsyncPolicy::Always)
        });
        // 64 appends sent before any is awaited all land in one mailbox drain.
        let pending: Vec<_> = (1..=64)
            .map(|i| writer.send(Append::new(vec![entry(i)])))
            .collect();
        for (i, answer) in pending.into_iter().enumerate() {
            let last = answer.await.expect("mailbox").expect("append");
            assert_eq!(last, i as u64 + 1);
        }
        let stats = writer.send(GetStats).await.expect("stats");
        assert_eq!(stats.records, 64);
        assert!(
            stats.syncs >= 1 && stats.syncs < 8,
            "64 queued appends took {} syncs",
            stats.syncs
        );

        // What was acknowledged is there after reopening.
        drop(writer);
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        let (wal, report) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        assert_eq!(report.last_index, 64);
        assert_eq!(report.cut, None);
        let mut seen = Vec::new();
        wal.read_from::<()>(1, |record| {
            seen.push(record.payload.to_vec());
            Ok(())
        })
        .expect("read");
        assert_eq!(seen.len(), 64);
        assert_eq!(seen[63], b"record 64".to_vec());
    }

    #[actix_rt::test]
    async fn interval_and_never_answer_without_waiting_for_a_sync() {
        for policy in [
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_secs(3600)),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
            let writer = WalWriter::new(wal, policy).start();
            let last = writer.send(Append::new(vec![entry(1), entry(2)])).await;
            assert_eq!(last.expect("mailbox").expect("append"), 2);
            assert_eq!(writer.send(GetStats).await.expect("stats").syncs, 0);
            assert_eq!(writer.send(Sync).await.expect("mailbox").expect("sync"), 2);
            assert_eq!(writer.send(GetStats).await.expect("stats").syncs, 1);
        }
    }
}
