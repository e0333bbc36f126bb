//! `evomerge export RUN_DIR --out DIR`: the run's best as a checkpoint.

use crate::RunError;
use crate::experiment::Experiment;
use crate::setup::{dfs_model_dirs, ps_best_model};
use crate::state::RunState;
use evomerge_checkpoint::Checkpoint;
use evomerge_genome::{export_path, export_plain};
use evomerge_kernels::Device;
use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_models::LayerPath;
use std::path::{Path, PathBuf};

/// How a data-flow result is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// The path checkpoint (unique layers + `input_layers`/`input_scales`, `model_type`
    /// `evomerge_path` with its transformers modeling file: load it with
    /// `trust_remote_code=True`), always possible; a path without scales is written as the
    /// plain checkpoint, the same model in the form every tool loads.
    #[default]
    Path,
    /// An ordinary HF model with layers duplicated along the path (only when every scale is 1).
    Plain,
}

/// Write the run's result ([`RunState::result`]: the best-scoring stage's answer) to `out`: a
/// merged checkpoint for a parameter-space result, a path (or plain) checkpoint for a data-flow
/// result.
pub fn export_run(
    run_dir: &Path,
    out: &Path,
    format: ExportFormat,
    force: bool,
    device: &Device,
) -> Result<PathBuf, RunError> {
    let text = std::fs::read_to_string(run_dir.join("run.toml")).map_err(|e| {
        RunError::Config(format!(
            "{}: {e} (is it a run folder?)",
            run_dir.join("run.toml").display()
        ))
    })?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| RunError::Config(e.to_string()))?;
    let exp = Experiment::from_value(value).map_err(|e| RunError::Config(e.to_string()))?;
    let state = RunState::load(&run_dir.join("state.json"))?;
    // The run's result: the best-scoring stage's answer (in a ps+dfs run the PS result when
    // the DFS stage found no better path).
    let (stage, chosen) = state.result().ok_or_else(|| {
        RunError::Config(format!("{} has no valid candidate yet", run_dir.display()))
    })?;
    let st = &state.stages[stage];
    if st.kind == crate::stage::StageKind::Ps {
        let recipe = Recipe::from_toml(&chosen.decoded)?;
        let sources = Sources::open(&recipe, None)?;
        let plan = Plan::build(&recipe, &sources, &PlanOptions::default())?;
        let opts = MergeOptions {
            device: device.clone(),
            seed: exp.merge_seed(),
            force,
            progress: true,
            stop: Some(evomerge_eval::interrupt::requested),
            ..Default::default()
        };
        let card = format!(
            "# evomerge result\n\nBest recipe of run `{}` (search fitness {}{}).\n\n```toml\n{}```\n",
            run_dir.display(),
            chosen.search_fitness,
            chosen
                .validation_fitness
                .map(|v| format!(", validation {v}"))
                .unwrap_or_default(),
            chosen.decoded
        );
        let report = merge_to_disk(
            &plan,
            &sources,
            out,
            &opts,
            &[
                ("evomerge_recipe.toml", chosen.decoded.clone().into_bytes()),
                ("README.md", card.into_bytes()),
            ],
        )?;
        return Ok(report.out_dir);
    }
    let path: LayerPath = serde_json::from_str(&chosen.decoded)?;
    let dirs = dfs_model_dirs(&exp, stage, ps_best_model(run_dir));
    let ckpts: Vec<Checkpoint> = dirs
        .iter()
        .map(Checkpoint::open)
        .collect::<Result<_, _>>()?;
    let refs: Vec<&Checkpoint> = ckpts.iter().collect();
    Ok(match format {
        ExportFormat::Path => export_path(&path, &refs, out, force)?,
        ExportFormat::Plain => export_plain(&path, &refs, out, force)?,
    })
}
