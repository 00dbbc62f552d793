//! Workloads: YCSB's core workloads A to F and a write-only one, as an
//! operation mix and a key distribution, and the parameters of a run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// A named workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Update heavy: 50% reads, 50% updates, zipfian.
    A,
    /// Read mostly: 95% reads, 5% updates, zipfian.
    B,
    /// Read only, zipfian.
    C,
    /// Read latest: 95% reads, 5% inserts, the newest records most popular.
    D,
    /// Short ranges: 95% scans, 5% inserts, zipfian start keys.
    E,
    /// Read-modify-write: 50% reads, 50% read-modify-writes (compare-and-set), zipfian.
    F,
    /// 100% updates, zipfian (not a YCSB core workload; for write throughput).
    WriteOnly,
}

impl Workload {
    /// Every workload, in order.
    pub const ALL: [Workload; 7] = [
        Workload::A,
        Workload::B,
        Workload::C,
        Workload::D,
        Workload::E,
        Workload::F,
        Workload::WriteOnly,
    ];

    /// The workload's operation mix.
    pub fn mix(self) -> Mix {
        let mix = |read, update, insert, scan, read_modify_write| Mix {
            read,
            update,
            insert,
            scan,
            read_modify_write,
        };
        match self {
            Workload::A => mix(0.5, 0.5, 0.0, 0.0, 0.0),
            Workload::B => mix(0.95, 0.05, 0.0, 0.0, 0.0),
            Workload::C => mix(1.0, 0.0, 0.0, 0.0, 0.0),
            Workload::D => mix(0.95, 0.0, 0.05, 0.0, 0.0),
            Workload::E => mix(0.0, 0.0, 0.05, 0.95, 0.0),
            Workload::F => mix(0.5, 0.0, 0.0, 0.0, 0.5),
            Workload::WriteOnly => mix(0.0, 1.0, 0.0, 0.0, 0.0),
        }
    }

    /// The workload's key distribution unless one is given.
    pub fn default_distribution(self) -> Distribution {
        match self {
            Workload::D => Distribution::Latest,
            _ => Distribution::Zipfian,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::E => "e",
            Workload::F => "f",
            Workload::WriteOnly => "write-only",
        })
    }
}

impl FromStr for Workload {
    type Err = LoadError;

    fn from_str(text: &str) -> Result<Workload, LoadError> {
        Workload::ALL
            .into_iter()
            .find(|w| w.to_string().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                LoadError::Parameter(format!(
                    "unknown workload {text:?}: expected one of a, b, c, d, e, f, write-only"
                ))
            })
    }
}

/// How records are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Every record alike.
    Uniform,
    /// YCSB's scrambled zipfian, theta 0.99.
    Zipfian,
    /// The newest records most popular (zipfian back from the newest).
    Latest,
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
            Distribution::Latest => "latest",
        })
    }
}

impl FromStr for Distribution {
    type Err = LoadError;

    fn from_str(text: &str) -> Result<Distribution, LoadError> {
        match text.to_ascii_lowercase().as_str() {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" => Ok(Distribution::Zipfian),
            "latest" => Ok(Distribution::Latest),
            _ => Err(LoadError::Parameter(format!(
                "unknown distribution {text:?}: expected uniform, zipfian or latest"
            ))),
        }
    }
}

/// The share of each operation; the shares sum to 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    /// Reads of one record.
    pub read: f64,
    /// Overwrites of one existing record.
    pub update: f64,
    /// Writes of a new record.
    pub insert: f64,
    /// Short ordered scans.
    pub scan: f64,
    /// Read, then compare-and-set at the version read.
    pub read_modify_write: f64,
}

impl Mix {
    /// What a phase runs: the load phase only inserts; the run phase runs
    /// `workload`'s mix.
    pub fn for_phase(phase: Phase, workload: Workload) -> Mix {
        match phase {
            Phase::Load => Mix {
                read: 0.0,
                update: 0.0,
                insert: 1.0,
                scan: 0.0,
                read_modify_write: 0.0,
            },
            Phase::Run => workload.mix(),
        }
    }

