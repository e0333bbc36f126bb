//! burn models evomerge runs.
//!
//! - Llama-family decoders (Llama / Mistral / Qwen2) built from `config.json` ([`LlamaConfig`]),
//!   loading tensors under their Hugging Face names ([`Llama`]) from a checkpoint folder or from
//!   tensors already on the device ([`TensorMap`], the merge engine's in-memory output): both go
//!   through [`WeightSource`], so a search evaluates each merged candidate without writing it.
//! - Execution ([`Decoder`]): batched forward passes with left padding, a KV cache, greedy
//!   generation with stop strings, continuation log-likelihoods; over a model's own layers or
//!   any [`LayerPath`] through several models (the data-flow merge: each hop its own cache slot,
//!   embeddings and head from model A).
//! - [`LanguageModel`]: a decoder plus its [`Tokenizer`] (`tokenizer.json`), text in and out.
//! - MLP classifiers for the data-using merge methods (Fisher, RegMean, Git Re-Basin, REPAIR):
//!   [`mlp`] (weights, checkpoints, burn module with activation taps, training, evaluation).
//!
//! Runs on flex (CPU) by default and on wgpu with the `wgpu` feature.
//!
//! Training runs this same forward pass: on burn's autodiff device ([`Decoder::forward`] keeps the
//! graph back to the tensors a model was loaded from), which is how the mini world's trainer
//! (`evomerge-studies`) trains its models; there is no second Llama implementation.
//!
//! Not for: merging (`evomerge-merge`), scoring tasks (`evaluators/*`), training loops.
//!
//! ```no_run
//! use evomerge_models::{Decoder, GenerateOptions, LanguageModel, LayerPath, Hop, Llama, Tokenizer};
//! use evomerge_kernels::Device;
//! use std::sync::Arc;
//! # fn main() -> Result<(), evomerge_models::ModelError> {
//! let device = Device::flex();
//! // One model, text in and out.
//! let lm = LanguageModel::from_dir("models/math", &device)?;
//! let out = lm.generate(&["Question: 2+3=?".to_string()], &GenerateOptions::default())?;
//! println!("{}", out[0].text);
//! // A layer path over two models: A's layer 0, B's layer 1 (input scaled by 0.9), A's layer 1.
//! let a = Arc::new(Llama::from_dir("models/math", &device)?);
//! let b = Arc::new(Llama::from_dir("models/ja", &device)?);
//! let path = LayerPath { hops: vec![
//!     Hop { model: 0, layer: 0, scale: 1.0 },
//!     Hop { model: 1, layer: 1, scale: 0.9 },
//!     Hop { model: 0, layer: 1, scale: 1.0 },
//! ] };
//! let dfs = LanguageModel::new(Decoder::new(vec![a, b], &path)?, Arc::new(Tokenizer::from_dir("models/math")?));
//! let logits = dfs.decoder().logits(&[1, 5, 7])?;
//! # Ok(()) }
//! ```
//!
//! From the merge engine's output (no disk):
//!
//! ```ignore
//! let merged = evomerge_merge::merge_in_memory(&plan, &sources, &device, seed)?;
//! let config = LlamaConfig::from_json(plan.config.as_ref().unwrap(), "merged")?;
//! let model = Llama::load(config, &TensorMap::from_views("candidate 17", merged), &device)?;
//! ```

mod config;
mod decoder;
mod error;
mod llama;
mod lm;
pub mod mlp;
mod path;
mod tokenizer;
mod weights;

pub use config::{Family, LlamaConfig, RopeScaling, SUPPORTED_ARCHITECTURES};
pub use decoder::{ContinuationScore, Decoder, Finish, GeneratedIds, TokenGenerateOptions};
pub use error::ModelError;
pub use llama::{DecoderLayer, LinearSite, LinearTap, Llama};
pub use lm::{GenerateOptions, Generation, LanguageModel};
pub use mlp::{MLP_ARCHITECTURE, Mlp, MlpError, MlpWeights};
pub use path::{Hop, LayerPath};
pub use tokenizer::Tokenizer;
pub use weights::{TensorMap, WeightSource};
