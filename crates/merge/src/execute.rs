//! Plan -> tensors: run each output tensor's method on the device, tensor by tensor, and stream
//! the results into a checkpoint writer (or hand them back in memory).

use crate::MergeError;
use crate::method::{HostWork, TensorWork};
use crate::output::{MergeOptions, MergeReport, create_writer, finish};
use crate::plan::{Action, Plan, Sources, TensorPlan};
use evomerge_checkpoint::Dtype;
use evomerge_kernels::fused::{HostDtype, HostOut, HostTensor};
use evomerge_kernels::{BufferPool, Device, FloatDType, PoolBuf, T2, tensor_from_vec, values_of};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;

/// Where the input tensors of a merge come from: checkpoints on disk ([`Sources`]) or tensors
/// already resident on the device (the search keeps its sources there).
pub trait TensorSource: Sync {
    /// Input tensor `name` of model `model` (an index into the plan's sources) as a 2-D view
    /// on `device`.
    fn tensor(&self, model: usize, name: &str, device: &Device) -> Result<T2, MergeError>;

    /// The same tensor on the host without a copy, if this source holds it there (a memory
    /// map): what the fused CPU kernels read. `None` makes them read [`TensorSource::tensor`].
    fn host(&self, _model: usize, _name: &str) -> Option<HostTensor<'_>> {
        None
    }

    /// Done with a tensor read through [`TensorSource::host`] (a memory map drops its pages).
    fn release(&self, _model: usize, _name: &str) {}
}

/// The fused kernels' view of a stored dtype (they read and write f32, bf16 and f16).
pub(crate) fn host_dtype(d: Dtype) -> Option<HostDtype> {
    match d {
        Dtype::F32 => Some(HostDtype::F32),
        Dtype::BF16 => Some(HostDtype::BF16),
        Dtype::F16 => Some(HostDtype::F16),
        _ => None,
    }
}

/// Whether merges on `device` run the fused CPU kernels (burn's flex backend is the CPU).
pub fn runs_fused(device: &Device) -> bool {
    *device == Device::flex()
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

    fn host(&self, model: usize, name: &str) -> Option<HostTensor<'_>> {
        let c = &self.models.get(model)?.checkpoint;
        let dtype = host_dtype(c.info(name)?.dtype)?;
        Some(HostTensor::Stored(c.bytes(name).ok()?, dtype))
    }

    fn release(&self, model: usize, name: &str) {
        if let Some(m) = self.models.get(model) {
            m.checkpoint.release(name);
        }
    }
}

/// Whether `tp` runs a fused CPU kernel on `device` (the method has one, and more than one
/// input unless the method runs on a lone input).
fn fused_applies(plan: &Plan, tp: &TensorPlan, device: &Device) -> bool {
    plan.method.host.is_some()
        && runs_fused(device)
        && (tp.inputs.len() > 1 || plan.method.runs_on_one_input)
}

