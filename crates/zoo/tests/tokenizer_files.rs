//! Every folder the zoo saves has the tokenizer files transformers (and lm-evaluation-harness,
//! which needs BOS/EOS/UNK/PAD) read next to `tokenizer.json`: checked against committed
//! expected files, and the special tokens against the vocabulary and config.json ids.

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
fn toy_models_have_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy");
    TinyLlama::default()
        .random(0)
        .save(&dir, Dtype::F32, u64::MAX)
        .unwrap();
    assert_special_tokens(&dir);
    assert_eq!(
        read(&dir.join("tokenizer_config.json")),
        expected("toy_tokenizer_config.json")
    );
    assert_eq!(
        read(&dir.join("special_tokens_map.json")),
        expected("special_tokens_map.json")
    );
    assert_eq!(
        read(&dir.join("generation_config.json")),
        expected("generation_config.json")
    );
}
