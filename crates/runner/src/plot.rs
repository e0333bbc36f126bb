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

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use thiserror::Error;

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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PlotError + '_ {
    move |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> PlotError {
    PlotError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the CSV logs
// ---------------------------------------------------------------------------------------------

/// One CSV log, read by column name. Rows shorter than the header (a line still being
/// written, or cut by a crash) are dropped, so are rows after an unterminated last line.
pub(crate) struct Table {
    pub(crate) path: PathBuf,
    pub(crate) headers: Vec<String>,
    /// Each row with the line it starts on (1-based, the header is line 1).
    pub(crate) rows: Vec<(u64, csv::StringRecord)>,
}

impl Table {
    /// Reads `path`; `Ok(None)` when it does not exist or has no complete header line yet.
    pub(crate) fn read(path: &Path) -> Result<Option<Table>, PlotError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        // A run appends rows; a last line without its newline is still being written.
        let complete = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => &bytes[..=i],
            None => return Ok(None),
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(complete);
        let headers: Vec<String> = match reader.headers() {
            Ok(h) => h.iter().map(|s| s.trim().to_string()).collect(),
            Err(e) => return Err(invalid(path, format!("cannot read the CSV header: {e}"))),
        };
        let mut rows = Vec::new();
        for rec in reader.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                invalid(path, format!("line {line}: {e}"))
            })?;
            if rec.len() < headers.len() {
                continue;
            }
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            rows.push((line, rec));
        }
        Ok(Some(Table {
            path: path.to_path_buf(),
            headers,
            rows,
        }))
    }

    pub(crate) fn col(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }

    pub(crate) fn require(&self, name: &str) -> Result<usize, PlotError> {
        self.col(name).ok_or_else(|| {
            invalid(
                &self.path,
                format!(
                    "no column '{name}' (its columns are: {}); is this a file evomerge run wrote?",
                    self.headers.join(", ")
                ),
            )
        })
    }
}

/// The trimmed text of column `i` ("" when the row is short).
pub(crate) fn field(row: &csv::StringRecord, i: usize) -> &str {
    row.get(i).unwrap_or("").trim()
}

/// Column `i` as a finite number; empty, `nan` or unparsable text is `None`.
pub(crate) fn number(row: &csv::StringRecord, i: usize) -> Option<f64> {
    field(row, i).parse::<f64>().ok().filter(|v| v.is_finite())
}

/// One `generations.csv` row, the parts the charts use.
#[derive(Clone, Debug)]
pub(crate) struct Generation {
    pub(crate) evaluations: f64,
    pub(crate) best: Option<f64>,
    pub(crate) q25: Option<f64>,
    pub(crate) median: Option<f64>,
    pub(crate) q75: Option<f64>,
    pub(crate) validation: Option<f64>,
}

/// Reads a `generations.csv` (`Ok(None)` when missing).
pub(crate) fn read_generations(path: &Path) -> Result<Option<Vec<Generation>>, PlotError> {
    let Some(t) = Table::read(path)? else {
        return Ok(None);
    };
    let ev = t.require("evaluations")?;
    let best = t.require("best")?;
    let (q25, median, q75) = (t.col("q25"), t.col("median"), t.col("q75"));
    let validation = t.col("validation");
    let opt = |row: &csv::StringRecord, c: Option<usize>| c.and_then(|c| number(row, c));
    let mut gens = Vec::new();
    for (line, row) in &t.rows {
        let evaluations = number(row, ev).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "line {line}: evaluations '{}' is not a number",
                    field(row, ev)
                ),
            )
        })?;
        gens.push(Generation {
            evaluations,
            best: number(row, best),
            q25: opt(row, q25),
            median: opt(row, median),
            q75: opt(row, q75),
            validation: opt(row, validation),
        });
    }
    Ok(Some(gens))
}

/// `candidates.csv` with the columns the charts need located.
struct Candidates {
    table: Table,
    fitness: usize,
    status: usize,
}

