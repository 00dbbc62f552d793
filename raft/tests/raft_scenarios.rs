//! Scenario tests of the Raft core, each named after what it shows. Most run
//! a small cluster in the deterministic simulator (no loss, no delay unless a
//! test sets it); a few drive one member by hand with crafted messages.

mod raft_support;

use std::collections::BTreeSet;

use harmonydb_raft::{
    ConfChange, Entry, EntryPayload, HardState, Message, MessageBody, NodeId, PersistedState, Raft,
    RaftConfig, RaftError, Role,
};
use raft_support::{log_of, Sim};

fn cluster(size: u64) -> Sim {
    let voters: Vec<NodeId> = (1..=size).collect();
    Sim::new(7, &voters, &[], |_| {})
}

fn cluster_with(size: u64, others: &[NodeId], configure: impl Fn(&mut RaftConfig)) -> Sim {
    let voters: Vec<NodeId> = (1..=size).collect();
    Sim::new(7, &voters, others, configure)
}

/// Proposes at the leader and runs until the leader has applied it.
fn commit(sim: &mut Sim, command: &str) -> u64 {
    let leader = sim.elect();
    let index = sim
        .propose(leader, command.as_bytes().to_vec())
        .expect("leader accepts");
    let applied = sim.run_until(200, |s| s.raft(leader).status().applied >= index);
    assert!(
        applied,
        "{command} at {index} was not applied by the leader"
    );
    index
}

/// Commits and waits until every member of the configuration applied it.
fn commit_everywhere(sim: &mut Sim, command: &str) -> u64 {
    let index = commit(sim, command);
    assert!(
        sim.run_until(300, |s| s.converged()),
        "{command} did not reach every member"
    );
    index
}

fn applied_commands(sim: &Sim, id: NodeId) -> Vec<String> {
    sim.nodes[&id]
        .state
        .iter()
        .filter_map(|a| {
            a.command
                .as_ref()
                .map(|c| String::from_utf8_lossy(c).into_owned())
        })
        .collect()
}

/// A successful AppendEntries answer up to `index`.
fn ack(index: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse {
        success: true,
        index,
        hint_index: 0,
        conflict_term: 0,
    }
}

/// Some member other than `leader`.
fn follower_of(sim: &Sim, leader: NodeId) -> NodeId {
    sim.ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower")
}

fn message(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// A hard state.
fn hard(term: u64, vote: NodeId, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

/// A member with a given log and hard state, for hand-driven tests.
fn member(id: NodeId, voters: &[NodeId], terms: &[u64], hard_state: HardState) -> Raft {
    let mut persisted = PersistedState::bootstrap(voters.iter().copied());
    persisted.hard_state = hard_state;
    persisted.entries = terms
        .iter()
        .enumerate()
        .map(|(i, term)| Entry {
            term: *term,
            index: i as u64 + 1,
            payload: EntryPayload::Command(vec![i as u8]),
        })
        .collect();
    Raft::new(RaftConfig::new(id), persisted).expect("valid")
}

fn vote_request(
    from: NodeId,
    to: NodeId,
    term: u64,
    last_index: u64,
    last_term: u64,
    pre_vote: bool,
) -> Message {
    message(
        from,
        to,
        term,
        MessageBody::RequestVote {
            last_log_index: last_index,
            last_log_term: last_term,
            pre_vote,
            transfer: false,
        },
    )
}

fn granted_votes(raft: &mut Raft) -> Vec<(NodeId, bool)> {
    let ready = raft.ready();
    let answers = ready
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::RequestVoteResponse { granted, .. } => Some((m.to, granted)),
            _ => None,
        })
        .collect();
    raft.advance(&ready);
    answers
}

// ---------------------------------------------------------------- elections

#[test]
fn a_single_member_elects_itself_and_commits() {
    let mut sim = cluster(1);
    assert_eq!(sim.elect(), 1);
    commit(&mut sim, "solo");
    assert_eq!(applied_commands(&sim, 1), ["solo"]);
}

#[test]
fn three_members_elect_exactly_one_leader() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    sim.run(50);
    let leaders: Vec<NodeId> = sim
        .ids()
        .into_iter()
        .filter(|id| sim.raft(*id).role() == Role::Leader)
        .collect();
    assert_eq!(leaders, [leader]);
    for id in sim.ids() {
        assert_eq!(
            sim.raft(id).leader(),
            leader,
            "member {id} follows the leader"
        );
    }
}

#[test]
fn a_stale_log_cannot_win_an_election() {
    // Member 1 has entries up to term 3; a candidate whose log ends in term 2
    // (or is shorter in term 3) gets no vote.
    let mut voter = member(1, &[1, 2, 3], &[1, 2, 3], hard(3, 0, 1));
    voter.step(vote_request(2, 1, 4, 5, 2, false));
    voter.step(vote_request(3, 1, 4, 2, 3, false));
    assert_eq!(granted_votes(&mut voter), [(2, false), (3, false)]);
    assert_eq!(voter.term(), 4, "a real vote request still moves the term");
    // An up-to-date candidate gets it.
    voter.step(vote_request(2, 1, 4, 3, 3, false));
    assert_eq!(granted_votes(&mut voter), [(2, true)]);
}

#[test]
fn a_member_votes_once_per_term() {
    let mut voter = member(1, &[1, 2, 3], &[1], hard(1, 0, 1));
    voter.step(vote_request(2, 1, 2, 1, 1, false));
    voter.step(vote_request(3, 1, 2, 1, 1, false));
    // The same candidate asking again (a retry) gets the same answer.
    voter.step(vote_request(2, 1, 2, 1, 1, false));
    assert_eq!(
        granted_votes(&mut voter),
        [(2, true), (3, false), (2, true)]
    );
}

