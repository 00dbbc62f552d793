//! The `harmonydb` node: configuration, the command line, the HTTP and TCP
//! front doors, telemetry, and the assembly of the actors into a running node.
//! The subsystems themselves live in `harmonydb-actors`; the wire format and
//! the client in `harmonydb-protocol`.

pub mod api;
pub mod cli;
pub mod config;
pub mod join;
pub mod node;
pub mod telemetry;
