//! The spherical means of several inputs (Multi-SLERP, Karcher) in two passes: one reduction
//! pass for the Gram matrix of the inputs (or of their task vectors), then the whole
//! computation in the span of the inputs, then one output pass `sum_j k_j x_j`.
//!
//! Every vector these methods form — the unit inputs, their weighted mean, the tangent steps
//! and the points of the Karcher iteration — is a linear combination of the inputs, so each is
//! held as its coefficients and every norm and dot product comes from the Gram matrix `G`
//! (`|sum_i a_i x_i|^2 = a^T G a`). The burn path ([`crate::multislerp`], [`crate::karcher`])
//! does the same math with one tensor per step; here the tensor is read twice whatever the
//! number of iterations.

use super::{
    CHUNK, HostOut, HostTensor, Scratch, check_lengths, chunk_len, decode_delta, dot_f64,
    for_each_chunk, min_len,
};
use crate::{KernelError, Result};
use rayon::prelude::*;

/// The Gram matrix (row-major `m x m`, f64) of the inputs, minus `base` when given: one
/// parallel pass over the chunks.
pub(super) fn gram(inputs: &[HostTensor], base: Option<HostTensor>, n: usize) -> Vec<f64> {
    let m = inputs.len();
    let chunks: Vec<usize> = (0..n.div_ceil(CHUNK)).collect();
    let mut g = chunks
        .par_iter()
        .with_min_len(min_len(chunks.len()))
        .fold(
            || (Scratch::new(m), vec![0f64; m * m]),
            |(mut s, mut g), &ci| {
                let start = ci * CHUNK;
                let len = chunk_len(n, start);
                let Scratch { base: tmp, tv, .. } = &mut s;
                for (j, d) in tv.iter_mut().enumerate() {
                    decode_delta(inputs[j], base, start, &mut tmp[..len], &mut d[..len]);
                }
                for i in 0..m {
                    for j in i..m {
                        g[i * m + j] += dot_f64(&tv[i][..len], &tv[j][..len]);
                    }
                }
                (s, g)
            },
        )
        .map(|(_, g)| g)
        .reduce(
            || vec![0f64; m * m],
            |a, b| a.iter().zip(b).map(|(p, q)| p + q).collect(),
        );
    for i in 0..m {
        for j in 0..i {
            g[i * m + j] = g[j * m + i];
        }
    }
    g
}

/// `a^T G b` for the `m x m` matrix `g`.
fn form(g: &[f64], a: &[f64], b: &[f64]) -> f64 {
    let m = a.len();
    (0..m)
        .map(|i| a[i] * (0..m).map(|j| g[i * m + j] * b[j]).sum::<f64>())
        .sum()
}

/// The norm `sqrt(a^T G a)` of the combination `a` (rounding can make the form slightly
/// negative for a zero vector).
fn length(g: &[f64], a: &[f64]) -> f64 {
    form(g, a, a).max(0.0).sqrt()
}

/// The output pass: `sum_j k_j (x_j - base) (+ base)` chunk by chunk.
fn combination(
    inputs: &[HostTensor],
    base: Option<HostTensor>,
    k: &[f32],
    n: usize,
    out: HostOut,
) -> Result<()> {
    for_each_chunk(n, 0, out, |_, start, s| {
        let len = chunk_len(n, start);
        let Scratch {
            base: b, x, res, ..
        } = s;
        let (b, x, res) = (&mut b[..len], &mut x[..len], &mut res[..len]);
        res.fill(0.0);
        if let Some(bt) = base {
            bt.decode(start, b);
        }
        for (input, kj) in inputs.iter().zip(k) {
            input.decode(start, x);
            if base.is_some() {
                for ((r, x), b) in res.iter_mut().zip(&*x).zip(&*b) {
                    *r += (x - b) * kj;
                }
            } else {
                for (r, x) in res.iter_mut().zip(&*x) {
                    *r += x * kj;
                }
            }
        }
        if base.is_some() {
            for (r, b) in res.iter_mut().zip(&*b) {
                *r += b;
            }
        }
    })
}

