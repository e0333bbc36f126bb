//! What both merge paths (the per-tensor executor and the whole-model methods) share: the
//! options of a merge to disk, its report, the atomic writer for a plan's output tensors and
//! the last step (extra files, config, tokenizer, commit).

use crate::MergeError;
use crate::plan::{Plan, Sources};
use evomerge_checkpoint::{CheckpointWriter, OutputTensor, WriterOptions};
use evomerge_kernels::Device;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// Asked before each tensor: a signal number stops the merge (nothing is left at the
    /// output, the partial folder is removed) with [`crate::MergeError::Interrupted`].
    pub stop: Option<fn() -> Option<i32>>,
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
            stop: None,
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
            ..WriterOptions::default()
        },
    )?)
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
