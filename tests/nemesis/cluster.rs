//! A cluster of real `harmonydb` processes that the nemesis can hurt: cut
//! links one way (through the nodes' fault filter, or with iptables between
//! network namespaces), `kill -9` and restart nodes, and pause them with
//! SIGSTOP. It keeps every node's log across restarts for the split-brain
//! check.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{http, Node};
use crate::netns::Netns;

/// A fault on the traffic one node sends another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Everything is lost.
    Cut,
    /// This share of packets (netns) or messages (filter) is lost at
    /// random; the filter also delivers every Raft batch twice.
    Lossy {
        /// Loss, in percent.
        loss_percent: u8,
    },
}

/// Where link faults are injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The nodes' own fault filter (`POST /admin/fault`), on loopback.
    Filter,
    /// iptables rules between network namespaces.
    Netns,
}

impl Backend {
    /// The name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Filter => "fault filter",
            Backend::Netns => "netns + iptables",
        }
    }
}

/// Ports every node uses inside its own namespace.
const NETNS_TCP_PORT: u16 = 7070;
const NETNS_HTTP_PORT: u16 = 8080;

/// How long a fault waits for its sender to learn of a newly joined peer.
const UNKNOWN_PEER_WAIT: Duration = Duration::from_secs(10);

/// How long a node whose power was cut gets to reach its next WAL sync.
const POWER_CUT_WAIT: Duration = Duration::from_secs(10);

/// How long a harness HTTP call to a node may take (a paused node never answers).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// A cluster under test.
pub struct NemesisCluster {
    backend: Backend,
    nodes: BTreeMap<u64, Option<Node>>,
    /// Each node's TCP address, fixed for the cluster's life.
    pub tcp: BTreeMap<u64, SocketAddr>,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    peers: String,
    args: Vec<String>,
    paused: BTreeSet<u64>,
    /// Link faults in force, by (from, to).
    links: BTreeMap<(u64, u64), LinkFault>,
    /// Log lines of earlier runs of each node (and of retired nodes).
    old_logs: BTreeMap<u64, Vec<String>>,
    /// Nodes that entered with `--join` (through the node given).
    joined: BTreeMap<u64, u64>,
    netns: Option<Netns>,
    agent: ureq::Agent,
}

impl NemesisCluster {
    /// Starts `size` nodes with `args`; with the netns backend, each in its
    /// own namespace (an error if they can't be made).
    pub fn start(size: u64, backend: Backend, args: &[&str]) -> Result<NemesisCluster, String> {
        let ids: Vec<u64> = (1..=size).collect();
        let netns = match backend {
            Backend::Netns => Some(Netns::create(&ids)?),
            Backend::Filter => None,
        };
        let tcp: BTreeMap<u64, SocketAddr> = ids
            .iter()
            .map(|id| {
                let addr = match &netns {
                    Some(net) => SocketAddr::from((net.ip(*id), NETNS_TCP_PORT)),
                    None => crate::common::free_port(),
                };
                (*id, addr)
            })
            .collect();
        let peers = tcp
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = NemesisCluster {
            backend,
            nodes: BTreeMap::new(),
            dirs: ids
                .iter()
                .map(|id| (*id, tempfile::tempdir().expect("tempdir")))
                .collect(),
            tcp,
            peers,
            args: args.iter().map(|a| a.to_string()).collect(),
            paused: BTreeSet::new(),
            links: BTreeMap::new(),
            old_logs: BTreeMap::new(),
            joined: BTreeMap::new(),
            netns,
            agent: ureq::AgentBuilder::new().timeout(ADMIN_TIMEOUT).build(),
        };
        for id in ids {
            cluster.start_node(id);
        }
        Ok(cluster)
    }