#[test]
fn a_vote_is_persisted_before_it_is_sent() {
    let mut voter = member(1, &[1, 2, 3], &[1], hard(1, 0, 1));
    voter.step(vote_request(2, 1, 2, 1, 1, false));
    let ready = voter.ready();
    // The grant and the hard state recording it come in the same ready, and
    // the caller persists the hard state before sending.
    assert_eq!(ready.hard_state.map(|h| (h.term, h.vote)), Some((2, 2)));
    assert!(ready.messages.iter().any(|m| matches!(
        m.body,
        MessageBody::RequestVoteResponse { granted: true, .. }
    )));
}

#[test]
fn pre_vote_keeps_a_partitioned_member_from_raising_its_term() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let follower = follower_of(&sim, leader);
    let term = sim.raft(leader).term();
    sim.isolate(follower);
    sim.run(100);
    assert_eq!(
        sim.raft(follower).term(),
        term,
        "pre-votes never raise the term"
    );
    assert_ne!(sim.raft(follower).role(), Role::Leader);
}

#[test]
fn a_rejoining_partitioned_member_does_not_disrupt_a_stable_leader() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let follower = follower_of(&sim, leader);
    let term = sim.raft(leader).term();
    sim.isolate(follower);
    sim.run(100);
    sim.heal();
    sim.run(100);
    assert_eq!(sim.leader(), Some(leader), "the leader keeps its place");
    assert_eq!(sim.raft(leader).term(), term, "and its term");
}

#[test]
fn without_pre_vote_a_rejoining_member_does_disrupt_the_leader() {
    // The contrast that shows pre-vote is what protects the leader.
    let mut sim = cluster_with(3, &[], |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    let leader = sim.elect();
    let follower = follower_of(&sim, leader);
    let term = sim.raft(leader).term();
    sim.isolate(follower);
    sim.run(100);
    assert!(
        sim.raft(follower).term() > term,
        "it campaigned in ever higher terms"
    );
    sim.heal();
    sim.run(50);
    assert!(
        sim.raft(leader).term() > term,
        "its higher term deposed the old leader"
    );
}

#[test]
fn check_quorum_makes_a_partitioned_leader_step_down() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    sim.isolate(leader);
    let stepped_down = sim.run_until(60, |s| s.raft(leader).role() != Role::Leader);
    assert!(
        stepped_down,
        "an isolated leader steps down within an election timeout or two"
    );
    let new_leader = sim.run_until(200, |s| s.leader().is_some_and(|l| l != leader));
    assert!(new_leader, "the majority side elects a new leader");
}

#[test]
fn a_leader_with_a_quorum_stays_leader() {
    let mut sim = cluster(5);
    let leader = sim.elect();
    let others: Vec<NodeId> = sim.ids().into_iter().filter(|id| *id != leader).collect();
    // Two followers gone: the leader and two others are still a quorum.
    sim.isolate(others[0]);
    sim.isolate(others[1]);
    sim.run(200);
    assert_eq!(sim.leader(), Some(leader));
    commit(&mut sim, "still-committing");
}

#[test]
fn a_follower_that_hears_from_its_leader_ignores_candidates() {
    let mut follower = member(1, &[1, 2, 3], &[1], hard(1, 0, 1));
    follower.step(message(
        2,
        1,
        1,
        MessageBody::Heartbeat { commit: 1, seq: 1 },
    ));
    follower.ready();
    follower.step(vote_request(3, 1, 5, 10, 1, false));
    let ready = follower.ready();
    assert!(
        ready.messages.is_empty(),
        "the vote request was ignored: {:?}",
        ready.messages
    );
    assert_eq!(follower.term(), 1, "and did not raise the term");
}

#[test]
fn election_timeouts_are_randomized_per_member() {
    // Members time out at different ticks, so one campaign usually wins alone.
    let mut first_campaign = Vec::new();
    for id in 1..=5 {
        let mut raft = member(id, &[1, 2, 3, 4, 5], &[], HardState::default());
        let mut ticks = 0;
        while raft.role() == Role::Follower {
            raft.tick();
            ticks += 1;
        }
        first_campaign.push(ticks);
        assert!(
            (10..20).contains(&ticks),
            "timeout {ticks} outside [10, 20)"
        );
    }
    let distinct: BTreeSet<u64> = first_campaign.iter().copied().collect();
    assert!(
        distinct.len() > 1,
        "all members timed out together: {first_campaign:?}"
    );
}

// -------------------------------------------------------------- replication

#[test]
fn entries_replicate_and_commit_on_every_member() {
    let mut sim = cluster(3);
    for i in 0..10 {
        commit_everywhere(&mut sim, &format!("entry-{i}"));
    }
    let expected: Vec<String> = (0..10).map(|i| format!("entry-{i}")).collect();
    for id in sim.ids() {
        assert_eq!(applied_commands(&sim, id), expected, "member {id}");
    }
}

#[test]
fn a_minority_cannot_commit() {
    let mut sim = cluster(5);
    let leader = sim.elect();
    let commit_before = sim.raft(leader).status().commit;
    let others: Vec<NodeId> = sim.ids().into_iter().filter(|id| *id != leader).collect();
    // The leader keeps one follower; three others form the majority.
    sim.partition(&[&[leader, others[0]], &others[1..]]);
    let index = sim
        .propose(leader, b"lonely".to_vec())
        .expect("still leader for now");
    sim.run(30);
    assert!(
        sim.raft(leader).status().commit < index,
        "a minority committed"
    );
    assert!(sim.raft(leader).status().commit >= commit_before);
    assert!(applied_commands(&sim, leader).is_empty());
}

