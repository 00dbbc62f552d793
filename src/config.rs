//! Node settings: each one a command-line flag, a `HARMONYDB_*` environment
//! variable, and a key of the TOML file given by `--config`. A flag beats the
//! environment (clap resolves those two), which beats the file, which beats
//! the default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::api::connections::{
    ConnectionPolicy, CONNECTIONS_DEFAULT_MAX, CONNECTIONS_PER_SOURCE_DEFAULT_MAX,
    IDLE_TIMEOUT_DEFAULT_MS, READ_TIMEOUT_DEFAULT_MS,
};
use harmonydb_actors::cluster::members::check_address;
use harmonydb_actors::kv::{REQUEST_TIMEOUT_DEFAULT, VALUE_SIZE_DEFAULT_MAX_BYTES};
use harmonydb_actors::storage::buffer::Policy;
use harmonydb_actors::wal::{
    FsyncPolicy, RECORD_PAYLOAD_SIZE_MAX_BYTES, SEGMENT_SIZE_DEFAULT_BYTES, SEGMENT_SIZE_MIN_BYTES,
};
use harmonydb_protocol::FRAME_SIZE_DEFAULT_MAX_BYTES;
use serde::Deserialize;

/// Raft tick by default, in milliseconds.
const RAFT_TICK_DEFAULT_MS: u64 = 100;

/// Buffer pool size by default, in MiB.
const BUFFER_POOL_DEFAULT_MB: usize = 256;

/// Smallest buffer pool, in MiB: a request's pages (a 1 MiB value is 128
/// overflow pages) must fit with room for the checkpoint in flight.
const BUFFER_POOL_MIN_MB: usize = 8;

/// Time between checkpoints by default, in milliseconds.
const CHECKPOINT_INTERVAL_DEFAULT_MS: u64 = 30_000;

/// Applied entries that make a checkpoint due by default.
const CHECKPOINT_ENTRIES_DEFAULT: u64 = 50_000;

/// Applied Raft entries kept in memory by default, in MiB.
const RAFT_LOG_CACHE_DEFAULT_MB: usize = 64;

/// Entries kept in the log below the last checkpoint by default.
const LOG_RETAIN_ENTRIES_DEFAULT: u64 = 10_000;

/// Entries a node's applied index may trail the leader's commit index by
/// and still be ready, by default.
const READY_MAX_LAG_ENTRIES_DEFAULT: u64 = 1000;

/// Free-space floor by default, in MiB.
const MIN_FREE_DISK_DEFAULT_MB: u64 = 256;

/// Reserve file by default, in MiB.
const DISK_RESERVE_DEFAULT_MB: u64 = 64;

