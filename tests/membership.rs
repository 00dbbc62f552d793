//! Cluster operations on a running cluster under continuous writes:
//! leadership moved to each node in turn (`POST /cluster/leader`, and the
//! CLI's `cluster transfer-leader`), with no acknowledged write lost and
//! the longest gap without a successful write printed for each move.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{binary, http, http_agent, Cluster};

/// Keys the writer cycles through.
const KEYS: u64 = 20;

/// One write the writer attempted.
#[derive(Clone, Debug)]
struct Attempt {
    key: String,
    value: String,
    /// When the answer came.
    done: Instant,
    /// The version, if the write was acknowledged; `None` if it was refused
    /// or its outcome is unknown.
    version: Option<u64>,
    /// Certainly not applied (a refusal such as `not_leader`).
    refused: bool,
}

/// Writes through every node in turn (followers forward to the leader)
/// until stopped, one write at a time, recording every attempt.
struct Writer {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(urls: Vec<String>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (stopping, recorded) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let agent = http_agent();
            let started = Instant::now();
            let mut i = 0u64;
            // Bounded in time whatever the test does.
            while !stopping.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120)
            {
                let key = format!("w{}", i % KEYS);
                let value = format!("v{i}");
                let url = format!("{}/kv/{key}", urls[(i as usize) % urls.len()]);
                let request = agent.put(&url).set("Content-Type", "application/json");
                let body = serde_json::json!({ "value": value }).to_string();
                let (status, answer) = http(request, Some(&body));
                let parsed: serde_json::Value =
                    serde_json::from_str(&answer).unwrap_or(serde_json::Value::Null);
                let code = parsed["error"]["code"].as_str().unwrap_or("");
                let attempt = Attempt {
                    key,
                    value,
                    done: Instant::now(),
                    version: (status == 200)
                        .then(|| parsed["version"].as_u64())
                        .flatten(),
                    refused: matches!(
                        code,
                        "not_leader" | "no_leader" | "unavailable" | "overloaded"
                    ),
                };
                recorded.lock().expect("attempts").push(attempt);
                i += 1;
            }
        });
        Writer {
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer thread");
        }
        let attempts = self.attempts.lock().expect("attempts").clone();
        attempts
    }

    fn acked_since(&self, since: Instant) -> usize {
        self.attempts
            .lock()
            .expect("attempts")
            .iter()
            .filter(|a| a.version.is_some() && a.done >= since)
            .count()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The longest time between two successful writes that ended inside
/// `[from, to]` (the window's edges count as successes).
fn longest_gap(attempts: &[Attempt], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = attempts
        .iter()
        .filter(|a| a.version.is_some() && a.done > from && a.done < to)
        .map(|a| a.done)
        .collect();
    times.insert(0, from);
    times.push(to);
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

fn transfer(cluster: &Cluster, via: u64, target: Option<u64>) -> (u16, serde_json::Value) {
    let body = match target {
        Some(target) => serde_json::json!({ "target": target }).to_string(),
        None => String::new(),
    };
    let request = http_agent()
        .post(&cluster.node(via).url("/cluster/leader"))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(15));
    let (status, answer) = http(request, Some(&body));
    (
        status,
        serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer)),
    )
}