#[test]
fn figure_8_an_old_term_entry_is_not_committed_by_counting_replicas() {
    // Leader of term 4 with an entry of term 2 at index 2 that it did not
    // create; it appends its own no-op at index 3.
    let voters = [1, 2, 3, 4, 5];
    let mut leader = member(1, &voters, &[1, 2], hard(3, 0, 1));
    for _ in 0..40 {
        leader.tick();
        if leader.role() != Role::Follower {
            break;
        }
    }
    let ready = leader.ready();
    leader.advance(&ready);
    let prospective_term = leader.term() + 1;
    for voter in [2, 3] {
        leader.step(message(
            voter,
            1,
            prospective_term,
            MessageBody::RequestVoteResponse {
                granted: true,
                pre_vote: true,
            },
        ));
    }
    let ready = leader.ready();
    leader.advance(&ready);
    let term = leader.term();
    for voter in [2, 3] {
        leader.step(message(
            voter,
            1,
            term,
            MessageBody::RequestVoteResponse {
                granted: true,
                pre_vote: false,
            },
        ));
    }
    assert_eq!(leader.role(), Role::Leader);
    let ready = leader.ready();
    leader.advance(&ready);
    assert_eq!(
        leader.status().last_index,
        3,
        "the no-op of the new term is at 3"
    );
    // Two followers acknowledge index 2 (the old-term entry): with the leader
    // that is a majority of 5 holding it, but it must not commit by counting.
    for voter in [2, 3] {
        let ack = ack(2);
        leader.step(message(voter, 1, term, ack));
    }
    assert_eq!(
        leader.status().commit,
        1,
        "an old-term entry committed by counting replicas"
    );
    // Once the current term's entry is on a majority, both commit.
    for voter in [2, 3] {
        let ack = ack(3);
        leader.step(message(voter, 1, term, ack));
    }
    assert_eq!(leader.status().commit, 3);
}

#[test]
fn a_follower_with_a_conflicting_suffix_is_repaired() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "base");
    let follower = follower_of(&sim, leader);
    // The old leader, cut off, appends entries nobody else gets.
    sim.isolate(leader);
    for i in 0..5 {
        let _ = sim.propose(leader, format!("orphan-{i}").into_bytes());
    }
    sim.run_until(200, |s| s.leader().is_some_and(|l| l != leader));
    commit(&mut sim, "new-term");
    sim.heal();
    let repaired = sim.run_until(300, |s| log_of(s.raft(leader)) == log_of(s.raft(follower)));
    assert!(
        repaired,
        "the old leader's conflicting suffix was not replaced"
    );
    assert!(applied_commands(&sim, leader)
        .iter()
        .all(|c| !c.starts_with("orphan")));
    // An orphan is reported dropped once another entry commits at its index
    // (until then another member could still hold and commit it).
    for i in 0..5 {
        commit(&mut sim, &format!("filler-{i}"));
    }
    let reported = sim.run_until(100, |s| s.nodes[&leader].dropped.len() >= 5);
    assert!(reported, "its orphaned proposals are reported dropped");
}

#[test]
fn fast_back_off_skips_a_conflicting_term_in_one_step() {
    // Follower log: terms [1, 2, 2, 2, 2, 2]; leader log: [1, 3, 3, 3, 3, 3, 3].
    let mut follower = member(2, &[1, 2, 3], &[1, 2, 2, 2, 2, 2], hard(3, 0, 1));
    follower.step(message(
        1,
        2,
        3,
        MessageBody::AppendEntries {
            prev_log_index: 6,
            prev_log_term: 3,
            entries: vec![],
            leader_commit: 1,
        },
    ));
    let ready = follower.ready();
    let answer = ready.messages.iter().find_map(|m| match m.body {
        MessageBody::AppendEntriesResponse {
            success,
            hint_index,
            conflict_term,
            ..
        } => Some((success, hint_index, conflict_term)),
        _ => None,
    });
    // The follower points at the first index of its conflicting term 2,
    // skipping indexes 3..6 instead of one per round trip.
    assert_eq!(answer, Some((false, 2, 2)));
}

#[test]
fn appends_are_batched_by_count_and_by_bytes() {
    let mut sim = cluster_with(3, &[], |c| {
        c.append_entries_max = 4;
        c.append_size_max_bytes = 1000;
    });
    let leader = sim.elect();
    let follower = follower_of(&sim, leader);
    sim.isolate(follower);
    for i in 0..20 {
        sim.propose(leader, vec![i; 300]).expect("propose");
    }
    sim.run(5);
    // Let the follower back and watch what the leader sends it.
    sim.record_sent = true;
    sim.heal();
    assert!(sim.run_until(300, |s| s.raft(follower).status().applied
        == s.raft(leader).status().commit));
    let mut appends = 0;
    for m in sim.sent.iter().filter(|m| m.to == follower) {
        if let MessageBody::AppendEntries { entries, .. } = &m.body {
            appends += 1;
            assert!(entries.len() <= 4, "more than 4 entries in one append");
            let bytes: usize = entries.iter().map(|e| e.size_bytes()).sum();
            assert!(
                entries.len() <= 1 || bytes <= 1000,
                "{bytes} bytes in one append"
            );
        }
    }
    assert!(
        appends >= 6,
        "20 entries of 324 bytes took only {appends} appends"
    );
}

#[test]
fn pipelining_keeps_at_most_the_window_in_flight() {
    let mut sim = cluster_with(3, &[], |c| {
        c.append_entries_max = 1;
        c.in_flight_max = 3;
    });
    let leader = sim.elect();
    commit(&mut sim, "warm-up");
    // Ten proposals in one go: only 3 single-entry appends per follower go
    // out before answers come back.
    sim.record_sent = true;
    for i in 0..10 {
        sim.propose(leader, vec![i]).expect("propose");
    }
    sim.settle();
    let first_burst: Vec<Message> = sim
        .sent
        .iter()
        .take_while(|m| m.from == leader)
        .cloned()
        .collect();
    let mut per_follower = std::collections::BTreeMap::new();
    for m in &first_burst {
        if let MessageBody::AppendEntries { entries, .. } = &m.body {
            if !entries.is_empty() {
                *per_follower.entry(m.to).or_insert(0) += 1;
            }
        }
    }
    assert!(per_follower.values().all(|n| *n == 3), "{per_follower:?}");
}

#[test]
fn lost_messages_are_retried_until_followers_catch_up() {
    let mut sim = cluster(3);
    sim.elect();
    sim.faults.drop_percent = 30;
    for i in 0..20 {
        let _ = sim.propose_at_leader(format!("lossy-{i}").into_bytes());
        sim.tick();
    }
    sim.heal();
    assert!(sim.run_until(500, |s| s.converged()));
}

