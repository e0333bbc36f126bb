//! `della`: DELLA magnitude-ranked random drop + TIES sign election.

use super::gta;
use crate::MergeError;
use crate::method::{Golden, MethodSpec, TensorWork};
use evomerge_kernels::{Consensus, Sparsify, T2};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        goldens: &[Golden {
            base: Some(&[0., 0., 0., 0.]),
            models: &[&[1., -2., 3., 0.5], &[1.5, 2., 4., 0.5]],
            per_model: &[("weight", &[1., 3.]), ("density", &[1., 1.])],
            global: &[],
            rows: 1,
            // density 1 drops nothing; normalized: (1 + 4.5)/4, 6/3, (3 + 12)/4, (0.5 + 1.5)/4
            want: &[1.375, 2., 3.75, 0.5],
            tol: 1e-6,
        }],
        ..gta::spec(
            "della",
            Sparsify::Della,
            Consensus::Sum,
            true,
            true,
            "DELLA magnitude-ranked random drop + TIES sign election",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::Della, Consensus::Sum)
}