impl Candidates {
    fn read(path: &Path) -> Result<Option<Candidates>, PlotError> {
        let Some(table) = Table::read(path)? else {
            return Ok(None);
        };
        let fitness = table.require("fitness")?;
        let status = table.require("status")?;
        Ok(Some(Candidates {
            table,
            fitness,
            status,
        }))
    }

    /// Fitness of a row that counts (status `ok` or `cached` with a number).
    fn valid_fitness(&self, row: &csv::StringRecord) -> Option<f64> {
        match field(row, self.status) {
            "ok" | "cached" => number(row, self.fitness),
            _ => None,
        }
    }

    /// The row with the highest valid fitness (the first of ties).
    fn best(&self) -> Option<(u64, &csv::StringRecord, f64)> {
        let mut best: Option<(u64, &csv::StringRecord, f64)> = None;
        for (line, row) in &self.table.rows {
            if let Some(f) = self.valid_fitness(row)
                && best.is_none_or(|b| f > b.2)
            {
                best = Some((*line, row, f));
            }
        }
        best
    }

    fn describe(&self, row: &csv::StringRecord, fitness: f64) -> String {
        let g = self
            .table
            .col("generation")
            .map(|c| field(row, c).to_string())
            .unwrap_or_default();
        let i = self
            .table
            .col("index")
            .map(|c| field(row, c).to_string())
            .unwrap_or_default();
        format!(
            "best candidate: generation {g} #{i}, fitness {}",
            fmt_num(fitness)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Writing charts
// ---------------------------------------------------------------------------------------------

fn register_font() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}

/// Writes `bytes` to `path` through a temporary name (write, fsync, rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    use std::io::Write;
    let tmp = temp_name(path, "tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// `dir/.NAME.tmp.EXT`: a sibling that keeps the extension (the PNG encoder picks the format by it).
fn temp_name(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    path.with_file_name(format!(".{stem}.{tag}.{ext}"))
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Something drawn on any backend (PNG and SVG from the same code).
pub(crate) trait Chart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws one chart twice, as `dir/NAME.png` and `dir/NAME.svg`; returns both paths.
pub(crate) fn write_chart(
    dir: &Path,
    name: &str,
    size: (u32, u32),
    chart: &impl Chart,
) -> Result<Vec<PathBuf>, PlotError> {
    register_font();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    {
        let tmp = temp_name(&png, "tmp");
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&png, e))?;
        chart.draw(&root).map_err(|e| draw_err(&png, e))?;
        root.present().map_err(|e| draw_err(&png, e))?;
        drop(root);
        std::fs::rename(&tmp, &png).map_err(io_err(&png))?;
    }
    {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| draw_err(&svg, e))?;
            chart.draw(&root).map_err(|e| draw_err(&svg, e))?;
            root.present().map_err(|e| draw_err(&svg, e))?;
        }
        write_atomic(&svg, text.as_bytes())?;
    }
    Ok(vec![png, svg])
}

/// A number for a label: 3 significant decimals, scientific when tiny or huge.
pub(crate) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// `(lo, hi)` of the values, padded by `pad` of the span (a flat range gets a small span).
pub(crate) fn padded_range(values: impl IntoIterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    let span = hi - lo;
    let p = if span > 0.0 {
        span * pad
    } else {
        (lo.abs() * 0.05).max(1e-3)
    };
    Some((lo - p, hi + p))
}

/// A colour-blind-safe qualitative palette (Okabe–Ito), cycled.
pub(crate) fn series_color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(230, 159, 0),
        RGBColor(0, 0, 0),
        RGBColor(240, 228, 66),
    ];
    C[i % C.len()]
}