/// Bytes a frame needs beyond its value: key, field names, framing.
const FRAME_OVERHEAD_MAX_BYTES: usize = 64 * 1024;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `harmonydb serve` flags. Every one is optional here so that an unset flag
/// falls through to the config file and then to the default.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, env = "HARMONYDB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the WAL and the lock file [default: ./harmonydb-data].
    #[arg(long, env = "HARMONYDB_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP JSON API address [default: 127.0.0.1:8080].
    #[arg(long, env = "HARMONYDB_HTTP_ADDR", value_name = "IP:PORT")]
    pub http_addr: Option<SocketAddr>,
    /// MessagePack TCP API address [default: 127.0.0.1:7070].
    #[arg(long, env = "HARMONYDB_TCP_ADDR", value_name = "IP:PORT")]
    pub tcp_addr: Option<SocketAddr>,
    /// When the WAL syncs: always | interval:<ms> | never [default: always].
    #[arg(long, env = "HARMONYDB_FSYNC", value_name = "POLICY", value_parser = FsyncPolicy::from_str)]
    pub fsync: Option<FsyncPolicy>,
    /// Log filter: a level (info) or directives (info,harmonydb_actors=debug) [default: info].
    #[arg(long, env = "HARMONYDB_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format [default: pretty].
    #[arg(long, env = "HARMONYDB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest value accepted, in bytes [default: 1048576].
    #[arg(long, env = "HARMONYDB_MAX_VALUE_BYTES", value_name = "BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Largest TCP frame accepted, in bytes [default: 16777216].
    #[arg(long, env = "HARMONYDB_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Size of each preallocated WAL segment file, in bytes [default: 67108864].
    #[arg(long, env = "HARMONYDB_WAL_SEGMENT_BYTES", value_name = "BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// At recovery, cut the WAL at a corrupt record even when intact records
    /// follow it (they are lost). Without it the node refuses to start and
    /// names the damage.
    #[arg(long, env = "HARMONYDB_WAL_TRUNCATE_CORRUPT_TAIL")]
    pub wal_truncate_corrupt_tail: bool,
    /// This node's id in the cluster (1 or above) [default: 1].
    #[arg(long, env = "HARMONYDB_NODE_ID", value_name = "ID")]
    pub node_id: Option<u64>,
    /// Every member's TCP address, this node's included:
    /// `1=host:port,2=host:port,3=host:port`. Without it the node is a
    /// cluster of one.
    #[arg(long, env = "HARMONYDB_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Join a running cluster through any member's TCP address: the node
    /// starts with no configuration, asks to be added as a learner, catches
    /// up, and asks to be promoted to voter. Needs --node-id (an id no
    /// member has); not with --peers. A node that joined passes the same
    /// flag again at restart.
    #[arg(long, env = "HARMONYDB_JOIN", value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// The TCP address other members reach this node at, if not
    /// --tcp-addr (behind NAT, in a container, or when listening on
    /// 0.0.0.0) [default: the TCP listen address].
    #[arg(long, env = "HARMONYDB_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,
    /// Raft's clock tick in milliseconds; heartbeats go every tick and
    /// elections start after 10 to 20 ticks without a leader [default: 100].
    #[arg(long, env = "HARMONYDB_RAFT_TICK_MS", value_name = "MS")]
    pub raft_tick_ms: Option<u64>,
    /// How long a request waits for its outcome before the client is told
    /// it is unknown, in milliseconds [default: 5000].
    #[arg(long, env = "HARMONYDB_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Accept `/admin/fault`, which drops or delays this node's Raft traffic
    /// to chosen peers. For tests only; without it the route is refused.
    #[arg(long, env = "HARMONYDB_ENABLE_FAULT_INJECTION")]
    pub enable_fault_injection: bool,
    /// Memory for the buffer pool's page frames, in MiB [default: 256].
    #[arg(long, env = "HARMONYDB_BUFFER_POOL_MB", value_name = "MIB")]
    pub buffer_pool_mb: Option<usize>,
    /// Which page the buffer pool evicts: lru-k or clock [default: lru-k].
    #[arg(long, env = "HARMONYDB_BUFFER_POOL_POLICY", value_name = "POLICY", value_parser = Policy::from_str)]
    pub buffer_pool_policy: Option<Policy>,
    /// Longest time between checkpoints, in milliseconds [default: 30000].
    #[arg(long, env = "HARMONYDB_CHECKPOINT_INTERVAL_MS", value_name = "MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Checkpoint after this many applied entries, however few pages they
    /// changed, so the log can be compacted [default: 50000].
    #[arg(long, env = "HARMONYDB_CHECKPOINT_ENTRIES", value_name = "ENTRIES")]
    pub checkpoint_entries: Option<u64>,
    /// Entries kept in the log below the last checkpoint, so a follower a
    /// little behind catches up from the log, not a snapshot [default: 10000].
    #[arg(long, env = "HARMONYDB_LOG_RETAIN_ENTRIES", value_name = "ENTRIES")]
    pub log_retain_entries: Option<u64>,
    /// MiB of applied Raft log entries kept in memory; older ones a lagging
    /// follower needs are read back from the WAL [default: 64].
    #[arg(long, env = "HARMONYDB_RAFT_LOG_CACHE_MB", value_name = "MB")]
    pub raft_log_cache_mb: Option<usize>,
    /// Client connections each front door (TCP, HTTP) takes at once
    /// [default: 1024].
    #[arg(long, env = "HARMONYDB_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<usize>,
    /// Client connections each front door takes at once from one source
    /// address [default: 256].
    #[arg(
        long,
        env = "HARMONYDB_MAX_CONNECTIONS_PER_SOURCE",
        value_name = "COUNT"
    )]
    pub max_connections_per_source: Option<usize>,
    /// How long a client may take to send a whole request once it began
    /// (a TCP frame; an HTTP head and body), and its first one once
    /// connected, in milliseconds [default: 10000].
    #[arg(long, env = "HARMONYDB_READ_TIMEOUT_MS", value_name = "MS")]
    pub read_timeout_ms: Option<u64>,
    /// How long a client connection may stay open with nothing in flight,
    /// in milliseconds [default: 60000].
    #[arg(long, env = "HARMONYDB_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Free space, in MiB, under which the node refuses writes (storage_full)
    /// and a leader hands leadership over [default: 256].
    #[arg(long, env = "HARMONYDB_MIN_FREE_DISK_MB", value_name = "MIB")]
    pub min_free_disk_mb: Option<u64>,
    /// Size, in MiB, of the reserve file the node keeps in its data
    /// directory and gives up when the disk fills, so recovery, checkpoints
    /// and log compaction can finish; 0 for none [default: 64].
    #[arg(long, env = "HARMONYDB_DISK_RESERVE_MB", value_name = "MIB")]
    pub disk_reserve_mb: Option<u64>,
    /// `/ready` answers 200 only while this node's applied index trails the
    /// leader's commit index by at most this many entries [default: 1000].
    #[arg(long, env = "HARMONYDB_READY_MAX_LAG_ENTRIES", value_name = "ENTRIES")]
    pub ready_max_lag_entries: Option<u64>,
    /// Export trace spans over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://jaeger:4318 (the path /v1/traces is added) [default: off].
    #[arg(long, env = "HARMONYDB_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0; a request that arrives with
    /// a sampled trace context is always recorded [default: 1.0].
    #[arg(long, env = "HARMONYDB_TRACE_SAMPLE_RATIO", value_name = "RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Serve the profiling routes /debug/pprof/* [default: off].
    #[arg(long, env = "HARMONYDB_ENABLE_DEBUG")]
    pub enable_debug: bool,
    /// Require `Authorization: Bearer <TOKEN>` on /admin/* and /debug/* routes.
    #[arg(
        long,
        env = "HARMONYDB_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    fsync: Option<String>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    max_value_bytes: Option<usize>,
    max_frame_bytes: Option<usize>,
    wal_segment_bytes: Option<u64>,
    wal_truncate_corrupt_tail: Option<bool>,
    node_id: Option<u64>,
    peers: Option<String>,
    join: Option<String>,
    advertise_addr: Option<String>,
    raft_tick_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    enable_fault_injection: Option<bool>,
    buffer_pool_mb: Option<usize>,
    buffer_pool_policy: Option<String>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_entries: Option<u64>,
    log_retain_entries: Option<u64>,
    raft_log_cache_mb: Option<usize>,
    ready_max_lag_entries: Option<u64>,
    min_free_disk_mb: Option<u64>,
    disk_reserve_mb: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    otlp_endpoint: Option<String>,
    trace_sample_ratio: Option<f64>,
    enable_debug: Option<bool>,
    admin_token: Option<String>,
}

