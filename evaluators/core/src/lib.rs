//! The `Evaluator` trait: score a merge candidate on a split.
//!
//! A [`Candidate`] is what a search produced and wants scored: merged tensors in memory (a
//! parameter-space merge, [`MergedCandidate`]) or a layer path over loaded source models (a
//! data-flow merge, [`PathCandidate`]). An evaluator either runs it in process (its
//! [`Candidate::language_model`]: forward, generate, log-likelihood without touching the disk)
//! or writes it as a Hugging Face folder for an external tool ([`Candidate::write_hf_folder`]).
//!
//! An [`Evaluator`] returns a [`Score`]: the fitness (higher is better), named metrics and one
//! [`ItemResult`] per item (kept for paired comparisons between candidates and for cheaper
//! fitness estimates later). Two kinds of failure are kept apart:
//! - the candidate fails (a crashed external command, NaN outputs): `Ok(Score::failed(..))`,
//!   which the search ranks last and logs, and goes on;
//! - the evaluation itself cannot run (a broken task file, a prompt longer than the context):
//!   `Err(EvalError)`, which is the same for every candidate and should stop the run.
//!
//! Implementations: `evomerge-eval-lm` (in-process tasks from JSONL + TOML),
//! `evomerge-eval-command` (any external command, e.g. lm-evaluation-harness with vLLM) and
//! `evomerge-eval-classifier` (MLP classifiers on a data split).
//!
//! A new evaluator is a new crate in `evaluators/`: it implements [`Evaluator`], exports its
//! config type (serde, `deny_unknown_fields`) with an [`EvaluatorConfig`] impl that builds it,
//! and an [`EvaluatorKind`] (its `kind` name, the [`ModelFamily`]s it scores, its path
//! resolution, its parser); then one line in the runner's kind list
//! (`crates/runner/src/evaluators.rs`, `KINDS`) makes `[[evaluators]] kind = "NAME"` work.
//!
//! Not for: merging, searching, logging (the runner's job).
//!
//! ```no_run
//! use evomerge_eval::{Candidate, EvalRequest, Evaluator, MergedCandidate, Split};
//! # fn demo(evaluator: &dyn Evaluator, candidate: &MergedCandidate) -> Result<(), evomerge_eval::EvalError> {
//! let score = evaluator.evaluate(candidate, &EvalRequest::new(Split::Search, 0, 42))?;
//! if score.is_failed() {
//!     eprintln!("candidate failed: {}", score.failure.as_deref().unwrap_or(""));
//! } else {
//!     println!("fitness {} metrics {:?}", score.fitness, score.metrics);
//! }
//! # Ok(()) }
//! ```

mod candidate;
pub mod interrupt;
pub mod kind;

pub use candidate::{
    Candidate, ExportError, MergedCandidate, MlpCandidate, PathCandidate, PathExporter,
};
pub use kind::{BuildContext, EvaluatorConfig, EvaluatorKind, ModelFamily};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Which part of a task's data to score on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// What the search optimises (possibly subsampled per generation).
    Search,
    /// Held out from the search, to pick the snapshot to keep.
    Validation,
    /// Reported at the end only.
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Search, Split::Validation, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Search => "search",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "search" | "train" => Ok(Split::Search),
            "validation" | "val" | "valid" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => Err(format!(
                "unknown split '{other}' (use search, validation or test)"
            )),
        }
    }
}

/// What to evaluate: the split, and the search generation and run seed that fix the item
/// subsample (every candidate of one generation sees the same items); and the devices this
/// evaluation holds, when the run spreads candidates over several (`[execution] devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRequest {
    pub split: Split,
    pub generation: u64,
    pub seed: u64,
    /// The devices held for this evaluation (empty: none were assigned). A command evaluator
    /// sets `CUDA_VISIBLE_DEVICES` / `HIP_VISIBLE_DEVICES` to their indices.
    pub devices: Vec<HeldDevice>,
}

/// A device an evaluation holds: its name in the experiment (`cuda:1`) and the index the
/// tools see (`CUDA_VISIBLE_DEVICES=1`, or the wgpu adapter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDevice {
    pub name: String,
    pub index: usize,
}