/// Points of a step function through `(x, y)` samples: flat until the next sample.
pub(crate) fn step_points(samples: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for (i, &(x, y)) in samples.iter().enumerate() {
        if i > 0 {
            out.push((x, samples[i - 1].1));
        }
        out.push((x, y));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The charts
// ---------------------------------------------------------------------------------------------

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
        let cands = Candidates::read(&run_dir.join(format!("{prefix}candidates.csv")))?;
        let gens = read_generations(&run_dir.join(format!("{prefix}generations.csv")))?;
        let stage = if prefix.is_empty() {
            cands
                .as_ref()
                .and_then(|c| {
                    let s = c.table.col("stage")?;
                    c.table.rows.first().map(|r| field(&r.1, s).to_string())
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| if two_stages { "ps" } else { "search" }.into())
        } else {
            "dfs".to_string()
        };
        let data = FitnessData::collect(cands.as_ref(), gens.as_deref());
        if !data.is_empty() {
            let title = format!("{}: search fitness, {stage} stage", run.name);
            written.extend(write_chart(
                &out,
                &format!("{prefix}fitness"),
                (1000, 620),
                &Titled(&data, title),
            )?);
        }
        let Some(cands) = cands else { continue };
        if let Some(heat) = GenomeHeatmap::from_best(&cands)? {
            let title = format!("{}: best genome, {stage} stage", run.name);
            let size = heat.size();
            written.extend(write_chart(
                &out,
                &format!("{prefix}genome"),
                size,
                &Titled(&heat, title),
            )?);
        }
        let path_models = if prefix.is_empty() && !two_stages {
            run.path_models.clone()
        } else {
            run.best_path_models.clone()
        };
        if let Some(path) = PathChart::from_best(&cands, path_models)? {
            let title = format!("{}: best layer path, {stage} stage", run.name);
            let width = (200 + 26 * path.hops.len() as u32).clamp(1000, 3200);
            written.extend(write_chart(
                &out,
                &format!("{prefix}path"),
                (width, 600),
                &Titled(&path, title),
            )?);
        }
    }
    Ok(written)
}

/// A chart with its title.
struct Titled<'a, T>(&'a T, String);

trait TitledChart {
    fn draw_titled<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), String>;
}

impl<T: TitledChart> Chart for Titled<'_, T> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        self.0.draw_titled(root, &self.1)
    }
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

/// The series of the fitness chart.
struct FitnessData {
    points: Vec<(f64, f64)>,
    failed: usize,
    best: Vec<(f64, f64)>,
    median: Vec<(f64, f64)>,
    band: Vec<(f64, f64, f64)>,
    validation: Vec<(f64, f64)>,
}

impl FitnessData {
    fn collect(cands: Option<&Candidates>, gens: Option<&[Generation]>) -> FitnessData {
        let mut d = FitnessData {
            points: Vec::new(),
            failed: 0,
            best: Vec::new(),
            median: Vec::new(),
            band: Vec::new(),
            validation: Vec::new(),
        };
        if let Some(c) = cands {
            for (pos, (_, row)) in c.table.rows.iter().enumerate() {
                match c.valid_fitness(row) {
                    Some(f) => d.points.push(((pos + 1) as f64, f)),
                    None => d.failed += 1,
                }
            }
        }
        for g in gens.unwrap_or(&[]) {
            let x = g.evaluations;
            if let Some(b) = g.best {
                d.best.push((x, b));
            }
            if let Some(m) = g.median {
                d.median.push((x, m));
            }
            if let (Some(lo), Some(hi)) = (g.q25, g.q75) {
                d.band.push((x, lo, hi));
            }
            if let Some(v) = g.validation {
                d.validation.push((x, v));
            }
        }
        d
    }

