//! `nearswap` (mergekit 0.1.5's `nearswap.py`): take the other model's value where it is near
//! the base's: `w = clamp(t / max(|base - other|, 1e-6), 0, 1)`, `w * other + (1 - w) * base`.

use crate::MergeError;
use crate::method::{Arity, BaseUse, Golden, HostWork, MethodSpec, TensorWork, required};
use evomerge_kernels::T2;
use evomerge_kernels::fused::{self, HostOut};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        arity: Arity::Exactly(1, "exactly two models, one of them the base"),
        global_params: vec![required("t").example(0.01)],
        goldens: &[Golden {
            base: Some(&[0., 0., 0., 1.]),
            models: &[&[0.5, 2., 0., 1.]],
            per_model: &[],
            global: &[("t", 1.0)],
            rows: 1,
            // |diff| (0.5, 2, 0, 0): w = (1, 0.5, 1, 1) -> 0.5, 0.5*2, 0, 1
            want: &[0.5, 1., 0., 1.],
            tol: 1e-6,
        }],
        ..MethodSpec::per_tensor(
            "nearswap",
            BaseUse::Required,
            work,
            "NearSwap: move to the other model where it is within t of the base (w = clamp(t/|base - other|, 0, 1))",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let (base, others) = w.host_inputs();
    let t = w.params.global_f32("t");
    let out = base
        .iter()
        .zip(&others[0])
        .map(|(a, b)| swap(t, *a, *b))
        .collect();
    Ok(w.from_host(out))
}

fn swap(t: f32, a: f32, b: f32) -> f32 {
    let weight = (t / (a - b).abs().max(1e-6)).clamp(0.0, 1.0);
    weight * b + (1.0 - weight) * a
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let p = &w.params;
    let base = p.base.expect("nearswap plans have a base");
    let other = p.others()[0];
    let t = p.global_f32("t");
    fused::map2(w.inputs[base], w.inputs[other], |a, b| swap(t, a, b), out)
        .map_err(|e| w.kernel_err(e))
}
