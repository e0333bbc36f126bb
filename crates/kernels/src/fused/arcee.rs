//! Arcee Fusion (mergekit 0.1.5's `arcee_fusion.py`) without sorting: the importance of an
//! entry is `|other - base|` times its row's KL divergence between the softmaxes of the other
//! and the base rows; entries whose importance reaches `median + 1.5 IQR` take the other
//! model's value. Passes: the rows' KL divergences (row-parallel, f64, a value per row); then
//! on tensors of 2^20 entries and more a 1/32 sample brackets the three quartiles and so the
//! threshold, and the merge pass counts every importance against the brackets while it decides
//! each entry away from the threshold, the few near it set once the counts give the exact
//! quartiles (`merge_deciding`); else a counting pass first (`sampled::keys_by_counting`), or
//! on small tensors (or when a bracket misses) a radix selection over the importances' bits
//! (two histogram passes) before the merge. Importances are recomputed from the KL values in
//! each pass.

use super::sampled::{Part, brackets_at_ranks, count_brackets, keys_in_brackets, total_key};
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

/// The KL of [`arcee_row_kl`] term by term with libm's `exp` and `ln`: the exact form, for
/// rows the fast path cannot take and for its tests.
pub fn arcee_row_kl_exact(x: &[f32], base: &[f32], p: &mut [f64], q: &mut [f64]) -> f32 {
    let (p, q) = (&mut p[..x.len()], &mut q[..x.len()]);
    softmax_into(x, p);
    softmax_into(base, q);
    p.iter()
        .zip(q.iter())
        .map(|(p, q)| p * (p / q).ln())
        .sum::<f64>() as f32
}

/// `e^x` for `x <= 0` in f64, without branches or calls so that loops over it vectorize:
/// `x = k ln 2 + r` (Cody-Waite, `|r| <= ln 2 / 2`), `e^r` by its Taylor polynomial of degree
/// 13 (truncation below 1e-17) in fused multiply-adds, times `2^k` built in the exponent bits.
/// A fused multiply-add rounds once, so the bits are the same on every CPU: one instruction
/// where the build has FMA (the AVX2 path), libm's exact software `fma` elsewhere (slowly; x86
/// CPUs without AVX2 and FMA predate 2013). Arguments below -708 are taken as -708 (`e^-708`
/// ~ 3e-308, which the softmax's `+ 1e-8` makes irrelevant).
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    // fdlibm's split of ln 2: the high part has 32 significant bits, so k ln2_hi is exact
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer
    let x = if x < -708.0 { -708.0 } else { x };
    let t = x * std::f64::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut e: f64 = 1.0 / 6_227_020_800.0; // 1/13!
    for c in [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        e = e.mul_add(r, c);
    }
    let k = (t.to_bits() as i64).wrapping_sub(ROUND.to_bits() as i64);
    e * f64::from_bits(((k + 1023) as u64) << 52)
}

/// The largest `|x - b|` (as f32 computes it) of rows whose KL takes [`exp_near_zero`]: 1/16
/// less the f32 subtraction's rounding, so the exact difference is at most 1/16.
const NEAR: f32 = 0.0625 * (1.0 - 1e-6);

/// `e^d` for `|d| <= 1/16` in f64 by its Taylor polynomial of degree 10 (truncation below 3e-21)
/// in fused multiply-adds (the same on every CPU, see [`exp_nonpositive`]).
#[inline(always)]
fn exp_near_zero(d: f64) -> f64 {
    let mut e: f64 = 1.0 / 3_628_800.0; // 1/10!
    for c in [
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        e = e.mul_add(d, c);
    }
    e
}

/// `ln(1 + t)` for `0 <= t <= 1e-3` by four terms of its series (truncation below 2e-16 t).
#[inline(always)]
fn ln_1p_small(t: f64) -> f64 {
    t * (1.0 - t * (0.5 - t * (1.0 / 3.0 - t * 0.25)))
}

/// Sum of `v` in eight interleaved partial sums (entry `i` in sum `i % 8`; a fixed order that
/// vectorizes).
#[inline(always)]
fn sum8(v: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    fold8(acc) + tail
}

/// Eight partial sums added pairwise.
#[inline(always)]
fn fold8(a: [f64; 8]) -> f64 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// The row buffers of the fast KL: the unnormalised softmax entries of both rows and the
/// reciprocals of their products.
pub struct KlScratch {
    p: Vec<f64>,
    q: Vec<f64>,
    r: Vec<f64>,
}

