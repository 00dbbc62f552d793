//! Cluster operations on a running cluster under continuous writes:
//! leadership moved to each node in turn (`POST /cluster/leader`, and the
//! CLI's `cluster transfer-leader`); the cluster grown from 3 to 5 voters
//! by nodes started with `--join` (the first catching up by snapshot),
//! shrunk back to 3, a node replaced, and the leader removed; with no
//! acknowledged write lost and the longest gap without a successful write
//! printed for each operation.

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
    /// The node it went through (its base URL).
    via: String,
    /// The error code, if it failed with one.
    code: String,
}

/// Writes through every node in turn (followers forward to the leader)
/// until stopped, one write at a time, recording every attempt.
struct Writer {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    urls: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(urls: Vec<String>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let urls = Arc::new(Mutex::new(urls));
        let (stopping, recorded, targets) = (stop.clone(), attempts.clone(), urls.clone());
        let thread = std::thread::spawn(move || {
            let agent = http_agent();
            let started = Instant::now();
            let mut i = 0u64;
            // Bounded in time whatever the test does.
            while !stopping.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(240)
            {
                let key = format!("w{}", i % KEYS);
                let value = format!("v{i}");
                let base = {
                    let urls = targets.lock().expect("urls");
                    urls[(i as usize) % urls.len()].clone()
                };
                let url = format!("{base}/kv/{key}");
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
                        "not_leader" | "no_leader" | "unavailable" | "overloaded" | "removed"
                    ),
                    via: base,
                    code: code.to_string(),
                };
                recorded.lock().expect("attempts").push(attempt);
                i += 1;
            }
        });
        Writer {
            stop,
            attempts,
            urls,
            thread: Some(thread),
        }
    }

    /// Writes go through these nodes from now on.
    fn set_urls(&self, urls: Vec<String>) {
        *self.urls.lock().expect("urls") = urls;
    }

    /// Waits until `count` writes succeed after now.
    fn wait_acked(&self, count: usize, what: &str) {
        let settled = Instant::now();
        let deadline = settled + Duration::from_secs(15);
        while self.acked_since(settled) < count {
            assert!(
                Instant::now() < deadline,
                "writes did not resume after {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
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
    let (code, printed, err) = cli(&cluster, before, &["transfer-leader"]);
    assert_eq!(code, Some(0), "{printed}{err}");
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

    check_none_lost(&attempts, &cluster.node(after).url(""));
}

/// No acknowledged write is lost: each key holds its last acknowledged
/// value, or the value of a later write whose outcome was unknown (read
/// linearizably through the node at `base`).
fn check_none_lost(attempts: &[Attempt], base: &str) {
    let acked = attempts.iter().filter(|a| a.version.is_some()).count();
    assert!(acked > 100, "only {acked} writes succeeded");
    let mut by_key: HashMap<&str, Vec<&Attempt>> = HashMap::new();
    for attempt in attempts {
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
        let (code, answer) = http(agent.get(&format!("{base}/kv/{key}")), None);
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

/// Runs `harmonydb cluster <args> --addr <node via's TCP address>`: its
/// exit code, stdout and stderr.
fn cli(cluster: &Cluster, via: u64, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(binary())
        .arg("cluster")
        .args(args)
        .args(["--addr", &cluster.tcp[&via].to_string()])
        .output()
        .expect("run the CLI");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Sends a membership change over HTTP through node `via`.
fn change(
    cluster: &Cluster,
    via: u64,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let request = http_agent()
        .request(method, &cluster.node(via).url(path))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(15));
    let body = body.map(|b| b.to_string());
    let (status, answer) = http(request, body.as_deref());
    (
        status,
        serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer)),
    )
}

/// The ids in a status field.
fn ids(value: &serde_json::Value) -> Vec<u64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default()
}

/// Waits until the leader's configuration has exactly `voters` (no joint
/// change) and returns the leader.
fn wait_voters(cluster: &Cluster, among: &[u64], voters: &[u64], timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let leader = cluster.wait_leader(among, timeout);
        let status = cluster.status(leader);
        if ids(&status["voters"]) == voters && ids(&status["voters_outgoing"]).is_empty() {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "voters did not become {voters:?} within {timeout:?}: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A removed node says so on /health, /ready and /cluster (410 `removed`),
/// in `cluster status` and in its log, and stops campaigning: the
/// cluster's term does not move while it runs.
fn check_removed(cluster: &Cluster, removed: u64, among: &[u64]) {
    let node = cluster.node(removed);
    assert!(
        node.wait_log("removed from the cluster", Duration::from_secs(10)),
        "node {removed} did not log its removal; its last lines:\n{}",
        node.log()
            .iter()
            .rev()
            .take(15)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for route in ["/health", "/ready", "/cluster"] {
        let (code, answer) = http(http_agent().get(&node.url(route)), None);
        assert_eq!(code, 410, "{route}: {answer}");
        assert!(answer.contains("\"removed\""), "{route}: {answer}");
        assert!(
            answer.contains(&format!("node {removed}")) || answer.contains("this node"),
            "{route} names the node: {answer}"
        );
    }
    let (code, printed, err) = cli(cluster, removed, &["status"]);
    assert_eq!(code, Some(1), "{printed}{err}");
    assert!(err.contains("removed"), "{printed}{err}");
    assert!(!printed.contains("follower"), "{printed}");
    let leader = cluster.wait_leader(among, Duration::from_secs(10));
    let term = cluster.status(leader)["term"].as_u64();
    std::thread::sleep(Duration::from_millis(1500));
    let now = cluster.wait_leader(among, Duration::from_secs(10));
    assert_eq!(
        (now, cluster.status(now)["term"].as_u64()),
        (leader, term),
        "the cluster's leadership moved while removed node {removed} ran"
    );
}

#[test]
fn the_cluster_grows_shrinks_replaces_a_node_and_loses_its_leader_under_writes() {
    // Frequent checkpoints with a short log: a node that joins after a
    // thousand writes must catch up by snapshot.
    let mut cluster = Cluster::start(
        3,
        &[
            "--raft-tick-ms",
            "50",
            "--checkpoint-entries",
            "200",
            "--log-retain-entries",
            "50",
        ],
    );
    let first_leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let url = |cluster: &Cluster, id: u64| format!("http://{}", cluster.node(id).http);
    let writer = Writer::start((1..=3).map(|id| url(&cluster, id)).collect());
    writer.wait_acked(1000, "start");
    let mut operations: Vec<(String, Instant, Instant)> = Vec::new();

    // Grow 3 -> 5: each new node joins as a learner, catches up, and is
    // promoted by itself.
    for (id, via) in [(4, 2), (5, 3)] {
        let started = Instant::now();
        cluster.join_node(id, via);
        let voters: Vec<u64> = (1..=id).collect();
        wait_voters(&cluster, &[1, 2, 3], &voters, Duration::from_secs(60));
        writer.wait_acked(20, &format!("adding node {id}"));
        operations.push((format!("add node {id} (--join)"), started, Instant::now()));
    }
    assert!(
        cluster
            .node(4)
            .wait_log("snapshot installed", Duration::from_secs(5)),
        "node 4 joined after the log was compacted: it should have caught up by snapshot"
    );
    // A joined node restarts like any other (same flags): it is a voter
    // already, so it asks nothing, and it keeps up.
    let started = Instant::now();
    cluster.kill9(4);
    cluster.start_node(4);
    let leader = cluster.wait_leader(&[1, 2, 3, 4, 5], Duration::from_secs(20));
    let commit = cluster.status(leader)["commit_index"].as_u64().unwrap_or(0);
    cluster.wait_applied(4, commit, Duration::from_secs(20));
    writer.wait_acked(20, "restarting node 4");
    operations.push(("kill -9 and restart node 4".into(), started, Instant::now()));
    let all: Vec<u64> = (1..=5).collect();
    let leader = cluster.wait_leader(&all, Duration::from_secs(10));
    for id in &all {
        // Every member learned every address (the configuration carries them).
        let members = cluster.status(*id)["members"].clone();
        assert_eq!(
            members.as_array().map(Vec::len),
            Some(5),
            "node {id}: {members}"
        );
    }
    assert_eq!(ids(&cluster.status(leader)["learners"]), Vec::<u64>::new());
    writer.set_urls(all.iter().map(|id| url(&cluster, *id)).collect());

    // Shrink 5 -> 3: one over HTTP, one with the CLI.
    let started = Instant::now();
    let (code, answer) = change(&cluster, 1, "DELETE", "/cluster/members/5", None);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(ids(&answer["voters"]), [1, 2, 3, 4], "{answer}");
    writer.set_urls((1..=4).map(|id| url(&cluster, id)).collect());
    writer.wait_acked(20, "removing node 5");
    operations.push(("remove node 5 (HTTP)".into(), started, Instant::now()));
    check_removed(&cluster, 5, &[1, 2, 3, 4]);
    // Removal survives a restart: the node comes back removed.
    cluster.kill9(5);
    cluster.start_node(5);
    let (code, answer) = http(http_agent().get(&cluster.node(5).url("/health")), None);
    assert_eq!(code, 410, "{answer}");
    assert!(
        cluster
            .node(5)
            .wait_log("removed from the cluster", Duration::from_secs(5)),
        "node 5 did not say it was removed after restarting"
    );
    let started = Instant::now();
    let (code, printed, err) = cli(&cluster, 2, &["remove", "4"]);
    assert_eq!(code, Some(0), "{printed}{err}");
    assert!(printed.contains("voters: 1,2,3"), "{printed}");
    writer.set_urls((1..=3).map(|id| url(&cluster, id)).collect());
    writer.wait_acked(20, "removing node 4");
    operations.push(("remove node 4 (CLI)".into(), started, Instant::now()));
    check_removed(&cluster, 4, &[1, 2, 3]);
    for id in [4, 5] {
        cluster.kill9(id);
    }

    // Replace a follower: add node 6, then remove the old one.
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let old = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let started = Instant::now();
    cluster.join_node(6, leader);
    let mut voters = vec![1, 2, 3, 6];
    wait_voters(&cluster, &[1, 2, 3], &voters, Duration::from_secs(60));
    let (code, answer) = change(
        &cluster,
        6,
        "DELETE",
        &format!("/cluster/members/{old}"),
        None,
    );
    assert_eq!(code, 200, "{answer}");
    voters.retain(|id| *id != old);
    assert_eq!(ids(&answer["voters"]), voters, "{answer}");
    writer.set_urls(voters.iter().map(|id| url(&cluster, *id)).collect());
    writer.wait_acked(20, &format!("replacing node {old} by node 6"));
    operations.push((
        format!("replace node {old} by node 6"),
        started,
        Instant::now(),
    ));
    check_removed(&cluster, old, &voters);
    cluster.kill9(old);

    // Remove the leader itself: it hands leadership over first.
    let leader = cluster.wait_leader(&voters, Duration::from_secs(10));
    let started = Instant::now();
    let (code, answer) = change(
        &cluster,
        leader,
        "DELETE",
        &format!("/cluster/members/{leader}"),
        None,
    );
    assert_eq!(code, 200, "{answer}");
    voters.retain(|id| *id != leader);
    assert_eq!(ids(&answer["voters"]), voters, "{answer}");
    writer.set_urls(voters.iter().map(|id| url(&cluster, *id)).collect());
    let new_leader = cluster.wait_leader(&voters, Duration::from_secs(10));
    assert_ne!(new_leader, leader);
    writer.wait_acked(20, &format!("removing the leader, node {leader}"));
    operations.push((
        format!("remove the leader, node {leader}"),
        started,
        Instant::now(),
    ));
    check_removed(&cluster, leader, &voters);

    std::thread::sleep(Duration::from_millis(300));
    let attempts = writer.finish();
    println!("first leader: node {first_leader}");
    for (what, from, to) in &operations {
        println!(
            "{what}: took {} ms; longest gap without a successful write {} ms",
            to.duration_since(*from).as_millis(),
            longest_gap(&attempts, *from, *to).as_millis()
        );
    }
    let leader = cluster.wait_leader(&voters, Duration::from_secs(10));
    check_none_lost(&attempts, &cluster.node(leader).url(""));
}

#[test]
fn refusals_the_cli_and_a_node_removed_while_cut_off() {
    let cluster = Cluster::start(3, &["--raft-tick-ms", "50", "--enable-fault-injection"]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    // Cut the leader off: its change can't commit, so it stays in progress.
    cluster.fault(leader, &followers, true);
    let stuck = {
        let url = cluster.node(leader).url("/cluster/members");
        std::thread::spawn(move || {
            let request = http_agent()
                .post(&url)
                .set("Content-Type", "application/json")
                .timeout(Duration::from_secs(15));
            http(
                request,
                Some(&serde_json::json!({"id": 9, "address": "127.0.0.1:9"}).to_string()),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let (code, answer) = change(
        &cluster,
        leader,
        "POST",
        "/cluster/members",
        Some(serde_json::json!({"id": 10, "address": "127.0.0.1:10"})),
    );
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "conflict", "{answer}");
    assert!(
        answer.to_string().contains("already in progress"),
        "{answer}"
    );
    // The cut-off leader steps down; the stuck change's outcome is unknown.
    let (code, answer) = stuck.join().expect("stuck request");
    assert!(
        code == 504 || code == 503,
        "the stuck change answered {code}: {answer}"
    );
    cluster.fault(leader, &followers, false);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    // An unknown node and the removal of a learner that never answered.
    let (code, answer) = change(&cluster, leader, "DELETE", "/cluster/members/7", None);
    assert_eq!(code, 404, "{answer}");
    let learners = ids(&cluster.status(leader)["learners"]);
    if learners.contains(&9) {
        let (code, answer) = change(&cluster, leader, "DELETE", "/cluster/members/9", None);
        assert_eq!(code, 200, "{answer}");
    }

    // The CLI: a learner added by hand can't be promoted before it has
    // answered (nothing listens at its address), and can be removed.
    let (code, out, err) = cli(&cluster, leader, &["add", "11", "127.0.0.1:11"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("learners: 11"), "{out}");
    let (code, out, err) = cli(&cluster, leader, &["promote", "11"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("not caught up"), "{err}");
    let (code, out, err) = cli(&cluster, leader, &["remove", "11"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("learners: none"), "{out}");

    // A follower cut off while it is removed never hears of it then; once
    // the cut heals its campaigning reaches the leader, which replicates
    // to it until it learns, and it stops.
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    let cut_off = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != cut_off).collect();
    cluster.fault(cut_off, &rest, true);
    for id in &rest {
        cluster.fault(*id, &[cut_off], true);
    }
    let (code, answer) = change(
        &cluster,
        leader,
        "DELETE",
        &format!("/cluster/members/{cut_off}"),
        None,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(ids(&answer["voters"]), rest, "{answer}");
    // Longer than the leader keeps replicating to a leaving member.
    std::thread::sleep(Duration::from_secs(2));
    let (code, answer) = http(
        http_agent().get(&cluster.node(cut_off).url("/health")),
        None,
    );
    assert_eq!(code, 200, "node {cut_off} can't know yet: {answer}");
    cluster.fault(cut_off, &rest, false);
    for id in &rest {
        cluster.fault(*id, &[cut_off], false);
    }
    check_removed(&cluster, cut_off, &rest);
}

/// The election timeout of the nodes below (10 ticks of 100 ms).
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

#[test]
fn removing_the_leader_hands_leadership_over_first_wherever_the_request_enters() {
    let mut cluster = Cluster::start(5, &[]);
    let all: Vec<u64> = (1..=5).collect();
    let first = cluster.wait_leader(&all, Duration::from_secs(30));
    let url = |cluster: &Cluster, id: u64| format!("http://{}", cluster.node(id).http);
    let mut voters = all.clone();
    let writer = Writer::start(voters.iter().map(|id| url(&cluster, *id)).collect());
    writer.wait_acked(50, "the start");

    // Through the leader itself, then through a follower (HTTP, then the CLI).
    let mut removals = Vec::new();
    let mut removed = Vec::new();
    for how in [
        "the leader",
        "a follower over HTTP",
        "a follower with the CLI",
    ] {
        let leader = cluster.wait_leader(&voters, Duration::from_secs(10));
        let via = if how == "the leader" {
            leader
        } else {
            *voters.iter().find(|id| **id != leader).expect("a follower")
        };
        let started = Instant::now();
        if how.ends_with("CLI") {
            let (code, printed, err) = cli(&cluster, via, &["remove", &leader.to_string()]);
            assert_eq!(code, Some(0), "{printed}{err}");
        } else {
            let (code, answer) = change(
                &cluster,
                via,
                "DELETE",
                &format!("/cluster/members/{leader}"),
                None,
            );
            assert_eq!(code, 200, "{answer}");
        }
        voters.retain(|id| *id != leader);
        removed.push(leader);
        let new_leader = cluster.wait_leader(&voters, Duration::from_secs(10));
        assert_ne!(new_leader, leader);
        assert!(
            cluster.node(leader).wait_log(
                "leadership handed over; asking the new leader to remove this node",
                Duration::from_secs(5)
            ),
            "node {leader}, removed through {how}, did not hand leadership over first"
        );
        writer.wait_acked(
            20,
            &format!("removing the leader, node {leader}, through {how}"),
        );
        let done = Instant::now();
        writer.set_urls(voters.iter().map(|id| url(&cluster, *id)).collect());
        removals.push((how, leader, via, started, done));
        check_removed(&cluster, leader, &voters);
    }
    std::thread::sleep(Duration::from_millis(300));
    let attempts = writer.finish();
    for (how, leader, via, from, to) in &removals {
        let gap = longest_gap(&attempts, *from, *to);
        println!(
            "remove the leader, node {leader}, through {how} (node {via}): took {} ms; longest gap without a successful write {} ms",
            to.duration_since(*from).as_millis(),
            gap.as_millis()
        );
        assert!(
            gap <= ELECTION_TIMEOUT * 2,
            "writes stopped for {gap:?} removing node {leader} through {how}: a handover, not an election, should take place"
        );
    }
    // Only a removed node may say `removed`: a node that forwarded to one
    // says it could not carry the write out, not that it was removed.
    let removed_urls: Vec<String> = removed
        .iter()
        .map(|id| format!("http://{}", cluster.node(*id).http))
        .collect();
    for attempt in &attempts {
        if attempt.code == "removed" {
            assert!(
                removed_urls.contains(&attempt.via),
                "{} answered `removed` but was not removed",
                attempt.via
            );
        }
    }
    println!("first leader: node {first}; removed in turn: {removed:?}");
    let leader = cluster.wait_leader(&voters, Duration::from_secs(10));
    check_none_lost(&attempts, &cluster.node(leader).url(""));
    for id in &removed {
        cluster.kill9(*id);
    }
}
