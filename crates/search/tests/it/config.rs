//! The config enum as the runner reads it from TOML.

use evomerge_search::{
    BoundaryMode, Bounds, CmaConfig, Crossover, GaConfig, IpopConfig, Optimizer, OptimizerConfig,
    RandomConfig, RestartPoint, SearchError, Tolerances,
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Experiment {
    search: OptimizerConfig,
}

#[test]
fn every_optimizer_reads_from_toml_with_defaults() {
    for name in OptimizerConfig::NAMES {
        let c: OptimizerConfig = toml::from_str(&format!("optimizer = \"{name}\"")).unwrap();
        assert_eq!(c.name(), name);
        assert_eq!(c, name.parse().unwrap());
    }
    let e: Experiment = toml::from_str(
        r#"
        [search]
        optimizer = "sep-cma"
        population_size = 128
        boundary = "resample-clip"
        max_evaluations = 12800
        [search.termination]
        tol_fun = 1e-9
        tol_stagnation = 0
        "#,
    )
    .unwrap();
    assert_eq!(
        e.search,
        OptimizerConfig::SepCma(CmaConfig {
            population_size: Some(128),
            boundary: BoundaryMode::ResampleClip,
            max_evaluations: Some(12800),
            termination: Tolerances {
                tol_fun: 1e-9,
                tol_stagnation: Some(0),
                ..Tolerances::default()
            },
        })
    );
    let c: OptimizerConfig = toml::from_str(
        r#"
        optimizer = "ipop-cma"
        population_size = 6
        population_factor = 3
        max_restarts = 4
        restart_from = "x0"
        "#,
    )
    .unwrap();
    assert_eq!(
        c,
        OptimizerConfig::IpopCma(IpopConfig {
            population_size: Some(6),
            population_factor: 3,
            max_restarts: 4,
            restart_from: RestartPoint::X0,
            ..IpopConfig::default()
        })
    );
    let c: OptimizerConfig = toml::from_str(
        r#"
        optimizer = "ga"
        population_size = 30
        elites = 3
        crossover = "uniform"
        mutation_rate = 0.2
        mutation_decay = 0.99
        "#,
    )
    .unwrap();
    let OptimizerConfig::Ga(ga) = &c else {
        panic!("{c:?}")
    };
    assert_eq!(
        *ga,
        GaConfig {
            population_size: Some(30),
            elites: 3,
            crossover: Crossover::Uniform,
            mutation_rate: Some(0.2),
            mutation_decay: 0.99,
            ..GaConfig::default()
        }
    );
    let c: OptimizerConfig =
        toml::from_str("optimizer = \"random\"\nbatch_size = 7\nmax_evaluations = 70").unwrap();
    assert_eq!(
        c,
        OptimizerConfig::Random(RandomConfig {
            batch_size: Some(7),
            max_evaluations: Some(70),
        })
    );
    // a config survives a TOML round trip
    let text = toml::to_string(&c).unwrap();
    assert_eq!(toml::from_str::<OptimizerConfig>(&text).unwrap(), c);
}

#[test]
fn unknown_keys_and_names_are_errors() {
    for bad in [
        "optimizer = \"cma\"\npopsize = 10",
        "optimizer = \"ga\"\nsigma = 1.0",
        "optimizer = \"cma\"\n[termination]\ntolfun = 1e-9",
        "optimizer = \"ipop-cma\"\nrestart_from = \"somewhere\"",
        "optimizer = \"cma\"\nboundary = \"reflect\"",
        "optimizer = \"nelder-mead\"",
        "population_size = 10",
    ] {
        let err = toml::from_str::<OptimizerConfig>(bad).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("unknown") || msg.contains("missing"),
            "{bad:?}: {msg}"
        );
    }
    assert!(matches!(
        "nelder-mead".parse::<OptimizerConfig>(),
        Err(SearchError::UnknownOptimizer(_))
    ));
}

#[test]
fn out_of_range_settings_are_errors_at_build_time() {
    let b = || Bounds::uniform(3, 0.0, 1.0).unwrap();
    for bad in [
        "optimizer = \"cma\"\npopulation_size = 1",
        "optimizer = \"sep-cma\"\nmax_evaluations = 0",
        "optimizer = \"cma\"\n[termination]\ntol_fun = -1.0",
        "optimizer = \"ipop-cma\"\npopulation_factor = 1",
        "optimizer = \"ga\"\npopulation_size = 10\nelites = 10",
        "optimizer = \"ga\"\nmutation_rate = 1.5",
        "optimizer = \"ga\"\ntournament_size = 0",
        "optimizer = \"random\"\nbatch_size = 0",
    ] {
        let config: OptimizerConfig = toml::from_str(bad).unwrap();
        let err = config.build(b(), &[0.5; 3], 0.2, 0).unwrap_err();
        assert!(
            matches!(err, SearchError::InvalidSetting { .. }),
            "{bad:?}: {err}"
        );
    }
    let config: OptimizerConfig =
        toml::from_str("optimizer = \"ga\"\npopulation_size = 10\nelites = 10").unwrap();
    let msg = config
        .build(b(), &[0.5; 3], 0.2, 0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "setting `elites` = 10: must be smaller than population_size"
    );
}

#[test]
fn population_sizes_follow_the_config() {
    let b = || Bounds::unbounded(10).unwrap();
    let size = |toml_text: &str| {
        let c: OptimizerConfig = toml::from_str(toml_text).unwrap();
        c.build(b(), &[0.0; 10], 1.0, 0).unwrap().population_size()
    };
    assert_eq!(size("optimizer = \"cma\""), 10);
    assert_eq!(size("optimizer = \"sep-cma\"\npopulation_size = 128"), 128);
    assert_eq!(size("optimizer = \"ipop-cma\""), 10);
    assert_eq!(size("optimizer = \"ga\""), 20);
    assert_eq!(size("optimizer = \"random\""), 10);
    // the GA asks for population - elites after the first generation
    let c: OptimizerConfig = toml::from_str("optimizer = \"ga\"\nelites = 3").unwrap();
    let mut ga = c.build(b(), &[0.0; 10], 1.0, 0).unwrap();
    let xs = ga.ask();
    assert_eq!(xs.len(), 20);
    ga.tell(&vec![Some(1.0); 20]).unwrap();
    assert_eq!(ga.ask().len(), 17);
    assert_eq!(ga.population_size(), 17);
}

#[test]
fn states_know_their_names_and_one_dimension_works() {
    for name in OptimizerConfig::NAMES {
        let config: OptimizerConfig = name.parse().unwrap();
        let mut opt = config
            .build(Bounds::uniform(1, -3.0, 3.0).unwrap(), &[2.0], 1.0, 0)
            .unwrap();
        assert_eq!(opt.name(), name);
        assert_eq!(opt.dim(), 1);
        for _ in 0..200 {
            let fit: Vec<Option<f64>> = opt.ask().iter().map(|x| Some(x[0] * x[0])).collect();
            opt.tell(&fit).unwrap();
        }
        assert!(opt.best().unwrap().f < 1e-2, "{name}: {:?}", opt.best());
    }
}
