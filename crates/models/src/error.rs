//! What can go wrong building or running a model.

use crate::SUPPORTED_ARCHITECTURES;

/// Errors of this crate. Each names the file, model or tensor involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `config.json` is missing a field or has a value the decoder cannot run.
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },
    /// The config names an architecture this crate does not implement.
    #[error(
        "{origin}: architecture '{architecture}' is not supported; supported: {} (use the command evaluator to score other architectures with an external tool)",
        SUPPORTED_ARCHITECTURES.join(", ")
    )]
    UnsupportedArchitecture {
        origin: String,
        architecture: String,
    },
    /// A tensor the config requires is not in the weights.
    #[error("{source_name}: missing tensor '{tensor}'{hint}")]
    MissingTensor {
        source_name: String,
        tensor: String,
        hint: String,
    },
    /// A tensor has the wrong shape for the config.
    #[error("{source_name}: tensor '{tensor}' has shape {got:?}, the config needs {expected:?}")]
    WrongShape {
        source_name: String,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// Reading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] evomerge_checkpoint::CheckpointError),
    /// The tokenizer file is missing or unreadable, or text does not encode.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },
    /// A layer path refers to a model or layer that does not exist, or mixes incompatible models.
    #[error("layer path: {0}")]
    Path(String),
    /// An input does not fit the model (too long for the context, token id out of range, ...).
    #[error("{0}")]
    Input(String),
}
