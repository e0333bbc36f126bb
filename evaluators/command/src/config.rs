//! `[[evaluators]] kind = "command"`: the experiment's table is a [`CommandConfig`].

use crate::{CommandConfig, CommandEvaluator, remove_stale_folders};
use evomerge_eval::kind::{parse_table, resolve_path};
use evomerge_eval::{
    BuildContext, EvalError, Evaluator, EvaluatorConfig, EvaluatorKind, ModelFamily,
};
use std::path::{Path, PathBuf};

impl EvaluatorConfig for CommandConfig {
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Evaluator>, EvalError> {
        let mut e = CommandEvaluator::new(self.clone())?;
        if let Some(d) = ctx.run_dir {
            e = e.with_owner(d);
        }
        Ok(Box::new(e))
    }

    fn remove_stale_folders(&self, run_dir: &Path) -> Vec<PathBuf> {
        remove_stale_folders(self.temp_dir.as_deref(), run_dir)
    }

    fn temp_root(&self) -> Option<Option<PathBuf>> {
        Some(self.temp_dir.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The `command` kind: any external command that reads the candidate's Hugging Face folder.
pub struct CommandKind;

impl EvaluatorKind for CommandKind {
    fn name(&self) -> &'static str {
        "command"
    }

    fn accepts(&self) -> &'static [ModelFamily] {
        &[ModelFamily::LanguageModel, ModelFamily::Classifier]
    }

    fn scores(&self) -> &'static str {
        "scores any model an external command can read"
    }

    fn usage(&self) -> &'static str {
        "kind = \"command\""
    }

    fn resolve_paths(&self, table: &mut toml::Table, base: &Path) {
        for key in ["cwd", "temp_dir"] {
            if let Some(v) = table.get_mut(key) {
                resolve_path(v, base);
            }
        }
    }

    fn parse(&self, table: toml::Table) -> Result<Box<dyn EvaluatorConfig>, String> {
        Ok(Box::new(parse_table::<CommandConfig>(table)?))
    }
}
