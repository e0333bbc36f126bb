//! Bad input gives errors that say what is wrong and what to do.

use crate::common::{llama_spec, save, weights};
use evomerge_kernels::Device;
use evomerge_models::{Decoder, Hop, LanguageModel, LayerPath, Llama, TokenGenerateOptions};
use std::sync::Arc;

fn err<T: std::fmt::Debug>(r: Result<T, evomerge_models::ModelError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = weights(&llama_spec(), 1);
    w.config["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    save(&w, tmp.path());
    let e = err(LanguageModel::from_dir(tmp.path(), &Device::flex()));
    assert!(e.contains("GPTNeoXForCausalLM"), "{e}");
    assert!(
        e.contains("LlamaForCausalLM")
            && e.contains("MistralForCausalLM")
            && e.contains("Qwen2ForCausalLM"),
        "{e}"
    );
    assert!(e.contains("config.json"), "names the file: {e}");
}

#[test]
fn missing_tokenizer_and_missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    save(&weights(&llama_spec(), 1), tmp.path());
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let e = err(LanguageModel::from_dir(tmp.path(), &Device::flex()));
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");

    let mut w = weights(&llama_spec(), 1);
    w.tensors
        .retain(|(n, _, _)| n != "model.layers.1.mlp.up_proj.weight");
    save(&w, &tmp.path().join("m"));
    let e = err(Llama::from_dir(tmp.path().join("m"), &Device::flex()));
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
}

#[test]
fn prompt_longer_than_the_context_and_bad_paths() {
    let tmp = tempfile::tempdir().unwrap();
    save(&weights(&llama_spec(), 1), tmp.path());
    let m = Arc::new(Llama::from_dir(tmp.path(), &Device::flex()).unwrap());
    let d = Decoder::plain(m.clone());
    let long = vec![5u32; 70];
    let e = err(d.generate(&[long], &TokenGenerateOptions::default(), &mut |_, _| false));
    assert!(
        e.contains("70 tokens") && e.contains("context of 64"),
        "{e}"
    );
    let e = err(d.logits(&[1, 2, 99]));
    assert!(e.contains("99") && e.contains("vocabulary"), "{e}");

    let hop = |model, layer| Hop {
        model,
        layer,
        scale: 1.0,
    };
    let e = err(Decoder::new(
        vec![m.clone()],
        &LayerPath {
            hops: vec![hop(0, 0), hop(1, 0)],
        },
    ));
    assert!(e.contains("hop 1") && e.contains("model 1"), "{e}");
    let e = err(Decoder::new(
        vec![m],
        &LayerPath {
            hops: vec![hop(0, 3)],
        },
    ));
    assert!(e.contains("layer 3") && e.contains("3 layers"), "{e}");
}
