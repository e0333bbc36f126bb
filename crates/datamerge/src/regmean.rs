//! RegMean: merge each linear layer by the closed form of
//! `min_W sum_i ||X_i W - X_i W_i||^2`, i.e. `W* = (sum_i G_i)^-1 sum_i G_i W_i` with
//! `G_i = X_i^T X_i` the Gram matrix of the layer's inputs in model `i` on model `i`'s data
//! (burn layout: `W` is `[d_in, d_out]`, `y = x W`). Biases are averaged.
//!
//! Options: the off-diagonal scale `alpha` (`G~ = alpha G + (1 - alpha) diag(G)`), summed or
//! mean Grams, and a `ridge` for singular Grams (a ReLU unit that is dead on the data gives a
//! zero row and column): `W* = (sum G~_i + r I)^-1 (sum G~_i W_i + r W_avg)`, with `r = ridge *`
//! the mean diagonal of `sum G~_i`, which pulls the undetermined rows to the plain average.
//! With `ridge = 0` a singular Gram is an error.

use crate::{DataMergeError, Result};
use burn::tensor::Device;
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::batch_tensor;
use nalgebra::DMatrix;

/// Gram matrices `X^T X` (summed over rows) of every linear layer's input, and the row count.
#[derive(Debug, Clone, PartialEq)]
pub struct Grams {
    pub per_layer: Vec<DMatrix<f64>>,
    pub rows: usize,
}

/// Compute the Grams of `weights` on `data` (forward passes on the flex CPU backend; the
/// products are accumulated in f64).
pub fn grams(weights: &MlpWeights, data: &Dataset, batch_size: usize) -> Result<Grams> {
    data.expect_features(weights.n_inputs())?;
    if data.is_empty() {
        return Err(DataMergeError::Invalid(format!(
            "regmean: {} has no rows",
            data.name
        )));
    }
    let device = Device::flex();
    let model = weights.module(&device);
    let mut per_layer: Vec<DMatrix<f64>> = weights
        .layers
        .iter()
        .map(|l| DMatrix::zeros(l.d_in, l.d_in))
        .collect();
    let all: Vec<usize> = (0..data.len()).collect();
    for rows in all.chunks(batch_size.max(1)) {
        let taps = model.forward_taps(batch_tensor(data, rows, &device), None);
        for (l, input) in taps.inputs.into_iter().enumerate() {
            let d = weights.layers[l].d_in;
            let v: Vec<f32> = evomerge_kernels::values_of(input);
            let x = DMatrix::from_row_iterator(rows.len(), d, v.into_iter().map(f64::from));
            per_layer[l] += x.transpose() * &x;
        }
    }
    Ok(Grams {
        per_layer,
        rows: data.len(),
    })
}

/// Summed or mean Grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GramScale {
    /// `X^T X`: models weigh by how much data they saw (the paper's formula; exact for OLS).
    #[default]
    Sum,
    /// `X^T X / N`: every model weighs the same (what the reference implementations store).
    Mean,
}

/// RegMean options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegMeanOptions {
    /// Off-diagonal scale of the Grams, in `[0, 1]`; 1 = exact RegMean, 0 = diagonal only.
    pub alpha: f64,
    /// Relative ridge toward the plain average; 0 makes a singular Gram an error.
    pub ridge: f64,
    pub scale: GramScale,
    /// Average the last (classification) layer instead of RegMean-merging it, for models whose
    /// label spaces differ.
    pub average_head: bool,
}

impl Default for RegMeanOptions {
    fn default() -> Self {
        RegMeanOptions {
            alpha: 1.0,
            ridge: 1e-6,
            scale: GramScale::Sum,
            average_head: false,
        }
    }
}

/// `G ⊙ (alpha 11^T + (1 - alpha) I)`.
pub fn reduce_off_diagonal(g: &DMatrix<f64>, alpha: f64) -> DMatrix<f64> {
    let mut out = g * alpha;
    for k in 0..g.nrows() {
        out[(k, k)] = g[(k, k)];
    }
    out
}

