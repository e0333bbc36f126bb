//! Score a candidate with an external command: lm-evaluation-harness (with vLLM), a shell
//! script, anything that can read a Hugging Face folder and print a number.
//!
//! For each evaluation the candidate is written as a Hugging Face folder into a fresh temporary
//! directory, the command template runs through `sh -c` with these placeholders filled in:
//!
//! | placeholder | value |
//! |---|---|
//! | `{model_dir}` | the candidate's folder (config.json, safetensors, tokenizer files) |
//! | `{work_dir}` | a scratch folder next to it, for the tool's own outputs |
//! | `{score_file}` | `{work_dir}/score.json`, where the command may write its score |
//! | `{split}` | `search`, `validation` or `test` |
//! | `{generation}`, `{seed}` | of the request (for tools that subsample) |
//! | `{devices}` | the indices of the devices the candidate holds, comma-separated (`2,3`) |
//! | `{device}` | the first of them (`2`) |
//!
//! Each value is substituted shell-quoted (a path with a space or `$` stays one word) and is
//! also in the command's environment as `EVOMERGE_MODEL_DIR`, `EVOMERGE_WORK_DIR`,
//! `EVOMERGE_SCORE_FILE`, `EVOMERGE_SPLIT`, `EVOMERGE_GENERATION`, `EVOMERGE_SEED`,
//! `EVOMERGE_DEVICES` and `EVOMERGE_DEVICE`.
//!
//! Devices: when the request holds devices (the runner's `[execution] devices`), the command
//! also gets `CUDA_VISIBLE_DEVICES` and `HIP_VISIBLE_DEVICES` set to `{devices}` (overriding
//! `env`), so a tool that picks "the GPU" picks the candidate's; inside the command those GPUs
//! are then numbered from 0. When it holds none, `{devices}` is the `CUDA_VISIBLE_DEVICES` the
//! process inherited (what Slurm sets for `--gres=gpu:N`); a command using `{device}` or
//! `{devices}` with neither is an evaluation error naming the fix.
//!
//! The score is read as JSON `{"fitness": 0.5, "metrics": {"acc": 0.5}}` (`items` optional)
//! from `{score_file}` if the command wrote it, else from the last line of stdout that parses.
//! With `lm_eval = { task = "gsm8k", metric = "exact_match,strict-match" }` the score is instead
//! read from the newest lm-evaluation-harness `results_*.json` under `{work_dir}`.
//! The temporary folder (`evomerge-{pid}-XXXXXX`, with an [`OWNER_FILE`] naming the process and
//! the run) is removed afterwards; [`remove_stale_folders`] removes those a killed process left.
//! A stop request ([`evomerge_eval::interrupt`]) stops the command's whole process group and
//! returns [`EvalError::Interrupted`].
//!
//! A timeout, a non-zero exit, or output that does not parse scores the candidate as failed
//! ([`Score::failed`]) with the exit status and the tail of stderr — never an error that would
//! stop the search.
//!
//! With `persistent = true` the command instead starts once (per parallel slot) and gets one
//! JSON request line per candidate on stdin, answering one JSON score line on stdout: see
//! [`persistent`] for the protocol, and `scripts/lm_eval_server.py` for lm-evaluation-harness.
//!
//! ```no_run
//! use evomerge_eval_command::{CommandConfig, CommandEvaluator};
//! let cfg: CommandConfig = toml::from_str(r#"
//!     name = "my-benchmark"
//!     command = "python score.py --model {model_dir} --out {score_file}"
//!     timeout_s = 600
//! "#).unwrap();
//! let evaluator = CommandEvaluator::new(cfg).unwrap();
//! ```

mod config;
pub mod persistent;
pub use config::CommandKind;

use evomerge_eval::{Candidate, EvalError, EvalRequest, Evaluator, ItemResult, Score};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How much of stderr a failure keeps.
const STDERR_TAIL: usize = 2000;

/// Read the score from an lm-evaluation-harness results file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmEvalScore {
    /// The task name under `results` (e.g. `gsm8k`).
    pub task: String,
    /// The metric key as lm-eval writes it (e.g. `exact_match,strict-match`, `acc,none`).
    pub metric: String,
}

