//! `task_arithmetic`: base + sum of weighted task vectors.

use super::gta;
use crate::MergeError;
use crate::method::{Golden, HostWork, MethodSpec, TensorWork};
use evomerge_kernels::fused::HostOut;
use evomerge_kernels::{Consensus, Sparsify, T2};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        goldens: &[Golden {
            base: Some(&[1., 1., 1., 1.]),
            models: &[&[2., 3., 4., 5.], &[2., 0., 2., 0.]],
            per_model: &[("weight", &[1., 0.5])],
            global: &[],
            rows: 1,
            // 1 + (1, 2, 3, 4) + 0.5 (1, -1, 1, -1)
            want: &[2.5, 2.5, 4.5, 4.5],
            tol: 1e-6,
        }],
        ..gta::spec(
            "task_arithmetic",
            Sparsify::None,
            Consensus::None,
            false,
            false,
            "base + sum of weighted task vectors",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::None, Consensus::None)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::None, Consensus::None)
}
