//! The `classifier` evaluation: accuracy and loss of an MLP classifier (a checkpoint folder,
//! weights in memory, or a merge's named output tensors) on a data set split. The core of the
//! `classifier` evaluator of searches.

use crate::Result;
use evomerge_data::{DataSpec, Dataset};
use evomerge_models::MlpWeights;
use evomerge_models::mlp::{Evaluation, evaluate};
use std::path::Path;

/// A loaded evaluation set.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub data: Dataset,
}

impl Classifier {
    /// Load the rows a spec names (relative paths also against `base_dir`).
    pub fn from_spec(spec: &DataSpec, base_dir: Option<&Path>) -> Result<Classifier> {
        Ok(Classifier {
            data: spec.resolve(base_dir)?,
        })
    }

    /// Accuracy and mean cross-entropy of in-memory weights.
    pub fn score(&self, weights: &MlpWeights) -> Result<Evaluation> {
        Ok(evaluate(weights, &self.data)?)
    }

    /// Score an MLP checkpoint folder.
    pub fn score_dir(&self, dir: impl AsRef<Path>) -> Result<Evaluation> {
        self.score(&MlpWeights::load(dir)?)
    }

    /// Score named tensors (`layers.{i}.weight` / `.bias`) of an MLP with `layer_sizes`.
    pub fn score_tensors(
        &self,
        layer_sizes: &[usize],
        tensors: &[(String, Vec<f32>)],
    ) -> Result<Evaluation> {
        self.score(&MlpWeights::from_named(layer_sizes, tensors)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_data::Part;

    #[test]
    fn scores_checkpoints_and_tensors_alike() {
        let c = Classifier::from_spec(
            &DataSpec {
                samples: Some(60),
                ..DataSpec::digits(Part::Val)
            },
            None,
        )
        .unwrap();
        let w = MlpWeights::init(&[64, 8, 10], 4).unwrap();
        let dir = tempfile::tempdir().unwrap();
        w.save(dir.path().join("m"), false).unwrap();
        let a = c.score(&w).unwrap();
        let b = c.score_dir(dir.path().join("m")).unwrap();
        let named: Vec<(String, Vec<f32>)> = w
            .named_tensors()
            .into_iter()
            .map(|(n, _, v)| (n, v.to_vec()))
            .collect();
        let t = c.score_tensors(&w.layer_sizes, &named).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, t);
        assert_eq!(a.rows, 60);
        assert!((0.0..=1.0).contains(&a.accuracy) && a.loss > 0.0);
        let e = c
            .score_tensors(&[64, 9, 10], &named)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layers.0.weight"), "{e}");
    }
}
