//! Assembles a node: locks the data directory, checks it belongs to this
//! node id, recovers the Raft log from the WAL, starts the actors (WAL
//! writer on its own arbiter; replica and transport on the main one) and
//! both front doors, then waits for SIGINT/SIGTERM and shuts down in the
//! order that keeps every acknowledged write durable.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter};
use harmonydb_actors::cluster::fault::FaultFilter;
use harmonydb_actors::cluster::members::MemberBook;
use harmonydb_actors::cluster::rpc::{PeerClient, RpcSettings};
use harmonydb_actors::cluster::transport::{PeerInbox, Transport};
use harmonydb_actors::disk::{DiskMonitor, DISK_CHECK_INTERVAL};
use harmonydb_actors::kv::{BeginShutdown, KvHandle, KvLimits};
use harmonydb_actors::replica::wal_log::{load, WalLogError};
use harmonydb_actors::replica::{
    read_removed_marker, settle_install, CheckpointPolicy, RaftReplica, ReplicaStorage,
};
use harmonydb_actors::storage::buffer::PoolConfig;
use harmonydb_actors::storage::checkpoint::Storage;
use harmonydb_actors::storage::StorageError;
use harmonydb_actors::wal::{Sync, Wal, WalError, WalOptions, WalWriter};
use harmonydb_raft::{PersistedState, Raft, RaftConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::connections::Admission;
use crate::api::service::{FrontDoor, Service};
use crate::api::{http, tcp};
use crate::config::Config;

/// Ticks of clock drift a leader's lease allows for.
const LEASE_DRIFT_TICKS: u64 = 2;

/// How long a start waits for the data directory's lock to be let go (a
/// process killed a moment ago still holds it while it exits).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How often a start waiting for the lock tries again.
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// What a request to another node may wait beyond the node's own request
/// timeout (which the other node applies), so its answer comes first.
const RPC_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// How long connecting to another node may take.
const RPC_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long shutdown waits for accepted writes to commit.
const WRITE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the HTTP server waits for in-flight requests at shutdown.
const HTTP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP worker threads.
const HTTP_WORKERS: usize = 2;

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
    /// The data directory path names something that is not a directory.
    #[error("data directory {} is not a directory; give --data-dir a directory (it is created if missing)", .0.display())]
    NotADirectory(PathBuf),
    /// The data directory can't be read or written by this process.
    #[error("data directory {} is not usable: {action}: {source}; the user running harmonydb needs to read, write and enter it", dir.display())]
    DataDirInaccessible {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        action: &'static str,
        /// Why.
        source: std::io::Error,
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
    /// The WAL failed while the node ran; it stopped so that a restart
    /// recovers from what is on disk.
    #[error("stopped after the WAL failed ({0}); restart the node: it recovers from what is on disk, and nothing in the range that failed was acknowledged")]
    WalFailed(String),
    /// The WAL holds something that is not a valid Raft record.
    #[error("cannot rebuild the Raft log from the WAL: {0}")]
    Recovery(#[from] WalLogError),
    /// The data directory belongs to another node or cluster.
    #[error("data directory {} belongs to {found}, but this node is {expected}; use that node's settings or another --data-dir", dir.display())]
    IdentityMismatch {
        /// The directory.
        dir: PathBuf,
        /// What its identity file says.
        found: String,
        /// What this node's settings say.
        expected: String,
    },
    /// The Raft settings are not usable.
    #[error("invalid Raft settings: {0}")]
    Raft(String),
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
    /// A setting that can't work for this node.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Telemetry could not be set up.
    #[error("{0}")]
    Telemetry(String),
    /// The page file or its recovery failed (a damaged page is named).
    #[error("cannot open the storage: {0}")]
    Storage(#[from] StorageError),
}

/// An exclusive lock on the data directory, held while the node runs. The
/// kernel drops it when the process dies, however it dies, so a stale lock
/// file never blocks a restart.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock, waiting up to `wait` for a holder to let go: a
    /// process killed a moment ago holds it until the kernel has finished
    /// tearing it down, and a supervisor restarting it at once must not
    /// fail for that. A live node keeps it, and is named in the error.
    pub fn acquire(dir: &Path, wait: Duration) -> Result<DataDirLock, NodeError> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| inaccessible(dir, "create its LOCK file", source))?;
        let deadline = std::time::Instant::now() + wait;
        let mut waiting_logged = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.seek(SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut pid);
                    let pid = pid.trim().to_string();
                    if std::time::Instant::now() >= deadline {
                        return Err(NodeError::DataDirLocked {
                            dir: dir.to_path_buf(),
                            pid: (!pid.is_empty()).then_some(pid),
                        });
                    }
                    if !waiting_logged {
                        waiting_logged = true;
                        info!(
                            data_dir = %dir.display(),
                            holder_pid = %pid,
                            wait_ms = wait.as_millis() as u64,
                            "the data directory is locked by another process; waiting for it to exit"
                        );
                    }
                    std::thread::sleep(LOCK_RETRY_INTERVAL);
                }
                Err(TryLockError::Error(source)) => {
                    return Err(NodeError::Io {
                        action: "lock",
                        path,
                        source,
                    })
                }
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

fn inaccessible(dir: &Path, action: &'static str, source: std::io::Error) -> NodeError {
    NodeError::DataDirInaccessible {
        dir: dir.to_path_buf(),
        action,
        source,
    }
}

/// Creates the data directory if it is missing and checks that this
/// process can list and write it, so a wrong path or permission fails here,
/// naming the directory, rather than deep inside the WAL or the storage.
pub fn prepare_data_dir(dir: &Path) -> Result<(), NodeError> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(NodeError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|source| match source.kind() {
                // A path through a file: `a-file/data`.
                std::io::ErrorKind::NotADirectory | std::io::ErrorKind::AlreadyExists => {
                    NodeError::NotADirectory(dir.to_path_buf())
                }
                _ => inaccessible(dir, "create it", source),
            })?;
        }
        Err(source) if source.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(NodeError::NotADirectory(dir.to_path_buf()))
        }
        Err(source) => return Err(inaccessible(dir, "look it up", source)),
    }
    std::fs::read_dir(dir).map_err(|source| inaccessible(dir, "list it", source))?;
    Ok(())
}

