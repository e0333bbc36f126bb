//! The run's CSV logs, as typed rows: one schema that writes and reads `candidates.csv`,
//! `dfs_candidates.csv`, `generations.csv`, `dfs_generations.csv` and `results.csv` (the
//! crate docs list their columns). The search loop writes [`CandidateRow`]s and
//! [`GenerationRow`]s; resume, the plots and `compare` read them back through
//! [`CandidateTable`] / [`GenerationRow::read_all`] / [`ResultRow::read_all`] and never look at
//! a column by name.
//!
//! Files are appended row by row and flushed to the OS after each ([`CsvAppender`]); a last
//! line cut by a crash is ignored by the readers and cut off when the file is reopened for
//! appending. Readers accept the older layouts (a `generations.csv` without `pipeline_ms` and
//! `overhead_ms`, a `candidates.csv` without the `x.*` columns).

use crate::RunError;
use crate::stage::StageKind;
use evomerge_eval::Split;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A log that is not what `evomerge run` writes (names the file and what is wrong).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl LogError {
    fn invalid(path: &Path, message: impl Into<String>) -> LogError {
        LogError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl From<LogError> for RunError {
    fn from(e: LogError) -> RunError {
        match e {
            LogError::Io { path, source } => RunError::Io { path, source },
            e @ LogError::Invalid { .. } => RunError::Config(e.to_string()),
        }
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn csv_at(path: &Path) -> impl Fn(csv::Error) -> LogError + '_ {
    move |e| match e.into_kind() {
        csv::ErrorKind::Io(source) => LogError::Io {
            path: path.to_path_buf(),
            source,
        },
        kind => LogError::invalid(path, format!("{kind:?}")),
    }
}

/// How a candidate's row came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Built and scored.
    Ok,
    /// Could not be decoded, built or scored (`error` says why).
    Failed,
    /// Answered from the evaluation cache (an identical candidate was scored before).
    Cached,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Cached => "cached",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        match s {
            "ok" => Some(Status::Ok),
            "failed" => Some(Status::Failed),
            "cached" => Some(Status::Cached),
            _ => None,
        }
    }
}

/// The decoded parameters of a candidate, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Params {
    /// A parameter-space candidate: one value per gene (in the columns' order; `None` when
    /// not decoded) and the merge method.
    Ps {
        genes: Vec<Option<f64>>,
        method: String,
    },
    /// A data-flow candidate: its hop count and its path written `m:l*scale` hop after hop.
    Dfs { hops: usize, path: String },
    /// Nothing decoded (the candidate failed to decode).
    None,
}

/// The layout of a candidates log: which decoded columns it has, and how many raw genome
/// values (`x.0 .. x.{n-1}`; none when the genome has more than 256 values).
#[derive(Debug, Clone, PartialEq)]
pub enum CandidateColumns {
    /// Parameter space: the gene column names (`g0.model1.weight`, ...) before `method`.
    Ps { genes: Vec<String>, dims: usize },
    /// Data flow: `hops` and `path`.
    Dfs { dims: usize },
}

/// Columns every candidates log starts with.
pub const CANDIDATE_FIXED: [&str; 10] = [
    "stage",
    "generation",
    "index",
    "status",
    "fitness",
    "metrics",
    "merge_ms",
    "eval_ms",
    "key",
    "error",
];

/// Genomes up to this many values log them raw (`x.*` columns).
pub const MAX_LOGGED_DIMS: usize = 256;

impl CandidateColumns {
    /// The layout for a stage of `dims` genome values; `genes` are a PS genome's gene names.
    pub fn new(stage: StageKind, genes: Vec<String>, dims: usize) -> CandidateColumns {
        let dims = if dims <= MAX_LOGGED_DIMS { dims } else { 0 };
        match stage {
            StageKind::Ps => CandidateColumns::Ps { genes, dims },
            StageKind::Dfs => CandidateColumns::Dfs { dims },
        }
    }

