//! The node's front doors: the HTTP JSON API and the MessagePack TCP API.
//! Both offer the same operations and share one error mapping.

pub mod connections;
pub mod debug;
pub mod error;
pub mod http;
pub mod http_server;
pub mod service;
pub mod tcp;
