//! The benchmark sweep of BENCHMARKS.md ("Search optimizers"): every (function, dimension,
//! optimizer) cell over 25 seeds through the same `bench::run_one` that
//! `evomerge bench search` runs, on 2 threads.
//!
//! ```text
//! cargo run -p evomerge-search --release --example search_sweep -- benchmarks/search
//! ```
//!
//! Writes `runs.csv` (one row per run) and `summary.csv` (one row per cell) into the given
//! folder and prints the Markdown table.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use evomerge_search::bench::{BenchOptions, Function, Row, run_one, summarize};

const DIMS: [usize; 5] = [2, 5, 10, 20, 40];
const SEEDS: u64 = 25;
const TARGET: f64 = 1e-8;

/// (x0, sigma0, budget per dimension, optimizers) of each function.
fn protocol(f: Function) -> (f64, f64, u64, &'static [&'static str]) {
    match f {
        Function::Sphere | Function::Ellipsoid | Function::RotatedEllipsoid => {
            (1.0, 1.0, 10_000, &["cma", "sep-cma"])
        }
        // pycma's doctest setting
        Function::Rosenbrock => (0.2, 0.1, 10_000, &["cma", "sep-cma"]),
        Function::Rastrigin => (3.0, 2.0, 100_000, &["ipop-cma", "ipop-sep-cma"]),
    }
}

struct Cell {
    opts: BenchOptions,
    name: &'static str,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "benchmarks/search".into());
    std::fs::create_dir_all(&out)?;
    let mut cells = Vec::new();
    for f in Function::ALL {
        let (x0, sigma0, per_dim, optimizers) = protocol(f);
        for dim in DIMS {
            for name in optimizers {
                cells.push(Cell {
                    opts: BenchOptions {
                        optimizer: name.parse()?,
                        function: f,
                        dim,
                        seeds: SEEDS,
                        x0,
                        sigma0,
                        target: TARGET,
                        max_evaluations: per_dim * dim as u64,
                    },
                    name,
                });
            }
        }
    }
    // one task per (cell, seed); results land at a fixed index, so the output does not
    // depend on scheduling
    let tasks: Vec<(usize, u64)> = (0..cells.len())
        .flat_map(|c| (0..SEEDS).map(move |s| (c, s)))
        .collect();
    let results: Mutex<Vec<Option<(Row, f64)>>> = Mutex::new(vec![None; tasks.len()]);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(c, seed)) = tasks.get(k) else {
                        break;
                    };
                    let t0 = Instant::now();
                    let row = run_one(&cells[c].opts, seed).expect("benchmark run");
                    let secs = t0.elapsed().as_secs_f64();
                    results.lock().expect("no poisoned lock")[k] = Some((row, secs));
                }
            });
        }
    });
    let results: Vec<(Row, f64)> = results
        .into_inner()?
        .into_iter()
        .map(|r| r.expect("every task ran"))
        .collect();
    eprintln!("sweep: {:.1} s wall", started.elapsed().as_secs_f64());

    let mut runs = File::create(format!("{out}/runs.csv"))?;
    writeln!(
        runs,
        "function,dim,optimizer,x0,sigma0,max_evaluations,seed,evaluations,best_f,success"
    )?;
    let mut summary = File::create(format!("{out}/summary.csv"))?;
    writeln!(
        summary,
        "function,dim,optimizer,x0,sigma0,max_evaluations,runs,successes,success_rate,\
         median_evaluations,min_evaluations,max_evaluations_success,ert,median_best_f,cpu_seconds"
    )?;
    println!(
        "| function | n | optimizer | x0 | sigma0 | budget | success | median evals | min–max | ERT |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (c, cell) in cells.iter().enumerate() {
        let o = &cell.opts;
        let chunk = &results[c * SEEDS as usize..(c + 1) * SEEDS as usize];
        let rows: Vec<Row> = chunk.iter().map(|(r, _)| r.clone()).collect();
        let cpu: f64 = chunk.iter().map(|(_, s)| s).sum();
        for r in &rows {
            writeln!(
                runs,
                "{},{},{},{},{},{},{},{},{:e},{}",
                o.function,
                o.dim,
                cell.name,
                o.x0,
                o.sigma0,
                o.max_evaluations,
                r.seed,
                r.evaluations,
                r.best_f,
                r.success
            )?;
        }
        let s = summarize(&rows);
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_default();
        let opt_u = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        writeln!(
            summary,
            "{},{},{},{},{},{},{},{},{:.2},{},{},{},{},{:e},{:.2}",
            o.function,
            o.dim,
            cell.name,
            o.x0,
            o.sigma0,
            o.max_evaluations,
            s.runs,
            s.successes,
            s.success_rate,
            opt(s.median_evaluations),
            opt_u(s.min_evaluations),
            opt_u(s.max_evaluations),
            opt(s.ert),
            s.median_best_f,
            cpu
        )?;
        let range = match (s.min_evaluations, s.max_evaluations) {
            (Some(a), Some(b)) => format!("{a}–{b}"),
            _ => "–".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} |",
            o.function,
            o.dim,
            cell.name,
            o.x0,
            o.sigma0,
            o.max_evaluations,
            s.successes,
            s.runs,
            s.median_evaluations
                .map(|v| format!("{v:.0}"))
                .unwrap_or("–".into()),
            range,
            s.ert.map(|v| format!("{v:.0}")).unwrap_or("–".into()),
        );
    }
    Ok(())
}
