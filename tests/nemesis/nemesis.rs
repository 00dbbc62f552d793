//! The nemesis: applies one kind of fault after another on a schedule
//! (quiet, fault, heal, quiet, ...) and records each with the time it was in
//! force, and for partitions which nodes were on the minority side.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harmonydb_checker::Nanos;

use crate::clients::{nanos_since, Targets};
use crate::cluster::{LinkFault, NemesisCluster};

/// Share of traffic a flaky link loses.
const FLAKY_LOSS_PERCENT: u8 = 20;
use crate::common::Rng;

/// A family of faults; each run of the harness uses one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A random majority and minority, cut from each other both ways.
    PartitionMajorityMinority,
    /// The leader cut from everyone else both ways.
    IsolateLeader,
    /// Two halves that can't see each other, and one node that sees both.
    Bridge,
    /// One node's traffic to every other node lost, the other way intact.
    OneWayLoss,
    /// `kill -9` of a minority of nodes, then restart.
    Kill,
    /// SIGSTOP of a minority of nodes, then SIGCONT.
    Pause,
    /// Every link loses a share of what it carries (and, through the fault
    /// filter, delivers Raft messages twice). Only as part of `Mixed`.
    Flaky,
    /// Each round one of the above (or a power cut) at random.
    Mixed,
    /// A new node joins (`--join`) and, once it votes, an old one (the
    /// leader half the time) is removed and killed; half the time another
    /// node is killed while this happens. Only as part of `MembershipMixed`.
    Replace,
    /// Each round a replacement, a partition, an isolated leader or a
    /// kill -9, at random; the first round is always a replacement.
    MembershipMixed,
    /// A power cut of one node while every commit needs it: a minority is
    /// cut off (falls behind), then the node, the leader every other round
    /// and a follower the rest, loses what it wrote since its last sync and
    /// restarts; the nodes that had every write it promised are cut off,
    /// and it forms a majority with the ones behind. Nothing acknowledged
    /// may be lost: a node acknowledges (a leader counts itself) only what
    /// it has synced.
    PowerCut,
}

impl Scenario {
    /// The name used in reports and test names.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::PartitionMajorityMinority => "partition majority/minority",
            Scenario::IsolateLeader => "isolate the leader",
            Scenario::Bridge => "bridge",
            Scenario::OneWayLoss => "one-way loss",
            Scenario::Kill => "kill -9 and restart",
            Scenario::Pause => "SIGSTOP/SIGCONT pause",
            Scenario::Flaky => "lossy, duplicating links",
            Scenario::Mixed => "all of them mixed",
            Scenario::Replace => "replace a member",
            Scenario::MembershipMixed => "membership changes mixed with faults",
            Scenario::PowerCut => "power cut with writes in flight",
        }
    }

    const SINGLE: [Scenario; 8] = [
        Scenario::PartitionMajorityMinority,
        Scenario::IsolateLeader,
        Scenario::Bridge,
        Scenario::OneWayLoss,
        Scenario::Kill,
        Scenario::Pause,
        Scenario::Flaky,
        Scenario::PowerCut,
    ];

    const WITH_MEMBERSHIP: [Scenario; 4] = [
        Scenario::Replace,
        Scenario::PartitionMajorityMinority,
        Scenario::IsolateLeader,
        Scenario::Kill,
    ];
}

/// How long a joining node gets to become a voter.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the nemesis keeps asking for a removal.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);

/// One fault as it was in force.
#[derive(Clone, Debug)]
pub struct FaultEvent {
    /// The kind of fault.
    pub kind: Scenario,
    /// What exactly was done, for a person.
    pub description: String,
    /// When it was fully in force.
    pub start: Nanos,
    /// When healing began.
    pub end: Nanos,
    /// Nodes cut off from a majority for the whole window, whose clients
    /// must not see a write succeed.
    pub minority: BTreeSet<u64>,
}

/// How long faults last and how long the cluster gets between them.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Quiet time before each fault.
    pub quiet: Duration,
    /// How long each fault stays in force.
    pub hold: Duration,
}