    pub fn dims(&self) -> usize {
        match self {
            CandidateColumns::Ps { dims, .. } | CandidateColumns::Dfs { dims } => *dims,
        }
    }

    /// The gene names (empty for data-flow logs).
    pub fn genes(&self) -> &[String] {
        match self {
            CandidateColumns::Ps { genes, .. } => genes,
            CandidateColumns::Dfs { .. } => &[],
        }
    }

    /// The header line's fields.
    pub fn header(&self) -> Vec<String> {
        let mut h: Vec<String> = CANDIDATE_FIXED.iter().map(|s| s.to_string()).collect();
        match self {
            CandidateColumns::Ps { genes, .. } => {
                h.extend(genes.iter().cloned());
                h.push("method".into());
            }
            CandidateColumns::Dfs { .. } => {
                h.push("hops".into());
                h.push("path".into());
            }
        }
        h.extend((0..self.dims()).map(|i| format!("x.{i}")));
        h
    }

    /// The layout a header describes.
    fn from_header(path: &Path, header: &[String]) -> Result<CandidateColumns, LogError> {
        for (i, want) in CANDIDATE_FIXED.iter().enumerate() {
            if header.get(i).map(String::as_str) != Some(*want) {
                return Err(LogError::invalid(
                    path,
                    format!(
                        "no column '{want}' at position {} (its columns are: {}); is this a file evomerge run wrote?",
                        i + 1,
                        header.join(", ")
                    ),
                ));
            }
        }
        let rest = &header[CANDIDATE_FIXED.len()..];
        let dims = rest.iter().filter(|c| c.starts_with("x.")).count();
        let named: Vec<&String> = rest.iter().filter(|c| !c.starts_with("x.")).collect();
        match named.as_slice() {
            [h, p] if *h == "hops" && *p == "path" => Ok(CandidateColumns::Dfs { dims }),
            [genes @ .., m] if *m == "method" => Ok(CandidateColumns::Ps {
                genes: genes.iter().map(|g| g.to_string()).collect(),
                dims,
            }),
            _ => Err(LogError::invalid(
                path,
                format!(
                    "after `error` it has {} instead of the decoded columns of a stage (genes then `method`, or `hops,path`)",
                    named
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

/// One row of a candidates log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRow {
    pub stage: StageKind,
    pub generation: u64,
    /// Within the generation.
    pub index: usize,
    pub status: Status,
    /// The search fitness; `None` when failed.
    pub fitness: Option<f64>,
    /// The evaluators' metrics.
    pub metrics: BTreeMap<String, f64>,
    pub merge_ms: f64,
    pub eval_ms: f64,
    /// Hash of the decoded candidate (the cache key); empty when it did not decode.
    pub key: String,
    /// Why it failed (on one line).
    pub error: Option<String>,
    pub params: Params,
    /// The raw genome values (empty when not logged).
    pub x: Vec<f64>,
}

/// `v` as the logs write a float (shortest text that reads back; empty for none).
pub(crate) fn fmt_f(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// A finite number, or `None` for empty, `nan` or unparsable text.
fn number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

impl CandidateRow {
    fn record(&self, columns: &CandidateColumns) -> Vec<String> {
        let mut row = vec![
            self.stage.to_string(),
            self.generation.to_string(),
            self.index.to_string(),
            self.status.as_str().to_string(),
            fmt_f(self.fitness),
            serde_json::to_string(&self.metrics).unwrap_or_default(),
            format!("{:.1}", self.merge_ms),
            format!("{:.1}", self.eval_ms),
            self.key.clone(),
            self.error.clone().unwrap_or_default().replace('\n', " "),
        ];
        match (&self.params, columns) {
            (Params::Ps { genes, method }, CandidateColumns::Ps { .. }) => {
                row.extend(
                    genes
                        .iter()
                        .map(|v| v.map(|v| format!("{v:.6}")).unwrap_or_default()),
                );
                row.push(method.clone());
            }
            (Params::Dfs { hops, path }, CandidateColumns::Dfs { .. }) => {
                row.push(hops.to_string());
                row.push(path.clone());
            }
            (_, c) => {
                let n = match c {
                    CandidateColumns::Ps { genes, .. } => genes.len() + 1,
                    CandidateColumns::Dfs { .. } => 2,
                };
                row.extend(std::iter::repeat_n(String::new(), n));
            }
        }
        if columns.dims() > 0 {
            row.extend(self.x.iter().map(|v| format!("{v}")));
        }
        row
    }

    /// A row read back, or why it cannot be trusted. `Err(None)`: not a candidate row at all
    /// (no generation or index).
    fn parse(
        columns: &CandidateColumns,
        rec: &csv::StringRecord,
    ) -> Result<CandidateRow, (Option<(u64, usize)>, String)> {
        let f = |i: usize| rec.get(i).unwrap_or("").trim();
        let (Ok(generation), Ok(index)) = (f(1).parse::<u64>(), f(2).parse::<usize>()) else {
            return Err((None, "no generation or index".into()));
        };
        let at = Some((generation, index));
        let stage: StageKind = f(0)
            .parse()
            .map_err(|e: String| (at, format!("stage: {e}")))?;
        let status = Status::parse(f(3))
            .ok_or_else(|| (at, format!("status `{}` is not ok, failed or cached", f(3))))?;
        let fitness = match f(4) {
            "" if status == Status::Ok => return Err((at, "status `ok` without a fitness".into())),
            "" => None,
            text => match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                Ok(_) => return Err((at, format!("fitness `{text}` is not a finite number"))),
                Err(_) => return Err((at, format!("fitness `{text}` is not a number"))),
            },
        };
        let rest = CANDIDATE_FIXED.len();
        let params = match columns {
            CandidateColumns::Ps { genes, .. } => {
                let method = f(rest + genes.len()).to_string();
                let values: Vec<&str> = (0..genes.len()).map(|i| f(rest + i)).collect();
                if method.is_empty() && values.iter().all(|v| v.is_empty()) {
                    Params::None
                } else {
                    let mut out = Vec::new();
                    for (name, v) in genes.iter().zip(values) {
                        out.push(match v {
                            "" => None,
                            v => Some(v.parse::<f64>().map_err(|_| {
                                (at, format!("gene '{name}' is '{v}', not a number"))
                            })?),
                        });
                    }
                    Params::Ps { genes: out, method }
                }
            }
            CandidateColumns::Dfs { .. } => match (f(rest), f(rest + 1)) {
                ("", "") => Params::None,
                (hops, path) => Params::Dfs {
                    hops: hops.parse().unwrap_or(0),
                    path: path.to_string(),
                },
            },
        };
        let named = match columns {
            CandidateColumns::Ps { genes, .. } => genes.len() + 1,
            CandidateColumns::Dfs { .. } => 2,
        };
        let x = (0..columns.dims())
            .filter_map(|i| f(rest + named + i).parse::<f64>().ok())
            .collect();
        Ok(CandidateRow {
            stage,
            generation,
            index,
            status,
            fitness,
            metrics: serde_json::from_str(f(5)).unwrap_or_default(),
            merge_ms: number(f(6)).unwrap_or(0.0),
            eval_ms: number(f(7)).unwrap_or(0.0),
            key: f(8).to_string(),
            error: Some(f(9).to_string()).filter(|e| !e.is_empty()),
            params,
            x,
        })
    }

    /// The fitness of a row that counts in the charts: scored or cached, with a number.
    pub fn valid_fitness(&self) -> Option<f64> {
        match self.status {
            Status::Ok | Status::Cached => self.fitness,
            Status::Failed => None,
        }
    }
}

/// A candidates log row as read back: the row, or (for a damaged row) its place and why.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Its line in the file (1 = the header).
    pub line: u64,
    pub row: Result<CandidateRow, Damaged>,
}

/// A row that cannot be trusted (a fitness that is not a finite number, an `ok` row without
/// one); resume evaluates its candidate again.
#[derive(Debug, Clone)]
pub struct Damaged {
    pub generation: u64,
    pub index: usize,
    pub why: String,
}

impl Logged {
    /// (generation, index) of the row, damaged or not.
    pub fn place(&self) -> (u64, usize) {
        match &self.row {
            Ok(r) => (r.generation, r.index),
            Err(d) => (d.generation, d.index),
        }
    }
}

/// A whole candidates log.
#[derive(Debug, Clone)]
pub struct CandidateTable {
    pub path: PathBuf,
    pub columns: CandidateColumns,
    /// Complete rows in file order (rows without a generation and index are left out).
    pub rows: Vec<Logged>,
}

/// A log's header and complete rows.
type Lines = (Vec<String>, Vec<csv::StringRecord>);

/// The complete lines of a log (a last line without its newline is still being written);
/// `None` when the file does not exist or has no complete header yet.
fn complete_lines(path: &Path) -> Result<Option<Lines>, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
        return Ok(None);
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(&bytes[..=end]);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| LogError::invalid(path, format!("cannot read the CSV header: {e}")))?
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            LogError::invalid(path, format!("line {line}: {e}"))
        })?;
        // A row shorter than the header was cut while being written.
        if rec.len() >= header.len() {
            rows.push(rec);
        }
    }
    Ok(Some((header, rows)))
}

