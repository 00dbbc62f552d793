//! A deterministic simulator for the Raft core: members driven by ticks over
//! a simulated network with seeded delay, loss, duplication and reordering,
//! partitions, and crash-restart that keeps only what was persisted. After
//! every step it checks election safety, log matching, leader completeness
//! and state machine safety, and panics with the seed on a violation.

#![allow(dead_code)] // Scenario tests and the simulation use different parts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use harmonydb_raft::{
    ConfChange, Entry, EntryPayload, LogRead, Message, NodeId, PersistedState, Raft, RaftConfig,
    RaftError, Ready, Role,
};

/// xorshift64*: small, seeded, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Network behaviour.
#[derive(Clone, Debug, Default)]
pub struct NetworkFaults {
    /// Percent of messages lost.
    pub drop_percent: u64,
    /// Percent of messages delivered twice.
    pub duplicate_percent: u64,
    /// Extra delay in ticks, chosen uniformly in `0..=max_delay_ticks` (reorders).
    pub max_delay_ticks: u64,
}

/// One applied entry as the state machine records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub command: Option<Vec<u8>>,
}

/// A simulated member: its core (None while crashed), its disk, its state machine.
pub struct SimNode {
    pub raft: Option<Raft>,
    pub disk: PersistedState,
    /// The state machine: every applied entry in index order, from index 1.
    pub state: Vec<Applied>,
    /// Reads answered: (request id, read index).
    pub reads: Vec<(u64, u64)>,
    /// Proposals this node made: index -> (term, command).
    pub proposals: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Proposals reported dropped.
    pub dropped: Vec<u64>,
    /// Reads of evicted entries the core asked for and the "disk" has not
    /// answered yet (answered a few at a time, so answers come late and
    /// sometimes no longer fit).
    pub log_reads: Vec<LogRead>,
    /// Readies taken and not yet durable, oldest first (see `Sim::pipelined`).
    pub in_flight: VecDeque<Ready>,
}

/// Most readies a pipelined member has taken and not yet made durable.
pub const PERSIST_DEPTH_MAX: usize = 2;

/// A message in flight.
struct InFlight {
    deliver_at: u64,
    order: u64,
    message: Message,
}

/// The simulated cluster.
pub struct Sim {
    pub seed: u64,
    pub rng: Rng,
    pub now: u64,
    pub nodes: BTreeMap<NodeId, SimNode>,
    network: Vec<InFlight>,
    next_order: u64,
    pub faults: NetworkFaults,
    /// Directed links that drop everything: (from, to).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    config_template: RaftConfig,
    /// Election safety: the leader seen in each term.
    leaders: BTreeMap<u64, NodeId>,
    /// State machine safety: what was applied at each index, by anyone.
    pub committed: BTreeMap<u64, Applied>,
    /// For leader completeness: the lowest term any member was in when it
    /// applied each index (at least the term it was committed in).
    commit_terms: BTreeMap<u64, u64>,
    /// Proposals acknowledged as committed (applied by their proposer at their term).
    pub acknowledged: BTreeMap<u64, Applied>,
    /// Proposals reported dropped: index -> term. None of them may ever commit.
    reported_dropped: BTreeMap<u64, BTreeSet<u64>>,
    /// Reads issued and not answered: request id -> the highest index
    /// acknowledged before the read was issued, which its answer must cover.
    reads_issued: BTreeMap<u64, u64>,
    next_read_id: u64,
    /// Reads answered, and of those how many by lease.
    pub reads_answered: u64,
    /// Compact a member's log once this many entries are applied past its snapshot (0 = never).
    pub compact_every: u64,
    /// Messages delivered, for the benchmark and for tests that need to know.
    pub delivered: u64,
    /// Percent chance, per delivery round, that a random live member crashes
    /// after receiving messages and before persisting what they changed.
    pub mid_step_crash_percent: u64,
    /// Safety checks after every settle (off only for the benchmark).
    pub check_invariants_every_step: bool,
    /// When set, every message sent is also kept here for tests to inspect.
    pub record_sent: bool,
    pub sent: Vec<Message>,
    /// Reads of evicted entries answered from a disk with the entries.
    pub log_reads_served: u64,
    /// Answer every read of evicted entries as unreadable (a disk that lost them).
    pub log_reads_fail: bool,
    /// Members persist asynchronously, as the replica does: up to
    /// `PERSIST_DEPTH_MAX` readies are taken before the oldest is durable,
    /// each becomes durable (in order) with some chance per round, and a
    /// crash loses those that are not. A leader's messages go out when its
    /// ready is taken. Off: each ready is durable as soon as it is taken.
    pub pipelined: bool,
    /// Percent chance, per round, that a pipelined member's oldest ready
    /// in flight becomes durable (low: a slow disk, whose writes network
    /// round trips overtake).
    pub persist_percent: u64,
    /// Readies that were taken while an older one was still in flight.
    pub pipelined_readies: u64,
}

