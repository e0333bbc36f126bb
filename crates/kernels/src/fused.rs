//! Fused CPU kernels for the per-element methods: one pass per chunk of a tensor that decodes
//! the stored inputs (bf16, f16 or f32, straight from the memory map), forms the task vectors,
//! thins them, elects signs, sums, and encodes into the output buffer, instead of one burn
//! tensor per step. Chunks run in parallel (rayon), so a 131 MB embedding uses every core.
//!
//! - [`gta`]: generalized task arithmetic (task_arithmetic, TIES, DARE, DARE-TIES,
//!   breadcrumbs, breadcrumbs-TIES, DELLA, DELLA-linear): the same math as
//!   [`crate::sparsify`] and [`crate::generalized_task_arithmetic`], in the same f32 operation
//!   order. DELLA ranks each row's |delta| ([`RowRanker`], ties by position, the ranks the
//!   burn path uses too) chunk by chunk from the deltas the pass decodes (a row cut by a
//!   chunk's edge is decoded and ranked whole), or once per tensor for rows longer than a
//!   chunk.
//! - [`linear`]: the weighted average; [`map2`]: any per-element function of two inputs
//!   (NearSwap); [`ram`]: RAM / RAM+ (a counting pass, then the merge); [`model_stock`]: a
//!   reduction pass (whole tensor or per row), then the interpolation; [`sce`]: variances and
//!   their top-k threshold (on large tensors from a sample and one counting pass, the
//!   variances recomputed per chunk instead of stored), the kept bits and the model weights
//!   in one pass, then the merge.
//! - [`slerp`]: SLERP over the flattened tensors (one reduction pass for the norms and the
//!   dot product, one interpolation pass); [`nuslerp`]: the same per group (whole tensor,
//!   row or column); [`multislerp`] and [`karcher`]: the Gram matrix of the inputs, the
//!   spherical mean computed on the inputs' coefficients, one output pass.
//! - [`arcee_fusion`]: each row's KL divergence, the exact quartiles of the importances (a
//!   sample and one counting pass, or a radix selection over their bits), the masked merge.
//!
//! Magnitude selection (TIES' top-k, breadcrumbs' rank window) is exact without sorting or
//! copying: a two-pass radix selection over the bits of `|delta|` (16 high bits, then the 16
//! low bits inside the chosen bucket) finds the threshold value and how many entries lie below
//! it; entries equal to the threshold are ranked by position, as [`crate::sparsify`] ranks
//! them, with per-chunk counts when only part of the tied entries is kept. The kept set is
//! exactly the one of `select_nth` on `|x|` (ties included). Tensors of 2^20 entries and more
//! first try one pass instead of two (`sampled`): a 1/32 sample brackets each threshold, one
//! pass collects the keys inside the brackets, and the same thresholds come out (a bracket
//! that misses falls back to the two passes).
//!
//! DARE's random mask reads the same [`MaskRng`] stream as the burn path, seeked to each
//! chunk's first element, so results do not depend on the chunking or the thread count.

use crate::task_arithmetic::kept_count;
use crate::{Consensus, KernelError, MaskRng, Rescale, Result, Sparsify};
use half::{bf16, f16};
use rayon::prelude::*;

/// `fn NAME(args) -> R` that runs `BODY(args)` compiled for AVX2 where the CPU has it (checked
/// at run time), else as the binary's baseline builds it: for loops that LLVM vectorises
/// twice as wide with AVX2. `BODY` is `#[inline(always)]`, so each build is its own copy.
macro_rules! avx2_dispatch {
    (
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;
    ) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the feature the function is compiled for
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

mod arcee;
mod sampled;
mod sphere;

pub use arcee::{KlScratch, arcee_fusion, arcee_fusion_sorted, arcee_row_kl, quantile_index};
pub use sphere::{karcher, multislerp};

/// Elements per chunk of work (one rayon task).
pub const CHUNK: usize = 1 << 16;

/// A stored floating-point type the fused kernels decode and encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDtype {
    F32,
    BF16,
    F16,
}

impl HostDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            HostDtype::F32 => 4,
            HostDtype::BF16 | HostDtype::F16 => 2,
        }
    }
}

/// An input tensor on the host: stored little-endian bytes (e.g. a memory-mapped safetensors
/// slice) or `f32` values.
#[derive(Debug, Clone, Copy)]
pub enum HostTensor<'a> {
    Stored(&'a [u8], HostDtype),
    F32(&'a [f32]),
}

impl HostTensor<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostTensor::Stored(b, d) => b.len() / d.size(),
            HostTensor::F32(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decode elements `start..start + out.len()` into `out`.
    pub fn decode(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        match *self {
            HostTensor::F32(v) => out.copy_from_slice(&v[start..start + n]),
            HostTensor::Stored(b, HostDtype::F32) => {
                for (o, c) in out
                    .iter_mut()
                    .zip(b[start * 4..(start + n) * 4].chunks_exact(4))
                {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            HostTensor::Stored(b, HostDtype::BF16) => {
                let b = &b[start * 2..(start + n) * 2];
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the feature the function is compiled for
                    unsafe { decode_bf16_avx2(b, out) };
                    return;
                }
                decode_bf16(b, out);
            }
            HostTensor::Stored(b, HostDtype::F16) => {
                for (o, c) in out
                    .iter_mut()
                    .zip(b[start * 2..(start + n) * 2].chunks_exact(2))
                {
                    *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
        }
    }
}

impl HostTensor<'_> {
    /// `out[i] = self[start + i] - minus[i]`: the decode and the subtraction in one sweep for
    /// bf16 (the same f32 difference as decoding first).
    pub fn decode_minus(&self, start: usize, minus: &[f32], out: &mut [f32]) {
        let n = out.len();
        assert_eq!(minus.len(), n);
        if let HostTensor::Stored(b, HostDtype::BF16) = *self {
            let b = &b[start * 2..(start + n) * 2];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the feature the function is compiled for
                unsafe { decode_bf16_minus_avx2(b, minus, out) };
                return;
            }
            decode_bf16_minus(b, minus, out);
            return;
        }
        self.decode(start, out);
        for (o, m) in out.iter_mut().zip(minus) {
            *o -= m;
        }
    }
}

/// bf16 bytes minus f32 values.
#[inline(always)]
fn decode_bf16_minus(b: &[u8], minus: &[f32], out: &mut [f32]) {
    for ((o, c), m) in out.iter_mut().zip(b.chunks_exact(2)).zip(minus) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) - m;
    }
}

/// [`decode_bf16_minus`] eight entries an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_bf16_minus_avx2(b: &[u8], minus: &[f32], out: &mut [f32]) {
    decode_bf16_minus(b, minus, out)
}

/// bf16 bytes (little-endian) to f32: the high half of the f32 bits.
#[inline(always)]
fn decode_bf16(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

/// [`decode_bf16`] eight entries an instruction (the binary's baseline x86-64 does four).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_bf16_avx2(b: &[u8], out: &mut [f32]) {
    decode_bf16(b, out)
}

/// Where the merged values go: the output tensor's stored bytes (written in place, encoded
/// chunk by chunk) or `f32` values.
#[derive(Debug)]
pub enum HostOut<'a> {
    Stored(&'a mut [u8], HostDtype),
    F32(&'a mut [f32]),
}

impl HostOut<'_> {
    /// The same buffer, borrowed for a shorter time.
    fn reborrow(&mut self) -> HostOut<'_> {
        match self {
            HostOut::Stored(b, d) => HostOut::Stored(b, *d),
            HostOut::F32(v) => HostOut::F32(v),
        }
    }

    /// Sets entry `i` to `v` (encoded as every other entry).
    fn set(&mut self, i: usize, v: f32) {
        match self {
            HostOut::Stored(b, d) => encode(&[v], *d, &mut b[i * d.size()..(i + 1) * d.size()]),
            HostOut::F32(o) => o[i] = v,
        }
    }

    fn len(&self) -> usize {
        match self {
            HostOut::Stored(b, d) => b.len() / d.size(),
            HostOut::F32(v) => v.len(),
        }
    }
}

/// Encode `values` into `out` (round to nearest even for bf16/f16, as torch does).
fn encode(values: &[f32], dtype: HostDtype, out: &mut [u8]) {
    match dtype {
        HostDtype::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        HostDtype::BF16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        HostDtype::F16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
    }
}

/// Per-thread buffers of one chunk.
struct Scratch {
    base: Vec<f32>,
    x: Vec<f32>,
    res: Vec<f32>,
    /// One row of chunk values per task vector.
    tv: Vec<Vec<f32>>,
    u: Vec<f32>,
    div: Vec<f32>,
}

thread_local! {
    /// The chunk-sized buffers the last job on this thread dropped: the next job takes them
    /// instead of allocating (each allocation of a few hundred KB is a fresh mapping whose
    /// pages the kernel faults in and clears, 1.8 MB a job for three inputs).
    static SPARE: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
}

impl Scratch {
    /// Chunk-sized buffers for `tvs` task vectors (their contents are left over from earlier
    /// work: every pass writes what it reads, as it must for the second chunk of a job).
    fn new(tvs: usize) -> Scratch {
        match SPARE.with(|s| s.borrow_mut().take()) {
            Some(mut s) => {
                s.tv.truncate(tvs);
                while s.tv.len() < tvs {
                    s.tv.push(vec![0.0; CHUNK]);
                }
                s
            }
            None => Scratch::with_len(tvs, CHUNK),
        }
    }

    /// Buffers of `len` entries (a row, for the row-wise passes).
    fn with_len(tvs: usize, len: usize) -> Scratch {
        Scratch {
            base: vec![0.0; len],
            x: vec![0.0; len],
            res: vec![0.0; len],
            tv: (0..tvs).map(|_| vec![0.0; len]).collect(),
            u: vec![0.0; len],
            div: vec![0.0; len],
        }
    }
}

impl Drop for Scratch {
    /// Chunk-sized buffers go to this thread's spare when it is empty; otherwise (another
    /// scratch got there first, or row-sized buffers) they are freed.
    fn drop(&mut self) {
        if self.base.len() != CHUNK {
            return;
        }
        // a thread being torn down has no spare to keep them in
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.is_none()
            {
                // filling an empty slot drops nothing, so no other scratch's drop runs here
                *spare = Some(Scratch {
                    base: std::mem::take(&mut self.base),
                    x: std::mem::take(&mut self.x),
                    res: std::mem::take(&mut self.res),
                    tv: std::mem::take(&mut self.tv),
                    u: std::mem::take(&mut self.u),
                    div: std::mem::take(&mut self.div),
                });
            }
        });
    }
}

/// The first NaN or infinity of `v`, if any: blocks are tested with a branch-free count
/// (which vectorizes; a `find` does not), and only a block that has one is searched.
fn first_non_finite(v: &[f32]) -> Option<f32> {
    for block in v.chunks(256) {
        // |x| >= infinity's bits: infinite or NaN (compared as nonnegative i32)
        let bad = block.iter().fold(0u32, |n, x| {
            n + (((x.to_bits() & 0x7fff_ffff) as i32) >= 0x7f80_0000) as u32
        });
        if bad > 0 {
            return block.iter().find(|x| !x.is_finite()).copied();
        }
    }
    None
}

/// The error for a merged value that is not finite.
fn non_finite(v: f32) -> KernelError {
    KernelError::BadParameter {
        method: "merge",
        what: format!(
            "the merged values contain {v}; check the weights (a zero weight sum with normalize?) and the inputs"
        ),
    }
}

/// Run `f(chunk index, first element, scratch)` over every chunk in parallel; `f` leaves the
/// chunk's merged values in `scratch.res`, which are checked (finite) and written to `out`.
fn for_each_chunk<F>(n: usize, tvs: usize, out: HostOut, f: F) -> Result<()>
where
    F: Fn(usize, usize, &mut Scratch) + Sync,
{
    let bad = non_finite;
    let check = |s: &Scratch, len: usize| -> Result<()> {
        match first_non_finite(&s.res[..len]) {
            Some(v) => Err(bad(v)),
            None => Ok(()),
        }
    };
    debug_assert_eq!(out.len(), n);
    match out {
        HostOut::F32(o) => o
            .par_chunks_mut(CHUNK)
            .enumerate()
            .with_min_len(min_len(n.div_ceil(CHUNK)))
            .try_for_each_init(
                || Scratch::new(tvs),
                |s, (ci, o)| {
                    f(ci, ci * CHUNK, s);
                    check(s, o.len())?;
                    o.copy_from_slice(&s.res[..o.len()]);
                    Ok(())
                },
            ),
        HostOut::Stored(o, dtype) => o
            .par_chunks_mut(CHUNK * dtype.size())
            .enumerate()
            .with_min_len(min_len(n.div_ceil(CHUNK)))
            .try_for_each_init(
                || Scratch::new(tvs),
                |s, (ci, o)| {
                    f(ci, ci * CHUNK, s);
                    let len = o.len() / dtype.size();
                    check(s, len)?;
                    encode(&s.res[..len], dtype, o);
                    Ok(())
                },
            ),
    }
}

/// The fewest chunks one rayon job takes: a few jobs per thread, so the per-job buffers (and
/// the histograms) are allocated a few times per tensor, not once per chunk.
fn min_len(chunks: usize) -> usize {
    (chunks / (4 * rayon::current_num_threads())).max(1)
}

/// The chunk of elements `start..` of an `n`-element tensor.
fn chunk_len(n: usize, start: usize) -> usize {
    CHUNK.min(n - start)
}

/// `f(ci, start, len, scratch)` for every chunk of an `n`-entry tensor, chunks in parallel
/// (each job with a [`Scratch`] of `tvs` task-vector rows), the results in chunk order.
fn map_chunks<T: Send>(
    n: usize,
    tvs: usize,
    f: impl Fn(usize, usize, usize, &mut Scratch) -> T + Sync,
) -> Vec<T> {
    let chunks = n.div_ceil(CHUNK);
    (0..chunks)
        .into_par_iter()
        .with_min_len(min_len(chunks))
        .map_init(
            || Scratch::new(tvs),
            |s, ci| {
                let start = ci * CHUNK;
                f(ci, start, chunk_len(n, start), s)
            },
        )
        .collect()
}

fn check_lengths(
    method: &'static str,
    n: usize,
    inputs: &[HostTensor],
    out: &HostOut,
) -> Result<()> {
    for t in inputs.iter().map(HostTensor::len).chain([out.len()]) {
        if t != n {
            return Err(KernelError::ShapeMismatch {
                method,
                a: [1, n],
                b: [1, t],
            });
        }
    }
    Ok(())
}

/// `sum_i w_i x_i` (divided by `sum_i w_i` with `normalize`), as [`crate::linear`].
pub fn linear(inputs: &[HostTensor], weights: &[f32], normalize: bool, out: HostOut) -> Result<()> {
    if inputs.is_empty() || inputs.len() != weights.len() {
        return Err(KernelError::WrongInputCount {
            method: "linear",
            needed: "one weight per input and at least one input",
            got: inputs.len(),
        });
    }
    let n = inputs[0].len();
    check_lengths("linear", n, inputs, &out)?;
    let div = if normalize {
        let sum: f32 = weights.iter().sum();
        if sum.abs() < 1e-8 {
            return Err(KernelError::BadParameter {
                method: "linear",
                what: format!(
                    "weights {weights:?} sum to zero, so normalize would divide by zero; set normalize: false or change the weights"
                ),
            });
        }
        Some(sum)
    } else {
        None
    };
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        inputs[0].decode(start, &mut s.res[..len]);
        for r in &mut s.res[..len] {
            *r *= weights[0];
        }
        for (t, w) in inputs[1..].iter().zip(&weights[1..]) {
            t.decode(start, &mut s.x[..len]);
            for (r, x) in s.res[..len].iter_mut().zip(&s.x[..len]) {
                *r += x * w;
            }
        }
        if let Some(d) = div {
            for r in &mut s.res[..len] {
                *r /= d;
            }
        }
    })
}

/// The chunk of `base` into `s.base` and each input's task vector (`input - base`) into
/// `s.tv[j]`: what RAM, Model Stock and SCE start every pass with.
fn input_deltas(
    base: HostTensor,
    inputs: &[HostTensor],
    start: usize,
    len: usize,
    s: &mut Scratch,
) {
    base.decode(start, &mut s.base[..len]);
    for (j, t) in inputs.iter().enumerate() {
        t.decode_minus(start, &s.base[..len], &mut s.tv[j][..len]);
    }
}

