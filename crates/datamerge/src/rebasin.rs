//! Git Re-Basin for MLPs: permutations of hidden units that align model B to model A.
//!
//! The permutation spec of an MLP with hidden layers `h = 0..H` has one permutation `P_h` per
//! hidden layer: it permutes the rows of `layers.h.weight` (`[out, in]`), the entries of
//! `layers.h.bias`, and the columns of `layers.{h+1}.weight`. Applying it leaves the function
//! unchanged. `perm[h][i] = j` means "unit `i` of the permuted B is unit `j` of B".
//!
//! - [`weight_matching`]: coordinate descent over the permutations, maximising
//!   `sum_l <W_l^A, P_l W_l^B P_{l-1}^T>` (plus the biases); each step solves one linear
//!   assignment problem exactly (`lsap`, SciPy's shortest-augmenting-path algorithm, f64), the
//!   order of the permutations in each sweep is a seeded shuffle, and it stops after a sweep
//!   that gains nothing (at most `max_iter` sweeps). No data needed.
//! - [`activation_matching`]: per hidden layer, the assignment maximising the cross moment
//!   `E[z_A z_B^T]` (Ainsworth et al.) or the Pearson correlation (REPAIR's variant) of the
//!   post-ReLU activations of both models on the same inputs.

use crate::{DataMergeError, Result};
use burn::tensor::Device;
use burn::tensor::activation::relu;
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::{batch_tensor, seeded_permutation};

/// One permutation per hidden layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permutation(pub Vec<Vec<usize>>);

impl Permutation {
    /// The identity for `weights`' hidden layers.
    pub fn identity(weights: &MlpWeights) -> Permutation {
        Permutation(
            weights.layers[..weights.n_hidden()]
                .iter()
                .map(|l| (0..l.d_out).collect())
                .collect(),
        )
    }

    /// The inverse permutation (`apply(apply(w, p), p.inverse()) == w`).
    pub fn inverse(&self) -> Permutation {
        Permutation(
            self.0
                .iter()
                .map(|p| {
                    let mut inv = vec![0; p.len()];
                    for (i, &j) in p.iter().enumerate() {
                        inv[j] = i;
                    }
                    inv
                })
                .collect(),
        )
    }

    /// A seeded random permutation for `weights`' hidden layers.
    pub fn random(weights: &MlpWeights, seed: u64) -> Permutation {
        Permutation(
            weights.layers[..weights.n_hidden()]
                .iter()
                .enumerate()
                .map(|(h, l)| seeded_permutation(l.d_out, seed, &format!("perm {h}")))
                .collect(),
        )
    }
}

fn check(weights: &MlpWeights, perm: &Permutation) -> Result<()> {
    if perm.0.len() != weights.n_hidden()
        || perm
            .0
            .iter()
            .zip(&weights.layers)
            .any(|(p, l)| p.len() != l.d_out)
    {
        return Err(DataMergeError::Invalid(format!(
            "permutation of sizes {:?} does not fit an MLP with layer sizes {:?}",
            perm.0.iter().map(Vec::len).collect::<Vec<_>>(),
            weights.layer_sizes
        )));
    }
    Ok(())
}

/// Apply a permutation to every parameter it acts on (the function is unchanged).
pub fn apply(weights: &MlpWeights, perm: &Permutation) -> MlpWeights {
    check(weights, perm).expect("permutation fits the model");
    let mut out = weights.clone();
    for (h, p) in perm.0.iter().enumerate() {
        // Rows of layer h (its output units) and its bias; layer h's columns were already
        // permuted by P_{h-1}, so read from the output built so far.
        let src = out.layers[h].clone();
        let dst = &mut out.layers[h];
        for (i, &j) in p.iter().enumerate() {
            dst.weight[i * src.d_in..(i + 1) * src.d_in]
                .copy_from_slice(&src.weight[j * src.d_in..(j + 1) * src.d_in]);
            dst.bias[i] = src.bias[j];
        }
        // Columns of layer h + 1 (its input units).
        let src = &weights.layers[h + 1];
        let dst = &mut out.layers[h + 1];
        for o in 0..src.d_out {
            for (i, &j) in p.iter().enumerate() {
                dst.weight[o * src.d_in + i] = src.weight[o * src.d_in + j];
            }
        }
    }
    out
}

/// Maximise `sum_i cost[i][perm[i]]` exactly; `cost` is `n x n` row-major.
pub fn solve_assignment(cost: &[f64], n: usize) -> Result<Vec<usize>> {
    let (rows, cols) = lsap::solve(n, n, &cost.to_vec(), true).map_err(|e| {
        DataMergeError::Invalid(format!(
            "linear assignment failed ({e}); the cost matrix has NaN or infinite entries"
        ))
    })?;
    let mut perm = vec![0; n];
    for (r, c) in rows.into_iter().zip(cols) {
        perm[r] = c;
    }
    Ok(perm)
}

/// Weight-matching options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchOptions {
    /// At most this many sweeps over all permutations.
    pub max_iter: usize,
    /// Seed of the sweep order.
    pub seed: u64,
}

