//! Loops over the method registry: every per-tensor method's golden cases, every method on
//! the CPU and (with `--features wgpu`) on the GPU, and the test-only method that shows a new
//! method needs no list but its registry line.

use evomerge_kernels::fused::{HostOut, HostTensor};
use evomerge_kernels::{Device, MaskRng, T2, tensor_from, values_of};
use evomerge_merge::ParamValue;
use evomerge_merge::method::{
    Arity, BaseUse, HostWork, MethodSpec, Resolved, Scope, TensorWork, registry,
};
use std::collections::BTreeMap;

type ParamMap = BTreeMap<&'static str, ParamValue>;

/// The per-tensor methods of the registry.
pub fn per_tensor() -> impl Iterator<Item = &'static MethodSpec> {
    registry()
        .iter()
        .filter(|m| matches!(m.scope, Scope::PerTensor(_)))
}

/// How many models besides the base the registry-driven loops give `m`, and whether a base.
pub fn layout(m: &MethodSpec) -> (usize, bool) {
    let others = match m.arity {
        Arity::Exactly(n, _) => n,
        Arity::AtLeast(n, _) => n.max(3),
        Arity::Any => 3,
    };
    (others, m.base == BaseUse::Required)
}

fn run(
    m: &MethodSpec,
    inputs: Vec<T2>,
    base: Option<usize>,
    global: &ParamMap,
    per: &[ParamMap],
) -> Vec<f32> {
    let work = TensorWork {
        tensor: "model.layers.0.mlp.up_proj.weight",
        params: Resolved {
            base,
            global,
            per_input: per,
        },
        inputs,
        seed: 42,
    };
    values_of(m.run(&work).unwrap_or_else(|e| panic!("{}: {e}", m.name)))
}

/// `m`'s fused CPU kernel on host inputs (the method must have one).
fn run_fused(
    m: &MethodSpec,
    inputs: &[Vec<f32>],
    cols: usize,
    base: Option<usize>,
    global: &ParamMap,
    per: &[ParamMap],
) -> Vec<f32> {
    let host = m.host.expect("a fused kernel");
    // a buffer of earlier values, as a search lends one: every entry must be written
    let mut out = vec![f32::NAN; inputs[0].len()];
    let work = HostWork {
        tensor: "model.layers.0.mlp.up_proj.weight",
        params: Resolved {
            base,
            global,
            per_input: per,
        },
        inputs: inputs.iter().map(|v| HostTensor::F32(v)).collect(),
        seed: 42,
        cols,
    };
    host(&work, HostOut::F32(&mut out)).unwrap_or_else(|e| panic!("{} fused: {e}", m.name));
    out
}

#[test]
fn every_per_tensor_method_matches_its_golden_cases() {
    let device = Device::flex();
    let mut checked = Vec::new();
    for m in per_tensor() {
        assert!(
            !m.goldens.is_empty(),
            "{} has no golden case; add one to its file",
            m.name
        );
        for g in m.goldens {
            let cols = g.want.len() / g.rows;
            let t = |v: &[f32]| tensor_from(v, &[g.rows, cols], &device);
            let mut inputs = Vec::new();
            let mut per = Vec::new();
            let base = g.base.map(|b| {
                inputs.push(t(b));
                per.push(ParamMap::new());
                0
            });
            for (j, x) in g.models.iter().enumerate() {
                inputs.push(t(x));
                per.push(
                    g.per_model
                        .iter()
                        .map(|(k, vs)| (*k, ParamValue::Number(vs[j])))
                        .collect(),
                );
            }
            // Unset parameters take the method's defaults, as the planner fills them in.
            let mut global: ParamMap = g
                .global
                .iter()
                .map(|(k, v)| (*k, ParamValue::Number(*v)))
                .collect();
            for p in &m.global_params {
                if let Some(d) = &p.default
                    && d != &ParamValue::Text(String::new())
                {
                    global.entry(p.name).or_insert_with(|| d.clone());
                }
            }
            for (j, map) in per.iter_mut().enumerate() {
                if Some(j) == base {
                    continue;
                }
                for p in &m.tensor_params {
                    if let Some(d) = &p.default
                        && d != &ParamValue::Text(String::new())
                    {
                        map.entry(p.name).or_insert_with(|| d.clone());
                    }
                }
            }
            let host_inputs: Vec<Vec<f32>> = inputs.iter().map(|t| values_of(t.clone())).collect();
            let mut outputs = vec![("burn", run(m, inputs, base, &global, &per))];
            if m.host.is_some() {
                outputs.push((
                    "fused",
                    run_fused(m, &host_inputs, cols, base, &global, &per),
                ));
            }
            for (path, got) in outputs {
                assert_eq!(got.len(), g.want.len(), "{}", m.name);
                for (i, (a, b)) in got.iter().zip(g.want).enumerate() {
                    assert!(
                        (a - b).abs() <= g.tol,
                        "{} ({path}) golden element {i}: got {a}, want {b} (all {got:?})",
                        m.name
                    );
                }
            }
        }
        checked.push(m.name);
    }
    for name in ["linear", "ties", "slerp", "model_stock", "passthrough"] {
        assert!(checked.contains(&name), "{name} was not checked");
    }
}