#[test]
fn a_crashed_member_keeps_only_what_it_persisted() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "durable");
    // Appended but never through a ready: not on disk.
    sim.raft_mut(leader)
        .propose(b"volatile".to_vec())
        .expect("propose");
    let before = sim.raft(leader).status().last_index;
    sim.crash(leader);
    sim.restart(leader);
    assert_eq!(
        sim.raft(leader).status().last_index,
        before - 1,
        "the unpersisted entry survived a crash"
    );
    assert_eq!(sim.raft(leader).role(), Role::Follower);
    sim.run_until(300, |s| s.converged());
    assert!(applied_commands(&sim, leader).contains(&"durable".to_string()));
    assert!(!applied_commands(&sim, leader).contains(&"volatile".to_string()));
}

#[test]
fn entries_are_applied_only_after_they_are_persisted() {
    let mut single = member(1, &[1], &[], HardState::default());
    while single.role() != Role::Leader {
        single.tick();
    }
    single.propose(b"x".to_vec()).expect("propose");
    let ready = single.ready();
    assert!(!ready.entries.is_empty());
    assert!(
        ready.committed_entries.is_empty(),
        "applied before persisted"
    );
    single.advance(&ready);
    let ready = single.ready();
    assert_eq!(
        ready.committed_entries.last().map(|e| e.payload.clone()),
        Some(EntryPayload::Command(b"x".to_vec()))
    );
}

// ---------------------------------------------------------------- proposals

/// A follower persists readies in a pipeline: a ready taken before a
/// snapshot install that keeps the entries after the snapshot must not mark
/// them persisted when it is advanced, because the install's ready writes
/// the snapshot (dropping what the disk held after it) and then those
/// entries again. Advancing it as before left the install's ready with no
/// entries: the disk lost them while the core counted them as persisted
/// (the simulator's pipelined seeds found it).
#[test]
fn a_ready_taken_before_a_snapshot_install_does_not_count_its_entries_persisted() {
    let mut follower = member(1, &[1, 2, 3], &[1, 1], hard(1, 2, 0));
    let entry = |index: u64| Entry {
        term: 1,
        index,
        payload: EntryPayload::Command(vec![index as u8]),
    };
    follower.step(message(
        2,
        1,
        1,
        MessageBody::AppendEntries {
            prev_log_index: 2,
            prev_log_term: 1,
            entries: vec![entry(3), entry(4)],
            leader_commit: 0,
        },
    ));
    let writing = follower.ready();
    assert_eq!(
        writing.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![3, 4]
    );
    // While that ready is being written, the leader's snapshot at 3
    // arrives: this log has its last entry, so entry 4 is kept.
    follower.step(message(
        2,
        1,
        1,
        MessageBody::InstallSnapshot {
            meta: harmonydb_raft::SnapshotMeta {
                index: 3,
                term: 1,
                config: harmonydb_raft::Configuration::with_voters([1, 2, 3]),
            },
            offset: 0,
            data: vec![7],
            done: true,
        },
    ));
    assert!(follower.snapshot_pending());
    follower.advance(&writing);
    let install = follower.ready();
    assert_eq!(install.snapshot.as_ref().map(|s| s.meta.index), Some(3));
    assert_eq!(
        install.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![4],
        "the entry kept after the snapshot must be written again after it"
    );
    follower.advance(&install);
    assert!(!follower.has_ready() || follower.ready().entries.is_empty());
}

#[test]
fn a_proposal_to_a_follower_is_refused_with_the_leader_named() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let follower = follower_of(&sim, leader);
    assert_eq!(
        sim.propose(follower, b"x".to_vec()),
        Err(RaftError::NotLeader { leader })
    );
}

#[test]
fn a_proposal_lost_with_leadership_is_reported_dropped() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "before");
    sim.isolate(leader);
    let index = sim
        .propose(leader, b"doomed".to_vec())
        .expect("still leader");
    sim.run_until(200, |s| s.leader().is_some_and(|l| l != leader));
    commit(&mut sim, "after");
    sim.heal();
    let reported = sim.run_until(300, |s| s.nodes[&leader].dropped.contains(&index));
    assert!(reported, "the overwritten proposal was never reported");
}

// ---------------------------------------------------------------- snapshots

#[test]
fn a_lagging_follower_is_brought_up_by_a_snapshot_in_chunks() {
    let mut sim = cluster_with(3, &[], |c| c.snapshot_chunk_bytes = 16);
    sim.compact_every = 5;
    let leader = sim.elect();
    let follower = follower_of(&sim, leader);
    sim.isolate(follower);
    for i in 0..30 {
        sim.propose(leader, format!("while-away-{i}").into_bytes())
            .expect("propose");
        sim.tick();
    }
    sim.run(20);
    assert!(
        sim.raft(leader).snapshot_index() > sim.raft(follower).status().last_index,
        "the leader compacted past the follower"
    );
    let delivered_before = sim.delivered;
    sim.heal();
    assert!(sim.run_until(500, |s| s.converged()));
    assert!(
        sim.raft(follower).snapshot_index() > 0,
        "the follower installed a snapshot"
    );
    assert!(
        sim.delivered - delivered_before > 5,
        "the snapshot came in several chunks"
    );
    assert_eq!(
        applied_commands(&sim, follower),
        applied_commands(&sim, leader)
    );
}

#[test]
fn compaction_refuses_an_index_that_is_not_applied() {
    let mut sim = cluster(1);
    let leader = sim.elect();
    let index = commit(&mut sim, "one");
    let raft = sim.raft_mut(leader);
    assert!(matches!(
        raft.compact(index + 5, vec![]),
        Err(RaftError::InvalidCompaction { .. })
    ));
    assert!(raft.compact(index, vec![1]).is_ok());
    assert!(matches!(
        raft.compact(index, vec![1]),
        Err(RaftError::InvalidCompaction { .. })
    ));
}

