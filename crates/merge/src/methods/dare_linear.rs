//! `dare_linear`: DARE random drop + task arithmetic.

use super::gta;
use crate::MergeError;
use crate::method::{Golden, HostWork, MethodSpec, TensorWork};
use evomerge_kernels::fused::HostOut;
use evomerge_kernels::{Consensus, Sparsify, T2};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        goldens: &[Golden {
            base: Some(&[1., 1.]),
            models: &[&[2., 3.], &[0., 5.]],
            per_model: &[("weight", &[0.5, 2.]), ("density", &[1., 1.])],
            global: &[],
            rows: 1,
            // density 1 drops nothing: 1 + 0.5 (1, 2) + 2 (-1, 4)
            want: &[-0.5, 10.],
            tol: 1e-6,
        }],
        ..gta::spec(
            "dare_linear",
            Sparsify::Random,
            Consensus::None,
            false,
            true,
            "DARE random drop + task arithmetic",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::Random, Consensus::None)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::Random, Consensus::None)
}
