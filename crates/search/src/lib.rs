//! Ask/tell optimizers for evomerge's search over merge recipes.
//!
//! **What it is for.** Given a box of per-coordinate bounds, a start point `x0`, an initial
//! step size `sigma0` and a seed, an optimizer hands out generations of candidate vectors
//! ([`Optimizer::ask`]) and learns from their fitness ([`Optimizer::tell`]). Everything is
//! **minimised**: a runner that maximises accuracy tells `-accuracy`. A failed candidate is told
//! as `None` (NaN and ±inf count as failures too): it ranks after every valid candidate,
//! never becomes the best, and never corrupts the state. In the CMA family a failed candidate
//! takes a worst rank (a negative weight in active CMA, never a positive one); a generation in
//! which every candidate failed leaves the distribution unchanged, and
//! `max_failed_generations` (10) such generations in a row stop the run
//! ([`Termination::NoValidFitness`]).
//!
//! Candidates always lie inside the bounds. The CMA family uses pycma's boundary transform by
//! default, or the `cmaes`/Optuna resample-then-clip ([`BoundaryMode`] says why the default).
//!
//! The optimizers, all behind one trait and one config enum ([`OptimizerConfig`], tagged by
//! `optimizer = "..."` in TOML, unknown keys rejected):
//!
//! | name | type | for |
//! |---|---|---|
//! | `cma` | [`Cma`] | CMA-ES, full covariance, active update (Hansen's defaults; up to a few hundred dimensions) |
//! | `sep-cma` | [`SepCma`] | diagonal covariance, O(n) per candidate (the DFS genome, n in the thousands) |
//! | `ipop-cma`, `ipop-sep-cma` | [`Ipop`] | restarts with doubling population (multimodal problems) |
//! | `ga` | [`Ga`] | genetic algorithm (tournament, uniform/blend crossover, Gaussian mutation, elitism) |
//! | `random` | [`RandomSearch`] | the baseline |
//!
//! The whole state — distribution, counters, best-so-far, the pending generation and the
//! ChaCha random generator — is one serde value, [`OptimizerState`]. Saved as JSON after any
//! generation (floats round-trip bit for bit) and restored, it produces exactly the candidates
//! the uninterrupted run would have produced; [`OptimizerState::save`] writes it atomically
//! (temporary file, fsync, rename). [`bench`](mod@bench) holds the benchmark driver behind
//! `evomerge bench search`.
//!
//! **What it is not for.** It knows nothing about models, genomes or evaluation: the genome
//! crate maps recipes to vectors and bounds, the runner evaluates and logs. It runs no
//! objective itself and starts no threads. Full CMA-ES is for up to a few hundred dimensions;
//! the DFS genome (thousands) wants `sep-cma`.
//!
//! # Example
//!
//! ```
//! use evomerge_search::{Bounds, Optimizer, OptimizerConfig, OptimizerState};
//!
//! let config: OptimizerConfig = toml::from_str(r#"
//!     optimizer = "cma"
//!     max_evaluations = 3000
//! "#).unwrap();
//! let bounds = Bounds::uniform(4, -5.0, 5.0).unwrap();
//! let mut opt = config.build(bounds, &[1.0; 4], 0.5, 42).unwrap();
//! while opt.should_stop().is_none() {
//!     let candidates = opt.ask();
//!     let fitness: Vec<Option<f64>> = candidates
//!         .iter()
//!         .map(|x| Some(x.iter().map(|v| v * v).sum()))
//!         .collect();
//!     opt.tell(&fitness).unwrap();
//!     // after each generation the runner saves the state ...
//!     let json = opt.to_json().unwrap();
//!     // ... and after a crash continues from it.
//!     opt = OptimizerState::from_json(&json).unwrap();
//! }
//! assert!(opt.best().unwrap().f < 1e-8);
//! ```

mod bounds;
mod cma;
mod config;
mod error;
mod es;
mod ga;
mod ipop;
mod optimizer;
mod random;
mod sep_cma;
mod state;
mod termination;

pub mod bench;

pub use bounds::{BoundaryMode, Bounds, MAX_RESAMPLING};
pub use cma::{Cma, CmaConfig, CmaParams, default_population_size};
pub use config::OptimizerConfig;
pub use error::SearchError;
pub use ga::{Crossover, Ga, GaConfig};
pub use ipop::{Ipop, IpopConfig, IpopVariant, RestartPoint, RestartRecord};
pub use optimizer::{Best, Optimizer};
pub use random::{RandomConfig, RandomSearch};
pub use sep_cma::{SepCma, SepCmaParams};
pub use state::OptimizerState;
pub use termination::{Termination, Tolerances};
