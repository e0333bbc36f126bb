//! Plan -> tensors: run each output tensor's method on the device, tensor by tensor, and stream
//! the results into a checkpoint writer (or hand them back in memory).

use crate::MergeError;
use crate::method::{Kernel, consensus_mode, rescale_mode};
use crate::plan::{Action, Plan, Sources, TensorPlan};
use evomerge_checkpoint::{CheckpointWriter, OutputTensor, WriterOptions};
use evomerge_kernels::{
    Device, MaskRng, T2, TaskVector, generalized_task_arithmetic, karcher, linear, model_stock,
    multislerp, nuslerp, passthrough, slerp, sparsify, tensor_from_vec, values_of,
};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the input tensors of a merge come from: checkpoints on disk ([`Sources`]) or tensors
/// already resident on the device (the search keeps its sources there).
pub trait TensorSource: Sync {
    /// Input tensor `name` of model `model` (an index into the plan's sources) as a 2-D view
    /// on `device`.
    fn tensor(&self, model: usize, name: &str, device: &Device) -> Result<T2, MergeError>;
}

impl TensorSource for Sources {
    fn tensor(&self, model: usize, name: &str, device: &Device) -> Result<T2, MergeError> {
        let c = &self.models[model].checkpoint;
        let info = c.info(name).ok_or_else(|| MergeError::Model {
            model: self.models[model].name.clone(),
            message: format!("has no tensor '{name}'"),
        })?;
        let values = c.read_f32(name)?;
        c.release(name);
        Ok(tensor_from_vec(values, &info.shape, device))
    }
}

fn weight(tp: &TensorPlan, j: usize) -> f32 {
    tp.input_f32(j, "weight").unwrap_or(1.0)
}