/// Multi-SLERP (as [`crate::multislerp`]): the weighted spherical mean of the inputs' (task
/// vectors') directions `u_i = d_i / (|d_i| + eps)`, scaled to the weighted mean norm. The
/// mean `m = sum_i w_i u_i` and its norm come from the Gram matrix; the burn path's tangent
/// step `r = sum_i w_i (u_i - m^ (u_i . m^))` is zero (`sum_i w_i (u_i . m^) = |m|`), so the
/// output is `m^ * sum_i w_i |d_i|` (plus the base). Two inputs whose mean direction is zero
/// fall back to their weighted sum; more are an error, as in the burn path.
pub fn multislerp(
    inputs: &[HostTensor],
    weights: &[f32],
    base: Option<HostTensor>,
    normalize_weights: bool,
    eps: f32,
    out: HostOut,
) -> Result<()> {
    let m = inputs.len();
    if m == 0 || m != weights.len() {
        return Err(KernelError::WrongInputCount {
            method: "multislerp",
            needed: "one weight per input and at least one input",
            got: m,
        });
    }
    let n = inputs[0].len();
    let mut all = inputs.to_vec();
    all.extend(base);
    check_lengths("multislerp", n, &all, &out)?;
    if m == 1 {
        return combination(inputs, None, &[1.0], n, out);
    }
    let w = crate::interpolate::multislerp_weights(weights, normalize_weights)?;
    let g = gram(inputs, base, n);
    let norms: Vec<f32> = (0..m).map(|i| (g[i * m + i] as f32).sqrt()).collect();
    let c: Vec<f64> = w
        .iter()
        .zip(&norms)
        .map(|(wi, ni)| (wi / (ni + eps)) as f64)
        .collect();
    let mean_norm = length(&g, &c);
    if mean_norm < eps as f64 {
        if m != 2 {
            return Err(KernelError::BadParameter {
                method: "multislerp",
                what: "the inputs are antipodal (their weighted mean direction is zero)".into(),
            });
        }
        return combination(inputs, base, &w, n, out);
    }
    let scale: f32 = w.iter().zip(&norms).map(|(a, b)| a * b).sum();
    let k: Vec<f32> = c
        .iter()
        .map(|ci| (ci * scale as f64 / mean_norm) as f32)
        .collect();
    combination(inputs, base, &k, n, out)
}

/// The Karcher mean (as [`crate::karcher`]): the inputs' unit directions averaged on the sphere
/// with equal weights by the burn path's fixed-point iteration (at most `max_iter` steps, until
/// the tangent step is shorter than `tol`; inputs of norm `<= tol` take no part), scaled by the
/// inputs' mean norm. The iteration runs on the coefficients of the inputs (f64), so the
/// tensor is read once for the Gram matrix and once for the output.
pub fn karcher(inputs: &[HostTensor], max_iter: usize, tol: f32, out: HostOut) -> Result<()> {
    let m = inputs.len();
    if m == 0 {
        return Err(KernelError::WrongInputCount {
            method: "karcher",
            needed: "at least one input",
            got: 0,
        });
    }
    let n = inputs[0].len();
    check_lengths("karcher", n, inputs, &out)?;
    if m == 1 {
        return combination(inputs, None, &[1.0], n, out);
    }
    let g = gram(inputs, None, n);
    let norms: Vec<f32> = (0..m).map(|i| (g[i * m + i] as f32).sqrt()).collect();
    let valid: Vec<usize> = (0..m).filter(|&i| norms[i] > tol).collect();
    if valid.is_empty() {
        return combination(inputs, None, &vec![0.0; m], n, out);
    }
    // the Gram matrix of the unit directions (zero for a zero input)
    let inv: Vec<f64> = norms
        .iter()
        .map(|&x| if x > 0.0 { 1.0 / x as f64 } else { 0.0 })
        .collect();
    let gu: Vec<f64> = (0..m * m)
        .map(|ij| g[ij] * inv[ij / m] * inv[ij % m])
        .collect();
    let tol = tol as f64;
    let alpha_valid = 1.0 / valid.len() as f64;
    let mut u = vec![0f64; m];
    for &i in &valid {
        u[i] += alpha_valid;
    }
    let un = length(&gu, &u);
    if un < tol {
        u.fill(0.0);
        u[valid[0]] = 1.0;
    } else {
        u.iter_mut().for_each(|x| *x /= un);
    }
    for _ in 0..max_iter {
        let mut tangent = vec![0f64; m];
        for &i in &valid {
            // u_i . u, then the log map of u_i at u
            let c = (0..m)
                .map(|j| gu[i * m + j] * u[j])
                .sum::<f64>()
                .clamp(-1.0, 1.0);
            let theta = c.acos();
            if theta < tol {
                continue;
            }
            let coef = alpha_valid * theta / theta.sin();
            tangent[i] += coef;
            for (t, x) in tangent.iter_mut().zip(&u) {
                *t -= coef * c * x;
            }
        }
        let tnorm = length(&gu, &tangent);
        if tnorm < tol {
            break;
        }
        let (cos, sinc) = (tnorm.cos(), tnorm.sin() / tnorm);
        for (x, t) in u.iter_mut().zip(&tangent) {
            *x = *x * cos + t * sinc;
        }
        let un = length(&gu, &u);
        u.iter_mut().for_each(|x| *x /= un);
    }
    let alpha = 1.0 / m as f32;
    let scale: f32 = norms.iter().map(|nn| alpha * nn).sum();
    let k: Vec<f32> = u
        .iter()
        .zip(&inv)
        .map(|(ui, ii)| (ui * ii * scale as f64) as f32)
        .collect();
    combination(inputs, None, &k, n, out)
}
