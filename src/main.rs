//! The `harmonydb` binary: `serve` runs a node, `kv` and `cluster` talk to
//! one, `storage check` checks a stopped one's page file.

use std::process::ExitCode;

use clap::Parser;
use harmonydb::cli::{run_cluster, run_kv, run_storage, Cli, Command};
use harmonydb::config::Config;

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
            if let Err(error) =
                harmonydb::telemetry::init_logging(&config.log_level, config.log_format)
            {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
            match harmonydb::node::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    // Logging is up by now, so the error goes where the operator reads logs.
                    tracing::error!(%error, "harmonydb failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Kv(args) => run_kv(args),
        Command::Cluster(args) => run_cluster(args),
        Command::Storage(args) => run_storage(args),
    }
}
