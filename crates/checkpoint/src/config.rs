//! The few `config.json` fields a merge reads or rewrites.

use crate::Dtype;
use serde_json::Value;

/// Keys that hold the decoder layer count, in the order they are tried (Llama-family first, GPT-2).
pub const NUM_LAYER_KEYS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers"];

/// Files copied from the donor model next to the merged weights (mergekit's list plus `vocab.json`).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// The decoder layer count of a config, from the first key of [`NUM_LAYER_KEYS`] that is present
/// (also inside `text_config` for multimodal configs).
pub fn num_layers(config: &Value) -> Option<usize> {
    for key in NUM_LAYER_KEYS {
        if let Some(n) = config.get(*key).and_then(Value::as_u64) {
            return Some(n as usize);
        }
    }
    config.get("text_config").and_then(num_layers)
}

/// Set the layer count under whichever key the config already uses (default `num_hidden_layers`).
pub fn set_num_layers(config: &mut Value, n: usize) {
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    let key = NUM_LAYER_KEYS
        .iter()
        .find(|k| obj.contains_key(**k))
        .copied()
        .unwrap_or("num_hidden_layers");
    obj.insert(key.to_string(), Value::from(n));
}

/// Record the storage dtype: `torch_dtype`, and `dtype` too when the config already has it
/// (transformers v5 writes `dtype`).
pub fn set_torch_dtype(config: &mut Value, dtype: Dtype) {
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    obj.insert("torch_dtype".into(), Value::from(dtype.torch_name()));
    if obj.contains_key("dtype") {
        obj.insert("dtype".into(), Value::from(dtype.torch_name()));
    }
}

/// The dtype the config declares (`torch_dtype` or `dtype`), if it is one evomerge knows.
pub fn config_dtype_name(config: &Value) -> Option<Dtype> {
    ["torch_dtype", "dtype"]
        .iter()
        .filter_map(|k| config.get(*k).and_then(Value::as_str))
        .find_map(|s| s.parse().ok())
}

/// Whether the LM head shares the embedding matrix. Transformers' default is `true` when the key
/// is absent (GPT-2 and most small models); Llama configs set it to `false` explicitly.
pub fn tie_word_embeddings(config: &Value) -> bool {
    config
        .get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layer_keys() {
        let mut llama = json!({"num_hidden_layers": 2});
        let mut gpt2 = json!({"n_layer": 12});
        assert_eq!(num_layers(&llama), Some(2));
        assert_eq!(num_layers(&gpt2), Some(12));
        set_num_layers(&mut llama, 4);
        set_num_layers(&mut gpt2, 24);
        assert_eq!(llama["num_hidden_layers"], 4);
        assert_eq!(gpt2["n_layer"], 24);
        assert!(gpt2.get("num_hidden_layers").is_none());
        assert_eq!(
            num_layers(&json!({"text_config": {"num_hidden_layers": 7}})),
            Some(7)
        );
    }

    #[test]
    fn dtype_keys() {
        let mut c = json!({"torch_dtype": "float32", "dtype": "float32"});
        set_torch_dtype(&mut c, Dtype::BF16);
        assert_eq!(c["torch_dtype"], "bfloat16");
        assert_eq!(c["dtype"], "bfloat16");
        assert_eq!(config_dtype_name(&c), Some(Dtype::BF16));
    }
}