/// Merge one output tensor with the method's fused CPU kernel into `out`. Inputs the source
/// holds on the host are read in place (and released afterwards); others are downloaded.
pub fn merge_tensor_host(
    plan: &Plan,
    tp: &TensorPlan,
    source: &dyn TensorSource,
    out: HostOut,
    seed: u64,
) -> Result<(), MergeError> {
    let host = plan.method.host.ok_or_else(|| {
        MergeError::Recipe(format!("{} has no fused CPU kernel", plan.method.name))
    })?;
    let flex = Device::flex();
    let mut downloaded: Vec<Option<Vec<f32>>> = Vec::with_capacity(tp.inputs.len());
    for i in &tp.inputs {
        downloaded.push(match source.host(i.model, &i.tensor) {
            Some(_) => None,
            None => Some(values_of(source.tensor(i.model, &i.tensor, &flex)?)),
        });
    }
    let inputs: Vec<HostTensor> = tp
        .inputs
        .iter()
        .zip(&downloaded)
        .map(|(i, d)| match d {
            Some(v) => HostTensor::F32(v),
            None => source.host(i.model, &i.tensor).expect("checked above"),
        })
        .collect();
    let r = host(
        &HostWork {
            tensor: &tp.name,
            params: tp.resolved(),
            inputs,
            seed,
            cols: evomerge_kernels::view_shape(&tp.shape)[1],
        },
        out,
    );
    for i in &tp.inputs {
        source.release(i.model, &i.tensor);
    }
    r
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

/// A merged tensor with NaN or infinite values (`bad`, one of them; NaN when unknown).
fn non_finite(tp: &TensorPlan, bad: f32) -> MergeError {
    MergeError::Kernel {
        tensor: tp.name.clone(),
        message: format!(
            "the merged values contain {bad} (NaN or infinite); check the weights (a zero weight sum with normalize?) and the inputs"
        ),
    }
}

/// Merge every tensor of a plan in memory, returning `(output name, tensor)` pairs in plan
/// order. Non-float tensors (copies) are skipped; the caller keeps its own. A merged tensor
/// with NaN or infinite values is an error naming it, as in [`merge_to_disk`].
pub fn merge_in_memory(
    plan: &Plan,
    source: &dyn TensorSource,
    device: &Device,
    seed: u64,
) -> Result<Vec<(String, T2)>, MergeError> {
    merge_in_memory_as(plan, source, device, seed, None)
}

/// [`merge_in_memory`] into `dtype` (`None`: f32): each tensor is merged in f32 and cast as
/// soon as it is done, so the merged candidate is held in the evaluation precision and only
/// the tensors in flight (one per worker) exist in f32 — at 7B parameters an f16 candidate
/// is 14.5 GB where an f32 one is 29 GB. The values are those of casting the f32 result.
pub fn merge_in_memory_as(
    plan: &Plan,
    source: &dyn TensorSource,
    device: &Device,
    seed: u64,
    dtype: Option<FloatDType>,
) -> Result<Vec<(String, T2)>, MergeError> {
    merge_in_memory_pooled(plan, source, device, seed, dtype, &BufferPool::new())
}

/// [`merge_in_memory_as`] into buffers lent by `pool` (those of a candidate dropped before,
/// where the sizes match; see [`BufferPool`]): a search merging candidate after candidate
/// writes into memory that is already mapped instead of faulting in a fresh candidate each
/// time. The merged tensors give their buffers back to the pool when dropped.
pub fn merge_in_memory_pooled(
    plan: &Plan,
    source: &dyn TensorSource,
    device: &Device,
    seed: u64,
    dtype: Option<FloatDType>,
    pool: &BufferPool,
) -> Result<Vec<(String, T2)>, MergeError> {
    let cast = |t: T2| match dtype {
        Some(d) if d != FloatDType::F32 => t.cast(d),
        _ => t,
    };
    // Fused CPU merges run several tensors at once (a tensor's own chunks do not keep every
    // core busy: small tensors, the sign-election pass); each output buffer is part of the
    // candidate anyway, so this holds no more memory than the candidate plus the inputs'
    // pages of the tensors in flight. Burn merges (the GPU) go one tensor at a time.
    let merged: Vec<&TensorPlan> = plan
        .tensors
        .iter()
        .filter(|tp| tp.action == Action::Merge)
        .collect();
    // the pool keeps up to one candidate of this size
    let entry_bytes = match dtype {
        Some(FloatDType::BF16 | FloatDType::F16) => 2,
        _ => 4,
    };
    pool.expect(
        merged
            .iter()
            .map(|tp| tp.shape.iter().product::<usize>() * entry_bytes)
            .sum(),
    );
    let fused: Vec<Option<T2>> = merged
        .par_iter()
        .with_max_len(1)
        .map(|tp| -> Result<Option<T2>, MergeError> {
            if !fused_applies(plan, tp, device) {
                return Ok(None);
            }
            let n: usize = tp.shape.iter().product();
            // a half-precision candidate is encoded by the kernel chunk by chunk (the same
            // round-to-nearest-even as a cast), so no f32 copy of the tensor exists
            let half = match dtype {
                Some(d @ FloatDType::BF16) => Some((HostDtype::BF16, d)),
                Some(d @ FloatDType::F16) => Some((HostDtype::F16, d)),
                _ => None,
            };
            // a lent buffer's earlier values are all overwritten: the kernels write every entry
            if let Some((host, d)) = half {
                let mut bits = pool.take_half(n);
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut bits);
                merge_tensor_host(plan, tp, source, HostOut::Stored(bytes, host), seed)?;
                return Ok(Some(pool.tensor(PoolBuf::Half(bits), d, &tp.shape, device)));
            }
            let mut values = pool.take_f32(n);
            // the kernel checks each chunk's values as it writes them (an error naming the
            // tensor): no second pass over the candidate
            merge_tensor_host(plan, tp, source, HostOut::F32(&mut values), seed)?;
            Ok(Some(cast(pool.tensor(
                PoolBuf::F32(values),
                FloatDType::F32,
                &tp.shape,
                device,
            ))))
        })
        .collect::<Result<_, _>>()?;
    merged
        .into_iter()
        .zip(fused)
        .map(|(tp, t)| {
            let t = match t {
                Some(t) => t,
                None => {
                    let t = merge_tensor(plan, tp, source, device, seed)?;
                    let finite: bool = t.clone().is_finite().all().into_scalar();
                    if !finite {
                        return Err(non_finite(tp, f32::NAN));
                    }
                    cast(t)
                }
            };
            Ok((tp.name.clone(), t))
        })
        .collect()
}

/// Run a plan and write the merged checkpoint to `out_dir` (atomically: nothing is left at
/// `out_dir` if anything fails). `extra_files` (a model card, the recipe) go next to the weights.
pub fn merge_to_disk(
    plan: &Plan,
    sources: &Sources,
    out_dir: &Path,
    options: &MergeOptions,
    extra_files: &[(&str, Vec<u8>)],
) -> Result<MergeReport, MergeError> {
    if plan.method.is_whole_model() {
        return crate::whole_model::merge_to_disk(plan, sources, out_dir, options, extra_files);
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
        if let Some(signal) = options.stop.and_then(|stop| stop()) {
            return Err(MergeError::Interrupted(signal));
        }
        match tp.action {
            Action::Copy => {
                let i = &tp.inputs[0];
                let c = &sources.models[i.model].checkpoint;
                writer.write_bytes(&tp.name, c.bytes(&i.tensor)?)?;
                c.release(&i.tensor);
            }
            Action::Merge
                if fused_applies(plan, tp, &options.device) && host_dtype(tp.dtype).is_some() =>
            {
                let dtype = host_dtype(tp.dtype).expect("checked");
                let numel: usize = tp.shape.iter().product();
                let mut bytes = vec![0u8; numel * dtype.size()];
                merge_tensor_host(
                    plan,
                    tp,
                    sources,
                    HostOut::Stored(&mut bytes, dtype),
                    options.seed,
                )?;
                writer.write_bytes(&tp.name, &bytes)?;
            }
            Action::Merge => {
                let merged = merge_tensor(plan, tp, sources, &options.device, options.seed)?;
                let values = values_of(merged);
                if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                    return Err(non_finite(tp, *bad));
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
