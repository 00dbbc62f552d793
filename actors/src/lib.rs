//! HarmonyDB's subsystems. Each folder is one subsystem: a core in plain Rust
//! (no actix, unit-testable) and a thin actix actor that owns it and talks to
//! the rest of the node only through typed messages.
//!
//! - [`wal`]: the write-ahead log and the `WalWriter` actor (group commit).
//! - [`kv`]: the key-value state machine and the `KvStore` actor in front of it.
//! - [`raft`]: the Raft consensus core (pure), the Raft log in the WAL, and
//!   the `RaftReplica` actor that drives it.
//! - [`cluster`]: the `Transport` actor carrying Raft messages between nodes.
//! - [`storage`]: pages, the buffer pool, the B+ tree, checkpoints.
//! - [`observe`]: mailbox depth, handling time and trace context of actor messages.
//! - [`disk`]: free space, the free-space floor, the reserve file.

pub mod cluster;
pub mod disk;
pub mod kv;
pub mod observe;
pub mod raft;
pub mod storage;
pub mod wal;
