//! What a search hands an evaluator: a merged model in memory, a layer path, or an MLP
//! classifier.

use crate::EvalError;
use evomerge_checkpoint::{
    CheckpointWriter, Dtype, OutputTensor, WriterOptions, config_dtype_name,
};
use evomerge_kernels::{Device, FloatDType, values_of};
use evomerge_models::{
    Decoder, LanguageModel, LayerPath, Llama, LlamaConfig, MLP_ARCHITECTURE, MlpWeights, TensorMap,
    Tokenizer,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// A model to score.
pub trait Candidate: Send + Sync {
    /// A short label for logs ("gen 3 #5").
    fn label(&self) -> String;

    /// The candidate as an in-process model (forward, generate, log-likelihood). Built on first
    /// use and kept.
    fn language_model(&self) -> Result<&LanguageModel, EvalError>;

    /// Write the candidate as a Hugging Face folder (config.json, safetensors, tokenizer files)
    /// at `dir`, which must not exist yet.
    fn write_hf_folder(&self, dir: &Path) -> Result<(), EvalError>;

    /// The candidate as an MLP classifier, for candidates that are one ([`MlpCandidate`]);
    /// by default it is not.
    fn mlp(&self) -> Result<&MlpWeights, EvalError> {
        Err(EvalError::Candidate(format!(
            "{}: not an MLP classifier (the classifier evaluator scores MLP candidates, merges of \
             {MLP_ARCHITECTURE} checkpoints)",
            self.label()
        )))
    }
}

/// A parameter-space merge held in memory: the merge engine's tensors (Hugging Face names,
/// 2-D views), the output `config.json` and the tokenizer. Nothing touches the disk unless an
/// evaluator asks for [`Candidate::write_hf_folder`].
///
/// The candidate is held once: building the language model takes the merged tensors it uses
/// out of the map ([`Llama::load_taking`]), and a later [`Candidate::write_hf_folder`] reads
/// them back from the model ([`Llama::hf_tensors`], the same values bit for bit).
pub struct MergedCandidate {
    label: String,
    config_json: Value,
    config: LlamaConfig,
    /// The merged tensors the model has not taken (all of them until it is built).
    tensors: Mutex<TensorMap>,
    /// Every merged tensor's name and 2-D view dims, in name order.
    names: Vec<(String, Vec<usize>)>,
    tokenizer: Arc<Tokenizer>,
    tokenizer_dir: Option<PathBuf>,
    dtype: Dtype,
    device: Device,
    /// The precision the model computes in (`None`: f32).
    eval_dtype: Option<FloatDType>,
    lm: OnceLock<(Arc<Llama>, LanguageModel)>,
}

impl std::fmt::Debug for MergedCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedCandidate")
            .field("label", &self.label)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl MergedCandidate {
    /// `tensors` as `merge_in_memory` returns them (wrap with [`TensorMap::from_views`]),
    /// `config` the merged model's `config.json` (`Plan::config`), `tokenizer_dir` the model
    /// whose tokenizer files an export copies (`Plan::tokenizer_from`).
    pub fn new(
        label: impl Into<String>,
        config: Value,
        tensors: TensorMap,
        tokenizer: Arc<Tokenizer>,
        tokenizer_dir: Option<PathBuf>,
        device: &Device,
    ) -> Result<MergedCandidate, EvalError> {
        let label = label.into();
        let parsed = LlamaConfig::from_json(&config, &label)?;
        let mut names: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.dims().to_vec()))
            .collect();
        names.sort_unstable();
        Ok(MergedCandidate {
            dtype: config_dtype_name(&config).unwrap_or(Dtype::F32),
            label,
            config_json: config,
            config: parsed,
            tensors: Mutex::new(tensors),
            names,
            tokenizer,
            tokenizer_dir,
            device: device.clone(),
            eval_dtype: None,
            lm: OnceLock::new(),
        })
    }

    /// Evaluate in `dtype` (`None`: f32): the model is cast layer by layer once built
    /// ([`Llama::to_dtype`]). An export after that writes the weights as evaluated, so ask for a
    /// precision no finer than the storage dtype's (what `eval_dtype = "auto"` does).
    pub fn with_eval_dtype(mut self, dtype: Option<FloatDType>) -> MergedCandidate {
        self.eval_dtype = dtype;
        self
    }

    /// Storage dtype of an export (default: the config's `torch_dtype`, else f32).
    pub fn with_dtype(mut self, dtype: Dtype) -> MergedCandidate {
        self.dtype = dtype;
        self
    }

    /// The merged tensors (from the built model once it is built), by name.
    pub fn tensors(&self) -> TensorMap {
        let left = self.tensors.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = TensorMap::new(self.label.clone());
        for (n, t) in left.iter() {
            map.insert(n, t.clone());
        }
        if let Some((model, _)) = self.lm.get() {
            for (n, t) in model.hf_tensors() {
                if self
                    .names
                    .binary_search_by(|(m, _)| m.as_str().cmp(&n))
                    .is_ok()
                {
                    map.insert(n, t);
                }
            }
        }
        map
    }

    /// The parsed config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
}