/// Merge one output tensor. Random masks come from `MaskRng::new(seed, output name, input
/// position)`, so the result depends only on the recipe and the seed.
pub fn merge_tensor(
    plan: &Plan,
    tp: &TensorPlan,
    source: &dyn TensorSource,
    device: &Device,
    seed: u64,
) -> Result<T2, MergeError> {
    let kernel_err = |e: evomerge_kernels::KernelError| MergeError::Kernel {
        tensor: tp.name.clone(),
        message: e.to_string(),
    };
    let inputs: Vec<T2> = tp
        .inputs
        .iter()
        .map(|i| source.tensor(i.model, &i.tensor, device))
        .collect::<Result<_, _>>()?;
    if inputs.len() == 1 && !matches!(plan.method.kernel, Kernel::Passthrough) {
        return Ok(inputs.into_iter().next().expect("one input"));
    }
    let others: Vec<usize> = (0..inputs.len()).filter(|j| Some(*j) != tp.base).collect();
    let base = tp.base.map(|b| inputs[b].clone());
    Ok(match plan.method.kernel {
        Kernel::Linear => {
            let w: Vec<f32> = (0..inputs.len()).map(|j| weight(tp, j)).collect();
            linear(&inputs, &w, tp.global_flag("normalize")).map_err(kernel_err)?
        }
        Kernel::Slerp => {
            let b = base.expect("slerp plans have a base");
            let other = inputs[others[0]].clone();
            slerp(tp.global_f32("t"), b, other)
        }
        Kernel::NuSlerp => {
            let (w1, w2) = (weight(tp, others[0]), weight(tp, others[1]));
            let t = if (w1 + w2).abs() < 1e-6 {
                0.5
            } else {
                w2 / (w1 + w2)
            };
            let (a, b) = (inputs[others[0]].clone(), inputs[others[1]].clone());
            let row_wise = tp.global_flag("nuslerp_row_wise");
            let flatten = tp.global_flag("nuslerp_flatten");
            match base {
                Some(bs) => {
                    bs.clone()
                        .add(nuslerp(t, a.sub(bs.clone()), b.sub(bs), row_wise, flatten))
                }
                None => nuslerp(t, a, b, row_wise, flatten),
            }
        }
        Kernel::MultiSlerp => {
            let xs: Vec<T2> = others.iter().map(|j| inputs[*j].clone()).collect();
            let w: Vec<f32> = others.iter().map(|j| weight(tp, *j)).collect();
            multislerp(
                &xs,
                &w,
                base.as_ref(),
                tp.global_flag("normalize_weights"),
                tp.global_f32("eps"),
            )
            .map_err(kernel_err)?
        }
        Kernel::Karcher => karcher(
            &inputs,
            tp.global_f32("max_iter").max(0.0) as usize,
            tp.global_f32("tol"),
        )
        .map_err(kernel_err)?,
        Kernel::TaskArithmetic {
            sparsify: method,
            consensus,
        } => {
            let b = base.expect("task arithmetic plans have a base");
            let rescale = tp
                .global
                .get("rescale")
                .map(rescale_mode)
                .transpose()
                .map_err(MergeError::Recipe)?
                .unwrap_or(evomerge_kernels::Rescale::None);
            let consensus = match tp.global.get("consensus") {
                Some(v) => consensus_mode(v).map_err(MergeError::Recipe)?,
                None => consensus,
            };
            let mut tvs = Vec::with_capacity(others.len());
            for &j in &others {
                let delta = inputs[j].clone().sub(b.clone());
                let density = tp.input_f64(j, "density").unwrap_or(1.0);
                let gamma = tp.input_f64(j, "gamma").unwrap_or(0.0);
                let epsilon = tp.input_f64(j, "epsilon").unwrap_or(0.0);
                let mut rng = MaskRng::new(seed, &tp.name, j);
                let delta = sparsify(delta, method, density, gamma, epsilon, rescale, &mut rng)
                    .map_err(kernel_err)?;
                tvs.push(TaskVector {
                    delta,
                    weight: weight(tp, j),
                });
            }
            generalized_task_arithmetic(
                b,
                tvs,
                consensus,
                tp.global_flag("normalize"),
                tp.global
                    .get("lambda")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(1.0) as f32,
            )
            .map_err(kernel_err)?
        }
        Kernel::ModelStock => {
            let b = base.expect("model_stock plans have a base");
            let xs: Vec<T2> = others.iter().map(|j| inputs[*j].clone()).collect();
            model_stock(b, &xs, tp.global_flag("filter_wise")).map_err(kernel_err)?
        }
        Kernel::Passthrough => passthrough(inputs[0].clone(), tp.input_f32(0, "scale")),
        Kernel::Data => {
            return Err(MergeError::Recipe(format!(
                "{} is a whole-model method (it runs the models on data), not a per-tensor one; run it with merge_to_disk (`evomerge merge`)",
                plan.method.name
            )));
        }
    })
}

/// Merge every tensor of a plan in memory, returning `(output name, tensor)` pairs in plan
/// order. Non-float tensors (copies) are skipped; the caller keeps its own.
pub fn merge_in_memory(
    plan: &Plan,
    source: &dyn TensorSource,
    device: &Device,
    seed: u64,
) -> Result<Vec<(String, T2)>, MergeError> {
    plan.tensors
        .iter()
        .filter(|tp| tp.action == Action::Merge)
        .map(|tp| merge_tensor(plan, tp, source, device, seed).map(|t| (tp.name.clone(), t)))
        .collect()
}

/// How to run a merge to disk.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub device: Device,
    /// Seed of every random mask.
    pub seed: u64,
    /// Largest output shard in bytes.
    pub max_shard_bytes: u64,
    /// Replace an existing output folder.
    pub force: bool,
    /// Tensors merged at the same time (memory grows with it).
    pub jobs: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            device: Device::flex(),
            seed: 0,
            max_shard_bytes: 5_000_000_000,
            force: false,
            jobs: 1,
            progress: false,
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub out_dir: PathBuf,
    pub tensors: usize,
    pub shards: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// Run a plan and write the merged checkpoint to `out_dir` (atomically: nothing is left at
