//! A complete toy experiment (models, a perplexity task, the experiment file) that runs in
//! seconds: what the runner's tests and the kill tests use.

use crate::TinyLlama;
use evomerge_checkpoint::{CheckpointError, Dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Write into `dir`: `models/{base,a,b}` (4-layer tiny Llamas; `a` and `b` are perturbed
/// copies of `base`), `task.toml` + `{search,validation,test}.jsonl` (a perplexity task over
/// word sequences drawn from the tokenizer's vocabulary, 12/6/6 items, 4 items subsampled per
/// generation), and `experiment.toml` (a PS search with CMA-ES, `budget` candidates). Returns
/// the experiment file's path. `extra` is appended to the experiment file.
pub fn toy_experiment(dir: &Path, budget: u64, extra: &str) -> Result<PathBuf, CheckpointError> {
    let spec = TinyLlama {
        layers: 4,
        ..Default::default()
    };
    let base = spec.random(11);
    let models = dir.join("models");
    base.save(models.join("base"), Dtype::F32, u64::MAX)?;
    base.perturbed(1, 0.05)
        .save(models.join("a"), Dtype::F32, u64::MAX)?;
    base.perturbed(2, 0.05)
        .save(models.join("b"), Dtype::F32, u64::MAX)?;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (split, n) in [("search", 12), ("validation", 6), ("test", 6)] {
        let mut text = String::new();
        for i in 0..n {
            let words: Vec<String> = (0..10)
                .map(|_| format!("tok{}", rng.random_range(3..spec.vocab)))
                .collect();
            writeln!(
                text,
                "{{\"id\": \"{split}{i}\", \"text\": \"{}\"}}",
                words.join(" ")
            )
            .expect("string write");
        }
        std::fs::write(dir.join(format!("{split}.jsonl")), text).map_err(|e| {
            CheckpointError::Io {
                path: dir.to_path_buf(),
                source: e,
            }
        })?;
    }
    let io = |e| CheckpointError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::write(
        dir.join("task.toml"),
        "name = \"toy-perplexity\"\ntype = \"perplexity\"\n\n[data]\nsearch = \"search.jsonl\"\nvalidation = \"validation.jsonl\"\ntest = \"test.jsonl\"\nsubsample = 4\n",
    )
    .map_err(io)?;
    let exp = format!(
        "name = \"toy\"\nseed = 3\noutput = \"{}\"\n\n[sources]\nbase = \"models/base\"\nmodels = [\"models/a\", \"models/b\"]\n\n[genome]\nkind = \"ps\"\n\n[optimizer]\noptimizer = \"cma\"\n\n[budget]\nevaluations = {budget}\n\n[[evaluators]]\nkind = \"lm\"\ntask = \"task.toml\"\n\n[validation]\nevery = 2\n{extra}",
        dir.join("results").display()
    );
    let path = dir.join("experiment.toml");
    std::fs::write(&path, exp).map_err(io)?;
    Ok(path)
}
