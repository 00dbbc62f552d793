//! Runs a phase: `clients` tasks issuing operations against a `Store`,
//! each recording latencies in its own HdrHistogram, merged at the end.
//!
//! Closed loop: each client issues its next operation when the previous
//! one answers; latency is the operation's own time.
//!
//! Open loop (`rate_per_second`): operation `k` (over all clients) is
//! scheduled at `start + k / rate`, and client `i` issues operations
//! `i, i + clients, i + 2 * clients, ...` (wrk2's scheme). Latency is
//! measured from the *scheduled* start, so when the target stalls, the
//! operations that should have started during the stall carry the time
//! they waited, instead of vanishing from the record (coordinated
//! omission). A client that falls behind issues its late operations at
//! once, one after another, until it is back on schedule.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::error::LoadError;
use crate::generator::{
    record_key, record_value, InsertCounter, KeyChooser, Rng, ScrambledZipfian, Zipfian,
    ZIPFIAN_THETA,
};
use crate::report::{round_to, Figures, Latency, Report, SCHEMA_VERSION};
use crate::store::{OpError, Store, TargetKind};
use crate::workload::{Distribution, Params, Phase, Stop};

/// Highest latency the histograms hold (1 hour, in µs); longer ones saturate.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Open loop: how far past its scheduled time an operation may start
/// before it counts as late (tokio's timers wake in whole milliseconds).
const LATE_TOLERANCE: Duration = Duration::from_millis(1);

/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// The kinds of operation, as named in results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum OpKind {
    Read,
    Update,
    Insert,
    Scan,
    ReadModifyWrite,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "read_modify_write",
        }
    }
}

/// One operation type's counts and latencies, as one client saw them.
struct Recorder {
    histogram: Histogram<u64>,
    ok: u64,
    errors_by_kind: BTreeMap<String, u64>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            // Three significant digits over 1 µs .. 1 h: bounds known valid.
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            ok: 0,
            errors_by_kind: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, outcome: &Result<(), OpError>) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(us);
        match outcome {
            Ok(()) => self.ok += 1,
            Err(error) => *self.errors_by_kind.entry(error.kind()).or_default() += 1,
        }
    }

    fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.ok += other.ok;
        for (kind, count) in &other.errors_by_kind {
            *self.errors_by_kind.entry(kind.clone()).or_default() += count;
        }
    }

    fn figures(&self) -> Figures {
        let errors = self.errors_by_kind.values().sum();
        Figures {
            operations: self.ok + errors,
            ok: self.ok,
            errors,
            errors_by_kind: self.errors_by_kind.clone(),
            latency: Latency::of(&self.histogram),
        }
    }
}

/// What every client shares.
struct Shared {
    params: Params,
    start: Instant,
    deadline: Option<Instant>,
    /// Operations claimed (operation-count stop, and the load phase's record numbers).
    claimed: AtomicU64,
    /// Operations finished, for the progress bar.
    finished: AtomicU64,
    /// Open loop: operations started over `LATE_TOLERANCE` after their scheduled time.
    late: AtomicU64,
    inserts: InsertCounter,
    /// Cumulative shares of read, update, insert, scan (the rest is read-modify-write).
    thresholds: [f64; 4],
}

/// Runs one phase against `store` and returns its result. `target` and
/// `endpoints` are only recorded. The progress bar shows when `progress`
/// is set and stderr is a terminal.
pub async fn run_phase<S: Store>(
    store: Arc<S>,
    params: &Params,
    target: TargetKind,
    endpoints: &[String],
    progress: bool,
) -> Result<Report, LoadError> {
    run_phase_recorded(store, params, target, endpoints, progress)
        .await
        .map(|(report, _)| report)
}

