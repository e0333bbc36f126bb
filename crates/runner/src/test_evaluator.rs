//! `test_loglik` (only with the `test-evaluator` feature): an evaluator kind added as this one
//! file plus its line in `evaluators.rs`' `KINDS`, to show that a new kind needs nothing
//! else. Fitness: the mean token log-likelihood of a text file (`file`, relative to the
//! experiment file) under the candidate language model.

use evomerge_eval::kind::{parse_table, resolve_path};
use evomerge_eval::{
    BuildContext, Candidate, EvalError, EvalRequest, Evaluator, EvaluatorConfig, EvaluatorKind,
    ModelFamily, Score,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `[[evaluators]] kind = "test_loglik"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestLoglikConfig {
    /// A text file, one text per line.
    pub file: PathBuf,
}

struct TestLoglik {
    texts: Vec<String>,
}

impl Evaluator for TestLoglik {
    fn name(&self) -> &str {
        "test_loglik"
    }

    fn evaluate(
        &self,
        candidate: &dyn Candidate,
        _request: &EvalRequest,
    ) -> Result<Score, EvalError> {
        let lm = candidate.language_model()?;
        let scored = lm.rolling_loglik(&self.texts, 4)?;
        let (total, tokens) = scored
            .iter()
            .fold((0.0, 0usize), |(t, n), (l, k)| (t + l, n + k));
        let fitness = total / tokens.max(1) as f64;
        Ok(Score::new(
            fitness,
            BTreeMap::from([("loglik".to_string(), fitness)]),
            Vec::new(),
        ))
    }
}

impl EvaluatorConfig for TestLoglikConfig {
    fn build(&self, _ctx: &BuildContext<'_>) -> Result<Box<dyn Evaluator>, EvalError> {
        let text = std::fs::read_to_string(&self.file).map_err(|source| EvalError::Io {
            path: self.file.display().to_string(),
            source,
        })?;
        let texts: Vec<String> = text.lines().map(str::to_string).collect();
        if texts.is_empty() {
            return Err(EvalError::Config(format!(
                "{}: no text",
                self.file.display()
            )));
        }
        Ok(Box::new(TestLoglik { texts }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The `test_loglik` kind.
pub struct TestLoglikKind;

impl EvaluatorKind for TestLoglikKind {
    fn name(&self) -> &'static str {
        "test_loglik"
    }

    fn accepts(&self) -> &'static [ModelFamily] {
        &[ModelFamily::LanguageModel]
    }

    fn scores(&self) -> &'static str {
        "scores language models"
    }

    fn usage(&self) -> &'static str {
        "kind = \"test_loglik\" (a text file)"
    }

    fn resolve_paths(&self, table: &mut toml::Table, base: &Path) {
        if let Some(v) = table.get_mut("file") {
            resolve_path(v, base);
        }
    }

    fn parse(&self, table: toml::Table) -> Result<Box<dyn EvaluatorConfig>, String> {
        Ok(Box::new(parse_table::<TestLoglikConfig>(table)?))
    }
}
