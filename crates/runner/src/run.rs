//! The search loop: ask, build, evaluate, log, tell, save — resumable at any point.

use crate::experiment::{Budget, EvaluatorSpec, Experiment, GenomeKind};
use crate::lock::RunLock;
use crate::progress::Progress;
use crate::space::{Decoded, DfsSpace, Family, PsSpace, Space};
use crate::state::{CsvLog, RunState, Scored, Snapshot, StageState, crash_point, read_rows};
use crate::{RunError, report};
use evomerge_checkpoint::Dtype;
use evomerge_eval::{Candidate, EvalError, EvalRequest, Evaluator, Score, Split};
use evomerge_eval_classifier::ClassifierEvaluator;
use evomerge_eval_command::CommandEvaluator;
use evomerge_eval_lm::LmEvaluator;
use evomerge_genome::{PsGenome, PsSpec};
use evomerge_kernels::Device;
use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_models::{Llama, Tokenizer};
use evomerge_search::{Bounds, Optimizer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run folder's name (default `seed{seed}`).
    pub run_id: Option<String>,
    /// Progress and info lines on stderr (a bar on a terminal, periodic lines otherwise);
    /// false (`--quiet`): only warnings and errors.
    pub progress: bool,
}

/// The evaluators of an experiment, combined as a weighted sum.
pub struct Evaluators {
    list: Vec<(Box<dyn Evaluator>, f64)>,
    /// Where each command evaluator writes its temporary candidate folders (`None`: the
    /// system temp dir).
    temp_dirs: Vec<Option<PathBuf>>,
}

impl Evaluators {
    /// Build every evaluator (reading and checking task files now, before any search work).
    pub fn build(specs: &[EvaluatorSpec]) -> Result<Evaluators, RunError> {
        Evaluators::build_for(specs, None)
    }

    /// As [`Evaluators::build`], for the run in `run_dir`: temporary candidate folders are
    /// marked as the run's, so a later process of the run removes what a killed one left.
    pub fn build_for(
        specs: &[EvaluatorSpec],
        run_dir: Option<&Path>,
    ) -> Result<Evaluators, RunError> {
        let mut temp_dirs = Vec::new();
        let mut list: Vec<(Box<dyn Evaluator>, f64)> = Vec::new();
        for spec in specs {
            match spec {
                EvaluatorSpec::Lm {
                    task,
                    weight,
                    batch_size,
                } => {
                    if !task.exists() {
                        return Err(RunError::Config(format!(
                            "task file {} does not exist",
                            task.display()
                        )));
                    }
                    let mut e = LmEvaluator::from_file(task)?;
                    if let Some(b) = batch_size {
                        e = e.with_batch_size(*b);
                    }
                    list.push((Box::new(e), *weight));
                }
                EvaluatorSpec::Command { weight, config } => {
                    let mut e = CommandEvaluator::new(config.clone())
                        .map_err(|e| RunError::Config(e.to_string()))?;
                    if let Some(d) = run_dir {
                        e = e.with_owner(d);
                    }
                    temp_dirs.push(e.temp_dir().map(Path::to_path_buf));
                    list.push((Box::new(e), *weight));
                }
                EvaluatorSpec::Classifier { weight, spec } => {
                    // Data paths were resolved against the experiment file when it was read.
                    list.push((
                        Box::new(ClassifierEvaluator::from_spec(spec, None)?),
                        *weight,
                    ));
                }
            }
        }
        Ok(Evaluators { list, temp_dirs })
    }

