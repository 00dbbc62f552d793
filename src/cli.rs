//! The command line: `harmonydb serve` runs a node; `harmonydb kv ...` and
//! `harmonydb cluster ...` talk to one over the TCP protocol;
//! `harmonydb storage check` checks a stopped node's page file.
//!
//! Exit codes of `kv` and `cluster` commands: 0 success, 1 the node answered
//! with an error (not found, version mismatch, not_leader, ...), 2 bad usage,
//! 3 the node could not be reached.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use harmonydb_protocol::{Client, ClientError, ClusterStatus, Consistency, Request, Response};

use crate::config::ServeArgs;

/// HarmonyDB: a distributed, strongly consistent key-value database,
/// replicated with Raft.
///
/// `serve` runs a node; `kv` reads and writes keys; `cluster` shows and
/// changes a running cluster; `storage check` checks a stopped node's files.
#[derive(Debug, Parser)]
#[command(name = "harmonydb", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Read and write keys on a running node.
    Kv(KvArgs),
    /// Look at and change a running cluster: status, readiness, leadership,
    /// members.
    Cluster(ClusterArgs),
    /// Look at a stopped node's storage.
    Storage(StorageArgs),
}

/// `harmonydb storage` options.
#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// The operation.
    #[command(subcommand)]
    pub command: StorageCommand,
}

/// Offline storage operations (the node must be stopped).
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Opens the storage as a node would (finishing an interrupted
    /// checkpoint), then reads every page of every tree and checks the
    /// tree's structure. Exit code 0 if it is sound, 1 if not.
    Check {
        /// The node's data directory.
        #[arg(long, env = "HARMONYDB_DATA_DIR", default_value = "./harmonydb-data")]
        data_dir: std::path::PathBuf,
    },
}

/// Runs a `storage` command and returns the process exit code.
pub fn run_storage(args: StorageArgs) -> ExitCode {
    let StorageCommand::Check { data_dir } = args.command;
    match crate::node::check_storage(&data_dir) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

/// Where a client command connects.
#[derive(Debug, clap::Args)]
pub struct Target {
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
}

/// `harmonydb cluster` options.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Where to connect.
    #[command(flatten)]
    pub target: Target,
    /// The operation.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster operations.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term, commit and applied index, and each member's
    /// match index, lag and when it was last heard from (known when asking
    /// the leader); members not heard from lately are marked unreachable.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Whether the node is ready to serve: it knows a live leader and has
    /// applied nearly all that leader committed. Exit code 0 if ready, 1
    /// (with the reason) if not; for health checks.
    Ready,
    /// Hands leadership to a voter (the most caught-up one without --to),
    /// e.g. before maintenance on the leader's machine.
    TransferLeader {
        /// The voter to lead next.
        #[arg(long, value_name = "ID")]
        to: Option<u64>,
    },
    /// Adds a node as a learner (it gets the log but doesn't vote); start
    /// it with `harmonydb serve --join` to have it promote itself, or
    /// promote it with `cluster promote` once it has caught up.
    Add {
        /// The new node's id (one no member has).
        id: u64,
        /// Its TCP address as the members reach it (host:port).
        address: String,
    },
    /// Makes a caught-up learner a voter (through a joint configuration).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Removes a voter or learner, the leader included (leadership is
    /// handed over first). The removed node stops taking part.
    Remove {
        /// The member's id.
        id: u64,
    },
}

/// `harmonydb kv` options.
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    /// Where to connect.
    #[command(flatten)]
    pub target: Target,
    /// Don't forward to the leader: a node that doesn't lead answers
    /// not_leader with the leader's address instead.
    #[arg(long, global = true)]
    pub no_forward: bool,
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
        /// How fresh the read must be.
        #[command(flatten)]
        read: ReadArgs,
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
        /// How fresh the read must be.
        #[command(flatten)]
        read: ReadArgs,
    },
}

