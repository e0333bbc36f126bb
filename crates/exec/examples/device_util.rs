//! Device utilization of the pool over fake devices: each "evaluation" sleeps a random time in
//! [t, 2t] (seeded), each generation waits for its last candidate (as CMA-ES does), and the
//! utilization is busy / wall per device over all generations.
//!
//! ```sh
//! cargo run --release -p evomerge-exec --example device_util -- [T_MS] [GENERATIONS]
//! ```
//! prints a table for population 16 over 4 devices, then population vs device count.

use evomerge_exec::{Device, DevicePool, utilization};
use std::time::{Duration, Instant};

/// Mean utilization of `devices` over `generations` of `population` candidates.
fn measure(devices: usize, population: usize, generations: usize, t_ms: f64, seed: u64) -> f64 {
    let pool = DevicePool::new(
        (0..devices)
            .map(|i| Device::parse(&format!("cuda:{i}")).expect("device"))
            .collect(),
        1,
    )
    .expect("pool");
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let before = pool.busy();
    let t0 = Instant::now();
    for _ in 0..generations {
        let times: Vec<Duration> = (0..population)
            .map(|_| Duration::from_secs_f64(t_ms * (1.0 + next()) / 1e3))
            .collect();
        pool.run(times, |t, _lease| std::thread::sleep(t), |_| {});
    }
    let u = utilization(&before, &pool.busy(), t0.elapsed());
    u.iter().sum::<f64>() / u.len() as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t_ms: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100.0);
    let generations: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    println!(
        "evaluation times uniform in [{t_ms}, {}] ms, {generations} generations",
        2.0 * t_ms
    );
    println!("| devices | population | candidates per device and generation | utilization |");
    println!("|---|---|---|---|");
    let mut cases: Vec<(usize, usize)> = vec![(4, 16)];
    cases.extend([4, 8, 12, 32, 64].map(|p| (4, p)));
    cases.extend([2, 3, 5, 8, 16].map(|d| (d, 16)));
    for (d, p) in cases {
        let u = measure(d, p, generations, t_ms, 7 + d as u64 * 31 + p as u64);
        println!(
            "| {d} | {p} | {:.2} | {:.1}% |",
            p as f64 / d as f64,
            100.0 * u
        );
    }
}
