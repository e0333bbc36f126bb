//! Small classification data sets for the data-using merges (Fisher, RegMean, activation
//! matching, REPAIR, greedy soups) and the `classifier` evaluator.
//!
//! A [`Dataset`] is a dense `n x d` matrix of `f32` features with a class label per row. It
//! comes from the sklearn digits set embedded in the `smartcore` crate ([`Dataset::digits`]:
//! 1797 8x8 images, 64 features scaled to `[0, 1]`, 10 classes — nothing is downloaded), or
//! from a user's file ([`Dataset::load`]: CSV with a `label` column, or JSON lines
//! `{"features": [...], "label": 3}`). [`Dataset::split`] makes the fixed, seeded, stratified
//! train/validation/test split every experiment uses, and [`DataSpec`] is the `data:` section
//! of a recipe or an evaluator config that names a data set, a split, a sample count and a seed.
//! For language models the same spec names a text file instead ([`TextSet`], via
//! [`DataSpec::resolve_texts`]).
//!
//! Not for: feature engineering, regression targets, or anything that needs a download.
//!
//! ```
//! use evomerge_data::{Dataset, Part};
//! let digits = Dataset::digits();
//! assert_eq!((digits.len(), digits.n_features, digits.n_classes), (1797, 64, 10));
//! let splits = digits.split(0);
//! let train = splits.part(Part::Train);
//! assert_eq!(train.len() + splits.val.len() + splits.test.len(), 1797);
//! ```

mod load;
mod spec;
mod text;

pub use spec::{DataSpec, Part};
pub use text::TextSet;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// What can go wrong getting data. Every variant names the file (and line) involved.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{what}: rows have {got} features but the model expects {expected}; use a data set with {expected} feature columns (plus the label)"
    )]
    FeatureCount {
        what: String,
        expected: usize,
        got: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Result type of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// A classification data set: `features` is row-major `len() x n_features`, `labels[i]` in
/// `0..n_classes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Where it came from (`digits`, a file path), for messages.
    pub name: String,
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub n_features: usize,
    pub n_classes: usize,
}

/// The three parts of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

impl Splits {
    /// One part by name.
    pub fn part(&self, part: Part) -> Dataset {
        match part {
            Part::Train => self.train.clone(),
            Part::Val => self.val.clone(),
            Part::Test => self.test.clone(),
            Part::All => {
                let mut all = self.train.clone();
                all.extend(&self.val);
                all.extend(&self.test);
                all
            }
        }
    }
}

/// Fraction of each class that goes to validation and to test in [`Dataset::split`].
pub const VAL_FRACTION: f64 = 0.2;
/// See [`VAL_FRACTION`].
pub const TEST_FRACTION: f64 = 0.2;

impl Dataset {
    /// Build a data set, checking that the sizes agree. `n_classes` defaults to the largest
    /// label + 1.
    pub fn new(
        name: impl Into<String>,
        features: Vec<f32>,
        labels: Vec<u32>,
        n_features: usize,
        n_classes: Option<usize>,
    ) -> Result<Dataset> {
        let name = name.into();
        if n_features == 0 {
            return Err(DataError::Invalid(format!("{name}: no feature columns")));
        }
        if features.len() != labels.len() * n_features {
            return Err(DataError::Invalid(format!(
                "{name}: {} feature values for {} rows of {n_features}",
                features.len(),
                labels.len()
            )));
        }
        if let Some(bad) = features.iter().find(|v| !v.is_finite()) {
            return Err(DataError::Invalid(format!(
                "{name}: feature value {bad} is not finite"
            )));
        }
        let max = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        let n_classes = n_classes.unwrap_or(max);
        if max > n_classes {
            return Err(DataError::Invalid(format!(
                "{name}: label {} is outside the {n_classes} classes",
                max - 1
            )));
        }
        Ok(Dataset {
            name,
            features,
            labels,
            n_features,
            n_classes,
        })
    }

    /// The sklearn digits set (1797 x 64, 10 classes) embedded in `smartcore`, pixels scaled
    /// from `0..16` to `[0, 1]`.
    pub fn digits() -> Dataset {
        let d = smartcore::dataset::digits::load_dataset();
        let features = d.data.iter().map(|v| v / 16.0).collect();
        let labels = d.target.iter().map(|t| t.round() as u32).collect();
        Dataset::new("digits", features, labels, d.num_features, Some(10))
            .expect("the embedded digits set is consistent")
    }

