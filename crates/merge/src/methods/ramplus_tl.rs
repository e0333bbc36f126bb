//! `ramplus_tl` (RAM+, tensor-local; mergekit 0.1.5's `ram.py`): RAM, with each model's unique
//! entries scaled by `1 + r * clamp(shared / max(unique, epsilon), 0, alpha)`, where `shared`
//! and `unique` count that model's changed entries in this tensor that other models change too
//! or do not.

use super::ram;
use crate::MergeError;
use crate::method::{BaseUse, Golden, HostWork, MethodSpec, TensorWork, num};
use evomerge_kernels::T2;
use evomerge_kernels::fused::HostOut;

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        global_params: vec![
            num("r", 0.1).within([0.0, 1.0]),
            num("alpha", 0.2).within([0.0, 1.0]),
            ram::epsilon(),
        ],
        goldens: &[Golden {
            base: Some(&[0., 0., 0., 0., 0., 0.]),
            models: &[&[1., 2., 5., 6., 7., 0.], &[3., 0., 0., 0., 0., 4.]],
            per_model: &[],
            global: &[("r", 1.0), ("alpha", 1.0)],
            rows: 1,
            // model 1: 1 shared, 4 unique -> 1 + 0.25; model 2: 1 shared, 1 unique -> 1 + 1;
            // element 0 is averaged, the rest scaled by their model's boost
            want: &[2., 2.5, 6.25, 7.5, 8.75, 8.],
            tol: 1e-6,
        }],
        ..MethodSpec::per_tensor(
            "ramplus_tl",
            BaseUse::Required,
            work,
            "RAM+ (tensor-local): RAM with each model's unique entries boosted by 1 + r * clamp(shared/unique, 0, alpha)",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let (r, alpha) = (w.params.global_f32("r"), w.params.global_f32("alpha"));
    let eps = w.params.global_f32("epsilon");
    ram::merge(w, |shared, unique| boost(r, alpha, eps, shared, unique))
}

fn boost(r: f32, alpha: f32, eps: f32, shared: f32, unique: f32) -> f32 {
    1.0 + r * (shared / unique.max(eps)).clamp(0.0, alpha)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let (r, alpha) = (w.params.global_f32("r"), w.params.global_f32("alpha"));
    let eps = w.params.global_f32("epsilon");
    ram::merge_host(w, out, |shared, unique| {
        boost(r, alpha, eps, shared, unique)
    })
}
