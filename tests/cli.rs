//! The command line as a user runs it: `harmonydb kv ...` against a real node
//! (output and exit codes), and `harmonydb serve` settings from flags,
//! environment and file, the data-dir lock (waited for after a kill -9,
//! refused while its holder lives), start-up failures that name what is
//! wrong, this node's own `--peers` entry, bad configuration, and help
//! texts that promise only what is there.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{binary, http, http_agent, Node};

fn kv(node: &Node, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("kv")
        .args(args)
        .args(["--addr", &node.tcp.to_string()])
        .output()
        .expect("run harmonydb kv")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn kv_commands_print_results_and_exit_with_meaningful_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), &[]);

    let put = kv(&node, &["put", "greeting", "hello world"]);
    assert!(put.status.success(), "{}", stderr(&put));
    // Versions are log indexes; the leader's first entry of its term comes first.
    let v: u64 = stdout(&put)
        .strip_prefix("OK version ")
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected put output {:?}", stdout(&put)));

    let get = kv(&node, &["get", "greeting"]);
    assert!(get.status.success());
    assert_eq!(stdout(&get), "hello world\n");
    assert_eq!(
        stdout(&kv(&node, &["get", "greeting", "--with-version"])),
        format!("{v}\thello world\n")
    );
    for consistency in ["lease", "stale"] {
        let read = kv(&node, &["get", "greeting", "--consistency", consistency]);
        assert!(read.status.success(), "{}", stderr(&read));
        assert_eq!(stdout(&read), "hello world\n");
    }
    let stale = kv(&node, &["get", "greeting", "--consistency", "stale"]);
    assert!(
        stderr(&stale).contains("stale read from node 1"),
        "{}",
        stderr(&stale)
    );
    let bad = kv(&node, &["get", "greeting", "--consistency", "eventual"]);
    assert_eq!(bad.status.code(), Some(2));

    let stale = kv(&node, &["cas", "greeting", "7", "bye"]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stderr(&stale).contains("version_mismatch"),
        "{}",
        stderr(&stale)
    );

    let cas = kv(&node, &["cas", "greeting", &v.to_string(), "bye"]);
    assert!(cas.status.success(), "{}", stderr(&cas));
    // The refused compare-and-set took an index too.
    assert_eq!(stdout(&cas), format!("OK version {}\n", v + 2));

    assert!(kv(&node, &["cas", "fresh", "0", "new"]).status.success());
    assert!(kv(&node, &["put", "other", "x"]).status.success());
    let scan = kv(&node, &["scan", "--limit", "2"]);
    assert!(scan.status.success());
    assert_eq!(
        stdout(&scan),
        format!("fresh\t{}\tnew\ngreeting\t{}\tbye\n", v + 3, v + 2)
    );
    assert!(
        stderr(&scan).contains("more keys follow"),
        "{}",
        stderr(&scan)
    );
    assert_eq!(
        stdout(&kv(&node, &["scan", "--prefix", "oth"])),
        format!("other\t{}\tx\n", v + 4)
    );

    let del = kv(&node, &["del", "greeting"]);
    assert!(del.status.success());
    assert_eq!(
        stdout(&del),
        format!("deleted greeting (was version {})\n", v + 2)
    );

    let missing = kv(&node, &["get", "greeting"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("not_found"),
        "{}",
        stderr(&missing)
    );

    let bad_scan = kv(&node, &["scan", "--limit", "0"]);
    assert_eq!(bad_scan.status.code(), Some(1));
    assert!(
        stderr(&bad_scan).contains("bad_request"),
        "{}",
        stderr(&bad_scan)
    );

    // The HTTP API sees what the CLI wrote.
    let (status, body) = http(http_agent().get(&node.url("/kv/fresh")), None);
    assert_eq!(status, 200);
    assert!(body.contains("\"value\":\"new\""), "{body}");

    let usage = Command::new(binary())
        .args(["kv", "get"])
        .output()
        .expect("run");
    assert_eq!(usage.status.code(), Some(2));

    let status = Command::new(binary())
        .args(["cluster", "status", "--addr", &node.tcp.to_string()])
        .output()
        .expect("run harmonydb cluster status");
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(text.contains("node 1 is leader"), "{text}");
    assert!(text.contains(&format!("1\t{}\t", node.tcp)), "{text}");
    let json = Command::new(binary())
        .args([
            "cluster",
            "status",
            "--json",
            "--addr",
            &node.tcp.to_string(),
        ])
        .output()
        .expect("run harmonydb cluster status --json");
    let parsed: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("cluster status --json prints JSON");
    assert_eq!(parsed["leader"], 1);
    assert_eq!(parsed["members"][0]["lag"], 0);
}

