//! `evomerge demo`, `evomerge data-merge-study`, `evomerge digits-models`: flags only; the work
//! is `evomerge_studies::{demo, data_merge, digits}`.

use crate::merge_cmd::{self, MergeArgs};
use anyhow::Result;
use clap::Args;
use evomerge_kernels::DeviceChoice;
use evomerge_studies::{data_merge, digits};
use std::path::PathBuf;

/// Build a tiny base model and three "fine-tunes" (Llama layout, random weights), write
/// example recipes for several methods (TOML and mergekit YAML), merge each, and report how far
/// each merge moved from the base. Everything lands in OUT (default results/demo).
#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the models, recipes and merges (the demo's own files are rewritten on every
    /// run; anything else there is left alone).
    #[arg(long, default_value = "results/demo")]
    pub out: PathBuf,
    /// Where the arithmetic runs: cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

pub fn demo(args: DemoArgs) -> Result<()> {
    // The demo's merges are `evomerge merge RECIPE OUT --force -q -j 2`.
    let merge = |config: &std::path::Path, out: &std::path::Path| {
        merge_cmd::run(MergeArgs {
            config: config.to_path_buf(),
            out_dir: out.to_path_buf(),
            device: args.device,
            seed: 0,
            out_shard_size: 5_000_000_000,
            dtype: None,
            dry_run: false,
            force: true,
            jobs: 2,
            quiet: true,
        })
    };
    evomerge_studies::demo::run(&args.out, &merge)
}

/// Reproduce the data-merge findings on digits (Git Re-Basin barriers, REPAIR on a deep MLP,
/// Fisher/RegMean/soups on models fine-tuned from one init); writes REPORT.md and PNG plots.
#[derive(Args)]
pub struct StudyDataArgs {
    /// Folder for the report (REPORT.md) and the plots.
    #[arg(long, default_value = "experiments/data-merges/results")]
    pub out: PathBuf,
    /// Seed of the train/validation/test split.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Fewer epochs and seeds: a smoke run, not the reported numbers.
    #[arg(long)]
    pub quick: bool,
}

pub fn data_merge_study(a: StudyDataArgs) -> Result<()> {
    data_merge::run(&data_merge::StudyOptions {
        out: a.out,
        split_seed: a.split_seed,
        quick: a.quick,
    })
}

/// Train digits MLP classifiers for merging: DIR/base (all digits), DIR/low (base fine-tuned
/// on digits 0-4), DIR/high (on digits 5-9); prints each model's test accuracy.
#[derive(Args)]
pub struct DigitsModelsArgs {
    /// Output folder (base/, low/, high/ inside).
    pub dir: PathBuf,
    /// Hidden layer sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub hidden: Vec<usize>,
    /// Epochs of the base on all digits.
    #[arg(long, default_value_t = 5)]
    pub base_epochs: usize,
    /// Epochs of each expert's fine-tune.
    #[arg(long, default_value_t = 5)]
    pub ft_epochs: usize,
    /// Seed of the initialisation and the batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seed of the train/validation/test split (the classifier evaluator's data `seed`).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Replace models already in DIR.
    #[arg(long)]
    pub force: bool,
}

pub fn digits_models(a: DigitsModelsArgs) -> Result<()> {
    digits::run(&digits::DigitsModels {
        dir: a.dir,
        hidden: a.hidden,
        base_epochs: a.base_epochs,
        ft_epochs: a.ft_epochs,
        seed: a.seed,
        split_seed: a.split_seed,
        force: a.force,
    })
}