/// `f(a_i, b_i)` for every element, decoded and encoded chunk by chunk (NearSwap).
pub fn map2(
    a: HostTensor,
    b: HostTensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
    out: HostOut,
) -> Result<()> {
    let n = a.len();
    check_lengths("map2", n, &[a, b], &out)?;
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        a.decode(start, &mut s.base[..len]);
        b.decode(start, &mut s.x[..len]);
        for ((r, x), y) in s.res[..len].iter_mut().zip(&s.base[..len]).zip(&s.x[..len]) {
            *r = f(*x, *y);
        }
    })
}

/// RAM (mergekit 0.1.5's `ram.py`): an entry of a task vector counts as changed where
/// `|delta| > epsilon`; an entry only one model changes is kept (times that model's `boost`),
/// one several change is averaged over them. `boost(shared, unique)` gets each model's counts
/// of changed entries that other models change too / that it alone changes (RAM: 1; RAM+: a
/// boost of the unique ones). Two passes: the counts, then the merge, in the burn path's f32
/// operation order.
pub fn ram(
    base: HostTensor,
    inputs: &[HostTensor],
    epsilon: f32,
    boost: impl Fn(f32, f32) -> f32,
    out: HostOut,
) -> Result<()> {
    let n = base.len();
    let mut all = vec![base];
    all.extend(inputs.iter().copied());
    check_lengths("ram", n, &all, &out)?;
    let m = inputs.len();
    let changed = move |v: f32| v.abs() > epsilon;
    // the task vectors of a chunk into s.tv
    let deltas = |start, len, s: &mut Scratch| input_deltas(base, inputs, start, len, s);
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    // per model: (shared, unique) counts of its changed entries
    let counts: Vec<(u64, u64)> = chunks
        .par_iter()
        .with_min_len(min_len(chunks.len()))
        .fold(
            || (Scratch::new(m), vec![(0u64, 0u64); m]),
            |(mut s, mut c), &ci| {
                let start = ci * CHUNK;
                let len = chunk_len(n, start);
                deltas(start, len, &mut s);
                macro_rules! fixed {
                    ($n:literal) => {{
                        let rows: [&[f32]; $n] = std::array::from_fn(|j| &s.tv[j][..len]);
                        #[cfg(target_arch = "x86_64")]
                        let got = if std::arch::is_x86_feature_detected!("avx2") {
                            // SAFETY: the CPU has the feature the function is compiled for
                            unsafe { ram_counts_avx2(rows, epsilon) }
                        } else {
                            ram_counts(rows, epsilon)
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        let got = ram_counts(rows, epsilon);
                        for (cj, (sh, un)) in c.iter_mut().zip(got) {
                            cj.0 += sh as u64;
                            cj.1 += un as u64;
                        }
                        return (s, c);
                    }};
                }
                match m {
                    2 => fixed!(2),
                    3 => fixed!(3),
                    4 => fixed!(4),
                    _ => {}
                }
                for i in 0..len {
                    let k = (0..m).filter(|&j| changed(s.tv[j][i])).count();
                    for (j, cj) in c.iter_mut().enumerate() {
                        if changed(s.tv[j][i]) {
                            if k > 1 {
                                cj.0 += 1;
                            } else {
                                cj.1 += 1;
                            }
                        }
                    }
                }
                (s, c)
            },
        )
        .map(|(_, c)| c)
        .reduce(
            || vec![(0, 0); m],
            |a, b| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x.0 + y.0, x.1 + y.1))
                    .collect()
            },
        );
    let boosts: Vec<f32> = counts
        .iter()
        .map(|&(shared, unique)| boost(shared as f32, unique as f32))
        .collect();
    for_each_chunk(n, m, out, |_, start, s| {
        let len = chunk_len(n, start);
        deltas(start, len, s);
        macro_rules! fixed {
            ($n:literal) => {{
                let rows: [&[f32]; $n] = std::array::from_fn(|j| &s.tv[j][..len]);
                let b: [f32; $n] = std::array::from_fn(|j| boosts[j]);
                let (base, res) = (&s.base[..len], &mut s.res[..len]);
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the feature the function is compiled for
                    unsafe { ram_merge_avx2(rows, b, epsilon, base, res) };
                    return;
                }
                ram_merge(rows, b, epsilon, base, res);
                return;
            }};
        }
        match m {
            2 => fixed!(2),
            3 => fixed!(3),
            4 => fixed!(4),
            _ => {}
        }
        for i in 0..len {
            let c = (0..m).filter(|&j| changed(s.tv[j][i])).count() as u32;
            let sum: f32 = (0..m)
                .filter(|&j| changed(s.tv[j][i]))
                .map(|j| {
                    if c == 1 {
                        s.tv[j][i] * boosts[j]
                    } else {
                        s.tv[j][i] / c as f32
                    }
                })
                .sum();
            s.res[i] = s.base[i] + sum;
        }
    })
}

/// RAM's counts for `N` task vectors: per model, its changed entries (`|v| > epsilon`) that
/// another model changes too, and those only it changes.
// entry `i` of every row: an index over the entries vectorises across the N rows
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn ram_counts<const N: usize>(rows: [&[f32]; N], epsilon: f32) -> [(u32, u32); N] {
    let len = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == len) && len <= u32::MAX as usize);
    let (mut shared, mut unique) = ([0u32; N], [0u32; N]);
    for i in 0..len {
        let changed: [u32; N] = std::array::from_fn(|j| (rows[j][i].abs() > epsilon) as u32);
        let multi = (changed.iter().sum::<u32>() > 1) as u32;
        for j in 0..N {
            shared[j] += changed[j] & multi;
            unique[j] += changed[j] & (1 - multi);
        }
    }
    std::array::from_fn(|j| (shared[j], unique[j]))
}

/// [`ram_counts`] eight entries an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ram_counts_avx2<const N: usize>(rows: [&[f32]; N], epsilon: f32) -> [(u32, u32); N] {
    ram_counts(rows, epsilon)
}

/// RAM's merge of `N` task vectors entry by entry: the changed entries summed (in model order,
/// from the neutral element of `f32`'s `Sum`, as the iterator sum does), a model's entry times
/// its boost where only it changed, else divided by the count of models that changed it.
// entry `i` of every row: an index over the entries vectorises across the N rows
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn ram_merge<const N: usize>(
    rows: [&[f32]; N],
    boosts: [f32; N],
    epsilon: f32,
    base: &[f32],
    res: &mut [f32],
) {
    let len = res.len();
    assert!(base.len() == len && rows.iter().all(|r| r.len() == len));
    let zero: f32 = std::iter::empty::<f32>().sum();
    for i in 0..len {
        let changed: [bool; N] = std::array::from_fn(|j| rows[j][i].abs() > epsilon);
        let c = changed.iter().map(|&c| c as u32).sum::<u32>();
        let mut sum = zero;
        for j in 0..N {
            let v = rows[j][i];
            let term = if c == 1 { v * boosts[j] } else { v / c as f32 };
            sum = if changed[j] { sum + term } else { sum };
        }
        res[i] = base[i] + sum;
    }
}

/// [`ram_merge`] eight entries an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ram_merge_avx2<const N: usize>(
    rows: [&[f32]; N],
    boosts: [f32; N],
    epsilon: f32,
    base: &[f32],
    res: &mut [f32],
) {
    ram_merge(rows, boosts, epsilon, base, res)
}

/// Model Stock, as [`crate::model_stock`]: `t * mean(others) + (1 - t) * base` with `t = N cos
/// / (1 + (N - 1) cos)` from the mean pairwise cosine of the task vectors, over the whole
/// tensor (one reduction pass, sums in f64) or, with `filter_wise`, per row of `cols` entries.
pub fn model_stock(
    base: HostTensor,
    others: &[HostTensor],
    filter_wise: bool,
    cols: usize,
    out: HostOut,
) -> Result<()> {
    let m = others.len();
    if m < 2 {
        return Err(KernelError::WrongInputCount {
            method: "model_stock",
            needed: "a base and at least two other models",
            got: m + 1,
        });
    }
    let n = base.len();
    let mut all = vec![base];
    all.extend(others.iter().copied());
    check_lengths("model_stock", n, &all, &out)?;
    if filter_wise && (cols == 0 || !n.is_multiple_of(cols)) {
        return Err(KernelError::BadParameter {
            method: "model_stock",
            what: format!("rows of {cols} do not tile a tensor of {n} values"),
        });
    }
    let nf = m as f32;
    let pairs = (m * (m - 1) / 2) as f32;
    // t from the Gram matrix (row-major m x m) of the task vectors
    let t_of = |g: &[f64]| -> f32 {
        let mut cos_sum = 0.0f32;
        for i in 0..m {
            for j in i + 1..m {
                let den = ((g[i * m + i] as f32).sqrt() * (g[j * m + j] as f32).sqrt()).max(1e-6);
                cos_sum += (g[i * m + j] as f32 / den).clamp(-1.0, 1.0);
            }
        }
        let cos = cos_sum / pairs;
        nf * cos / (1.0 + (nf - 1.0) * cos)
    };
    // one t for the tensor, or one per row
    let ts: Vec<f32> = if filter_wise {
        let rows = n / cols;
        let mut ts = vec![0f32; rows];
        let per_job = (CHUNK / cols).max(1);
        ts.par_chunks_mut(per_job).enumerate().for_each_init(
            || (Scratch::with_len(m, cols), vec![0f64; m * m]),
            |(s, g), (bi, block)| {
                for (ri, t) in block.iter_mut().enumerate() {
                    input_deltas(base, others, (bi * per_job + ri) * cols, cols, s);
                    for i in 0..m {
                        for j in i..m {
                            g[i * m + j] = dot_f64(&s.tv[i][..cols], &s.tv[j][..cols]);
                        }
                    }
                    *t = t_of(g);
                }
            },
        );
        ts
    } else {
        vec![t_of(&sphere::gram(others, Some(base), n))]
    };
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        base.decode(start, &mut s.base[..len]);
        others[0].decode(start, &mut s.res[..len]);
        for o in &others[1..] {
            o.decode(start, &mut s.x[..len]);
            for (r, x) in s.res[..len].iter_mut().zip(&s.x[..len]) {
                *r += x;
            }
        }
        for (i, (r, b)) in s.res[..len].iter_mut().zip(&s.base[..len]).enumerate() {
            let t = if filter_wise {
                ts[(start + i) / cols]
            } else {
                ts[0]
            };
            *r = (*r / nf) * t + b * (1.0 - t);
        }
    })
}

/// SCE (mergekit 0.1.5's `sce.py`): with `select_topk < 1`, keep only the entries whose
/// variance over the task vectors (f64) is among the `floor(select_topk * nonzero)` largest
/// (ties by position); weight each model by its share of the mean squared (kept) task vector;
/// elect signs by the unweighted sum and average the agreeing entries with those weights. The
/// burn path's operation order, in passes: variances and the threshold, weights, merge.
pub fn sce(base: HostTensor, inputs: &[HostTensor], select_topk: f32, out: HostOut) -> Result<()> {
    let n = base.len();
    let mut all = vec![base];
    all.extend(inputs.iter().copied());
    check_lengths("sce", n, &all, &out)?;
    let m = inputs.len();
    if m == 0 {
        return for_each_chunk(n, 0, out, |_, start, s| {
            let len = chunk_len(n, start);
            base.decode(start, &mut s.res[..len]);
        });
    }
    let deltas = |start, len, s: &mut Scratch| input_deltas(base, inputs, start, len, s);
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    // (NaN keeps everything, as the stored path always did)
    let select = if select_topk >= 1.0 || select_topk.is_nan() {
        SceSelect::All
    } else if select_topk <= 0.0 {
        SceSelect::Nothing
    } else {
        let k_of = |nonzero: usize| (nonzero as f64 * select_topk as f64) as usize;
        // from a sample and one counting pass over variances computed chunk by chunk (large
        // tensors), else (or when the sample's bracket misses) from the stored variances
        let streamed = sampled::kth_streamed(
            n,
            k_of,
            || (Scratch::new(m), vec![0f64; CHUNK]),
            |(s, mean), start, v| {
                deltas(start, v.len(), s);
                sce_variances(&s.tv, &mut mean[..v.len()], v);
            },
        );
        match streamed {
            Some((_, None)) => SceSelect::Nothing,
            Some((k, Some((key, less, eq, before)))) => SceSelect::Above {
                key,
                ties: k - (n - less - eq),
                before,
                var: None,
            },
            None => {
                let mut var = vec![0f64; n];
                var.par_chunks_mut(CHUNK).enumerate().for_each_init(
                    || (Scratch::new(m), vec![0f64; CHUNK]),
                    |(s, mean), (ci, v)| {
                        deltas(ci * CHUNK, v.len(), s);
                        sce_variances(&s.tv, &mut mean[..v.len()], v);
                    },
                );
                let nonzero = var.par_iter().filter(|v| **v != 0.0).count();
                let k = k_of(nonzero);
                if k == 0 {
                    SceSelect::Nothing
                } else {
                    // the k-th largest variance; entries above it are kept, and of those
                    // equal to it the first ones by position (parallel: per-chunk counts of
                    // the ties) (a sample and one pass on large tensors, else the exact radix
                    // selection and two counting passes: the same value and counts)
                    let (kth, above, before) = match sampled::kth_sampled(&var, n - k, f64_key) {
                        Some((key, less, eq, before)) => (f64_of_key(key), n - less - eq, before),
                        None => {
                            let kth = nth_largest(&var, k - 1);
                            let above =
                                var.par_iter().filter(|v| v.total_cmp(&kth).is_gt()).count();
                            let mut before: Vec<usize> = var
                                .par_chunks(CHUNK)
                                .map(|c| c.iter().filter(|v| v.total_cmp(&kth).is_eq()).count())
                                .collect();
                            let mut seen = 0;
                            for b in before.iter_mut() {
                                (*b, seen) = (seen, seen + *b);
                            }
                            (kth, above, before)
                        }
                    };
                    SceSelect::Above {
                        key: f64_key(kth),
                        ties: k - above,
                        before,
                        var: Some(var),
                    }
                }
            }
        }
    };
    // per chunk: the kept entries (one bit each; `None`: all) and each model's sum of squared
    // kept deltas (variances recomputed from the decoded deltas when they were not stored)
    let per_chunk: Vec<(Option<Vec<u64>>, Vec<f64>)> = chunks
        .par_iter()
        .with_min_len(min_len(chunks.len()))
        .map_init(
            || (Scratch::new(m), vec![0f64; CHUNK], vec![0f64; CHUNK]),
            |(s, mean, v), &ci| {
                let start = ci * CHUNK;
                let len = chunk_len(n, start);
                deltas(start, len, s);
                let bits = match &select {
                    SceSelect::All => None,
                    SceSelect::Nothing => Some(vec![0u64; len.div_ceil(64)]),
                    SceSelect::Above {
                        key,
                        ties,
                        before,
                        var,
                    } => {
                        let v = match var {
                            Some(var) => &var[start..start + len],
                            None => {
                                sce_variances(&s.tv, &mut mean[..len], &mut v[..len]);
                                &v[..len]
                            }
                        };
                        Some(keep_bits(v, *key, *ties, before[ci]))
                    }
                };
                if let Some(bits) = &bits {
                    for t in s.tv.iter_mut() {
                        select_bits(&mut t[..len], bits);
                    }
                }
                let sq = s.tv.iter().map(|t| dot_f64(&t[..len], &t[..len])).collect();
                (bits, sq)
            },
        )
        .collect();
    drop(select);
    // each model's mean squared (kept) task vector, as a share of their sum (summed in chunk
    // order: the same for every thread schedule)
    let mut sq = vec![0f64; m];
    for (_, q) in &per_chunk {
        for (a, b) in sq.iter_mut().zip(q) {
            *a += b;
        }
    }
    let kept: Vec<Option<Vec<u64>>> = per_chunk.into_iter().map(|(b, _)| b).collect();
    let masked = |ci: usize, start: usize, len: usize, s: &mut Scratch| {
        deltas(start, len, s);
        if let Some(bits) = &kept[ci] {
            for t in s.tv.iter_mut() {
                select_bits(&mut t[..len], bits);
            }
        }
    };
    let means: Vec<f64> = sq.iter().map(|q| q / n as f64).collect();
    let total: f64 = means.iter().sum();
    let weights: Vec<f32> = if total.abs() < 1e-6 {
        vec![1.0 / m as f32; m]
    } else {
        means.iter().map(|v| (v / total) as f32).collect()
    };
    for_each_chunk(n, m, out, |ci, start, s| {
        let len = chunk_len(n, start);
        masked(ci, start, len, s);
        let Scratch {
            base,
            x,
            res,
            tv,
            div,
            ..
        } = s;
        let (sum, num, den) = (&mut x[..len], &mut res[..len], &mut div[..len]);
        sce_combine(tv, &weights, &base[..len], sum, num, den);
    })
}

