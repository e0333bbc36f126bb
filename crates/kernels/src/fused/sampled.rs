//! Magnitude thresholds in one full pass instead of two: a sample of the task vector (1/32 of
//! its entries, in blocks at pseudo-random offsets) brackets each threshold's key, then one
//! pass over the tensor counts the keys below each bracket and collects the keys inside it;
//! the threshold is the collected key at the remaining rank. The result is exact, the same
//! [`RankWindow`] as the two-pass histogram selection gives: the sample only decides which keys
//! are collected, and when a bracket misses its rank (a sample unlike the tensor) the caller
//! falls back to the two-pass selection. SCE's k-th largest variance is found the same way
//! from variances computed chunk by chunk and never stored ([`kth_streamed`]), or over a
//! stored f64 array ([`kth_sampled`]) when that misses.

use super::{CHUNK, HostTaskVector, HostTensor, RankWindow, chunk_len, deltas, key, map_chunks};
use rayon::prelude::*;

/// Entries per sampled block.
const BLOCK: usize = 64;
/// One block is sampled in every `STRIDE` entries (1/32 of the tensor).
const STRIDE: usize = 2048;
/// Tensors below this many entries take the two-pass selection (the sample would be small
/// and the passes are cheap).
const MIN_SAMPLED: usize = 1 << 20;

/// The first entry of sampled block `k`: a fixed pseudo-random offset inside stride `k`, so
/// the sample does not sit on the same columns of every row.
fn block_start(k: usize) -> usize {
    let h = (k as u64 ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    k * STRIDE + ((h >> 32) as usize) % (STRIDE - BLOCK + 1)
}

/// Whether entry `i` of a tensor lies in a sampled block (of a tensor of at least `i + STRIDE`
/// entries).
#[cfg(test)]
pub(super) fn in_sampled_block(i: usize) -> bool {
    let start = block_start(i / STRIDE);
    (start..start + BLOCK).contains(&i)
}

/// The keys of a sample of each listed input's delta (unordered).
fn sample_keys(
    n: usize,
    base: &HostTensor,
    tvs: &[HostTaskVector],
    which: &[usize],
) -> Vec<Vec<u32>> {
    let blocks = n / STRIDE;
    const GROUP: usize = 256;
    let parts: Vec<Vec<Vec<u32>>> = (0..blocks.div_ceil(GROUP))
        .into_par_iter()
        .map(|g| {
            let (mut b, mut x) = ([0f32; BLOCK], [0f32; BLOCK]);
            let mut keys = vec![Vec::with_capacity(GROUP * BLOCK); which.len()];
            for k in g * GROUP..((g + 1) * GROUP).min(blocks) {
                let at = block_start(k);
                base.decode(at, &mut b);
                for (out, &j) in keys.iter_mut().zip(which) {
                    tvs[j].input.decode(at, &mut x);
                    out.extend(x.iter().zip(&b).map(|(x, b)| key(x - b)));
                }
            }
            keys
        })
        .collect();
    (0..which.len())
        .map(|w| parts.iter().flat_map(|p| p[w].iter().copied()).collect())
        .collect()
}

/// The sampled blocks' values (`BLOCK` each, block by block) as `fill(state, start, out)`
/// computes them, each mapped by `key`; blocks taken 256 at a time in parallel, each worker
/// with its own `init()` state.
fn sample_blocks<S, V, K>(
    n: usize,
    init: &(impl Fn() -> S + Sync + Send),
    fill: &(impl Fn(&mut S, usize, &mut [V]) + Sync),
    key: impl Fn(V) -> K + Sync + Send,
) -> Vec<K>
where
    V: Copy + Default + Send,
    K: Send,
{
    let blocks = n / STRIDE;
    const GROUP: usize = 256;
    (0..blocks.div_ceil(GROUP))
        .into_par_iter()
        .map_init(
            || (init(), [V::default(); BLOCK]),
            |(st, v), g| {
                let mut out = Vec::with_capacity(GROUP * BLOCK);
                for k in g * GROUP..((g + 1) * GROUP).min(blocks) {
                    fill(st, block_start(k), v);
                    out.extend(v.iter().map(|x| key(*x)));
                }
                out
            },
        )
        .flatten()
        .collect()
}

/// `f` of every `CHUNK` of the `n` values that `fill(state, start, out)` computes, chunk by
/// chunk in parallel (each worker with its own `init()` state and buffer), in chunk order.
fn map_chunk_values<S, V, R>(
    n: usize,
    init: &(impl Fn() -> S + Sync + Send),
    fill: &(impl Fn(&mut S, usize, &mut [V]) + Sync),
    f: impl Fn(&[V]) -> R + Sync + Send,
) -> Vec<R>
where
    V: Copy + Default + Send,
    R: Send,
{
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(
            || (init(), vec![V::default(); CHUNK]),
            |(st, v), ci| {
                let start = ci * CHUNK;
                let v = &mut v[..chunk_len(n, start)];
                fill(st, start, v);
                f(v)
            },
        )
        .collect()
}

/// The entry of ascending rank `r` of `values` under the monotone key `key` (f64 variances,
/// SCE): its key, how many entries lie below it, how many equal it, and per `CHUNK` of
/// `values` how many equal entries come before that chunk; from a 1/32 sample and one pass
/// (a bracket of the sample, then the entries inside it). `None` when the tensor is small or
/// the bracket misses (the caller takes the exact radix selection).
pub(super) fn kth_sampled(
    values: &[f64],
    r: usize,
    key: impl Fn(f64) -> u64 + Sync,
) -> Option<(u64, usize, usize, Vec<usize>)> {
    let n = values.len();
    if n < MIN_SAMPLED || r >= n {
        return None;
    }
    let mut sample: Vec<u64> = (0..n / STRIDE)
        .flat_map(|k| values[block_start(k)..block_start(k) + BLOCK].iter())
        .map(|v| key(*v))
        .collect();
    let (a, b) = bracket(&mut sample, n, r, u64::MAX);
    // per chunk: below a, equal a, equal b (b != a), strictly inside
    let parts: Vec<Part<u64>> = values
        .par_chunks(CHUNK)
        .map(|c| {
            let mut p = Part::empty();
            for v in c {
                let k = key(*v);
                p.below += (k < a) as usize;
                p.eq_a += (k == a) as usize;
                p.eq_b += (k == b && b != a) as usize;
                if k > a && k < b {
                    p.inside.push(k);
                }
            }
            p
        })
        .collect();
    threshold(&parts.iter().collect::<Vec<_>>(), a, b, r)
}

/// SCE's selection straight from each chunk's variances, which `vars(state, start, out)`
/// computes for `out.len()` entries from `start` (no n-entry array of them): the count of
/// nonzero variances, `k = k_of(nonzero)`, and the key of ascending rank `n - k` with the counts
/// of [`kth_sampled`] (`None` in the second place when `k == 0`). A 1/32 sample brackets the
/// rank (with the spread of the sample's nonzero count on top) and one pass counts and
/// collects; `None` when the tensor is small or the bracket misses (the caller stores the
/// variances and takes [`kth_sampled`] or the radix selection).
#[allow(clippy::type_complexity)]
pub(super) fn kth_streamed<S>(
    n: usize,
    k_of: impl Fn(usize) -> usize,
    init: impl Fn() -> S + Sync + Send,
    vars: impl Fn(&mut S, usize, &mut [f64]) + Sync,
) -> Option<(usize, Option<(u64, usize, usize, Vec<usize>)>)> {
    use super::f64_key;
    if n < MIN_SAMPLED {
        return None;
    }
    let blocks = n / STRIDE;
    let mut sample = sample_blocks(n, &init, &vars, f64_key);
    let zero = f64_key(0.0);
    let m = sample.len() as f64;
    let zeros = sample.iter().filter(|k| **k == zero).count() as f64;
    // the nonzero count, six standard deviations either side (blocks sampled whole, so the
    // spread of a block count, in entries)
    let p = zeros / m;
    let spread = 6.0 * (p * (1.0 - p) / blocks as f64).sqrt() * n as f64 + BLOCK as f64;
    let nonzero = (1.0 - p) * n as f64;
    let clamp = |x: f64| x.clamp(0.0, n as f64) as usize;
    let (k_lo, k_hi) = (k_of(clamp(nonzero - spread)), k_of(clamp(nonzero + spread)));
    let (r_lo, r_hi) = (n - k_hi.min(n), n - k_lo.min(n));
    let a = bracket(&mut sample, n, r_lo.min(n - 1), u64::MAX).0;
    let b = bracket(&mut sample, n, r_hi.min(n - 1), u64::MAX).1;
    let parts = map_chunk_values(n, &init, &vars, |v| count_f64(v, a, b));
    let zeros: usize = parts.iter().map(|p| p.1).sum();
    let k = k_of(n - zeros);
    if k == 0 {
        return Some((0, None));
    }
    let parts: Vec<&Part<u64>> = parts.iter().map(|p| &p.0).collect();
    threshold(&parts, a, b, n - k.min(n)).map(|t| (k, Some(t)))
}

/// One chunk of variances against the bracket `a..=b` of their keys: the [`Part`] and how many
/// are zero (AVX-512: one sweep, the keys inside compressed out eight at a time; else the
/// count in AVX2 and a collecting sweep where a block holds keys inside).
fn count_f64(v: &[f64], a: u64, b: u64) -> (Part<u64>, usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for
        return unsafe { count_f64_avx512(v, a, b) };
    }
    count_f64_avx2(v, a, b)
}

