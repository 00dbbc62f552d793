//! The command line as a user runs it: `harmonydb kv ...` against a real node
//! (output and exit codes), and `harmonydb serve` settings from flags,
//! environment and file, the data-dir lock, and bad configuration.

mod common;

use std::process::{Command, Output};

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