impl Sim {
    /// A cluster whose voters are `voters`; `others` start as non-members.
    pub fn new(
        seed: u64,
        voters: &[NodeId],
        others: &[NodeId],
        configure: impl Fn(&mut RaftConfig),
    ) -> Sim {
        let mut template = RaftConfig::new(1);
        configure(&mut template);
        let mut sim = Sim {
            seed,
            rng: Rng::new(seed),
            now: 0,
            nodes: BTreeMap::new(),
            network: Vec::new(),
            next_order: 0,
            faults: NetworkFaults::default(),
            blocked: BTreeSet::new(),
            config_template: template,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            commit_terms: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            reported_dropped: BTreeMap::new(),
            reads_issued: BTreeMap::new(),
            next_read_id: 1,
            reads_answered: 0,
            compact_every: 0,
            delivered: 0,
            mid_step_crash_percent: 0,
            check_invariants_every_step: true,
            record_sent: false,
            sent: Vec::new(),
            log_reads_served: 0,
            log_reads_fail: false,
            pipelined: false,
            persist_percent: 60,
            pipelined_readies: 0,
        };
        for id in voters.iter().chain(others) {
            let disk = PersistedState::bootstrap(voters.iter().copied());
            let raft = Raft::new(sim.config_for(*id), disk.clone()).expect("valid config");
            sim.nodes.insert(
                *id,
                SimNode {
                    raft: Some(raft),
                    disk,
                    state: Vec::new(),
                    reads: Vec::new(),
                    proposals: BTreeMap::new(),
                    dropped: Vec::new(),
                    log_reads: Vec::new(),
                    in_flight: VecDeque::new(),
                },
            );
        }
        sim
    }

