//! sep-CMA-ES (Ros & Hansen 2008): CMA-ES with a diagonal covariance matrix, O(n) memory and
//! time per candidate, as implemented by `cmaes.SepCMA`. For the DFS genome (n in the
//! thousands).

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::cma::default_population_size;
use crate::es::{EsRun, SIGMA_MAX, check_population, check_start, effective_weights};
use crate::{Best, Bounds, CmaConfig, Optimizer, SearchError, Termination};

/// Strategy constants of sep-CMA-ES (Ros & Hansen 2008, "A Simple Modification in CMA-ES"; the `cmaes` library's `SepCMA`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SepCmaParams {
    /// Dimension n.
    pub dim: usize,
    /// Population size lambda.
    pub lambda: usize,
    /// Parent number mu = floor(lambda / 2).
    pub mu: usize,
    /// Positive recombination weights (length mu), w'_i = ln(mu + 1) - ln i, summing to 1.
    pub weights: Vec<f64>,
    /// 1 / sum w_i².
    pub mu_eff: f64,
    /// Rank-one learning rate 2 / ((n + 1.3)² + mu_eff).
    pub c1: f64,
    /// Rank-mu learning rate: Ros & Hansen's full-CMA value scaled by (n + 2) / 3, capped
    /// at 1 - c1 (the cap only binds for large populations).
    pub c_mu: f64,
    /// (mu_eff + 2) / (n + mu_eff + 3).
    pub c_sigma: f64,
    /// Step-size damping.
    pub d_sigma: f64,
    /// 4 / (n + 4).
    pub c_c: f64,
    /// Learning rate of the mean (1).
    pub c_m: f64,
    /// E||N(0, I)||.
    pub chi_n: f64,
}

impl SepCmaParams {
    /// The default constants for dimension `dim` and population size `lambda`
    /// (`None`: `4 + floor(3 ln n)`).
    pub fn new(dim: usize, lambda: Option<usize>) -> Result<Self, SearchError> {
        if dim == 0 {
            return Err(SearchError::EmptyBounds);
        }
        check_population("population_size", lambda, 2)?;
        let lambda = lambda.unwrap_or_else(|| default_population_size(dim));
        let n = dim as f64;
        let mu = lambda / 2;
        let w_prime: Vec<f64> = (1..=mu)
            .map(|i| (mu as f64 + 1.0).ln() - (i as f64).ln())
            .collect();
        let sum: f64 = w_prime.iter().sum();
        let weights: Vec<f64> = w_prime.iter().map(|w| w / sum).collect();
        let mu_eff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let c1 = 2.0 / ((n + 1.3).powi(2) + mu_eff);
        let c_mu_full = 2.0 / mu_eff / (n + 2f64.sqrt()).powi(2)
            + (1.0 - 1.0 / mu_eff)
                * (1f64).min((2.0 * mu_eff - 1.0) / ((n + 2.0).powi(2) + mu_eff));
        // Ros & Hansen cap the scaled rate so that C keeps a positive decay factor; `cmaes`
        // does not, and with large populations (IPOP) its c_mu exceeds 1 and C diverges.
        let c_mu = ((n + 2.0) / 3.0 * c_mu_full).min(1.0 - c1);
        let c_sigma = (mu_eff + 2.0) / (n + mu_eff + 3.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (n + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = 4.0 / (n + 4.0);
        let chi_n = n.sqrt() * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n));
        Ok(SepCmaParams {
            dim,
            lambda,
            mu,
            weights,
            mu_eff,
            c1,
            c_mu,
            c_sigma,
            d_sigma,
            c_c,
            c_m: 1.0,
            chi_n,
        })
    }
}

/// sep-CMA-ES: CMA-ES restricted to a diagonal covariance matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SepCma {
    params: SepCmaParams,
    run: EsRun,
    mean: Vec<f64>,
    sigma: f64,
    /// Diagonal of C.
    c: Vec<f64>,
    p_sigma: Vec<f64>,
    p_c: Vec<f64>,
}