    fn is_empty(&self) -> bool {
        self.points.is_empty() && self.best.is_empty() && self.median.is_empty()
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let ys = self
            .points
            .iter()
            .map(|p| p.1)
            .chain(self.best.iter().map(|p| p.1))
            .chain(self.median.iter().map(|p| p.1))
            .chain(self.band.iter().flat_map(|b| [b.1, b.2]))
            .chain(self.validation.iter().map(|p| p.1));
        let (y0, y1) = padded_range(ys, 0.06).ok_or("no finite fitness to draw")?;
        let x_max = self
            .points
            .iter()
            .map(|p| p.0)
            .chain(self.best.iter().map(|p| p.0))
            .chain(self.median.iter().map(|p| p.0))
            .fold(1.0_f64, f64::max);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max * 1.02, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("evaluations")
            .y_desc("fitness (search split)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| fmt_num(*y))
            .draw()
            .map_err(e)?;
        let blue = series_color(0);
        if self.band.len() > 1 {
            let mut poly: Vec<(f64, f64)> = self.band.iter().map(|b| (b.0, b.2)).collect();
            poly.extend(self.band.iter().rev().map(|b| (b.0, b.1)));
            let fill = blue.mix(0.18);
            chart
                .draw_series(std::iter::once(Polygon::new(poly, fill.filled())))
                .map_err(e)?
                .label("generation q25–q75")
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], fill.filled()));
        }
        if !self.points.is_empty() {
            let grey = RGBColor(110, 110, 110).mix(0.6);
            let label = if self.failed > 0 {
                format!("candidates ({} failed, not shown)", self.failed)
            } else {
                "candidates".to_string()
            };
            let r = if self.points.len() > 2000 { 2 } else { 3 };
            chart
                .draw_series(
                    self.points
                        .iter()
                        .map(|&p| Circle::new(p, r, grey.filled())),
                )
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 3, grey.filled()));
        }
        if !self.median.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    self.median.iter().copied(),
                    blue.stroke_width(2),
                ))
                .map_err(e)?
                .label("generation median")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
                });
        }
        if !self.best.is_empty() {
            let red = series_color(1);
            chart
                .draw_series(LineSeries::new(
                    step_points(&self.best),
                    red.stroke_width(3),
                ))
                .map_err(e)?
                .label("best so far")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(3))
                });
        }
        if !self.validation.is_empty() {
            let green = series_color(2);
            chart
                .draw_series(
                    self.validation
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 7, green.filled())),
                )
                .map_err(e)?
                .label("validation of best so far")
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, green.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// A gene column `GROUP.modelM[.FILTER].PARAM` split into its parts.
#[derive(Clone, Debug, PartialEq)]
struct GeneName {
    group: String,
    model: usize,
    filter: String,
    param: String,
}

impl GeneName {
    /// `None` for columns that are not genes (`method`, `x.3`, fixed columns).
    fn parse(col: &str) -> Option<GeneName> {
        let parts: Vec<&str> = col.split('.').collect();
        if parts.len() < 3 {
            return None;
        }
        let group = parts[0];
        let is_group = group == "embed"
            || group
                .strip_prefix('g')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let model = parts[1].strip_prefix("model")?.parse::<usize>().ok()?;
        if !is_group {
            return None;
        }
        Some(GeneName {
            group: group.to_string(),
            model,
            filter: parts[2..parts.len() - 1].join("."),
            param: parts[parts.len() - 1].to_string(),
        })
    }

    /// Row order: g0, g1, ..., g10, then embed.
    fn group_key(group: &str) -> (u8, usize, String) {
        match group
            .strip_prefix('g')
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => (0, n, String::new()),
            None => (1, 0, group.to_string()),
        }
    }
}

/// The best candidate's genes laid out as layer groups × (model, filter set, param).
struct GenomeHeatmap {
    rows: Vec<String>,
    /// (model, filter, param)
    cols: Vec<(usize, String, String)>,
    values: Vec<Vec<Option<f64>>>,
    subtitle: String,
}

const CELL_H_BIG: u32 = 36;
const CELL_H_SMALL: u32 = 24;

