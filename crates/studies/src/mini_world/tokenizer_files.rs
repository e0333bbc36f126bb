//! The mini world's model folders have the tokenizer files transformers (and
//! lm-evaluation-harness, which needs BOS/EOS/UNK/PAD) read next to `tokenizer.json`: checked
//! against committed expected files, and the special tokens against the vocabulary and
//! config.json ids (the zoo's toy models have the same test in crates/zoo/tests).

use super::data::{tokenizer_json, vocabulary};
use evomerge_checkpoint::Dtype;
use evomerge_zoo::{TinyLlama, assert_special_tokens};
use serde_json::Value;
use std::path::Path;

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn expected(name: &str) -> Value {
    read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/expected")
            .join(name),
    )
}

#[test]
fn mini_world_models_have_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mini");
    // the mini world's model layout (crates/studies/src/mini_world/world.rs), tiny
    let spec = TinyLlama {
        hidden: 16,
        intermediate: 32,
        layers: 1,
        vocab: vocabulary().len(),
        heads: 4,
        kv_heads: 4,
        max_positions: 64,
        ..Default::default()
    };
    spec.random(0)
        .save_with_tokenizer(&dir, Dtype::F32, u64::MAX, &tokenizer_json())
        .unwrap();
    assert_special_tokens(&dir);
    assert_eq!(
        read(&dir.join("tokenizer_config.json")),
        expected("mini_world_tokenizer_config.json")
    );
    assert_eq!(
        read(&dir.join("special_tokens_map.json")),
        expected("special_tokens_map.json")
    );
}
