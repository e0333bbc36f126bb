//! `[[evaluators]] kind = "classifier"`: the experiment's table is a [`ClassifierSpec`].

use crate::{ClassifierEvaluator, ClassifierSpec};
use evomerge_eval::kind::{parse_table, resolve_path};
use evomerge_eval::{
    BuildContext, EvalError, Evaluator, EvaluatorConfig, EvaluatorKind, ModelFamily,
};
use std::path::Path;

impl EvaluatorConfig for ClassifierSpec {
    fn build(&self, _ctx: &BuildContext<'_>) -> Result<Box<dyn Evaluator>, EvalError> {
        // Data paths were resolved against the experiment file when it was read.
        Ok(Box::new(ClassifierEvaluator::from_spec(self, None)?))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The `classifier` kind: accuracy of MLP classifier candidates.
pub struct ClassifierKind;

impl EvaluatorKind for ClassifierKind {
    fn name(&self) -> &'static str {
        "classifier"
    }

    fn accepts(&self) -> &'static [ModelFamily] {
        &[ModelFamily::Classifier]
    }

    fn scores(&self) -> &'static str {
        "scores MLP classifiers (EvomergeMlp checkpoints)"
    }

    fn usage(&self) -> &'static str {
        "kind = \"classifier\" (name, subsample, and [evaluators.search] / \
         [evaluators.validation] / [evaluators.test] data tables)"
    }

    /// Each split's `dataset` file (the built-in `digits` is a name, not a path).
    fn resolve_paths(&self, table: &mut toml::Table, base: &Path) {
        for split in ["search", "validation", "test"] {
            if let Some(v) = table
                .get_mut(split)
                .and_then(toml::Value::as_table_mut)
                .and_then(|t| t.get_mut("dataset"))
                .filter(|v| v.as_str() != Some("digits"))
            {
                resolve_path(v, base);
            }
        }
    }

    fn parse(&self, table: toml::Table) -> Result<Box<dyn EvaluatorConfig>, String> {
        Ok(Box::new(parse_table::<ClassifierSpec>(table)?))
    }
}
