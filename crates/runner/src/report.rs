//! The end of a run: the best recipe/path files and the test table (best, sources, untuned
//! baselines).

use crate::RunError;
use crate::experiment::{Experiment, GenomeKind};
use crate::log::ResultRow;
use crate::progress::Progress;
use crate::setup::{Setup, dfs_model_dirs, ps_best_model};
use crate::space::Family;
use crate::stage::StageKind;
use crate::state::{RunState, Snapshot};
use evomerge_checkpoint::write_atomic;
use evomerge_eval::{Candidate, EvalRequest, MergedCandidate, MlpCandidate, PathCandidate, Split};
use evomerge_kernels::{BufferPool, Device, FloatDType};
use evomerge_merge::{
    InputModel, ModelRef, ParamSetting, Params, Plan, PlanOptions, Recipe, Sources,
    merge_in_memory, merge_in_memory_pooled,
};
use evomerge_models::{LayerPath, MlpWeights, TensorMap, Tokenizer};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn tokenizer_for(dirs: &[PathBuf]) -> Result<(Arc<Tokenizer>, PathBuf), RunError> {
    let d = dirs
        .iter()
        .find(|d| d.join("tokenizer.json").exists())
        .ok_or_else(|| RunError::Config("no model has a tokenizer.json".into()))?;
    Ok((Arc::new(Tokenizer::from_dir(d)?), d.clone()))
}

/// Merge a recipe (reading the sources from disk) into an in-memory candidate.
pub fn recipe_candidate(
    recipe: &Recipe,
    label: &str,
    device: &Device,
    seed: u64,
) -> Result<MergedCandidate, RunError> {
    recipe_candidate_as(recipe, label, device, seed, None)
}

/// [`recipe_candidate`] merged straight into `eval_dtype` (`None`: f32), which the candidate
/// then computes in.
pub fn recipe_candidate_as(
    recipe: &Recipe,
    label: &str,
    device: &Device,
    seed: u64,
    eval_dtype: Option<FloatDType>,
) -> Result<MergedCandidate, RunError> {
    recipe_candidate_pooled(recipe, label, device, seed, eval_dtype, &BufferPool::new())
}

/// [`recipe_candidate_as`] into buffers lent by `pool` (those of candidates dropped before:
/// what a search's merges write into).
pub fn recipe_candidate_pooled(
    recipe: &Recipe,
    label: &str,
    device: &Device,
    seed: u64,
    eval_dtype: Option<FloatDType>,
    pool: &BufferPool,
) -> Result<MergedCandidate, RunError> {
    let sources = Sources::open(recipe, None)?;
    let plan = Plan::build(recipe, &sources, &PlanOptions::default())?;
    let merged = merge_in_memory_pooled(&plan, &sources, device, seed, eval_dtype, pool)?;
    let dirs: Vec<PathBuf> = plan
        .tokenizer_from
        .iter()
        .map(|i| sources.models[*i].path.clone())
        .chain(sources.models.iter().map(|m| m.path.clone()))
        .collect();
    let (tok, tok_dir) = tokenizer_for(&dirs)?;
    let config = plan
        .config
        .clone()
        .ok_or_else(|| RunError::Config("the merged model has no config.json".into()))?;
    Ok(MergedCandidate::new(
        label,
        config,
        TensorMap::from_views(label, merged),
        tok,
        Some(tok_dir),
        device,
    )?
    .with_eval_dtype(eval_dtype))
}

/// Merge a recipe over `EvomergeMlp` checkpoints (reading the sources from disk) into an
/// in-memory MLP classifier candidate.
pub fn mlp_recipe_candidate(
    recipe: &Recipe,
    label: &str,
    device: &Device,
    seed: u64,
) -> Result<MlpCandidate, RunError> {
    let sources = Sources::open(recipe, None)?;
    let plan = Plan::build(recipe, &sources, &PlanOptions::default())?;
    let merged = merge_in_memory(&plan, &sources, device, seed)?;
    let config = plan
        .config
        .clone()
        .ok_or_else(|| RunError::Config("the merged model has no config.json".into()))?;
    Ok(MlpCandidate::from_tensors(
        label,
        &config,
        &TensorMap::from_views(label, merged),
    )?)
}

/// An `EvomergeMlp` checkpoint folder as a candidate.
pub fn mlp_checkpoint_candidate(dir: &Path, label: &str) -> Result<MlpCandidate, RunError> {
    let weights =
        MlpWeights::load(dir).map_err(|e| RunError::Config(format!("{}: {e}", dir.display())))?;
    Ok(MlpCandidate::new(label, weights))
}