avx2_dispatch! {
    /// [`count_f64`] without AVX-512.
    fn count_f64_avx2(v: &[f64], a: u64, b: u64) -> (Part<u64>, usize) = count_f64_lanes;
}

/// Appends the first `count` keys of `compressed` (keys compressed to the front of a register:
/// the whole register stored, the compressing store being slow on some CPUs) to `out`.
///
/// # Safety
/// `out` has room for 64 bytes of keys after its length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn append_compressed<K: Copy>(
    out: &mut Vec<K>,
    compressed: std::arch::x86_64::__m512i,
    count: u32,
) {
    let len = out.len();
    debug_assert!(out.capacity() - len >= 64 / std::mem::size_of::<K>());
    // SAFETY: the caller's room after `len`; the first `count` keys are the compressed ones
    unsafe {
        std::arch::x86_64::_mm512_storeu_si512(out.as_mut_ptr().add(len).cast(), compressed);
        out.set_len(len + count as usize);
    }
}

/// [`count_f64`] in AVX-512: counters in registers, the keys inside stored by a compress
/// without a branch (a block often holds one: the branch would mispredict).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn count_f64_avx512(v: &[f64], a: u64, b: u64) -> (Part<u64>, usize) {
    use std::arch::x86_64::*;
    let (zero, one) = (_mm512_setzero_si512(), _mm512_set1_epi64(1));
    let (flip, top) = (_mm512_set1_epi64(-1), _mm512_set1_epi64(i64::MIN));
    let (va, vb) = (_mm512_set1_epi64(a as i64), _mm512_set1_epi64(b as i64));
    let (mut below, mut eq_a, mut eq_b, mut zeros) = (zero, zero, zero, zero);
    let mut keys: Vec<u64> = Vec::new();
    let whole = v.len() / 8 * 8;
    let rest = &v[whole..];
    // room for a stretch's keys before it: no call inside the loop (the counters would be
    // spilled around it)
    for stretch in v[..whole].chunks(1024) {
        keys.reserve(stretch.len());
        for block in stretch.chunks_exact(8) {
            // SAFETY: `block` holds 8 f64 (an unaligned load of 64 bytes)
            let bits = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
            // f64_key: negative values flipped whole, the others' sign bit set
            let negative = _mm512_cmplt_epi64_mask(bits, zero);
            let k = _mm512_mask_xor_epi64(_mm512_or_si512(bits, top), negative, bits, flip);
            let lt = _mm512_cmplt_epu64_mask(k, va);
            below = _mm512_mask_add_epi64(below, lt, below, one);
            let ea = _mm512_cmpeq_epu64_mask(k, va);
            eq_a = _mm512_mask_add_epi64(eq_a, ea, eq_a, one);
            let eb = _mm512_cmpeq_epu64_mask(k, vb);
            eq_b = _mm512_mask_add_epi64(eq_b, eb, eq_b, one);
            // +0.0 and -0.0 (the value compare, as the scalar count)
            let z =
                _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(_mm512_castsi512_pd(bits), _mm512_setzero_pd());
            zeros = _mm512_mask_add_epi64(zeros, z, zeros, one);
            let inside = !(lt | ea) & _mm512_cmplt_epu64_mask(k, vb);
            // SAFETY: room for the stretch's keys (reserved above), so for 8 more here
            unsafe {
                append_compressed(
                    &mut keys,
                    _mm512_maskz_compress_epi64(inside, k),
                    inside.count_ones(),
                )
            };
        }
    }
    let (tail, tail_zeros) = count_f64_lanes(rest, a, b);
    let sum = |x: __m512i| _mm512_reduce_add_epi64(x) as usize;
    keys.extend(tail.inside);
    (
        Part {
            below: sum(below) + tail.below,
            eq_a: sum(eq_a) + tail.eq_a,
            eq_b: if b == a { 0 } else { sum(eq_b) + tail.eq_b },
            inside: keys,
        },
        sum(zeros) + tail_zeros,
    )
}