/// `run_phase`, also returning the histogram of every operation's latency (µs).
async fn run_phase_recorded<S: Store>(
    store: Arc<S>,
    params: &Params,
    target: TargetKind,
    endpoints: &[String],
    progress: bool,
) -> Result<(Report, Histogram<u64>), LoadError> {
    params.validate()?;
    let started_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mix = params.mix;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        params: params.clone(),
        start,
        deadline: params.stop.duration().map(|d| start + d),
        claimed: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        late: AtomicU64::new(0),
        inserts: InsertCounter::new(params.record_count),
        thresholds: [
            mix.read,
            mix.read + mix.update,
            mix.read + mix.update + mix.insert,
            mix.read + mix.update + mix.insert + mix.scan,
        ],
    });
    let bar = (progress && std::io::stderr().is_terminal()).then(|| spawn_progress(&shared));
    let mut tasks = Vec::with_capacity(params.clients);
    for client in 0..params.clients {
        tasks.push(tokio::spawn(client_loop(
            client,
            store.clone(),
            shared.clone(),
        )));
    }
    let mut merged: BTreeMap<OpKind, Recorder> = BTreeMap::new();
    for task in tasks {
        let recorders = task
            .await
            .map_err(|e| LoadError::Parameter(format!("a client task failed: {e}")))?;
        for (kind, recorder) in recorders {
            merged
                .entry(kind)
                .or_insert_with(Recorder::new)
                .merge(&recorder);
        }
    }
    let elapsed = start.elapsed();
    if let Some(bar) = bar {
        bar.abort();
        let _ = bar.await;
    }
    let mut total = Recorder::new();
    for recorder in merged.values() {
        total.merge(recorder);
    }
    let histogram = total.histogram.clone();
    let total = total.figures();
    let elapsed_seconds = round_to(elapsed.as_secs_f64(), 6);
    let report = Report {
        schema_version: SCHEMA_VERSION,
        tool: format!("harmonydb-loadtest {}", env!("CARGO_PKG_VERSION")),
        target,
        endpoints: endpoints.to_vec(),
        params: params.clone(),
        started_at_unix_ms,
        elapsed_seconds,
        throughput_ops_per_second: if elapsed_seconds > 0.0 {
            round_to(total.operations as f64 / elapsed_seconds, 3)
        } else {
            0.0
        },
        operations_started_late: shared.late.load(Ordering::Relaxed),
        total,
        by_operation: merged
            .iter()
            .map(|(kind, recorder)| (kind.name().to_string(), recorder.figures()))
            .collect(),
    };
    Ok((report, histogram))
}

/// A task redrawing a progress bar with live throughput until aborted.
fn spawn_progress(shared: &Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let shared = shared.clone();
    tokio::spawn(async move {
        let (length, by_time) = match shared.params.stop {
            Stop::Operations(count) => (count, false),
            Stop::DurationSeconds(seconds) => ((seconds * 1000.0) as u64, true),
        };
        let length = match shared.params.phase {
            Phase::Load => shared.params.record_count,
            Phase::Run => length,
        };
        let by_time = by_time && shared.params.phase == Phase::Run;
        let bar = indicatif::ProgressBar::new(length);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {msg}") {
            bar.set_style(style);
        }
        let mut previous = (shared.start, 0u64);
        loop {
            tokio::time::sleep(PROGRESS_INTERVAL).await;
            let now = Instant::now();
            let finished = shared.finished.load(Ordering::Relaxed);
            let window = now.duration_since(previous.0).as_secs_f64();
            let live = if window > 0.0 {
                (finished - previous.1) as f64 / window
            } else {
                0.0
            };
            previous = (now, finished);
            let position = if by_time {
                u64::try_from(now.duration_since(shared.start).as_millis()).unwrap_or(u64::MAX)
            } else {
                finished
            };
            bar.set_position(position.min(length));
            bar.set_message(format!("{finished} ops, {live:.0} ops/s"));
        }
    })
}