/// Square root of a diagonal variance, negative values floored as in `cmaes.SepCMA`.
fn std_dev(c: f64) -> f64 {
    if c < 0.0 { 1e-8f64.sqrt() } else { c.sqrt() }
}

impl SepCma {
    /// Starts a run at `x0` (inside `bounds`) with step size `sigma0` and C = I.
    pub fn new(
        config: &CmaConfig,
        bounds: Bounds,
        x0: &[f64],
        sigma0: f64,
        seed: u64,
    ) -> Result<Self, SearchError> {
        check_start(&bounds, x0, sigma0)?;
        config.validate()?;
        let n = bounds.dim();
        let params = SepCmaParams::new(n, config.population_size)?;
        let mean = config.boundary.genotype(&bounds, x0);
        let run = EsRun::new(
            bounds,
            config.boundary,
            config.termination.clone(),
            config.max_evaluations,
            sigma0,
            seed,
            params.lambda,
        );
        Ok(SepCma {
            params,
            run,
            mean,
            sigma: sigma0,
            c: vec![1.0; n],
            p_sigma: vec![0.0; n],
            p_c: vec![0.0; n],
        })
    }

    /// The strategy constants in use.
    pub fn params(&self) -> &SepCmaParams {
        &self.params
    }

    /// The diagonal of C.
    pub fn covariance_diagonal(&self) -> &[f64] {
        &self.c
    }

