//! Scoring a generation as one Slurm job array.
//!
//! [`SlurmExecutor::run`] writes the generation's task files and an sbatch script into the
//! generation's folder, submits one array (`sbatch --parsable --array=0,1,5`; the array index is
//! the candidate's index), and watches it with `scontrol show job` (and `squeue` once
//! `scontrol` forgets the job) until every candidate has a score file: no `sacct` is needed. A
//! task that ends FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ... (or ends without a
//! score file, or vanishes from the queue) is resubmitted, in one new array with the others of
//! its kind, up to `retries` times; then its candidate is a failed score naming the state and
//! the tail of the task's output. A task running longer than the task timeout is cancelled and
//! counts as timed out. Every submission is recorded in `jobs.json` in the generation's folder
//! before the runner waits on it, so a runner that was killed re-attaches to the arrays still
//! queued or running; a candidate whose score file exists is never submitted again.

use crate::ExecError;
use crate::spec::SlurmSpec;
use crate::task::{self, ScoreFile, TaskFile};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One `sbatch` of some of a generation's candidates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: String,
    /// Candidate indices (= array task ids).
    pub indices: Vec<usize>,
    pub submitted_unix: u64,
}

/// `jobs.json`: every submission of a generation, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Jobs {
    pub submissions: Vec<Submission>,
}

impl Jobs {
    fn attempts(&self, index: usize) -> u32 {
        self.submissions
            .iter()
            .filter(|s| s.indices.contains(&index))
            .count() as u32
    }

    fn latest(&self, index: usize) -> Option<&Submission> {
        self.submissions
            .iter()
            .rev()
            .find(|s| s.indices.contains(&index))
    }
}

/// `pending.json`: a submission whose job id is not in `jobs.json` yet. It is written before
/// `sbatch` runs and removed once `jobs.json` has the id, so a process killed in between leaves
/// the array's unique job name behind, and the next one finds the array in the queue by that
/// name instead of submitting the same candidates again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    job_name: String,
    indices: Vec<usize>,
    submitted_unix: u64,
}

/// A Slurm job state as `scontrol` / `squeue` write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub state: String,
    pub exit_code: Option<String>,
    pub reason: Option<String>,
}

impl TaskState {
    /// Still queued or running (it may yet write its score).
    pub fn active(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "CONFIGURING"
                | "RUNNING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "REQUEUE_FED"
                | "REQUEUE_HOLD"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "RESV_DEL_HOLD"
        )
    }

    pub fn running(&self) -> bool {
        matches!(self.state.as_str(), "RUNNING" | "COMPLETING")
    }

    fn describe(&self) -> String {
        let mut d = self.state.clone();
        if let Some(e) = self.exit_code.as_deref().filter(|e| *e != "0:0") {
            d.push_str(&format!(" (exit code {e})"));
        }
        if let Some(r) = self.reason.as_deref().filter(|r| *r != "None") {
            d.push_str(&format!(", reason {r}"));
        }
        d
    }
}

/// Task ids of an `ArrayTaskId=` value: `3`, `0-7`, `1,3,5-9%2`.
fn task_ids(spec: &str) -> Vec<usize> {
    let spec = spec.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// The fields of one `scontrol show job -o` line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// The state of each task of an array job as `scontrol show job -o` writes it.
pub fn parse_scontrol(text: &str) -> BTreeMap<usize, TaskState> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f = fields(line);
        let (Some(ids), Some(state)) = (f.get("ArrayTaskId"), f.get("JobState")) else {
            continue;
        };
        for id in task_ids(ids) {
            out.insert(
                id,
                TaskState {
                    state: state.to_string(),
                    exit_code: f.get("ExitCode").map(|s| s.to_string()),
                    reason: f.get("Reason").map(|s| s.to_string()),
                },
            );
        }
    }
    out
}

