//! `model_stock`: the base-to-average ratio from the angle between the task vectors.

use crate::MergeError;
use crate::method::{Arity, BaseUse, Golden, HostWork, MethodSpec, TensorWork, flag};
use evomerge_kernels::fused::{self, HostOut};
use evomerge_kernels::{T2, model_stock};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        arity: Arity::AtLeast(2, "a base and at least two other models"),
        global_params: vec![flag("filter_wise", false)],
        goldens: &[Golden {
            base: Some(&[0., 0.]),
            models: &[&[1., 0.], &[1., 1.]],
            per_model: &[],
            global: &[],
            rows: 1,
            // cos = 1/sqrt2, t = 2cos/(1+cos) = 0.828427; t * mean (1, 0.5)
            want: &[0.828_427, 0.414_214],
            tol: 1e-5,
        }],
        ..MethodSpec::per_tensor(
            "model_stock",
            BaseUse::Required,
            work,
            "Model Stock: base-to-average ratio from the angle between task vectors",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let base = w.base().expect("model_stock plans have a base");
    model_stock(base, &w.other_inputs(), w.params.global_flag("filter_wise"))
        .map_err(|e| w.kernel_err(e))
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let p = &w.params;
    let base = p.base.expect("model_stock plans have a base");
    let others: Vec<_> = p.others().into_iter().map(|j| w.inputs[j]).collect();
    fused::model_stock(
        w.inputs[base],
        &others,
        p.global_flag("filter_wise"),
        w.cols,
        out,
    )
    .map_err(|e| w.kernel_err(e))
}
