//! Arcee Fusion (mergekit 0.1.5's `arcee_fusion.py`) without sorting: the importance of an
//! entry is `|other - base|` times its row's KL divergence between the softmaxes of the other
//! and the base rows; entries whose importance reaches `median + 1.5 IQR` take the other
//! model's value. Passes: the rows' KL divergences (row-parallel, f64, a value per row); the
//! three quartiles, exact, by a radix selection over the importances' bits (two histogram
//! passes, the importances recomputed from the KL values); the merge.

use super::{
    CHUNK, HostOut, HostTensor, Scratch, bin_of_rank, check_lengths, chunk_len, for_each_chunk,
    min_len,
};
use crate::{KernelError, Result};
use rayon::prelude::*;

/// The index mergekit reads quantile `q` of `n` sorted values at: `floor(q (n - 1))`, in f32.
pub fn quantile_index(q: f32, n: usize) -> usize {
    (q * n.saturating_sub(1) as f32) as usize
}

/// `softmax(v) + 1e-8` into `out` (f64; the max subtracted first).
fn softmax_into(v: &[f32], out: &mut [f64]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    for (o, a) in out.iter_mut().zip(v) {
        *o = (*a as f64 - max).exp();
    }
    let s: f64 = out.iter().sum();
    for o in out.iter_mut() {
        *o = *o / s + 1e-8;
    }
}

/// `sum p log(p / q)` with `p`, `q` the softmaxes of the rows `x` and `base`, each plus 1e-8,
/// in f64 (`p`, `q` are scratch buffers of the rows' length). Torch's f32 KL on rows that
/// barely differ from the base is off by up to ~1% (a sum of tiny terms); this is not.
pub fn arcee_row_kl(x: &[f32], base: &[f32], p: &mut [f64], q: &mut [f64]) -> f32 {
    let (p, q) = (&mut p[..x.len()], &mut q[..x.len()]);
    softmax_into(x, p);
    softmax_into(base, q);
    p.iter()
        .zip(q.iter())
        .map(|(p, q)| p * (p / q).ln())
        .sum::<f64>() as f32
}

/// The sortable key of `x` in `f32::total_cmp` order.
#[inline]
fn total_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// The value of a [`total_key`].
fn from_total_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// The values at `ranks` (0-based, ascending in `f32::total_cmp` order) of the `n` values that
/// `fill(start, len, scratch)` leaves in `scratch.res` chunk by chunk: a histogram of the high
/// 16 bits of their keys, then of the low 16 bits inside the buckets holding the ranks.
fn select_ranks<F>(n: usize, ranks: &[usize], fill: F) -> Vec<f32>
where
    F: Fn(usize, usize, &mut Scratch) + Sync,
{
    const BINS: usize = 1 << 16;
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    // `bucket(key)` -> which histogram and bin an entry counts in (or none)
    let histograms = |count: usize, bucket: &(dyn Fn(u32) -> Option<(usize, usize)> + Sync)| {
        let empty = || vec![vec![0u64; BINS]; count];
        chunks
            .par_iter()
            .with_min_len(min_len(chunks.len()))
            .fold(
                || (Scratch::new(0), empty()),
                |(mut s, mut h), &ci| {
                    let start = ci * CHUNK;
                    let len = chunk_len(n, start);
                    fill(start, len, &mut s);
                    for v in &s.res[..len] {
                        if let Some((i, b)) = bucket(total_key(*v)) {
                            h[i][b] += 1;
                        }
                    }
                    (s, h)
                },
            )
            .map(|(_, h)| h)
            .reduce(empty, |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    for (p, q) in x.iter_mut().zip(y) {
                        *p += q;
                    }
                }
                a
            })
    };
    let high = histograms(1, &|k| Some((0, (k >> 16) as usize))).remove(0);
    let found: Vec<(usize, usize)> = ranks.iter().map(|&r| bin_of_rank(&high, r)).collect();
    let mut buckets: Vec<usize> = found.iter().map(|(b, _)| *b).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let low = histograms(buckets.len(), &|k| {
        let hi = (k >> 16) as usize;
        buckets
            .iter()
            .position(|&b| b == hi)
            .map(|i| (i, (k & 0xffff) as usize))
    });
    ranks
        .iter()
        .zip(&found)
        .map(|(&r, &(bucket, below))| {
            let i = buckets.binary_search(&bucket).expect("a chosen bucket");
            let (lo, _) = bin_of_rank(&low[i], r - below);
            from_total_key(((bucket as u32) << 16) | lo as u32)
        })
        .collect()
}

