//! `sce` (mergekit 0.1.5's `sce.py`): Select the elements whose task vectors vary most across
//! the models (`select_topk`, by variance), Calculate each model's weight from its mean squared
//! (selected) task vector, Erase the entries whose sign disagrees with the TIES sign election
//! on the unweighted task vectors, then average what is left with those weights.
//!
//! Ties among equal variances at the top-k cut keep the lower element index (torch.topk leaves
//! their order unspecified).

use crate::MergeError;
use crate::method::{BaseUse, Golden, HostWork, MethodSpec, TensorWork, flag, num};
use evomerge_kernels::T2;
use evomerge_kernels::fused::{self, HostOut};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        global_params: vec![
            flag("int8_mask", false),
            num("select_topk", 1.0).within([0.0, 1.0]).example(0.5),
        ],
        goldens: &[
            Golden {
                base: Some(&[0., 0., 0., 0.]),
                models: &[&[1., -2., 3., 0.], &[3., 2., -1., 0.]],
                per_model: &[],
                global: &[],
                rows: 1,
                // weights from mean squares 14/4 and 14/4: 1/2 each; sums (4, 0, 2, 0) elect
                // +, +, +, +; element 1 keeps only 2, element 2 only 3
                want: &[2., 2., 3., 0.],
                tol: 1e-6,
            },
            Golden {
                base: Some(&[1., 1., 1., 1.]),
                models: &[&[2., -1., 4., 1.], &[4., 3., 1., 2.]],
                per_model: &[],
                global: &[("select_topk", 0.5)],
                rows: 1,
                // deltas (1, -2, 3, 0), (3, 2, 0, 1); variances (1, 4, 2.25, 0.25): keep 2 of 4,
                // elements 1 and 2: (0, -2, 3, 0), (0, 2, 0, 0); mean squares 13/4 and 4/4 give
                // weights 13/17, 4/17; element 1 sums to 0, elects +, keeps 2; element 2 keeps 3
                want: &[1., 3., 4., 1.],
                tol: 1e-6,
            },
        ],
        ..MethodSpec::per_tensor(
            "sce",
            BaseUse::Required,
            work,
            "SCE: select the top-k most varying elements (select_topk), weight models by their mean squared task vector, TIES sign election",
        )
    }
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    let (base, mut tvs) = w.host_task_vectors();
    if tvs.is_empty() {
        return Ok(w.from_host(base));
    }
    let density = w.params.global_f32("select_topk");
    if density < 1.0 {
        let keep = topk_variance_mask(&tvs, density);
        for tv in &mut tvs {
            for (v, k) in tv.iter_mut().zip(&keep) {
                if !k {
                    *v = 0.0;
                }
            }
        }
    }
    let weights = model_weights(&tvs);
    let out = (0..base.len())
        .map(|i| {
            let elected = tvs.iter().map(|tv| tv[i]).sum::<f32>() >= 0.0;
            let (mut num, mut den) = (0.0f32, 0.0f32);
            for (tv, wt) in tvs.iter().zip(&weights) {
                let v = tv[i];
                if v != 0.0 && (v > 0.0) == elected {
                    num += v * wt;
                    den += wt;
                }
            }
            base[i] + num / den.max(1e-6)
        })
        .collect();
    Ok(w.from_host(out))
}

/// The elements among the `density` share (of those with nonzero variance) whose task vectors
/// vary most across the models (population variance).
fn topk_variance_mask(tvs: &[Vec<f32>], density: f32) -> Vec<bool> {
    let n = tvs[0].len();
    if density <= 0.0 {
        return vec![false; n];
    }
    let m = tvs.len() as f64;
    let var: Vec<f64> = (0..n)
        .map(|i| {
            let mean = tvs.iter().map(|tv| tv[i] as f64).sum::<f64>() / m;
            tvs.iter()
                .map(|tv| (tv[i] as f64 - mean).powi(2))
                .sum::<f64>()
                / m
        })
        .collect();
    let nonzero = var.iter().filter(|v| **v != 0.0).count();
    let k = (nonzero as f64 * density as f64) as usize;
    let mut keep = vec![false; n];
    if k == 0 {
        return keep;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.select_nth_unstable_by(k - 1, |a, b| var[*b].total_cmp(&var[*a]).then(a.cmp(b)));
    for &i in &order[..k] {
        keep[i] = true;
    }
    keep
}

/// Each model's mean squared task vector, normalised to sum 1 (equal weights when all are ~0).
fn model_weights(tvs: &[Vec<f32>]) -> Vec<f32> {
    let means: Vec<f64> = tvs
        .iter()
        .map(|tv| tv.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / tv.len() as f64)
        .collect();
    let total: f64 = means.iter().sum();
    if total.abs() < 1e-6 {
        return vec![1.0 / tvs.len() as f32; tvs.len()];
    }
    means.iter().map(|v| (v / total) as f32).collect()
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    let p = &w.params;
    let base = p.base.expect("sce plans have a base");
    let others: Vec<_> = p.others().into_iter().map(|j| w.inputs[j]).collect();
    fused::sce(w.inputs[base], &others, p.global_f32("select_topk"), out)
        .map_err(|e| w.kernel_err(e))
}
