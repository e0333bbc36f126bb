//! `breadcrumbs_ties`: Breadcrumbs + TIES sign election.

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
            models: &[&[-1., -2., -3., -4., -5., -6., -7., -8., -9., -10.]],
            per_model: &[("weight", &[2.]), ("density", &[0.5]), ("gamma", &[0.1])],
            global: &[],
            rows: 1,
            // as breadcrumbs, negated: every kept entry agrees with the elected sign
            want: &[0., 0., 0., 0., -10., -12., -14., -16., -18., 0.],
            tol: 1e-6,
        }],
        ..gta::spec(
            "breadcrumbs_ties",
            Sparsify::MagnitudeOutliers,
            Consensus::Sum,
            false,
            false,
            "Breadcrumbs + TIES sign election",
            work,
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    gta::run(w, Sparsify::MagnitudeOutliers, Consensus::Sum)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    gta::run_host(w, out, Sparsify::MagnitudeOutliers, Consensus::Sum)
}
