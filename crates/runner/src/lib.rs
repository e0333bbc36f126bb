//! Experiments: long-running searches over merge recipes, that survive a crash.
//!
//! `evomerge run EXPERIMENT.toml` reads an [`Experiment`] (sources, genome, optimizer,
//! evaluators, budget), searches, and leaves everything in `OUTPUT/NAME/RUN_ID/`:
//!
//! | file | what |
//! |---|---|
//! | `run.toml` | the resolved experiment (absolute paths) and a `[run]` table: id, evomerge version, start time |
//! | `state.json` | optimizer state with its RNG, evaluation cache, best-so-far, validation history; written atomically after every generation |
//! | `candidates.csv` | one row per candidate (see below) |
//! | `generations.csv` | one row per generation (see below) |
//! | `best.toml` | the best recipe (parameter-space stages), runnable by `evomerge merge` |
//! | `best_path.json` | the best layer path (data-flow stages) with its models |
//! | `results.csv`, `results.md` | the final test table: best, every source, untuned baselines |
//! | `plots/*.png`, `plots/*.svg` | fitness vs evaluations, best genome heatmap, DFS path |
//!
//! A `ps+dfs` run has two stages; the second stage's logs are `dfs_candidates.csv` and
//! `dfs_generations.csv` (same columns), its plots `plots/dfs_*`.
//!
//! `candidates.csv` columns, in order: `stage` (`ps` or `dfs`), `generation`, `index` (within
//! the generation), `status` (`ok`, `failed`, `cached`), `fitness` (search split; empty when
//! failed), `metrics` (JSON object of the evaluators' metrics), `merge_ms`, `eval_ms`, `key`
//! (hex hash of the decoded recipe/path, the cache key), `error`, then the decoded parameters
//! (PS: one column per gene with readable names such as `g0.model1.weight`, plus `method`;
//! DFS: `hops` and `path`, the path written `m:l*scale` hop after hop, e.g. `0:0*1.000 1:3*0.900`),
//! then the raw genome values `x.0 .. x.{n-1}` (only when n <= 256).
//!
//! `generations.csv` columns: `stage`, `generation`, `evaluations` (cumulative, this stage),
//! `best` (best search fitness so far), `gen_best`, `mean`, `q25`, `median`, `q75` (of the
//! generation's valid fitnesses), `sigma` (optimizer step size, empty if none), `failed`
//! (count), `elapsed_s` (cumulative wall time of the run), `validation` (the validation
//! fitness of the best-so-far when it was scored this generation, else empty).
//!
//! `results.csv` columns: `name`, `kind` (`best`, `source`, `baseline`), `split`, `fitness`,
//! `metrics` (JSON).
//!
//! Sources that are `EvomergeMlp` classifier checkpoints make MLP candidates instead of language
//! models: a parameter-space search over them is scored by `[[evaluators]] kind = "classifier"`
//! (the `evomerge-eval-classifier` settings); layer paths and the `lm` evaluator need decoders.
//!
//! Where things are: [`start`] / [`resume`] (`run.rs`) check everything (`setup.rs`) before the
//! run folder exists, then run each stage (`stage.rs`: per generation ask, dedupe, evaluate,
//! tell, log) and the report (`report.rs`). The evaluate step goes through an [`Executor`]
//! (`executor.rs`; the devices and Slurm executors in `executor/`): a new executor is a module
//! there plus one arm in [`executor::for_experiment`]. The logs' columns are one typed schema
//! ([`log`]), which resume, [`plot`] and [`compare`] read. Evaluators come from a kind list
//! (`evaluators.rs`, `KINDS`): a new evaluator is a crate in `evaluators/` with its
//! `evomerge_eval::EvaluatorKind` plus one line there (`test_evaluator.rs` is an example).
//! Every file a user keeps is written with `evomerge_checkpoint::write_atomic`.
//!
//! Not for: merge math, optimizers, model execution (the crates below it).