    /// Remove the temporary candidate folders a stopped process of the run `run_dir` (or any
    /// dead process on this machine) left behind; says what it removed, also with `--quiet`
    /// (it reports what went wrong before, like a warning).
    fn remove_stale_folders(&self, run_dir: &Path) {
        let mut seen: Vec<&Option<PathBuf>> = Vec::new();
        for t in &self.temp_dirs {
            if seen.contains(&t) {
                continue;
            }
            seen.push(t);
            let removed = evomerge_eval_command::remove_stale_folders(t.as_deref(), run_dir);
            if !removed.is_empty() {
                eprintln!(
                    "removed {} temporary candidate folder(s) a stopped run left: {}",
                    removed.len(),
                    removed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }

    /// Score a candidate: the weighted sum of the evaluators' fitnesses; metrics prefixed with
    /// the evaluator's name when there are several. A candidate failing any evaluator fails.
    pub fn evaluate(
        &self,
        candidate: &dyn Candidate,
        request: &EvalRequest,
    ) -> Result<Score, EvalError> {
        let mut fitness = 0.0;
        let mut terms = Vec::new();
        let mut metrics = BTreeMap::new();
        let mut items = Vec::new();
        for (e, w) in &self.list {
            let s = e.evaluate(candidate, request)?;
            if s.is_failed() {
                return Ok(Score::failed(format!(
                    "{}: {}",
                    e.name(),
                    s.failure
                        .unwrap_or_else(|| format!("fitness {} is not finite", s.fitness))
                )));
            }
            fitness += w * s.fitness;
            terms.push(format!(
                "weight {w:?} x fitness {:?} ({})",
                s.fitness,
                e.name()
            ));
            for (k, v) in s.metrics {
                let key = if self.list.len() > 1 {
                    format!("{}.{k}", e.name())
                } else {
                    k
                };
                metrics.insert(key, v);
            }
            items.extend(s.items);
        }
        if !fitness.is_finite() {
            return Ok(Score::failed(format!(
                "the weighted sum of the evaluators' fitnesses is not finite: {} = {fitness:?}; check the [[evaluators]] weights",
                terms.join(" + ")
            )));
        }
        Ok(Score::new(fitness, metrics, items))
    }
}

/// Whether an evaluation error is the candidate's fault (score it as failed and go on) rather
/// than a broken setup (stop the run).
fn candidate_fault(e: &EvalError) -> bool {
    matches!(e, EvalError::Candidate(_) | EvalError::Model(_))
}

fn stage_kinds(kind: GenomeKind) -> Vec<&'static str> {
    match kind {
        GenomeKind::Ps => vec!["ps"],
        GenomeKind::Dfs => vec!["dfs"],
        GenomeKind::PsDfs => vec!["ps", "dfs"],
    }
}

/// File names of a stage's logs.
pub fn stage_files(kinds: &[&str], stage: usize) -> (String, String) {
    if stage == 0 || kinds.len() == 1 {
        ("candidates.csv".into(), "generations.csv".into())
    } else {
        (
            format!("{}_candidates.csv", kinds[stage]),
            format!("{}_generations.csv", kinds[stage]),
        )
    }
}

fn read_run_toml(dir: &Path) -> Result<toml::Value, RunError> {
    let path = dir.join("run.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        RunError::Config(format!(
            "{}: {e} (is {} a run folder?)",
            path.display(),
            dir.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| RunError::Config(format!("{}: {e}", path.display())))
}

/// What makes two runs the same experiment: everything but the `[run]` table and
/// `parallelism` (candidates scored at once change the row order of candidates.csv, not a
/// single result).
fn identity(v: &toml::Value) -> toml::Value {
    let mut v = v.clone();
    if let Some(t) = v.as_table_mut() {
        t.remove("run");
        t.remove("parallelism");
    }
    v
}

/// Start a new run of an experiment file. Everything is checked (models, shapes, task files,
/// keys) before the run folder is created.
pub fn start(experiment: &Path, options: &RunOptions) -> Result<PathBuf, RunError> {
    let (exp, resolved) = Experiment::load(experiment)?;
    let run_id = options
        .run_id
        .clone()
        .unwrap_or_else(|| format!("seed{}", exp.seed));
    let dir = exp.output.join(&exp.name).join(&run_id);
    if dir.join("run.toml").exists() {
        let existing = read_run_toml(&dir)?;
        if identity(&existing) == identity(&resolved) {
            return Err(RunError::Config(format!(
                "{} already holds this run; continue it with `evomerge resume {}` or start another with --run-id",
                dir.display(),
                dir.display()
            )));
        }
        return Err(RunError::Config(format!(
            "{} holds a run of a different experiment; refusing to mix results — pick another --run-id or output folder",
            dir.display()
        )));
    }
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(RunError::Config(format!(
            "{} exists and is not a run folder; refusing to write into it",
            dir.display()
        )));
    }
    let setup = Setup::new(&exp, &dir)?;
    std::fs::create_dir_all(&dir).map_err(|e| RunError::Io(format!("{}: {e}", dir.display())))?;
    let _lock = RunLock::acquire(&dir)?;
    if dir.join("run.toml").exists() {
        // Another process started this run between the check above and the lock.
        return Err(RunError::Config(format!(
            "{} already holds a run (started just now by another process); continue it with `evomerge resume {}`",
            dir.display(),
            dir.display()
        )));
    }
    let mut run_toml = resolved.clone();
    if let Some(t) = run_toml.as_table_mut() {
        let mut run = toml::map::Map::new();
        run.insert("id".into(), toml::Value::String(run_id));
        run.insert(
            "evomerge_version".into(),
            toml::Value::String(env!("CARGO_PKG_VERSION").into()),
        );
        run.insert(
            "experiment_file".into(),
            toml::Value::String(experiment.display().to_string()),
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        run.insert("started_unix".into(), toml::Value::Integer(started as i64));
        t.insert("run".into(), toml::Value::Table(run));
    }
    let text = toml::to_string_pretty(&run_toml).map_err(|e| RunError::Io(e.to_string()))?;
    write_atomic(&dir.join("run.toml"), text.as_bytes())?;
    if let Err(e) = execute(&dir, &exp, setup, options) {
        // Stopped before a single candidate was logged (a setup error only the first
        // evaluation shows): leave nothing behind, so the same command can run again.
        let resumable = matches!(e, RunError::Interrupted { .. } | RunError::NoSuccess(_));
        if !resumable && !logged_anything(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return Err(e);
    }
    Ok(dir)
}

/// Whether a run folder holds any finished work (a state write or a candidate row).
fn logged_anything(dir: &Path) -> bool {
    if dir.join("state.json").exists() {
        return true;
    }
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("candidates.csv"))
        .any(|e| {
            std::fs::read_to_string(e.path())
                .map(|t| t.lines().count() > 1)
                .unwrap_or(true)
        })
}

/// Continue a run exactly where it stopped (the same candidates, the same result as an
/// uninterrupted run).
pub fn resume(dir: &Path, options: &RunOptions) -> Result<PathBuf, RunError> {
    let value = read_run_toml(dir)?;
    let exp = Experiment::from_value(value)
        .map_err(|e| RunError::Config(format!("{}: {e}", dir.join("run.toml").display())))?;
    let _lock = RunLock::acquire(dir)?;
    let setup = Setup::new(&exp, dir)?;
    execute(dir, &exp, setup, options)?;
    Ok(dir.to_path_buf())
}

/// Handle SIGINT and SIGTERM: the first one asks the run to stop (the evaluations in progress
/// are stopped and cleaned up, `run`/`resume` return [`RunError::Interrupted`]); a second one
/// ends the process at once, as without the handler.
pub fn stop_on_signals() {
    extern "C" fn on_signal(signal: libc::c_int) {
        evomerge_eval::interrupt::request(signal);
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only does an atomic store (async-signal-safe);
        // SA_RESETHAND restores the default action for the next signal.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Stop here if a stop was requested.
fn check_interrupt() -> Result<(), RunError> {
    match evomerge_eval::interrupt::requested() {
        Some(signal) => Err(RunError::Eval(EvalError::Interrupted(signal))),
        None => Ok(()),
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| RunError::Io(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// What every stage shares: the device, the evaluators, the parameter-space genome, and what
/// the source models are.
pub(crate) struct Setup {
    pub device: Device,
    pub evaluators: Evaluators,
    pub ps_genome: Option<PsGenome>,
    pub family: Family,
}

impl Setup {
    fn new(exp: &Experiment, run_dir: &Path) -> Result<Setup, RunError> {
        let device = exp.device.device().map_err(RunError::Config)?;
        let dirs: Vec<&str> = exp
            .sources
            .models
            .iter()
            .chain(exp.sources.base.iter())
            .chain(exp.genome.partner.iter())
            .chain(exp.genome.dfs_models.iter().flatten())
            .map(String::as_str)
            .collect();
        for m in &dirs {
            if !Path::new(m).is_dir() {
                return Err(RunError::Config(format!("model folder {m} does not exist")));
            }
        }
        let family = Family::of_models(&dirs)?;
        family.check(&exp.evaluators, exp.genome.kind, &exp.sources.models[0])?;
        let evaluators = Evaluators::build_for(&exp.evaluators, Some(run_dir))?;
        let ps_genome = match exp.genome.kind {
            GenomeKind::Ps | GenomeKind::PsDfs => {
                let spec = exp.genome.ps.clone().unwrap_or_else(PsSpec::sakana);
                let probe = evomerge_checkpoint::Checkpoint::open(&exp.sources.models[0])?;
                let layers = probe.num_layers().ok_or_else(|| {
                    RunError::Config(format!(
                        "{}: cannot tell its layer count",
                        exp.sources.models[0]
                    ))
                })?;
                Some(PsGenome::new(
                    spec,
                    exp.sources.models.clone(),
                    exp.sources.base.clone(),
                    layers,
                )?)
            }
            GenomeKind::Dfs => None,
        };
        let setup = Setup {
            device,
            evaluators,
            ps_genome,
            family,
        };
        // Opening the parameter space checks shapes and tensor names of every source now.
        if let Some(g) = &setup.ps_genome {
            let probe = g.decode(&g.initial())?;
            let sources = Sources::open(&probe, None)?;
            Plan::build(&probe, &sources, &PlanOptions::default())?;
        }
        setup.check_optimizers(exp)?;
        Ok(setup)
    }

    /// Build every stage's optimizer once over its real search space (without keeping it), so
    /// a bad optimizer setting (`population_size = 1`, ...) or data-flow setting is an error
    /// before the run folder is created.
    fn check_optimizers(&self, exp: &Experiment) -> Result<(), RunError> {
        let layers_of = |m: &str| -> Result<usize, RunError> {
            evomerge_checkpoint::Checkpoint::open(m)?
                .num_layers()
                .ok_or_else(|| RunError::Config(format!("{m}: cannot tell its layer count")))
        };
        for (stage, kind) in stage_kinds(exp.genome.kind).into_iter().enumerate() {
            let (lo, hi, x0, sigma0) = if kind == "ps" {
                let g = self.ps_genome.as_ref().expect("ps stages have a genome");
                let (lo, hi) = g.bounds();
                (lo, hi, g.initial(), g.sigma0())
            } else {
                let models: Vec<String> = if stage > 0 {
                    // Model A is the PS result: the first source's layer layout.
                    vec![
                        exp.sources.models[0].clone(),
                        exp.genome
                            .partner
                            .clone()
                            .unwrap_or_else(|| exp.sources.models[0].clone()),
                    ]
                } else {
                    exp.genome
                        .dfs_models
                        .clone()
                        .unwrap_or_else(|| exp.sources.models.clone())
                };
                let mut models = models;
                if models.len() < 2 {
                    models.truncate(1);
                }
                let layers = models
                    .iter()
                    .map(|m| layers_of(m))
                    .collect::<Result<Vec<_>, _>>()?;
                let g = evomerge_genome::DfsGenome::new(
                    exp.genome.dfs.clone().unwrap_or_default(),
                    layers,
                )?;
                let (lo, hi) = g.bounds();
                (lo, hi, g.initial(), g.sigma0())
            };
            let config = if stage > 0 {
                exp.optimizer_dfs.as_ref().unwrap_or(&exp.optimizer)
            } else {
                &exp.optimizer
            };
            let table = if stage > 0 && exp.optimizer_dfs.is_some() {
                "[optimizer_dfs]"
            } else {
                "[optimizer]"
            };
            config
                .build(Bounds::new(lo, hi)?, &x0, sigma0, exp.seed)
                .map_err(|e| RunError::Config(format!("{table}: {e}")))?;
        }
        Ok(())
    }
}

fn build_space(
    dir: &Path,
    exp: &Experiment,
    setup: &Setup,
    state: &RunState,
    stage: usize,
    kind: &str,
) -> Result<Space, RunError> {
    if kind == "ps" {
        let genome = setup.ps_genome.clone().expect("ps stages have a genome");
        return Ok(Space::Ps(Box::new(PsSpace::new(
            genome,
            exp.sources.base.as_deref(),
            setup.family,
            &setup.device,
            exp.merge_seed(),
        )?)));
    }
    // DFS: model A is the first DFS model, or in a ps+dfs run the PS stage's result.
    let mut dirs: Vec<PathBuf> = if stage > 0 {
        let ps = &state.stages[0];
        let chosen = ps.chosen().ok_or_else(|| {
            RunError::Config(
                "the PS stage produced no valid candidate; nothing to build the DFS stage on"
                    .into(),
            )
        })?;
        let a_dir = dir.join("ps_best_model");
        if !a_dir.join("config.json").exists() {
            let recipe = Recipe::from_toml(&chosen.decoded)?;
            let sources = Sources::open(&recipe, None)?;
            let plan = Plan::build(
                &recipe,
                &sources,
                &PlanOptions {
                    out_dtype: Some(Dtype::F32),
                },
            )?;
            let opts = MergeOptions {
                device: setup.device.clone(),
                seed: exp.merge_seed(),
                force: true,
                ..Default::default()
            };
            merge_to_disk(
                &plan,
                &sources,
                &a_dir,
                &opts,
                &[("evomerge_recipe.toml", chosen.decoded.clone().into_bytes())],
            )?;
        }
        let partner = exp
            .genome
            .partner
            .clone()
            .unwrap_or_else(|| exp.sources.models[0].clone());
        vec![a_dir, PathBuf::from(partner)]
    } else {
        exp.genome
            .dfs_models
            .clone()
            .unwrap_or_else(|| exp.sources.models.clone())
            .into_iter()
            .map(PathBuf::from)
            .collect()
    };
    if dirs.len() < 2 {
        dirs.truncate(1);
    }
    let models = dirs
        .iter()
        .map(|d| Llama::from_dir(d, &setup.device).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let tok_dir = dirs
        .iter()
        .find(|d| d.join("tokenizer.json").exists())
        .ok_or_else(|| RunError::Config("no DFS model has a tokenizer.json".into()))?;
    let tokenizer = Arc::new(Tokenizer::from_dir(tok_dir)?);
    let spec = exp.genome.dfs.clone().unwrap_or_default();
    Ok(Space::Dfs(Box::new(DfsSpace::new(
        spec, models, dirs, tokenizer,
    )?)))
}

fn execute(
    dir: &Path,
    exp: &Experiment,
    setup: Setup,
    options: &RunOptions,
) -> Result<(), RunError> {
    setup.evaluators.remove_stale_folders(dir);
    execute_stages(dir, exp, &setup, options).map_err(|e| match e {
        RunError::Eval(EvalError::Interrupted(signal)) => RunError::Interrupted {
            signal,
            dir: dir.to_path_buf(),
        },
        e => e,
    })
}

fn execute_stages(
    dir: &Path,
    exp: &Experiment,
    setup: &Setup,
    options: &RunOptions,
) -> Result<(), RunError> {
    let started = Instant::now();
    let state_path = dir.join("state.json");
    let mut state = if state_path.exists() {
        RunState::load(&state_path)?
    } else {
        RunState {
            evomerge_version: env!("CARGO_PKG_VERSION").into(),
            stages: Vec::new(),
            elapsed_s: 0.0,
        }
    };
    let kinds = stage_kinds(exp.genome.kind);
    let writes = AtomicU64::new(0);
    for (stage, kind) in kinds.iter().enumerate() {
        if state.stages.get(stage).is_some_and(|s| s.done) {
            continue;
        }
        let space = build_space(dir, exp, setup, &state, stage, kind)?;
        if state.stages.len() <= stage {
            let config = if stage > 0 {
                exp.optimizer_dfs
                    .clone()
                    .unwrap_or_else(|| exp.optimizer.clone())
            } else {
                exp.optimizer.clone()
            };
            let (lo, hi) = space.bounds();
            let bounds = Bounds::new(lo, hi)?;
            let optimizer = config.build(
                bounds,
                &space.initial(),
                space.sigma0(),
                exp.seed.wrapping_add(stage as u64),
            )?;
            state.stages.push(StageState {
                kind: kind.to_string(),
                optimizer,
                generations: 0,
                evaluations: 0,
                cache: BTreeMap::new(),
                best: None,
                validated: Vec::new(),
                done: false,
            });
        }
        let budget = if stage > 0 {
            exp.budget_dfs.clone().unwrap_or_else(|| exp.budget.clone())
        } else {
            exp.budget.clone()
        };
        let (cand_file, gen_file) = stage_files(&kinds, stage);
        let ctx = StageCtx {
            exp,
            setup,
            space: &space,
            budget: &budget,
            kind,
            cand_path: dir.join(cand_file),
            gen_path: dir.join(gen_file),
            started,
            options,
            writes: &writes,
        };
        ctx.run(&mut state, stage, &state_path)?;
    }
    let summaries: Vec<LogSummary> = (0..kinds.len())
        .map(|stage| LogSummary::read(&dir.join(stage_files(&kinds, stage).0)))
        .collect();
    if options.progress {
        for (kind, s) in kinds.iter().zip(&summaries) {
            eprintln!("{kind} stage: {}", s.describe());
        }
    }
    if state.stages.iter().all(|s| s.best.is_none()) {
        let s = summaries.iter().find(|s| s.rows > 0).or(summaries.first());
        return Err(RunError::NoSuccess(format!(
            "no candidate succeeded in {}: {}; fix the evaluator or the search space and start again (or `evomerge resume` once the cause is fixed elsewhere)",
            dir.display(),
            s.map(LogSummary::describe)
                .unwrap_or_else(|| "nothing was evaluated".into())
        )));
    }
    report::finish(dir, exp, setup, &state, options.progress)?;
    Ok(())
}

/// Counts of a candidates.csv and its first error.
struct LogSummary {
    path: PathBuf,
    rows: usize,
    failed: usize,
    /// (line, generation, index, error) of the first failed row.
    first_error: Option<(u64, String, String, String)>,
}

impl LogSummary {
    fn read(path: &Path) -> LogSummary {
        let mut s = LogSummary {
            path: path.to_path_buf(),
            rows: 0,
            failed: 0,
            first_error: None,
        };
        let Ok(mut r) = csv::Reader::from_path(path) else {
            return s;
        };
        let Ok(h) = r.headers().cloned() else {
            return s;
        };
        let col = |n: &str| h.iter().position(|c| c == n);
        let (Some(status), Some(error), Some(gen_col), Some(index)) =
            (col("status"), col("error"), col("generation"), col("index"))
        else {
            return s;
        };
        for rec in r.records().flatten() {
            s.rows += 1;
            if rec.get(status) == Some("failed") {
                s.failed += 1;
                if s.first_error.is_none() {
                    s.first_error = Some((
                        rec.position().map(|p| p.line()).unwrap_or(0),
                        rec.get(gen_col).unwrap_or("").to_string(),
                        rec.get(index).unwrap_or("").to_string(),
                        rec.get(error).unwrap_or("").to_string(),
                    ));
                }
            }
        }
        s
    }

    fn describe(&self) -> String {
        let mut d = format!("{} candidates, {} failed", self.rows, self.failed);
        if let Some((line, g, i, e)) = &self.first_error {
            let e = if e.is_empty() { "(no error text)" } else { e };
            d.push_str(&format!(
                "; first error ({} line {line}, generation {g} #{i}): {}",
                self.path.display(),
                one_line(e, 400)
            ));
        }
        d
    }
}

/// Text on one line (newlines and tabs become spaces, runs of spaces one), cut to `max`
/// characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}...")
    }
}

/// The line a finished stage prints: the best on the search split (the `best` column of
/// generations.csv) and, when validation chose another candidate, which one it chose.
fn stage_summary(
    kind: &str,
    generations: u64,
    evaluations: u64,
    best: Option<&Snapshot>,
    chosen: Option<&Snapshot>,
) -> Option<String> {
    let best = best?;
    let mut line = format!(
        "{kind} stage done: {generations} generations, {evaluations} candidates; best search fitness {:.4} (generation {} #{})",
        best.search_fitness, best.generation, best.index
    );
    if let Some(c) = chosen.filter(|c| c.validation_fitness.is_some()) {
        let v = c.validation_fitness.unwrap_or(f64::NAN);
        if c.key == best.key {
            line.push_str(&format!(", validation {v:.4}; it is the result"));
        } else {
            line.push_str(&format!(
                "; result chosen by validation: generation {} #{} with validation {v:.4}, search fitness {:.4}",
                c.generation, c.index, c.search_fitness
            ));
        }
    }
    Some(line)
}

struct StageCtx<'a> {
    exp: &'a Experiment,
    setup: &'a Setup,
    space: &'a Space,
    budget: &'a Budget,
    kind: &'a str,
    cand_path: PathBuf,
    gen_path: PathBuf,
    started: Instant,
    options: &'a RunOptions,
    writes: &'a AtomicU64,
}

/// The outcome of one candidate.
struct Outcome {
    index: usize,
    scored: Scored,
    status: &'static str,
    merge_ms: f64,
    eval_ms: f64,
}

fn fmt_f(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl StageCtx<'_> {
    fn elapsed(&self, state: &RunState) -> f64 {
        state.elapsed_s + self.started.elapsed().as_secs_f64()
    }

    fn budget_left(&self, st: &StageState, state: &RunState) -> bool {
        if self.budget.evaluations.is_some_and(|e| st.evaluations >= e) {
            return false;
        }
        if self.budget.generations.is_some_and(|g| st.generations >= g) {
            return false;
        }
        if self
            .budget
            .wall_seconds
            .is_some_and(|w| self.elapsed(state) >= w)
        {
            return false;
        }
        st.optimizer.should_stop().is_none()
    }

    fn candidate_header(&self) -> Vec<String> {
        let mut h: Vec<String> = [
            "stage",
            "generation",
            "index",
            "status",
            "fitness",
            "metrics",
            "merge_ms",
            "eval_ms",
            "key",
            "error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        h.extend(self.space.decoded_columns());
        let n = self.space.dim();
        if n <= 256 {
            h.extend((0..n).map(|i| format!("x.{i}")));
        }
        h
    }

    fn gen_header() -> Vec<String> {
        [
            "stage",
            "generation",
            "evaluations",
            "best",
            "gen_best",
            "mean",
            "q25",
            "median",
            "q75",
            "sigma",
            "failed",
            "elapsed_s",
            "validation",
            "pipeline_ms",
            "overhead_ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Evaluate one candidate on the search split: build (merge or path), then score.
    fn evaluate_one(
        &self,
        decoded: &Decoded,
        label: &str,
        request: &EvalRequest,
    ) -> Result<(Scored, f64, f64), RunError> {
        let t0 = Instant::now();
        let built = self.space.build(decoded, label);
        let merge_ms = t0.elapsed().as_secs_f64() * 1e3;
        let candidate = match built {
            Ok(c) => c,
            Err(e) => {
                return Ok((
                    Scored {
                        fitness: None,
                        metrics: BTreeMap::new(),
                        error: Some(format!("build: {e}")),
                    },
                    merge_ms,
                    0.0,
                ));
            }
        };
        let t1 = Instant::now();
        let score = match self.setup.evaluators.evaluate(candidate.as_ref(), request) {
            Ok(s) => s,
            Err(e) if candidate_fault(&e) => Score::failed(e.to_string()),
            Err(e) => return Err(RunError::Eval(e)),
        };
        let eval_ms = t1.elapsed().as_secs_f64() * 1e3;
        let scored = Scored {
            fitness: (!score.is_failed()).then_some(score.fitness),
            metrics: score.metrics,
            error: score.failure,
        };
        Ok((scored, merge_ms, eval_ms))
    }

    fn run(&self, state: &mut RunState, stage: usize, state_path: &Path) -> Result<(), RunError> {
        let mut log = CsvLog::open(&self.cand_path, &self.candidate_header())?;
        let mut glog = CsvLog::open(&self.gen_path, &Self::gen_header())?;
        let mut prior = read_rows(&self.cand_path)?;
        let bar = Progress::new(
            &format!("{} stage", self.kind),
            "candidates",
            self.budget.evaluations.unwrap_or(0),
            self.options.progress,
        );
        bar.start_at(state.stages[stage].evaluations);
        // The previous generation's state.json write, counted in the next row's overhead.
        let mut last_save_ms = 0.0;
        while self.budget_left(&state.stages[stage], state) {
            check_interrupt()?;
            let t_gen = Instant::now();
            let st = &mut state.stages[stage];
            let g = st.generations;
            let mut xs = st.optimizer.ask();
            // The last generation stops at the evaluation budget: only its first candidates
            // are scored. The optimizer is not told a partial generation (its update assumes
            // a whole sample); the stage ends with it.
            let left = self
                .budget
                .evaluations
                .map(|b| b.saturating_sub(st.evaluations) as usize);
            let partial = left.is_some_and(|n| n < xs.len());
            if let Some(n) = left.filter(|_| partial) {
                xs.truncate(n);
            }
            let request = EvalRequest::new(Split::Search, g, self.exp.seed);
            let mut outcomes: Vec<Option<Outcome>> = (0..xs.len()).map(|_| None).collect();
            let mut decoded: Vec<Option<Decoded>> = Vec::with_capacity(xs.len());
            let mut keys: Vec<String> = Vec::with_capacity(xs.len());
            let mut to_eval: Vec<usize> = Vec::new();
            let mut first_of_key: BTreeMap<String, usize> = BTreeMap::new();
            let mut dup_of: BTreeMap<usize, usize> = BTreeMap::new();
            for (i, x) in xs.iter().enumerate() {
                let d = self.space.decode(x);
                let (d, key) = match d {
                    Ok(d) => {
                        let k = d.key();
                        (Some(d), k)
                    }
                    Err(e) => {
                        outcomes[i] = Some(Outcome {
                            index: i,
                            scored: Scored {
                                fitness: None,
                                metrics: BTreeMap::new(),
                                error: Some(e.to_string()),
                            },
                            status: "failed",
                            merge_ms: 0.0,
                            eval_ms: 0.0,
                        });
                        (None, String::new())
                    }
                };
                decoded.push(d);
                keys.push(key.clone());
                let logged = prior.remove(&(g, i)).filter(|row| match &row.damaged {
                    None => true,
                    Some(why) => {
                        eprintln!(
                            "warning: {} line {}: {why}; the row is damaged and ignored, candidate {i} of generation {g} is evaluated again",
                            self.cand_path.display(),
                            row.line
                        );
                        false
                    }
                });
                if let Some(row) = logged {
                    // Logged before the process stopped: reuse, do not evaluate or log again.
                    let fitness = row.fitness();
                    let row = &row.fields;
                    let metrics = row
                        .get("metrics")
                        .and_then(|m| serde_json::from_str(m).ok())
                        .unwrap_or_default();
                    let error = row.get("error").filter(|e| !e.is_empty()).cloned();
                    let scored = Scored {
                        fitness,
                        metrics,
                        error,
                    };
                    if row
                        .get("status")
                        .is_some_and(|s| s == "ok" || s == "failed")
                    {
                        st.cache.insert(key.clone(), scored.clone());
                    }
                    outcomes[i] = Some(Outcome {
                        index: i,
                        scored,
                        status: "reused",
                        merge_ms: 0.0,
                        eval_ms: 0.0,
                    });
                    continue;
                }
                if outcomes[i].is_some() {
                    continue;
                }
                if let Some(hit) = st.cache.get(&key) {
                    outcomes[i] = Some(Outcome {
                        index: i,
                        scored: hit.clone(),
                        status: "cached",
                        merge_ms: 0.0,
                        eval_ms: 0.0,
                    });
                    continue;
                }
                if let Some(&first) = first_of_key.get(&key) {
                    dup_of.insert(i, first);
                    continue;
                }
                first_of_key.insert(key.clone(), i);
                to_eval.push(i);
            }
            // Log what is already known (cache hits and decode failures) first.
            for o in outcomes.iter().flatten() {
                if o.status != "reused" {
                    self.log_row(
                        &mut log,
                        g,
                        o,
                        &xs[o.index],
                        decoded[o.index].as_ref(),
                        &keys[o.index],
                    )?;
                }
            }
            // Evaluate the rest: one thread builds candidates, `parallelism` threads score them.
            let t_pipe = Instant::now();
            let results = self
                .evaluate_parallel(&xs, &decoded, &to_eval, g, &request, &mut log, &keys, &bar)?;
            let mut pipeline_ms = t_pipe.elapsed().as_secs_f64() * 1e3;
            let st = &mut state.stages[stage];
            for o in results {
                if o.scored.fitness.is_some() || o.scored.error.is_some() {
                    st.cache.insert(keys[o.index].clone(), o.scored.clone());
                }
                let i = o.index;
                outcomes[i] = Some(o);
            }
            for (i, first) in dup_of {
                let scored = outcomes[first].as_ref().expect("evaluated").scored.clone();
                let o = Outcome {
                    index: i,
                    scored,
                    status: "cached",
                    merge_ms: 0.0,
                    eval_ms: 0.0,
                };
                self.log_row(&mut log, g, &o, &xs[i], decoded[i].as_ref(), &keys[i])?;
                outcomes[i] = Some(o);
            }
            let outcomes: Vec<Outcome> = outcomes
                .into_iter()
                .map(|o| o.expect("every candidate has an outcome"))
                .collect();
            // Tell (minimising -fitness), keep the best, log the generation.
            let told: Vec<Option<f64>> = outcomes
                .iter()
                .map(|o| o.scored.fitness.map(|f| -f))
                .collect();
            let st = &mut state.stages[stage];
            if !partial {
                st.optimizer.tell(&told)?;
            }
            for o in &outcomes {
                if let (Some(f), Some(d)) = (o.scored.fitness, decoded[o.index].as_ref())
                    && f.is_finite()
                    && st.best.as_ref().is_none_or(|b| f > b.search_fitness)
                {
                    st.best = Some(Snapshot {
                        generation: g,
                        index: o.index,
                        x: xs[o.index].clone(),
                        key: keys[o.index].clone(),
                        decoded: d.canonical(),
                        search_fitness: f,
                        validation_fitness: None,
                    });
                }
            }
            st.generations += 1;
            st.evaluations += outcomes.len() as u64;
            let mut valid: Vec<f64> = outcomes.iter().filter_map(|o| o.scored.fitness).collect();
            valid.sort_by(f64::total_cmp);
            let failed = outcomes.len() - valid.len();
            let validation = if self.exp.validation.every > 0
                && st.generations.is_multiple_of(self.exp.validation.every)
            {
                let t_val = Instant::now();
                bar.set_message(format!("validating the best of generation {g}"));
                let v = self.validate(st)?;
                pipeline_ms += t_val.elapsed().as_secs_f64() * 1e3;
                v
            } else {
                None
            };
            let st = &state.stages[stage];
            let mean = if valid.is_empty() {
                f64::NAN
            } else {
                valid.iter().sum::<f64>() / valid.len() as f64
            };
            let sigma = st.optimizer.sigma();
            let row = vec![
                self.kind.to_string(),
                g.to_string(),
                st.evaluations.to_string(),
                fmt_f(st.best.as_ref().map(|b| b.search_fitness)),
                fmt_f(valid.last().copied()),
                fmt_f((!valid.is_empty()).then_some(mean)),
                fmt_f((!valid.is_empty()).then(|| quantile(&valid, 0.25))),
                fmt_f((!valid.is_empty()).then(|| quantile(&valid, 0.5))),
                fmt_f((!valid.is_empty()).then(|| quantile(&valid, 0.75))),
                fmt_f(sigma),
                failed.to_string(),
                format!("{:.3}", self.elapsed(state)),
                fmt_f(validation),
                format!("{pipeline_ms:.1}"),
                // Everything but merging and scoring: ask/tell, decoding, the cache, CSV rows,
                // statistics, and the previous generation's state write.
                format!(
                    "{:.3}",
                    t_gen.elapsed().as_secs_f64() * 1e3 - pipeline_ms + last_save_ms
                ),
            ];
            glog.write(&row)?;
            bar.set_message(format!(
                "gen {} best {}{}",
                st.generations,
                st.best
                    .as_ref()
                    .map(|b| format!("{:.4}", b.search_fitness))
                    .unwrap_or_else(|| "-".into()),
                st.chosen()
                    .and_then(|c| c.validation_fitness)
                    .map(|v| format!(" val {v:.4}"))
                    .unwrap_or_default()
            ));
            bar.set_position(st.evaluations);
            let t_save = Instant::now();
            self.save(state, state_path)?;
            last_save_ms = t_save.elapsed().as_secs_f64() * 1e3;
        }
        // The stage ends with its best validated (when validation is on).
        let st = &mut state.stages[stage];
        if self.exp.validation.every > 0 {
            bar.set_message("validating the stage's best".into());
            self.validate(st)?;
        }
        st.done = true;
        bar.finish();
        drop(bar);
        self.save(state, state_path)?;
        let st = &state.stages[stage];
        if let Some(line) = stage_summary(
            self.kind,
            st.generations,
            st.evaluations,
            st.best.as_ref(),
            st.chosen(),
        ) && self.options.progress
        {
            eprintln!("{line}");
        }
        Ok(())
    }

    fn save(&self, state: &mut RunState, path: &Path) -> Result<(), RunError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut snapshot = state.clone();
        snapshot.elapsed_s = self.elapsed(state);
        snapshot.save(path, n)
    }

    /// Score the best-so-far on the validation split unless it already was.
    fn validate(&self, st: &mut StageState) -> Result<Option<f64>, RunError> {
        let Some(best) = st.best.clone() else {
            return Ok(None);
        };
        if st.validated.iter().any(|v| v.key == best.key) {
            return Ok(None);
        }
        let decoded = match self.space {
            Space::Ps(_) => Decoded::Recipe(Box::new(Recipe::from_toml(&best.decoded)?)),
            Space::Dfs(_) => Decoded::Path(
                serde_json::from_str(&best.decoded).map_err(|e| RunError::Io(e.to_string()))?,
            ),
        };
        let request = EvalRequest::new(Split::Validation, 0, self.exp.seed);
        let (scored, _, _) = self.evaluate_one(
            &decoded,
            &format!("{} validation gen {}", self.kind, best.generation),
            &request,
        )?;
        let mut snap = best;
        snap.validation_fitness = scored.fitness;
        let v = scored.fitness;
        st.validated.push(snap);
        Ok(v)
    }

    fn log_row(
        &self,
        log: &mut CsvLog,
        g: u64,
        o: &Outcome,
        x: &[f64],
        decoded: Option<&Decoded>,
        key: &str,
    ) -> Result<(), RunError> {
        let status = if o.scored.fitness.is_none() && o.status == "ok" {
            "failed"
        } else {
            o.status
        };
        let mut row = vec![
            self.kind.to_string(),
            g.to_string(),
            o.index.to_string(),
            status.to_string(),
            fmt_f(o.scored.fitness),
            serde_json::to_string(&o.scored.metrics).unwrap_or_default(),
            format!("{:.1}", o.merge_ms),
            format!("{:.1}", o.eval_ms),
            key.to_string(),
            o.scored
                .error
                .clone()
                .unwrap_or_default()
                .replace('\n', " "),
        ];
        let cols = self.space.decoded_columns().len();
        match decoded {
            Some(d) => row.extend(self.space.decoded_values(x, d)),
            None => row.extend(std::iter::repeat_n(String::new(), cols)),
        }
        if x.len() <= 256 {
            row.extend(x.iter().map(|v| format!("{v}")));
        }
        log.write(&row)?;
        ROWS.with(|r| {
            let c = r.get() + 1;
            r.set(c);
            crash_point("after-row", c);
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate_parallel(
        &self,
        xs: &[Vec<f64>],
        decoded: &[Option<Decoded>],
        to_eval: &[usize],
        g: u64,
        request: &EvalRequest,
        log: &mut CsvLog,
        keys: &[String],
        bar: &Progress,
    ) -> Result<Vec<Outcome>, RunError> {
        let workers = self.exp.parallelism.max(1);
        let mut out = Vec::with_capacity(to_eval.len());
        std::thread::scope(|s| -> Result<(), RunError> {
            type Job = (usize, Result<Box<dyn Candidate>, String>, f64);
            let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (res_tx, res_rx) = mpsc::channel::<Result<Outcome, RunError>>();
            s.spawn(move || {
                for &i in to_eval {
                    let t0 = Instant::now();
                    let label = format!("{} gen {g} #{i}", self.kind);
                    let built = self
                        .space
                        .build(decoded[i].as_ref().expect("decoded"), &label);
                    if job_tx
                        .send((i, built, t0.elapsed().as_secs_f64() * 1e3))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            for _ in 0..workers {
                let job_rx = Arc::clone(&job_rx);
                let res_tx = res_tx.clone();
                s.spawn(move || {
                    loop {
                        let job = job_rx.lock().expect("job queue").recv();
                        let Ok((i, built, merge_ms)) = job else { break };
                        if let Some(signal) = evomerge_eval::interrupt::requested() {
                            let _ =
                                res_tx.send(Err(RunError::Eval(EvalError::Interrupted(signal))));
                            break;
                        }
                        let result = match built {
                            Err(e) => Ok(Outcome {
                                index: i,
                                scored: Scored {
                                    fitness: None,
                                    metrics: BTreeMap::new(),
                                    error: Some(format!("build: {e}")),
                                },
                                status: "failed",
                                merge_ms,
                                eval_ms: 0.0,
                            }),
                            Ok(candidate) => {
                                let t1 = Instant::now();
                                match self.setup.evaluators.evaluate(candidate.as_ref(), request) {
                                    Ok(score) => Ok(Outcome {
                                        index: i,
                                        status: if score.is_failed() { "failed" } else { "ok" },
                                        scored: Scored {
                                            fitness: (!score.is_failed()).then_some(score.fitness),
                                            metrics: score.metrics,
                                            error: score.failure,
                                        },
                                        merge_ms,
                                        eval_ms: t1.elapsed().as_secs_f64() * 1e3,
                                    }),
                                    Err(e) if candidate_fault(&e) => Ok(Outcome {
                                        index: i,
                                        status: "failed",
                                        scored: Scored {
                                            fitness: None,
                                            metrics: BTreeMap::new(),
                                            error: Some(e.to_string()),
                                        },
                                        merge_ms,
                                        eval_ms: t1.elapsed().as_secs_f64() * 1e3,
                                    }),
                                    Err(e) => Err(RunError::Eval(e)),
                                }
                            }
                        };
                        let fatal = result.is_err();
                        if res_tx.send(result).is_err() || fatal {
                            break;
                        }
                    }
                });
            }
            drop(res_tx);
            // Log every evaluation that finishes, also after another one stopped the run (an
            // interrupt, a broken setup): nothing finished is lost.
            let mut first_err = None;
            for r in res_rx {
                match r {
                    Ok(o) => {
                        self.log_row(
                            log,
                            g,
                            &o,
                            &xs[o.index],
                            decoded[o.index].as_ref(),
                            &keys[o.index],
                        )?;
                        out.push(o);
                        bar.inc();
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })?;
        out.sort_by_key(|o| o.index);
        Ok(out)
    }
}

thread_local! {
    static ROWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(generation: u64, index: usize, key: &str, search: f64, val: Option<f64>) -> Snapshot {
        Snapshot {
            generation,
            index,
            x: vec![0.0],
            key: key.into(),
            decoded: String::new(),
            search_fitness: search,
            validation_fitness: val,
        }
    }

    #[test]
    fn the_stage_line_labels_the_search_best_and_the_validation_choice() {
        let best = snap(2, 5, "b", 0.9, Some(0.7));
        let chosen = snap(1, 3, "c", 0.85, Some(0.8));
        let line = stage_summary("ps", 3, 24, Some(&best), Some(&chosen)).unwrap();
        assert!(
            line.contains("best search fitness 0.9000 (generation 2 #5)")
                && line.contains(
                    "result chosen by validation: generation 1 #3 with validation 0.8000, search fitness 0.8500"
                ),
            "{line}"
        );
        let line = stage_summary("ps", 3, 24, Some(&best), Some(&best)).unwrap();
        assert!(
            line.contains("best search fitness 0.9000") && line.contains("it is the result"),
            "{line}"
        );
        let line = stage_summary("dfs", 1, 8, Some(&best), Some(&best.clone())).unwrap();
        assert!(!line.contains("chosen by validation"), "{line}");
    }

    #[test]
    fn one_line_flattens_multi_line_text() {
        assert_eq!(one_line("a\nb\r\n  c\td", 100), "a b c d");
        assert_eq!(one_line("abcdef", 3), "abc...");
    }
}
