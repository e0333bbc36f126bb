//! The `classifier` evaluator: the accuracy of an MLP classifier candidate (an
//! [`evomerge_eval::MlpCandidate`], e.g. a merge of `EvomergeMlp` checkpoints) on a split of a
//! data set named by a [`DataSpec`] (the built-in digits set, or a CSV/JSONL file).
//!
//! Fitness = accuracy. Metrics: `acc` and `loss` (mean cross-entropy, natural log). One
//! [`ItemResult`] per row: id = the row's index in the split's data, score 1/0, the predicted
//! class as output, and the row's cross-entropy as `extra["loss"]`.
//!
//! Each evaluation split reads its own data spec; by default the seeded split of one data set:
//! search = `train`, validation = `val`, test = `test`. The search split can be subsampled per
//! generation (`subsample`, seeded by the run seed and the generation, so every candidate of a
//! generation sees the same rows).
//!
//! ```toml
//! name = "digits"
//! subsample = 256            # optional, search split only
//!
//! [search]
//! dataset = "digits"         # or a path to a *.csv / *.jsonl file (relative to this file)
//! split = "train"
//! [validation]
//! dataset = "digits"
//! split = "val"
//! [test]
//! dataset = "digits"
//! split = "test"
//! ```
//!
//! Errors (`Err`, the same for every candidate, so a search stops): a data set whose feature
//! count is not the model's input size, labels the model has no output for, a candidate that is
//! not an MLP, a split without data. A candidate whose outputs are not finite is a failed score.
//!
//! ```no_run
//! use evomerge_eval::{EvalRequest, Evaluator, MlpCandidate, Split};
//! use evomerge_eval_classifier::ClassifierEvaluator;
//! # fn f(weights: evomerge_models::MlpWeights) -> Result<(), evomerge_eval::EvalError> {
//! let eval = ClassifierEvaluator::digits(0)?;
//! let score = eval.evaluate(&MlpCandidate::new("merge", weights), &EvalRequest::new(Split::Test, 0, 0))?;
//! println!("test accuracy {}", score.metrics["acc"]);
//! # Ok(()) }
//! ```

mod config;
pub use config::ClassifierKind;

use evomerge_data::{DataSpec, Dataset, Part};
use evomerge_eval::{Candidate, EvalError, EvalRequest, Evaluator, ItemResult, Score, Split};
use evomerge_models::MlpWeights;
use evomerge_models::mlp::{logits, seeded_permutation};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The evaluator's TOML file (see the crate docs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// Name in logs and CSV columns (default `classifier`).
    #[serde(default)]
    pub name: Option<String>,
    /// Rows per generation from the search split (default: all).
    #[serde(default)]
    pub subsample: Option<usize>,
    pub search: Option<DataSpec>,
    pub validation: Option<DataSpec>,
    pub test: Option<DataSpec>,
}

impl ClassifierSpec {
    /// One data set's seeded split: search = train, validation = val, test = test.
    pub fn split_of(dataset: &str, seed: u64) -> ClassifierSpec {
        let part = |split| DataSpec {
            dataset: dataset.into(),
            split,
            samples: None,
            seed,
            classes: None,
        };
        ClassifierSpec {
            name: None,
            subsample: None,
            search: Some(part(Part::Train)),
            validation: Some(part(Part::Val)),
            test: Some(part(Part::Test)),
        }
    }
}

/// Scores MLP classifier candidates (see the crate docs).
#[derive(Debug, Clone)]
pub struct ClassifierEvaluator {
    name: String,
    subsample: Option<usize>,
    data: BTreeMap<Split, Dataset>,
}

fn config_err(e: impl std::fmt::Display) -> EvalError {
    EvalError::Config(e.to_string())
}

impl ClassifierEvaluator {
    /// Load every split's rows; relative data paths are tried against the working directory,
    /// then against `base_dir`.
    pub fn from_spec(
        spec: &ClassifierSpec,
        base_dir: Option<&Path>,
    ) -> Result<ClassifierEvaluator, EvalError> {
        let mut data = BTreeMap::new();
        for (split, ds) in [
            (Split::Search, &spec.search),
            (Split::Validation, &spec.validation),
            (Split::Test, &spec.test),
        ] {
            if let Some(ds) = ds {
                let rows = ds
                    .resolve(base_dir)
                    .map_err(|e| config_err(format!("classifier {split} data: {e}")))?;
                data.insert(split, rows);
            }
        }
        if data.is_empty() {
            return Err(config_err(
                "classifier: no data; give at least one of [search], [validation], [test]",
            ));
        }
        if spec.subsample == Some(0) {
            return Err(config_err("classifier: subsample must be at least 1"));
        }
        Ok(ClassifierEvaluator {
            name: spec.name.clone().unwrap_or_else(|| "classifier".into()),
            subsample: spec.subsample,
            data,
        })
    }

