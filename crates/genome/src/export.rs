//! Writing a layer path as a checkpoint.
//!
//! Two forms:
//! - the **path checkpoint** ([`export_path`]): the unique layers the path uses, renumbered in
//!   order of first use, plus `config.json` keys `num_hops`, `input_layers` (the stored layer
//!   of each hop) and `input_scales` (the factor on each hop's input), like Sakana's released
//!   EvoMistral. [`load_path_checkpoint`] runs it (and `evomerge` loads it wherever it loads a
//!   model). For transformers the folder is a custom architecture: `model_type` is
//!   `evomerge_path` (unknown to transformers, so loading it without `trust_remote_code=True`
//!   fails loudly instead of running the stored layers in order), `auto_map` points
//!   `AutoConfig` / `AutoModelForCausalLM` at `configuration_evomerge_path.py` and
//!   `modeling_evomerge_path.py`, written into the folder, which run the path with its scales
//!   on transformers' own Llama / Mistral / Qwen2 decoder layers (one KV-cache slot per hop).
//!   The original `model_type` and `architectures` are kept as `base_model_type` and
//!   `base_architectures`.
//! - the **plain checkpoint** ([`export_plain`]), only when every scale is 1: the layers along
//!   the path written one after another (repeated layers duplicated, as a passthrough
//!   frankenmerge does), which transformers, lm-eval and vLLM load as an ordinary model.
//!   [`export_path`] writes this form itself when the path has no scales.

use crate::GenomeError;
use evomerge_checkpoint::{
    Checkpoint, CheckpointWriter, OutputTensor, TensorRole, WriterOptions, rename_layer,
    set_num_layers,
};
use evomerge_kernels::Device;
use evomerge_models::{Decoder, Hop, LayerPath, Llama, LlamaConfig, ModelError, TensorMap};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The architecture name of path checkpoints.
pub const PATH_ARCHITECTURE: &str = "EvomergePathForCausalLM";

/// The `model_type` of path checkpoints (transformers knows it only through `auto_map`).
pub const PATH_MODEL_TYPE: &str = "evomerge_path";

/// The transformers configuration class of path checkpoints, written into every one.
pub const PATH_CONFIGURATION_PY: (&str, &str) = (
    "configuration_evomerge_path.py",
    include_str!("python/configuration_evomerge_path.py"),
);

/// The transformers model class of path checkpoints, written into every one.
pub const PATH_MODELING_PY: (&str, &str) = (
    "modeling_evomerge_path.py",
    include_str!("python/modeling_evomerge_path.py"),
);