impl CandidateTable {
    /// Read a candidates log; `Ok(None)` when it does not exist or is still empty.
    pub fn read(path: &Path) -> Result<Option<CandidateTable>, LogError> {
        let Some((header, records)) = complete_lines(path)? else {
            return Ok(None);
        };
        let columns = CandidateColumns::from_header(path, &header)?;
        let rows = records
            .iter()
            .filter_map(|rec| {
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                match CandidateRow::parse(&columns, rec) {
                    Ok(row) => Some(Logged { line, row: Ok(row) }),
                    Err((Some((generation, index)), why)) => Some(Logged {
                        line,
                        row: Err(Damaged {
                            generation,
                            index,
                            why,
                        }),
                    }),
                    Err((None, _)) => None,
                }
            })
            .collect();
        Ok(Some(CandidateTable {
            path: path.to_path_buf(),
            columns,
            rows,
        }))
    }

    /// The sound rows, in file order.
    pub fn sound(&self) -> impl Iterator<Item = (u64, &CandidateRow)> {
        self.rows
            .iter()
            .filter_map(|l| l.row.as_ref().ok().map(|r| (l.line, r)))
    }

    /// The row with the highest valid fitness (the first of ties) and its line.
    pub fn best(&self) -> Option<(u64, &CandidateRow, f64)> {
        let mut best: Option<(u64, &CandidateRow, f64)> = None;
        for (line, row) in self.sound() {
            if let Some(f) = row.valid_fitness()
                && best.is_none_or(|b| f > b.2)
            {
                best = Some((line, row, f));
            }
        }
        best
    }
}

