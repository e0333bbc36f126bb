//! Fisher merging: the diagonal Fisher information of an MLP classifier, and the
//! Fisher-weighted average of several models.
//!
//! Per-example gradients come from one backward pass per (batch, class): a zero "probe" is
//! added to every pre-activation, so its gradient is `delta[n] = d log p_c(x_n) / d z[n]` for
//! every example `n` of the batch at once, and the squared per-example gradient of a linear
//! layer's weight is `delta[n,o]^2 * a[n,i]^2` (`a` the layer's input). Summing with the
//! model's own class probabilities gives the exact expectation
//! `F = mean_n sum_c p_c(x_n) (d log p_c(x_n) / d theta)^2`; using only the true label gives the
//! empirical Fisher. No cross terms between examples or classes enter (unlike the batch-gradient
//! approximations of some references).

use crate::{DataMergeError, Result};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::batch_tensor;

/// Which Fisher estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FisherKind {
    /// Expectation over the model's own predictive distribution: `sum_c p_c g_c^2`.
    #[default]
    Exact,
    /// The true label's squared gradient (biased; "empirical Fisher").
    Empirical,
}

impl std::str::FromStr for FisherKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            // `auto`: exact for classifiers; the LM merges choose empirical themselves.
            "exact" | "true" | "auto" | "" => Ok(FisherKind::Exact),
            "empirical" | "emp" => Ok(FisherKind::Empirical),
            other => Err(format!(
                "fisher '{other}' is not one of auto, exact, empirical"
            )),
        }
    }
}

use evomerge_kernels::values_of as host;

/// The diagonal Fisher of `weights` on `data`, one value per parameter in the order of
/// [`MlpWeights::flat`], averaged over the rows.
pub fn diagonal_fisher(
    weights: &MlpWeights,
    data: &Dataset,
    kind: FisherKind,
    batch_size: usize,
) -> Result<Vec<f64>> {
    data.expect_features(weights.n_inputs())?;
    if data.is_empty() {
        return Err(DataMergeError::Invalid(format!(
            "fisher: {} has no rows",
            data.name
        )));
    }
    let c = weights.n_classes();
    if kind == FisherKind::Empirical
        && let Some(l) = data.labels.iter().find(|l| **l as usize >= c)
    {
        return Err(DataMergeError::Invalid(format!(
            "fisher: {} has label {l} but the model has {c} outputs",
            data.name
        )));
    }
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let model = weights.module(&device);
    let mut acc: Vec<Vec<f64>> = weights
        .layers
        .iter()
        .map(|l| vec![0.0; l.d_out * l.d_in + l.d_out])
        .collect();
    let all: Vec<usize> = (0..data.len()).collect();
    for rows in all.chunks(batch_size.max(1)) {
        let b = rows.len();
        let x = batch_tensor(data, rows, &device);
        let probs = host(softmax(model.forward(x.clone()).inner(), 1));
        // (class mask, per-example weight) of each backward pass.
        let passes: Vec<(Vec<f32>, Vec<f32>)> = match kind {
            FisherKind::Exact => (0..c)
                .map(|k| {
                    let mut mask = vec![0.0; b * c];
                    let mut w = vec![0.0; b];
                    for n in 0..b {
                        mask[n * c + k] = 1.0;
                        w[n] = probs[n * c + k];
                    }
                    (mask, w)
                })
                .collect(),
            FisherKind::Empirical => {
                let mut mask = vec![0.0; b * c];
                for (n, &r) in rows.iter().enumerate() {
                    mask[n * c + data.labels[r] as usize] = 1.0;
                }
                vec![(mask, vec![1.0; b])]
            }
        };
        for (mask, w) in passes {
            let probes: Vec<Tensor<2>> = weights
                .layers
                .iter()
                .map(|l| Tensor::<2>::zeros([b, l.d_out], &device).require_grad())
                .collect();
            let taps = model.forward_taps(x.clone(), Some(&probes));
            let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, c]), &device);
            let loss = (log_softmax(taps.logits(), 1) * mask).sum();
            let grads = loss.backward();
            let wcol = Tensor::<2>::from_data(TensorData::new(w, [b, 1]), &plain);
            for (l, layer) in weights.layers.iter().enumerate() {
                let delta = probes[l]
                    .grad(&grads)
                    .expect("probes require a gradient")
                    .inner();
                let dsq = delta.square() * wcol.clone();
                let asq = taps.inputs[l].clone().inner().square();
                let gw = host(dsq.clone().transpose().matmul(asq)); // [out, in]
                let gb = host(dsq.sum_dim(0)); // [1, out]
                let a = &mut acc[l];
                for (dst, v) in a.iter_mut().zip(gw.iter().chain(&gb)) {
                    *dst += *v as f64;
                }
                debug_assert_eq!(gw.len() + gb.len(), layer.d_out * layer.d_in + layer.d_out);
            }
        }
    }
    let n = data.len() as f64;
    Ok(acc.into_iter().flatten().map(|v| v / n).collect())
}

