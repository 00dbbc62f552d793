//! Test harness: starts the real `harmonydb` binary on ports the OS picks
//! (`127.0.0.1:0`), learns the bound addresses from its JSON "listening" log
//! line, and kills it when the test ends, however the test ends.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_harmonydb")
}

/// A running node.
pub struct Node {
    child: Child,
    /// HTTP address it listens on.
    pub http: SocketAddr,
    /// TCP address it listens on.
    pub tcp: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Starts a node on `data_dir` with extra flags, and waits until it listens.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Node {
        Node::start_with_env(data_dir, extra_args, &[])
    }

    /// Like `start`, with environment variables set for the process.
    pub fn start_with_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Node {
        Node::start_wrapped(&[], data_dir, extra_args, env)
    }

    /// Like `start_with_env`, run through a wrapper command (such as
    /// `ip netns exec NAME`) that execs the binary, so the pid is the node's.
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-format", "json"]);
        if !env.iter().any(|(k, _)| *k == "HARMONYDB_HTTP_ADDR")
            && !extra_args.contains(&"--http-addr")
        {
            command.args(["--http-addr", "127.0.0.1:0"]);
        }
        if !env.iter().any(|(k, _)| *k == "HARMONYDB_TCP_ADDR")
            && !extra_args.contains(&"--tcp-addr")
        {
            command.args(["--tcp-addr", "127.0.0.1:0"]);
        }
        command.args(extra_args);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start harmonydb");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str::<serde_json::Value>(&line).ok();
                // Logged before the addresses are handed over, so a test that
                // reads the log right after `start` sees the listening line.
                log_writer.lock().expect("log lock").push(line);
                if let Some(event) = event.filter(|e| e["message"] == "listening") {
                    let http = event["http_addr"].as_str().and_then(|a| a.parse().ok());
                    let tcp = event["tcp_addr"].as_str().and_then(|a| a.parse().ok());
                    let _ = addrs_tx.send((http, tcp));
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match addrs_rx.recv_timeout(Duration::from_millis(100)) {
                Ok((Some(http), Some(tcp))) => {
                    return Node {
                        child,
                        http,
                        tcp,
                        data_dir: data_dir.to_path_buf(),
                        log,
                        reader: Some(reader),
                    };
                }
                Ok(_) => panic!("listening line without addresses"),
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "harmonydb exited with {status} before listening; log:\n{}",
                            log.lock().expect("log").join("\n")
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "harmonydb did not start listening in time"
                    );
                }
            }
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// The node's log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Waits up to `timeout` for a log line containing `needle` (lines reach
    /// the test through a reader thread, a little after the node writes
    /// them); whether one came.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().iter().any(|line| line.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash: nothing is flushed, no handler runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends a signal to the node.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) with a pid this test spawned and has not reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the process to exit, killing it if it takes longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader ends at the pipe's end of file: then the log is complete.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("harmonydb did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `harmonydb serve` on `data_dir` (free ports) to completion, for
/// start-ups that must be refused; returns its output.
pub fn serve_expecting_exit(data_dir: &Path) -> std::process::Output {
    Command::new(binary())
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--tcp-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .expect("run harmonydb serve")
}

/// Sends `parts` as raw bytes on a new connection to `addr`, `pause`
/// apart, and reads until the server closes it: the HTTP status (0 if
/// there was no answer), the body, and how long it all took.
pub fn raw_http_exchange(
    addr: SocketAddr,
    parts: &[&[u8]],
    pause: Duration,
) -> (u16, String, Duration) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let started = Instant::now();
    for part in parts {
        // The server may answer and close before it has read everything.
        if stream.write_all(part).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body, started.elapsed())
}

/// Runs async client code to completion from a synchronous test.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// An HTTP agent with short timeouts that returns error statuses as responses.
pub fn http_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// Sends a request and returns status and body, whatever the status.
pub fn http(request: ureq::Request, body: Option<&str>) -> (u16, String) {
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    match result {
        Ok(response) => (response.status(), response.into_string().expect("body")),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.into_string().expect("body"))
        }
        Err(error) => panic!("HTTP transport error: {error}"),
    }
}