#[test]
fn leadership_moves_to_each_node_in_turn_under_writes_without_losing_any() {
    let cluster = Cluster::start(3, &["--raft-tick-ms", "50"]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let status = cluster.status(leader);
    assert_eq!(status["voters"], serde_json::json!([1, 2, 3]), "{status}");
    assert_eq!(status["learners"], serde_json::json!([]), "{status}");
    assert_eq!(status["voters_outgoing"], serde_json::json!([]), "{status}");

    // Refusals are clear and change nothing.
    let (code, answer) = transfer(&cluster, leader, Some(9));
    assert_eq!(code, 400, "{answer}");
    assert!(answer.to_string().contains("not a voter"), "{answer}");
    let request = http_agent()
        .post(&cluster.node(leader).url("/cluster/leader"))
        .set("Content-Type", "application/json");
    let (code, answer) = http(request, Some("{\"target\": \"two\"}"));
    assert_eq!(code, 400, "{answer}");
    assert_eq!(
        cluster.wait_leader(&[1, 2, 3], Duration::from_secs(5)),
        leader
    );

    let urls: Vec<String> = [1, 2, 3]
        .iter()
        .map(|id| format!("http://{}", cluster.node(*id).http))
        .collect();
    let writer = Writer::start(urls);
    std::thread::sleep(Duration::from_millis(500));

    // Every node leads once, the first leader last; each request goes
    // through a node that is not the target (and so is forwarded when it
    // doesn't lead either).
    let mut order: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    order.push(leader);
    let mut moves = Vec::new();
    for target in order {
        let via = [1, 2, 3].into_iter().find(|id| *id != target).expect("via");
        let started = Instant::now();
        let (code, answer) = transfer(&cluster, via, Some(target));
        let took = started.elapsed();
        assert_eq!(code, 200, "transfer to {target} via {via}: {answer}");
        assert_eq!(answer["leader"], target, "{answer}");
        assert_eq!(
            cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)),
            target
        );
        // Writes go on under the new leader before the next move.
        let settled = Instant::now();
        let deadline = settled + Duration::from_secs(10);
        while writer.acked_since(settled) < 20 {
            assert!(
                Instant::now() < deadline,
                "writes did not resume after moving leadership to {target}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        moves.push((target, started, Instant::now(), took));
    }

    // The CLI does the same, choosing the voter itself.
    let before = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(5));
    let output = Command::new(binary())
        .args([
            "cluster",
            "transfer-leader",
            "--addr",
            &cluster.tcp[&before].to_string(),
        ])
        .output()
        .expect("run the CLI");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    assert_ne!(after, before, "{printed}");
    assert!(
        printed.contains(&format!("node {after} leads")),
        "{printed}"
    );

    std::thread::sleep(Duration::from_millis(300));
    let attempts = writer.finish();
    for (target, from, to, took) in &moves {
        println!(
            "leadership to node {target}: transfer answered in {} ms; longest gap without a successful write {} ms",
            took.as_millis(),
            longest_gap(&attempts, *from, *to).as_millis()
        );
    }

    // No acknowledged write is lost: each key holds its last acknowledged
    // value, or the value of a later write whose outcome was unknown.
    let acked = attempts.iter().filter(|a| a.version.is_some()).count();
    assert!(acked > 100, "only {acked} writes succeeded");
    let mut by_key: HashMap<&str, Vec<&Attempt>> = HashMap::new();
    for attempt in &attempts {
        by_key.entry(&attempt.key).or_default().push(attempt);
    }
    let agent = http_agent();
    for (key, tries) in by_key {
        let Some(last_acked) = tries.iter().rposition(|a| a.version.is_some()) else {
            continue;
        };
        let versions: Vec<u64> = tries.iter().filter_map(|a| a.version).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "versions of {key} went back: {versions:?}"
        );
        let possible: Vec<&str> = tries[last_acked..]
            .iter()
            .enumerate()
            .filter(|(i, a)| *i == 0 || (a.version.is_none() && !a.refused))
            .map(|(_, a)| a.value.as_str())
            .collect();
        let (code, answer) = http(
            agent.get(&cluster.node(after).url(&format!("/kv/{key}"))),
            None,
        );
        assert_eq!(code, 200, "{answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
        let value = answer["value"].as_str().unwrap_or_default();
        assert!(
            possible.contains(&value),
            "{key} holds {value:?}; the last acknowledged write was {:?} (possible: {possible:?})",
            tries[last_acked].value
        );
    }
    println!(
        "{acked} writes acknowledged of {} attempted; none lost",
        attempts.len()
    );
}
