//! `dare_ties`: DARE random drop + TIES sign election.

use super::gta;
use crate::MergeError;
use crate::method::{Golden, HostWork, MethodSpec, TensorWork};
use evomerge_kernels::fused::HostOut;
use evomerge_kernels::{Consensus, Sparsify, T2};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        goldens: &[Golden {
            base: Some(&[0., 0., 0., 0.]),
            models: &[&[1., -2., 3., 0.5], &[1.5, 2., 4., 0.5]],
            per_model: &[("weight", &[1., 3.]), ("density", &[1., 1.])],
            global: &[],
            rows: 1,
            // density 1 drops nothing; signs from (5.5, 4, 15, 2): element 1 keeps only 3*2
            want: &[5.5, 6., 15., 2.],
            tol: 1e-6,
        }],
        ..gta::spec(
            "dare_ties",
            Sparsify::Random,
            Consensus::Sum,
            false,
            true,
            "DARE random drop + TIES sign election",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::Random, Consensus::Sum)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::Random, Consensus::Sum)
}
