//! `test_scale` (only with the `test-method` feature): the models' average weighted by each one's
//! own `factor`. It exists to show that a method is one file plus one registry line: the tests
//! that enable the feature find it in `evomerge methods`, in a PS genome's genes, and in the
//! golden and device loops, without any other list naming it.

use crate::MergeError;
use crate::method::{BaseUse, Golden, MethodSpec, TensorWork, required};
use evomerge_kernels::T2;

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        tensor_params: vec![required("factor").evolvable([0.0, 2.0])],
        goldens: &[Golden {
            base: None,
            models: &[&[1., 2.], &[3., 4.]],
            per_model: &[("factor", &[0.5, 2.])],
            global: &[],
            rows: 1,
            // (0.5 (1, 2) + 2 (3, 4)) / 2.5
            want: &[2.6, 3.6],
            tol: 1e-6,
        }],
        ..MethodSpec::per_tensor(
            "test_scale",
            BaseUse::Ignored,
            work,
            "test only: the models averaged with weights `factor`",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let factor = |j: usize| w.params.input_f32(j, "factor").unwrap_or(1.0);
    let total: f32 = (0..w.inputs.len()).map(factor).sum();
    let mut terms = w
        .inputs
        .iter()
        .enumerate()
        .map(|(j, x)| x.clone().mul_scalar(factor(j) / total));
    let first = terms.next().expect("at least one input");
    Ok(terms.fold(first, |acc, t| acc.add(t)))
}