impl GenomeHeatmap {
    fn from_best(c: &Candidates) -> Result<Option<GenomeHeatmap>, PlotError> {
        let genes: Vec<(usize, GeneName)> = c
            .table
            .headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| GeneName::parse(h).map(|g| (i, g)))
            .collect();
        if genes.is_empty() {
            return Ok(None);
        }
        let Some((line, row, fitness)) = c.best() else {
            return Ok(None);
        };
        let mut rows: Vec<String> = Vec::new();
        let mut cols: Vec<(usize, String, String)> = Vec::new();
        for (_, g) in &genes {
            if !rows.contains(&g.group) {
                rows.push(g.group.clone());
            }
            let key = (g.model, g.filter.clone(), g.param.clone());
            if !cols.contains(&key) {
                cols.push(key);
            }
        }
        rows.sort_by_key(|g| GeneName::group_key(g));
        cols.sort_by_key(|k| k.0); // stable: filter sets and params keep their log order
        let mut values = vec![vec![None; cols.len()]; rows.len()];
        for (i, g) in &genes {
            let text = field(row, *i);
            if text.is_empty() {
                continue;
            }
            let v = text.parse::<f64>().map_err(|_| {
                invalid(
                    &c.table.path,
                    format!(
                        "line {line}: gene '{}' is '{text}', not a number",
                        c.table.headers[*i]
                    ),
                )
            })?;
            let r = rows.iter().position(|x| *x == g.group).expect("collected");
            let k = cols
                .iter()
                .position(|k| k.0 == g.model && k.1 == g.filter && k.2 == g.param)
                .expect("collected");
            values[r][k] = Some(v);
        }
        let mut subtitle = c.describe(row, fitness);
        if let Some(m) = c.table.col("method") {
            let m = field(row, m);
            if !m.is_empty() {
                subtitle.push_str(&format!(", method {m}"));
            }
        }
        Ok(Some(GenomeHeatmap {
            rows,
            cols,
            values,
            subtitle,
        }))
    }

    fn has_filters(&self) -> bool {
        self.cols.iter().any(|c| !c.1.is_empty())
    }

    fn cell_w(&self) -> u32 {
        let longest = self
            .cols
            .iter()
            .map(|c| c.1.len().max(c.2.len()).max(7))
            .max()
            .unwrap_or(7) as u32;
        (longest * 9 + 14).max(76)
    }

    fn cell_h(&self) -> u32 {
        if self.rows.len() > 16 {
            CELL_H_SMALL
        } else {
            CELL_H_BIG
        }
    }

    fn header_h(&self) -> u32 {
        if self.has_filters() { 66 } else { 46 }
    }

    const LEFT: u32 = 90;
    const TOP: u32 = 78;
    const RIGHT: u32 = 130;
    const BOTTOM: u32 = 24;

    fn size(&self) -> (u32, u32) {
        let w = Self::LEFT + self.cols.len() as u32 * self.cell_w() + Self::RIGHT;
        let h = Self::TOP + self.header_h() + self.rows.len() as u32 * self.cell_h() + Self::BOTTOM;
        (w.max(640), h.max(300))
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let (w, _) = self.size();
        let center = Pos::new(HPos::Center, VPos::Center);
        let title_style = TextStyle::from(("sans-serif", 22).into_font()).pos(center);
        root.draw(&Text::new(
            title.to_string(),
            (w as i32 / 2, 22),
            title_style,
        ))
        .map_err(e)?;
        let sub_style = TextStyle::from(("sans-serif", 15).into_font()).pos(center);
        root.draw(&Text::new(
            self.subtitle.clone(),
            (w as i32 / 2, 50),
            sub_style,
        ))
        .map_err(e)?;

        let (lo, hi) = self
            .values
            .iter()
            .flatten()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(*v), b.max(*v))
            });
        let (lo, hi) = if lo > hi {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        };
        let cw = self.cell_w() as i32;
        let ch = self.cell_h() as i32;
        let x0 = Self::LEFT as i32;
        let hy = Self::TOP as i32;
        let y0 = hy + self.header_h() as i32;
        let head = TextStyle::from(("sans-serif", 14).into_font()).pos(center);
        let head_grey = TextStyle::from(("sans-serif", 13).into_font())
            .color(&RGBColor(90, 90, 90))
            .pos(center);
        for (k, (m, f, p)) in self.cols.iter().enumerate() {
            let cx = x0 + k as i32 * cw + cw / 2;
            root.draw(&Text::new(format!("model{m}"), (cx, hy + 10), head.clone()))
                .map_err(e)?;
            if self.has_filters() {
                let f = if f.is_empty() { "(all)" } else { f.as_str() };
                root.draw(&Text::new(f.to_string(), (cx, hy + 30), head_grey.clone()))
                    .map_err(e)?;
            }
            let py = hy + self.header_h() as i32 - 16;
            root.draw(&Text::new(p.clone(), (cx, py), head.clone()))
                .map_err(e)?;
            // A thicker separator where the model changes.
            if k > 0 && self.cols[k - 1].0 != *m {
                let x = x0 + k as i32 * cw;
                let y1 = y0 + self.rows.len() as i32 * ch;
                root.draw(&PathElement::new(
                    vec![(x, hy), (x, y1)],
                    BLACK.stroke_width(2),
                ))
                .map_err(e)?;
            }
        }
        let row_style = TextStyle::from(("sans-serif", 15).into_font())
            .pos(Pos::new(HPos::Right, VPos::Center));
        let cell_size = if ch >= CELL_H_BIG as i32 { 14 } else { 12 };
        for (r, group) in self.rows.iter().enumerate() {
            let y = y0 + r as i32 * ch;
            root.draw(&Text::new(
                group.clone(),
                (x0 - 10, y + ch / 2),
                row_style.clone(),
            ))
            .map_err(e)?;
            for (k, v) in self.values[r].iter().enumerate() {
                let x = x0 + k as i32 * cw;
                let (fill, text) = match v {
                    Some(v) => (viridis((v - lo) / (hi - lo)), format!("{v:.3}")),
                    None => (RGBColor(225, 225, 225), "–".to_string()),
                };
                root.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], fill.filled()))
                    .map_err(e)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cw, y + ch)],
                    WHITE.stroke_width(1),
                ))
                .map_err(e)?;
                let ink = if luminance(fill) > 0.5 { BLACK } else { WHITE };
                let style = TextStyle::from(("sans-serif", cell_size).into_font())
                    .color(&ink)
                    .pos(center);
                root.draw(&Text::new(text, (x + cw / 2, y + ch / 2), style))
                    .map_err(e)?;
            }
        }
        // Row axis title.
        let axis = TextStyle::from(("sans-serif", 13).into_font())
            .color(&RGBColor(90, 90, 90))
            .pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new("layer group", (x0 - 10, hy + 10), axis))
            .map_err(e)?;

        // Colour scale.
        let bx = x0 + self.cols.len() as i32 * cw + 30;
        let bh = (self.rows.len() as i32 * ch).max(120);
        let steps = 64;
        for s in 0..steps {
            let t0 = s as f64 / steps as f64;
            let ya = y0 + bh - ((s + 1) * bh) / steps;
            let yb = y0 + bh - (s * bh) / steps;
            root.draw(&Rectangle::new(
                [(bx, ya), (bx + 18, yb)],
                viridis(t0 + 0.5 / steps as f64).filled(),
            ))
            .map_err(e)?;
        }
        root.draw(&Rectangle::new(
            [(bx, y0), (bx + 18, y0 + bh)],
            BLACK.stroke_width(1),
        ))
        .map_err(e)?;
        let tick =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (t, v) in [(0.0, lo), (0.5, (lo + hi) / 2.0), (1.0, hi)] {
            let y = y0 + bh - (t * bh as f64) as i32;
            root.draw(&Text::new(fmt_num(v), (bx + 24, y), tick.clone()))
                .map_err(e)?;
        }
        root.draw(&Text::new(
            "value",
            (bx, hy + 10),
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(e)?;
        Ok(())
    }
}

