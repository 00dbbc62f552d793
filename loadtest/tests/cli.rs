//! The command line refuses bad parameters and unreachable targets with a
//! clear message and a non-zero exit code, never a panic.

use std::process::{Command, Output};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harmonydb-loadtest"))
        .args(args)
        .output()
        .expect("run harmonydb-loadtest")
}

fn assert_refused(args: &[&str], code: i32, needle: &str) {
    let output = loadtest(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string()
}

#[test]
fn bad_parameters_exit_2_with_a_message() {
    assert_refused(&["run", "--workload", "g"], 2, "unknown workload");
    assert_refused(&["run", "--threads", "0"], 2, "at least 1");
    assert_refused(
        &["run", "--distribution", "pareto"],
        2,
        "unknown distribution",
    );
    assert_refused(&["run", "--target", "redis"], 2, "unknown target");
    assert_refused(&["run", "--read-proportion", "1.5"], 2, "out of range");
    assert_refused(&["run", "--read-proportion", "0.9"], 2, "sum to");
    assert_refused(&["run", "--rate", "0"], 2, "positive");
    assert_refused(&["run", "--operations", "0"], 2, "at least 1");
    assert_refused(&[], 2, "nothing to do");
    if !cfg!(feature = "etcd") {
        assert_refused(&["run", "--target", "etcd"], 2, "--features etcd");
    }
}

#[test]
fn unreachable_targets_exit_3() {
    let port = closed_port();
    let targets: &[&str] = if cfg!(feature = "etcd") {
        &["harmonydb-tcp", "harmonydb-http", "etcd"]
    } else {
        &["harmonydb-tcp", "harmonydb-http"]
    };
    for target in targets {
        assert_refused(
            &[
                "run",
                "--target",
                target,
                "--endpoints",
                &port,
                "--timeout-ms",
                "2000",
            ],
            3,
            "cannot reach",
        );
    }
}

#[test]
fn compare_refuses_missing_and_foreign_files() {
    let dir = std::env::temp_dir().join(format!("loadtest-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let foreign = dir.join("foreign.json");
    std::fs::write(&foreign, "{\"hello\": 1}").expect("write");
    let foreign = foreign.to_string_lossy().to_string();
    assert_refused(&["--compare", &foreign, &foreign], 1, "no schema_version");
    assert_refused(
        &["--compare", "/nonexistent/a.json", &foreign],
        1,
        "/nonexistent/a.json",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