/// One client's loop; returns its recorders.
async fn client_loop<S: Store>(
    client: usize,
    store: Arc<S>,
    shared: Arc<Shared>,
) -> BTreeMap<OpKind, Recorder> {
    let params = &shared.params;
    let mut recorders: BTreeMap<OpKind, Recorder> = BTreeMap::new();
    let mut rng = Rng::new(params.seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut chooser = match params.distribution {
        Distribution::Uniform => KeyChooser::Uniform,
        Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(params.record_count)),
        Distribution::Latest => {
            KeyChooser::Latest(Zipfian::new(params.record_count, ZIPFIAN_THETA))
        }
    };
    let timeout = Duration::from_millis(params.timeout_ms);
    let clients = params.clients as u64;
    let mut issued: u64 = 0;
    loop {
        // Which operation, and when it should start.
        let sequence = client as u64 + issued * clients;
        issued += 1;
        let load_record = match params.phase {
            Phase::Load => {
                let number = shared.claimed.fetch_add(1, Ordering::Relaxed);
                if number >= params.record_count {
                    break;
                }
                Some(number)
            }
            Phase::Run => None,
        };
        let scheduled = match params.rate_per_second {
            Some(rate) => {
                let at = shared.start + Duration::from_secs_f64(sequence as f64 / rate);
                if shared.deadline.is_some_and(|deadline| at >= deadline) {
                    break;
                }
                if let Stop::Operations(count) = params.stop {
                    if params.phase == Phase::Run && sequence >= count {
                        break;
                    }
                }
                let now = Instant::now();
                if now < at {
                    tokio::time::sleep_until(at).await;
                } else if now > at + LATE_TOLERANCE {
                    shared.late.fetch_add(1, Ordering::Relaxed);
                }
                Some(at)
            }
            None => {
                if shared
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
                {
                    break;
                }
                if let Stop::Operations(count) = params.stop {
                    if params.phase == Phase::Run
                        && shared.claimed.fetch_add(1, Ordering::Relaxed) >= count
                    {
                        break;
                    }
                }
                None
            }
        };
        let started = Instant::now();
        let (kind, outcome) = match load_record {
            Some(number) => {
                let value = record_value(&mut rng, params.value_size_bytes, params.field_count);
                let write = store.write(client, record_key(number), value);
                (OpKind::Insert, with_timeout(timeout, write).await)
            }
            None => run_one(client, &*store, &shared, &mut rng, &mut chooser, timeout).await,
        };
        let latency = Instant::now().duration_since(scheduled.unwrap_or(started));
        recorders
            .entry(kind)
            .or_insert_with(Recorder::new)
            .record(latency, &outcome);
        shared.finished.fetch_add(1, Ordering::Relaxed);
    }
    recorders
}

async fn with_timeout<T>(
    timeout: Duration,
    operation: impl std::future::Future<Output = Result<T, OpError>>,
) -> Result<(), OpError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(OpError::Timeout),
    }
}

