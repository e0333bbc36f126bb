//! `della`: DELLA magnitude-ranked random drop + TIES sign election.

use super::gta;
use crate::MergeError;
use crate::method::{Golden, HostWork, MethodSpec, TensorWork};
use evomerge_kernels::fused::HostOut;
use evomerge_kernels::{Consensus, Sparsify, T2};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        goldens: &[Golden {
            base: Some(&[0., 0., 0.]),
            models: &[&[2., -4., 6.], &[2., 4., -2.]],
            per_model: &[("weight", &[1., 1.]), ("density", &[1., 1.])],
            global: &[],
            rows: 1,
            // density 1 drops nothing; sums (4, 0, 4) elect +: (2 + 2)/2, 4, 6
            want: &[2., 4., 6.],
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

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::Della, Consensus::Sum)
}