/// One row of a generations log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRow {
    pub stage: StageKind,
    pub generation: u64,
    /// Cumulative, this stage.
    pub evaluations: u64,
    /// Best search fitness so far.
    pub best: Option<f64>,
    /// Of the generation's valid fitnesses: best, mean, quartiles.
    pub gen_best: Option<f64>,
    pub mean: Option<f64>,
    pub q25: Option<f64>,
    pub median: Option<f64>,
    pub q75: Option<f64>,
    /// The optimizer's step size, if it has one.
    pub sigma: Option<f64>,
    pub failed: usize,
    /// Cumulative wall time of the run.
    pub elapsed_s: f64,
    /// Validation fitness of the best-so-far when it was scored this generation.
    pub validation: Option<f64>,
    /// Merging and scoring wall time (`None` in logs older than the column).
    pub pipeline_ms: Option<f64>,
    /// Everything else (ask/tell, decoding, the cache, rows, the previous state write).
    pub overhead_ms: Option<f64>,
    /// With `[execution] devices`: the mean over devices of busy time / the generation's
    /// evaluation wall time (`device_util`), and each device's busy seconds
    /// (`device_busy_s`, written `cuda:0=1.234 cuda:1=1.180`). Logs of runs without devices
    /// have neither column.
    #[serde(default)]
    pub device_util: Option<f64>,
    #[serde(default)]
    pub device_busy_s: Vec<(String, f64)>,
}