impl TitledChart for FitnessData {
    fn draw_titled<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), String> {
        self.draw(root, title)
    }
}

impl TitledChart for GenomeHeatmap {
    fn draw_titled<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), String> {
        self.draw(root, title)
    }
}

impl TitledChart for PathChart {
    fn draw_titled<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), String> {
        self.draw(root, title)
    }
}

/// Viridis, interpolated between 9 stops; `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

fn luminance(c: RGBColor) -> f64 {
    (0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64) / 255.0
}

/// One hop of a layer path: layer `layer` of model `model`, its input scaled by `scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Hop {
    pub(crate) model: usize,
    pub(crate) layer: usize,
    pub(crate) scale: f64,
}

/// Parses a path written `m:l*scale` hop after hop (`*scale` optional, 1 when absent).
pub(crate) fn parse_path(text: &str) -> Result<Vec<Hop>, String> {
    text.split_whitespace()
        .map(|tok| {
            let (ml, scale) = match tok.split_once('*') {
                Some((ml, s)) => (
                    ml,
                    s.parse::<f64>()
                        .map_err(|_| format!("hop '{tok}': scale '{s}' is not a number"))?,
                ),
                None => (tok, 1.0),
            };
            let (m, l) = ml
                .split_once(':')
                .ok_or_else(|| format!("hop '{tok}' is not written model:layer*scale"))?;
            let model = m
                .parse()
                .map_err(|_| format!("hop '{tok}': model '{m}' is not an index"))?;
            let layer = l
                .parse()
                .map_err(|_| format!("hop '{tok}': layer '{l}' is not an index"))?;
            Ok(Hop {
                model,
                layer,
                scale,
            })
        })
        .collect()
}