#[test]
fn a_restarted_member_recovers_from_its_snapshot_and_log() {
    let mut sim = cluster(3);
    sim.compact_every = 4;
    for i in 0..12 {
        commit(&mut sim, &format!("v{i}"));
    }
    let before = applied_commands(&sim, 2);
    for id in sim.ids() {
        sim.crash(id);
    }
    for id in sim.ids() {
        sim.restart(id);
    }
    assert!(sim.raft(2).snapshot_index() > 0);
    assert!(sim.run_until(500, |s| s.converged()));
    assert_eq!(applied_commands(&sim, 2), before);
}

// -------------------------------------------------------------------- reads

fn read_answers(sim: &Sim, id: NodeId) -> Vec<(u64, u64)> {
    sim.nodes[&id].reads.clone()
}

#[test]
fn read_index_is_served_after_a_heartbeat_round() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let index = commit(&mut sim, "visible");
    sim.raft_mut(leader).read_index(42).expect("leader reads");
    sim.tick();
    let answers = read_answers(&sim, leader);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, 42);
    assert!(
        answers[0].1 >= index,
        "the read index covers the committed write"
    );
}

#[test]
fn read_index_on_a_follower_is_refused_with_the_leader() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let follower = follower_of(&sim, leader);
    assert_eq!(
        sim.raft_mut(follower).read_index(1),
        Err(RaftError::NotLeader { leader })
    );
}

#[test]
fn read_index_from_a_deposed_leader_is_dropped_not_served() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "x");
    sim.isolate(leader);
    sim.raft_mut(leader)
        .read_index(7)
        .expect("still thinks it leads");
    sim.run_until(100, |s| s.raft(leader).role() != Role::Leader);
    assert!(
        read_answers(&sim, leader).is_empty(),
        "a deposed leader served a read"
    );
    let raft = sim.raft_mut(leader);
    // The drop was reported in a ready that the simulator consumed; a new
    // read is refused outright.
    assert!(matches!(
        raft.read_index(8),
        Err(RaftError::NotLeader { .. })
    ));
}

#[test]
fn a_deposed_leaders_pending_read_is_reported_dropped() {
    let mut leader = member(1, &[1, 2, 3], &[1], hard(1, 1, 1));
    // Win an election by hand.
    while leader.role() == Role::Follower {
        leader.tick();
    }
    let term = leader.term() + 1;
    leader.step(message(
        2,
        1,
        term,
        MessageBody::RequestVoteResponse {
            granted: true,
            pre_vote: true,
        },
    ));
    leader.step(message(
        2,
        1,
        term,
        MessageBody::RequestVoteResponse {
            granted: true,
            pre_vote: false,
        },
    ));
    assert_eq!(leader.role(), Role::Leader);
    let ready = leader.ready();
    leader.advance(&ready);
    leader.step(message(2, 1, term, ack(2)));
    leader.read_index(9).expect("read");
    // A newer term appears: the read must be dropped, never confirmed.
    leader.step(message(
        3,
        1,
        term + 1,
        MessageBody::Heartbeat { commit: 0, seq: 1 },
    ));
    let ready = leader.ready();
    assert!(ready.read_states.is_empty());
    assert_eq!(
        ready
            .dropped_reads
            .iter()
            .map(|d| d.request_id)
            .collect::<Vec<_>>(),
        [9]
    );
}

#[test]
fn a_new_leader_delays_reads_until_it_commits_in_its_term() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let followers: Vec<NodeId> = sim.ids().into_iter().filter(|id| *id != leader).collect();
    // Followers get the no-op appended but can't answer yet.
    for follower in &followers {
        sim.blocked.insert((*follower, leader));
    }
    sim.raft_mut(leader).read_index(5).expect("accepted");
    sim.run(3);
    assert!(
        read_answers(&sim, leader).is_empty(),
        "read served before the first commit of the term"
    );
    sim.heal();
    assert!(sim.run_until(50, |s| !read_answers(s, leader).is_empty()));
}

#[test]
fn lease_reads_are_served_while_the_lease_holds_and_refused_after() {
    let mut sim = cluster_with(3, &[], |c| c.lease_drift_ticks = Some(2));
    let leader = sim.elect();
    commit(&mut sim, "leased");
    sim.run(3);
    sim.raft_mut(leader).read_lease(1).expect("lease held");
    sim.tick();
    assert_eq!(
        read_answers(&sim, leader)
            .iter()
            .filter(|r| r.0 == 1)
            .count(),
        1
    );
    // Cut off from the followers, the lease runs out before anyone else can lead.
    sim.isolate(leader);
    sim.run(12);
    assert_eq!(
        sim.raft_mut(leader).read_lease(2),
        Err(RaftError::LeaseNotHeld)
    );
}

#[test]
fn lease_reads_are_off_unless_configured() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "x");
    assert_eq!(
        sim.raft_mut(leader).read_lease(1),
        Err(RaftError::LeaseNotHeld)
    );
}

// ----------------------------------------------------------------- transfer

#[test]
fn leadership_transfers_to_an_up_to_date_member() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "x");
    let target = follower_of(&sim, leader);
    sim.raft_mut(leader)
        .transfer_leadership(target)
        .expect("transfer");
    assert!(
        sim.run_until(30, |s| s.leader() == Some(target)),
        "the target took over"
    );
}

#[test]
fn leadership_transfer_to_a_lagging_member_catches_it_up_first() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let target = follower_of(&sim, leader);
    sim.isolate(target);
    for i in 0..10 {
        sim.propose(leader, format!("missed-{i}").into_bytes())
            .expect("propose");
        sim.tick();
    }
    sim.heal();
    sim.raft_mut(leader)
        .transfer_leadership(target)
        .expect("transfer");
    assert!(
        sim.run_until(60, |s| s.leader() == Some(target)),
        "the lagging target took over"
    );
    assert_eq!(
        applied_commands(&sim, target).len(),
        10,
        "after catching up"
    );
}

