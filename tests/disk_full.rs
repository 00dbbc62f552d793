//! A full disk: a node whose disk fills refuses writes before they are
//! logged (`storage_full`, with what it needs), keeps serving reads, hands
//! leadership over if it leads, carries on by itself when space comes
//! back, and restarts after running out of space thanks to its reserve;
//! no acknowledged write is lost. Each node's data directory sits on a
//! small tmpfs mounted for the test; without root (or where mounting is
//! not allowed) the tests say why and skip.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http, http_agent, Cluster, Node};

const MIB: u64 = 1024 * 1024;

/// A tmpfs mounted for a test, unmounted when dropped.
struct SmallDisk {
    mount: tempfile::TempDir,
}

impl SmallDisk {
    /// A tmpfs of `size_mb` MiB, or why there can't be one here.
    fn mount(size_mb: u64) -> Result<SmallDisk, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a tmpfs needs root".into());
        }
        let mount = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(mount.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallDisk { mount })
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    fn free_bytes(&self) -> u64 {
        harmonydb_actors::disk::free_bytes(self.path()).expect("statvfs")
    }

    /// Fills the disk until `leave_bytes` are free; the filler's path.
    fn fill(&self, leave_bytes: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let size = self.free_bytes().saturating_sub(leave_bytes);
        let file = std::fs::File::create(&filler).expect("filler");
        // Written, not sparse: tmpfs counts only what is written.
        let chunk = vec![0xAAu8; MIB as usize];
        let mut written = 0;
        use std::io::Write;
        let mut file = std::io::BufWriter::new(file);
        while written + MIB <= size {
            file.write_all(&chunk).expect("fill");
            written += MIB;
        }
        file.flush().expect("flush filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

/// A put: status and JSON answer (status 0 when the node could not be
/// reached, as while it restarts).
fn put(url: &str, key: &str, value: &str) -> (u16, serde_json::Value) {
    let request = http_agent()
        .put(&format!("{url}/kv/{key}"))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(15));
    let body = serde_json::json!({ "value": value }).to_string();
    let (status, text) = match request.send_string(&body) {
        Ok(response) => (
            response.status(),
            response.into_string().unwrap_or_default(),
        ),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_string().unwrap_or_default())
        }
        Err(error) => (0, error.to_string()),
    };
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// An acknowledged write: key, value, version, when.
type Acked = (String, String, u64, Instant);

