//! The path checkpoint against an independent f64 reference of the path (the decoder tests'
//! plain f64 loops over the Hugging Face tensors), and what it tells transformers.

#[path = "../../../models/tests/it/common/mod.rs"]
mod reference;

use evomerge_checkpoint::Checkpoint;
use evomerge_genome::{
    PATH_CONFIGURATION_PY, PATH_MODEL_TYPE, PATH_MODELING_PY, export_path, is_path_config,
    load_decoder, load_path_checkpoint,
};
use evomerge_kernels::Device;
use evomerge_models::{Decoder, Hop, LayerPath, Llama};
use reference::{RefModel, llama_spec, max_abs_diff, qwen_spec, reference_logits, save, weights};
use std::path::Path;
use std::sync::Arc;

const TOL: f64 = 1e-4;

/// The exported folder read back as f64 tensors with its config.json, with no evomerge code
/// but the safetensors reader.
fn folder_model(dir: &Path) -> RefModel {
    let ckpt = Checkpoint::open(dir).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let t = ckpt
        .names()
        .map(|n| {
            let v = ckpt.read_f32(n).unwrap();
            (n.to_string(), v.into_iter().map(f64::from).collect())
        })
        .collect();
    RefModel { config, t }
}

/// The reference run of the hops the folder's `input_layers` / `input_scales` name.
fn folder_reference(dir: &Path, ids: &[u32]) -> Vec<Vec<f64>> {
    let m = folder_model(dir);
    let layers = m.config["input_layers"].as_array().unwrap();
    let scales = m.config["input_scales"].as_array().unwrap();
    assert_eq!(layers.len(), scales.len());
    let hops: Vec<(usize, usize, f64)> = layers
        .iter()
        .zip(scales)
        .map(|(l, s)| (0, l.as_u64().unwrap() as usize, s.as_f64().unwrap()))
        .collect();
    reference_logits(&[&m], &hops, ids, None)
}

fn check(spec: evomerge_zoo::TinyLlama, model_type: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (wa, wb) = (weights(&spec, 51), weights(&spec, 52));
    save(&wa, &tmp.path().join("a"));
    save(&wb, &tmp.path().join("b"));
    let (ra, rb) = (RefModel::new(&wa), RefModel::new(&wb));
    let ca = Checkpoint::open(tmp.path().join("a")).unwrap();
    let cb = Checkpoint::open(tmp.path().join("b")).unwrap();
    let hops = [
        (0, 0, 1.0f32),
        (1, 2, 0.8),
        (0, 1, 1.3),
        (1, 2, 1.1), // B's layer 2 again: one stored copy, two hops with their own scales
        (0, 1, 1.0),
        (0, 2, 1.0),
    ];
    let path = LayerPath {
        hops: hops
            .iter()
            .map(|&(model, layer, scale)| Hop {
                model,
                layer,
                scale,
            })
            .collect(),
    };
    let out = export_path(&path, &[&ca, &cb], &tmp.path().join("path"), false).unwrap();

    // What transformers reads: a model type of its own, mapped to the files in the folder.
    let config = Checkpoint::open(&out).unwrap().config().cloned().unwrap();
    assert!(is_path_config(&config));
    assert_eq!(config["model_type"], PATH_MODEL_TYPE);
    assert_eq!(config["base_model_type"], model_type);
    assert_eq!(config["num_hidden_layers"], 4); // A0, B2, A1, A2 stored once each
    assert_eq!(config["num_hops"], 6);
    assert_eq!(
        config["input_layers"],
        serde_json::json!([0, 1, 2, 1, 2, 3])
    );
    for (file, text) in [PATH_CONFIGURATION_PY, PATH_MODELING_PY] {
        assert_eq!(std::fs::read_to_string(out.join(file)).unwrap(), text);
    }
    for (auto, class) in [
        ("AutoConfig", "EvomergePathConfig"),
        ("AutoModelForCausalLM", "EvomergePathForCausalLM"),
    ] {
        let target = config["auto_map"][auto].as_str().unwrap();
        let (module, name) = target.split_once('.').unwrap();
        let source = std::fs::read_to_string(out.join(format!("{module}.py"))).unwrap();
        assert_eq!(name, class);
        assert!(source.contains(&format!("class {class}(")), "{target}");
    }
    assert!(
        out.join("tokenizer_config.json").exists(),
        "{:?}",
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );

    // evomerge's logits of the exported folder equal the f64 reference of the folder, and that
    // equals the reference of the path over the source models.
    let device = Device::flex();
    let decoder = load_path_checkpoint(&out, &device).unwrap();
    // what `evomerge inspect` loads
    let inspected = load_decoder(&out, &device).unwrap();
    for ids in [vec![1u32, 7, 19, 33, 2, 60, 5], vec![3, 4]] {
        let got = decoder.logits(&ids).unwrap();
        assert_eq!(inspected.logits(&ids).unwrap(), got);
        let want = folder_reference(&out, &ids);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < TOL, "{model_type} {ids:?}: max abs diff {diff}");
        let ref_hops: Vec<(usize, usize, f64)> =
            hops.iter().map(|&(m, l, s)| (m, l, s as f64)).collect();
        let over_sources = reference_logits(&[&ra, &rb], &ref_hops, &ids, None);
        let as_f32: Vec<Vec<f32>> = want
            .iter()
            .map(|r| r.iter().map(|&x| x as f32).collect())
            .collect();
        assert!(max_abs_diff(&as_f32, &over_sources) < 1e-5);
        // the path is not A's plain forward pass (the scales and hops matter)
        let plain_a = reference_logits(&[&ra], &reference::plain(&ra), &ids, None);
        assert!(max_abs_diff(&got, &plain_a) > 1e-2);
        // what a loader that ignores the path computes: the stored layers in order
        let stored: Vec<(usize, usize, f64)> = (0..4).map(|l| (0, l, 1.0)).collect();
        let in_order = reference_logits(&[&folder_model(&out)], &stored, &ids, None);
        assert!(max_abs_diff(&got, &in_order) > 1e-2);
    }
}