/// The best candidate's layer path.
struct PathChart {
    hops: Vec<Hop>,
    models: Vec<String>,
    subtitle: String,
}

impl PathChart {
    fn from_best(c: &Candidates, models: Vec<String>) -> Result<Option<PathChart>, PlotError> {
        let Some(col) = c.table.col("path") else {
            return Ok(None);
        };
        let Some((line, row, fitness)) = c.best() else {
            return Ok(None);
        };
        let hops = parse_path(field(row, col))
            .map_err(|m| invalid(&c.table.path, format!("line {line}, column path: {m}")))?;
        if hops.is_empty() {
            return Ok(None);
        }
        Ok(Some(PathChart {
            subtitle: format!("{}, {} hops", c.describe(row, fitness), hops.len()),
            hops,
            models,
        }))
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let n = self.hops.len();
        let max_layer = self.hops.iter().map(|h| h.layer).max().unwrap_or(0);
        let (upper, lower) = root.split_vertically(58);
        let center = Pos::new(HPos::Center, VPos::Center);
        let w = upper.dim_in_pixel().0 as i32;
        upper
            .draw(&Text::new(
                title.to_string(),
                (w / 2, 20),
                TextStyle::from(("sans-serif", 22).into_font()).pos(center),
            ))
            .map_err(e)?;
        upper
            .draw(&Text::new(
                self.subtitle.clone(),
                (w / 2, 46),
                TextStyle::from(("sans-serif", 15).into_font()).pos(center),
            ))
            .map_err(e)?;
        let mut chart = ChartBuilder::on(&lower)
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.7..(n as f64 - 0.3), -0.8..(max_layer as f64 + 1.0))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("hop")
            .y_desc("layer (of its model)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(n.clamp(2, 25))
            .y_labels((max_layer + 2).clamp(2, 20))
            .x_label_formatter(&|x| int_label(*x))
            .y_label_formatter(&|y| int_label(*y))
            .draw()
            .map_err(e)?;
        let pts: Vec<(f64, f64)> = self
            .hops
            .iter()
            .enumerate()
            .map(|(i, h)| (i as f64, h.layer as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.clone(),
                RGBColor(150, 150, 150).stroke_width(1),
            ))
            .map_err(e)?;
        let n_models = self.hops.iter().map(|h| h.model).max().unwrap_or(0) + 1;
        let size = if n > 80 { 4 } else { 6 };
        for m in 0..n_models {
            let color = series_color(m);
            let mine: Vec<(f64, f64)> = self
                .hops
                .iter()
                .zip(&pts)
                .filter(|(h, _)| h.model == m)
                .map(|(_, p)| *p)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let label = match self.models.get(m).filter(|s| !s.is_empty()) {
                Some(name) => format!("model {m} ({name})"),
                None => format!("model {m}"),
            };
            let fill = color.filled();
            match m % 4 {
                0 => chart
                    .draw_series(mine.iter().map(|&p| Circle::new(p, size, fill)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, fill)),
                1 => chart
                    .draw_series(mine.iter().map(|&p| TriangleMarker::new(p, size + 1, fill)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, fill)),
                2 => chart
                    .draw_series(mine.iter().map(|&p| {
                        EmptyElement::at(p) + Rectangle::new([(-size, -size), (size, size)], fill)
                    }))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| Rectangle::new([(x + 5, y - 5), (x + 15, y + 5)], fill)),
                _ => chart
                    .draw_series(
                        mine.iter()
                            .map(|&p| Cross::new(p, size, color.stroke_width(2))),
                    )
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| Cross::new((x + 10, y), 5, color.stroke_width(2))),
            };
        }
        // Scales ≠ 1, centred above (even hops) or below (odd hops) their marker.
        let above = TextStyle::from(("sans-serif", 12).into_font())
            .color(&RGBColor(60, 60, 60))
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let below = above.clone().pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(
                self.hops
                    .iter()
                    .zip(&pts)
                    .enumerate()
                    .filter(|(_, (h, _))| (h.scale - 1.0).abs() >= 5e-4)
                    .map(|(i, (h, p))| {
                        let (dy, style) = if i % 2 == 0 {
                            (-(size + 3), above.clone())
                        } else {
                            (size + 3, below.clone())
                        };
                        EmptyElement::at(*p) + Text::new(format!("×{:.3}", h.scale), (0, dy), style)
                    }),
            )
            .map_err(e)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// An integer tick label, or nothing between integers.
