//! IPOP restarts (Auger & Hansen 2005): when a CMA-ES run terminates, start a fresh one with
//! a population twice as large, until the budget or the restart limit is reached.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cma::default_population_size;
use crate::es::{check_budget, check_population, check_start};
use crate::{
    Best, BoundaryMode, Bounds, Cma, CmaConfig, Optimizer, SearchError, SepCma, Termination,
    Tolerances,
};

/// Where a restarted run puts its initial mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPoint {
    /// Uniformly at random in the box (Optuna's IPOP); coordinates without two finite bounds
    /// restart from `x0`.
    #[default]
    Uniform,
    /// From `x0` every time (pycma's default).
    X0,
}

/// Settings of IPOP-CMA-ES and IPOP-sep-CMA-ES (`optimizer = "ipop-cma"` or `"ipop-sep-cma"`).
///
/// ```toml
/// optimizer = "ipop-cma"
/// population_size = 10        # of the first run; default 4 + floor(3 ln n)
/// population_factor = 2       # lambda multiplies by this at each restart
/// max_restarts = 9
/// restart_from = "uniform"    # or "x0"
/// boundary = "transform"     # or "resample-clip"
/// max_evaluations = 100000
/// [termination]               # of each run
/// tol_fun = 1e-12
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpopConfig {
    /// Population size of the first run; default `4 + floor(3 ln n)`.
    pub population_size: Option<usize>,
    /// Factor applied to the population size at each restart (default 2).
    pub population_factor: u32,
    /// Number of restarts after the first run (default 9).
    pub max_restarts: u32,
    /// Initial mean of restarted runs.
    pub restart_from: RestartPoint,
    /// How candidates are kept inside the bounds.
    pub boundary: BoundaryMode,
    /// Total evaluation budget over all runs (none by default).
    pub max_evaluations: Option<u64>,
    /// Termination tolerances of each run; a run's termination triggers the restart.
    pub termination: Tolerances,
}

impl Default for IpopConfig {
    fn default() -> Self {
        IpopConfig {
            population_size: None,
            population_factor: 2,
            max_restarts: 9,
            restart_from: RestartPoint::default(),
            boundary: BoundaryMode::default(),
            max_evaluations: None,
            termination: Tolerances::default(),
        }
    }
}

/// Which CMA-ES IPOP restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpopVariant {
    /// Full covariance.
    Cma,
    /// Diagonal covariance.
    SepCma,
}

/// The run in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Run {
    Cma(Box<Cma>),
    SepCma(Box<SepCma>),
}

impl Run {
    fn optimizer(&self) -> &dyn Optimizer {
        match self {
            Run::Cma(o) => o.as_ref(),
            Run::SepCma(o) => o.as_ref(),
        }
    }

    fn optimizer_mut(&mut self) -> &mut dyn Optimizer {
        match self {
            Run::Cma(o) => o.as_mut(),
            Run::SepCma(o) => o.as_mut(),
        }
    }
}

/// One finished run of an IPOP sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// Population size of the run.
    pub population_size: usize,
    /// Generations the run lasted.
    pub generations: u64,
    /// Evaluations the run used.
    pub evaluations: u64,
    /// Best fitness the run found, if any.
    pub best_f: Option<f64>,
    /// Why it terminated.
    pub reason: Termination,
}

/// IPOP-CMA-ES over full or separable CMA-ES.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ipop {
    variant: IpopVariant,
    config: IpopConfig,
    bounds: Bounds,
    x0: Vec<f64>,
    sigma0: f64,
    run: Run,
    /// Draws restart seeds and restart points.
    rng: ChaCha8Rng,
    /// Counters of the finished runs.
    done_generations: u64,
    done_evaluations: u64,
    best: Option<Best>,
    restarts: u32,
    finished: Vec<RestartRecord>,
    stop: Option<Termination>,
}

impl Ipop {
    /// Starts the first run at `x0`; it is the same run a plain [`Cma`] / [`SepCma`] with
    /// the same seed and population size makes.
    pub fn new(
        variant: IpopVariant,
        config: &IpopConfig,
        bounds: Bounds,
        x0: &[f64],
        sigma0: f64,
        seed: u64,
    ) -> Result<Self, SearchError> {
        check_start(&bounds, x0, sigma0)?;
        check_population("population_size", config.population_size, 2)?;
        check_budget(config.max_evaluations)?;
        config.termination.validate()?;
        if config.population_factor < 2 {
            return Err(SearchError::InvalidSetting {
                name: "population_factor",
                value: config.population_factor.to_string(),
                reason: "must be at least 2 (IPOP grows the population at each restart)".into(),
            });
        }
        let lambda = config
            .population_size
            .unwrap_or_else(|| default_population_size(bounds.dim()));
        let run = Self::start(variant, config, &bounds, x0, sigma0, seed, lambda)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        Ok(Ipop {
            variant,
            config: config.clone(),
            bounds,
            x0: x0.to_vec(),
            sigma0,
            run,
            rng,
            done_generations: 0,
            done_evaluations: 0,
            best: None,
            restarts: 0,
            finished: Vec::new(),
            stop: None,
        })
    }

