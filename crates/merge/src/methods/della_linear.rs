//! `della_linear`: DELLA magnitude-ranked random drop + task arithmetic.

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
            models: &[&[2., -4., 6.], &[1., 1., 1.]],
            per_model: &[("weight", &[0.5, 1.]), ("density", &[1., 1.])],
            global: &[],
            rows: 1,
            // density 1 drops nothing: 0.5 a + b
            want: &[2., -1., 4.],
            tol: 1e-6,
        }],
        ..gta::spec(
            "della_linear",
            Sparsify::Della,
            Consensus::None,
            false,
            true,
            "DELLA magnitude-ranked random drop + task arithmetic",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::Della, Consensus::None)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::Della, Consensus::None)
}
