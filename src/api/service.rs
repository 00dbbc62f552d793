//! What both front doors call. A request in protocol terms goes to this
//! node's replica, or, when it needs the leader and another node leads, is
//! forwarded there through the node's one client to other nodes
//! (`cluster::rpc`) and the leader's answer comes back as is. A client
//! that asks not to be forwarded gets `not_leader` with the leader's id
//! and address.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use harmonydb_actors::cluster::fault::{Fault, FaultFilter};
use harmonydb_actors::cluster::members::MemberBook;
use harmonydb_actors::cluster::rpc::{PeerClient, RpcError};
use harmonydb_actors::disk::DiskMonitor;
use harmonydb_actors::kv::{KvAnswer, KvError, KvHandle, KvOp, KvReply, ScanRange, WriteOutcome};
use harmonydb_actors::replica::{
    dump_path, ChangeMembership, GetStatus, MemberChange, MembershipError, PrepareSnapshot,
    RaftReplica, ReplicaStatus, TransferError, TransferLeadership, Transferred,
    SNAPSHOT_CHUNK_BYTES,
};
use harmonydb_protocol::{
    ClusterStatus, Consistency, ErrorCode, Item, LeaderHint, MemberStatus, Membership, Readiness,
    Request, Response,
};
use harmonydb_raft::Role;
use tracing::{debug, info};

use super::error::ApiError;
use crate::node::ReplicaParts;

/// Items a scan returns when the request gives no limit.
pub const SCAN_LIMIT_DEFAULT: usize = 1000;

/// The node's request service: its replica, its members, and the node's
/// client to other nodes for forwarding.
#[derive(Clone)]
pub struct Service {
    kv: KvHandle,
    node_id: u64,
    members: MemberBook,
    leader: Arc<AtomicU64>,
    replica: Addr<RaftReplica>,
    faults: FaultFilter,
    peers: PeerClient,
    snapshot_dir: Arc<std::path::PathBuf>,
    disk: DiskMonitor,
    front: FrontDoor,
}

/// What only the front doors use, from the node's settings.
#[derive(Clone, Debug, Default)]
pub struct FrontDoor {
    /// Whether `/admin/fault` is accepted.
    pub fault_injection: bool,
    /// Most entries the applied index may trail the leader's commit by
    /// while the node says it is ready.
    pub ready_lag_max_entries: u64,
    /// Syncs the WAL is to fail on purpose (fault injection, tests only).
    pub wal_faults: Arc<harmonydb_actors::wal::WalFaults>,
}

