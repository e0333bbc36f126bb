use std::path::PathBuf;

/// Everything that can go wrong reading or writing a checkpoint. Each variant names the file or
/// tensor involved and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir}: not a model folder: no model.safetensors, model.safetensors.index.json or other *.safetensors file found (evomerge reads safetensors checkpoints in the Hugging Face layout)"
    )]
    NoWeights { dir: PathBuf },
    #[error(
        "{path}: not a valid safetensors file ({reason}); the file is corrupt or truncated — re-download or re-export it"
    )]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON: {reason}")]
    BadJson { path: PathBuf, reason: String },
    #[error("{index}: shard {shard} listed for tensor '{tensor}' does not exist")]
    MissingShard {
        index: PathBuf,
        shard: String,
        tensor: String,
    },
    #[error("{index}: tensor '{tensor}' is listed in the index but not found in shard {shard}")]
    IndexMismatch {
        index: PathBuf,
        shard: String,
        tensor: String,
    },
    #[error("{dir}: tensor '{tensor}' appears in two files: {first} and {second}")]
    DuplicateTensor {
        dir: PathBuf,
        tensor: String,
        first: String,
        second: String,
    },
    #[error("{dir}: no tensor named '{tensor}'{hint}")]
    MissingTensor {
        dir: PathBuf,
        tensor: String,
        hint: String,
    },
    #[error(
        "{dir}: tensor '{tensor}' has dtype {dtype}, which evomerge cannot convert to float (supported: F32, F16, BF16, F64)"
    )]
    NotFloat {
        dir: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("unsupported dtype '{0}' (use float32, float16 or bfloat16)")]
    UnknownDtype(String),
    #[error("output folder {0} already exists; choose another path or pass --force to replace it")]
    OutputExists(PathBuf),
    #[error("writer: tensor '{0}' is not part of the output plan")]
    NotPlanned(String),
    #[error("writer: tensor '{tensor}' expects {expected} values but got {got}")]
    WrongLength {
        tensor: String,
        expected: usize,
        got: usize,
    },
    #[error("writer: tensor '{0}' was planned but never written")]
    NotWritten(String),
    #[error("writer: tensor '{0}' is planned twice")]
    DuplicateOutput(String),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}