    /// Node ids, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Starts (or restarts) node `id` on its data directory, with the link
    /// faults from it that are in force (a restarted filter starts empty).
    pub fn start_node(&mut self, id: u64) {
        let node_id = id.to_string();
        let tcp = self.tcp[&id].to_string();
        let http = match &self.netns {
            Some(net) => SocketAddr::from((net.ip(id), NETNS_HTTP_PORT)).to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let (how, whom) = match self.joined.get(&id) {
            Some(via) => ("--join", self.tcp[via].to_string()),
            None => ("--peers", self.peers.clone()),
        };
        let mut args = vec![
            "--node-id",
            &node_id,
            how,
            &whom,
            "--tcp-addr",
            &tcp,
            "--http-addr",
            &http,
            "--enable-fault-injection",
        ];
        args.extend(self.args.iter().map(String::as_str));
        let wrapper = self
            .netns
            .as_ref()
            .map(|net| net.wrapper(id))
            .unwrap_or_default();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let node = Node::start_wrapped(&wrapper, self.dirs[&id].path(), &args, &[]);
        self.nodes.insert(id, Some(node));
        if self.backend == Backend::Filter {
            let faults: Vec<(u64, LinkFault)> = self
                .links
                .iter()
                .filter(|((from, _), _)| *from == id)
                .map(|((_, to), fault)| (*to, *fault))
                .collect();
            for (to, fault) in faults {
                self.set_filter(id, &[to], Some(fault));
            }
        }
    }

    /// Starts a new node `id` (loopback only) that joins through node `via`.
    pub fn join_node(&mut self, id: u64, via: u64) {
        assert!(self.netns.is_none(), "joining nodes run on loopback only");
        self.tcp.insert(id, crate::common::free_port());
        self.dirs.insert(id, tempfile::tempdir().expect("tempdir"));
        self.joined.insert(id, via);
        self.start_node(id);
    }

    /// Kills node `id` for good (it was removed): it leaves `ids()`, its
    /// log is kept.
    pub fn retire(&mut self, id: u64) {
        self.kill9(id);
        self.nodes.remove(&id);
        self.links.retain(|(from, to), _| *from != id && *to != id);
    }

    /// Node `id`'s view of the cluster, if it answers.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let Some(Some(node)) = self.nodes.get(&id) else {
            return None;
        };
        if self.paused.contains(&id) {
            return None;
        }
        self.agent
            .get(&node.url("/cluster"))
            .call()
            .ok()?
            .into_json()
            .ok()
    }

    /// Asks node `via` over HTTP to remove member `id`; the status and answer.
    pub fn remove_member(&self, via: u64, id: u64) -> Option<(u16, String)> {
        let Some(Some(node)) = self.nodes.get(&via) else {
            return None;
        };
        let request = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build()
            .delete(&node.url(&format!("/cluster/members/{id}")));
        Some(http(request, None))
    }

    /// Whether node `id` runs (it may be paused).
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(Option::is_some)
    }

    /// `kill -9` of node `id`; its log is kept.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut node) = self.nodes.insert(id, None).flatten() {
            node.kill9();
            self.old_logs.entry(id).or_default().extend(node.log());
        }
        self.paused.remove(&id);
    }

    /// Makes every WAL sync of node `id` wait `delay_ms` first (a slow
    /// disk), through its fault injection; a restart clears it.
    pub fn slow_disk(&self, id: u64, delay_ms: u64) {
        let body = serde_json::json!({ "wal_sync_delay_ms": delay_ms });
        if let Some((status, answer)) = self.post_fault(id, &body) {
            assert_eq!(status, 200, "slow disk on node {id}: {answer}");
        }
    }

    /// Posts `body` to node `id`'s `/admin/fault`: its status and answer,
    /// or None if the node is not running.
    fn post_fault(&self, id: u64, body: &serde_json::Value) -> Option<(u16, String)> {
        let Some(Some(node)) = self.nodes.get(&id) else {
            return None;
        };
        let request = self
            .agent
            .post(&node.url("/admin/fault"))
            .set("Content-Type", "application/json");
        Some(http(request, Some(&body.to_string())))
    }

    /// Cuts node `id`'s power through its fault injection: at its WAL's
    /// next sync it loses what it wrote since the last one and the process
    /// ends. Waits up to `POWER_CUT_WAIT` for that (the next sync comes with
    /// the next write; the clients keep writing), and never past `until`,
    /// else kills it: true if the power cut itself ended it. Its log is kept.
    pub fn power_cut(&mut self, id: u64, until: Instant) -> bool {
        let body = serde_json::json!({ "power_cut": true });
        let Some((status, answer)) = self.post_fault(id, &body) else {
            return false;
        };
        assert_eq!(status, 200, "power cut on node {id}: {answer}");
        let deadline = (Instant::now() + POWER_CUT_WAIT).min(until);
        let mut cut = false;
        while Instant::now() < deadline {
            if let Some(Some(node)) = self.nodes.get_mut(&id) {
                if node.exited() {
                    cut = true;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9(id);
        cut
    }

    /// SIGSTOP: the process stops where it is, sockets and all.
    pub fn pause(&mut self, id: u64) {
        if let Some(Some(node)) = self.nodes.get(&id) {
            node.signal(libc::SIGSTOP);
            self.paused.insert(id);
        }
    }

    /// SIGCONT of a paused node.
    pub fn resume(&mut self, id: u64) {
        if let Some(Some(node)) = self.nodes.get(&id) {
            node.signal(libc::SIGCONT);
        }
        self.paused.remove(&id);
    }

    /// Puts `fault` on what node `from` sends to node `to`.
    pub fn fault_link(&mut self, from: u64, to: u64, fault: LinkFault) -> Result<(), String> {
        self.links.insert((from, to), fault);
        match &self.netns {
            Some(net) => match fault {
                LinkFault::Cut => net.cut(from, to),
                LinkFault::Lossy { loss_percent } => net.lose(from, to, loss_percent),
            },
            None => {
                if self.is_running(from) && !self.paused.contains(&from) {
                    self.set_filter(from, &[to], Some(fault));
                }
                Ok(())
            }
        }
    }

    /// Drops everything node `from` sends to node `to`.
    pub fn cut(&mut self, from: u64, to: u64) -> Result<(), String> {
        self.fault_link(from, to, LinkFault::Cut)
    }

    /// Removes every link fault.
    pub fn heal(&mut self) -> Result<(), String> {
        let links = std::mem::take(&mut self.links);
        match &self.netns {
            Some(net) => net.heal(),
            None => {
                let mut by_sender: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                for (from, to) in links.keys() {
                    by_sender.entry(*from).or_default().push(*to);
                }
                for (from, targets) in by_sender {
                    if self.is_running(from) && !self.paused.contains(&from) {
                        self.set_filter(from, &targets, None);
                    }
                }
                Ok(())
            }
        }
    }

    /// Sets (or with None clears) the fault filter of node `from` for `to`.
    fn set_filter(&self, from: u64, to: &[u64], fault: Option<LinkFault>) {
        let body = match fault {
            None => serde_json::json!({ "peers": to }),
            Some(LinkFault::Cut) => serde_json::json!({ "peers": to, "drop": true }),
            Some(LinkFault::Lossy { loss_percent }) => serde_json::json!({
                "peers": to,
                "loss_percent": loss_percent,
                "duplicate": true,
            }),
        };
        // A node refuses faults for peers it doesn't know; one that joined
        // a moment ago may not have reached `from` yet. Until it has, `from`
        // has no address for it and sends it nothing, so asking again
        // shortly is enough.
        let deadline = Instant::now() + UNKNOWN_PEER_WAIT;
        loop {
            let Some((status, answer)) = self.post_fault(from, &body) else {
                return;
            };
            if status == 400 && answer.contains("is not a peer") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert_eq!(status, 200, "fault on node {from}: {answer}");
            return;
        }
    }

    /// The leader most running, unpaused nodes name, if any.
    pub fn leader(&self) -> Option<u64> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (id, node) in &self.nodes {
            let Some(node) = node else { continue };
            if self.paused.contains(id) {
                continue;
            }
            let Ok(response) = self.agent.get(&node.url("/cluster")).call() else {
                continue;
            };
            let Ok(status) = response.into_json::<serde_json::Value>() else {
                continue;
            };
            if let Some(leader) = status["leader"].as_u64() {
                *votes.entry(leader).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .map(|(leader, _)| leader)
    }

    /// Waits up to `timeout` until every running node names one leader.
    pub fn wait_agreed_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let leaders: BTreeSet<Option<u64>> = self
                .nodes
                .values()
                .flatten()
                .map(|node| {
                    self.agent
                        .get(&node.url("/cluster"))
                        .call()
                        .ok()
                        .and_then(|r| r.into_json::<serde_json::Value>().ok())
                        .and_then(|s| s["leader"].as_u64())
                })
                .collect();
            if let [Some(leader)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                return Some(leader);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Resumes paused nodes, restarts dead ones and removes every cut.
    pub fn restore(&mut self) -> Result<(), String> {
        for id in self.paused.clone() {
            self.resume(id);
        }
        for id in self.ids() {
            if !self.is_running(id) {
                self.start_node(id);
            }
        }
        self.heal()
    }

    /// Every log line of every node, earlier runs included.
    pub fn logs(&self) -> BTreeMap<u64, Vec<String>> {
        let mut logs = self.old_logs.clone();
        for (id, node) in &self.nodes {
            if let Some(node) = node {
                logs.entry(*id).or_default().extend(node.log());
            }
        }
        logs
    }
}

impl Drop for NemesisCluster {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL; continuing it first
        // just lets it exit without a pile-up of signals.
        for id in self.paused.clone() {
            self.resume(id);
        }
        self.nodes.clear();
    }
}
