//! `--join`: a new node enters a running cluster. It asks any member (who
//! forwards to the leader) to add it as a learner, learns the members'
//! addresses from the answer, and once its log has caught up asks to be
//! promoted to voter. Every step is retried until it succeeds: a node
//! started to join keeps trying while the cluster elects, is busy with
//! another change, or sends it a snapshot. Asking again after a restart is
//! harmless (adding a member at the same address answers as if it were new).

use std::time::Duration;

use harmonydb_actors::cluster::members::MemberBook;
use harmonydb_actors::cluster::rpc::PeerClient;
use harmonydb_protocol::{ErrorCode, Membership, Request, Response};
use tracing::{error, info, warn};

/// First wait between attempts.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// Longest wait between attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a joining node needs to know.
pub struct Joining {
    /// A member's TCP address to ask through.
    pub through: String,
    /// This node's id.
    pub node_id: u64,
    /// This node's TCP address as members reach it.
    pub address: String,
    /// The node's member book (taught the members' addresses).
    pub members: MemberBook,
    /// The node's client to other nodes.
    pub peers: PeerClient,
}

/// What one attempt came to.
enum Attempt {
    Done(Membership),
    /// Worth asking again (no leader, a change in progress, not caught up).
    Retry(String),
    /// Asking again won't help (the id is taken at another address).
    GiveUp(String),
    /// The cluster does not list this node.
    NotMember,
}

async fn ask(joining: &Joining, request: Request) -> Attempt {
    // Asked with `no_forward` unset would be forwarded by the member; the
    // peer client asks with it set, so a member that doesn't lead names
    // the leader, which is then asked.
    let mut through = joining.through.clone();
    for _ in 0..2 {
        match joining.peers.call_at(&through, request.clone()).await {
            Ok(Response::Error {
                code: ErrorCode::NotLeader,
                leader: Some(leader),
                ..
            }) => through = leader.addr,
            answer => return attempt(answer),
        }
    }
    Attempt::Retry("leadership is moving".into())
}

/// What one answer means for joining.
fn attempt(answer: Result<Response, harmonydb_actors::cluster::rpc::RpcError>) -> Attempt {
    match answer {
        Ok(Response::Membership(membership)) => Attempt::Done(membership),
        Ok(Response::Error { code, message, .. }) => match code {
            ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::Unauthorized => {
                Attempt::GiveUp(message)
            }
            ErrorCode::Conflict if message.contains("already a member") => Attempt::GiveUp(message),
            ErrorCode::NotFound => Attempt::NotMember,
            _ => Attempt::Retry(message),
        },
        Ok(other) => Attempt::GiveUp(format!("unexpected answer {other:?}")),
        Err(error) => Attempt::Retry(error.to_string()),
    }
}

/// Repeats `request` until it is done, can't succeed, or the node was
/// removed meanwhile (`GiveUp`).
async fn until_done(joining: &Joining, request: Request, what: &str) -> Attempt {
    let mut wait = RETRY_MIN;
    loop {
        if joining.members.removed_at().is_some() {
            return Attempt::GiveUp("this node was removed".into());
        }
        match ask(joining, request.clone()).await {
            Attempt::Retry(reason) => {
                info!(through = %joining.through, %reason, "cannot {what} yet; asking again");
            }
            Attempt::GiveUp(reason) => {
                error!(through = %joining.through, %reason, "cannot {what}; giving up");
                return Attempt::GiveUp(reason);
            }
            done => return done,
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// How one pass of joining ended.
enum Joined {
    /// A voter, or given up for a reason asking again won't change.
    Done,
    /// Promotion found this node is not a member: ask to be added again.
    Lost,
}

/// Added as a learner, then promoted once caught up.
async fn join_once(joining: &Joining) -> Joined {
    let id = joining.node_id;
    let add = Request::AddMember {
        id,
        address: joining.address.clone(),
    };
    let membership = match until_done(joining, add, "join as a learner").await {
        Attempt::Done(membership) => membership,
        Attempt::NotMember | Attempt::Retry(_) | Attempt::GiveUp(_) => return Joined::Done,
    };
    joining.members.learn(&membership.addresses);
    if membership.voters.contains(&id) {
        info!(voters = ?membership.voters, "already a voter of the cluster");
        return Joined::Done;
    }
    info!(
        voters = ?membership.voters,
        learners = ?membership.learners,
        "joined the cluster as a learner; catching up"
    );
    let promote = Request::PromoteMember { id };
    match until_done(joining, promote, "become a voter").await {
        Attempt::Done(membership) => {
            joining.members.learn(&membership.addresses);
            info!(voters = ?membership.voters, "promoted to voter");
            Joined::Done
        }
        Attempt::NotMember => Joined::Lost,
        Attempt::Retry(_) | Attempt::GiveUp(_) => {
            warn!("not promoted; a learner until an operator promotes it");
            Joined::Done
        }
    }
}

/// Joins the cluster, starting over if the addition turns out lost (the
/// leader that took it lost its term before it committed).
pub async fn join_cluster(joining: Joining) {
    loop {
        match join_once(&joining).await {
            Joined::Done => return,
            Joined::Lost => {
                warn!("the cluster does not list this node (its addition was lost); asking again");
                tokio::time::sleep(RETRY_MAX).await;
            }
        }
    }
}
