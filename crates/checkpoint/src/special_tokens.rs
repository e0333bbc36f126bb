//! The files transformers reads next to `tokenizer.json`: `tokenizer_config.json`,
//! `special_tokens_map.json` and `generation_config.json`.
//!
//! A `tokenizer.json` alone loads in transformers as a tokenizer without a BOS, EOS, UNK or
//! padding token (they are named in `tokenizer_config.json`, not in `tokenizer.json`), and
//! lm-evaluation-harness then fails on every request. Every folder evomerge writes therefore gets
//! these files: copied from the tokenizer's source when it has them, otherwise derived here from
//! `tokenizer.json` and `config.json` (`bos_token_id`, `eos_token_id`, `pad_token_id`, the
//! tokenizer model's `unk_token`), the way a Hugging Face model folder has them.
//!
//! ```
//! use evomerge_checkpoint::SpecialTokens;
//! let tokenizer = serde_json::json!({
//!     "added_tokens": [{"id": 0, "content": "<unk>", "special": true}],
//!     "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2}, "unk_token": "<unk>"}
//! });
//! let config = serde_json::json!({"bos_token_id": 1, "eos_token_id": 2});
//! let s = SpecialTokens::derive(&tokenizer, Some(&config));
//! assert_eq!(s.bos.unwrap().content, "<s>");
//! assert_eq!(s.pad.unwrap().id, 0); // no pad_token_id: the unknown token pads
//! ```

use serde_json::{Map, Value, json};

/// One special token: its text and id in `tokenizer.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub content: String,
    pub id: u64,
}

/// The special tokens of a tokenizer, as transformers names them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecialTokens {
    pub bos: Option<Token>,
    pub eos: Option<Token>,
    pub unk: Option<Token>,
    /// The config's `pad_token_id`; without one, the unknown token (else EOS), which is what
    /// lm-evaluation-harness falls back to as well.
    pub pad: Option<Token>,
}

/// The text of token `id` in a `tokenizer.json` (added tokens first, then the model's vocab).
pub fn token_content(tokenizer: &Value, id: u64) -> Option<String> {
    if let Some(added) = tokenizer.get("added_tokens").and_then(Value::as_array) {
        for t in added {
            if t.get("id").and_then(Value::as_u64) == Some(id)
                && let Some(c) = t.get("content").and_then(Value::as_str)
            {
                return Some(c.to_string());
            }
        }
    }
    match tokenizer.pointer("/model/vocab")? {
        // WordLevel, WordPiece, BPE: {"token": id}
        Value::Object(map) => map
            .iter()
            .find(|(_, v)| v.as_u64() == Some(id))
            .map(|(k, _)| k.clone()),
        // Unigram: [["piece", score], ...], the index is the id
        Value::Array(pieces) => pieces
            .get(id as usize)?
            .get(0)?
            .as_str()
            .map(str::to_string),
        _ => None,
    }
}

/// The id of token `content` in a `tokenizer.json`.
pub fn token_id(tokenizer: &Value, content: &str) -> Option<u64> {
    if let Some(added) = tokenizer.get("added_tokens").and_then(Value::as_array) {
        for t in added {
            if t.get("content").and_then(Value::as_str) == Some(content)
                && let Some(id) = t.get("id").and_then(Value::as_u64)
            {
                return Some(id);
            }
        }
    }
    match tokenizer.pointer("/model/vocab")? {
        Value::Object(map) => map.get(content)?.as_u64(),
        Value::Array(pieces) => pieces
            .iter()
            .position(|p| p.get(0).and_then(Value::as_str) == Some(content))
            .map(|i| i as u64),
        _ => None,
    }
}

/// A config id key: a number, or the first of a list (`eos_token_id: [2, 32000]`).
fn config_id(config: Option<&Value>, key: &str) -> Option<u64> {
    let v = config?.get(key)?;
    v.as_u64()
        .or_else(|| v.as_array()?.first().and_then(Value::as_u64))
}

impl SpecialTokens {
    /// Derive the special tokens from `tokenizer.json` and the model's `config.json`.
    pub fn derive(tokenizer: &Value, config: Option<&Value>) -> SpecialTokens {
        let by_id = |key: &str| {
            let id = config_id(config, key)?;
            Some(Token {
                content: token_content(tokenizer, id)?,
                id,
            })
        };
        let unk = match tokenizer
            .pointer("/model/unk_token")
            .and_then(Value::as_str)
        {
            Some(content) => token_id(tokenizer, content).map(|id| Token {
                content: content.to_string(),
                id,
            }),
            None => tokenizer
                .pointer("/model/unk_id")
                .and_then(Value::as_u64)
                .and_then(|id| {
                    Some(Token {
                        content: token_content(tokenizer, id)?,
                        id,
                    })
                }),
        };
        let bos = by_id("bos_token_id");
        let eos = by_id("eos_token_id");
        let pad = by_id("pad_token_id")
            .or_else(|| unk.clone())
            .or_else(|| eos.clone());
        SpecialTokens { bos, eos, unk, pad }
    }

