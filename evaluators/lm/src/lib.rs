//! In-process language-model tasks: items from JSONL files, the task from a TOML file, scored
//! on the candidate's [`evomerge_models::LanguageModel`] without leaving the process.
//!
//! Three task types:
//! - `generate`: greedy generation from a prompt template with `max_new_tokens` and stop
//!   strings; the answer is read from the output (default: the last number, as the Sakana paper
//!   does; or a custom regex) and compared with the item's answer. An optional language check
//!   (the share of output words from a vocabulary, or of letters from some scripts, must reach a
//!   threshold — our stand-in for the paper's fastText Japanese check) turns `acc` into
//!   `acc_lang`, the fitness. Metrics: `acc`, and with the check `lang_pass`, `acc_lang`.
//! - `multiple_choice`: the log-likelihood of each choice given the context; `acc` and
//!   `acc_norm` (likelihood per character, as lm-evaluation-harness).
//! - `perplexity`: rolling-window log-likelihood of each text; fitness is the mean token
//!   log-likelihood (higher is better), `perplexity` its exp(-x).
//!
//! Splits come from files or index ranges of a file; the search split can be subsampled per
//! generation (seeded by the run seed and the generation, so every candidate of a generation
//! sees the same items). Items run in batches; a progress bar shows for long evaluations.
//!
//! ```toml
//! name = "arith-ja"
//! type = "generate"
//! batch_size = 64
//!
//! [data]
//! search = "train.jsonl"
//! validation = { file = "train.jsonl", range = [800, 1000] }
//! test = "test.jsonl"
//! subsample = 100
//!
//! [generate]
//! prompt = "Q: {question}\nA:"
//! answer_field = "answer"
//! max_new_tokens = 32
//! stop = ["\n"]
//! [generate.language]
//! vocabulary_file = "ja_words.txt"
//! threshold = 0.5
//! ```
//!
//! ```no_run
//! use evomerge_eval::{EvalRequest, Evaluator, Split};
//! use evomerge_eval_lm::LmEvaluator;
//! # fn f(candidate: &dyn evomerge_eval::Candidate) -> Result<(), evomerge_eval::EvalError> {
//! let task = LmEvaluator::from_file("tasks/arith.toml")?;
//! let score = task.evaluate(candidate, &EvalRequest::new(Split::Search, 3, 42))?;
//! # Ok(()) }
//! ```

mod answer;
mod config;
mod task;

pub use answer::{Extractor, LanguageCheck, answers_match};
pub use config::{LmConfig, LmKind};
pub use task::{
    ChoiceFitness, ChoiceSpec, DataSpec, Extract, GenerateSpec, Item, LanguageSpec, PerplexitySpec,
    SplitSource, TaskSpec, TaskType, read_jsonl, render,
};

use evomerge_eval::{Candidate, EvalError, EvalRequest, Evaluator, ItemResult, Score, Split};
use evomerge_models::{GenerateOptions, LanguageModel};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[allow(clippy::large_enum_variant)] // one per evaluator, never moved in a hot path
enum Kind {
    Generate {
        spec: GenerateSpec,
        extractor: Extractor,
        language: Option<LanguageCheck>,
    },
    Choice(ChoiceSpec),
    Perplexity(PerplexitySpec),
}

/// An in-process language-model task (see the crate docs).
pub struct LmEvaluator {
    name: String,
    kind: Kind,
    splits: BTreeMap<Split, Vec<Item>>,
    subsample: Option<usize>,
    batch_size: usize,
    progress_min_items: usize,
}