    /// Read a user's data set: `*.csv` (numeric columns; the label is the column named `label`,
    /// `target`, `class` or `y` when there is a header, else the last column) or `*.jsonl`
    /// (one object per line with `features` (or `x`) and `label` (or `y`)).
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Dataset> {
        load::load(path.as_ref())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.n_features..(i + 1) * self.n_features]
    }

    /// A clear error unless rows have `expected` features (e.g. a model's input width).
    pub fn expect_features(&self, expected: usize) -> Result<()> {
        if self.n_features != expected {
            return Err(DataError::FeatureCount {
                what: self.name.clone(),
                expected,
                got: self.n_features,
            });
        }
        Ok(())
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.n_features);
        for &i in indices {
            features.extend_from_slice(self.row(i));
        }
        Dataset {
            name: self.name.clone(),
            features,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            n_features: self.n_features,
            n_classes: self.n_classes,
        }
    }

    /// The rows whose label is in `classes` (the label space is kept: labels are not renumbered).
    pub fn with_classes(&self, classes: &[u32]) -> Dataset {
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| classes.contains(&self.labels[i]))
            .collect();
        self.select(&idx)
    }

    /// The first `n` rows (all when `n >= len()`).
    pub fn take(&self, n: usize) -> Dataset {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.select(&idx)
    }

    /// `n` rows drawn without replacement by a seeded shuffle (all, shuffled, when `n >= len()`).
    pub fn sample(&self, n: usize, seed: u64) -> Dataset {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n);
        self.select(&idx)
    }

    /// Append another data set's rows (same feature count).
    pub fn extend(&mut self, other: &Dataset) {
        assert_eq!(self.n_features, other.n_features, "extend: feature counts");
        self.features.extend_from_slice(&other.features);
        self.labels.extend_from_slice(&other.labels);
        self.n_classes = self.n_classes.max(other.n_classes);
    }

    /// The fixed split every experiment uses: per class, a seeded shuffle, then
    /// [`VAL_FRACTION`] to validation, [`TEST_FRACTION`] to test, the rest to train
    /// (stratified, so each part has every class in proportion). Rows keep their original order
    /// inside each part.
    pub fn split(&self, seed: u64) -> Splits {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a_5917);
        let (mut tr, mut va, mut te) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..self.n_classes as u32 {
            let mut idx: Vec<usize> = (0..self.len()).filter(|&i| self.labels[i] == c).collect();
            idx.shuffle(&mut rng);
            let n = idx.len();
            let n_val = (n as f64 * VAL_FRACTION).round() as usize;
            let n_test = (n as f64 * TEST_FRACTION).round() as usize;
            va.extend_from_slice(&idx[..n_val]);
            te.extend_from_slice(&idx[n_val..n_val + n_test]);
            tr.extend_from_slice(&idx[n_val + n_test..]);
        }
        for v in [&mut tr, &mut va, &mut te] {
            v.sort_unstable();
        }
        Splits {
            train: self.select(&tr),
            val: self.select(&va),
            test: self.select(&te),
        }
    }

    /// Count of rows per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.n_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_shape_and_range() {
        let d = Dataset::digits();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.n_features, 64);
        assert_eq!(d.class_counts().iter().sum::<usize>(), 1797);
        assert!(
            d.class_counts().iter().all(|&c| c > 170),
            "{:?}",
            d.class_counts()
        );
        assert!(d.features.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(d.features.contains(&1.0));
    }

    #[test]
    fn split_is_seeded_stratified_and_disjoint() {
        let d = Dataset::digits();
        let a = d.split(0);
        let b = d.split(0);
        let c = d.split(1);
        assert_eq!(a, b);
        assert_ne!(a.train.labels, c.train.labels);
        assert_eq!(a.train.len() + a.val.len() + a.test.len(), d.len());
        for part in [&a.val, &a.test] {
            let counts = part.class_counts();
            assert!(counts.iter().all(|&n| (34..=38).contains(&n)), "{counts:?}");
        }
        // Disjoint: every row of the parts together is a row of the original, each once.
        let mut all = a.part(Part::All);
        all.features
            .chunks(64)
            .for_each(|r| assert_eq!(r.len(), 64));
        assert_eq!(all.len(), d.len());
        all.labels.sort();
        let mut orig = d.labels.clone();
        orig.sort();
        assert_eq!(all.labels, orig);
    }

    #[test]
    fn wrong_feature_count_is_a_clear_error() {
        let d = Dataset::digits();
        let e = d.expect_features(784).unwrap_err().to_string();
        assert!(
            e.contains("digits") && e.contains("64") && e.contains("784"),
            "{e}"
        );
    }

    #[test]
    fn classes_and_samples() {
        let d = Dataset::digits();
        let low = d.with_classes(&[0, 1, 2, 3, 4]);
        assert!(low.labels.iter().all(|&l| l < 5));
        assert_eq!(low.n_classes, 10);
        let s = d.sample(100, 3);
        assert_eq!(s.len(), 100);
        assert_eq!(s, d.sample(100, 3));
        assert_ne!(s, d.sample(100, 4));
    }
}