    fn named(&self) -> [(&'static str, &Option<Token>); 4] {
        [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("unk_token", &self.unk),
            ("pad_token", &self.pad),
        ]
    }
}

fn added_token_entry(t: &Value) -> Value {
    let flag = |k: &str, default: bool| t.get(k).and_then(Value::as_bool).unwrap_or(default);
    json!({
        "content": t.get("content").cloned().unwrap_or(Value::Null),
        "lstrip": flag("lstrip", false),
        "normalized": flag("normalized", false),
        "rstrip": flag("rstrip", false),
        "single_word": flag("single_word", false),
        "special": flag("special", true),
    })
}

/// `tokenizer_config.json` for a `tokenizer.json` (a fast tokenizer with the special tokens of
/// [`SpecialTokens::derive`], `model_max_length` from `max_position_embeddings`).
pub fn tokenizer_config(tokenizer: &Value, config: Option<&Value>) -> Value {
    let special = SpecialTokens::derive(tokenizer, config);
    let mut out = Map::new();
    let mut decoder = Map::new();
    if let Some(added) = tokenizer.get("added_tokens").and_then(Value::as_array) {
        for t in added {
            if let Some(id) = t.get("id").and_then(Value::as_u64) {
                decoder.insert(id.to_string(), added_token_entry(t));
            }
        }
    }
    out.insert("added_tokens_decoder".into(), Value::Object(decoder));
    for (key, token) in special.named() {
        out.insert(
            key.into(),
            token
                .as_ref()
                .map(|t| Value::from(t.content.clone()))
                .unwrap_or(Value::Null),
        );
    }
    out.insert("clean_up_tokenization_spaces".into(), Value::Bool(false));
    if let Some(n) = config
        .and_then(|c| c.get("max_position_embeddings"))
        .and_then(Value::as_u64)
    {
        out.insert("model_max_length".into(), Value::from(n));
    }
    out.insert(
        "tokenizer_class".into(),
        Value::from("PreTrainedTokenizerFast"),
    );
    Value::Object(out)
}

/// `special_tokens_map.json`: the special tokens of [`SpecialTokens::derive`].
pub fn special_tokens_map(tokenizer: &Value, config: Option<&Value>) -> Value {
    let special = SpecialTokens::derive(tokenizer, config);
    let mut out = Map::new();
    for (key, token) in special.named() {
        if let Some(t) = token {
            out.insert(
                key.into(),
                json!({"content": t.content, "lstrip": false, "normalized": false,
                       "rstrip": false, "single_word": false}),
            );
        }
    }
    Value::Object(out)
}

/// `generation_config.json` for a causal language model's config (its `bos_token_id`,
/// `eos_token_id`, `pad_token_id`); `None` when the config names none of them.
pub fn generation_config(config: &Value) -> Option<Value> {
    let mut out = Map::new();
    out.insert("_from_model_config".into(), Value::Bool(true));
    let mut any = false;
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
            any = true;
        }
    }
    any.then_some(Value::Object(out))
}

/// The side files a folder with `tokenizer` (its `tokenizer.json`, if any) and `config` should
/// have, by file name. The writer adds those the folder lacks; the three tokenizer files come as a
/// set (derived only when there is no `tokenizer_config.json`, so a copied one is never
/// contradicted).
pub(crate) fn side_files(
    tokenizer: Option<&Value>,
    config: Option<&Value>,
    has_tokenizer_config: bool,
) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    if let Some(tok) = tokenizer
        && !has_tokenizer_config
    {
        out.push(("tokenizer_config.json", tokenizer_config(tok, config)));
        out.push(("special_tokens_map.json", special_tokens_map(tok, config)));
    }
    if tokenizer.is_some()
        && let Some(g) = config.and_then(generation_config)
    {
        out.push(("generation_config.json", g));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unigram() -> Value {
        json!({
            "added_tokens": [{"id": 3, "content": "<pad>", "special": true}],
            "model": {"type": "Unigram", "unk_id": 0,
                      "vocab": [["<unk>", 0.0], ["<s>", 0.0], ["</s>", 0.0], ["<pad>", 0.0], ["a", -1.0]]}
        })
    }

    #[test]
    fn ids_and_contents_both_ways() {
        let t = unigram();
        assert_eq!(token_content(&t, 4).as_deref(), Some("a"));
        assert_eq!(token_id(&t, "</s>"), Some(2));
        assert_eq!(token_content(&t, 9), None);
        let s = SpecialTokens::derive(
            &t,
            Some(&json!({"bos_token_id": 1, "eos_token_id": [2, 4], "pad_token_id": 3})),
        );
        assert_eq!(
            s.unk,
            Some(Token {
                content: "<unk>".into(),
                id: 0
            })
        );
        assert_eq!(s.eos.unwrap().content, "</s>");
        assert_eq!(s.pad.unwrap().content, "<pad>");
        // no config: no bos/eos, pad falls back to unk
        let bare = SpecialTokens::derive(&t, None);
        assert!(bare.bos.is_none() && bare.eos.is_none());
        assert_eq!(bare.pad.unwrap().id, 0);
    }

    #[test]
    fn files_name_the_tokens() {
        let t = unigram();
        let c = json!({"bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 128});
        let tc = tokenizer_config(&t, Some(&c));
        assert_eq!(tc["bos_token"], "<s>");
        assert_eq!(tc["eos_token"], "</s>");
        assert_eq!(tc["unk_token"], "<unk>");
        assert_eq!(tc["pad_token"], "<unk>");
        assert_eq!(tc["model_max_length"], 128);
        assert_eq!(tc["added_tokens_decoder"]["3"]["content"], "<pad>");
        let m = special_tokens_map(&t, Some(&c));
        assert_eq!(m["eos_token"]["content"], "</s>");
        let g = generation_config(&c).unwrap();
        assert_eq!(g["eos_token_id"], 2);
        assert!(g.get("pad_token_id").is_none());
        assert!(generation_config(&json!({"hidden_size": 4})).is_none());
        // a copied tokenizer_config.json is not contradicted
        let names: Vec<&str> = side_files(Some(&t), Some(&c), true)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["generation_config.json"]);
        assert!(side_files(None, Some(&c), false).is_empty());
    }
}
