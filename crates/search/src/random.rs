//! Random search: the baseline every comparison needs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::cma::default_population_size;
use crate::es::{check_budget, check_population, check_start};
use crate::optimizer::{Progress, check_fitness_len};
use crate::{Best, Bounds, Optimizer, SearchError, Termination};

/// Settings of random search (`optimizer = "random"`).
///
/// ```toml
/// optimizer = "random"
/// batch_size = 10          # candidates per ask; default 4 + floor(3 ln n)
/// max_evaluations = 1000
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomConfig {
    /// Candidates per `ask`; default `4 + floor(3 ln n)` (CMA-ES's lambda, so generations line up).
    pub batch_size: Option<usize>,
    /// Stop after this many evaluations (none by default).
    pub max_evaluations: Option<u64>,
}

/// Independent samples: uniform in `[lower, upper]` for each coordinate with two finite
/// bounds, `x0 + sigma0 N(0, 1)` (clipped to a one-sided bound) for the others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RandomSearch {
    batch_size: usize,
    max_evaluations: Option<u64>,
    bounds: Bounds,
    x0: Vec<f64>,
    sigma0: f64,
    pending: Option<Vec<Vec<f64>>>,
    rng: ChaCha8Rng,
    progress: Progress,
    stop: Option<Termination>,
}

impl RandomSearch {
    /// A random search over `bounds` (centred at `x0` with scale `sigma0` where unbounded).
    pub fn new(
        config: &RandomConfig,
        bounds: Bounds,
        x0: &[f64],
        sigma0: f64,
        seed: u64,
    ) -> Result<Self, SearchError> {
        check_start(&bounds, x0, sigma0)?;
        check_population("batch_size", config.batch_size, 1)?;
        check_budget(config.max_evaluations)?;
        Ok(RandomSearch {
            batch_size: config
                .batch_size
                .unwrap_or_else(|| default_population_size(bounds.dim())),
            max_evaluations: config.max_evaluations,
            bounds,
            x0: x0.to_vec(),
            sigma0,
            pending: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            progress: Progress::default(),
            stop: None,
        })
    }

    fn sample(&mut self) -> Vec<f64> {
        let mut x: Vec<f64> = (0..self.bounds.dim())
            .map(|i| {
                if self.bounds.is_finite(i) {
                    let (lo, hi) = (self.bounds.lower()[i], self.bounds.upper()[i]);
                    let u: f64 = self.rng.random();
                    lo + u * (hi - lo)
                } else {
                    let z: f64 = self.rng.sample(StandardNormal);
                    self.x0[i] + self.sigma0 * z
                }
            })
            .collect();
        self.bounds.clip(&mut x);
        x
    }
}

impl Optimizer for RandomSearch {
    fn dim(&self) -> usize {
        self.bounds.dim()
    }

    fn population_size(&self) -> usize {
        self.batch_size
    }

    fn ask(&mut self) -> Vec<Vec<f64>> {
        if self.pending.is_none() {
            let batch = (0..self.batch_size).map(|_| self.sample()).collect();
            self.pending = Some(batch);
        }
        self.pending.clone().unwrap_or_default()
    }

    fn tell(&mut self, fitness: &[Option<f64>]) -> Result<(), SearchError> {
        let expected = self
            .pending
            .as_ref()
            .ok_or(SearchError::NoPendingGeneration)?
            .len();
        check_fitness_len(expected, fitness)?;
        let batch = self.pending.take().unwrap_or_default();
        self.progress.record(fitness, |i| batch[i].clone());
        if self
            .max_evaluations
            .is_some_and(|m| self.progress.evaluations >= m)
        {
            self.stop = Some(Termination::MaxEvaluations);
        }
        Ok(())
    }

    fn best(&self) -> Option<&Best> {
        self.progress.best.as_ref()
    }

    fn mean(&self) -> Vec<f64> {
        self.x0.clone()
    }

    fn sigma(&self) -> Option<f64> {
        None
    }

    fn generation(&self) -> u64 {
        self.progress.generation
    }

    fn evaluations(&self) -> u64 {
        self.progress.evaluations
    }

    fn should_stop(&self) -> Option<Termination> {
        self.stop
    }
}
