//! Evaluator kinds: how an experiment's `[[evaluators]]` table with `kind = "NAME"` becomes an
//! [`Evaluator`]. Each evaluator crate exports its config type (serde, `deny_unknown_fields`)
//! and an [`EvaluatorKind`] that parses it, resolves its paths and says which model families it
//! scores; the runner keeps the list of kinds (one line per kind) and dispatches on `kind`.

use crate::{EvalError, Evaluator};
use std::any::Any;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

/// What the run's source models are, which decides what a merge of them becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// Llama-family decoders: language-model candidates.
    LanguageModel,
    /// `EvomergeMlp` checkpoints: MLP classifier candidates.
    Classifier,
}

impl ModelFamily {
    /// In plural, for messages: "language models", "MLP classifiers".
    pub fn plural(self) -> &'static str {
        match self {
            ModelFamily::LanguageModel => "language models",
            ModelFamily::Classifier => "MLP classifiers",
        }
    }
}

/// What building an evaluator may need from the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildContext<'a> {
    /// The run folder, when building for a run (temporary folders are marked as the run's).
    pub run_dir: Option<&'a Path>,
}

/// An evaluator's parsed settings: it builds the evaluator.
pub trait EvaluatorConfig: Debug + Send + Sync + Any {
    /// Build the evaluator (reading and checking its task or data files now, before any
    /// search work).
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Evaluator>, EvalError>;

    /// Remove temporary folders a stopped process of the run `run_dir` left (default: none);
    /// returns what it removed.
    fn remove_stale_folders(&self, run_dir: &Path) -> Vec<PathBuf> {
        let _ = run_dir;
        Vec::new()
    }

    /// Where this evaluator's temporary folders go, if it makes any (`Some(None)`: the system
    /// temporary folder). Two evaluators with the same place are cleaned once.
    fn temp_root(&self) -> Option<Option<PathBuf>> {
        None
    }

    /// For downcasting to the concrete config type (`spec.config::<LmConfig>()`).
    fn as_any(&self) -> &dyn Any;
}

/// An evaluator kind (see the module docs).
pub trait EvaluatorKind: Send + Sync {
    /// The `kind` value in an `[[evaluators]]` table.
    fn name(&self) -> &'static str;

    /// The model families it scores.
    fn accepts(&self) -> &'static [ModelFamily];

    /// What it scores, for the message when it does not fit the sources
    /// (`"scores language models"`).
    fn scores(&self) -> &'static str;

    /// How to use it, for the messages that suggest it (`kind = "lm" (a task file)`).
    fn usage(&self) -> &'static str;

    /// Make its relative paths absolute against `base` (the experiment file's folder), in
    /// place: the resolved table is what the run keeps in run.toml.
    fn resolve_paths(&self, table: &mut toml::Table, base: &Path);

    /// Parse its table (without the runner's `kind` and `weight` keys); an unknown key is an
    /// error that names it.
    fn parse(&self, table: toml::Table) -> Result<Box<dyn EvaluatorConfig>, String>;
}

/// Make a string value's relative path absolute against `base`.
pub fn resolve_path(value: &mut toml::Value, base: &Path) {
    if let toml::Value::String(s) = value {
        let p = Path::new(s.as_str());
        if p.is_relative() {
            *s = base.join(p).to_string_lossy().into_owned();
        }
    }
}

/// Parse a table into a serde config type, with serde's message (which names an unknown or
/// mistyped key).
pub fn parse_table<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string().trim().to_string())
}
