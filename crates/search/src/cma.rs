//! CMA-ES with full covariance matrix: Hansen's 2016 tutorial defaults with active
//! (negative) weights, as implemented by the `cmaes` library, plus a lazy eigendecomposition.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::es::{EsRun, SIGMA_MAX, check_budget, check_population, check_start, effective_weights};
use crate::{Best, BoundaryMode, Bounds, Optimizer, SearchError, Termination, Tolerances};

/// Floor for a negative eigenvalue of C (the `cmaes` library's `_EPS`).
const EIGEN_FLOOR: f64 = 1e-8;

/// Default population size `4 + floor(3 ln n)`.
pub fn default_population_size(dim: usize) -> usize {
    4 + (3.0 * (dim as f64).ln()).floor() as usize
}

/// Settings of CMA-ES and sep-CMA-ES (`optimizer = "cma"` or `"sep-cma"`).
///
/// ```toml
/// optimizer = "cma"           # or "sep-cma"
/// population_size = 12        # default 4 + floor(3 ln n)
/// boundary = "transform"      # (pycma's BoundTransform) or "resample-clip" (cmaes/Optuna)
/// max_evaluations = 1000      # default: no budget
/// [termination]               # every key optional, see `Tolerances`
/// tol_fun = 1e-12
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CmaConfig {
    /// Candidates per generation (lambda); default `4 + floor(3 ln n)`.
    pub population_size: Option<usize>,
    /// How candidates are kept inside the bounds.
    pub boundary: BoundaryMode,
    /// Stop after this many evaluations (none by default).
    pub max_evaluations: Option<u64>,
    /// Termination tolerances.
    pub termination: Tolerances,
}

impl CmaConfig {
    pub(crate) fn validate(&self) -> Result<(), SearchError> {
        check_population("population_size", self.population_size, 2)?;
        check_budget(self.max_evaluations)?;
        self.termination.validate()
    }
}

/// Strategy constants of full CMA-ES (Hansen 2016, "The CMA Evolution Strategy: A Tutorial", Table 1; the `cmaes` library's `CMA`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CmaParams {
    /// Dimension n.
    pub dim: usize,
    /// Population size lambda.
    pub lambda: usize,
    /// Parent number mu = floor(lambda / 2).
    pub mu: usize,
    /// Recombination weights by rank (length lambda): the first mu positive and summing to 1,
    /// the rest negative (active CMA) scaled to sum to `-min(alpha_mu, alpha_mueff, alpha_posdef)`.
    pub weights: Vec<f64>,
    /// Variance-effective selection mass of the positive weights.
    pub mu_eff: f64,
    /// The same over the negative weights.
    pub mu_eff_minus: f64,
    /// Rank-one learning rate.
    pub c1: f64,
    /// Rank-mu learning rate.
    pub c_mu: f64,
    /// Cumulation constant of the step-size path.
    pub c_sigma: f64,
    /// Step-size damping.
    pub d_sigma: f64,
    /// Cumulation constant of the covariance path.
    pub c_c: f64,
    /// Learning rate of the mean (1).
    pub c_m: f64,
    /// E||N(0, I)|| approximated as sqrt(n) (1 - 1/(4n) + 1/(21 n^2)).
    pub chi_n: f64,
    /// Generations between eigendecompositions: max(1, floor(1 / (10 n (c1 + c_mu)))).
    pub eigen_interval: u64,
}

impl CmaParams {
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
        let w_prime: Vec<f64> = (1..=lambda)
            .map(|i| ((lambda as f64 + 1.0) / 2.0).ln() - (i as f64).ln())
            .collect();
        let mass = |w: &[f64]| {
            let s: f64 = w.iter().sum();
            s * s / w.iter().map(|v| v * v).sum::<f64>()
        };
        let mu_eff = mass(&w_prime[..mu]);
        let mu_eff_minus = mass(&w_prime[mu..]);