avx2_dispatch! {
    /// SCE's merge of one chunk's kept deltas `tv` into `num`: [`sce_combine_lanes`], compiled
    /// for AVX2 where the CPU has it.
    fn sce_combine(
        tv: &[Vec<f32>],
        weights: &[f32],
        base: &[f32],
        sum: &mut [f32],
        num: &mut [f32],
        den: &mut [f32],
    ) = sce_combine_lanes;
}

/// Model by model over the chunk, without branches (the signs are random): the unweighted
/// sum's sign, then the weighted sum and the weight of the agreeing entries (adding a zero
/// where an entry disagrees leaves the sums as skipping it does), then `base + num / den`.
#[inline(always)]
fn sce_combine_lanes(
    tv: &[Vec<f32>],
    weights: &[f32],
    base: &[f32],
    sum: &mut [f32],
    num: &mut [f32],
    den: &mut [f32],
) {
    match tv.len() {
        2 => sce_combine_fixed::<2>(tv, weights, base, num),
        3 => sce_combine_fixed::<3>(tv, weights, base, num),
        4 => sce_combine_fixed::<4>(tv, weights, base, num),
        _ => sce_combine_arrays(tv, weights, base, sum, num, den),
    }
}

/// [`sce_combine_lanes`] for any number of models, through the arrays `sum`, `num`, `den`.
#[inline(always)]
fn sce_combine_arrays(
    tv: &[Vec<f32>],
    weights: &[f32],
    base: &[f32],
    sum: &mut [f32],
    num: &mut [f32],
    den: &mut [f32],
) {
    let len = sum.len();
    sum.copy_from_slice(&tv[0][..len]);
    for t in &tv[1..] {
        for (a, v) in sum.iter_mut().zip(&t[..len]) {
            *a += v;
        }
    }
    num.fill(0.0);
    den.fill(0.0);
    for (t, wt) in tv.iter().zip(weights) {
        for (((nu, de), v), a) in num.iter_mut().zip(den.iter_mut()).zip(&t[..len]).zip(&*sum) {
            let agree = ((*v != 0.0) & ((*v > 0.0) == (*a >= 0.0))) as u32 as f32;
            *nu += v * wt * agree;
            *de += wt * agree;
        }
    }
    for ((r, b), d) in num.iter_mut().zip(base).zip(den.iter()) {
        *r = b + *r / d.max(1e-6);
    }
}

/// [`sce_combine_lanes`] for exactly `M` models in one loop over the entries (the sums stay in
/// registers instead of three arrays swept `2 M + 2` times), the result into `out`: the same
/// operations per entry in the same order, so the same bits.
#[inline(always)]
fn sce_combine_fixed<const M: usize>(
    tv: &[Vec<f32>],
    weights: &[f32],
    base: &[f32],
    out: &mut [f32],
) {
    let len = out.len();
    let t: [&[f32]; M] = std::array::from_fn(|i| &tv[i][..len]);
    let w: [f32; M] = std::array::from_fn(|i| weights[i]);
    let base = &base[..len];
    for (e, r) in out.iter_mut().enumerate() {
        let mut a = t[0][e];
        for ti in &t[1..] {
            a += ti[e];
        }
        let (mut nu, mut de) = (0.0f32, 0.0f32);
        for i in 0..M {
            let v = t[i][e];
            let agree = ((v != 0.0) & ((v > 0.0) == (a >= 0.0))) as u32 as f32;
            nu += v * w[i] * agree;
            de += w[i] * agree;
        }
        *r = base[e] + nu / de.max(1e-6);
    }
}

/// What SCE keeps: every entry, none, or those whose variance's key is above `key` plus the
/// first `ties` equal to it by position (`before[chunk]` of them come before each chunk), with
/// the variances when they were stored.
enum SceSelect {
    All,
    Nothing,
    Above {
        key: u64,
        ties: usize,
        before: Vec<usize>,
        var: Option<Vec<f64>>,
    },
}

avx2_dispatch! {
    /// Per entry of a chunk, the variance over the models' deltas `tv` (f64): the mean over
    /// the models, then the mean squared deviation (the same f64 operations in the same order
    /// as entry by entry). `mean` is scratch.
    fn sce_variances(tv: &[Vec<f32>], mean: &mut [f64], var: &mut [f64]) = sce_variances_lanes;
}

/// [`sce_variances_lanes`] for exactly `M` models in one loop over the entries (the mean and
/// the sum of squares stay in registers instead of two f64 arrays swept `2 M + 2` times):
/// the same operations per entry in the same order, so the same bits.
#[inline(always)]
fn sce_variances_fixed<const M: usize>(tv: &[Vec<f32>], var: &mut [f64]) {
    let len = var.len();
    let t: [&[f32]; M] = std::array::from_fn(|i| &tv[i][..len]);
    let inv = 1.0 / M as f64;
    let div = |x: f64| {
        if M.is_power_of_two() {
            x * inv
        } else {
            x / M as f64
        }
    };
    for (e, o) in var.iter_mut().enumerate() {
        let mut a = t[0][e] as f64;
        for ti in &t[1..] {
            a += ti[e] as f64;
        }
        let a = div(a);
        let d = t[0][e] as f64 - a;
        let mut q = d * d;
        for ti in &t[1..] {
            let d = ti[e] as f64 - a;
            q += d * d;
        }
        *o = div(q);
    }
}

#[inline(always)]
fn sce_variances_lanes(tv: &[Vec<f32>], mean: &mut [f64], var: &mut [f64]) {
    match tv.len() {
        2 => sce_variances_fixed::<2>(tv, var),
        3 => sce_variances_fixed::<3>(tv, var),
        4 => sce_variances_fixed::<4>(tv, var),
        _ => sce_variances_arrays(tv, mean, var),
    }
}

/// [`sce_variances`] for any number of models, through the arrays `mean` and `var`.
#[inline(always)]
fn sce_variances_arrays(tv: &[Vec<f32>], mean: &mut [f64], var: &mut [f64]) {
    let len = var.len();
    let mf = tv.len() as f64;
    // dividing by a power of two rounds as multiplying by its reciprocal does (both are the
    // exact quotient rounded once), and the product is several times cheaper
    let div = |x: &mut f64| {
        if tv.len().is_power_of_two() {
            *x *= 1.0 / mf
        } else {
            *x /= mf
        }
    };
    // the sums start from the first model instead of zeros: `0.0 + x` is `x` except for
    // `x = -0.0`, which gives +0.0 there, and the mean only enters the variance through
    // `(x - mean)^2`, the same for either zero; `0.0 + d^2` is `d^2` (never -0.0)
    let Some((first, rest)) = tv.split_first() else {
        var.fill(f64::NAN);
        return;
    };
    for (a, x) in mean.iter_mut().zip(&first[..len]) {
        *a = *x as f64;
    }
    for t in rest {
        for (a, x) in mean.iter_mut().zip(&t[..len]) {
            *a += *x as f64;
        }
    }
    mean.iter_mut().for_each(div);
    for ((o, a), x) in var.iter_mut().zip(&*mean).zip(&first[..len]) {
        let d = *x as f64 - a;
        *o = d * d;
    }
    for t in rest {
        for ((o, a), x) in var.iter_mut().zip(&*mean).zip(&t[..len]) {
            let d = *x as f64 - a;
            *o += d * d;
        }
    }
    var.iter_mut().for_each(div);
}

avx2_dispatch! {
    /// SCE's kept entries of a chunk, one bit each (entry `i`: bit `i % 64` of word `i / 64`):
    /// variance keys above `key`, and of those equal to it the first `ties` counting `seen`
    /// equal ones before the chunk (four-lane comparisons with AVX2).
    fn keep_bits(v: &[f64], key: u64, ties: usize, seen: usize) -> Vec<u64> = keep_bits_lanes;
}

#[inline(always)]
fn keep_bits_lanes(v: &[f64], key: u64, ties: usize, mut seen: usize) -> Vec<u64> {
    let key = signed_of_key(key);
    let mut words = vec![0u64; v.len().div_ceil(64)];
    for (w, c) in words.iter_mut().zip(v.chunks(64)) {
        let (mut gt, mut eq) = (0u64, 0u64);
        for (i, x) in c.iter().enumerate() {
            let k = f64_signed_key(*x);
            gt |= ((k > key) as u64) << i;
            eq |= ((k == key) as u64) << i;
        }
        while eq != 0 {
            seen += 1;
            if seen <= ties {
                gt |= eq & eq.wrapping_neg();
            }
            eq &= eq - 1;
        }
        *w = gt;
    }
    words
}

avx2_dispatch! {
    /// `d_i = if bit_i { d_i } else { 0.0 }` (a select: a dropped entry is +0.0 whatever it was),
    /// eight entries a table lookup of lane masks, and-ed with the values' bits.
    fn select_bits(d: &mut [f32], bits: &[u64]) = select_bits_lanes;
}

#[inline(always)]
fn select_bits_lanes(d: &mut [f32], bits: &[u64]) {
    let mut bytes = bits.iter().flat_map(|x| x.to_le_bytes());
    // whole groups of eight: a fixed-width AND the compiler vectorizes
    let mut groups = d.chunks_exact_mut(8);
    for (d, b) in (&mut groups).zip(&mut bytes) {
        let mask = &BYTE_MASKS[b as usize];
        for k in 0..8 {
            d[k] = f32::from_bits(d[k].to_bits() & mask[k]);
        }
    }
    let rest = groups.into_remainder();
    if let Some(b) = bytes.next().filter(|_| !rest.is_empty()) {
        for (x, k) in rest.iter_mut().zip(&BYTE_MASKS[b as usize]) {
            *x = f32::from_bits(x.to_bits() & k);
        }
    }
}

/// Per byte of keep bits, the eight lanes' masks (all ones where the bit is set).
const BYTE_MASKS: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            if (b >> k) & 1 == 1 {
                t[b][k] = u32::MAX;
            }
            k += 1;
        }
        b += 1;
    }
    t
};

avx2_dispatch! {
    /// `sum_e a_e b_e` in f64 (products and sum) over eight lanes, so the loop vectorises: the
    /// reductions of SCE (`a = b`) and of the spherical means.
    fn dot_f64(a: &[f32], b: &[f32]) -> f64 = dot_f64_lanes;
}

#[inline(always)]
fn dot_f64_lanes(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] as f64 * y[k] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

avx2_dispatch! {
    /// `sum_e |a_e|` in f64 over eight lanes (a single running sum is one dependent f64 add an
    /// entry, ~4 cycles each): the L1 norms of DARE's rescale. A fixed order for a given slice, so
    /// the result does not depend on threads.
    fn abs_sum_f64(a: &[f32]) -> f64 = abs_sum_f64_lanes;
}

