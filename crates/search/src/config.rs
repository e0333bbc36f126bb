//! Choosing and configuring an optimizer by name, from TOML or code.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{
    Bounds, Cma, CmaConfig, Ga, GaConfig, Ipop, IpopConfig, IpopVariant, OptimizerState,
    RandomConfig, RandomSearch, SearchError, SepCma,
};

/// Which optimizer to run, with its settings; the `optimizer` key names it.
///
/// Unknown keys are errors. Every setting has a default, so `optimizer = "cma"` alone is a
/// complete config. As a table of an experiment file:
///
/// ```toml
/// [search]
/// optimizer = "sep-cma"      # cma | sep-cma | ipop-cma | ipop-sep-cma | ga | random
/// population_size = 128
/// max_evaluations = 12800
/// [search.termination]
/// tol_fun = 1e-12
/// ```
///
/// See [`CmaConfig`], [`IpopConfig`], [`GaConfig`] and [`RandomConfig`] for the keys of each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "optimizer", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    /// Full-covariance CMA-ES.
    Cma(CmaConfig),
    /// Diagonal-covariance sep-CMA-ES.
    SepCma(CmaConfig),
    /// IPOP restarts of CMA-ES.
    IpopCma(IpopConfig),
    /// IPOP restarts of sep-CMA-ES.
    IpopSepCma(IpopConfig),
    /// Genetic algorithm.
    Ga(GaConfig),
    /// Random search.
    Random(RandomConfig),
}

impl OptimizerConfig {
    /// The names accepted by [`OptimizerConfig::from_str`] and the `optimizer` key.
    pub const NAMES: [&'static str; 6] =
        ["cma", "sep-cma", "ipop-cma", "ipop-sep-cma", "ga", "random"];

    /// The optimizer's name (`cma`, `sep-cma`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Cma(_) => "cma",
            OptimizerConfig::SepCma(_) => "sep-cma",
            OptimizerConfig::IpopCma(_) => "ipop-cma",
            OptimizerConfig::IpopSepCma(_) => "ipop-sep-cma",
            OptimizerConfig::Ga(_) => "ga",
            OptimizerConfig::Random(_) => "random",
        }
    }

    /// The evaluation budget, if any.
    pub fn max_evaluations(&self) -> Option<u64> {
        match self {
            OptimizerConfig::Cma(c) | OptimizerConfig::SepCma(c) => c.max_evaluations,
            OptimizerConfig::IpopCma(c) | OptimizerConfig::IpopSepCma(c) => c.max_evaluations,
            OptimizerConfig::Ga(c) => c.max_evaluations,
            OptimizerConfig::Random(c) => c.max_evaluations,
        }
    }

    /// Sets the evaluation budget.
    pub fn set_max_evaluations(&mut self, budget: Option<u64>) {
        match self {
            OptimizerConfig::Cma(c) | OptimizerConfig::SepCma(c) => c.max_evaluations = budget,
            OptimizerConfig::IpopCma(c) | OptimizerConfig::IpopSepCma(c) => {
                c.max_evaluations = budget
            }
            OptimizerConfig::Ga(c) => c.max_evaluations = budget,
            OptimizerConfig::Random(c) => c.max_evaluations = budget,
        }
    }

    /// Builds the optimizer: search box `bounds`, start `x0` (inside the box), initial step
    /// size `sigma0` (> 0, in the units of the coordinates), and the `seed` of every random draw.
    pub fn build(
        &self,
        bounds: Bounds,
        x0: &[f64],
        sigma0: f64,
        seed: u64,
    ) -> Result<OptimizerState, SearchError> {
        Ok(match self {
            OptimizerConfig::Cma(c) => {
                OptimizerState::Cma(Box::new(Cma::new(c, bounds, x0, sigma0, seed)?))
            }
            OptimizerConfig::SepCma(c) => {
                OptimizerState::SepCma(Box::new(SepCma::new(c, bounds, x0, sigma0, seed)?))
            }
            OptimizerConfig::IpopCma(c) => OptimizerState::Ipop(Box::new(Ipop::new(
                IpopVariant::Cma,
                c,
                bounds,
                x0,
                sigma0,
                seed,
            )?)),
            OptimizerConfig::IpopSepCma(c) => OptimizerState::Ipop(Box::new(Ipop::new(
                IpopVariant::SepCma,
                c,
                bounds,
                x0,
                sigma0,
                seed,
            )?)),
            OptimizerConfig::Ga(c) => {
                OptimizerState::Ga(Box::new(Ga::new(c, bounds, x0, sigma0, seed)?))
            }
            OptimizerConfig::Random(c) => {
                OptimizerState::Random(Box::new(RandomSearch::new(c, bounds, x0, sigma0, seed)?))
            }
        })
    }
}

impl FromStr for OptimizerConfig {
    type Err = SearchError;

    /// The optimizer of that name with default settings.
    fn from_str(name: &str) -> Result<Self, SearchError> {
        Ok(match name {
            "cma" => OptimizerConfig::Cma(CmaConfig::default()),
            "sep-cma" => OptimizerConfig::SepCma(CmaConfig::default()),
            "ipop-cma" => OptimizerConfig::IpopCma(IpopConfig::default()),
            "ipop-sep-cma" => OptimizerConfig::IpopSepCma(IpopConfig::default()),
            "ga" => OptimizerConfig::Ga(GaConfig::default()),
            "random" => OptimizerConfig::Random(RandomConfig::default()),
            other => return Err(SearchError::UnknownOptimizer(other.to_string())),
        })
    }
}
