//! Comparing runs: `evomerge compare RUN_DIR... --out DIR` groups runs by strategy and writes
//! a chart and tables of how the strategies did over their repetitions.
//!
//! A run's strategy is its optimizer (`[optimizer] optimizer` in `run.toml`: `cma`, `ga`,
//! `random`, ...), with the genome kind (`[genome] kind`) added when the runs compared differ in
//! it, and the experiment `name` in front when they differ in that (their fitness scales may
//! differ, so they are labelled apart). Runs of one strategy with different `seed`s are its
//! repetitions.
//!
//! | file | what |
//! |---|---|
//! | `compare.png`, `compare.svg` | best-so-far search fitness vs evaluations, one line per strategy: the mean over its runs, with the min–max band |
//! | `compare.csv` | one row per strategy: runs, seeds, mean evaluations, final search best, best validation, test fitness (mean and sd) |
//! | `compare_runs.csv` | one row per run: its strategy, seed, evaluations and the three fitnesses |
//! | `compare_references.csv` | one row per source, base and untuned baseline of the runs' `results.csv`: its test fitness over the runs that scored it |
//! | `compare.md` | the three tables in markdown |
//!
//! Each run's curve is the step function of `generations.csv` (`evaluations`, `best`); a `ps+dfs`
//! run's `dfs_generations.csv` follows its first stage, its evaluations counted after the first
//! stage's. Curves are averaged on the union of their runs' evaluation counts, from the first
//! count every run has reached; a run that stopped earlier keeps its final best. Validation is
//! the best `validation` a run logged; test is the `fitness` of the (last) `results.csv` row of
//! kind `best` and split `test`. The references are the other `test` rows of `results.csv`
//! (kinds `source`, `base`, `baseline`), grouped by name and kind: the sources the runs merged
//! and the untuned baselines, whose numbers vary with the run seed where they are random
//! (DARE's masks). Standard deviations are sample ones (n − 1), empty for one run.
//!
//! Not for: plotting one run (see [`crate::plot`]), significance tests.
//!
//! ```no_run
//! use std::path::PathBuf;
//! let runs = vec![PathBuf::from("results/demo/cma-1"), PathBuf::from("results/demo/ga-1")];
//! let summary = evomerge_runner::compare::compare_runs(&runs, "results/demo/compare".as_ref())?;
//! for s in &summary.strategies {
//!     println!("{}: {} runs", s.label, s.runs);
//! }
//! # Ok::<(), evomerge_runner::plot::PlotError>(())
//! ```

use crate::log::{GenerationRow, ResultRow};
use crate::plot::{
    Chart, PlotError, fitness_axes, padded_range, series_color, step_points, write_chart,
};
use evomerge_checkpoint::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Mean, sample standard deviation (`None` for one value) and count of some runs' numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub sd: Option<f64>,
    pub n: usize,
}

impl Stat {
    /// `None` when there are no values.
    pub fn of(values: &[f64]) -> Option<Stat> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        // equal values have sd 0 exactly (their float mean may differ from them in the last bit)
        let equal = values.iter().all(|v| *v == values[0]);
        let sd = (n > 1).then(|| {
            if equal {
                0.0
            } else {
                (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            }
        });
        Some(Stat { mean, sd, n })
    }

    /// `0.7000 ± 0.0100`, with `(n of N runs)` when only some runs have the number.
    fn text(&self, runs: usize) -> String {
        let mut s = fmt4(self.mean);
        if let Some(sd) = self.sd {
            s.push_str(&format!(" ± {}", fmt4(sd)));
        }
        if self.n < runs {
            s.push_str(&format!(" ({} of {runs} runs)", self.n));
        }
        s
    }
}

