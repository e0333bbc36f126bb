//! `karcher`: the Riemannian (Karcher) mean of the models with equal weights.

use crate::MergeError;
use crate::method::{BaseUse, Golden, HostWork, MethodSpec, TensorWork, num};
use evomerge_kernels::fused::{self, HostOut};
use evomerge_kernels::{T2, karcher};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        global_params: vec![num("max_iter", 10.0), num("tol", 1e-5)],
        goldens: &[Golden {
            base: None,
            models: &[&[2., 0.], &[0., 1.]],
            per_model: &[],
            global: &[],
            rows: 1,
            // unit directions' mean (1,1)/sqrt2 scaled by the mean norm 1.5
            want: &[1.060_66, 1.060_66],
            tol: 1e-5,
        }],
        ..MethodSpec::per_tensor(
            "karcher",
            BaseUse::Ignored,
            work,
            "Riemannian (Karcher) mean with equal weights",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    karcher(
        &w.inputs,
        w.params.global_f32("max_iter").max(0.0) as usize,
        w.params.global_f32("tol"),
    )
    .map_err(|e| w.kernel_err(e))
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let p = &w.params;
    // a listed base is just another input (BaseUse::Ignored), as in the burn path
    fused::karcher(
        &w.inputs,
        p.global_f32("max_iter").max(0.0) as usize,
        p.global_f32("tol"),
        out,
    )
    .map_err(|e| w.kernel_err(e))
}
