//! The RaftReplica actor end to end in one process: real WALs on disk, the
//! Raft core, the KV state machine, and an in-process router standing in
//! for the network (tests/cluster.rs at the root runs real processes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use actix::prelude::*;
use harmonydb_actors::cluster::messages::{Outbox, Step};
use harmonydb_actors::kv::{
    Consistency, KvAnswer, KvError, KvOp, KvReply, KvRequest, WriteOutcome,
};
use harmonydb_actors::replica::wal_log::load;
use harmonydb_actors::replica::{GetStatus, RaftReplica, ReplicaStorage};
use harmonydb_actors::storage::buffer::{Policy, PoolConfig};
use harmonydb_actors::wal::{FsyncPolicy, Wal, WalOptions, WalWriter};
use harmonydb_raft::{NodeId, PersistedState, Raft, RaftConfig, Role};
use tokio::sync::oneshot;

/// Delivers replicas' messages to each other, except across blocked links.
#[derive(Default)]
struct Router {
    replicas: BTreeMap<NodeId, Addr<RaftReplica>>,
    blocked: BTreeSet<NodeId>,
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Outbox> for Router {
    type Result = ();

    fn handle(&mut self, outbox: Outbox, _: &mut Self::Context) {
        for message in outbox.messages {
            if self.blocked.contains(&message.from) || self.blocked.contains(&message.to) {
                continue;
            }
            if let Some(replica) = self.replicas.get(&message.to) {
                replica.do_send(Step::new(message));
            }
        }
    }
}

struct Register(NodeId, Addr<RaftReplica>);

impl Message for Register {
    type Result = ();
}

impl Handler<Register> for Router {
    type Result = ();
    fn handle(&mut self, Register(id, addr): Register, _: &mut Self::Context) {
        self.replicas.insert(id, addr);
    }
}

struct Block(Option<NodeId>);

impl Message for Block {
    type Result = ();
}

impl Handler<Block> for Router {
    type Result = ();
    fn handle(&mut self, Block(id): Block, _: &mut Self::Context) {
        self.blocked.clear();
        self.blocked.extend(id);
    }
}

fn start_replica(
    id: NodeId,
    voters: &[NodeId],
    dir: &Path,
    router: Recipient<Outbox>,
) -> Addr<RaftReplica> {
    let (wal, _) = Wal::open(dir, WalOptions::default()).expect("open WAL");
    let persisted = load(&wal, PersistedState::bootstrap(voters.iter().copied())).expect("load");
    let wal_next_index = wal.last_index() + 1;
    let mut config = RaftConfig::new(id);
    config.election_timeout_ticks = 10;
    config.heartbeat_interval_ticks = 2;
    let raft = Raft::new(config, persisted).expect("core");
    let writer = WalWriter::new(wal, FsyncPolicy::Always).start();
    let pool = PoolConfig::with_megabytes(8, Policy::Lru2);
    let (storage, _) = ReplicaStorage::open(
        dir,
        pool,
        Duration::from_millis(200),
        Default::default(),
        harmonydb_actors::cluster::members::MemberBook::default(),
        &Arbiter::current(),
    )
    .expect("open storage");
    RaftReplica::new(
        raft,
        writer,
        wal_next_index,
        router,
        Duration::from_millis(5),
        storage,
    )
    .start()
}

async fn call(
    replica: &Addr<RaftReplica>,
    op: KvOp,
    consistency: Consistency,
) -> Result<KvAnswer, KvError> {
    let (reply, answer) = oneshot::channel();
    replica
        .send(KvRequest::new(op, consistency, reply))
        .await
        .expect("mailbox");
    answer.await.expect("answered")
}

async fn put(replica: &Addr<RaftReplica>, key: &str, value: &str) -> Result<WriteOutcome, KvError> {
    let op = KvOp::Put {
        key: key.into(),
        value: value.into(),
        expected_version: None,
    };
    match call(replica, op, Consistency::Linearizable).await?.reply {
        KvReply::Written(outcome) => Ok(outcome),
        other => panic!("a put answered {other:?}"),
    }
}

async fn get_with(
    replica: &Addr<RaftReplica>,
    key: &str,
    consistency: Consistency,
) -> Result<Option<Vec<u8>>, KvError> {
    let op = KvOp::Get { key: key.into() };
    match call(replica, op, consistency).await {
        Ok(KvAnswer {
            reply: KvReply::Value(versioned),
            ..
        }) => Ok(Some(versioned.value)),
        Ok(other) => panic!("a get answered {other:?}"),
        Err(KvError::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

async fn get(replica: &Addr<RaftReplica>, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    get_with(replica, key, Consistency::Linearizable).await
}

/// Waits until one of `replicas` leads, and returns its id.
async fn leader_among(
    replicas: &BTreeMap<NodeId, Addr<RaftReplica>>,
    exclude: Option<NodeId>,
) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (id, replica) in replicas {
            if Some(*id) == exclude {
                continue;
            }
            if replica
                .send(GetStatus::new())
                .await
                .expect("status")
                .raft
                .role
                == Role::Leader
            {
                return *id;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 10 s");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn a_single_replica_commits_and_recovers_from_its_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::default().start();
    let replica = start_replica(1, &[1], dir.path(), router.clone().recipient());
    let replicas = BTreeMap::from([(1, replica.clone())]);
    leader_among(&replicas, None).await;
    let mut versions = Vec::new();
    for i in 0..50 {
        match put(&replica, &format!("k{i}"), &format!("v{i}")).await {
            Ok(WriteOutcome::Written { version }) => versions.push(version),
            other => panic!("put {i}: {other:?}"),
        }
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions increase: {versions:?}"
    );
    assert_eq!(get(&replica, "k7").await, Ok(Some(b"v7".to_vec())));
    drop((replica, replicas));
    actix_rt::time::sleep(Duration::from_millis(50)).await;

    // A new replica over the same WAL rebuilds the state by replaying the log.
    let replica = start_replica(1, &[1], dir.path(), router.recipient());
    let replicas = BTreeMap::from([(1, replica.clone())]);
    leader_among(&replicas, None).await;
    assert_eq!(get(&replica, "k49").await, Ok(Some(b"v49".to_vec())));
    assert_eq!(get(&replica, "k0").await, Ok(Some(b"v0".to_vec())));
}

#[actix_rt::test]
async fn three_replicas_replicate_and_survive_losing_their_leader() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let router = Router::default().start();
    let mut replicas = BTreeMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as NodeId + 1;
        let replica = start_replica(id, &[1, 2, 3], dir.path(), router.clone().recipient());
        router
            .send(Register(id, replica.clone()))
            .await
            .expect("register");
        replicas.insert(id, replica);
    }
    let leader = leader_among(&replicas, None).await;
    for i in 0..20 {
        put(&replicas[&leader], &format!("a{i}"), "x")
            .await
            .expect("put through the leader");
    }
    // A follower refuses writes and names the leader.
    let follower = *replicas.keys().find(|id| **id != leader).expect("follower");
    assert_eq!(
        put(&replicas[&follower], "nope", "x").await,
        Err(KvError::NotLeader { leader })
    );
    assert_eq!(
        get(&replicas[&follower], "a0").await,
        Err(KvError::NotLeader { leader })
    );
    // Lease reads on the leader see what was written; stale reads on a
    // follower are served there and say how far behind it is.
    assert_eq!(
        get_with(&replicas[&leader], "a19", Consistency::Lease).await,
        Ok(Some(b"x".to_vec()))
    );
    let stale = call(
        &replicas[&follower],
        KvOp::Get { key: "a0".into() },
        Consistency::Stale,
    )
    .await;
    let staleness = stale
        .expect("a follower serves stale reads")
        .staleness
        .expect("with its staleness");
    assert_eq!(staleness.node_id, follower);
    assert!(staleness.applied_index <= staleness.commit_index);
    assert!(staleness.leader_contact_ms.is_some());

    // Cut the leader off: the other two elect a new one and keep committing.
    router.send(Block(Some(leader))).await.expect("block");
    let new_leader = leader_among(&replicas, Some(leader)).await;
    assert_ne!(new_leader, leader);
    put(&replicas[&new_leader], "after", "y")
        .await
        .expect("put through the new leader");
    assert_eq!(
        get(&replicas[&new_leader], "a19").await,
        Ok(Some(b"x".to_vec()))
    );

    // Healed, the old leader catches up and follows.
    router.send(Block(None)).await.expect("heal");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = replicas[&leader]
            .send(GetStatus::new())
            .await
            .expect("status")
            .raft;
        let leader_status = replicas[&new_leader]
            .send(GetStatus::new())
            .await
            .expect("status")
            .raft;
        if status.role == Role::Follower
            && status.applied >= leader_status.commit
            && leader_status.commit > 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader did not catch up: {status:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}