fn fmt4(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// One run as the comparison sees it.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The run folder, as given.
    pub dir: PathBuf,
    /// `[run] id` of run.toml, else the folder name.
    pub id: String,
    /// The experiment `name`.
    pub experiment: String,
    /// The strategy label this run is grouped under.
    pub strategy: String,
    pub optimizer: String,
    pub genome_kind: Option<String>,
    pub seed: Option<i64>,
    /// Evaluations done (the last `evaluations` logged, all stages); `None` before the first generation.
    pub evaluations: Option<f64>,
    /// Final best search fitness.
    pub search_best: Option<f64>,
    /// Best validation fitness logged.
    pub validation: Option<f64>,
    /// Test fitness of the best recipe (results.csv).
    pub test: Option<f64>,
    /// The other test rows of results.csv: sources, base, untuned baselines.
    pub references: Vec<Reference>,
}

/// A test row of a run's results.csv that is not the best recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub name: String,
    /// `source`, `base` or `baseline`.
    pub kind: String,
    pub test: f64,
}

/// One reference over the runs that scored it.
#[derive(Clone, Debug)]
pub struct ReferenceSummary {
    pub name: String,
    pub kind: String,
    pub test: Stat,
}

/// One strategy over its runs.
#[derive(Clone, Debug)]
pub struct StrategySummary {
    pub label: String,
    pub runs: usize,
    /// The runs' seeds, in the order the runs were given (runs without a seed are left out).
    pub seeds: Vec<i64>,
    /// Mean evaluations over the runs that logged a generation.
    pub evaluations: Option<f64>,
    pub search_best: Option<Stat>,
    pub validation: Option<Stat>,
    pub test: Option<Stat>,
}

/// What [`compare_runs`] found and wrote.
#[derive(Clone, Debug)]
pub struct ComparisonSummary {
    /// In the order their first run was given.
    pub strategies: Vec<StrategySummary>,
    /// In the order given.
    pub runs: Vec<RunSummary>,
    /// Sources and baselines, in the order they first appear.
    pub references: Vec<ReferenceSummary>,
    /// The files written.
    pub written: Vec<PathBuf>,
}

/// A run read from its folder: the summary plus its best-so-far curve.
struct Run {
    summary: RunSummary,
    curve: Vec<(f64, f64)>,
}

