//! The experiment file: what to search, with what, for how long.

use crate::RunError;
use crate::evaluators::{KINDS, kind_named};
use evomerge_eval::EvaluatorConfig;
use evomerge_exec::{ExecKind, ExecutionSpec};
use evomerge_genome::{DfsSpec, PsSpec};
use evomerge_kernels::{DeviceChoice, EvalDtype};
use evomerge_search::OptimizerConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an experiment file (or a run folder's run.toml) is not a valid experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// Not TOML.
    #[error("{0}")]
    Toml(#[source] toml::de::Error),
    /// A key is unknown or has a value of the wrong type; `key` is where (dotted, e.g.
    /// `optimizer.population_size`, `evaluators[1].weight`) when it can be told.
    #[error("{}", key_message(.key, .source))]
    Key {
        key: Option<String>,
        #[source]
        source: toml::de::Error,
    },
    /// The settings parse but do not make a run (the message names the setting and the fix).
    #[error("{0}")]
    Invalid(String),
}

fn key_message(key: &Option<String>, source: &toml::de::Error) -> String {
    let message = source.to_string();
    match key {
        Some(key) => format!("`{key}`: {}", message.trim()),
        None => message,
    }
}

/// Which search space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum GenomeKind {
    /// Parameter space: weights/densities decoded into a merge recipe.
    #[serde(rename = "ps")]
    Ps,
    /// Data-flow space: a layer path through the source models.
    #[serde(rename = "dfs")]
    Dfs,
    /// PS first, then DFS over {the PS result as model A, `partner` as model B}.
    #[serde(rename = "ps+dfs")]
    PsDfs,
}

/// The source models.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesSpec {
    /// The common ancestor (needed by task-vector methods and the baselines).
    #[serde(default)]
    pub base: Option<String>,
    /// The fine-tuned models whose weights (PS) or layers (DFS) are searched.
    pub models: Vec<String>,
}

/// `[genome]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenomeSpec {
    pub kind: GenomeKind,
    /// Parameter-space settings (`[genome.ps]`); default: the Sakana preset.
    #[serde(default)]
    pub ps: Option<PsSpec>,
    /// Data-flow settings (`[genome.dfs]`).
    #[serde(default)]
    pub dfs: Option<DfsSpec>,
    /// DFS models in order A, B, ... (default: the sources' models).
    #[serde(default)]
    pub dfs_models: Option<Vec<String>>,
    /// For `ps+dfs`: model B next to the PS result (default: the first source model).
    #[serde(default)]
    pub partner: Option<String>,
}

/// When to stop a stage (whichever comes first; at least one is required).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Candidates (evaluated or answered from the cache).
    #[serde(default)]
    pub evaluations: Option<u64>,
    #[serde(default)]
    pub generations: Option<u64>,
    /// Wall-clock seconds of the whole run.
    #[serde(default)]
    pub wall_seconds: Option<f64>,
}

/// One `[[evaluators]]` table: its `kind`, its `weight` (several evaluators are combined as a
/// weighted sum of fitnesses, default weight 1) and the rest, parsed by the kind's own config
/// type (see `evomerge_eval::EvaluatorKind`; the kinds are listed in `evaluators.rs`).
#[derive(Debug, Clone)]
pub struct EvaluatorSpec {
    kind: &'static str,
    pub weight: f64,
    config: Arc<dyn EvaluatorConfig>,
}

fn one() -> f64 {
    1.0
}

impl EvaluatorSpec {
    /// An evaluator of a registered kind with its config, e.g.
    /// `EvaluatorSpec::new("lm", 1.0, LmConfig { task, batch_size: None })`.
    pub fn new(
        kind: &str,
        weight: f64,
        config: impl EvaluatorConfig,
    ) -> Result<EvaluatorSpec, RunError> {
        let k = kind_named(kind).ok_or_else(|| RunError::Config(unknown_kind(kind)))?;
        Ok(EvaluatorSpec {
            kind: k.name(),
            weight,
            config: Arc::new(config),
        })
    }