#[inline(always)]
fn abs_sum_f64_lanes(a: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let ca = a.chunks_exact(8);
    let tail: f64 = ca.remainder().iter().map(|x| x.abs() as f64).sum();
    for x in ca {
        for k in 0..8 {
            lanes[k] += x[k].abs() as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// The key of `x` whose unsigned order is `f64::total_cmp`'s.
#[inline(always)]
fn f64_key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

/// [`f64_key`] as a signed integer (`f64::total_cmp`'s own key: the same order, which AVX2
/// compares in 64-bit lanes natively).
#[inline(always)]
fn f64_signed_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// The [`f64_signed_key`] of the value whose [`f64_key`] is `k`.
#[inline(always)]
fn signed_of_key(k: u64) -> i64 {
    (k ^ (1 << 63)) as i64
}

/// The f64 of a [`f64_key`].
fn f64_of_key(b: u64) -> f64 {
    f64::from_bits(if b >> 63 == 1 { b & !(1 << 63) } else { !b })
}

/// The value of rank `r` in descending `f64::total_cmp` order (`r = 0`: the largest): a
/// parallel radix selection over the 64 bits of the values' sortable keys, 16 at a time,
/// without copying or sorting them.
fn nth_largest(values: &[f64], r: usize) -> f64 {
    const BINS: usize = 1 << 16;
    let key = f64_key;
    // ascending rank of the wanted value; the key's bits above `shift + 16` are fixed to `prefix`
    let mut rank = values.len() - 1 - r;
    let mut prefix = 0u64;
    for shift in [48u32, 32, 16, 0] {
        let high = |k: u64| if shift == 48 { 0 } else { k >> (shift + 16) };
        let want = if shift == 48 {
            0
        } else {
            prefix >> (shift + 16)
        };
        let h = values
            .par_chunks(CHUNK)
            .fold(
                || vec![0u64; BINS],
                |mut h, c| {
                    for v in c {
                        let k = key(*v);
                        if high(k) == want {
                            h[((k >> shift) & 0xffff) as usize] += 1;
                        }
                    }
                    h
                },
            )
            .reduce(
                || vec![0u64; BINS],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let (bin, below) = bin_of_rank(&h, rank);
        rank -= below;
        prefix |= (bin as u64) << shift;
    }
    f64_of_key(prefix)
}

/// SLERP between `v0` (`t = 0`) and `v1` over the flattened tensors, as [`crate::slerp`].
pub fn slerp(t: f32, v0: HostTensor, v1: HostTensor, out: HostOut) -> Result<()> {
    const DOT_THRESHOLD: f32 = 0.9995;
    const EPS: f32 = 1e-8;
    let n = v0.len();
    check_lengths("slerp", n, &[v0, v1], &out)?;
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    let (ss0, ss1, dot) = chunks
        .par_iter()
        .with_min_len(min_len(chunks.len()))
        .map_init(
            || (vec![0.0f32; CHUNK], vec![0.0f32; CHUNK]),
            |(a, b), &ci| {
                let start = ci * CHUNK;
                let len = chunk_len(n, start);
                v0.decode(start, &mut a[..len]);
                v1.decode(start, &mut b[..len]);
                let mut r = (0.0f64, 0.0f64, 0.0f64);
                for (x, y) in a[..len].iter().zip(&b[..len]) {
                    r.0 += (x * x) as f64;
                    r.1 += (y * y) as f64;
                    r.2 += (x * y) as f64;
                }
                r
            },
        )
        .reduce(|| (0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    let (n0, n1) = ((ss0 as f32).sqrt(), (ss1 as f32).sqrt());
    let s0 = if n0 > EPS { n0 } else { 1.0 };
    let s1 = if n1 > EPS { n1 } else { 1.0 };
    let d = dot as f32 / (s0 * s1);
    let (w0, w1) = if d.abs() > DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta0 = d.acos();
        let sin0 = theta0.sin();
        let theta_t = theta0 * t;
        ((theta0 - theta_t).sin() / sin0, theta_t.sin() / sin0)
    };
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        v0.decode(start, &mut s.res[..len]);
        v1.decode(start, &mut s.x[..len]);
        for (r, y) in s.res[..len].iter_mut().zip(&s.x[..len]) {
            *r = *r * w0 + y * w1;
        }
    })
}

/// Which elements share one NuSLERP angle: the whole tensor, each row, or each column.
#[derive(Debug, Clone, Copy)]
enum Groups {
    Whole,
    Rows(usize),
    Columns(usize),
}

impl Groups {
    fn count(self, n: usize) -> usize {
        match self {
            Groups::Whole => 1,
            Groups::Rows(c) => n / c,
            Groups::Columns(c) => c,
        }
    }

    fn of(self, i: usize) -> usize {
        match self {
            Groups::Whole => 0,
            Groups::Rows(c) => i / c,
            Groups::Columns(c) => i % c,
        }
    }
}

/// Decode `v` (minus `base` when given) for elements `start..start + out.len()`.
fn decode_delta(
    v: HostTensor,
    base: Option<HostTensor>,
    start: usize,
    tmp: &mut [f32],
    out: &mut [f32],
) {
    match base {
        Some(b) => {
            b.decode(start, tmp);
            v.decode_minus(start, tmp, out);
        }
        None => v.decode(start, out),
    }
}

/// NuSLERP (as [`crate::nuslerp`]): SLERP of `v0` and `v1` (or of their task vectors when a
/// `base` is given, the base added back) with one angle for the flattened tensor (`flatten`),
/// per column (`row_wise`) or per row of `cols` entries. One reduction pass (f64 sums of
/// squares and dot products per group), the burn path's per-group coefficients, one
/// interpolation pass.
#[allow(clippy::too_many_arguments)]
pub fn nuslerp(
    t: f32,
    base: Option<HostTensor>,
    v0: HostTensor,
    v1: HostTensor,
    row_wise: bool,
    flatten: bool,
    cols: usize,
    out: HostOut,
) -> Result<()> {
    let n = v0.len();
    let mut all = vec![v0, v1];
    all.extend(base);
    check_lengths("nuslerp", n, &all, &out)?;
    let groups = if flatten {
        Groups::Whole
    } else {
        if cols == 0 || !n.is_multiple_of(cols) {
            return Err(KernelError::BadParameter {
                method: "nuslerp",
                what: format!("rows of {cols} do not tile a tensor of {n} values"),
            });
        }
        if row_wise {
            Groups::Columns(cols)
        } else {
            Groups::Rows(cols)
        }
    };
    let g = groups.count(n);
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    // per group: sum a^2, sum b^2, sum a*b
    let sums = chunks
        .par_iter()
        .with_min_len(min_len(chunks.len()))
        .fold(
            || (Scratch::new(2), vec![[0f64; 3]; g]),
            |(mut s, mut acc), &ci| {
                let start = ci * CHUNK;
                let len = chunk_len(n, start);
                decode_pair(v0, v1, base, start, len, &mut s);
                let (a, b) = (&s.tv[0][..len], &s.tv[1][..len]);
                match groups {
                    // a group's run inside the chunk summed in lanes (the order of the f64
                    // additions is fixed by the chunking, as the chunk-wise fold already is)
                    Groups::Whole | Groups::Rows(_) => {
                        let mut i = 0;
                        while i < len {
                            let gi = groups.of(start + i);
                            let end = match groups {
                                Groups::Rows(c) => ((gi + 1) * c - start).min(len),
                                _ => len,
                            };
                            let q = lane_sums(&a[i..end], &b[i..end]);
                            (0..3).for_each(|k| acc[gi][k] += q[k]);
                            i = end;
                        }
                    }
                    Groups::Columns(_) => {
                        for (i, (x, y)) in a.iter().zip(b).enumerate() {
                            let q = &mut acc[groups.of(start + i)];
                            q[0] += (x * x) as f64;
                            q[1] += (y * y) as f64;
                            q[2] += (x * y) as f64;
                        }
                    }
                }
                (s, acc)
            },
        )
        .map(|(_, acc)| acc)
        .reduce(
            || vec![[0f64; 3]; g],
            |mut a, b| {
                for (p, q) in a.iter_mut().zip(b) {
                    (0..3).for_each(|k| p[k] += q[k]);
                }
                a
            },
        );
    let w: Vec<(f32, f32)> = sums
        .iter()
        .map(|q| {
            let na = (q[0] as f32).sqrt().max(1e-7);
            let nb = (q[1] as f32).sqrt().max(1e-7);
            crate::interpolate::nuslerp_coefficients(t, q[2] as f32 / (na * nb))
        })
        .collect();
    for_each_chunk(n, 2, out, |_, start, s| {
        let len = chunk_len(n, start);
        decode_pair(v0, v1, base, start, len, s);
        let Scratch {
            base: tmp, tv, res, ..
        } = s;
        let (a, b, tmp, res) = (&tv[0][..len], &tv[1][..len], &tmp[..len], &mut res[..len]);
        // run by run of one group, its coefficients hoisted
        let mut i = 0;
        while i < len {
            let gi = groups.of(start + i);
            let end = match groups {
                Groups::Rows(c) => ((gi + 1) * c - start).min(len),
                Groups::Whole => len,
                Groups::Columns(_) => i + 1,
            };
            let (w0, w1) = w[gi];
            let r = &mut res[i..end];
            let (a, b, t) = (&a[i..end], &b[i..end], &tmp[i..end]);
            if base.is_some() {
                for (((r, x), y), t) in r.iter_mut().zip(a).zip(b).zip(t) {
                    *r = t + (x * w0 + y * w1);
                }
            } else {
                for ((r, x), y) in r.iter_mut().zip(a).zip(b) {
                    *r = x * w0 + y * w1;
                }
            }
            i = end;
        }
    })
}

/// Sums of `x^2`, `y^2` and `x * y` (each product in f32, as the entry-wise loop forms it,
/// summed in f64) over eight lanes, the lanes added in order at the end.
fn lane_sums(a: &[f32], b: &[f32]) -> [f64; 3] {
    let mut l = [[0f64; 8]; 3];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            l[0][k] += (x[k] * x[k]) as f64;
            l[1][k] += (y[k] * y[k]) as f64;
            l[2][k] += (x[k] * y[k]) as f64;
        }
    }
    for (k, (x, y)) in ra.iter().zip(rb).enumerate() {
        l[0][k] += (x * x) as f64;
        l[1][k] += (y * y) as f64;
        l[2][k] += (x * y) as f64;
    }
    l.map(|lanes| lanes.iter().sum())
}

/// `v0` and `v1` (minus `base` when given) for elements `start..start + len` into the chunk's
/// `s.tv[0]` and `s.tv[1]`, the base decoded once into `s.base` (left there for the caller).
fn decode_pair(
    v0: HostTensor,
    v1: HostTensor,
    base: Option<HostTensor>,
    start: usize,
    len: usize,
    s: &mut Scratch,
) {
    let Scratch { base: tmp, tv, .. } = s;
    let (a, b) = tv.split_at_mut(1);
    let (tmp, a, b) = (&mut tmp[..len], &mut a[0][..len], &mut b[0][..len]);
    match base {
        Some(bs) => {
            bs.decode(start, tmp);
            v0.decode_minus(start, tmp, a);
            v1.decode_minus(start, tmp, b);
        }
        None => {
            v0.decode(start, a);
            v1.decode(start, b);
        }
    }
}

/// One task vector of a fused [`gta`]: the fine-tuned input, its weight and its sparsification
/// parameters (as [`crate::sparsify`] takes them), and its random stream (DARE).
#[derive(Debug, Clone)]
pub struct HostTaskVector<'a> {
    pub input: HostTensor<'a>,
    pub weight: f32,
    pub density: f64,
    pub gamma: f64,
    /// DELLA's spread of keep probabilities around `density`.
    pub epsilon: f64,
    pub rng: MaskRng,
}

/// How one task vector is thinned, resolved for the tensor.
#[derive(Debug, Clone)]
enum Keep {
    All,
    None,
    /// DARE: keep where the draw is below `p`.
    Random(f32),
    /// Keep the entries whose rank by |delta| lies in the window.
    Ranks(RankWindow),
    /// DELLA: keep where the draw is below `p = rank / (cols - 1) * span + low` (rank of
    /// |delta| in its row, computed once per tensor), dividing the kept entries by `p` when
    /// `inverse`.
    Della {
        low: f32,
        span: f32,
        cols: usize,
        inverse: bool,
        /// Rows longer than a chunk are ranked once per tensor; shorter ones chunk by chunk
        /// from the deltas the merge pass decodes anyway (`None`).
        ranks: Option<RankStore>,
        /// This merge's number among all DELLA merges of the process: the key under which a
        /// thread keeps the ranks of a row cut by a chunk's end for the next chunk.
        call: u64,
    },
}

/// The numbers of DELLA merges (see `Keep::Della::call`).
static DELLA_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// DELLA's ranks of one task vector over rows longer than a chunk, element by element (each
/// within its row), 4 bytes an element, computed once per tensor.
#[derive(Debug, Clone)]
struct RankStore(Vec<u32>);

impl RankStore {
    /// The ranks of `input - base` within rows of `cols`, rows ranked in parallel.
    fn new(base: &HostTensor, input: &HostTensor, n: usize, cols: usize) -> RankStore {
        let mut out = vec![0u32; n];
        out.par_chunks_mut(cols).enumerate().for_each_init(
            || (RowRanker::default(), vec![0f32; cols], vec![0f32; cols]),
            |(ranker, b, d), (r, row)| {
                base.decode(r * cols, b);
                input.decode_minus(r * cols, b, d);
                ranker.rank_into(d, row);
            },
        );
        RankStore(out)
    }
}

/// A rank as [`RowRanker::rank_into`] writes it: 16 or 32 bits (DELLA's rank stores) or f32
/// (the burn path's rank tensor).
pub trait Rank: Copy {
    fn of(r: u32) -> Self;
}

impl Rank for u16 {
    #[inline(always)]
    fn of(r: u32) -> u16 {
        r as u16
    }
}

impl Rank for u32 {
    #[inline(always)]
    fn of(r: u32) -> u32 {
        r
    }
}

impl Rank for f32 {
    #[inline(always)]
    fn of(r: u32) -> f32 {
        r as f32
    }
}

/// Ranks entries of a row by |value| (0 = smallest; equal magnitudes by position): what
/// DELLA's keep probabilities are built from, on the host for every device so a merge draws
/// the same mask everywhere. An LSD radix sort of (magnitude bits, position) keys over only
/// the bits in which the row's magnitudes differ, in as few digits of at most 11 bits as cover
/// them, counted in one sweep, then one scatter pass a digit (a pass whose digit is the same
/// everywhere is skipped); the last pass writes each entry's rank instead of moving its key.
/// Keys are 32 bits when the varying bits and the position fit (most rows of bf16 deltas),
/// else 64. Its buffers are kept between rows.
#[derive(Debug, Default, Clone)]
pub struct RowRanker {
    keys: Vec<u64>,
    tmp: Vec<u64>,
    keys32: Vec<u32>,
    tmp32: Vec<u32>,
    ranks: Vec<u32>,
    counts: Vec<u32>,
}

impl RowRanker {
    /// The rank of each entry of `row`.
    pub fn rank(&mut self, row: &[f32]) -> &[u32] {
        let mut ranks = std::mem::take(&mut self.ranks);
        ranks.resize(row.len(), 0);
        self.rank_into(row, &mut ranks);
        self.ranks = ranks;
        &self.ranks
    }

    /// The rank of each entry of `row` into `out` (as long as `row`).
    pub fn rank_into<T: Rank>(&mut self, row: &[f32], out: &mut [T]) {
        let n = row.len();
        assert!(
            u32::try_from(n).is_ok(),
            "a row of {n} entries is too long to rank"
        );
        assert_eq!(out.len(), n, "one rank per entry");
        // only the bits that differ between the row's magnitudes decide the order (deltas of
        // bf16 inputs vary in a dozen or so): they are split into as few digits of at most
        // 11 bits as cover them, least significant first, all counted in one sweep; LSD
        // passes are stable, so equal magnitudes stay in position order
        let (or, and) = row.iter().fold((0u32, u32::MAX), |(o, a), v| {
            let k = key(*v);
            (o | k, a & k)
        });
        let varying = or ^ and;
        if varying == 0 {
            for (i, o) in out.iter_mut().enumerate() {
                *o = T::of(i as u32);
            }
            return;
        }
        let low = varying.trailing_zeros();
        let span = 32 - varying.leading_zeros() - low;
        let passes = span.div_ceil(11);
        let bits = span.div_ceil(passes);
        // bits of a position
        let pbits = u32::BITS - (n as u32 - 1).leading_zeros();
        if span + pbits <= 32 {
            // (varying bits, position) in 32 bits
            let span_mask = if span == 32 {
                u32::MAX
            } else {
                (1u32 << span) - 1
            };
            self.keys32.clear();
            self.keys32.extend(
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (((key(*v) >> low) & span_mask) << pbits) | i as u32),
            );
            self.tmp32.resize(n, 0);
            let shifts = digit_shifts(pbits, bits, passes);
            let pmask = ((1u64 << pbits) - 1) as u32;
            lsd_ranks(
                &mut self.keys32,
                &mut self.tmp32,
                &mut self.counts,
                &shifts[..passes as usize],
                bits,
                |k, s| ((k >> s) & ((1 << bits) - 1)) as usize,
                |k| (k & pmask) as usize,
                out,
            );
        } else {
            self.keys.clear();
            self.keys.extend(
                row.iter()
                    .enumerate()
                    .map(|(i, v)| ((key(*v) as u64) << 32) | i as u64),
            );
            self.tmp.resize(n, 0);
            let shifts = digit_shifts(32 + low, bits, passes);
            lsd_ranks(
                &mut self.keys,
                &mut self.tmp,
                &mut self.counts,
                &shifts[..passes as usize],
                bits,
                |k, s| ((k >> s) & ((1 << bits) - 1)) as usize,
                |k| (k & 0xffff_ffff) as usize,
                out,
            );
        }
    }
}

/// The shifts of `passes` digits of `bits` bits from bit `low` (at most three: no allocation
/// per row).
fn digit_shifts(low: u32, bits: u32, passes: u32) -> [u32; 3] {
    let mut shifts = [0; 3];
    for (p, s) in shifts.iter_mut().enumerate().take(passes as usize) {
        *s = low + p as u32 * bits;
    }
    shifts
}

/// The LSD passes of [`RowRanker`] over `keys` (in position order), one digit of `bits` bits
/// at each of `shifts`: every digit counted in one sweep, a pass whose digit is the same for
/// every key skipped, the last pass writing the ranks (`out[pos(key)]`) instead of moving keys.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lsd_ranks<K: Copy, T: Rank>(
    keys: &mut Vec<K>,
    tmp: &mut Vec<K>,
    counts: &mut Vec<u32>,
    shifts: &[u32],
    bits: u32,
    digit: impl Fn(K, u32) -> usize,
    pos: impl Fn(K) -> usize,
    out: &mut [T],
) {
    let n = keys.len();
    let width = 1usize << bits;
    counts.clear();
    counts.resize(width * shifts.len(), 0);
    // the digits' counts side by side (no per-key loop over the digits)
    match *shifts {
        [s0] => {
            for k in keys.iter() {
                counts[digit(*k, s0)] += 1;
            }
        }
        [s0, s1] => {
            let (c0, c1) = counts.split_at_mut(width);
            for k in keys.iter() {
                c0[digit(*k, s0)] += 1;
                c1[digit(*k, s1)] += 1;
            }
        }
        [s0, s1, s2] => {
            let (c0, rest) = counts.split_at_mut(width);
            let (c1, c2) = rest.split_at_mut(width);
            for k in keys.iter() {
                c0[digit(*k, s0)] += 1;
                c1[digit(*k, s1)] += 1;
                c2[digit(*k, s2)] += 1;
            }
        }
        _ => {
            for k in keys.iter() {
                for (p, &s) in shifts.iter().enumerate() {
                    counts[p * width + digit(*k, s)] += 1;
                }
            }
        }
    }
    // the digits that vary (at most three: a key has 31 bits, a digit up to 11)
    let mut active = [0usize; 3];
    let mut varying = 0;
    for p in 0..shifts.len() {
        if !counts[p * width..(p + 1) * width].contains(&(n as u32)) {
            active[varying] = p;
            varying += 1;
        }
    }
    let active = &active[..varying];
    for (at, &p) in active.iter().enumerate() {
        let c = &mut counts[p * width..(p + 1) * width];
        exclusive_prefix(c);
        let s = shifts[p];
        if at + 1 == active.len() {
            for k in keys.iter() {
                let d = digit(*k, s);
                out[pos(*k)] = T::of(c[d]);
                c[d] += 1;
            }
            return;
        }
        for k in keys.iter() {
            let d = digit(*k, s);
            tmp[c[d] as usize] = *k;
            c[d] += 1;
        }
        std::mem::swap(keys, tmp);
    }
    // no digit varies (cannot happen for a row whose magnitudes differ): position order
    for (r, k) in keys.iter().enumerate() {
        out[pos(*k)] = T::of(r as u32);
    }
}

/// `c[i]` replaced by the sum of `c[..i]` (the buckets' starts of a counting sort): sixteen
/// lanes at a time with AVX-512 where the CPU has it (a running total is a chain of one add
/// per bucket; in-register sums leave one add and a broadcast per sixteen), else scalar.
fn exclusive_prefix(c: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature the function is compiled for
        unsafe { exclusive_prefix_avx512(c) };
        return;
    }
    exclusive_prefix_from(c, 0);
}

