//! The serializable state of any optimizer.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{
    Best, Cma, Ga, Ipop, IpopVariant, Optimizer, RandomSearch, SearchError, SepCma, Termination,
};

/// Any optimizer of this crate, as one serializable value.
///
/// It implements [`Optimizer`] by delegation. Its JSON form is the whole state, random
/// generator and pending generation included: restoring it and going on produces exactly
/// the candidates the uninterrupted run would have produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerState {
    /// Full-covariance CMA-ES.
    Cma(Box<Cma>),
    /// sep-CMA-ES.
    SepCma(Box<SepCma>),
    /// IPOP restarts of either.
    Ipop(Box<Ipop>),
    /// Genetic algorithm.
    Ga(Box<Ga>),
    /// Random search.
    Random(Box<RandomSearch>),
}

impl OptimizerState {
    fn inner(&self) -> &dyn Optimizer {
        match self {
            OptimizerState::Cma(o) => o.as_ref(),
            OptimizerState::SepCma(o) => o.as_ref(),
            OptimizerState::Ipop(o) => o.as_ref(),
            OptimizerState::Ga(o) => o.as_ref(),
            OptimizerState::Random(o) => o.as_ref(),
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Optimizer {
        match self {
            OptimizerState::Cma(o) => o.as_mut(),
            OptimizerState::SepCma(o) => o.as_mut(),
            OptimizerState::Ipop(o) => o.as_mut(),
            OptimizerState::Ga(o) => o.as_mut(),
            OptimizerState::Random(o) => o.as_mut(),
        }
    }

    /// The optimizer's name as in [`crate::OptimizerConfig`] (`cma`, `ipop-sep-cma`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerState::Cma(_) => "cma",
            OptimizerState::SepCma(_) => "sep-cma",
            OptimizerState::Ipop(o) => match o.variant() {
                IpopVariant::Cma => "ipop-cma",
                IpopVariant::SepCma => "ipop-sep-cma",
            },
            OptimizerState::Ga(_) => "ga",
            OptimizerState::Random(_) => "random",
        }
    }

    /// The state as JSON (floats written so that they parse back to the same bits).
    pub fn to_json(&self) -> Result<String, SearchError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Restores a state written by [`OptimizerState::to_json`].
    pub fn from_json(json: &str) -> Result<Self, SearchError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Writes the state to `path` atomically: a temporary file beside it, fsync, rename, fsync
    /// of the folder. A crash leaves either the previous file or the new one, never a torn one.
    pub fn save(&self, path: &Path) -> Result<(), SearchError> {
        let json = self.to_json()?;
        evomerge_checkpoint::write_atomic(path, json.as_bytes()).map_err(|e| SearchError::Io {
            path: e.path,
            source: e.source,
        })
    }

    /// Reads a state written by [`OptimizerState::save`].
    pub fn load(path: &Path) -> Result<Self, SearchError> {
        let json = fs::read_to_string(path).map_err(|source| SearchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&json)
    }
}

impl Optimizer for OptimizerState {
    fn dim(&self) -> usize {
        self.inner().dim()
    }

    fn population_size(&self) -> usize {
        self.inner().population_size()
    }

    fn ask(&mut self) -> Vec<Vec<f64>> {
        self.inner_mut().ask()
    }

    fn tell(&mut self, fitness: &[Option<f64>]) -> Result<(), SearchError> {
        self.inner_mut().tell(fitness)
    }

    fn best(&self) -> Option<&Best> {
        self.inner().best()
    }

    fn mean(&self) -> Vec<f64> {
        self.inner().mean()
    }

    fn sigma(&self) -> Option<f64> {
        self.inner().sigma()
    }

    fn generation(&self) -> u64 {
        self.inner().generation()
    }

    fn evaluations(&self) -> u64 {
        self.inner().evaluations()
    }

    fn should_stop(&self) -> Option<Termination> {
        self.inner().should_stop()
    }
}
