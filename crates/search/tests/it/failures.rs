//! Failed candidates (None, NaN, ±inf) and bad input.

use evomerge_search::bench::{Function, Objective};
use evomerge_search::{
    Bounds, Optimizer, OptimizerConfig, OptimizerState, SearchError, Termination,
};

/// Every 3rd candidate fails, cycling through the kinds of failure.
fn flaky(g: usize, i: usize, f: f64) -> Option<f64> {
    match (g * 7 + i) % 12 {
        0 => None,
        3 => Some(f64::NAN),
        6 => Some(f64::NEG_INFINITY),
        9 => Some(f64::INFINITY),
        _ => Some(f),
    }
}

#[test]
fn partly_failed_generations_neither_crash_nor_corrupt_the_state() {
    let sphere = Objective::new(Function::Sphere, 10);
    for (name, target, budget) in [
        ("cma", 1e-8, 6_000),
        ("sep-cma", 1e-8, 6_000),
        ("ipop-cma", 1e-8, 6_000),
        ("ipop-sep-cma", 1e-8, 6_000),
        ("ga", 1e-2, 10_000),
        ("random", f64::INFINITY, 300),
    ] {
        let config: OptimizerConfig = name.parse().unwrap();
        let mut opt = config
            .build(Bounds::unbounded(10).unwrap(), &[1.0; 10], 1.0, 4)
            .unwrap();
        let mut g = 0;
        while opt.evaluations() < budget && opt.best().is_none_or(|b| b.f >= target) {
            let xs = opt.ask();
            let fit: Vec<Option<f64>> = xs
                .iter()
                .enumerate()
                .map(|(i, x)| flaky(g, i, sphere.value(x)))
                .collect();
            opt.tell(&fit).unwrap();
            g += 1;
            // the state stays finite: it survives JSON (which cannot hold NaN or inf)
            let back = OptimizerState::from_json(&opt.to_json().unwrap()).unwrap();
            assert_eq!(back, opt, "{name} generation {g}");
            assert!(opt.mean().iter().all(|v| v.is_finite()), "{name}");
            assert!(
                opt.sigma().is_none_or(|s| s.is_finite() && s > 0.0),
                "{name}"
            );
        }
        let best = opt.best().unwrap();
        assert!(best.f < target, "{name}: best {} after {budget}", best.f);
        // the best is a real evaluation, never a failed one
        assert_eq!(best.f, sphere.value(&best.x), "{name}");
        assert!(
            opt.should_stop().is_none(),
            "{name}: {:?}",
            opt.should_stop()
        );
    }
}

#[test]
fn a_fully_failed_generation_leaves_the_distribution_alone() {
    for name in ["cma", "sep-cma", "ipop-cma"] {
        let config: OptimizerConfig = name.parse().unwrap();
        let mut opt = config
            .build(Bounds::uniform(3, -2.0, 2.0).unwrap(), &[0.5; 3], 0.5, 1)
            .unwrap();
        // one normal generation first
        let xs = opt.ask();
        opt.tell(&vec![Some(1.0); xs.len()]).unwrap();
        let (mean, sigma) = (opt.mean(), opt.sigma());
        for k in 1..=10u64 {
            let xs = opt.ask();
            opt.tell(&vec![None; xs.len()]).unwrap();
            assert_eq!(opt.generation(), 1 + k, "{name}");
            if k < 10 {
                // (at k = 10 IPOP restarts, which moves the mean)
                assert_eq!(opt.mean(), mean, "{name}");
                assert_eq!(opt.sigma(), sigma, "{name}");
                assert_eq!(opt.should_stop(), None, "{name} after {k}");
            }
        }
        if name == "ipop-cma" {
            // the run gave up and IPOP restarted with twice the population
            let OptimizerState::Ipop(ipop) = &opt else {
                panic!()
            };
            assert_eq!(ipop.finished_runs()[0].reason, Termination::NoValidFitness);
            assert_eq!(opt.population_size(), 2 * xs_len(name));
        } else {
            assert_eq!(
                opt.should_stop(),
                Some(Termination::NoValidFitness),
                "{name}"
            );
            // a valid generation afterwards resets the streak
            let xs = opt.ask();
            opt.tell(&vec![Some(2.0); xs.len()]).unwrap();
            assert_eq!(opt.should_stop(), None, "{name}");
        }
        assert_eq!(opt.best().unwrap().f, 1.0);
    }
}

fn xs_len(name: &str) -> usize {
    let config: OptimizerConfig = name.parse().unwrap();
    config
        .build(Bounds::unbounded(3).unwrap(), &[0.0; 3], 1.0, 0)
        .unwrap()
        .population_size()
}

#[test]
fn bad_starts_are_clear_errors_for_every_optimizer() {
    for name in OptimizerConfig::NAMES {
        let config: OptimizerConfig = name.parse().unwrap();
        let b = Bounds::uniform(2, 0.0, 1.0).unwrap();
        let build = |x0: &[f64], sigma0: f64| config.build(b.clone(), x0, sigma0, 0);
        assert!(
            matches!(
                build(&[0.5, 1.5], 0.1),
                Err(SearchError::X0OutOfBounds { index: 1, .. })
            ),
            "{name}"
        );
        assert!(matches!(
            build(&[0.5], 0.1),
            Err(SearchError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            build(&[0.5, f64::NAN], 0.1),
            Err(SearchError::NonFiniteX0 { index: 1, .. })
        ));
        for sigma0 in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = build(&[0.5, 0.5], sigma0).unwrap_err();
            assert!(
                matches!(err, SearchError::InvalidSigma(_)),
                "{name} {sigma0}"
            );
            assert!(err.to_string().contains("sigma0"), "{err}");
        }
    }
    assert!(matches!(
        Bounds::new(vec![], vec![]),
        Err(SearchError::EmptyBounds)
    ));
    let err = Bounds::new(vec![0.0, 2.0], vec![1.0, 1.0]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "coordinate 1: lower bound 2 is not below upper bound 1; swap them, or remove the \
         coordinate from the genome if it is meant to be fixed"
    );
    let b = Bounds::uniform(1, 0.0, 1.0).unwrap();
    let err = "cma"
        .parse::<OptimizerConfig>()
        .unwrap()
        .build(b, &[2.0], 0.1, 0)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "x0[0] = 2 is outside its bounds [0, 1]; start the search inside the box"
    );
}

#[test]
fn misuse_of_ask_and_tell_is_an_error_that_changes_nothing() {
    for name in OptimizerConfig::NAMES {
        let config: OptimizerConfig = name.parse().unwrap();
        let mut opt = config
            .build(Bounds::unbounded(3).unwrap(), &[0.0; 3], 1.0, 0)
            .unwrap();
        assert!(matches!(
            opt.tell(&[Some(1.0)]),
            Err(SearchError::NoPendingGeneration)
        ));
        let xs = opt.ask();
        let before = opt.clone();
        let err = opt.tell(&vec![Some(1.0); xs.len() + 1]).unwrap_err();
        assert!(matches!(err, SearchError::FitnessLength { .. }), "{name}");
        assert_eq!(opt, before, "{name}: a rejected tell changed the state");
        assert_eq!(opt.ask(), xs, "{name}: ask is idempotent until tell");
        opt.tell(&vec![Some(1.0); xs.len()]).unwrap();
        assert_ne!(opt.ask(), xs, "{name}");
    }
}