/// [`exclusive_prefix`] continuing a running total `sum`.
#[inline(always)]
fn exclusive_prefix_from(c: &mut [u32], mut sum: u32) {
    for x in c.iter_mut() {
        let here = *x;
        *x = sum;
        sum = sum.wrapping_add(here);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exclusive_prefix_avx512(c: &mut [u32]) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_si512();
    let last = _mm512_set1_epi32(15);
    let mut carry = zero;
    let whole = c.len() / 16 * 16;
    for at in (0..whole).step_by(16) {
        // SAFETY: at + 16 <= whole <= c.len()
        let x = unsafe { _mm512_loadu_si512(c.as_ptr().add(at).cast()) };
        // lane i += lane i - k for k = 1, 2, 4, 8 (`alignr` of (x, 0) shifts lanes up)
        let mut v = _mm512_add_epi32(x, _mm512_alignr_epi32::<15>(x, zero));
        v = _mm512_add_epi32(v, _mm512_alignr_epi32::<14>(v, zero));
        v = _mm512_add_epi32(v, _mm512_alignr_epi32::<12>(v, zero));
        v = _mm512_add_epi32(v, _mm512_alignr_epi32::<8>(v, zero));
        let inclusive = _mm512_add_epi32(v, carry);
        // SAFETY: as the load
        unsafe {
            _mm512_storeu_si512(
                c.as_mut_ptr().add(at).cast(),
                _mm512_sub_epi32(inclusive, x),
            )
        };
        carry = _mm512_permutexvar_epi32(last, inclusive);
    }
    let sum = _mm_cvtsi128_si32(_mm512_castsi512_si128(carry)) as u32;
    exclusive_prefix_from(&mut c[whole..], sum);
}

/// A rank window `lo..hi` of the ascending order of |delta| (ties by position), resolved into
/// thresholds: `t_lo` / `t_hi` are the keys (bits of |delta|) at ranks `lo` and `hi - 1`,
/// `less_*` how many keys are below them, `eq_*` how many equal them, and `seen_*[chunk]` how
/// many entries equal to them come before each chunk (only computed when the tie is split).
#[derive(Debug, Clone)]
struct RankWindow {
    lo: usize,
    hi: usize,
    t_lo: u32,
    t_hi: u32,
    less_lo: usize,
    less_hi: usize,
    eq_lo: usize,
    eq_hi: usize,
    seen_lo: Vec<usize>,
    seen_hi: Vec<usize>,
}

impl RankWindow {
    /// Whether chunk `ci` keeps all (`Some(true)`), none (`Some(false)`) or only some (`None`)
    /// of its entries tied at a threshold whose ties take ranks `less..less + eq` in order of
    /// position (`seen`: the tied entries before each chunk, empty when all ties are kept).
    fn ties_kept(&self, ci: usize, seen: &[usize], less: usize, eq: usize) -> Option<bool> {
        if seen.is_empty() {
            // an unsplit threshold's ties hold rank `lo` or `hi - 1`, so all are kept
            return Some(true);
        }
        let from = less + seen[ci];
        let to = less + seen.get(ci + 1).copied().unwrap_or(eq);
        if from >= self.lo && to <= self.hi {
            Some(true)
        } else if to <= self.lo || from >= self.hi || from == to {
            Some(false)
        } else {
            None
        }
    }

    /// `d` with the entries outside the window zeroed (multiplied by 0, as the burn mask
    /// does), into `x`; tie counts continue those of the chunks before `ci`. Branch-free, and
    /// without the sequential tie counter except in the (at most two) chunks that a split
    /// tie is cut in.
    #[inline]
    fn apply(&self, ci: usize, d: &[f32], x: &mut [f32], post: impl Fn(f32) -> f32) {
        let (t_lo, t_hi, lo, hi) = (self.t_lo, self.t_hi, self.lo, self.hi);
        let keep_lo = self.ties_kept(ci, &self.seen_lo, self.less_lo, self.eq_lo);
        let keep_hi = if t_hi == t_lo {
            keep_lo
        } else {
            self.ties_kept(ci, &self.seen_hi, self.less_hi, self.eq_hi)
        };
        if let (Some(keep_lo), Some(keep_hi)) = (keep_lo, keep_hi) {
            for (o, v) in x.iter_mut().zip(d) {
                let k = key(*v);
                let keep =
                    (k > t_lo && k < t_hi) | (keep_lo & (k == t_lo)) | (keep_hi & (k == t_hi));
                *o = post(v * (keep as u32 as f32));
            }
            return;
        }
        let mut seen_lo = self.seen_lo.get(ci).copied().unwrap_or(0);
        let mut seen_hi = self.seen_hi.get(ci).copied().unwrap_or(0);
        for (o, v) in x.iter_mut().zip(d) {
            let k = key(*v);
            let inside = k > t_lo && k < t_hi;
            let e_lo = k == t_lo;
            let e_hi = !e_lo && k == t_hi;
            let r_lo = self.less_lo + seen_lo;
            let r_hi = self.less_hi + seen_hi;
            seen_lo += e_lo as usize;
            seen_hi += e_hi as usize;
            let keep =
                inside | (e_lo & (r_lo >= lo) & (r_lo < hi)) | (e_hi & (r_hi >= lo) & (r_hi < hi));
            *o = post(v * (keep as u32 as f32));
        }
    }
}

/// The sortable key of |x|: its bits without the sign (monotone in `f32::total_cmp` of `|x|`).
#[inline]
fn key(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Decode the chunk of `base` into `s.base` and input `j`'s delta into `s.tv[j]`.
fn deltas(
    base: &HostTensor,
    tvs: &[HostTaskVector],
    which: &[usize],
    start: usize,
    len: usize,
    s: &mut Scratch,
) {
    base.decode(start, &mut s.base[..len]);
    for &j in which {
        tvs[j]
            .input
            .decode_minus(start, &s.base[..len], &mut s.tv[j][..len]);
    }
}

/// Parallel histograms over the deltas of the inputs in `which`: `bucket(j, key)` gives the
/// bin (or none) for input `j`; returns one histogram of `bins` counts per entry of `which`.
fn histograms(
    n: usize,
    base: &HostTensor,
    tvs: &[HostTaskVector],
    which: &[usize],
    bins: usize,
    bucket: impl Fn(usize, usize, u32) -> Option<usize> + Sync,
) -> Vec<Vec<u64>> {
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    let empty = || vec![vec![0u64; bins]; which.len()];
    // each worker counts in u32 (a tensor has fewer than 2^32 entries; half the cache lines
    // of u64 bins), widened when the workers' histograms are added
    chunks
        .par_iter()
        .with_min_len(min_len(chunks.len()))
        .fold(
            || (Scratch::new(tvs.len()), vec![vec![0u32; bins]; which.len()]),
            |(mut s, mut h), &ci| {
                let start = ci * CHUNK;
                let len = chunk_len(n, start);
                deltas(base, tvs, which, start, len, &mut s);
                for (w, &j) in which.iter().enumerate() {
                    for d in &s.tv[j][..len] {
                        if let Some(b) = bucket(w, j, key(*d)) {
                            h[w][b] += 1;
                        }
                    }
                }
                (s, h)
            },
        )
        .map(|(_, h)| {
            h.into_iter()
                .map(|h| h.into_iter().map(u64::from).collect())
                .collect::<Vec<Vec<u64>>>()
        })
        .reduce(empty, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                for (p, q) in x.iter_mut().zip(y) {
                    *p += q;
                }
            }
            a
        })
}

/// The bin holding rank `r` of a histogram and how many entries lie in the bins below.
fn bin_of_rank(h: &[u64], r: usize) -> (usize, usize) {
    let mut below = 0usize;
    for (b, &c) in h.iter().enumerate() {
        if below + c as usize > r {
            return (b, below);
        }
        below += c as usize;
    }
    unreachable!("rank {r} beyond the histogram's {below} entries")
}

/// Resolve the rank windows `(input, lo, hi)` (non-empty, `hi <= n`) into thresholds: two
/// histogram passes (high 16 bits, then low 16 bits inside the chosen buckets), and a counting
/// pass when entries tied with a threshold are split by the window.
fn resolve_windows(
    n: usize,
    base: &HostTensor,
    tvs: &[HostTaskVector],
    windows: &[(usize, usize, usize)],
) -> Vec<RankWindow> {
    let which: Vec<usize> = windows.iter().map(|w| w.0).collect();
    // pass 1: high 16 bits of the key (the sign bit is clear: 32768 bins)
    let h1 = histograms(n, base, tvs, &which, 1 << 15, |_, _, k| {
        Some((k >> 16) as usize)
    });
    let hi_bins: Vec<[(usize, usize); 2]> = windows
        .iter()
        .zip(&h1)
        .map(|(&(_, lo, hi), h)| [bin_of_rank(h, lo), bin_of_rank(h, hi - 1)])
        .collect();
    // pass 2: per chunk, the low 16 bits of the keys that fall in each window's (up to) two
    // buckets (the lower rank's first); their histograms give the exact thresholds and the
    // lists the per-chunk tie counts, without a third pass
    let lows: Vec<Vec<[Vec<u16>; 2]>> = map_chunks(n, tvs.len(), |_, start, len, s| {
        deltas(base, tvs, &which, start, len, s);
        which
            .iter()
            .enumerate()
            .map(|(w, &j)| {
                let [(b_lo, _), (b_hi, _)] = hi_bins[w];
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for d in &s.tv[j][..len] {
                    let k = key(*d);
                    let top = (k >> 16) as usize;
                    if top == b_lo {
                        a.push(k as u16);
                    } else if top == b_hi {
                        b.push(k as u16);
                    }
                }
                [a, b]
            })
            .collect()
    });
    let h2: Vec<Vec<u64>> = (0..which.len())
        .map(|w| {
            let mut h = vec![0u64; 2 << 16];
            for c in &lows {
                for &l in &c[w][0] {
                    h[l as usize] += 1;
                }
                for &l in &c[w][1] {
                    h[(1 << 16) + l as usize] += 1;
                }
            }
            h
        })
        .collect();
    let mut out: Vec<RankWindow> = windows
        .iter()
        .zip(&hi_bins)
        .zip(&h2)
        .map(
            |((&(_, lo, hi), &[(b_lo, below_lo), (b_hi, below_hi)]), h)| {
                let (l_lo, c_lo) = bin_of_rank(&h[..1 << 16], lo - below_lo);
                let t_lo = ((b_lo as u32) << 16) | l_lo as u32;
                let upper = if b_hi == b_lo {
                    &h[..1 << 16]
                } else {
                    &h[1 << 16..]
                };
                let (l_hi, c_hi) = bin_of_rank(upper, hi - 1 - below_hi);
                let t_hi = ((b_hi as u32) << 16) | l_hi as u32;
                RankWindow {
                    lo,
                    hi,
                    t_lo,
                    t_hi,
                    less_lo: below_lo + c_lo,
                    less_hi: below_hi + c_hi,
                    eq_lo: 0,
                    eq_hi: 0,
                    seen_lo: Vec::new(),
                    seen_hi: Vec::new(),
                }
            },
        )
        .collect();
    // Entries equal to a threshold take consecutive ranks by position: when the window keeps
    // only some of them, each chunk needs the count of equal entries before it.
    // how many entries equal threshold `t` (a key in window `wi`'s buckets)
    let eq_count = |wi: usize, t: u32| -> usize {
        let (b, l) = ((t >> 16) as usize, (t & 0xffff) as usize);
        let [(b_lo, _), _] = hi_bins[wi];
        h2[wi][if b == b_lo { l } else { (1 << 16) + l }] as usize
    };
    // entries tied at `t` take ranks less..less + e: all kept or all dropped unless the
    // window cuts that range
    let split = |wi: usize, w: &RankWindow, t: u32, less: usize| -> bool {
        let e = eq_count(wi, t);
        let kept = (less..less + e)
            .filter(|r| (w.lo..w.hi).contains(r))
            .count();
        kept != 0 && kept != e
    };
    let needs: Vec<(bool, bool)> = out
        .iter()
        .enumerate()
        .map(|(wi, w)| {
            (
                split(wi, w, w.t_lo, w.less_lo),
                w.t_hi != w.t_lo && split(wi, w, w.t_hi, w.less_hi),
            )
        })
        .collect();
    for (wi, win) in out.iter_mut().enumerate() {
        win.eq_lo = eq_count(wi, win.t_lo);
        win.eq_hi = eq_count(wi, win.t_hi);
        let (split_lo, split_hi) = needs[wi];
        if !(split_lo || split_hi) {
            continue;
        }
        let [(b_lo, _), _] = hi_bins[wi];
        // the list a threshold's bucket went to, and its low bits
        let at = |t: u32| (usize::from((t >> 16) as usize != b_lo), t as u16);
        let ((list_lo, low_lo), (list_hi, low_hi)) = (at(win.t_lo), at(win.t_hi));
        let (mut a, mut b) = (0, 0);
        for c in &lows {
            win.seen_lo.push(a);
            win.seen_hi.push(b);
            a += c[wi][list_lo].iter().filter(|&&l| l == low_lo).count();
            if win.t_hi != win.t_lo {
                b += c[wi][list_hi].iter().filter(|&&l| l == low_hi).count();
            }
        }
    }
    out
}