/// Compares the runs in `run_dirs` and writes `compare.{png,svg,csv,md}` and
/// `compare_runs.csv` into `out_dir` (created if missing). The chart is skipped when no run has
/// logged a generation yet.
pub fn compare_runs(run_dirs: &[PathBuf], out_dir: &Path) -> Result<ComparisonSummary, PlotError> {
    if run_dirs.is_empty() {
        return Err(PlotError::Invalid {
            path: out_dir.to_path_buf(),
            message: "no run folders to compare: give one or more OUTPUT/NAME/RUN_ID folders"
                .into(),
        });
    }
    let mut runs = run_dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<Run>, PlotError>>()?;
    let names_differ = differ(runs.iter().map(|r| r.summary.experiment.as_str()));
    let kinds_differ = differ(
        runs.iter()
            .map(|r| r.summary.genome_kind.as_deref().unwrap_or("")),
    );
    for r in &mut runs {
        let s = &mut r.summary;
        let mut label = String::new();
        if names_differ {
            label.push_str(&format!("{}: ", s.experiment));
        }
        label.push_str(&s.optimizer);
        if kinds_differ {
            label.push_str(&format!(" ({})", s.genome_kind.as_deref().unwrap_or("?")));
        }
        s.strategy = label;
    }
    let mut labels: Vec<String> = Vec::new();
    for r in &runs {
        if !labels.contains(&r.summary.strategy) {
            labels.push(r.summary.strategy.clone());
        }
    }
    let mut strategies = Vec::new();
    let mut curves = Vec::new();
    for label in &labels {
        let members: Vec<&Run> = runs
            .iter()
            .filter(|r| &r.summary.strategy == label)
            .collect();
        let collect = |f: fn(&RunSummary) -> Option<f64>| -> Vec<f64> {
            members.iter().filter_map(|r| f(&r.summary)).collect()
        };
        let evals = collect(|s| s.evaluations);
        strategies.push(StrategySummary {
            label: label.clone(),
            runs: members.len(),
            seeds: members.iter().filter_map(|r| r.summary.seed).collect(),
            evaluations: Stat::of(&evals).map(|s| s.mean),
            search_best: Stat::of(&collect(|s| s.search_best)),
            validation: Stat::of(&collect(|s| s.validation)),
            test: Stat::of(&collect(|s| s.test)),
        });
        let run_curves: Vec<&[(f64, f64)]> = members
            .iter()
            .map(|r| r.curve.as_slice())
            .filter(|c| !c.is_empty())
            .collect();
        if let Some(c) = mean_curve(&run_curves) {
            curves.push(StrategyCurve {
                label: format!("{label} ({} runs)", run_curves.len()),
                points: c,
            });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|source| PlotError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    if !curves.is_empty() {
        let title = if names_differ {
            "best-so-far search fitness".to_string()
        } else {
            format!("{}: best-so-far search fitness", runs[0].summary.experiment)
        };
        written.extend(write_chart(
            out_dir,
            "compare",
            &CompareChart { title, curves },
        )?);
    }
    let runs: Vec<RunSummary> = runs.into_iter().map(|r| r.summary).collect();
    let references = reference_summaries(&runs);
    let csv_path = out_dir.join("compare.csv");
    write_atomic(&csv_path, &strategy_csv(&strategies, &csv_path)?)?;
    written.push(csv_path);
    let runs_path = out_dir.join("compare_runs.csv");
    write_atomic(&runs_path, &runs_csv(&runs, &runs_path)?)?;
    written.push(runs_path);
    let refs_path = out_dir.join("compare_references.csv");
    write_atomic(&refs_path, &references_csv(&references, &refs_path)?)?;
    written.push(refs_path);
    let md_path = out_dir.join("compare.md");
    write_atomic(
        &md_path,
        markdown(&strategies, &runs, &references).as_bytes(),
    )?;
    written.push(md_path);
    Ok(ComparisonSummary {
        strategies,
        runs,
        references,
        written,
    })
}

fn differ<'a>(mut it: impl Iterator<Item = &'a str>) -> bool {
    match it.next() {
        Some(first) => it.any(|x| x != first),
        None => false,
    }
}

fn read_run(dir: &Path) -> Result<Run, PlotError> {
    let toml_path = dir.join("run.toml");
    if !toml_path.is_file() {
        return Err(PlotError::NotARun {
            dir: dir.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(&toml_path).map_err(|source| PlotError::Io {
        path: toml_path.clone(),
        source,
    })?;
    let bad = |message: String| PlotError::Invalid {
        path: toml_path.clone(),
        message,
    };
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(format!("not valid TOML: {e}")))?;
    let optimizer = doc
        .get("optimizer")
        .and_then(|o| o.get("optimizer"))
        .and_then(|o| o.as_str())
        .ok_or_else(|| {
            bad("no optimizer name: expected `optimizer = \"cma\"` (or ga, random, ...) in its [optimizer] table".into())
        })?
        .to_string();
    let genome_kind = doc
        .get("genome")
        .and_then(|g| g.get("kind"))
        .and_then(|k| k.as_str())
        .map(str::to_string);
    let seed = match doc.get("seed") {
        None => None,
        Some(v) => Some(
            v.as_integer()
                .ok_or_else(|| bad(format!("seed is {v}, not an integer")))?,
        ),
    };
    let folder = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run")
        .to_string();
    let experiment = doc
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| folder.clone());
    let id = doc
        .get("run")
        .and_then(|r| r.get("id"))
        .and_then(|i| i.as_str())
        .map(str::to_string)
        .unwrap_or(folder);

    // The best-so-far curve over all stages, and the best validation.
    let mut curve: Vec<(f64, f64)> = Vec::new();
    let mut evaluations = None;
    let mut validation: Option<f64> = None;
    let mut offset = 0.0;
    for file in ["generations.csv", "dfs_generations.csv"] {
        let Some(gens) = GenerationRow::read_all(&dir.join(file))? else {
            continue;
        };
        for g in &gens {
            let e = offset + g.evaluations as f64;
            evaluations = Some(e);
            if let Some(b) = g.best {
                curve.push((e, b));
            }
            if let Some(v) = g.validation {
                validation = Some(validation.map_or(v, |x: f64| x.max(v)));
            }
        }
        if let Some(e) = evaluations {
            offset = e;
        }
    }
    let search_best = curve.last().map(|p| p.1);
    let (test, references) = read_results(&dir.join("results.csv"))?;
    Ok(Run {
        summary: RunSummary {
            dir: dir.to_path_buf(),
            id,
            experiment,
            strategy: String::new(),
            optimizer,
            genome_kind,
            seed,
            evaluations,
            search_best,
            validation,
            test,
            references,
        },
        curve,
    })
}

/// The test fitness of the best recipe (the last `results.csv` row of kind `best`, split
/// `test`) and the other test rows with a fitness.
fn read_results(path: &Path) -> Result<(Option<f64>, Vec<Reference>), PlotError> {
    let Some(rows) = ResultRow::read_all(path)? else {
        return Ok((None, Vec::new()));
    };
    let tests = || {
        rows.iter()
            .filter(|r| r.split == evomerge_eval::Split::Test)
    };
    let best = tests()
        .filter(|r| r.kind == "best")
        .filter_map(|r| r.fitness)
        .next_back();
    let references = tests()
        .filter(|r| r.kind != "best")
        .filter_map(|r| {
            r.fitness.map(|test| Reference {
                name: r.name.clone(),
                kind: r.kind.clone(),
                test,
            })
        })
        .collect();
    Ok((best, references))
}

/// The runs' references grouped by name and kind, in the order they first appear.
fn reference_summaries(runs: &[RunSummary]) -> Vec<ReferenceSummary> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in runs.iter().flat_map(|r| &r.references) {
        if !keys.contains(&(r.name.as_str(), r.kind.as_str())) {
            keys.push((&r.name, &r.kind));
        }
    }
    keys.into_iter()
        .filter_map(|(name, kind)| {
            let values: Vec<f64> = runs
                .iter()
                .flat_map(|r| &r.references)
                .filter(|r| r.name == name && r.kind == kind)
                .map(|r| r.test)
                .collect();
            Stat::of(&values).map(|test| ReferenceSummary {
                name: name.to_string(),
                kind: kind.to_string(),
                test,
            })
        })
        .collect()
}

/// Value of a best-so-far step function at `x`: the last sample at or before `x`.
fn step_at(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    curve.iter().take_while(|p| p.0 <= x).last().map(|p| p.1)
}

/// One point of a strategy's mean curve.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MeanPoint {
    x: f64,
    mean: f64,
    min: f64,
    max: f64,
}

