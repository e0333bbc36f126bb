//! `evomerge`: merge model checkpoints from recipes, and search for better recipes.
//!
//! Each subcommand's flags live in their own module; this file only parses the command line.
//! The CLI parses flags and dispatches: studies, the mini world, the digits models, the demo
//! and the benchmarks are `evomerge-studies`; runs are `evomerge-runner`; merges
//! `evomerge-merge`.

mod bench;
mod inspect;
mod merge_cmd;
mod mini_world_cmd;
mod run_cmd;
mod studies_cmd;

use clap::{Parser, Subcommand};

/// Find and apply model-merge recipes by evolutionary search.
///
/// Start with `evomerge demo` (builds toy models and merges them), then
/// `evomerge merge RECIPE OUT_DIR` on your own checkpoints. `evomerge methods` lists the merge
/// methods and their parameters.
#[derive(Parser)]
#[command(name = "evomerge", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment: search merge recipes, log every candidate, report the best.
    Run(run_cmd::RunArgs),
    /// Continue a run after a crash or interruption, exactly where it stopped.
    Resume(run_cmd::ResumeArgs),
    /// Write a run's best as a checkpoint (merged model, or layer-path model).
    Export(run_cmd::ExportArgs),
    /// Draw a run's plots.
    Plot(run_cmd::PlotArgs),
    /// Compare search strategies across runs and seeds.
    Compare(run_cmd::CompareArgs),
    /// Merge checkpoints described by a recipe (our TOML, or a mergekit YAML config).
    Merge(merge_cmd::MergeArgs),
    /// List the merge methods and their parameters.
    Methods,
    /// Build tiny toy checkpoints and merge them with several methods (no download needed).
    Demo(studies_cmd::DemoArgs),
    /// Benchmarks (merge throughput, search optimizers).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Look inside a model with evomerge's forward pass (logits as JSON, greedy generation).
    #[command(subcommand)]
    Inspect(inspect::InspectCommand),
    /// Reproduce the data-using and permutation merge findings on digits (report + plots).
    DataMergeStudy(studies_cmd::StudyDataArgs),
    /// Train digits MLP classifiers to merge (a base and two experts), e.g. for a classifier search.
    DigitsModels(studies_cmd::DigitsModelsArgs),
    /// Score one candidate of a Slurm job array: what each array task runs on its node
    /// (`evomerge worker RUN_DIR/exec/ps-g0/task-3.json`; see `[execution] kind = "slurm"`).
    Worker {
        /// The task file the runner wrote (the score file goes next to it).
        task_file: std::path::PathBuf,
    },
    /// Build the miniature Japanese-math world (task + trained base and experts) and score it.
    #[command(subcommand)]
    MiniWorld(mini_world_cmd::MiniWorldCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_cmd::run(args),
        Command::Resume(args) => run_cmd::resume(args),
        Command::Export(args) => run_cmd::export(args),
        Command::Plot(args) => run_cmd::plot(args),
        Command::Compare(args) => run_cmd::compare(args),
        Command::Merge(args) => merge_cmd::run(args),
        Command::Methods => {
            merge_cmd::print_methods();
            Ok(())
        }
        Command::Demo(args) => studies_cmd::demo(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Inspect(cmd) => inspect::run(cmd),
        Command::DataMergeStudy(args) => studies_cmd::data_merge_study(args),
        Command::DigitsModels(args) => studies_cmd::digits_models(args),
        Command::MiniWorld(cmd) => mini_world_cmd::run(cmd),
        Command::Worker { task_file } => evomerge_runner::run_worker(&task_file)
            .map(|_| ())
            .map_err(anyhow::Error::from),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(run_cmd::exit_code(&e));
    }
}