/// The state of each task as `squeue -h -r -j ID -o '%i|%T|%r'` writes it (`12_3|RUNNING|None`).
pub fn parse_squeue(text: &str) -> BTreeMap<usize, TaskState> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.trim().split('|');
        let (Some(id), Some(state)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some((_, ids)) = id.split_once('_') else {
            continue;
        };
        let ids = ids.trim_start_matches('[').trim_end_matches(']');
        for i in task_ids(ids) {
            out.insert(
                i,
                TaskState {
                    state: state.to_string(),
                    exit_code: None,
                    reason: parts.clone().next().map(str::to_string),
                },
            );
        }
    }
    out
}

/// Whether Slurm's client commands are on PATH.
pub fn available() -> bool {
    Command::new("sbatch")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_cmd(program: &str, args: &[&str]) -> Result<String, ExecError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        ExecError::Slurm(format!(
            "cannot run `{program}`: {e}; is Slurm's client (slurm-client) installed and on PATH?"
        ))
    })?;
    if !out.status.success() {
        return Err(ExecError::Slurm(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every task's state of array job `job`: `scontrol` first, `squeue` when `scontrol` no
/// longer knows the job. Tasks neither knows are missing from the map.
pub fn query(job: &str) -> BTreeMap<usize, TaskState> {
    match run_cmd("scontrol", &["show", "job", "-o", job]) {
        Ok(text) => parse_scontrol(&text),
        Err(_) => run_cmd("squeue", &["-h", "-r", "-j", job, "-o", "%i|%T|%r"])
            .map(|t| parse_squeue(&t))
            .unwrap_or_default(),
    }
}

/// Cancel one task (`scancel JOB_I`), or the whole array.
pub fn cancel(job: &str, index: Option<usize>) {
    let id = match index {
        Some(i) => format!("{job}_{i}"),
        None => job.to_string(),
    };
    let _ = Command::new("scancel").arg(&id).output();
}

/// The array job id of the queued or running job named `name`, if there is one.
fn find_by_name(name: &str) -> Option<String> {
    let out = run_cmd("squeue", &["-h", "--name", name, "-o", "%F"]).ok()?;
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

/// Forget a pending submission (its id is in `jobs.json`, or it never reached Slurm).
fn clear_pending(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("pending.json"));
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The last `n` bytes of a file (a task's output), on one line.
fn tail_of(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[start..])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What happened to one candidate's tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    /// Submissions of this candidate (0 when its score was already there).
    pub attempts: u32,
    /// `JOB_INDEX` of the task that scored it (or the last one tried).
    pub task: Option<String>,
}

/// What one [`SlurmExecutor::run`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    pub submitted_arrays: usize,
    pub submitted_tasks: usize,
    /// Arrays of an earlier process still queued or running that this one waited on.
    pub reattached_tasks: usize,
    /// Candidates whose score file was there already.
    pub collected: usize,
}

/// Scores generations as Slurm job arrays (see the module docs).
pub struct SlurmExecutor {
    spec: SlurmSpec,
    worker: PathBuf,
    name: String,
}

struct Watch {
    key: String,
    job: Option<String>,
    running_since: Option<Instant>,
    ended_since: Option<Instant>,
    last_failure: Option<String>,
}

impl SlurmExecutor {
    /// An executor running `worker` (`evomerge`; default: this process's binary) on every task;
    /// `name` prefixes the job names.
    pub fn new(spec: SlurmSpec, name: &str) -> Result<SlurmExecutor, ExecError> {
        let worker = match &spec.worker {
            Some(w) => w.clone(),
            None => std::env::current_exe().map_err(|e| {
                ExecError::Config(format!(
                    "cannot tell which evomerge binary the Slurm tasks should run ({e}); set [execution.slurm] worker = \"/shared/bin/evomerge\""
                ))
            })?,
        };
        let worker = std::path::absolute(&worker).unwrap_or(worker);
        if !worker.is_file() {
            return Err(ExecError::Config(format!(
                "[execution.slurm] worker = {} does not exist; point it at the evomerge binary, on storage the nodes see",
                worker.display()
            )));
        }
        Ok(SlurmExecutor {
            spec,
            worker,
            name: name.to_string(),
        })
    }

    pub fn worker(&self) -> &Path {
        &self.worker
    }

    /// The sbatch script of a generation's folder (the array index picks the task file).
    pub fn script(&self, dir: &Path, job_name: &str) -> String {
        let s = &self.spec;
        let mut lines = vec!["#!/bin/bash".to_string()];
        let mut opt = |o: String| lines.push(format!("#SBATCH {o}"));
        opt(format!("--job-name={job_name}"));
        opt(format!("--output={}/slurm-%A_%a.out", dir.display()));
        if let Some(p) = &s.partition {
            opt(format!("--partition={p}"));
        }
        if let Some(a) = &s.account {
            opt(format!("--account={a}"));
        }
        if let Some(g) = &s.gres {
            opt(format!("--gres={g}"));
        }
        if let Some(c) = s.cpus {
            opt(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &s.mem {
            opt(format!("--mem={m}"));
        }
        if let Some(t) = &s.time {
            opt(format!("--time={t}"));
        }
        for e in &s.extra {
            opt(e.trim().trim_start_matches("#SBATCH").trim().to_string());
        }
        lines.push("set -e".into());
        if let Some(setup) = &s.setup {
            lines.push("# setup".into());
            lines.extend(setup.lines().map(str::to_string));
        }
        lines.push(format!(
            "exec {} worker {}/task-$SLURM_ARRAY_TASK_ID.json",
            shell_quote(&self.worker.display().to_string()),
            shell_quote(&dir.display().to_string())
        ));
        lines.join("\n") + "\n"
    }

    /// The job name of a generation folder's arrays.
    fn job_name(&self, dir: &Path) -> String {
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{}-{label}", self.name)
    }

    /// Submit one array of `indices`. Until the caller records the id in `jobs.json` (and
    /// calls [`clear_pending`]), `pending.json` names the array by a unique job name.
    fn submit(&self, dir: &Path, indices: &[usize]) -> Result<String, ExecError> {
        let list = indices
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let script = dir.join("job.sh");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let job_name = format!("{}.{}.{nanos}", self.job_name(dir), std::process::id());
        task::write_json(
            &dir.join("pending.json"),
            &Pending {
                job_name: job_name.clone(),
                indices: indices.to_vec(),
                submitted_unix: unix_now(),
            },
        )?;
        let out = run_cmd(
            "sbatch",
            &[
                "--parsable",
                &format!("--job-name={job_name}"),
                &format!("--array={list}"),
                &script.display().to_string(),
            ],
        );
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                clear_pending(dir);
                return Err(e);
            }
        };
        let id = out
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(ExecError::Slurm(format!(
                "sbatch printed {:?}, not a job id",
                out.trim()
            )));
        }
        Ok(id)
    }

    /// Score `tasks` (one generation, all in `dir`), calling `done` with each candidate's
    /// score as soon as it is known (already there, scored, or failed for good). `stop` is
    /// asked between looks at the queue; when it returns a signal the arrays still running
    /// are cancelled and [`ExecError::Interrupted`] returned.
    pub fn run(
        &self,
        dir: &Path,
        tasks: &[TaskFile],
        stop: &dyn Fn() -> Option<i32>,
        mut done: impl FnMut(&TaskFile, ScoreFile, TaskReport),
    ) -> Result<RunStats, ExecError> {
        let mut stats = RunStats::default();
        std::fs::create_dir_all(dir)
            .map_err(|e| ExecError::Io(format!("{}: {e}", dir.display())))?;
        let script = self.script(dir, &self.job_name(dir));
        task::write_atomic(&dir.join("job.sh"), script.as_bytes())?;
        let by_index: BTreeMap<usize, &TaskFile> = tasks.iter().map(|t| (t.index, t)).collect();
        let mut waiting: BTreeMap<usize, Watch> = BTreeMap::new();
        for t in tasks {
            let path = task::task_path(dir, t.index);
            let same = task::read_json::<TaskFile>(&path).ok().as_ref() == Some(t);
            if !same {
                // A new candidate at this index (or none was written): its old score is stale.
                let _ = std::fs::remove_file(task::score_path(dir, t.index));
                task::write_json(&path, t)?;
            }
            if let Some(s) = task::read_score(dir, t.index, &t.key) {
                stats.collected += 1;
                done(
                    t,
                    s,
                    TaskReport {
                        attempts: 0,
                        task: None,
                    },
                );
                continue;
            }
            waiting.insert(
                t.index,
                Watch {
                    key: t.key.clone(),
                    job: None,
                    running_since: None,
                    ended_since: None,
                    last_failure: None,
                },
            );
        }
        let jobs_path = dir.join("jobs.json");
        let mut jobs: Jobs = if jobs_path.exists() {
            task::read_json(&jobs_path)?
        } else {
            Jobs::default()
        };
        // An array an earlier process submitted but did not record (killed between sbatch and
        // jobs.json): still in the queue under its unique name, it is recorded now.
        if let Ok(p) = task::read_json::<Pending>(&dir.join("pending.json")) {
            if let Some(id) = find_by_name(&p.job_name)
                && !jobs.submissions.iter().any(|s| s.job_id == id)
            {
                jobs.submissions.push(Submission {
                    job_id: id,
                    indices: p.indices,
                    submitted_unix: p.submitted_unix,
                });
                task::write_json(&jobs_path, &jobs)?;
            }
            clear_pending(dir);
        }
        // Re-attach to what an earlier process submitted and is still queued or running.
        let earlier: BTreeSet<String> = waiting
            .keys()
            .filter_map(|i| jobs.latest(*i).map(|s| s.job_id.clone()))
            .collect();
        for job in earlier {
            let states = query(&job);
            for (i, w) in waiting.iter_mut() {
                if jobs.latest(*i).is_some_and(|s| s.job_id == job) {
                    match states.get(i) {
                        Some(st) if st.active() => {
                            w.job = Some(job.clone());
                            stats.reattached_tasks += 1;
                        }
                        Some(st) => {
                            w.last_failure = Some(format!(
                                "task {job}_{i} ended {} without a score file",
                                st.describe()
                            ))
                        }
                        None => {
                            w.last_failure = Some(format!(
                                "task {job}_{i} left the queue without a score file"
                            ))
                        }
                    }
                }
            }
        }
        let poll = Duration::from_secs_f64(self.spec.poll_s);
        let grace = (poll * 3).max(Duration::from_secs(1));
        let timeout = Duration::from_secs_f64(self.spec.task_timeout());
        let tries = self.spec.retries + 1;
        let mut first = true;
        while !waiting.is_empty() {
            if let Some(signal) = stop() {
                let active: BTreeSet<&String> =
                    waiting.values().filter_map(|w| w.job.as_ref()).collect();
                for job in active {
                    cancel(job, None);
                }
                return Err(ExecError::Interrupted(signal));
            }
            // Give up on candidates out of tries; submit the others that have no task.
            let idle: Vec<usize> = waiting
                .iter()
                .filter(|(_, w)| w.job.is_none())
                .map(|(i, _)| *i)
                .collect();
            let mut submit = Vec::new();
            for i in idle {
                let attempts = jobs.attempts(i);
                if attempts >= tries {
                    let w = waiting.remove(&i).expect("waiting");
                    let why = w.last_failure.unwrap_or_else(|| "no score file".into());
                    let job = jobs.latest(i).map(|s| s.job_id.clone()).unwrap_or_default();
                    let out = tail_of(&dir.join(format!("slurm-{job}_{i}.out")), 600);
                    let mut msg = format!(
                        "slurm: {why}; gave up after {attempts} attempt(s) ([execution.slurm] retries = {})",
                        self.spec.retries
                    );
                    if !out.is_empty() {
                        msg.push_str(&format!("; end of its output: {out}"));
                    }
                    done(
                        by_index[&i],
                        ScoreFile::failed(&w.key, msg),
                        TaskReport {
                            attempts,
                            task: Some(format!("{job}_{i}")),
                        },
                    );
                } else {
                    submit.push(i);
                }
            }
            if !submit.is_empty() {
                let id = self.submit(dir, &submit)?;
                jobs.submissions.push(Submission {
                    job_id: id.clone(),
                    indices: submit.clone(),
                    submitted_unix: unix_now(),
                });
                task::write_json(&jobs_path, &jobs)?;
                clear_pending(dir);
                stats.submitted_arrays += 1;
                stats.submitted_tasks += submit.len();
                for i in &submit {
                    let w = waiting.get_mut(i).expect("waiting");
                    w.job = Some(id.clone());
                    w.running_since = None;
                    w.ended_since = None;
                }
            }
            if waiting.is_empty() {
                break;
            }
            if !first {
                // Sleep in small steps so a stop request is seen quickly.
                let until = Instant::now() + poll;
                while Instant::now() < until && stop().is_none() {
                    std::thread::sleep(Duration::from_millis(20).min(poll));
                }
            }
            first = false;
            // Scores first: a task that wrote its score is done whatever its state says.
            let scored: Vec<usize> = waiting
                .iter()
                .filter(|(i, _)| task::score_path(dir, **i).exists())
                .map(|(i, _)| *i)
                .collect();
            for i in scored {
                let key = waiting[&i].key.clone();
                if let Some(s) = task::read_score(dir, i, &key) {
                    let w = waiting.remove(&i).expect("waiting");
                    done(
                        by_index[&i],
                        s,
                        TaskReport {
                            attempts: jobs.attempts(i),
                            task: w.job.map(|j| format!("{j}_{i}")),
                        },
                    );
                }
            }
            let live: BTreeSet<String> = waiting.values().filter_map(|w| w.job.clone()).collect();
            let states: BTreeMap<String, BTreeMap<usize, TaskState>> = live
                .into_iter()
                .map(|j| {
                    let s = query(&j);
                    (j, s)
                })
                .collect();
            let now = Instant::now();
            for (i, w) in waiting.iter_mut() {
                let Some(job) = w.job.clone() else { continue };
                let st = states.get(&job).and_then(|m| m.get(i));
                match st {
                    Some(st) if st.active() => {
                        w.ended_since = None;
                        if st.running() {
                            let since = *w.running_since.get_or_insert(now);
                            if now - since > timeout {
                                cancel(&job, Some(*i));
                                w.last_failure = Some(format!(
                                    "task {job}_{i} ran longer than {:.0} s (task_timeout_s) and was cancelled",
                                    timeout.as_secs_f64()
                                ));
                                w.job = None;
                            }
                        }
                    }
                    other => {
                        // Ended (or gone) without a score yet: wait a little for the file
                        // (shared storage can show it late), then count a failed attempt.
                        let since = *w.ended_since.get_or_insert(now);
                        if now - since >= grace {
                            w.last_failure = Some(match other {
                                Some(st) => format!(
                                    "task {job}_{i} ended {} without a score file",
                                    st.describe()
                                ),
                                None => {
                                    format!("task {job}_{i} left the queue without a score file")
                                }
                            });
                            w.job = None;
                        }
                    }
                }
            }
        }
        Ok(stats)
    }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-,=+:@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scontrol_and_squeue() {
        let text = "JobId=7 ArrayJobId=5 ArrayTaskId=2 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 RunTime=00:00:00\n\
                    JobId=5 ArrayJobId=5 ArrayTaskId=3-5,8%2 JobState=PENDING Reason=Resources ExitCode=0:0\n\
                    JobId=6 ArrayJobId=5 ArrayTaskId=0 JobState=COMPLETED Reason=None ExitCode=0:0\n";
        let m = parse_scontrol(text);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 5, 8]);
        assert!(!m[&2].active() && m[&2].describe().contains("exit code 1:0"));
        assert!(m[&4].active() && !m[&4].running());
        assert!(!m[&0].active());
        let q = parse_squeue("12_3|RUNNING|None\n12_[4-6]|PENDING|Priority\n");
        assert!(q[&3].running());
        assert_eq!(q.keys().copied().collect::<Vec<_>>(), [3, 4, 5, 6]);
    }

    #[test]
    fn the_script_carries_every_option() {
        let spec = SlurmSpec {
            partition: Some("gpu".into()),
            account: Some("proj1".into()),
            gres: Some("gpu:1".into()),
            cpus: Some(8),
            mem: Some("64G".into()),
            time: Some("01:00:00".into()),
            extra: vec!["--qos=high".into(), "#SBATCH --constraint=a100".into()],
            setup: Some("module load cuda\nsource /shared/venv/bin/activate".into()),
            worker: Some(PathBuf::from("/bin/sh")),
            ..Default::default()
        };
        let ex = SlurmExecutor::new(spec, "toy").unwrap();
        let s = ex.script(Path::new("/shared/run/exec/ps-g0"), "toy-ps-g0");
        for want in [
            "#SBATCH --job-name=toy-ps-g0",
            "#SBATCH --output=/shared/run/exec/ps-g0/slurm-%A_%a.out",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=proj1",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --mem=64G",
            "#SBATCH --time=01:00:00",
            "#SBATCH --qos=high",
            "#SBATCH --constraint=a100",
            "module load cuda\nsource /shared/venv/bin/activate\n",
            "exec /bin/sh worker /shared/run/exec/ps-g0/task-$SLURM_ARRAY_TASK_ID.json",
        ] {
            assert!(s.contains(want), "{want} missing from\n{s}");
        }
        // Options come before the first command (sbatch stops reading #SBATCH there).
        let last_opt = s.rfind("#SBATCH").unwrap();
        assert!(last_opt < s.find("set -e").unwrap());
        let e = SlurmExecutor::new(
            SlurmSpec {
                worker: Some(PathBuf::from("/no/such/evomerge")),
                ..Default::default()
            },
            "x",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("/no/such/evomerge"), "{e}");
    }

    /// Slurm's commands here, or the reason the test is skipped (a failure under CI=true).
    pub(crate) fn slurm_or_skip(test: &str) -> bool {
        if available() {
            return true;
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{test}: CI=true but Slurm's sbatch is not on PATH; .ci/run installs and starts a one-node cluster"
            );
        }
        eprintln!(
            "skipping {test}: no sbatch on PATH (.ci/run installs Slurm and starts a one-node cluster)"
        );
        false
    }

    /// A worker that scores a task with its index / 10 (task 2 exits 1, task 3 sleeps).
    fn fake_worker(dir: &Path) -> PathBuf {
        let w = dir.join("fake-evomerge");
        std::fs::write(
            &w,
            r#"#!/bin/sh
task="$2"
dir=$(dirname "$task")
i=${task##*task-}; i=${i%.json}
[ "$i" = 2 ] && { echo "task 2 breaks" >&2; exit 1; }
[ "$i" = 3 ] && sleep 30
key=$(grep -o '"key": "[^"]*"' "$task" | sed 's/"key": //')
printf '{"key": %s, "fitness": 0.%s, "host": "%s"}' "$key" "$i" "$(hostname)" > "$dir/.score-$i.tmp"
mv "$dir/.score-$i.tmp" "$dir/score-$i.json"
"#,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
        w
    }

    fn tasks(run: &Path, n: usize) -> Vec<TaskFile> {
        (0..n)
            .map(|i| TaskFile {
                run_dir: run.to_path_buf(),
                kind: "ps".into(),
                generation: 0,
                index: i,
                split: "search".into(),
                seed: 1,
                key: format!("key{i}"),
                label: format!("ps gen 0 #{i}"),
                candidate: String::new(),
            })
            .collect()
    }

    #[test]
    fn job_arrays_score_retry_time_out_and_reattach() {
        if !slurm_or_skip("job_arrays_score_retry_time_out_and_reattach") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let spec = SlurmSpec {
            worker: Some(fake_worker(tmp.path())),
            retries: 1,
            poll_s: 0.2,
            task_timeout_s: Some(3.0),
            ..Default::default()
        };
        let ex = SlurmExecutor::new(spec, "exec-test").unwrap();
        let dir = crate::task::generation_dir(tmp.path(), "ps", 0);
        let all = tasks(tmp.path(), 5);
        let mut got = BTreeMap::new();
        let stats = ex
            .run(&dir, &all, &|| None, |t, s, r| {
                got.insert(t.index, (s, r));
            })
            .unwrap();
        assert_eq!(got.len(), 5);
        for i in [0, 1, 4] {
            assert_eq!(got[&i].0.fitness, Some(i as f64 / 10.0), "{:?}", got[&i]);
            assert_eq!(got[&i].1.attempts, 1);
        }
        // Task 2 exits 1 on both tries: a failed candidate naming the state and its stderr.
        let (s2, r2) = &got[&2];
        let e = s2.error.as_deref().unwrap();
        assert!(s2.fitness.is_none() && r2.attempts == 2, "{s2:?} {r2:?}");
        assert!(e.contains("FAILED") && e.contains("task 2 breaks"), "{e}");
        // Task 3 runs past the task timeout: cancelled, retried, then failed.
        let (s3, r3) = &got[&3];
        let e = s3.error.as_deref().unwrap();
        assert!(s3.fitness.is_none() && r3.attempts == 2, "{s3:?}");
        assert!(e.contains("ran longer than 3 s"), "{e}");
        // One array for the generation, then the resubmissions (2 and 3 end at different
        // times, so one or two more arrays).
        assert_eq!(stats.submitted_tasks, 7, "{stats:?}");
        let jobs: Jobs = crate::task::read_json(&dir.join("jobs.json")).unwrap();
        assert_eq!(jobs.submissions.len(), stats.submitted_arrays);
        assert_eq!(jobs.submissions[0].indices, [0, 1, 2, 3, 4]);
        assert_eq!(
            (jobs.attempts(2), jobs.attempts(3), jobs.attempts(4)),
            (2, 2, 1)
        );

        // Run again over the same folder: every score is collected, nothing is submitted
        // (the failed ones have no score file; they are out of tries and fail again at once).
        let mut again = 0;
        let stats = ex.run(&dir, &all, &|| None, |_, _, _| again += 1).unwrap();
        assert_eq!(again, 5);
        assert_eq!(
            (stats.collected, stats.submitted_tasks),
            (3, 0),
            "{stats:?}"
        );

        // An array submitted by a process that then died: the next one re-attaches to it.
        let dir = crate::task::generation_dir(tmp.path(), "ps", 1);
        let some: Vec<TaskFile> = tasks(tmp.path(), 2)
            .into_iter()
            .map(|mut t| {
                t.generation = 1;
                t
            })
            .collect();
        std::fs::create_dir_all(&dir).unwrap();
        let script = ex.script(&dir, "exec-test-reattach");
        std::fs::write(dir.join("job.sh"), script).unwrap();
        for t in &some {
            crate::task::write_json(&crate::task::task_path(&dir, t.index), t).unwrap();
        }
        let id = ex.submit(&dir, &[0, 1]).unwrap();
        crate::task::write_json(
            &dir.join("jobs.json"),
            &Jobs {
                submissions: vec![Submission {
                    job_id: id.clone(),
                    indices: vec![0, 1],
                    submitted_unix: 0,
                }],
            },
        )
        .unwrap();
        let mut got = Vec::new();
        let stats = ex
            .run(&dir, &some, &|| None, |t, s, r| {
                got.push((t.index, s.fitness, r.task))
            })
            .unwrap();
        assert_eq!(stats.submitted_tasks, 0, "{stats:?}");
        assert_eq!(stats.reattached_tasks + stats.collected, 2, "{stats:?}");
        got.sort_by_key(|g| g.0);
        assert_eq!(got[1].1, Some(0.1));

        // Killed between sbatch and jobs.json: the array is found by its pending name and
        // adopted, nothing is submitted twice.
        let dir = crate::task::generation_dir(tmp.path(), "ps", 2);
        let some: Vec<TaskFile> = tasks(tmp.path(), 2)
            .into_iter()
            .map(|mut t| {
                t.generation = 2;
                t
            })
            .collect();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("job.sh"), ex.script(&dir, "exec-test-pending")).unwrap();
        for t in &some {
            crate::task::write_json(&crate::task::task_path(&dir, t.index), t).unwrap();
        }
        let id = ex.submit(&dir, &[0, 1]).unwrap();
        assert!(dir.join("pending.json").exists() && !dir.join("jobs.json").exists());
        // held, so it is surely still queued when the next process looks; released soon after
        run_cmd("scontrol", &["hold", &id]).unwrap();
        let release = {
            let id = id.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                run_cmd("scontrol", &["release", &id]).unwrap();
            })
        };
        let mut got = Vec::new();
        let stats = ex
            .run(&dir, &some, &|| None, |t, s, _| {
                got.push((t.index, s.fitness))
            })
            .unwrap();
        release.join().unwrap();
        assert_eq!(stats.submitted_tasks, 0, "{stats:?}");
        got.sort_by_key(|g| g.0);
        assert_eq!(got, [(0, Some(0.0)), (1, Some(0.1))]);
        let jobs: Jobs = crate::task::read_json(&dir.join("jobs.json")).unwrap();
        assert_eq!(jobs.submissions.len(), 1);
        assert_eq!(jobs.submissions[0].job_id, id);
        assert!(!dir.join("pending.json").exists());
    }

    /// A stop request (Ctrl-C) while an array runs cancels it: the run returns `Interrupted`
    /// with the signal at once, and the task still running (it would sleep 30 s) leaves the
    /// queue.
    #[test]
    fn a_stop_request_cancels_the_arrays_in_flight() {
        if !slurm_or_skip("a_stop_request_cancels_the_arrays_in_flight") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let spec = SlurmSpec {
            worker: Some(fake_worker(tmp.path())),
            poll_s: 0.2,
            ..Default::default()
        };
        let ex = SlurmExecutor::new(spec, "exec-test-stop").unwrap();
        let dir = crate::task::generation_dir(tmp.path(), "ps", 0);
        // task 1 scores at once, task 3 sleeps 30 s
        let all: Vec<TaskFile> = tasks(tmp.path(), 4)
            .into_iter()
            .filter(|t| t.index == 1 || t.index == 3)
            .collect();
        let started = Instant::now();
        // stop once the array runs (task 1 has scored), or after 10 s in any case
        let stop = || {
            (dir.join("score-1.json").exists() || started.elapsed() > Duration::from_secs(10))
                .then_some(2)
        };
        let e = ex.run(&dir, &all, &stop, |_, _, _| {}).unwrap_err();
        assert!(matches!(e, ExecError::Interrupted(2)), "{e}");
        let jobs: Jobs = crate::task::read_json(&dir.join("jobs.json")).unwrap();
        let job = &jobs.submissions[0].job_id;
        // scancel is asynchronous: the task leaves the queue within a few seconds
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(200));
            query(job).values().all(|st| !st.active())
        });
        assert!(
            gone,
            "task {job}_3 is still queued or running after the stop"
        );
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "the stop waited for the task"
        );
    }
}