/// A node's resolved settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the node keeps its files.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// TCP listen address.
    pub tcp_addr: SocketAddr,
    /// WAL sync policy.
    pub fsync: FsyncPolicy,
    /// Log filter directives.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Largest value accepted.
    pub value_size_max_bytes: usize,
    /// Largest TCP frame accepted.
    pub frame_size_max_bytes: usize,
    /// WAL segment file size.
    pub wal_segment_size_bytes: u64,
    /// Cut a corrupt WAL tail even when intact records follow it.
    pub wal_truncate_corrupt_tail: bool,
    /// This node's id.
    pub node_id: u64,
    /// Every member's TCP address by id, this node included (with `join`,
    /// only this node).
    pub members: BTreeMap<u64, String>,
    /// A member's TCP address to join the cluster through, if joining.
    pub join: Option<String>,
    /// The TCP address other members reach this node at, if not `tcp_addr`.
    pub advertise_addr: Option<String>,
    /// Raft's tick.
    pub raft_tick: Duration,
    /// How long a request waits for its outcome.
    pub request_timeout: Duration,
    /// Whether `/admin/fault` is accepted.
    pub enable_fault_injection: bool,
    /// Buffer pool memory, in MiB.
    pub buffer_pool_mb: usize,
    /// The buffer pool's replacement policy.
    pub buffer_pool_policy: Policy,
    /// Longest time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Applied entries that make a checkpoint due.
    pub checkpoint_entries: u64,
    /// Entries kept in the log below the last checkpoint.
    pub log_retain_entries: u64,
    /// MiB of applied Raft entries kept in memory.
    pub raft_log_cache_mb: usize,
    /// Most entries the applied index may trail the leader's commit by for `/ready`.
    pub ready_max_lag_entries: u64,
    /// Connection caps and deadlines for both front doors.
    pub connections: ConnectionPolicy,
    /// Free space under which writes are refused, in MiB.
    pub min_free_disk_mb: u64,
    /// The reserve file's size, in MiB (0: none).
    pub disk_reserve_mb: u64,
    /// Where trace spans go (OTLP/HTTP base URL), if anywhere.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded.
    pub trace_sample_ratio: f64,
    /// Whether /debug/pprof/* is served.
    pub enable_debug: bool,
    /// The bearer token /admin/* and /debug/* require, if any.
    pub admin_token: Option<String>,
}