/// Options of the Fisher-weighted average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FisherMergeOptions {
    /// Added to every Fisher value (FusionBench's `minimal_fisher_weight`), so parameters no
    /// model is sure about fall back to the coefficient-weighted average. Default 1e-6.
    pub epsilon: f64,
    /// Scale each model's coefficient by `1 / ||F_i||` (the global L2 norm of its Fisher), then
    /// renormalise to sum 1 (mmatena's and FusionBench's default). Default true.
    pub normalize: bool,
}

impl Default for FisherMergeOptions {
    fn default() -> Self {
        FisherMergeOptions {
            epsilon: 1e-6,
            normalize: true,
        }
    }
}

/// The L2 norm of a Fisher (for the `normalize` option).
pub fn l2(f: &[f64]) -> f64 {
    f.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// The merge coefficients `l_i`: the models' weights, divided by `||F_i||` when `normalize`
/// is on, then normalised to sum 1.
pub fn fisher_lambdas(
    coefficients: &[f64],
    fisher_norms: &[f64],
    options: &FisherMergeOptions,
) -> Result<Vec<f64>> {
    if options.epsilon < 0.0 || coefficients.iter().any(|c| *c < 0.0 || !c.is_finite()) {
        return Err(DataMergeError::Invalid(
            "fisher: epsilon and the model weights must be non-negative".into(),
        ));
    }
    let mut lambdas: Vec<f64> = coefficients.to_vec();
    if options.normalize {
        for (l, norm) in lambdas.iter_mut().zip(fisher_norms) {
            *l /= norm + 1e-12;
        }
    }
    let total: f64 = lambdas.iter().sum();
    if total <= 0.0 {
        return Err(DataMergeError::Invalid(
            "fisher: the model weights sum to zero".into(),
        ));
    }
    lambdas.iter_mut().for_each(|l| *l /= total);
    Ok(lambdas)
}

/// The Fisher-weighted average of one parameter vector: `values[i]` is model `i`'s,
/// `fishers[i]` its Fisher (`None`: not collected, counts as 0, so with `epsilon > 0` the
/// parameter takes the `lambdas`-weighted average).
pub fn fisher_average(
    values: &[&[f32]],
    fishers: &[Option<&[f64]>],
    lambdas: &[f64],
    epsilon: f64,
) -> Vec<f32> {
    let n = values[0].len();
    let mut out = vec![0.0f32; n];
    for (j, o) in out.iter_mut().enumerate() {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..values.len() {
            let f = fishers[i].map_or(0.0, |f| f[j]);
            let w = lambdas[i] * (f + epsilon);
            num += w * values[i][j] as f64;
            den += w;
        }
        *o = if den > 0.0 {
            (num / den) as f32
        } else {
            // epsilon 0 and no information: the coefficient-weighted average.
            (0..values.len())
                .map(|i| lambdas[i] * values[i][j] as f64)
                .sum::<f64>() as f32
        };
    }
    out
}

/// `theta* = sum_i l_i (F_i + eps) theta_i / sum_i l_i (F_i + eps)` per parameter, with the
/// coefficients `l_i` (normalised to sum 1; optionally divided by `||F_i||` first).
pub fn fisher_merge(
    models: &[&MlpWeights],
    fishers: &[Vec<f64>],
    coefficients: &[f64],
    options: &FisherMergeOptions,
) -> Result<MlpWeights> {
    if models.is_empty() || models.len() != fishers.len() || models.len() != coefficients.len() {
        return Err(DataMergeError::Invalid(format!(
            "fisher: {} models, {} Fishers, {} coefficients",
            models.len(),
            fishers.len(),
            coefficients.len()
        )));
    }
    let flats: Vec<Vec<f32>> = models.iter().map(|m| m.flat()).collect();
    for (i, f) in fishers.iter().enumerate() {
        if f.len() != flats[i].len() {
            return Err(DataMergeError::Invalid(format!(
                "fisher: model {i} has {} parameters but its Fisher has {}",
                flats[i].len(),
                f.len()
            )));
        }
    }
    let norms: Vec<f64> = fishers.iter().map(|f| l2(f)).collect();
    let lambdas = fisher_lambdas(coefficients, &norms, options)?;
    let values: Vec<&[f32]> = flats.iter().map(Vec::as_slice).collect();
    let fs: Vec<Option<&[f64]>> = fishers.iter().map(|f| Some(f.as_slice())).collect();
    let out = fisher_average(&values, &fs, &lambdas, options.epsilon);
    Ok(models[0].with_flat(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax regression (no hidden layer): the closed forms of the Fisher of a softmax output (Matena & Raffel 2022, §2).
    fn closed_form(w: &MlpWeights, data: &Dataset, kind: FisherKind) -> Vec<f64> {
        let l = &w.layers[0];
        let (d, c) = (l.d_in, l.d_out);
        let mut fw = vec![0.0f64; c * d];
        let mut fb = vec![0.0f64; c];
        for n in 0..data.len() {
            let x = data.row(n);
            let z: Vec<f64> = (0..c)
                .map(|j| l.bias[j] as f64 + (0..d).map(|k| (l.w(j, k) * x[k]) as f64).sum::<f64>())
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            let p: Vec<f64> = z.iter().map(|v| (v - m).exp() / s).collect();
            for j in 0..c {
                let g = match kind {
                    FisherKind::Exact => p[j] * (1.0 - p[j]),
                    FisherKind::Empirical => {
                        let e = (data.labels[n] as usize == j) as u8 as f64 - p[j];
                        e * e
                    }
                };
                fb[j] += g;
                for k in 0..d {
                    fw[j * d + k] += (x[k] as f64).powi(2) * g;
                }
            }
        }
        let n = data.len() as f64;
        fw.into_iter().chain(fb).map(|v| v / n).collect()
    }

    #[test]
    fn finding_1_exact_and_empirical_fisher_of_softmax_regression_match_closed_form() {
        let data = Dataset::digits().split(0).train.take(150);
        // A trained-ish model so probabilities are not uniform: scale the random init up.
        let mut w = MlpWeights::init(&[64, 10], 5).unwrap();
        w.layers[0].weight.iter_mut().for_each(|v| *v *= 8.0);
        for kind in [FisherKind::Exact, FisherKind::Empirical] {
            let got = diagonal_fisher(&w, &data, kind, 64).unwrap();
            let want = closed_form(&w, &data, kind);
            assert_eq!(got.len(), want.len());
            let scale = want.iter().cloned().fold(0.0, f64::max);
            assert!(scale > 1e-3, "{kind:?}: degenerate test, max {scale}");
            for (j, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-5 * scale + 1e-4 * e.abs(),
                    "{kind:?} parameter {j}: autodiff {g} vs closed form {e}"
                );
            }
        }
        // The two estimators differ (the empirical one is not the Fisher).
        let a = diagonal_fisher(&w, &data, FisherKind::Exact, 64).unwrap();
        let b = diagonal_fisher(&w, &data, FisherKind::Empirical, 64).unwrap();
        assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
    }

    #[test]
    fn fisher_of_a_hidden_layer_mlp_is_batch_independent() {
        let data = Dataset::digits().split(0).train.take(40);
        let w = MlpWeights::init(&[64, 12, 10], 1).unwrap();
        let a = diagonal_fisher(&w, &data, FisherKind::Exact, 40).unwrap();
        let b = diagonal_fisher(&w, &data, FisherKind::Exact, 7).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 + 1e-4 * x.abs(), "{x} vs {y}");
        }
        assert!(a.iter().all(|v| *v >= 0.0));
    }

    #[test]
    fn merge_weights_by_fisher() {
        let a = MlpWeights::init(&[2, 1], 1)
            .unwrap()
            .with_flat(&[1.0, 1.0, 1.0]);
        let b = a.with_flat(&[3.0, 3.0, 3.0]);
        let fa = vec![1.0, 0.0, 3.0];
        let fb = vec![1.0, 1.0, 1.0];
        let opts = FisherMergeOptions {
            epsilon: 0.0,
            normalize: false,
        };
        let m = fisher_merge(&[&a, &b], &[fa.clone(), fb.clone()], &[1.0, 1.0], &opts).unwrap();
        assert_eq!(m.flat(), vec![2.0, 3.0, 1.5]);
        // Equal Fishers give the plain average whatever their scale.
        let m = fisher_merge(&[&a, &b], &[fb.clone(), fb.clone()], &[1.0, 3.0], &opts).unwrap();
        assert_eq!(m.flat(), vec![2.5, 2.5, 2.5]);
        // Mismatched inputs are errors.
        assert!(fisher_merge(&[&a, &b], &[fa], &[1.0, 1.0], &opts).is_err());
    }
}
