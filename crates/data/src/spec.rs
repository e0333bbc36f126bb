//! The `data:` section of a recipe or evaluator config.

use crate::{DataError, Dataset, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which part of the seeded split ([`Dataset::split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    #[default]
    Train,
    #[serde(alias = "validation", alias = "valid")]
    Val,
    Test,
    /// Every row (no split).
    All,
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "train" => Ok(Part::Train),
            "val" | "validation" | "valid" => Ok(Part::Val),
            "test" => Ok(Part::Test),
            "all" => Ok(Part::All),
            other => Err(format!(
                "unknown split '{other}' (use train, val, test or all)"
            )),
        }
    }
}

/// Which data to use: a data set (`digits` or a CSV/JSONL path), the part of its seeded split,
/// optionally only some classes and a seeded sample of rows.
///
/// ```toml
/// [data]
/// dataset = "digits"      # or "data/my_set.csv"
/// split = "train"         # train | val | test | all
/// samples = 512           # optional: a seeded sample of that many rows
/// seed = 0                # split and sample seed
/// classes = [0, 1, 2]     # optional: only rows of these classes
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub dataset: String,
    #[serde(default)]
    pub split: Part,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<u32>>,
}

impl DataSpec {
    /// The digits set's given part, all rows.
    pub fn digits(split: Part) -> DataSpec {
        DataSpec {
            dataset: "digits".into(),
            split,
            samples: None,
            seed: 0,
            classes: None,
        }
    }

    /// The data file, if it exists: the path as given, or relative to `base_dir`.
    pub(crate) fn locate(&self, base_dir: Option<&Path>) -> Option<PathBuf> {
        let raw = PathBuf::from(&self.dataset);
        let path = match base_dir {
            Some(dir) if raw.is_relative() && !raw.exists() => dir.join(&raw),
            _ => raw,
        };
        path.exists().then_some(path)
    }

    /// Load the rows this spec names. A relative path is tried against the working directory,
    /// then against `base_dir` (the folder of the recipe file).
    pub fn resolve(&self, base_dir: Option<&Path>) -> Result<Dataset> {
        let full = if self.dataset == "digits" {
            Dataset::digits()
        } else {
            let path = self.locate(base_dir).ok_or_else(|| {
                DataError::Invalid(format!(
                    "data set '{}' not found (use `digits` for the built-in set, or a path to a *.csv or *.jsonl file)",
                    self.dataset
                ))
            })?;
            Dataset::load(&path)?
        };
        let mut rows = if self.split == Part::All {
            full
        } else {
            full.split(self.seed).part(self.split)
        };
        if let Some(classes) = &self.classes {
            if let Some(c) = classes.iter().find(|c| **c as usize >= rows.n_classes) {
                return Err(DataError::Invalid(format!(
                    "{}: class {c} does not exist (the set has {} classes)",
                    rows.name, rows.n_classes
                )));
            }
            rows = rows.with_classes(classes);
        }
        if let Some(n) = self.samples {
            rows = rows.sample(n, self.seed);
        }
        if rows.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: the {:?} part{} has no rows",
                rows.name,
                self.split,
                if self.classes.is_some() {
                    " with those classes"
                } else {
                    ""
                }
            )));
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_resolves() {
        let spec: DataSpec = toml::from_str(
            "dataset = \"digits\"\nsplit = \"validation\"\nsamples = 50\nclasses = [1, 2]\n",
        )
        .unwrap();
        assert_eq!(spec.split, Part::Val);
        let d = spec.resolve(None).unwrap();
        assert_eq!(d.len(), 50);
        assert!(d.labels.iter().all(|l| *l == 1 || *l == 2));
        let bad = DataSpec {
            classes: Some(vec![12]),
            ..spec.clone()
        };
        assert!(
            bad.resolve(None)
                .unwrap_err()
                .to_string()
                .contains("class 12")
        );
        let missing = DataSpec {
            dataset: "nope.csv".into(),
            ..spec
        };
        assert!(
            missing
                .resolve(None)
                .unwrap_err()
                .to_string()
                .contains("not found")
        );
    }
}
