//! burn models evomerge runs.
//!
//! - Llama-family decoders (Llama / Mistral / Qwen2) built from `config.json`, loading tensors
//!   under their Hugging Face names, with layer-path (data-flow merge) execution.
//! - MLP classifiers for the data-using merge methods (Fisher, RegMean, Git Re-Basin, REPAIR):
//!   [`mlp`] (weights, checkpoints, burn module with activation taps, training, evaluation).

pub mod mlp;

pub use mlp::{MLP_ARCHITECTURE, Mlp, MlpError, MlpWeights};