fn sample(n: usize, seed: u64) -> Vec<f32> {
    MaskRng::new(seed, "sample", 0)
        .uniform(n)
        .into_iter()
        .map(|u| u * 2.0 - 1.0)
        .collect()
}

/// The example parameter maps of `m` (`variant` overrides one global parameter).
fn example_params(
    m: &MethodSpec,
    n_inputs: usize,
    base: Option<usize>,
    variant: Option<(&'static str, ParamValue)>,
) -> (ParamMap, Vec<ParamMap>) {
    let mut global: ParamMap = m
        .global_params
        .iter()
        .map(|p| (p.name, p.example_value()))
        .collect();
    if let Some((k, v)) = variant {
        global.insert(k, v);
    }
    let per = (0..n_inputs)
        .map(|j| {
            if Some(j) == base {
                return ParamMap::new();
            }
            m.tensor_params
                .iter()
                .map(|p| match p.example_value() {
                    // distinct weights per model, so a mix-up of models shows
                    ParamValue::Number(x) if p.name == "weight" => {
                        (p.name, ParamValue::Number(x * (0.6 + 0.3 * j as f64)))
                    }
                    v => (p.name, v),
                })
                .collect()
        })
        .collect();
    (global, per)
}

/// Every per-tensor method with its example parameters, then with each boolean flipped and
/// each word of its textual parameters, on fixed inputs: `(case, output)`.
pub fn all_methods(device: &Device) -> Vec<(String, Vec<f32>)> {
    cases(Path::Burn(device), [16, 24], false)
}

/// How [`cases`] runs a method.
enum Path<'a> {
    Burn(&'a Device),
    /// The fused CPU kernels (methods without one are skipped).
    Fused,
}

/// The cases of [`all_methods`] on inputs of `shape`, run along `path`; `ties` rounds the
/// inputs to multiples of 1/32 so magnitudes tie often (as bf16 weights do).
fn cases(path: Path, shape: [usize; 2], ties: bool) -> Vec<(String, Vec<f32>)> {
    let n = shape[0] * shape[1];
    let mut out = Vec::new();
    for m in per_tensor() {
        if matches!(path, Path::Fused) && m.host.is_none() {
            continue;
        }
        let (others, with_base) = layout(m);
        let n_inputs = others + usize::from(with_base);
        let base = with_base.then_some(0);
        let mut variants: Vec<(String, Option<(&'static str, ParamValue)>)> =
            vec![(m.name.to_string(), None)];
        for p in &m.global_params {
            if let Some(ParamValue::Bool(b)) = p.default {
                variants.push((
                    format!("{} {}={}", m.name, p.name, !b),
                    Some((p.name, ParamValue::Bool(!b))),
                ));
            }
            for w in p.choices {
                variants.push((
                    format!("{} {}={w}", m.name, p.name),
                    Some((p.name, ParamValue::Text(w.to_string()))),
                ));
            }
        }
        for (case, variant) in variants {
            let host: Vec<Vec<f32>> = (0..n_inputs)
                .map(|j| {
                    let v = sample(n, 1 + j as u64);
                    if ties {
                        v.into_iter().map(|x| (x * 32.0).round() / 32.0).collect()
                    } else {
                        v
                    }
                })
                .collect();
            let (global, per) = example_params(m, n_inputs, base, variant);
            let got = match path {
                Path::Burn(device) => {
                    let inputs: Vec<T2> = host
                        .iter()
                        .map(|v| tensor_from(v, &shape, device))
                        .collect();
                    run(m, inputs, base, &global, &per)
                }
                Path::Fused => run_fused(m, &host, shape[1], base, &global, &per),
            };
            out.push((case, got));
        }
    }
    out
}

#[test]
fn every_method_runs_with_its_example_parameters_and_variants() {
    let cases = all_methods(&Device::flex());
    for m in per_tensor() {
        assert!(cases.iter().any(|(c, _)| c == m.name), "{} not run", m.name);
    }
    for (case, v) in &cases {
        assert!(v.iter().all(|x| x.is_finite()), "{case}: non-finite output");
    }
}

/// The largest |x - y|; infinite where one side is NaN and the other is not (`f32::max`
/// alone would skip a NaN, e.g. an entry a kernel left unwritten in a buffer of NaNs).
fn max_diff(x: &[f32], y: &[f32]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(a, b)| match (a.is_nan(), b.is_nan()) {
            (true, true) => 0.0,
            (false, false) => (a - b).abs(),
            _ => f32::INFINITY,
        })
        .fold(0.0f32, f32::max)
}

/// The fused CPU kernels give the burn path's tensors (to 1e-6) for every method that has
/// one, on small inputs and on inputs of several chunks with many tied magnitudes (the exact
/// top-k selection by position, split ties across chunks, DARE's seeked random stream).
#[test]
fn fused_cpu_kernels_match_the_burn_path() {
    let flex = Device::flex();
    let fused_methods: Vec<&str> = per_tensor()
        .filter(|m| m.host.is_some())
        .map(|m| m.name)
        .collect();
    for name in [
        "linear",
        "slerp",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "nearswap",
        "ram",
        "ramplus_tl",
        "model_stock",
        "sce",
        "passthrough",
        "nuslerp",
        "multislerp",
        "karcher",
        "arcee_fusion",
    ] {
        assert!(fused_methods.contains(&name), "{name} has no fused kernel");
    }
    for (shape, ties) in [([16, 24], false), ([311, 500], true)] {
        let fused = cases(Path::Fused, shape, ties);
        let burn: Vec<_> = cases(Path::Burn(&flex), shape, ties)
            .into_iter()
            .filter(|(c, _)| fused.iter().any(|(f, _)| f == c))
            .collect();
        assert_eq!(fused.len(), burn.len());
        for ((case, x), (c2, y)) in fused.iter().zip(&burn) {
            assert_eq!(case, c2);
            let worst = max_diff(x, y);
            assert!(
                worst <= 1e-6,
                "{case} {shape:?}: max |fused - burn| = {worst}"
            );
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_or_skip() -> Option<Device> {
    match evomerge_kernels::DeviceChoice::Wgpu.device() {
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

/// The wgpu device gives the same tensors as flex (CPU) for every registered method. Runs only
/// with `--features wgpu`; without an adapter it skips, except under `CI=true`.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_flex_for_every_method() {
    let Some(gpu) = wgpu_or_skip() else { return };
    let cpu = all_methods(&Device::flex());
    let gpu = all_methods(&gpu);
    let fused = cases(Path::Fused, [16, 24], false);
    for (case, x) in &fused {
        let (_, y) = gpu.iter().find(|(c, _)| c == case).expect("same cases");
        let worst = max_diff(x, y);
        eprintln!("{case}: max |fused CPU - wgpu| {worst:e}");
        assert!(worst <= 1e-6, "{case}: max |fused CPU - wgpu| = {worst}");
    }
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

/// `test_scale` (crates/merge/src/methods/test_scale.rs, registered by its one line) is in the
/// registry, so the loops above ran it; the golden loop checked its hand-computed case.
#[test]
fn the_test_only_method_is_covered_by_the_loops() {
    let m = per_tensor()
        .find(|m| m.name == "test_scale")
        .expect("the test-method feature registers test_scale");
    assert_eq!(m.goldens.len(), 1);
    let cases = all_methods(&Device::flex());
    let (_, out) = cases.iter().find(|(c, _)| c == "test_scale").unwrap();
    // examples: factor = the middle of its bounds [0, 2] = 1 for each of 3 models
    let n = 16 * 24;
    let want: Vec<f32> = (0..n)
        .map(|i| (1..=3).map(|s| sample(n, s)[i]).sum::<f32>() / 3.0)
        .collect();
    for (a, b) in out.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}