impl Candidate for MergedCandidate {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn language_model(&self) -> Result<&LanguageModel, EvalError> {
        if let Some((_, lm)) = self.lm.get() {
            return Ok(lm);
        }
        // One build at a time: a second caller waits and finds the model built.
        let mut left = self.tensors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, lm)) = self.lm.get() {
            return Ok(lm);
        }
        let mut model = Llama::load_taking(self.config.clone(), &mut left, &self.device)?;
        if let Some(dtype) = self.eval_dtype {
            model = model.to_dtype(dtype);
        }
        let model = Arc::new(model);
        let lm = LanguageModel::new(Decoder::plain(model.clone()), self.tokenizer.clone());
        Ok(&self.lm.get_or_init(|| (model, lm)).1)
    }

    fn write_hf_folder(&self, dir: &Path) -> Result<(), EvalError> {
        let known: std::collections::HashMap<String, Vec<usize>> =
            self.config.tensor_shapes().into_iter().collect();
        let tensors = self.tensors();
        let plan: Vec<OutputTensor> = self
            .names
            .iter()
            .map(|(n, view)| {
                let shape = known.get(n).cloned().unwrap_or_else(|| {
                    if view[0] == 1 && (n.ends_with(".bias") || n.ends_with("norm.weight")) {
                        vec![view[1]]
                    } else {
                        view.to_vec()
                    }
                });
                OutputTensor::new(n.as_str(), self.dtype, shape)
            })
            .collect();
        let candidate_err = |e: evomerge_checkpoint::CheckpointError| {
            EvalError::Candidate(format!(
                "{}: cannot write {}: {e}",
                self.label,
                dir.display()
            ))
        };
        let writer =
            CheckpointWriter::create(dir, plan, WriterOptions::default()).map_err(candidate_err)?;
        for (n, _) in &self.names {
            let t = tensors.get(n).ok_or_else(|| {
                EvalError::Candidate(format!(
                    "{}: tensor '{n}' is neither merged nor in the built model",
                    self.label
                ))
            })?;
            let values = values_of(t.clone());
            writer.write_f32(n, &values).map_err(candidate_err)?;
        }
        if self.tokenizer_dir.is_none() {
            writer
                .write_file("tokenizer.json", self.tokenizer.to_json()?.as_bytes())
                .map_err(candidate_err)?;
        }
        let mut config = self.config_json.clone();
        evomerge_checkpoint::set_torch_dtype(&mut config, self.dtype);
        writer
            .finish(Some(config), self.tokenizer_dir.as_deref())
            .map_err(candidate_err)?;
        Ok(())
    }
}

/// Writes a layer-path candidate as a model folder (the runner implements it with the
/// genome's DFS export format: `input_layers` / `input_scales` in the config, like Sakana's
/// EvoMistral). Any `Fn(&LayerPath, &Path) -> Result<(), ExportError>` is one.
pub trait PathExporter: Send + Sync {
    fn export(&self, path: &LayerPath, dir: &Path) -> Result<(), ExportError>;
}

/// Why a path could not be exported (the exporter's own error, kept as the source).
pub type ExportError = Box<dyn std::error::Error + Send + Sync>;

impl<F: Fn(&LayerPath, &Path) -> Result<(), ExportError> + Send + Sync> PathExporter for F {
    fn export(&self, path: &LayerPath, dir: &Path) -> Result<(), ExportError> {
        self(path, dir)
    }
}

/// A data-flow merge: a layer path over loaded source models (model 0 provides embeddings,
/// final norm, head and tokenizer).
pub struct PathCandidate {
    label: String,
    path: LayerPath,
    lm: LanguageModel,
    exporter: Option<Arc<dyn PathExporter>>,
}

impl std::fmt::Debug for PathCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathCandidate")
            .field("label", &self.label)
            .field("hops", &self.path.len())
            .finish()
    }
}