    /// Read a TOML file ([`ClassifierSpec`]); data paths are relative to its folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClassifierEvaluator, EvalError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let spec: ClassifierSpec =
            toml::from_str(&text).map_err(|e| config_err(format!("{}: {e}", path.display())))?;
        Self::from_spec(&spec, path.parent())
    }

    /// The digits set's seeded split `seed` (search = train, validation = val, test = test).
    pub fn digits(seed: u64) -> Result<ClassifierEvaluator, EvalError> {
        Self::from_spec(&ClassifierSpec::split_of("digits", seed), None)
    }

    /// The rows of a split.
    pub fn data(&self, split: Split) -> Option<&Dataset> {
        self.data.get(&split)
    }

    /// Score in-memory weights on `request.split` (what [`Evaluator::evaluate`] does with the
    /// candidate's [`Candidate::mlp`]).
    pub fn score(&self, weights: &MlpWeights, request: &EvalRequest) -> Result<Score, EvalError> {
        let split = request.split;
        let data = self.data.get(&split).ok_or_else(|| {
            config_err(format!(
                "{}: no {split} data; add a [{split}] table to the classifier config",
                self.name
            ))
        })?;
        data.expect_features(weights.n_inputs())
            .map_err(|e| config_err(format!("{} ({split}): {e}", self.name)))?;
        let c = weights.n_classes();
        if let Some(l) = data.labels.iter().find(|l| **l as usize >= c) {
            return Err(config_err(format!(
                "{} ({split}): {} has label {l}, but the model has {c} outputs",
                self.name, data.name
            )));
        }
        let rows: Vec<usize> = match self.subsample {
            Some(n) if split == Split::Search && n < data.len() => {
                let mut idx = seeded_permutation(
                    data.len(),
                    request.seed,
                    &format!("classifier subsample, generation {}", request.generation),
                );
                idx.truncate(n);
                idx.sort_unstable();
                idx
            }
            _ => (0..data.len()).collect(),
        };
        let subset;
        let data = if rows.len() == data.len() {
            data
        } else {
            subset = data.select(&rows);
            &subset
        };
        let z = logits(weights, data).map_err(|e| config_err(format!("{}: {e}", self.name)))?;
        if z.iter().any(|v| !v.is_finite()) {
            return Ok(Score::failed(format!(
                "{}: non-finite logits on the {split} split",
                self.name
            )));
        }
        let mut items = Vec::with_capacity(rows.len());
        let (mut correct, mut loss) = (0usize, 0.0f64);
        for (k, row) in z.chunks(c).enumerate() {
            let y = data.labels[k] as usize;
            let (pred, max) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, v)| {
                        if *v > bv { (i, *v) } else { (bi, bv) }
                    });
            let max = max as f64;
            let lse = max
                + row
                    .iter()
                    .map(|v| (*v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let l = lse - row[y] as f64;
            let ok = pred == y;
            correct += ok as usize;
            loss += l;
            let mut item = ItemResult::new(rows[k].to_string(), if ok { 1.0 } else { 0.0 });
            item.correct = Some(ok);
            item.output = Some(pred.to_string());
            item.extra.insert("loss".into(), l);
            items.push(item);
        }
        let n = rows.len() as f64;
        let acc = correct as f64 / n;
        let metrics = BTreeMap::from([("acc".to_string(), acc), ("loss".to_string(), loss / n)]);
        Ok(Score::new(acc, metrics, items))
    }
}

impl Evaluator for ClassifierEvaluator {
    fn name(&self) -> &str {
        &self.name
    }

