//! Generalized task arithmetic: task vectors, their sparsifiers (TIES' magnitude pruning, DARE's
//! random drop, Breadcrumbs' outlier cut, DELLA's magnitude-ranked drop), sign consensus, and the
//! weighted sum that task_arithmetic / ties / dare_* / breadcrumbs* / della* all share.

use crate::{KernelError, MaskRng, Result, T2, scalar};
use burn::tensor::{Tensor, TensorData};

/// How a task vector is thinned before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sparsify {
    /// Keep everything (task arithmetic).
    None,
    /// Keep the `k = max(1, floor(density * n))` largest magnitudes (TIES), `density * n`
    /// computed in f64 as mergekit's Python floats are.
    Magnitude,
    /// Keep each entry with probability `density` (DARE).
    Random,
    /// Drop the largest `gamma * n` magnitudes and the smallest ones so `density * n` remain
    /// (Model Breadcrumbs).
    MagnitudeOutliers,
    /// Keep each entry with a probability from `density - epsilon` (smallest magnitude in its
    /// row) to `density + epsilon` (largest) (DELLA).
    Della,
}

/// How the kept entries are scaled back up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rescale {
    /// No rescaling.
    None,
    /// Multiply the kept entries so the tensor's L1 norm is exactly what it was (mergekit's
    /// `rescale: true`; the same for every draw).
    L1,
    /// Divide each kept entry by its keep probability (`1/density`, or `1/p_i` for DELLA), as
    /// the DARE and DELLA papers do (keeps the expectation).
    InverseDensity,
}

/// Sign election across task vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consensus {
    /// Every task vector counts everywhere.
    None,
    /// The sign of the sum of the weighted deltas wins (ties go positive); entries of the other
    /// sign, and zeros, are dropped (TIES, as mergekit does it).
    Sum,
    /// The sign held by more weighted deltas wins (ties go positive).
    Count,
}

/// One model's contribution: its (already sparsified) delta from the base and its weight.
#[derive(Debug, Clone)]
pub struct TaskVector {
    pub delta: T2,
    pub weight: f32,
}

/// A 0/1 mask keeping the entries whose rank by `|x|` (ascending; ties ordered by position) lies
/// in `lo..hi`. Two selections (O(n)) on the host instead of a full argsort: magnitude pruning
/// of a large tensor was the slowest step of TIES.
fn rank_range_mask(x: &T2, lo: usize, hi: usize) -> T2 {
    let [r, c] = x.dims();
    let n = r * c;
    let hi = hi.min(n);
    if lo >= hi {
        return x.zeros_like();
    }
    let abs = crate::values_of(x.clone().abs());
    let mut work = abs.clone();
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    let t_lo = *work.select_nth_unstable_by(lo, cmp).1;
    let t_hi = *work.select_nth_unstable_by(hi - 1, cmp).1;
    let less = |t: f32| abs.iter().filter(|v| v.total_cmp(&t).is_lt()).count();
    let (less_lo, less_hi) = (less(t_lo), less(t_hi));
    let (mut seen_lo, mut seen_hi) = (0usize, 0usize);
    let mask: Vec<f32> = abs
        .iter()
        .map(|v| {
            let rank = if v.total_cmp(&t_lo).is_eq() {
                seen_lo += 1;
                less_lo + seen_lo - 1
            } else if v.total_cmp(&t_hi).is_eq() {
                seen_hi += 1;
                less_hi + seen_hi - 1
            } else if v.total_cmp(&t_lo).is_gt() && v.total_cmp(&t_hi).is_lt() {
                lo // strictly inside
            } else {
                n // outside
            };
            if (lo..hi).contains(&rank) { 1.0 } else { 0.0 }
        })
        .collect();
    Tensor::<2>::from_data(TensorData::new(mask, [r, c]), &x.device())
}

