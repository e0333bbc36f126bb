//! The benchmark driver behind `evomerge bench search`: the classic test functions, one run
//! per seed until a target is reached, and the per-seed CSV.
//!
//! A run starts at `x0 = (v, ..., v)` with step size `sigma0`, no bounds, seed `i` for run
//! `i` (`i = 0..seeds`), and stops at the first evaluation with `f < target`, when the
//! optimizer's own termination fires, or when the budget is used up. `evaluations` is the
//! 1-based index of the first evaluation below the target (success) or the evaluations
//! used (failure).

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::optimizer::median;
use crate::{Bounds, Optimizer, OptimizerConfig, SearchError};

/// Seed of the fixed random rotation of `rotated-ellipsoid` (mixed with the dimension).
pub const ROTATION_SEED: u64 = 0x0E70_3E26_5EED;

/// A benchmark function; its minimum is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    /// `sum x_i^2`.
    Sphere,
    /// `sum 1e6^(i/(n-1)) x_i^2` (condition number 1e6).
    Ellipsoid,
    /// The ellipsoid of `R x` for a fixed random rotation `R` (seeded by [`ROTATION_SEED`]).
    RotatedEllipsoid,
    /// `sum_{i<n-1} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`, minimum at `(1, ..., 1)`.
    Rosenbrock,
    /// `10 n + sum x_i^2 - 10 cos(2 pi x_i)`.
    Rastrigin,
}

impl Function {
    /// All functions, in the order of the benchmark table.
    pub const ALL: [Function; 5] = [
        Function::Sphere,
        Function::Ellipsoid,
        Function::RotatedEllipsoid,
        Function::Rosenbrock,
        Function::Rastrigin,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Function::Sphere => "sphere",
            Function::Ellipsoid => "ellipsoid",
            Function::RotatedEllipsoid => "rotated-ellipsoid",
            Function::Rosenbrock => "rosenbrock",
            Function::Rastrigin => "rastrigin",
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Function {
    type Err = SearchError;
    fn from_str(s: &str) -> Result<Self, SearchError> {
        Function::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| SearchError::UnknownFunction(s.to_string()))
    }
}

/// A benchmark function instantiated for one dimension.
#[derive(Clone, Debug)]
pub struct Objective {
    function: Function,
    /// Ellipsoid coefficients `1e6^(i/(n-1))`.
    scales: Vec<f64>,
    rotation: Option<DMatrix<f64>>,
}

impl Objective {
    /// The function in `dim` dimensions.
    pub fn new(function: Function, dim: usize) -> Self {
        let scales = (0..dim)
            .map(|i| {
                if dim > 1 {
                    1e6f64.powf(i as f64 / (dim - 1) as f64)
                } else {
                    1.0
                }
            })
            .collect();
        let rotation = (function == Function::RotatedEllipsoid).then(|| random_rotation(dim));
        Objective {
            function,
            scales,
            rotation,
        }
    }

    /// f(x).
    pub fn value(&self, x: &[f64]) -> f64 {
        match self.function {
            Function::Sphere => x.iter().map(|v| v * v).sum(),
            Function::Ellipsoid => self.ellipsoid(x),
            Function::RotatedEllipsoid => {
                let r = self
                    .rotation
                    .as_ref()
                    .expect("rotation is built with the objective");
                let rx = r * nalgebra::DVector::from_column_slice(x);
                self.ellipsoid(rx.as_slice())
            }
            Function::Rosenbrock => x
                .windows(2)
                .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
                .sum(),
            Function::Rastrigin => {
                10.0 * x.len() as f64
                    + x.iter()
                        .map(|v| v * v - 10.0 * (2.0 * std::f64::consts::PI * v).cos())
                        .sum::<f64>()
            }
        }
    }

