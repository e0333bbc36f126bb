//! `[[evaluators]] kind = "lm"`: the settings an experiment gives this evaluator.

use crate::LmEvaluator;
use evomerge_eval::kind::{parse_table, resolve_path};
use evomerge_eval::{
    BuildContext, EvalError, Evaluator, EvaluatorConfig, EvaluatorKind, ModelFamily,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// An in-process LM task (`task` = a task TOML file, relative to the experiment file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    pub task: PathBuf,
    /// Items per forward batch (default: the task file's).
    #[serde(default)]
    pub batch_size: Option<usize>,
}

impl EvaluatorConfig for LmConfig {
    fn build(&self, _ctx: &BuildContext<'_>) -> Result<Box<dyn Evaluator>, EvalError> {
        if !self.task.exists() {
            return Err(EvalError::Config(format!(
                "task file {} does not exist",
                self.task.display()
            )));
        }
        let mut e = LmEvaluator::from_file(&self.task)?;
        if let Some(b) = self.batch_size {
            e = e.with_batch_size(b);
        }
        Ok(Box::new(e))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The `lm` kind.
pub struct LmKind;

impl EvaluatorKind for LmKind {
    fn name(&self) -> &'static str {
        "lm"
    }

    fn accepts(&self) -> &'static [ModelFamily] {
        &[ModelFamily::LanguageModel]
    }

    fn scores(&self) -> &'static str {
        "scores language models"
    }

    fn usage(&self) -> &'static str {
        "kind = \"lm\" (a task file)"
    }

    fn resolve_paths(&self, table: &mut toml::Table, base: &Path) {
        if let Some(v) = table.get_mut("task") {
            resolve_path(v, base);
        }
    }

    fn parse(&self, table: toml::Table) -> Result<Box<dyn EvaluatorConfig>, String> {
        Ok(Box::new(parse_table::<LmConfig>(table)?))
    }
}
