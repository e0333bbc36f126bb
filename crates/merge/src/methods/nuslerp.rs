//! `nuslerp`: SLERP of two models (or their task vectors) with `t = w2 / (w1 + w2)`.

use crate::MergeError;
use crate::method::{Arity, BaseUse, Golden, HostWork, MethodSpec, TensorWork, flag, required};
use evomerge_kernels::fused::{self, HostOut};
use evomerge_kernels::{T2, nuslerp};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        arity: Arity::Exactly(2, "exactly two models besides an optional base"),
        tensor_params: vec![required("weight").evolvable([0.0, 1.0])],
        global_params: vec![
            flag("nuslerp_row_wise", false),
            flag("nuslerp_flatten", true),
        ],
        goldens: &[Golden {
            base: None,
            models: &[&[1., 0.], &[0., 1.]],
            per_model: &[("weight", &[1., 3.])],
            global: &[],
            rows: 1,
            // t = 3/4 between orthogonal unit vectors: (cos 3pi/8, sin 3pi/8)
            want: &[0.382_683, 0.923_880],
            tol: 1e-5,
        }],
        ..MethodSpec::per_tensor(
            "nuslerp",
            BaseUse::Optional,
            work,
            "SLERP of two models (or their task vectors) with t = w2/(w1+w2), whole-tensor or per row/column",
        )
    }
}

/// `t = w2 / (w1 + w2)` (0.5 when the weights sum to zero).
fn interpolation_t(w1: f32, w2: f32) -> f32 {
    if (w1 + w2).abs() < 1e-6 {
        0.5
    } else {
        w2 / (w1 + w2)
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let o = w.params.others();
    let t = interpolation_t(w.params.weight(o[0]), w.params.weight(o[1]));
    let (a, b) = (w.inputs[o[0]].clone(), w.inputs[o[1]].clone());
    let row_wise = w.params.global_flag("nuslerp_row_wise");
    let flatten = w.params.global_flag("nuslerp_flatten");
    Ok(match w.base() {
        Some(bs) => bs
            .clone()
            .add(nuslerp(t, a.sub(bs.clone()), b.sub(bs), row_wise, flatten)),
        None => nuslerp(t, a, b, row_wise, flatten),
    })
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let p = &w.params;
    let o = p.others();
    fused::nuslerp(
        interpolation_t(p.weight(o[0]), p.weight(o[1])),
        p.base.map(|b| w.inputs[b]),
        w.inputs[o[0]],
        w.inputs[o[1]],
        p.global_flag("nuslerp_row_wise"),
        p.global_flag("nuslerp_flatten"),
        w.cols,
        out,
    )
    .map_err(|e| w.kernel_err(e))
}
