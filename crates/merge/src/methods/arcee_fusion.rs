//! `arcee_fusion` (mergekit 0.1.5's `arcee_fusion.py`): keep the other model's change only where
//! it matters: importance = |other - base| times the row's KL divergence between the softmaxes
//! of the other and the base rows (each + 1e-8), kept where importance >= median + 1.5 IQR.
//!
//! The quantiles are exact, over every element (sorted, index `floor(q (n - 1))` as mergekit
//! takes them). mergekit instead sorts an unseeded random sample of 1e6 elements when a tensor
//! has more, so on such tensors its threshold varies from run to run and ours is the exact one.
//! The softmaxes and the KL divergence are computed in f64: on rows that barely differ from the
//! base, torch's f32 KL is off by up to ~1% (a sum of tiny `p log(p/q)` terms), which can move
//! elements within that band of the threshold to the other side in mergekit.

use crate::MergeError;
use crate::method::{Arity, BaseUse, Golden, HostWork, MethodSpec, TensorWork};
use evomerge_kernels::T2;
use evomerge_kernels::fused::{self, HostOut, arcee_fusion_sorted};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        arity: Arity::Exactly(1, "exactly two models, one of them the base"),
        goldens: &[
            Golden {
                base: Some(&[0., 0., 0., 0., 0., 0., 0., 0.]),
                models: &[&[0., 0., 0., 0., 0., 0., 0., 1.]],
                per_model: &[],
                global: &[],
                rows: 1,
                // one row: importance |diff| * KL is seven zeros and one positive value; q1, median
                // and q3 (indices 1, 3, 5 of 8) are 0, so the threshold is 0 and `>=` keeps all
                want: &[0., 0., 0., 0., 0., 0., 0., 1.],
                tol: 1e-6,
            },
            Golden {
                base: Some(&[0., 0., 0., 0., 0., 0., 0., 0.]),
                models: &[&[1., 1., 1., 1., 2., 2., 2., 9.]],
                per_model: &[],
                global: &[],
                rows: 2,
                // rows (1 1 1 1) and (2 2 2 9): row 1's softmax equals the base's (KL 0), so its
                // importances are 0; row 2's KL k > 0 gives 2k, 2k, 2k, 9k. Sorted: 0 x4, 2k x3,
                // 9k; q1 = idx 1 = 0, median = idx 3 = 0, q3 = idx 5 = 2k: threshold 3k keeps
                // only the 9
                want: &[0., 0., 0., 0., 0., 0., 0., 9.],
                tol: 1e-6,
            },
        ],
        ..MethodSpec::per_tensor(
            "arcee_fusion",
            BaseUse::Required,
            work,
            "Arcee Fusion: keep the other model's changes whose KL-weighted importance is >= median + 1.5 IQR",
        )
    }
}

/// The reference path (any device: the inputs come to the host and every importance is
/// sorted); the fused CPU kernel selects the same quartiles without sorting.
fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let (base, others) = w.host_inputs();
    if base.is_empty() {
        return Ok(w.from_host(base));
    }
    let cols = w.inputs[0].dims()[1];
    Ok(w.from_host(arcee_fusion_sorted(&base, &others[0], cols)))
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let p = &w.params;
    let base = p.base.expect("arcee_fusion plans have a base");
    let other = p.others()[0];
    fused::arcee_fusion(w.inputs[base], w.inputs[other], w.cols, out).map_err(|e| w.kernel_err(e))
}
