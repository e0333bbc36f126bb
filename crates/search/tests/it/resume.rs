//! Same seed, same candidates; a run saved to JSON and restored continues bit for bit.

use evomerge_search::bench::{Function, Objective};
use evomerge_search::{Bounds, Optimizer, OptimizerConfig, OptimizerState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rastrigin (multimodal, so IPOP restarts within a short test) with a deterministic
/// sprinkling of failed candidates, so the failure path is part of what must resume exactly.
fn fitness(generation: u64, candidates: &[Vec<f64>]) -> Vec<Option<f64>> {
    let f = Objective::new(Function::Rastrigin, candidates[0].len());
    candidates
        .iter()
        .enumerate()
        .map(|(i, x)| {
            if (generation + i as u64) % 7 == 3 {
                None
            } else if (generation + i as u64) % 11 == 5 {
                Some(f64::NAN)
            } else {
                Some(f.value(x))
            }
        })
        .collect()
}

fn config(name: &str) -> OptimizerConfig {
    let toml = match name {
        // small populations and a loose tol_fun make IPOP restart several times in 150 generations
        "ipop-cma" | "ipop-sep-cma" => format!(
            "optimizer = \"{name}\"\npopulation_size = 4\nrestart_from = \"uniform\"\n[termination]\ntol_fun = 1e-2\ntol_x = 1e-2"
        ),
        // both boundary modes: the default transform and the cmaes-style resample-and-clip
        "cma-clip" => "optimizer = \"cma\"\nboundary = \"resample-clip\"".to_string(),
        "sep-cma-clip" => "optimizer = \"sep-cma\"\nboundary = \"resample-clip\"".to_string(),
        _ => format!("optimizer = \"{name}\""),
    };
    toml::from_str(&toml).unwrap()
}

fn start(name: &str, seed: u64) -> OptimizerState {
    let bounds = Bounds::new(vec![-5.12, -5.12, -5.12], vec![5.12, 5.12, 3.0]).unwrap();
    config(name)
        .build(bounds, &[2.0, -1.0, 1.0], 1.5, seed)
        .unwrap()
}

/// Runs `generations` generations; with `resume_every = Some(k)` the state goes through JSON
/// (once after `ask`, once after `tell`) every `k` generations. Returns all candidates.
fn drive(
    opt: &mut OptimizerState,
    generations: u64,
    resume_every: Option<u64>,
) -> Vec<Vec<Vec<f64>>> {
    let mut all = Vec::new();
    for g in 0..generations {
        let round_trip = resume_every.is_some_and(|k| g % k == 0);
        let xs = opt.ask();
        if round_trip {
            // saved between ask and tell: the restored state re-asks the very same batch
            *opt = OptimizerState::from_json(&opt.to_json().unwrap()).unwrap();
            assert_eq!(opt.ask(), xs, "re-ask after restore, generation {g}");
        }
        opt.tell(&fitness(g, &xs)).unwrap();
        if round_trip {
            let json = opt.to_json().unwrap();
            let restored = OptimizerState::from_json(&json).unwrap();
            assert_eq!(&restored, opt, "restored state differs, generation {g}");
            assert_eq!(restored.to_json().unwrap(), json);
            *opt = restored;
        }
        all.push(xs);
    }
    all
}

const ALL: [&str; 8] = [
    "cma",
    "cma-clip",
    "sep-cma",
    "sep-cma-clip",
    "ipop-cma",
    "ipop-sep-cma",
    "ga",
    "random",
];

#[test]
fn same_seed_gives_the_same_candidates_and_another_seed_does_not() {
    for name in ALL {
        let a = drive(&mut start(name, 11), 20, None);
        let b = drive(&mut start(name, 11), 20, None);
        let c = drive(&mut start(name, 12), 20, None);
        assert_eq!(a, b, "{name}");
        assert_ne!(a, c, "{name}");
    }
}

#[test]
fn a_restored_run_continues_exactly() {
    for name in ALL {
        let mut plain = start(name, 5);
        let expected = drive(&mut plain, 150, None);
        // stopped after k generations, serialized, restored, continued
        for k in [1, 17, 60] {
            let mut first = start(name, 5);
            let mut seen = drive(&mut first, k, None);
            let json = first.to_json().unwrap();
            drop(first);
            let mut resumed = OptimizerState::from_json(&json).unwrap();
            for g in k..150 {
                let xs = resumed.ask();
                resumed.tell(&fitness(g, &xs)).unwrap();
                seen.push(xs);
            }
            assert_eq!(seen, expected, "{name} resumed after {k}");
            assert_eq!(resumed.best(), plain.best(), "{name} best after {k}");
            assert_eq!(resumed.evaluations(), plain.evaluations());
            assert_eq!(resumed.generation(), plain.generation());
            assert_eq!(resumed, plain, "{name} final state after {k}");
        }
        // and through JSON at every third generation, between ask and tell too
        let mut hopping = start(name, 5);
        assert_eq!(drive(&mut hopping, 150, Some(3)), expected, "{name}");
        assert_eq!(hopping.best(), plain.best());
        assert!(plain.best().is_some());
    }
}

#[test]
fn ipop_restarts_during_the_resume_test() {
    // guards the test above: the IPOP runs it resumes did restart
    for name in ["ipop-cma", "ipop-sep-cma"] {
        let mut opt = start(name, 5);
        drive(&mut opt, 150, None);
        let OptimizerState::Ipop(ipop) = &opt else {
            panic!("{name} is not IPOP")
        };
        assert!(ipop.restarts() >= 1, "{name}: {} restarts", ipop.restarts());
        let sizes: Vec<usize> = ipop
            .finished_runs()
            .iter()
            .map(|r| r.population_size)
            .collect();
        let doubling: Vec<usize> = (0..sizes.len()).map(|k| 4 << k).collect();
        assert_eq!(sizes, doubling, "{name}: population doubles");
        assert_eq!(opt.population_size(), 4 << ipop.restarts());
    }
}

#[test]
fn json_round_trips_every_f64_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut values: Vec<f64> = (0..20_000)
        .map(|_| f64::from_bits(rng.random::<u64>()))
        .filter(|v| v.is_finite())
        .collect();
    values.extend([
        0.1,
        1.0 / 3.0,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        -0.0,
        f64::from_bits(0x000F_FFFF_FFFF_FFFF), // largest subnormal
        f64::from_bits(0x4340_0000_0000_0001), // 2^53 + 2
    ]);
    let json = serde_json::to_string(&values).unwrap();
    let back: Vec<f64> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.len(), values.len());
    for (a, b) in values.iter().zip(&back) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a:e} came back as {b:e}");
    }
}

#[test]
fn save_and_load_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut opt = start("cma", 3);
    drive(&mut opt, 5, None);
    opt.save(&path).unwrap();
    opt.save(&path).unwrap(); // overwriting is fine
    assert!(!dir.path().join("state.json.tmp").exists());
    assert!(!evomerge_checkpoint::atomic::temp_path(&path).exists());
    let mut back = OptimizerState::load(&path).unwrap();
    assert_eq!(back, opt);
    assert_eq!(back.ask(), opt.ask());
    let err = OptimizerState::load(&dir.path().join("missing.json")).unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
    std::fs::write(&path, "{\"cma\": 1}").unwrap();
    assert!(OptimizerState::load(&path).is_err());
}