    /// An in-process LM task with weight 1 (`kind = "lm"`, `task = ...`).
    pub fn lm(task: impl Into<PathBuf>) -> EvaluatorSpec {
        EvaluatorSpec {
            kind: "lm",
            weight: 1.0,
            config: Arc::new(evomerge_eval_lm::LmConfig {
                task: task.into(),
                batch_size: None,
            }),
        }
    }

    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The `kind` key of this evaluator.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Its parsed settings.
    pub fn config(&self) -> &dyn EvaluatorConfig {
        self.config.as_ref()
    }

    /// Its settings as the kind's config type (`spec.config_as::<LmConfig>()`), if they are.
    pub fn config_as<T: 'static>(&self) -> Option<&T> {
        self.config.as_any().downcast_ref::<T>()
    }
}

fn unknown_kind(kind: &str) -> String {
    format!(
        "unknown evaluator kind `{kind}`; the kinds are: {}",
        KINDS
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl<'de> Deserialize<'de> for EvaluatorSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`kind` must be a string, got {other}"
                )));
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        let weight = match table.remove("weight") {
            Some(w) => f64::deserialize(w).map_err(D::Error::custom)?,
            None => one(),
        };
        let k = kind_named(&kind).ok_or_else(|| D::Error::custom(unknown_kind(&kind)))?;
        let config = k.parse(table).map_err(|e| {
            D::Error::custom(format!(
                "kind = \"{kind}\": {e} (every kind also takes `kind` and `weight`)"
            ))
        })?;
        Ok(EvaluatorSpec {
            kind: k.name(),
            weight,
            config: Arc::from(config),
        })
    }
}

/// `[validation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    /// Score the best-so-far on the validation split every this many generations (0 = never).
    #[serde(default)]
    pub every: u64,
}

/// An untuned baseline merge scored at the end.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    pub method: String,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub density: Option<f64>,
}

fn default_baselines() -> Vec<BaselineSpec> {
    vec![
        BaselineSpec {
            method: "task_arithmetic".into(),
            weight: 1.0,
            density: None,
        },
        BaselineSpec {
            method: "ties".into(),
            weight: 1.0,
            density: Some(0.5),
        },
        BaselineSpec {
            method: "dare_ties".into(),
            weight: 1.0,
            density: Some(0.5),
        },
    ]
}

fn yes() -> bool {
    true
}

/// `[report]`: what the final test table holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Score each source model (and the base) on the test split.
    #[serde(default = "yes")]
    pub sources: bool,
    /// Untuned merges of all sources (default: task arithmetic, TIES and DARE-TIES with
    /// weight 1 and density 0.5).
    #[serde(default = "default_baselines")]
    pub baselines: Vec<BaselineSpec>,
    /// Score on the test split at all (off for quick searches).
    #[serde(default = "yes")]
    pub test: bool,
}

impl Default for ReportSpec {
    fn default() -> Self {
        ReportSpec {
            sources: true,
            baselines: default_baselines(),
            test: true,
        }
    }
}

fn default_output() -> PathBuf {
    PathBuf::from("results")
}

fn default_parallelism() -> usize {
    1
}

/// An experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the results folder: `OUTPUT/NAME/RUN_ID`.
    pub name: String,
    /// Seeds the optimizer, the per-generation item subsample and (unless `merge_seed` is set)
    /// the random merge masks.
    #[serde(default)]
    pub seed: u64,
    /// Seed of DARE/DELLA masks (default: `seed`).
    #[serde(default)]
    pub merge_seed: Option<u64>,
    /// cpu, wgpu or auto.
    #[serde(default)]
    pub device: DeviceChoice,
    /// The precision in-process evaluators compute in: auto (the sources' dtype where the
    /// device computes in it, else f32), float32, float16, bfloat16.
    #[serde(default)]
    pub eval_dtype: EvalDtype,
    /// Candidates evaluated at the same time.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Candidates merged ahead of a free evaluation slot (default 0 in one process: memory
    /// holds one candidate per slot; one per slot with `[execution] devices`).
    #[serde(default)]
    pub prefetch: Option<usize>,
    /// Root folder of the results (relative to the working directory).
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// Free text kept in run.toml.
    #[serde(default)]
    pub description: Option<String>,
    pub sources: SourcesSpec,
    pub genome: GenomeSpec,
    /// The optimizer (`optimizer = "cma"` and its settings; see `evomerge-search`).
    pub optimizer: OptimizerConfig,
    /// The optimizer of the DFS stage of a `ps+dfs` run (default: `optimizer`).
    #[serde(default)]
    pub optimizer_dfs: Option<OptimizerConfig>,
    pub budget: Budget,
    /// The DFS stage's budget in a `ps+dfs` run (default: `budget`).
    #[serde(default)]
    pub budget_dfs: Option<Budget>,
    /// `[[evaluators]]`.
    pub evaluators: Vec<EvaluatorSpec>,
    #[serde(default)]
    pub validation: ValidationSpec,
    #[serde(default)]
    pub report: ReportSpec,
    /// `[execution]`: where candidates are scored (the devices of this box, or Slurm job
    /// arrays; see `evomerge-exec`).
    #[serde(default)]
    pub execution: ExecutionSpec,
}