impl Service {
    /// A service over a running node's parts (see `node::start_replica`).
    pub fn new(parts: &ReplicaParts, front: FrontDoor) -> Self {
        Service {
            kv: parts.kv.clone(),
            node_id: parts.node_id,
            members: parts.members.clone(),
            leader: parts.leader.clone(),
            replica: parts.replica.clone(),
            faults: parts.faults.clone(),
            peers: parts.peers.clone(),
            snapshot_dir: Arc::new(parts.snapshot_dir.clone()),
            disk: parts.disk.clone(),
            front,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The ids of the members in force, this node included.
    pub fn member_ids(&self) -> Vec<u64> {
        self.members.members().into_keys().collect()
    }

    /// The handle's limits (value size for HTTP body limits).
    pub fn value_size_max_bytes(&self) -> usize {
        self.kv.limits().value_size_max_bytes
    }

    fn leader_hint(&self, leader: u64) -> Option<LeaderHint> {
        self.members
            .address(leader)
            .map(|addr| LeaderHint { id: leader, addr })
    }

    /// Runs a client request (not `raft`): its answer, or the error to
    /// give (a forwarded request's error included: an `Ok` answer is never
    /// `Response::Error`). Each front door renders the error its own way.
    pub async fn call(&self, request: Request, no_forward: bool) -> Result<Response, ApiError> {
        match request {
            Request::ClusterStatus => {
                return Ok(Response::ClusterStatus(self.cluster_status().await?));
            }
            Request::Ready => return Ok(Response::Ready(self.readiness().await?)),
            Request::SnapshotPrepare { min_index } => {
                return self.prepare_snapshot(min_index).await
            }
            Request::SnapshotChunk {
                index,
                offset,
                max_bytes,
            } => return self.snapshot_chunk(index, offset, max_bytes).await,
            _ => {}
        }
        // A removed node takes no part, not even as a forwarder.
        if let Some(index) = self.members.removed_at() {
            return Err(ApiError::from_kv(KvError::Removed { index }, None));
        }
        let leader = self.leader.load(Ordering::Relaxed);
        #[cfg(feature = "mutation-follower-local-reads")]
        if leader != self.node_id {
            if let Some(stale) = mutation::as_local_read(&request) {
                return mutation::strip_staleness(self.local(stale).await);
            }
        }
        if request.needs_leader() && leader != 0 && leader != self.node_id {
            if no_forward {
                return Err(self.not_leader(leader));
            }
            return self.forward(leader, request).await;
        }
        match request {
            Request::TransferLeader { target } => self.transfer_leader(target).await,
            Request::AddMember { id, address } => {
                self.change_membership(MemberChange::AddLearner { id, address })
                    .await
            }
            Request::PromoteMember { id } => {
                self.change_membership(MemberChange::Promote { id }).await
            }
            // Wherever the request entered, the leader hands over first,
            // so writes pause for a transfer, not an election.
            Request::RemoveMember { id } if id == self.node_id && leader == id => {
                self.remove_self().await
            }
            Request::RemoveMember { id } => {
                self.change_membership(MemberChange::Remove { id }).await
            }
            request => self.local(request).await,
        }
    }

    fn not_leader(&self, leader: u64) -> ApiError {
        let hint = self.leader_hint(leader);
        let addr = hint.as_ref().map_or("unknown", |h| h.addr.as_str());
        ApiError::new(
            ErrorCode::NotLeader,
            format!(
                "node {} is not the leader; node {leader} at {addr} is",
                self.node_id
            ),
        )
        .with_leader(hint)
    }

    /// Runs the request on this node's replica. Writes of keys are
    /// refused here, before they enter the log, while the disk is full.
    async fn local(&self, request: Request) -> Result<Response, ApiError> {
        let (op, consistency) = to_op(request)?;
        if matches!(op, KvOp::Put { .. } | KvOp::Delete { .. }) {
            if let Some(full) = self.disk.full() {
                metrics::counter!("harmonydb_storage_writes_refused_disk_full_total").increment(1);
                return Err(ApiError::new(ErrorCode::StorageFull, full.to_string()));
            }
        }
        let key = match &op {
            KvOp::Get { key } | KvOp::Put { key, .. } | KvOp::Delete { key, .. } => key.clone(),
            KvOp::Scan(_) | KvOp::Health => Vec::new(),
        };
        match self.kv.call_with(op, consistency).await {
            Ok(answer) => Ok(to_response(key, answer)),
            // Leadership moved while the request was on its way: say where.
            Err(KvError::NotLeader { leader }) => Err(self.not_leader(leader)),
            Err(error) => Err(ApiError::from_kv(error, (!key.is_empty()).then_some(&key))),
        }
    }

    /// Sends the request to the leader, through the node's one client to
    /// other nodes (which obeys the fault filter: a partitioned node must
    /// not reach the leader through its client port either), and returns
    /// its answer.
    async fn forward(&self, leader: u64, request: Request) -> Result<Response, ApiError> {
        // Anything that changes state has an unknown outcome once sent.
        let is_write = request.is_write();
        let traceparent = harmonydb_actors::observe::traceparent(&tracing::Span::current());
        match self.peers.call(leader, request, traceparent).await {
            Ok(response) => {
                metrics::counter!("harmonydb_api_forwarded_total", "leader" => leader.to_string())
                    .increment(1);
                about_the_leader(response, leader)
            }
            Err(error @ RpcError::Unknown { .. }) => {
                Err(ApiError::new(ErrorCode::Internal, error.to_string()))
            }
            Err(error) => {
                debug!(leader, %error, "forwarding failed");
                let code = if is_write && error.maybe_sent() {
                    ErrorCode::Timeout
                } else {
                    ErrorCode::Unavailable
                };
                Err(ApiError::new(
                    code,
                    format!("forwarding to the leader, node {leader}, failed: {error}"),
                ))
            }
        }
    }

    /// Has the replica write (or reuse) a dump of its state for a follower.
    async fn prepare_snapshot(&self, min_index: u64) -> Result<Response, ApiError> {
        let dump = self
            .replica
            .send(PrepareSnapshot::new(min_index))
            .await
            .map_err(|_| ApiError::from_kv(KvError::ShuttingDown, None))?
            .map_err(ApiError::from_snapshot)?;
        Ok(Response::SnapshotReady {
            index: dump.index,
            size_bytes: dump.size_bytes,
        })
    }

    /// Reads part of a prepared dump (off the request threads: file I/O).
    async fn snapshot_chunk(
        &self,
        index: u64,
        offset: u64,
        max_bytes: u32,
    ) -> Result<Response, ApiError> {
        let path = dump_path(&self.snapshot_dir, index);
        let len = max_bytes.min(SNAPSHOT_CHUNK_BYTES) as usize;
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            let len = len.min(size.saturating_sub(offset) as usize);
            let mut data = vec![0u8; len];
            file.read_exact_at(&mut data, offset)?;
            Ok(data)
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let data = read.map_err(|error| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("snapshot dump at index {index}: {error} (prepare it again)"),
            )
        })?;
        Ok(Response::SnapshotChunk {
            index,
            offset,
            data,
        })
    }

