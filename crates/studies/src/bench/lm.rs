//! `evomerge bench lm`: generation throughput of tiny models (KV cache against recomputing the
//! whole sequence, flex against wgpu) and the turnaround of a merged candidate (merge in
//! memory and ready to evaluate, against merging to disk and loading it), each as a ratio to a
//! baseline measured in the same run.

use super::median;
use anyhow::{Context, Result};
use evomerge_checkpoint::Dtype;
use evomerge_kernels::{Device, DeviceChoice};
use evomerge_merge::{
    MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_in_memory, merge_to_disk,
};
use evomerge_models::{
    Decoder, LanguageModel, Llama, LlamaConfig, TensorMap, TokenGenerateOptions,
};
use evomerge_zoo::TinyLlama;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What [`run`] measures.
#[derive(Debug, Clone)]
pub struct LmBench {
    /// Folder for the tiny checkpoints and merge outputs.
    pub dir: PathBuf,
    /// Prompts generated together.
    pub batch: usize,
    /// Prompt length in tokens.
    pub prompt_len: usize,
    /// Tokens generated per prompt.
    pub new_tokens: usize,
    /// Also time wgpu (needs the `wgpu` feature and an adapter).
    pub wgpu: bool,
    /// Repetitions of each turnaround measurement (the median is reported).
    pub repeats: usize,
}

impl Default for LmBench {
    fn default() -> Self {
        LmBench {
            dir: PathBuf::from("results/bench-lm"),
            batch: 64,
            prompt_len: 24,
            new_tokens: 32,
            wgpu: false,
            repeats: 7,
        }
    }
}

/// The mini reproduction's model size: d_model 128, 6 layers, ~1.3M parameters.
fn spec() -> TinyLlama {
    TinyLlama {
        hidden: 128,
        intermediate: 384,
        layers: 6,
        vocab: 512,
        heads: 4,
        kv_heads: 2,
        max_positions: 256,
        ..Default::default()
    }
}

/// Tokens per second of greedy generation, with and without the KV cache.
fn generation(d: &Decoder, args: &LmBench, label: &str) -> Result<(f64, f64)> {
    let v = d.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..args.batch)
        .map(|i| {
            (0..args.prompt_len)
                .map(|j| 3 + ((i * 131 + j * 17) as u32 % (v - 3)))
                .collect()
        })
        .collect();
    let mut opts = TokenGenerateOptions {
        max_new_tokens: args.new_tokens,
        eos_token_ids: vec![],
        batch_size: args.batch,
        use_cache: true,
    };
    let tps = |opts: &TokenGenerateOptions| -> Result<f64> {
        let start = Instant::now();
        let out = d.generate(&prompts, opts, &mut |_, _| false)?;
        let n: usize = out.iter().map(|g| g.ids.len()).sum();
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    tps(&opts)?; // warm-up (allocations, kernel compilation on wgpu)
    let cached = tps(&opts)?;
    opts.use_cache = false;
    let uncached = tps(&opts)?;
    eprintln!("{label}: {cached:.0} tokens/s cached, {uncached:.0} uncached");
    Ok((cached, uncached))
}

