//! Cluster plumbing: the `Transport` actor that carries Raft messages
//! between nodes over TCP with the protocol crate's framing, the member
//! book that says where nodes are, and the fault filter tests use to cut,
//! thin out, duplicate or delay that traffic.

pub mod fault;
pub mod members;
pub mod messages;
pub mod rpc;
pub mod transport;
