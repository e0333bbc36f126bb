//! `evomerge bench merge`: merge throughput and peak memory over synthetic ~1 GB checkpoints
//! (f32 or bf16), for every per-tensor method of the registry, against a read-every-input-byte
//! / write-every-output-byte baseline measured in the same run.

use super::median;
use anyhow::{Context, Result, bail};
use evomerge_checkpoint::{Checkpoint, CheckpointWriter, Dtype, OutputTensor, WriterOptions};
use evomerge_kernels::{DeviceChoice, MaskRng};
use evomerge_merge::method::{Arity, BaseUse, MethodSpec, registry};
use evomerge_merge::{MergeOptions, ParamValue, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_zoo::TinyLlama;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What [`run`] measures.
#[derive(Debug, Clone)]
pub struct MergeBench {
    /// Folder for the synthetic checkpoints (reused when they already have the right size).
    pub dir: PathBuf,
    /// Approximate size of each checkpoint in GB (f32).
    pub gb: f64,
    /// Stored dtype of the checkpoints and of the merged output (compute is f32).
    pub dtype: Dtype,
    /// The checkpoints' shape instead of one sized by `gb`.
    pub shape: Option<TinyLlama>,
    /// Methods to time; empty: every per-tensor method of the registry.
    pub methods: Vec<String>,
    /// Tensors merged at once.
    pub jobs: usize,
    /// Where the merges run.
    pub device: DeviceChoice,
    /// Runs of each method (the median is reported).
    pub repeat: usize,
}

impl Default for MergeBench {
    fn default() -> Self {
        MergeBench {
            dir: PathBuf::from("results/bench-merge"),
            gb: 1.0,
            dtype: Dtype::F32,
            shape: None,
            methods: Vec::new(),
            jobs: 2,
            device: DeviceChoice::Cpu,
            repeat: 1,
        }
    }
}

/// A Llama-shaped spec of about `gb` GB in f32: hidden 1024, intermediate 4096, vocabulary
/// 32000, layers chosen for the size.
fn bench_spec(gb: f64) -> TinyLlama {
    let (h, i, v) = (1024usize, 4096usize, 32000usize);
    let per_layer = 4 * h * h + 3 * h * i + 2 * h;
    let fixed = 2 * v * h + h;
    let target = (gb * 1e9 / 4.0) as usize;
    let layers = (target.saturating_sub(fixed) / per_layer).max(1);
    TinyLlama {
        hidden: h,
        intermediate: i,
        layers,
        vocab: v,
        heads: 16,
        kv_heads: 16,
        max_positions: 2048,
        ..Default::default()
    }
}

/// Write one synthetic checkpoint tensor by tensor (never the whole model in memory): the base
/// draws U(-0.05, 0.05) per tensor; a fine-tune adds U(-0.005, 0.005).
fn write_synthetic(
    dir: &Path,
    spec: &TinyLlama,
    dtype: Dtype,
    finetune: Option<u64>,
) -> Result<()> {
    let shapes = spec.shapes();
    let plan = shapes
        .iter()
        .map(|(n, s)| OutputTensor::new(n.clone(), dtype, s.clone()))
        .collect();
    let writer = CheckpointWriter::create(
        dir,
        plan,
        WriterOptions {
            max_shard_bytes: 2_000_000_000,
            force: true,
            ..WriterOptions::default()
        },
    )?;
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = MaskRng::new(0, name, 0)
            .uniform(n)
            .into_iter()
            .map(|u| (u - 0.5) * 0.1)
            .collect();
        if let Some(seed) = finetune {
            for (x, u) in v.iter_mut().zip(MaskRng::new(seed, name, 1).uniform(n)) {
                *x += (u - 0.5) * 0.01;
            }
        }
        writer.write_f32(name, &v)?;
    }
    let mut config = spec.config();
    evomerge_checkpoint::set_torch_dtype(&mut config, dtype);
    writer.finish(Some(config), None)?;
    Ok(())
}

/// The base and two fine-tunes in `dir` (written unless they are there with this shape and
/// dtype).
pub fn ensure_models(dir: &Path, spec: &TinyLlama, dtype: Dtype) -> Result<Vec<PathBuf>> {
    let names = ["base", "ft1", "ft2"];
    let expected: u64 = spec
        .shapes()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64 * dtype.size() as u64)
        .sum();
    let mut paths = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = dir.join(name);
        let ok = Checkpoint::open(&p)
            .map(|c| {
                c.total_bytes() == expected
                    && c.info("model.embed_tokens.weight").map(|i| i.dtype) == Some(dtype)
            })
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "writing synthetic checkpoint {} ({:.2} GB)...",
                p.display(),
                expected as f64 / 1e9
            );
            write_synthetic(&p, spec, dtype, (i > 0).then_some(i as u64))?;
        }
        paths.push(p);
    }
    Ok(paths)
}