/// Mean, min and max of the runs' step functions on the union of their evaluation counts,
/// from the first count every run has reached.
fn mean_curve(curves: &[&[(f64, f64)]]) -> Option<Vec<MeanPoint>> {
    let start = curves
        .iter()
        .map(|c| c.first().map(|p| p.0))
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .fold(f64::NEG_INFINITY, f64::max);
    if !start.is_finite() {
        return None;
    }
    let mut grid: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.iter().map(|p| p.0))
        .filter(|x| *x >= start)
        .collect();
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    let points: Vec<MeanPoint> = grid
        .into_iter()
        .filter_map(|x| {
            let vals = curves
                .iter()
                .map(|c| step_at(c, x))
                .collect::<Option<Vec<f64>>>()?;
            let n = vals.len() as f64;
            Some(MeanPoint {
                x,
                mean: vals.iter().sum::<f64>() / n,
                min: vals.iter().copied().fold(f64::INFINITY, f64::min),
                max: vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            })
        })
        .collect();
    (!points.is_empty()).then_some(points)
}

struct StrategyCurve {
    label: String,
    points: Vec<MeanPoint>,
}

struct CompareChart {
    title: String,
    curves: Vec<StrategyCurve>,
}

impl Chart for CompareChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let all = || self.curves.iter().flat_map(|c| c.points.iter());
        let (y0, y1) = padded_range(all().flat_map(|p| [p.min, p.max]), 0.06)
            .ok_or("no finite fitness to draw")?;
        let x_max = all().map(|p| p.x).fold(1.0_f64, f64::max);
        let mut chart = fitness_axes(
            root,
            &self.title,
            x_max,
            (y0, y1),
            "best search fitness so far (mean over runs)",
        )?;
        for (i, c) in self.curves.iter().enumerate() {
            let color = series_color(i);
            let upper = step_points(&c.points.iter().map(|p| (p.x, p.max)).collect::<Vec<_>>());
            let lower = step_points(&c.points.iter().map(|p| (p.x, p.min)).collect::<Vec<_>>());
            if c.points.iter().any(|p| p.max > p.min) {
                let mut poly = upper;
                poly.extend(lower.into_iter().rev());
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        poly,
                        color.mix(0.15).filled(),
                    )))
                    .map_err(e)?;
            }
        }
        for (i, c) in self.curves.iter().enumerate() {
            let color = series_color(i);
            let mean = step_points(&c.points.iter().map(|p| (p.x, p.mean)).collect::<Vec<_>>());
            chart
                .draw_series(LineSeries::new(mean, color.stroke_width(3)))
                .map_err(e)?
                .label(c.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        let note = TextStyle::from(("sans-serif", 13).into_font()).color(&RGBColor(90, 90, 90));
        let (w, h) = root.dim_in_pixel();
        root.draw(&Text::new(
            "line: mean over runs; band: min–max",
            (w as i32 - 330, h as i32 - 18),
            note,
        ))
        .map_err(e)?;
        Ok(())
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn csv_bytes(path: &Path, header: &[&str], rows: Vec<Vec<String>>) -> Result<Vec<u8>, PlotError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| PlotError::Invalid {
        path: path.to_path_buf(),
        message: format!("writing CSV: {e}"),
    };
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(&r).map_err(err)?;
    }
    w.into_inner().map_err(|e| PlotError::Invalid {
        path: path.to_path_buf(),
        message: format!("writing CSV: {e}"),
    })
}