    fn ellipsoid(&self, x: &[f64]) -> f64 {
        x.iter().zip(&self.scales).map(|(v, s)| s * v * v).sum()
    }
}

/// A Haar-random orthogonal matrix: Q of the QR decomposition of a Gaussian matrix, with the
/// signs fixed by diag(R).
fn random_rotation(dim: usize) -> DMatrix<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(ROTATION_SEED ^ dim as u64);
    let g = DMatrix::from_fn(dim, dim, |_, _| rng.sample::<f64, _>(StandardNormal));
    let qr = g.qr();
    let mut q = qr.q();
    let r = qr.r();
    for (j, mut col) in q.column_iter_mut().enumerate() {
        if r[(j, j)] < 0.0 {
            col.neg_mut();
        }
    }
    q
}

/// The budget used when none is given: `10_000 · n` evaluations.
pub fn default_max_evaluations(dim: usize) -> u64 {
    10_000 * dim as u64
}

/// What `evomerge bench search` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// The optimizer and its settings (its own budget is replaced by `max_evaluations`).
    pub optimizer: OptimizerConfig,
    /// The function to minimise.
    pub function: Function,
    /// Its dimension.
    pub dim: usize,
    /// Number of runs; run `i` uses seed `i`.
    pub seeds: u64,
    /// Every coordinate of the start point.
    pub x0: f64,
    /// Initial step size.
    pub sigma0: f64,
    /// Success: an evaluation with `f < target`.
    pub target: f64,
    /// Evaluation budget of each run.
    pub max_evaluations: u64,
}

/// One run of a benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The run's seed.
    pub seed: u64,
    /// Evaluations to the first `f < target` (success), else evaluations used.
    pub evaluations: u64,
    /// Best f seen.
    pub best_f: f64,
    /// Whether the target was reached within the budget.
    pub success: bool,
}

/// One run with the given seed.
pub fn run_one(opts: &BenchOptions, seed: u64) -> Result<Row, SearchError> {
    let mut config = opts.optimizer.clone();
    let budget = opts.max_evaluations;
    config.set_max_evaluations(Some(budget.max(1)));
    let objective = Objective::new(opts.function, opts.dim);
    let mut optimizer = config.build(
        Bounds::unbounded(opts.dim)?,
        &vec![opts.x0; opts.dim],
        opts.sigma0,
        seed,
    )?;
    let mut best_f = f64::INFINITY;
    let mut hit = None;
    while hit.is_none() && optimizer.evaluations() < budget && optimizer.should_stop().is_none() {
        let before = optimizer.evaluations();
        let fitness: Vec<Option<f64>> = optimizer
            .ask()
            .iter()
            .map(|x| Some(objective.value(x)))
            .collect();
        for (i, f) in fitness.iter().enumerate() {
            let f = f.unwrap_or(f64::INFINITY);
            best_f = best_f.min(f);
            let evaluation = before + i as u64 + 1;
            if hit.is_none() && f < opts.target && evaluation <= budget {
                hit = Some(evaluation);
            }
        }
        optimizer.tell(&fitness)?;
    }
    Ok(Row {
        seed,
        evaluations: hit.unwrap_or(optimizer.evaluations()),
        best_f,
        success: hit.is_some(),
    })
}

/// Runs seeds `0..opts.seeds`.
pub fn run_bench(opts: &BenchOptions) -> Result<Vec<Row>, SearchError> {
    (0..opts.seeds).map(|seed| run_one(opts, seed)).collect()
}

/// Writes rows as CSV with the header `seed,evaluations,best_f,success`.
pub fn write_csv<W: Write>(rows: &[Row], out: W) -> Result<(), SearchError> {
    let mut w = csv::Writer::from_writer(out);
    for row in rows {
        w.serialize(row)?;
    }
    w.flush().map_err(csv::Error::from)?;
    Ok(())
}

/// Aggregate of a set of runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of runs.
    pub runs: usize,
    /// Runs that reached the target.
    pub successes: usize,
    /// `successes / runs`.
    pub success_rate: f64,
    /// Median evaluations of the successful runs.
    pub median_evaluations: Option<f64>,
    /// Smallest and largest evaluations of the successful runs.
    pub min_evaluations: Option<u64>,
    /// Largest evaluations of the successful runs.
    pub max_evaluations: Option<u64>,
    /// Expected running time (COCO's aRT): all evaluations of all runs / successes.
    pub ert: Option<f64>,
    /// Median of the runs' best f.
    pub median_best_f: f64,
}

