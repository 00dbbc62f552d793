//! The Transport actor on loopback: Raft messages reach the peer's listener,
//! a peer that comes up late gets what was queued, the fault filter drops
//! one direction, and the listener refuses frames from non-members, forged
//! senders and garbage while it keeps serving real peers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use harmonydb_actors::cluster::fault::Fault;
use harmonydb_actors::cluster::members::MemberBook;
use harmonydb_actors::cluster::messages::{Outbox, Step};
use harmonydb_actors::cluster::transport::{listen, GetDropped, PeerFrame, PeerInbox, Transport};
use harmonydb_raft::{Message as RaftMessage, MessageBody, NodeId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A member book naming `ids` (the inbox only checks who is known).
fn book_of(ids: &[NodeId]) -> MemberBook {
    MemberBook::new(ids.iter().map(|id| (*id, format!("node-{id}:1"))).collect())
}

/// Collects the messages a node receives.
#[derive(Default)]
struct Inbox {
    received: Vec<RaftMessage>,
}

impl Actor for Inbox {
    type Context = Context<Self>;
}

impl Handler<Step> for Inbox {
    type Result = ();
    fn handle(&mut self, step: Step, _: &mut Self::Context) {
        let message = step.message;
        self.received.push(message);
    }
}

struct Received;

impl Message for Received {
    type Result = Vec<RaftMessage>;
}

impl Handler<Received> for Inbox {
    type Result = MessageResult<Received>;
    fn handle(&mut self, _: Received, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.received.clone())
    }
}

fn heartbeat(from: NodeId, to: NodeId, seq: u64) -> RaftMessage {
    RaftMessage {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat { commit: 0, seq },
    }
}