impl Default for MatchOptions {
    fn default() -> Self {
        MatchOptions {
            max_iter: 100,
            seed: 0,
        }
    }
}

/// What weight matching found.
#[derive(Debug, Clone, PartialEq)]
pub struct Matching {
    pub permutation: Permutation,
    /// The objective `sum_l <W_l^A, W_l^{pi(B)}>` after each sweep (non-decreasing).
    pub objective: Vec<f64>,
    /// Sweeps run.
    pub sweeps: usize,
}

/// The cost matrix of hidden layer `h` given the other permutations:
/// `A = W_h^A (W_h^B P_{h-1}^T)^T + b^A b^B^T + W_{h+1}^A^T (P_{h+1} W_{h+1}^B)`.
fn layer_cost(a: &MlpWeights, b: &MlpWeights, perm: &Permutation, h: usize) -> Vec<f64> {
    let la = &a.layers[h];
    let lb = &b.layers[h];
    let n = la.d_out;
    let mut cost = vec![0.0f64; n * n];
    // Input axis of layer h is permuted by P_{h-1} (identity for the first layer).
    let in_perm: Vec<usize> = if h == 0 {
        (0..la.d_in).collect()
    } else {
        perm.0[h - 1].clone()
    };
    for i in 0..n {
        let ra = &la.weight[i * la.d_in..(i + 1) * la.d_in];
        for j in 0..n {
            let rb = &lb.weight[j * lb.d_in..(j + 1) * lb.d_in];
            let mut s = la.bias[i] as f64 * lb.bias[j] as f64;
            for (k, &pk) in in_perm.iter().enumerate() {
                s += ra[k] as f64 * rb[pk] as f64;
            }
            cost[i * n + j] = s;
        }
    }
    // Next layer: columns i of A against columns j of B, rows of B permuted by P_{h+1}.
    let na = &a.layers[h + 1];
    let nb = &b.layers[h + 1];
    let out_perm: Vec<usize> = if h + 1 < a.n_hidden() {
        perm.0[h + 1].clone()
    } else {
        (0..na.d_out).collect()
    };
    for (o, &po) in out_perm.iter().enumerate() {
        let ra = &na.weight[o * na.d_in..(o + 1) * na.d_in];
        let rb = &nb.weight[po * nb.d_in..(po + 1) * nb.d_in];
        for i in 0..n {
            let ai = ra[i] as f64;
            for j in 0..n {
                cost[i * n + j] += ai * rb[j] as f64;
            }
        }
    }
    cost
}

/// `sum` over parameters of `A * pi(B)`.
pub fn alignment(a: &MlpWeights, b: &MlpWeights, perm: &Permutation) -> f64 {
    apply(b, perm)
        .flat()
        .iter()
        .zip(a.flat())
        .map(|(x, y)| *x as f64 * y as f64)
        .sum()
}

/// Align `b` to `a` by weight matching (coordinate descent, one exact assignment per step).
pub fn weight_matching(a: &MlpWeights, b: &MlpWeights, options: &MatchOptions) -> Result<Matching> {
    a.check_same_shape(b, "model A", "model B")?;
    let mut perm = Permutation::identity(b);
    let hidden = a.n_hidden();
    let mut objective = Vec::new();
    let mut sweeps = 0;
    for iter in 0..options.max_iter.max(1) {
        sweeps = iter + 1;
        let mut progress = false;
        for h in seeded_permutation(hidden, options.seed, &format!("sweep {iter}")) {
            let n = a.layers[h].d_out;
            let cost = layer_cost(a, b, &perm, h);
            let old: f64 = (0..n).map(|i| cost[i * n + perm.0[h][i]]).sum();
            let new_perm = solve_assignment(&cost, n)?;
            let new: f64 = (0..n).map(|i| cost[i * n + new_perm[i]]).sum();
            if new > old + 1e-12 * old.abs().max(1.0) {
                progress = true;
                perm.0[h] = new_perm;
            }
        }
        objective.push(alignment(a, b, &perm));
        if !progress {
            break;
        }
    }
    Ok(Matching {
        permutation: perm,
        objective,
        sweeps,
    })
}

/// How activation matching scores a pair of units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationCost {
    /// `E[z_A z_B]` (Ainsworth et al.).
    CrossMoment,
    /// Pearson correlation (Li et al. 2015, REPAIR's matching).
    #[default]
    Correlation,
}

/// Post-ReLU activations of every hidden layer, `[rows, width]` row-major each.
pub fn hidden_activations(weights: &MlpWeights, data: &Dataset) -> Result<Vec<Vec<f32>>> {
    data.expect_features(weights.n_inputs())?;
    let device = Device::flex();
    let model = weights.module(&device);
    let mut out = vec![Vec::new(); weights.n_hidden()];
    let all: Vec<usize> = (0..data.len()).collect();
    for rows in all.chunks(1024) {
        let taps = model.forward_taps(batch_tensor(data, rows, &device), None);
        for (h, z) in taps
            .preacts
            .into_iter()
            .take(weights.n_hidden())
            .enumerate()
        {
            out[h].extend(evomerge_kernels::values_of(relu(z)));
        }
    }
    Ok(out)
}

