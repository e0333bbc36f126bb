//! Interpolation methods: linear, SLERP and its variants, the Karcher mean, passthrough.

use crate::{KernelError, Result, T2, check_same_shapes, dot, norm};
use burn::tensor::{Tensor, TensorData};

/// `linear` (model soup): `sum_i w_i x_i`, divided by `sum_i w_i` when `normalize`.
///
/// mergekit divides by a zero weight sum and returns inf/NaN; here that is an error.
pub fn linear(tensors: &[T2], weights: &[f32], normalize: bool) -> Result<T2> {
    if tensors.is_empty() || tensors.len() != weights.len() {
        return Err(KernelError::WrongInputCount {
            method: "linear",
            needed: "one weight per input and at least one input",
            got: tensors.len(),
        });
    }
    check_same_shapes("linear", &tensors.iter().collect::<Vec<_>>())?;
    let mut acc = tensors[0].clone().mul_scalar(weights[0]);
    for (t, w) in tensors[1..].iter().zip(&weights[1..]) {
        acc = acc.add(t.clone().mul_scalar(*w));
    }
    if normalize {
        let sum: f32 = weights.iter().sum();
        if sum.abs() < 1e-8 {
            return Err(KernelError::BadParameter {
                method: "linear",
                what: format!(
                    "weights {weights:?} sum to zero, so normalize would divide by zero; set normalize: false or change the weights"
                ),
            });
        }
        acc = acc.div_scalar(sum);
    }
    Ok(acc)
}

/// SLERP between `v0` (the base, `t = 0`) and `v1` (`t = 1`) over the flattened whole tensors,
/// applied to the unnormalised originals; nearly colinear inputs (|cos| > 0.9995) fall back to
/// linear interpolation. Norms below 1e-8 are not normalised (mergekit's `eps`).
pub fn slerp(t: f32, v0: T2, v1: T2) -> T2 {
    const DOT_THRESHOLD: f32 = 0.9995;
    const EPS: f32 = 1e-8;
    let n0 = norm(&v0);
    let n1 = norm(&v1);
    let s0 = if n0 > EPS { n0 } else { 1.0 };
    let s1 = if n1 > EPS { n1 } else { 1.0 };
    let d = dot(&v0, &v1) / (s0 * s1);
    if d.abs() > DOT_THRESHOLD {
        return v0.mul_scalar(1.0 - t).add(v1.mul_scalar(t));
    }
    let theta0 = d.acos();
    let sin0 = theta0.sin();
    let theta_t = theta0 * t;
    let w0 = (theta0 - theta_t).sin() / sin0;
    let w1 = theta_t.sin() / sin0;
    v0.mul_scalar(w0).add(v1.mul_scalar(w1))
}

/// NuSLERP's interpolation: SLERP over the whole flattened tensors (`flatten`), or separately
/// for each row (`row_wise == false`) or each column (`row_wise == true`) of the 2-D view.
/// Vectors are normalised with norms clamped at 1e-7; rows with |sin θ| < 1e-8 interpolate
/// linearly. The caller turns weights into `t = w2 / (w1 + w2)` and subtracts a base if any.
pub fn nuslerp(t: f32, v0: T2, v1: T2, row_wise: bool, flatten: bool) -> T2 {
    if flatten {
        let [r, c] = v0.dims();
        let a = v0.reshape([1, r * c]);
        let b = v1.reshape([1, r * c]);
        return nuslerp_rows(t, a, b).reshape([r, c]);
    }
    if row_wise {
        nuslerp_rows(t, v0.transpose(), v1.transpose()).transpose()
    } else {
        nuslerp_rows(t, v0, v1)
    }
}

