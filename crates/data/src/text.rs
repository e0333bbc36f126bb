//! Text data for the data-using merges of language models (RegMean's Gram matrices, Fisher
//! information and greedy soups of Llama-family checkpoints): a list of examples, each one
//! sequence the model reads.
//!
//! Files: `*.txt` (one example per non-empty line) or `*.jsonl` (`{"text": "..."}` per line;
//! other keys are ignored). [`TextSet::split`] is the seeded train/validation/test split with
//! the same fractions as [`crate::Dataset::split`] (not stratified: texts have no classes).

use crate::{DataError, DataSpec, Part, Result, TEST_FRACTION, VAL_FRACTION};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// A list of text examples.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSet {
    /// Where it came from (a file path), for messages.
    pub name: String,
    pub texts: Vec<String>,
}

impl TextSet {
    /// Read a `*.txt` or `*.jsonl` file (see the module docs).
    pub fn load(path: impl AsRef<Path>) -> Result<TextSet> {
        let path = path.as_ref();
        let raw = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let mut texts = Vec::new();
        match ext.as_deref() {
            Some("txt") | Some("text") => {
                texts.extend(
                    raw.lines()
                        .map(str::trim_end)
                        .filter(|l| !l.trim().is_empty())
                        .map(String::from),
                );
            }
            Some("jsonl") | Some("ndjson") => {
                for (i, line) in raw.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let err = |message: String| DataError::Parse {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message,
                    };
                    let v: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
                    let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                        err("no \"text\" string; a language model's data needs {\"text\": \"...\"} per line".into())
                    })?;
                    if !text.trim().is_empty() {
                        texts.push(text.to_string());
                    }
                }
            }
            _ => {
                return Err(DataError::Invalid(format!(
                    "{}: unknown text format; a language model's data is a *.txt file (one example per line) or *.jsonl ({{\"text\": \"...\"}} per line)",
                    path.display()
                )));
            }
        }
        if texts.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: no text examples (every line is empty)",
                path.display()
            )));
        }
        Ok(TextSet {
            name: path.display().to_string(),
            texts,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// One part of the seeded split: a seeded shuffle, then [`VAL_FRACTION`] to validation,
    /// [`TEST_FRACTION`] to test, the rest to train; examples keep their file order inside a
    /// part.
    pub fn part(&self, part: Part, seed: u64) -> TextSet {
        if part == Part::All {
            return self.clone();
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_7e47_5917));
        let n = idx.len();
        let n_val = (n as f64 * VAL_FRACTION).round() as usize;
        let n_test = (n as f64 * TEST_FRACTION).round() as usize;
        let mut chosen = match part {
            Part::Val => idx[..n_val].to_vec(),
            Part::Test => idx[n_val..n_val + n_test].to_vec(),
            _ => idx[n_val + n_test..].to_vec(),
        };
        chosen.sort_unstable();
        self.select(&chosen)
    }

    /// A seeded sample of `n` examples (all of them when `n >= len`), in file order.
    pub fn sample(&self, n: usize, seed: u64) -> TextSet {
        if n >= self.len() {
            return self.clone();
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut chosen = idx[..n].to_vec();
        chosen.sort_unstable();
        self.select(&chosen)
    }

    fn select(&self, idx: &[usize]) -> TextSet {
        TextSet {
            name: self.name.clone(),
            texts: idx.iter().map(|&i| self.texts[i].clone()).collect(),
        }
    }
}

impl DataSpec {
    /// Load the text examples this spec names (for a language model). A relative path is
    /// tried against the working directory, then against `base_dir`.
    pub fn resolve_texts(&self, base_dir: Option<&Path>) -> Result<TextSet> {
        if self.dataset == "digits" {
            return Err(DataError::Invalid(
                "data set 'digits' is a classification set, but these models are language models; point `dataset` at a *.txt file (one example per line) or *.jsonl ({\"text\": \"...\"} per line)".into(),
            ));
        }
        if self.classes.is_some() {
            return Err(DataError::Invalid(format!(
                "{}: `classes` selects rows of a classification set; text data has no classes — remove it",
                self.dataset
            )));
        }
        let path = self.locate(base_dir).ok_or_else(|| {
            DataError::Invalid(format!(
                "text data '{}' not found (a *.txt file with one example per line, or *.jsonl with {{\"text\": \"...\"}} per line)",
                self.dataset
            ))
        })?;
        let full = TextSet::load(&path)?;
        let mut rows = full.part(self.split, self.seed);
        if let Some(n) = self.samples {
            rows = rows.sample(n, self.seed);
        }
        if rows.is_empty() {
            return Err(DataError::Invalid(format!(
                "{}: the {:?} part has no examples ({} in the file); use split = \"all\" or more examples",
                rows.name,
                self.split,
                full.len()
            )));
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn txt_and_jsonl_load_split_and_sample() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..100).map(|i| format!("example {i}\n\n")).collect();
        let txt = write(dir.path(), "a.txt", &body);
        let set = TextSet::load(&txt).unwrap();
        assert_eq!(set.len(), 100);
        let jsonl: String = (0..100)
            .map(|i| format!("{{\"text\": \"example {i}\", \"id\": {i}}}\n"))
            .collect();
        let js = TextSet::load(write(dir.path(), "a.jsonl", &jsonl)).unwrap();
        assert_eq!(js.texts, set.texts);
        let (tr, va, te) = (
            set.part(Part::Train, 0),
            set.part(Part::Val, 0),
            set.part(Part::Test, 0),
        );
        assert_eq!((tr.len(), va.len(), te.len()), (60, 20, 20));
        let mut all: Vec<_> = [tr.texts, va.texts, te.texts].concat();
        all.sort();
        let mut orig = set.texts.clone();
        orig.sort();
        assert_eq!(all, orig);
        assert_eq!(set.part(Part::Val, 0), set.part(Part::Val, 0));
        assert_ne!(set.part(Part::Val, 0), set.part(Part::Val, 1));
        assert_eq!(set.sample(7, 3).len(), 7);
        assert_eq!(set.sample(7, 3), set.sample(7, 3));
    }

    #[test]
    fn bad_text_data_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |d: &str| DataSpec {
            dataset: d.into(),
            split: Part::All,
            samples: None,
            seed: 0,
            classes: None,
        };
        let e = spec("digits").resolve_texts(None).unwrap_err().to_string();
        assert!(e.contains("language model") && e.contains(".txt"), "{e}");
        let e = spec("missing.txt")
            .resolve_texts(None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
        let p = write(dir.path(), "b.jsonl", "{\"text\": \"ok\"}\n{\"body\": 1}\n");
        let e = TextSet::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("\"text\""), "{e}");
        let p = write(dir.path(), "c.csv", "a,b\n");
        let e = TextSet::load(&p).unwrap_err().to_string();
        assert!(e.contains("unknown text format"), "{e}");
        let p = write(dir.path(), "d.txt", "\n\n");
        let e = TextSet::load(&p).unwrap_err().to_string();
        assert!(e.contains("no text examples"), "{e}");
        // Relative to the recipe's folder.
        write(dir.path(), "e.txt", "one\ntwo\n");
        let set = spec("e.txt").resolve_texts(Some(dir.path())).unwrap();
        assert_eq!(set.len(), 2);
    }
}
