//! Why an optimizer recommends stopping, the tolerances of the CMA-ES family, and the fitness
//! history those tolerances watch.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::optimizer::median;

/// The reason [`crate::Optimizer::should_stop`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Termination {
    /// The evaluation budget (`max_evaluations`) is used up.
    MaxEvaluations,
    /// The range of the best and worst fitness over the recent generations is below `tol_fun`.
    TolFun,
    /// All coordinate standard deviations and the evolution path are below `tol_x · sigma0`.
    TolX,
    /// `sigma · max(D)` grew above `tol_x_up`: the search diverges.
    TolXUp,
    /// Adding 0.2 standard deviations to some coordinate of the mean does not change it.
    NoEffectCoordinate,
    /// Adding 0.1 standard deviations along a principal axis does not change the mean.
    NoEffectAxis,
    /// The condition number of C exceeds `tol_condition`.
    ConditionCov,
    /// The median of recent generation-best and generation-median values stopped improving.
    Stagnation,
    /// `max_failed_generations` consecutive generations had no valid fitness at all.
    NoValidFitness,
    /// An update produced a non-finite number; it was discarded, the state is the last good one.
    NumericalError,
    /// IPOP: the last allowed restart terminated.
    MaxRestarts,
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Termination::MaxEvaluations => "max-evaluations",
            Termination::TolFun => "tol-fun",
            Termination::TolX => "tol-x",
            Termination::TolXUp => "tol-x-up",
            Termination::NoEffectCoordinate => "no-effect-coordinate",
            Termination::NoEffectAxis => "no-effect-axis",
            Termination::ConditionCov => "condition-cov",
            Termination::Stagnation => "stagnation",
            Termination::NoValidFitness => "no-valid-fitness",
            Termination::NumericalError => "numerical-error",
            Termination::MaxRestarts => "max-restarts",
        };
        f.write_str(s)
    }
}

/// Termination tolerances of CMA-ES and sep-CMA-ES (the `cmaes` library's defaults, plus
/// pycma's stagnation test). In TOML: a `[search.termination]` table, every key optional.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tolerances {
    /// Stop when best and worst fitness of the last `10 + ceil(30 n / lambda)` generations
    /// span less than this. Default `1e-12`.
    pub tol_fun: f64,
    /// Stop when `sigma · C_ii` and `sigma · |p_c,i|` are below `tol_x · sigma0` for all `i`.
    /// Default `1e-12`.
    pub tol_x: f64,
    /// Stop when `sigma · max(D)` exceeds this. Default `1e4`.
    pub tol_x_up: f64,
    /// Stop when the condition number of C exceeds this. Default `1e14`.
    pub tol_condition: f64,
    /// Stagnation window S in generations (compare the last ceil(S/2) generations with the
    /// ceil(S/2) before). Default (absent) pycma's `100 + 100 n^1.5 / lambda`; `0` disables.
    pub tol_stagnation: Option<u64>,
    /// Stop after this many consecutive generations without any valid fitness. Default 10.
    pub max_failed_generations: u32,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            tol_fun: 1e-12,
            tol_x: 1e-12,
            tol_x_up: 1e4,
            tol_condition: 1e14,
            tol_stagnation: None,
            max_failed_generations: 10,
        }
    }
}

impl Tolerances {
    pub(crate) fn validate(&self) -> Result<(), crate::SearchError> {
        let positive = [
            ("tol_fun", self.tol_fun),
            ("tol_x", self.tol_x),
            ("tol_x_up", self.tol_x_up),
            ("tol_condition", self.tol_condition),
        ];
        for (name, value) in positive {
            if value.is_nan() || value <= 0.0 {
                return Err(crate::SearchError::InvalidSetting {
                    name,
                    value: value.to_string(),
                    reason: "must be a number > 0".into(),
                });
            }
        }
        Ok(())
    }
}

/// Best/worst/median fitness of recent generations, for `tol_fun` and stagnation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FitnessHistory {
    /// `10 + ceil(30 n / lambda)` generations (the `cmaes` library's `funhist_term`).
    funhist_len: usize,
    /// `(best, worst)` of the last `funhist_len` generations with a valid fitness.
    extremes: VecDeque<(f64, f64)>,
    /// Half window L of the stagnation test; 0 = disabled.
    stagnation_half: usize,
    bests: VecDeque<f64>,
    medians: VecDeque<f64>,
}