/// The columns a generations log of a run with `[execution] devices` adds.
pub const DEVICE_COLUMNS: [&str; 2] = ["device_util", "device_busy_s"];

/// The generations log's columns.
pub const GENERATION_COLUMNS: [&str; 15] = [
    "stage",
    "generation",
    "evaluations",
    "best",
    "gen_best",
    "mean",
    "q25",
    "median",
    "q75",
    "sigma",
    "failed",
    "elapsed_s",
    "validation",
    "pipeline_ms",
    "overhead_ms",
];

impl GenerationRow {
    pub fn header() -> Vec<String> {
        GENERATION_COLUMNS.iter().map(|s| s.to_string()).collect()
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.stage.to_string(),
            self.generation.to_string(),
            self.evaluations.to_string(),
            fmt_f(self.best),
            fmt_f(self.gen_best),
            fmt_f(self.mean),
            fmt_f(self.q25),
            fmt_f(self.median),
            fmt_f(self.q75),
            fmt_f(self.sigma),
            self.failed.to_string(),
            format!("{:.3}", self.elapsed_s),
            fmt_f(self.validation),
            self.pipeline_ms
                .map(|v| format!("{v:.1}"))
                .unwrap_or_default(),
            self.overhead_ms
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
        ]
    }

    /// Every complete row of a generations log (`Ok(None)` when it does not exist). A log
    /// needs `evaluations` and `best`; the other columns may be missing (older logs).
    pub fn read_all(path: &Path) -> Result<Option<Vec<GenerationRow>>, LogError> {
        let Some((header, records)) = complete_lines(path)? else {
            return Ok(None);
        };
        let col = |name: &str| header.iter().position(|h| h == name);
        let require = |name: &str| {
            col(name).ok_or_else(|| {
                LogError::invalid(
                    path,
                    format!(
                        "no column '{name}' (its columns are: {}); is this a file evomerge run wrote?",
                        header.join(", ")
                    ),
                )
            })
        };
        let (ev, best) = (require("evaluations")?, require("best")?);
        let cols: Vec<Option<usize>> = GENERATION_COLUMNS.iter().map(|c| col(c)).collect();
        let mut out = Vec::new();
        for rec in &records {
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            let text = |i: usize| cols[i].and_then(|c| rec.get(c)).unwrap_or("").trim();
            let num = |i: usize| number(text(i));
            let evaluations = rec.get(ev).unwrap_or("").trim();
            let evaluations = evaluations
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    LogError::invalid(
                        path,
                        format!("line {line}: evaluations '{evaluations}' is not a number"),
                    )
                })?;
            let device = |name: &str| {
                col(name)
                    .and_then(|c| rec.get(c))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let device_busy_s = device("device_busy_s")
                .split_whitespace()
                .filter_map(|p| {
                    let (d, v) = p.rsplit_once('=')?;
                    Some((d.to_string(), v.parse::<f64>().ok()?))
                })
                .collect();
            out.push(GenerationRow {
                device_util: number(&device("device_util")),
                device_busy_s,
                stage: text(0).parse().unwrap_or(StageKind::Ps),
                generation: text(1).parse().unwrap_or(out.len() as u64),
                evaluations: evaluations as u64,
                best: number(rec.get(best).unwrap_or("")),
                gen_best: num(4),
                mean: num(5),
                q25: num(6),
                median: num(7),
                q75: num(8),
                sigma: num(9),
                failed: text(10).parse().unwrap_or(0),
                elapsed_s: num(11).unwrap_or(0.0),
                validation: num(12),
                pipeline_ms: num(13),
                overhead_ms: num(14),
            });
        }
        Ok(Some(out))
    }
}