/// Runs faults of `scenario` until `until`, then restores the cluster.
pub fn run(
    cluster: &mut NemesisCluster,
    targets: &Targets,
    scenario: Scenario,
    schedule: Schedule,
    start: Instant,
    until: Instant,
    rng: &mut Rng,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    loop {
        let kind = match scenario {
            Scenario::Mixed => Scenario::SINGLE[rng.below(Scenario::SINGLE.len() as u64) as usize],
            // The first round replaces a member, so even a short run has one.
            Scenario::MembershipMixed if events.is_empty() => Scenario::Replace,
            Scenario::MembershipMixed => {
                Scenario::WITH_MEMBERSHIP
                    [rng.below(Scenario::WITH_MEMBERSHIP.len() as u64) as usize]
            }
            single => single,
        };
        if Instant::now() + schedule.quiet + setup_time(kind) + schedule.hold > until {
            break;
        }
        std::thread::sleep(schedule.quiet);
        let before = nanos_since(start);
        let (description, minority, undo) = match kind {
            Scenario::Replace => replace(cluster, targets, rng),
            Scenario::PowerCut => power_cut(cluster, rng, cut_the_leader(events.len()), until),
            kind => inject(cluster, kind, rng),
        };
        // A replacement is under way from its first step.
        let fault_start = if kind == Scenario::Replace {
            before
        } else {
            nanos_since(start)
        };
        // A fault whose setup ran long (a power cut waits for its victim's
        // next sync) is held only until faults must end, so the run keeps
        // its fault-free end.
        std::thread::sleep(
            schedule
                .hold
                .min(until.saturating_duration_since(Instant::now())),
        );
        let fault_end = nanos_since(start);
        undo.apply(cluster);
        events.push(FaultEvent {
            kind,
            description,
            start: fault_start,
            end: fault_end,
            minority,
        });
    }
    if let Err(error) = cluster.restore() {
        panic!("restoring the cluster failed: {error}");
    }
    events
}

/// About how long a fault of `kind` takes to put in place beyond the
/// schedule's hold.
fn setup_time(kind: Scenario) -> Duration {
    match kind {
        Scenario::PowerCut => POWER_CUT_LAG + Duration::from_secs(1),
        _ => Duration::ZERO,
    }
}

/// How to take a fault back.
enum Undo {
    Heal,
    Restart(Vec<u64>),
    Resume(Vec<u64>),
}

impl Undo {
    fn apply(self, cluster: &mut NemesisCluster) {
        match self {
            Undo::Heal => cluster.heal().unwrap_or_else(|e| panic!("heal: {e}")),
            Undo::Restart(ids) => ids.into_iter().for_each(|id| cluster.start_node(id)),
            Undo::Resume(ids) => ids.into_iter().for_each(|id| cluster.resume(id)),
        }
    }
}

fn shuffled(ids: &[u64], rng: &mut Rng) -> Vec<u64> {
    let mut ids = ids.to_vec();
    for i in (1..ids.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ids.swap(i, j);
    }
    ids
}

/// The leader if one is known, else a random node: leaders are where faults hurt most.
fn leader_or_random(cluster: &NemesisCluster, rng: &mut Rng) -> u64 {
    let ids = cluster.ids();
    cluster
        .leader()
        .unwrap_or_else(|| ids[rng.below(ids.len() as u64) as usize])
}

/// A random minority, containing the leader half of the time.
fn random_minority(cluster: &NemesisCluster, rng: &mut Rng) -> Vec<u64> {
    let ids = cluster.ids();
    let size = 1 + rng.below(((ids.len() - 1) / 2) as u64) as usize;
    let mut chosen = shuffled(&ids, rng);
    chosen.truncate(size);
    if rng.below(2) == 0 {
        let leader = leader_or_random(cluster, rng);
        if !chosen.contains(&leader) {
            chosen[0] = leader;
        }
    }
    chosen.sort_unstable();
    chosen
}

fn cut_both_ways(cluster: &mut NemesisCluster, side_a: &[u64], side_b: &[u64]) {
    for a in side_a {
        for b in side_b {
            cluster
                .cut(*a, *b)
                .and_then(|()| cluster.cut(*b, *a))
                .unwrap_or_else(|e| panic!("cut {a} <-> {b}: {e}"));
        }
    }
}