/// A recipe's merge as the candidate its sources make.
fn family_recipe_candidate(
    family: Family,
    recipe: &Recipe,
    label: &str,
    setup: &Setup,
    seed: u64,
) -> Result<Box<dyn Candidate>, RunError> {
    let device = &setup.device;
    Ok(match family {
        Family::Decoder => Box::new(recipe_candidate_as(
            recipe,
            label,
            device,
            seed,
            setup.eval_dtype,
        )?),
        Family::Mlp => Box::new(mlp_recipe_candidate(recipe, label, device, seed)?),
    })
}

/// A checkpoint folder as a candidate.
pub fn checkpoint_candidate(
    dir: &Path,
    label: &str,
    device: &Device,
) -> Result<MergedCandidate, RunError> {
    let ckpt = evomerge_checkpoint::Checkpoint::open(dir)?;
    let config = ckpt
        .config()
        .cloned()
        .ok_or_else(|| RunError::Config(format!("{}: no config.json", dir.display())))?;
    let tensors = TensorMap::from_checkpoint(&ckpt, device)?;
    let tok = Arc::new(Tokenizer::from_dir(dir)?);
    Ok(MergedCandidate::new(
        label,
        config,
        tensors,
        tok,
        Some(dir.to_path_buf()),
        device,
    )?)
}

/// A layer path over checkpoint folders as a candidate.
/// `eval_dtype`: the precision the models compute in (`None`: f32).
pub fn path_candidate(
    dirs: &[PathBuf],
    path: &LayerPath,
    label: &str,
    device: &Device,
    eval_dtype: Option<FloatDType>,
) -> Result<PathCandidate, RunError> {
    let models = dirs
        .iter()
        .map(|d| crate::setup::load_model(d, device, eval_dtype))
        .collect::<Result<Vec<_>, _>>()?;
    let (tok, _) = tokenizer_for(dirs)?;
    Ok(PathCandidate::new(label, models, path.clone(), tok)?)
}

fn baseline_recipe(exp: &Experiment, method: &str, weight: f64, density: Option<f64>) -> Recipe {
    let models = exp
        .sources
        .models
        .iter()
        .map(|m| {
            let mut p = Params::new();
            p.insert("weight".into(), ParamSetting::from(weight));
            if let Some(d) = density {
                p.insert("density".into(), ParamSetting::from(d));
            }
            InputModel {
                model: ModelRef::from(m.as_str()),
                parameters: p,
            }
        })
        .collect();
    Recipe {
        merge_method: method.into(),
        base_model: exp.sources.base.as_deref().map(ModelRef::from),
        dtype: None,
        out_dtype: None,
        tokenizer_source: None,
        chat_template: None,
        name: None,
        tokenizer: None,
        parameters: Params::new(),
        models: Some(models),
        slices: None,
        modules: None,
        data: None,
    }
}

fn stage_label(exp: &Experiment, kind: StageKind) -> String {
    match (exp.genome.kind, kind) {
        (GenomeKind::PsDfs, StageKind::Dfs) => "PS+DFS best".into(),
        (_, k) => format!("{} best", k.as_str().to_uppercase()),
    }
}

/// Build the candidate a stage's snapshot describes.
fn snapshot_candidate(
    dir: &Path,
    exp: &Experiment,
    stage: usize,
    kind: StageKind,
    snap: &Snapshot,
    setup: &Setup,
) -> Result<Box<dyn Candidate>, RunError> {
    let label = stage_label(exp, kind);
    let device = &setup.device;
    match kind {
        StageKind::Ps => {
            let recipe = Recipe::from_toml(&snap.decoded)?;
            family_recipe_candidate(setup.family, &recipe, &label, setup, exp.merge_seed())
        }
        StageKind::Dfs => {
            let path: LayerPath = serde_json::from_str(&snap.decoded)?;
            Ok(Box::new(path_candidate(
                &dfs_model_dirs(exp, stage, ps_best_model(dir)),
                &path,
                &label,
                device,
                setup.eval_dtype,
            )?))
        }
    }
}

