//! `passthrough`: copy one model's tensors (layer stacking, frankenmerges), optionally scaled.

use crate::MergeError;
use crate::method::{Arity, BaseUse, Golden, HostWork, MethodSpec, TensorWork, optional};
use evomerge_kernels::fused::{self, HostOut};
use evomerge_kernels::{T2, passthrough};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        arity: Arity::Exactly(1, "exactly one model per slice (use one source per slice)"),
        runs_on_one_input: true,
        tensor_params: vec![optional("scale")],
        goldens: &[Golden {
            base: None,
            models: &[&[1., -2.]],
            per_model: &[("scale", &[0.5])],
            global: &[],
            rows: 1,
            want: &[0.5, -1.0],
            tol: 0.0,
        }],
        ..MethodSpec::per_tensor(
            "passthrough",
            BaseUse::Ignored,
            work,
            "copy one model's tensors (layer stacking / frankenmerges), optionally scaled",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    Ok(passthrough(
        w.inputs[0].clone(),
        w.params.input_f32(0, "scale"),
    ))
}

/// The copy fused on the CPU: decoded and encoded chunk by chunk (`x * scale`, exactly `x`
/// without one), as the weighted sum of one input.
fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let scale = w.params.input_f32(0, "scale").unwrap_or(1.0);
    fused::linear(&w.inputs[..1], &[scale], false, out).map_err(|e| w.kernel_err(e))
}
