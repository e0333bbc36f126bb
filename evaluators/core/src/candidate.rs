//! What a search hands an evaluator: a merged model in memory, or a layer path.

use crate::EvalError;
use evomerge_checkpoint::{
    CheckpointWriter, Dtype, OutputTensor, WriterOptions, config_dtype_name,
};
use evomerge_kernels::{Device, values_of};
use evomerge_models::{Decoder, LanguageModel, LayerPath, Llama, LlamaConfig, TensorMap, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

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
}

/// A parameter-space merge held in memory: the merge engine's tensors (Hugging Face names,
/// 2-D views), the output `config.json` and the tokenizer. Nothing touches the disk unless an
/// evaluator asks for [`Candidate::write_hf_folder`].
pub struct MergedCandidate {
    label: String,
    config_json: Value,
    config: LlamaConfig,
    tensors: TensorMap,
    tokenizer: Arc<Tokenizer>,
    tokenizer_dir: Option<PathBuf>,
    dtype: Dtype,
    device: Device,
    lm: OnceLock<LanguageModel>,
}

impl std::fmt::Debug for MergedCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedCandidate")
            .field("label", &self.label)
            .field("tensors", &self.tensors.len())
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
        Ok(MergedCandidate {
            dtype: config_dtype_name(&config).unwrap_or(Dtype::F32),
            label,
            config_json: config,
            config: parsed,
            tensors,
            tokenizer,
            tokenizer_dir,
            device: device.clone(),
            lm: OnceLock::new(),
        })
    }

    /// Storage dtype of an export (default: the config's `torch_dtype`, else f32).
    pub fn with_dtype(mut self, dtype: Dtype) -> MergedCandidate {
        self.dtype = dtype;
        self
    }

    /// The merged tensors.
    pub fn tensors(&self) -> &TensorMap {
        &self.tensors
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
        if let Some(lm) = self.lm.get() {
            return Ok(lm);
        }
        let model = Llama::load(self.config.clone(), &self.tensors, &self.device)?;
        let lm = LanguageModel::new(Decoder::plain(Arc::new(model)), self.tokenizer.clone());
        Ok(self.lm.get_or_init(|| lm))
    }

    fn write_hf_folder(&self, dir: &Path) -> Result<(), EvalError> {
        let known: std::collections::HashMap<String, Vec<usize>> =
            self.config.tensor_shapes().into_iter().collect();
        let mut names: Vec<&str> = self.tensors.iter().map(|(n, _)| n).collect();
        names.sort_unstable();
        let plan: Vec<OutputTensor> = names
            .iter()
            .map(|n| {
                let view = self.tensors.get(n).expect("listed").dims();
                let shape = known.get(*n).cloned().unwrap_or_else(|| {
                    if view[0] == 1 && (n.ends_with(".bias") || n.ends_with("norm.weight")) {
                        vec![view[1]]
                    } else {
                        view.to_vec()
                    }
                });
                OutputTensor::new(*n, self.dtype, shape)
            })
            .collect();
        let candidate_err = |e: evomerge_checkpoint::CheckpointError| {
            EvalError::Candidate(format!("{}: cannot write {}: {e}", self.label, dir.display()))
        };
        let writer =
            CheckpointWriter::create(dir, plan, WriterOptions::default()).map_err(candidate_err)?;
        for n in &names {
            let values = values_of(self.tensors.get(n).expect("listed").clone());
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
/// EvoMistral). Any `Fn(&LayerPath, &Path) -> Result<(), String>` is one.
pub trait PathExporter: Send + Sync {
    fn export(&self, path: &LayerPath, dir: &Path) -> Result<(), String>;
}

impl<F: Fn(&LayerPath, &Path) -> Result<(), String> + Send + Sync> PathExporter for F {
    fn export(&self, path: &LayerPath, dir: &Path) -> Result<(), String> {
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