    fn update(&mut self, genotypes: &[Vec<f64>], valid: &[bool]) {
        let p = &self.params;
        let n = p.dim;
        let w = effective_weights(&p.weights, &valid[..p.mu]);
        let sigma0 = self.sigma;
        let mut y_w = vec![0.0; n];
        for (wi, x) in w.iter().zip(genotypes) {
            if *wi == 0.0 {
                continue;
            }
            for ((acc, xi), m) in y_w.iter_mut().zip(x).zip(&self.mean) {
                *acc += wi * (xi - m) / sigma0;
            }
        }
        let d: Vec<f64> = self.c.iter().map(|c| std_dev(*c)).collect();
        let mean: Vec<f64> = self
            .mean
            .iter()
            .zip(&y_w)
            .map(|(m, y)| m + p.c_m * sigma0 * y)
            .collect();
        let cs = p.c_sigma;
        let ks = (cs * (2.0 - cs) * p.mu_eff).sqrt();
        let p_sigma: Vec<f64> = self
            .p_sigma
            .iter()
            .zip(y_w.iter().zip(&d))
            .map(|(ps, (y, di))| (1.0 - cs) * ps + ks * y / di)
            .collect();
        let norm = p_sigma.iter().map(|v| v * v).sum::<f64>().sqrt();
        let sigma = (sigma0 * ((cs / p.d_sigma) * (norm / p.chi_n - 1.0)).exp()).min(SIGMA_MAX);
        let g = self.run.progress.generation as i32;
        let h_left = norm / (1.0 - (1.0 - cs).powi(2 * g)).sqrt();
        let h = if h_left < (1.4 + 2.0 / (n as f64 + 1.0)) * p.chi_n {
            1.0
        } else {
            0.0
        };
        let cc = p.c_c;
        let kc = h * (cc * (2.0 - cc) * p.mu_eff).sqrt();
        let p_c: Vec<f64> = self
            .p_c
            .iter()
            .zip(&y_w)
            .map(|(pc, y)| (1.0 - cc) * pc + kc * y)
            .collect();
        let delta_h = (1.0 - h) * cc * (2.0 - cc);
        let w_sum: f64 = w.iter().sum();
        let decay = 1.0 + p.c1 * delta_h - p.c1 - p.c_mu * w_sum;
        let mut c: Vec<f64> = self
            .c
            .iter()
            .zip(&p_c)
            .map(|(ci, pc)| decay * ci + p.c1 * pc * pc)
            .collect();
        for (wi, x) in w.iter().zip(genotypes) {
            if *wi == 0.0 {
                continue;
            }
            let k = p.c_mu * wi;
            for ((ci, xi), m) in c.iter_mut().zip(x).zip(&self.mean) {
                let y = (xi - m) / sigma0;
                *ci += k * y * y;
            }
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !(sigma.is_finite()
            && sigma > 0.0
            && finite(&mean)
            && finite(&p_sigma)
            && finite(&p_c)
            && finite(&c))
        {
            self.run.stop = Some(Termination::NumericalError);
            return;
        }
        self.mean = mean;
        self.sigma = sigma;
        self.p_sigma = p_sigma;
        self.p_c = p_c;
        self.c = c;
    }

    /// Termination tests of `cmaes.SepCMA` (the no-effect-axis test on the i-th coordinate axis).
    fn termination(&self) -> Option<Termination> {
        if self.run.stop == Some(Termination::NumericalError) {
            return self.run.stop;
        }
        if let Some(t) = self.run.history_stop(self.params.lambda) {
            return Some(t);
        }
        let tol = &self.run.tolerances;
        let sigma = self.sigma;
        let tol_x = tol.tol_x * self.run.sigma0;
        if self.c.iter().all(|c| sigma * c < tol_x)
            && self.p_c.iter().all(|p| sigma * p.abs() < tol_x)
        {
            return Some(Termination::TolX);
        }
        let d: Vec<f64> = self.c.iter().map(|c| std_dev(*c)).collect();
        let dmax = d.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let dmin = d.iter().copied().fold(f64::INFINITY, f64::min);
        if sigma * dmax > tol.tol_x_up {
            return Some(Termination::TolXUp);
        }
        if self
            .mean
            .iter()
            .zip(&d)
            .any(|(m, di)| *m == *m + 0.2 * sigma * di)
        {
            return Some(Termination::NoEffectCoordinate);
        }
        let i = (self.run.progress.generation % self.params.dim as u64) as usize;
        if self.mean[i] == self.mean[i] + 0.1 * sigma * d[i] {
            return Some(Termination::NoEffectAxis);
        }
        if (dmax * dmax) / (dmin * dmin) > tol.tol_condition {
            return Some(Termination::ConditionCov);
        }
        None
    }
}

impl Optimizer for SepCma {
    fn dim(&self) -> usize {
        self.params.dim
    }

    fn population_size(&self) -> usize {
        self.params.lambda
    }

    fn ask(&mut self) -> Vec<Vec<f64>> {
        let d: Vec<f64> = self.c.iter().map(|c| std_dev(*c)).collect();
        let (mean, sigma) = (&self.mean, self.sigma);
        self.run.ask_with(self.params.lambda, |rng, out| {
            for o in out.iter_mut() {
                *o = rng.sample(StandardNormal);
            }
            for ((o, m), di) in out.iter_mut().zip(mean).zip(&d) {
                *o = m + sigma * di * *o;
            }
        })
    }

    fn tell(&mut self, fitness: &[Option<f64>]) -> Result<(), SearchError> {
        if let Some(told) = self.run.take_told(fitness)? {
            self.update(&told.genotypes, &told.valid);
        }
        self.run.stop = self.termination();
        Ok(())
    }

    fn best(&self) -> Option<&Best> {
        self.run.progress.best.as_ref()
    }

    fn mean(&self) -> Vec<f64> {
        self.run.boundary.phenotype(&self.run.bounds, &self.mean)
    }

    fn sigma(&self) -> Option<f64> {
        Some(self.sigma)
    }

    fn generation(&self) -> u64 {
        self.run.progress.generation
    }

    fn evaluations(&self) -> u64 {
        self.run.progress.evaluations
    }

    fn should_stop(&self) -> Option<Termination> {
        self.run.stop
    }
}
