//! `multislerp`: the weighted spherical mean of any number of models.

use crate::MergeError;
use crate::method::{BaseUse, Golden, HostWork, MethodSpec, TensorWork, flag, num, required};
use evomerge_kernels::fused::{self, HostOut};
use evomerge_kernels::{T2, multislerp};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        tensor_params: vec![required("weight").evolvable([0.0, 1.0])],
        global_params: vec![flag("normalize_weights", true), num("eps", 1e-8)],
        goldens: &[Golden {
            base: None,
            models: &[&[1., 0., 0.], &[0., 2., 0.], &[0., 0., 3.]],
            per_model: &[("weight", &[1., 1., 1.])],
            global: &[],
            rows: 1,
            // the mean direction (1, 1, 1)/sqrt3 at the mean norm 2
            want: &[1.154_701, 1.154_701, 1.154_701],
            tol: 1e-5,
        }],
        ..MethodSpec::per_tensor(
            "multislerp",
            BaseUse::Optional,
            work,
            "weighted spherical mean of any number of models",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let weights: Vec<f32> = w
        .params
        .others()
        .iter()
        .map(|j| w.params.weight(*j))
        .collect();
    multislerp(
        &w.other_inputs(),
        &weights,
        w.base().as_ref(),
        w.params.global_flag("normalize_weights"),
        w.params.global_f32("eps"),
    )
    .map_err(|e| w.kernel_err(e))
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let p = &w.params;
    let others = p.others();
    let inputs: Vec<_> = others.iter().map(|j| w.inputs[*j]).collect();
    let weights: Vec<f32> = others.iter().map(|j| p.weight(*j)).collect();
    fused::multislerp(
        &inputs,
        &weights,
        p.base.map(|b| w.inputs[b]),
        p.global_flag("normalize_weights"),
        p.global_f32("eps"),
        out,
    )
    .map_err(|e| w.kernel_err(e))
}