/// Peak resident set since the last reset, in bytes (Linux; 0 elsewhere).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The floor: read every input byte once (copy out of the memory map) and write every output
/// byte once, through the same writer, with the same parallelism.
fn copy_baseline(sources: &Sources, plan: &Plan, out: &Path, jobs: usize) -> Result<f64> {
    use rayon::prelude::*;
    let outputs = plan
        .tensors
        .iter()
        .map(|t| {
            let i = &t.inputs[0];
            let dtype = sources.models[i.model]
                .checkpoint
                .info(&i.tensor)
                .map(|x| x.dtype);
            OutputTensor::new(t.name.clone(), dtype.unwrap_or(t.dtype), t.shape.clone())
        })
        .collect();
    let writer = CheckpointWriter::create(
        out,
        outputs,
        WriterOptions {
            max_shard_bytes: 5_000_000_000,
            force: true,
            ..WriterOptions::default()
        },
    )?;
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
    pool.install(|| {
        plan.tensors.par_iter().try_for_each(|tp| -> Result<()> {
            let mut first: Option<Vec<u8>> = None;
            for i in &tp.inputs {
                let c = &sources.models[i.model].checkpoint;
                let bytes = c.bytes(&i.tensor)?.to_vec();
                c.release(&i.tensor);
                first.get_or_insert(bytes);
            }
            writer.write_bytes(&tp.name, first.as_deref().unwrap_or(&[]))?;
            Ok(())
        })
    })?;
    writer.finish(None, None)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Merge throughput and peak memory over three synthetic checkpoints of `args.gb` GB, against
/// a read-every-input-byte / write-every-output-byte baseline (the median of runs before, among
/// and after the merges); prints a markdown table.
pub fn run(args: &MergeBench) -> Result<()> {
    if args.gb <= 0.0 {
        bail!("--gb must be positive");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let spec = args.shape.clone().unwrap_or_else(|| bench_spec(args.gb));
    let paths = ensure_models(&args.dir, &spec, args.dtype)?;
    let device = args.device.device().map_err(anyhow::Error::msg)?;
    let out = args.dir.join("out");
    let methods: Vec<&'static MethodSpec> = if args.methods.is_empty() {
        registry().iter().filter(|m| !m.is_whole_model()).collect()
    } else {
        args.methods
            .iter()
            .map(|name| evomerge_merge::method::lookup(name).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    let out_dtype = args.dtype.torch_name();
    let recipe_for = |m: &MethodSpec| -> Result<Recipe> {
        Ok(Recipe::from_yaml(&bench_recipe(m, &paths, out_dtype))?)
    };
    let first =
        recipe_for(evomerge_merge::method::lookup("task_arithmetic").map_err(anyhow::Error::msg)?)?;
    let sources = Sources::open(&first, None)?;
    let plan = Plan::build(&first, &sources, &PlanOptions::default())?;
    let input_bytes: u64 = plan
        .tensors
        .iter()
        .flat_map(|t| &t.inputs)
        .map(|i| {
            sources.models[i.model]
                .checkpoint
                .info(&i.tensor)
                .map(|x| x.nbytes() as u64)
                .unwrap_or(0)
        })
        .sum();
    // Warm the page cache so every phase reads from memory.
    copy_baseline(&sources, &plan, &out, args.jobs).context("warm-up pass")?;
    // the floor: copy baselines before the methods, after every fifth and at the end (this
    // machine's read/write speed moves by tens of percent from minute to minute); the median
    let mut baselines = Vec::new();
    let mut baseline_rss = 0;
    let mut baseline = |baselines: &mut Vec<f64>| -> Result<()> {
        reset_peak_rss();
        baselines.push(copy_baseline(&sources, &plan, &out, args.jobs)?);
        baseline_rss = baseline_rss.max(peak_rss());
        Ok(())
    };
    baseline(&mut baselines)?;
    let mut rows = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        let method = &m.name.to_string();
        let recipe = recipe_for(m)?;
        let plan = Plan::build(&recipe, &sources, &PlanOptions::default())?;
        let options = MergeOptions {
            device: device.clone(),
            seed: 0,
            max_shard_bytes: 5_000_000_000,
            force: true,
            jobs: args.jobs,
            progress: false,
            stop: None,
        };
        let (mut runs, mut rss) = (Vec::new(), 0);
        for _ in 0..args.repeat {
            reset_peak_rss();
            runs.push(merge_to_disk(&plan, &sources, &out, &options, &[])?.seconds);
            rss = rss.max(peak_rss());
        }
        let n_inputs = plan
            .tensors
            .iter()
            .map(|t| t.inputs.len())
            .max()
            .unwrap_or(0);
        let fused = if m.host.is_some() && evomerge_merge::runs_fused(&device) {
            "fused"
        } else {
            "burn"
        };
        rows.push((method.clone(), n_inputs, fused, median(&mut runs), rss));
        if (i + 1) % 5 == 0 && i + 1 < methods.len() {
            baseline(&mut baselines)?;
        }
    }
    baseline(&mut baselines)?;
    let (lo, hi) = baselines
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), b| (l.min(*b), h.max(*b)));
    let floor = median(&mut baselines.clone());
    rows.insert(
        0,
        (
            format!(
                "copy baseline (median of {}: {lo:.2}-{hi:.2} s)",
                baselines.len()
            ),
            3,
            "-",
            floor,
            baseline_rss,
        ),
    );
    let largest = plan
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64 * args.dtype.size() as u64)
        .max()
        .unwrap_or(0);
    println!(
        "3 checkpoints x {:.2} GB ({}, {} layers, hidden {}, largest tensor {:.0} MB), {} input bytes of a 3-model merge, jobs {}, device {}; compute f32, output {}",
        input_bytes as f64 / 3.0 / 1e9,
        args.dtype,
        spec.layers,
        spec.hidden,
        largest as f64 / 1e6,
        input_bytes,
        args.jobs,
        args.device,
        args.dtype
    );
    println!("| phase | inputs | kernel | seconds | input GB/s | x floor | peak RSS (MB) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, n_inputs, fused, secs, rss) in &rows {
        // a method reading fewer models has a proportionally lower floor
        let read = input_bytes as f64 * *n_inputs as f64 / 3.0;
        let floor = floor * (1.0 + *n_inputs as f64) / 4.0;
        println!(
            "| {name} | {n_inputs} | {fused} | {secs:.2} | {:.2} | {:.2} | {:.0} |",
            read / secs / 1e9,
            secs / floor,
            *rss as f64 / 1e6
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// A recipe for `m` over the bench's checkpoints: the base (when the method uses one) and as
/// many fine-tunes as it takes (two, or one for the two-model methods), every parameter at its
/// registry example value (weights 0.6 / 0.4), computed in f32 and stored as `out_dtype`.
pub fn bench_recipe(m: &MethodSpec, paths: &[PathBuf], out_dtype: &str) -> String {
    let others = match m.arity {
        Arity::Exactly(n, _) => n.min(2),
        Arity::AtLeast(n, _) => n.clamp(2, 2),
        Arity::Any => 2,
    };
    let value = |v: ParamValue| match v {
        ParamValue::Text(t) => format!("\"{t}\""),
        other => other.to_string(),
    };
    let mut text = format!("merge_method: {}\n", m.name);
    if m.base != BaseUse::Ignored {
        text += &format!("base_model: {}\n", paths[0].display());
    }
    text += "models:\n";
    for (j, p) in paths[1..=others].iter().enumerate() {
        let params: Vec<String> = m
            .tensor_params
            .iter()
            .map(|s| {
                let v = match (s.name, s.example_value()) {
                    ("weight", _) => ParamValue::Number(if j == 0 { 0.6 } else { 0.4 }),
                    (_, v) => v,
                };
                format!("{}: {}", s.name, value(v))
            })
            .collect();
        text += &format!(
            "  - model: {}\n    parameters: {{{}}}\n",
            p.display(),
            params.join(", ")
        );
    }
    if m.base == BaseUse::Ignored && m.name != "passthrough" {
        // a method without a base still reads three models, like the others
        if others < 3 && paths.len() > others + 1 && matches!(m.arity, Arity::Any) {
            let extra: Vec<String> = m
                .tensor_params
                .iter()
                .map(|s| match s.name {
                    "weight" => "weight: 0.5".to_string(),
                    n => format!("{n}: {}", value(s.example_value())),
                })
                .collect();
            text += &format!(
                "  - model: {}\n    parameters: {{{}}}\n",
                paths[0].display(),
                extra.join(", ")
            );
        }
    }
    let globals: Vec<String> = m
        .global_params
        .iter()
        .filter(|s| s.default.is_none() || s.example.is_some())
        .map(|s| format!("{}: {}", s.name, value(s.example_value())))
        .collect();
    if !globals.is_empty() {
        text += &format!("parameters: {{{}}}\n", globals.join(", "));
    }
    text += &format!("dtype: float32\nout_dtype: {out_dtype}\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench runs end to end on a tiny shape with repeats (baselines among the methods),
    /// and refuses zero repeats.
    #[test]
    fn runs_on_a_tiny_shape_with_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let args = MergeBench {
            dir: dir.path().join("bench"),
            gb: 0.01,
            dtype: Dtype::BF16,
            shape: Some(TinyLlama {
                hidden: 64,
                intermediate: 128,
                layers: 1,
                vocab: 256,
                heads: 4,
                kv_heads: 2,
                max_positions: 64,
                ..Default::default()
            }),
            methods: ["linear", "ties", "della", "sce", "arcee_fusion", "slerp"]
                .map(String::from)
                .to_vec(),
            jobs: 2,
            device: DeviceChoice::Cpu,
            repeat: 2,
        };
        run(&args).unwrap();
        let err = run(&MergeBench { repeat: 0, ..args }).unwrap_err();
        assert!(err.to_string().contains("--repeat"), "{err}");
    }
}
