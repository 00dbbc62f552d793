//! The one client for node-to-node requests: forwarding a client's request
//! to the leader, fetching a snapshot from it, asking to join, and (with
//! shards) two-phase commit. Raft's own messages go through the
//! `Transport`; everything else a node asks another node goes through a
//! [`PeerClient`], so every such request obeys the same timeouts (from
//! configuration) and the same fault filter: a node cut off from a peer by
//! an injected fault reaches it by no path at all.
//!
//! It keeps one pipelined connection per address and opens it again when
//! it breaks. A request is sent with `no_forward`, so the node asked runs
//! it itself or says who leads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harmonydb_protocol::{Client, ClientError, Request, Response};
use harmonydb_raft::NodeId;

use super::fault::{Delivery, FaultFilter};
use super::members::MemberBook;

/// How node-to-node requests are bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcSettings {
    /// How long a request may wait for its answer (the node's own request
    /// timeout plus a margin, so the other node's answer, even `timeout`,
    /// comes first).
    pub request_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Largest frame sent (members share the frame limit).
    pub frame_size_max_bytes: usize,
}

impl Default for RpcSettings {
    /// The node's defaults: a 5 s request timeout plus a second, 2 s to
    /// connect, 16 MiB frames.
    fn default() -> Self {
        RpcSettings {
            request_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(2),
            frame_size_max_bytes: harmonydb_protocol::FRAME_SIZE_DEFAULT_MAX_BYTES,
        }
    }
}

