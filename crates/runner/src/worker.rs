//! `evomerge worker TASK_FILE`: what one Slurm array task does on its node.
//!
//! It reads its task file ([`evomerge_exec::TaskFile`]: the run folder, the stage, the decoded
//! recipe or layer path, split, generation and seed), builds what the runner would
//! ([`Setup`] from the run's `run.toml`, the stage's search space), merges and scores the
//! candidate with the run's evaluators exactly as the local executor does, and writes the
//! score file next to the task file atomically. A candidate that fails to build or score is a
//! score file with its error (exit status 0); a setup that cannot work (a model folder the node
//! does not see, a broken task file) is an error and a non-zero exit, which the runner counts
//! as a failed task and resubmits.

use crate::RunError;
use crate::evaluators::Evaluators;
use crate::executor::Scorer;
use crate::experiment::Experiment;
use crate::run::read_run_toml;
use crate::setup::{Setup, build_space};
use crate::space::Decoded;
use crate::stage::StageKind;
use crate::state::RunState;
use evomerge_eval::{EvalRequest, Split};
use evomerge_exec::{ScoreFile, TaskFile, task};
use evomerge_merge::Recipe;
use std::path::{Path, PathBuf};

/// Score the candidate of `task_file` and write its score file; returns the score file.
pub fn run_worker(task_file: &Path) -> Result<PathBuf, RunError> {
    let t = TaskFile::read(task_file).map_err(|e| RunError::Config(e.to_string()))?;
    let score_path = task::score_path_of(task_file);
    let value = read_run_toml(&t.run_dir)?;
    let exp = Experiment::from_value(value)
        .map_err(|e| RunError::Config(format!("{}: {e}", t.run_dir.join("run.toml").display())))?;
    let mut setup = Setup::new(&exp, &t.run_dir)?;
    // The worker's temporary folders are its own: a runner resuming the run on this host
    // must not take them for a dead process's.
    setup.evaluators = Evaluators::build(&exp.evaluators)?;
    let kinds = StageKind::of(exp.genome.kind);
    let kind: StageKind = t
        .kind
        .parse()
        .map_err(|e| RunError::Config(format!("{}: {e}", task_file.display())))?;
    let stage = kinds.iter().position(|k| *k == kind).ok_or_else(|| {
        RunError::Config(format!(
            "{}: the run has no {} stage",
            task_file.display(),
            t.kind
        ))
    })?;
    let state_path = t.run_dir.join("state.json");
    let state = if stage > 0 {
        RunState::load(&state_path)?
    } else {
        RunState {
            evomerge_version: env!("CARGO_PKG_VERSION").into(),
            stages: Vec::new(),
            elapsed_s: 0.0,
        }
    };
    let space = build_space(&t.run_dir, &exp, &setup, &state, stage, kind)?;
    let decoded = match kind {
        StageKind::Ps => Decoded::Recipe(Box::new(Recipe::from_toml(&t.candidate)?)),
        StageKind::Dfs => Decoded::Path(serde_json::from_str(&t.candidate).map_err(|e| {
            RunError::Config(format!("{}: the layer path: {e}", task_file.display()))
        })?),
    };
    let split: Split = t
        .split
        .parse()
        .map_err(|e: String| RunError::Config(format!("{}: {e}", task_file.display())))?;
    let request = EvalRequest::new(split, t.generation, t.seed);
    let scorer = Scorer {
        space: &space,
        evaluators: &setup.evaluators,
    };
    let f = scorer.run(t.index, &decoded, &t.label, &request)?;
    let score = ScoreFile {
        key: t.key.clone(),
        fitness: f.scored.fitness,
        metrics: f.scored.metrics,
        error: f.scored.error,
        merge_ms: f.merge_ms,
        eval_ms: f.eval_ms,
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    task::write_json(&score_path, &score).map_err(|e| RunError::Config(e.to_string()))?;
    Ok(score_path)
}
