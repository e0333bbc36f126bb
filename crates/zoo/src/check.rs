//! A check for tests: the tokenizer files of a saved folder agree with each other.

use serde_json::Value;
use std::path::Path;

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What lm-evaluation-harness relies on, checked in a saved model folder: each special token
/// named in tokenizer_config.json is a token of tokenizer.json, with the id config.json (and
/// generation_config.json) gives it. For tests: panics naming the first thing that is wrong.
pub fn assert_special_tokens(dir: &Path) {
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