/// What reads take.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// How fresh the read must be: linearizable, lease, or stale (served by
    /// the node asked, which may be behind; it says how far).
    #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
    pub consistency: Consistency,
}

fn parse_consistency(text: &str) -> Result<Consistency, String> {
    text.parse()
}

/// Runs a client command on a current-thread runtime and maps its outcome
/// to the exit code.
fn run_client<F: std::future::Future<Output = Result<(), ClientError>>>(work: F) -> ExitCode {
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
    match runtime.block_on(work) {
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

/// Runs a `kv` command and returns the process exit code.
pub fn run_kv(args: KvArgs) -> ExitCode {
    run_client(kv(args))
}

/// Runs a `cluster` command and returns the process exit code.
pub fn run_cluster(args: ClusterArgs) -> ExitCode {
    run_client(cluster(args))
}

async fn connect(target: &Target) -> Result<Client, ClientError> {
    Ok(Client::connect(target.addr.as_str())
        .await?
        .with_timeout(Duration::from_secs(target.timeout)))
}

async fn cluster(args: ClusterArgs) -> Result<(), ClientError> {
    let client = connect(&args.target).await?;
    let json = match args.command {
        ClusterCommand::Status { json } => json,
        ClusterCommand::Ready => {
            return match client.request(Request::Ready).await? {
                Response::Ready(ready) => {
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "node {} is ready: leader {} heard from {} ms ago; applied index {}, leader's commit index {}",
                        ready.node_id,
                        ready.leader,
                        ready.leader_contact_ms,
                        ready.applied_index,
                        ready.leader_commit_index
                    );
                    Ok(())
                }
                other => Err(unexpected(other)),
            };
        }
        ClusterCommand::TransferLeader { to } => {
            return match client
                .request(Request::TransferLeader { target: to })
                .await?
            {
                Response::LeaderTransferred { leader, term } => {
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "node {leader} leads in term {term}"
                    );
                    Ok(())
                }
                other => Err(unexpected(other)),
            };
        }
        ClusterCommand::Add { id, address } => {
            return change_membership(&client, Request::AddMember { id, address }).await
        }
        ClusterCommand::Promote { id } => {
            return change_membership(&client, Request::PromoteMember { id }).await
        }
        ClusterCommand::Remove { id } => {
            return change_membership(&client, Request::RemoveMember { id }).await
        }
    };
    let status = client.cluster_status().await?;
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| ClientError::UnexpectedResponse(e.to_string()))?;
        let _ = writeln!(out, "{text}");
    } else {
        let _ = write!(out, "{}", format_status(&status));
    }
    Ok(())
}