    fn evaluate(
        &self,
        candidate: &dyn Candidate,
        request: &EvalRequest,
    ) -> Result<Score, EvalError> {
        self.score(candidate.mlp()?, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_eval::MlpCandidate;
    use evomerge_models::LanguageModel;
    use evomerge_models::mlp::{TrainConfig, evaluate, train};

    fn trained() -> MlpWeights {
        let train_set = Dataset::digits().split(0).train;
        let init = MlpWeights::init(&[64, 16, 10], 3).unwrap();
        let cfg = TrainConfig {
            epochs: 10,
            batch_size: 64,
            lr: 3e-3,
            seed: 3,
        };
        train(&init, &train_set, &cfg).unwrap()
    }

    #[test]
    fn a_trained_mlp_scores_its_known_accuracy_on_every_split() {
        let w = trained();
        let eval = ClassifierEvaluator::digits(0).unwrap();
        assert_eq!(eval.name(), "classifier");
        let candidate = MlpCandidate::new("trained", w.clone());
        let splits = Dataset::digits().split(0);
        for (split, data) in [
            (Split::Search, &splits.train),
            (Split::Validation, &splits.val),
            (Split::Test, &splits.test),
        ] {
            let known = evaluate(&w, data).unwrap();
            let s = eval
                .evaluate(&candidate, &EvalRequest::new(split, 0, 1))
                .unwrap();
            assert!(!s.is_failed());
            assert!(known.accuracy > 0.8, "{split}: training failed? {known:?}");
            assert_eq!(s.fitness, known.accuracy, "{split}");
            assert_eq!(s.metrics["acc"], known.accuracy);
            assert!((s.metrics["loss"] - known.loss).abs() < 1e-6, "{split}");
            assert_eq!(s.items.len(), data.len());
            let correct = s.items.iter().filter(|i| i.correct == Some(true)).count();
            assert_eq!(correct as f64 / data.len() as f64, known.accuracy);
            let i = &s.items[7];
            assert_eq!(i.id, "7");
            assert_eq!(i.score, if i.correct == Some(true) { 1.0 } else { 0.0 });
            let pred: usize = i.output.as_deref().unwrap().parse().unwrap();
            assert_eq!(pred == data.labels[7] as usize, i.correct.unwrap());
            assert!(i.extra["loss"] >= 0.0);
        }
    }

    #[test]
    fn wrong_feature_count_and_non_mlp_candidates_are_clear_errors() {
        let eval = ClassifierEvaluator::digits(0).unwrap();
        let narrow = MlpCandidate::new("narrow", MlpWeights::init(&[32, 8, 10], 1).unwrap());
        let e = eval
            .evaluate(&narrow, &EvalRequest::new(Split::Test, 0, 0))
            .unwrap_err();
        assert!(matches!(e, EvalError::Config(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("64 features") && msg.contains("expects 32"),
            "{msg}"
        );
        // Fewer outputs than the data has classes.
        let few = MlpCandidate::new("few", MlpWeights::init(&[64, 8, 5], 1).unwrap());
        let msg = eval
            .evaluate(&few, &EvalRequest::new(Split::Test, 0, 0))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("5 outputs"), "{msg}");

        struct NotAnMlp;
        impl Candidate for NotAnMlp {
            fn label(&self) -> String {
                "llama merge".into()
            }
            fn language_model(&self) -> Result<&LanguageModel, EvalError> {
                Err(EvalError::Candidate("none".into()))
            }
            fn write_hf_folder(&self, _: &Path) -> Result<(), EvalError> {
                Ok(())
            }
        }
        let e = eval
            .evaluate(&NotAnMlp, &EvalRequest::new(Split::Test, 0, 0))
            .unwrap_err();
        assert!(matches!(e, EvalError::Candidate(_)), "{e:?}");
        assert!(e.to_string().contains("llama merge: not an MLP"), "{e}");

        // Non-finite weights: the candidate fails, the evaluation does not.
        let mut nan = MlpWeights::init(&[64, 8, 10], 1).unwrap();
        nan.layers[1].bias[0] = f32::NAN;
        let s = eval
            .evaluate(
                &MlpCandidate::new("nan", nan),
                &EvalRequest::new(Split::Test, 0, 0),
            )
            .unwrap();
        assert!(s.is_failed() && s.failure.unwrap().contains("non-finite"));
    }

    #[test]
    fn config_file_with_subsample_csv_data_and_missing_split() {
        let dir = tempfile::tempdir().unwrap();
        // A 3-feature, 2-class CSV next to the config.
        let mut csv = String::from("a,b,c,label\n");
        for i in 0..40 {
            let y = i % 2;
            csv.push_str(&format!("{},{},0.5,{y}\n", y as f32, 1.0 - y as f32));
        }
        std::fs::write(dir.path().join("toy.csv"), csv).unwrap();
        let cfg = dir.path().join("eval.toml");
        std::fs::write(
            &cfg,
            "name = \"toy\"\nsubsample = 10\n[search]\ndataset = \"toy.csv\"\nsplit = \"all\"\n",
        )
        .unwrap();
        let eval = ClassifierEvaluator::from_file(&cfg).unwrap();
        assert_eq!(eval.name(), "toy");
        // Class 0 iff feature a is 0: weights that read it off.
        let mut w = MlpWeights::init(&[3, 2], 0).unwrap();
        w.layers[0].weight = vec![-1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        w.layers[0].bias = vec![0.5, -0.5];
        let c = MlpCandidate::new("toy", w);
        let s0 = eval
            .evaluate(&c, &EvalRequest::new(Split::Search, 0, 9))
            .unwrap();
        assert_eq!(s0.items.len(), 10);
        assert_eq!(s0.fitness, 1.0);
        let again = eval
            .evaluate(&c, &EvalRequest::new(Split::Search, 0, 9))
            .unwrap();
        let next = eval
            .evaluate(&c, &EvalRequest::new(Split::Search, 1, 9))
            .unwrap();
        let ids = |s: &Score| s.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&s0), ids(&again));
        assert_ne!(ids(&s0), ids(&next));
        let e = eval
            .evaluate(&c, &EvalRequest::new(Split::Test, 0, 9))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no test data"), "{e}");
        // Unknown keys and missing data files are config errors.
        std::fs::write(&cfg, "[search]\ndataset = \"toy.csv\"\nsplits = \"all\"\n").unwrap();
        assert!(ClassifierEvaluator::from_file(&cfg).is_err());
        std::fs::write(&cfg, "[test]\ndataset = \"missing.csv\"\n").unwrap();
        let e = ClassifierEvaluator::from_file(&cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
    }
}