impl std::fmt::Debug for LmEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmEvaluator")
            .field("name", &self.name)
            .field(
                "splits",
                &self
                    .splits
                    .iter()
                    .map(|(s, v)| (s.as_str(), v.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LmEvaluator {
    /// Read a task TOML file (data paths relative to it) and its JSONL files.
    pub fn from_file(path: impl AsRef<Path>) -> Result<LmEvaluator, EvalError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        LmEvaluator::from_toml(&text, base)
            .map_err(|e| EvalError::Config(format!("{}: {e}", path.display())))
    }

    /// Parse task TOML text; data paths are relative to `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<LmEvaluator, EvalError> {
        let spec: TaskSpec = toml::from_str(text).map_err(|e| EvalError::Config(e.to_string()))?;
        LmEvaluator::new(spec, base)
    }

    /// Build from a parsed spec, loading and checking the items.
    pub fn new(spec: TaskSpec, base: &Path) -> Result<LmEvaluator, EvalError> {
        let section = |present: bool, name: &str| {
            if present {
                Ok(())
            } else {
                Err(EvalError::Config(format!(
                    "type = \"{name}\" needs a [{name}] section"
                )))
            }
        };
        let kind = match spec.task_type {
            TaskType::Generate => {
                section(spec.generate.is_some(), "generate")?;
                let g = spec.generate.clone().expect("checked");
                let extractor = Extractor::new(g.extract, g.regex.as_deref())?;
                let language = g
                    .language
                    .as_ref()
                    .map(|l| LanguageCheck::new(l, base))
                    .transpose()?;
                Kind::Generate {
                    spec: g,
                    extractor,
                    language,
                }
            }
            TaskType::MultipleChoice => {
                section(spec.multiple_choice.is_some(), "multiple_choice")?;
                Kind::Choice(spec.multiple_choice.clone().expect("checked"))
            }
            TaskType::Perplexity => {
                Kind::Perplexity(spec.perplexity.clone().unwrap_or(PerplexitySpec {
                    text_field: "text".into(),
                }))
            }
        };
        if spec.batch_size == 0 {
            return Err(EvalError::Config("batch_size must be at least 1".into()));
        }
        let splits = task::load_splits(&spec.data, base)?;
        let ev = LmEvaluator {
            name: spec.name,
            kind,
            splits,
            subsample: spec.data.subsample,
            batch_size: spec.batch_size,
            progress_min_items: 200,
        };
        for items in ev.splits.values() {
            for item in items {
                ev.check_item(item)?;
            }
        }
        Ok(ev)
    }

    /// Show a progress bar for evaluations of at least `n` items (default 200; `usize::MAX`
    /// never shows one).
    pub fn with_progress_min_items(mut self, n: usize) -> LmEvaluator {
        self.progress_min_items = n;
        self
    }

    /// Items run together per forward pass.
    pub fn with_batch_size(mut self, n: usize) -> LmEvaluator {
        self.batch_size = n.max(1);
        self
    }

    /// The splits this task has.
    pub fn splits(&self) -> Vec<Split> {
        self.splits.keys().copied().collect()
    }

    /// Every item of a split.
    pub fn split_items(&self, split: Split) -> Option<&[Item]> {
        self.splits.get(&split).map(Vec::as_slice)
    }

    /// The items a request scores: the split, subsampled for the search split when the task
    /// says so (seeded by the run seed and the generation; returned in file order).
    pub fn items(&self, request: &EvalRequest) -> Result<Vec<&Item>, EvalError> {
        let all = self.splits.get(&request.split).ok_or_else(|| {
            EvalError::Config(format!(
                "task '{}' has no {} split; add `{} = \"file.jsonl\"` under [data]",
                self.name, request.split, request.split
            ))
        })?;
        match self.subsample {
            Some(k) if request.split == Split::Search && k < all.len() => {
                let seed = request
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(request.generation.wrapping_mul(0xD1B5_4A32_D192_ED03))
                    ^ 0x5375_6273_616d_706c;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut idx = rand::seq::index::sample(&mut rng, all.len(), k).into_vec();
                idx.sort_unstable();
                Ok(idx.into_iter().map(|i| &all[i]).collect())
            }
            _ => Ok(all.iter().collect()),
        }
    }

    /// Check that an item has what the task needs (so bad data fails at load time).
    fn check_item(&self, item: &Item) -> Result<(), EvalError> {
        match &self.kind {
            Kind::Generate { spec, .. } => {
                render(&spec.prompt, item, &[])?;
                if item.text(&spec.answer_field).is_none() {
                    return Err(item.error(format!(
                        "no \"{}\" field (the answer_field)",
                        spec.answer_field
                    )));
                }
            }
            Kind::Choice(spec) => {
                render(&spec.prompt, item, &[])?;
                let choices = choices_of(item, spec)?;
                gold_of(item, spec, &choices)?;
            }
            Kind::Perplexity(spec) => {
                if item.text(&spec.text_field).is_none_or(|t| t.is_empty()) {
                    return Err(item.error(format!(
                        "no (or an empty) \"{}\" field (the text_field)",
                        spec.text_field
                    )));
                }
            }
        }
        Ok(())
    }

    fn bar(&self, n: usize, what: &str) -> ProgressBar {
        if n < self.progress_min_items {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(n as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {} {what} [{{bar:30}}] {{pos}}/{{len}} items {{elapsed}} ETA {{eta}}",
                self.name
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    }

    fn eval_generate(
        &self,
        lm: &LanguageModel,
        items: &[&Item],
        spec: &GenerateSpec,
        extractor: &Extractor,
        language: Option<&LanguageCheck>,
    ) -> Result<Score, EvalError> {
        let prompts: Vec<String> = items
            .iter()
            .map(|it| render(&spec.prompt, it, &[]))
            .collect::<Result<_, _>>()?;
        // Similar lengths together: less padding.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
        let options = GenerateOptions {
            max_new_tokens: spec.max_new_tokens,
            stop: spec.stop.clone(),
            batch_size: self.batch_size,
            use_cache: true,
        };
        let bar = self.bar(items.len(), "generate");
        let mut outputs = vec![String::new(); items.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<String> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let gens = lm.generate(&batch, &options)?;
            for (&i, g) in chunk.iter().zip(gens) {
                outputs[i] = g.text;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let mut results = Vec::with_capacity(items.len());
        let (mut correct, mut lang_ok, mut both) = (0usize, 0usize, 0usize);
        for (item, text) in items.iter().zip(outputs) {
            let want = item.text(&spec.answer_field).unwrap_or_default();
            let got = extractor.extract(&text);
            let right = got.as_deref().is_some_and(|g| answers_match(g, &want));
            let mut r = ItemResult::new(item.id.clone(), 0.0);
            let pass = match language {
                Some(l) => {
                    let share = l.share(&text);
                    r.extra.insert("lang_share".into(), share);
                    share >= l.threshold
                }
                None => true,
            };
            correct += usize::from(right);
            lang_ok += usize::from(pass);
            both += usize::from(right && pass);
            r.score = f64::from(u8::from(right && pass));
            r.correct = Some(right);
            r.output = Some(text);
            results.push(r);
        }
        let n = items.len() as f64;
        let mut metrics = BTreeMap::new();
        metrics.insert("acc".into(), correct as f64 / n);
        let fitness = if language.is_some() {
            metrics.insert("lang_pass".into(), lang_ok as f64 / n);
            metrics.insert("acc_lang".into(), both as f64 / n);
            both as f64 / n
        } else {
            correct as f64 / n
        };
        Ok(Score::new(fitness, metrics, results))
    }

    fn eval_choice(
        &self,
        lm: &LanguageModel,
        items: &[&Item],
        spec: &ChoiceSpec,
    ) -> Result<Score, EvalError> {
        let mut pairs = Vec::new();
        let mut owners = Vec::new();
        let mut golds = Vec::new();
        for (k, item) in items.iter().enumerate() {
            let ctx = render(&spec.prompt, item, &[])?;
            let choices = choices_of(item, spec)?;
            golds.push(gold_of(item, spec, &choices)?);
            for c in &choices {
                let cont = render(&spec.choice_template, item, &[("choice", c)])?;
                pairs.push((ctx.clone(), cont));
                owners.push(k);
            }
        }
        let bar = self.bar(items.len(), "multiple choice");
        let mut scores = Vec::with_capacity(pairs.len());
        let per_call = self.batch_size * 8;
        for (chunk_pairs, chunk_owners) in pairs.chunks(per_call).zip(owners.chunks(per_call)) {
            scores.extend(lm.loglik(chunk_pairs, self.batch_size)?);
            let done = chunk_owners.last().map(|&k| k + 1).unwrap_or(0);
            bar.set_position(done as u64);
        }
        bar.finish_and_clear();
        if scores.iter().any(|s| !s.total().is_finite()) {
            return Ok(Score::failed(
                "non-finite log-likelihoods (the candidate's weights overflow)",
            ));
        }
        let mut per_item: Vec<Vec<(f64, usize)>> = vec![Vec::new(); items.len()];
        for ((s, &k), (_, cont)) in scores.iter().zip(&owners).zip(&pairs) {
            per_item[k].push((s.total(), cont.chars().count().max(1)));
        }
        let argmax = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (i, &x)| if x > b.1 { (i, x) } else { b },
                )
                .0
        };
        let (mut acc, mut acc_norm) = (0usize, 0usize);
        let mut results = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            let lls: Vec<f64> = per_item[k].iter().map(|p| p.0).collect();
            let norm: Vec<f64> = per_item[k].iter().map(|p| p.0 / p.1 as f64).collect();
            let (pick, pick_norm) = (argmax(&lls), argmax(&norm));
            let right = pick == golds[k];
            let right_norm = pick_norm == golds[k];
            acc += usize::from(right);
            acc_norm += usize::from(right_norm);
            let used = match spec.fitness {
                ChoiceFitness::Acc => right,
                ChoiceFitness::AccNorm => right_norm,
            };
            let mut r = ItemResult::new(item.id.clone(), f64::from(u8::from(used)));
            r.correct = Some(used);
            r.output = Some(
                match spec.fitness {
                    ChoiceFitness::Acc => pick,
                    ChoiceFitness::AccNorm => pick_norm,
                }
                .to_string(),
            );
            r.extra.insert("gold_loglik".into(), lls[golds[k]]);
            results.push(r);
        }
        let n = items.len() as f64;
        let mut metrics = BTreeMap::new();
        metrics.insert("acc".into(), acc as f64 / n);
        metrics.insert("acc_norm".into(), acc_norm as f64 / n);
        let fitness = match spec.fitness {
            ChoiceFitness::Acc => acc as f64 / n,
            ChoiceFitness::AccNorm => acc_norm as f64 / n,
        };
        Ok(Score::new(fitness, metrics, results))
    }

    fn eval_perplexity(
        &self,
        lm: &LanguageModel,
        items: &[&Item],
        spec: &PerplexitySpec,
    ) -> Result<Score, EvalError> {
        let texts: Vec<String> = items
            .iter()
            .map(|it| it.text(&spec.text_field).unwrap_or_default())
            .collect();
        let bar = self.bar(items.len(), "perplexity");
        let mut scored = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            scored.extend(lm.rolling_loglik(chunk, self.batch_size)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let (ll, tokens) = scored
            .iter()
            .fold((0.0, 0usize), |(a, b), (l, t)| (a + l, b + t));
        if !ll.is_finite() {
            return Ok(Score::failed(
                "non-finite log-likelihood (the candidate's weights overflow)",
            ));
        }
        if tokens == 0 {
            return Err(EvalError::Config(
                "the texts have no tokens to score".into(),
            ));
        }
        let mean = ll / tokens as f64;
        let results = items
            .iter()
            .zip(&scored)
            .map(|(it, (l, t))| {
                let mut r = ItemResult::new(it.id.clone(), *l);
                r.extra.insert("tokens".into(), *t as f64);
                r
            })
            .collect();
        let mut metrics = BTreeMap::new();
        metrics.insert("mean_loglik".into(), mean);
        metrics.insert("perplexity".into(), (-mean).exp());
        Ok(Score::new(mean, metrics, results))
    }
}

fn choices_of(item: &Item, spec: &ChoiceSpec) -> Result<Vec<String>, EvalError> {
    match item.fields.get(&spec.choices_field) {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(item.error(format!("choice {other} is not a string"))),
            })
            .collect(),
        _ => Err(item.error(format!(
            "no \"{}\" field with a non-empty list of choices",
            spec.choices_field
        ))),
    }
}

fn gold_of(item: &Item, spec: &ChoiceSpec, choices: &[String]) -> Result<usize, EvalError> {
    let idx = match item.fields.get(&spec.gold_field) {
        Some(Value::Number(n)) => n.as_u64().map(|i| i as usize),
        Some(Value::String(s)) => choices.iter().position(|c| c == s),
        _ => None,
    };
    idx.filter(|&i| i < choices.len()).ok_or_else(|| {
        item.error(format!(
            "\"{}\" must be a choice index (0..{}) or one of the choices",
            spec.gold_field,
            choices.len()
        ))
    })
}

impl Evaluator for LmEvaluator {
    fn name(&self) -> &str {
        &self.name
    }

    fn evaluate(
        &self,
        candidate: &dyn Candidate,
        request: &EvalRequest,
    ) -> Result<Score, EvalError> {
        let items = self.items(request)?;
        let lm = candidate.language_model()?;
        match &self.kind {
            Kind::Generate {
                spec,
                extractor,
                language,
            } => self.eval_generate(lm, &items, spec, extractor, language.as_ref()),
            Kind::Choice(spec) => self.eval_choice(lm, &items, spec),
            Kind::Perplexity(spec) => self.eval_perplexity(lm, &items, spec),
        }
    }
}