/// The reference Arcee Fusion on host values: every importance computed and sorted, the
/// quartiles read at [`quantile_index`] (what `evomerge-merge`'s device path runs, and what the
/// fused kernel is tested against). `cols` must tile the values.
pub fn arcee_fusion_sorted(base: &[f32], other: &[f32], cols: usize) -> Vec<f32> {
    let (mut p, mut q) = (vec![0f64; cols], vec![0f64; cols]);
    let importance: Vec<f32> = other
        .chunks(cols)
        .zip(base.chunks(cols))
        .flat_map(|(x, b)| {
            let kl = arcee_row_kl(x, b, &mut p, &mut q);
            x.iter().zip(b).map(move |(a, b)| (a - b).abs() * kl)
        })
        .collect();
    let mut sorted = importance.clone();
    sorted.sort_unstable_by(f32::total_cmp);
    let q = |p: f32| sorted[quantile_index(p, sorted.len())];
    let threshold = q(0.5) + 1.5 * (q(0.75) - q(0.25));
    base.iter()
        .zip(other)
        .zip(&importance)
        .map(|((b, a), imp)| b + (a - b) * if *imp >= threshold { 1.0 } else { 0.0 })
        .collect()
}

/// Arcee Fusion of `other` into `base` over rows of `cols` entries (see the module docs): the
/// quartiles are exact over every entry (mergekit sorts a random sample of 1e6 entries of
/// larger tensors, so its threshold varies from run to run there).
pub fn arcee_fusion(base: HostTensor, other: HostTensor, cols: usize, out: HostOut) -> Result<()> {
    let n = base.len();
    check_lengths("arcee_fusion", n, &[base, other], &out)?;
    if n == 0 {
        return Ok(());
    }
    if cols == 0 || !n.is_multiple_of(cols) {
        return Err(KernelError::BadParameter {
            method: "arcee_fusion",
            what: format!("rows of {cols} do not tile a tensor of {n} values"),
        });
    }
    let kl: Vec<f32> = (0..n / cols)
        .into_par_iter()
        .map_init(
            || {
                (
                    vec![0f32; cols],
                    vec![0f32; cols],
                    vec![0f64; cols],
                    vec![0f64; cols],
                )
            },
            |(x, b, p, q), r| {
                other.decode(r * cols, x);
                base.decode(r * cols, b);
                arcee_row_kl(x, b, p, q)
            },
        )
        .collect();
    // the importances of a chunk into `s.res` (and the inputs into `s.x`, `s.base`)
    let importances = |start: usize, len: usize, s: &mut Scratch| {
        let Scratch {
            base: b, x, res, ..
        } = s;
        other.decode(start, &mut x[..len]);
        base.decode(start, &mut b[..len]);
        for (i, ((r, x), b)) in res[..len]
            .iter_mut()
            .zip(&x[..len])
            .zip(&b[..len])
            .enumerate()
        {
            *r = (x - b).abs() * kl[(start + i) / cols];
        }
    };
    let ranks: Vec<usize> = [0.25, 0.5, 0.75]
        .iter()
        .map(|&q| quantile_index(q, n))
        .collect();
    let q = select_ranks(n, &ranks, importances);
    let threshold = q[1] + 1.5 * (q[2] - q[0]);
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        importances(start, len, s);
        let Scratch {
            base: b, x, res, ..
        } = s;
        for ((r, x), b) in res[..len].iter_mut().zip(&x[..len]).zip(&b[..len]) {
            *r = b + (x - b) * if *r >= threshold { 1.0 } else { 0.0 };
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_keys_sort_as_total_cmp_and_round_trip() {
        let mut v = vec![
            -1.5f32,
            -0.0,
            0.0,
            1e-30,
            -1e-30,
            3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            2.5e-8,
        ];
        for x in &v {
            assert_eq!(from_total_key(total_key(*x)).to_bits(), x.to_bits());
        }
        let mut by_key = v.clone();
        by_key.sort_by_key(|x| total_key(*x));
        v.sort_by(f32::total_cmp);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&by_key), bits(&v));
    }

    /// The radix selection returns what sorting returns, at every rank asked, on values with
    /// many ties and both signs over several chunks.
    #[test]
    fn selected_ranks_are_those_of_a_sort() {
        let n = 3 * CHUNK + 123;
        let values: Vec<f32> = crate::MaskRng::new(5, "select", 0)
            .uniform(n)
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                let v = ((u * 2.0 - 1.0) * 50.0).round() / 7.0;
                if i % 13 == 0 { -0.0 } else { v }
            })
            .collect();
        let mut sorted = values.clone();
        sorted.sort_by(f32::total_cmp);
        let ranks = [0, 1, n / 4, n / 2, n / 2 + 1, 3 * n / 4, n - 1];
        let got = select_ranks(n, &ranks, |start, len, s| {
            s.res[..len].copy_from_slice(&values[start..start + len]);
        });
        for (r, g) in ranks.iter().zip(got) {
            assert_eq!(g.to_bits(), sorted[*r].to_bits(), "rank {r}");
        }
    }

    /// The fused kernel keeps exactly the entries a full sort of the importances keeps
    /// ([`arcee_fusion_sorted`], the reference path of `evomerge-merge`), over rows spread across several chunks, with many
    /// tied importances (inputs on a 1/16 grid), a row equal to the base (KL 0) and in bf16.
    #[test]
    fn arcee_fusion_matches_a_sort_of_the_importances() {
        let (rows, cols) = (400, 700);
        let n = rows * cols;
        let draw = |seed: u64| -> Vec<f32> {
            crate::MaskRng::new(seed, "arcee", 0)
                .uniform(n)
                .into_iter()
                .map(|u| ((u * 2.0 - 1.0) * 16.0).round() / 16.0)
                .collect()
        };
        let base = draw(1);
        // every tenth row moves four times as far: a heavy tail of importances
        let mut other: Vec<f32> = draw(2)
            .iter()
            .zip(&base)
            .enumerate()
            .map(|(i, (d, b))| b + d * if (i / cols) % 10 == 3 { 1.0 } else { 0.25 })
            .collect();
        other[..cols].copy_from_slice(&base[..cols]);
        let want = arcee_fusion_sorted(&base, &other, cols);
        let mut got = vec![0f32; n];
        arcee_fusion(
            HostTensor::F32(&base),
            HostTensor::F32(&other),
            cols,
            HostOut::F32(&mut got),
        )
        .unwrap();
        assert_eq!(got, want);
        let kept = got.iter().zip(&base).filter(|(g, b)| g != b).count();
        assert!(kept > 0 && kept < n / 2, "{kept} of {n} entries taken");
        // bf16 storage: decoded, merged and encoded chunk by chunk
        let bf = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
                .collect()
        };
        let (bb, ob) = (bf(&base), bf(&other));
        let mut out = vec![0u8; 2 * n];
        arcee_fusion(
            HostTensor::Stored(&bb, super::super::HostDtype::BF16),
            HostTensor::Stored(&ob, super::super::HostDtype::BF16),
            cols,
            HostOut::Stored(&mut out, super::super::HostDtype::BF16),
        )
        .unwrap();
        assert_eq!(out, bf(&want));
        let err = arcee_fusion(
            HostTensor::F32(&base),
            HostTensor::F32(&other),
            cols + 1,
            HostOut::F32(&mut got),
        )
        .unwrap_err();
        assert!(err.to_string().contains("do not tile"), "{err}");
    }
}