/// One row of the final test table (`results.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub name: String,
    /// `best`, `source`, `base` or `baseline`.
    pub kind: String,
    pub split: Split,
    pub fitness: Option<f64>,
    pub metrics: BTreeMap<String, f64>,
    pub note: String,
}

impl ResultRow {
    pub const HEADER: [&'static str; 6] = ["name", "kind", "split", "fitness", "metrics", "note"];

    /// The rows as CSV text.
    pub fn to_csv(rows: &[ResultRow]) -> Vec<u8> {
        let mut w = csv::Writer::from_writer(Vec::new());
        // Writing to memory cannot fail.
        w.write_record(Self::HEADER).expect("in memory");
        for r in rows {
            w.write_record([
                r.name.clone(),
                r.kind.clone(),
                r.split.to_string(),
                fmt_f(r.fitness),
                serde_json::to_string(&r.metrics).unwrap_or_default(),
                r.note.clone(),
            ])
            .expect("in memory");
        }
        w.into_inner().expect("in memory")
    }

    /// Every complete row of a `results.csv` (`Ok(None)` when it does not exist); needs
    /// `name`, `kind`, `split` and `fitness`, `metrics` and `note` may be missing.
    pub fn read_all(path: &Path) -> Result<Option<Vec<ResultRow>>, LogError> {
        let Some((header, records)) = complete_lines(path)? else {
            return Ok(None);
        };
        let col = |name: &str| header.iter().position(|h| h == name);
        let mut req = Vec::new();
        for name in ["name", "kind", "split", "fitness"] {
            req.push(col(name).ok_or_else(|| {
                LogError::invalid(
                    path,
                    format!(
                        "no column '{name}' (its columns are: {}); is this a file evomerge run wrote?",
                        header.join(", ")
                    ),
                )
            })?);
        }
        let (metrics, note) = (col("metrics"), col("note"));
        let mut out = Vec::new();
        for rec in &records {
            let f = |i: usize| rec.get(i).unwrap_or("").trim();
            let Ok(split) = f(req[2]).parse::<Split>() else {
                continue;
            };
            out.push(ResultRow {
                name: f(req[0]).to_string(),
                kind: f(req[1]).to_string(),
                split,
                fitness: number(f(req[3])),
                metrics: metrics
                    .and_then(|c| serde_json::from_str(f(c)).ok())
                    .unwrap_or_default(),
                note: note.map(|c| f(c).to_string()).unwrap_or_default(),
            });
        }
        Ok(Some(out))
    }
}

/// An append-only CSV log that survives a kill: every row is flushed to the OS as it is
/// written, a torn last line is cut off when the file is reopened.
pub struct CsvAppender {
    path: PathBuf,
    writer: csv::Writer<File>,
}

/// Cut a file back to its last complete line.
pub(crate) fn truncate_partial_line(path: &Path) -> Result<(), LogError> {
    let io = io_at(path);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(&io)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(&io)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64).map_err(&io)?;
    f.seek(SeekFrom::End(0)).map_err(&io)?;
    Ok(())
}