#[test]
fn kv_reports_an_unreachable_node_with_exit_code_3() {
    // Bind and drop to find a port with nothing listening on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let output = Command::new(binary())
        .args(["kv", "get", "k", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("cannot connect"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn settings_come_from_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("harmonydb.toml");
    let data_dir = dir.path().join("data-from-file");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nfsync = \"interval:20\"\nmax_value_bytes = 100\nhttp_addr = \"127.0.0.1:1\"\n",
            data_dir.display().to_string()
        ),
    )
    .expect("write config");
    // The file's data_dir loses to the flag the harness passes, so point the flag at the same place.
    let node = Node::start_with_env(
        &data_dir,
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--fsync",
            "never",
        ],
        &[("HARMONYDB_HTTP_ADDR", "127.0.0.1:0")],
    );
    let log = node.log().join("\n");
    // The flag beat the file's fsync; the environment beat the file's http_addr (port 1 would fail).
    assert!(log.contains("\"fsync\":\"never\""), "{log}");
    assert!(data_dir.join("LOCK").exists());
    // The file's value limit applies: 101 bytes are refused.
    let (status, body) = http(
        http_agent()
            .put(&node.url("/kv/k"))
            .set("Content-Type", "application/json"),
        Some(&format!("{{\"value\": \"{}\"}}", "x".repeat(101))),
    );
    assert_eq!(status, 413, "{body}");
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Node::start(dir.path(), &[]);
    let second = common::serve_expecting_exit(dir.path());
    assert!(!second.status.success());
    let message = stderr(&second);
    assert!(
        message.contains("in use by another harmonydb process"),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", holder_pid(dir.path()))),
        "{message}"
    );
}

fn holder_pid(data_dir: &std::path::Path) -> String {
    std::fs::read_to_string(data_dir.join("LOCK"))
        .expect("lock file")
        .trim()
        .to_string()
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "fsync = \"sometimes\"\n").expect("write");
    let output = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("sometimes"), "{}", stderr(&output));

    let output = Command::new(binary())
        .args(["serve", "--fsync", "interval:abc"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("interval"), "{}", stderr(&output));

    let output = Command::new(binary())
        .args(["serve", "--http-addr", "not-an-address"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
}

/// Runs `harmonydb serve` with `args` (free ports unless given) on
/// `data_dir` to completion: a start-up that must fail.
fn serve_failing(data_dir: &std::path::Path, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command.arg("serve").arg("--data-dir").arg(data_dir);
    for (flag, default) in [
        ("--http-addr", "127.0.0.1:0"),
        ("--tcp-addr", "127.0.0.1:0"),
    ] {
        if !args.contains(&flag) {
            command.args([flag, default]);
        }
    }
    command.args(args).output().expect("run harmonydb serve")
}

/// Asserts a start-up failed with exit code 1 and a message containing
/// `needle`, and no panic.
fn assert_start_refused(output: &Output, needle: &str) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(needle),
        "expected {needle:?} in: {message}"
    );
    assert!(!message.contains("panicked"), "{message}");
    assert!(
        message.lines().count() < 10,
        "a start-up error is a few lines, not a backtrace: {message}"
    );
}