    fn config_for(&self, id: NodeId) -> RaftConfig {
        let mut config = self.config_template.clone();
        config.id = id;
        config.seed = self.seed.wrapping_mul(31).wrapping_add(id);
        config
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn raft(&self, id: NodeId) -> &Raft {
        self.nodes[&id].raft.as_ref().expect("node is up")
    }

    pub fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.raft.as_mut())
            .expect("node is up")
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].raft.is_some()
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().map(|r| (*id, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
            .map(|(id, _)| id)
    }

    fn fail(&self, what: &str) -> ! {
        panic!("seed {}: tick {}: {what}", self.seed, self.now)
    }

    /// One tick of simulated time: every live member ticks, then messages
    /// due by now are delivered and readies processed until things settle.
    pub fn tick(&mut self) {
        self.now += 1;
        if std::env::var_os("HARMONYDB_SIM_TRACE_SIZE").is_some() {
            eprintln!(
                "t{} in flight {} delivered {}",
                self.now,
                self.network.len(),
                self.delivered
            );
        }
        for id in self.ids() {
            if let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
                raft.tick();
            }
        }
        self.settle();
    }

    /// Delivers due messages and processes readies until nothing is due
    /// (bounded, so a message storm can't hang a test).
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            self.process_readies();
            if !self.deliver_due() {
                self.process_readies();
                break;
            }
            if self.mid_step_crash_percent > 0 && self.rng.chance(self.mid_step_crash_percent) {
                // Votes granted and entries appended by these deliveries are
                // not persisted yet, and the answers depending on them unsent.
                let live: Vec<NodeId> = self
                    .ids()
                    .into_iter()
                    .filter(|id| self.is_up(*id))
                    .collect();
                if !live.is_empty() {
                    let victim = self.rng.pick(&live);
                    self.crash(victim);
                }
            }
        }
        if self.check_invariants_every_step {
            self.check_invariants();
        }
    }

    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    /// Ticks until `done` holds (true) or `max_ticks` pass (false).
    pub fn run_until(&mut self, max_ticks: u64, done: impl Fn(&Sim) -> bool) -> bool {
        for _ in 0..max_ticks {
            if done(self) {
                return true;
            }
            self.tick();
        }
        done(self)
    }

    /// Runs until some member leads, and returns it.
    pub fn elect(&mut self) -> NodeId {
        if !self.run_until(500, |s| s.leader().is_some()) {
            self.fail("no leader within 500 ticks");
        }
        self.leader().expect("leader")
    }

    fn deliver_due(&mut self) -> bool {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at <= now {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        if due.is_empty() {
            return false;
        }
        due.sort_by_key(|m| (m.deliver_at, m.order));
        for in_flight in due {
            let message = in_flight.message;
            if self.blocked.contains(&(message.from, message.to)) {
                continue;
            }
            if let Some(raft) = self
                .nodes
                .get_mut(&message.to)
                .and_then(|n| n.raft.as_mut())
            {
                self.delivered += 1;
                if std::env::var_os("HARMONYDB_SIM_TRACE").is_some() {
                    eprintln!("t{} {} -> {} (term {}): {:?} | receiver term {} role {:?} commit {} last {}", self.now, message.from, message.to, message.term, short(&message.body), raft.term(), raft.role(), raft.status().commit, raft.status().last_index);
                }
                raft.step(message);
            }
        }
        true
    }

    fn enqueue(&mut self, message: Message) {
        if self.record_sent {
            self.sent.push(message.clone());
        }
        if self.faults.drop_percent > 0 && self.rng.chance(self.faults.drop_percent) {
            return;
        }
        let copies = if self.faults.duplicate_percent > 0
            && self.rng.chance(self.faults.duplicate_percent)
        {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.below(self.faults.max_delay_ticks + 1);
            self.next_order += 1;
            self.network.push(InFlight {
                deliver_at: self.now + delay,
                order: self.next_order,
                message: message.clone(),
            });
        }
    }

    fn process_readies(&mut self) {
        for id in self.ids() {
            self.answer_log_reads(id);
            if self.pipelined {
                self.persist_some(id);
            }
            while let Some(ready) = self.next_ready(id) {
                self.take_ready(id, ready);
                if !self.pipelined {
                    self.persist_oldest(id);
                }
            }
            self.maybe_compact(id);
        }
    }

    /// The member's next ready, if it has one and room to take it: a
    /// pipelined member holds at most `PERSIST_DEPTH_MAX` in flight, and a
    /// ready with a snapshot waits for none to be.
    fn next_ready(&mut self, id: NodeId) -> Option<Ready> {
        let node = self.nodes.get_mut(&id)?;
        let in_flight = node.in_flight.len();
        let raft = node.raft.as_mut()?;
        if in_flight >= PERSIST_DEPTH_MAX
            || !raft.has_ready()
            || (in_flight > 0 && raft.snapshot_pending())
        {
            return None;
        }
        Some(raft.ready())
    }

    /// Makes the member's oldest readies durable, each with a chance of
    /// `persist_percent` (stopping at the first that is not: the disk
    /// writes in order).
    fn persist_some(&mut self, id: NodeId) {
        while self.nodes[&id].raft.is_some()
            && !self.nodes[&id].in_flight.is_empty()
            && self.rng.chance(self.persist_percent)
        {
            self.persist_oldest(id);
        }
    }

    /// Answers the node's pending reads of evicted entries from its disk,
    /// each with a 70% chance now (the rest wait for a later round).
    fn answer_log_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        if node.raft.is_none() || node.log_reads.is_empty() {
            return;
        }
        let mut later = Vec::new();
        for read in std::mem::take(&mut node.log_reads) {
            if !self.rng.chance(70) {
                later.push(read);
                continue;
            }
            let mut entries = Vec::new();
            let mut size = 0;
            for entry in node
                .disk
                .entries
                .iter()
                .filter(|e| e.index >= read.from && e.index <= read.to)
            {
                size += entry.size_bytes();
                if entries.len() >= read.count_max
                    || (!entries.is_empty() && size > read.size_max_bytes)
                {
                    break;
                }
                entries.push(entry.clone());
            }
            // The disk no longer has them (compacted): unreadable.
            let found = (entries.first().map(|e| e.index) == Some(read.from)
                && !self.log_reads_fail)
                .then_some(entries);
            self.log_reads_served += u64::from(found.is_some());
            if let Some(raft) = node.raft.as_mut() {
                raft.log_read_done(read.peer, read.from, found);
            }
        }
        node.log_reads = later;
    }

    /// The entry at `index` as `id` has it: in its core's memory, or else
    /// on its disk (where evicted entries are).
    fn entry_of(&self, id: NodeId, index: u64) -> Option<Entry> {
        let node = &self.nodes[&id];
        node.raft
            .as_ref()
            .and_then(|r| r.entry(index).cloned())
            .or_else(|| {
                let position = index.checked_sub(node.disk.snapshot.meta.index + 1)?;
                let entry = node.disk.entries.get(usize::try_from(position).ok()?)?;
                (entry.index == index).then(|| entry.clone())
            })
    }

    /// Takes a ready: a leader's messages go out at once; committed
    /// entries (durable already) are applied; the rest waits in flight.
    fn take_ready(&mut self, id: NodeId, mut ready: Ready) {
        if self.pipelined && !self.nodes[&id].in_flight.is_empty() {
            self.pipelined_readies += 1;
        }
        if ready.send_before_persist {
            for message in std::mem::take(&mut ready.messages) {
                self.enqueue(message);
            }
        }
        self.apply_ready(id, &ready);
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(raft) = node.raft.as_mut() {
            raft.release_applied(node.state.len() as u64);
        }
        node.in_flight.push_back(ready);
    }

    /// The member's oldest ready in flight becomes durable: its records
    /// reach the disk, its messages go out, the core advances.
    fn persist_oldest(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(ready) = node.in_flight.pop_front() else {
            return;
        };
        // 1. Persist: snapshot, entries, hard state.
        if let Some(snapshot) = &ready.snapshot {
            node.disk.snapshot = snapshot.clone();
            node.disk.entries.clear();
        }
        if let Some(first) = ready.entries.first() {
            // Stored entries are contiguous after the snapshot: cut by position.
            let keep = first
                .index
                .saturating_sub(node.disk.snapshot.meta.index + 1) as usize;
            node.disk.entries.truncate(keep);
            node.disk.entries.extend(ready.entries.iter().cloned());
            // Entries are appended in index order, so the ends tell whether
            // a gap opened (checked in every build: a gap is lost data).
            let base = node.disk.snapshot.meta.index;
            let (first, last) = (
                node.disk.entries.first().map(|e| e.index),
                node.disk.entries.last().map(|e| e.index),
            );
            if first != Some(base + 1) || last != Some(base + node.disk.entries.len() as u64) {
                let message = format!(
                    "node {id}: disk log not contiguous after the snapshot at {base}: {first:?}..={last:?} in {} entries",
                    node.disk.entries.len()
                );
                self.fail(&message);
            }
        }
        if let Some(hard_state) = ready.hard_state {
            node.disk.hard_state = hard_state;
        }
        // 2. Send (unless sent when taken).
        for message in ready.messages.clone() {
            self.enqueue(message);
        }
        // 3. Advance; what was applied may leave the core's memory, and
        // reads of evicted entries are answered later.
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(raft) = node.raft.as_mut() {
            raft.advance(&ready);
            node.log_reads.extend(ready.log_reads.iter().cloned());
        }
    }

    /// Applies what a ready settles (committed entries, a snapshot's
    /// state, reads, dropped proposals) and checks it.
    fn apply_ready(&mut self, id: NodeId, ready: &Ready) {
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(snapshot) = &ready.snapshot {
            node.state = decode_state(&snapshot.data);
        }
        let mut newly_applied = Vec::new();
        for entry in &ready.committed_entries {
            let applied = Applied {
                index: entry.index,
                term: entry.term,
                command: match &entry.payload {
                    EntryPayload::Command(data) => Some(data.clone()),
                    _ => None,
                },
            };
            if entry.index != node.state.len() as u64 + 1 {
                let message = format!(
                    "node {id} applied {} after {}",
                    entry.index,
                    node.state.len()
                );
                self.fail(&message);
            }
            node.state.push(applied.clone());
            newly_applied.push(applied);
        }
        let mut answered_reads = Vec::new();
        for read in &ready.read_states {
            node.reads.push((read.request_id, read.index));
            answered_reads.push(*read);
        }
        let mut newly_dropped = Vec::new();
        for dropped in &ready.dropped_proposals {
            node.dropped.push(dropped.index);
            node.proposals.remove(&dropped.index);
            if dropped.reason == RaftError::ProposalDropped {
                newly_dropped.push((dropped.index, dropped.term));
            }
        }
        // A proposal is acknowledged when its proposer applies it at the
        // term it proposed it in.
        let mut acknowledged = Vec::new();
        for applied in &newly_applied {
            if let Some((term, command)) = node.proposals.remove(&applied.index) {
                if term == applied.term && applied.command.as_ref() == Some(&command) {
                    acknowledged.push(applied.clone());
                }
            }
        }
        let applier_term = node.raft.as_ref().map_or(0, |r| r.term());
        let mut newly_committed = Vec::new();
        for applied in newly_applied {
            let commit_term = self
                .commit_terms
                .entry(applied.index)
                .or_insert(applier_term);
            *commit_term = (*commit_term).min(applier_term);
            match self.committed.get(&applied.index) {
                Some(existing) if *existing != applied => {
                    let message = format!(
                        "state machine safety: node {id} applied {applied:?} where {existing:?} was applied"
                    );
                    self.fail(&message);
                }
                Some(_) => {}
                None => {
                    newly_committed.push(applied.clone());
                    self.committed.insert(applied.index, applied);
                }
            }
        }
        for applied in acknowledged {
            self.acknowledged.insert(applied.index, applied);
        }
        // A proposal reported dropped must never commit.
        // Linearizable reads: an answer must cover every write acknowledged
        // before the read was issued (a deposed leader would answer lower).
        for read in answered_reads {
            if let Some(required) = self.reads_issued.remove(&read.request_id) {
                self.reads_answered += 1;
                if read.index < required {
                    let message = format!(
                        "stale read: node {id} answered read {} at index {} but index {required} was acknowledged before it was issued",
                        read.request_id, read.index
                    );
                    self.fail(&message);
                }
            }
        }
        // Checked both ways: a report after the commit, and a commit after the report.
        for (index, term) in newly_dropped {
            if self.committed.get(&index).is_some_and(|a| a.term == term) {
                self.fail(&format!(
                    "proposal at {index} (term {term}) was reported dropped but committed"
                ));
            }
            self.reported_dropped.entry(index).or_default().insert(term);
        }
        for applied in &newly_committed {
            if self
                .reported_dropped
                .get(&applied.index)
                .is_some_and(|terms| terms.contains(&applied.term))
            {
                let message = format!(
                    "proposal at {} (term {}) was reported dropped but committed",
                    applied.index, applied.term
                );
                self.fail(&message);
            }
        }
    }

    fn maybe_compact(&mut self, id: NodeId) {
        if self.compact_every == 0 {
            return;
        }
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let applied = raft.applied_index();
        if applied < raft.snapshot_index() + self.compact_every {
            return;
        }
        let data = encode_state(&node.state[..applied as usize]);
        if raft.compact(applied, data).is_ok() {
            node.disk.snapshot = raft.snapshot().clone();
            node.disk.entries.retain(|e| e.index > applied);
        }
    }

    /// Proposes `command` at `id`; remembers it for the acknowledgement check.
    pub fn propose(&mut self, id: NodeId, command: Vec<u8>) -> Result<u64, RaftError> {
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(raft) = node.raft.as_mut() else {
            return Err(RaftError::NotLeader { leader: 0 });
        };
        let index = raft.propose(command.clone())?;
        let term = raft.term();
        node.proposals.insert(index, (term, command));
        Ok(index)
    }

    /// Proposes at the current leader, if there is one.
    pub fn propose_at_leader(&mut self, command: Vec<u8>) -> Option<u64> {
        let leader = self.leader()?;
        self.propose(leader, command).ok()
    }

    /// Issues a linearizable read (ReadIndex, or the lease if `lease`) at `id`.
    pub fn read(&mut self, id: NodeId, lease: bool) -> Result<u64, RaftError> {
        let request_id = self.next_read_id;
        self.next_read_id += 1;
        let required = self.acknowledged.keys().next_back().copied().unwrap_or(0);
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(raft) = node.raft.as_mut() else {
            return Err(RaftError::NotLeader { leader: 0 });
        };
        if lease {
            raft.read_lease(request_id)?;
        } else {
            raft.read_index(request_id)?;
        }
        self.reads_issued.insert(request_id, required);
        Ok(request_id)
    }

    pub fn conf_change(&mut self, change: ConfChange) -> Result<u64, RaftError> {
        let leader = self.leader().ok_or(RaftError::NotLeader { leader: 0 })?;
        self.raft_mut(leader)
            .propose_conf_change(change, &Default::default())
    }

    /// Crash: the member's memory is gone; only its disk remains.
    pub fn crash(&mut self, id: NodeId) {
        if std::env::var_os("HARMONYDB_SIM_TRACE").is_some() {
            eprintln!("t{} crash {id}", self.now);
        }
        let node = self.nodes.get_mut(&id).expect("node");
        node.raft = None;
        node.proposals.clear();
        node.log_reads.clear();
        // What was not durable is lost.
        node.in_flight.clear();
    }

    /// Crashes a random live member that has writes in flight (a power
    /// loss while its disk is busy), if there is one.
    pub fn crash_one_writing(&mut self) {
        let writing: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.is_some() && !n.in_flight.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if !writing.is_empty() {
            let victim = self.rng.pick(&writing);
            self.crash(victim);
        }
    }

    /// Restart from disk; the state machine is rebuilt from the snapshot and
    /// committed entries are applied again.
    pub fn restart(&mut self, id: NodeId) {
        let config = self.config_for(id);
        let node = self.nodes.get_mut(&id).expect("node");
        if node.raft.is_some() {
            return;
        }
        node.state = decode_state(&node.disk.snapshot.data);
        if std::env::var_os("HARMONYDB_SIM_TRACE").is_some() {
            eprintln!(
                "t{} restart {id} hard state {:?} entries {:?}",
                self.now,
                node.disk.hard_state,
                node.disk
                    .entries
                    .iter()
                    .map(|e| (e.index, e.term))
                    .collect::<Vec<_>>()
            );
        }
        let raft = Raft::new(config, node.disk.clone()).expect("restart");
        node.raft = Some(raft);
    }

    /// Splits the members into groups that can't reach each other.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.blocked.clear();
        for (a, group_a) in groups.iter().enumerate() {
            for (b, group_b) in groups.iter().enumerate() {
                if a != b {
                    for from in group_a.iter() {
                        for to in group_b.iter() {
                            self.blocked.insert((*from, *to));
                        }
                    }
                }
            }
        }
    }

    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    /// Removes every partition and network fault.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.faults = NetworkFaults::default();
    }

    /// Checks the Raft safety properties on the current state.
    pub fn check_invariants(&mut self) {
        let live: Vec<(NodeId, &Raft)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().map(|r| (*id, r)))
            .collect();
        // Election safety: at most one leader per term.
        let mut new_leaders = Vec::new();
        for (id, raft) in &live {
            if raft.role() == Role::Leader {
                match self.leaders.get(&raft.term()) {
                    Some(other) if other != id => self.fail(&format!(
                        "election safety: {other} and {id} both lead term {}",
                        raft.term()
                    )),
                    Some(_) => {}
                    None => new_leaders.push((raft.term(), *id)),
                }
            }
        }
        // No leader ever sends a log that conflicts with a committed entry.
        for (id, raft) in &live {
            if raft.committed_conflicts() > 0 {
                self.fail(&format!(
                    "node {id} was sent a log that conflicts with an entry it had committed"
                ));
            }
        }
        // Log matching: if two logs have an entry with the same index and
        // term, they are identical up to it.
        for (a, (id_a, raft_a)) in live.iter().enumerate() {
            for (id_b, raft_b) in live.iter().skip(a + 1) {
                let low = raft_a.snapshot_index().max(raft_b.snapshot_index()) + 1;
                let high = raft_a.status().last_index.min(raft_b.status().last_index);
                let mut matched = false;
                for index in (low..=high).rev() {
                    let (ea, eb) = (self.entry_of(*id_a, index), self.entry_of(*id_b, index));
                    if matched {
                        if ea != eb {
                            self.fail(&format!("log matching: {id_a} and {id_b} differ at {index} below a matching entry"));
                        }
                    } else if let (Some(ea), Some(eb)) = (ea, eb) {
                        if ea.term == eb.term {
                            if ea != eb {
                                self.fail(&format!("log matching: {id_a} and {id_b} differ at {index} in the same term"));
                            }
                            matched = true;
                        }
                    }
                }
            }
        }
        // Leader completeness: a leader holds every entry committed in an
        // earlier term (a leader of an older term, elected late, need not).
        for (term, id) in new_leaders {
            let raft = live
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, r)| *r)
                .expect("leader is live");
            for (index, applied) in &self.committed {
                let committed_before = self.commit_terms.get(index).is_some_and(|t| *t < term);
                if *index <= raft.snapshot_index() || !committed_before {
                    continue;
                }
                if raft.entry_term(*index) != Some(applied.term) {
                    self.fail(&format!(
                        "leader completeness: leader {id} of term {term} lacks committed entry {index} (term {})",
                        applied.term
                    ));
                }
            }
            self.leaders.insert(term, id);
        }
    }

    /// Members in the latest configuration known to the leader (or all).
    pub fn members(&self) -> Vec<NodeId> {
        match self.leader() {
            Some(leader) => self
                .raft(leader)
                .status()
                .config
                .members()
                .into_iter()
                .collect(),
            None => self.ids(),
        }
    }

    /// Liveness after healing: a leader exists and every acknowledged
    /// proposal is applied on every live member of the configuration.
    pub fn converged(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let commit = self.raft(leader).status().commit;
        self.members().iter().all(|id| {
            self.nodes
                .get(id)
                .and_then(|n| n.raft.as_ref().map(|r| (n, r)))
                .is_some_and(|(node, raft)| {
                    raft.status().applied >= commit
                        && self
                            .acknowledged
                            .values()
                            .all(|a| node.state.get(a.index as usize - 1) == Some(a))
                })
        })
    }
}

pub fn encode_state(state: &[Applied]) -> Vec<u8> {
    rmp_serde::to_vec(state).expect("encode state")
}

pub fn decode_state(data: &[u8]) -> Vec<Applied> {
    if data.is_empty() {
        return Vec::new();
    }
    rmp_serde::from_slice(data).expect("decode state")
}

/// Entries of a member's log, for assertions.
pub fn log_of(raft: &Raft) -> Vec<Entry> {
    let status = raft.status();
    (raft.snapshot_index() + 1..=status.last_index)
        .filter_map(|i| raft.entry(i).cloned())
        .collect()
}

fn short(body: &harmonydb_raft::MessageBody) -> String {
    use harmonydb_raft::MessageBody::*;
    match body {
        AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => {
            format!(
            "Append prev ({prev_log_index},{prev_log_term}) entries {:?} commit {leader_commit}",
            entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>()
        )
        }
        other => format!("{other:?}"),
    }
}
