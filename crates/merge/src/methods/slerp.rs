//! `slerp`: spherical interpolation between the base (t = 0) and one other model (t = 1).

use crate::MergeError;
use crate::method::{Arity, BaseUse, Golden, HostWork, MethodSpec, TensorWork, required};
use evomerge_kernels::fused::{self, HostOut};
use evomerge_kernels::{T2, slerp};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        arity: Arity::Exactly(1, "exactly two models, one of them the base"),
        global_params: vec![required("t").within([0.0, 1.0])],
        goldens: &[Golden {
            base: Some(&[1., 0.]),
            models: &[&[0., 1.]],
            per_model: &[],
            global: &[("t", 0.25)],
            rows: 1,
            // orthogonal unit vectors: (cos pi/8, sin pi/8)
            want: &[0.923_880, 0.382_683],
            tol: 1e-5,
        }],
        ..MethodSpec::per_tensor(
            "slerp",
            BaseUse::Required,
            work,
            "spherical interpolation between the base (t=0) and one other model (t=1)",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let base = w.base().expect("slerp plans have a base");
    let other = w.other_inputs().remove(0);
    Ok(slerp(w.params.global_f32("t"), base, other))
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let base = w.params.base.expect("slerp plans have a base");
    let other = w.params.others()[0];
    let t = w.params.global_f32("t");
    fused::slerp(t, w.inputs[base], w.inputs[other], out).map_err(|e| w.kernel_err(e))
}