#[test]
fn llama_path_export_matches_f64_reference() {
    check(llama_spec(), "llama");
}

#[test]
fn qwen2_path_export_matches_f64_reference() {
    check(qwen_spec(), "qwen2");
}

#[test]
fn a_path_without_scales_exports_as_a_plain_frankenmerge() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = llama_spec();
    let (wa, wb) = (weights(&spec, 61), weights(&spec, 62));
    save(&wa, &tmp.path().join("a"));
    save(&wb, &tmp.path().join("b"));
    let (ra, rb) = (RefModel::new(&wa), RefModel::new(&wb));
    let ca = Checkpoint::open(tmp.path().join("a")).unwrap();
    let cb = Checkpoint::open(tmp.path().join("b")).unwrap();
    let hops = [(0, 0), (1, 1), (1, 1), (0, 1), (0, 2)];
    let path = LayerPath {
        hops: hops
            .iter()
            .map(|&(model, layer)| Hop {
                model,
                layer,
                scale: 1.0,
            })
            .collect(),
    };
    let out = export_path(&path, &[&ca, &cb], &tmp.path().join("path"), false).unwrap();
    let c = Checkpoint::open(&out).unwrap();
    let config = c.config().unwrap();
    assert!(!is_path_config(config));
    assert_eq!(config["model_type"], "llama");
    assert_eq!(
        config["architectures"],
        serde_json::json!(["LlamaForCausalLM"])
    );
    assert!(config.get("auto_map").is_none());
    assert!(!out.join(PATH_MODELING_PY.0).exists());
    assert_eq!(c.num_layers(), Some(5));
    let ids = [1u32, 9, 8, 40, 7];
    let got = Decoder::plain(Arc::new(Llama::from_dir(&out, &Device::flex()).unwrap()))
        .logits(&ids)
        .unwrap();
    assert_eq!(
        load_decoder(&out, &Device::flex())
            .unwrap()
            .logits(&ids)
            .unwrap(),
        got
    );
    let ref_hops: Vec<(usize, usize, f64)> = hops.iter().map(|&(m, l)| (m, l, 1.0)).collect();
    let want = reference_logits(&[&ra, &rb], &ref_hops, &ids, None);
    let diff = max_abs_diff(&got, &want);
    assert!(diff < TOL, "plain export: max abs diff {diff}");
}