/// `out_dir` if anything fails). `extra_files` (a model card, the recipe) go next to the weights.
/// The atomic checkpoint writer for every output tensor of `plan`.
pub(crate) fn create_writer(
    plan: &Plan,
    out_dir: &Path,
    options: &MergeOptions,
) -> Result<CheckpointWriter, MergeError> {
    let outputs: Vec<OutputTensor> = plan
        .tensors
        .iter()
        .map(|tp| OutputTensor::new(tp.name.clone(), tp.dtype, tp.shape.clone()))
        .collect();
    Ok(CheckpointWriter::create(
        out_dir,
        outputs,
        WriterOptions {
            max_shard_bytes: options.max_shard_bytes,
            force: options.force,
        },
    )?)
}

pub fn merge_to_disk(
    plan: &Plan,
    sources: &Sources,
    out_dir: &Path,
    options: &MergeOptions,
    extra_files: &[(&str, Vec<u8>)],
) -> Result<MergeReport, MergeError> {
    if plan.method.kernel == Kernel::Data {
        return crate::data::merge_to_disk(plan, sources, out_dir, options, extra_files);
    }
    let start = Instant::now();
    let writer = create_writer(plan, out_dir, options)?;
    let bar = if options.progress {
        let bar = ProgressBar::new(plan.tensors.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} merging [{bar:40}] {pos}/{len} tensors {elapsed} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs.max(1))
        .build()
        .map_err(|e| MergeError::Recipe(format!("cannot start worker threads: {e}")))?;
    let run_one = |tp: &TensorPlan| -> Result<(), MergeError> {
        match tp.action {
            Action::Copy => {
                let i = &tp.inputs[0];
                let c = &sources.models[i.model].checkpoint;
                writer.write_bytes(&tp.name, c.bytes(&i.tensor)?)?;
                c.release(&i.tensor);
            }
            Action::Merge => {
                let merged = merge_tensor(plan, tp, sources, &options.device, options.seed)?;
                let values = values_of(merged);
                if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                    return Err(MergeError::Kernel {
                        tensor: tp.name.clone(),
                        message: format!(
                            "the merged values contain {bad}; check the weights (a zero weight sum with normalize?) and the inputs"
                        ),
                    });
                }
                writer.write_f32(&tp.name, &values)?;
            }
        }
        bar.inc(1);
        Ok(())
    };
    pool.install(|| plan.tensors.par_iter().try_for_each(run_one))?;
    bar.finish_and_clear();
    finish(plan, sources, writer, extra_files, start)
}

/// Write the extra files, the config and the tokenizer files, commit the output folder, and
/// report what was read and written (shared by the kernel and the data-method paths).
pub(crate) fn finish(
    plan: &Plan,
    sources: &Sources,
    writer: CheckpointWriter,
    extra_files: &[(&str, Vec<u8>)],
    start: Instant,
) -> Result<MergeReport, MergeError> {
    for (name, contents) in extra_files {
        writer.write_file(name, contents)?;
    }
    let shards = writer.num_shards();
    let tokenizer_dir = plan.tokenizer_from.map(|m| sources.models[m].path.clone());
    let out_dir = writer.finish(plan.config.clone(), tokenizer_dir.as_deref())?;
    let bytes_read = plan
        .tensors
        .iter()
        .flat_map(|tp| tp.inputs.iter())
        .filter_map(|i| sources.models[i.model].checkpoint.info(&i.tensor))
        .map(|info| info.nbytes() as u64)
        .sum();
    let bytes_written = plan
        .tensors
        .iter()
        .map(|tp| tp.shape.iter().product::<usize>() as u64 * tp.dtype.size() as u64)
        .sum();
    Ok(MergeReport {
        out_dir,
        tensors: plan.tensors.len(),
        shards,
        bytes_read,
        bytes_written,
        seconds: start.elapsed().as_secs_f64(),
    })
}