/// A setting that can't be used, named with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or not understood.
    #[error("invalid setting {name}: {message}")]
    Invalid {
        /// The setting's name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Merges flags and environment (already in `args`) with the config file and defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let fsync = match (&args.fsync, &file.fsync) {
            (Some(policy), _) => *policy,
            (None, Some(text)) => {
                FsyncPolicy::from_str(text).map_err(|message| ConfigError::Invalid {
                    name: "fsync",
                    message,
                })?
            }
            (None, None) => FsyncPolicy::Always,
        };
        let buffer_pool_policy = match (&args.buffer_pool_policy, &file.buffer_pool_policy) {
            (Some(policy), _) => *policy,
            (None, Some(text)) => {
                Policy::from_str(text).map_err(|message| ConfigError::Invalid {
                    name: "buffer_pool_policy",
                    message,
                })?
            }
            (None, None) => Policy::default(),
        };
        let config = Config {
            data_dir: pick(&args.data_dir, file.data_dir, || {
                PathBuf::from("./harmonydb-data")
            }),
            http_addr: pick(&args.http_addr, file.http_addr, || {
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }),
            tcp_addr: pick(&args.tcp_addr, file.tcp_addr, || {
                SocketAddr::from(([127, 0, 0, 1], 7070))
            }),
            fsync,
            log_level: pick(&args.log_level, file.log_level, || "info".to_string()),
            log_format: pick(&args.log_format, file.log_format, || LogFormat::Pretty),
            value_size_max_bytes: pick(&args.max_value_bytes, file.max_value_bytes, || {
                VALUE_SIZE_DEFAULT_MAX_BYTES
            }),
            frame_size_max_bytes: pick(&args.max_frame_bytes, file.max_frame_bytes, || {
                FRAME_SIZE_DEFAULT_MAX_BYTES
            }),
            wal_segment_size_bytes: pick(&args.wal_segment_bytes, file.wal_segment_bytes, || {
                SEGMENT_SIZE_DEFAULT_BYTES
            }),
            wal_truncate_corrupt_tail: args.wal_truncate_corrupt_tail
                || file.wal_truncate_corrupt_tail.unwrap_or(false),
            node_id: 0,
            members: BTreeMap::new(),
            join: None,
            advertise_addr: None,
            raft_tick: Duration::from_millis(pick(&args.raft_tick_ms, file.raft_tick_ms, || {
                RAFT_TICK_DEFAULT_MS
            })),
            request_timeout: Duration::from_millis(pick(
                &args.request_timeout_ms,
                file.request_timeout_ms,
                || REQUEST_TIMEOUT_DEFAULT.as_millis() as u64,
            )),
            enable_fault_injection: args.enable_fault_injection
                || file.enable_fault_injection.unwrap_or(false),
            buffer_pool_mb: pick(&args.buffer_pool_mb, file.buffer_pool_mb, || {
                BUFFER_POOL_DEFAULT_MB
            }),
            buffer_pool_policy,
            checkpoint_interval: Duration::from_millis(pick(
                &args.checkpoint_interval_ms,
                file.checkpoint_interval_ms,
                || CHECKPOINT_INTERVAL_DEFAULT_MS,
            )),
            checkpoint_entries: pick(&args.checkpoint_entries, file.checkpoint_entries, || {
                CHECKPOINT_ENTRIES_DEFAULT
            }),
            log_retain_entries: pick(&args.log_retain_entries, file.log_retain_entries, || {
                LOG_RETAIN_ENTRIES_DEFAULT
            }),
            raft_log_cache_mb: pick(&args.raft_log_cache_mb, file.raft_log_cache_mb, || {
                RAFT_LOG_CACHE_DEFAULT_MB
            }),
            ready_max_lag_entries: pick(
                &args.ready_max_lag_entries,
                file.ready_max_lag_entries,
                || READY_MAX_LAG_ENTRIES_DEFAULT,
            ),
            min_free_disk_mb: pick(&args.min_free_disk_mb, file.min_free_disk_mb, || {
                MIN_FREE_DISK_DEFAULT_MB
            }),
            disk_reserve_mb: pick(&args.disk_reserve_mb, file.disk_reserve_mb, || {
                DISK_RESERVE_DEFAULT_MB
            }),
            connections: ConnectionPolicy {
                connections_max: pick(&args.max_connections, file.max_connections, || {
                    CONNECTIONS_DEFAULT_MAX
                }),
                connections_per_source_max: pick(
                    &args.max_connections_per_source,
                    file.max_connections_per_source,
                    || CONNECTIONS_PER_SOURCE_DEFAULT_MAX,
                ),
                read_timeout: Duration::from_millis(pick(
                    &args.read_timeout_ms,
                    file.read_timeout_ms,
                    || READ_TIMEOUT_DEFAULT_MS,
                )),
                idle_timeout: Duration::from_millis(pick(
                    &args.idle_timeout_ms,
                    file.idle_timeout_ms,
                    || IDLE_TIMEOUT_DEFAULT_MS,
                )),
            },
            otlp_endpoint: args
                .otlp_endpoint
                .clone()
                .or(file.otlp_endpoint)
                .filter(|url| !url.trim().is_empty()),
            trace_sample_ratio: pick(&args.trace_sample_ratio, file.trace_sample_ratio, || 1.0),
            enable_debug: args.enable_debug || file.enable_debug.unwrap_or(false),
            admin_token: args.admin_token.clone().or(file.admin_token),
        };
        let mut config = config;
        let node_id_given = args.node_id.or(file.node_id).is_some();
        config.node_id = pick(&args.node_id, file.node_id, || 1);
        if config.node_id == 0 {
            return Err(ConfigError::Invalid {
                name: "node_id",
                message: "0 is reserved; node ids start at 1".into(),
            });
        }
        config.advertise_addr = args
            .advertise_addr
            .clone()
            .or(file.advertise_addr)
            .filter(|a| !a.trim().is_empty());
        if let Some(addr) = &config.advertise_addr {
            check_address(addr).map_err(|message| ConfigError::Invalid {
                name: "advertise_addr",
                message,
            })?;
        }
        config.join = args
            .join
            .clone()
            .or(file.join)
            .filter(|a| !a.trim().is_empty());
        let peers = pick(&args.peers, file.peers, String::new);
        if let Some(join) = &config.join {
            check_address(join).map_err(|message| ConfigError::Invalid {
                name: "join",
                message,
            })?;
            if !peers.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    name: "join",
                    message: "give --join or --peers, not both: --peers starts a new cluster, --join enters a running one".into(),
                });
            }
            if !node_id_given {
                return Err(ConfigError::Invalid {
                    name: "join",
                    message:
                        "--join needs --node-id: the id the new member takes, one no member has"
                            .into(),
                });
            }
        }
        config.members = match peers {
            text if text.trim().is_empty() => {
                BTreeMap::from([(config.node_id, config.tcp_addr.to_string())])
            }
            text => parse_peers(&text, config.node_id).map_err(|message| ConfigError::Invalid {
                name: "peers",
                message,
            })?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let value_limit = RECORD_PAYLOAD_SIZE_MAX_BYTES - FRAME_OVERHEAD_MAX_BYTES;
        if self.value_size_max_bytes == 0 || self.value_size_max_bytes > value_limit {
            return Err(ConfigError::Invalid {
                name: "max_value_bytes",
                message: format!("{} is outside 1..={value_limit}", self.value_size_max_bytes),
            });
        }
        let frame_floor = self.value_size_max_bytes + FRAME_OVERHEAD_MAX_BYTES;
        if self.frame_size_max_bytes < frame_floor || self.frame_size_max_bytes > u32::MAX as usize
        {
            return Err(ConfigError::Invalid {
                name: "max_frame_bytes",
                message: format!(
                    "{} must be at least max_value_bytes + {FRAME_OVERHEAD_MAX_BYTES} = {frame_floor} (so the largest value fits in a frame) and at most {}",
                    self.frame_size_max_bytes,
                    u32::MAX
                ),
            });
        }
        if self.wal_segment_size_bytes < SEGMENT_SIZE_MIN_BYTES {
            return Err(ConfigError::Invalid {
                name: "wal_segment_bytes",
                message: format!(
                    "{} is below the minimum of {SEGMENT_SIZE_MIN_BYTES}",
                    self.wal_segment_size_bytes
                ),
            });
        }
        let tick_ms = self.raft_tick.as_millis();
        if !(1..=10_000).contains(&tick_ms) {
            return Err(ConfigError::Invalid {
                name: "raft_tick_ms",
                message: format!("{tick_ms} is outside 1..=10000"),
            });
        }
        let timeout_ms = self.request_timeout.as_millis();
        if !(1..=3_600_000).contains(&timeout_ms) {
            return Err(ConfigError::Invalid {
                name: "request_timeout_ms",
                message: format!("{timeout_ms} is outside 1..=3600000"),
            });
        }
        if !(BUFFER_POOL_MIN_MB..=1024 * 1024).contains(&self.buffer_pool_mb) {
            return Err(ConfigError::Invalid {
                name: "buffer_pool_mb",
                message: format!(
                    "{} is outside {BUFFER_POOL_MIN_MB}..=1048576",
                    self.buffer_pool_mb
                ),
            });
        }
        if self.raft_log_cache_mb > 1024 * 1024 {
            return Err(ConfigError::Invalid {
                name: "raft_log_cache_mb",
                message: format!("{} is outside 0..=1048576", self.raft_log_cache_mb),
            });
        }
        let interval_ms = self.checkpoint_interval.as_millis();
        if !(10..=86_400_000).contains(&interval_ms) {
            return Err(ConfigError::Invalid {
                name: "checkpoint_interval_ms",
                message: format!("{interval_ms} is outside 10..=86400000"),
            });
        }
        let connections = &self.connections;
        if !(1..=1_000_000).contains(&connections.connections_max) {
            return Err(ConfigError::Invalid {
                name: "max_connections",
                message: format!("{} is outside 1..=1000000", connections.connections_max),
            });
        }
        if !(1..=connections.connections_max).contains(&connections.connections_per_source_max) {
            return Err(ConfigError::Invalid {
                name: "max_connections_per_source",
                message: format!(
                    "{} is outside 1..=max_connections ({})",
                    connections.connections_per_source_max, connections.connections_max
                ),
            });
        }
        for (name, timeout) in [
            ("read_timeout_ms", connections.read_timeout),
            ("idle_timeout_ms", connections.idle_timeout),
        ] {
            let ms = timeout.as_millis();
            if !(100..=3_600_000).contains(&ms) {
                return Err(ConfigError::Invalid {
                    name,
                    message: format!("{ms} is outside 100..=3600000"),
                });
            }
        }
        if self.checkpoint_entries == 0 {
            return Err(ConfigError::Invalid {
                name: "checkpoint_entries",
                message: "0: at least one entry must be applied between checkpoints".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::Invalid {
                name: "trace_sample_ratio",
                message: format!("{} is outside 0.0..=1.0", self.trace_sample_ratio),
            });
        }
        if let Some(url) = &self.otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    name: "otlp_endpoint",
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
            if url.starts_with("https://") {
                return Err(ConfigError::Invalid {
                    name: "otlp_endpoint",
                    message: format!("{url:?}: this build exports over plain http only; put a TLS-terminating collector next to the node"),
                });
            }
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(ConfigError::Invalid {
                name: "admin_token",
                message: "empty; leave it unset or give a token".into(),
            });
        }
        crate::telemetry::parse_log_filter(&self.log_level).map_err(|message| {
            ConfigError::Invalid {
                name: "log_level",
                message,
            }
        })?;
        Ok(())
    }
}