/// Generalized task arithmetic fused over chunks: `base + lambda * combine(weight_i *
/// sparsify(input_i - base))`, with the semantics of [`crate::sparsify`] and
/// [`crate::generalized_task_arithmetic`]. `cols` is the row length of the tensor's 2-D view
/// (`crate::view_shape`), which only DELLA's row ranks read.
#[allow(clippy::too_many_arguments)]
pub fn gta(
    base: HostTensor,
    tvs: &[HostTaskVector],
    method: Sparsify,
    rescale: Rescale,
    consensus: Consensus,
    normalize: bool,
    lambda: f32,
    cols: usize,
    out: HostOut,
) -> Result<()> {
    let n = base.len();
    let mut all = vec![base];
    all.extend(tvs.iter().map(|t| t.input));
    check_lengths("task_arithmetic", n, &all, &out)?;
    if method == Sparsify::Della && (cols == 0 || !n.is_multiple_of(cols)) {
        return Err(KernelError::BadParameter {
            method: "della",
            what: format!("rows of {cols} do not tile a tensor of {n} values"),
        });
    }
    // How each task vector is thinned (the checks of `sparsify`).
    let mut keeps = Vec::with_capacity(tvs.len());
    let mut windows = Vec::new();
    for (j, tv) in tvs.iter().enumerate() {
        let density = tv.density;
        let keep = if method == Sparsify::None || density >= 1.0 || n == 0 {
            Keep::All
        } else if method == Sparsify::Della && (density.is_nan() || density <= 0.0) {
            Keep::None
        } else if density.is_nan() || density <= 0.0 {
            return Err(KernelError::BadParameter {
                method: "sparsify",
                what: format!("density {density} must be in (0, 1]"),
            });
        } else {
            match method {
                Sparsify::Magnitude => {
                    let k = kept_count(density, n).max(1);
                    windows.push((j, n - k, n));
                    Keep::None // replaced by the window below
                }
                Sparsify::Random => Keep::Random(density as f32),
                Sparsify::MagnitudeOutliers => {
                    let gamma = tv.gamma;
                    if !(0.0..1.0).contains(&gamma) {
                        return Err(KernelError::BadParameter {
                            method: "breadcrumbs",
                            what: format!("gamma {gamma} must be in [0, 1)"),
                        });
                    }
                    let target = kept_count(density, n);
                    let n_top = kept_count(gamma, n);
                    let n_bot = n.saturating_sub(target + n_top);
                    let (lo, hi) = (n_bot, (n_bot + target).min(n));
                    if lo < hi {
                        windows.push((j, lo, hi));
                    }
                    Keep::None
                }
                Sparsify::Della => {
                    let epsilon = tv.epsilon;
                    if !(density - epsilon > 0.0 && density + epsilon < 1.0) {
                        return Err(KernelError::BadParameter {
                            method: "della",
                            what: format!(
                                "density - epsilon and density + epsilon must lie in (0, 1); got density {density}, epsilon {epsilon}"
                            ),
                        });
                    }
                    Keep::Della {
                        low: (density - epsilon) as f32,
                        span: (2.0 * epsilon) as f32,
                        cols,
                        inverse: rescale == Rescale::InverseDensity,
                        ranks: (cols > CHUNK).then(|| RankStore::new(&base, &tv.input, n, cols)),
                        call: DELLA_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    }
                }
                Sparsify::None => unreachable!(),
            }
        };
        keeps.push(keep);
    }
    let resolved = if windows.is_empty() {
        Vec::new()
    } else {
        sampled::resolve_windows_sampled(n, &base, tvs, &windows)
            .unwrap_or_else(|| resolve_windows(n, &base, tvs, &windows))
    };
    for (&(j, _, _), w) in windows.iter().zip(resolved) {
        keeps[j] = Keep::Ranks(w);
    }
    // The per-tensor factor of each task vector's rescale: 1/density or the L1 ratio.
    let thinned = |k: &Keep| !matches!(k, Keep::All);
    let mut factors: Vec<Factor> = keeps
        .iter()
        .zip(tvs)
        .map(|(k, tv)| match (rescale, k) {
            (_, Keep::All) | (Rescale::None, _) | (Rescale::L1, _) => Factor::One,
            // DELLA divides each kept entry by its own probability (in the mask)
            (_, Keep::Della { .. }) => Factor::One,
            (Rescale::InverseDensity, _) => Factor::Div(tv.density as f32),
        })
        .collect();
    let l1: Vec<usize> = (0..tvs.len())
        .filter(|&j| rescale == Rescale::L1 && thinned(&keeps[j]))
        .collect();
    // DARE's masks as drawn by the L1 pass, one bit an entry, per chunk and input (the merge
    // pass reads them instead of drawing the stream again)
    let mut drawn: Vec<ChunkMasks> = Vec::new();
    if !l1.is_empty() {
        let per_chunk: Vec<(Vec<(f64, f64)>, ChunkMasks)> =
            map_chunks(n, tvs.len(), |ci, start, len, s| {
                deltas(&base, tvs, &l1, start, len, s);
                let mut bits = vec![None; tvs.len()];
                let sums = l1
                    .iter()
                    .map(|&j| {
                        mask_chunk(&keeps[j], &base, &tvs[j], ci, start, len, s, j, |x| x);
                        match keeps[j] {
                            Keep::Random(p) => bits[j] = Some(mask_bits(&s.u[..len], p)),
                            // DELLA without the inverse: kept where `dropped < 0.5`
                            Keep::Della { inverse: false, .. } => {
                                bits[j] = Some(mask_bits(&s.div[..len], 0.5))
                            }
                            _ => {}
                        }
                        let before = abs_sum_f64(&s.tv[j][..len]);
                        let after = abs_sum_f64(&s.x[..len]);
                        (before, after)
                    })
                    .collect::<Vec<_>>();
                (sums, bits)
            });
        // summed in chunk order, so the factor does not depend on the thread schedule
        let mut sums = vec![(0.0f64, 0.0f64); l1.len()];
        for (chunk, bits) in per_chunk {
            for (acc, (before, after)) in sums.iter_mut().zip(chunk) {
                acc.0 += before;
                acc.1 += after;
            }
            drawn.push(bits);
        }
        for (&j, (before, after)) in l1.iter().zip(sums) {
            let (before, after) = (before as f32, after as f32);
            factors[j] = if before < 1e-7 || after < 1e-7 {
                Factor::One
            } else {
                Factor::Mul(before / after)
            };
        }
    }
    let weight_sum = {
        let mut div: f32 = tvs.iter().map(|tv| tv.weight).sum();
        if div.abs() < 1e-8 {
            div = 1.0;
        }
        div
    };
    let every: Vec<usize> = (0..tvs.len()).collect();
    for_each_chunk(n, tvs.len(), out, |ci, start, s| {
        let len = chunk_len(n, start);
        deltas(&base, tvs, &every, start, len, s);
        // thin, rescale and weight each task vector in place
        for (j, tv) in tvs.iter().enumerate() {
            if let Some(Some(bits)) = drawn.get(ci).map(|c| &c[j]) {
                // the mask and the scaling in one sweep: ((d * bit) * m) * w, as the two
                // passes below compute it (m = 1 for `Factor::One`: multiplying by 1 is exact)
                let m = match factors[j] {
                    Factor::Mul(m) => m,
                    Factor::One => 1.0,
                    Factor::Div(_) => unreachable!("L1-drawn masks are rescaled by Mul or One"),
                };
                apply_bits_scaled(&mut s.tv[j][..len], bits, m, tv.weight);
                continue;
            }
            // the mask, the rescale and the weight in one sweep: `(masked * m) * w`,
            // `(masked / f) * w` or `masked * w`, the products the separate passes formed
            let w = tv.weight;
            match factors[j] {
                Factor::Mul(m) => {
                    mask_chunk(&keeps[j], &base, tv, ci, start, len, s, j, |x| (x * m) * w)
                }
                Factor::Div(f) => {
                    mask_chunk(&keeps[j], &base, tv, ci, start, len, s, j, |x| (x / f) * w)
                }
                Factor::One => mask_chunk(&keeps[j], &base, tv, ci, start, len, s, j, |x| x * w),
            }
            std::mem::swap(&mut s.tv[j], &mut s.x);
        }
        combine(s, tvs, len, consensus, normalize, weight_sum, lambda);
    })
}

/// How a thinned task vector is scaled back up (see [`Rescale`]).
#[derive(Debug, Clone, Copy)]
enum Factor {
    One,
    Div(f32),
    Mul(f32),
}

/// One chunk's DARE masks as drawn by the L1 pass: per task vector, its bits (`None` for a
/// task vector that is not randomly thinned).
type ChunkMasks = Vec<Option<Vec<u64>>>;

/// DARE's keep decisions `u < p` of a chunk's draws, one bit an entry (entry `i` is bit
/// `i % 64` of word `i / 64`): eight comparisons and one move-mask an instruction each with
/// AVX2, else [`mask_bits_scalar`].
fn mask_bits(u: &[f32], p: f32) -> Vec<u64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the feature the function is compiled for
        return unsafe { mask_bits_avx2(u, p) };
    }
    mask_bits_scalar(u, p)
}

/// [`mask_bits`] with AVX2: `u < p` as an ordered comparison (NaN is not below `p`, as
/// Rust's `<`), the eight lanes' signs gathered into one byte of the word.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mask_bits_avx2(u: &[f32], p: f32) -> Vec<u64> {
    use std::arch::x86_64::*;
    let mut out = vec![0u64; u.len().div_ceil(64)];
    let pv = _mm256_set1_ps(p);
    let eights = u.chunks_exact(8);
    let rest = eights.remainder();
    for (i, c) in eights.enumerate() {
        // SAFETY: `c` holds eight f32 (an unaligned load of 32 bytes)
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(v, pv)) as u32 as u64;
        out[i / 8] |= m << ((i % 8) * 8);
    }
    let done = u.len() - rest.len();
    for (k, x) in rest.iter().enumerate() {
        let i = done + k;
        out[i / 64] |= u64::from(*x < p) << (i % 64);
    }
    out
}

/// [`mask_bits`] eight entries a byte, without SIMD intrinsics.
fn mask_bits_scalar(u: &[f32], p: f32) -> Vec<u64> {
    let byte = |c: &[f32; 8]| -> u8 {
        let mut b = 0u8;
        for (k, u) in c.iter().enumerate() {
            b |= u8::from(*u < p) << k;
        }
        b
    };
    let mut bytes: Vec<u8> = Vec::with_capacity(u.len().div_ceil(64) * 8);
    let eights = u.chunks_exact(8);
    let rest = eights.remainder();
    bytes.extend(eights.map(|c| byte(c.try_into().expect("eight"))));
    if !rest.is_empty() {
        // padded with p itself, which is not below p: the padding's bits are 0
        let mut last = [p; 8];
        last[..rest.len()].copy_from_slice(rest);
        bytes.push(byte(&last));
    }
    bytes.resize(u.len().div_ceil(64) * 8, 0);
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")))
        .collect()
}

/// For each byte of a mask, its eight bits as factors 0.0 / 1.0.
const BYTE_FACTORS: [[f32; 8]; 256] = {
    let mut t = [[0f32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            if (b >> k) & 1 == 1 {
                t[b][k] = 1.0;
            }
            k += 1;
        }
        b += 1;
    }
    t
};

/// `d_i = ((d_i * bit_i) * m) * w` in place, bits as [`mask_bits`] packs them, eight entries
/// a table lookup of 0.0 / 1.0 factors: DARE's thinning (the same products and signed zeros as
/// multiplying by each bit as f32) and the rescale-and-weight of [`gta`] in one sweep.
fn apply_bits_scaled(d: &mut [f32], bits: &[u64], m: f32, w: f32) {
    let bytes = bits.iter().flat_map(|x| x.to_le_bytes());
    for (d, b) in d.chunks_mut(8).zip(bytes) {
        let f = &BYTE_FACTORS[b as usize];
        match <&mut [f32; 8]>::try_from(&mut *d) {
            Ok(d) => {
                for k in 0..8 {
                    d[k] = ((d[k] * f[k]) * m) * w;
                }
            }
            Err(_) => {
                for (d, f) in d.iter_mut().zip(f) {
                    *d = ((*d * f) * m) * w;
                }
            }
        }
    }
}

/// Input `j`'s thinned delta of this chunk into `s.x` (from `s.tv[j]`), each entry passed
/// through `post` (the rescale and weight of the merge pass; identity for the L1 sums).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mask_chunk(
    keep: &Keep,
    base: &HostTensor,
    tv: &HostTaskVector,
    ci: usize,
    start: usize,
    len: usize,
    s: &mut Scratch,
    j: usize,
    post: impl Fn(f32) -> f32,
) {
    if let Keep::Della {
        low,
        span,
        cols,
        inverse,
        ref ranks,
        call,
    } = *keep
    {
        let rule = DellaRule {
            low,
            span,
            cols,
            inverse,
        };
        della_chunk(&rule, ranks, call, base, tv, start, len, s, j, post);
        return;
    }
    let (d, x) = (&s.tv[j][..len], &mut s.x[..len]);
    match keep {
        Keep::All => {
            for (o, d) in x.iter_mut().zip(d) {
                *o = post(*d);
            }
        }
        Keep::None => x.fill(post(0.0)),
        Keep::Random(p) => {
            tv.rng.uniform_at(start as u64, &mut s.u[..len]);
            for ((o, d), u) in x.iter_mut().zip(d).zip(&s.u[..len]) {
                *o = post(d * ((*u < *p) as u32 as f32));
            }
        }
        Keep::Ranks(w) => w.apply(ci, d, x, post),
        Keep::Della { .. } => unreachable!("handled above"),
    }
}

/// DELLA's mask of one chunk of input `j`'s delta (`s.tv[j]`) into `s.x`: each entry's rank
/// in its row gives its keep probability `p` (the f32 operation order of
/// [`crate::sparsify`]), the draw at its position decides, and with `inverse` a kept entry is
/// divided by `p`.
#[allow(clippy::too_many_arguments)]
fn della_chunk(
    rule: &DellaRule,
    ranks: &Option<RankStore>,
    call: u64,
    base: &HostTensor,
    tv: &HostTaskVector,
    start: usize,
    len: usize,
    s: &mut Scratch,
    j: usize,
    post: impl Fn(f32) -> f32,
) {
    tv.rng.uniform_at(start as u64, &mut s.u[..len]);
    let cols = rule.cols;
    let apply = |r: &[u32], s: &mut Scratch| {
        let (d, u, x, dropped) = (
            &s.tv[j][..len],
            &s.u[..len],
            &mut s.x[..len],
            &mut s.div[..len],
        );
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature the function is compiled for
            unsafe { della_apply_avx2(rule, r, d, u, x, dropped, &post) };
            return;
        }
        della_apply(rule, r, d, u, x, dropped, &post);
    };
    if let Some(RankStore(r)) = ranks {
        apply(&r[start..start + len], s);
        return;
    }
    // the chunk's rows ranked from its deltas; a row cut by the chunk's edge is decoded whole
    // and ranked whole (the same deltas, so the same ranks as a whole-tensor pass), and its
    // ranks are kept for the next chunk, which this thread usually takes next (rows that do
    // not divide the chunk, e.g. 14336-entry rows of a 7B model's down projection, would
    // otherwise be ranked twice at every chunk edge)
    DELLA_ROWS.with(|cell| {
        let rows = &mut *cell.borrow_mut();
        let DellaRows {
            ranker,
            ranks,
            base_row,
            row,
            cut,
        } = rows;
        if cut.len() <= j {
            cut.resize_with(j + 1, Default::default);
        }
        ranks.resize(CHUNK, 0);
        let d = &s.tv[j][..len];
        let mut i = 0;
        while i < len {
            let at = start + i;
            let row_start = at / cols * cols;
            let end = (row_start + cols - start).min(len);
            if row_start >= start && end - i == cols {
                ranker.rank_into(&d[i..end], &mut ranks[i..end]);
            } else {
                let kept = &mut cut[j];
                if kept.key != Some((call, row_start)) {
                    base_row.resize(cols, 0.0);
                    row.resize(cols, 0.0);
                    kept.ranks.resize(cols, 0);
                    base.decode(row_start, base_row);
                    tv.input.decode_minus(row_start, base_row, row);
                    ranker.rank_into(row, &mut kept.ranks);
                    kept.key = Some((call, row_start));
                } else {
                    #[cfg(test)]
                    DELLA_CUT_REUSED.with(|c| c.set(c.get() + 1));
                }
                let from = at - row_start;
                ranks[i..end].copy_from_slice(&kept.ranks[from..from + end - i]);
            }
            i = end;
        }
        apply(&ranks[..len], s);
    });
}

/// DELLA's keep rule of one tensor: `p = rank / (cols - 1) * span + low` (the f32
/// operations of [`crate::sparsify`]), kept where the draw is below `p`, divided by `p` with
/// `inverse`.
struct DellaRule {
    low: f32,
    span: f32,
    cols: usize,
    inverse: bool,
}

/// DELLA's mask of a chunk from its ranks `r`, deltas `d` and draws `u` into `x` (through
/// `post`); without the inverse, which entries were dropped also goes to `dropped` (1.0 /
/// 0.0), from which the L1 pass packs keep bits for the merge pass (no second ranking or draw).
#[inline(always)]
fn della_apply<P: Fn(f32) -> f32>(
    rule: &DellaRule,
    r: &[u32],
    d: &[f32],
    u: &[f32],
    x: &mut [f32],
    dropped: &mut [f32],
    post: &P,
) {
    let &DellaRule {
        low,
        span,
        cols,
        inverse,
    } = rule;
    let denom = cols.saturating_sub(1) as f32;
    let p_of = |rank: u32| -> f32 {
        let rank = rank as f32;
        let norm = if cols > 1 { rank / denom } else { rank + 0.5 };
        norm * span + low
    };
    if inverse {
        for (((o, d), u), r) in x.iter_mut().zip(d).zip(u).zip(r) {
            let p = p_of(*r);
            *o = post((d * ((*u < p) as u32 as f32)) / p);
        }
    } else {
        for ((((o, g), d), u), r) in x.iter_mut().zip(dropped).zip(d).zip(u).zip(r) {
            let keep = *u < p_of(*r);
            *o = post(d * (keep as u32 as f32));
            *g = (!keep) as u32 as f32;
        }
    }
}

/// [`della_apply`] eight entries an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn della_apply_avx2<P: Fn(f32) -> f32>(
    rule: &DellaRule,
    r: &[u32],
    d: &[f32],
    u: &[f32],
    x: &mut [f32],
    dropped: &mut [f32],
    post: &P,
) {
    della_apply(rule, r, d, u, x, dropped, post)
}

/// The per-thread buffers of DELLA's chunk-by-chunk row ranks.
#[derive(Default)]
struct DellaRows {
    ranker: RowRanker,
    ranks: Vec<u32>,
    base_row: Vec<f32>,
    row: Vec<f32>,
    /// Per task vector, the ranks of the last row a chunk's edge cut.
    cut: Vec<CutRow>,
}

/// The ranks of a row cut by a chunk's edge, under (DELLA merge number, first entry).
#[derive(Default)]
struct CutRow {
    key: Option<(u64, usize)>,
    ranks: Vec<u32>,
}