/// Summarises runs (at least one).
pub fn summarize(rows: &[Row]) -> Summary {
    let ok: Vec<f64> = rows
        .iter()
        .filter(|r| r.success)
        .map(|r| r.evaluations as f64)
        .collect();
    let total: u64 = rows.iter().map(|r| r.evaluations).sum();
    let bests: Vec<f64> = rows.iter().map(|r| r.best_f).collect();
    Summary {
        runs: rows.len(),
        successes: ok.len(),
        success_rate: if rows.is_empty() {
            0.0
        } else {
            ok.len() as f64 / rows.len() as f64
        },
        median_evaluations: (!ok.is_empty()).then(|| median(&ok)),
        min_evaluations: ok.iter().map(|v| *v as u64).min(),
        max_evaluations: ok.iter().map(|v| *v as u64).max(),
        ert: (!ok.is_empty()).then(|| total as f64 / ok.len() as f64),
        median_best_f: if bests.is_empty() {
            f64::NAN
        } else {
            median(&bests)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_have_their_textbook_values() {
        let x = [1.0, -2.0, 0.5];
        assert_eq!(Objective::new(Function::Sphere, 3).value(&x), 5.25);
        // 1 + 1e3 * 4 + 1e6 * 0.25
        let e = Objective::new(Function::Ellipsoid, 3).value(&x);
        assert!((e - (1.0 + 4.0 * 1e3 + 0.25 * 1e6)).abs() < 1e-6, "{e}");
        // 100 (-2 - 1)^2 + 0 + 100 (0.5 - 4)^2 + 9 = 900 + 1225 + 9
        assert_eq!(Objective::new(Function::Rosenbrock, 3).value(&x), 2134.0);
        assert_eq!(
            Objective::new(Function::Rosenbrock, 3).value(&[1.0; 3]),
            0.0
        );
        let r = Objective::new(Function::Rastrigin, 3).value(&x);
        // 30 + (1 - 10) + (4 - 10) + (0.25 + 10) = 25.25
        assert!((r - 25.25).abs() < 1e-12, "{r}");
        assert_eq!(Objective::new(Function::Rastrigin, 2).value(&[0.0; 2]), 0.0);
    }

    #[test]
    fn rotation_is_orthogonal_and_fixed() {
        let q = random_rotation(7);
        let qtq = q.transpose() * &q;
        assert!((qtq - DMatrix::identity(7, 7)).abs().max() < 1e-12);
        assert_eq!(q, random_rotation(7));
        let f = Objective::new(Function::RotatedEllipsoid, 7);
        assert_eq!(f.value(&[0.0; 7]), 0.0);
        // a rotation changes the value of an axis-aligned point
        let e = Objective::new(Function::Ellipsoid, 7);
        let x = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        assert_ne!(f.value(&x), e.value(&x));
        // and keeps the norm: sum of coefficient-weighted squares lies within the range
        let v = f.value(&x);
        assert!((1.0..=1e6).contains(&v), "{v}");
    }

    #[test]
    fn names_round_trip() {
        for f in Function::ALL {
            assert_eq!(f.name().parse::<Function>().unwrap(), f);
        }
        assert!(matches!(
            "griewank".parse::<Function>(),
            Err(SearchError::UnknownFunction(_))
        ));
    }

    #[test]
    fn csv_has_the_documented_header() {
        let rows = vec![
            Row {
                seed: 0,
                evaluations: 10,
                best_f: 5e-9,
                success: true,
            },
            Row {
                seed: 1,
                evaluations: 30,
                best_f: 0.5,
                success: false,
            },
        ];
        let mut out = Vec::new();
        write_csv(&rows, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "seed,evaluations,best_f,success\n0,10,5e-9,true\n1,30,0.5,false\n"
        );
        let s = summarize(&rows);
        assert_eq!((s.runs, s.successes), (2, 1));
        assert_eq!(s.median_evaluations, Some(10.0));
        assert_eq!(s.ert, Some(40.0));
    }
}