async fn wait_for(inbox: &Addr<Inbox>, count: usize) -> Vec<RaftMessage> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let received = inbox.send(Received).await.expect("inbox");
        if received.len() >= count || Instant::now() > deadline {
            return received;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn node_2_listening(inbox: &Addr<Inbox>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    actix::spawn(listen(
        listener,
        PeerInbox::new(2, book_of(&[1, 2, 3]), inbox.clone().recipient()),
    ));
    addr
}

#[actix_rt::test]
async fn messages_reach_the_peer_in_order() {
    let inbox = Inbox::default().start();
    let addr = node_2_listening(&inbox).await;
    let transport =
        Transport::new(1, MemberBook::new(BTreeMap::from([(2, addr.to_string())]))).start();
    for seq in 0..100 {
        transport.do_send(Outbox::new(vec![heartbeat(1, 2, seq)]));
    }
    let received = wait_for(&inbox, 100).await;
    let seqs: Vec<u64> = received
        .iter()
        .map(|m| match m.body {
            MessageBody::Heartbeat { seq, .. } => seq,
            _ => u64::MAX,
        })
        .collect();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn a_peer_that_comes_up_late_gets_what_was_queued() {
    // Reserve a port, free it, and only listen on it later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let transport =
        Transport::new(1, MemberBook::new(BTreeMap::from([(2, port.to_string())]))).start();
    transport.do_send(Outbox::new(vec![heartbeat(1, 2, 7)]));
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let inbox = Inbox::default().start();
    let listener = TcpListener::bind(port)
        .await
        .expect("bind the reserved port");
    actix::spawn(listen(
        listener,
        PeerInbox::new(2, book_of(&[1, 2]), inbox.clone().recipient()),
    ));
    let received = wait_for(&inbox, 1).await;
    assert_eq!(received, vec![heartbeat(1, 2, 7)]);
}

#[actix_rt::test]
async fn the_fault_filter_drops_one_direction_and_counts() {
    let inbox = Inbox::default().start();
    let addr = node_2_listening(&inbox).await;
    let transport = Transport::new(1, MemberBook::new(BTreeMap::from([(2, addr.to_string())])));
    let faults = transport.faults();
    let transport = transport.start();
    faults.set(
        2,
        Fault {
            drop: true,
            ..Fault::default()
        },
    );
    for seq in 0..5 {
        transport.do_send(Outbox::new(vec![heartbeat(1, 2, seq)]));
    }
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert!(inbox.send(Received).await.expect("inbox").is_empty());
    assert_eq!(transport.send(GetDropped).await.expect("dropped")[&2], 5);
    faults.set(2, Fault::default());
    transport.do_send(Outbox::new(vec![heartbeat(1, 2, 99)]));
    assert_eq!(wait_for(&inbox, 1).await, vec![heartbeat(1, 2, 99)]);
}

#[actix_rt::test]
async fn the_fault_filter_delays_a_link() {
    let inbox = Inbox::default().start();
    let addr = node_2_listening(&inbox).await;
    let transport = Transport::new(1, MemberBook::new(BTreeMap::from([(2, addr.to_string())])));
    let faults = transport.faults();
    let transport = transport.start();
    let delay = Duration::from_millis(300);
    faults.set(
        2,
        Fault {
            delay,
            ..Fault::default()
        },
    );
    let sent = Instant::now();
    transport.do_send(Outbox::new(vec![heartbeat(1, 2, 1)]));
    assert_eq!(wait_for(&inbox, 1).await, vec![heartbeat(1, 2, 1)]);
    assert!(
        sent.elapsed() >= delay,
        "arrived after {:?}",
        sent.elapsed()
    );
}

#[actix_rt::test]
async fn the_fault_filter_duplicates_and_loses() {
    let inbox = Inbox::default().start();
    let addr = node_2_listening(&inbox).await;
    let transport = Transport::new(1, MemberBook::new(BTreeMap::from([(2, addr.to_string())])));
    let faults = transport.faults();
    let transport = transport.start();
    faults.set(
        2,
        Fault {
            duplicate: true,
            ..Fault::default()
        },
    );
    transport.do_send(Outbox::new(vec![heartbeat(1, 2, 1)]));
    assert_eq!(
        wait_for(&inbox, 2).await,
        vec![heartbeat(1, 2, 1), heartbeat(1, 2, 1)]
    );
    // Half of 200 batches lost: some arrive, not all, and the rest are counted.
    faults.set(
        2,
        Fault {
            loss_percent: 50,
            ..Fault::default()
        },
    );
    for seq in 10..210 {
        transport.do_send(Outbox::new(vec![heartbeat(1, 2, seq)]));
    }
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let arrived = inbox.send(Received).await.expect("inbox").len() - 2;
    let dropped = transport.send(GetDropped).await.expect("dropped")[&2];
    assert_eq!(
        arrived as u64 + dropped,
        200,
        "arrived {arrived}, dropped {dropped}"
    );
    assert!((40..160).contains(&arrived), "arrived {arrived} of 200");
}

async fn send_raw(addr: std::net::SocketAddr, body: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .expect("write");
    stream.write_all(body).await.expect("write");
    let _ = stream.shutdown().await;
}

#[actix_rt::test]
async fn bad_peer_frames_are_refused_and_real_peers_still_served() {
    let inbox = Inbox::default().start();
    let addr = node_2_listening(&inbox).await;
    // From a node that is not a member.
    let stranger = PeerFrame {
        from: 9,
        to: 2,
        messages: vec![heartbeat(9, 2, 1)],
    };
    send_raw(addr, &stranger.to_wire(1, Vec::new())).await;
    // From a member, but for another node.
    let misrouted = PeerFrame {
        from: 1,
        to: 3,
        messages: vec![heartbeat(1, 3, 1)],
    };
    send_raw(addr, &misrouted.to_wire(1, Vec::new())).await;
    // A member claiming to carry another member's message.
    let forged = PeerFrame {
        from: 1,
        to: 2,
        messages: vec![heartbeat(3, 2, 1)],
    };
    send_raw(addr, &forged.to_wire(1, Vec::new())).await;
    // A far-future term from a non-member is refused like any non-member frame.
    let mut future = heartbeat(8, 2, 1);
    future.term = u64::MAX;
    send_raw(
        addr,
        &PeerFrame {
            from: 8,
            to: 2,
            messages: vec![future],
        }
        .to_wire(1, Vec::new()),
    )
    .await;
    // Garbage.
    send_raw(addr, b"\xc1\xc1 not a frame").await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert!(inbox.send(Received).await.expect("inbox").is_empty());

    let transport =
        Transport::new(1, MemberBook::new(BTreeMap::from([(2, addr.to_string())]))).start();
    transport.do_send(Outbox::new(vec![heartbeat(1, 2, 5)]));
    assert_eq!(wait_for(&inbox, 1).await, vec![heartbeat(1, 2, 5)]);
}