    /// Hands leadership from this node (the leader) to `target` or the most
    /// caught-up other voter, and answers once the new leader leads.
    async fn transfer_leader(&self, target: Option<u64>) -> Result<Response, ApiError> {
        // The replica answers once the transfer has an outcome; the core
        // gives it up after an election timeout, well inside this bound.
        let timeout = self.kv.limits().request_timeout;
        let answer =
            tokio::time::timeout(timeout, self.replica.send(TransferLeadership::new(target)))
                .await
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "leadership did not move within {} ms; read /cluster for who leads",
                            timeout.as_millis()
                        ),
                    )
                })?
                .map_err(|_| ApiError::from_kv(KvError::ShuttingDown, None))?;
        match answer {
            Ok(Transferred { leader, term }) => Ok(Response::LeaderTransferred { leader, term }),
            Err(TransferError::NotLeader { leader: 0 }) => {
                Err(ApiError::from_kv(KvError::NoLeader, None))
            }
            Err(TransferError::NotLeader { leader }) => Err(self.not_leader(leader)),
            Err(error @ (TransferError::NotAVoter { .. } | TransferError::NoOtherVoter)) => {
                Err(ApiError::bad_request(error.to_string()))
            }
            // Nothing was handed over: asking again is safe.
            Err(error @ (TransferError::OtherWon { .. } | TransferError::Abandoned { .. })) => {
                Err(ApiError::new(ErrorCode::Unavailable, error.to_string()))
            }
            Err(TransferError::Unavailable(error)) => Err(ApiError::from_kv(error, None)),
        }
    }

    /// Has the leader (this node) make a membership change, and answers
    /// with the configuration once it has committed.
    async fn change_membership(&self, change: MemberChange) -> Result<Response, ApiError> {
        let timeout = self.kv.limits().request_timeout;
        let answer = tokio::time::timeout(timeout, self.replica.send(ChangeMembership::new(change)))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the membership change did not complete within {} ms; it may still take effect (read /cluster)",
                        timeout.as_millis()
                    ),
                )
            })?
            .map_err(|_| ApiError::from_kv(KvError::ShuttingDown, None))?;
        match answer {
            Ok(config) => Ok(Response::Membership(Membership {
                voters: config.voters.iter().copied().collect(),
                learners: config.learners.iter().copied().collect(),
                addresses: config.addresses.clone(),
            })),
            Err(MembershipError::NotLeader { leader }) if leader != 0 => {
                Err(self.not_leader(leader))
            }
            Err(error) => Err(ApiError::from_membership(error)),
        }
    }

    /// Removes this node, the leader: leadership goes to the most
    /// caught-up other voter first (writes pause for a transfer, not an
    /// election), and the new leader makes the change.
    async fn remove_self(&self) -> Result<Response, ApiError> {
        let status = self.status().await?;
        if status.raft.config.is_joint() {
            // Handing over now would only have the next leader refuse it.
            return Err(ApiError::from_membership(MembershipError::InProgress));
        }
        if status.raft.config.voters.len() == 1 {
            // No one to hand over to: the core refuses removing the last voter.
            return self
                .change_membership(MemberChange::Remove { id: self.node_id })
                .await;
        }
        let new_leader = match self.transfer_leader(None).await? {
            Response::LeaderTransferred { leader, .. } => leader,
            other => return Ok(other),
        };
        info!(
            new_leader,
            "leadership handed over; asking the new leader to remove this node"
        );
        self.forward(new_leader, Request::RemoveMember { id: self.node_id })
            .await
    }

    /// This node's view of the cluster. A removed node has none: it says so.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        let status = self.status().await?;
        if let Some(KvError::Removed { index }) = status.refusing {
            return Err(ApiError::from_kv(KvError::Removed { index }, None));
        }
        let election_timeout = status.election_timeout;
        let raft = status.raft;
        let leads = raft.role == Role::Leader;
        let members = self
            .members
            .members()
            .into_iter()
            .map(|(id, addr)| {
                let match_index = if !leads {
                    None
                } else if id == raft.id {
                    Some(raft.last_index)
                } else {
                    raft.match_index.get(&id).copied()
                };
                let heard = (id != raft.id)
                    .then(|| status.last_heard.get(&id).copied())
                    .flatten();
                // A leader hears from every member, a follower from its leader.
                let expected = id != raft.id && (leads || id == raft.leader);
                MemberStatus {
                    id,
                    addr,
                    match_index,
                    lag: match_index.map(|m| raft.last_index.saturating_sub(m)),
                    last_heard_ms: heard.map(duration_ms),
                    unreachable: expected && heard.is_none_or(|ago| ago > election_timeout),
                }
            })
            .collect();
        let role = match raft.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::PreCandidate => "pre_candidate",
            Role::Candidate => "candidate",
        };
        Ok(ClusterStatus {
            node_id: raft.id,
            role: role.to_string(),
            term: raft.term,
            leader: (raft.leader != 0).then_some(raft.leader),
            leader_addr: self.members.address(raft.leader),
            commit_index: raft.commit,
            applied_index: status.applied_index,
            last_index: raft.last_index,
            snapshot_index: status.snapshot_index,
            members,
            voters: raft.config.voters.iter().copied().collect(),
            voters_outgoing: raft.config.voters_outgoing.iter().copied().collect(),
            learners: raft.config.learners.iter().copied().collect(),
        })
    }

    /// Whether this node is ready to serve (see [`readiness_of`]).
    pub async fn readiness(&self) -> Result<Readiness, ApiError> {
        if let Some(full) = self.disk.full() {
            return Err(ApiError::new(ErrorCode::StorageFull, full.to_string()));
        }
        readiness_of(&self.status().await?, self.front.ready_lag_max_entries)
    }

    /// Sets the WAL's injected faults (tests only): its next `sync_failures`
    /// syncs fail; every sync waits `sync_delay_ms` first (a slow disk; 0
    /// clears it); with `power_cut`, at its next sync the records written
    /// since the last one are lost and the process ends. `None` and `false`
    /// leave a fault as it is.
    pub fn set_wal_faults(
        &self,
        sync_failures: Option<u32>,
        sync_delay_ms: Option<u64>,
        power_cut: bool,
    ) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.fault_injection_enabled()?;
        if sync_failures.is_none() && sync_delay_ms.is_none() && !power_cut {
            return Ok(());
        }
        tracing::warn!(
            ?sync_failures,
            ?sync_delay_ms,
            power_cut,
            "fault injected into the WAL"
        );
        let faults = &self.front.wal_faults;
        if let Some(count) = sync_failures {
            faults.sync_failures.store(count, Relaxed);
        }
        if let Some(delay_ms) = sync_delay_ms {
            faults.sync_delay_ms.store(delay_ms, Relaxed);
        }
        if power_cut {
            faults.power_cut.store(true, Relaxed);
        }
        Ok(())
    }

    async fn status(&self) -> Result<ReplicaStatus, ApiError> {
        self.replica
            .send(GetStatus::new())
            .await
            .map_err(|_| ApiError::from_kv(KvError::ShuttingDown, None))
    }

    /// Sets the fault on this node's traffic to `peers` (tests only).
    pub fn set_fault(&self, peers: &[u64], fault: Fault) -> Result<(), ApiError> {
        self.fault_injection_enabled()?;
        for peer in peers {
            if *peer == self.node_id || !self.members.knows(*peer) {
                return Err(ApiError::bad_request(format!(
                    "node {peer} is not a peer of node {}",
                    self.node_id
                )));
            }
        }
        if fault.loss_percent > 100 {
            return Err(ApiError::bad_request(format!(
                "loss_percent {} is over 100",
                fault.loss_percent
            )));
        }
        for peer in peers {
            info!(
                peer,
                drop = fault.drop,
                loss_percent = fault.loss_percent,
                duplicate = fault.duplicate,
                delay_ms = fault.delay.as_millis() as u64,
                "fault injected"
            );
            self.faults.set(*peer, fault);
        }
        Ok(())
    }

    /// The faults set on this node's traffic, by peer (tests only).
    pub fn faults(&self) -> Result<BTreeMap<u64, Fault>, ApiError> {
        self.fault_injection_enabled()?;
        Ok(self.faults.all())
    }

    fn fault_injection_enabled(&self) -> Result<(), ApiError> {
        if self.front.fault_injection {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                "fault injection is disabled; start the node with --enable-fault-injection",
            ))
        }
    }
}

