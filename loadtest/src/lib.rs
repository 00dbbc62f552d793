//! `harmonydb-loadtest`: YCSB core workloads (A to F, and write-only)
//! against HarmonyDB over TCP or HTTP and against etcd over gRPC (with the
//! `etcd` feature), in closed
//! or open loop, with HdrHistogram latencies measured the same way for
//! every target. The binary (`main.rs`) is a thin CLI over `run`.
//!
//! - `workload`: workloads, mixes, distributions and a run's parameters.
//! - `generator`: random numbers, zipfian/latest key choice, keys and values.
//! - `store`: the `Store` trait and its three implementations.
//! - `runner`: the client loops, latency accounting and progress bar.
//! - `report`: the JSON schema, the table, and `--compare`.

pub mod error;
pub mod generator;
pub mod report;
pub mod runner;
pub mod store;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

pub use error::LoadError;
pub use report::Report;
pub use store::TargetKind;
pub use workload::{Distribution, Params, Phase, Stop, Workload};

/// Connects to `target` at `endpoints` (a clear error if it can't be
/// reached), runs the phase `params` describes, and returns its result.
pub async fn run(
    target: TargetKind,
    endpoints: &[String],
    params: &Params,
    progress: bool,
) -> Result<Report, LoadError> {
    params.validate()?;
    if endpoints.is_empty() {
        return Err(LoadError::Parameter("no endpoints given".into()));
    }
    let timeout = Duration::from_millis(params.timeout_ms);
    match target {
        TargetKind::HarmonydbTcp => {
            let store =
                store::tcp::TcpStore::connect(endpoints, params.connections, timeout).await?;
            runner::run_phase(Arc::new(store), params, target, endpoints, progress).await
        }
        TargetKind::HarmonydbHttp => {
            let store = store::http::HttpStore::connect(endpoints, params.clients, timeout).await?;
            runner::run_phase(Arc::new(store), params, target, endpoints, progress).await
        }
        #[cfg(feature = "etcd")]
        TargetKind::Etcd => {
            let store =
                store::etcd::EtcdStore::connect(endpoints, params.connections, timeout).await?;
            runner::run_phase(Arc::new(store), params, target, endpoints, progress).await
        }
        #[cfg(not(feature = "etcd"))]
        TargetKind::Etcd => Err(LoadError::Parameter(
            "this build has no etcd client; build with `--features etcd` (needs protoc and libprotobuf-dev)".into(),
        )),
    }
}
