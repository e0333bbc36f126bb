//! Plan -> tensors: run each output tensor's method on the device, tensor by tensor, and stream
//! the results into a checkpoint writer (or hand them back in memory).

use crate::MergeError;
use crate::method::TensorWork;
use crate::plan::{Action, Plan, Sources, TensorPlan};
use evomerge_checkpoint::{CheckpointWriter, OutputTensor, WriterOptions};
use evomerge_kernels::{Device, T2, tensor_from_vec, values_of};
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

/// Merge one output tensor: the method's own work over the inputs. Random masks come from
/// `MaskRng::new(seed, output name, input position)`, so the result depends only on the recipe
/// and the seed.
pub fn merge_tensor(
    plan: &Plan,
    tp: &TensorPlan,
    source: &dyn TensorSource,
    device: &Device,
    seed: u64,
) -> Result<T2, MergeError> {
    let inputs: Vec<T2> = tp
        .inputs
        .iter()
        .map(|i| source.tensor(i.model, &i.tensor, device))
        .collect::<Result<_, _>>()?;
    if inputs.len() == 1 && !plan.method.runs_on_one_input {
        return Ok(inputs.into_iter().next().expect("one input"));
    }
    plan.method.run(&TensorWork {
        tensor: &tp.name,
        params: tp.resolved(),
        inputs,
        seed,
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
    if plan.method.is_whole_model() {
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
