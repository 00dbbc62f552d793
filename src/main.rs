//! The `harmonydb` binary: `serve` runs a node, `kv` and `cluster` talk to
//! one, `storage check` checks a stopped one's page file.

use std::process::ExitCode;

use clap::Parser;
use harmonydb::cli::{run_cluster, run_kv, run_storage, Cli, Command};
use harmonydb::config::Config;
use harmonydb::telemetry::TraceSettings;

/// With `--features heap-profiling` jemalloc allocates, sampling about one
/// allocation per 512 KiB (lg_prof_sample:19) for `/debug/pprof/heap`.
#[cfg(feature = "heap-profiling")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start.
#[cfg(feature = "heap-profiling")]
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8] = b"prof:true,prof_active:true,lg_prof_sample:19\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match Config::resolve(&args) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let traces = config.otlp_endpoint.as_ref().map(|endpoint| TraceSettings {
                endpoint: endpoint.clone(),
                sample_ratio: config.trace_sample_ratio,
                instance: format!("node-{}", config.node_id),
            });
            let telemetry = match harmonydb::telemetry::init_logging(
                &config.log_level,
                config.log_format,
                traces.as_ref(),
            ) {
                Ok(guard) => guard,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let code = match harmonydb::node::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    // Logging is up by now, so the error goes where the operator reads logs.
                    tracing::error!(%error, "harmonydb failed");
                    ExitCode::FAILURE
                }
            };
            // The node's runtime is gone: exporting the last spans may block here.
            telemetry.shutdown();
            code
        }
        Command::Kv(args) => run_kv(args),
        Command::Cluster(args) => run_cluster(args),
        Command::Storage(args) => run_storage(args),
    }
}
