//! What a run builds before its first candidate: the device, the evaluators, the
//! parameter-space genome, what the sources are ([`Setup`]), and each stage's search space
//! ([`build_space`]). Everything is checked here, before the run folder is created.

use crate::RunError;
use crate::evaluators::Evaluators;
use crate::experiment::{Experiment, GenomeKind};
use crate::space::{DfsSpace, Family, PsSpace, Space};
use crate::stage::StageKind;
use crate::state::RunState;
use evomerge_checkpoint::Dtype;
use evomerge_genome::{PsGenome, PsSpec};
use evomerge_kernels::{Device, FloatDType};
use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_models::{Llama, Tokenizer};
use evomerge_search::Bounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What every stage shares: the device, the evaluators, the parameter-space genome, and what
/// the source models are.
pub(crate) struct Setup {
    pub device: Device,
    /// The precision in-process evaluators compute in (`None`: f32), `eval_dtype` resolved
    /// for the device and the sources' storage dtype.
    pub eval_dtype: Option<FloatDType>,
    pub evaluators: Evaluators,
    pub ps_genome: Option<PsGenome>,
    pub family: Family,
}

impl Setup {
    pub(crate) fn new(exp: &Experiment, run_dir: &Path) -> Result<Setup, RunError> {
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
        let eval_dtype = exp
            .eval_dtype
            .resolve(storage_dtype(dirs[0])?, &device)
            .map_err(RunError::Config)?;
        family.check(&exp.evaluators, exp.genome.kind, &exp.sources.models[0])?;
        // Validation and the test table (between generations) hold the first slot's devices.
        let first_slot = exp
            .execution
            .devices()
            .map_err(|e| RunError::Config(e.to_string()))?
            .into_iter()
            .take(exp.execution.devices_per_candidate)
            .map(|d| evomerge_eval::HeldDevice {
                name: d.name,
                index: d.index,
            })
            .collect();
        let evaluators =
            Evaluators::build_for(&exp.evaluators, Some(run_dir))?.with_default_devices(first_slot);
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
            eval_dtype,
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
        let layers_of = |m: &Path| -> Result<usize, RunError> {
            evomerge_checkpoint::Checkpoint::open(m)?
                .num_layers()
                .ok_or_else(|| {
                    RunError::Config(format!("{}: cannot tell its layer count", m.display()))
                })
        };
        for (stage, kind) in StageKind::of(exp.genome.kind).into_iter().enumerate() {
            let (lo, hi, x0, sigma0) = match kind {
                StageKind::Ps => {
                    let g = self.ps_genome.as_ref().expect("ps stages have a genome");
                    let (lo, hi) = g.bounds();
                    (lo, hi, g.initial(), g.sigma0())
                }
                StageKind::Dfs => {
                    // Model A of a second stage is the PS result: the first source's layout.
                    let a = PathBuf::from(&exp.sources.models[0]);
                    let layers = dfs_model_dirs(exp, stage, a)
                        .iter()
                        .map(|m| layers_of(m))
                        .collect::<Result<Vec<_>, _>>()?;
                    let g = evomerge_genome::DfsGenome::new(
                        exp.genome.dfs.clone().unwrap_or_default(),
                        layers,
                    )?;
                    let (lo, hi) = g.bounds();
                    (lo, hi, g.initial(), g.sigma0())
                }
            };
            let (table, config) = exp.optimizer_for(stage);
            config
                .build(Bounds::new(lo, hi)?, &x0, sigma0, exp.seed)
                .map_err(|e| RunError::Config(format!("{table}: {e}")))?;
        }
        Ok(())
    }
}