fn score_row(
    setup: &Setup,
    candidate: &dyn Candidate,
    name: String,
    kind: &str,
    seed: u64,
) -> Result<ResultRow, RunError> {
    let request = EvalRequest::new(Split::Test, 0, seed);
    let (fitness, metrics, note) = match setup.evaluators.evaluate(candidate, &request) {
        Ok(s) if s.is_failed() => (None, BTreeMap::new(), s.failure.unwrap_or_default()),
        Ok(s) => (Some(s.fitness), s.metrics, String::new()),
        Err(e @ evomerge_eval::EvalError::Interrupted(_)) => return Err(RunError::Eval(e)),
        Err(e) => (None, BTreeMap::new(), e.to_string()),
    };
    Ok(ResultRow {
        name,
        kind: kind.to_string(),
        split: Split::Test,
        fitness,
        metrics,
        note,
    })
}

/// Write the best files and, unless turned off, the test table.
pub(crate) fn finish(
    dir: &Path,
    exp: &Experiment,
    setup: &Setup,
    state: &RunState,
    verbose: bool,
) -> Result<(), RunError> {
    let mut summary = Vec::new();
    let result = state.result().map(|(i, _)| i);
    for (stage, st) in state.stages.iter().enumerate() {
        let Some(chosen) = st.chosen() else { continue };
        summary.push(json!({
            "stage": st.kind,
            "result": result == Some(stage),
            "generation": chosen.generation,
            "index": chosen.index,
            "search_fitness": chosen.search_fitness,
            "validation_fitness": chosen.validation_fitness,
            "x": chosen.x,
        }));
        if st.kind == StageKind::Ps {
            let text = format!(
                "# best recipe of {} (stage ps, generation {}, search fitness {}{})\n# re-run with: evomerge merge best.toml OUT_DIR --seed {}\n{}",
                dir.display(),
                chosen.generation,
                chosen.search_fitness,
                chosen
                    .validation_fitness
                    .map(|v| format!(", validation {v}"))
                    .unwrap_or_default(),
                exp.merge_seed(),
                chosen.decoded
            );
            write_atomic(&dir.join("best.toml"), text.as_bytes())?;
        } else {
            let path: serde_json::Value = serde_json::from_str(&chosen.decoded)?;
            let models: Vec<String> = dfs_model_dirs(exp, stage, ps_best_model(dir))
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let doc = json!({
                "models": models,
                "path": path,
                "search_fitness": chosen.search_fitness,
                "validation_fitness": chosen.validation_fitness,
            });
            write_atomic(
                &dir.join("best_path.json"),
                serde_json::to_string_pretty(&doc).expect("json").as_bytes(),
            )?;
        }
    }
    write_atomic(
        &dir.join("best.json"),
        serde_json::to_string_pretty(&summary)
            .expect("json")
            .as_bytes(),
    )?;

    if exp.report.test && !dir.join("results.csv").exists() {
        let rows = test_table(dir, exp, setup, state, verbose)?;
        write_results(dir, exp, &rows)?;
    }
    match crate::plot::plot_run(dir) {
        Ok(files) if !files.is_empty() && verbose => {
            eprintln!("plots: {}", dir.join("plots").display())
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: plotting failed: {e}"),
    }
    Ok(())
}

fn test_table(
    dir: &Path,
    exp: &Experiment,
    setup: &Setup,
    state: &RunState,
    verbose: bool,
) -> Result<Vec<ResultRow>, RunError> {
    let device = &setup.device;
    let mut rows = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    if exp.report.sources {
        sources.extend(exp.sources.base.iter().cloned());
        sources.extend(exp.sources.models.iter().cloned());
        if let Some(p) = &exp.genome.partner
            && !sources.contains(p)
        {
            sources.push(p.clone());
        }
    }
    let baselines = if exp.sources.base.is_some() {
        exp.report.baselines.as_slice()
    } else {
        &[]
    };
    let total = state.stages.iter().filter(|s| s.chosen().is_some()).count()
        + sources.len()
        + baselines.len();
    if verbose {
        eprintln!("scoring the test split: best, sources, baselines ...");
    }
    let bar = Progress::new("test table", "models", total as u64, verbose);
    // A later stage that scored no better than an earlier one's answer (a DFS stage that found
    // no better path than the PS result it searched over) is not the run's result: its row is
    // kind `stage`, and the run's row (the last `best`) repeats the result's scores.
    let result = state.result();
    let last = state.stages.iter().rposition(|s| s.chosen().is_some());
    let mut result_row = None;
    for (stage, st) in state.stages.iter().enumerate() {
        if let Some(chosen) = st.chosen() {
            let c = snapshot_candidate(dir, exp, stage, st.kind, chosen, setup)?;
            let superseded = Some(stage) == last && result.is_some_and(|(r, _)| r != stage);
            let (name, kind) = if superseded {
                let kind = st.kind.as_str().to_uppercase();
                (format!("{kind} stage best (not the result)"), "stage")
            } else {
                (stage_label(exp, st.kind), "best")
            };
            let mut row = score_row(setup, c.as_ref(), name, kind, exp.seed)?;
            if let Some(v) = chosen.validation_fitness {
                row.note = format!("validation {v:.4}; search {:.4}", chosen.search_fitness);
            } else {
                row.note = format!("search {:.4}", chosen.search_fitness);
            }
            if result.is_some_and(|(r, _)| r == stage) {
                result_row = Some(row.clone());
            }
            rows.push(row);
            bar.inc();
        }
    }
    if let (Some((r, result)), Some(last), Some(mut row)) = (result, last, result_row)
        && r != last
    {
        let (later, their) = (state.stages[last].kind, state.stages[last].chosen());
        let from = row.name.clone();
        row.name = stage_label(exp, later);
        row.note = match (
            their.and_then(|t| t.validation_fitness),
            result.validation_fitness,
        ) {
            (Some(t), Some(v)) => format!(
                "{from} (the {later} stage validated {t:.4}, not above {v:.4}); search {:.4}",
                result.search_fitness
            ),
            _ => format!(
                "{from} (the {later} stage searched {:.4}, not above {:.4})",
                their.map_or(f64::NAN, |t| t.search_fitness),
                result.search_fitness
            ),
        };
        rows.push(row);
    }
    for d in sources {
        let name = Path::new(&d)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or(d.clone());
        let c: Box<dyn Candidate> = match setup.family {
            Family::Decoder => Box::new(
                checkpoint_candidate(Path::new(&d), &name, device)?
                    .with_eval_dtype(setup.eval_dtype),
            ),
            Family::Mlp => Box::new(mlp_checkpoint_candidate(Path::new(&d), &name)?),
        };
        let kind = if exp.sources.base.as_deref() == Some(d.as_str()) {
            "base"
        } else {
            "source"
        };
        rows.push(score_row(setup, c.as_ref(), name, kind, exp.seed)?);
        bar.inc();
    }
    for b in baselines {
        let recipe = baseline_recipe(exp, &b.method, b.weight, b.density);
        let name = format!(
            "{} (untuned: weight {}{})",
            b.method,
            b.weight,
            b.density
                .map(|d| format!(", density {d}"))
                .unwrap_or_default()
        );
        match family_recipe_candidate(setup.family, &recipe, &name, setup, exp.merge_seed()) {
            Ok(c) => rows.push(score_row(setup, c.as_ref(), name, "baseline", exp.seed)?),
            Err(e) => rows.push(ResultRow {
                name,
                kind: "baseline".into(),
                split: Split::Test,
                fitness: None,
                metrics: BTreeMap::new(),
                note: e.to_string(),
            }),
        }
        bar.inc();
    }
    bar.finish();
    Ok(rows)
}

/// Text as one Markdown table cell: on one line (a multi-line stderr tail would end the row),
/// `|` escaped.
fn md_cell(text: &str) -> String {
    crate::one_line(text, 300).replace('|', "\\|")
}

fn write_results(dir: &Path, exp: &Experiment, rows: &[ResultRow]) -> Result<(), RunError> {
    let csv_text = ResultRow::to_csv(rows);
    write_atomic(&dir.join("results.csv"), &csv_text)?;
    let metric_names: Vec<String> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut md = format!(
        "# {} — test results\n\nRun `{}`, seed {}. Fitness and metrics on the test split.\n\n| model | kind | fitness |",
        exp.name,
        dir.display(),
        exp.seed
    );
    for m in &metric_names {
        md.push_str(&format!(" {m} |"));
    }
    md.push_str(" note |\n|---|---|---|");
    for _ in &metric_names {
        md.push_str("---|");
    }
    md.push_str("---|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} |",
            md_cell(&r.name),
            r.kind,
            r.fitness
                .map(|f| format!("{f:.4}"))
                .unwrap_or_else(|| "failed".into())
        ));
        for m in &metric_names {
            md.push_str(&format!(
                " {} |",
                r.metrics
                    .get(m)
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default()
            ));
        }
        md.push_str(&format!(" {} |\n", md_cell(&r.note)));
    }
    write_atomic(&dir.join("results.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}