pub mod compare;
mod evaluators;
pub mod executor;
mod experiment;
mod export;
mod lock;
pub mod log;
pub mod plot;
mod progress;
mod report;
mod run;
mod setup;
mod space;
mod stage;
mod state;
#[cfg(feature = "test-evaluator")]
pub mod test_evaluator;
mod worker;

pub use compare::{ComparisonSummary, compare_runs};
pub use evaluators::Evaluators;
pub use executor::{Batch, Executor, Finished, Job, LocalPool, Scorer};
pub use experiment::{
    BaselineSpec, Budget, EvaluatorSpec, Experiment, ExperimentError, GenomeKind, GenomeSpec,
    ReportSpec, SourcesSpec, ValidationSpec,
};
pub use export::{ExportFormat, export_run};
pub use lock::RunLock;
pub use log::{CandidateRow, GenerationRow, ResultRow, Status};
pub use plot::{PlotError, plot_run};
pub use progress::{Progress, eprint_line};
pub use report::{
    checkpoint_candidate, mlp_checkpoint_candidate, mlp_recipe_candidate, path_candidate,
    recipe_candidate, recipe_candidate_as, recipe_candidate_pooled,
};
pub use run::{RunOptions, resume, start, stop_on_signals};
pub use space::{Decoded, key_of, path_text};
pub use stage::{StageKind, stage_files};
pub use state::{RunState, Scored, Snapshot, StageState};
pub use worker::run_worker;

/// What can stop a run. Each message names the file, model or key involved.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The experiment (or run folder) is wrong.
    #[error("{0}")]
    Config(String),
    /// Reading or writing a run file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON document of the run (a logged layer path, the state) does not parse.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Merge(#[from] evomerge_merge::MergeError),
    #[error(transparent)]
    Genome(#[from] evomerge_genome::GenomeError),
    #[error(transparent)]
    Search(#[from] evomerge_search::SearchError),
    #[error(transparent)]
    Model(#[from] evomerge_models::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] evomerge_checkpoint::CheckpointError),
    /// The evaluation setup is broken (the same for every candidate).
    #[error("evaluation: {0}")]
    Eval(#[from] evomerge_eval::EvalError),
    /// Another process works on the run folder (names its PID).
    #[error("{0}")]
    Locked(String),
    /// Every candidate failed: the message gives the count and the first error.
    #[error("{0}")]
    NoSuccess(String),
    /// SIGINT/SIGTERM: the evaluations in progress were stopped, their folders removed, and
    /// everything finished is in the run folder.
    #[error("{}", interrupted_message(.signal, .dir))]
    Interrupted {
        signal: i32,
        dir: std::path::PathBuf,
    },
}

impl From<evomerge_checkpoint::AtomicWriteError> for RunError {
    fn from(e: evomerge_checkpoint::AtomicWriteError) -> RunError {
        RunError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Text on one line (newlines and tabs become spaces, runs of spaces one), cut to `max`
/// characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}...")
    }
}

impl RunError {
    /// The exit status a command line should end with: 128 + the signal for an interrupted
    /// run (130 for Ctrl-C, 143 for SIGTERM), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Interrupted { signal, .. } => 128 + signal,
            _ => 1,
        }
    }
}

fn interrupted_message(signal: &i32, dir: &std::path::Path) -> String {
    let name = match *signal {
        libc::SIGINT => "SIGINT (Ctrl-C)".to_string(),
        libc::SIGTERM => "SIGTERM".to_string(),
        s => format!("signal {s}"),
    };
    format!(
        "interrupted by {name}: the evaluations in progress were stopped and their temporary folders removed; every finished evaluation is kept in {dir}. Continue with `evomerge resume {dir}`",
        dir = dir.display()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_flattens_multi_line_text() {
        assert_eq!(super::one_line("a\nb\r\n  c\td", 100), "a b c d");
        assert_eq!(super::one_line("abcdef", 3), "abc...");
    }
}