#[inline(always)]
fn count_f64_lanes(v: &[f64], a: u64, b: u64) -> (Part<u64>, usize) {
    use super::{f64_key, f64_signed_key, signed_of_key};
    let (mut below, mut eq_a, mut eq_b, mut inside, mut zeros) = (0u64, 0u64, 0u64, 0u64, 0u64);
    // counted on the signed keys (the same order; AVX2 compares 64-bit lanes signed only)
    let (sa, sb) = (signed_of_key(a), signed_of_key(b));
    for x in v {
        let k = f64_signed_key(*x);
        below += (k < sa) as u64;
        eq_a += (k == sa) as u64;
        eq_b += (k == sb) as u64;
        inside += ((k > sa) & (k < sb)) as u64;
        zeros += (*x == 0.0) as u64;
    }
    let mut keys = Vec::with_capacity(inside as usize);
    if inside > 0 {
        for block in v.chunks(16) {
            if block.iter().fold(false, |any, x| {
                let k = f64_key(*x);
                any | ((k > a) & (k < b))
            }) {
                for x in block {
                    let k = f64_key(*x);
                    if (k > a) & (k < b) {
                        keys.push(k);
                    }
                }
            }
        }
    }
    (
        Part {
            below: below as usize,
            eq_a: eq_a as usize,
            eq_b: if b == a { 0 } else { eq_b as usize },
            inside: keys,
        },
        zeros as usize,
    )
}

/// The keys at the ascending ranks `ranks` of the `n` keys that `keys(state, start, out)`
/// computes for `out.len()` entries from `start` (any monotone u32 key; Arcee Fusion's
/// quartiles of its importances): a 1/32 sample brackets each rank and one pass counts and
/// collects. `None` when the tensor is small or a bracket misses (the caller takes its exact
/// histogram passes). (Arcee Fusion calls its two halves itself; the tests call the whole.)
#[cfg(test)]
fn keys_at_ranks<S>(
    n: usize,
    ranks: &[usize],
    init: impl Fn() -> S + Sync + Send,
    keys: impl Fn(&mut S, usize, &mut [u32]) + Sync,
) -> Option<Vec<u32>> {
    let (_, brackets) = brackets_at_ranks(n, ranks, &init, &keys)?;
    keys_by_counting(n, &brackets, ranks, &init, &keys)
}

/// The second half of [`keys_at_ranks`] for brackets already taken: one pass counts the keys
/// against them; `None` when a bracket missed.
pub(super) fn keys_by_counting<S>(
    n: usize,
    brackets: &[(u32, u32)],
    ranks: &[usize],
    init: &(impl Fn() -> S + Sync + Send),
    keys: &(impl Fn(&mut S, usize, &mut [u32]) + Sync),
) -> Option<Vec<u32>> {
    let parts = map_chunk_values(n, init, keys, |k| {
        brackets
            .iter()
            .map(|&(a, b)| count_u32(k, a, b))
            .collect::<Vec<_>>()
    });
    keys_in_brackets(&parts, brackets, ranks)
}

/// The first half of [`keys_at_ranks`]: the sample's keys (unordered) and the bracket of each
/// rank, `None` for a small tensor.
#[allow(clippy::type_complexity)]
pub(super) fn brackets_at_ranks<S>(
    n: usize,
    ranks: &[usize],
    init: &(impl Fn() -> S + Sync + Send),
    keys: &(impl Fn(&mut S, usize, &mut [u32]) + Sync),
) -> Option<(Vec<u32>, Vec<(u32, u32)>)> {
    if n < MIN_SAMPLED || ranks.iter().any(|&r| r >= n) {
        return None;
    }
    let mut sample = sample_blocks(n, init, keys, |k| k);
    let brackets = ranks
        .iter()
        .map(|&r| bracket(&mut sample, n, r, u32::MAX))
        .collect();
    Some((sample, brackets))
}

/// The keys at the ranks from every stretch's parts
/// (`parts[stretch][bracket]`, any order of stretches), `None` when a bracket missed.
pub(super) fn keys_in_brackets(
    parts: &[Vec<Part<u32>>],
    brackets: &[(u32, u32)],
    ranks: &[usize],
) -> Option<Vec<u32>> {
    ranks
        .iter()
        .zip(brackets)
        .enumerate()
        .map(|(i, (&r, &(a, b)))| {
            let mine: Vec<&Part<u32>> = parts.iter().map(|p| &p[i]).collect();
            threshold(&mine, a, b, r).map(|t| t.0)
        })
        .collect()
}

/// The order-preserving u32 key of an f32 in `f32::total_cmp` order.
#[inline(always)]
pub(super) fn total_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// Adds the counts of the [`total_key`]s of `values` against each bracket to its part: the
/// brackets in one sweep, the keys inside compressed out sixteen at a time (AVX-512; else a
/// sweep a bracket).
pub(super) fn count_brackets(values: &[f32], brackets: &[(u32, u32)], parts: &mut [Part<u32>]) {
    assert_eq!(brackets.len(), parts.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY (each): the CPU has the feature the function is compiled for
        match brackets.len() {
            3 => return unsafe { count_brackets_avx512::<3>(values, brackets, parts) },
            1 => return unsafe { count_brackets_avx512::<1>(values, brackets, parts) },
            _ => {}
        }
    }
    count_brackets_each(values, brackets, parts)
}

/// [`count_brackets`] a sweep a bracket (CPUs without AVX-512).
fn count_brackets_each(values: &[f32], brackets: &[(u32, u32)], parts: &mut [Part<u32>]) {
    let keys: Vec<u32> = values.iter().map(|v| total_key(*v)).collect();
    for (p, &(a, b)) in parts.iter_mut().zip(brackets) {
        p.add(count_u32(&keys, a, b));
    }
}