impl PathCandidate {
    /// Validate the path against the models and build its decoder (no copies of weights).
    pub fn new(
        label: impl Into<String>,
        models: Vec<Arc<Llama>>,
        path: LayerPath,
        tokenizer: Arc<Tokenizer>,
    ) -> Result<PathCandidate, EvalError> {
        let decoder = Decoder::new(models, &path)?;
        Ok(PathCandidate {
            label: label.into(),
            path,
            lm: LanguageModel::new(decoder, tokenizer),
            exporter: None,
        })
    }

    /// How [`Candidate::write_hf_folder`] writes this candidate.
    pub fn with_exporter(mut self, exporter: Arc<dyn PathExporter>) -> PathCandidate {
        self.exporter = Some(exporter);
        self
    }

    /// The layer path.
    pub fn path(&self) -> &LayerPath {
        &self.path
    }
}

impl Candidate for PathCandidate {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn language_model(&self) -> Result<&LanguageModel, EvalError> {
        Ok(&self.lm)
    }

    fn write_hf_folder(&self, dir: &Path) -> Result<(), EvalError> {
        let exporter = self.exporter.as_ref().ok_or_else(|| {
            EvalError::Candidate(format!(
                "{}: a layer-path candidate needs an exporter to be written as a model folder",
                self.label
            ))
        })?;
        exporter
            .export(&self.path, dir)
            .map_err(|e| EvalError::Candidate(format!("{}: export failed: {e}", self.label)))
    }
}

/// An MLP classifier held in memory (a merge of `EvomergeMlp` checkpoints), for the
/// `classifier` evaluator. It is not a language model; an export writes the MLP checkpoint
/// folder ([`MlpWeights::save`]).
#[derive(Debug, Clone)]
pub struct MlpCandidate {
    label: String,
    weights: MlpWeights,
}

impl MlpCandidate {
    pub fn new(label: impl Into<String>, weights: MlpWeights) -> MlpCandidate {
        MlpCandidate {
            label: label.into(),
            weights,
        }
    }

    /// From a merge's in-memory output: `config` the merged `config.json` (its `layer_sizes`),
    /// `tensors` named `layers.{i}.weight` / `layers.{i}.bias`.
    pub fn from_tensors(
        label: impl Into<String>,
        config: &Value,
        tensors: &TensorMap,
    ) -> Result<MlpCandidate, EvalError> {
        let label = label.into();
        if let Some(arch) = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            && arch != MLP_ARCHITECTURE
        {
            return Err(EvalError::Candidate(format!(
                "{label}: architecture {arch} is not an MLP classifier ({MLP_ARCHITECTURE})"
            )));
        }
        let sizes: Vec<usize> = config
            .get("layer_sizes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|x| x as usize))
                    .collect()
            })
            .ok_or_else(|| {
                EvalError::Candidate(format!(
                    "{label}: config.json has no \"layer_sizes\" list (not an MLP classifier)"
                ))
            })?;
        let named: Vec<(String, Vec<f32>)> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), values_of(t.clone())))
            .collect();
        let weights = MlpWeights::from_named(&sizes, &named)
            .map_err(|e| EvalError::Candidate(format!("{label}: {e}")))?;
        Ok(MlpCandidate { label, weights })
    }

    pub fn weights(&self) -> &MlpWeights {
        &self.weights
    }
}

impl Candidate for MlpCandidate {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn language_model(&self) -> Result<&LanguageModel, EvalError> {
        Err(EvalError::Candidate(format!(
            "{}: an MLP classifier is not a language model; score it with the classifier evaluator",
            self.label
        )))
    }

    fn write_hf_folder(&self, dir: &Path) -> Result<(), EvalError> {
        self.weights.save(dir, false).map(|_| ()).map_err(|e| {
            EvalError::Candidate(format!(
                "{}: cannot write {}: {e}",
                self.label,
                dir.display()
            ))
        })
    }

