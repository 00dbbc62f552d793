//! Cluster plumbing: the `Transport` actor that carries Raft messages
//! between nodes over TCP with the protocol crate's framing.

pub mod transport;