impl KlScratch {
    /// Buffers for rows of up to `cols` entries.
    pub fn new(cols: usize) -> KlScratch {
        KlScratch {
            p: vec![0.0; cols],
            q: vec![0.0; cols],
            r: vec![0.0; cols],
        }
    }
}

/// The per-row constants of the fast KL's terms.
#[derive(Clone, Copy)]
struct KlConsts {
    /// `(max b - max x) - ln s + ln t`.
    c: f64,
    inv_s: f64,
    eps_s: f64,
    eps_t: f64,
}

/// Entry `i`'s term of the fast KL, and whether the series does not hold there (`1e-8 s / e >
/// 1e-3`): `e`, `f` are the unnormalised softmax entries, `r = 1 / (e f)`, `a`, `b` the row
/// entries.
#[inline(always)]
fn kl_term(k: KlConsts, e: f64, f: f64, r: f64, a: f32, b: f32) -> (f64, bool) {
    let (tp, tq) = ((k.eps_s * f) * r, (k.eps_t * e) * r);
    let log_ratio = (a as f64 - b as f64) + k.c + (ln_1p_small(tp) - ln_1p_small(tq));
    ((e * k.inv_s + 1e-8) * log_ratio, (tp > 1e-3) | (tq > 1e-3))
}

/// The terms of the first `len / 8 * 8` entries in eight interleaved sums (entry `i` in sum
/// `i % 8`), and whether any entry's series does not hold.
#[inline(always)]
fn kl_terms8(k: KlConsts, x: &[f32], base: &[f32], s: &KlScratch) -> ([f64; 8], bool) {
    let (mut acc, mut bad) = ([0f64; 8], false);
    let whole = x.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            let j = i + l;
            let (v, b) = kl_term(k, s.p[j], s.q[j], s.r[j], x[j], base[j]);
            *a += v;
            bad |= b;
        }
    }
    (acc, bad)
}

/// [`kl_terms8`] in AVX2 intrinsics (the compiler leaves that loop scalar): the same IEEE
/// operations in the same order, lane `l` of the two accumulators being sums `l` and `4 + l`,
/// so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn kl_terms8_avx2(k: KlConsts, x: &[f32], base: &[f32], s: &KlScratch) -> ([f64; 8], bool) {
    use std::arch::x86_64::*;
    let whole = x.len() / 8 * 8;
    let (p, q, r) = (&s.p[..whole], &s.q[..whole], &s.r[..whole]);
    let (x, base) = (&x[..whole], &base[..whole]);
    let set = _mm256_set1_pd;
    let (c, inv_s, eps_s, eps_t) = (set(k.c), set(k.inv_s), set(k.eps_s), set(k.eps_t));
    let (one, half, third, quarter) = (set(1.0), set(0.5), set(1.0 / 3.0), set(0.25));
    let (tiny, limit) = (set(1e-8), set(1e-3));
    // ln_1p_small, operation for operation
    let ln_1p = |t: __m256d| {
        let r = _mm256_sub_pd(third, _mm256_mul_pd(t, quarter));
        let r = _mm256_sub_pd(half, _mm256_mul_pd(t, r));
        let r = _mm256_sub_pd(one, _mm256_mul_pd(t, r));
        _mm256_mul_pd(t, r)
    };
    let mut acc = [_mm256_setzero_pd(); 2];
    let mut bad = _mm256_setzero_pd();
    for i in (0..whole).step_by(4) {
        // SAFETY: i + 4 <= whole, the length of every slice
        let (e, f, rr, a, b) = unsafe {
            (
                _mm256_loadu_pd(p.as_ptr().add(i)),
                _mm256_loadu_pd(q.as_ptr().add(i)),
                _mm256_loadu_pd(r.as_ptr().add(i)),
                _mm256_cvtps_pd(_mm_loadu_ps(x.as_ptr().add(i))),
                _mm256_cvtps_pd(_mm_loadu_ps(base.as_ptr().add(i))),
            )
        };
        let tp = _mm256_mul_pd(_mm256_mul_pd(eps_s, f), rr);
        let tq = _mm256_mul_pd(_mm256_mul_pd(eps_t, e), rr);
        let log_ratio = _mm256_add_pd(
            _mm256_add_pd(_mm256_sub_pd(a, b), c),
            _mm256_sub_pd(ln_1p(tp), ln_1p(tq)),
        );
        let w = _mm256_add_pd(_mm256_mul_pd(e, inv_s), tiny);
        let h = (i / 4) % 2;
        acc[h] = _mm256_add_pd(acc[h], _mm256_mul_pd(w, log_ratio));
        bad = _mm256_or_pd(
            bad,
            _mm256_or_pd(
                _mm256_cmp_pd::<_CMP_GT_OQ>(tp, limit),
                _mm256_cmp_pd::<_CMP_GT_OQ>(tq, limit),
            ),
        );
    }
    let mut out = [0f64; 8];
    // SAFETY: `out` holds eight f64
    unsafe {
        _mm256_storeu_pd(out.as_mut_ptr(), acc[0]);
        _mm256_storeu_pd(out.as_mut_ptr().add(4), acc[1]);
    }
    (out, _mm256_movemask_pd(bad) != 0)
}