        let alpha_cov = 2.0;
        let c1 = alpha_cov / ((n + 1.3).powi(2) + mu_eff);
        let c_mu = (1.0 - c1).min(
            alpha_cov * (mu_eff - 2.0 + 1.0 / mu_eff)
                / ((n + 2.0).powi(2) + alpha_cov * mu_eff / 2.0),
        );
        let alpha_min = (1.0 + c1 / c_mu)
            .min(1.0 + 2.0 * mu_eff_minus / (mu_eff + 2.0))
            .min((1.0 - c1 - c_mu) / (n * c_mu));
        let positive_sum: f64 = w_prime.iter().filter(|w| **w > 0.0).sum();
        let negative_sum: f64 = w_prime.iter().filter(|w| **w < 0.0).map(|w| -w).sum();
        let weights = w_prime
            .iter()
            .map(|&w| {
                if w >= 0.0 {
                    w / positive_sum
                } else {
                    alpha_min * w / negative_sum
                }
            })
            .collect();

        let c_sigma = (mu_eff + 2.0) / (n + mu_eff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (n + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = (4.0 + mu_eff / n) / (n + 4.0 + 2.0 * mu_eff / n);
        let chi_n = n.sqrt() * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n));
        let eigen_interval = ((1.0 / (10.0 * n * (c1 + c_mu))).floor() as u64).max(1);
        Ok(CmaParams {
            dim,
            lambda,
            mu,
            weights,
            mu_eff,
            mu_eff_minus,
            c1,
            c_mu,
            c_sigma,
            d_sigma,
            c_c,
            c_m: 1.0,
            chi_n,
            eigen_interval,
        })
    }
}

/// CMA-ES with a full covariance matrix. Use it up to a few hundred dimensions; above that
/// use [`crate::SepCma`] (memory n², an O(n³) eigendecomposition every
/// [`CmaParams::eigen_interval`] generations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cma {
    params: CmaParams,
    run: EsRun,
    /// Mean of the (genotype) distribution.
    mean: DVector<f64>,
    sigma: f64,
    c: DMatrix<f64>,
    /// Eigenvectors of C as of the last decomposition (columns).
    b: DMatrix<f64>,
    /// Square roots of the eigenvalues of C as of the last decomposition.
    d: DVector<f64>,
    p_sigma: DVector<f64>,
    p_c: DVector<f64>,
    /// Generation count at the last decomposition.
    eigen_generation: u64,
}