fn int_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 && v >= -1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gene_names_parse_groups_models_filters_params() {
        assert_eq!(
            GeneName::parse("g0.model1.weight"),
            Some(GeneName {
                group: "g0".into(),
                model: 1,
                filter: String::new(),
                param: "weight".into()
            })
        );
        let g = GeneName::parse("embed.model0.self_attn.density").unwrap();
        assert_eq!(
            (g.group.as_str(), g.filter.as_str()),
            ("embed", "self_attn")
        );
        assert_eq!(GeneName::parse("x.3"), None);
        assert_eq!(GeneName::parse("method"), None);
        assert_eq!(GeneName::parse("merge_ms"), None);
        assert_eq!(GeneName::parse("gx.model0.weight"), None);
    }

    #[test]
    fn paths_parse_with_and_without_scales() {
        let p = parse_path("0:0*1.000 1:3*0.900 0:2").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[1].model, p[1].layer, p[1].scale), (1, 3, 0.9));
        assert_eq!(p[2].scale, 1.0);
        assert!(parse_path("0-1").unwrap_err().contains("0-1"));
    }

    #[test]
    fn step_points_hold_until_the_next_sample() {
        assert_eq!(
            step_points(&[(1.0, 0.1), (3.0, 0.5)]),
            vec![(1.0, 0.1), (3.0, 0.1), (3.0, 0.5)]
        );
    }
}