/// Merge one linear layer: `weights[i]` is `[d_in, d_out]` (burn layout), `grams[i]` is
/// `[d_in, d_in]`, `coefficients[i]` scales model `i`'s Gram (and its share of the average).
/// `what` names the layer in errors.
pub fn regmean_layer(
    grams: &[DMatrix<f64>],
    weights: &[DMatrix<f64>],
    coefficients: &[f64],
    alpha: f64,
    ridge: f64,
    layer: usize,
    what: &str,
) -> Result<DMatrix<f64>> {
    let m = grams.len();
    if m == 0 || weights.len() != m || coefficients.len() != m {
        return Err(DataMergeError::Invalid(format!(
            "regmean: {m} Grams, {} weights, {} coefficients",
            weights.len(),
            coefficients.len()
        )));
    }
    if !(0.0..=1.0).contains(&alpha) || ridge < 0.0 || !ridge.is_finite() {
        return Err(DataMergeError::Invalid(format!(
            "regmean: alpha must be in [0, 1] and ridge >= 0 (got alpha {alpha}, ridge {ridge})"
        )));
    }
    let d_in = grams[0].nrows();
    let d_out = weights[0].ncols();
    for (g, w) in grams.iter().zip(weights) {
        if g.shape() != (d_in, d_in) || w.shape() != (d_in, d_out) {
            return Err(DataMergeError::Invalid(format!(
                "regmean: {what}: Gram {:?} / weight {:?} do not fit [{d_in}, {d_out}]",
                g.shape(),
                w.shape()
            )));
        }
    }
    let total: f64 = coefficients.iter().sum();
    let mut sum_g = DMatrix::<f64>::zeros(d_in, d_in);
    let mut rhs = DMatrix::<f64>::zeros(d_in, d_out);
    let mut avg = DMatrix::<f64>::zeros(d_in, d_out);
    for i in 0..m {
        let gi = reduce_off_diagonal(&grams[i], alpha) * coefficients[i];
        rhs += &gi * &weights[i];
        sum_g += gi;
        avg += &weights[i] * (coefficients[i] / total);
    }
    let max_diag = (0..d_in).map(|k| sum_g[(k, k)]).fold(0.0, f64::max);
    let mean_diag = (0..d_in).map(|k| sum_g[(k, k)]).sum::<f64>() / d_in as f64;
    let weakest = (0..d_in)
        .min_by(|a, b| sum_g[(*a, *a)].total_cmp(&sum_g[(*b, *b)]))
        .unwrap_or(0);
    let singular = || DataMergeError::SingularGram {
        layer,
        name: what.to_string(),
        unit: weakest,
    };
    if ridge > 0.0 {
        let r = ridge * mean_diag.max(f64::MIN_POSITIVE);
        for k in 0..d_in {
            sum_g[(k, k)] += r;
        }
        rhs += &avg * r;
    } else if sum_g[(weakest, weakest)] <= 1e-12 * max_diag.max(f64::MIN_POSITIVE) {
        return Err(singular());
    }
    let chol = sum_g.clone().cholesky().ok_or_else(singular)?;
    if ridge == 0.0 {
        // A numerically singular matrix can still factor with a tiny pivot.
        let l = chol.l();
        let min_pivot = (0..d_in)
            .map(|k| l[(k, k)] * l[(k, k)])
            .fold(f64::INFINITY, f64::min);
        if min_pivot <= 1e-12 * max_diag {
            return Err(singular());
        }
    }
    Ok(chol.solve(&rhs))
}

