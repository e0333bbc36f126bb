//! Starting and resuming a run: check everything ([`Setup`]), create the run folder, then
//! run each stage ([`crate::stage`]) and finish with the report ([`crate::report`]).

use crate::RunError;
use crate::executor::for_experiment;
use crate::experiment::Experiment;
use crate::lock::RunLock;
use crate::log::{CandidateTable, GenerationRow};
use crate::report;
use crate::setup::{Setup, build_space};
use crate::stage::{Stage, StageKind, stage_files};
use crate::state::{RunState, StageState};
use evomerge_checkpoint::write_atomic;
use evomerge_eval::EvalError;
use evomerge_search::Bounds;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
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

pub(crate) fn read_run_toml(dir: &Path) -> Result<toml::Value, RunError> {
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

/// What makes two runs the same experiment: everything but the `[run]` table, `parallelism`,
/// `prefetch` and `[execution]` (where and how many candidates are scored at once change the
/// row order of candidates.csv, not a single result).
fn identity(v: &toml::Value) -> toml::Value {
    let mut v = v.clone();
    if let Some(t) = v.as_table_mut() {
        t.remove("run");
        t.remove("parallelism");
        t.remove("prefetch");
        t.remove("execution");
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
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
        path: dir.clone(),
        source,
    })?;
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
    let text = toml::to_string_pretty(&run_toml)
        .map_err(|e| RunError::Config(format!("run.toml: {e}")))?;
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
    let kinds = StageKind::of(exp.genome.kind);
    let executor = for_experiment(exp, &setup.device)?;
    let writes = AtomicU64::new(0);
    for (stage, &kind) in kinds.iter().enumerate() {
        if state.stages.get(stage).is_some_and(|s| s.done) {
            continue;
        }
        let space = build_space(dir, exp, setup, &state, stage, kind)?;
        if state.stages.len() <= stage {
            let (lo, hi) = space.bounds();
            let optimizer = exp.optimizer_for(stage).1.build(
                Bounds::new(lo, hi)?,
                &space.initial(),
                space.sigma0(),
                exp.seed.wrapping_add(stage as u64),
            )?;
            state.stages.push(StageState {
                kind,
                optimizer,
                generations: 0,
                evaluations: 0,
                cache: BTreeMap::new(),
                best: None,
                validated: Vec::new(),
                done: false,
            });
        }
        let (cand_file, gen_file) = stage_files(&kinds, stage);
        Stage {
            exp,
            setup,
            space: &space,
            executor: executor.as_ref(),
            kind,
            index: stage,
            run_dir: dir,
            cand_path: dir.join(cand_file),
            gen_path: dir.join(gen_file),
            state_path: &state_path,
            started,
            progress: options.progress,
            writes: &writes,
        }
        .run(&mut state)?;
    }
    let summaries: Vec<LogSummary> = (0..kinds.len())
        .map(|stage| LogSummary::read(&dir.join(stage_files(&kinds, stage).0)))
        .collect();
    if options.progress {
        for (kind, s) in kinds.iter().zip(&summaries) {
            eprintln!("{kind} stage: {}", s.describe());
        }
        if executor.device_busy().is_some()
            && let Some(line) = device_summary(dir, &kinds)
        {
            eprintln!("{line}");
        }
        if kinds.len() > 1
            && let Some((r, _)) = state.result()
            && r + 1 < kinds.len()
        {
            eprintln!(
                "result: the {} stage's answer (the later stages scored no better)",
                kinds[r]
            );
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

/// Each device's utilization over the whole run (every generation's evaluation wall time,
/// earlier processes of the run included), from the generations logs.
fn device_summary(dir: &Path, kinds: &[StageKind]) -> Option<String> {
    let mut busy: Vec<(String, f64)> = Vec::new();
    let mut wall = 0.0;
    let mut generations = 0;
    for stage in 0..kinds.len() {
        let rows = GenerationRow::read_all(&dir.join(stage_files(kinds, stage).1)).ok()??;
        for r in rows {
            let Some(u) = r.device_util.filter(|u| *u > 0.0) else {
                continue;
            };
            let n = r.device_busy_s.len().max(1) as f64;
            // device_util is the mean busy time over the wall time.
            wall += r.device_busy_s.iter().map(|(_, b)| b).sum::<f64>() / n / u;
            generations += 1;
            for (d, b) in r.device_busy_s {
                match busy.iter_mut().find(|(name, _)| *name == d) {
                    Some(e) => e.1 += b,
                    None => busy.push((d, b)),
                }
            }
        }
    }
    if wall <= 0.0 || busy.is_empty() {
        return None;
    }
    let each: Vec<String> = busy
        .iter()
        .map(|(d, b)| format!("{d} {:.1}%", 100.0 * b / wall))
        .collect();
    let mean = busy.iter().map(|(_, b)| b).sum::<f64>() / busy.len() as f64 / wall;
    Some(format!(
        "device utilization (busy / evaluation wall time over {generations} generations, {wall:.1} s): {}; mean {:.1}%",
        each.join(", "),
        100.0 * mean
    ))
}

/// Counts of a candidates.csv and its first error.
struct LogSummary {
    path: PathBuf,
    rows: usize,
    failed: usize,
    /// (line, generation, index, error) of the first failed row.
    first_error: Option<(u64, u64, usize, String)>,
}

impl LogSummary {
    fn read(path: &Path) -> LogSummary {
        let mut s = LogSummary {
            path: path.to_path_buf(),
            rows: 0,
            failed: 0,
            first_error: None,
        };
        let Ok(Some(table)) = CandidateTable::read(path) else {
            return s;
        };
        // A damaged row counts as a candidate, not as a failure.
        s.rows += table.rows.iter().filter(|l| l.row.is_err()).count();
        for (line, row) in table.sound() {
            s.rows += 1;
            if row.status == crate::log::Status::Failed {
                s.failed += 1;
                if s.first_error.is_none() {
                    s.first_error = Some((
                        line,
                        row.generation,
                        row.index,
                        row.error.clone().unwrap_or_default(),
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
                crate::one_line(e, 400)
            ));
        }
        d
    }
}