/// Keys holding paths, resolved against the experiment file's folder.
fn resolve_paths(value: &mut toml::Value, base: &Path) {
    let abs = |v: &mut toml::Value| {
        if let toml::Value::String(s) = v {
            let p = Path::new(s.as_str());
            if p.is_relative() {
                *s = base.join(p).to_string_lossy().into_owned();
            }
        }
    };
    let Some(root) = value.as_table_mut() else {
        return;
    };
    if let Some(sources) = root.get_mut("sources").and_then(toml::Value::as_table_mut) {
        if let Some(b) = sources.get_mut("base") {
            abs(b);
        }
        if let Some(toml::Value::Array(ms)) = sources.get_mut("models") {
            ms.iter_mut().for_each(abs);
        }
    }
    if let Some(genome) = root.get_mut("genome").and_then(toml::Value::as_table_mut) {
        if let Some(p) = genome.get_mut("partner") {
            abs(p);
        }
        if let Some(toml::Value::Array(ms)) = genome.get_mut("dfs_models") {
            ms.iter_mut().for_each(abs);
        }
    }
    if let Some(w) = root
        .get_mut("execution")
        .and_then(|e| e.get_mut("slurm"))
        .and_then(|s| s.get_mut("worker"))
    {
        abs(w);
    }
    // Each evaluator kind resolves its own paths.
    if let Some(toml::Value::Array(evs)) = root.get_mut("evaluators") {
        for e in evs.iter_mut().filter_map(toml::Value::as_table_mut) {
            if let Some(k) = e
                .get("kind")
                .and_then(toml::Value::as_str)
                .and_then(kind_named)
            {
                k.resolve_paths(e, base);
            }
        }
    }
}

