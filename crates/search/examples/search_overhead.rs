//! Optimizer overhead per generation (ask + tell, the objective excluded):
//! sep-CMA-ES at n = 4288, lambda = 128 (the DFS genome) and full CMA-ES at n = 200 (default
//! lambda = 19), each with both boundary modes, box [-5, 5]^n.
//!
//! ```text
//! cargo run -p evomerge-search --release --example search_overhead
//! ```
//!
//! Baseline measured in the same run: drawing the lambda·n standard normals of one
//! generation from the same generator (ChaCha8 + ziggurat), the floor any sampler pays.

use std::hint::black_box;
use std::time::{Duration, Instant};

use evomerge_search::{Bounds, Optimizer, OptimizerConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

#[derive(Default)]
struct Timing {
    mean_ms: f64,
    median_ms: f64,
    p90_ms: f64,
}

fn summarize(mut t: Vec<Duration>) -> Timing {
    t.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Timing {
        mean_ms: t.iter().map(|d| ms(*d)).sum::<f64>() / t.len() as f64,
        median_ms: ms(t[t.len() / 2]),
        p90_ms: ms(t[t.len() * 9 / 10]),
    }
}

/// ask + tell time per generation; the objective (an ellipsoid) is computed untimed.
fn optimizer_time(
    name: &str,
    boundary: &str,
    n: usize,
    lambda: usize,
    generations: usize,
) -> (Timing, Timing, Timing, usize) {
    let config: OptimizerConfig = toml::from_str(&format!(
        "optimizer = \"{name}\"\npopulation_size = {lambda}\nboundary = \"{boundary}\""
    ))
    .unwrap();
    let bounds = Bounds::uniform(n, -5.0, 5.0).unwrap();
    let mut opt = config.build(bounds, &vec![1.0; n], 0.3, 1).unwrap();
    let mut times = Vec::with_capacity(generations);
    let (mut asks, mut tells) = (Vec::new(), Vec::new());
    for g in 0..generations + 3 {
        let t0 = Instant::now();
        let xs = opt.ask();
        let t_ask = t0.elapsed();
        let fitness: Vec<Option<f64>> = xs
            .iter()
            .map(|x| {
                Some(
                    x.iter()
                        .enumerate()
                        .map(|(i, v)| (1.0 + i as f64 / n as f64) * v * v)
                        .sum(),
                )
            })
            .collect();
        let t1 = Instant::now();
        opt.tell(&fitness).unwrap();
        let t_tell = t1.elapsed();
        if g >= 3 {
            times.push(t_ask + t_tell);
            asks.push(t_ask);
            tells.push(t_tell);
        }
    }
    black_box(opt.best());
    (
        summarize(times),
        summarize(asks),
        summarize(tells),
        opt.population_size(),
    )
}

/// Time to draw lambda·n standard normals.
fn normals_time(n: usize, lambda: usize, generations: usize) -> Timing {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut buf = vec![0.0f64; n];
    let mut times = Vec::with_capacity(generations);
    for _ in 0..generations {
        let t0 = Instant::now();
        for _ in 0..lambda {
            for b in buf.iter_mut() {
                *b = rng.sample(StandardNormal);
            }
            black_box(&buf);
        }
        times.push(t0.elapsed());
    }
    summarize(times)
}

fn main() {
    println!(
        "case,boundary,n,lambda,generations,mean_ms,median_ms,p90_ms,ask_mean_ms,tell_mean_ms,baseline_normals_mean_ms,ratio_to_baseline"
    );
    for (name, boundary, n, lambda, generations) in [
        ("sep-cma", "resample-clip", 4288, 128, 200),
        ("sep-cma", "transform", 4288, 128, 200),
        ("cma", "resample-clip", 200, 19, 500),
        ("cma", "transform", 200, 19, 500),
    ] {
        let (t, ask, tell, lambda) = optimizer_time(name, boundary, n, lambda, generations);
        let base = normals_time(n, lambda, generations);
        println!(
            "{name},{boundary},{n},{lambda},{generations},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.2}",
            t.mean_ms,
            t.median_ms,
            t.p90_ms,
            ask.mean_ms,
            tell.mean_ms,
            base.mean_ms,
            t.mean_ms / base.mean_ms
        );
    }
}