impl Cma {
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
        let params = CmaParams::new(n, config.population_size)?;
        let mean = DVector::from_vec(config.boundary.genotype(&bounds, x0));
        let run = EsRun::new(
            bounds,
            config.boundary,
            config.termination.clone(),
            config.max_evaluations,
            sigma0,
            seed,
            params.lambda,
        );
        Ok(Cma {
            params,
            run,
            mean,
            sigma: sigma0,
            c: DMatrix::identity(n, n),
            b: DMatrix::identity(n, n),
            d: DVector::from_element(n, 1.0),
            p_sigma: DVector::zeros(n),
            p_c: DVector::zeros(n),
            eigen_generation: 0,
        })
    }

    /// The strategy constants in use.
    pub fn params(&self) -> &CmaParams {
        &self.params
    }

    /// The covariance matrix C (the distribution is N(mean, sigma² C)).
    pub fn covariance(&self) -> &DMatrix<f64> {
        &self.c
    }

    /// Ratio of the largest to the smallest principal axis length, max(D) / min(D).
    pub fn axis_ratio(&self) -> f64 {
        self.d.max() / self.d.min()
    }

    /// C^{-1/2} v = B D^{-1} B^T v with the current decomposition.
    fn inv_sqrt_mul(&self, v: &DVector<f64>) -> DVector<f64> {
        let t = self.b.tr_mul(v).component_div(&self.d);
        &self.b * t
    }

    /// The CMA-ES update for one told generation (Hansen 2016, eqs. 39-47).
    fn update(&mut self, genotypes: &[Vec<f64>], valid: &[bool]) {
        let p = &self.params;
        let n = p.dim as f64;
        let w = effective_weights(&p.weights, valid);
        let ys: Vec<DVector<f64>> = genotypes
            .iter()
            .map(|x| (DVector::from_column_slice(x) - &self.mean) / self.sigma)
            .collect();
        let mut y_w = DVector::zeros(p.dim);
        for (wi, y) in w.iter().zip(&ys).take(p.mu) {
            y_w.axpy(*wi, y, 1.0);
        }
        let mean = &self.mean + (p.c_m * self.sigma) * &y_w;

        let cs = p.c_sigma;
        let p_sigma = (1.0 - cs) * &self.p_sigma
            + (cs * (2.0 - cs) * p.mu_eff).sqrt() * self.inv_sqrt_mul(&y_w);
        let norm = p_sigma.norm();
        let sigma = (self.sigma * ((cs / p.d_sigma) * (norm / p.chi_n - 1.0)).exp()).min(SIGMA_MAX);

        let g = self.run.progress.generation as i32;
        let h_left = norm / (1.0 - (1.0 - cs).powi(2 * g)).sqrt();
        let h_sigma = h_left < (1.4 + 2.0 / (n + 1.0)) * p.chi_n;
        let h = if h_sigma { 1.0 } else { 0.0 };
        let cc = p.c_c;
        let p_c = (1.0 - cc) * &self.p_c + (h * (cc * (2.0 - cc) * p.mu_eff).sqrt()) * &y_w;
        let delta_h = (1.0 - h) * cc * (2.0 - cc);

        let w_sum: f64 = w.iter().sum();
        let mut c = &self.c * (1.0 + p.c1 * delta_h - p.c1 - p.c_mu * w_sum);
        c.ger(p.c1, &p_c, &p_c, 1.0);
        for (&wi, y) in w.iter().zip(&ys) {
            if wi == 0.0 {
                continue;
            }
            let w_circ = if wi > 0.0 {
                wi
            } else {
                wi * n / (self.inv_sqrt_mul(y).norm_squared() + EIGEN_FLOOR)
            };
            c.ger(p.c_mu * w_circ, y, y, 1.0);
        }
        let c = (&c + c.transpose()) * 0.5;

        let finite = |m: &[f64]| m.iter().all(|v| v.is_finite());
        if !(sigma.is_finite()
            && sigma > 0.0
            && finite(mean.as_slice())
            && finite(p_sigma.as_slice())
            && finite(p_c.as_slice())
            && finite(c.as_slice()))
        {
            self.run.stop = Some(Termination::NumericalError);
            return;
        }
        self.mean = mean;
        self.sigma = sigma;
        self.p_sigma = p_sigma;
        self.p_c = p_c;
        self.c = c;
        if self.run.progress.generation - self.eigen_generation >= self.params.eigen_interval {
            self.decompose();
        }
    }

    /// Eigendecomposition C = B diag(D²) Bᵀ; negative eigenvalues are floored (then C is
    /// rebuilt from the floored spectrum).
    fn decompose(&mut self) {
        let n = self.params.dim;
        let Some(eig) = SymmetricEigen::try_new(self.c.clone(), f64::EPSILON, 100 * n + 1000)
        else {
            self.run.stop = Some(Termination::NumericalError);
            return;
        };
        let mut d2 = eig.eigenvalues;
        let floored = d2.iter().any(|v| *v <= 0.0);
        if floored {
            d2.apply(|v| {
                if *v <= 0.0 {
                    *v = EIGEN_FLOOR
                }
            });
            let b = &eig.eigenvectors;
            self.c = b * DMatrix::from_diagonal(&d2) * b.transpose();
        }
        self.b = eig.eigenvectors;
        self.d = d2.map(f64::sqrt);
        self.eigen_generation = self.run.progress.generation;
    }

    /// Termination tests of the `cmaes` library (`CMA.should_stop`).
    fn termination(&self) -> Option<Termination> {
        if self.run.stop == Some(Termination::NumericalError) {
            return self.run.stop;
        }
        if let Some(t) = self.run.history_stop(self.params.lambda) {
            return Some(t);
        }
        let tol = &self.run.tolerances;
        let n = self.params.dim;
        let sigma = self.sigma;
        let diag = self.c.diagonal();
        let tol_x = tol.tol_x * self.run.sigma0;
        if diag.iter().all(|c| sigma * c < tol_x)
            && self.p_c.iter().all(|p| sigma * p.abs() < tol_x)
        {
            return Some(Termination::TolX);
        }
        if sigma * self.d.max() > tol.tol_x_up {
            return Some(Termination::TolXUp);
        }
        if self
            .mean
            .iter()
            .zip(diag.iter())
            .any(|(m, c)| *m == *m + 0.2 * sigma * c.sqrt())
        {
            return Some(Termination::NoEffectCoordinate);
        }
        let i = (self.run.progress.generation % n as u64) as usize;
        let axis = self.b.column(i) * (0.1 * sigma * self.d[i]);
        if self
            .mean
            .iter()
            .zip(axis.iter())
            .all(|(m, a)| *m == *m + *a)
        {
            return Some(Termination::NoEffectAxis);
        }
        let (dmax, dmin) = (self.d.max(), self.d.min());
        if (dmax * dmax) / (dmin * dmin) > tol.tol_condition {
            return Some(Termination::ConditionCov);
        }
        None
    }
}

