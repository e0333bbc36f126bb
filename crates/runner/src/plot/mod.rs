//! Plots of a run: `evomerge plot RUN_DIR` reads the files a run leaves (see the crate docs for
//! their columns) and writes charts into `RUN_DIR/plots/`, each as PNG and SVG.
//!
//! | chart | from | what |
//! |---|---|---|
//! | `fitness` | `candidates.csv`, `generations.csv` | search fitness vs evaluations: every candidate, best so far, generation median with its q25–q75 band, validation scores |
//! | `genome` | `candidates.csv` (parameter-space stages) | heatmap of the best candidate's genes: layer groups × (model, filter set, parameter) |
//! | `path` | `candidates.csv` (data-flow stages) | the best candidate's layer path: layer per hop, coloured by model, scales ≠ 1 written |
//!
//! The second stage of a `ps+dfs` run (`dfs_candidates.csv`, `dfs_generations.csv`) gets
//! `dfs_fitness` and `dfs_path`. Charts whose inputs are missing or empty are skipped, so a run
//! still in progress plots what it has: a last line still being written is ignored, failed
//! candidates (empty fitness) are counted but not drawn.
//!
//! Not for: comparing runs (see [`crate::compare`]), computing anything a run did not log.
//!
//! ```no_run
//! let written = evomerge_runner::plot::plot_run(std::path::Path::new("results/demo/run-1"))?;
//! for p in written {
//!     println!("{}", p.display());
//! }
//! # Ok::<(), evomerge_runner::plot::PlotError>(())
//! ```

use crate::log::{CandidateRow, CandidateTable, GenerationRow, LogError};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use thiserror::Error;

mod fitness;
mod genome;
mod path;
pub(crate) mod style;

pub(crate) use style::{
    fitness_axes, fmt_num, padded_range, series_color, step_points, write_chart,
};

/// What went wrong reading a run's files or drawing its charts; every variant names the file.
#[derive(Debug, Error)]
pub enum PlotError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file's content is not what `evomerge run` writes.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// A folder given as a run has no `run.toml`.
    #[error(
        "{} is not a run folder: it has no run.toml (give the folder a run writes, OUTPUT/NAME/RUN_ID)",
        dir.display()
    )]
    NotARun { dir: PathBuf },
    /// The chart library failed to draw or encode a file.
    #[error("drawing {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}

impl From<LogError> for PlotError {
    fn from(e: LogError) -> PlotError {
        match e {
            LogError::Io { path, source } => PlotError::Io { path, source },
            LogError::Invalid { path, message } => PlotError::Invalid { path, message },
        }
    }
}

impl From<evomerge_checkpoint::AtomicWriteError> for PlotError {
    fn from(e: evomerge_checkpoint::AtomicWriteError) -> PlotError {
        PlotError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// A chart: drawn the same on any backend (PNG and SVG from the same code), with its title
/// and size. One file per chart implements it; [`write_chart`] writes it.
pub(crate) trait Chart {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// "best candidate: generation G #I, fitness F", the subtitle of the best-candidate charts.
fn describe(row: &CandidateRow, fitness: f64) -> String {
    format!(
        "best candidate: generation {} #{}, fitness {}",
        row.generation,
        row.index,
        fmt_num(fitness)
    )
}

/// Writes the charts of the run in `run_dir` into `run_dir/plots/`, each as PNG and SVG, and
/// returns the paths written. Charts whose inputs are missing or still empty are skipped (an
/// empty list means nothing to plot yet).
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    if !run_dir.join("run.toml").is_file() && !run_dir.join("candidates.csv").is_file() {
        return Err(PlotError::NotARun {
            dir: run_dir.to_path_buf(),
        });
    }
    let run = RunInfo::read(run_dir);
    let out = run_dir.join("plots");
    let two_stages = run_dir.join("dfs_candidates.csv").is_file()
        || run_dir.join("dfs_generations.csv").is_file();
    let mut written = Vec::new();
    for prefix in ["", "dfs_"] {
        let cands = CandidateTable::read(&run_dir.join(format!("{prefix}candidates.csv")))?;
        let gens = GenerationRow::read_all(&run_dir.join(format!("{prefix}generations.csv")))?;
        let stage = if prefix.is_empty() {
            cands
                .as_ref()
                .and_then(|c| c.sound().next().map(|(_, r)| r.stage.to_string()))
                .unwrap_or_else(|| if two_stages { "ps" } else { "search" }.into())
        } else {
            "dfs".to_string()
        };
        let title = format!("{}: search fitness, {stage} stage", run.name);
        let data = fitness::FitnessData::collect(title, cands.as_ref(), gens.as_deref());
        if !data.is_empty() {
            written.extend(write_chart(&out, &format!("{prefix}fitness"), &data)?);
        }
        let Some(cands) = cands else { continue };
        let title = format!("{}: best genome, {stage} stage", run.name);
        if let Some(heat) = genome::GenomeHeatmap::from_best(title, &cands)? {
            written.extend(write_chart(&out, &format!("{prefix}genome"), &heat)?);
        }
        let path_models = if prefix.is_empty() && !two_stages {
            run.path_models.clone()
        } else {
            run.best_path_models.clone()
        };
        let title = format!("{}: best layer path, {stage} stage", run.name);
        if let Some(path) = path::PathChart::from_best(title, &cands, path_models)? {
            written.extend(write_chart(&out, &format!("{prefix}path"), &path)?);
        }
    }
    Ok(written)
}

/// What the titles and legends take from `run.toml` and `best_path.json`; all optional.
struct RunInfo {
    name: String,
    /// Model names of a single-stage run (its sources).
    path_models: Vec<String>,
    /// Model names from `best_path.json` (the data-flow stage's models).
    best_path_models: Vec<String>,
}

impl RunInfo {
    fn read(dir: &Path) -> RunInfo {
        let toml: Option<toml::Table> = std::fs::read_to_string(dir.join("run.toml"))
            .ok()
            .and_then(|s| s.parse().ok());
        let name = toml
            .as_ref()
            .and_then(|t| t.get("name")?.as_str().map(str::to_string))
            .or_else(|| Some(dir.file_name()?.to_str()?.to_string()))
            .unwrap_or_else(|| "run".into());
        let best_path_models: Vec<String> = std::fs::read_to_string(dir.join("best_path.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("models").and_then(|m| m.as_array()).cloned())
            .map(|a| a.iter().map(json_model_name).collect())
            .unwrap_or_default();
        // A data-flow run's models: `[genome] dfs_models`, else `[sources] models`.
        let list = |t: &toml::Table| -> Option<Vec<String>> {
            let models = t
                .get("genome")
                .and_then(|g| g.get("dfs_models"))
                .or_else(|| t.get("sources")?.get("models"))?;
            Some(models.as_array()?.iter().map(toml_model_name).collect())
        };
        let sources: Vec<String> = toml.as_ref().and_then(list).unwrap_or_default();
        let path_models = if best_path_models.is_empty() {
            sources
        } else {
            best_path_models.clone()
        };
        RunInfo {
            name,
            path_models,
            best_path_models,
        }
    }
}

/// A short model name: the last path component of a path.
fn short_name(s: &str) -> String {
    let s = s.trim_end_matches('/');
    s.rsplit('/').next().unwrap_or(s).to_string()
}

fn json_model_name(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => short_name(s),
        serde_json::Value::Object(o) => ["name", "path"]
            .iter()
            .find_map(|k| o.get(*k)?.as_str())
            .map(short_name)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn toml_model_name(v: &toml::Value) -> String {
    v.as_str().map(short_name).unwrap_or_default()
}