/// RegMean of whole MLPs: every linear layer's weight by [`regmean_layer`] with the models'
/// Grams (model `i`'s Grams from model `i`'s data), biases averaged with the coefficients.
pub fn regmean_merge(
    models: &[&MlpWeights],
    grams: &[Grams],
    coefficients: &[f64],
    options: &RegMeanOptions,
) -> Result<MlpWeights> {
    let m = models.len();
    if m == 0 || grams.len() != m || coefficients.len() != m {
        return Err(DataMergeError::Invalid(format!(
            "regmean: {m} models, {} Gram sets, {} coefficients",
            grams.len(),
            coefficients.len()
        )));
    }
    let total: f64 = coefficients.iter().sum();
    if total <= 0.0 || coefficients.iter().any(|c| *c < 0.0) {
        return Err(DataMergeError::Invalid(
            "regmean: model weights must be non-negative and not all zero".into(),
        ));
    }
    // Coefficients normalised so equal weights scale each Gram by 1 (bloomberg's G_i * l_i * M).
    let coefs: Vec<f64> = coefficients.iter().map(|c| c / total * m as f64).collect();
    let mut out = models[0].clone();
    let n_layers = out.layers.len();
    for l in 0..n_layers {
        let (d_in, d_out) = (out.layers[l].d_in, out.layers[l].d_out);
        let average_only = options.average_head && l + 1 == n_layers;
        let ws: Vec<DMatrix<f64>> = models
            .iter()
            .map(|mdl| {
                // torch [out, in] row-major == burn [in, out] column-major.
                DMatrix::from_column_slice(
                    d_in,
                    d_out,
                    &mdl.layers[l]
                        .weight
                        .iter()
                        .map(|v| *v as f64)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let merged = if average_only {
            ws.iter()
                .zip(&coefs)
                .fold(DMatrix::zeros(d_in, d_out), |acc, (w, c)| {
                    acc + w * (c / m as f64)
                })
        } else {
            let gs: Vec<DMatrix<f64>> = grams
                .iter()
                .map(|g| match options.scale {
                    GramScale::Sum => g.per_layer[l].clone(),
                    GramScale::Mean => &g.per_layer[l] / g.rows.max(1) as f64,
                })
                .collect();
            regmean_layer(
                &gs,
                &ws,
                &coefs,
                options.alpha,
                options.ridge,
                l,
                &format!("layers.{l}.weight"),
            )?
        };
        out.layers[l].weight = merged.as_slice().iter().map(|v| *v as f32).collect();
        for (o, b) in out.layers[l].bias.iter_mut().enumerate() {
            *b = (0..m)
                .map(|i| coefs[i] / m as f64 * models[i].layers[l].bias[o] as f64)
                .sum::<f64>() as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn ols(x: &DMatrix<f64>, y: &DMatrix<f64>) -> DMatrix<f64> {
        (x.transpose() * x)
            .cholesky()
            .unwrap()
            .solve(&(x.transpose() * y))
    }

    #[test]
    fn finding_2_regmean_of_shard_ols_fits_is_the_global_ols_fit() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (n, d, k) = (300, 8, 3);
        // Inputs with a bias column, targets from a random linear map plus noise.
        let x = DMatrix::from_fn(n, d, |_, j| {
            if j == d - 1 {
                1.0
            } else {
                rng.random_range(-1.0..1.0)
            }
        });
        let w_true = DMatrix::from_fn(d, k, |_, _| rng.random_range(-2.0..2.0));
        let noise = DMatrix::from_fn(n, k, |_, _| rng.random_range(-0.3..0.3));
        let y = &x * &w_true + noise;
        let shards = [(0, 70), (70, 190), (190, 300)];
        let mut grams = Vec::new();
        let mut fits = Vec::new();
        for (a, b) in shards {
            let xs = x.rows(a, b - a).into_owned();
            let ys = y.rows(a, b - a).into_owned();
            grams.push(xs.transpose() * &xs);
            fits.push(ols(&xs, &ys));
        }
        let merged = regmean_layer(&grams, &fits, &[1.0; 3], 1.0, 0.0, 0, "ols").unwrap();
        let global = ols(&x, &y);
        let err = (&merged - &global).abs().max();
        assert!(err < 1e-9, "max |RegMean - OLS| = {err}");
        // The plain average of the shard fits is not the global fit.
        let avg = (&fits[0] + &fits[1] + &fits[2]) / 3.0;
        assert!((&avg - &global).abs().max() > 1e-3);
    }

    #[test]
    fn alpha_zero_is_the_row_wise_diagonal_average_and_identity_grams_average() {
        let g1 = DMatrix::from_row_slice(2, 2, &[2.0, 1.0, 1.0, 4.0]);
        let g2 = DMatrix::from_row_slice(2, 2, &[6.0, -1.0, -1.0, 1.0]);
        let w1 = DMatrix::from_row_slice(2, 1, &[1.0, 1.0]);
        let w2 = DMatrix::from_row_slice(2, 1, &[3.0, 3.0]);
        let got = regmean_layer(
            &[g1, g2],
            &[w1.clone(), w2.clone()],
            &[1.0, 1.0],
            0.0,
            0.0,
            0,
            "x",
        )
        .unwrap();
        assert!((got[(0, 0)] - (2.0 + 18.0) / 8.0).abs() < 1e-12);
        assert!((got[(1, 0)] - (4.0 + 3.0) / 5.0).abs() < 1e-12);
        let eye = DMatrix::<f64>::identity(2, 2) * 5.0;
        let got = regmean_layer(
            &[eye.clone(), eye],
            &[w1, w2],
            &[1.0, 1.0],
            1.0,
            0.0,
            0,
            "x",
        )
        .unwrap();
        assert!((got[(0, 0)] - 2.0).abs() < 1e-12 && (got[(1, 0)] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn singular_gram_is_an_error_without_ridge_and_averaged_with_it() {
        // Input unit 1 is dead in both models: zero row and column.
        let g = DMatrix::from_row_slice(2, 2, &[3.0, 0.0, 0.0, 0.0]);
        let w1 = DMatrix::from_row_slice(2, 1, &[1.0, 5.0]);
        let w2 = DMatrix::from_row_slice(2, 1, &[3.0, 7.0]);
        let e = regmean_layer(
            &[g.clone(), g.clone()],
            &[w1.clone(), w2.clone()],
            &[1.0, 1.0],
            1.0,
            0.0,
            2,
            "layers.2.weight",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("layers.2.weight") && e.contains("singular") && e.contains("ridge"),
            "{e}"
        );
        assert!(e.contains("unit 1"), "{e}");
        let got =
            regmean_layer(&[g.clone(), g], &[w1, w2], &[1.0, 1.0], 1.0, 1e-3, 2, "x").unwrap();
        assert!(got.iter().all(|v| v.is_finite()));
        assert!(
            (got[(1, 0)] - 6.0).abs() < 1e-9,
            "dead row falls back to the average: {got}"
        );
        assert!((got[(0, 0)] - 2.0).abs() < 1e-3);
    }

    #[test]
    fn identical_models_merge_to_themselves() {
        let data = Dataset::digits().split(0).train.take(100);
        let w = MlpWeights::init(&[64, 16, 10], 3).unwrap();
        let g = grams(&w, &data, 32).unwrap();
        assert_eq!(g.rows, 100);
        let m = regmean_merge(
            &[&w, &w],
            &[g.clone(), g],
            &[1.0, 1.0],
            &RegMeanOptions::default(),
        )
        .unwrap();
        for (a, b) in m.flat().iter().zip(w.flat()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
