//! Hugging Face checkpoints on disk: read them lazily, write them atomically.
//!
//! This crate is the only place in evomerge that touches model files. It reads a model folder
//! (`config.json`, one `model.safetensors` or shards listed in `model.safetensors.index.json`,
//! tokenizer files) through memory maps, so opening a 70B checkpoint costs a few header reads and
//! each tensor is converted to `f32` only when asked for. It writes merged checkpoints the way
//! Hugging Face does (shards `model-00001-of-00003.safetensors` under a byte limit, the index,
//! `config.json` with the right layer count and dtype, the tokenizer files), into a temporary
//! folder that is renamed into place only when everything is written, so a failed merge never
//! leaves a half-written model behind.
//!
//! Every other file a user keeps (run logs' state, recipes, results, plots) is written through
//! [`atomic`]: one temporary-name rule, fsync, rename, fsync of the folder.
//!
//! It also knows which tensor belongs to which part of a decoder ([`TensorRole`]): embeddings,
//! layer `i`, the final norm or the LM head, for the Llama/Mistral/Qwen2/Gemma/Phi3
//! (`model.layers.{i}.`) and GPT-2 (`transformer.h.{i}.`) namings.
//!
//! It is not for merge arithmetic (see `evomerge-kernels`) nor for running models.
//!
//! ```no_run
//! use evomerge_checkpoint::{Checkpoint, CheckpointWriter, Dtype, OutputTensor, WriterOptions};
//! # fn main() -> Result<(), evomerge_checkpoint::CheckpointError> {
//! let ckpt = Checkpoint::open("models/base")?;
//! let name = "model.embed_tokens.weight";
//! let values: Vec<f32> = ckpt.read_f32(name)?;
//! let info = ckpt.info(name).unwrap();
//! let plan = vec![OutputTensor::new(name, Dtype::BF16, info.shape.clone())];
//! let writer = CheckpointWriter::create("out/merged", plan, WriterOptions::default())?;
//! writer.write_f32(name, &values)?;
//! writer.finish(ckpt.config().cloned(), Some(ckpt.dir()))?;
//! # Ok(()) }
//! ```

pub mod atomic;
mod config;
mod dtype;
mod error;
mod read;
mod role;
pub mod special_tokens;
mod write;

pub use atomic::{AtomicWriteError, write_atomic};
pub use config::{
    NUM_LAYER_KEYS, TOKENIZER_FILES, config_dtype_name, num_layers, set_num_layers,
    set_torch_dtype, tie_word_embeddings,
};
pub use dtype::Dtype;
pub use error::CheckpointError;
pub use read::{Checkpoint, TensorInfo};
pub use role::{TensorRole, rename_layer, tied_embedding_name};
pub use special_tokens::SpecialTokens;
pub use write::{CheckpointWriter, OutputTensor, WriterOptions};

/// Result type of this crate.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