impl Config {
    /// At a data directory's first start, checks that this node's own
    /// `--peers` entry is where it can be reached: the others will dial
    /// that address, and nothing would tell them it is wrong. The entry's
    /// port must be the one this node listens on (or `--advertise-addr`'s,
    /// which the entry must then be); and when `--tcp-addr` names one
    /// address rather than a wildcard, the entry's host must resolve to it.
    /// A host that does not resolve here (a name only other machines know)
    /// is let through.
    pub fn check_own_peer_address(&self) -> Result<(), ConfigError> {
        let Some(listed) = self.members.get(&self.node_id) else {
            return Ok(());
        };
        let invalid = |message: String| ConfigError::Invalid {
            name: "peers",
            message,
        };
        if self.join.is_some() || *listed == self.tcp_addr.to_string() {
            return Ok(());
        }
        if let Some(advertised) = &self.advertise_addr {
            if listed != advertised {
                return Err(invalid(format!(
                    "this node's entry {}={listed} is not its --advertise-addr {advertised}, where the others are to reach it",
                    self.node_id
                )));
            }
            return Ok(());
        }
        let (host, port) = listed.rsplit_once(':').unwrap_or((listed.as_str(), ""));
        let listening = self.tcp_addr;
        if port.parse::<u16>().ok() != Some(listening.port()) {
            return Err(invalid(format!(
                "this node's entry {}={listed} has port {port}, but it listens on {listening} (--tcp-addr); expected {}:{}, or give --advertise-addr if the others reach it through another port",
                self.node_id,
                host,
                listening.port()
            )));
        }
        if listening.ip().is_unspecified() {
            return Ok(());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let resolved: Vec<std::net::IpAddr> =
            match std::net::ToSocketAddrs::to_socket_addrs(&(host, listening.port())) {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(_) => return Ok(()),
            };
        if resolved.is_empty() || resolved.contains(&listening.ip()) {
            return Ok(());
        }
        Err(invalid(format!(
            "this node's entry {}={listed} is not where it listens: {host} is {}, but --tcp-addr is {listening}; expected {listening}, or listen on 0.0.0.0, or give --advertise-addr",
            self.node_id,
            resolved
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Parses `1=host:port,2=host:port`: ids from 1, each once, every address
/// with a port, and `node_id` among them.
fn parse_peers(text: &str, node_id: u64) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            return Err(format!("{item:?} is not ID=HOST:PORT"));
        };
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{item:?}: the id {:?} is not a number", id.trim()))?;
        if id == 0 {
            return Err(format!("{item:?}: node id 0 is reserved"));
        }
        let addr = addr.trim();
        check_address(addr).map_err(|_| {
            format!(
                "{item:?}: {addr:?} is not HOST:PORT (a host the others can reach, a port from 1)"
            )
        })?;
        if members.insert(id, addr.to_string()).is_some() {
            return Err(format!("node id {id} is listed twice"));
        }
    }
    if !members.contains_key(&node_id) {
        return Err(format!(
            "this node's id {node_id} is not among the peers ({}); list every member, this one included",
            members.keys().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(members)
}

fn pick<T: Clone>(flag_or_env: &Option<T>, file: Option<T>, default: impl FnOnce() -> T) -> T {
    flag_or_env.clone().or(file).unwrap_or_else(default)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        file
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::resolve(&ServeArgs::default()).expect("defaults are valid");
        assert_eq!(config.data_dir, PathBuf::from("./harmonydb-data"));
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.tcp_addr.to_string(), "127.0.0.1:7070");
        assert_eq!(config.fsync, FsyncPolicy::Always);
        assert_eq!(config.log_format, LogFormat::Pretty);
        assert_eq!(config.value_size_max_bytes, 1024 * 1024);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file = file_with(
            "data_dir = \"/from/file\"\nhttp_addr = \"127.0.0.1:9000\"\nfsync = \"interval:10\"\nlog_format = \"json\"\n",
        );
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            http_addr: Some("127.0.0.1:9999".parse().expect("addr")),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).expect("valid");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:9999");
        assert_eq!(config.data_dir, PathBuf::from("/from/file"));
        assert_eq!(
            config.fsync,
            FsyncPolicy::Interval(std::time::Duration::from_millis(10))
        );
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.tcp_addr.to_string(), "127.0.0.1:7070");
    }

    #[test]
    fn peers_come_from_flags_or_the_file_and_are_checked() {
        let alone = Config::resolve(&ServeArgs::default()).expect("defaults");
        assert_eq!(alone.node_id, 1);
        assert_eq!(
            alone.members,
            BTreeMap::from([(1, "127.0.0.1:7070".to_string())])
        );

        let file = file_with("node_id = 2\npeers = \"1=a:7070, 2=b:7071,3=10.0.0.3:7072\"\n");
        let args = ServeArgs {
            config: Some(file.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).expect("valid");
        assert_eq!(config.node_id, 2);
        assert_eq!(config.members.len(), 3);
        assert_eq!(config.members[&2], "b:7071");
        let flagged = ServeArgs {
            node_id: Some(3),
            ..args
        };
        assert_eq!(Config::resolve(&flagged).expect("valid").node_id, 3);

        for (peers, node_id, complaint) in [
            ("1=a:1,2=b:2", 3, "not among the peers"),
            ("1=a:1,1=b:2", 1, "listed twice"),
            ("0=a:1", 1, "reserved"),
            ("1=a", 1, "not HOST:PORT"),
            ("x=a:1", 1, "not a number"),
            ("1:a:1", 1, "not ID=HOST:PORT"),
        ] {
            let args = ServeArgs {
                node_id: Some(node_id),
                peers: Some(peers.into()),
                ..ServeArgs::default()
            };
            let message = Config::resolve(&args).expect_err(peers).to_string();
            assert!(
                message.contains("peers") && message.contains(complaint),
                "{peers}: {message}"
            );
        }
        let zero = ServeArgs {
            node_id: Some(0),
            ..ServeArgs::default()
        };
        let message = Config::resolve(&zero).expect_err("id 0").to_string();
        assert!(message.contains("node_id"), "{message}");
    }

    #[test]
    fn this_nodes_own_peer_entry_must_be_where_it_listens() {
        let resolve = |tcp: &str, peers: &str, advertise: Option<&str>| {
            Config::resolve(&ServeArgs {
                node_id: Some(1),
                tcp_addr: Some(tcp.parse().expect("addr")),
                peers: Some(peers.into()),
                advertise_addr: advertise.map(String::from),
                ..ServeArgs::default()
            })
            .expect("valid flags")
            .check_own_peer_address()
            .map_err(|e| e.to_string())
        };
        let others = ",2=127.0.0.1:9001,3=127.0.0.1:9002";
        // Another port: the others would never reach it.
        let wrong_port = resolve("127.0.0.1:9998", &format!("1=127.0.0.1:9000{others}"), None)
            .expect_err("another port");
        assert!(
            wrong_port.contains("port 9000") && wrong_port.contains("127.0.0.1:9998"),
            "{wrong_port}"
        );
        // Another host than the one address it listens on.
        let wrong_host = resolve("127.0.0.1:9000", &format!("1=127.0.0.2:9000{others}"), None)
            .expect_err("another host");
        assert!(
            wrong_host.contains("expected 127.0.0.1:9000"),
            "{wrong_host}"
        );
        // The same address, a name for it, or a wildcard listener: fine.
        resolve("127.0.0.1:9000", &format!("1=127.0.0.1:9000{others}"), None).expect("same");
        resolve("127.0.0.1:9000", &format!("1=localhost:9000{others}"), None).expect("a name");
        // The compose file's form: listen on all addresses, named by service.
        resolve(
            "0.0.0.0:7070",
            "1=harmonydb1:7070,2=harmonydb2:7070,3=harmonydb3:7070",
            None,
        )
        .expect("compose");
        // Behind NAT the advertised address is the one to list.
        resolve(
            "0.0.0.0:7070",
            &format!("1=10.0.0.1:17070{others}"),
            Some("10.0.0.1:17070"),
        )
        .expect("advertised");
        let not_advertised = resolve(
            "0.0.0.0:7070",
            &format!("1=10.0.0.1:7070{others}"),
            Some("10.0.0.1:17070"),
        )
        .expect_err("not the advertised address");
        assert!(
            not_advertised.contains("--advertise-addr"),
            "{not_advertised}"
        );
    }

    #[test]
    fn join_needs_a_node_id_and_excludes_peers() {
        let joining = ServeArgs {
            node_id: Some(4),
            join: Some("10.0.0.1:7070".into()),
            advertise_addr: Some("node-4:7070".into()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&joining).expect("valid");
        assert_eq!(config.join.as_deref(), Some("10.0.0.1:7070"));
        assert_eq!(config.advertise_addr.as_deref(), Some("node-4:7070"));
        assert_eq!(config.members.keys().copied().collect::<Vec<_>>(), [4]);
        for (args, complaint) in [
            (
                ServeArgs {
                    join: Some("a:1".into()),
                    ..ServeArgs::default()
                },
                "needs --node-id",
            ),
            (
                ServeArgs {
                    node_id: Some(4),
                    join: Some("a:1".into()),
                    peers: Some("4=b:2".into()),
                    ..ServeArgs::default()
                },
                "not both",
            ),
            (
                ServeArgs {
                    node_id: Some(4),
                    join: Some("no-port".into()),
                    ..ServeArgs::default()
                },
                "not host:port",
            ),
            (
                ServeArgs {
                    advertise_addr: Some("a:0".into()),
                    ..ServeArgs::default()
                },
                "not host:port",
            ),
        ] {
            let message = Config::resolve(&args).expect_err(complaint).to_string();
            assert!(message.contains(complaint), "{message}");
        }
    }

    #[test]
    fn bad_files_and_values_say_what_is_wrong() {
        let unknown = file_with("data_dri = \"/typo\"\n");
        let args = ServeArgs {
            config: Some(unknown.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let message = Config::resolve(&args).expect_err("unknown key").to_string();
        assert!(message.contains("data_dri"), "{message}");

        let bad_fsync = file_with("fsync = \"sometimes\"\n");
        let args = ServeArgs {
            config: Some(bad_fsync.path().to_path_buf()),
            ..ServeArgs::default()
        };
        let message = Config::resolve(&args).expect_err("bad fsync").to_string();
        assert!(
            message.contains("fsync") && message.contains("sometimes"),
            "{message}"
        );

        let args = ServeArgs {
            config: Some(PathBuf::from("/nonexistent/harmonydb.toml")),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::resolve(&args),
            Err(ConfigError::Read { .. })
        ));

        let args = ServeArgs {
            max_value_bytes: Some(2 * 1024 * 1024),
            max_frame_bytes: Some(1024 * 1024),
            ..ServeArgs::default()
        };
        let message = Config::resolve(&args)
            .expect_err("frame too small")
            .to_string();
        assert!(message.contains("max_frame_bytes"), "{message}");

        let args = ServeArgs {
            log_level: Some("loud".into()),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(&args).is_err());
    }
}
