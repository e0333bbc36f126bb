//! Model Stock: interpolate between the base and the mean of the fine-tunes by a ratio set from
//! the angle between their task vectors.

use crate::{KernelError, Result, T2, check_same_shapes, dot, norm};

/// `t * mean(others) + (1 - t) * base` with `t = N cos / (1 + (N - 1) cos)`, where `cos` is the
/// mean pairwise cosine of the task vectors (norm products clamped at 1e-6, cosines clamped to
/// [-1, 1]). With `filter_wise`, `cos` and `t` are computed for each row separately.
pub fn model_stock(base: T2, others: &[T2], filter_wise: bool) -> Result<T2> {
    if others.is_empty() {
        return Ok(base);
    }
    if others.len() < 2 {
        return Err(KernelError::WrongInputCount {
            method: "model_stock",
            needed: "a base and at least two other models",
            got: others.len() + 1,
        });
    }
    let mut all = vec![&base];
    all.extend(others.iter());
    check_same_shapes("model_stock", &all)?;
    let n = others.len() as f32;
    let deltas: Vec<T2> = others.iter().map(|w| w.clone().sub(base.clone())).collect();
    let mut mean = others[0].clone();
    for w in &others[1..] {
        mean = mean.add(w.clone());
    }
    let mean = mean.div_scalar(n);
    let pairs = (others.len() * (others.len() - 1) / 2) as f32;
    if filter_wise {
        let row_norm = |d: &T2| d.clone().square().sum_dim(1).sqrt();
        let mut cos_sum = base.clone().sum_dim(1).zeros_like();
        for i in 0..deltas.len() {
            for j in i + 1..deltas.len() {
                let num = deltas[i].clone().mul(deltas[j].clone()).sum_dim(1);
                let den = row_norm(&deltas[i])
                    .mul(row_norm(&deltas[j]))
                    .clamp_min(1e-6);
                cos_sum = cos_sum.add(num.div(den).clamp(-1.0, 1.0));
            }
        }
        let cos = cos_sum.div_scalar(pairs);
        let t = cos
            .clone()
            .mul_scalar(n)
            .div(cos.mul_scalar(n - 1.0).add_scalar(1.0));
        Ok(mean.mul(t.clone()).add(base.mul(t.neg().add_scalar(1.0))))
    } else {
        let mut cos_sum = 0.0f32;
        for i in 0..deltas.len() {
            for j in i + 1..deltas.len() {
                let den = (norm(&deltas[i]) * norm(&deltas[j])).max(1e-6);
                cos_sum += (dot(&deltas[i], &deltas[j]) / den).clamp(-1.0, 1.0);
            }
        }
        let cos = cos_sum / pairs;
        let t = n * cos / (1.0 + (n - 1.0) * cos);
        Ok(mean.mul_scalar(t).add(base.mul_scalar(1.0 - t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, t};
    use crate::values_of;

    #[test]
    fn golden_model_stock() {
        let out = model_stock(t(&[0., 0.]), &[t(&[1., 0.]), t(&[1., 1.])], false).unwrap();
        assert_close(&values_of(out), &[0.828427, 0.414214], 1e-5);
        let out = model_stock(
            t(&[0., 0., 0.]),
            &[t(&[1., 0., 0.]), t(&[1., 1., 0.]), t(&[1., 0., 1.])],
            false,
        )
        .unwrap();
        assert_close(&values_of(out), &[0.840990, 0.280330, 0.280330], 1e-5);
    }

    #[test]
    fn filter_wise_equals_whole_on_one_row() {
        let a = model_stock(t(&[0.1, 0.2]), &[t(&[1., 0.]), t(&[1., 1.])], true).unwrap();
        let b = model_stock(t(&[0.1, 0.2]), &[t(&[1., 0.]), t(&[1., 1.])], false).unwrap();
        assert_close(&values_of(a), &values_of(b), 1e-6);
        assert!(model_stock(t(&[0.]), &[t(&[1.])], false).is_err());
    }
}
