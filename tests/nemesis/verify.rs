//! What a run is judged by: the history must be linearizable (the
//! project's checker), no two nodes may have acknowledged writes as leader
//! in the same term (from their logs), clients of a partition's minority
//! side must never see a write succeed, nothing may fail in a way no fault
//! explains, and the cluster must serve writes again once healed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harmonydb_checker::{check, CheckOptions, CheckResult, Nanos, Outcome, Verdict};

use harmonydb_actors::replica::COMMITTED_ENTRY_CONFLICT;

use crate::clients::Record;
use crate::nemesis::FaultEvent;

/// Operations by outcome.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Completed with an answer.
    pub ok: u64,
    /// Certainly not carried out.
    pub failed: u64,
    /// May or may not have happened.
    pub unknown: u64,
}

/// Everything found about one run.
pub struct Verification {
    /// Operations by outcome.
    pub counts: Counts,
    /// Errors by name (code or client failure).
    pub errors: BTreeMap<String, u64>,
    /// The checker's result.
    pub check: CheckResult,
    /// How long the checker took.
    pub check_time: Duration,
    /// Terms in which some leader acknowledged writes (each must have one leader).
    pub leader_terms: usize,
    /// Everything wrong, one sentence each; empty for a good run.
    pub anomalies: Vec<String>,
}

/// The log message a leader writes when it first acknowledges a write in a term.
const ACKNOWLEDGED_AS_LEADER: &str = "acknowledging writes as leader of this term";

/// Judges a run: `recovered_from` is when the last fault was healed.
pub fn verify(
    records: &[Record],
    events: &[FaultEvent],
    logs: &BTreeMap<u64, Vec<String>>,
    recovered_from: Nanos,
) -> Verification {
    let mut counts = Counts::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for record in records {
        match record.op.outcome {
            Outcome::Ok { .. } => counts.ok += 1,
            Outcome::Failed { .. } => counts.failed += 1,
            Outcome::Unknown => counts.unknown += 1,
        }
        if let Some(error) = &record.error {
            // Client errors carry addresses and durations; keep the kind.
            let kind = error.split(':').next().unwrap_or(error).to_string();
            *errors.entry(kind).or_default() += 1;
        }
    }
    let mut anomalies = Vec::new();

    let operations: Vec<_> = records.iter().map(|r| r.op.clone()).collect();
    let started = Instant::now();
    let check = check(&operations, &CheckOptions::default());
    let check_time = started.elapsed();
    match check.verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable => {
            for violation in &check.violations {
                anomalies.push(format!("not linearizable:\n{violation}"));
            }
        }
        Verdict::Inconclusive => {
            anomalies.push(format!("the checker gave up before deciding: {check}"))
        }
    }

    let unexpected: Vec<&Record> = records.iter().filter(|r| r.unexpected).collect();
    if let Some(first) = unexpected.first() {
        anomalies.push(format!(
            "{} operations failed in a way no fault explains; the first: {} on node {}: {}",
            unexpected.len(),
            first.op,
            first.node,
            first.error.as_deref().unwrap_or("?")
        ));
    }

    let leaders = acknowledging_leaders(logs);
    anomalies.extend(leaders_sharing_a_term(&leaders));
    anomalies.extend(committed_conflicts(logs));
    anomalies.extend(minority_writes(records, events));

    let recovered = records
        .iter()
        .any(|r| r.wrote() && r.completed_at().is_some_and(|at| at >= recovered_from));
    if !recovered {
        anomalies.push(format!(
            "no write succeeded after the last fault was healed at {:.3}s",
            recovered_from as f64 / 1e9
        ));
    }

    Verification {
        counts,
        errors,
        check,
        check_time,
        leader_terms: leaders.len(),
        anomalies,
    }
}

/// Members that saw a leader's log conflict with an entry they held as
/// committed: a committed entry was lost (whether or not a client's read
/// happened to show it).
fn committed_conflicts(logs: &BTreeMap<u64, Vec<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (node, lines) in logs {
        let first = lines.iter().find(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|event| event["message"] == COMMITTED_ENTRY_CONFLICT)
        });
        if let Some(line) = first {
            found.push(format!(
                "committed entry lost: node {node} was sent a log that conflicts with an entry it had committed: {line}"
            ));
        }
    }
    found
}

/// Which nodes acknowledged writes as leader in each term, from their logs.
pub fn acknowledging_leaders(logs: &BTreeMap<u64, Vec<String>>) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut leaders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (node, lines) in logs {
        for line in lines {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["message"] != ACKNOWLEDGED_AS_LEADER {
                continue;
            }
            if let Some(term) = event["term"].as_u64() {
                leaders.entry(term).or_default().insert(*node);
            }
        }
    }
    leaders
}

/// Terms in which more than one node acknowledged writes as leader.
pub fn leaders_sharing_a_term(leaders: &BTreeMap<u64, BTreeSet<u64>>) -> Vec<String> {
    leaders
        .iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|(term, nodes)| {
            format!("split brain: nodes {nodes:?} all acknowledged writes as leader of term {term}")
        })
        .collect()
}

/// Writes that succeeded for a client of a minority node while the
/// partition held for the whole operation.
pub fn minority_writes(records: &[Record], events: &[FaultEvent]) -> Vec<String> {
    let mut found = Vec::new();
    for event in events.iter().filter(|e| !e.minority.is_empty()) {
        for record in records {
            let inside = record.op.call >= event.start
                && record.completed_at().is_some_and(|at| at <= event.end);
            if inside && record.wrote() && event.minority.contains(&record.node) {
                found.push(format!(
                    "a client of node {} on the minority side of \"{}\" saw a write succeed: {}",
                    record.node, event.description, record.op
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmonydb_checker::{OpKind, Operation, Output};

    fn write(node: u64, call: Nanos, at: Nanos) -> Record {
        Record {
            op: Operation {
                client: node,
                key: 1,
                call,
                kind: OpKind::Put { value: call },
                outcome: Outcome::Ok {
                    at,
                    output: Output::Written { version: call },
                },
            },
            node,
            error: None,
            unexpected: false,
        }
    }

    #[test]
    fn two_leaders_in_one_term_are_split_brain() {
        let line = |term: u64| {
            format!(r#"{{"message":"{ACKNOWLEDGED_AS_LEADER}","term":{term},"index":5}}"#)
        };
        let logs = BTreeMap::from([
            (1, vec![line(2), line(4)]),
            (2, vec![line(3), "not json".to_string()]),
            (3, vec![line(4)]),
        ]);
        let leaders = acknowledging_leaders(&logs);
        assert_eq!(leaders.len(), 3, "{leaders:?}");
        let found = leaders_sharing_a_term(&leaders);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("term 4"), "{}", found[0]);
        let logs = BTreeMap::from([(1, vec![line(2)]), (2, vec![line(3)])]);
        assert!(leaders_sharing_a_term(&acknowledging_leaders(&logs)).is_empty());
    }

    #[test]
    fn a_minority_write_inside_the_window_is_caught() {
        let event = FaultEvent {
            kind: crate::nemesis::Scenario::IsolateLeader,
            description: "isolate leader 2".into(),
            start: 100,
            end: 200,
            minority: BTreeSet::from([2]),
        };
        let records = vec![
            // Inside the window, on the minority: caught.
            write(2, 110, 150),
            // On the majority: fine.
            write(1, 110, 150),
            // Started before the partition: it may have been committed before.
            write(2, 90, 150),
            // Completed after healing: fine.
            write(2, 150, 250),
        ];
        let found = minority_writes(&records, &[event]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("node 2"), "{}", found[0]);
    }
}