/// NuSLERP's coefficients `(w0, w1)` of one row (or of the flattened tensor) from the cosine
/// of its two unit vectors; the burn path and the fused kernel share them.
pub(crate) fn nuslerp_coefficients(t: f32, cos: f32) -> (f32, f32) {
    const EPS: f32 = 1e-8;
    let theta = cos.clamp(-1.0, 1.0).acos();
    let sin = theta.sin();
    if sin.abs() < EPS {
        (1.0 - t, t)
    } else {
        (((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin)
    }
}

/// SLERP of each row of `v0` with the same row of `v1`. The per-row cosines are reduced on the
/// device; the angles and coefficients (one pair per row) are computed on the host, so every
/// device uses the same `acos`/`sin` and gives the same result.
fn nuslerp_rows(t: f32, v0: T2, v1: T2) -> T2 {
    let [r, _] = v0.dims();
    let device = v0.device();
    let unit = |x: &T2| {
        let n = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-7);
        x.clone().div(n)
    };
    let cos = crate::values_of(unit(&v0).mul(unit(&v1)).sum_dim(1));
    let (mut w0, mut w1) = (Vec::with_capacity(r), Vec::with_capacity(r));
    for c in cos {
        let (a, b) = nuslerp_coefficients(t, c);
        w0.push(a);
        w1.push(b);
    }
    let col = |w: Vec<f32>| Tensor::<2>::from_data(TensorData::new(w, [r, 1]), &device);
    v0.mul(col(w0)).add(v1.mul(col(w1)))
}

/// Multi-SLERP's weights, divided by their sum with `normalize` (a zero sum is an error); the
/// burn path and the fused kernel share them.
pub(crate) fn multislerp_weights(weights: &[f32], normalize: bool) -> Result<Vec<f32>> {
    let mut w = weights.to_vec();
    if normalize {
        let s: f32 = w.iter().sum();
        if s.abs() < 1e-12 {
            return Err(KernelError::BadParameter {
                method: "multislerp",
                what: format!(
                    "weights {weights:?} sum to zero; set normalize_weights: false or change them"
                ),
            });
        }
        w.iter_mut().for_each(|x| *x /= s);
    }
    Ok(w)
}

/// Multi-SLERP: a weighted spherical mean of several tensors (or of their task vectors when a
/// `base` is given), scaled back to the weighted mean norm.
pub fn multislerp(
    tensors: &[T2],
    weights: &[f32],
    base: Option<&T2>,
    normalize_weights: bool,
    eps: f32,
) -> Result<T2> {
    if tensors.is_empty() || tensors.len() != weights.len() {
        return Err(KernelError::WrongInputCount {
            method: "multislerp",
            needed: "one weight per input and at least one input",
            got: tensors.len(),
        });
    }
    if tensors.len() == 1 {
        return Ok(tensors[0].clone());
    }
    let mut all: Vec<&T2> = tensors.iter().collect();
    if let Some(b) = base {
        all.push(b);
    }
    check_same_shapes("multislerp", &all)?;
    let w = multislerp_weights(weights, normalize_weights)?;
    let tv: Vec<T2> = tensors
        .iter()
        .map(|t| match base {
            Some(b) => t.clone().sub(b.clone()),
            None => t.clone(),
        })
        .collect();
    let norms: Vec<f32> = tv.iter().map(norm).collect();
    let units: Vec<T2> = tv
        .iter()
        .zip(&norms)
        .map(|(t, n)| t.clone().div_scalar(n + eps))
        .collect();
    let mut mean = units[0].clone().mul_scalar(w[0]);
    for (u, wi) in units[1..].iter().zip(&w[1..]) {
        mean = mean.add(u.clone().mul_scalar(*wi));
    }
    let mean_norm = norm(&mean);
    let with_base = |x: T2| match base {
        Some(b) => x.add(b.clone()),
        None => x,
    };
    if mean_norm < eps {
        if tv.len() == 2 {
            return Ok(with_base(
                tv[0]
                    .clone()
                    .mul_scalar(w[0])
                    .add(tv[1].clone().mul_scalar(w[1])),
            ));
        }
        return Err(KernelError::BadParameter {
            method: "multislerp",
            what: "the inputs are antipodal (their weighted mean direction is zero)".into(),
        });
    }
    let mean = mean.div_scalar(mean_norm);
    let mut r: Option<T2> = None;
    for (u, wi) in units.iter().zip(&w) {
        let tangent = u.clone().sub(mean.clone().mul_scalar(dot(u, &mean)));
        let term = tangent.mul_scalar(*wi);
        r = Some(match r {
            Some(acc) => acc.add(term),
            None => term,
        });
    }
    let r = r.expect("at least two inputs");
    let tn = norm(&r) + eps;
    let res = mean.mul_scalar(tn.cos()).add(r.mul_scalar(tn.sin() / tn));
    let scale: f32 = w.iter().zip(&norms).map(|(a, b)| a * b).sum();
    Ok(with_base(res.mul_scalar(scale)))
}

/// The Karcher (Riemannian) mean of the inputs' directions with equal weights, scaled by their
/// mean norm. mergekit ignores per-model weights for this method, and so does this.
pub fn karcher(tensors: &[T2], max_iter: usize, tol: f32) -> Result<T2> {
    if tensors.is_empty() {
        return Err(KernelError::WrongInputCount {
            method: "karcher",
            needed: "at least one input",
            got: 0,
        });
    }
    if tensors.len() == 1 {
        return Ok(tensors[0].clone());
    }
    check_same_shapes("karcher", &tensors.iter().collect::<Vec<_>>())?;
    let n = tensors.len();
    let alpha = 1.0 / n as f32;
    let norms: Vec<f32> = tensors.iter().map(norm).collect();
    let valid: Vec<usize> = (0..n).filter(|i| norms[*i] > tol).collect();
    if valid.is_empty() {
        return Ok(tensors[0].zeros_like());
    }
    let units: Vec<T2> = tensors
        .iter()
        .zip(&norms)
        .map(|(t, nn)| {
            if *nn > 0.0 {
                t.clone().div_scalar(*nn)
            } else {
                t.zeros_like()
            }
        })
        .collect();
    let alpha_valid = 1.0 / valid.len() as f32; // alpha renormalised over the valid inputs
    let mut u = units[valid[0]].zeros_like();
    for &i in &valid {
        u = u.add(units[i].clone().mul_scalar(alpha_valid));
    }
    let un = norm(&u);
    u = if un < tol {
        units[valid[0]].clone()
    } else {
        u.div_scalar(un)
    };
    for _ in 0..max_iter {
        let mut tangent = u.zeros_like();
        for &i in &valid {
            let c = dot(&u, &units[i]).clamp(-1.0, 1.0);
            let theta = c.acos();
            if theta < tol {
                continue;
            }
            let coef = alpha_valid * theta / theta.sin();
            tangent = tangent.add(
                units[i]
                    .clone()
                    .sub(u.clone().mul_scalar(c))
                    .mul_scalar(coef),
            );
        }
        let tnorm = norm(&tangent);
        if tnorm < tol {
            break;
        }
        u = u
            .mul_scalar(tnorm.cos())
            .add(tangent.mul_scalar(tnorm.sin() / tnorm));
        let un = norm(&u);
        u = u.div_scalar(un);
    }
    let scale: f32 = norms.iter().map(|nn| alpha * nn).sum();
    Ok(u.mul_scalar(scale))
}

/// `passthrough`: the one input, optionally multiplied by `scale`.
pub fn passthrough(x: T2, scale: Option<f32>) -> T2 {
    match scale {
        Some(s) if s != 1.0 => x.mul_scalar(s),
        _ => x,
    }
}

#[cfg(test)]
#[allow(clippy::approx_constant, clippy::excessive_precision)] // golden values as the reference prints them
mod tests {
    use super::*;
    use crate::testing::{assert_close, t};
    use crate::values_of;

    #[test]
    fn golden_slerp() {
        assert_close(
            &values_of(slerp(0.5, t(&[1., 0.]), t(&[0., 1.]))),
            &[0.70711, 0.70711],
            1e-5,
        );
        assert_close(
            &values_of(slerp(0.25, t(&[1., 0.]), t(&[0., 1.]))),
            &[0.92388, 0.38268],
            1e-5,
        );
        assert_close(
            &values_of(slerp(0.5, t(&[2., 0.]), t(&[0., 1.]))),
            &[1.41421, 0.70711],
            1e-5,
        );
        // colinear -> lerp
        assert_close(
            &values_of(slerp(0.5, t(&[1., 1.]), t(&[2., 2.0001]))),
            &[1.5, 1.50005],
            1e-5,
        );
    }

    #[test]
    fn slerp_endpoints() {
        let a = [0.3f32, -1.2, 2.0, 0.7];
        let b = [1.1f32, 0.4, -0.5, 0.9];
        assert_close(&values_of(slerp(0.0, t(&a), t(&b))), &a, 1e-6);
        assert_close(&values_of(slerp(1.0, t(&a), t(&b))), &b, 1e-5);
    }

    #[test]
    fn golden_multislerp() {
        let r = multislerp(&[t(&[1., 0.]), t(&[0., 1.])], &[1., 1.], None, true, 1e-8).unwrap();
        assert_close(&values_of(r), &[0.70711, 0.70711], 1e-5);
        let r = multislerp(
            &[t(&[1., 0.]), t(&[0., 1.])],
            &[0.25, 0.75],
            None,
            true,
            1e-8,
        )
        .unwrap();
        assert_close(&values_of(r), &[0.316228, 0.948683], 1e-5);
        let r = multislerp(
            &[t(&[1., 0., 0.]), t(&[0., 2., 0.]), t(&[0., 0., 3.])],
            &[1., 1., 1.],
            None,
            true,
            1e-8,
        )
        .unwrap();
        assert_close(&values_of(r), &[1.154701, 1.154701, 1.154701], 1e-5);
    }

    #[test]
    fn golden_karcher() {
        let r = karcher(&[t(&[2., 0.]), t(&[0., 1.])], 10, 1e-5).unwrap();
        assert_close(&values_of(r), &[1.060660, 1.060660], 1e-5);
        let r = karcher(
            &[t(&[1., 0., 0.]), t(&[0., 2., 0.]), t(&[1., 1., 1.])],
            10,
            1e-5,
        )
        .unwrap();
        assert_close(&values_of(r), &[1.083473, 1.083473, 0.374439], 1e-5);
    }

    #[test]
    fn nuslerp_matches_slerp_when_flattened_and_rows_when_not() {
        let a = [1., 0., 0., 2.];
        let b = [0., 1., 2., 0.];
        let dev = crate::testing::dev();
        let ta = crate::tensor_from(&a, &[2, 2], &dev);
        let tb = crate::tensor_from(&b, &[2, 2], &dev);
        let flat = values_of(nuslerp(0.3, ta.clone(), tb.clone(), false, true));
        let s = values_of(slerp(0.3, ta.clone(), tb.clone()));
        assert_close(&flat, &s, 1e-5);
        // rows: [1,0]->[0,1] and [0,2]->[2,0], both quarter turns
        let rows = values_of(nuslerp(0.5, ta.clone(), tb.clone(), false, false));
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert_close(&rows, &[h, h, 2. * h, 2. * h], 1e-5);
        // columns: [1,0]->[0,2] and [0,2]->[1,0]; norms differ, mergekit does not renormalise
        let cols = values_of(nuslerp(0.5, ta, tb, true, false));
        assert_close(&cols, &[h, h, 2. * h, 2. * h], 1e-5);
    }

    #[test]
    fn linear_weights_and_zero_sum_error() {
        let r = linear(&[t(&[1., 2.]), t(&[3., 4.])], &[0.25, 0.75], true).unwrap();
        assert_close(&values_of(r), &[2.5, 3.5], 1e-6);
        let r = linear(&[t(&[1., 2.]), t(&[3., 4.])], &[1.0, 1.0], false).unwrap();
        assert_close(&values_of(r), &[4., 6.], 1e-6);
        let e = linear(&[t(&[1.]), t(&[3.])], &[0.5, -0.5], true).unwrap_err();
        assert!(e.to_string().contains("sum to zero"), "{e}");
        let e = linear(&[t(&[1.]), t(&[3., 4.])], &[0.5, 0.5], true).unwrap_err();
        assert!(matches!(e, KernelError::ShapeMismatch { .. }));
    }
}
