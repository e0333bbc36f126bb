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

/// Which of two stage answers scores higher: on validation when both were validated, else on
/// the search split. `true` when `later` is strictly better than `earlier`.
fn beats(later: &Snapshot, earlier: &Snapshot) -> bool {
    match (later.validation_fitness, earlier.validation_fitness) {
        (Some(l), Some(e)) => l > e,
        _ => later.search_fitness > earlier.search_fitness,
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
    /// The run's result: the answer of the stage that scores best, as (stage, snapshot). A
    /// later stage replaces an earlier stage's answer only when it is strictly better (on
    /// validation when both were validated, else on the search split): the DFS stage of a
    /// `ps+dfs` run searches paths over the PS result, and the path through the PS result's own
    /// layers is that result, so a DFS stage that finds nothing better leaves it the answer.
    pub fn result(&self) -> Option<(usize, &Snapshot)> {
        let mut out: Option<(usize, &Snapshot)> = None;
        for (i, st) in self.stages.iter().enumerate() {
            if let Some(c) = st.chosen()
                && out.is_none_or(|(_, o)| beats(c, o))
            {
                out = Some((i, c));
            }
        }
        out
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_search::{Bounds, OptimizerConfig};

    fn snap(key: &str, search: f64, val: Option<f64>) -> Snapshot {
        Snapshot {
            generation: 0,
            index: 0,
            x: vec![0.5],
            key: key.into(),
            decoded: String::new(),
            search_fitness: search,
            validation_fitness: val,
        }
    }

    fn stage(kind: StageKind, best: Snapshot, validated: Vec<Snapshot>) -> StageState {
        let optimizer: OptimizerConfig = "random".parse().expect("optimizer");
        StageState {
            kind,
            optimizer: optimizer
                .build(
                    Bounds::new(vec![0.0], vec![1.0]).expect("bounds"),
                    &[0.5],
                    0.1,
                    1,
                )
                .expect("build"),
            generations: 1,
            evaluations: 1,
            cache: BTreeMap::new(),
            best: Some(best),
            validated,
            done: true,
        }
    }

    fn run(stages: Vec<StageState>) -> RunState {
        RunState {
            evomerge_version: "test".into(),
            stages,
            elapsed_s: 0.0,
        }
    }

    #[test]
    fn a_later_stage_is_the_result_only_when_it_scores_better() {
        let ps = |v| {
            let s = snap("ps", 0.3, Some(v));
            stage(StageKind::Ps, s.clone(), vec![s])
        };
        let dfs = |v| {
            let s = snap("dfs", 0.4, Some(v));
            stage(StageKind::Dfs, s.clone(), vec![s])
        };
        // The DFS stage validates lower than its start (higher on search): the PS answer stays.
        let r = run(vec![ps(0.228), dfs(0.184)]);
        assert_eq!(
            r.result().map(|(i, s)| (i, s.key.as_str())),
            Some((0, "ps"))
        );
        // A tie keeps the earlier answer (the DFS stage must beat it).
        let r = run(vec![ps(0.2), dfs(0.2)]);
        assert_eq!(r.result().map(|(i, _)| i), Some(0));
        let r = run(vec![ps(0.2), dfs(0.21)]);
        assert_eq!(
            r.result().map(|(i, s)| (i, s.key.as_str())),
            Some((1, "dfs"))
        );
        // A single stage is its own result.
        let r = run(vec![ps(0.1)]);
        assert_eq!(r.result().map(|(i, _)| i), Some(0));
        assert!(run(Vec::new()).result().is_none());
    }

    #[test]
    fn without_validation_the_stages_compare_on_the_search_split() {
        let ps = stage(StageKind::Ps, snap("ps", 0.30, None), Vec::new());
        let dfs = stage(StageKind::Dfs, snap("dfs", 0.35, None), Vec::new());
        let r = run(vec![ps, dfs]);
        assert_eq!(r.result().map(|(i, _)| i), Some(1));
        let ps = stage(StageKind::Ps, snap("ps", 0.30, None), Vec::new());
        let dfs = stage(StageKind::Dfs, snap("dfs", 0.25, None), Vec::new());
        assert_eq!(run(vec![ps, dfs]).result().map(|(i, _)| i), Some(0));
    }
}