/// [`kl_terms8`] in AVX-512 intrinsics: lane `l` is sum `l`, the same operations, the same
/// bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn kl_terms8_avx512(k: KlConsts, x: &[f32], base: &[f32], s: &KlScratch) -> ([f64; 8], bool) {
    use std::arch::x86_64::*;
    let whole = x.len() / 8 * 8;
    let (p, q, r) = (&s.p[..whole], &s.q[..whole], &s.r[..whole]);
    let (x, base) = (&x[..whole], &base[..whole]);
    let set = _mm512_set1_pd;
    let (c, inv_s, eps_s, eps_t) = (set(k.c), set(k.inv_s), set(k.eps_s), set(k.eps_t));
    let (one, half, third, quarter) = (set(1.0), set(0.5), set(1.0 / 3.0), set(0.25));
    let (tiny, limit) = (set(1e-8), set(1e-3));
    let ln_1p = |t: __m512d| {
        let r = _mm512_sub_pd(third, _mm512_mul_pd(t, quarter));
        let r = _mm512_sub_pd(half, _mm512_mul_pd(t, r));
        let r = _mm512_sub_pd(one, _mm512_mul_pd(t, r));
        _mm512_mul_pd(t, r)
    };
    let mut acc = _mm512_setzero_pd();
    let mut bad: __mmask8 = 0;
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= whole, the length of every slice
        let (e, f, rr, a, b) = unsafe {
            (
                _mm512_loadu_pd(p.as_ptr().add(i)),
                _mm512_loadu_pd(q.as_ptr().add(i)),
                _mm512_loadu_pd(r.as_ptr().add(i)),
                _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(i))),
                _mm512_cvtps_pd(_mm256_loadu_ps(base.as_ptr().add(i))),
            )
        };
        let tp = _mm512_mul_pd(_mm512_mul_pd(eps_s, f), rr);
        let tq = _mm512_mul_pd(_mm512_mul_pd(eps_t, e), rr);
        let log_ratio = _mm512_add_pd(
            _mm512_add_pd(_mm512_sub_pd(a, b), c),
            _mm512_sub_pd(ln_1p(tp), ln_1p(tq)),
        );
        let w = _mm512_add_pd(_mm512_mul_pd(e, inv_s), tiny);
        acc = _mm512_add_pd(acc, _mm512_mul_pd(w, log_ratio));
        bad |= _mm512_cmp_pd_mask::<_CMP_GT_OQ>(tp, limit)
            | _mm512_cmp_pd_mask::<_CMP_GT_OQ>(tq, limit);
    }
    let mut out = [0f64; 8];
    // SAFETY: `out` holds eight f64
    unsafe { _mm512_storeu_pd(out.as_mut_ptr(), acc) };
    (out, bad != 0)
}

