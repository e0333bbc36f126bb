//! `linear`: the weighted average of the models (a model soup).

use crate::MergeError;
use crate::method::{BaseUse, Golden, HostWork, MethodSpec, TensorWork, flag, required};
use evomerge_kernels::fused::{self, HostOut};
use evomerge_kernels::{T2, linear};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        tensor_params: vec![required("weight").evolvable([0.0, 1.0])],
        global_params: vec![flag("normalize", true)],
        goldens: &[Golden {
            base: None,
            models: &[&[1., 2.], &[3., 6.]],
            per_model: &[("weight", &[1., 3.])],
            global: &[("normalize", 1.)],
            rows: 1,
            // (1*1 + 3*3)/4, (1*2 + 3*6)/4
            want: &[2.5, 5.0],
            tol: 1e-6,
        }],
        ..MethodSpec::per_tensor(
            "linear",
            BaseUse::Ignored,
            work,
            "weighted average (model soup)",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let weights: Vec<f32> = (0..w.inputs.len()).map(|j| w.params.weight(j)).collect();
    linear(&w.inputs, &weights, w.params.global_flag("normalize")).map_err(|e| w.kernel_err(e))
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let weights: Vec<f32> = (0..w.inputs.len()).map(|j| w.params.weight(j)).collect();
    fused::linear(&w.inputs, &weights, w.params.global_flag("normalize"), out)
        .map_err(|e| w.kernel_err(e))
}
