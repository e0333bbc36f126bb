//! `evomerge bench merge`: merge throughput and peak memory over synthetic ~1 GB checkpoints,
//! against a read-every-input-byte / write-every-output-byte baseline measured in the same run.

use anyhow::{Context, Result, bail};
use evomerge_checkpoint::{Checkpoint, CheckpointWriter, Dtype, OutputTensor, WriterOptions};
use evomerge_kernels::{DeviceChoice, MaskRng};
use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
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
    /// Methods to time.
    pub methods: Vec<String>,
    /// Tensors merged at once.
    pub jobs: usize,
    /// Where the merges run.
    pub device: DeviceChoice,
}

impl Default for MergeBench {
    fn default() -> Self {
        MergeBench {
            dir: PathBuf::from("results/bench-merge"),
            gb: 1.0,
            methods: vec!["ties".into(), "dare_ties".into()],
            jobs: 2,
            device: DeviceChoice::Cpu,
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
fn write_synthetic(dir: &Path, spec: &TinyLlama, finetune: Option<u64>) -> Result<()> {
    let shapes = spec.shapes();
    let plan = shapes
        .iter()
        .map(|(n, s)| OutputTensor::new(n.clone(), Dtype::F32, s.clone()))
        .collect();
    let writer = CheckpointWriter::create(
        dir,
        plan,
        WriterOptions {
            max_shard_bytes: 2_000_000_000,
            force: true,
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
    evomerge_checkpoint::set_torch_dtype(&mut config, Dtype::F32);
    writer.finish(Some(config), None)?;
    Ok(())
}

fn ensure_models(dir: &Path, spec: &TinyLlama) -> Result<Vec<PathBuf>> {
    let names = ["base", "ft1", "ft2"];
    let expected: u64 = spec
        .shapes()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64 * 4)
        .sum();
    let mut paths = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = dir.join(name);
        let ok = Checkpoint::open(&p)
            .map(|c| c.total_bytes() == expected)
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "writing synthetic checkpoint {} ({:.2} GB)...",
                p.display(),
                expected as f64 / 1e9
            );
            write_synthetic(&p, spec, (i > 0).then_some(i as u64))?;
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
        .map(|t| OutputTensor::new(t.name.clone(), Dtype::F32, t.shape.clone()))
        .collect();
    let writer = CheckpointWriter::create(
        out,
        outputs,
        WriterOptions {
            max_shard_bytes: 5_000_000_000,
            force: true,
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
/// a read-every-input-byte / write-every-output-byte baseline measured before and after the
/// merges; prints a markdown table.
pub fn run(args: &MergeBench) -> Result<()> {
    if args.gb <= 0.0 {
        bail!("--gb must be positive");
    }
    let spec = bench_spec(args.gb);
    let paths = ensure_models(&args.dir, &spec)?;
    let device = args.device.device().map_err(anyhow::Error::msg)?;
    let out = args.dir.join("out");
    let recipe_for = |method: &str| -> Result<Recipe> {
        let text = format!(
            "merge_method: {method}\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.6, density: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.4, density: 0.5}}\ndtype: float32\n",
            paths[0].display(),
            paths[1].display(),
            paths[2].display()
        );
        Ok(Recipe::from_yaml(&text)?)
    };
    let first = recipe_for("task_arithmetic")?;
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
    reset_peak_rss();
    let base1 = copy_baseline(&sources, &plan, &out, args.jobs)?;
    let base_rss = peak_rss();
    let mut rows = vec![("copy baseline".to_string(), base1, base_rss)];
    for method in &args.methods {
        let recipe = recipe_for(method)?;
        let plan = Plan::build(&recipe, &sources, &PlanOptions::default())?;
        let options = MergeOptions {
            device: device.clone(),
            seed: 0,
            max_shard_bytes: 5_000_000_000,
            force: true,
            jobs: args.jobs,
            progress: false,
        };
        reset_peak_rss();
        let report = merge_to_disk(&plan, &sources, &out, &options, &[])?;
        rows.push((method.clone(), report.seconds, peak_rss()));
    }
    reset_peak_rss();
    let base2 = copy_baseline(&sources, &plan, &out, args.jobs)?;
    rows.push(("copy baseline (again)".to_string(), base2, peak_rss()));
    let floor = base1.min(base2);
    let largest = plan
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64 * 4)
        .max()
        .unwrap_or(0);
    println!(
        "3 checkpoints x {:.2} GB (f32, {} layers, largest tensor {:.0} MB), {} input bytes per merge, jobs {}, device {}",
        input_bytes as f64 / 3.0 / 1e9,
        spec.layers,
        largest as f64 / 1e6,
        input_bytes,
        args.jobs,
        args.device
    );
    println!("| phase | seconds | input GB/s | x floor | peak RSS (MB) |");
    println!("|---|---|---|---|---|");
    for (name, secs, rss) in &rows {
        println!(
            "| {name} | {secs:.2} | {:.2} | {:.2} | {:.0} |",
            input_bytes as f64 / secs / 1e9,
            secs / floor,
            *rss as f64 / 1e6
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