impl EvalRequest {
    pub fn new(split: Split, generation: u64, seed: u64) -> EvalRequest {
        EvalRequest {
            split,
            generation,
            seed,
            devices: Vec::new(),
        }
    }

    /// The same request, holding `devices`.
    pub fn with_devices(mut self, devices: Vec<HeldDevice>) -> EvalRequest {
        self.devices = devices;
        self
    }

    /// The held devices' indices, comma-separated (`1,3`; empty when none are held).
    pub fn visible_devices(&self) -> String {
        self.devices
            .iter()
            .map(|d| d.index.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The result of one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// Stable id of the item (its `id` field, or its index in the task file).
    pub id: String,
    /// The item's contribution to the fitness (1/0 for accuracy, a log-likelihood, ...).
    pub score: f64,
    /// Whether the answer was right, for tasks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// What the model produced (generation tasks) or chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Other per-item numbers (token counts, language share, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

impl ItemResult {
    pub fn new(id: impl Into<String>, score: f64) -> ItemResult {
        ItemResult {
            id: id.into(),
            score,
            correct: None,
            output: None,
            extra: BTreeMap::new(),
        }
    }
}

/// A candidate's score on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Higher is better. NaN when the candidate failed.
    pub fitness: f64,
    /// Named metrics (`acc`, `acc_norm`, `perplexity`, ...), the fitness among them.
    pub metrics: BTreeMap<String, f64>,
    /// Per-item results, in item order.
    pub items: Vec<ItemResult>,
    /// Why the candidate failed (with the tail of an external command's stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Score {
    /// A score from a fitness and metrics.
    pub fn new(fitness: f64, metrics: BTreeMap<String, f64>, items: Vec<ItemResult>) -> Score {
        Score {
            fitness,
            metrics,
            items,
            failure: None,
        }
    }

    /// A failed candidate: NaN fitness (the search ranks it last) and the reason.
    pub fn failed(reason: impl Into<String>) -> Score {
        Score {
            fitness: f64::NAN,
            metrics: BTreeMap::new(),
            items: Vec::new(),
            failure: Some(reason.into()),
        }
    }

    /// Whether the candidate failed.
    pub fn is_failed(&self) -> bool {
        self.failure.is_some() || !self.fitness.is_finite()
    }

    /// The value a minimising optimizer is told: `-fitness`, or `None` for a failure.
    pub fn to_minimize(&self) -> Option<f64> {
        (!self.is_failed()).then_some(-self.fitness)
    }
}

/// Why an evaluation could not run at all (the same for every candidate: fix the setup).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The task or evaluator configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// A data file is wrong; names the file and line.
    #[error("{file}:{line}: {message}")]
    Data {
        file: String,
        line: usize,
        message: String,
    },
    /// The model cannot run the task (context too short, unsupported architecture, ...).
    #[error(transparent)]
    Model(#[from] evomerge_models::ModelError),
    /// The candidate cannot be run or exported the way this evaluator needs.
    #[error("candidate: {0}")]
    Candidate(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The process was asked to stop (SIGINT/SIGTERM, see [`interrupt`]); what was running
    /// was stopped and its temporary files removed.
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
}

/// Scores candidates on a task.
pub trait Evaluator: Send + Sync {
    /// A short name for logs and CSV columns.
    fn name(&self) -> &str;

    /// Score `candidate` on `request.split`. A candidate that breaks returns
    /// `Ok(Score::failed(..))`; `Err` means the evaluation setup itself is broken.
    fn evaluate(
        &self,
        candidate: &dyn Candidate,
        request: &EvalRequest,
    ) -> Result<Score, EvalError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_scores_rank_as_failures() {
        let f = Score::failed("boom");
        assert!(f.is_failed());
        assert_eq!(f.to_minimize(), None);
        let ok = Score::new(0.75, BTreeMap::new(), vec![]);
        assert_eq!(ok.to_minimize(), Some(-0.75));
        let j = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<Score>(&j).unwrap(), ok);
    }

    #[test]
    fn split_names() {
        for s in Split::ALL {
            assert_eq!(s.as_str().parse::<Split>().unwrap(), s);
        }
        assert!("dev".parse::<Split>().unwrap_err().contains("validation"));
    }
}