/// A small deterministic random generator (xorshift64*), so a failing run replays.
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// A cluster of real node processes on loopback. TCP ports are reserved up
/// front (every node's `--peers` names them all); HTTP ports are the OS's pick.
pub struct Cluster {
    /// Running nodes by id (`None` while one is down).
    pub nodes: std::collections::BTreeMap<u64, Option<Node>>,
    /// Each node's TCP address.
    pub tcp: std::collections::BTreeMap<u64, SocketAddr>,
    dirs: std::collections::BTreeMap<u64, tempfile::TempDir>,
    peers: String,
    extra_args: Vec<String>,
    /// Nodes started with `--join`, and the node they joined through.
    joined: std::collections::BTreeMap<u64, u64>,
}

/// A TCP port nothing listens on right now (bound, then released).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

impl Cluster {
    /// Starts `size` nodes with extra flags and waits for a leader.
    pub fn start(size: u64, extra_args: &[&str]) -> Cluster {
        Cluster::start_in(size, extra_args, &std::collections::BTreeMap::new())
    }

    /// Like `start`, with the data directories of the nodes in `parents`
    /// made inside those directories (a small file system, say).
    pub fn start_in(
        size: u64,
        extra_args: &[&str],
        parents: &std::collections::BTreeMap<u64, PathBuf>,
    ) -> Cluster {
        let tcp: std::collections::BTreeMap<u64, SocketAddr> =
            (1..=size).map(|id| (id, free_port())).collect();
        let peers = tcp
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes: Default::default(),
            dirs: (1..=size)
                .map(|id| {
                    let dir = match parents.get(&id) {
                        Some(parent) => tempfile::tempdir_in(parent),
                        None => tempfile::tempdir(),
                    };
                    (id, dir.expect("tempdir"))
                })
                .collect(),
            tcp,
            peers,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            joined: Default::default(),
        };
        for id in 1..=size {
            cluster.start_node(id);
        }
        cluster
    }

    /// Starts (or restarts) node `id` on its data directory.
    pub fn start_node(&mut self, id: u64) {
        let tcp = self.tcp[&id].to_string();
        let node_id = id.to_string();
        let (how, whom) = match self.joined.get(&id) {
            Some(via) => ("--join", self.tcp[via].to_string()),
            None => ("--peers", self.peers.clone()),
        };
        let mut args = vec!["--node-id", &node_id, how, &whom, "--tcp-addr", &tcp];
        args.extend(self.extra_args.iter().map(String::as_str));
        let node = Node::start(self.dirs[&id].path(), &args);
        self.nodes.insert(id, Some(node));
    }

    /// Starts a new node `id` (fresh data directory and port) that joins
    /// the cluster through node `via` with `--join`.
    pub fn join_node(&mut self, id: u64, via: u64) {
        self.tcp.insert(id, free_port());
        self.dirs.insert(id, tempfile::tempdir().expect("tempdir"));
        self.joined.insert(id, via);
        self.start_node(id);
    }

    /// The running node `id`.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes[&id].as_ref().expect("node is running")
    }

    /// Ids of running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// `kill -9` of node `id`.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut node) = self.nodes.insert(id, None).flatten() {
            node.kill9();
        }
    }

    /// Node `id`'s view of the cluster (GET /cluster).
    pub fn status(&self, id: u64) -> serde_json::Value {
        let (status, body) = http(http_agent().get(&self.node(id).url("/cluster")), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Waits until every running node (or those in `among`) names the same
    /// leader, one of them, and returns it.
    pub fn wait_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.status(*id)["leader"].as_u64())
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if among.contains(leader) && leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {timeout:?}: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id);
            if status["applied_index"].as_u64() >= Some(index) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply up to {index} within {timeout:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets a fault on node `from`'s links to `to` (needs --enable-fault-injection).
    pub fn fault(&self, from: u64, to: &[u64], drop: bool) {
        self.fault_with(from, to, drop, 0);
    }

    /// Sets drop and delay on node `from`'s links to `to`.
    pub fn fault_with(&self, from: u64, to: &[u64], drop: bool, delay_ms: u64) {
        let body =
            serde_json::json!({ "peers": to, "drop": drop, "delay_ms": delay_ms }).to_string();
        let request = http_agent()
            .post(&self.node(from).url("/admin/fault"))
            .set("Content-Type", "application/json");
        let (status, answer) = http(request, Some(&body));
        assert_eq!(status, 200, "{answer}");
    }
}