#[test]
fn proposals_wait_while_leadership_is_being_transferred() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    let target = follower_of(&sim, leader);
    sim.isolate(target);
    sim.raft_mut(leader)
        .transfer_leadership(target)
        .expect("transfer");
    assert_eq!(
        sim.propose(leader, b"x".to_vec()),
        Err(RaftError::TransferInProgress)
    );
    // A target that never catches up: the transfer is abandoned after an election timeout.
    sim.run(25);
    assert!(sim.propose(leader, b"y".to_vec()).is_ok());
}

// --------------------------------------------------------------- membership

fn voters_of(sim: &Sim, id: NodeId) -> Vec<NodeId> {
    sim.raft(id).status().config.voters.into_iter().collect()
}

/// Waits until the leader's configuration is simple (not joint) and committed everywhere.
fn settle_config(sim: &mut Sim) {
    let done = sim.run_until(300, |s| {
        s.leader().is_some_and(|l| {
            let status = s.raft(l).status();
            !status.config.is_joint() && s.converged()
        })
    });
    assert!(done, "the membership change did not finish");
}

#[test]
fn joint_consensus_adds_a_voter() {
    let mut sim = cluster_with(3, &[4], |_| {});
    sim.elect();
    sim.conf_change(ConfChange::AddVoter(4)).expect("propose");
    settle_config(&mut sim);
    let leader = sim.leader().expect("leader");
    assert_eq!(voters_of(&sim, leader), [1, 2, 3, 4]);
    commit_everywhere(&mut sim, "with-four");
    assert!(applied_commands(&sim, 4).contains(&"with-four".to_string()));
}

#[test]
fn joint_consensus_passes_through_a_joint_configuration() {
    let mut sim = cluster_with(3, &[4], |_| {});
    let leader = sim.elect();
    let index = sim.conf_change(ConfChange::AddVoter(4)).expect("propose");
    let joint = sim.raft(leader).entry(index).cloned().expect("entry");
    let EntryPayload::Config(config) = joint.payload else {
        panic!("not a config entry")
    };
    assert!(config.is_joint());
    assert_eq!(
        config.voters_outgoing.into_iter().collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(config.voters.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
    settle_config(&mut sim);
}

#[test]
fn joint_consensus_removes_a_voter() {
    let mut sim = cluster(5);
    let leader = sim.elect();
    let removed = follower_of(&sim, leader);
    sim.conf_change(ConfChange::Remove(removed))
        .expect("propose");
    settle_config(&mut sim);
    let leader = sim.leader().expect("leader");
    assert!(!voters_of(&sim, leader).contains(&removed));
    // The rest go on without it.
    sim.crash(removed);
    commit(&mut sim, "without-it");
}

/// Whether `id` knows a committed configuration that leaves it out.
fn knows_it_was_removed(sim: &Sim, id: NodeId) -> bool {
    let raft = sim.raft(id);
    let (config, index) = raft.membership();
    !config.members().contains(&id) && index <= raft.commit_index()
}

#[test]
fn a_removed_voter_learns_the_committed_configuration_that_left_it_out() {
    let mut sim = cluster(5);
    let leader = sim.elect();
    let removed = follower_of(&sim, leader);
    sim.conf_change(ConfChange::Remove(removed))
        .expect("propose");
    settle_config(&mut sim);
    // The leader keeps replicating to it until it has learned the commit.
    let learned = sim.run_until(100, |s| knows_it_was_removed(s, removed));
    assert!(learned, "node {removed} never learned it was removed");
    let term = sim.raft(removed).term();
    sim.run(200);
    let leader = sim.leader().expect("leader");
    assert_eq!(
        sim.raft(removed).role(),
        Role::Follower,
        "it must not campaign"
    );
    assert_eq!(sim.raft(removed).term(), term);
    assert!(
        !sim.raft(leader).status().match_index.contains_key(&removed),
        "the leader stops replicating to it after a while"
    );
    // Its id is never used again.
    for change in [
        ConfChange::AddLearner(removed),
        ConfChange::AddVoter(removed),
    ] {
        match sim.conf_change(change) {
            Err(RaftError::InvalidConfChange(reason)) => {
                assert!(reason.contains("not used again"), "{reason}")
            }
            other => panic!("re-adding {removed}: {other:?}"),
        }
    }
}

#[test]
fn a_voter_cut_off_while_removed_learns_it_when_the_leader_is_reminded() {
    let mut sim = cluster(5);
    let leader = sim.elect();
    let removed = follower_of(&sim, leader);
    sim.isolate(removed);
    sim.conf_change(ConfChange::Remove(removed))
        .expect("propose");
    settle_config(&mut sim);
    sim.run(100);
    sim.heal();
    sim.run(50);
    assert!(
        !knows_it_was_removed(&sim, removed),
        "nothing told node {removed} yet"
    );
    let leader = sim.leader().expect("leader");
    sim.raft_mut(leader).remind_removed(removed);
    let learned = sim.run_until(100, |s| knows_it_was_removed(s, removed));
    assert!(learned, "node {removed} never learned it was removed");
    // A member is never "reminded".
    let member = voters_of(&sim, leader)
        .into_iter()
        .find(|id| *id != leader)
        .expect("another voter");
    let before = sim.raft(leader).status().config;
    sim.raft_mut(leader).remind_removed(member);
    sim.run(20);
    assert_eq!(sim.raft(leader).status().config, before);
    assert!(sim.raft(member).status().config.members().contains(&member));
}

#[test]
fn a_learner_cut_off_while_removed_calls_on_the_voters_and_learns_it() {
    let mut sim = cluster_with(3, &[4], |_| {});
    sim.elect();
    sim.conf_change(ConfChange::AddLearner(4)).expect("learner");
    settle_config(&mut sim);
    commit_everywhere(&mut sim, "for-the-learner");
    sim.isolate(4);
    sim.conf_change(ConfChange::Remove(4)).expect("remove");
    settle_config(&mut sim);
    sim.run(300);
    sim.heal();
    // A learner never campaigns; hearing from no leader, it calls on the
    // voters instead, and that reaches the leader.
    sim.record_sent = true;
    let called = sim.run_until(100, |s| {
        s.sent.iter().any(|m| {
            m.from == 4
                && Some(m.to) == s.leader()
                && matches!(m.body, MessageBody::HeartbeatResponse { .. })
        })
    });
    assert!(called, "the cut-off learner never called on the leader");
    assert!(!knows_it_was_removed(&sim, 4));
    // What the replica does when the leader hears from a removed node.
    let leader = sim.leader().expect("leader");
    sim.raft_mut(leader).remind_removed(4);
    let learned = sim.run_until(100, |s| knows_it_was_removed(s, 4));
    assert!(learned, "the removed learner never learned it");
}

#[test]
fn joint_consensus_replaces_a_voter() {
    let mut sim = cluster_with(3, &[4], |_| {});
    let leader = sim.elect();
    let old = sim
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != 4)
        .expect("member");
    sim.conf_change(ConfChange::AddVoter(4)).expect("add");
    settle_config(&mut sim);
    sim.conf_change(ConfChange::Remove(old)).expect("remove");
    settle_config(&mut sim);
    let leader = sim.leader().expect("leader");
    let mut expected: Vec<NodeId> = [1, 2, 3, 4].into_iter().filter(|id| *id != old).collect();
    expected.sort();
    assert_eq!(voters_of(&sim, leader), expected);
    sim.crash(old);
    commit(&mut sim, "replaced");
}

#[test]
fn removing_the_leader_hands_over_to_the_remaining_voters() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "before");
    sim.conf_change(ConfChange::Remove(leader))
        .expect("propose");
    let handed_over = sim.run_until(300, |s| {
        s.leader().is_some_and(|l| l != leader) && s.raft(leader).role() != Role::Leader
    });
    assert!(
        handed_over,
        "the removed leader did not step down or no one took over"
    );
    let new_leader = sim.leader().expect("leader");
    assert!(!voters_of(&sim, new_leader).contains(&leader));
    sim.crash(leader);
    commit(&mut sim, "after");
}

