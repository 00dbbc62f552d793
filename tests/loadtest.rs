//! The load-testing tool (`harmonydb-loadtest`, used as a library) against
//! a real 3-node cluster: a small load phase, then every workload for a
//! second or so over TCP and over HTTP; the counts must add up and every
//! error must have a reason the workload explains. Also: bad parameters
//! and an unreachable target are refused with a clear error.

mod common;

use std::time::Duration;

use common::Cluster;
use harmonydb_loadtest::workload::Mix;
use harmonydb_loadtest::{LoadError, Params, Phase, Report, Stop, TargetKind, Workload};

/// Records loaded before the runs.
const RECORDS: u64 = 1_000;

/// How long each workload runs per target.
const RUN_SECONDS: f64 = 1.0;

fn params(phase: Phase, workload: Workload, clients: usize) -> Params {
    let mix = Mix::for_phase(phase, workload);
    Params {
        phase,
        workload,
        mix,
        distribution: workload.default_distribution(),
        record_count: RECORDS,
        value_size_bytes: 100,
        field_count: 10,
        scan_length_max: 20,
        clients,
        connections: 2,
        rate_per_second: None,
        stop: match phase {
            Phase::Load => Stop::Operations(RECORDS),
            Phase::Run => Stop::DurationSeconds(RUN_SECONDS),
        },
        timeout_ms: 10_000,
        seed: 42,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Counts add up, overall and per operation, and no error is unexplained:
/// only workload F may see `version_mismatch` (two clients read-modify-
/// writing the same popular record).
fn assert_counts_add_up(report: &Report, what: &str) {
    let total = &report.total;
    assert!(total.operations > 0, "{what}: no operations");
    assert_eq!(total.operations, total.ok + total.errors, "{what}");
    assert_eq!(
        total.errors,
        total.errors_by_kind.values().sum::<u64>(),
        "{what}"
    );
    assert_eq!(total.latency.count, total.operations, "{what}");
    let by_operation: u64 = report.by_operation.values().map(|f| f.operations).sum();
    assert_eq!(by_operation, total.operations, "{what}");
    for figures in report.by_operation.values() {
        assert_eq!(figures.operations, figures.ok + figures.errors, "{what}");
    }
    for (kind, count) in &total.errors_by_kind {
        let explained = kind == "version_mismatch" && report.params.workload == Workload::F;
        assert!(
            explained,
            "{what}: {count} unexplained {kind} errors\n{}",
            report.table()
        );
    }
    // Operations that cannot fail in these workloads did not.
    if report.params.workload != Workload::F {
        assert_eq!(total.errors, 0, "{what}:\n{}", report.table());
    }
}

#[test]
fn every_workload_runs_over_tcp_and_http_and_the_counts_add_up() {
    let cluster = Cluster::start(3, &["--raft-tick-ms", "50"]);
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(20));
    let tcp = vec![cluster.node(leader).tcp.to_string()];
    let http = vec![cluster.node(leader).http.to_string()];
    let runtime = runtime();

    let load = runtime
        .block_on(harmonydb_loadtest::run(
            TargetKind::HarmonydbTcp,
            &tcp,
            &params(Phase::Load, Workload::A, 8),
            false,
        ))
        .expect("load phase");
    assert_counts_add_up(&load, "load");
    assert_eq!(load.total.ok, RECORDS);
    assert_eq!(load.by_operation["insert"].ok, RECORDS);

    for (target, endpoints) in [
        (TargetKind::HarmonydbTcp, &tcp),
        (TargetKind::HarmonydbHttp, &http),
    ] {
        for workload in Workload::ALL {
            let params = params(Phase::Run, workload, 4);
            let report = runtime
                .block_on(harmonydb_loadtest::run(target, endpoints, &params, false))
                .unwrap_or_else(|e| panic!("{target} workload {workload}: {e}"));
            let what = format!("{target} workload {workload}");
            assert_counts_add_up(&report, &what);
            let shares = workload.mix();
            for (name, share) in [
                ("read", shares.read),
                ("update", shares.update),
                ("insert", shares.insert),
                ("scan", shares.scan),
                ("read_modify_write", shares.read_modify_write),
            ] {
                assert_eq!(
                    report.by_operation.contains_key(name),
                    share > 0.0,
                    "{what}: {name} with share {share}"
                );
            }
            // The JSON result reads back as it was written.
            let back = Report::from_json("result", &report.to_json()).expect("schema");
            assert_eq!(back, report);
        }
    }

    // Open loop: the schedule is kept at a modest rate.
    let mut open = params(Phase::Run, Workload::B, 4);
    open.rate_per_second = Some(200.0);
    let report = runtime
        .block_on(harmonydb_loadtest::run(
            TargetKind::HarmonydbTcp,
            &tcp,
            &open,
            false,
        ))
        .expect("open loop");
    assert_counts_add_up(&report, "open loop");
    assert!(
        (150..=201).contains(&report.total.operations),
        "open loop at 200/s for 1 s did {} operations",
        report.total.operations
    );
}

#[test]
fn bad_parameters_and_unreachable_targets_are_refused() {
    let runtime = runtime();
    let nobody = vec![common::free_port().to_string()];
    let mut zero_clients = params(Phase::Run, Workload::A, 0);
    zero_clients.clients = 0;
    let error = runtime
        .block_on(harmonydb_loadtest::run(
            TargetKind::HarmonydbTcp,
            &nobody,
            &zero_clients,
            false,
        ))
        .expect_err("zero clients");
    assert!(matches!(error, LoadError::Parameter(_)), "{error}");

    let mut bad_mix = params(Phase::Run, Workload::A, 1);
    bad_mix.mix.read = 2.0;
    let error = runtime
        .block_on(harmonydb_loadtest::run(
            TargetKind::HarmonydbTcp,
            &nobody,
            &bad_mix,
            false,
        ))
        .expect_err("ratio out of range");
    assert!(error.to_string().contains("out of range"), "{error}");

    for target in [
        TargetKind::HarmonydbTcp,
        TargetKind::HarmonydbHttp,
        TargetKind::Etcd,
    ] {
        let mut quick = params(Phase::Run, Workload::C, 1);
        quick.timeout_ms = 2_000;
        let error = runtime
            .block_on(harmonydb_loadtest::run(target, &nobody, &quick, false))
            .expect_err("nothing listens");
        // The etcd target is the load tester's `etcd` feature: a build
        // without it says how to get it instead of trying.
        if target == TargetKind::Etcd && matches!(error, LoadError::Parameter(_)) {
            assert!(error.to_string().contains("--features etcd"), "{error}");
            continue;
        }
        assert!(
            matches!(error, LoadError::Unreachable { .. }),
            "{target}: {error}"
        );
        assert!(error.to_string().contains(&nobody[0]), "{error}");
    }
}