impl CsvAppender {
    /// Open for appending, writing `header` if the file is new; a file with another header is
    /// an error (it belongs to something else).
    fn open(path: &Path, header: &[String]) -> Result<CsvAppender, RunError> {
        if path.exists() {
            truncate_partial_line(path)?;
        }
        let exists = std::fs::metadata(path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if exists {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_path(path)
                .map_err(csv_at(path))?;
            if let Some(Ok(rec)) = r.records().next() {
                let got: Vec<&str> = rec.iter().collect();
                if got != header.iter().map(String::as_str).collect::<Vec<_>>() {
                    return Err(RunError::Config(format!(
                        "{} has other columns than this run writes; it belongs to another experiment",
                        path.display()
                    )));
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_at(path))?;
        let mut log = CsvAppender {
            path: path.to_path_buf(),
            writer: csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(file),
        };
        if !exists {
            log.write(header)?;
        }
        Ok(log)
    }

    /// Append one record and flush it.
    fn write(&mut self, record: &[String]) -> Result<(), LogError> {
        self.writer
            .write_record(record)
            .map_err(csv_at(&self.path))?;
        self.writer.flush().map_err(io_at(&self.path))
    }
}

/// A stage's candidates log, open for appending.
pub struct CandidateLog {
    columns: CandidateColumns,
    out: CsvAppender,
}

impl CandidateLog {
    pub fn open(path: &Path, columns: CandidateColumns) -> Result<CandidateLog, RunError> {
        let out = CsvAppender::open(path, &columns.header())?;
        Ok(CandidateLog { columns, out })
    }

    pub fn columns(&self) -> &CandidateColumns {
        &self.columns
    }

    pub fn write(&mut self, row: &CandidateRow) -> Result<(), RunError> {
        Ok(self.out.write(&row.record(&self.columns))?)
    }
}

/// A stage's generations log, open for appending.
pub struct GenerationLog(CsvAppender, bool);

impl GenerationLog {
    pub fn open(path: &Path) -> Result<GenerationLog, RunError> {
        GenerationLog::open_with_devices(path, false)
    }

    /// With `devices`, the log has the [`DEVICE_COLUMNS`] too.
    pub fn open_with_devices(path: &Path, devices: bool) -> Result<GenerationLog, RunError> {
        let mut header = GenerationRow::header();
        if devices {
            header.extend(DEVICE_COLUMNS.iter().map(|c| c.to_string()));
        }
        Ok(GenerationLog(CsvAppender::open(path, &header)?, devices))
    }

    pub fn write(&mut self, row: &GenerationRow) -> Result<(), RunError> {
        let mut record = row.record();
        if self.1 {
            record.push(
                row.device_util
                    .map(|u| format!("{u:.4}"))
                    .unwrap_or_default(),
            );
            record.push(
                row.device_busy_s
                    .iter()
                    .map(|(d, b)| format!("{d}={b:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        Ok(self.0.write(&record)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps_row() -> CandidateRow {
        CandidateRow {
            stage: StageKind::Ps,
            generation: 2,
            index: 3,
            status: Status::Ok,
            fitness: Some(0.625),
            metrics: BTreeMap::from([("acc".to_string(), 0.625)]),
            merge_ms: 12.34,
            eval_ms: 5.0,
            key: "00ff".into(),
            error: None,
            params: Params::Ps {
                genes: vec![Some(0.5), None],
                method: "ties".into(),
            },
            x: vec![0.5, 0.25],
        }
    }

    #[test]
    fn rows_written_read_back_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("candidates.csv");
        let columns = CandidateColumns::new(
            StageKind::Ps,
            vec!["g0.model0.weight".into(), "g0.model1.weight".into()],
            2,
        );
        let mut log = CandidateLog::open(&path, columns.clone()).unwrap();
        let row = ps_row();
        log.write(&row).unwrap();
        let failed = CandidateRow {
            status: Status::Failed,
            fitness: None,
            error: Some("build: boom\nmore".into()),
            params: Params::None,
            ..ps_row()
        };
        log.write(&failed).unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(
            "stage,generation,index,status,fitness,metrics,merge_ms,eval_ms,key,error,g0.model0.weight,g0.model1.weight,method,x.0,x.1\n"
        ));
        assert!(
            text.contains(
                "ps,2,3,ok,0.625,\"{\"\"acc\"\":0.625}\",12.3,5.0,00ff,,0.500000,,ties,0.5,0.25\n"
            ),
            "{text}"
        );
        let t = CandidateTable::read(&path).unwrap().unwrap();
        assert_eq!(t.columns, columns);
        let rows: Vec<&CandidateRow> = t.sound().map(|(_, r)| r).collect();
        assert_eq!(rows[0].merge_ms, 12.3);
        assert_eq!(
            rows[0],
            &CandidateRow {
                merge_ms: 12.3,
                ..row
            }
        );
        assert_eq!(rows[1].error.as_deref(), Some("build: boom more"));
        assert_eq!(rows[1].params, Params::None);
        // Reopening with other columns is refused.
        let other = CandidateColumns::new(StageKind::Dfs, vec![], 2);
        assert!(CandidateLog::open(&path, other).is_err());
    }

    #[test]
    fn damaged_rows_keep_their_place_and_say_why() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dfs_candidates.csv");
        std::fs::write(
            &path,
            "stage,generation,index,status,fitness,metrics,merge_ms,eval_ms,key,error,hops,path\n\
             dfs,0,0,ok,NaN,{},1,2,aa,,2,0:0*1.000 1:1*0.900\n\
             dfs,0,1,ok,,{},1,2,bb,,2,0:0*1.000 1:1*0.900\n\
             dfs,0,2,ok,0.5,{},1,2,cc,,2,0:0*1.000 1:1*0.900\n\
             dfs,0,3,ok,0.9,{},1,2,dd,,2,0:0",
        )
        .unwrap();
        let t = CandidateTable::read(&path).unwrap().unwrap();
        assert_eq!(t.columns, CandidateColumns::Dfs { dims: 0 });
        assert_eq!(t.rows.len(), 3, "the cut last line is not a row");
        let why: Vec<String> = t
            .rows
            .iter()
            .filter_map(|l| l.row.as_ref().err().map(|d| d.why.clone()))
            .collect();
        assert_eq!(
            why,
            [
                "fitness `NaN` is not a finite number",
                "status `ok` without a fitness"
            ]
        );
        assert_eq!(t.rows[1].place(), (0, 1));
        let (line, best, f) = t.best().unwrap();
        assert_eq!((line, f), (4, 0.5));
        assert_eq!(
            best.params,
            Params::Dfs {
                hops: 2,
                path: "0:0*1.000 1:1*0.900".into()
            }
        );
    }

    #[test]
    fn generation_logs_of_both_layouts_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("generations.csv");
        let row = GenerationRow {
            stage: StageKind::Dfs,
            generation: 1,
            evaluations: 16,
            best: Some(0.75),
            gen_best: Some(0.7),
            mean: Some(0.5),
            q25: Some(0.25),
            median: Some(0.5),
            q75: Some(0.6),
            sigma: None,
            failed: 1,
            elapsed_s: 2.5,
            validation: None,
            pipeline_ms: Some(10.5),
            overhead_ms: Some(0.125),
            device_util: None,
            device_busy_s: Vec::new(),
        };
        let mut log = GenerationLog::open(&path).unwrap();
        log.write(&row).unwrap();
        drop(log);
        assert_eq!(
            GenerationRow::read_all(&path).unwrap().unwrap(),
            vec![row.clone()]
        );
        // A run with devices adds their columns, and reads them back.
        let with = tmp.path().join("devices.csv");
        let mut row_d = row.clone();
        row_d.device_util = Some(0.9125);
        row_d.device_busy_s = vec![("cuda:0".into(), 1.25), ("cuda:1".into(), 0.5)];
        let mut log = GenerationLog::open_with_devices(&with, true).unwrap();
        log.write(&row_d).unwrap();
        drop(log);
        assert_eq!(
            GenerationRow::read_all(&with).unwrap().unwrap(),
            vec![row_d]
        );
        assert!(
            GenerationLog::open(&with).is_err(),
            "its header is another layout"
        );
        std::fs::write(
            &path,
            "stage,generation,evaluations,best,gen_best,mean,q25,median,q75,sigma,failed,elapsed_s,validation\n\
             ps,0,8,0.59,0.59,0.55,0.53,0.54,0.57,0.3000,1,10.4,\n",
        )
        .unwrap();
        let old = GenerationRow::read_all(&path).unwrap().unwrap();
        assert_eq!((old[0].evaluations, old[0].sigma), (8, Some(0.3)));
        assert_eq!((old[0].pipeline_ms, old[0].validation), (None, None));
    }
}
