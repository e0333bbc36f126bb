//! `evomerge bench ...`: flags only; the benchmarks are `evomerge_studies::bench` (merge, lm)
//! and `evomerge_search::bench` (search).

use anyhow::Result;
use clap::{Args, Subcommand};
use evomerge_kernels::{DeviceChoice, EvalDtype};
use evomerge_search::OptimizerConfig;
use evomerge_search::bench::{
    BenchOptions, Function, default_max_evaluations, run_bench, write_csv,
};
use evomerge_studies::bench::{lm, merge, pipeline};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Merge throughput and peak memory over synthetic ~1 GB checkpoints, against a
    /// read-every-input-byte / write-every-output-byte baseline measured in the same run.
    Merge(MergeBenchArgs),
    /// Run an optimizer on a test function over several seeds; CSV to stdout
    /// (`seed,evaluations,best_f,success`).
    Search(SearchBenchArgs),
    /// Tiny-model generation tokens/s (KV cache vs recompute, flex vs wgpu) and in-memory
    /// candidate turnaround vs merging to disk and loading.
    Lm(LmBenchArgs),
    /// A parameter-space search at a given model size (random-weight Llama checkpoints, e.g.
    /// 0.1B, 0.25B, 0.5B): peak RSS and bytes per parameter of `evomerge run`, merge and eval
    /// ms per candidate, and a candidate's turnaround in memory against the one-shot merge and
    /// against merging to disk and loading it back.
    SearchPipeline(PipelineBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Merge(a) => merge::run(&merge::MergeBench {
            dir: a.dir,
            gb: a.gb,
            dtype: a.dtype,
            shape: a.layers.map(|layers| evomerge_zoo::TinyLlama {
                hidden: a.hidden,
                intermediate: a.intermediate,
                layers,
                vocab: a.vocab,
                heads: a.heads,
                kv_heads: a.kv_heads,
                max_positions: 2048,
                ..Default::default()
            }),
            methods: a.methods,
            jobs: a.jobs,
            device: a.device,
            repeat: a.repeat,
        }),
        BenchCommand::Search(a) => search_bench(a),
        BenchCommand::SearchPipeline(a) => pipeline::run(&pipeline::PipelineBench {
            dir: a.dir,
            sizes: a.sizes,
            dtype: a.dtype,
            candidates: a.candidates,
            texts: a.texts,
            tokens: a.tokens,
            repeats: a.repeats,
            method: a.method,
            device: a.device,
            eval_dtype: a.eval_dtype,
            exe: None,
        }),
        BenchCommand::Lm(a) => lm::run(&lm::LmBench {
            dir: a.dir,
            batch: a.batch,
            prompt_len: a.prompt_len,
            new_tokens: a.new_tokens,
            wgpu: a.wgpu,
            repeats: a.repeats,
        }),
    }
}

#[derive(Args)]
pub struct SearchBenchArgs {
    /// cma | sep-cma | ipop-cma | ipop-sep-cma | ga | random
    #[arg(long)]
    pub optimizer: String,
    /// sphere | ellipsoid | rotated-ellipsoid | rosenbrock | rastrigin
    #[arg(long)]
    pub function: String,
    /// Dimension n.
    #[arg(long)]
    pub dim: usize,
    /// Number of runs; run i uses seed i.
    #[arg(long, default_value_t = 25)]
    pub seeds: u64,
    /// Start point: this value in every coordinate.
    #[arg(long)]
    pub x0: f64,
    /// Initial step size.
    #[arg(long)]
    pub sigma0: f64,
    /// Success when f < target.
    #[arg(long, default_value_t = 1e-8)]
    pub target: f64,
    /// Evaluation budget per run (default 10000 n).
    #[arg(long)]
    pub max_evals: Option<u64>,
}

fn search_bench(args: SearchBenchArgs) -> Result<()> {
    let opts = BenchOptions {
        optimizer: args.optimizer.parse::<OptimizerConfig>()?,
        function: args.function.parse::<Function>()?,
        dim: args.dim,
        seeds: args.seeds,
        x0: args.x0,
        sigma0: args.sigma0,
        target: args.target,
        max_evaluations: args
            .max_evals
            .unwrap_or_else(|| default_max_evaluations(args.dim)),
    };
    let rows = run_bench(&opts)?;
    write_csv(&rows, std::io::stdout().lock())?;
    Ok(())
}

#[derive(Args)]
pub struct MergeBenchArgs {
    /// Folder for the synthetic checkpoints (reused when they already have the right size).
    #[arg(long, default_value = "results/bench-merge")]
    pub dir: PathBuf,
    /// Approximate size of each checkpoint in GB (f32; half that in bf16).
    #[arg(long, default_value_t = 1.0)]
    pub gb: f64,
    /// Stored dtype of the checkpoints and of the output: float32 or bfloat16 (or float16).
    #[arg(long, default_value = "float32")]
    pub dtype: evomerge_checkpoint::Dtype,
    /// Layers of a Llama of the shape below, instead of one sized by --gb (e.g. 0.49B
    /// parameters: --layers 8 --hidden 2048 --intermediate 5632 --heads 32 --kv-heads 4).
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long, default_value_t = 2048)]
    pub hidden: usize,
    #[arg(long, default_value_t = 5632)]
    pub intermediate: usize,
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    #[arg(long, default_value_t = 4)]
    pub kv_heads: usize,
    /// Methods to time, comma separated (default: every per-tensor method of the registry).
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Tensors merged at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Runs of each method; its median is reported (the floor is the median of copy baselines
    /// taken before, every five methods and after).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

#[derive(Args)]
pub struct LmBenchArgs {
    /// Folder for the tiny checkpoints and merge outputs.
    #[arg(long, default_value = "results/bench-lm")]
    pub dir: PathBuf,
    /// Prompts generated together.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 24)]
    pub prompt_len: usize,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Also time wgpu (needs the `wgpu` feature and an adapter).
    #[arg(long)]
    pub wgpu: bool,
    /// Repetitions of each turnaround measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
}

#[derive(Args)]
pub struct PipelineBenchArgs {
    /// Folder for the checkpoints, tasks and runs (checkpoints are reused when they fit).
    #[arg(long, default_value = "results/bench-pipeline")]
    pub dir: PathBuf,
    /// Model sizes in billions of parameters, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.25, 0.5])]
    pub sizes: Vec<f64>,
    /// Storage dtype of the sources: bfloat16, float16 or float32.
    #[arg(long, default_value = "bfloat16")]
    pub dtype: evomerge_checkpoint::Dtype,
    /// Candidates the search scores (population 4).
    #[arg(long, default_value_t = 4)]
    pub candidates: u64,
    /// Texts scored per candidate (perplexity).
    #[arg(long, default_value_t = 16)]
    pub texts: usize,
    /// Tokens per text.
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Repetitions of each turnaround measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// The merge method searched.
    #[arg(long, default_value = "dare_ties")]
    pub method: String,
    /// cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// The search's evaluation precision (the experiment's `eval_dtype`): auto, float32,
    /// float16 or bfloat16.
    #[arg(long, default_value = "auto")]
    pub eval_dtype: EvalDtype,
}
