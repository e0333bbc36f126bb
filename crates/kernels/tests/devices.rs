//! The wgpu device gives the same tensors as flex (CPU) for every method.
//!
//! Runs only with `--features wgpu`. Without an adapter the test skips, except under `CI=true`,
//! where a missing adapter is a failure so the wgpu path is really exercised.
#![cfg(feature = "wgpu")]

use evomerge_kernels::*;

fn wgpu_or_skip() -> Option<Device> {
    match DeviceChoice::Wgpu.device() {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but wgpu is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("skipping wgpu comparison: {e}");
            None
        }
    }
}

fn sample(n: usize, seed: u64) -> Vec<f32> {
    MaskRng::new(seed, "sample", 0)
        .uniform(n)
        .into_iter()
        .map(|u| u * 2.0 - 1.0)
        .collect()
}

/// Run every method on `device` over fixed inputs and return all outputs concatenated.
#[allow(clippy::vec_init_then_push)] // one entry per method, each built in turn
fn all_methods(device: &Device) -> Vec<(&'static str, Vec<f32>)> {
    let shape = [16, 24];
    let n = 16 * 24;
    let base = tensor_from(&sample(n, 1), &shape, device);
    let a = tensor_from(&sample(n, 2), &shape, device);
    let b = tensor_from(&sample(n, 3), &shape, device);
    let c = tensor_from(&sample(n, 4), &shape, device);
    let mut out = Vec::new();
    out.push((
        "linear",
        values_of(linear(&[a.clone(), b.clone()], &[0.3, 0.9], true).unwrap()),
    ));
    out.push(("slerp", values_of(slerp(0.3, a.clone(), b.clone()))));
    out.push((
        "nuslerp",
        values_of(nuslerp(0.6, a.clone(), b.clone(), false, false)),
    ));
    out.push((
        "nuslerp_cols",
        values_of(nuslerp(0.6, a.clone(), b.clone(), true, false)),
    ));
    out.push((
        "multislerp",
        values_of(
            multislerp(
                &[a.clone(), b.clone(), c.clone()],
                &[0.2, 0.5, 0.3],
                Some(&base),
                true,
                1e-8,
            )
            .unwrap(),
        ),
    ));
    out.push((
        "karcher",
        values_of(karcher(&[a.clone(), b.clone(), c.clone()], 10, 1e-5).unwrap()),
    ));
    out.push((
        "model_stock",
        values_of(model_stock(base.clone(), &[a.clone(), b.clone(), c.clone()], false).unwrap()),
    ));
    out.push((
        "model_stock_fw",
        values_of(model_stock(base.clone(), &[a.clone(), b.clone(), c.clone()], true).unwrap()),
    ));
    for (name, method, rescale, consensus) in [
        ("ties", Sparsify::Magnitude, Rescale::None, Consensus::Sum),
        ("dare_ties", Sparsify::Random, Rescale::L1, Consensus::Sum),
        (
            "dare_linear",
            Sparsify::Random,
            Rescale::InverseDensity,
            Consensus::None,
        ),
        (
            "breadcrumbs_ties",
            Sparsify::MagnitudeOutliers,
            Rescale::None,
            Consensus::Sum,
        ),
        ("della", Sparsify::Della, Rescale::L1, Consensus::Count),
    ] {
        let tvs: Vec<TaskVector> = [&a, &b, &c]
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut rng = MaskRng::new(42, "layer.weight", i + 1);
                let delta = (*m).clone().sub(base.clone());
                TaskVector {
                    delta: sparsify(delta, method, 0.5, 0.05, 0.1, rescale, &mut rng).unwrap(),
                    weight: 0.4 + 0.2 * i as f32,
                }
            })
            .collect();
        out.push((
            name,
            values_of(
                generalized_task_arithmetic(base.clone(), tvs, consensus, true, 1.0).unwrap(),
            ),
        ));
    }
    out
}

#[test]
fn wgpu_matches_flex_for_every_method() {
    let Some(gpu) = wgpu_or_skip() else { return };
    let cpu = all_methods(&Device::flex());
    let gpu = all_methods(&gpu);
    for ((name, x), (_, y)) in cpu.iter().zip(&gpu) {
        assert_eq!(x.len(), y.len(), "{name}");
        let worst = x
            .iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: max diff {worst:e}");
        assert!(worst <= 1e-6, "{name}: max |flex - wgpu| = {worst}");
    }
}