/// Sends a membership change and prints the configuration it led to.
async fn change_membership(client: &Client, request: Request) -> Result<(), ClientError> {
    match client.request(request).await? {
        Response::Membership(membership) => {
            let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            let _ = writeln!(
                std::io::stdout().lock(),
                "voters: {}\nlearners: {}",
                list(&membership.voters),
                if membership.learners.is_empty() {
                    "none".to_string()
                } else {
                    list(&membership.learners)
                }
            );
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// The status as an operator reads it.
pub fn format_status(status: &ClusterStatus) -> String {
    let leader = match (status.leader, &status.leader_addr) {
        (Some(id), Some(addr)) => format!("{id} ({addr})"),
        (Some(id), None) => id.to_string(),
        _ => "none".to_string(),
    };
    let mut text = format!(
        "node {} is {} in term {}\nleader: {leader}\ncommit index: {}\napplied index: {}\nlast index: {}\n\nID\tADDRESS\tMATCH\tLAG\tLAST HEARD\tSTATE\n",
        status.node_id,
        status.role,
        status.term,
        status.commit_index,
        status.applied_index,
        status.last_index
    );
    let known = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    for member in &status.members {
        let heard = match (member.id == status.node_id, member.last_heard_ms) {
            (true, _) => "(this node)".to_string(),
            (false, Some(ms)) => format!("{ms} ms ago"),
            (false, None) => "never".to_string(),
        };
        let state = if member.unreachable {
            "unreachable"
        } else {
            "ok"
        };
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{heard}\t{state}\n",
            member.id,
            member.addr,
            known(member.match_index),
            known(member.lag)
        ));
    }
    let ids = |ids: &[u64]| {
        ids.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    text.push_str(&format!("\nvoters: {}\n", ids(&status.voters)));
    if !status.voters_outgoing.is_empty() {
        text.push_str(&format!(
            "joint change in progress; outgoing voters: {}\n",
            ids(&status.voters_outgoing)
        ));
    }
    if !status.learners.is_empty() {
        text.push_str(&format!("learners: {}\n", ids(&status.learners)));
    }
    if status.role != "leader" {
        text.push_str("(match index and lag are known to the leader, which hears from every member; ask it for them)\n");
    }
    text
}

/// `put` and `cas`: one write, its new version printed.
async fn write(
    client: &Client,
    key: String,
    value: String,
    expected_version: Option<u64>,
    no_forward: bool,
    out: &mut impl Write,
) -> Result<std::io::Result<()>, ClientError> {
    let request = Request::Put {
        key: key.into_bytes(),
        value: value.into_bytes(),
        expected_version,
    };
    match client.request_with(request, no_forward).await? {
        Response::Written { version, .. } => Ok(writeln!(out, "OK version {version}")),
        other => Err(unexpected(other)),
    }
}

fn unexpected(response: Response) -> ClientError {
    ClientError::UnexpectedResponse(format!("{response:?}"))
}

fn report_staleness(staleness: Option<harmonydb_protocol::Staleness>) {
    if let Some(s) = staleness {
        let contact = s
            .leader_contact_ms
            .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
        eprintln!(
            "(stale read from node {}: applied index {}, commit index {}, last heard from a leader {contact})",
            s.node_id, s.applied_index, s.commit_index
        );
    }
}

async fn kv(args: KvArgs) -> Result<(), ClientError> {
    let client = connect(&args.target).await?;
    let no_forward = args.no_forward;
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not an error of the database's.
    let _ = match args.command {
        KvCommand::Get {
            key,
            with_version,
            read,
        } => {
            let request = Request::Get {
                key: key.clone().into_bytes(),
                consistency: Some(read.consistency),
            };
            let (value, version, staleness) = match client.request_with(request, no_forward).await?
            {
                Response::Value {
                    value,
                    version,
                    staleness,
                    ..
                } => (value, version, staleness),
                other => return Err(unexpected(other)),
            };
            report_staleness(staleness);
            if with_version {
                let _ = write!(out, "{version}\t");
            }
            out.write_all(&value).and_then(|()| writeln!(out))
        }
        KvCommand::Put { key, value } => {
            write(&client, key, value, None, no_forward, &mut out).await?
        }
        KvCommand::Cas {
            key,
            expected_version,
            value,
        } => {
            write(
                &client,
                key,
                value,
                Some(expected_version),
                no_forward,
                &mut out,
            )
            .await?
        }
        KvCommand::Del {
            key,
            expected_version,
        } => {
            let request = Request::Delete {
                key: key.clone().into_bytes(),
                expected_version,
            };
            match client.request_with(request, no_forward).await? {
                Response::Deleted {
                    deleted_version, ..
                } => writeln!(out, "deleted {key} (was version {deleted_version})"),
                other => return Err(unexpected(other)),
            }
        }
        KvCommand::Scan {
            prefix,
            start,
            end,
            limit,
            read,
        } => {
            let request = Request::Scan {
                prefix: prefix.into_bytes(),
                start: start.map(String::into_bytes),
                end: end.map(String::into_bytes),
                limit: Some(limit),
                consistency: Some(read.consistency),
            };
            let (items, more, staleness) = match client.request_with(request, no_forward).await? {
                Response::Items {
                    items,
                    more,
                    staleness,
                } => (items, more, staleness),
                other => return Err(unexpected(other)),
            };
            report_staleness(staleness);
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