#[cfg(test)]
thread_local! {
    /// Cut rows whose ranks a later chunk on this thread reused (for the tests).
    static DELLA_CUT_REUSED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

thread_local! {
    static DELLA_ROWS: std::cell::RefCell<DellaRows> = std::cell::RefCell::new(DellaRows::default());
}

/// The settings of [`combine`].
struct Combine {
    consensus: Consensus,
    normalize: bool,
    weight_sum: f32,
    lambda: f32,
}

/// [`combine`] of `N` task vectors (`rows`, weights `w`) entry by entry: per entry the vote,
/// the kept sum and the kept weights over the `N` values, then the normalisation and the base,
/// each as [`combine`]'s loops compute it (the same f32 operations in the same order).
// entry `i` of every row: an index over the entries vectorises across the N rows
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn combine_fixed<const N: usize>(
    job: &Combine,
    rows: [&[f32]; N],
    w: [f32; N],
    base: &[f32],
    res: &mut [f32],
) {
    #[inline(always)]
    fn sign(v: f32) -> f32 {
        ((v > 0.0) as i32 - (v < 0.0) as i32) as f32
    }
    let len = res.len();
    assert!(base.len() == len && rows.iter().all(|r| r.len() == len));
    let finish = |m: f32, b: f32| b + if job.lambda != 1.0 { m * job.lambda } else { m };
    match job.consensus {
        Consensus::None => {
            for i in 0..len {
                let mut m = rows[0][i];
                for r in &rows[1..] {
                    m += r[i];
                }
                if job.normalize {
                    m /= job.weight_sum;
                }
                res[i] = finish(m, base[i]);
            }
        }
        Consensus::Sum | Consensus::Count => {
            let count = job.consensus == Consensus::Count;
            for i in 0..len {
                let vote = |v: f32| if count { sign(v) } else { v };
                let mut a = vote(rows[0][i]);
                for r in &rows[1..] {
                    a += vote(r[i]);
                }
                let a = if a >= 0.0 { 1.0 } else { -1.0 };
                let (mut m, mut d) = (0.0f32, 0.0f32);
                for (r, w) in rows.iter().zip(w) {
                    let v = r[i];
                    let keep = (sign(v) == a) as u32 as f32;
                    m += v * keep;
                    d += keep * w;
                }
                if job.normalize {
                    m /= if d == 0.0 { 1.0 } else { d };
                }
                res[i] = finish(m, base[i]);
            }
        }
    }
}

/// [`combine_fixed`] eight entries an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn combine_fixed_avx2<const N: usize>(
    job: &Combine,
    rows: [&[f32]; N],
    w: [f32; N],
    base: &[f32],
    res: &mut [f32],
) {
    combine_fixed(job, rows, w, base, res)
}

/// Sign election and the (normalised) sum of the weighted task vectors in `s.tv`, added to
/// `s.base`, into `s.res` — the operation order of [`crate::generalized_task_arithmetic`],
/// computed column-wise over the chunk (one loop per task vector).
fn combine(
    s: &mut Scratch,
    tvs: &[HostTaskVector],
    len: usize,
    consensus: Consensus,
    normalize: bool,
    weight_sum: f32,
    lambda: f32,
) {
    let Scratch { base, res, tv, .. } = s;
    let (base, res) = (&base[..len], &mut res[..len]);
    // two to four task vectors (the usual merges): element by element across them, in one
    // vectorised sweep, with the same operations in the same order as the loops below
    macro_rules! fixed {
        ($n:literal) => {{
            let rows: [&[f32]; $n] = std::array::from_fn(|t| &tv[t][..len]);
            let w: [f32; $n] = std::array::from_fn(|t| tvs[t].weight);
            let job = Combine {
                consensus,
                normalize,
                weight_sum,
                lambda,
            };
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the feature the function is compiled for
                unsafe { combine_fixed_avx2(&job, rows, w, base, res) };
                return;
            }
            combine_fixed(&job, rows, w, base, res);
            return;
        }};
    }
    match tvs.len() {
        2 => fixed!(2),
        3 => fixed!(3),
        4 => fixed!(4),
        _ => {}
    }
    combine_columns(s, tvs, len, consensus, normalize, weight_sum, lambda);
}