/// Why a node-to-node request got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The node is not one this node knows an address for.
    #[error("node {peer} is not a member this node knows the address of")]
    Unknown {
        /// The node asked for.
        peer: NodeId,
    },
    /// An injected fault cuts this node's traffic to the peer.
    #[error("the link to node {peer} at {addr} is cut by an injected fault")]
    Cut {
        /// The peer.
        peer: NodeId,
        /// Its address.
        addr: String,
    },
    /// Nothing was sent: the peer could not be reached, or the request is
    /// too large for a frame.
    #[error("{addr}: not sent: {reason}")]
    NotSent {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The request was sent but its answer never came (the connection
    /// broke, or the timeout passed): whether it was carried out is unknown.
    #[error("{addr}: no answer: {reason}")]
    NoAnswer {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
}

impl RpcError {
    /// Whether the request may have reached the peer (its outcome unknown).
    pub fn maybe_sent(&self) -> bool {
        matches!(self, RpcError::NoAnswer { .. })
    }
}

/// The node's client to other nodes. Cheap to clone; clones share the
/// connections.
#[derive(Clone)]
pub struct PeerClient {
    members: MemberBook,
    faults: FaultFilter,
    settings: RpcSettings,
    connections: Arc<Mutex<HashMap<String, Client>>>,
}

impl PeerClient {
    /// A client that finds members in `members` and obeys `faults`.
    pub fn new(members: MemberBook, faults: FaultFilter, settings: RpcSettings) -> PeerClient {
        PeerClient {
            members,
            faults,
            settings,
            connections: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> RpcSettings {
        self.settings
    }

    /// Sends `request` to member `peer`, with the caller's trace context;
    /// its answer (an error answer included), or why there is none.
    pub async fn call(
        &self,
        peer: NodeId,
        request: Request,
        trace: Option<String>,
    ) -> Result<Response, RpcError> {
        let Some(addr) = self.members.address(peer) else {
            return Err(RpcError::Unknown { peer });
        };
        self.obey_faults(peer, &addr).await?;
        self.exchange(&addr, request, trace).await
    }

    /// Sends `request` to whatever node listens at `addr` (a node asking
    /// to join knows a member's address, not its id); the fault filter
    /// applies if `addr` is a member's.
    pub async fn call_at(&self, addr: &str, request: Request) -> Result<Response, RpcError> {
        let peer = self
            .members
            .addresses()
            .into_iter()
            .find(|(_, known)| known == addr)
            .map(|(id, _)| id);
        if let Some(peer) = peer {
            self.obey_faults(peer, addr).await?;
        }
        self.exchange(addr, request, None).await
    }

    /// Drops, or delays, what an injected fault says to.
    async fn obey_faults(&self, peer: NodeId, addr: &str) -> Result<(), RpcError> {
        if self.faults.decide(peer) == Delivery::Drop {
            return Err(RpcError::Cut {
                peer,
                addr: addr.to_string(),
            });
        }
        let delay = self.faults.get(peer).delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    async fn exchange(
        &self,
        addr: &str,
        request: Request,
        trace: Option<String>,
    ) -> Result<Response, RpcError> {
        let client = self.connection(addr).await?;
        match client.exchange_traced(request, true, trace).await {
            Ok(response) => Ok(response),
            Err(error) => {
                if let Ok(mut connections) = self.connections.lock() {
                    connections.remove(addr);
                }
                let reason = error.to_string();
                let addr = addr.to_string();
                Err(match error {
                    ClientError::Connect { .. } | ClientError::RequestTooLarge { .. } => {
                        RpcError::NotSent { addr, reason }
                    }
                    _ => RpcError::NoAnswer { addr, reason },
                })
            }
        }
    }

    /// The open connection to `addr`, or a new one.
    async fn connection(&self, addr: &str) -> Result<Client, RpcError> {
        let cached = self
            .connections
            .lock()
            .ok()
            .and_then(|connections| connections.get(addr).cloned());
        if let Some(client) = cached.filter(|c| !c.is_closed()) {
            return Ok(client);
        }
        let not_sent = |reason: String| RpcError::NotSent {
            addr: addr.to_string(),
            reason,
        };
        let client = tokio::time::timeout(self.settings.connect_timeout, Client::connect(addr))
            .await
            .map_err(|_| {
                not_sent(format!(
                    "no connection within {} ms",
                    self.settings.connect_timeout.as_millis()
                ))
            })?
            .map_err(|error| not_sent(error.to_string()))?
            .with_timeout(self.settings.request_timeout)
            .with_frame_limit(self.settings.frame_size_max_bytes);
        if let Ok(mut connections) = self.connections.lock() {
            connections.insert(addr.to_string(), client.clone());
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use harmonydb_protocol::Request;
    use tokio::net::TcpListener;

    use super::{PeerClient, RpcError, RpcSettings};
    use crate::cluster::fault::{Fault, FaultFilter};
    use crate::cluster::members::MemberBook;

    const PEER: u64 = 2;

    fn ping() -> Request {
        Request::Get {
            key: b"k".to_vec(),
            consistency: None,
        }
    }

    fn settings() -> RpcSettings {
        RpcSettings {
            request_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(2),
            ..RpcSettings::default()
        }
    }

    /// A client whose one peer listens at a socket the test watches.
    async fn client_with_peer() -> (PeerClient, FaultFilter, TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let members = MemberBook::new(BTreeMap::from([(PEER, addr.clone())]));
        let faults = FaultFilter::default();
        let client = PeerClient::new(members, faults.clone(), settings());
        (client, faults, listener, addr)
    }

    /// Whether anything connected to `listener` within a short wait.
    async fn connected(listener: &TcpListener) -> bool {
        tokio::time::timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_cut_peer_is_reached_by_no_path() {
        let (client, faults, listener, addr) = client_with_peer().await;
        faults.set(
            PEER,
            Fault {
                drop: true,
                ..Fault::default()
            },
        );
        let by_id = client.call(PEER, ping(), None).await;
        assert!(
            matches!(by_id, Err(RpcError::Cut { peer: PEER, .. })),
            "{by_id:?}"
        );
        let by_address = client.call_at(&addr, ping()).await;
        assert!(
            matches!(by_address, Err(RpcError::Cut { peer: PEER, .. })),
            "{by_address:?}"
        );
        let error = by_id.expect_err("cut");
        assert!(!error.maybe_sent());
        assert!(
            error.to_string().contains("cut by an injected fault"),
            "{error}"
        );
        assert!(
            !connected(&listener).await,
            "a cut request opened a connection"
        );

        // Healed, the request goes out (this peer never answers, so it ends
        // as a request whose outcome is unknown).
        faults.set(PEER, Fault::default());
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call(PEER, ping(), None).await }
        });
        assert!(connected(&listener).await, "the healed link was not used");
        let answer = call.await.expect("joined");
        assert!(
            matches!(answer, Err(RpcError::NoAnswer { .. })),
            "{answer:?}"
        );
        assert!(answer.expect_err("no answer").maybe_sent());
    }

    #[tokio::test]
    async fn an_unknown_or_unreachable_peer_is_not_sent_to() {
        let (client, _faults, listener, _addr) = client_with_peer().await;
        let unknown = client.call(9, ping(), None).await;
        assert_eq!(unknown, Err(RpcError::Unknown { peer: 9 }));
        // Nobody listens once the socket is closed.
        drop(listener);
        let unreachable = client.call(PEER, ping(), None).await;
        assert!(
            matches!(unreachable, Err(RpcError::NotSent { .. })),
            "{unreachable:?}"
        );
        assert!(!unreachable.expect_err("not sent").maybe_sent());
    }
}
