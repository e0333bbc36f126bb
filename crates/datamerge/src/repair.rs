//! REPAIR: renormalise an interpolated network so that every hidden channel's pre-activation
//! mean and std match the interpolation of the endpoints' statistics.
//!
//! For the merge `M = (1 - t) A + t B` (B already aligned to A) and each corrected layer `l`,
//! in order: measure the endpoint statistics `(mu_A, s_A)`, `(mu_B, s_B)` of the layer's
//! pre-activations on calibration data, the goal `mu_g = (1-t) mu_A + t mu_B`,
//! `s_g = (1-t) s_A + t s_B` (the std is interpolated, not the variance), and the statistics
//! `(mu_M, s_M)` of the merged network with the earlier layers already corrected; then fold the
//! affine correction `y' = s_g (y - mu_M) / sqrt(s_M^2 + eps) + mu_g` into the layer's weight
//! rows and bias. This is the forward-pass ("exact") REPAIR, the same as resetting a BatchNorm
//! after each layer and fusing it, without adding layers.

use crate::{DataMergeError, Result};
use burn::tensor::Device;
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::batch_tensor;

/// Per-channel mean and std (population) of each layer's pre-activations.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub mean: Vec<Vec<f64>>,
    pub std: Vec<Vec<f64>>,
}

/// Statistics of the pre-activations of every linear layer (the last one is the logits).
pub fn preact_stats(weights: &MlpWeights, data: &Dataset) -> Result<ChannelStats> {
    data.expect_features(weights.n_inputs())?;
    if data.is_empty() {
        return Err(DataMergeError::Invalid(format!(
            "repair: {} has no rows",
            data.name
        )));
    }
    let device = Device::flex();
    let model = weights.module(&device);
    let n_layers = weights.layers.len();
    let mut sum: Vec<Vec<f64>> = weights.layers.iter().map(|l| vec![0.0; l.d_out]).collect();
    let mut sq = sum.clone();
    let all: Vec<usize> = (0..data.len()).collect();
    for rows in all.chunks(1024) {
        let taps = model.forward_taps(batch_tensor(data, rows, &device), None);
        for (l, z) in taps.preacts.into_iter().enumerate().take(n_layers) {
            let d = weights.layers[l].d_out;
            let v: Vec<f32> = evomerge_kernels::values_of(z);
            for r in v.chunks(d) {
                for (o, x) in r.iter().enumerate() {
                    sum[l][o] += *x as f64;
                    sq[l][o] += (*x as f64).powi(2);
                }
            }
        }
    }
    let n = data.len() as f64;
    let mean: Vec<Vec<f64>> = sum
        .iter()
        .map(|s| s.iter().map(|v| v / n).collect())
        .collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| {
            q.iter()
                .zip(m)
                .map(|(q, m)| (q / n - m * m).max(0.0).sqrt())
                .collect()
        })
        .collect();
    Ok(ChannelStats { mean, std })
}

/// REPAIR options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepairOptions {
    /// Also correct the output (logit) layer, as REPAIR's no-BatchNorm MLP notebook does.
    pub include_output: bool,
    /// Added to the merged variance before the square root.
    pub eps: f64,
}

impl Default for RepairOptions {
    fn default() -> Self {
        RepairOptions {
            include_output: false,
            eps: 1e-5,
        }
    }
}

/// What REPAIR saw and did.
#[derive(Debug, Clone, PartialEq)]
pub struct RepairReport {
    /// Per corrected layer: mean over channels of `s_M / s_g` in the plain interpolation
    /// (variance collapse: below 1, shrinking with depth).
    pub ratio_before: Vec<f64>,
    /// The same after REPAIR (1 up to `eps` where a channel varies).
    pub ratio_after: Vec<f64>,
}

fn mean_ratio(num: &[f64], den: &[f64]) -> f64 {
    let pairs: Vec<f64> = num
        .iter()
        .zip(den)
        .filter(|(_, d)| **d > 1e-8)
        .map(|(n, d)| n / d)
        .collect();
    if pairs.is_empty() {
        f64::NAN
    } else {
        pairs.iter().sum::<f64>() / pairs.len() as f64
    }
}

