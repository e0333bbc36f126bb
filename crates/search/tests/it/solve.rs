//! Each optimizer solves the 10-D sphere within a budget (GA and random search: a looser
//! target), and the CMA family keeps candidates inside the bounds.

use evomerge_search::bench::{BenchOptions, Function, Objective, run_one};
use evomerge_search::{Bounds, Optimizer, OptimizerConfig, Termination};

fn sphere(name: &str, target: f64, budget: u64) -> (bool, u64, f64) {
    let opts = BenchOptions {
        optimizer: name.parse().unwrap(),
        function: Function::Sphere,
        dim: 10,
        seeds: 1,
        x0: 1.0,
        sigma0: 1.0,
        target,
        max_evaluations: budget,
    };
    let mut worst = 0;
    let mut worst_f = 0.0f64;
    let mut all = true;
    for seed in 0..3 {
        let row = run_one(&opts, seed).unwrap();
        all &= row.success;
        worst = worst.max(row.evaluations);
        worst_f = worst_f.max(row.best_f);
    }
    (all, worst, worst_f)
}

#[test]
fn cma_family_solves_the_10d_sphere_to_1e_8() {
    // pycma needs ~1000-1600 evaluations from f = 10 on the 10-D sphere
    for (name, budget) in [
        ("cma", 2_000),
        ("sep-cma", 2_000),
        ("ipop-cma", 2_000),
        ("ipop-sep-cma", 2_000),
    ] {
        let (ok, evals, f) = sphere(name, 1e-8, budget);
        assert!(ok, "{name}: best {f:e} after {evals} evaluations");
    }
}

#[test]
fn ga_and_random_reach_looser_targets() {
    let (ok, evals, f) = sphere("ga", 1e-3, 10_000);
    assert!(ok, "ga: best {f:e} after {evals} evaluations");

    // random search in the box [-1, 1]^10: f < 1.5 has probability ~1.5 % per sample
    let config: OptimizerConfig = "random".parse().unwrap();
    let mut opt = config
        .build(Bounds::uniform(10, -1.0, 1.0).unwrap(), &[0.5; 10], 0.3, 3)
        .unwrap();
    let f = Objective::new(Function::Sphere, 10);
    while opt.evaluations() < 1_000 {
        let fit: Vec<Option<f64>> = opt.ask().iter().map(|x| Some(f.value(x))).collect();
        opt.tell(&fit).unwrap();
    }
    let best = opt.best().unwrap().f;
    assert!(best < 1.5, "random: best {best}");
    assert_eq!(opt.mean(), vec![0.5; 10]);
    assert_eq!(opt.sigma(), None);
}

#[test]
fn cma_beats_random_search_by_orders_of_magnitude() {
    // same budget, same start: the comparison every benchmark needs a baseline for
    let budget = 1_500;
    let (_, _, cma) = sphere("cma", 0.0, budget);
    let (_, _, random) = sphere("random", 0.0, budget);
    assert!(cma < 1e-6 * random, "cma {cma:e} vs random {random:e}");
}

/// Minimises a sphere centred at `centre` inside `bounds`; returns the optimizer.
fn run_bounded(config: &str, bounds: Bounds, x0: &[f64], centre: &[f64]) -> impl Optimizer {
    let config: OptimizerConfig = toml::from_str(config).unwrap();
    let mut opt = config.build(bounds.clone(), x0, 0.3, 9).unwrap();
    for _ in 0..400 {
        let xs = opt.ask();
        for x in &xs {
            assert!(bounds.contains(x), "{x:?} outside the box");
        }
        let fit: Vec<Option<f64>> = xs
            .iter()
            .map(|x| Some(x.iter().zip(centre).map(|(a, c)| (a - c).powi(2)).sum()))
            .collect();
        opt.tell(&fit).unwrap();
        if opt.should_stop().is_some() {
            break;
        }
    }
    opt
}

#[test]
fn bounded_optimum_on_the_boundary() {
    // the unconstrained optimum (1.5, -0.5, 0.5, 0.5) lies outside [0,1]^4 in two coordinates:
    // the constrained one is (1, 0, 0.5, 0.5)
    let bounds = Bounds::uniform(4, 0.0, 1.0).unwrap();
    let centre = [1.5, -0.5, 0.5, 0.5];
    let want = [1.0, 0.0, 0.5, 0.5];
    for (name, mode, solves) in [
        ("cma", "transform", true),
        ("sep-cma", "transform", true),
        ("sep-cma", "resample-clip", true),
        // Full CMA-ES with resample-and-clip loses its step size on this problem, in the
        // `cmaes` library too (5 of 5 seeds there); only box feasibility is checked.
        ("cma", "resample-clip", false),
    ] {
        let config = format!("optimizer = \"{name}\"\nboundary = \"{mode}\"");
        let opt = run_bounded(&config, bounds.clone(), &[0.5; 4], &centre);
        assert!(bounds.contains(&opt.mean()), "{name}/{mode}: mean outside");
        if solves {
            let best = opt.best().unwrap();
            for (b, w) in best.x.iter().zip(want) {
                assert!((b - w).abs() < 1e-4, "{name}/{mode}: {:?}", best.x);
            }
        }
    }
}

#[test]
fn a_budget_stops_every_optimizer() {
    for name in OptimizerConfig::NAMES {
        let mut config: OptimizerConfig = name.parse().unwrap();
        config.set_max_evaluations(Some(100));
        let mut opt = config
            .build(Bounds::unbounded(3).unwrap(), &[1.0; 3], 1.0, 0)
            .unwrap();
        let mut generations = 0;
        while opt.should_stop().is_none() {
            let fit: Vec<Option<f64>> = opt
                .ask()
                .iter()
                .map(|x| Some(x.iter().sum::<f64>().abs()))
                .collect();
            opt.tell(&fit).unwrap();
            generations += 1;
            assert!(generations < 100, "{name} never stopped");
        }
        assert_eq!(
            opt.should_stop(),
            Some(Termination::MaxEvaluations),
            "{name}"
        );
        assert!(
            opt.evaluations() >= 100 && opt.evaluations() < 100 + 20,
            "{name}"
        );
    }
}

#[test]
fn cma_terminates_by_itself_on_a_solved_problem() {
    let config: OptimizerConfig = "cma".parse().unwrap();
    let mut opt = config
        .build(Bounds::unbounded(4).unwrap(), &[1.0; 4], 1.0, 2)
        .unwrap();
    let f = Objective::new(Function::Sphere, 4);
    for _ in 0..5_000 {
        let fit: Vec<Option<f64>> = opt.ask().iter().map(|x| Some(f.value(x))).collect();
        opt.tell(&fit).unwrap();
        if opt.should_stop().is_some() {
            break;
        }
    }
    let reason = opt.should_stop().expect("no termination criterion fired");
    assert!(
        matches!(reason, Termination::TolFun | Termination::TolX),
        "{reason}"
    );
    assert!(opt.best().unwrap().f < 1e-12);
}