    /// Checks each share is in [0, 1] and that they sum to 1.
    pub fn validate(&self) -> Result<(), LoadError> {
        let shares = [
            ("read", self.read),
            ("update", self.update),
            ("insert", self.insert),
            ("scan", self.scan),
            ("read-modify-write", self.read_modify_write),
        ];
        for (name, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                return Err(LoadError::Parameter(format!(
                    "{name} proportion {share} is out of range: expected 0 to 1"
                )));
            }
        }
        let sum: f64 = shares.iter().map(|(_, s)| s).sum();
        if (sum - 1.0).abs() > 1e-6 {
            return Err(LoadError::Parameter(format!(
                "operation proportions sum to {sum}, not 1"
            )));
        }
        Ok(())
    }
}

/// When a phase stops.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this many operations, over all clients.
    Operations(u64),
    /// After this long (seconds).
    DurationSeconds(f64),
}

impl Stop {
    /// The duration, if the phase is timed.
    pub fn duration(&self) -> Option<Duration> {
        match self {
            Stop::DurationSeconds(seconds) => Some(Duration::from_secs_f64(*seconds)),
            Stop::Operations(_) => None,
        }
    }
}

/// Which phase: loading the records, or running the workload over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Insert records `[0, record_count)`.
    Load,
    /// Run the operation mix.
    Run,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Load => "load",
            Phase::Run => "run",
        })
    }
}

/// Everything that defines a phase, as recorded in the JSON output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Load or run.
    pub phase: Phase,
    /// The workload (its mix unless overridden).
    pub workload: Workload,
    /// The operation mix used (for the load phase: all inserts).
    pub mix: Mix,
    /// How records are chosen.
    pub distribution: Distribution,
    /// Records loaded (run phase: records assumed present).
    pub record_count: u64,
    /// Bytes per value.
    pub value_size_bytes: usize,
    /// Fields per value, concatenated (see `generator::record_value`).
    pub field_count: usize,
    /// Longest scan (scans are uniform in 1..=this).
    pub scan_length_max: u32,
    /// Concurrent clients (closed loop: each has one operation in flight).
    pub clients: usize,
    /// Connections the clients share (requests pipelined on each).
    pub connections: usize,
    /// Open loop: operations per second over all clients; `None` = closed loop.
    pub rate_per_second: Option<f64>,
    /// When the phase stops.
    pub stop: Stop,
    /// Per-operation timeout (ms).
    pub timeout_ms: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Params {
    /// Checks what can be checked before connecting.
    pub fn validate(&self) -> Result<(), LoadError> {
        self.mix.validate()?;
        if self.clients == 0 {
            return Err(LoadError::Parameter(
                "clients (--threads) must be at least 1".into(),
            ));
        }
        if self.connections == 0 {
            return Err(LoadError::Parameter(
                "connections must be at least 1".into(),
            ));
        }
        if self.record_count == 0 {
            return Err(LoadError::Parameter(
                "record count must be at least 1".into(),
            ));
        }
        if self.field_count == 0 {
            return Err(LoadError::Parameter(
                "field count must be at least 1".into(),
            ));
        }
        if self.scan_length_max == 0 {
            return Err(LoadError::Parameter(
                "scan length must be at least 1".into(),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(LoadError::Parameter("timeout must be at least 1 ms".into()));
        }
        if let Some(rate) = self.rate_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(LoadError::Parameter(format!(
                    "rate {rate} must be a positive number of operations per second"
                )));
            }
        }
        match self.stop {
            Stop::Operations(0) => Err(LoadError::Parameter(
                "operation count must be at least 1".into(),
            )),
            Stop::DurationSeconds(s) if !(s.is_finite() && s > 0.0) => Err(LoadError::Parameter(
                format!("duration {s} s must be positive"),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_mix_is_valid_and_names_round_trip() {
        for workload in Workload::ALL {
            workload.mix().validate().expect("valid mix");
            assert_eq!(
                workload.to_string().parse::<Workload>().ok(),
                Some(workload)
            );
        }
        assert!("g".parse::<Workload>().is_err());
        assert!("zipf".parse::<Distribution>().is_err());
    }

    #[test]
    fn mixes_out_of_range_are_refused() {
        let mut mix = Workload::A.mix();
        mix.read = 1.5;
        mix.update = -0.5;
        let error = mix.validate().expect_err("out of range");
        assert!(error.to_string().contains("out of range"), "{error}");
        let mut mix = Workload::A.mix();
        mix.read = 0.7;
        assert!(mix.validate().expect_err("sum").to_string().contains("sum"));
    }
}