#[test]
fn start_up_failures_name_what_is_wrong_and_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();

    let output = serve_failing(&dir.path().join("http"), &["--http-addr", &taken]);
    assert_start_refused(
        &output,
        &format!("cannot listen for HTTP on {taken}: Address already in use"),
    );
    let output = serve_failing(&dir.path().join("tcp"), &["--tcp-addr", &taken]);
    assert_start_refused(
        &output,
        &format!("cannot listen for TCP on {taken}: Address already in use"),
    );

    // A data directory that is a file, or lies under one.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write");
    assert_start_refused(&serve_failing(&file, &[]), "is not a directory");
    assert_start_refused(
        &serve_failing(&file.join("data"), &[]),
        "is not a directory",
    );

    // A directory the node may not read: as root (which reads anything),
    // the node runs as nobody through setpriv.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    set_mode(&locked, 0o000);
    let is_root = unsafe { libc::geteuid() } == 0;
    let output = if !is_root {
        Some(serve_failing(&locked, &[]))
    } else if let Some(output) = serve_as_nobody(dir.path(), &locked) {
        Some(output)
    } else {
        println!(
            "skipping the unreadable data directory case: root, and no setpriv to drop privileges"
        );
        None
    };
    if let Some(output) = output {
        assert_start_refused(&output, "is not usable");
        assert!(
            stderr(&output).contains("Permission denied"),
            "{}",
            stderr(&output)
        );
    }
    set_mode(&locked, 0o755);
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `harmonydb serve` on `data_dir` as the user nobody (a copy of the
/// binary in `scratch`, since the build directory may be root's alone),
/// if `setpriv` is there to do it.
fn serve_as_nobody(scratch: &std::path::Path, data_dir: &std::path::Path) -> Option<Output> {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())?;
    let copy = scratch.join("harmonydb-copy");
    std::fs::copy(binary(), &copy).expect("copy the binary");
    set_mode(&copy, 0o755);
    set_mode(scratch, 0o755);
    let output = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--tcp-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run setpriv");
    Some(output)
}

#[test]
fn a_restart_right_after_kill_9_waits_for_the_lock_and_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start(dir.path(), &[]);
    let agent = http_agent();
    for round in 0..5 {
        let key = format!("/kv/round-{round}");
        let request = agent
            .put(&node.url(&key))
            .set("Content-Type", "application/json");
        let (status, body) = http(request, Some(r#"{"value": "kept"}"#));
        assert_eq!(status, 200, "{body}");
        // SIGKILL and restart at once, before the old process is reaped:
        // what a supervisor with an immediate restart does.
        node.signal(libc::SIGKILL);
        let mut old = std::mem::replace(&mut node, Node::start(dir.path(), &[]));
        assert!(!old.wait_exit(Duration::from_secs(10)).success());
        let (status, body) = http(agent.get(&node.url(&key)), None);
        assert_eq!(status, 200, "round {round}: {body}");
    }
    let waited = node
        .log()
        .iter()
        .any(|line| line.contains("waiting for it to exit"));
    println!("the last start waited for the lock: {waited}");
}

#[test]
fn this_nodes_own_peers_entry_must_be_where_it_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = common::free_port();
    let listed = common::free_port();
    let peers = format!("1={listed},2=127.0.0.1:1,3=127.0.0.1:2");
    let output = serve_failing(
        dir.path(),
        &[
            "--node-id",
            "1",
            "--peers",
            &peers,
            "--tcp-addr",
            &listen.to_string(),
        ],
    );
    assert_start_refused(&output, &format!("expected {listen}"));
    assert!(
        stderr(&output).contains(&listed.to_string()),
        "{}",
        stderr(&output)
    );
    // Nothing was written: the same directory starts once the entry is right.
    assert!(!dir.path().join("IDENTITY").exists());
}

#[test]
fn help_says_what_is_there() {
    let help = |args: &[&str]| {
        let output = Command::new(binary()).args(args).output().expect("run");
        assert!(output.status.success(), "{args:?}");
        stdout(&output)
    };
    let top = help(&["--help"]);
    assert!(!top.to_lowercase().contains("transactional"), "{top}");
    assert!(top.contains("key-value"), "{top}");
    let put = help(&["kv", "put", "--help"]);
    assert!(!put.contains("--consistency"), "{put}");
    let get = help(&["kv", "get", "--help"]);
    assert!(get.contains("--consistency"), "{get}");
    let scan = help(&["kv", "scan", "--help"]);
    assert!(scan.contains("--consistency"), "{scan}");
    let cluster = help(&["cluster", "--help"]);
    assert!(cluster.contains("change"), "{cluster}");
    for command in [
        "status",
        "ready",
        "transfer-leader",
        "add",
        "promote",
        "remove",
    ] {
        assert!(cluster.contains(command), "{command}: {cluster}");
    }
}