/// The model types the modeling file builds on.
const PATH_BASE_MODEL_TYPES: &[(&str, &str)] = &[
    ("llama", "LlamaForCausalLM"),
    ("mistral", "MistralForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
];

fn io(e: impl std::fmt::Display) -> GenomeError {
    GenomeError::Spec(e.to_string())
}

/// Write `layers` (model, layer) as layers 0.. of a new checkpoint, with A's (models[0])
/// embeddings, final norm and head, and `config`.
fn write_layers(
    out: &Path,
    layers: &[(usize, usize)],
    models: &[&Checkpoint],
    mut config: Value,
    extra_files: &[(&str, &str)],
    force: bool,
) -> Result<PathBuf, GenomeError> {
    let a = models[0];
    let mut plan = Vec::new();
    let mut copies: Vec<(String, usize, String)> = Vec::new(); // (out name, model, in name)
    let non_layer: Vec<&str> = a
        .names()
        .filter(|n| TensorRole::of(n).layer().is_none())
        .collect();
    let (pre, post): (Vec<&str>, Vec<&str>) = non_layer.into_iter().partition(|n| {
        !matches!(
            TensorRole::of(n),
            TensorRole::FinalNorm | TensorRole::LmHead
        )
    });
    for n in &pre {
        copies.push((n.to_string(), 0, n.to_string()));
    }
    for (j, (m, l)) in layers.iter().enumerate() {
        let c = models.get(*m).ok_or_else(|| {
            GenomeError::Spec(format!(
                "the path uses model {m}, but only {} models were given",
                models.len()
            ))
        })?;
        let names: Vec<&str> = c
            .names()
            .filter(|n| TensorRole::of(n) == TensorRole::Layer(*l))
            .collect();
        if names.is_empty() {
            return Err(GenomeError::Spec(format!("model {m} has no layer {l}")));
        }
        for n in names {
            copies.push((rename_layer(n, j), *m, n.to_string()));
        }
    }
    for n in &post {
        copies.push((n.to_string(), 0, n.to_string()));
    }
    for (out_name, m, in_name) in &copies {
        let info = models[*m]
            .info(in_name)
            .expect("listed from the checkpoint");
        plan.push(OutputTensor::new(
            out_name.clone(),
            info.dtype,
            info.shape.clone(),
        ));
    }
    set_num_layers(&mut config, layers.len());
    let writer = CheckpointWriter::create(
        out,
        plan,
        WriterOptions {
            force,
            ..WriterOptions::default()
        },
    )
    .map_err(io)?;
    for (out_name, m, in_name) in &copies {
        writer
            .write_bytes(out_name, models[*m].bytes(in_name).map_err(io)?)
            .map_err(io)?;
    }
    for (name, text) in extra_files {
        writer.write_file(name, text.as_bytes()).map_err(io)?;
    }
    writer.finish(Some(config), Some(a.dir())).map_err(io)
}

/// Write a path checkpoint (see the module docs). `models[i]` is the checkpoint of the path's
/// model `i`; model 0 (A) gives embeddings, final norm, head, config and tokenizer. A path whose
/// every scale is 1 is written as the plain checkpoint ([`export_plain`]), which every tool
/// loads without remote code.
pub fn export_path(
    path: &LayerPath,
    models: &[&Checkpoint],
    out: &Path,
    force: bool,
) -> Result<PathBuf, GenomeError> {
    if !needs_scales(path) {
        return export_plain(path, models, out, force);
    }
    let mut unique: Vec<(usize, usize)> = Vec::new();
    let mut input_layers = Vec::with_capacity(path.hops.len());
    for h in &path.hops {
        let key = (h.model, h.layer);
        let idx = unique.iter().position(|u| *u == key).unwrap_or_else(|| {
            unique.push(key);
            unique.len() - 1
        });
        input_layers.push(idx);
    }
    let mut config = models[0]
        .config()
        .cloned()
        .ok_or_else(|| GenomeError::Spec("model A has no config.json".into()))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| GenomeError::Spec("model A's config.json is not an object".into()))?;
    let base_arch = obj.get("architectures").cloned().unwrap_or(Value::Null);
    let arch_name = base_arch.get(0).and_then(Value::as_str);
    let base_type = obj
        .get("model_type")
        .and_then(Value::as_str)
        .or_else(|| {
            PATH_BASE_MODEL_TYPES
                .iter()
                .find(|(_, a)| Some(*a) == arch_name)
                .map(|(t, _)| *t)
        })
        .filter(|t| PATH_BASE_MODEL_TYPES.iter().any(|(k, _)| k == t))
        .ok_or_else(|| {
            GenomeError::Spec(format!(
                "model A's config.json has model_type {} (architectures {base_arch}); a path checkpoint builds on {}",
                obj.get("model_type").unwrap_or(&Value::Null),
                PATH_BASE_MODEL_TYPES
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?
        .to_string();
    obj.insert("base_architectures".into(), base_arch);
    obj.insert("base_model_type".into(), Value::from(base_type));
    obj.insert("model_type".into(), Value::from(PATH_MODEL_TYPE));
    obj.insert(
        "architectures".into(),
        serde_json::json!([PATH_ARCHITECTURE]),
    );
    obj.insert(
        "auto_map".into(),
        serde_json::json!({
            "AutoConfig": "configuration_evomerge_path.EvomergePathConfig",
            "AutoModelForCausalLM": "modeling_evomerge_path.EvomergePathForCausalLM",
        }),
    );
    obj.insert("num_hops".into(), Value::from(path.hops.len()));
    obj.insert("input_layers".into(), serde_json::json!(input_layers));
    obj.insert(
        "input_scales".into(),
        serde_json::json!(path.hops.iter().map(|h| h.scale).collect::<Vec<_>>()),
    );
    write_layers(
        out,
        &unique,
        models,
        config,
        &[PATH_CONFIGURATION_PY, PATH_MODELING_PY],
        force,
    )
}

/// Whether a path scales any hop's input (and so needs the path checkpoint; without scales
/// the plain frankenmerge is the same model).
pub fn needs_scales(path: &LayerPath) -> bool {
    path.hops.iter().any(|h| h.scale != 1.0)
}

/// Write the path as an ordinary checkpoint (layers duplicated along the path). Only possible
/// when every hop's scale is 1.
pub fn export_plain(
    path: &LayerPath,
    models: &[&Checkpoint],
    out: &Path,
    force: bool,
) -> Result<PathBuf, GenomeError> {
    if let Some(h) = path.hops.iter().find(|h| h.scale != 1.0) {
        return Err(GenomeError::Spec(format!(
            "hop through model {} layer {} scales its input by {}; a plain checkpoint cannot express scales (use the path checkpoint)",
            h.model, h.layer, h.scale
        )));
    }
    let layers: Vec<(usize, usize)> = path.hops.iter().map(|h| (h.model, h.layer)).collect();
    let config = models[0]
        .config()
        .cloned()
        .ok_or_else(|| GenomeError::Spec("model A has no config.json".into()))?;
    write_layers(out, &layers, models, config, &[], force)
}

/// Whether a config describes a path checkpoint.
pub fn is_path_config(config: &Value) -> bool {
    config.get("input_layers").is_some()
}

/// Load any model folder evomerge runs: a path checkpoint ([`is_path_config`]) along its path,
/// anything else as a plain model (its layers in order). What `evomerge inspect` loads.
pub fn load_decoder(dir: &Path, device: &Device) -> Result<Decoder, ModelError> {
    let config: Option<Value> = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if config.as_ref().is_some_and(is_path_config) {
        load_path_checkpoint(dir, device)
    } else {
        Ok(Decoder::plain(Arc::new(Llama::from_dir(dir, device)?)))
    }
}

/// Load a path checkpoint written by [`export_path`] into a decoder that runs its hops.
pub fn load_path_checkpoint(dir: &Path, device: &Device) -> Result<Decoder, ModelError> {
    let ckpt = Checkpoint::open(dir)?;
    let origin = dir.display().to_string();
    let bad = |message: &str| ModelError::Config {
        origin: origin.clone(),
        message: message.to_string(),
    };
    let mut config = ckpt
        .config()
        .cloned()
        .ok_or_else(|| bad("no config.json"))?;
    let layers: Vec<usize> =
        serde_json::from_value(config.get("input_layers").cloned().unwrap_or(Value::Null))
            .map_err(|_| bad("input_layers is not a list of layer indices"))?;
    let scales: Vec<f32> =
        serde_json::from_value(config.get("input_scales").cloned().unwrap_or(Value::Null))
            .map_err(|_| bad("input_scales is not a list of numbers"))?;
    if layers.len() != scales.len() {
        return Err(bad("input_layers and input_scales have different lengths"));
    }
    if let Some(obj) = config.as_object_mut() {
        if let Some(arch) = obj.get("base_architectures").cloned() {
            obj.insert("architectures".into(), arch);
        }
        if let Some(t) = obj.get("base_model_type").cloned() {
            obj.insert("model_type".into(), t);
        }
    }
    let cfg = LlamaConfig::from_json(&config, &origin)?;
    let weights = TensorMap::from_checkpoint(&ckpt, device)?;
    let model = Llama::load(cfg, &weights, device)?;
    let path = LayerPath {
        hops: layers
            .into_iter()
            .zip(scales)
            .map(|(layer, scale)| Hop {
                model: 0,
                layer,
                scale,
            })
            .collect(),
    };
    Decoder::new(vec![Arc::new(model)], &path)
}
