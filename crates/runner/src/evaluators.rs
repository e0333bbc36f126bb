//! The evaluators of an experiment, combined as a weighted sum, and the list of evaluator
//! kinds ([`KINDS`]) the experiment file's `[[evaluators]]` tables dispatch on.

use crate::RunError;
use crate::experiment::EvaluatorSpec;
use evomerge_eval::{
    BuildContext, Candidate, EvalError, EvalRequest, Evaluator, EvaluatorKind, HeldDevice, Score,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every evaluator kind an experiment can name (`[[evaluators]] kind = "NAME"`). A new
/// evaluator is a crate in `evaluators/` exporting its [`EvaluatorKind`] and one line here.
pub(crate) static KINDS: &[&dyn EvaluatorKind] = &[
    &evomerge_eval_lm::LmKind,
    &evomerge_eval_command::CommandKind,
    &evomerge_eval_classifier::ClassifierKind,
    #[cfg(feature = "test-evaluator")]
    &crate::test_evaluator::TestLoglikKind,
];

/// The kind named `name`.
pub(crate) fn kind_named(name: &str) -> Option<&'static dyn EvaluatorKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// The evaluators of an experiment, combined as a weighted sum.
pub struct Evaluators {
    list: Vec<(Box<dyn Evaluator>, f64)>,
    /// Where evaluators write temporary candidate folders (`None`: the system temp dir), with
    /// the first evaluator writing there (it cleans up what a stopped process left).
    temp_dirs: Vec<(Option<PathBuf>, EvaluatorSpec)>,
    /// The devices an evaluation holds when its request names none (validation and the test
    /// table of a run with `[execution] devices`, scored between generations).
    default_devices: Vec<HeldDevice>,
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
        let ctx = BuildContext { run_dir };
        for spec in specs {
            let e = spec.config().build(&ctx).map_err(|e| match e {
                EvalError::Config(m) => RunError::Config(m),
                e => RunError::Eval(e),
            })?;
            if let Some(t) = spec.config().temp_root() {
                temp_dirs.push((t, spec.clone()));
            }
            list.push((e, spec.weight));
        }
        Ok(Evaluators {
            list,
            temp_dirs,
            default_devices: Vec::new(),
        })
    }

    /// Remove the temporary candidate folders a stopped process of the run `run_dir` (or any
    /// dead process on this machine) left behind; says what it removed, also with `--quiet`
    /// (it reports what went wrong before, like a warning).
    pub(crate) fn remove_stale_folders(&self, run_dir: &Path) {
        let mut seen: Vec<&Option<PathBuf>> = Vec::new();
        for (t, spec) in &self.temp_dirs {
            if seen.contains(&t) {
                continue;
            }
            seen.push(t);
            let removed = spec.config().remove_stale_folders(run_dir);
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

    /// Hold `devices` for every evaluation whose request holds none.
    pub fn with_default_devices(mut self, devices: Vec<HeldDevice>) -> Evaluators {
        self.default_devices = devices;
        self
    }

    /// Score a candidate: the weighted sum of the evaluators' fitnesses; metrics prefixed with
    /// the evaluator's name when there are several. A candidate failing any evaluator fails.
    pub fn evaluate(
        &self,
        candidate: &dyn Candidate,
        request: &EvalRequest,
    ) -> Result<Score, EvalError> {
        let with_devices;
        let request = if request.devices.is_empty() && !self.default_devices.is_empty() {
            with_devices = request.clone().with_devices(self.default_devices.clone());
            &with_devices
        } else {
            request
        };
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
