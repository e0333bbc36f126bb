//! What a run remembers between generations (`state.json`); its CSV logs are in
//! [`crate::log`].

use crate::RunError;
use crate::stage::StageKind;
use evomerge_search::OptimizerState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A scored candidate (search split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Search fitness; `None` for a failed candidate.
    pub fitness: Option<f64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A candidate worth remembering: the best so far, or one scored on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub generation: u64,
    pub index: usize,
    pub x: Vec<f64>,
    pub key: String,
    /// The recipe TOML or the path JSON.
    pub decoded: String,
    pub search_fitness: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fitness: Option<f64>,
}

/// One stage's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageState {
    /// `ps` or `dfs`.
    pub kind: StageKind,
    pub optimizer: OptimizerState,
    /// Completed generations.
    pub generations: u64,
    /// Candidates asked (evaluated or answered from the cache).
    pub evaluations: u64,
    /// Decoded-candidate key -> its search score.
    pub cache: BTreeMap<String, Scored>,
    /// The best search fitness so far.
    pub best: Option<Snapshot>,
    /// Every candidate scored on validation, in order.
    pub validated: Vec<Snapshot>,
    pub done: bool,
}

impl StageState {
    /// The stage's answer: the best on validation if anything was validated, else the best on
    /// the search split.
    pub fn chosen(&self) -> Option<&Snapshot> {
        self.validated
            .iter()
            .filter(|s| s.validation_fitness.is_some())
            .max_by(|a, b| {
                let v = |s: &Snapshot| s.validation_fitness.unwrap_or(f64::NEG_INFINITY);
                v(a).total_cmp(&v(b))
            })
            .or(self.best.as_ref())
    }
}

/// The whole run's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub evomerge_version: String,
    pub stages: Vec<StageState>,
    /// Wall seconds spent by earlier processes of this run.
    pub elapsed_s: f64,
}

/// Test hook: `EVOMERGE_CRASH_AT=state-write:N` aborts the process in the middle of the N-th
/// state write (temporary file written, not yet renamed), `after-row:N` right after the N-th
/// candidate row is logged. Used by the kill tests; never set in normal use.
pub(crate) fn crash_point(kind: &str, count: u64) {
    if let Ok(spec) = std::env::var("EVOMERGE_CRASH_AT")
        && let Some((k, n)) = spec.split_once(':')
        && k == kind
        && n.parse::<u64>().ok() == Some(count)
    {
        eprintln!("EVOMERGE_CRASH_AT={spec}: aborting");
        std::process::abort();
    }
}

impl RunState {
    /// Write atomically: temporary file, fsync, rename, fsync the folder.
    pub fn save(&self, path: &Path, write_count: u64) -> Result<(), RunError> {
        let json = serde_json::to_vec(self)?;
        evomerge_checkpoint::atomic::write_atomic_then(path, &json, || {
            crash_point("state-write", write_count)
        })?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<RunState, RunError> {
        let text = std::fs::read_to_string(path).map_err(|source| RunError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| {
            RunError::Config(format!(
                "{}: not a run state ({e}); the file is damaged",
                path.display()
            ))
        })
    }
}
