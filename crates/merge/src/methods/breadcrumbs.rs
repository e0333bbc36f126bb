//! `breadcrumbs`: drop the smallest and the largest deltas + task arithmetic.

use super::gta;
use crate::MergeError;
use crate::method::{Golden, HostWork, MethodSpec, TensorWork};
use evomerge_kernels::fused::HostOut;
use evomerge_kernels::{Consensus, Sparsify, T2};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        goldens: &[Golden {
            base: Some(&[0., 0., 0., 0., 0., 0., 0., 0., 0., 0.]),
            models: &[&[1., 2., 3., 4., 5., 6., 7., 8., 9., 10.]],
            per_model: &[("weight", &[2.]), ("density", &[0.5]), ("gamma", &[0.1])],
            global: &[],
            rows: 1,
            // keep 5 of 10 after dropping the top 1 (gamma 0.1): ranks 5..9, times 2
            want: &[0., 0., 0., 0., 10., 12., 14., 16., 18., 0.],
            tol: 1e-6,
        }],
        ..gta::spec(
            "breadcrumbs",
            Sparsify::MagnitudeOutliers,
            Consensus::None,
            false,
            false,
            "drop the smallest and the largest deltas + task arithmetic",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::MagnitudeOutliers, Consensus::None)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::MagnitudeOutliers, Consensus::None)
}