/// Generation tokens/s (KV cache against recomputing, flex and optionally wgpu) and the
/// turnaround of an in-memory merged candidate against merging to disk and loading it; prints
/// a markdown table.
pub fn run(args: &LmBench) -> Result<()> {
    let spec = spec();
    let dir = &args.dir;
    let names = ["base", "ft1", "ft2"];
    let base = spec.random(0);
    let models = [
        base.clone(),
        base.perturbed(1, 0.002),
        base.perturbed(2, 0.002),
    ];
    for (name, w) in names.iter().zip(&models) {
        w.save(dir.join(name), Dtype::F32, u64::MAX)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    let params: usize = base.tensors.iter().map(|(_, _, v)| v.len()).sum();
    let flex = Device::flex();
    let lm = LanguageModel::from_dir(dir.join("base"), &flex)?;

    // 1. Generation throughput.
    let (flex_cached, flex_uncached) = generation(lm.decoder(), args, "flex")?;
    let wgpu = if args.wgpu {
        let device = DeviceChoice::Wgpu.device().map_err(anyhow::Error::msg)?;
        let d = Decoder::plain(Arc::new(Llama::from_dir(dir.join("base"), &device)?));
        Some(generation(&d, args, "wgpu")?)
    } else {
        None
    };

    // 2. Candidate turnaround: DARE-TIES over two fine-tunes, as in the paper's PS merge.
    let recipe = Recipe::from_yaml(&format!(
        "merge_method: dare_ties\nbase_model: {b}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.6, density: 0.5}}\n  - model: {m2}\n    parameters: {{weight: 0.6, density: 0.7}}\ndtype: float32\n",
        b = dir.join("base").display(),
        m1 = dir.join("ft1").display(),
        m2 = dir.join("ft2").display(),
    ))?;
    let sources = Sources::open(&recipe, None)?;
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default())?;
    let config = LlamaConfig::from_json(plan.config.as_ref().context("no config")?, "merged")?;
    let out = dir.join("merged");
    let mut in_memory = Vec::new();
    let mut on_disk = Vec::new();
    let mut merge_only = Vec::new();
    for i in 0..args.repeats + 1 {
        let start = Instant::now();
        let merged = merge_in_memory(&plan, &sources, &flex, i as u64)?;
        let t_merge = start.elapsed().as_secs_f64();
        let model = Llama::load(
            config.clone(),
            &TensorMap::from_views("merged", merged),
            &flex,
        )?;
        let ready = Decoder::plain(Arc::new(model));
        let t_mem = start.elapsed().as_secs_f64();
        std::hint::black_box(&ready);

        let start = Instant::now();
        let options = MergeOptions {
            device: flex.clone(),
            seed: i as u64,
            force: true,
            ..Default::default()
        };
        merge_to_disk(&plan, &sources, &out, &options, &[])?;
        let loaded = LanguageModel::from_dir(&out, &flex)?;
        let t_disk = start.elapsed().as_secs_f64();
        std::hint::black_box(&loaded);
        if i > 0 {
            in_memory.push(t_mem);
            on_disk.push(t_disk);
            merge_only.push(t_merge);
        }
    }
    let (t_mem, t_disk, t_merge) = (
        median(&mut in_memory),
        median(&mut on_disk),
        median(&mut merge_only),
    );
    let _ = std::fs::remove_dir_all(&out);

    println!(
        "tiny Llama: hidden {}, {} layers, {} heads ({} kv), vocabulary {}, {:.2}M parameters",
        spec.hidden,
        spec.layers,
        spec.heads,
        spec.kv_heads,
        spec.vocab,
        params as f64 / 1e6
    );
    println!(
        "generation: {} prompts x {} tokens, {} new tokens each, greedy",
        args.batch, args.prompt_len, args.new_tokens
    );
    println!("| measurement | value | ratio to baseline |");
    println!("|---|---|---|");
    println!("| flex, recompute every step (baseline) | {flex_uncached:.0} tokens/s | 1.00 |");
    println!(
        "| flex, KV cache | {flex_cached:.0} tokens/s | {:.2} |",
        flex_cached / flex_uncached
    );
    if let Some((c, u)) = wgpu {
        println!(
            "| wgpu, recompute every step | {u:.0} tokens/s | {:.2} |",
            u / flex_uncached
        );
        println!(
            "| wgpu, KV cache | {c:.0} tokens/s | {:.2} |",
            c / flex_uncached
        );
    }
    println!(
        "| candidate: merge to disk + load (baseline), median of {} | {:.1} ms | 1.00 |",
        args.repeats,
        t_disk * 1e3
    );
    println!(
        "| candidate: merge in memory, ready to evaluate | {:.1} ms | {:.1}x faster |",
        t_mem * 1e3,
        t_disk / t_mem
    );
    println!(
        "| of which the merge arithmetic (dare_ties) / building the model | {:.1} ms / {:.1} ms | |",
        t_merge * 1e3,
        (t_mem - t_merge) * 1e3
    );
    Ok(())
}