fn inject(
    cluster: &mut NemesisCluster,
    kind: Scenario,
    rng: &mut Rng,
) -> (String, BTreeSet<u64>, Undo) {
    let ids = cluster.ids();
    match kind {
        Scenario::PartitionMajorityMinority => {
            let minority = random_minority(cluster, rng);
            let majority: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| !minority.contains(id))
                .collect();
            cut_both_ways(cluster, &minority, &majority);
            (
                format!("partition {minority:?} | {majority:?}"),
                minority.into_iter().collect(),
                Undo::Heal,
            )
        }
        Scenario::IsolateLeader => {
            let leader = leader_or_random(cluster, rng);
            let rest: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
            cut_both_ways(cluster, &[leader], &rest);
            (
                format!("isolate leader {leader}"),
                BTreeSet::from([leader]),
                Undo::Heal,
            )
        }
        Scenario::Bridge => {
            let order = shuffled(&ids, rng);
            let half = order.len() / 2;
            let (side_a, rest) = order.split_at(half);
            let (bridge, side_b) = rest.split_at(1);
            cut_both_ways(cluster, side_a, side_b);
            (
                format!("bridge {side_a:?} | {} | {side_b:?}", bridge[0]),
                BTreeSet::new(),
                Undo::Heal,
            )
        }
        Scenario::OneWayLoss => {
            let node = if rng.below(2) == 0 {
                leader_or_random(cluster, rng)
            } else {
                ids[rng.below(ids.len() as u64) as usize]
            };
            for other in ids.iter().filter(|id| **id != node) {
                cluster
                    .cut(node, *other)
                    .unwrap_or_else(|e| panic!("cut {node} -> {other}: {e}"));
            }
            (
                format!("node {node} loses everything it sends"),
                BTreeSet::new(),
                Undo::Heal,
            )
        }
        Scenario::Kill => {
            let victims = random_minority(cluster, rng);
            for id in &victims {
                cluster.kill9(*id);
            }
            (
                format!("kill -9 {victims:?}"),
                BTreeSet::new(),
                Undo::Restart(victims),
            )
        }
        Scenario::Pause => {
            let victims = random_minority(cluster, rng);
            for id in &victims {
                cluster.pause(*id);
            }
            (
                format!("SIGSTOP {victims:?}"),
                BTreeSet::new(),
                Undo::Resume(victims),
            )
        }
        Scenario::Flaky => {
            for from in &ids {
                for to in ids.iter().filter(|to| *to != from) {
                    cluster
                        .fault_link(
                            *from,
                            *to,
                            LinkFault::Lossy {
                                loss_percent: FLAKY_LOSS_PERCENT,
                            },
                        )
                        .unwrap_or_else(|e| panic!("lossy link {from} -> {to}: {e}"));
                }
            }
            (
                format!("every link loses {FLAKY_LOSS_PERCENT}%"),
                BTreeSet::new(),
                Undo::Heal,
            )
        }
        Scenario::Mixed | Scenario::MembershipMixed | Scenario::Replace | Scenario::PowerCut => {
            unreachable!(
                "mixed scenarios pick a single kind per round; replacements and power cuts have their own"
            )
        }
    }
}

/// How long the minority is cut off before the power cut, so the writes
/// committed meanwhile are on the other nodes only.
const POWER_CUT_LAG: Duration = Duration::from_secs(1);

/// How long each WAL sync of the power cut's victim waits first.
const POWER_CUT_SLOW_SYNC_MS: u64 = 20;

/// Whether round `round` of power cuts cuts the leader's power: every other
/// round, except in a mutation check, which cuts the role whose promise its
/// mutation breaks every round.
fn cut_the_leader(round: usize) -> bool {
    if cfg!(feature = "mutation-ack-before-sync") {
        false
    } else if cfg!(feature = "mutation-leader-counts-unsynced") {
        true
    } else {
        round.is_multiple_of(2)
    }
}

