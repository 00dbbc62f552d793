//! Assembles a node: locks the data directory, recovers the WAL and the KV
//! state, starts the actors on their arbiters and both front doors, then
//! waits for SIGINT/SIGTERM and shuts down in the order that keeps every
//! acknowledged write durable.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use actix::Arbiter;
use harmonydb_actors::kv::{recover_state, BeginShutdown, KvError, KvHandle, KvLimits, KvStore};
use harmonydb_actors::wal::{Sync, Wal, WalError, WalOptions, WalWriter};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::{http, tcp};
use crate::config::Config;

/// How long the HTTP server waits for in-flight requests at shutdown.
const HTTP_SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;

/// How long shutdown waits for TCP connections to write their last answers.
const CONNECTION_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often histogram samples are folded into the exporter's buckets.
const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is held by another live process.
    #[error("data directory {} is in use by another harmonydb process{}; stop it or choose another --data-dir", dir.display(), pid.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    DataDirLocked {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as written in the lock file.
        pid: Option<String>,
    },
    /// A file operation on the data directory failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the node was doing.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The WAL could not be opened.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The WAL holds something that is not a valid command.
    #[error("cannot rebuild the KV state from the WAL: {0}")]
    Recovery(#[from] KvError),
    /// A listen address could not be bound.
    #[error("cannot listen for {api} on {addr}: {source}")]
    Bind {
        /// Which API.
        api: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Telemetry could not be set up.
    #[error("{0}")]
    Telemetry(String),
}

/// An exclusive lock on the data directory, held while the node runs. The
/// kernel drops it when the process dies, however it dies, so a stale lock
/// file never blocks a restart.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, NodeError> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| NodeError::Io {
                action: "open lock file",
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                return Err(NodeError::DataDirLocked {
                    dir: dir.to_path_buf(),
                    pid: (!pid.is_empty()).then_some(pid),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(NodeError::Io {
                    action: "lock",
                    path,
                    source,
                })
            }
        }
        let write_pid = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        write_pid.map_err(|source| NodeError::Io {
            action: "write lock file",
            path,
            source,
        })?;
        Ok(DataDirLock { _file: file })
    }
}

/// Runs a node until it is told to stop.
pub fn run(config: Config) -> Result<(), NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::Io {
        action: "create data directory",
        path: config.data_dir.clone(),
        source,
    })?;
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    let metrics = crate::telemetry::install_metrics().map_err(NodeError::Telemetry)?;

    let wal_dir = config.data_dir.join("wal");
    let options = WalOptions {
        segment_size_bytes: config.wal_segment_size_bytes,
        truncate_corrupt_tail: config.wal_truncate_corrupt_tail,
    };
    // A cut tail is logged by the WAL itself, with segment, offset and bytes.
    let (wal, report) = Wal::open(&wal_dir, options)?;
    let state = recover_state(&wal)?;
    info!(
        segments = report.segments,
        last_index = report.last_index,
        keys = state.len(),
        "recovered from the WAL"
    );
    let next_index = wal.last_index() + 1;

    let system = actix::System::new();
    system.block_on(serve(config, wal, state, next_index, metrics))
}

async fn serve(
    config: Config,
    wal: Wal,
    state: harmonydb_actors::kv::KvState,
    next_index: u64,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), NodeError> {
    // Installed first, so a signal during start-up also shuts down cleanly.
    let signals = Signals::install()?;
    // The exporter only drains histogram samples when asked; without this a
    // node nobody scrapes would keep every sample in memory.
    let upkeep_handle = metrics.clone();
    actix_rt::spawn(async move {
        loop {
            actix_rt::time::sleep(METRICS_UPKEEP_INTERVAL).await;
            upkeep_handle.run_upkeep();
        }
    });
    // Syncs block their thread, so the WAL writer gets an arbiter of its own.
    // The store shares the main arbiter with the TCP connections: an answered
    // writer's next request then reaches the store without a thread hop, so
    // at high concurrency all writers make the next group commit instead of
    // splitting into two alternating batches (measured: 64 writers went
    // from 32 to 64 records per sync; see docs/wal-format.md).
    let wal_arbiter = Arbiter::new();
    let wal_writer = WalWriter::new(wal, config.fsync).start_on(&wal_arbiter.handle());
    let kv_store =
        KvStore::new(state, next_index, wal_writer.clone()).start_on(&Arbiter::current());
    let limits = KvLimits {
        value_size_max_bytes: config.value_size_max_bytes,
        ..KvLimits::default()
    };
    let kv = KvHandle::new(kv_store.clone(), limits);

    let tcp_listener =
        TcpListener::bind(config.tcp_addr)
            .await
            .map_err(|source| NodeError::Bind {
                api: "TCP",
                addr: config.tcp_addr,
                source,
            })?;
    let tcp_addr = tcp_listener.local_addr().unwrap_or(config.tcp_addr);
    let http_state = http::HttpState {
        kv: kv.clone(),
        metrics,
    };
    let http_server = actix_web::HttpServer::new(move || http::app(http_state.clone()))
        .workers(2)
        .disable_signals()
        .shutdown_timeout(HTTP_SHUTDOWN_TIMEOUT_SECONDS)
        .bind(config.http_addr)
        .map_err(|source| NodeError::Bind {
            api: "HTTP",
            addr: config.http_addr,
            source,
        })?;
    let http_addr = http_server
        .addrs()
        .first()
        .copied()
        .unwrap_or(config.http_addr);
    let http_server = http_server.run();
    let http_handle = http_server.handle();
    let http_task = actix_rt::spawn(http_server);
    let (stop_accepting, accepting) = watch::channel(false);
    let tcp_task = actix_rt::spawn(tcp::serve(
        tcp_listener,
        kv,
        config.frame_size_max_bytes,
        accepting,
    ));

    info!(
        %http_addr,
        %tcp_addr,
        data_dir = %config.data_dir.display(),
        fsync = %config.fsync,
        "listening"
    );

    signals.wait().await;
    info!("shutting down: no new requests; finishing accepted writes");
    // TCP connections stop reading; the requests they started still get answers.
    let _ = stop_accepting.send(true);
    // The store refuses new requests from here on and answers once every
    // accepted write is applied, so nothing acknowledged is left in flight.
    if kv_store.send(BeginShutdown).await.is_err() {
        error!("the KV store stopped before shutdown");
    }
    if actix_rt::time::timeout(CONNECTION_DRAIN_TIMEOUT, tcp_task)
        .await
        .is_err()
    {
        warn!("TCP connections did not drain in time; closing them");
    }
    http_handle.stop(true).await;
    let _ = http_task.await;
    match wal_writer.send(Sync).await {
        Ok(Ok(last_index)) => info!(last_index, "WAL synced"),
        Ok(Err(error)) => error!(%error, "final WAL sync failed"),
        Err(_) => error!("the WAL writer stopped before the final sync"),
    }
    wal_arbiter.stop();
    let _ = wal_arbiter.join();
    info!("stopped cleanly");
    Ok(())
}

/// SIGTERM and SIGINT handlers.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, NodeError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| NodeError::Io {
                action: "install handler for",
                path: PathBuf::from(name),
                source,
            })
        };
        Ok(Signals {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => info!(signal = "SIGTERM", "signal received"),
            _ = self.interrupt.recv() => info!(signal = "SIGINT", "signal received"),
        }
    }
}