/// [`count_brackets`] for `N` brackets in AVX-512 (the counters stay in registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn count_brackets_avx512<const N: usize>(
    values: &[f32],
    brackets: &[(u32, u32)],
    parts: &mut [Part<u32>],
) {
    use std::arch::x86_64::*;
    let (zero, one) = (_mm512_setzero_si512(), _mm512_set1_epi32(1));
    let (flip, top) = (_mm512_set1_epi32(-1), _mm512_set1_epi32(i32::MIN));
    let va: [__m512i; N] = std::array::from_fn(|j| _mm512_set1_epi32(brackets[j].0 as i32));
    let vb: [__m512i; N] = std::array::from_fn(|j| _mm512_set1_epi32(brackets[j].1 as i32));
    let (mut below, mut eq_a, mut eq_b) = ([zero; N], [zero; N], [zero; N]);
    let whole = values.len() / 16 * 16;
    let rest = &values[whole..];
    // room for a stretch's keys before it: no call inside the loop (the counters would be
    // spilled around it)
    for stretch in values[..whole].chunks(1024) {
        for p in parts.iter_mut() {
            p.inside.reserve(stretch.len());
        }
        for block in stretch.chunks_exact(16) {
            // SAFETY: `block` holds 16 f32 (an unaligned load of 64 bytes)
            let v = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
            // total_key: negative values flipped whole, the others' sign bit set
            let negative = _mm512_cmplt_epi32_mask(v, zero);
            let k = _mm512_mask_xor_epi32(_mm512_or_si512(v, top), negative, v, flip);
            for j in 0..N {
                let lt = _mm512_cmplt_epu32_mask(k, va[j]);
                below[j] = _mm512_mask_add_epi32(below[j], lt, below[j], one);
                let ea = _mm512_cmpeq_epu32_mask(k, va[j]);
                eq_a[j] = _mm512_mask_add_epi32(eq_a[j], ea, eq_a[j], one);
                let lt_b = _mm512_cmplt_epu32_mask(k, vb[j]);
                let eb = _mm512_cmpeq_epu32_mask(k, vb[j]);
                eq_b[j] = _mm512_mask_add_epi32(eq_b[j], eb, eq_b[j], one);
                let inside = !(lt | ea) & lt_b;
                // stored whether or not a key is inside (a branch on it mispredicts: a bracket
                // holds a percent or so of the keys, so a block of sixteen often has one)
                // SAFETY: room for the stretch's keys (reserved above), so for 16 more here
                unsafe {
                    append_compressed(
                        &mut parts[j].inside,
                        _mm512_maskz_compress_epi32(inside, k),
                        inside.count_ones(),
                    )
                };
            }
        }
    }
    let rest: Vec<u32> = rest.iter().map(|v| total_key(*v)).collect();
    for (j, (p, &(a, b))) in parts.iter_mut().zip(brackets).enumerate() {
        // (the lanes' sums are at most the slice's length: a chunk's, well inside i32)
        p.below += _mm512_reduce_add_epi32(below[j]) as u32 as usize;
        p.eq_a += _mm512_reduce_add_epi32(eq_a[j]) as u32 as usize;
        if b != a {
            p.eq_b += _mm512_reduce_add_epi32(eq_b[j]) as u32 as usize;
        }
        p.add(count_u32_lanes(&rest, a, b));
    }
}

avx2_dispatch! {
    /// One chunk of u32 keys against the bracket `a..=b`: its [`Part`].
    fn count_u32(k: &[u32], a: u32, b: u32) -> Part<u32> = count_u32_lanes;
}

#[inline(always)]
fn count_u32_lanes(k: &[u32], a: u32, b: u32) -> Part<u32> {
    let (mut below, mut eq_a, mut eq_b, mut inside) = (0u32, 0u32, 0u32, 0u32);
    for &x in k {
        below += (x < a) as u32;
        eq_a += (x == a) as u32;
        eq_b += (x == b) as u32;
        inside += ((x > a) & (x < b)) as u32;
    }
    let mut keys = Vec::with_capacity(inside as usize);
    if inside > 0 {
        for block in k.chunks(16) {
            if block
                .iter()
                .fold(false, |any, x| any | ((*x > a) & (*x < b)))
            {
                keys.extend(block.iter().filter(|x| (**x > a) & (**x < b)));
            }
        }
    }
    Part {
        below: below as usize,
        eq_a: eq_a as usize,
        eq_b: if b == a { 0 } else { eq_b as usize },
        inside: keys,
    }
}

/// Two keys `a <= b` from the sample between which the key at rank `r` of an `n`-entry
/// tensor lies with near certainty: the sample's count below the true threshold spreads
/// binomially (the stratified sample spreads less), six standard deviations and a block
/// either side. The two order statistics are selected in place (no sort).
fn bracket<K: Copy + Ord + Default>(sample: &mut [K], n: usize, r: usize, top: K) -> (K, K) {
    let m = sample.len() as f64;
    let q = (r as f64 + 0.5) / n as f64;
    let at = q * m;
    let margin = 6.0 * (q * (1.0 - q) * m).sqrt() + BLOCK as f64;
    let (lo, hi) = (at - margin, at + margin);
    let a = if lo <= 0.0 {
        K::default()
    } else {
        *sample.select_nth_unstable(lo as usize).1
    };
    let b = if hi >= m - 1.0 {
        top
    } else {
        *sample.select_nth_unstable(hi.ceil() as usize).1
    };
    (a, b)
}

/// What the pass found in one chunk for one threshold's bracket `a..=b`: how many keys lie
/// below `a`, equal `a`, equal `b` (when `b != a`), and the keys strictly between.
pub(super) struct Part<K = u32> {
    below: usize,
    eq_a: usize,
    eq_b: usize,
    inside: Vec<K>,
}

impl<K> Part<K> {
    pub(super) fn empty() -> Self {
        Part {
            below: 0,
            eq_a: 0,
            eq_b: 0,
            inside: Vec::new(),
        }
    }

    /// Adds another stretch's counts and keys.
    fn add(&mut self, o: Part<K>) {
        self.below += o.below;
        self.eq_a += o.eq_a;
        self.eq_b += o.eq_b;
        self.inside.extend(o.inside);
    }
}