/// The command evaluator's settings (a TOML table in an experiment file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// The command template, run with `sh -c` (see the crate docs for placeholders).
    pub command: String,
    /// Seconds before the command (and everything it started) is killed; default one hour.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Working directory of the command (default: the current one).
    pub cwd: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Read an lm-evaluation-harness results file instead of a score JSON.
    pub lm_eval: Option<LmEvalScore>,
    /// Where temporary model folders go (default: the system temp dir; point it at a fast
    /// disk for big models).
    pub temp_dir: Option<PathBuf>,
    /// Start the command once (per parallel slot) and send it one JSON request line per
    /// candidate on stdin; it answers one JSON score line on stdout (see [`persistent`]).
    #[serde(default)]
    pub persistent: bool,
}

fn default_name() -> String {
    "command".into()
}

fn default_timeout() -> f64 {
    3600.0
}

/// Runs a command per candidate (see the crate docs).
#[derive(Debug, Clone)]
pub struct CommandEvaluator {
    config: CommandConfig,
    /// The run whose candidates this evaluator scores (written into each temporary folder's
    /// owner file, so a later process of the run can remove what a dead one left).
    owner: Option<PathBuf>,
    /// The running scorers of a persistent command (shared by clones; stopped when the last
    /// clone goes).
    servers: std::sync::Arc<persistent::Servers>,
}

/// The file in every temporary candidate folder that says who made it.
pub const OWNER_FILE: &str = "evomerge-owner.json";

/// How temporary candidate folders are named: `evomerge-{pid}-XXXXXX`.
const PREFIX: &str = "evomerge-";

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether a process with this PID exists on this machine (a zombie counts as gone).
fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        return stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true);
    }
    // SAFETY: kill(2) with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Remove the temporary candidate folders under `temp_dir` (default: the system temp dir)
