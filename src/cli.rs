//! The command line: `harmonydb serve` runs a node; `harmonydb kv ...` talks
//! to one over the TCP protocol.
//!
//! Exit codes of `kv` commands: 0 success, 1 the node answered with an error
//! (not found, version mismatch, ...), 2 bad usage, 3 the node could not be reached.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use harmonydb_protocol::{Client, ClientError, Request};

use crate::config::ServeArgs;

/// HarmonyDB: a distributed, strongly consistent, transactional database.
#[derive(Debug, Parser)]
#[command(name = "harmonydb", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(ServeArgs),
    /// Read and write keys on a running node.
    Kv(KvArgs),
}

/// `harmonydb kv` options.
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    /// The node's TCP address.
    #[arg(
        long,
        global = true,
        env = "HARMONYDB_ADDR",
        default_value = "127.0.0.1:7070"
    )]
    pub addr: String,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout: u64,
    /// The operation.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// Key-value operations.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
        /// Also print the version, as `version<TAB>value`.
        #[arg(long)]
        with_version: bool,
    },
    /// Set a key's value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
        /// Only if the key has this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Set a key's value only if its version is EXPECTED_VERSION (0 = the key must not exist).
    Cas {
        /// The key.
        key: String,
        /// The version the key must have.
        expected_version: u64,
        /// The new value.
        value: String,
    },
    /// List keys in order, one `key<TAB>version<TAB>value` line each.
    Scan {
        /// Only keys with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// First key (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// Last key (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// At most this many keys (1..=10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

/// Runs a `kv` command and returns the process exit code.
pub fn run_kv(args: KvArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(kv(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            match error {
                ClientError::Server { .. } | ClientError::UnexpectedResponse(_) => {
                    ExitCode::from(1)
                }
                ClientError::RequestTooLarge { .. } | ClientError::NotAScan(_) => ExitCode::from(2),
                _ => ExitCode::from(3),
            }
        }
    }
}

async fn kv(args: KvArgs) -> Result<(), ClientError> {
    let client = Client::connect(args.addr.as_str())
        .await?
        .with_timeout(Duration::from_secs(args.timeout));
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not an error of the database's.
    let _ = match args.command {
        KvCommand::Get { key, with_version } => {
            let Some(item) = client.get(key.as_bytes()).await? else {
                return Err(ClientError::Server {
                    code: harmonydb_protocol::ErrorCode::NotFound,
                    message: format!("key {key} not found"),
                });
            };
            if with_version {
                let _ = write!(out, "{}\t", item.version);
            }
            out.write_all(&item.value).and_then(|()| writeln!(out))
        }
        KvCommand::Put { key, value } => {
            let version = client.put(key.as_bytes(), value.as_bytes()).await?;
            writeln!(out, "OK version {version}")
        }
        KvCommand::Cas {
            key,
            expected_version,
            value,
        } => {
            let version = client
                .cas(key.as_bytes(), expected_version, value.as_bytes())
                .await?;
            writeln!(out, "OK version {version}")
        }
        KvCommand::Del {
            key,
            expected_version,
        } => {
            let deleted = client.delete(key.as_bytes(), expected_version).await?;
            writeln!(out, "deleted {key} (was version {deleted})")
        }
        KvCommand::Scan {
            prefix,
            start,
            end,
            limit,
        } => {
            let request = Request::Scan {
                prefix: prefix.into_bytes(),
                start: start.map(String::into_bytes),
                end: end.map(String::into_bytes),
                limit: Some(limit),
            };
            let (items, more) = client.scan(request).await?;
            for item in &items {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}",
                    item.key.escape_ascii(),
                    item.version,
                    item.value.escape_ascii()
                );
            }
            if let (true, Some(last)) = (more, items.last()) {
                eprintln!(
                    "(more keys follow; continue with --start '{}\\x00')",
                    last.key.escape_ascii()
                );
            }
            Ok(())
        }
    };
    Ok(())
}