/// Per bracket `a..=b` (keys, so at most `i32::MAX`): the keys of `d` below `a`, equal to `a`,
/// equal to `b`, strictly between; both brackets in one sweep, in 32-bit lanes.
#[inline(always)]
fn count(d: &[f32], [a0, b0, a1, b1]: [i32; 4]) -> [[u32; 4]; 2] {
    let mut c = [[0u32; 4]; 2];
    for v in d {
        let k = (v.to_bits() & 0x7fff_ffff) as i32;
        c[0][0] += (k < a0) as u32;
        c[0][1] += (k == a0) as u32;
        c[0][2] += (k == b0) as u32;
        c[0][3] += ((k > a0) & (k < b0)) as u32;
        c[1][0] += (k < a1) as u32;
        c[1][1] += (k == a1) as u32;
        c[1][2] += (k == b1) as u32;
        c[1][3] += ((k > a1) & (k < b1)) as u32;
    }
    c
}

/// [`count`] eight entries an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn count_avx2(d: &[f32], ab: [i32; 4]) -> [[u32; 4]; 2] {
    count(d, ab)
}

/// Append the keys of `d` strictly between `a` and `b` to `out`, in order: sixteen entries are
/// tested at once (vectorised) and only blocks holding such a key are walked one by one (a
/// bracket holds a percent or two of a tensor's keys).
#[inline(always)]
fn collect_inside(d: &[f32], a: u32, b: u32, out: &mut Vec<u32>) {
    let inside = |v: &f32| {
        let k = key(*v);
        (k > a) & (k < b)
    };
    for block in d.chunks(16) {
        if block.iter().fold(false, |any, v| any | inside(v)) {
            out.extend(block.iter().filter(|v| inside(v)).map(|v| key(*v)));
        }
    }
}

/// [`collect_inside`] with eight-entry instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn collect_inside_avx2(d: &[f32], a: u32, b: u32, out: &mut Vec<u32>) {
    collect_inside(d, a, b, out)
}

/// [`collect_inside`] sixteen entries an instruction: the keys inside are compressed to the
/// front of a register and the whole register stored (the compressing store is slow on some
/// CPUs); `out` needs room for 16 more keys than it receives.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn collect_inside_avx512(d: &[f32], a: u32, b: u32, out: &mut Vec<u32>) {
    use std::arch::x86_64::*;
    let (va, vb) = (_mm512_set1_epi32(a as i32), _mm512_set1_epi32(b as i32));
    let sign_off = _mm512_set1_epi32(0x7fff_ffff);
    let blocks = d.chunks_exact(16);
    let rest = blocks.remainder();
    for block in blocks {
        // SAFETY: `block` holds 16 f32 (an unaligned load of 64 bytes)
        let k = _mm512_and_si512(
            unsafe { _mm512_loadu_si512(block.as_ptr().cast()) },
            sign_off,
        );
        let inside = _mm512_cmpgt_epu32_mask(k, va) & _mm512_cmplt_epu32_mask(k, vb);
        if inside != 0 {
            out.reserve(16);
            // SAFETY: room for 16 keys was reserved
            unsafe {
                append_compressed(
                    out,
                    _mm512_maskz_compress_epi32(inside, k),
                    inside.count_ones(),
                )
            };
        }
    }
    collect_inside(rest, a, b, out);
}

impl Part<u32> {
    /// The parts of a chunk's deltas `d` for the brackets `(a0, b0)` and `(a1, b1)`: counted
    /// in one vectorised sweep, then the keys strictly inside collected where there are any.
    fn of(d: &[f32], (a0, b0): (u32, u32), (a1, b1): (u32, u32)) -> [Part; 2] {
        assert!(d.len() <= u32::MAX as usize);
        // keys have no sign bit: a bracket open at the top ends at the largest key
        let top = |b: u32| b.min(i32::MAX as u32);
        let (b0, b1) = (top(b0), top(b1));
        let ab = [a0 as i32, b0 as i32, a1 as i32, b1 as i32];
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the feature the function is compiled for
        let c = if avx2 {
            unsafe { count_avx2(d, ab) }
        } else {
            count(d, ab)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let c = count(d, ab);
        #[cfg(target_arch = "x86_64")]
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let part = |c: [u32; 4], a: u32, b: u32| {
            let mut inside = Vec::new();
            if c[3] > 0 {
                inside.reserve_exact(c[3] as usize + 16);
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    // SAFETY: the CPU has the feature the function is compiled for
                    unsafe { collect_inside_avx512(d, a, b, &mut inside) };
                } else if avx2 {
                    // SAFETY: as above
                    unsafe { collect_inside_avx2(d, a, b, &mut inside) };
                } else {
                    collect_inside(d, a, b, &mut inside);
                }
                #[cfg(not(target_arch = "x86_64"))]
                collect_inside(d, a, b, &mut inside);
                debug_assert_eq!(inside.len(), c[3] as usize);
            }
            Part {
                below: c[0] as usize,
                eq_a: c[1] as usize,
                eq_b: if b == a { 0 } else { c[2] as usize },
                inside,
            }
        };
        [part(c[0], a0, b0), part(c[1], a1, b1)]
    }
}

/// The threshold at rank `r` from every chunk's part of its bracket `a..=b`: its key, the
/// keys below it, the keys equal to it, and (`seen`) per chunk how many equal keys come
/// before that chunk; `None` when the bracket does not hold rank `r`.
fn threshold<K: Copy + Ord>(
    parts: &[&Part<K>],
    a: K,
    b: K,
    r: usize,
) -> Option<(K, usize, usize, Vec<usize>)> {
    let below: usize = parts.iter().map(|p| p.below).sum();
    let eq_a: usize = parts.iter().map(|p| p.eq_a).sum();
    let inside: usize = parts.iter().map(|p| p.inside.len()).sum();
    let eq_b: usize = parts.iter().map(|p| p.eq_b).sum();
    let prefix = |count: &dyn Fn(&Part<K>) -> usize| -> Vec<usize> {
        let mut at = 0;
        parts
            .iter()
            .map(|p| {
                let here = at;
                at += count(p);
                here
            })
            .collect()
    };
    if r < below {
        None
    } else if r < below + eq_a {
        Some((a, below, eq_a, prefix(&|p| p.eq_a)))
    } else if r < below + eq_a + inside {
        let mut all: Vec<K> = parts
            .iter()
            .flat_map(|p| p.inside.iter().copied())
            .collect();
        let (_, &mut t, _) = all.select_nth_unstable(r - below - eq_a);
        let less = below + eq_a + all.iter().filter(|&&k| k < t).count();
        let eq = all.iter().filter(|&&k| k == t).count();
        Some((
            t,
            less,
            eq,
            prefix(&|p| p.inside.iter().filter(|&&k| k == t).count()),
        ))
    } else if b != a && r < below + eq_a + inside + eq_b {
        Some((b, below + eq_a + inside, eq_b, prefix(&|p| p.eq_b)))
    } else {
        None
    }
}