impl FitnessHistory {
    pub fn new(dim: usize, lambda: usize, tol: &Tolerances) -> Self {
        let (n, l) = (dim as f64, lambda as f64);
        let window = tol
            .tol_stagnation
            .unwrap_or((100.0 + 100.0 * n.powf(1.5) / l).floor() as u64);
        FitnessHistory {
            funhist_len: 10 + (30.0 * n / l).ceil() as usize,
            extremes: VecDeque::new(),
            stagnation_half: window.div_ceil(2) as usize,
            bests: VecDeque::new(),
            medians: VecDeque::new(),
        }
    }

    /// Records the valid fitness values of one generation, sorted ascending (may be empty).
    pub fn push(&mut self, sorted: &[f64]) {
        let (Some(&best), Some(&worst)) = (sorted.first(), sorted.last()) else {
            return;
        };
        self.extremes.push_back((best, worst));
        if self.extremes.len() > self.funhist_len {
            self.extremes.pop_front();
        }
        if self.stagnation_half > 0 {
            self.bests.push_back(best);
            self.medians.push_back(median(sorted));
            if self.bests.len() > 2 * self.stagnation_half {
                self.bests.pop_front();
                self.medians.pop_front();
            }
        }
    }

    /// `tol_fun`: after more than `funhist_len` generations, best and worst of the recent
    /// generations span less than `tol`.
    pub fn flat(&self, generation: u64, tol: f64) -> bool {
        if generation <= self.funhist_len as u64 || self.extremes.len() < self.funhist_len {
            return false;
        }
        let lo = self
            .extremes
            .iter()
            .map(|e| e.0)
            .fold(f64::INFINITY, f64::min);
        let hi = self
            .extremes
            .iter()
            .map(|e| e.1)
            .fold(f64::NEG_INFINITY, f64::max);
        hi - lo < tol
    }

    /// pycma's stagnation test with a fixed window: the medians of the generation-best and of
    /// the generation-median over the last L generations are no better than over the L before.
    pub fn stagnated(&self, generation: u64, dim: usize, lambda: usize) -> bool {
        let l = self.stagnation_half;
        if l == 0 || self.bests.len() < 2 * l {
            return false;
        }
        if (generation as f64) <= dim as f64 * (5.0 + 100.0 / lambda as f64) {
            return false;
        }
        let no_progress = |v: &VecDeque<f64>| {
            let all: Vec<f64> = v.iter().copied().collect();
            median(&all[l..]) >= median(&all[..l])
        };
        no_progress(&self.bests) && no_progress(&self.medians)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tol_fun_needs_a_full_flat_history() {
        let tol = Tolerances::default();
        let mut h = FitnessHistory::new(10, 10, &tol);
        assert_eq!(h.funhist_len, 40);
        for g in 1..=40u64 {
            h.push(&[1.0, 1.0 + 1e-13]);
            assert!(!h.flat(g, tol.tol_fun), "generation {g}");
        }
        h.push(&[1.0, 1.0]);
        assert!(h.flat(41, tol.tol_fun));
        h.push(&[1.0, 2.0]);
        assert!(!h.flat(42, tol.tol_fun));
    }

    #[test]
    fn stagnation_fires_only_without_progress() {
        let tol = Tolerances {
            tol_stagnation: Some(20),
            ..Tolerances::default()
        };
        let mut improving = FitnessHistory::new(2, 6, &tol);
        let mut flat = FitnessHistory::new(2, 6, &tol);
        for g in 0..100u64 {
            let v = 100.0 - g as f64;
            improving.push(&[v, v + 1.0]);
            flat.push(&[1.0, 2.0]);
        }
        assert!(!improving.stagnated(100, 2, 6));
        assert!(flat.stagnated(100, 2, 6));
        // disabled
        let off = Tolerances {
            tol_stagnation: Some(0),
            ..Tolerances::default()
        };
        let mut h = FitnessHistory::new(2, 6, &off);
        for _ in 0..100 {
            h.push(&[1.0]);
        }
        assert!(!h.stagnated(100, 2, 6));
    }
}
