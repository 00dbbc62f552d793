//! HarmonyDB's subsystems. Each folder is one subsystem: a core in plain Rust
//! (no actix, unit-testable) and a thin actix actor that owns it and talks to
//! the rest of the node only through typed messages.
//!
//! - [`wal`]: the write-ahead log and the `WalWriter` actor (group commit).
//! - [`kv`]: the key-value state machine and the `KvHandle` front doors
//!   reach it through.
//! - [`replica`]: the `RaftReplica` actor that drives the Raft core (crate
//!   `harmonydb-raft`) with the WAL and the KV state, and the Raft log as
//!   WAL records.
//! - [`cluster`]: the `Transport` actor carrying Raft messages between
//!   nodes, the messages between it and the replica, the member book.
//! - [`storage`]: pages, the buffer pool, the B+ tree, checkpoints.
//! - [`observe`]: mailbox depth, handling time and trace context of actor messages.
//! - [`disk`]: free space, the free-space floor, the reserve file.

pub mod cluster;
pub mod disk;
pub mod kv;
pub mod observe;
pub mod replica;
pub mod storage;
pub mod wal;