/// The rank windows `(input, lo, hi)` (non-empty, `hi <= n`) resolved from a sample and one
/// pass, or `None` for a tensor under [`MIN_SAMPLED`] entries or when a bracket missed (the
/// caller then takes the two-pass selection).
pub(super) fn resolve_windows_sampled(
    n: usize,
    base: &HostTensor,
    tvs: &[HostTaskVector],
    windows: &[(usize, usize, usize)],
) -> Option<Vec<RankWindow>> {
    if n < MIN_SAMPLED {
        return None;
    }
    let which: Vec<usize> = windows.iter().map(|w| w.0).collect();
    let mut samples = sample_keys(n, base, tvs, &which);
    if samples.iter().any(|s| s.len() < 2 * BLOCK) {
        return None;
    }
    // each window's two thresholds: the keys at ranks lo and hi - 1
    let brackets: Vec<[(u32, u32); 2]> = windows
        .iter()
        .zip(&mut samples)
        .map(|(&(_, lo, hi), s)| [bracket(s, n, lo, u32::MAX), bracket(s, n, hi - 1, u32::MAX)])
        .collect();
    // per chunk, per window, the parts of its two brackets
    let per_chunk: Vec<Vec<[Part; 2]>> = map_chunks(n, tvs.len(), |_, start, len, s| {
        deltas(base, tvs, &which, start, len, s);
        which
            .iter()
            .zip(&brackets)
            .map(|(&j, &[lo, hi])| Part::of(&s.tv[j][..len], lo, hi))
            .collect()
    });
    let mut out = Vec::with_capacity(windows.len());
    for (wi, &(_, lo, hi)) in windows.iter().enumerate() {
        let top = |b: u32| b.min(i32::MAX as u32);
        let [(a0, b0), (a1, b1)] = brackets[wi];
        let (b0, b1) = (top(b0), top(b1));
        let parts = |t: usize| -> Vec<&Part> { per_chunk.iter().map(|c| &c[wi][t]).collect() };
        let (p_lo, p_hi) = (parts(0), parts(1));
        let (t_lo, less_lo, eq_lo, before_lo) = threshold(&p_lo, a0, b0, lo)?;
        let (t_hi, less_hi, eq_hi, before_hi) = threshold(&p_hi, a1, b1, hi - 1)?;
        // entries tied at a threshold take ranks less..less + eq by position: each chunk needs
        // the count of tied entries before it only when the window keeps part of them
        let split = |less: usize, eq: usize| {
            let kept = (less + eq).min(hi).saturating_sub(less.max(lo));
            kept != 0 && kept != eq
        };
        let (split_lo, split_hi) = (split(less_lo, eq_lo), t_hi != t_lo && split(less_hi, eq_hi));
        let (mut seen_lo, mut seen_hi) = (Vec::new(), Vec::new());
        if split_lo || split_hi {
            seen_lo = before_lo;
            seen_hi = if t_hi != t_lo {
                before_hi
            } else {
                vec![0; n.div_ceil(CHUNK)]
            };
        }
        out.push(RankWindow {
            lo,
            hi,
            t_lo,
            t_hi,
            less_lo,
            less_hi,
            eq_lo,
            eq_hi,
            seen_lo,
            seen_hi,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::{HostDtype, resolve_windows};
    use super::*;
    use crate::MaskRng;
    use half::bf16;

    fn tv(input: HostTensor) -> HostTaskVector {
        HostTaskVector {
            input,
            weight: 1.0,
            density: 0.5,
            gamma: 0.0,
            epsilon: 0.0,
            rng: MaskRng::new(0, "t", 0),
        }
    }

    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| bf16::from_f32(*x).to_bits().to_le_bytes())
            .collect()
    }

    fn same(a: &RankWindow, b: &RankWindow) -> bool {
        (
            a.lo, a.hi, a.t_lo, a.t_hi, a.less_lo, a.less_hi, a.eq_lo, a.eq_hi,
        ) == (
            b.lo, b.hi, b.t_lo, b.t_hi, b.less_lo, b.less_hi, b.eq_lo, b.eq_hi,
        ) && (a.seen_lo.is_empty() && b.seen_lo.is_empty()
            || a.seen_lo == b.seen_lo && a.seen_hi == b.seen_hi)
    }

    /// The AVX-512 and AVX2 collections of the keys inside a bracket (where the CPU has
    /// them) equal the scalar one, on lengths that are not multiples of 16.
    #[test]
    fn collections_of_the_keys_inside_agree() {
        let u = MaskRng::new(5, "inside", 0).uniform(10_007);
        let d: Vec<f32> = u.iter().map(|x| (x - 0.5) * 1e-2).collect();
        for (a, b) in [
            (key(1e-3), key(2e-3)),
            (0, key(4.9e-3)),
            (key(4e-3), u32::MAX >> 1),
        ] {
            for n in [0, 15, 16, 17, 1000, 10_007] {
                let mut want = Vec::new();
                collect_inside(&d[..n], a, b, &mut want);
                assert!(want.iter().all(|&k| k > a && k < b));
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut got = Vec::new();
                        // SAFETY: the CPU has the feature
                        unsafe { collect_inside_avx2(&d[..n], a, b, &mut got) };
                        assert_eq!(got, want);
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        let mut got = Vec::new();
                        // SAFETY: the CPU has the feature
                        unsafe { collect_inside_avx512(&d[..n], a, b, &mut got) };
                        assert_eq!(got, want);
                    }
                }
            }
        }
    }

    /// The keys at several ranks from a sample and one pass are those of a sort (smooth keys,
    /// long ties, the extreme ranks); a sample unlike the tensor misses.
    #[test]
    fn keys_at_ranks_are_those_of_a_sort() {
        let n = MIN_SAMPLED + 12_345;
        let u = MaskRng::new(13, "ranks", 0).uniform(n);
        let smooth: Vec<u32> = u.iter().map(|x| (x * 1e9) as u32).collect();
        let tied: Vec<u32> = u.iter().map(|x| ((x * x * 12.0) as u32) * 1000).collect();
        let mut unlike: Vec<u32> = smooth.iter().map(|x| x + 10).collect();
        for k in 0..n / STRIDE {
            unlike[block_start(k)..block_start(k) + BLOCK].fill(5);
        }
        let ranks = [0, n / 4, n / 2, 3 * n / 4, n - 1];
        let mut missed = 0;
        for (name, v) in [("smooth", &smooth), ("tied", &tied), ("unlike", &unlike)] {
            let mut sorted = v.clone();
            sorted.sort_unstable();
            let got = keys_at_ranks(
                n,
                &ranks,
                || (),
                |_, start, out: &mut [u32]| out.copy_from_slice(&v[start..start + out.len()]),
            );
            match got {
                Some(keys) => {
                    let want: Vec<u32> = ranks.iter().map(|&r| sorted[r]).collect();
                    assert_eq!(keys, want, "{name}");
                }
                None => {
                    assert_eq!(name, "unlike");
                    missed += 1;
                }
            }
        }
        assert_eq!(missed, 1);
        assert!(keys_at_ranks(1000, &[3], || (), |_, _, _: &mut [u32]| ()).is_none());
    }

    /// Variance-like test arrays from uniform draws: smooth values, and mostly zeros with a
    /// few repeated values (a threshold in long ties).
    fn smooth_and_tied(u: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let smooth = u.iter().map(|x| (*x as f64).powi(3)).collect();
        let tied = u
            .iter()
            .map(|x| {
                if *x < 0.6 {
                    0.0
                } else {
                    ((x * 8.0) as u32) as f64 * 0.125
                }
            })
            .collect();
        (smooth, tied)
    }

    /// SCE's streamed selection (variances computed chunk by chunk, none stored) finds the
    /// same k, threshold and counts as the radix selection over the stored array, with the
    /// zeros left out of k; a sample unlike the tensor must miss (the caller then stores).
    #[test]
    fn streamed_kth_equals_the_radix_selection() {
        use super::super::{f64_key, f64_of_key, nth_largest};
        let n = MIN_SAMPLED + 54_321;
        let u = MaskRng::new(12, "kth", 0).uniform(n);
        let (smooth, tied) = smooth_and_tied(&u);
        let mut unlike: Vec<f64> = smooth.iter().map(|x| x + 1.0).collect();
        for k in 0..n / STRIDE {
            unlike[block_start(k)..block_start(k) + BLOCK].fill(1e-9);
        }
        let mut missed = 0;
        for (name, v) in [("smooth", &smooth), ("tied", &tied), ("unlike", &unlike)] {
            let nonzero = v.iter().filter(|x| **x != 0.0).count();
            for topk in [0.001f64, 0.1, 0.5, 0.9, 0.999999] {
                let k_of = |nz: usize| (nz as f64 * topk) as usize;
                let got = kth_streamed(
                    n,
                    k_of,
                    || (),
                    |_, start, out: &mut [f64]| out.copy_from_slice(&v[start..start + out.len()]),
                );
                let Some((k, kth)) = got else {
                    assert_eq!(name, "unlike", "topk={topk}");
                    missed += 1;
                    continue;
                };
                assert_eq!(k, k_of(nonzero), "{name} topk={topk}");
                let (key, less, eq, before) = kth.expect("k > 0");
                let want = nth_largest(v, k - 1);
                assert_eq!(
                    f64_of_key(key).to_bits(),
                    want.to_bits(),
                    "{name} topk={topk}"
                );
                assert_eq!(key, f64_key(want));
                assert_eq!(
                    less,
                    v.iter().filter(|x| x.total_cmp(&want).is_lt()).count()
                );
                assert_eq!(eq, v.iter().filter(|x| x.total_cmp(&want).is_eq()).count());
                let seen: Vec<usize> = v
                    .chunks(CHUNK)
                    .scan(0, |at, c| {
                        let here = *at;
                        *at += c.iter().filter(|x| x.total_cmp(&want).is_eq()).count();
                        Some(here)
                    })
                    .collect();
                assert_eq!(before, seen, "{name} topk={topk}");
            }
        }
        assert!(missed > 0);
        // below the sampled size, no answer (the caller's stored path)
        let small = vec![1.0; 1000];
        assert!(
            kth_streamed(
                1000,
                |nz| nz / 2,
                || (),
                |_, s, o: &mut [f64]| o.copy_from_slice(&small[s..s + o.len()])
            )
            .is_none()
        );
    }
    /// SCE's k-th variance from the sample and one pass equals the radix selection's, with the
    /// counts below and equal and the ties before each chunk; a sample unlike the array misses.
    #[test]
    fn sampled_kth_equals_the_radix_selection() {
        use super::super::{f64_key, f64_of_key, nth_largest};
        let n = MIN_SAMPLED + 54_321;
        let u = MaskRng::new(11, "kth", 0).uniform(n);
        let (smooth, tied) = smooth_and_tied(&u);
        let mut unlike = vec![1e-9; n];
        for k in 0..n / STRIDE {
            unlike[block_start(k)..block_start(k) + BLOCK].fill(1.0);
        }
        let mut missed = 0;
        for (name, v) in [("smooth", &smooth), ("tied", &tied), ("unlike", &unlike)] {
            for k in [1, n / 100, n / 3, n / 2, n - 1, n] {
                let kth = nth_largest(v, k - 1);
                match kth_sampled(v, n - k, f64_key) {
                    Some((key, less, eq, before)) => {
                        assert_eq!(f64_of_key(key).to_bits(), kth.to_bits(), "{name} k={k}");
                        assert_eq!(less, v.iter().filter(|x| x.total_cmp(&kth).is_lt()).count());
                        assert_eq!(eq, v.iter().filter(|x| x.total_cmp(&kth).is_eq()).count());
                        let want: Vec<usize> = v
                            .chunks(CHUNK)
                            .scan(0, |at, c| {
                                let here = *at;
                                *at += c.iter().filter(|x| x.total_cmp(&kth).is_eq()).count();
                                Some(here)
                            })
                            .collect();
                        assert_eq!(before, want, "{name} k={k}");
                    }
                    None => {
                        assert_eq!(name, "unlike", "k={k}");
                        missed += 1;
                    }
                }
            }
        }
        assert!(missed > 0);
    }

    /// On bf16 inputs shaped like fine-tunes (rows of different scales, outlier columns), on
    /// inputs with few distinct values (thresholds inside long ties, split across chunks) and
    /// on sorted magnitudes, the sampled windows are the exact ones; on a tensor whose sampled
    /// blocks are unlike the rest, a bracket misses and `None` sends the caller to the
    /// two-pass selection.
    #[test]
    fn sampled_windows_equal_the_two_pass_ones() {
        let n = 3 * MIN_SAMPLED / 2 + 12_345;
        let u = MaskRng::new(7, "sampled", 0).uniform(3 * n);
        let cols = 2048;
        let base: Vec<f32> = (0..n).map(|i| u[i] - 0.5).collect();
        let fine = |m: usize| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let row_scale = 1.0 + ((i / cols) % 7) as f32;
                    let outlier = if i % cols == 17 { 30.0 } else { 1.0 };
                    base[i] + (u[m * n + i] - 0.5) * 1e-2 * row_scale * outlier
                })
                .collect()
        };
        let ties: Vec<f32> = (0..n)
            .map(|i| base[i] + ((i * 7919) % 5) as f32 * 0.25)
            .collect();
        let sorted: Vec<f32> = (0..n).map(|i| base[i] + i as f32 * 1e-4).collect();
        // large deltas exactly where the sample looks, small ones elsewhere
        let mut unlike: Vec<f32> = base.iter().map(|b| b + 1e-3).collect();
        for k in 0..n / STRIDE {
            for v in &mut unlike[block_start(k)..block_start(k) + BLOCK] {
                *v += 1.0;
            }
        }
        let bytes: Vec<Vec<u8>> = [base.clone(), fine(1), fine(2), ties, sorted, unlike]
            .iter()
            .map(|v| bf16_bytes(v))
            .collect();
        let base = HostTensor::Stored(&bytes[0], HostDtype::BF16);
        let tvs: Vec<HostTaskVector> = bytes[1..]
            .iter()
            .map(|x| tv(HostTensor::Stored(x, HostDtype::BF16)))
            .collect();
        let (mut split, mut missed) = (0, 0);
        for j in 0..tvs.len() {
            for (lo, hi) in [
                (n / 2, n),
                (n - n / 10, n),
                (n / 5, n / 5 + n / 3),
                (n - 1, n),
                (0, n / 2),
                (12_345, 12_346),
            ] {
                let w = [(j, lo, hi)];
                let exact = resolve_windows(n, &base, &tvs, &w);
                split += usize::from(!exact[0].seen_lo.is_empty());
                match resolve_windows_sampled(n, &base, &tvs, &w) {
                    Some(got) => {
                        assert!(same(&got[0], &exact[0]), "input {j} window {lo}..{hi}");
                        assert!(j != 4 || lo != n / 2, "the unlike sample did not miss");
                    }
                    None => {
                        missed += 1;
                        assert_eq!(j, 4, "input {j} window {lo}..{hi} fell back")
                    }
                }
            }
        }
        // split ties were compared, and the unlike sample missed
        assert!(split > 0 && missed > 0, "{split} split, {missed} missed");
    }

    /// The AVX-512 bracket counts (three brackets, or one) equal a sweep a bracket: counts and
    /// collected keys, on values of both signs with many ties, brackets with equal ends, and
    /// lengths that leave a partial block.
    #[test]
    fn bracket_counts_agree_across_builds() {
        let values: Vec<f32> = crate::MaskRng::new(3, "brackets", 0)
            .uniform(5000)
            .into_iter()
            .map(|u| ((u - 0.3) * 40.0).round() / 8.0)
            .collect();
        let k = |v: f32| total_key(v);
        let sets: [&[(u32, u32)]; 3] = [
            &[(k(-1.0), k(0.5)), (k(0.0), k(0.0)), (k(1.0), k(3.0))],
            &[(k(-2.0), k(-2.0)), (k(0.25), k(2.5)), (0, u32::MAX)],
            &[(k(-0.5), k(1.5))],
        ];
        for brackets in sets {
            for len in [0, 15, 16, 4999, 5000] {
                let fresh =
                    || -> Vec<Part<u32>> { brackets.iter().map(|_| Part::empty()).collect() };
                let mut want = fresh();
                count_brackets_each(&values[..len], brackets, &mut want);
                let mut got = fresh();
                count_brackets(&values[..len], brackets, &mut got);
                for ((w, g), &(a, b)) in want.iter_mut().zip(&mut got).zip(brackets) {
                    assert_eq!(
                        (w.below, w.eq_a, w.eq_b),
                        (g.below, g.eq_a, g.eq_b),
                        "len {len}, bracket {a}..{b}"
                    );
                    w.inside.sort_unstable();
                    g.inside.sort_unstable();
                    assert_eq!(w.inside, g.inside, "len {len}");
                    // and the sweep's counts are the definition's
                    let keys: Vec<u32> = values[..len].iter().map(|v| k(*v)).collect();
                    assert_eq!(w.below, keys.iter().filter(|&&x| x < a).count());
                    assert_eq!(
                        w.inside.len(),
                        keys.iter().filter(|&&x| x > a && x < b).count()
                    );
                }
            }
        }
    }

    /// The AVX-512 variance counts equal the AVX2 build's (and the scalar loop's): both signs,
    /// zeros of both signs, ties at the bracket's ends, partial blocks.
    #[test]
    fn variance_counts_agree_across_builds() {
        use super::super::f64_key;
        let values: Vec<f64> = crate::MaskRng::new(4, "variances", 0)
            .uniform(3001)
            .into_iter()
            .enumerate()
            .map(|(i, u)| match i % 11 {
                0 => 0.0,
                1 => -0.0,
                _ => ((u as f64 - 0.2) * 64.0).round() / 16.0,
            })
            .collect();
        let k = f64_key;
        for (a, b) in [
            (k(-0.5), k(1.25)),
            (k(0.0), k(0.0)),
            (k(-0.0), k(2.0)),
            (0, u64::MAX),
            (k(3.0), k(3.0)),
        ] {
            for len in [0, 7, 8, 3000, 3001] {
                let v = &values[..len];
                let (mut want, wz) = count_f64_lanes(v, a, b);
                let (mut got, gz) = count_f64(v, a, b);
                assert_eq!(
                    (want.below, want.eq_a, want.eq_b, wz),
                    (got.below, got.eq_a, got.eq_b, gz),
                    "len {len}, bracket {a}..{b}"
                );
                want.inside.sort_unstable();
                got.inside.sort_unstable();
                assert_eq!(want.inside, got.inside, "len {len}");
                assert_eq!(wz, v.iter().filter(|x| **x == 0.0).count());
            }
        }
    }
}