fn apply_rescale(x: &T2, masked: T2, rescale: Rescale, density: f64) -> T2 {
    match rescale {
        Rescale::None => masked,
        Rescale::InverseDensity => masked.div_scalar(density as f32),
        Rescale::L1 => {
            let before = scalar(x.clone().abs().sum());
            let after = scalar(masked.clone().abs().sum());
            if before < 1e-7 || after < 1e-7 {
                masked
            } else {
                masked.mul_scalar(before / after)
            }
        }
    }
}

fn uniform_like(x: &T2, rng: &mut MaskRng) -> T2 {
    let [r, c] = x.dims();
    Tensor::from_data(TensorData::new(rng.uniform(r * c), [r, c]), &x.device())
}

/// `int(fraction * n)` as mergekit computes it: a Python float (f64) product truncated
/// toward zero, at most `n`.
pub fn kept_count(fraction: f64, n: usize) -> usize {
    let x = fraction * n as f64;
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        (x as usize).min(n)
    }
}

/// Thin one task vector. `rng` is only drawn from by the random methods (DARE, DELLA); pass the
/// stream for this tensor and model ([`MaskRng::new`]).
///
/// `density` must be in (0, 1] (checked by the recipe layer; here `>= 1` means keep all).
/// As in mergekit 0.1.5, magnitude pruning keeps at least one entry when `density * n < 1`.
///
/// `density`, `gamma` and `epsilon` are f64 because mergekit computes every count from them
/// with Python floats (`k = int(density * numel)`, `n_top = int(gamma * numel)`): with an f32
/// density, 5/6 x 1536 gives 1279.99997 -> 1279 where mergekit keeps 1280. The per-entry
/// probabilities (DARE's `density`, DELLA's `density - epsilon + 2 epsilon r`) are f32, as
/// torch computes them in the tensor's dtype.
pub fn sparsify(
    x: T2,
    method: Sparsify,
    density: f64,
    gamma: f64,
    epsilon: f64,
    rescale: Rescale,
    rng: &mut MaskRng,
) -> Result<T2> {
    if method == Sparsify::None || density >= 1.0 {
        return Ok(x);
    }
    if density.is_nan() || density <= 0.0 {
        if method == Sparsify::Della {
            return Ok(x.zeros_like());
        }
        return Err(KernelError::BadParameter {
            method: "sparsify",
            what: format!("density {density} must be in (0, 1]"),
        });
    }
    let [r, c] = x.dims();
    let n = r * c;
    if n == 0 {
        return Ok(x);
    }
    match method {
        Sparsify::None => unreachable!(),
        Sparsify::Magnitude => {
            let k = kept_count(density, n).max(1);
            let mask = rank_range_mask(&x, n - k, n);
            Ok(apply_rescale(&x, x.clone().mul(mask), rescale, density))
        }
        Sparsify::Random => {
            let keep = uniform_like(&x, rng).lower_elem(density as f32).float();
            Ok(apply_rescale(&x, x.clone().mul(keep), rescale, density))
        }
        Sparsify::MagnitudeOutliers => {
            if !(0.0..1.0).contains(&gamma) {
                return Err(KernelError::BadParameter {
                    method: "breadcrumbs",
                    what: format!("gamma {gamma} must be in [0, 1)"),
                });
            }
            // mergekit 0.1.5: keep ranks [n_bot, n_bot + target) of the ascending order,
            // n_bot = max(0, n - target - n_top).
            let target = kept_count(density, n);
            let n_top = kept_count(gamma, n);
            let n_bot = n.saturating_sub(target + n_top);
            let mask = rank_range_mask(&x, n_bot, n_bot + target);
            Ok(apply_rescale(&x, x.clone().mul(mask), rescale, density))
        }
        Sparsify::Della => {
            if !(density - epsilon > 0.0 && density + epsilon < 1.0) {
                return Err(KernelError::BadParameter {
                    method: "della",
                    what: format!(
                        "density - epsilon and density + epsilon must lie in (0, 1); got density {density}, epsilon {epsilon}"
                    ),
                });
            }
            // Rank of each |x| within its row, 0 = smallest (ties by position, on every
            // device: the ranks are computed on the host), normalised to [0, 1].
            let ranks = {
                use rayon::prelude::*;
                let values = crate::values_of(x.clone());
                let mut ranks = vec![0f32; n];
                values
                    .par_chunks(c)
                    .zip(ranks.par_chunks_mut(c))
                    .for_each_init(crate::fused::RowRanker::default, |ranker, (row, out)| {
                        ranker.rank_into(row, out)
                    });
                Tensor::<2>::from_data(TensorData::new(ranks, [r, c]), &x.device())
            };
            let rank_norm = if c > 1 {
                ranks.div_scalar((c - 1) as f32)
            } else {
                ranks.add_scalar(0.5) // one column: every entry gets the middle probability
            };
            let p = rank_norm
                .mul_scalar((2.0 * epsilon) as f32)
                .add_scalar((density - epsilon) as f32);
            let keep = uniform_like(&x, rng).lower(p.clone()).float();
            let masked = x.clone().mul(keep);
            Ok(match rescale {
                Rescale::InverseDensity => masked.div(p),
                other => apply_rescale(&x, masked, other, density),
            })
        }
    }
}