/// that a stopped process left: those made for the run `run_dir` by another process (the
/// caller holds the run's lock, so their maker is gone), and those whose maker on this machine
/// is no longer alive. Returns the folders removed.
pub fn remove_stale_folders(temp_dir: Option<&Path>, run_dir: &Path) -> Vec<PathBuf> {
    let root = temp_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let me = std::process::id() as i64;
    let host = host_name();
    let run_dir = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return removed;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = e.path();
        let Ok(text) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let Ok(owner) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let pid = owner.get("pid").and_then(Value::as_i64).unwrap_or(0);
        if pid == me {
            continue;
        }
        let same_run = owner
            .get("run")
            .and_then(Value::as_str)
            .is_some_and(|r| Path::new(r) == run_dir);
        let same_host = owner.get("host").and_then(Value::as_str) == Some(host.as_str());
        let dead = same_host && !pid_alive(pid as i32);
        if (same_run || dead) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// `s` as one shell word: unchanged when it has only characters the shell leaves alone, else
/// in single quotes (a `'` inside written `'\''`).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-,=+:@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A candidate's temporary folder (see [`CommandEvaluator::folder`]); removed when dropped.
struct Folder {
    _tmp: tempfile::TempDir,
    model_dir: PathBuf,
    work_dir: PathBuf,
}

/// What a finished (or killed) command left.
struct Outcome {
    status: Option<std::process::ExitStatus>,
    timed_out: bool,
    /// Stopped because the process was asked to stop (the signal).
    interrupted: Option<i32>,
    stdout: String,
    stderr: String,
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

impl CommandEvaluator {
    pub fn new(config: CommandConfig) -> Result<CommandEvaluator, EvalError> {
        if config.command.trim().is_empty() {
            return Err(EvalError::Config(
                "command evaluator: `command` is empty".into(),
            ));
        }
        if config.timeout_s.is_nan() || config.timeout_s <= 0.0 {
            return Err(EvalError::Config(format!(
                "command evaluator: timeout_s must be positive, got {}",
                config.timeout_s
            )));
        }
        for (key, dir) in [("cwd", &config.cwd), ("temp_dir", &config.temp_dir)] {
            if let Some(d) = dir
                && !d.is_dir()
            {
                return Err(EvalError::Config(format!(
                    "command evaluator `{}`: {key} = {} {}",
                    config.name,
                    d.display(),
                    if d.exists() {
                        "is not a folder"
                    } else {
                        "does not exist"
                    }
                )));
            }
        }
        let known = [
            "model_dir",
            "work_dir",
            "score_file",
            "split",
            "generation",
            "seed",
            "devices",
            "device",
        ];
        let per_candidate = &known[..6];
        let mut rest = config.command.as_str();
        while let Some(i) = rest.find('{') {
            let after = &rest[i + 1..];
            if let Some(end) = after.find('}') {
                let key = &after[..end];
                if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !key.is_empty()
                    && !known.contains(&key)
                {
                    return Err(EvalError::Config(format!(
                        "command evaluator: unknown placeholder {{{key}}}; known: {}",
                        known.map(|k| format!("{{{k}}}")).join(", ")
                    )));
                }
                if config.persistent && per_candidate.contains(&key) {
                    return Err(EvalError::Config(format!(
                        "command evaluator `{}`: a persistent command starts once, so it cannot use {{{key}}}; it gets each candidate's {key} in the JSON request line on stdin (only {{devices}} and {{device}} are filled in at start)",
                        config.name
                    )));
                }
                rest = &after[end + 1..];
            } else {
                break;
            }
        }
        Ok(CommandEvaluator {
            config,
            owner: None,
            servers: Default::default(),
        })
    }

    /// Mark the temporary folders as the run `run_dir`'s (see [`remove_stale_folders`]).
    pub fn with_owner(mut self, run_dir: &Path) -> CommandEvaluator {
        self.owner = Some(std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf()));
        self
    }

    /// Stop the idle scorers of a persistent command now (stdin closed, then SIGTERM, then
    /// SIGKILL; see [`persistent`]); the next candidate starts a fresh one. Dropping the
    /// evaluator does the same.
    pub fn shutdown(&self) {
        self.servers.shutdown();
    }

    /// Where the temporary folders go (`temp_dir`, or the system's).
    pub fn temp_dir(&self) -> Option<&Path> {
        self.config.temp_dir.as_deref()
    }

    /// The placeholder values, by placeholder name and by environment variable.
    fn values(
        &self,
        model_dir: &Path,
        work_dir: &Path,
        request: &EvalRequest,
        devices: &str,
    ) -> Vec<(&'static str, &'static str, String)> {
        let score_file = work_dir.join("score.json");
        vec![
            (
                "model_dir",
                "EVOMERGE_MODEL_DIR",
                model_dir.display().to_string(),
            ),
            (
                "work_dir",
                "EVOMERGE_WORK_DIR",
                work_dir.display().to_string(),
            ),
            (
                "score_file",
                "EVOMERGE_SCORE_FILE",
                score_file.display().to_string(),
            ),
            (
                "split",
                "EVOMERGE_SPLIT",
                request.split.as_str().to_string(),
            ),
            (
                "generation",
                "EVOMERGE_GENERATION",
                request.generation.to_string(),
            ),
            ("seed", "EVOMERGE_SEED", request.seed.to_string()),
            ("devices", "EVOMERGE_DEVICES", devices.to_string()),
            (
                "device",
                "EVOMERGE_DEVICE",
                devices.split(',').next().unwrap_or("").to_string(),
            ),
        ]
    }

    /// Whether the command template uses `{device}` or `{devices}`.
    pub fn uses_devices(&self) -> bool {
        self.config.command.contains("{device}") || self.config.command.contains("{devices}")
    }

    /// The command with every placeholder replaced by its shell-quoted value.
    fn fill(&self, values: &[(&str, &str, String)]) -> String {
        let mut out = self.config.command.clone();
        for (name, _, value) in values {
            out = out.replace(&format!("{{{name}}}"), &shell_quote(value));
        }
        out
    }

    /// `sh -c command` in its own process group, with the configured cwd and env, the values'
    /// variables and the held devices; stdout and stderr piped, stdin closed.
    fn command(&self, command: &str, values: &[(&str, &str, String)], held: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills everything it started.
            .process_group(0);
        if let Some(cwd) = &self.config.cwd {
            cmd.current_dir(cwd);
        }
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        for (_, var, value) in values {
            cmd.env(var, value);
        }
        if !held.is_empty() {
            // The candidate's devices, over whatever `env` or the parent said.
            cmd.env("CUDA_VISIBLE_DEVICES", held);
            cmd.env("HIP_VISIBLE_DEVICES", held);
        }
        cmd
    }

    /// The held devices (`CUDA_VISIBLE_DEVICES` for the command; empty when none) and the
    /// devices `{devices}` names (the held ones, else the inherited `CUDA_VISIBLE_DEVICES`).
    fn devices(&self, request: &EvalRequest) -> Result<(String, String), EvalError> {
        let held = request.visible_devices();
        let devices = if held.is_empty() {
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
        } else {
            held.clone()
        };
        if devices.is_empty() && self.uses_devices() {
            return Err(EvalError::Config(format!(
                "command evaluator `{}` uses {{device}} / {{devices}} but this evaluation holds no device: list them in [execution] devices = [\"cuda:0\", ...] (or a count), or on Slurm ask for GPUs with [execution.slurm] gres",
                self.config.name
            )));
        }
        Ok((held, devices))
    }

    /// A fresh temporary folder (with its owner file) holding the candidate as `model/` and
    /// an empty `work/`; `Ok(Err(score))` when the candidate cannot be written (a failed
    /// score, not an error). The folder goes when the [`Folder`] is dropped.
    fn folder(&self, candidate: &dyn Candidate) -> Result<Result<Folder, Score>, EvalError> {
        let prefix = format!("{PREFIX}{}-", std::process::id());
        let tmp = match &self.config.temp_dir {
            Some(d) => tempfile::Builder::new().prefix(&prefix).tempdir_in(d),
            None => tempfile::Builder::new().prefix(&prefix).tempdir(),
        }
        .map_err(|e| EvalError::Io {
            path: "temporary directory".into(),
            source: e,
        })?;
        let owner = serde_json::json!({
            "pid": std::process::id(),
            "host": host_name(),
            "run": self.owner.as_ref().map(|p| p.display().to_string()),
        });
        std::fs::write(tmp.path().join(OWNER_FILE), owner.to_string()).map_err(|e| {
            EvalError::Io {
                path: tmp.path().join(OWNER_FILE).display().to_string(),
                source: e,
            }
        })?;
        let model_dir = tmp.path().join("model");
        let work_dir = tmp.path().join("work");
        std::fs::create_dir_all(&work_dir).map_err(|e| EvalError::Io {
            path: work_dir.display().to_string(),
            source: e,
        })?;
        if let Err(e) = candidate.write_hf_folder(&model_dir) {
            return Ok(Err(Score::failed(format!(
                "could not write {} as a model folder: {e}",
                candidate.label()
            ))));
        }
        Ok(Ok(Folder {
            _tmp: tmp,
            model_dir,
            work_dir,
        }))
    }

    /// The score a command left in its work folder: the newest lm-evaluation-harness results
    /// file (with `lm_eval`), or `{score_file}`; `None` when there is no score file.
    fn score_in(&self, work_dir: &Path) -> Option<Result<Score, String>> {
        if let Some(spec) = &self.config.lm_eval {
            return Some(match newest_results(work_dir) {
                Some(p) => score_from_lm_eval(&p, spec).map_err(|e| e.to_string()),
                None => Err(
                    "no lm-evaluation-harness results_*.json under {work_dir}; pass `--output_path {work_dir}` to lm_eval"
                        .to_string(),
                ),
            });
        }
        let score_file = work_dir.join("score.json");
        if !score_file.exists() {
            return None;
        }
        Some(
            std::fs::read_to_string(&score_file)
                .map_err(|e| format!("{{score_file}}: {e}"))
                .and_then(|t| {
                    serde_json::from_str::<Value>(&t)
                        .map_err(|e| format!("{{score_file}} is not JSON: {e}"))
                })
                .and_then(|v| parse_score(&v).map_err(|e| e.to_string())),
        )
    }

    fn run(
        &self,
        command: &str,
        values: &[(&str, &str, String)],
        held: &str,
    ) -> Result<Outcome, std::io::Error> {
        let mut child = self.command(command, values, held).spawn()?;
        let pid = child.id() as i32;
        let read_all = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = read_all(Box::new(child.stdout.take().expect("piped")));
        let err = read_all(Box::new(child.stderr.take().expect("piped")));
        let deadline = Instant::now() + Duration::from_secs_f64(self.config.timeout_s);
        let mut timed_out = false;
        let mut interrupted = None;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if let Some(signal) = evomerge_eval::interrupt::requested() {
                // Asked to stop: let the tool shut down (SIGTERM to its whole process group,
                // e.g. vLLM freeing the GPU), then make sure nothing of it is left.
                interrupted = Some(signal);
                // SAFETY: kill(2) on the process group we created for this child.
                unsafe {
                    libc::kill(-pid, libc::SIGTERM);
                }
                let grace = Instant::now() + Duration::from_secs(5);
                while Instant::now() < grace && group_alive(pid) {
                    let _ = child.try_wait();
                    std::thread::sleep(Duration::from_millis(20));
                }
                // SAFETY: as above.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                let _ = child.kill();
                break child.wait().ok();
            }
            if Instant::now() >= deadline {
                timed_out = true;
                // SAFETY: kill(2) on the process group we created for this child.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !timed_out && interrupted.is_none() {
            // The shell is gone; stop anything it left behind holding the pipes open.
            // SAFETY: as above, our own child's process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        Ok(Outcome {
            status,
            timed_out,
            interrupted,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    fn failure(&self, what: String, outcome: &Outcome) -> Score {
        let stderr = tail(outcome.stderr.trim_end(), STDERR_TAIL);
        if stderr.is_empty() {
            Score::failed(what)
        } else {
            Score::failed(format!("{what}; stderr tail:\n{stderr}"))
        }
    }
}

/// Whether any process of the process group `pgid` is still running (zombies excepted).
fn group_alive(pgid: i32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        // SAFETY: signal 0 only checks for existence.
        return unsafe { libc::kill(-pgid, 0) } == 0;
    };
    procs.flatten().any(|p| {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp ...
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// Why a command's output is not a score.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The JSON is not a score object (the message says what is missing).
    #[error("{0}")]
    NotAScore(String),
    /// The `items` array does not parse.
    #[error("\"items\": {0}")]
    Items(#[source] serde_json::Error),
    /// A results file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A results file is not JSON.
    #[error("{}: not JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Parse a score JSON object.
pub fn parse_score(value: &Value) -> Result<Score, ScoreError> {
    let not = |m: &str| ScoreError::NotAScore(m.to_string());
    let obj = value
        .as_object()
        .ok_or_else(|| not("the score is not a JSON object"))?;
    let fitness = obj
        .get("fitness")
        .and_then(Value::as_f64)
        .ok_or_else(|| not("the score has no numeric \"fitness\""))?;
    if !fitness.is_finite() {
        return Err(not(&format!("fitness {fitness} is not finite")));
    }
    let mut metrics = BTreeMap::new();
    if let Some(m) = obj.get("metrics") {
        let m = m
            .as_object()
            .ok_or_else(|| not("\"metrics\" is not an object"))?;
        for (k, v) in m {
            if let Some(x) = v.as_f64() {
                metrics.insert(k.clone(), x);
            }
        }
    }
    let items = match obj.get("items") {
        Some(v) => {
            serde_json::from_value::<Vec<ItemResult>>(v.clone()).map_err(ScoreError::Items)?
        }
        None => Vec::new(),
    };
    Ok(Score::new(fitness, metrics, items))
}

/// The score in a command's stdout: the whole output, or else its last line that is a JSON
/// object with a fitness.
fn score_from_stdout(stdout: &str) -> Result<Score, String> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim())
        && let Ok(s) = parse_score(&v)
    {
        return Ok(s);
    }
    let mut last_err = "stdout is empty".to_string();
    for line in stdout.lines().rev().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Value>(line.trim()) {
            Ok(v) => match parse_score(&v) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = e.to_string(),
            },
            Err(_) => {
                if last_err == "stdout is empty" {
                    last_err = format!(
                        "no line of stdout is a JSON score; last line: {:?}",
                        tail(line, 200)
                    );
                }
            }
        }
    }
    Err(last_err)
}

/// The newest `results_*.json` under `dir` (lm-evaluation-harness output).
fn newest_results(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("results") && n.ends_with(".json"))
            {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                    best = Some((t, p));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

/// The fitness from an lm-evaluation-harness results file.
pub fn score_from_lm_eval(path: &Path, spec: &LmEvalScore) -> Result<Score, ScoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|source| ScoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let task = v
        .get("results")
        .and_then(|r| r.get(&spec.task))
        .ok_or_else(|| {
            ScoreError::NotAScore(format!(
                "{}: no results for task '{}'",
                path.display(),
                spec.task
            ))
        })?;
    let fitness = task
        .get(&spec.metric)
        .and_then(Value::as_f64)
        .ok_or_else(|| {
            let keys: Vec<&str> = task
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            ScoreError::NotAScore(format!(
                "{}: task '{}' has no numeric '{}' (it has {})",
                path.display(),
                spec.task,
                spec.metric,
                keys.join(", ")
            ))
        })?;
    let mut metrics = BTreeMap::new();
    for (k, x) in task.as_object().into_iter().flatten() {
        if let Some(x) = x.as_f64() {
            metrics.insert(k.clone(), x);
        }
    }
    Ok(Score::new(fitness, metrics, Vec::new()))
}

impl Evaluator for CommandEvaluator {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn evaluate(
        &self,
        candidate: &dyn Candidate,
        request: &EvalRequest,
    ) -> Result<Score, EvalError> {
        if let Some(signal) = evomerge_eval::interrupt::requested() {
            return Err(EvalError::Interrupted(signal));
        }
        let (held, devices) = self.devices(request)?;
        if self.config.persistent {
            return persistent::evaluate(self, candidate, request, &held, &devices);
        }
        let folder = match self.folder(candidate)? {
            Ok(f) => f,
            Err(score) => return Ok(score),
        };
        let (model_dir, work_dir) = (&folder.model_dir, &folder.work_dir);
        if let Some(signal) = evomerge_eval::interrupt::requested() {
            return Err(EvalError::Interrupted(signal));
        }
        let values = self.values(model_dir, work_dir, request, &devices);
        let command = self.fill(&values);
        let outcome = self
            .run(&command, &values, &held)
            .map_err(|e| EvalError::Io {
                path: match &self.config.cwd {
                    Some(cwd) => format!("`sh -c` in cwd {}", cwd.display()),
                    None => "`sh -c`".into(),
                },
                source: e,
            })?;
        if let Some(signal) = outcome.interrupted {
            // The temporary folder goes with `folder` on the way out.
            return Err(EvalError::Interrupted(signal));
        }
        if outcome.timed_out {
            return Ok(self.failure(
                format!("`{command}` timed out after {} s", self.config.timeout_s),
                &outcome,
            ));
        }
        let status = outcome.status.expect("finished");
        if !status.success() {
            return Ok(self.failure(format!("`{command}` failed ({status})"), &outcome));
        }
        let parsed = self
            .score_in(work_dir)
            .unwrap_or_else(|| score_from_stdout(&outcome.stdout));
        Ok(match parsed {
            Ok(score) => score,
            Err(e) => self.failure(format!("`{command}`: unparsable score: {e}"), &outcome),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_scores() {
        let s =
            parse_score(&json!({"fitness": 0.5, "metrics": {"acc": 0.5, "note": "x"}})).unwrap();
        assert_eq!(s.fitness, 0.5);
        assert_eq!(s.metrics.len(), 1);
        assert!(parse_score(&json!({"metrics": {}})).is_err());
        assert!(parse_score(&json!([1])).is_err());
        let s = score_from_stdout("loading...\n{\"fitness\": 0.25}\n").unwrap();
        assert_eq!(s.fitness, 0.25);
        let e = score_from_stdout("hello\nworld\n").unwrap_err();
        assert!(e.contains("world"), "{e}");
    }

    #[test]
    fn rejects_unknown_placeholders_and_bad_timeouts() {
        let cfg = |command: &str, timeout_s: f64| CommandConfig {
            name: "t".into(),
            command: command.into(),
            timeout_s,
            cwd: None,
            env: BTreeMap::new(),
            lm_eval: None,
            temp_dir: None,
            persistent: false,
        };
        let e = CommandEvaluator::new(cfg("run {modeldir}", 1.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("{modeldir}") && e.contains("{model_dir}"), "{e}");
        assert!(CommandEvaluator::new(cfg("run {model_dir}", 0.0)).is_err());
        // JSON braces in a command are not placeholders.
        assert!(CommandEvaluator::new(cfg(r#"echo '{"fitness": 1}'"#, 1.0)).is_ok());
    }
}