/// Chooses and carries out one operation of the run phase's mix.
async fn run_one<S: Store>(
    client: usize,
    store: &S,
    shared: &Shared,
    rng: &mut Rng,
    chooser: &mut KeyChooser,
    timeout: Duration,
) -> (OpKind, Result<(), OpError>) {
    let params = &shared.params;
    let draw = rng.next_f64();
    let [read, update, insert, scan] = shared.thresholds;
    let kind = if draw < read {
        OpKind::Read
    } else if draw < update {
        OpKind::Update
    } else if draw < insert {
        OpKind::Insert
    } else if draw < scan {
        OpKind::Scan
    } else {
        OpKind::ReadModifyWrite
    };
    if kind == OpKind::Insert {
        let number = shared.inserts.allocate();
        let value = record_value(rng, params.value_size_bytes, params.field_count);
        let outcome = with_timeout(timeout, store.write(client, record_key(number), value)).await;
        shared.inserts.finish(number);
        return (kind, outcome);
    }
    let key = record_key(chooser.next(rng, shared.inserts.acknowledged()));
    let outcome = match kind {
        OpKind::Read => with_timeout(timeout, store.read(client, key)).await,
        OpKind::Update => {
            let value = record_value(rng, params.value_size_bytes, params.field_count);
            with_timeout(timeout, store.write(client, key, value)).await
        }
        OpKind::Scan => {
            let length = 1 + rng.below(u64::from(params.scan_length_max)) as u32;
            with_timeout(timeout, store.scan(client, key, length)).await
        }
        OpKind::ReadModifyWrite | OpKind::Insert => {
            let value = record_value(rng, params.value_size_bytes, params.field_count);
            // One timeout over both steps: the operation is the pair.
            let pair = async {
                let version = store.read(client, key.clone()).await?;
                store.compare_and_set(client, key, version, value).await
            };
            with_timeout(timeout, pair).await
        }
    };
    (kind, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Version;
    use crate::workload::Workload;

    /// A store that answers in `service` (tokio's paused clock counts in
    /// whole ms), except that every operation arriving in
    /// `[stall_at, stall_at + stall)` (from its creation) is answered only
    /// when the stall ends.
    struct StallingStore {
        created: Instant,
        stall_at: Duration,
        stall: Duration,
        service: Duration,
    }

    impl StallingStore {
        async fn answer(&self) {
            let now = Instant::now().duration_since(self.created);
            if now >= self.stall_at && now < self.stall_at + self.stall {
                tokio::time::sleep_until(self.created + self.stall_at + self.stall).await;
            } else if !self.service.is_zero() {
                tokio::time::sleep(self.service).await;
            }
        }
    }

    impl Store for StallingStore {
        async fn read(&self, _: usize, _: Vec<u8>) -> Result<Version, OpError> {
            self.answer().await;
            Ok(1)
        }
        async fn write(&self, _: usize, _: Vec<u8>, _: Vec<u8>) -> Result<(), OpError> {
            self.answer().await;
            Ok(())
        }
        async fn scan(&self, _: usize, _: Vec<u8>, _: u32) -> Result<usize, OpError> {
            self.answer().await;
            Ok(0)
        }
        async fn compare_and_set(
            &self,
            _: usize,
            _: Vec<u8>,
            _: Version,
            _: Vec<u8>,
        ) -> Result<(), OpError> {
            self.answer().await;
            Ok(())
        }
    }

    fn params(clients: usize, rate: Option<f64>, stop: Stop) -> Params {
        Params {
            phase: Phase::Run,
            workload: Workload::C,
            mix: Workload::C.mix(),
            distribution: Distribution::Uniform,
            record_count: 100,
            value_size_bytes: 10,
            field_count: 1,
            scan_length_max: 10,
            clients,
            connections: 1,
            rate_per_second: rate,
            stop,
            timeout_ms: 10_000,
            seed: 1,
        }
    }

    async fn run_against_stall(
        clients: usize,
        rate: Option<f64>,
        stop: Stop,
    ) -> (Report, Histogram<u64>) {
        let store = Arc::new(StallingStore {
            created: Instant::now(),
            stall_at: Duration::from_millis(300),
            stall: Duration::from_millis(100),
            // Closed loop needs time to pass per operation; open loop sleeps
            // to its schedule, and answers at once show its accounting best.
            service: if rate.is_some() {
                Duration::ZERO
            } else {
                Duration::from_millis(1)
            },
        });
        let params = params(clients, rate, stop);
        run_phase_recorded(store, &params, TargetKind::HarmonydbTcp, &[], false)
            .await
            .expect("run")
    }

    /// Open loop at 1000/s for 1 s with a 100 ms stall at 300 ms: the
    /// operations scheduled during the stall wait for its end, so their
    /// latencies fall from 100 ms to 1 ms, one per ms: 50 of them over
    /// 50 ms, about 100 over 1 ms, and the slowest 100 ms. (Counted from
    /// the actual send, only the first would show.)
    #[tokio::test(start_paused = true)]
    async fn open_loop_charges_the_stall_to_every_operation_scheduled_in_it() {
        for clients in [1, 8] {
            let (report, histogram) =
                run_against_stall(clients, Some(1000.0), Stop::DurationSeconds(1.0)).await;
            let latency = &report.total.latency;
            assert_eq!(report.total.operations, 1000, "clients {clients}");
            assert_eq!(report.total.errors, 0);
            let max_ms = latency.max_us as f64 / 1000.0;
            assert!((99.0..=101.0).contains(&max_ms), "max {max_ms} ms");
            assert!(latency.p99_us >= 80_000, "p99 {} µs", latency.p99_us);
            assert!(latency.p90_us < 1_000, "p90 {} µs", latency.p90_us);
            let over_50_ms = histogram.count_between(50_001, LATENCY_MAX_US);
            assert!((48..=52).contains(&over_50_ms), "{over_50_ms} over 50 ms");
            let over_1_ms = histogram.count_between(1_001, LATENCY_MAX_US);
            assert!((97..=101).contains(&over_1_ms), "{over_1_ms} over 1 ms");
            assert!(
                report.operations_started_late >= 45,
                "late {}",
                report.operations_started_late
            );
        }
    }

    /// Closed loop with the same stall: the one operation caught in it
    /// carries the 100 ms, and the others are not charged (the coordinated
    /// omission the open loop exists to avoid).
    #[tokio::test(start_paused = true)]
    async fn closed_loop_sees_the_stall_once_per_client() {
        let (report, histogram) = run_against_stall(1, None, Stop::DurationSeconds(1.0)).await;
        let latency = &report.total.latency;
        assert!(latency.max_us >= 99_000, "max {}", latency.max_us);
        assert!(latency.p99_us <= 1_001, "p99 {}", latency.p99_us);
        assert_eq!(histogram.count_between(50_001, LATENCY_MAX_US), 1);
    }
}
