//! Text <-> token ids through a Hugging Face `tokenizer.json` (the `tokenizers` crate).

use crate::ModelError;
use std::path::{Path, PathBuf};

/// A fast tokenizer loaded from `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl Tokenizer {
    /// `dir/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tokenizer, ModelError> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            let hint = if dir.join("tokenizer.model").exists() {
                " (it has a sentencepiece tokenizer.model: convert it once with transformers, `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`, which writes tokenizer.json)"
            } else {
                " (copy the tokenizer files of the model it was fine-tuned from)"
            };
            return Err(ModelError::Tokenizer {
                path: path.display().to_string(),
                message: format!(
                    "missing: evomerge needs the Hugging Face fast-tokenizer file{hint}"
                ),
            });
        }
        Tokenizer::from_file(&path)
    }

    /// A `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer, ModelError> {
        let path = path.as_ref().to_path_buf();
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.display().to_string(),
            message: format!("cannot load: {e}"),
        })?;
        Ok(Tokenizer { inner, path })
    }

    /// From the JSON text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Tokenizer, ModelError> {
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| ModelError::Tokenizer {
            path: "<in memory>".into(),
            message: format!("cannot parse: {e}"),
        })?;
        Ok(Tokenizer {
            inner,
            path: PathBuf::from("<in memory>"),
        })
    }

    /// The `tokenizer.json` text (to write next to exported weights).
    pub fn to_json(&self) -> Result<String, ModelError> {
        self.inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.display().to_string(),
                message: format!("cannot serialize: {e}"),
            })
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`; `special` adds the tokenizer's own special tokens (BOS, ...).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, ModelError> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.display().to_string(),
                message: format!("cannot encode {text:?}: {e}"),
            })
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.display().to_string(),
                message: format!("cannot decode {ids:?}: {e}"),
            })
    }

    /// The id of a token string (e.g. `"</s>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