/// The per-model masks of a sign election over weighted deltas: `mask[i]` is 1 where
/// `sign(weighted[i])` equals the elected sign (zeros never match).
pub fn consensus_mask(weighted: &[T2], consensus: Consensus) -> Vec<T2> {
    if consensus == Consensus::None || weighted.is_empty() {
        return weighted.iter().map(|w| w.ones_like()).collect();
    }
    let mut acc = match consensus {
        Consensus::Sum => weighted[0].clone(),
        _ => weighted[0].clone().sign(),
    };
    for w in &weighted[1..] {
        acc = acc.add(match consensus {
            Consensus::Sum => w.clone(),
            _ => w.clone().sign(),
        });
    }
    // +1 where acc >= 0, else -1
    let majority = acc
        .greater_equal_elem(0.0)
        .float()
        .mul_scalar(2.0)
        .sub_scalar(1.0);
    weighted
        .iter()
        .map(|w| w.clone().sign().equal(majority.clone()).float())
        .collect()
}

/// `base + lambda * combine(weight_i * delta_i)`: with a consensus, only entries agreeing with
/// the elected sign count; with `normalize`, the sum is divided by the sum of the weights that
/// counted (per entry with a consensus, zero divisors replaced by 1; globally without, with
/// |sum| < 1e-8 replaced by 1), exactly as mergekit's generalized task arithmetic.
pub fn generalized_task_arithmetic(
    base: T2,
    task_vectors: Vec<TaskVector>,
    consensus: Consensus,
    normalize: bool,
    lambda: f32,
) -> Result<T2> {
    if task_vectors.is_empty() {
        return Ok(base);
    }
    for tv in &task_vectors {
        if tv.delta.dims() != base.dims() {
            return Err(KernelError::ShapeMismatch {
                method: "task_arithmetic",
                a: base.dims(),
                b: tv.delta.dims(),
            });
        }
    }
    let weighted: Vec<T2> = task_vectors
        .iter()
        .map(|tv| tv.delta.clone().mul_scalar(tv.weight))
        .collect();
    let mut mixed;
    if consensus == Consensus::None {
        mixed = weighted[0].clone();
        for w in &weighted[1..] {
            mixed = mixed.add(w.clone());
        }
        if normalize {
            let mut div: f32 = task_vectors.iter().map(|tv| tv.weight).sum();
            if div.abs() < 1e-8 {
                div = 1.0;
            }
            mixed = mixed.div_scalar(div);
        }
    } else {
        let masks = consensus_mask(&weighted, consensus);
        mixed = base.zeros_like();
        let mut divisor = base.zeros_like();
        for ((w, m), tv) in weighted.into_iter().zip(masks).zip(&task_vectors) {
            mixed = mixed.add(w.mul(m.clone()));
            divisor = divisor.add(m.mul_scalar(tv.weight));
        }
        if normalize {
            let zero = divisor.clone().equal_elem(0.0);
            mixed = mixed.div(divisor.mask_fill(zero, 1.0));
        }
    }
    if lambda != 1.0 {
        mixed = mixed.mul_scalar(lambda);
    }
    Ok(base.add(mixed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, t};
    use crate::values_of;

    fn rng() -> MaskRng {
        MaskRng::new(0, "t", 0)
    }

    fn tv(delta: &[f32], weight: f32) -> TaskVector {
        TaskVector {
            delta: t(delta),
            weight,
        }
    }

    fn ties(a: &[f32], b: &[f32], w: [f32; 2], density: f64) -> Vec<f32> {
        let base = t(&vec![0.0; a.len()]);
        let sa = sparsify(
            t(a),
            Sparsify::Magnitude,
            density,
            0.0,
            0.0,
            Rescale::None,
            &mut rng(),
        )
        .unwrap();
        let sb = sparsify(
            t(b),
            Sparsify::Magnitude,
            density,
            0.0,
            0.0,
            Rescale::None,
            &mut rng(),
        )
        .unwrap();
        let tvs = vec![
            TaskVector {
                delta: sa,
                weight: w[0],
            },
            TaskVector {
                delta: sb,
                weight: w[1],
            },
        ];
        values_of(generalized_task_arithmetic(base, tvs, Consensus::Sum, true, 1.0).unwrap())
    }

    #[test]
    fn golden_task_arithmetic() {
        let base = t(&[0., 0., 0., 0.]);
        let out = generalized_task_arithmetic(
            base,
            vec![tv(&[1., -2., 3., 0.], 1.), tv(&[1., 2., -1., 0.], 1.)],
            Consensus::None,
            false,
            1.0,
        )
        .unwrap();
        assert_close(&values_of(out), &[2., 0., 2., 0.], 1e-6);
    }

    #[test]
    fn golden_ties() {
        assert_close(
            &ties(&[1., -2., 3., 0.], &[1., 2., -1., 0.], [1., 1.], 1.0),
            &[1., 2., 3., 0.],
            1e-6,
        );
        assert_close(
            &ties(&[1., -2., 3., 0.5], &[0.5, 2., -1., 3.], [1., 1.], 0.5),
            &[0., 2., 3., 3.],
            1e-6,
        );
        assert_close(
            &ties(&[1., -2., 3., 0.5], &[0.5, 2., -1., 3.], [0.7, 0.3], 0.5),
            &[0., -2., 3., 3.],
            1e-6,
        );
    }

    #[test]
    fn count_consensus_votes_by_sign() {
        // sum says + (3 - 1 - 1 = 1) but two of three are negative: count says -
        let w = [t(&[3.]), t(&[-1.]), t(&[-1.])];
        let m: Vec<f32> = consensus_mask(&w, Consensus::Count)
            .into_iter()
            .flat_map(values_of)
            .collect();
        assert_eq!(m, vec![0., 1., 1.]);
        let m: Vec<f32> = consensus_mask(&w, Consensus::Sum)
            .into_iter()
            .flat_map(values_of)
            .collect();
        assert_eq!(m, vec![1., 0., 0.]);
    }

    #[test]
    fn golden_breadcrumbs_and_fixed_bug() {
        let d: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        let out = sparsify(
            t(&d),
            Sparsify::MagnitudeOutliers,
            0.5,
            0.1,
            0.0,
            Rescale::None,
            &mut rng(),
        )
        .unwrap();
        assert_close(
            &values_of(out),
            &[0., 0., 0., 0., 5., 6., 7., 8., 9., 0.],
            0.0,
        );
        // mergekit zeroes everything here (n_top == 0); we keep the 5 largest
        let out = sparsify(
            t(&d),
            Sparsify::MagnitudeOutliers,
            0.5,
            0.01,
            0.0,
            Rescale::None,
            &mut rng(),
        )
        .unwrap();
        assert_close(
            &values_of(out),
            &[0., 0., 0., 0., 0., 6., 7., 8., 9., 10.],
            0.0,
        );
    }

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        // Box-Muller from the mask stream: a deterministic pseudo-normal sample for property tests.
        let u = MaskRng::new(seed, "randn", 0).uniform(2 * n);
        (0..n)
            .map(|i| {
                let (a, b) = (u[2 * i].max(1e-7), u[2 * i + 1]);
                (-2.0 * a.ln()).sqrt() * (2.0 * std::f32::consts::PI * b).cos()
            })
            .collect()
    }

    #[test]
    fn rank_masks_with_many_ties_keep_exact_counts() {
        // Values from a small set: most entries tie with the thresholds.
        let x: Vec<f32> = (0..997).map(|i| ((i * 7919) % 5) as f32 - 2.0).collect();
        for (lo, hi) in [
            (0, 997),
            (100, 900),
            (0, 1),
            (996, 997),
            (400, 401),
            (300, 300),
        ] {
            let m = values_of(rank_range_mask(&t(&x), lo, hi));
            assert_eq!(
                m.iter().filter(|v| **v == 1.0).count(),
                hi - lo,
                "{lo}..{hi}"
            );
            // every kept |x| is >= every dropped |x| below the range and <= every one above it,
            // checked against a stable sort by (|x|, position)
            let mut order: Vec<usize> = (0..x.len()).collect();
            order.sort_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()).then(a.cmp(&b)));
            for (rank, &i) in order.iter().enumerate() {
                assert_eq!(
                    m[i] == 1.0,
                    (lo..hi).contains(&rank),
                    "{lo}..{hi} rank {rank}"
                );
            }
        }
    }

    #[test]
    fn magnitude_keeps_exactly_k() {
        let x = randn(128 * 64, 1);
        let out = values_of(
            sparsify(
                t(&x),
                Sparsify::Magnitude,
                0.5,
                0.0,
                0.0,
                Rescale::None,
                &mut rng(),
            )
            .unwrap(),
        );
        assert_eq!(out.iter().filter(|v| **v != 0.0).count(), 128 * 64 / 2);
        // kept entries are the large ones
        let min_kept = out
            .iter()
            .filter(|v| **v != 0.0)
            .map(|v| v.abs())
            .fold(f32::MAX, f32::min);
        let max_dropped = x
            .iter()
            .zip(&out)
            .filter(|(_, o)| **o == 0.0)
            .map(|(v, _)| v.abs())
            .fold(0.0, f32::max);
        assert!(min_kept >= max_dropped);
    }

    /// `int(fraction * n)` with Python floats, as printed by
    /// `python3 -c "print(int(5/6*1536), int(0.7*10), int(0.35*20), int(0.29*100))"`: an f32
    /// fraction gives 1279, 6, 6 for the first three (5/6 in f32 is 0.83333331).
    #[test]
    fn counts_are_python_float_counts() {
        let cases: [(f64, usize, usize); 8] = [
            (5.0 / 6.0, 1536, 1280),
            (0.8333333333333334, 1536, 1280),
            (0.7, 10, 7),
            (0.35, 20, 7),
            (0.29, 100, 28), // 28.999999999999996 in f64
            (0.57, 100, 56),
            (0.9, 1536, 1382),
            (1.0 / 96.0, 1536, 16),
        ];
        for (f, n, want) in cases {
            assert_eq!(kept_count(f, n), want, "int({f} * {n})");
        }
        assert_eq!(kept_count(0.0, 10), 0);
        assert_eq!(kept_count(f64::NAN, 10), 0);
        assert_eq!(kept_count(2.0, 10), 10);
    }

    /// TIES on a 1536-element tensor at density 5/6 keeps exactly mergekit's k = 1280 (the
    /// largest magnitudes), not the 1279 an f32 density gives.
    #[test]
    fn magnitude_k_lands_on_the_integer_as_mergekit() {
        let x = randn(1536, 11);
        let keep = |density: f64| {
            let out = values_of(
                sparsify(
                    t(&x),
                    Sparsify::Magnitude,
                    density,
                    0.0,
                    0.0,
                    Rescale::None,
                    &mut rng(),
                )
                .unwrap(),
            );
            out.iter().filter(|v| **v != 0.0).count()
        };
        assert_eq!(keep(5.0 / 6.0), 1280);
        assert_eq!(keep(0.7), 1075);
    }

    /// Breadcrumbs with 20 entries, density 0.35, gamma 0.35: mergekit drops the 7 largest
    /// (`int(0.35 * 20)` = 7) and the 6 smallest, keeping ranks 6..13 of the ascending order
    /// (an f32 density and gamma give 6 and 6, keeping ranks 8..14).
    #[test]
    fn breadcrumbs_counts_are_python_float_counts() {
        let x: Vec<f32> = (1..=20)
            .map(|i| i as f32 * if i % 2 == 0 { -1.0 } else { 1.0 })
            .collect();
        let out = values_of(
            sparsify(
                t(&x),
                Sparsify::MagnitudeOutliers,
                0.35,
                0.35,
                0.0,
                Rescale::None,
                &mut rng(),
            )
            .unwrap(),
        );
        let kept: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(kept, (6..13).collect::<Vec<_>>());
    }

    #[test]
    fn breadcrumbs_counts() {
        let x = randn(128 * 64, 2);
        let n = x.len();
        for gamma0 in [0.1f64, 0.2, 0.5, 1.0] {
            for density in [0.1f64, 0.3, 0.5, 0.6, 0.9] {
                let gamma = gamma0 * (1.0 - density);
                if gamma >= 1.0 {
                    continue;
                }
                let out = values_of(
                    sparsify(
                        t(&x),
                        Sparsify::MagnitudeOutliers,
                        density,
                        gamma,
                        0.0,
                        Rescale::None,
                        &mut rng(),
                    )
                    .unwrap(),
                );
                let nnz = out.iter().filter(|v| **v != 0.0).count();
                assert_eq!(
                    nnz,
                    (n as f64 * density) as usize,
                    "gamma {gamma} density {density}"
                );
            }
        }
    }

    #[test]
    fn dare_l1_rescale_is_exact_for_every_draw() {
        let x = randn(4096, 3);
        let l1: f32 = x.iter().map(|v| v.abs()).sum();
        for model in 0..5 {
            let mut r = MaskRng::new(9, "w", model);
            let out = values_of(
                sparsify(t(&x), Sparsify::Random, 0.3, 0.0, 0.0, Rescale::L1, &mut r).unwrap(),
            );
            let got: f32 = out.iter().map(|v| v.abs()).sum();
            assert!((got - l1).abs() / l1 < 1e-4, "{got} vs {l1}");
            let kept = out.iter().filter(|v| **v != 0.0).count() as f32 / out.len() as f32;
            assert!((kept - 0.3).abs() < 0.03, "kept share {kept}");
        }
    }

    #[test]
    fn dare_inverse_density_keeps_the_expectation() {
        let x = vec![1.0f32; 1000];
        let mut total = 0.0f64;
        let draws = 50;
        for model in 0..draws {
            let mut r = MaskRng::new(4, "w", model);
            let out = values_of(
                sparsify(
                    t(&x),
                    Sparsify::Random,
                    0.25,
                    0.0,
                    0.0,
                    Rescale::InverseDensity,
                    &mut r,
                )
                .unwrap(),
            );
            assert!(out.iter().all(|v| *v == 0.0 || (*v - 4.0).abs() < 1e-6));
            total += out.iter().map(|v| *v as f64).sum::<f64>();
        }
        let mean = total / (draws as f64 * 1000.0);
        assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
    }

    #[test]
    fn della_probabilities_follow_rank() {
        // one row of 1000 increasing magnitudes: keep rate rises from d-e to d+e
        let x: Vec<f32> = (1..=1000).map(|v| v as f32).collect();
        let mut low = 0usize;
        let mut high = 0usize;
        for model in 0..40 {
            let mut r = MaskRng::new(5, "w", model);
            let out = values_of(
                sparsify(t(&x), Sparsify::Della, 0.5, 0.0, 0.4, Rescale::None, &mut r).unwrap(),
            );
            low += out[..100].iter().filter(|v| **v != 0.0).count();
            high += out[900..].iter().filter(|v| **v != 0.0).count();
        }
        let (pl, ph) = (low as f32 / 4000.0, high as f32 / 4000.0);
        assert!((pl - 0.14).abs() < 0.04, "low keep rate {pl}");
        assert!((ph - 0.86).abs() < 0.04, "high keep rate {ph}");
        let e = sparsify(
            t(&x),
            Sparsify::Della,
            0.5,
            0.0,
            1.35,
            Rescale::None,
            &mut rng(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("epsilon"), "{e}");
        // one column does not produce NaN
        let dev = crate::testing::dev();
        let col = crate::tensor_from(&[1., 2., 3.], &[3, 1], &dev);
        let out = values_of(
            sparsify(col, Sparsify::Della, 0.5, 0.0, 0.1, Rescale::L1, &mut rng()).unwrap(),
        );
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn ties_output_signs_agree_with_election() {
        let a = randn(2000, 6);
        let b = randn(2000, 7);
        let c = randn(2000, 8);
        let base = t(&vec![0.0; 2000]);
        let w = [0.5f32, 1.0, 0.8];
        let tvs: Vec<TaskVector> = [&a, &b, &c]
            .iter()
            .zip(w)
            .map(|(d, w)| TaskVector {
                delta: sparsify(
                    t(d),
                    Sparsify::Magnitude,
                    0.6,
                    0.0,
                    0.0,
                    Rescale::None,
                    &mut rng(),
                )
                .unwrap(),
                weight: w,
            })
            .collect();
        let weighted: Vec<Vec<f32>> = tvs
            .iter()
            .map(|tv| values_of(tv.delta.clone().mul_scalar(tv.weight)))
            .collect();
        let out =
            values_of(generalized_task_arithmetic(base, tvs, Consensus::Sum, true, 1.0).unwrap());
        for i in 0..2000 {
            let s: f32 = weighted.iter().map(|w| w[i]).sum();
            let elected = if s >= 0.0 { 1.0 } else { -1.0 };
            assert!(
                out[i] == 0.0 || out[i].signum() == elected,
                "entry {i}: {} vs {elected}",
                out[i]
            );
        }
    }

    #[test]
    fn weight_minus_one_then_plus_one_returns_base() {
        let base = [0.5f32, -1.0, 2.0];
        let m = [1.5f32, 0.0, -3.0];
        let delta: Vec<f32> = m.iter().zip(&base).map(|(a, b)| a - b).collect();
        let away = generalized_task_arithmetic(
            t(&base),
            vec![tv(&delta, -1.0)],
            Consensus::None,
            false,
            1.0,
        )
        .unwrap();
        let away_v = values_of(away.clone());
        let back_delta: Vec<f32> = delta.clone();
        let back = generalized_task_arithmetic(
            away,
            vec![tv(&back_delta, 1.0)],
            Consensus::None,
            false,
            1.0,
        )
        .unwrap();
        assert_close(&values_of(back), &base, 1e-6);
        assert_close(&away_v, &[-0.5, -2.0, 7.0], 1e-6);
    }
}