impl Optimizer for Cma {
    fn dim(&self) -> usize {
        self.params.dim
    }

    fn population_size(&self) -> usize {
        self.params.lambda
    }

    fn ask(&mut self) -> Vec<Vec<f64>> {
        // B·diag(D), scaled column by column (only needed when a new generation is drawn).
        let mut bd = DMatrix::zeros(0, 0);
        if self.run.pending.is_none() {
            bd = self.b.clone();
            for (mut col, d) in bd.column_iter_mut().zip(self.d.iter()) {
                col *= *d;
            }
        }
        let (mean, sigma) = (&self.mean, self.sigma);
        let mut z = DVector::zeros(self.params.dim);
        let mut y = DVector::zeros(self.params.dim);
        self.run.ask_with(self.params.lambda, |rng, out| {
            for zi in z.iter_mut() {
                *zi = rng.sample(StandardNormal);
            }
            y.gemv(1.0, &bd, &z, 0.0);
            for ((o, m), yi) in out.iter_mut().zip(mean.iter()).zip(y.iter()) {
                *o = m + sigma * yi;
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
        self.run
            .boundary
            .phenotype(&self.run.bounds, self.mean.as_slice())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigendecomposition_is_lazy_for_large_n_and_c_stays_symmetric() {
        let n = 200;
        let mut cma = Cma::new(
            &CmaConfig::default(),
            Bounds::unbounded(n).unwrap(),
            &vec![1.0; n],
            0.5,
            3,
        )
        .unwrap();
        assert_eq!(cma.params.eigen_interval, 2);
        let mut last_b = cma.b.clone();
        for g in 1..=6u64 {
            let fitness: Vec<Option<f64>> = cma
                .ask()
                .iter()
                .map(|x| {
                    Some(
                        x.iter()
                            .enumerate()
                            .map(|(i, v)| (i + 1) as f64 * v * v)
                            .sum(),
                    )
                })
                .collect();
            cma.tell(&fitness).unwrap();
            assert_eq!(cma.c, cma.c.transpose(), "C not symmetric at {g}");
            if g % 2 == 0 {
                assert_eq!(cma.eigen_generation, g);
                assert_ne!(cma.b, last_b, "no decomposition at {g}");
                let d2 = cma.d.map(|d| d * d);
                let rebuilt = &cma.b * DMatrix::from_diagonal(&d2) * cma.b.transpose();
                assert!((rebuilt - &cma.c).abs().max() < 1e-12);
                last_b = cma.b.clone();
            } else {
                assert_eq!(cma.b, last_b, "decomposed at {g}");
            }
        }
        assert_eq!(cma.should_stop(), None);
    }
}
