//! The `harmonydb-loadtest` command: `load` and `run` phases of a YCSB
//! workload against HarmonyDB (TCP or HTTP) or etcd, and `--compare` of
//! two JSON results. Exit codes: 0 done, 1 the run failed, 2 bad
//! parameters, 3 the target could not be reached.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use harmonydb_loadtest::report::{compare, compare_markdown_row};
use harmonydb_loadtest::workload::Mix;
use harmonydb_loadtest::{
    Distribution, LoadError, Params, Phase, Report, Stop, TargetKind, Workload,
};

/// YCSB workloads against HarmonyDB (TCP, HTTP) and etcd (gRPC).
#[derive(Parser, Debug)]
#[command(
    name = "harmonydb-loadtest",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Compare two JSON results: prints each figure of both and B/A.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"])]
    compare: Option<Vec<String>>,
    /// With --compare: print one Markdown table row instead (workload,
    /// clients, A ops/s, p50, p99, B ops/s, p50, p99, B/A ops/s, B/A p99).
    #[arg(long, requires = "compare")]
    markdown_row: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Insert the records a run phase reads (record numbers 0..records).
    Load(Options),
    /// Run a workload's operation mix over loaded records.
    Run(Options),
}

/// Options shared by both phases.
#[derive(Args, Debug)]
struct Options {
    /// harmonydb-tcp, harmonydb-http or etcd.
    #[arg(long, default_value = "harmonydb-tcp", value_parser = parse::<TargetKind>)]
    target: TargetKind,
    /// Comma-separated host:port list (default: the target's usual local port).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// a, b, c, d, e, f or write-only.
    #[arg(long, default_value = "a", value_parser = parse::<Workload>)]
    workload: Workload,
    /// Records to load / assumed loaded.
    #[arg(long, default_value_t = 1000)]
    records: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1000)]
    value_size: usize,
    /// Fields per value (concatenated, each value_size/fields bytes).
    #[arg(long, default_value_t = 10)]
    fields: usize,
    /// uniform, zipfian or latest (default: the workload's).
    #[arg(long, value_parser = parse::<Distribution>)]
    distribution: Option<Distribution>,
    /// Concurrent clients (closed loop: one operation in flight each).
    #[arg(long, alias = "clients", default_value_t = 1)]
    threads: usize,
    /// Connections the clients share (TCP and etcd; HTTP uses one per request in flight).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Stop after this many operations (run phase).
    #[arg(long, conflicts_with = "duration")]
    operations: Option<u64>,
    /// Stop after this many seconds (run phase; default 10).
    #[arg(long)]
    duration: Option<f64>,
    /// Open loop: operations per second over all clients (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Longest scan of workload E (lengths are uniform from 1).
    #[arg(long, default_value_t = 100)]
    scan_length: u32,
    /// Override the workload's read share (0 to 1; all shares must sum to 1).
    #[arg(long)]
    read_proportion: Option<f64>,
    /// Override the update share.
    #[arg(long)]
    update_proportion: Option<f64>,
    /// Override the insert share.
    #[arg(long)]
    insert_proportion: Option<f64>,
    /// Override the scan share.
    #[arg(long)]
    scan_proportion: Option<f64>,
    /// Override the read-modify-write share.
    #[arg(long)]
    rmw_proportion: Option<f64>,
    /// Per-operation timeout (ms).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// No table on stdout and no progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse<T: std::str::FromStr<Err = LoadError>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|e: LoadError| e.to_string())
}

impl Options {
    fn params(&self, phase: Phase) -> Params {
        let mut mix = Mix::for_phase(phase, self.workload);
        if phase == Phase::Run {
            let overrides = [
                (self.read_proportion, &mut mix.read),
                (self.update_proportion, &mut mix.update),
                (self.insert_proportion, &mut mix.insert),
                (self.scan_proportion, &mut mix.scan),
                (self.rmw_proportion, &mut mix.read_modify_write),
            ];
            for (given, share) in overrides {
                if let Some(value) = given {
                    *share = value;
                }
            }
        }
        let stop = match (phase, self.operations, self.duration) {
            (Phase::Load, _, _) => Stop::Operations(self.records),
            (Phase::Run, Some(count), _) => Stop::Operations(count),
            (Phase::Run, None, Some(seconds)) => Stop::DurationSeconds(seconds),
            (Phase::Run, None, None) => Stop::DurationSeconds(10.0),
        };
        Params {
            phase,
            workload: self.workload,
            mix,
            distribution: self
                .distribution
                .unwrap_or(self.workload.default_distribution()),
            record_count: self.records,
            value_size_bytes: self.value_size,
            field_count: self.fields,
            scan_length_max: self.scan_length,
            clients: self.threads,
            connections: self.connections,
            rate_per_second: self.rate,
            stop,
            timeout_ms: self.timeout_ms,
            seed: self.seed,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("harmonydb-loadtest: {error}");
            ExitCode::from(match error {
                LoadError::Parameter(_) => 2,
                LoadError::Unreachable { .. } => 3,
                LoadError::File { .. } | LoadError::Schema { .. } => 1,
            })
        }
    }
}

fn execute(cli: Cli) -> Result<(), LoadError> {
    if let Some(files) = cli.compare {
        let [a_path, b_path] = files.as_slice() else {
            return Err(LoadError::Parameter("--compare takes two files".into()));
        };
        let a = Report::read(a_path)?;
        let b = Report::read(b_path)?;
        if cli.markdown_row {
            println!("{}", compare_markdown_row(&a, &b));
        } else {
            print!("{}", compare(a_path, &a, b_path, &b));
        }
        return Ok(());
    }
    let (phase, options) = match cli.command {
        Some(Command::Load(options)) => (Phase::Load, options),
        Some(Command::Run(options)) => (Phase::Run, options),
        None => {
            return Err(LoadError::Parameter(
                "nothing to do: give `load`, `run` or --compare A.json B.json (see --help)".into(),
            ))
        }
    };
    let params = options.params(phase);
    params.validate()?;
    let endpoints = if options.endpoints.is_empty() {
        vec![options.target.default_endpoint().to_string()]
    } else {
        options.endpoints.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::Parameter(format!("cannot start the async runtime: {e}")))?;
    let report = runtime.block_on(harmonydb_loadtest::run(
        options.target,
        &endpoints,
        &params,
        !options.quiet,
    ))?;
    if !options.quiet {
        print!("{}", report.table());
    }
    if let Some(path) = &options.json {
        report.write(path)?;
    }
    Ok(())
}
