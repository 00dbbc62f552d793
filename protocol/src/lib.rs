//! HarmonyDB's wire protocol: the messages clients and nodes exchange, their
//! length-prefixed MessagePack framing, and an async Rust client that keeps
//! many requests in flight on one connection.
//!
//! `protocol/README.md` specifies the format for writing a client in another language.

pub mod client;
pub mod frame;
pub mod message;

pub use client::{Client, ClientError};
pub use frame::FRAME_SIZE_DEFAULT_MAX_BYTES;
pub use message::{
    ClusterStatus, Consistency, ErrorCode, Item, LeaderHint, MemberStatus, Membership, Operation,
    OperationKind, Readiness, Request, RequestFrame, Response, ResponseFrame, Staleness,
    OPERATIONS,
};