/// The fast KL's body (see [`arcee_row_kl`]); `None` where an entry's softmax is so small
/// that the `+ 1e-8` is more than a 1e-3 relative change (the series of `ln(1 + t)` would
/// not hold there). The first loop takes each entry's two exponentials (the second by a short
/// series from the first where no entry of the row moved by more than 1/16: a fine-tune's rows)
/// and the reciprocal of their product (the division overlaps the exponentials' multiply-adds;
/// one division an entry instead of two); `terms` sums the entries eight at a time
/// ([`kl_terms8`] or a SIMD build of it).
#[inline(always)]
fn row_kl_fast(
    x: &[f32],
    base: &[f32],
    s: &mut KlScratch,
    terms: impl Fn(KlConsts, &[f32], &[f32], &KlScratch) -> ([f64; 8], bool),
) -> Option<f64> {
    let n = x.len();
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mb = base.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let moved = x
        .iter()
        .zip(base)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let (p, q, r) = (&mut s.p[..n], &mut s.q[..n], &mut s.r[..n]);
    let pairs = p.iter_mut().zip(q.iter_mut()).zip(r.iter_mut());
    if moved <= NEAR {
        // e^(a - mx) = e^(b - mb) e^(mb - mx) e^(a - b): one full exponential an entry and a
        // short series (a fine-tune's row moves each entry by little; then the maxima differ
        // by as little)
        let shift = (mb - mx).exp();
        for (((p, q), r), (a, b)) in pairs.zip(x.iter().zip(base)) {
            let f = exp_nonpositive(*b as f64 - mb);
            let e = f * (shift * exp_near_zero(*a as f64 - *b as f64));
            *p = e;
            *q = f;
            *r = 1.0 / (e * f);
        }
    } else {
        for (((p, q), r), (a, b)) in pairs.zip(x.iter().zip(base)) {
            let (e, f) = (
                exp_nonpositive(*a as f64 - mx),
                exp_nonpositive(*b as f64 - mb),
            );
            *p = e;
            *q = f;
            *r = 1.0 / (e * f);
        }
    }
    let (sp, sq) = (sum8(p), sum8(q));
    // ln p_i = (x_i - mx) - ln s + ln(1 + 1e-8 s / e_i), the same for q: only the two small
    // logarithms vary by entry besides x_i - b_i
    let k = KlConsts {
        c: (mb - mx) - sp.ln() + sq.ln(),
        inv_s: 1.0 / sp,
        eps_s: 1e-8 * sp,
        eps_t: 1e-8 * sq,
    };
    let (acc, mut bad) = terms(k, x, base, s);
    let mut kl = fold8(acc);
    for i in n / 8 * 8..n {
        let (v, b) = kl_term(k, s.p[i], s.q[i], s.r[i], x[i], base[i]);
        kl += v;
        bad |= b;
    }
    // (non-finite inputs take the exact path too)
    (!bad && kl.is_finite()).then_some(kl)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_kl_avx2(x: &[f32], base: &[f32], s: &mut KlScratch) -> Option<f64> {
    // the same operations, 4 lanes wide (the exponential's multiply-adds are FMA
    // instructions here); the terms in intrinsics
    // (a safe call: this function's features include AVX2)
    row_kl_fast(x, base, s, |k, x, b, s| kl_terms8_avx2(k, x, b, s))
}

/// [`row_kl_avx2`] with AVX-512 (the exponentials eight lanes wide in 32 registers: no
/// constant reloaded per iteration). The exponential loop is entry by entry and the sums keep
/// their eight fixed partial sums, so the bits are the AVX2 build's (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
fn row_kl_avx512(x: &[f32], base: &[f32], s: &mut KlScratch) -> Option<f64> {
    // (a safe call: this function's features include AVX-512F)
    row_kl_fast(x, base, s, |k, x, b, s| kl_terms8_avx512(k, x, b, s))
}

/// Whether the CPU runs [`row_kl_avx512`].
#[cfg(target_arch = "x86_64")]
fn has_avx512_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("fma")
}

