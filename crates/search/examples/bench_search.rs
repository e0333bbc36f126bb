//! `evomerge bench search` until the CLI crate has the subcommand: runs one optimizer on one
//! benchmark function over several seeds and prints `seed,evaluations,best_f,success` CSV.
//!
//! ```text
//! cargo run -p evomerge-search --release --example bench_search -- \
//!     --optimizer cma --function rosenbrock --dim 10 --seeds 25 --x0 0.2 --sigma0 0.1 --target 1e-8
//! ```

use clap::Parser;
use evomerge_search::OptimizerConfig;
use evomerge_search::bench::{
    BenchOptions, Function, default_max_evaluations, run_bench, write_csv,
};

/// Benchmark a search optimizer on a test function; CSV to stdout.
#[derive(Parser)]
struct Args {
    /// cma | sep-cma | ipop-cma | ipop-sep-cma | ga | random
    #[arg(long)]
    optimizer: String,
    /// sphere | ellipsoid | rotated-ellipsoid | rosenbrock | rastrigin
    #[arg(long)]
    function: String,
    /// Dimension n.
    #[arg(long)]
    dim: usize,
    /// Number of runs; run i uses seed i.
    #[arg(long, default_value_t = 25)]
    seeds: u64,
    /// Start point: this value in every coordinate.
    #[arg(long)]
    x0: f64,
    /// Initial step size.
    #[arg(long)]
    sigma0: f64,
    /// Success when f < target.
    #[arg(long, default_value_t = 1e-8)]
    target: f64,
    /// Evaluation budget per run (default 10000 n).
    #[arg(long)]
    max_evals: Option<u64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let opts = BenchOptions {
        optimizer: args.optimizer.parse::<OptimizerConfig>()?,
        function: args.function.parse::<Function>()?,
        dim: args.dim,
        seeds: args.seeds,
        x0: args.x0,
        sigma0: args.sigma0,
        target: args.target,
        max_evaluations: args
            .max_evals
            .unwrap_or_else(|| default_max_evaluations(args.dim)),
    };
    let rows = run_bench(&opts)?;
    write_csv(&rows, std::io::stdout().lock())?;
    Ok(())
}