    fn mlp(&self) -> Result<&MlpWeights, EvalError> {
        Ok(&self.weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_candidate_from_tensors_round_trips_and_rejects_other_models() {
        let w = MlpWeights::init(&[6, 4, 3], 7).unwrap();
        let device = Device::flex();
        let views = w
            .named_tensors()
            .into_iter()
            .map(|(n, shape, v)| (n, evomerge_kernels::tensor_from(v, &shape, &device)))
            .collect();
        let map = TensorMap::from_views("merge", views);
        let c = MlpCandidate::from_tensors("gen 0 #1", &w.config_json(), &map).unwrap();
        assert_eq!(c.mlp().unwrap(), &w);
        assert!(c.language_model().is_err());
        let dir = tempfile::tempdir().unwrap();
        c.write_hf_folder(&dir.path().join("m")).unwrap();
        assert_eq!(MlpWeights::load(dir.path().join("m")).unwrap(), w);
        let llama = serde_json::json!({"architectures": ["LlamaForCausalLM"]});
        let e = MlpCandidate::from_tensors("x", &llama, &map)
            .unwrap_err()
            .to_string();
        assert!(e.contains("LlamaForCausalLM"), "{e}");
        let e =
            MlpCandidate::from_tensors("x", &serde_json::json!({"layer_sizes": [6, 5, 3]}), &map)
                .unwrap_err()
                .to_string();
        assert!(e.contains("layers.0.weight"), "{e}");
    }

    /// The candidate is held once: building its model takes the merged tensors over, and a
    /// folder written afterwards (from the model) is byte for byte the one written before;
    /// tensors the model does not use stay and are written too. Untied and tied heads, with and
    /// without q/k/v biases.
    #[test]
    fn merged_candidate_writes_the_same_folder_before_and_after_its_model_is_built() {
        use evomerge_zoo::TinyLlama;
        let device = Device::flex();
        for spec in [
            TinyLlama::default(),
            TinyLlama {
                qkv_bias: true,
                tie_embeddings: true,
                kv_heads: 1,
                ..TinyLlama::default()
            },
        ] {
            let w = spec.random(4);
            let mut views: Vec<(String, evomerge_kernels::T2)> = w
                .tensors
                .iter()
                .map(|(n, shape, v)| (n.clone(), evomerge_kernels::tensor_from(v, shape, &device)))
                .collect();
            // a tensor the model does not read (e.g. a rotary buffer some checkpoints carry)
            views.push((
                "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
                evomerge_kernels::tensor_from(&[1.0, 0.5, 0.25, 0.125], &[4], &device),
            ));
            let tok = Arc::new(
                Tokenizer::from_json(&evomerge_zoo::word_level_tokenizer(spec.vocab).to_string())
                    .unwrap(),
            );
            let make = || {
                MergedCandidate::new(
                    "c",
                    w.config.clone(),
                    TensorMap::from_views("c", views.clone()),
                    tok.clone(),
                    None,
                    &device,
                )
                .unwrap()
            };
            let dir = tempfile::tempdir().unwrap();
            let before = make();
            before.write_hf_folder(&dir.path().join("before")).unwrap();
            let after = make();
            let ids = [1u32, 5, 9, 2];
            let logits = after
                .language_model()
                .unwrap()
                .decoder()
                .logits(&ids)
                .unwrap();
            // the build left only what the model does not use
            assert_eq!(after.tensors.lock().unwrap().len(), 1);
            after.write_hf_folder(&dir.path().join("after")).unwrap();
            for f in ["model.safetensors", "config.json"] {
                assert_eq!(
                    std::fs::read(dir.path().join("before").join(f)).unwrap(),
                    std::fs::read(dir.path().join("after").join(f)).unwrap(),
                    "{f} differs"
                );
            }
            // and the model built by taking computes what one built from a copy does
            let copy = Llama::load(
                LlamaConfig::from_json(&w.config, "c").unwrap(),
                &TensorMap::from_views("c", views.clone()),
                &device,
            )
            .unwrap();
            let reference = Decoder::plain(Arc::new(copy)).logits(&ids).unwrap();
            assert_eq!(logits, reference);
        }
    }

    /// A map the config does not fit is an error naming the tensor, and the map is untouched
    /// (a later export still has every tensor).
    #[test]
    fn taking_load_checks_first_and_leaves_a_bad_map_whole() {
        use evomerge_zoo::TinyLlama;
        let device = Device::flex();
        let w = TinyLlama::default().random(4);
        let views: Vec<(String, evomerge_kernels::T2)> = w
            .tensors
            .iter()
            .filter(|(n, _, _)| n != "model.norm.weight")
            .map(|(n, shape, v)| (n.clone(), evomerge_kernels::tensor_from(v, shape, &device)))
            .collect();
        let n = views.len();
        let mut map = TensorMap::from_views("c", views);
        let e = Llama::load_taking(
            LlamaConfig::from_json(&w.config, "c").unwrap(),
            &mut map,
            &device,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("model.norm.weight"), "{e}");
        assert_eq!(map.len(), n);
    }
}