    fn start(
        variant: IpopVariant,
        config: &IpopConfig,
        bounds: &Bounds,
        x0: &[f64],
        sigma0: f64,
        seed: u64,
        lambda: usize,
    ) -> Result<Run, SearchError> {
        let run_config = CmaConfig {
            population_size: Some(lambda),
            boundary: config.boundary,
            max_evaluations: None,
            termination: config.termination.clone(),
        };
        Ok(match variant {
            IpopVariant::Cma => Run::Cma(Box::new(Cma::new(
                &run_config,
                bounds.clone(),
                x0,
                sigma0,
                seed,
            )?)),
            IpopVariant::SepCma => Run::SepCma(Box::new(SepCma::new(
                &run_config,
                bounds.clone(),
                x0,
                sigma0,
                seed,
            )?)),
        })
    }

    /// Which CMA-ES is restarted.
    pub fn variant(&self) -> IpopVariant {
        self.variant
    }

    /// Number of restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The terminated runs, oldest first (the last one may be the current run when IPOP
    /// itself stopped).
    pub fn finished_runs(&self) -> &[RestartRecord] {
        &self.finished
    }

    /// The run in progress.
    pub fn current(&self) -> &dyn Optimizer {
        self.run.optimizer()
    }

    fn restart(&mut self, reason: Termination) -> Result<(), SearchError> {
        let current = self.run.optimizer();
        let lambda = current.population_size();
        let (generations, evaluations) = (current.generation(), current.evaluations());
        self.finished.push(RestartRecord {
            population_size: lambda,
            generations,
            evaluations,
            best_f: current.best().map(|b| b.f),
            reason,
        });
        if self.restarts >= self.config.max_restarts {
            self.stop = Some(Termination::MaxRestarts);
            return Ok(());
        }
        self.restarts += 1;
        self.done_generations += generations;
        self.done_evaluations += evaluations;
        let x0: Vec<f64> = match self.config.restart_from {
            RestartPoint::X0 => self.x0.clone(),
            RestartPoint::Uniform => (0..self.bounds.dim())
                .map(|i| {
                    let u: f64 = self.rng.random();
                    if self.bounds.is_finite(i) {
                        let (lo, hi) = (self.bounds.lower()[i], self.bounds.upper()[i]);
                        (lo + u * (hi - lo)).clamp(lo, hi)
                    } else {
                        self.x0[i]
                    }
                })
                .collect(),
        };
        let seed: u64 = self.rng.random();
        let lambda = lambda.saturating_mul(self.config.population_factor as usize);
        self.run = Self::start(
            self.variant,
            &self.config,
            &self.bounds,
            &x0,
            self.sigma0,
            seed,
            lambda,
        )?;
        Ok(())
    }
}

impl Optimizer for Ipop {
    fn dim(&self) -> usize {
        self.bounds.dim()
    }

    fn population_size(&self) -> usize {
        self.run.optimizer().population_size()
    }

    fn ask(&mut self) -> Vec<Vec<f64>> {
        self.run.optimizer_mut().ask()
    }

    fn tell(&mut self, fitness: &[Option<f64>]) -> Result<(), SearchError> {
        self.run.optimizer_mut().tell(fitness)?;
        let current = self.run.optimizer();
        if let Some(b) = current.best()
            && self.best.as_ref().is_none_or(|g| b.f < g.f)
        {
            self.best = Some(Best {
                x: b.x.clone(),
                f: b.f,
                evaluation: b.evaluation + self.done_evaluations,
                generation: b.generation + self.done_generations,
            });
        }
        if self
            .config
            .max_evaluations
            .is_some_and(|m| self.evaluations() >= m)
        {
            self.stop = Some(Termination::MaxEvaluations);
        } else if self.stop.is_none()
            && let Some(reason) = current.should_stop()
        {
            self.restart(reason)?;
        }
        Ok(())
    }

    fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    fn mean(&self) -> Vec<f64> {
        self.run.optimizer().mean()
    }

    fn sigma(&self) -> Option<f64> {
        self.run.optimizer().sigma()
    }

    fn generation(&self) -> u64 {
        self.done_generations + self.run.optimizer().generation()
    }

    fn evaluations(&self) -> u64 {
        self.done_evaluations + self.run.optimizer().evaluations()
    }

    fn should_stop(&self) -> Option<Termination> {
        self.stop
    }
}
