//! A real-coded genetic algorithm: tournament selection, uniform or blend (BLX-alpha)
//! crossover, Gaussian mutation, elitism.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::cma::default_population_size;
use crate::es::{check_budget, check_population, check_start};
use crate::optimizer::{Progress, check_fitness_len, ranking, valid};
use crate::{Best, Bounds, Optimizer, SearchError, Termination};

/// How two parents make a child.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crossover {
    /// Each gene from either parent with probability 1/2.
    Uniform,
    /// BLX-alpha: each gene uniform in `[lo - alpha d, hi + alpha d]`, `d = hi - lo`.
    #[default]
    Blend,
}

/// Settings of the genetic algorithm (`optimizer = "ga"`).
///
/// ```toml
/// optimizer = "ga"
/// population_size = 20    # default max(20, 2 (4 + floor(3 ln n)))
/// elites = 2              # best members kept unevaluated into the next generation
/// tournament_size = 3
/// crossover = "blend"     # or "uniform"
/// blend_alpha = 0.5
/// crossover_rate = 0.9
/// mutation_rate = 0.1     # per gene; default 1/n
/// mutation_scale = 1.0    # mutation std = mutation_scale · sigma0
/// mutation_decay = 1.0    # mutation std multiplies by this each generation
/// max_evaluations = 1000
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaConfig {
    /// Members per generation; default `max(20, 2 (4 + floor(3 ln n)))`.
    pub population_size: Option<usize>,
    /// Best members carried over unchanged (not re-evaluated); each later `ask` returns
    /// `population_size - elites` children.
    pub elites: usize,
    /// Members drawn (with replacement) per tournament.
    pub tournament_size: usize,
    /// Crossover operator.
    pub crossover: Crossover,
    /// alpha of the blend crossover.
    pub blend_alpha: f64,
    /// Probability that a child is a crossover of two parents (else a copy of the first).
    pub crossover_rate: f64,
    /// Probability that a gene is mutated; default `1 / n`.
    pub mutation_rate: Option<f64>,
    /// Mutation standard deviation in units of `sigma0`.
    pub mutation_scale: f64,
    /// Factor applied to the mutation standard deviation after each generation.
    pub mutation_decay: f64,
    /// Stop after this many evaluations (none by default).
    pub max_evaluations: Option<u64>,
}

impl Default for GaConfig {
    fn default() -> Self {
        GaConfig {
            population_size: None,
            elites: 2,
            tournament_size: 3,
            crossover: Crossover::default(),
            blend_alpha: 0.5,
            crossover_rate: 0.9,
            mutation_rate: None,
            mutation_scale: 1.0,
            mutation_decay: 1.0,
            max_evaluations: None,
        }
    }
}

/// One evaluated member of the population.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Member {
    x: Vec<f64>,
    /// Finite fitness, or `None` for a failed evaluation.
    f: Option<f64>,
}

/// The genetic algorithm's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ga {
    config: GaConfig,
    bounds: Bounds,
    x0: Vec<f64>,
    sigma0: f64,
    population_size: usize,
    mutation_rate: f64,
    mutation_sigma: f64,
    /// The current population, best first (failed members last).
    population: Vec<Member>,
    pending: Option<Vec<Vec<f64>>>,
    rng: ChaCha8Rng,
    progress: Progress,
    stop: Option<Termination>,
}