#[test]
fn a_learner_gets_the_log_never_campaigns_and_its_vote_never_counts() {
    let mut sim = cluster_with(3, &[4], |_| {});
    sim.elect();
    sim.conf_change(ConfChange::AddLearner(4)).expect("propose");
    settle_config(&mut sim);
    commit_everywhere(&mut sim, "for-the-learner");
    assert!(applied_commands(&sim, 4).contains(&"for-the-learner".to_string()));
    let leader = sim.leader().expect("leader");
    assert_eq!(
        sim.raft(leader)
            .status()
            .config
            .learners
            .into_iter()
            .collect::<Vec<_>>(),
        [4]
    );
    // Cut the learner off: it never campaigns, whatever the timeout.
    sim.isolate(4);
    sim.run(100);
    assert_eq!(sim.raft(4).role(), Role::Follower);
    // And a quorum can't be made of one voter plus the learner.
    let config = sim.raft(leader).status().config;
    assert!(!config.has_quorum(&BTreeSet::from([1, 4])));
    assert!(config.has_quorum(&BTreeSet::from([1, 2])));
}

#[test]
fn a_learner_is_promoted_to_voter() {
    let mut sim = cluster_with(3, &[4], |_| {});
    sim.elect();
    sim.conf_change(ConfChange::AddLearner(4)).expect("learner");
    settle_config(&mut sim);
    sim.conf_change(ConfChange::AddVoter(4)).expect("promote");
    settle_config(&mut sim);
    let leader = sim.leader().expect("leader");
    let status = sim.raft(leader).status();
    assert!(status.config.voters.contains(&4) && status.config.learners.is_empty());
}

#[test]
fn only_one_membership_change_at_a_time() {
    let mut sim = cluster_with(3, &[4, 5], |_| {});
    sim.elect();
    sim.conf_change(ConfChange::AddVoter(4)).expect("first");
    assert_eq!(
        sim.conf_change(ConfChange::AddVoter(5)),
        Err(RaftError::ConfChangeInProgress)
    );
    settle_config(&mut sim);
    assert!(sim.conf_change(ConfChange::AddVoter(5)).is_ok());
}

#[test]
fn invalid_membership_changes_are_refused() {
    let mut sim = cluster(1);
    sim.elect();
    assert!(matches!(
        sim.conf_change(ConfChange::Remove(1)),
        Err(RaftError::InvalidConfChange(_))
    ));
    assert!(matches!(
        sim.conf_change(ConfChange::Remove(9)),
        Err(RaftError::InvalidConfChange(_))
    ));
    assert!(matches!(
        sim.conf_change(ConfChange::AddVoter(1)),
        Err(RaftError::InvalidConfChange(_))
    ));
}

#[test]
fn a_joint_configuration_needs_both_majorities() {
    let mut sim = cluster_with(3, &[4, 5, 6], |_| {});
    let leader = sim.elect();
    let config = {
        sim.conf_change(ConfChange::AddVoter(4)).expect("propose");
        sim.raft(leader).status().config
    };
    assert!(config.is_joint());
    // {1,2,3} -> {1,2,3,4}: a majority of the new set alone is not enough
    // without a majority of the old one.
    assert!(!config.has_quorum(&BTreeSet::from([4, 3, 6])));
    assert!(config.has_quorum(&BTreeSet::from([1, 2, 3])));
    assert!(!config.has_quorum(&BTreeSet::from([1, 4])));
    settle_config(&mut sim);
}