/// The key that makes `value` fail to parse as an experiment: the one whose removal alone
/// makes it parse (serde's messages for tagged tables such as `[optimizer]` and
/// `[[evaluators]]` lose the key). Written as a dotted path, `optimizer.population_size`,
/// `evaluators[1].weight`.
fn culprit(value: &toml::Value) -> Option<String> {
    fn paths(v: &toml::Value, out: &mut Vec<Vec<PathPart>>, at: &mut Vec<PathPart>) {
        match v {
            toml::Value::Table(t) => {
                for (k, child) in t {
                    at.push(PathPart::Key(k.clone()));
                    out.push(at.clone());
                    paths(child, out, at);
                    at.pop();
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) => {
                for (i, child) in a.iter().enumerate() {
                    at.push(PathPart::Index(i));
                    paths(child, out, at);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    fn remove(v: &mut toml::Value, path: &[PathPart]) {
        match (path, v) {
            ([PathPart::Key(k)], toml::Value::Table(t)) => {
                t.remove(k);
            }
            ([PathPart::Key(k), rest @ ..], toml::Value::Table(t)) => {
                if let Some(c) = t.get_mut(k) {
                    remove(c, rest);
                }
            }
            ([PathPart::Index(i), rest @ ..], toml::Value::Array(a)) => {
                if let Some(c) = a.get_mut(*i) {
                    remove(c, rest);
                }
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    paths(value, &mut all, &mut Vec::new());
    // Deepest keys first: the narrowest culprit.
    all.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in all.into_iter().take(2000) {
        let mut v = value.clone();
        remove(&mut v, &path);
        if v.try_into::<Experiment>().is_ok() {
            let mut name = String::new();
            for part in &path {
                match part {
                    PathPart::Key(k) if name.is_empty() => name.push_str(k),
                    PathPart::Key(k) => {
                        name.push('.');
                        name.push_str(k);
                    }
                    PathPart::Index(i) => name.push_str(&format!("[{}]", i + 1)),
                }
            }
            return Some(name);
        }
    }
    None
}

#[derive(Clone)]
enum PathPart {
    Key(String),
    Index(usize),
}

impl Experiment {
    /// Parse an experiment file; relative model, task and folder paths are resolved against
    /// the file's folder. Returns the experiment and the resolved TOML (kept as run.toml).
    pub fn load(path: &Path) -> Result<(Experiment, toml::Value), RunError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        Experiment::from_toml(&text, &base)
            .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))
    }

    /// Parse experiment text with paths relative to `base`.
    pub fn from_toml(
        text: &str,
        base: &Path,
    ) -> Result<(Experiment, toml::Value), ExperimentError> {
        let mut value: toml::Value = toml::from_str(text).map_err(ExperimentError::Toml)?;
        resolve_paths(&mut value, base);
        let exp = Experiment::from_value(value.clone())?;
        Ok((exp, value))
    }

    /// Parse an already resolved experiment (run.toml without its `[run]` table).
    pub fn from_value(mut value: toml::Value) -> Result<Experiment, ExperimentError> {
        if let Some(t) = value.as_table_mut() {
            t.remove("run");
        }
        let exp: Experiment = value
            .clone()
            .try_into()
            .map_err(|source: toml::de::Error| ExperimentError::Key {
                key: culprit(&value),
                source,
            })?;
        exp.validate().map_err(ExperimentError::Invalid)?;
        Ok(exp)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.contains('/') {
            return Err(format!(
                "name '{}' must be a non-empty folder name",
                self.name
            ));
        }
        if self.sources.models.is_empty() {
            return Err(
                "[sources] models is empty; list the fine-tuned models to search over".into(),
            );
        }
        if self.evaluators.is_empty() {
            return Err("no [[evaluators]]; add at least one (kind = \"lm\" with a task file, kind = \"classifier\" for MLP sources, or kind = \"command\")".into());
        }
        if self.parallelism == 0 {
            return Err("parallelism must be at least 1".into());
        }
        self.execution.check().map_err(|e| e.to_string())?;
        if self.parallelism > 1
            && (self.execution.devices.is_some() || self.execution.kind == ExecKind::Slurm)
        {
            return Err(format!(
                "parallelism = {} and [execution] both say how many candidates run at once; remove parallelism (with devices the slots are devices / devices_per_candidate, on Slurm one task per candidate)",
                self.parallelism
            ));
        }
        let budgets = std::iter::once(("[budget]", &self.budget))
            .chain(self.budget_dfs.as_ref().map(|b| ("[budget_dfs]", b)));
        for (table, b) in budgets {
            if b.evaluations.is_none() && b.generations.is_none() && b.wall_seconds.is_none() {
                return Err(format!(
                    "{table} sets no limit; give evaluations, generations or wall_seconds"
                ));
            }
            if b.evaluations == Some(0) {
                return Err(format!(
                    "{table} evaluations = 0 would evaluate nothing; give at least 1"
                ));
            }
            if b.generations == Some(0) {
                return Err(format!(
                    "{table} generations = 0 would evaluate nothing; give at least 1"
                ));
            }
            if let Some(w) = b.wall_seconds
                && !(w.is_finite() && w > 0.0)
            {
                return Err(format!(
                    "{table} wall_seconds = {w} must be a positive number of seconds"
                ));
            }
        }
        for (i, e) in self.evaluators.iter().enumerate() {
            let w = e.weight();
            if !w.is_finite() {
                return Err(format!(
                    "[[evaluators]] #{} (kind = \"{}\"): weight = {w} is not a finite number",
                    i + 1,
                    e.kind()
                ));
            }
        }
        match self.genome.kind {
            GenomeKind::Ps | GenomeKind::PsDfs if self.sources.base.is_none() => {
                let ps = self.genome.ps.clone().unwrap_or_else(PsSpec::sakana);
                // A fixed method that searches weights without a base (linear, nuslerp, ...).
                let fixed = matches!(&ps.merge_method, evomerge_genome::MethodGene::Fixed(m)
                if evomerge_merge::method::lookup(m).is_ok_and(|s| {
                    s.base != evomerge_merge::method::BaseUse::Required
                        && s.evolvable().next().is_some()
                }));
                if !fixed {
                    return Err(
                        "[sources] base is required for task-vector methods (ties, dare_ties, ...)"
                            .into(),
                    );
                }
            }
            GenomeKind::Dfs if self.genome.ps.is_some() => {
                return Err(
                    "[genome.ps] is set but kind = \"dfs\"; remove it or use kind = \"ps+dfs\""
                        .into(),
                );
            }
            GenomeKind::Ps if self.genome.dfs.is_some() => {
                return Err(
                    "[genome.dfs] is set but kind = \"ps\"; remove it or use kind = \"ps+dfs\""
                        .into(),
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// The DARE/DELLA mask seed.
    pub fn merge_seed(&self) -> u64 {
        self.merge_seed.unwrap_or(self.seed)
    }

    /// The optimizer of stage `stage` and the table it comes from (`[optimizer_dfs]` for the
    /// second stage of a `ps+dfs` run when set, else `[optimizer]`).
    pub fn optimizer_for(&self, stage: usize) -> (&'static str, &OptimizerConfig) {
        match &self.optimizer_dfs {
            Some(o) if stage > 0 => ("[optimizer_dfs]", o),
            _ => ("[optimizer]", &self.optimizer),
        }
    }

    /// The budget of stage `stage` (`[budget_dfs]` for the second stage when set).
    pub fn budget_for(&self, stage: usize) -> &Budget {
        match &self.budget_dfs {
            Some(b) if stage > 0 => b,
            _ => &self.budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[sources]
base = "models/base"
models = ["models/a", "models/b"]
[genome]
kind = "ps"
[optimizer]
optimizer = "cma"
[budget]
evaluations = 10
[[evaluators]]
kind = "lm"
task = "tasks/t.toml"
"#;

    #[test]
    fn parses_and_resolves_paths() {
        let (e, v) = Experiment::from_toml(MINIMAL, Path::new("/exp")).unwrap();
        assert_eq!(e.sources.models, vec!["/exp/models/a", "/exp/models/b"]);
        assert_eq!(e.sources.base.as_deref(), Some("/exp/models/base"));
        let lm = e.evaluators[0]
            .config_as::<evomerge_eval_lm::LmConfig>()
            .expect("an lm evaluator");
        assert_eq!(lm.task, Path::new("/exp/tasks/t.toml"));
        assert_eq!(e.evaluators[0].weight, 1.0);
        assert_eq!(v["sources"]["models"][0].as_str(), Some("/exp/models/a"));
        assert_eq!(e.report.baselines.len(), 3);
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let e = Experiment::from_toml(
            &MINIMAL.replace("[budget]", "[budget]\nevals = 3"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("evals"), "{e}");
        let e = Experiment::from_toml(&format!("colour = 1\n{MINIMAL}"), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Experiment::from_toml(&MINIMAL.replace("evaluations = 10", ""), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no limit"), "{e}");
        for (table, key) in [
            ("[optimizer]", "popsize = 4"),
            ("[genome]", "repeat = 2"),
            ("task = \"tasks/t.toml\"", "weigth = 2"),
        ] {
            let text = MINIMAL.replace(table, &format!("{table}\n{key}"));
            let e = Experiment::from_toml(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            let name = key.split(' ').next().unwrap();
            assert!(e.contains(name), "{key}: {e}");
        }
        let cmd = MINIMAL.replace(
            "kind = \"lm\"\ntask = \"tasks/t.toml\"",
            "kind = \"command\"\ncommand = \"true\"\ntimeout = 3",
        );
        let e = Experiment::from_toml(&cmd, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`timeout`") && e.contains("timeout_s"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        for (from, to, key) in [
            (
                "optimizer = \"cma\"",
                "optimizer = \"cma\"\npopulation_size = \"eight\"",
                "`optimizer.population_size`",
            ),
            (
                "evaluations = 10",
                "evaluations = \"ten\"",
                "`budget.evaluations`",
            ),
            (
                "task = \"tasks/t.toml\"",
                "task = \"tasks/t.toml\"\nweight = \"heavy\"",
                "`evaluators[1].weight`",
            ),
        ] {
            let e = Experiment::from_toml(&MINIMAL.replace(from, to), Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    #[test]
    fn budgets_that_run_nothing_and_non_finite_weights_are_refused() {
        for (from, to, needle) in [
            ("evaluations = 10", "evaluations = 0", "evaluations = 0"),
            ("evaluations = 10", "generations = 0", "generations = 0"),
            ("evaluations = 10", "wall_seconds = -1.0", "wall_seconds"),
            ("evaluations = 10", "wall_seconds = nan", "wall_seconds"),
            (
                "task = \"tasks/t.toml\"",
                "task = \"tasks/t.toml\"\nweight = nan",
                "weight = NaN",
            ),
            (
                "task = \"tasks/t.toml\"",
                "task = \"tasks/t.toml\"\nweight = inf",
                "weight = inf",
            ),
        ] {
            let e = Experiment::from_toml(&MINIMAL.replace(from, to), Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{to}: {e}");
        }
        let dfs_budget = format!("{MINIMAL}\n[budget_dfs]\nevaluations = 0\n");
        let e = Experiment::from_toml(&dfs_budget, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[budget_dfs] evaluations = 0"), "{e}");
    }

    #[test]
    fn classifier_evaluators_parse_with_data_paths_relative_to_the_file() {
        let text = MINIMAL.replace(
            "kind = \"lm\"\ntask = \"tasks/t.toml\"",
            "kind = \"classifier\"\nweight = 2.0\nname = \"digits\"\nsubsample = 64\n\
             [evaluators.search]\ndataset = \"digits\"\nsplit = \"train\"\n\
             [evaluators.test]\ndataset = \"data/test.csv\"\nsplit = \"all\"",
        );
        let (e, v) = Experiment::from_toml(&text, Path::new("/exp")).unwrap();
        let weight = e.evaluators[0].weight;
        let spec = e.evaluators[0]
            .config_as::<evomerge_eval_classifier::ClassifierSpec>()
            .unwrap_or_else(|| panic!("{:?}", e.evaluators[0]));
        assert_eq!((weight, e.evaluators[0].kind()), (2.0, "classifier"));
        assert_eq!(spec.name.as_deref(), Some("digits"));
        assert_eq!(spec.subsample, Some(64));
        assert_eq!(spec.search.as_ref().unwrap().dataset, "digits");
        assert!(spec.validation.is_none());
        let test = spec.test.as_ref().unwrap();
        assert_eq!(test.dataset, "/exp/data/test.csv");
        assert_eq!(test.split, evomerge_data::Part::All);
        // run.toml keeps the resolved path, and parses again to the same spec
        assert_eq!(
            v["evaluators"][0]["test"]["dataset"].as_str(),
            Some("/exp/data/test.csv")
        );
        let again = Experiment::from_value(v).unwrap();
        assert_eq!(
            again.evaluators[0].config_as::<evomerge_eval_classifier::ClassifierSpec>(),
            Some(spec)
        );
        // Unknown keys name the key, at the evaluator and inside a data table.
        let e = Experiment::from_toml(&text.replace("subsample", "subsmaple"), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`subsmaple`") && e.contains("subsample"), "{e}");
        let e = Experiment::from_toml(
            &text.replace("split = \"all\"", "splits = \"all\""),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("splits"), "{e}");
    }

    /// The README documents every key in one example; it must stay a valid experiment.
    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("<!-- experiment-example")
            .expect("README marker");
        let block = &readme[start..];
        let code = &block[block.find("```toml\n").unwrap() + 8..];
        let code = &code[..code.find("```").unwrap()];
        let (e, _) = Experiment::from_toml(code, Path::new("/exp")).unwrap();
        assert_eq!(e.genome.kind, GenomeKind::PsDfs);
        assert_eq!(e.evaluators.len(), 2);
        assert_eq!(e.optimizer.name(), "cma");
        assert_eq!(e.optimizer_dfs.as_ref().unwrap().name(), "sep-cma");
        assert_eq!(e.validation.every, 5);
        assert_eq!(e.report.baselines, default_baselines());
        assert_eq!(e.sources.models[2], "/exp/models/math2");
    }
}