impl Ga {
    /// The first generation samples `x0 + sigma0 N(0, I)`, clipped to the bounds.
    pub fn new(
        config: &GaConfig,
        bounds: Bounds,
        x0: &[f64],
        sigma0: f64,
        seed: u64,
    ) -> Result<Self, SearchError> {
        check_start(&bounds, x0, sigma0)?;
        check_population("population_size", config.population_size, 2)?;
        check_budget(config.max_evaluations)?;
        let n = bounds.dim();
        let population_size = config
            .population_size
            .unwrap_or_else(|| (2 * default_population_size(n)).max(20));
        let invalid = |name: &'static str, value: String, reason: &str| {
            Err(SearchError::InvalidSetting {
                name,
                value,
                reason: reason.to_string(),
            })
        };
        if config.elites >= population_size {
            return invalid(
                "elites",
                config.elites.to_string(),
                "must be smaller than population_size",
            );
        }
        if config.tournament_size == 0 {
            return invalid("tournament_size", "0".into(), "must be at least 1");
        }
        let probability = |p: f64| (0.0..=1.0).contains(&p);
        if !probability(config.crossover_rate) {
            return invalid(
                "crossover_rate",
                config.crossover_rate.to_string(),
                "must be a probability in [0, 1]",
            );
        }
        let mutation_rate = config.mutation_rate.unwrap_or(1.0 / n as f64);
        if !probability(mutation_rate) {
            return invalid(
                "mutation_rate",
                mutation_rate.to_string(),
                "must be a probability in [0, 1]",
            );
        }
        if !(config.blend_alpha >= 0.0 && config.blend_alpha.is_finite()) {
            return invalid(
                "blend_alpha",
                config.blend_alpha.to_string(),
                "must be a finite number >= 0",
            );
        }
        if !(config.mutation_scale > 0.0 && config.mutation_scale.is_finite()) {
            return invalid(
                "mutation_scale",
                config.mutation_scale.to_string(),
                "must be a finite number > 0",
            );
        }
        if !(config.mutation_decay > 0.0 && config.mutation_decay <= 1.0) {
            return invalid(
                "mutation_decay",
                config.mutation_decay.to_string(),
                "must be in (0, 1]",
            );
        }
        Ok(Ga {
            config: config.clone(),
            bounds,
            x0: x0.to_vec(),
            sigma0,
            population_size,
            mutation_rate,
            mutation_sigma: config.mutation_scale * sigma0,
            population: Vec::new(),
            pending: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            progress: Progress::default(),
            stop: None,
        })
    }

    /// Index of a tournament winner: the best of `tournament_size` uniform draws (the
    /// population is sorted best first, so the smallest index wins).
    fn tournament(&mut self) -> usize {
        (0..self.config.tournament_size)
            .map(|_| self.rng.random_range(0..self.population.len()))
            .min()
            .unwrap_or(0)
    }

    fn child(&mut self) -> Vec<f64> {
        let a = self.tournament();
        let b = self.tournament();
        let (p1, p2) = (self.population[a].x.clone(), &self.population[b].x);
        let mut x = p1;
        if self.rng.random_bool(self.config.crossover_rate) {
            let alpha = self.config.blend_alpha;
            for (xi, &yi) in x.iter_mut().zip(p2.iter()) {
                *xi = match self.config.crossover {
                    Crossover::Uniform => {
                        if self.rng.random_bool(0.5) {
                            *xi
                        } else {
                            yi
                        }
                    }
                    Crossover::Blend => {
                        let (lo, hi) = (xi.min(yi), xi.max(yi));
                        let d = hi - lo;
                        let u: f64 = self.rng.random();
                        lo - alpha * d + u * (1.0 + 2.0 * alpha) * d
                    }
                };
            }
        }
        for xi in x.iter_mut() {
            if self.rng.random_bool(self.mutation_rate) {
                let z: f64 = self.rng.sample(StandardNormal);
                *xi += self.mutation_sigma * z;
            }
        }
        self.bounds.clip(&mut x);
        x
    }
}

impl Optimizer for Ga {
    fn dim(&self) -> usize {
        self.bounds.dim()
    }

    fn population_size(&self) -> usize {
        if self.population.is_empty() {
            self.population_size
        } else {
            self.population_size - self.config.elites
        }
    }

    fn ask(&mut self) -> Vec<Vec<f64>> {
        if self.pending.is_none() {
            let batch = if self.population.is_empty() {
                (0..self.population_size)
                    .map(|_| {
                        let mut x: Vec<f64> = self
                            .x0
                            .iter()
                            .map(|m| {
                                let z: f64 = self.rng.sample(StandardNormal);
                                m + self.sigma0 * z
                            })
                            .collect();
                        self.bounds.clip(&mut x);
                        x
                    })
                    .collect()
            } else {
                (0..self.population_size - self.config.elites)
                    .map(|_| self.child())
                    .collect()
            };
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
        let mut members: Vec<Member> = if self.population.is_empty() {
            Vec::new()
        } else {
            self.population[..self.config.elites].to_vec()
        };
        members.extend(
            batch
                .into_iter()
                .zip(fitness)
                .map(|(x, f)| Member { x, f: valid(*f) }),
        );
        let order = ranking(&members.iter().map(|m| m.f).collect::<Vec<_>>());
        self.population = order.iter().map(|&i| members[i].clone()).collect();
        self.mutation_sigma *= self.config.mutation_decay;
        if self
            .config
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
        if self.population.is_empty() {
            return self.x0.clone();
        }
        let k = self.population.len() as f64;
        let mut m = vec![0.0; self.dim()];
        for member in &self.population {
            for (mi, xi) in m.iter_mut().zip(&member.x) {
                *mi += xi / k;
            }
        }
        m
    }

    fn sigma(&self) -> Option<f64> {
        Some(self.mutation_sigma)
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
