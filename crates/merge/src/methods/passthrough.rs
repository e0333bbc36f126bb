//! `passthrough`: copy one model's tensors (layer stacking, frankenmerges), optionally scaled.

use crate::MergeError;
use crate::method::{Arity, BaseUse, Golden, MethodSpec, TensorWork, optional};
use evomerge_kernels::{T2, passthrough};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
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
