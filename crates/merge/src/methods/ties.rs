//! `ties`: TIES: keep the largest deltas, elect signs, average the agreeing ones.

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
            per_model: &[("weight", &[1., 3.]), ("density", &[0.5, 0.5])],
            global: &[],
            rows: 1,
            // top 2 by magnitude: (0, -2, 3, 0) and (0, 2, 4, 0); weighted sums (0, 4, 15, 0)
            // elect +, +; element 1 keeps only 3*2 (divided by 3), element 2 (3 + 12) / 4
            want: &[0., 2., 3.75, 0.],
            tol: 1e-6,
        }],
        ..gta::spec(
            "ties",
            Sparsify::Magnitude,
            Consensus::Sum,
            true,
            false,
            "TIES: keep the largest deltas, elect signs, average the agreeing ones",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::Magnitude, Consensus::Sum)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::Magnitude, Consensus::Sum)
}
