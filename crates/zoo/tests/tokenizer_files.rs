//! Every folder the zoo saves has the tokenizer files transformers (and lm-evaluation-harness,
//! which needs BOS/EOS/UNK/PAD) read next to `tokenizer.json`: checked against committed
//! expected files, and the special tokens against the vocabulary and config.json ids.

use evomerge_checkpoint::Dtype;
use evomerge_zoo::TinyLlama;
use evomerge_zoo::mini_world::{tokenizer_json, vocabulary};
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

/// What lm-evaluation-harness relies on: each special token named in tokenizer_config.json is a
/// token of tokenizer.json, with the id config.json gives it.
fn check_special_tokens(dir: &Path) {
    let tc = read(&dir.join("tokenizer_config.json"));
    let tok = read(&dir.join("tokenizer.json"));
    let config = read(&dir.join("config.json"));
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let id_of = |key: &str| {
        let content = tc[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not set in tokenizer_config.json"));
        vocab
            .get(content)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{key} {content:?} is not in tokenizer.json's vocab"))
    };
    assert_eq!(Some(id_of("bos_token")), config["bos_token_id"].as_u64());
    assert_eq!(Some(id_of("eos_token")), config["eos_token_id"].as_u64());
    assert_eq!(tok["model"]["unk_token"].as_str(), tc["unk_token"].as_str());
    id_of("unk_token");
    id_of("pad_token");
    for (id, entry) in tc["added_tokens_decoder"].as_object().unwrap() {
        let content = entry["content"].as_str().unwrap();
        assert_eq!(vocab[content].as_u64().unwrap().to_string(), *id);
    }
    let map = read(&dir.join("special_tokens_map.json"));
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        assert_eq!(map[key]["content"], tc[key], "{key}");
    }
    let generation = read(&dir.join("generation_config.json"));
    assert_eq!(generation["bos_token_id"], config["bos_token_id"]);
    assert_eq!(generation["eos_token_id"], config["eos_token_id"]);
}

#[test]
fn toy_models_have_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy");
    TinyLlama::default()
        .random(0)
        .save(&dir, Dtype::F32, u64::MAX)
        .unwrap();
    check_special_tokens(&dir);
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

#[test]
fn mini_world_models_have_tokenizer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mini");
    // the mini world's model layout (crates/cli/src/mini_world_cmd.rs), tiny
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
    check_special_tokens(&dir);
    assert_eq!(
        read(&dir.join("tokenizer_config.json")),
        expected("mini_world_tokenizer_config.json")
    );
    assert_eq!(
        read(&dir.join("special_tokens_map.json")),
        expected("special_tokens_map.json")
    );
}