/// The models of a DFS stage, A first: the DFS models (default: the sources), or in the second
/// stage of a `ps+dfs` run `a` (the PS result) and the partner (default: the first source).
pub(crate) fn dfs_model_dirs(exp: &Experiment, stage: usize, a: PathBuf) -> Vec<PathBuf> {
    if stage > 0 {
        let partner = exp
            .genome
            .partner
            .clone()
            .unwrap_or_else(|| exp.sources.models[0].clone());
        vec![a, PathBuf::from(partner)]
    } else {
        exp.genome
            .dfs_models
            .clone()
            .unwrap_or_else(|| exp.sources.models.clone())
            .into_iter()
            .map(PathBuf::from)
            .collect()
    }
}

/// Where a `ps+dfs` run writes the PS stage's result, model A of its DFS stage.
pub(crate) fn ps_best_model(run_dir: &Path) -> PathBuf {
    run_dir.join("ps_best_model")
}

/// The search space of stage `stage` of the run in `dir`.
pub(crate) fn build_space(
    dir: &Path,
    exp: &Experiment,
    setup: &Setup,
    state: &RunState,
    stage: usize,
    kind: StageKind,
) -> Result<Space, RunError> {
    if kind == StageKind::Ps {
        let genome = setup.ps_genome.clone().expect("ps stages have a genome");
        return Ok(Space::Ps(Box::new(
            PsSpace::new(
                genome,
                exp.sources.base.as_deref(),
                setup.family,
                &setup.device,
                exp.merge_seed(),
            )?
            .with_eval_dtype(setup.eval_dtype),
        )));
    }
    // DFS: model A is the first DFS model, or in a ps+dfs run the PS stage's result.
    let a_dir = ps_best_model(dir);
    let chosen = if stage > 0 {
        Some(state.stages[0].chosen().ok_or_else(|| {
            RunError::Config(
                "the PS stage produced no valid candidate; nothing to build the DFS stage on"
                    .into(),
            )
        })?)
    } else {
        None
    };
    if let Some(chosen) = chosen
        && !a_dir.join("config.json").exists()
    {
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
    let dirs = dfs_model_dirs(exp, stage, a_dir);
    let models = dirs
        .iter()
        .map(|d| load_model(d, &setup.device, setup.eval_dtype))
        .collect::<Result<Vec<_>, _>>()?;
    let tok_dir = dirs
        .iter()
        .find(|d| d.join("tokenizer.json").exists())
        .ok_or_else(|| RunError::Config("no DFS model has a tokenizer.json".into()))?;
    let tokenizer = Arc::new(Tokenizer::from_dir(tok_dir)?);
    let spec = exp.genome.dfs.clone().unwrap_or_default();
    Ok(Space::Dfs(Box::new(
        DfsSpace::new(spec, models, dirs, tokenizer)?.with_eval_dtype(setup.eval_dtype),
    )))
}

/// A model folder loaded on `device`, computing in `eval_dtype` (`None`: f32).
pub(crate) fn load_model(
    dir: &Path,
    device: &Device,
    eval_dtype: Option<FloatDType>,
) -> Result<Arc<Llama>, evomerge_models::ModelError> {
    Ok(Arc::new(Llama::from_dir_as(dir, device, eval_dtype)?))
}

/// The storage dtype of a model folder's float tensors (the one most of its parameters have).
fn storage_dtype(dir: &str) -> Result<FloatDType, RunError> {
    let ckpt = evomerge_checkpoint::Checkpoint::open(dir)?;
    let mut by: Vec<(Dtype, usize)> = Vec::new();
    for name in ckpt.names() {
        let Some(info) = ckpt.info(name) else {
            continue;
        };
        if !info.dtype.is_float() {
            continue;
        }
        match by.iter_mut().find(|(d, _)| *d == info.dtype) {
            Some((_, n)) => *n += info.numel(),
            None => by.push((info.dtype, info.numel())),
        }
    }
    Ok(match by.iter().max_by_key(|(_, n)| *n).map(|(d, _)| *d) {
        Some(Dtype::F16) => FloatDType::F16,
        Some(Dtype::BF16) => FloatDType::BF16,
        Some(Dtype::F64) => FloatDType::F64,
        _ => FloatDType::F32,
    })
}