fn seeds_text(seeds: &[i64]) -> String {
    seeds
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn strategy_csv(strategies: &[StrategySummary], path: &Path) -> Result<Vec<u8>, PlotError> {
    let stat = |s: &Option<Stat>| stat_cells(s.as_ref());
    let rows = strategies
        .iter()
        .map(|s| {
            let mut r = vec![
                s.label.clone(),
                s.runs.to_string(),
                seeds_text(&s.seeds),
                opt(s.evaluations),
            ];
            r.extend(stat(&s.search_best));
            r.extend(stat(&s.validation));
            r.extend(stat(&s.test));
            r
        })
        .collect();
    csv_bytes(
        path,
        &[
            "strategy",
            "runs",
            "seeds",
            "evaluations_mean",
            "search_best_mean",
            "search_best_sd",
            "search_best_runs",
            "validation_mean",
            "validation_sd",
            "validation_runs",
            "test_mean",
            "test_sd",
            "test_runs",
        ],
        rows,
    )
}

/// The csv cells of a statistic: mean, sd, count (empty, empty, 0 when there is none).
fn stat_cells(s: Option<&Stat>) -> [String; 3] {
    [
        opt(s.map(|s| s.mean)),
        opt(s.and_then(|s| s.sd)),
        s.map(|s| s.n).unwrap_or(0).to_string(),
    ]
}

fn references_csv(refs: &[ReferenceSummary], path: &Path) -> Result<Vec<u8>, PlotError> {
    let rows = refs
        .iter()
        .map(|r| {
            let mut row = vec![r.name.clone(), r.kind.clone()];
            row.extend(stat_cells(Some(&r.test)));
            row
        })
        .collect();
    csv_bytes(
        path,
        &["name", "kind", "test_mean", "test_sd", "test_runs"],
        rows,
    )
}

fn runs_csv(runs: &[RunSummary], path: &Path) -> Result<Vec<u8>, PlotError> {
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                r.strategy.clone(),
                r.experiment.clone(),
                r.id.clone(),
                r.seed.map(|s| s.to_string()).unwrap_or_default(),
                r.optimizer.clone(),
                r.genome_kind.clone().unwrap_or_default(),
                opt(r.evaluations),
                opt(r.search_best),
                opt(r.validation),
                opt(r.test),
                r.dir.display().to_string(),
            ]
        })
        .collect();
    csv_bytes(
        path,
        &[
            "strategy",
            "experiment",
            "run",
            "seed",
            "optimizer",
            "genome",
            "evaluations",
            "search_best",
            "validation",
            "test",
            "dir",
        ],
        rows,
    )
}

