//! The evaluators of an experiment, combined as a weighted sum.

use crate::RunError;
use crate::experiment::EvaluatorSpec;
use evomerge_eval::{Candidate, EvalError, EvalRequest, Evaluator, Score};
use evomerge_eval_classifier::ClassifierEvaluator;
use evomerge_eval_command::CommandEvaluator;
use evomerge_eval_lm::LmEvaluator;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The evaluators of an experiment, combined as a weighted sum.
pub struct Evaluators {
    list: Vec<(Box<dyn Evaluator>, f64)>,
    /// Where each command evaluator writes its temporary candidate folders (`None`: the
    /// system temp dir).
    temp_dirs: Vec<Option<PathBuf>>,
}

impl Evaluators {
    /// Build every evaluator (reading and checking task files now, before any search work).
    pub fn build(specs: &[EvaluatorSpec]) -> Result<Evaluators, RunError> {
        Evaluators::build_for(specs, None)
    }

    /// As [`Evaluators::build`], for the run in `run_dir`: temporary candidate folders are
    /// marked as the run's, so a later process of the run removes what a killed one left.
    pub fn build_for(
        specs: &[EvaluatorSpec],
        run_dir: Option<&Path>,
    ) -> Result<Evaluators, RunError> {
        let mut temp_dirs = Vec::new();
        let mut list: Vec<(Box<dyn Evaluator>, f64)> = Vec::new();
        for spec in specs {
            match spec {
                EvaluatorSpec::Lm {
                    task,
                    weight,
                    batch_size,
                } => {
                    if !task.exists() {
                        return Err(RunError::Config(format!(
                            "task file {} does not exist",
                            task.display()
                        )));
                    }
                    let mut e = LmEvaluator::from_file(task)?;
                    if let Some(b) = batch_size {
                        e = e.with_batch_size(*b);
                    }
                    list.push((Box::new(e), *weight));
                }
                EvaluatorSpec::Command { weight, config } => {
                    let mut e = CommandEvaluator::new(config.clone())
                        .map_err(|e| RunError::Config(e.to_string()))?;
                    if let Some(d) = run_dir {
                        e = e.with_owner(d);
                    }
                    temp_dirs.push(e.temp_dir().map(Path::to_path_buf));
                    list.push((Box::new(e), *weight));
                }
                EvaluatorSpec::Classifier { weight, spec } => {
                    // Data paths were resolved against the experiment file when it was read.
                    list.push((
                        Box::new(ClassifierEvaluator::from_spec(spec, None)?),
                        *weight,
                    ));
                }
            }
        }
        Ok(Evaluators { list, temp_dirs })
    }

    /// Remove the temporary candidate folders a stopped process of the run `run_dir` (or any
    /// dead process on this machine) left behind; says what it removed, also with `--quiet`
    /// (it reports what went wrong before, like a warning).
    pub(crate) fn remove_stale_folders(&self, run_dir: &Path) {
        let mut seen: Vec<&Option<PathBuf>> = Vec::new();
        for t in &self.temp_dirs {
            if seen.contains(&t) {
                continue;
            }
            seen.push(t);
            let removed = evomerge_eval_command::remove_stale_folders(t.as_deref(), run_dir);
            if !removed.is_empty() {
                eprintln!(
                    "removed {} temporary candidate folder(s) a stopped run left: {}",
                    removed.len(),
                    removed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }

    /// Score a candidate: the weighted sum of the evaluators' fitnesses; metrics prefixed with
    /// the evaluator's name when there are several. A candidate failing any evaluator fails.
    pub fn evaluate(
        &self,
        candidate: &dyn Candidate,
        request: &EvalRequest,
    ) -> Result<Score, EvalError> {
        let mut fitness = 0.0;
        let mut terms = Vec::new();
        let mut metrics = BTreeMap::new();
        let mut items = Vec::new();
        for (e, w) in &self.list {
            let s = e.evaluate(candidate, request)?;
            if s.is_failed() {
                return Ok(Score::failed(format!(
                    "{}: {}",
                    e.name(),
                    s.failure
                        .unwrap_or_else(|| format!("fitness {} is not finite", s.fitness))
                )));
            }
            fitness += w * s.fitness;
            terms.push(format!(
                "weight {w:?} x fitness {:?} ({})",
                s.fitness,
                e.name()
            ));
            for (k, v) in s.metrics {
                let key = if self.list.len() > 1 {
                    format!("{}.{k}", e.name())
                } else {
                    k
                };
                metrics.insert(key, v);
            }
            items.extend(s.items);
        }
        if !fitness.is_finite() {
            return Ok(Score::failed(format!(
                "the weighted sum of the evaluators' fitnesses is not finite: {} = {fitness:?}; check the [[evaluators]] weights",
                terms.join(" + ")
            )));
        }
        Ok(Score::new(fitness, metrics, items))
    }
}