/// Whether a node with this status is ready to serve: it leads, or heard
/// from a leader within an election timeout; and its applied index trails
/// the leader's commit by at most `lag_max_entries`. Why not, if not: the
/// reason it refuses requests (removed, failed, stopping), `no_leader`, or
/// `unavailable` naming the lag.
pub fn readiness_of(status: &ReplicaStatus, lag_max_entries: u64) -> Result<Readiness, ApiError> {
    if let Some(refusing) = &status.refusing {
        return Err(ApiError::from_kv(refusing.clone(), None));
    }
    let raft = &status.raft;
    let node = raft.id;
    let contact = if raft.role == Role::Leader {
        Some(Duration::ZERO)
    } else {
        status.leader_contact
    };
    let contact = match (raft.leader, contact) {
        (0, _) | (_, None) => {
            return Err(ApiError::new(
                ErrorCode::NoLeader,
                format!("node {node} knows no leader"),
            ))
        }
        (leader, Some(ago)) if ago > status.election_timeout => {
            return Err(ApiError::new(
                ErrorCode::NoLeader,
                format!(
                    "node {node} last heard from its leader, node {leader}, {} ms ago (more than an election timeout, {} ms)",
                    duration_ms(ago),
                    duration_ms(status.election_timeout)
                ),
            ))
        }
        (_, Some(ago)) => ago,
    };
    let lag = status.leader_commit.saturating_sub(status.applied_index);
    if lag > lag_max_entries {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "node {node} has applied up to index {}, {lag} entries behind the leader's commit index {} (more than --ready-max-lag-entries {lag_max_entries})",
                status.applied_index, status.leader_commit
            ),
        ));
    }
    Ok(Readiness {
        node_id: node,
        leader: raft.leader,
        leader_contact_ms: duration_ms(contact),
        applied_index: status.applied_index,
        leader_commit_index: status.leader_commit,
    })
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A forwarded request's answer, as this node passes it on: the leader's
/// error as this node's error; but an error about the node it was
/// forwarded to (removed, stopping) must not read as this node's own
/// state, and neither was carried out, so the client may retry.
fn about_the_leader(response: Response, leader: u64) -> Result<Response, ApiError> {
    match response {
        Response::Error {
            code: code @ (ErrorCode::Removed | ErrorCode::ShuttingDown),
            message,
            ..
        } => {
            let why = if code == ErrorCode::Removed {
                "was removed from the cluster"
            } else {
                "is shutting down"
            };
            Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "the leader this node forwarded to, node {leader}, {why} ({message}); the request was not carried out: retry once a new leader leads"
                ),
            ))
        }
        Response::Error {
            code,
            message,
            leader,
            current_version,
        } => {
            Err(ApiError::from_response(code, message, leader)
                .with_current_version(current_version))
        }
        other => Ok(other),
    }
}

