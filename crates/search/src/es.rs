//! What a CMA-ES run does around its distribution update: the pending generation, the
//! counters, the fitness history and the termination tests that do not depend on the
//! covariance model. Shared by [`crate::Cma`] and [`crate::SepCma`].

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::optimizer::{Progress, check_fitness_len, ranking, valid};
use crate::termination::FitnessHistory;
use crate::{BoundaryMode, Bounds, SearchError, Termination, Tolerances};

/// Largest step size an update may produce (as in the `cmaes` library).
pub(crate) const SIGMA_MAX: f64 = 1e32;

/// Checks the arguments every optimizer starts from.
pub(crate) fn check_start(bounds: &Bounds, x0: &[f64], sigma0: f64) -> Result<(), SearchError> {
    bounds.check_x0(x0)?;
    if !(sigma0 > 0.0 && sigma0.is_finite()) {
        return Err(SearchError::InvalidSigma(sigma0));
    }
    Ok(())
}

/// Checks an optional population size (at least `min`).
pub(crate) fn check_population(
    name: &'static str,
    size: Option<usize>,
    min: usize,
) -> Result<(), SearchError> {
    match size {
        Some(s) if s < min => Err(SearchError::InvalidSetting {
            name,
            value: s.to_string(),
            reason: format!("must be at least {min}"),
        }),
        _ => Ok(()),
    }
}

/// Checks an optional evaluation budget.
pub(crate) fn check_budget(max_evaluations: Option<u64>) -> Result<(), SearchError> {
    if max_evaluations == Some(0) {
        return Err(SearchError::InvalidSetting {
            name: "max_evaluations",
            value: "0".into(),
            reason: "must be at least 1 (leave it out for no budget)".into(),
        });
    }
    Ok(())
}

/// One told generation, in rank order (best first; failed candidates last).
pub(crate) struct Told {
    /// Genotypes in rank order.
    pub genotypes: Vec<Vec<f64>>,
    /// Whether each ranked candidate has a valid fitness.
    pub valid: Vec<bool>,
}

/// State of an evolution-strategy run apart from the distribution parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct EsRun {
    pub bounds: Bounds,
    pub boundary: BoundaryMode,
    pub tolerances: Tolerances,
    pub max_evaluations: Option<u64>,
    pub sigma0: f64,
    pub rng: ChaCha8Rng,
    /// Genotypes of the generation handed out by `ask` and not yet told.
    pub pending: Option<Vec<Vec<f64>>>,
    pub progress: Progress,
    pub history: FitnessHistory,
    pub failed_streak: u32,
    pub stop: Option<Termination>,
}

impl EsRun {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bounds: Bounds,
        boundary: BoundaryMode,
        tolerances: Tolerances,
        max_evaluations: Option<u64>,
        sigma0: f64,
        seed: u64,
        lambda: usize,
    ) -> Self {
        let history = FitnessHistory::new(bounds.dim(), lambda, &tolerances);
        EsRun {
            bounds,
            boundary,
            tolerances,
            max_evaluations,
            sigma0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            pending: None,
            progress: Progress::default(),
            history,
            failed_streak: 0,
            stop: None,
        }
    }

    /// The pending generation's candidates, drawing `lambda` new genotypes with `sample` first
    /// if none is pending. `sample(rng, out)` writes one unconstrained genotype.
    pub fn ask_with(
        &mut self,
        lambda: usize,
        mut sample: impl FnMut(&mut ChaCha8Rng, &mut [f64]),
    ) -> Vec<Vec<f64>> {
        if self.pending.is_none() {
            let rng = &mut self.rng;
            let genotypes = (0..lambda)
                .map(|_| self.boundary.draw(&self.bounds, |out| sample(rng, out)))
                .collect();
            self.pending = Some(genotypes);
        }
        self.pending
            .as_ref()
            .map(|g| {
                g.iter()
                    .map(|x| self.boundary.phenotype(&self.bounds, x))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Validates and records a `tell`. Returns the ranked generation, or `None` when no
    /// candidate had a valid fitness (the distribution must then stay as it is).
    pub fn take_told(&mut self, fitness: &[Option<f64>]) -> Result<Option<Told>, SearchError> {
        let expected = self
            .pending
            .as_ref()
            .ok_or(SearchError::NoPendingGeneration)?
            .len();
        check_fitness_len(expected, fitness)?;
        let mut genotypes = self.pending.take().unwrap_or_default();
        let (boundary, bounds) = (self.boundary, &self.bounds);
        self.progress
            .record(fitness, |i| boundary.phenotype(bounds, &genotypes[i]));
        let order = ranking(fitness);
        let sorted: Vec<f64> = order.iter().filter_map(|&i| valid(fitness[i])).collect();
        self.history.push(&sorted);
        if sorted.is_empty() {
            self.failed_streak += 1;
            return Ok(None);
        }
        self.failed_streak = 0;
        let valid_ranked = order.iter().map(|&i| valid(fitness[i]).is_some()).collect();
        let ranked = order
            .iter()
            .map(|&i| std::mem::take(&mut genotypes[i]))
            .collect();
        Ok(Some(Told {
            genotypes: ranked,
            valid: valid_ranked,
        }))
    }

    /// Termination tests that only need the counters and the fitness history.
    pub fn history_stop(&self, lambda: usize) -> Option<Termination> {
        let g = self.progress.generation;
        if self
            .max_evaluations
            .is_some_and(|m| self.progress.evaluations >= m)
        {
            return Some(Termination::MaxEvaluations);
        }
        if self.failed_streak >= self.tolerances.max_failed_generations.max(1) {
            return Some(Termination::NoValidFitness);
        }
        if self.history.flat(g, self.tolerances.tol_fun) {
            return Some(Termination::TolFun);
        }
        if self.history.stagnated(g, self.bounds.dim(), lambda) {
            return Some(Termination::Stagnation);
        }
        None
    }
}

/// Effective recombination weights for one told generation: the strategy weights by rank,
/// except that a failed candidate never gets a positive weight (it is set to 0).
pub(crate) fn effective_weights(weights: &[f64], valid: &[bool]) -> Vec<f64> {
    weights
        .iter()
        .zip(valid)
        .map(|(&w, &ok)| if w > 0.0 && !ok { 0.0 } else { w })
        .collect()
}