#[test]
fn hostile_peer_messages_never_panic_or_change_the_log() {
    let mut follower = member(1, &[1, 2, 3], &[1, 1, 1], hard(1, 0, 2));
    let before = log_of(&follower);
    let entry = |index: u64, term: u64| Entry {
        term,
        index,
        payload: EntryPayload::Command(vec![9]),
    };
    let hostile = [
        // Entries that don't follow prev_log_index one by one.
        MessageBody::AppendEntries {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![entry(1000, 1)],
            leader_commit: 3,
        },
        MessageBody::AppendEntries {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![entry(4, 1), entry(4, 1)],
            leader_commit: 3,
        },
        // A conflict at an index this member has committed.
        MessageBody::AppendEntries {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![entry(2, 7)],
            leader_commit: 0,
        },
        // Indexes at the edge of u64.
        MessageBody::AppendEntries {
            prev_log_index: u64::MAX,
            prev_log_term: 1,
            entries: vec![entry(0, 1)],
            leader_commit: u64::MAX,
        },
        MessageBody::Heartbeat {
            commit: u64::MAX,
            seq: u64::MAX,
        },
        MessageBody::InstallSnapshot {
            meta: harmonydb_raft::SnapshotMeta {
                index: u64::MAX,
                term: 1,
                config: Default::default(),
            },
            offset: 0,
            data: vec![1],
            done: true,
        },
        MessageBody::InstallSnapshot {
            meta: harmonydb_raft::SnapshotMeta {
                index: 10,
                term: 1,
                config: Default::default(),
            },
            offset: u64::MAX,
            data: vec![1],
            done: true,
        },
    ];
    for body in hostile {
        follower.step(message(2, 1, 1, body));
        let ready = follower.ready();
        follower.advance(&ready);
    }
    assert_eq!(
        log_of(&follower),
        before,
        "a hostile message changed the log"
    );
    // A term at the edge of u64 is refused instead of adopted.
    follower.step(message(
        2,
        1,
        u64::MAX,
        MessageBody::Heartbeat { commit: 0, seq: 1 },
    ));
    assert_eq!(follower.term(), 1);
    // Still a working member: it follows a real leader.
    follower.step(message(
        2,
        1,
        1,
        MessageBody::AppendEntries {
            prev_log_index: 3,
            prev_log_term: 1,
            entries: vec![entry(4, 1)],
            leader_commit: 4,
        },
    ));
    assert_eq!(follower.status().last_index, 4);
}

#[test]
fn reads_that_arrive_together_share_one_heartbeat_round() {
    let mut sim = cluster(3);
    let leader = sim.elect();
    commit(&mut sim, "x");
    sim.record_sent = true;
    for request_id in 100..110 {
        sim.raft_mut(leader).read_index(request_id).expect("read");
    }
    sim.settle();
    let rounds: BTreeSet<u64> = sim
        .sent
        .iter()
        .filter(|m| m.from == leader)
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(rounds.len(), 1, "ten reads took rounds {rounds:?}");
    let answered: Vec<u64> = sim.nodes[&leader].reads.iter().map(|r| r.0).collect();
    assert_eq!(answered, (100..110).collect::<Vec<_>>());
}

/// A 3-member cluster whose members keep about 200 bytes of applied
/// entries in memory and compact every 30: 32 commits, then member 3 is
/// down for 20 more (past the cache, not past the compaction point), then
/// it is restarted with every message to it recorded.
fn behind_the_log_cache(sim: &mut Sim) {
    let follower = 3;
    sim.compact_every = 30;
    for i in 0..32 {
        commit(sim, &format!("before {i}"));
    }
    assert!(sim.run_until(300, |s| s.converged()));
    sim.crash(follower);
    for i in 0..20 {
        commit(sim, &format!("while down {i}"));
    }
    let leader = sim.elect();
    let (cached_bytes, cache_first) = sim.raft(leader).log_cache();
    let follower_last = sim.nodes[&follower].disk.snapshot.meta.index
        + sim.nodes[&follower].disk.entries.len() as u64;
    assert!(
        cache_first > follower_last + 1,
        "the leader still holds every entry the follower lacks (first in memory {cache_first}, follower at {follower_last})"
    );
    assert!(
        sim.raft(leader).snapshot_index() <= follower_last,
        "the leader compacted past the follower: this test needs entries it can still read back"
    );
    assert!(
        cached_bytes <= 200 + 64,
        "{cached_bytes} bytes of entries held with a 200-byte cache"
    );
    sim.record_sent = true;
    sim.restart(follower);
}

fn snapshots_sent_to(sim: &Sim, id: NodeId) -> usize {
    sim.sent
        .iter()
        .filter(|m| m.to == id && matches!(m.body, MessageBody::InstallSnapshot { .. }))
        .count()
}

#[test]
fn a_follower_behind_the_log_cache_gets_entries_read_back_from_disk_not_a_snapshot() {
    let mut sim = cluster_with(3, &[], |config| config.log_cache_max_bytes = 200);
    behind_the_log_cache(&mut sim);
    assert!(
        sim.run_until(500, |s| s.converged()),
        "the follower did not catch up"
    );
    assert!(
        sim.log_reads_served > 0,
        "no entries were read back from a disk"
    );
    assert_eq!(
        snapshots_sent_to(&sim, 3),
        0,
        "the follower was sent a snapshot"
    );
    let leader = sim.elect();
    assert_eq!(applied_commands(&sim, 3), applied_commands(&sim, leader));
    assert_eq!(applied_commands(&sim, 3).len(), 52);
}

#[test]
fn entries_the_disk_cannot_give_back_wait_for_a_snapshot_that_covers_them() {
    let mut sim = cluster_with(3, &[], |config| config.log_cache_max_bytes = 200);
    sim.log_reads_fail = true;
    behind_the_log_cache(&mut sim);
    // The snapshot the leader has is older than what the follower lacks:
    // sending it would not help, so the follower waits.
    sim.run(100);
    assert!(!sim.converged(), "caught up with nothing to catch up from");
    assert_eq!(snapshots_sent_to(&sim, 3), 0, "an old snapshot was sent");
    // A compaction past the follower's position: now the snapshot helps.
    for i in 0..35 {
        commit(&mut sim, &format!("after {i}"));
    }
    assert!(
        sim.run_until(500, |s| s.converged()),
        "the follower did not catch up from the newer snapshot"
    );
    assert!(
        snapshots_sent_to(&sim, 3) > 0,
        "caught up without a snapshot"
    );
}