/// A client request as an operation on the replica.
fn to_op(request: Request) -> Result<(KvOp, Consistency), ApiError> {
    Ok(match request {
        Request::Get { key, consistency } => (KvOp::Get { key }, consistency.unwrap_or_default()),
        Request::Put {
            key,
            value,
            expected_version,
        } => (
            KvOp::Put {
                key,
                value,
                expected_version,
            },
            Consistency::default(),
        ),
        Request::Delete {
            key,
            expected_version,
        } => (
            KvOp::Delete {
                key,
                expected_version,
            },
            Consistency::default(),
        ),
        Request::Scan {
            prefix,
            start,
            end,
            limit,
            consistency,
        } => (
            KvOp::Scan(ScanRange {
                prefix,
                start,
                end,
                limit: limit.map_or(SCAN_LIMIT_DEFAULT, |l| l as usize),
            }),
            consistency.unwrap_or_default(),
        ),
        Request::Health => (KvOp::Health, Consistency::default()),
        Request::ClusterStatus
        | Request::Ready
        | Request::TransferLeader { .. }
        | Request::AddMember { .. }
        | Request::PromoteMember { .. }
        | Request::RemoveMember { .. }
        | Request::Raft { .. }
        | Request::SnapshotPrepare { .. }
        | Request::SnapshotChunk { .. } => {
            return Err(ApiError::bad_request(
                "this operation is not served by the key-value store",
            ))
        }
    })
}

