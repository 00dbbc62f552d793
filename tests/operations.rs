//! What an operator watches: readiness (`GET /ready`, `harmonydb cluster
//! ready`) through no leader, leading and following, and steady on every
//! node under a write load; a dead member marked unreachable, with when it
//! was last heard from, in `/cluster` and `cluster status`.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binary, http, http_agent, Cluster, Node};

/// `GET /ready` on `node`: status and JSON body.
fn ready(node: &Node) -> (u16, serde_json::Value) {
    let (status, body) = http(http_agent().get(&node.url("/ready")), None);
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, json)
}

/// Waits until `/ready` on `node` answers `status` (and, for an error,
/// `code`); the body it gave.
fn wait_ready(
    node: &Node,
    status: u16,
    code: Option<&str>,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = ready(node);
        if got == status && code.is_none_or(|code| body["error"]["code"] == code) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready did not become {status} {code:?} within {timeout:?}: {got} {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `harmonydb cluster <args> --addr <node's TCP address>`: exit code and output.
fn cluster_cli(node: &Node, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(binary())
        .arg("cluster")
        .args(args)
        .args(["--addr", &node.tcp.to_string(), "--timeout", "5"])
        .output()
        .expect("run the CLI");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn ready_through_no_leader_leading_and_following() {
    // A node of one is ready as soon as it leads.
    let dir = tempfile::tempdir().expect("tempdir");
    let alone = Node::start(dir.path(), &[]);
    let body = wait_ready(&alone, 200, None, Duration::from_secs(10));
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["leader"], 1, "{body}");
    let (code, printed) = cluster_cli(&alone, &["ready"]);
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("node 1 is ready"), "{printed}");
    drop(alone);

    let mut cluster = Cluster::start(3, &["--raft-tick-ms", "50"]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    for id in [1, 2, 3] {
        let body = wait_ready(cluster.node(id), 200, None, Duration::from_secs(10));
        assert_eq!(body["leader"], leader, "node {id}: {body}");
    }
    // Two of three gone: the last knows no live leader, and says so.
    let survivor = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        cluster.kill9(id);
    }
    let body = wait_ready(
        cluster.node(survivor),
        503,
        Some("no_leader"),
        Duration::from_secs(10),
    );
    println!("a node cut from its majority: {body}");
    let (code, printed) = cluster_cli(cluster.node(survivor), &["ready"]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("no_leader"), "{printed}");
    // Back: every node is ready again.
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        cluster.start_node(id);
    }
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    for id in [1, 2, 3] {
        wait_ready(cluster.node(id), 200, None, Duration::from_secs(10));
    }
}

/// How long the readiness check runs under writes.
const LOAD_DURATION: Duration = Duration::from_secs(30);

#[test]
fn ready_stays_200_on_every_node_through_30_s_of_writes() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    for id in [1, 2, 3] {
        wait_ready(cluster.node(id), 200, None, Duration::from_secs(10));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers, through every node, one write at a time each.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let stop = stop.clone();
            let urls: Vec<String> = [1, 2, 3]
                .iter()
                .map(|id| cluster.node(*id).url(""))
                .collect();
            std::thread::spawn(move || {
                let agent = http_agent();
                let mut written = 0u64;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_DURATION * 2 {
                    let url = format!(
                        "{}/kv/load-{w}-{}",
                        urls[(written % 3) as usize],
                        written % 100
                    );
                    let request = agent.put(&url).set("Content-Type", "application/json");
                    if http(request, Some(r#"{"value": "steady"}"#)).0 == 200 {
                        written += 1;
                    }
                }
                written
            })
        })
        .collect();
    let started = Instant::now();
    let mut checks = 0u64;
    let mut not_ready = Vec::new();
    while started.elapsed() < LOAD_DURATION {
        for id in [1, 2, 3] {
            let (status, body) = ready(cluster.node(id));
            checks += 1;
            if status != 200 {
                not_ready.push(format!(
                    "node {id} after {:?}: {status} {body}",
                    started.elapsed()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let written: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    println!(
        "{checks} readiness checks over {LOAD_DURATION:?} while {written} writes were acknowledged"
    );
    assert!(
        written > 100,
        "the load wrote too little to mean anything: {written}"
    );
    assert!(
        not_ready.is_empty(),
        "not ready under load:\n{}",
        not_ready.join("\n")
    );
}

#[test]
fn a_dead_member_is_marked_unreachable_with_when_it_was_last_heard() {
    let mut cluster = Cluster::start(3, &["--raft-tick-ms", "50"]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    let member = |status: &serde_json::Value, id: u64| {
        status["members"]
            .as_array()
            .and_then(|members| members.iter().find(|m| m["id"] == id).cloned())
            .unwrap_or_else(|| panic!("member {id} in {status}"))
    };
    let status = cluster.status(leader);
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        let row = member(&status, id);
        assert_eq!(row["unreachable"], false, "{row}");
        assert!(row["last_heard_ms"].as_u64().is_some(), "{row}");
    }
    let dead = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let alive = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader && *id != dead)
        .expect("another follower");
    cluster.kill9(dead);
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let row = member(&cluster.status(leader), dead);
        if row["unreachable"] == true {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "node {dead} never marked unreachable: {row}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // An election timeout here is 10 ticks of 50 ms.
    assert!(row["last_heard_ms"].as_u64() >= Some(500), "{row}");
    assert_eq!(member(&cluster.status(leader), alive)["unreachable"], false);
    let (code, printed) = cluster_cli(cluster.node(leader), &["status"]);
    assert_eq!(code, Some(0), "{printed}");
    let dead_row = printed
        .lines()
        .find(|line| line.starts_with(&format!("{dead}\t")))
        .unwrap_or_else(|| panic!("no row for node {dead}: {printed}"));
    assert!(dead_row.ends_with("unreachable"), "{dead_row}");
    assert!(dead_row.contains("ms ago"), "{dead_row}");
    println!("{printed}");
    // Back, and heard from again.
    cluster.start_node(dead);
    let deadline = Instant::now() + Duration::from_secs(20);
    while member(&cluster.status(leader), dead)["unreachable"] == true {
        assert!(
            Instant::now() < deadline,
            "node {dead} still unreachable after restarting"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
