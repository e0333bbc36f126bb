//! Executors: where and how a generation's candidates are scored.
//!
//! - [`DevicePool`]: every device of one box busy. `[execution] devices = ["cuda:0", ...]` (or
//!   a count) with `devices_per_candidate`; each candidate in flight holds its devices (a
//!   [`Lease`]), a device that frees up takes the next pending candidate at once, and each
//!   device's busy time gives its utilization.
//! - [`SlurmExecutor`]: a search spread over a Slurm cluster, one job array per generation;
//!   each task runs `evomerge worker` on its node, which reads its candidate file from the run
//!   folder (shared storage) and writes a score file ([`task`]: the worker protocol).
//!
//! The runner (`evomerge-runner`) reads [`ExecutionSpec`] from the experiment file and drives
//! these; the worker's merging and scoring are the runner's too. This crate only schedules:
//! it knows nothing of recipes, models or evaluators.
//!
//! Not for: merge math, evaluators, optimizers; a home-made cluster protocol (Slurm does that).
//!
//! ```
//! use evomerge_exec::{Device, DevicePool};
//! let devices = vec![Device::parse("cuda:0").unwrap(), Device::parse("cuda:1").unwrap()];
//! let pool = DevicePool::new(devices, 1).unwrap();
//! let mut seen = Vec::new();
//! pool.run(0..4, |job, lease| (job, lease.visible()), |r| seen.push(r));
//! assert_eq!(seen.len(), 4);
//! ```

pub mod devices;
pub mod slurm;
mod spec;
pub mod task;

pub use devices::{Device, DevicePool, Lease, utilization};
pub use slurm::{RunStats, SlurmExecutor, TaskReport};
pub use spec::{DeviceList, ExecKind, ExecutionSpec, SlurmSpec, slurm_time_s};
pub use task::{ScoreFile, TaskFile};

/// What can go wrong scheduling evaluations.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A bad `[execution]` setting (the message names the key).
    #[error("{0}")]
    Config(String),
    /// Reading or writing task, score or job files.
    #[error("{0}")]
    Io(String),
    /// A Slurm command failed (the message holds its stderr).
    #[error("{0}")]
    Slurm(String),
    /// Stopped by a signal; the arrays in flight were cancelled.
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
}