/// Checks (or, on first start, writes) `<data-dir>/IDENTITY`: the node id
/// and how the directory's cluster began: the member ids of `--peers`, or
/// joining a running cluster. A directory started under another id would
/// hand that node's votes to this one. Members added or removed since are
/// in the replicated configuration, not here.
fn check_identity(dir: &Path, node_id: u64, config: &Config) -> Result<(), NodeError> {
    let path = dir.join("IDENTITY");
    let expected = if config.join.is_some() {
        format!("node {node_id} joined a running cluster")
    } else {
        let ids: Vec<String> = config.members.keys().map(u64::to_string).collect();
        format!("node {node_id} of members {}", ids.join(","))
    };
    match std::fs::read_to_string(&path) {
        Ok(found) if found.trim() == expected => Ok(()),
        Ok(found) => Err(NodeError::IdentityMismatch {
            dir: dir.to_path_buf(),
            found: found.trim().to_string(),
            expected,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let temp = dir.join("IDENTITY.tmp");
            let io = |action, source| NodeError::Io {
                action,
                path: path.clone(),
                source,
            };
            let mut file = File::create(&temp).map_err(|e| io("create", e))?;
            writeln!(file, "{expected}").map_err(|e| io("write", e))?;
            file.sync_all().map_err(|e| io("sync", e))?;
            std::fs::rename(&temp, &path).map_err(|e| io("rename", e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync directory of", e))
        }
        Err(source) => Err(NodeError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// The Raft settings of a node.
pub fn raft_config(node_id: u64, frame_size_max_bytes: usize, log_cache_mb: usize) -> RaftConfig {
    let mut raft = RaftConfig::new(node_id);
    raft.log_cache_max_bytes = log_cache_mb.saturating_mul(1024 * 1024);
    raft.lease_drift_ticks = Some(LEASE_DRIFT_TICKS);
    // An AppendEntries must fit in the receiver's frame with room to spare.
    raft.append_size_max_bytes = raft.append_size_max_bytes.min(frame_size_max_bytes / 4);
    // Different seeds keep members' election timeouts apart.
    raft.seed = node_id.wrapping_mul(0x9E37_79B9) ^ u64::from(std::process::id());
    raft
}

/// A started replica and what front doors need from it.
pub struct ReplicaParts {
    /// This node.
    pub node_id: u64,
    /// The node's one client to other nodes (forwarding, snapshots, join),
    /// which obeys the transport's fault filter.
    pub peers: PeerClient,
    /// The node's disk.
    pub disk: DiskMonitor,
    /// Where snapshot dumps for followers are written.
    pub snapshot_dir: PathBuf,
    /// The arbiter the checkpointer runs on (stopped at shutdown).
    pub manager_arbiter: Arbiter,
    /// The replica.
    pub replica: Addr<RaftReplica>,
    /// The fault filter its transport obeys.
    pub faults: FaultFilter,
    /// The handle front doors call.
    pub kv: KvHandle,
    /// The leader it knows of.
    pub leader: Arc<AtomicU64>,
    /// Where members are, kept current by the replica.
    pub members: MemberBook,
}

/// What a replica is started with besides its core and WAL.
pub struct ReplicaSettings {
    /// This node.
    pub node_id: u64,
    /// Where members are: seeded from `--peers` (or the node itself when
    /// joining), kept current by the replica from the configuration.
    pub members: MemberBook,
    /// Raft's tick.
    pub tick: Duration,
    /// Limits front doors enforce.
    pub limits: KvLimits,
    /// The peers' frame limit, which Raft frames must fit.
    pub frame_size_max_bytes: usize,
    /// The node's data directory (storage and snapshots live under it).
    pub data_dir: PathBuf,
    /// The buffer pool's size and policy.
    pub pool: PoolConfig,
    /// Longest time between checkpoints.
    pub checkpoint_interval: Duration,
    /// When checkpoints are due and how much log they leave.
    pub checkpoint_policy: CheckpointPolicy,
    /// The node's disk (a leader with a full one hands leadership over).
    pub disk: DiskMonitor,
    /// How requests to other nodes are bounded.
    pub rpc: RpcSettings,
}

/// Opens a stopped node's storage (recovering it as a start would) and
/// checks every tree in it; the summary, or what is wrong.
pub fn check_storage(data_dir: &Path) -> Result<String, NodeError> {
    prepare_data_dir(data_dir)?;
    // An offline check never waits: a node using the directory is running.
    let _lock = DataDirLock::acquire(data_dir, Duration::ZERO)?;
    let storage_dir = data_dir.join("storage");
    settle_install(&storage_dir).map_err(|source| NodeError::Io {
        action: "finish an interrupted snapshot install in",
        path: storage_dir.clone(),
        source,
    })?;
    let pool = PoolConfig::with_megabytes(64, Default::default());
    let (storage, recovery) = Storage::open(&storage_dir, pool)?;
    let meta = storage.meta();
    let mut report = format!(
        "checkpoint {}, {} pages ({} free){}{}",
        meta.checkpoint,
        meta.page_count,
        recovery.free_pages,
        if recovery.rolled_forward {
            "; finished an interrupted checkpoint"
        } else {
            ""
        },
        if recovery.repaired.is_empty() {
            String::new()
        } else {
            format!("; repaired torn pages {:?}", recovery.repaired)
        }
    );
    for shard in &meta.shards {
        let tree =
            harmonydb_actors::storage::btree::BTree::open(storage.pool().clone(), shard.root);
        let shape = tree.check().map_err(|reason| {
            NodeError::Storage(StorageError::Malformed {
                page: shard.root,
                reason: format!("shard {}'s tree: {reason}", shard.shard),
            })
        })?;
        if shape.keys != shard.keys {
            return Err(NodeError::Storage(StorageError::Malformed {
                page: shard.root,
                reason: format!(
                    "shard {}'s tree holds {} keys, its checkpoint says {}",
                    shard.shard, shape.keys, shard.keys
                ),
            }));
        }
        report.push_str(&format!(
            "\nshard {}: applied index {}, {} keys, height {}, {} leaves, {} internal, {} overflow pages: sound",
            shard.shard, shard.applied_index, shape.keys, shape.height, shape.leaves, shape.internal, shape.overflow
        ));
    }
    Ok(report)
}

/// Starts the checkpointer (on an arbiter of its own), the transport and
/// the replica (on the current arbiter).
pub fn start_replica(
    settings: &ReplicaSettings,
    raft: Raft,
    wal_writer: Addr<WalWriter>,
    wal_next_index: u64,
) -> Result<ReplicaParts, NodeError> {
    let node_id = settings.node_id;
    let manager_arbiter = Arbiter::new();
    let (storage, recovery) = ReplicaStorage::open(
        &settings.data_dir,
        settings.pool,
        settings.checkpoint_interval,
        settings.checkpoint_policy,
        settings.members.clone(),
        &manager_arbiter.handle(),
    )?;
    info!(
        checkpoint = recovery.checkpoint,
        rolled_forward = recovery.rolled_forward,
        repaired_pages = recovery.repaired.len(),
        free_pages = recovery.free_pages,
        pages = recovery.page_count,
        frames = settings.pool.frames,
        policy = %settings.pool.policy,
        applied_index = storage.state.applied_index(),
        keys = storage.state.len(),
        "opened the storage; the log is replayed from its applied index"
    );
    for page in &recovery.repaired {
        warn!(page, "repaired a torn page from the double-write file");
    }
    let snapshot_dir = storage.snapshot_dir.clone();
    let transport = Transport::new(node_id, settings.members.clone())
        .with_frame_budget(settings.frame_size_max_bytes / 2);
    let faults = transport.faults();
    let transport = transport.start();
    let peers = PeerClient::new(settings.members.clone(), faults.clone(), settings.rpc);
    let replica = RaftReplica::new(
        raft,
        wal_writer,
        wal_next_index,
        transport.clone().recipient(),
        settings.tick,
        storage,
    )
    .with_disk(settings.disk.clone())
    .with_peers(peers.clone());
    let leader = replica.leader_hint();
    let replica = replica.start();
    Ok(ReplicaParts {
        kv: KvHandle::new(replica.clone().recipient(), settings.limits),
        replica,
        faults,
        leader,
        snapshot_dir,
        manager_arbiter,
        members: settings.members.clone(),
        node_id,
        peers,
        disk: settings.disk.clone(),
    })
}

/// Runs a node until it is told to stop.
pub fn run(config: Config) -> Result<(), NodeError> {
    prepare_data_dir(&config.data_dir)?;
    let _lock = DataDirLock::acquire(&config.data_dir, LOCK_WAIT)?;
    // `--peers` is read only when the directory is new: check this node's
    // own entry then, before the others are told to reach it there.
    if !config.data_dir.join("IDENTITY").exists() {
        config.check_own_peer_address()?;
    }
    check_identity(&config.data_dir, config.node_id, &config)?;
    // Both ports before anything starts: a port in use is an error that
    // names it, not a half-started node.
    let listeners = Listeners::bind(&config)?;
    let metrics = crate::telemetry::install_metrics().map_err(NodeError::Telemetry)?;

    // The reserve's space is for recovery first: it is made again once the
    // node runs and there is room above the free-space floor.
    let reserve = config.data_dir.join(harmonydb_actors::disk::RESERVE_FILE);
    if std::fs::remove_file(&reserve).is_ok() {
        info!(path = %reserve.display(), "disk reserve given up for recovery");
    }
    let wal_dir = config.data_dir.join("wal");
    let options = WalOptions {
        segment_size_bytes: config.wal_segment_size_bytes,
        truncate_corrupt_tail: config.wal_truncate_corrupt_tail,
    };
    // A cut tail is logged by the WAL itself, with segment, offset and bytes.
    let (wal, report) = Wal::open(&wal_dir, options)?;
    // A joining node starts with no configuration: it learns the
    // cluster's from the log the leader sends it.
    let initial_voters: Vec<u64> = if config.join.is_some() {
        Vec::new()
    } else {
        config.members.keys().copied().collect()
    };
    let persisted = load(&wal, PersistedState::bootstrap(initial_voters))?;
    info!(
        segments = report.segments,
        last_index = report.last_index,
        entries = persisted.entries.len(),
        term = persisted.hard_state.term,
        commit = persisted.hard_state.commit,
        "recovered the Raft log from the WAL"
    );
    let raft = Raft::new(
        raft_config(
            config.node_id,
            config.frame_size_max_bytes,
            config.raft_log_cache_mb,
        ),
        persisted,
    )
    .map_err(NodeError::Raft)?;
    let next_index = wal.last_index() + 1;
    // A node that joined and votes already has nothing to ask at restart.
    let mut config = config;
    if raft.membership().0.voters.contains(&config.node_id) {
        config.join = None;
    }

    let system = actix::System::new();
    system.block_on(serve(config, listeners, wal, raft, next_index, metrics))
}

/// The node's two listening sockets, bound before anything else starts.
struct Listeners {
    tcp: std::net::TcpListener,
    http: std::net::TcpListener,
}

impl Listeners {
    fn bind(config: &Config) -> Result<Listeners, NodeError> {
        let bind = |api: &'static str, addr: std::net::SocketAddr| {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|source| NodeError::Bind { api, addr, source })?;
            Ok::<_, NodeError>(listener)
        };
        Ok(Listeners {
            tcp: bind("TCP", config.tcp_addr)?,
            http: bind("HTTP", config.http_addr)?,
        })
    }
}

async fn serve(
    config: Config,
    listeners: Listeners,
    wal: Wal,
    raft: Raft,
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
            give_back_freed_memory();
        }
    });
    let tcp_listener = TcpListener::from_std(listeners.tcp).map_err(|source| NodeError::Bind {
        api: "TCP",
        addr: config.tcp_addr,
        source,
    })?;
    let tcp_addr = tcp_listener.local_addr().unwrap_or(config.tcp_addr);
    let mut config = config;
    // A node of one names itself by the address it got (port 0 = any).
    if config.members.len() == 1
        && config.members.get(&config.node_id) == Some(&config.tcp_addr.to_string())
    {
        config.members.insert(config.node_id, tcp_addr.to_string());
    }
    // Syncs block their thread, so the WAL writer gets an arbiter of its own.
    // The replica shares the main arbiter with the TCP connections: an
    // answered writer's next request then reaches it without a thread hop,
    // so at high concurrency all writers make the next group commit.
    let wal_arbiter = Arbiter::new();
    const MIB: u64 = 1024 * 1024;
    let disk = DiskMonitor::new(
        &config.data_dir,
        config.min_free_disk_mb.saturating_mul(MIB),
        config.disk_reserve_mb.saturating_mul(MIB),
    );
    let refreshed = disk.clone();
    actix_rt::spawn(async move {
        loop {
            actix_rt::time::sleep(DISK_CHECK_INTERVAL).await;
            refreshed.refresh();
        }
    });
    let wal_faults = Arc::new(harmonydb_actors::wal::WalFaults::default());
    // A failed WAL write or sync ends the node (crash-only): what the
    // kernel kept of the unsynced range is unknown, and a restart recovers
    // from what is on disk.
    let (wal_failed, mut wal_failure) = tokio::sync::mpsc::unbounded_channel::<String>();
    let wal_writer = WalWriter::new(wal, config.fsync)
        .with_disk(disk.clone())
        .with_faults(wal_faults.clone())
        .on_failure(Box::new(move |error| {
            let _ = wal_failed.send(error.to_string());
        }))
        .start_on(&wal_arbiter.handle());
    let advertised = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| tcp_addr.to_string());
    // Alone or joining, this node names its own address: the one others
    // should use, which every configuration entry then carries.
    let alone = config.members.len() == 1 && config.members.contains_key(&config.node_id);
    if config.join.is_some() || (alone && config.advertise_addr.is_some()) {
        config.members.insert(config.node_id, advertised.clone());
    }
    let members = if config.join.is_some() {
        MemberBook::joining(config.node_id, advertised.clone())
    } else {
        MemberBook::new(config.members.clone())
    };
    let removed = read_removed_marker(&config.data_dir).map_err(|source| NodeError::Io {
        action: "read",
        path: config
            .data_dir
            .join(harmonydb_actors::replica::REMOVED_MARKER),
        source,
    })?;
    if let Some(index) = removed {
        members.mark_removed(index);
    }
    let limits = KvLimits {
        value_size_max_bytes: config.value_size_max_bytes,
        request_timeout: config.request_timeout,
        ..KvLimits::default()
    };
    let settings = ReplicaSettings {
        disk: disk.clone(),
        node_id: config.node_id,
        members: members.clone(),
        tick: config.raft_tick,
        limits,
        frame_size_max_bytes: config.frame_size_max_bytes,
        data_dir: config.data_dir.clone(),
        pool: PoolConfig::with_megabytes(config.buffer_pool_mb, config.buffer_pool_policy),
        checkpoint_interval: config.checkpoint_interval,
        checkpoint_policy: CheckpointPolicy {
            checkpoint_entries: config.checkpoint_entries,
            log_retain_entries: config.log_retain_entries,
        },
        rpc: RpcSettings {
            // The other node's answer, even its `timeout`, comes first.
            request_timeout: config.request_timeout + RPC_TIMEOUT_MARGIN,
            connect_timeout: RPC_CONNECT_TIMEOUT,
            frame_size_max_bytes: config.frame_size_max_bytes,
        },
    };
    let parts = start_replica(&settings, raft, wal_writer.clone(), next_index)?;
    let service = Service::new(
        &parts,
        FrontDoor {
            fault_injection: config.enable_fault_injection,
            ready_lag_max_entries: config.ready_max_lag_entries,
            wal_faults,
        },
    );
    let peer_inbox = PeerInbox::new(
        config.node_id,
        members.clone(),
        parts.replica.clone().recipient(),
    );

    let http_state = http::HttpState {
        service: service.clone(),
        metrics,
        access: crate::api::debug::AdminAccess {
            debug_enabled: config.enable_debug,
            token: config.admin_token.clone(),
        },
    };
    let tcp_admission = Admission::new("tcp", config.connections);
    actix_rt::spawn(follow_member_addresses(
        members.clone(),
        tcp_admission.clone(),
    ));
    let (http_server, http_addr) = crate::api::http_server::serve(
        listeners.http,
        http_state,
        crate::api::http_server::HttpSettings {
            workers: HTTP_WORKERS,
            shutdown_timeout: HTTP_SHUTDOWN_TIMEOUT,
            admission: Admission::new("http", config.connections),
        },
    )
    .map_err(|source| NodeError::Bind {
        api: "HTTP",
        addr: config.http_addr,
        source,
    })?;
    let http_handle = http_server.handle();
    let http_task = actix_rt::spawn(http_server);
    let (stop_clients, clients_stopped) = watch::channel(false);
    let (stop_peers, peers_stopped) = watch::channel(false);
    let tcp_task = actix_rt::spawn(tcp::serve(
        tcp_listener,
        tcp::TcpTargets {
            service,
            peers: peer_inbox,
            frame_size_max_bytes: config.frame_size_max_bytes,
            value_size_max_bytes: config.value_size_max_bytes,
            admission: tcp_admission,
        },
        tcp::TcpShutdown {
            clients: clients_stopped,
            peers: peers_stopped,
        },
    ));

    info!(
        %http_addr,
        %tcp_addr,
        node_id = config.node_id,
        members = config.members.len(),
        data_dir = %config.data_dir.display(),
        fsync = %config.fsync,
        "listening"
    );

    if let (Some(through), None) = (config.join.clone(), removed) {
        actix_rt::spawn(crate::join::join_cluster(crate::join::Joining {
            through,
            node_id: config.node_id,
            address: advertised,
            members: members.clone(),
            peers: parts.peers.clone(),
        }));
    }

    let failure = tokio::select! {
        () = signals.wait() => None,
        Some(error) = wal_failure.recv() => {
            error!(%error, "the WAL failed: stopping so a restart recovers from what is on disk (crash-only)");
            Some(error)
        }
    };
    info!("shutting down: no new requests; finishing accepted writes");
    // Client connections stop reading; the requests they started still get
    // answers. Peer links keep going so accepted writes can still commit.
    let _ = stop_clients.send(true);
    // The replica refuses new requests from here on and answers once every
    // accepted write is resolved, so nothing acknowledged is left in flight.
    // In a cluster that lost its quorum they may never resolve: bounded.
    let drained = actix_rt::time::timeout(WRITE_DRAIN_TIMEOUT, parts.replica.send(BeginShutdown));
    match drained.await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => error!("the replica stopped before shutdown"),
        Err(_) => warn!("accepted writes did not resolve in time; their clients get no answer"),
    }
    let _ = stop_peers.send(true);
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
    parts.manager_arbiter.stop();
    let _ = parts.manager_arbiter.join();
    if let Some(error) = failure {
        return Err(NodeError::WalFailed(error));
    }
    info!("stopped cleanly");
    Ok(())
}

