//! The worker protocol: a candidate file in, a score file out, both in the run folder on
//! storage the runner and the nodes share.
//!
//! A generation's folder `RUN_DIR/exec/{stage}-g{generation}/` holds, per candidate index `i`,
//! `task-{i}.json` ([`TaskFile`]: the run folder, the stage, the decoded recipe or layer path,
//! the split, generation and seed) and, once scored, `score-{i}.json` ([`ScoreFile`]), which
//! `evomerge worker` writes atomically (temporary name, fsync, rename) so a half-written score
//! is never read. A score file whose `key` is not its task's is stale and ignored.

use crate::ExecError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One candidate to score (`task-{i}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFile {
    /// The run folder (absolute): the worker reads `run.toml` (and `state.json`) there.
    pub run_dir: PathBuf,
    /// The stage (`ps`, `dfs`; a run has at most one of each).
    pub kind: String,
    pub generation: u64,
    pub index: usize,
    /// `search`, `validation` or `test`.
    pub split: String,
    /// The run seed (with the generation it fixes the evaluation subsample).
    pub seed: u64,
    /// The candidate's cache key (echoed in its score file).
    pub key: String,
    /// A readable name for logs (`ps gen 3 #5`).
    pub label: String,
    /// The decoded candidate: a recipe (TOML) for `ps`, a layer path (JSON) for `dfs`.
    pub candidate: String,
}

/// What a worker found (`score-{i}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFile {
    /// The task's key.
    pub key: String,
    /// `None`: the candidate failed (see `error`).
    pub fitness: Option<f64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub merge_ms: f64,
    #[serde(default)]
    pub eval_ms: f64,
    /// Where it ran.
    #[serde(default)]
    pub host: String,
}

impl ScoreFile {
    /// A failed candidate's score.
    pub fn failed(key: &str, error: impl Into<String>) -> ScoreFile {
        ScoreFile {
            key: key.to_string(),
            fitness: None,
            metrics: BTreeMap::new(),
            error: Some(error.into()),
            merge_ms: 0.0,
            eval_ms: 0.0,
            host: String::new(),
        }
    }
}

/// The folder of one generation's tasks.
pub fn generation_dir(run_dir: &Path, kind: &str, generation: u64) -> PathBuf {
    run_dir.join("exec").join(format!("{kind}-g{generation}"))
}

pub fn task_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("task-{index}.json"))
}

pub fn score_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("score-{index}.json"))
}

/// The score file next to a task file.
pub fn score_path_of(task_file: &Path) -> PathBuf {
    let name = task_file
        .file_name()
        .map(|n| n.to_string_lossy().replacen("task-", "score-", 1))
        .unwrap_or_else(|| "score.json".into());
    task_file.with_file_name(name)
}

/// Write a file atomically (`evomerge_checkpoint::write_atomic`: a temporary name with the
/// process id in the same folder, fsync, rename, fsync the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExecError> {
    evomerge_checkpoint::write_atomic(path, bytes).map_err(|e| ExecError::Io(e.to_string()))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ExecError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| ExecError::Io(e.to_string()))?;
    write_atomic(path, &text)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ExecError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ExecError::Io(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ExecError::Io(format!("{}: {e}", path.display())))
}

/// The score of a task if its score file exists and belongs to it.
pub fn read_score(dir: &Path, index: usize, key: &str) -> Option<ScoreFile> {
    let s: ScoreFile = read_json(&score_path(dir, index)).ok()?;
    (s.key == key).then_some(s)
}

impl TaskFile {
    pub fn read(path: &Path) -> Result<TaskFile, ExecError> {
        read_json(path).map_err(|e| {
            ExecError::Io(format!(
                "{e} (a task file `evomerge worker` reads is written by the runner into RUN_DIR/exec/)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_files_round_trip_and_belong_to_their_task() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = generation_dir(tmp.path(), "ps", 3);
        std::fs::create_dir_all(&dir).unwrap();
        let s = ScoreFile {
            key: "k1".into(),
            fitness: Some(0.25),
            metrics: [("acc".to_string(), 0.5)].into(),
            error: None,
            merge_ms: 1.0,
            eval_ms: 2.0,
            host: "vm".into(),
        };
        write_json(&score_path(&dir, 4), &s).unwrap();
        assert_eq!(read_score(&dir, 4, "k1"), Some(s));
        assert_eq!(read_score(&dir, 4, "other"), None);
        assert_eq!(read_score(&dir, 5, "k1"), None);
        assert_eq!(
            score_path_of(&task_path(&dir, 4)),
            score_path(&dir, 4),
            "the worker finds the score file next to its task"
        );
        // Nothing but the file itself is left in the folder.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["score-4.json"]);
    }
}