/// Interpolate `a` and `b` (aligned to `a`) at `t` and REPAIR the result on `data`.
pub fn repair(
    a: &MlpWeights,
    b: &MlpWeights,
    t: f64,
    data: &Dataset,
    options: &RepairOptions,
) -> Result<(MlpWeights, RepairReport)> {
    a.check_same_shape(b, "model A", "model B")?;
    if !(0.0..=1.0).contains(&t) {
        return Err(DataMergeError::Invalid(format!(
            "repair: t must be in [0, 1], got {t}"
        )));
    }
    let sa = preact_stats(a, data)?;
    let sb = preact_stats(b, data)?;
    let n_corr = if options.include_output {
        a.layers.len()
    } else {
        a.n_hidden()
    };
    let goal_mean: Vec<Vec<f64>> = (0..n_corr)
        .map(|l| {
            sa.mean[l]
                .iter()
                .zip(&sb.mean[l])
                .map(|(x, y)| (1.0 - t) * x + t * y)
                .collect()
        })
        .collect();
    let goal_std: Vec<Vec<f64>> = (0..n_corr)
        .map(|l| {
            sa.std[l]
                .iter()
                .zip(&sb.std[l])
                .map(|(x, y)| (1.0 - t) * x + t * y)
                .collect()
        })
        .collect();
    let mut merged = MlpWeights::lerp(a, b, t as f32);
    let before = preact_stats(&merged, data)?;
    let ratio_before = (0..n_corr)
        .map(|l| mean_ratio(&before.std[l], &goal_std[l]))
        .collect();
    for l in 0..n_corr {
        let cur = preact_stats(&merged, data)?;
        let layer = &mut merged.layers[l];
        for o in 0..layer.d_out {
            let s = goal_std[l][o] / (cur.std[l][o].powi(2) + options.eps).sqrt();
            for w in &mut layer.weight[o * layer.d_in..(o + 1) * layer.d_in] {
                *w = (*w as f64 * s) as f32;
            }
            layer.bias[o] = (s * (layer.bias[o] as f64 - cur.mean[l][o]) + goal_mean[l][o]) as f32;
        }
    }
    let after = preact_stats(&merged, data)?;
    let ratio_after = (0..n_corr)
        .map(|l| mean_ratio(&after.std[l], &goal_std[l]))
        .collect();
    Ok((
        merged,
        RepairReport {
            ratio_before,
            ratio_after,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repaired_statistics_hit_the_targets_and_fold_into_the_weights() {
        let data = Dataset::digits().split(0).train.take(300);
        let a = MlpWeights::init(&[64, 32, 32, 10], 1).unwrap();
        let b = MlpWeights::init(&[64, 32, 32, 10], 2).unwrap();
        let (m, report) = repair(&a, &b, 0.5, &data, &RepairOptions::default()).unwrap();
        assert_eq!(m.layer_sizes, a.layer_sizes);
        let (sa, sb, sm) = (
            preact_stats(&a, &data).unwrap(),
            preact_stats(&b, &data).unwrap(),
            preact_stats(&m, &data).unwrap(),
        );
        for l in 0..2 {
            for o in 0..32 {
                let goal_mu = 0.5 * (sa.mean[l][o] + sb.mean[l][o]);
                let goal_sd = 0.5 * (sa.std[l][o] + sb.std[l][o]);
                assert!(
                    (sm.mean[l][o] - goal_mu).abs() < 1e-3,
                    "layer {l} ch {o} mean"
                );
                if sm.std[l][o] > 1e-3 {
                    assert!(
                        (sm.std[l][o] - goal_sd).abs() < 1e-3 * goal_sd.max(1.0),
                        "layer {l} ch {o} std"
                    );
                }
            }
        }
        // Two unrelated random nets: interpolation collapses the variance.
        assert!(report.ratio_before.iter().all(|r| *r < 0.95), "{report:?}");
        assert!(
            report.ratio_after.iter().all(|r| (r - 1.0).abs() < 0.02),
            "{report:?}"
        );
    }
}