/// How often the addresses members are at are looked up again (their
/// names may move), besides whenever the members change.
const MEMBER_ADDRESS_REFRESH: Duration = Duration::from_secs(30);

/// Keeps `admission` told which IP addresses the members are at, so a
/// member's peer link always gets in (see `api::connections`).
async fn follow_member_addresses(members: MemberBook, admission: Admission) {
    let mut seen = None;
    let mut looked_up = std::time::Instant::now();
    loop {
        let version = members.version();
        if seen != Some(version) || looked_up.elapsed() >= MEMBER_ADDRESS_REFRESH {
            let mut ips = Vec::new();
            for address in members.addresses().into_values() {
                if let Ok(found) = tokio::net::lookup_host(address.as_str()).await {
                    ips.extend(found.map(|a| a.ip()));
                }
            }
            ips.sort();
            ips.dedup();
            admission.set_member_ips(ips);
            seen = Some(version);
            looked_up = std::time::Instant::now();
        }
        actix_rt::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Returns memory freed after a burst (answers held for clients that
/// did not read, large values) to the system. glibc keeps freed heap memory
/// for reuse, and after large frees raises its mmap threshold so later
/// large blocks come from the heap too; without a trim a node's resident
/// size stays at its peak for good.
fn give_back_freed_memory() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        not(feature = "heap-profiling")
    ))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
        let took = started.elapsed();
        if took > Duration::from_millis(10) {
            tracing::debug!(took_ms = took.as_millis() as u64, "malloc_trim was slow");
        }
    }
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