/// Escapes `|` so a label cannot break a markdown table.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn markdown(
    strategies: &[StrategySummary],
    runs: &[RunSummary],
    references: &[ReferenceSummary],
) -> String {
    use std::fmt::Write as _;
    let mut md = String::from("# Comparison\n\n");
    md.push_str(
        "Search best: final best-so-far search fitness; validation: best validation fitness \
         logged; test: the best recipe's test fitness (results.csv). Mean ± sample sd over runs.\n\n",
    );
    md.push_str(
        "| strategy | runs | seeds | evaluations (mean) | search best | validation | test |\n",
    );
    md.push_str("|---|---:|---|---:|---|---|---|\n");
    let stat = |s: &Option<Stat>, runs: usize| s.as_ref().map(|s| s.text(runs)).unwrap_or_default();
    for s in strategies {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            md_cell(&s.label),
            s.runs,
            seeds_text(&s.seeds),
            s.evaluations.map(|e| format!("{e:.0}")).unwrap_or_default(),
            stat(&s.search_best, s.runs),
            stat(&s.validation, s.runs),
            stat(&s.test, s.runs),
        );
    }
    if !references.is_empty() {
        md.push_str(
            "\n## Sources and baselines\n\nTest fitness of the other rows of the runs' results.csv \
             (mean ± sample sd over the runs that scored the row; runs that share a source score \
             it the same).\n\n| model | kind | runs | test |\n|---|---|---:|---|\n",
        );
        for r in references {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                md_cell(&r.name),
                md_cell(&r.kind),
                r.test.n,
                r.test.text(r.test.n),
            );
        }
    }
    md.push_str("\n## Runs\n\n");
    md.push_str(
        "| strategy | run | seed | evaluations | search best | validation | test | folder |\n",
    );
    md.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    let num = |v: Option<f64>| v.map(fmt4).unwrap_or_default();
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            md_cell(&r.strategy),
            md_cell(&r.id),
            r.seed.map(|s| s.to_string()).unwrap_or_default(),
            r.evaluations.map(|e| format!("{e:.0}")).unwrap_or_default(),
            num(r.search_best),
            num(r.validation),
            num(r.test),
            md_cell(&r.dir.display().to_string()),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_mean_and_sample_sd() {
        let s = Stat::of(&[1.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.n), (2.0, 2));
        assert!((s.sd.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[5.0]).unwrap().sd, None);
        assert_eq!(Stat::of(&[0.1, 0.1, 0.1]).unwrap().sd, Some(0.0));
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn mean_curve_steps_on_the_union_grid_and_carries_finished_runs() {
        let a = [(10.0, 0.1), (20.0, 0.3), (30.0, 0.5)];
        let b = [(15.0, 0.2), (25.0, 0.4)];
        let m = mean_curve(&[&a, &b]).unwrap();
        let xs: Vec<f64> = m.iter().map(|p| p.x).collect();
        assert_eq!(xs, vec![15.0, 20.0, 25.0, 30.0]);
        let means: Vec<f64> = m.iter().map(|p| p.mean).collect();
        let want = [0.15, 0.25, 0.35, 0.45];
        for (g, w) in means.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{means:?}");
        }
        assert_eq!((m[3].min, m[3].max), (0.4, 0.5));
    }
}