/// `sum p log(p / q)` with `p`, `q` the softmaxes of the rows `x` and `base`, each plus 1e-8,
/// in f64 (`s` holds buffers of at least the rows' length). Torch's f32 KL on rows that
/// barely differ from the base is off by up to ~1% (a sum of tiny terms); this is not. Fast
/// path: one vectorized `exp` per entry and row, no logarithm per entry (agrees with
/// [`arcee_row_kl_exact`] to ~1e-12 relative); rows with entries whose softmax is below 1e-5
/// take the exact path.
pub fn arcee_row_kl(x: &[f32], base: &[f32], s: &mut KlScratch) -> f32 {
    #[cfg(target_arch = "x86_64")]
    let fast = if has_avx512_fma() {
        // SAFETY: the CPU has the features the function is compiled for
        unsafe { row_kl_avx512(x, base, s) }
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has the features the function is compiled for
        unsafe { row_kl_avx2(x, base, s) }
    } else {
        row_kl_fast(x, base, s, kl_terms8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let fast = row_kl_fast(x, base, s, kl_terms8);
    match fast {
        Some(kl) => kl as f32,
        None => arcee_row_kl_exact(x, base, &mut s.p, &mut s.q),
    }
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
    let mut kls = KlScratch::new(cols);
    let importance: Vec<f32> = other
        .chunks(cols)
        .zip(base.chunks(cols))
        .flat_map(|(x, b)| {
            let kl = arcee_row_kl(x, b, &mut kls);
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
    arcee_fusion_how(base, other, cols, out).map(|_| ())
}

/// How [`arcee_fusion`] found the quartiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quartiles {
    /// A sample of blocks; the keys counted in the merge pass, which left the entries near the
    /// threshold to the end: how many, and how many of them took the other model's value.
    Fused { deferred: usize, taken: usize },
    /// A sample of blocks, then a counting pass.
    Blocks,
    /// Two histogram passes (small tensors, or a sample's bracket missed).
    Histograms,
}

/// Row buffers for one row's KL divergence.
struct RowWork {
    x: Vec<f32>,
    b: Vec<f32>,
    kl: KlScratch,
}

impl RowWork {
    fn new(cols: usize) -> RowWork {
        RowWork {
            x: vec![0.0; cols],
            b: vec![0.0; cols],
            kl: KlScratch::new(cols),
        }
    }

    /// The KL of the row at `start` (its entries left in `x`, `b`).
    fn kl(&mut self, base: HostTensor, other: HostTensor, start: usize) -> f32 {
        other.decode(start, &mut self.x);
        base.decode(start, &mut self.b);
        arcee_row_kl(&self.x, &self.b, &mut self.kl)
    }
}

/// [`arcee_fusion`], saying how it found the quartiles.
fn arcee_fusion_how(
    base: HostTensor,
    other: HostTensor,
    cols: usize,
    out: HostOut,
) -> Result<Quartiles> {
    let n = base.len();
    check_lengths("arcee_fusion", n, &[base, other], &out)?;
    if n == 0 {
        return Ok(Quartiles::Histograms);
    }
    if cols == 0 || !n.is_multiple_of(cols) {
        return Err(KernelError::BadParameter {
            method: "arcee_fusion",
            what: format!("rows of {cols} do not tile a tensor of {n} values"),
        });
    }
    let rows = n / cols;
    let kl: Vec<f32> = (0..rows)
        .into_par_iter()
        .map_init(|| RowWork::new(cols), |w, r| w.kl(base, other, r * cols))
        .collect();
    // the importances of a chunk into `s.res` (and the inputs into `s.x`, `s.base`)
    let importances = |start: usize, len: usize, s: &mut Scratch| {
        let Scratch {
            base: b, x, res, ..
        } = s;
        other.decode(start, &mut x[..len]);
        base.decode(start, &mut b[..len]);
        // row by row (the rows' KL values are constants of their stretch of the chunk)
        let mut i = 0;
        while i < len {
            let row = (start + i) / cols;
            let end = ((row + 1) * cols - start).min(len);
            let k = kl[row];
            for ((r, x), b) in res[i..end].iter_mut().zip(&x[i..end]).zip(&b[i..end]) {
                *r = (x - b).abs() * k;
            }
            i = end;
        }
    };
    let keys = |s: &mut Scratch, start: usize, keys: &mut [u32]| {
        importances(start, keys.len(), s);
        for (k, v) in keys.iter_mut().zip(&s.res) {
            *k = total_key(*v);
        }
    };
    let ranks: Vec<usize> = [0.25, 0.5, 0.75]
        .iter()
        .map(|&q| quantile_index(q, n))
        .collect();
    let init = || Scratch::new(0);
    let sampled = brackets_at_ranks(n, &ranks, &init, &keys);
    let mut out = out;
    // a sample brackets the quartiles, and so the threshold: the merge pass counts the keys
    // against the brackets and decides every entry outside the threshold's bracket; the few
    // inside it are set once the counts give the quartiles
    if let Some((sample, brackets)) = &sampled
        && let Some(bounds) = threshold_bounds(brackets, sample)
    {
        let (parts, deferred) = merge_deciding(n, &importances, brackets, bounds, out.reborrow())?;
        if let Some(q) = keys_in_brackets(&parts, brackets, &ranks) {
            let t = threshold_of(three(q.into_iter().map(from_total_key).collect()));
            let (mut count, mut taken) = (0, 0);
            for d in deferred.iter().flatten() {
                count += 1;
                if d.importance >= t {
                    if !d.taken.is_finite() {
                        return Err(super::non_finite(d.taken));
                    }
                    out.set(d.at, d.taken);
                    taken += 1;
                }
            }
            return Ok(Quartiles::Fused {
                deferred: count,
                taken,
            });
        }
        // a bracket missed its rank (a sample unlike the tensor): exact quartiles, and every
        // entry merged again
        let t = threshold_of(three(select_ranks(n, &ranks, importances)));
        merge(n, &importances, t, out)?;
        return Ok(Quartiles::Histograms);
    }
    // small tensors (or a threshold bracket holding many entries): the quartiles first
    let counted = sampled.and_then(|(_, brackets)| {
        super::sampled::keys_by_counting(n, &brackets, &ranks, &init, &keys)
    });
    let (q, how) = match counted {
        Some(keys) => (
            keys.into_iter().map(from_total_key).collect(),
            Quartiles::Blocks,
        ),
        None => (select_ranks(n, &ranks, importances), Quartiles::Histograms),
    };
    merge(n, &importances, threshold_of(three(q)), out)?;
    Ok(how)
}

/// The three quartiles of a vector of them.
fn three(q: Vec<f32>) -> [f32; 3] {
    q.try_into().expect("three quartiles")
}

/// mergekit's threshold `median + 1.5 IQR` from the quartiles `[q1, median, q3]`.
fn threshold_of([q1, median, q3]: [f32; 3]) -> f32 {
    median + 1.5 * (q3 - q1)
}

/// The interval `lo..hi` the threshold lies in when each quartile lies in its bracket (f32
/// arithmetic is monotone, so the threshold's formula on the brackets' ends bounds it);
/// `None` when an end is not finite or when more than 1/16 of the sample lies in the interval
/// (entries there are set after the pass, one by one).
fn threshold_bounds(brackets: &[(u32, u32)], sample: &[u32]) -> Option<(f32, f32)> {
    let [(a0, b0), (a1, b1), (a2, b2)] = brackets else {
        return None;
    };
    let ends = [a0, b0, a1, b1, a2, b2].map(|k| from_total_key(*k));
    if ends.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let [a0, b0, a1, b1, a2, b2] = ends;
    let (lo, hi) = (threshold_of([b0, a1, a2]), threshold_of([a0, b1, b2]));
    let undecided = sample
        .iter()
        .filter(|k| undecided(from_total_key(**k), (lo, hi)))
        .count();
    (lo.is_finite() && hi.is_finite() && undecided * 16 <= sample.len()).then_some((lo, hi))
}

/// Whether importance `v` is left to the threshold in `lo..hi` (neither surely below nor surely
/// at or above it; a NaN too).
#[inline(always)]
fn undecided(v: f32, (lo, hi): (f32, f32)) -> bool {
    !(v < lo || v >= hi)
}

/// An entry the merge pass left to the threshold: where, its importance, and its value when
/// taken from the other model (the pass wrote the base's).
struct Deferred {
    at: usize,
    importance: f32,
    taken: f32,
}

/// `b + (x - b) * keep` of each entry of `x`, `b`, the importances `imp` (kept: `imp >=
/// threshold`) into `imp`'s place.
#[inline(always)]
fn merge_entries(x: &[f32], b: &[f32], imp: &mut [f32], threshold: f32) {
    for ((r, x), b) in imp.iter_mut().zip(x).zip(b) {
        *r = b + (x - b) * if *r >= threshold { 1.0 } else { 0.0 };
    }
}

/// The merge pass with the threshold known.
fn merge(
    n: usize,
    importances: &(impl Fn(usize, usize, &mut Scratch) + Sync),
    threshold: f32,
    out: HostOut,
) -> Result<()> {
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        importances(start, len, s);
        merge_entries(&s.x[..len], &s.base[..len], &mut s.res[..len], threshold);
    })
}

/// The merge pass with the threshold known to lie in `lo..hi`: entries below `lo` keep the
/// base, those at or above `hi` take the other model, the rest are written as the base's and
/// returned; and every chunk's keys counted against the quartiles' brackets.
#[allow(clippy::type_complexity)]
fn merge_deciding(
    n: usize,
    importances: &(impl Fn(usize, usize, &mut Scratch) + Sync),
    brackets: &[(u32, u32)],
    (lo, hi): (f32, f32),
    out: HostOut,
) -> Result<(Vec<Vec<Part>>, Vec<Vec<Deferred>>)> {
    let found = std::sync::Mutex::new((Vec::new(), Vec::new()));
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        importances(start, len, s);
        let Scratch {
            base: b, x, res, ..
        } = s;
        let (x, b, imp) = (&x[..len], &b[..len], &mut res[..len]);
        let mut parts: Vec<Part> = brackets.iter().map(|_| Part::empty()).collect();
        count_brackets(imp, brackets, &mut parts);
        let count = imp
            .iter()
            .fold(0u32, |c, v| c + undecided(*v, (lo, hi)) as u32);
        let mut deferred = Vec::with_capacity(count as usize);
        if count > 0 {
            for (i, ((v, x), b)) in imp.iter().zip(x).zip(b).enumerate() {
                if undecided(*v, (lo, hi)) {
                    deferred.push(Deferred {
                        at: start + i,
                        importance: *v,
                        taken: b + (x - b) * 1.0,
                    });
                }
            }
        }
        merge_entries(x, b, imp, hi);
        let mut found = found.lock().expect("no panic while holding the lock");
        found.0.push(parts);
        found.1.push(deferred);
    })?;
    Ok(found.into_inner().expect("no panic while holding the lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpositive_is_libm_exp_to_a_few_ulps() {
        let mut x = 0.0f64;
        while x > -720.0 {
            let (got, want) = (exp_nonpositive(x), x.max(-708.0).exp());
            assert!(
                (got - want).abs() <= 4.0 * f64::EPSILON * want,
                "exp({x}) = {want}, got {got}"
            );
            x -= 0.013_7;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-1e-300), 1.0);
    }

    #[test]
    fn exp_near_zero_is_libm_exp_to_a_few_ulps() {
        let mut d = -0.0625f64;
        while d <= 0.0625 {
            let (got, want) = (exp_near_zero(d), d.exp());
            assert!(
                (got - want).abs() <= 2.0 * f64::EPSILON * want,
                "exp({d}) = {want}, got {got}"
            );
            d += 0.000_731;
        }
        assert_eq!(exp_near_zero(0.0), 1.0);
    }

    /// A base row of `n` entries uniform in `[-scale, scale]` and the row that moves each by
    /// up to `delta`.
    fn row_pair(
        rng: &mut rand_chacha::ChaCha8Rng,
        n: usize,
        scale: f32,
        delta: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        use rand::Rng;
        let base: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..=scale)).collect();
        let x = base
            .iter()
            .map(|b| b + rng.random_range(-delta..=delta))
            .collect();
        (base, x)
    }

    #[test]
    fn the_fast_row_kl_is_the_exact_one() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (n, scale, delta) in [
            (1, 0.05f32, 0.005f32),
            (3, 0.05, 0.005),
            (7, 1.0, 0.5),
            (2048, 0.05, 0.005),
            (2048, 0.05, 1e-6),
            (5632, 0.3, 0.01),
            (3000, 0.3, 0.0624), // the series of e^(a - b) at its limit
            (3000, 0.3, 0.0626), // just past it: two exponentials an entry
            (4096, 0.0, 0.0),
            (1000, 3.0, 0.1),  // entries with softmax below 1e-5: the exact path
            (1000, 30.0, 1.0), // most entries far below the max
        ] {
            let (base, x) = row_pair(&mut rng, n, scale, delta);
            let (mut p, mut q) = (vec![0f64; n], vec![0f64; n]);
            let exact = arcee_row_kl_exact(&x, &base, &mut p, &mut q);
            let fast = arcee_row_kl(&x, &base, &mut KlScratch::new(n));
            assert!(
                (fast - exact).abs() <= 1e-6 * exact.abs() + 1e-12,
                "n {n}, scale {scale}, delta {delta}: {fast} vs {exact}"
            );
        }
    }

    /// The AVX2 and AVX-512 builds of the KL give the scalar loop's bits (and the same verdict on
    /// rows the series does not hold for).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_simd_kl_builds_are_the_scalar_one_bit_for_bit() {
        use rand::SeedableRng;
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (n, scale, delta) in [
            (4, 0.05f32, 0.005f32),
            (13, 0.05, 0.005),
            (1023, 0.05, 0.005),
            (2048, 0.3, 1e-6),
            (1000, 3.0, 0.1),
            (64, 30.0, 1.0),
        ] {
            let (base, x) = row_pair(&mut rng, n, scale, delta);
            let mut s = KlScratch::new(n);
            let scalar = row_kl_fast(&x, &base, &mut s, kl_terms8);
            // SAFETY: the CPU has AVX2 (checked above)
            let simd =
                unsafe { row_kl_fast(&x, &base, &mut s, |k, x, b, s| kl_terms8_avx2(k, x, b, s)) };
            assert_eq!(
                scalar.map(f64::to_bits),
                simd.map(f64::to_bits),
                "n {n}, scale {scale}, delta {delta}"
            );
            if std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA
                let avx2 = unsafe { row_kl_avx2(&x, &base, &mut s) };
                assert_eq!(avx2.map(f64::to_bits), scalar.map(f64::to_bits));
                if has_avx512_fma() {
                    // SAFETY: the CPU has the features (checked)
                    let wide = unsafe { row_kl_avx512(&x, &base, &mut s) };
                    assert_eq!(wide.map(f64::to_bits), avx2.map(f64::to_bits), "n {n}");
                }
            }
        }
    }

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
        let (base, other) = grid_pair(rows, cols);
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

    /// Inputs on a 1/16 grid (many tied importances), a heavy tail of rows that move four
    /// times as far, the first row equal to the base (KL 0).
    fn grid_pair(rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
        let n = rows * cols;
        let draw = |seed: u64| -> Vec<f32> {
            crate::MaskRng::new(seed, "arcee", 0)
                .uniform(n)
                .into_iter()
                .map(|u| ((u * 2.0 - 1.0) * 16.0).round() / 16.0)
                .collect()
        };
        let base = draw(1);
        let mut other: Vec<f32> = draw(2)
            .iter()
            .zip(&base)
            .enumerate()
            .map(|(i, (d, b))| b + d * if (i / cols) % 10 == 3 { 1.0 } else { 0.25 })
            .collect();
        other[..cols].copy_from_slice(&base[..cols]);
        (base, other)
    }

    /// A base uniform in [-0.05, 0.05] and a fine-tune that moves each entry by up to 0.002
    /// times a per-row factor in [0.5, 2].
    fn continuous_pair(rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
        let n = rows * cols;
        let u = |seed: u64| crate::MaskRng::new(seed, "arcee-c", 0).uniform(n);
        let base: Vec<f32> = u(1).iter().map(|u| (u - 0.5) * 0.1).collect();
        let other = u(2)
            .iter()
            .zip(&base)
            .enumerate()
            .map(|(i, (u, b))| {
                let row = 0.5 + 1.5 * ((i / cols) * 7919 % 101) as f32 / 100.0;
                b + (u - 0.5) * 0.004 * row
            })
            .collect();
        (base, other)
    }

    /// Tensors of a million entries and more take the merge pass that counts and decides at
    /// once (entries near the threshold set at the end): the entries a full sort keeps, in
    /// f32 and bf16; and when the sample is unlike the tensor (the sampled blocks alone moved
    /// far), the bracket misses and the exact quartiles give the same result.
    #[test]
    fn the_counting_merge_pass_keeps_what_a_sort_keeps() {
        let (rows, cols) = (1100, 1000);
        let n = rows * cols;
        let (base, other) = grid_pair(rows, cols);
        let run = |base: &[f32], other: &[f32]| {
            let mut got = vec![0f32; n];
            let how = arcee_fusion_how(
                HostTensor::F32(base),
                HostTensor::F32(other),
                cols,
                HostOut::F32(&mut got),
            )
            .unwrap();
            (got, how)
        };
        let want = arcee_fusion_sorted(&base, &other, cols);
        let (got, how) = run(&base, &other);
        assert!(matches!(how, Quartiles::Fused { .. }));
        assert_eq!(got, want);
        // continuous values: entries inside the threshold's bracket, some of them taken
        let (cbase, cother) = continuous_pair(rows, cols);
        let (cgot, chow) = run(&cbase, &cother);
        assert_eq!(cgot, arcee_fusion_sorted(&cbase, &cother, cols));
        let Quartiles::Fused { deferred, taken } = chow else {
            panic!("{chow:?}")
        };
        assert!(
            taken > 0 && taken < deferred && deferred < n / 16,
            "{chow:?}"
        );
        let kept = got.iter().zip(&base).filter(|(g, b)| g != b).count();
        assert!(kept > 0 && kept < n / 4, "{kept} of {n} entries taken");
        let bf = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
                .collect()
        };
        let mut out = vec![0u8; 2 * n];
        let how = arcee_fusion_how(
            HostTensor::Stored(&bf(&base), super::super::HostDtype::BF16),
            HostTensor::Stored(&bf(&other), super::super::HostDtype::BF16),
            cols,
            HostOut::Stored(&mut out, super::super::HostDtype::BF16),
        )
        .unwrap();
        assert!(matches!(how, Quartiles::Fused { .. }));
        assert_eq!(out, bf(&want));
        // the sampled blocks moved 64 times as far as the rest: the sample's quartiles sit
        // far above the tensor's
        let mut other = other;
        for (i, (o, b)) in other.iter_mut().zip(&base).enumerate() {
            if !super::super::sampled::in_sampled_block(i) {
                *o = b + (*o - b) / 64.0;
            }
        }
        let want = arcee_fusion_sorted(&base, &other, cols);
        let (got, how) = run(&base, &other);
        assert_eq!(how, Quartiles::Histograms);
        assert_eq!(got, want);
    }
}
