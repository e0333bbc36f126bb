//! Model soups (Wortsman et al. 2022): averages of models fine-tuned from one initialisation.

use crate::{DataMergeError, Result};
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::evaluate;

/// The uniform soup: the plain mean of the models.
pub fn uniform_soup(models: &[&MlpWeights]) -> Result<MlpWeights> {
    if models.is_empty() {
        return Err(DataMergeError::Invalid("soup: no models".into()));
    }
    let w = vec![1.0 / models.len() as f32; models.len()];
    Ok(MlpWeights::weighted_sum(models, &w))
}

/// What the greedy soup did.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedySoup {
    pub soup: MlpWeights,
    /// Indices (into the input) of the ingredients, in the order they were added.
    pub ingredients: Vec<usize>,
    /// Validation accuracy of each input model.
    pub individual_val: Vec<f64>,
    /// Validation accuracy of the soup.
    pub val_accuracy: f64,
}

/// The greedy soup: sort the models by validation accuracy (best first), start from the best,
/// and add each next model if the running mean's validation accuracy strictly improves (the
/// reference code's `>`). Its validation accuracy is never below the best single model's.
pub fn greedy_soup(models: &[&MlpWeights], val: &Dataset) -> Result<GreedySoup> {
    if models.is_empty() {
        return Err(DataMergeError::Invalid("greedy soup: no models".into()));
    }
    let individual_val: Vec<f64> = models
        .iter()
        .map(|m| evaluate(m, val).map(|e| e.accuracy))
        .collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = (0..models.len()).collect();
    // Stable sort: ties keep the input order.
    order.sort_by(|a, b| individual_val[*b].total_cmp(&individual_val[*a]));
    let mut ingredients = vec![order[0]];
    let mut soup = models[order[0]].clone();
    let mut best = individual_val[order[0]];
    for &i in &order[1..] {
        let n = ingredients.len() as f32;
        let candidate =
            MlpWeights::weighted_sum(&[&soup, models[i]], &[n / (n + 1.0), 1.0 / (n + 1.0)]);
        let acc = evaluate(&candidate, val)?.accuracy;
        if acc > best {
            best = acc;
            soup = candidate;
            ingredients.push(i);
        }
    }
    Ok(GreedySoup {
        soup,
        ingredients,
        individual_val,
        val_accuracy: best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_the_mean_and_greedy_never_loses_to_the_best() {
        let a = MlpWeights::init(&[64, 8, 10], 1).unwrap();
        let b = MlpWeights::init(&[64, 8, 10], 2).unwrap();
        let c = MlpWeights::init(&[64, 8, 10], 3).unwrap();
        let u = uniform_soup(&[&a, &b, &c]).unwrap();
        let (fa, fb, fc, fu) = (a.flat(), b.flat(), c.flat(), u.flat());
        for j in 0..fu.len() {
            assert!((fu[j] - (fa[j] + fb[j] + fc[j]) / 3.0).abs() < 1e-6);
        }
        let val = Dataset::digits().split(0).val;
        let g = greedy_soup(&[&a, &b, &c], &val).unwrap();
        let best = g.individual_val.iter().cloned().fold(0.0, f64::max);
        assert!(g.val_accuracy >= best);
        assert_eq!(evaluate(&g.soup, &val).unwrap().accuracy, g.val_accuracy);
        assert!(!g.ingredients.is_empty());
    }
}