/// [`combine`] one loop per task vector over the chunk (any number of task vectors).
fn combine_columns(
    s: &mut Scratch,
    tvs: &[HostTaskVector],
    len: usize,
    consensus: Consensus,
    normalize: bool,
    weight_sum: f32,
    lambda: f32,
) {
    #[inline]
    fn sign(v: f32) -> f32 {
        ((v > 0.0) as i32 - (v < 0.0) as i32) as f32
    }
    let Scratch {
        base,
        x,
        res,
        tv,
        u,
        div,
        ..
    } = s;
    let (base, res) = (&base[..len], &mut res[..len]);
    if tvs.is_empty() {
        res.copy_from_slice(base);
        return;
    }
    let mixed = &mut x[..len];
    match consensus {
        Consensus::None => {
            mixed.copy_from_slice(&tv[0][..len]);
            for t in &tv[1..] {
                for (m, v) in mixed.iter_mut().zip(&t[..len]) {
                    *m += v;
                }
            }
            if normalize {
                for m in mixed.iter_mut() {
                    *m /= weight_sum;
                }
            }
        }
        Consensus::Sum | Consensus::Count => {
            let majority = &mut u[..len];
            let vote = |v: f32| {
                if consensus == Consensus::Sum {
                    v
                } else {
                    sign(v)
                }
            };
            for (a, v) in majority.iter_mut().zip(&tv[0][..len]) {
                *a = vote(*v);
            }
            for t in &tv[1..] {
                for (a, v) in majority.iter_mut().zip(&t[..len]) {
                    *a += vote(*v);
                }
            }
            for a in majority.iter_mut() {
                *a = if *a >= 0.0 { 1.0 } else { -1.0 };
            }
            let div = &mut div[..len];
            mixed.fill(0.0);
            div.fill(0.0);
            for (t, h) in tv.iter().zip(tvs) {
                let w = h.weight;
                for (((m, d), v), a) in mixed
                    .iter_mut()
                    .zip(div.iter_mut())
                    .zip(&t[..len])
                    .zip(&*majority)
                {
                    let keep = (sign(*v) == *a) as u32 as f32;
                    *m += v * keep;
                    *d += keep * w;
                }
            }
            if normalize {
                for (m, d) in mixed.iter_mut().zip(&*div) {
                    *m /= if *d == 0.0 { 1.0 } else { *d };
                }
            }
        }
    }
    for ((r, b), m) in res.iter_mut().zip(base).zip(&*mixed) {
        *r = b + if lambda != 1.0 { m * lambda } else { *m };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest |a - b| entry by entry.
    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// The one-loop variances of 2-4 models are the array sweeps' bits (signed zeros, equal
    /// and opposite deltas, large and tiny values).
    #[test]
    fn fixed_count_variances_equal_the_array_sweeps_bit_for_bit() {
        let len = 999;
        let value = |m: usize, i: usize| -> f32 {
            match (i + m) % 6 {
                0 => 0.0,
                1 => -0.0,
                2 => (i as f32 * 0.37).sin() * 1e-3,
                3 => -((i as f32) * 1.3).cos() * 7.0,
                4 => 3.0e30 * (m as f32 + 1.0),
                _ => 1e-30 / (i as f32 + 1.0),
            }
        };
        for m in 2..=4 {
            let tv: Vec<Vec<f32>> = (0..m)
                .map(|k| (0..len).map(|i| value(k, i)).collect())
                .collect();
            let (mut mean, mut want, mut got) = (vec![0f64; len], vec![0f64; len], vec![0f64; len]);
            sce_variances_arrays(&tv, &mut mean, &mut want);
            sce_variances(&tv, &mut mean, &mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{m} models, entry {i}");
            }
        }
    }

    /// SCE's one-loop combine of 2-4 models gives the array sweeps' bits (zeros, signed
    /// zeros, cancelling signs, a zero weight).
    #[test]
    fn fixed_count_sce_combine_equals_the_array_sweeps_bit_for_bit() {
        let len = 777;
        let value = |m: usize, i: usize| -> f32 {
            match (i * 3 + m) % 7 {
                0 => 0.0,
                1 => -0.0,
                2 => (i as f32 * 0.11).sin() * 1e-2,
                3 => -(i as f32 * 0.7).cos(),
                4 => 0.25,
                5 => -0.25,
                _ => 1e-20 * i as f32,
            }
        };
        for m in 2..=4 {
            let tv: Vec<Vec<f32>> = (0..m)
                .map(|k| (0..len).map(|i| value(k, i)).collect())
                .collect();
            let weights: Vec<f32> = (0..m).map(|k| [0.7, 0.0, 1.3, 0.2][k]).collect();
            let base: Vec<f32> = (0..len).map(|i| i as f32 * 1e-3 - 0.3).collect();
            let (mut sum, mut den) = (vec![0f32; len], vec![0f32; len]);
            let (mut want, mut got) = (vec![0f32; len], vec![0f32; len]);
            sce_combine_arrays(&tv, &weights, &base, &mut sum, &mut want, &mut den);
            sce_combine(&tv, &weights, &base, &mut sum, &mut got, &mut den);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{m} models, entry {i}");
            }
        }
    }

    #[test]
    fn the_first_non_finite_value_is_found_anywhere() {
        let mut v = vec![1.5f32; 1000];
        assert_eq!(first_non_finite(&v), None);
        for (at, bad) in [
            (0, f32::NAN),
            (255, f32::INFINITY),
            (256, f32::NEG_INFINITY),
            (999, -f32::NAN),
        ] {
            let mut w = v.clone();
            w[at] = bad;
            let got = first_non_finite(&w).expect("found");
            assert_eq!(got.to_bits(), bad.to_bits(), "at {at}");
        }
        // the first of two, in another block than the second
        v[700] = f32::INFINITY;
        v[300] = f32::NAN;
        assert!(first_non_finite(&v).unwrap().is_nan());
        // the largest finite values are finite
        assert_eq!(first_non_finite(&[f32::MAX, f32::MIN, -0.0, 1e-45]), None);
    }

    #[test]
    fn selected_bits_zero_exactly_the_unset_entries() {
        for len in [1usize, 7, 8, 9, 64, 65, 130] {
            let bits: Vec<u64> = (0..len.div_ceil(64))
                .map(|w| 0x9e37_79b9_7f4a_7c15u64.rotate_left(w as u32 * 7))
                .collect();
            let mut d: Vec<f32> = (0..len).map(|i| i as f32 + 0.5).collect();
            select_bits(&mut d, &bits);
            for (i, x) in d.iter().enumerate() {
                let keep = (bits[i / 64] >> (i % 64)) & 1 == 1;
                assert_eq!(
                    *x,
                    if keep { i as f32 + 0.5 } else { 0.0 },
                    "len {len}, entry {i}"
                );
            }
        }
    }

    /// The entry-by-entry combine of 2-4 task vectors gives the column loops' bits, for every
    /// consensus, with and without normalisation and lambda, on values with zeros, signed
    /// zeros, opposite signs that cancel and repeated magnitudes.
    #[test]
    fn fixed_combine_equals_the_column_loops_bit_for_bit() {
        let len = 1000;
        let u = MaskRng::new(3, "combine", 0).uniform(5 * len);
        let value = |i: usize| -> f32 {
            match i % 7 {
                0 => 0.0,
                1 => -0.0,
                2 => 0.25,
                3 => -0.25,
                _ => (u[i] - 0.5) * 3.0,
            }
        };
        for n in 2..=4usize {
            let tvs: Vec<HostTaskVector> = (0..n)
                .map(|t| HostTaskVector {
                    input: HostTensor::F32(&[]),
                    weight: [1.0, 0.5, 0.3, 2.0][t],
                    density: 1.0,
                    gamma: 0.0,
                    epsilon: 0.0,
                    rng: MaskRng::new(0, "t", t),
                })
                .collect();
            let mut s = Scratch::with_len(n, len);
            for (t, row) in s.tv.iter_mut().enumerate() {
                for (i, v) in row.iter_mut().enumerate() {
                    *v = value((t + 1) * len + i);
                }
            }
            for (i, b) in s.base.iter_mut().enumerate() {
                *b = u[i];
            }
            for consensus in [Consensus::None, Consensus::Sum, Consensus::Count] {
                for normalize in [false, true] {
                    for lambda in [1.0f32, 0.7] {
                        let weight_sum = tvs.iter().map(|t| t.weight).sum();
                        combine(&mut s, &tvs, len, consensus, normalize, weight_sum, lambda);
                        let fixed: Vec<u32> = s.res.iter().map(|v| v.to_bits()).collect();
                        combine_columns(
                            &mut s, &tvs, len, consensus, normalize, weight_sum, lambda,
                        );
                        let columns: Vec<u32> = s.res.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(fixed, columns, "{n} {consensus:?} {normalize} {lambda}");
                    }
                }
            }
        }
    }

    /// The packed DARE masks and their application are the per-entry `d * (u < p) as f32`,
    /// on lengths that are not multiples of 8 or 64 too.
    #[test]
    fn packed_masks_apply_as_the_per_entry_product() {
        let u = MaskRng::new(5, "bits", 0).uniform(1000);
        for n in [1usize, 7, 8, 63, 64, 65, 200, 1000] {
            let d: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 50.0).collect();
            let bits = mask_bits(&u[..n], 0.3);
            assert_eq!(bits.len(), n.div_ceil(64));
            assert_eq!(bits, mask_bits_scalar(&u[..n], 0.3), "n = {n}");
            // draws equal to p, NaN draws, p at the ends of [0, 1]
            let mut edge = u[..n].to_vec();
            edge.iter_mut().step_by(3).for_each(|x| *x = 0.3);
            edge.iter_mut().step_by(7).for_each(|x| *x = f32::NAN);
            for p in [0.3f32, 0.0, 1.0, f32::MIN_POSITIVE] {
                assert_eq!(
                    mask_bits(&edge, p),
                    mask_bits_scalar(&edge, p),
                    "n = {n}, p = {p}"
                );
            }
            // thinning alone, and the fused sweep of the merge pass: the same products as
            // thinning, then scaling (without an L1 factor, m = 1 is the product without it)
            for (m, w) in [(1.0f32, 1.0f32), (1.0, 0.7), (1.9, 0.7)] {
                let mut fused = d.clone();
                apply_bits_scaled(&mut fused, &bits, m, w);
                for i in 0..n {
                    let kept = d[i] * ((u[i] < 0.3) as u32 as f32);
                    let want = if m == 1.0 { kept * w } else { (kept * m) * w };
                    assert_eq!(fused[i].to_bits(), want.to_bits(), "n = {n}, i = {i}");
                }
            }
        }
    }

    /// The AVX2 builds of the bf16 decode and the L1 sums give the baseline build's bits.
    #[test]
    fn avx2_decode_and_sums_match_the_baseline() {
        let u = MaskRng::new(9, "avx", 0).uniform(1003);
        let vals: Vec<f32> = u.iter().map(|x| (x - 0.5) * 3.0e-2).collect();
        let mut bytes = vec![0u8; vals.len() * 2];
        encode(&vals, HostDtype::BF16, &mut bytes);
        for n in [0usize, 1, 7, 8, 9, 64, 1003] {
            let mut want = vec![0f32; n];
            decode_bf16(&bytes[..2 * n], &mut want);
            let mut got = vec![f32::NAN; n];
            HostTensor::Stored(&bytes, HostDtype::BF16).decode(0, &mut got);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(
                abs_sum_f64(&vals[..n]).to_bits(),
                abs_sum_f64_lanes(&vals[..n]).to_bits(),
                "n = {n}"
            );
            // the decode fused with the subtraction of the base
            let minus: Vec<f32> = u[..n].iter().map(|x| x * 1e-2).collect();
            let mut got = vec![f32::NAN; n];
            HostTensor::Stored(&bytes, HostDtype::BF16).decode_minus(0, &minus, &mut got);
            let want: Vec<u32> = want
                .iter()
                .zip(&minus)
                .map(|(w, m)| (w - m).to_bits())
                .collect();
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        }
    }

    /// The AVX-512 exclusive prefix sums (and the scalar ones) are the running totals, at
    /// lengths around the lane width.
    #[test]
    fn exclusive_prefix_sums_are_the_running_totals() {
        let mut rng = MaskRng::new(4, "prefix", 0);
        for len in [0usize, 1, 15, 16, 17, 33, 1024, 2048, 2051] {
            let c: Vec<u32> = rng
                .uniform(len)
                .into_iter()
                .map(|u| (u * 40.0) as u32)
                .collect();
            let mut want = c.clone();
            exclusive_prefix_from(&mut want, 0);
            let mut sum = 0;
            for (i, w) in want.iter().enumerate() {
                assert_eq!(*w, sum);
                sum += c[i];
            }
            let mut got = c.clone();
            exclusive_prefix(&mut got);
            assert_eq!(got, want, "{len}");
        }
    }

    /// The radix ranks are those of a stable sort by |value| (ties, signed zeros and
    /// magnitudes that share their high bytes included), over reused buffers.
    #[test]
    fn row_ranks_are_a_stable_sort_by_magnitude() {
        let mut ranker = RowRanker::default();
        let draws = MaskRng::new(3, "ranks", 0).uniform(12000);
        // short and long rows, coarse (quantized) and fine magnitudes
        for (n, quantum) in [
            (1usize, 0.0f32),
            (7, 0.25),
            (1000, 1.0 / 64.0),
            (4000, 0.0),
            (9000, 1.0 / 64.0),
            (12000, 0.0),
        ] {
            let row: Vec<f32> = draws[..n]
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let v = u * 2.0 - 1.0;
                    let v = if quantum > 0.0 {
                        (v / quantum).round() * quantum
                    } else {
                        v
                    };
                    if i % 11 == 0 { -0.0 } else { v }
                })
                .collect();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()).then(a.cmp(&b)));
            let mut want = vec![0u32; n];
            for (r, &i) in order.iter().enumerate() {
                want[i] = r as u32;
            }
            assert_eq!(ranker.rank(&row), &want[..], "n = {n}");
        }
        // magnitudes over 40 binades: every digit of the key varies
        let row: Vec<f32> = draws[..10000]
            .iter()
            .enumerate()
            .map(|(i, u)| (u - 0.5) * 2f32.powi((i % 40) as i32 - 20))
            .collect();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()).then(a.cmp(&b)));
        let mut want = vec![0u32; row.len()];
        for (r, &i) in order.iter().enumerate() {
            want[i] = r as u32;
        }
        assert_eq!(ranker.rank(&row), &want[..], "binades");
        // every magnitude equal: ranks by position
        let row: Vec<f32> = (0..50)
            .map(|i| if i % 3 == 0 { -0.5 } else { 0.5 })
            .collect();
        let want: Vec<u32> = (0..50).collect();
        assert_eq!(ranker.rank(&row), &want[..], "equal magnitudes");
    }

    /// The signed keys order values as the unsigned ones (and `f64::total_cmp`) do.
    #[test]
    fn signed_f64_keys_keep_the_total_order() {
        let v = [
            f64::NEG_INFINITY,
            -1.5,
            -0.0,
            0.0,
            1e-310,
            2.0,
            f64::INFINITY,
            f64::NAN,
            -f64::NAN,
        ];
        for a in v {
            assert_eq!(signed_of_key(f64_key(a)), f64_signed_key(a));
            for b in v {
                assert_eq!(
                    f64_signed_key(a).cmp(&f64_signed_key(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }

    /// SCE on tensors large enough for the streamed selection (no stored variances) gives what
    /// an entry-by-entry reference gives: variances in f64, the `floor(nonzero * topk)` largest
    /// kept with ties by position (quantized deltas: long ties, zero variances), weights from
    /// the kept squares, the sign-agreeing weighted mean; two models (a power of two: the
    /// divisions become products) and three.
    #[test]
    fn sce_on_large_tensors_matches_an_entrywise_reference() {
        let n = (1 << 20) + 4099;
        let draw = |seed: u64, q: f32| -> Vec<f32> {
            MaskRng::new(seed, "sce", 0)
                .uniform(n)
                .into_iter()
                .map(|u| ((u * 2.0 - 1.0) * q).round() / q)
                .collect()
        };
        let base = draw(1, 64.0);
        for (m, topk) in [(2usize, 0.3f32), (3, 0.5), (3, 0.9)] {
            let inputs: Vec<Vec<f32>> = (0..m)
                .map(|j| {
                    let d = draw(10 + j as u64, 4.0);
                    base.iter().zip(&d).map(|(b, d)| b + d / 8.0).collect()
                })
                .collect();
            let deltas: Vec<Vec<f32>> = inputs
                .iter()
                .map(|x| x.iter().zip(&base).map(|(x, b)| x - b).collect())
                .collect();
            let mf = m as f64;
            let var: Vec<f64> = (0..n)
                .map(|i| {
                    let mut mean = 0.0;
                    for d in &deltas {
                        mean += d[i] as f64;
                    }
                    mean /= mf;
                    let mut v = 0.0;
                    for d in &deltas {
                        let e = d[i] as f64 - mean;
                        v += e * e;
                    }
                    v / mf
                })
                .collect();
            let nonzero = var.iter().filter(|v| **v != 0.0).count();
            let k = (nonzero as f64 * topk as f64) as usize;
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| var[b].total_cmp(&var[a]).then(a.cmp(&b)));
            let mut keep = vec![false; n];
            for &i in &order[..k] {
                keep[i] = true;
            }
            assert!(keep.iter().any(|k| !k) && keep.iter().any(|k| *k));
            let masked: Vec<Vec<f32>> = deltas
                .iter()
                .map(|d| {
                    d.iter()
                        .zip(&keep)
                        .map(|(d, k)| if *k { *d } else { 0.0 })
                        .collect()
                })
                .collect();
            let means: Vec<f64> = masked
                .iter()
                .map(|d| d.iter().map(|x| *x as f64 * *x as f64).sum::<f64>() / n as f64)
                .collect();
            let total: f64 = means.iter().sum();
            let w: Vec<f32> = means.iter().map(|v| (v / total) as f32).collect();
            let want: Vec<f32> = (0..n)
                .map(|i| {
                    let sum: f32 = masked.iter().map(|d| d[i]).sum();
                    let (mut num, mut den) = (0f32, 0f32);
                    for (d, w) in masked.iter().zip(&w) {
                        let v = d[i];
                        if v != 0.0 && (v > 0.0) == (sum >= 0.0) {
                            num += v * w;
                            den += w;
                        }
                    }
                    base[i] + num / den.max(1e-6)
                })
                .collect();
            let hosts: Vec<HostTensor> = inputs.iter().map(|x| HostTensor::F32(x)).collect();
            let mut got = vec![0f32; n];
            sce(HostTensor::F32(&base), &hosts, topk, HostOut::F32(&mut got)).unwrap();
            let worst = max_abs_diff(&got, &want);
            assert!(
                worst <= 1e-6,
                "m={m} topk={topk}: max |fused - reference| = {worst}"
            );
            // the kept set exactly: where the reference drops every model, the base comes back
            let dropped = (0..n)
                .filter(|&i| !keep[i])
                .filter(|&i| got[i] != base[i])
                .count();
            assert_eq!(dropped, 0, "m={m} topk={topk}");
        }
    }

    /// DELLA over rows longer than 65536 entries (4-byte ranks, a row across several chunks)
    /// gives the burn path's values.
    #[test]
    fn della_on_long_rows_matches_the_burn_path() {
        use crate::{TaskVector, generalized_task_arithmetic, sparsify, tensor_from, values_of};
        // (rows, cols, data seed): a row longer than a chunk (ranked once per tensor), then
        // rows that do not divide the chunk (cut at every chunk edge: their ranks are kept
        // for the next chunk), twice with different values (no ranks from the merge before)
        // the same threads for every case: what a thread keeps from one merge is there for
        // the next
        let pools: Vec<(usize, rayon::ThreadPool)> = [1, 2]
            .into_iter()
            .map(|t| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build();
                (t, pool.unwrap())
            })
            .collect();
        for (rows, cols, seed) in [(1usize, 70_000usize, 1u64), (20, 5_000, 1), (20, 5_000, 7)] {
            let n = rows * cols;
            let draw = |seed: u64| -> Vec<f32> {
                MaskRng::new(seed, "long", 0)
                    .uniform(n)
                    .into_iter()
                    .map(|u| ((u * 2.0 - 1.0) * 64.0).round() / 64.0)
                    .collect()
            };
            let (base, a, b) = (draw(seed), draw(seed + 1), draw(seed + 2));
            let device = crate::Device::flex();
            let t = |v: &[f32]| tensor_from(v, &[rows, cols], &device);
            let (density, epsilon, weights) = (0.5, 0.2, [0.7f32, 0.4]);
            let mut tvs = Vec::new();
            for (j, (x, w)) in [&a, &b].into_iter().zip(weights).enumerate() {
                let mut rng = MaskRng::new(9, "long", j + 1);
                let delta = t(x).sub(t(&base));
                let delta = sparsify(
                    delta,
                    Sparsify::Della,
                    density,
                    0.0,
                    epsilon,
                    Rescale::InverseDensity,
                    &mut rng,
                )
                .unwrap();
                tvs.push(TaskVector { delta, weight: w });
            }
            let want = values_of(
                generalized_task_arithmetic(t(&base), tvs, Consensus::Sum, true, 1.0).unwrap(),
            );
            let host: Vec<HostTaskVector> = [&a, &b]
                .into_iter()
                .zip(weights)
                .enumerate()
                .map(|(j, (x, w))| HostTaskVector {
                    input: HostTensor::F32(x),
                    weight: w,
                    density,
                    gamma: 0.0,
                    epsilon,
                    rng: MaskRng::new(9, "long", j + 1),
                })
                .collect();
            for (threads, pool) in &pools {
                let threads = *threads;
                let (got, reused) = pool.install(|| {
                    let before = DELLA_CUT_REUSED.with(|c| c.get());
                    let mut got = vec![0f32; n];
                    gta(
                        HostTensor::F32(&base),
                        &host,
                        Sparsify::Della,
                        Rescale::InverseDensity,
                        Consensus::Sum,
                        true,
                        1.0,
                        cols,
                        HostOut::F32(&mut got),
                    )
                    .unwrap();
                    (got, DELLA_CUT_REUSED.with(|c| c.get()) - before)
                });
                let worst = max_abs_diff(&got, &want);
                assert!(
                    worst <= 1e-6,
                    "{rows} x {cols}, {threads} threads: max |fused - burn| = {worst}"
                );
                assert!(
                    got.iter().zip(&base).any(|(g, b)| g != b),
                    "something was merged"
                );
                if threads == 1 && cols < CHUNK {
                    // one thread takes the two chunks in order: the row their edge cuts is
                    // ranked once per task vector, and the second merge's same row is not
                    // taken from the first's
                    assert_eq!(reused, 2, "{rows} x {cols}");
                }
            }
        }
    }

    /// NuSLERP in every grouping (flattened, per row, per column; with and without a base)
    /// and Multi-SLERP (base or not, raw weights, the two-input antipodal fallback) over
    /// tensors of several chunks give the burn path's values.
    #[test]
    fn nuslerp_and_multislerp_match_the_burn_path_over_several_chunks() {
        use crate::{tensor_from, values_of};
        let (rows, cols) = (300, 500);
        let n = rows * cols;
        let draw = |seed: u64| -> Vec<f32> {
            MaskRng::new(seed, "slerp", 0)
                .uniform(n)
                .into_iter()
                .map(|u| u * 2.0 - 1.0)
                .collect()
        };
        let (base, a, b, c) = (draw(1), draw(2), draw(3), draw(4));
        let device = crate::Device::flex();
        let t = |v: &[f32]| tensor_from(v, &[rows, cols], &device);
        let close = |got: &[f32], want: &[f32], what: &str| {
            let worst = max_abs_diff(got, want);
            assert!(worst <= 1e-6, "{what}: max |fused - burn| = {worst}");
        };
        for with_base in [false, true] {
            for (row_wise, flatten) in [(false, true), (false, false), (true, false)] {
                let want = if with_base {
                    let v0 = t(&a).sub(t(&base));
                    let v1 = t(&b).sub(t(&base));
                    values_of(t(&base).add(crate::nuslerp(0.3, v0, v1, row_wise, flatten)))
                } else {
                    values_of(crate::nuslerp(0.3, t(&a), t(&b), row_wise, flatten))
                };
                let mut got = vec![0f32; n];
                nuslerp(
                    0.3,
                    with_base.then_some(HostTensor::F32(&base)),
                    HostTensor::F32(&a),
                    HostTensor::F32(&b),
                    row_wise,
                    flatten,
                    cols,
                    HostOut::F32(&mut got),
                )
                .unwrap();
                close(
                    &got,
                    &want,
                    &format!("nuslerp base={with_base} row_wise={row_wise} flatten={flatten}"),
                );
            }
            for (inputs, weights, normalize) in [
                (vec![&a, &b, &c], vec![0.5f32, 1.0, 0.25], true),
                (vec![&a, &b, &c], vec![0.5f32, 1.0, 0.25], false),
                (vec![&a, &b], vec![1.0f32, 1.0], true),
            ] {
                let tensors: Vec<_> = inputs.iter().map(|v| t(v)).collect();
                let bt = t(&base);
                let want = values_of(
                    crate::multislerp(
                        &tensors,
                        &weights,
                        with_base.then_some(&bt),
                        normalize,
                        1e-8,
                    )
                    .unwrap(),
                );
                let host: Vec<_> = inputs.iter().map(|v| HostTensor::F32(v)).collect();
                let mut got = vec![0f32; n];
                multislerp(
                    &host,
                    &weights,
                    with_base.then_some(HostTensor::F32(&base)),
                    normalize,
                    1e-8,
                    HostOut::F32(&mut got),
                )
                .unwrap();
                close(
                    &got,
                    &want,
                    &format!("multislerp base={with_base} {weights:?} normalize={normalize}"),
                );
            }
        }
        // antipodal pair: the weighted sum of the two (task vectors)
        let neg: Vec<f32> = a.iter().map(|x| -x).collect();
        let want =
            values_of(crate::multislerp(&[t(&a), t(&neg)], &[1.0, 1.0], None, true, 1e-8).unwrap());
        let mut got = vec![0f32; n];
        multislerp(
            &[HostTensor::F32(&a), HostTensor::F32(&neg)],
            &[1.0, 1.0],
            None,
            true,
            1e-8,
            HostOut::F32(&mut got),
        )
        .unwrap();
        close(&got, &want, "multislerp antipodal");
        let three = [
            HostTensor::F32(&a),
            HostTensor::F32(&neg),
            HostTensor::F32(&a),
        ];
        let err = multislerp(
            &three,
            &[1.0, 2.0, 1.0],
            None,
            true,
            1e-8,
            HostOut::F32(&mut got),
        )
        .unwrap_err();
        assert!(err.to_string().contains("antipodal"), "{err}");
    }

    /// The radix selection of SCE's threshold returns what a descending sort returns, at
    /// every rank asked, over values with ties, zeros, a negative and an infinity.
    #[test]
    fn nth_largest_is_that_of_a_sort() {
        let n = 2 * CHUNK + 77;
        let mut v: Vec<f64> = MaskRng::new(8, "nth", 0)
            .uniform(n)
            .into_iter()
            .map(|u| ((u as f64) * 40.0).round() / 3.0)
            .collect();
        v[5] = -1.5;
        v[9] = f64::INFINITY;
        v[10] = 1e-300;
        let mut sorted = v.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for r in [0, 1, 2, 100, n / 3, n / 2, n - 2, n - 1] {
            assert_eq!(
                nth_largest(&v, r).to_bits(),
                sorted[r].to_bits(),
                "rank {r}"
            );
        }
    }

    /// Karcher means (two and three inputs, an input too short to take part, no iteration,
    /// one iteration) over tensors of several chunks give the burn path's values.
    #[test]
    fn karcher_matches_the_burn_path_over_several_chunks() {
        use crate::{tensor_from, values_of};
        let (rows, cols) = (300, 500);
        let n = rows * cols;
        let draw = |seed: u64, scale: f32| -> Vec<f32> {
            MaskRng::new(seed, "karcher", 0)
                .uniform(n)
                .into_iter()
                .map(|u| (u * 2.0 - 1.0) * scale)
                .collect()
        };
        let (a, b, c, tiny) = (draw(1, 1.0), draw(2, 0.5), draw(3, 2.0), draw(4, 1e-9));
        let device = crate::Device::flex();
        let t = |v: &[f32]| tensor_from(v, &[rows, cols], &device);
        for (inputs, max_iter) in [
            (vec![&a, &b], 10),
            (vec![&a, &b, &c], 10),
            (vec![&a, &b, &c], 0),
            (vec![&a, &b, &c], 1),
            (vec![&a, &tiny, &c], 10),
            (vec![&tiny, &tiny], 10),
            (vec![&b], 10),
        ] {
            let tensors: Vec<_> = inputs.iter().map(|v| t(v)).collect();
            let want = values_of(crate::karcher(&tensors, max_iter, 1e-5).unwrap());
            let host: Vec<_> = inputs.iter().map(|v| HostTensor::F32(v)).collect();
            let mut got = vec![0f32; n];
            karcher(&host, max_iter, 1e-5, HostOut::F32(&mut got)).unwrap();
            let worst = max_abs_diff(&got, &want);
            assert!(
                worst <= 1e-6,
                "karcher of {} inputs, max_iter {max_iter}: max |fused - burn| = {worst}",
                inputs.len()
            );
        }
        let err = karcher(&[], 10, 1e-5, HostOut::F32(&mut [])).unwrap_err();
        assert!(err.to_string().contains("at least one input"), "{err}");
    }
}