/// The replica's answer as a protocol response.
fn to_response(key: Vec<u8>, answer: KvAnswer) -> Response {
    let staleness = answer.staleness;
    match answer.reply {
        KvReply::Value(versioned) => Response::Value {
            key,
            value: versioned.value,
            version: versioned.version,
            staleness,
        },
        KvReply::Written(WriteOutcome::Written { version }) => Response::Written { key, version },
        KvReply::Written(WriteOutcome::Deleted { deleted_version }) => Response::Deleted {
            key,
            deleted_version,
        },
        KvReply::Page(page) => Response::Items {
            items: page
                .items
                .into_iter()
                .map(|item| Item {
                    key: item.key,
                    value: item.versioned.value,
                    version: item.versioned.version,
                })
                .collect(),
            more: page.more,
            staleness,
        },
        KvReply::Healthy { applied_index } => Response::Health { applied_index },
    }
}

/// Test-only: a follower answers linearizable reads from its own applied
/// state, as if it were the leader. This is a deliberate bug, for showing
/// that the fault-injection harness and the linearizability checker catch
/// stale reads (`cargo test --features mutation-follower-local-reads`).
#[cfg(feature = "mutation-follower-local-reads")]
mod mutation {
    use harmonydb_protocol::{Consistency, Request, Response};

    use super::ApiError;

    /// The read as a stale one, if it is a read that should go to the leader.
    pub(super) fn as_local_read(request: &Request) -> Option<Request> {
        let mut stale = request.clone();
        match &mut stale {
            Request::Get { consistency, .. } | Request::Scan { consistency, .. }
                if *consistency != Some(Consistency::Stale) =>
            {
                *consistency = Some(Consistency::Stale);
                Some(stale)
            }
            _ => None,
        }
    }

    /// The answer without its staleness, so it looks like a linearizable one.
    pub(super) fn strip_staleness(
        answer: Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        answer.map(|mut response| {
            if let Response::Value { staleness, .. } | Response::Items { staleness, .. } =
                &mut response
            {
                *staleness = None;
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmonydb_raft::{Configuration, Status};

    fn follower(leader_contact_ms: Option<u64>, applied: u64, leader_commit: u64) -> ReplicaStatus {
        ReplicaStatus {
            raft: Status {
                id: 2,
                role: Role::Follower,
                term: 3,
                leader: if leader_contact_ms.is_some() { 1 } else { 0 },
                commit: applied,
                applied,
                last_index: applied,
                config: Configuration::default(),
                match_index: BTreeMap::new(),
            },
            leader_contact: leader_contact_ms.map(Duration::from_millis),
            failed: None,
            snapshot_index: 0,
            applied_index: applied,
            leader_commit,
            last_heard: BTreeMap::new(),
            election_timeout: Duration::from_millis(1000),
            refusing: None,
        }
    }

    #[test]
    fn ready_needs_a_live_leader_and_little_lag() {
        let ready = readiness_of(&follower(Some(40), 990, 1000), 10).expect("ready");
        assert_eq!((ready.leader, ready.leader_contact_ms), (1, 40));
        let mut leader = follower(None, 50, 50);
        leader.raft.role = Role::Leader;
        leader.raft.leader = 2;
        assert!(readiness_of(&leader, 0).is_ok());

        let cases = [
            (follower(None, 5, 5), ErrorCode::NoLeader, "knows no leader"),
            (
                follower(Some(1500), 5, 5),
                ErrorCode::NoLeader,
                "1500 ms ago",
            ),
            (
                follower(Some(40), 989, 1000),
                ErrorCode::Unavailable,
                "11 entries behind the leader's commit index 1000",
            ),
        ];
        for (status, code, complaint) in cases {
            let error = readiness_of(&status, 10).expect_err("not ready");
            assert_eq!(error.code, code, "{error:?}");
            assert!(error.message.contains(complaint), "{}", error.message);
        }
        let mut removed = follower(Some(40), 5, 5);
        removed.refusing = Some(KvError::Removed { index: 9 });
        let error = readiness_of(&removed, 10).expect_err("removed");
        assert_eq!(error.status().as_u16(), 410);
        let mut stopping = follower(Some(40), 5, 5);
        stopping.refusing = Some(KvError::ShuttingDown);
        assert_eq!(
            readiness_of(&stopping, 10).expect_err("stopping").code,
            ErrorCode::ShuttingDown
        );
    }
}
