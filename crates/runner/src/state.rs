//! What a run remembers between generations (`state.json`) and what it logs (CSV files).

use crate::RunError;
use evomerge_search::OptimizerState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A scored candidate (search split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Search fitness; `None` for a failed candidate.
    pub fitness: Option<f64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A candidate worth remembering: the best so far, or one scored on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub generation: u64,
    pub index: usize,
    pub x: Vec<f64>,
    pub key: String,
    /// The recipe TOML or the path JSON.
    pub decoded: String,
    pub search_fitness: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fitness: Option<f64>,
}

/// One stage's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageState {
    /// `ps` or `dfs`.
    pub kind: String,
    pub optimizer: OptimizerState,
    /// Completed generations.
    pub generations: u64,
    /// Candidates asked (evaluated or answered from the cache).
    pub evaluations: u64,
    /// Decoded-candidate key -> its search score.
    pub cache: BTreeMap<String, Scored>,
    /// The best search fitness so far.
    pub best: Option<Snapshot>,
    /// Every candidate scored on validation, in order.
    pub validated: Vec<Snapshot>,
    pub done: bool,
}

impl StageState {
    /// The stage's answer: the best on validation if anything was validated, else the best on
    /// the search split.
    pub fn chosen(&self) -> Option<&Snapshot> {
        self.validated
            .iter()
            .filter(|s| s.validation_fitness.is_some())
            .max_by(|a, b| {
                let v = |s: &Snapshot| s.validation_fitness.unwrap_or(f64::NEG_INFINITY);
                v(a).total_cmp(&v(b))
            })
            .or(self.best.as_ref())
    }
}

/// The whole run's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub evomerge_version: String,
    pub stages: Vec<StageState>,
    /// Wall seconds spent by earlier processes of this run.
    pub elapsed_s: f64,
}

/// Test hook: `EVOMERGE_CRASH_AT=state-write:N` aborts the process in the middle of the N-th
/// state write (temporary file written, not yet renamed), `after-row:N` right after the N-th
/// candidate row is logged. Used by the kill tests; never set in normal use.
pub(crate) fn crash_point(kind: &str, count: u64) {
    if let Ok(spec) = std::env::var("EVOMERGE_CRASH_AT")
        && let Some((k, n)) = spec.split_once(':')
        && k == kind
        && n.parse::<u64>().ok() == Some(count)
    {
        eprintln!("EVOMERGE_CRASH_AT={spec}: aborting");
        std::process::abort();
    }
}

impl RunState {
    /// Write atomically: temporary file, fsync, rename, fsync the folder.
    pub fn save(&self, path: &Path, write_count: u64) -> Result<(), RunError> {
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec(self).map_err(|e| RunError::Io(format!("state: {e}")))?;
        let io = |e: std::io::Error| RunError::Io(format!("{}: {e}", tmp.display()));
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        crash_point("state-write", write_count);
        std::fs::rename(&tmp, path)
            .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
        if let Some(dir) = path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<RunState, RunError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            RunError::Config(format!(
                "{}: not a run state ({e}); the file is damaged",
                path.display()
            ))
        })
    }
}

/// An append-only CSV log that survives a kill: every row is flushed to the OS as it is
/// written, a torn last line is cut off when the file is reopened.
pub struct CsvLog {
    path: PathBuf,
    writer: csv::Writer<File>,
}

/// Cut a file back to its last complete line.
fn truncate_partial_line(path: &Path) -> Result<(), RunError> {
    let io = |e: std::io::Error| RunError::Io(format!("{}: {e}", path.display()));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64).map_err(io)?;
    f.seek(SeekFrom::End(0)).map_err(io)?;
    Ok(())
}

impl CsvLog {
    /// Open for appending, writing `header` if the file is new; a file with another header is
    /// an error (it belongs to something else).
    pub fn open(path: &Path, header: &[String]) -> Result<CsvLog, RunError> {
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
                .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
            let first = r.records().next();
            if let Some(Ok(rec)) = first {
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
            .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        if !exists {
            writer
                .write_record(header)
                .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
            writer
                .flush()
                .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
        }
        Ok(CsvLog {
            path: path.to_path_buf(),
            writer,
        })
    }

    /// Append one row and flush it.
    pub fn write(&mut self, row: &[String]) -> Result<(), RunError> {
        let err = |e: &dyn std::fmt::Display| RunError::Io(format!("{}: {e}", self.path.display()));
        self.writer.write_record(row).map_err(|e| err(&e))?;
        self.writer.flush().map_err(|e| err(&e))
    }
}

/// A logged row by column name.
pub type Row = HashMap<String, String>;

/// A row of candidates.csv as read back for resuming.
#[derive(Debug, Clone)]
pub struct LoggedRow {
    /// Its line in the file (1 = the header).
    pub line: u64,
    pub fields: Row,
    /// Why the row cannot be trusted (a fitness that is not a finite number, an `ok` row
    /// without one); such a row is not reused and its candidate is evaluated again.
    pub damaged: Option<String>,
}

impl LoggedRow {
    fn check(fields: &Row) -> Option<String> {
        let fitness = fields.get("fitness").map(String::as_str).unwrap_or("");
        if fitness.is_empty() {
            return (fields.get("status").map(String::as_str) == Some("ok"))
                .then(|| "status `ok` without a fitness".to_string());
        }
        match fitness.parse::<f64>() {
            Ok(f) if f.is_finite() => None,
            Ok(_) => Some(format!("fitness `{fitness}` is not a finite number")),
            Err(_) => Some(format!("fitness `{fitness}` is not a number")),
        }
    }

    /// The logged fitness (finite, since damaged rows are never reused).
    pub fn fitness(&self) -> Option<f64> {
        self.fields
            .get("fitness")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|f| f.is_finite())
    }
}

/// Rows of candidates.csv by (generation, index), for resuming: the rows of the generation that
/// was running when the process died are reused, not evaluated again. When a candidate has
/// several rows the last sound one wins.
pub fn read_rows(path: &Path) -> Result<HashMap<(u64, usize), LoggedRow>, RunError> {
    let mut out: HashMap<(u64, usize), LoggedRow> = HashMap::new();
    if !path.exists() {
        return Ok(out);
    }
    truncate_partial_line(path)?;
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
    let headers = r
        .headers()
        .map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?
        .clone();
    for rec in r.records() {
        let rec = rec.map_err(|e| RunError::Io(format!("{}: {e}", path.display())))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let fields: Row = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
        let (Some(g), Some(i)) = (
            fields.get("generation").and_then(|v| v.parse().ok()),
            fields.get("index").and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        let damaged = LoggedRow::check(&fields);
        let row = LoggedRow {
            line,
            fields,
            damaged,
        };
        match out.get(&(g, i)) {
            Some(old) if old.damaged.is_none() && row.damaged.is_some() => {}
            _ => {
                out.insert((g, i), row);
            }
        }
    }
    Ok(out)
}