/// See `Scenario::PowerCut`. `leader`: cut the leader's power, else a
/// follower's; `until`: when faults must end (a victim that has not synced
/// by then is killed instead).
fn power_cut(
    cluster: &mut NemesisCluster,
    rng: &mut Rng,
    leader: bool,
    until: Instant,
) -> (String, BTreeSet<u64>, Undo) {
    let ids = cluster.ids();
    let current = leader_or_random(cluster, rng);
    let victim = if leader {
        current
    } else {
        let followers: Vec<u64> = ids.iter().copied().filter(|id| *id != current).collect();
        followers[rng.below(followers.len() as u64) as usize]
    };
    let others = shuffled(
        &ids.iter()
            .copied()
            .filter(|id| *id != victim)
            .collect::<Vec<_>>(),
        rng,
    );
    // A minority falls behind; the victim and the holders are a bare
    // majority, so every commit needs the victim.
    let (behind, holders) = others.split_at((ids.len() - 1) / 2);
    let with_victim = |nodes: &[u64]| [nodes, &[victim]].concat();
    cut_both_ways(cluster, behind, &with_victim(holders));
    // The victim's disk is slow, so its next writes are taken (and the
    // network answers) while a sync is under way: where a node that
    // promises too early would do so.
    cluster.slow_disk(victim, POWER_CUT_SLOW_SYNC_MS);
    std::thread::sleep(POWER_CUT_LAG);
    let asked = Instant::now();
    let cut = cluster.power_cut(victim, until);
    let waited_ms = asked.elapsed().as_millis();

    // The holders have every write the victim promised; without them the
    // victim comes back with what it synced and leads the ones behind.
    cluster.heal().unwrap_or_else(|e| panic!("heal: {e}"));
    cut_both_ways(cluster, holders, &with_victim(behind));
    cluster.start_node(victim);
    (
        format!(
            "power cut of {} {victim} ({}) while {behind:?} were cut off, then {holders:?} cut off",
            if leader { "leader" } else { "follower" },
            if cut {
                format!("lost its unsynced writes {waited_ms} ms after the cut was asked")
            } else {
                format!("no sync within {waited_ms} ms: killed")
            }
        ),
        holders.iter().copied().collect(),
        Undo::Heal,
    )
}

/// Waits up to `timeout` for `done`, checking every 100 ms.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A new node joins; once it votes, an old one is removed and retired.
fn replace(
    cluster: &mut NemesisCluster,
    targets: &Targets,
    rng: &mut Rng,
) -> (String, BTreeSet<u64>, Undo) {
    let ids = cluster.ids();
    let victim = if rng.below(2) == 0 {
        leader_or_random(cluster, rng)
    } else {
        ids[rng.below(ids.len() as u64) as usize]
    };
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    let crashed = (rng.below(2) == 0).then(|| others[rng.below(others.len() as u64) as usize]);
    if let Some(crashed) = crashed {
        cluster.kill9(crashed);
    }
    let live: Vec<u64> = others
        .iter()
        .copied()
        .filter(|id| Some(*id) != crashed)
        .collect();
    let new_id = cluster.tcp.keys().max().copied().unwrap_or(0) + 1;
    cluster.join_node(new_id, live[rng.below(live.len() as u64) as usize]);
    let is_voter = |cluster: &NemesisCluster, id: u64| {
        cluster
            .leader()
            .and_then(|leader| cluster.status(leader))
            .is_some_and(|status| {
                status["voters"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x.as_u64() == Some(id)))
                    && status["voters_outgoing"]
                        .as_array()
                        .is_some_and(|v| v.is_empty())
            })
    };
    let joined = wait_for(JOIN_TIMEOUT, || is_voter(cluster, new_id));
    targets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((new_id, cluster.tcp[&new_id]));
    let mut attempt = 0usize;
    let removed = wait_for(REMOVE_TIMEOUT, || {
        attempt += 1;
        let via = live[attempt % live.len()];
        // 404: an earlier attempt that timed out took effect after all.
        matches!(
            cluster.remove_member(via, victim),
            Some((200, _)) | Some((404, _))
        )
    });
    if removed {
        targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != victim);
        cluster.retire(victim);
    }
    let crash = crashed.map_or(String::new(), |c| format!(" while node {c} is down"));
    (
        format!(
            "replace node {victim} by node {new_id}{crash}: {}, {}",
            if joined {
                "joined as a voter"
            } else {
                "not a voter in time"
            },
            if removed {
                "removed"
            } else {
                "removal not confirmed in time"
            }
        ),
        BTreeSet::new(),
        match crashed {
            Some(crashed) => Undo::Restart(vec![crashed]),
            None => Undo::Heal,
        },
    )
}
