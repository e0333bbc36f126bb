//! Reading real folders: sharded vs single file, tied heads, and broken inputs with clear errors.

use evomerge_checkpoint::{
    Checkpoint, CheckpointError, CheckpointWriter, Dtype, OutputTensor, WriterOptions,
};
use serde_json::json;
use std::path::Path;

fn write_model(dir: &Path, max_shard_bytes: u64, with_head: bool) {
    let mut plan = vec![
        OutputTensor::new("model.embed_tokens.weight", Dtype::BF16, vec![4, 2]),
        OutputTensor::new("model.layers.0.mlp.up_proj.weight", Dtype::F32, vec![2, 2]),
        OutputTensor::new("model.norm.weight", Dtype::F16, vec![2]),
    ];
    if with_head {
        plan.push(OutputTensor::new("lm_head.weight", Dtype::F32, vec![4, 2]));
    }
    let w = CheckpointWriter::create(
        dir,
        plan,
        WriterOptions {
            max_shard_bytes,
            force: false,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    w.write_f32(
        "model.embed_tokens.weight",
        &[1., 2., 3., 4., 5., 6., 7., 8.],
    )
    .unwrap();
    w.write_f32("model.layers.0.mlp.up_proj.weight", &[0.5, 0.25, -1., 2.])
        .unwrap();
    w.write_f32("model.norm.weight", &[1., 1.]).unwrap();
    if with_head {
        w.write_f32("lm_head.weight", &[0.; 8]).unwrap();
    }
    w.write_file("tokenizer.json", br#"{"model": {}}"#).unwrap();
    w.finish(
        Some(json!({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1, "tie_word_embeddings": !with_head})),
        None,
    )
    .unwrap();
}

#[test]
fn single_and_sharded_read_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(&tmp.path().join("one"), u64::MAX, true);
    write_model(&tmp.path().join("many"), 10, true);
    let a = Checkpoint::open(tmp.path().join("one")).unwrap();
    let b = Checkpoint::open(tmp.path().join("many")).unwrap();
    assert!(b.dir().join("model.safetensors.index.json").exists());
    assert_eq!(a.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>());
    for n in a.names() {
        assert_eq!(a.read_f32(n).unwrap(), b.read_f32(n).unwrap(), "{n}");
    }
    assert_eq!(a.architecture(), Some("LlamaForCausalLM"));
    assert_eq!(a.num_layers(), Some(1));
    assert_eq!(
        a.read_f32("model.embed_tokens.weight").unwrap(),
        vec![1., 2., 3., 4., 5., 6., 7., 8.]
    );
}

#[test]
fn tied_head_resolves_to_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(&tmp.path().join("tied"), u64::MAX, false);
    let c = Checkpoint::open(tmp.path().join("tied")).unwrap();
    assert!(!c.contains("lm_head.weight"));
    assert_eq!(
        c.resolve("lm_head.weight"),
        Some("model.embed_tokens.weight")
    );
    assert_eq!(c.resolve("model.norm.weight"), Some("model.norm.weight"));
    assert_eq!(c.resolve("nope"), None);
}

#[test]
fn missing_tensor_suggests_nearest_name() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(&tmp.path().join("m"), u64::MAX, true);
    let c = Checkpoint::open(tmp.path().join("m")).unwrap();
    let err = c.read_f32("model.norm.weigth").unwrap_err().to_string();
    assert!(err.contains("did you mean 'model.norm.weight'"), "{err}");
}

#[test]
fn corrupt_header_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_model(&dir, u64::MAX, true);
    let file = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] = b'#'; // inside the JSON header
    std::fs::write(&file, &bytes).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err();
    assert!(
        matches!(err, CheckpointError::BadSafetensors { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn truncated_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_model(&dir, u64::MAX, true);
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err();
    assert!(err.to_string().contains("corrupt or truncated"), "{err}");
    // a file shorter than the 8-byte length prefix
    std::fs::write(&file, b"abc").unwrap();
    assert!(Checkpoint::open(&dir).is_err());
}

#[test]
fn index_pointing_at_missing_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_model(&dir, 10, true);
    std::fs::remove_file(dir.join("model-00002-of-00004.safetensors")).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00004.safetensors"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn folder_without_weights() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let err = Checkpoint::open(tmp.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::NoWeights { .. }), "{err}");
    let err = Checkpoint::open(tmp.path().join("absent")).unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn bad_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_model(&dir, u64::MAX, true);
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}