/// Writes through the nodes at `urls` in turn until stopped, recording
/// each acknowledged write's key, value and version.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(urls: Vec<String>, value_bytes: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stopping, record) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let padding = "p".repeat(value_bytes);
            let mut i = 0u64;
            while !stopping.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120)
            {
                let url = &urls[(i as usize) % urls.len()];
                let key = format!("w{}", i % 200);
                let value = format!("{i}-{padding}");
                if let (200, answer) = put(url, &key, &value) {
                    let version = answer["version"].as_u64().expect("version");
                    record
                        .lock()
                        .expect("acked")
                        .push((key, value, version, Instant::now()));
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
                i += 1;
            }
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked_since(&self, since: Instant) -> usize {
        self.acked
            .lock()
            .expect("acked")
            .iter()
            .filter(|(_, _, _, at)| *at >= since)
            .count()
    }

    fn finish(mut self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer");
        }
        let acked = self.acked.lock().expect("acked").clone();
        acked
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

/// Every key's last acknowledged value is what a linearizable read through
/// `url` gives (or a later write's, whose outcome the writer didn't learn).
fn check_none_lost(acked: &[Acked], url: &str) {
    let mut last: HashMap<&str, (&str, u64)> = HashMap::new();
    for (key, value, version, _) in acked {
        let entry = last.entry(key).or_insert((value, *version));
        if *version > entry.1 {
            *entry = (value, *version);
        }
    }
    for (key, (value, version)) in last {
        let (status, body) = http(http_agent().get(&format!("{url}/kv/{key}")), None);
        assert_eq!(status, 200, "{key}: {body}");
        let found: serde_json::Value = serde_json::from_str(&body).expect("json");
        let found_version = found["version"].as_u64().expect("version");
        assert!(
            found_version >= version,
            "{key}: version {found_version} < acknowledged {version}"
        );
        if found_version == version {
            assert_eq!(found["value"], value, "{key}");
        }
    }
    println!("{} writes acknowledged; none lost", acked.len());
}

/// Waits for `/ready` on `node` to answer `status`; the body.
fn wait_ready(node: &Node, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = http(http_agent().get(&node.url("/ready")), None);
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready was {got} {body}, not {status}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The nodes' flags here: small WAL segments, a 16 MiB floor, an 8 MiB reserve.
const DISK_ARGS: &[&str] = &[
    "--wal-segment-bytes",
    "4194304",
    "--min-free-disk-mb",
    "16",
    "--disk-reserve-mb",
    "8",
    "--raft-tick-ms",
    "50",
];

#[test]
fn a_leader_whose_disk_fills_hands_over_and_comes_back_when_space_returns() {
    let disk = match SmallDisk::mount(96) {
        Ok(disk) => disk,
        Err(reason) => {
            println!("SKIPPED the full-disk cluster test: {reason}");
            return;
        }
    };
    let parents = BTreeMap::from([(1, disk.path().to_path_buf())]);
    let mut cluster = Cluster::start_in(3, DISK_ARGS, &parents);
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(30));
    // Node 1, the one on the small disk, leads.
    let request = http_agent()
        .post(&cluster.node(2).url("/cluster/leader"))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(15));
    let (status, body) = http(request, Some(r#"{"target": 1}"#));
    assert_eq!(status, 200, "{body}");
    let urls: Vec<String> = [1, 2, 3]
        .iter()
        .map(|id| cluster.node(*id).url(""))
        .collect();
    let writer = Writer::start(urls, 2000);
    let warm = Instant::now();
    while writer.acked_since(warm) < 50 {
        assert!(warm.elapsed() < Duration::from_secs(20), "no writes");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Under the floor: node 1 refuses writes, hands leadership over, and
    // says why it is not ready; the cluster goes on writing.
    let filler = disk.fill(10 * MIB);
    let filled = Instant::now();
    let new_leader = cluster.wait_leader(&[2, 3], Duration::from_secs(15));
    let moved = filled.elapsed();
    let body = wait_ready(cluster.node(1), 507, Duration::from_secs(5));
    assert!(
        body.contains("storage_full") && body.contains("MiB"),
        "{body}"
    );
    let (status, body) = http(
        http_agent()
            .put(&cluster.node(1).url("/kv/direct?forward=false"))
            .set("Content-Type", "application/json"),
        Some(r#"{"value": "x"}"#),
    );
    assert_ne!(status, 200, "node 1 took a write on a full disk: {body}");
    let resumed = Instant::now();
    while writer.acked_since(resumed) < 50 {
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "the cluster stopped writing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed_under_new_leader = Instant::now();
    // Node 1 still serves what it has.
    let (status, body) = http(
        http_agent().get(&cluster.node(1).url("/kv/w1?consistency=stale")),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let metrics = http(http_agent().get(&cluster.node(1).url("/metrics")), None).1;
    assert!(
        metrics.contains("harmonydb_storage_disk_full 1"),
        "{metrics}"
    );

    // Space back: node 1 carries on by itself, catches up, is ready.
    std::fs::remove_file(&filler).expect("free the space");
    let freed = Instant::now();
    wait_ready(cluster.node(1), 200, Duration::from_secs(20));
    let ready_again = freed.elapsed();
    // And a restart right after it all succeeds.
    cluster.kill9(1);
    cluster.start_node(1);
    wait_ready(cluster.node(1), 200, Duration::from_secs(20));
    let acked = writer.finish();
    // The longest time without an acknowledged write from the fill until
    // writes had resumed under the new leader.
    let mut times: Vec<Instant> = acked
        .iter()
        .map(|(_, _, _, at)| *at)
        .filter(|at| *at >= filled && *at <= resumed_under_new_leader)
        .collect();
    times.insert(0, filled);
    times.push(resumed_under_new_leader);
    let gap = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    println!(
        "node 1's disk filled under its floor: leadership moved to node {new_leader} in {} ms; longest gap without an acknowledged write {} ms; ready again {} ms after space was freed",
        moved.as_millis(),
        gap.as_millis(),
        ready_again.as_millis()
    );
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10));
    check_none_lost(&acked, &cluster.node(leader).url(""));
}

#[test]
fn a_node_out_of_space_serves_reads_refuses_writes_and_resumes_without_a_restart() {
    let disk = match SmallDisk::mount(64) {
        Ok(disk) => disk,
        Err(reason) => {
            println!("SKIPPED the out-of-space test: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir_in(disk.path()).expect("data dir");
    // No floor: writes go on until the WAL really finds no space.
    let mut args = DISK_ARGS.to_vec();
    args[3] = "0";
    let mut node = Node::start(dir.path(), &args);
    wait_ready(&node, 200, Duration::from_secs(10));
    let filler = disk.fill(24 * MIB);
    let writer = Writer::start(vec![node.url("")], 60_000);
    // Until the WAL waits for space: writes are refused with the reason.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        let (status, body) = put(&node.url(""), "probe", "x");
        if status == 507 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the disk never filled: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("refused: {refusal}");
    assert_eq!(refusal["error"]["code"], "storage_full", "{refusal}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("WAL waits")),
        "{refusal}"
    );
    let ready = wait_ready(&node, 507, Duration::from_secs(5));
    assert!(ready.contains("storage_full"), "{ready}");
    // Reads go on, linearizable ones too (it is the only voter).
    let acked_so_far = writer.acked.lock().expect("acked").clone();
    let (key, value, _, _) = acked_so_far
        .last()
        .cloned()
        .expect("some writes went through");
    for query in ["", "?consistency=stale"] {
        let (status, body) = http(
            http_agent().get(&node.url(&format!("/kv/{key}{query}"))),
            None,
        );
        assert_eq!(status, 200, "{query}: {body}");
        assert!(body.contains(&value[..20]), "{body}");
    }
    // Space back: writes resume without a restart.
    std::fs::remove_file(&filler).expect("free the space");
    let freed = Instant::now();
    let deadline = freed + Duration::from_secs(20);
    loop {
        if put(&node.url(""), "after", "space").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "writes resumed {} ms after space was freed",
        freed.elapsed().as_millis()
    );
    let acked = writer.finish();
    // Out of space again, then a kill -9: the restart succeeds (its
    // reserve gives recovery room) and every acknowledged write is there.
    let _filler = disk.fill(2 * MIB);
    node.kill9();
    let node = Node::start(dir.path(), &args);
    wait_ready(&node, 200, Duration::from_secs(15)).to_string();
    check_none_lost(&acked, &node.url(""));
}