/// Align `b` to `a` by matching hidden activations on `data` (both models see the same rows).
pub fn activation_matching(
    a: &MlpWeights,
    b: &MlpWeights,
    data: &Dataset,
    cost: ActivationCost,
) -> Result<Permutation> {
    a.check_same_shape(b, "model A", "model B")?;
    if data.is_empty() {
        return Err(DataMergeError::Invalid(format!(
            "activation matching: {} has no rows",
            data.name
        )));
    }
    let za = hidden_activations(a, data)?;
    let zb = hidden_activations(b, data)?;
    let rows = data.len();
    let mut perm = Vec::new();
    for h in 0..a.n_hidden() {
        let n = a.layers[h].d_out;
        let (xa, xb) = (&za[h], &zb[h]);
        let mut ab = vec![0.0f64; n * n];
        let (mut ma, mut mb, mut sa, mut sb) = (
            vec![0.0f64; n],
            vec![0.0f64; n],
            vec![0.0f64; n],
            vec![0.0f64; n],
        );
        for r in 0..rows {
            let ra = &xa[r * n..(r + 1) * n];
            let rb = &xb[r * n..(r + 1) * n];
            for i in 0..n {
                let ai = ra[i] as f64;
                ma[i] += ai;
                sa[i] += ai * ai;
                mb[i] += rb[i] as f64;
                sb[i] += (rb[i] as f64).powi(2);
                if ai != 0.0 {
                    for j in 0..n {
                        ab[i * n + j] += ai * rb[j] as f64;
                    }
                }
            }
        }
        let nf = rows as f64;
        for v in ab.iter_mut() {
            *v /= nf;
        }
        if cost == ActivationCost::Correlation {
            let std = |s: f64, m: f64| ((s / nf) - (m / nf).powi(2)).max(0.0).sqrt();
            for i in 0..n {
                for j in 0..n {
                    let cov = ab[i * n + j] - (ma[i] / nf) * (mb[j] / nf);
                    ab[i * n + j] = cov / (std(sa[i], ma[i]) * std(sb[j], mb[j]) + 1e-4);
                }
            }
        }
        perm.push(solve_assignment(&ab, n)?);
    }
    Ok(Permutation(perm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_models::mlp::logits;

    #[test]
    fn permuting_keeps_the_function() {
        let w = MlpWeights::init(&[64, 20, 16, 10], 4).unwrap();
        let p = Permutation::random(&w, 9);
        assert_ne!(p, Permutation::identity(&w));
        let pw = apply(&w, &p);
        assert_ne!(pw, w);
        let data = Dataset::digits().split(0).test.take(30);
        let (z0, z1) = (logits(&w, &data).unwrap(), logits(&pw, &data).unwrap());
        for (a, b) in z0.iter().zip(&z1) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(apply(&pw, &p.inverse()), w);
    }

    #[test]
    fn finding_3_weight_matching_recovers_a_permuted_copy_exactly() {
        let mut a = MlpWeights::init(&[64, 32, 32, 24, 10], 1).unwrap();
        // Positive hidden biases: no unit is dead on the data, so activations identify every
        // unit (two dead units would be interchangeable for activation matching).
        for l in &mut a.layers[..3] {
            l.bias.iter_mut().for_each(|b| *b += 0.5);
        }
        let pi = Permutation::random(&a, 77);
        let b = apply(&a, &pi);
        let m = weight_matching(&a, &b, &MatchOptions::default()).unwrap();
        // The permutation found is pi's inverse, and it maps B back onto A exactly.
        assert_eq!(m.permutation, pi.inverse());
        assert_eq!(apply(&b, &m.permutation), a);
        assert!(
            m.objective.windows(2).all(|w| w[1] >= w[0] - 1e-9),
            "{:?}",
            m.objective
        );
        // Activation matching recovers it too (correlation and cross moments).
        let data = Dataset::digits().split(0).train.take(300);
        for cost in [ActivationCost::Correlation, ActivationCost::CrossMoment] {
            let p = activation_matching(&a, &b, &data, cost).unwrap();
            assert_eq!(apply(&b, &p), a, "{cost:?}");
        }
    }

    #[test]
    fn one_hidden_layer_converges_in_one_productive_sweep() {
        let a = MlpWeights::init(&[8, 12, 3], 2).unwrap();
        let b = apply(&a, &Permutation::random(&a, 5));
        let m = weight_matching(&a, &b, &MatchOptions::default()).unwrap();
        assert_eq!(m.sweeps, 2, "one sweep that finds it, one that confirms");
        assert_eq!(apply(&b, &m.permutation), a);
    }

    #[test]
    fn mismatched_architectures_are_errors() {
        let a = MlpWeights::init(&[8, 12, 3], 2).unwrap();
        let b = MlpWeights::init(&[8, 10, 3], 2).unwrap();
        let e = weight_matching(&a, &b, &MatchOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[8, 12, 3]") && e.contains("[8, 10, 3]"), "{e}");
    }
}
