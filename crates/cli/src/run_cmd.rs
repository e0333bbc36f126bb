//! `evomerge run | resume | export`: experiments.

use anyhow::Result;
use clap::Args;
use evomerge_kernels::DeviceChoice;
use evomerge_runner::{ExportFormat, RunOptions, export_run};
use std::path::PathBuf;

/// Run an experiment file: search, log every candidate, score the best on the test split.
///
/// Results go to OUTPUT/NAME/RUN_ID (default results/NAME/seed{SEED}); the run can be
/// continued after a crash or Ctrl-C with `evomerge resume RUN_DIR`.
#[derive(Args)]
pub struct RunArgs {
    /// The experiment file (TOML; see the README for every key).
    pub experiment: PathBuf,
    /// Name of the run folder (default seed{SEED}).
    #[arg(long)]
    pub run_id: Option<String>,
    /// No progress or info lines on stderr, only warnings and errors (the test table still
    /// goes to stdout).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Continue a run exactly where it stopped.
#[derive(Args)]
pub struct ResumeArgs {
    /// The run folder (holds run.toml and state.json).
    pub run_dir: PathBuf,
    /// No progress or info lines on stderr, only warnings and errors (the test table still
    /// goes to stdout).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Write a run's best as a checkpoint.
#[derive(Args)]
pub struct ExportArgs {
    pub run_dir: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// For data-flow results: `path` (unique layers + input_layers/input_scales) or `plain`
    /// (layers duplicated along the path; only when every scale is 1).
    #[arg(long, default_value = "path")]
    pub format: String,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

/// Draw a run's plots (fitness vs evaluations, best genome heatmap, DFS path) into RUN_DIR/plots.
#[derive(Args)]
pub struct PlotArgs {
    pub run_dir: PathBuf,
}

/// Compare runs (strategies and seeds): best-so-far vs evaluations with mean and spread per
/// strategy, and summary tables (compare.md, compare.csv per strategy, compare_runs.csv per run).
#[derive(Args)]
pub struct CompareArgs {
    /// Run folders; runs sharing an optimizer (and genome kind) are one strategy, their seeds
    /// the repetitions.
    #[arg(required = true)]
    pub run_dirs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn plot(args: PlotArgs) -> Result<()> {
    let files = evomerge_runner::plot_run(&args.run_dir)?;
    if files.is_empty() {
        eprintln!("nothing to plot yet in {}", args.run_dir.display());
    }
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

pub fn compare(args: CompareArgs) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let summary = evomerge_runner::compare_runs(&args.run_dirs, &args.out)?;
    for s in &summary.strategies {
        let fmt = |x: &Option<evomerge_runner::compare::Stat>| {
            x.as_ref()
                .map(|s| {
                    format!(
                        "{:.4}{}",
                        s.mean,
                        s.sd.map(|d| format!(" ± {d:.4}")).unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<24} runs {:>2}  search {}  validation {}  test {}",
            s.label,
            s.runs,
            fmt(&s.search_best),
            fmt(&s.validation),
            fmt(&s.test)
        );
    }
    for f in &summary.written {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

/// The exit status for an error: 130/143 for a run or merge stopped by SIGINT/SIGTERM, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(evomerge_merge::MergeError::Interrupted(signal)) = e.downcast_ref() {
        return 128 + signal;
    }
    e.downcast_ref::<evomerge_runner::RunError>()
        .map_or(1, evomerge_runner::RunError::exit_code)
}

pub fn run(args: RunArgs) -> Result<()> {
    evomerge_runner::stop_on_signals();
    let dir = evomerge_runner::start(
        &args.experiment,
        &RunOptions {
            run_id: args.run_id,
            progress: !args.quiet,
        },
    )?;
    if !args.quiet {
        eprintln!("run finished: {}", dir.display());
    }
    Ok(())
}

pub fn resume(args: ResumeArgs) -> Result<()> {
    evomerge_runner::stop_on_signals();
    let dir = evomerge_runner::resume(
        &args.run_dir,
        &RunOptions {
            run_id: None,
            progress: !args.quiet,
        },
    )?;
    if !args.quiet {
        eprintln!("run finished: {}", dir.display());
    }
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    let format = match args.format.as_str() {
        "path" => ExportFormat::Path,
        "plain" => ExportFormat::Plain,
        other => anyhow::bail!("unknown --format '{other}' (use path or plain)"),
    };
    let device = args.device.device().map_err(anyhow::Error::msg)?;
    let out = export_run(&args.run_dir, &args.out, format, args.force, &device)?;
    eprintln!("exported {}", out.display());
    Ok(())
}
