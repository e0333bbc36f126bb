//! Persistent mode (`persistent = true`): the command starts once and scores candidate after
//! candidate, so a tool that takes long to start (lm-evaluation-harness, vLLM) pays its
//! start-up once per run instead of once per candidate.
//!
//! # Protocol
//!
//! The command runs through `sh -c` in its own process group, with the `env`, `cwd` and device
//! variables of the one-shot mode (`{devices}`/`{device}`, `EVOMERGE_DEVICES`,
//! `CUDA_VISIBLE_DEVICES`/`HIP_VISIBLE_DEVICES` of the slot it serves); the per-candidate
//! placeholders (`{model_dir}`, `{split}`, ...) are not allowed in the command. One process
//! runs per parallel slot (per distinct set of held devices): a scorer is only ever sent one
//! request at a time.
//!
//! For each candidate evomerge writes the candidate's folder, then **one JSON line on the
//! command's stdin**:
//!
//! ```json
//! {"model_dir": "/tmp/evomerge-123-ab/model", "work_dir": "/tmp/evomerge-123-ab/work",
//!  "score_file": "/tmp/evomerge-123-ab/work/score.json", "split": "search",
//!  "generation": 3, "seed": 9, "devices": [2, 3], "label": "gen 3 #5"}
//! ```
//!
//! (one line; `devices` the held device indices, as in `{devices}`, empty when none) and reads
//! the command's stdout until **one JSON answer line**:
//!
//! - `{"fitness": 0.5, "metrics": {...}, "items": [...]}`: the score (as in one-shot mode);
//! - `{"error": "why"}`: the candidate is a failed row with that message, the scorer goes on;
//! - `{"done": true}`: the score is in `{score_file}` (or, with `lm_eval = {...}`, in the
//!   newest lm-evaluation-harness `results_*.json` under `work_dir`).
//!
//! Other stdout lines (a tool's progress output) are skipped and kept, with stderr, for the
//! failure message. After the answer the candidate's folder is removed.
//!
//! A scorer that exits or closes stdout before answering gives a failed row naming the
//! command, its exit status and the tail of its output; one that does not answer within
//! `timeout_s` (the first candidate's wait includes the start-up) has its process group
//! killed, and the candidate is a failed row. Either way the next candidate starts a fresh
//! process. At the end of the run (the evaluator is dropped) stdin is closed, the scorer has
//! 10 s to exit, then its process group gets SIGTERM and after 5 s SIGKILL. A stop request
//! (SIGINT/SIGTERM, [`evomerge_eval::interrupt`]) during a request stops the scorer's process
//! group at once (SIGTERM, 5 s, SIGKILL) and the evaluation returns
//! [`EvalError::Interrupted`].

use crate::{CommandEvaluator, STDERR_TAIL, group_alive, parse_score, tail};
use evomerge_eval::{Candidate, EvalError, EvalRequest, Score};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a scorer has to exit after its stdin is closed at the end of a run.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a scorer's process group has between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// The idle scorers of a persistent command evaluator; those left are shut down (stdin
/// closed, then SIGTERM, then SIGKILL) when it is dropped.
#[derive(Default)]
pub struct Servers {
    idle: Mutex<Vec<Server>>,
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.idle.lock().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("Servers").field("idle", &n).finish()
    }
}

impl Servers {
    /// An idle scorer started for the devices `key`, if one is alive.
    fn take(&self, key: &str) -> Option<Server> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = idle.iter().position(|s| s.key == key) {
            let mut s = idle.swap_remove(i);
            if s.alive() {
                return Some(s);
            }
            s.kill();
        }
        None
    }

    fn put(&self, server: Server) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(server);
    }

    /// Shut down the idle scorers holding any of the devices in `key` (another slot is about
    /// to start a scorer on them, and a GPU holds one model at a time).
    fn release_devices(&self, key: &str) {
        if key.is_empty() {
            return;
        }
        let wanted: Vec<&str> = key.split(',').collect();
        let clash: Vec<Server> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (clash, keep) = idle
                .drain(..)
                .partition(|s: &Server| s.key.split(',').any(|d| wanted.contains(&d)));
            *idle = keep;
            clash
        };
        shutdown_all(clash);
    }

    /// Shut down every idle scorer now (see [`shutdown_all`]).
    pub fn shutdown(&self) {
        let all: Vec<Server> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        shutdown_all(all);
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the stdout reader thread hands over.
enum Event {
    Line(String),
    Eof,
}

/// The recent output of a scorer (stderr lines and stdout lines that are not answers).
#[derive(Default)]
struct Log {
    text: String,
}

impl Log {
    fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > 4 * STDERR_TAIL {
            let keep = tail(&self.text, 2 * STDERR_TAIL).to_string();
            self.text = keep;
        }
    }
}

/// One running scorer process.
struct Server {
    child: Child,
    pgid: i32,
    /// The held devices it was started with (`CUDA_VISIBLE_DEVICES`), empty for none.
    key: String,
    /// The command as run (for messages).
    command: String,
    stdin: Option<ChildStdin>,
    lines: Receiver<Event>,
    log: Arc<Mutex<Log>>,
    /// Signalled when stderr reaches its end.
    stderr_done: Receiver<()>,
    /// Reaped: nothing of its process group is left to stop.
    done: bool,
}

fn read_lines(r: impl std::io::Read, mut each: impl FnMut(String)) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                each(line.trim_end_matches(['\n', '\r']).to_string());
            }
        }
    }
}

impl Server {
    fn start(ev: &CommandEvaluator, held: &str, devices: &str) -> Result<Server, EvalError> {
        let values = vec![
            ("devices", "EVOMERGE_DEVICES", devices.to_string()),
            (
                "device",
                "EVOMERGE_DEVICE",
                devices.split(',').next().unwrap_or("").to_string(),
            ),
        ];
        let command = ev.fill(&values);
        let mut cmd = ev.command(&command, &values, held);
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| EvalError::Io {
            path: match &ev.config.cwd {
                Some(cwd) => format!("`sh -c {command}` in cwd {}", cwd.display()),
                None => format!("`sh -c {command}`"),
            },
            source: e,
        })?;
        let pgid = child.id() as i32;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            read_lines(stdout, |l| {
                let _ = tx.send(Event::Line(l));
            });
            let _ = tx.send(Event::Eof);
        });
        let err_log = log.clone();
        let (done_tx, stderr_done) = channel();
        std::thread::spawn(move || {
            read_lines(stderr, |l| {
                err_log.lock().unwrap_or_else(|e| e.into_inner()).push(&l);
            });
            let _ = done_tx.send(());
        });
        Ok(Server {
            child,
            pgid,
            key: held.to_string(),
            command,
            stdin,
            lines,
            log,
            stderr_done,
            done: false,
        })
    }

    fn alive(&mut self) -> bool {
        !self.done && matches!(self.child.try_wait(), Ok(None))
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    fn output_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        tail(log.text.trim_end(), STDERR_TAIL).to_string()
    }

    fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) on the process group created for this scorer.
        unsafe {
            libc::kill(-self.pgid, signal);
        }
    }

    /// SIGKILL to the whole group, and reap.
    fn kill(&mut self) {
        if self.done {
            return;
        }
        self.stdin = None;
        self.signal_group(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }

    /// SIGTERM to the group, up to [`TERM_GRACE`] for it to go, then SIGKILL.
    fn terminate(&mut self) {
        if self.done {
            return;
        }
        self.stdin = None;
        self.signal_group(libc::SIGTERM);
        let grace = Instant::now() + TERM_GRACE;
        while Instant::now() < grace && group_alive(self.pgid) {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// The exit status once the scorer has closed stdout (it may take a moment to exit).
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Clean shutdown: close every scorer's stdin, give them [`SHUTDOWN_GRACE`] to exit, then
/// SIGTERM the groups still running and SIGKILL after [`TERM_GRACE`]. Anything a scorer
/// started that outlives it is killed with its group.
fn shutdown_all(mut servers: Vec<Server>) {
    if servers.is_empty() {
        return;
    }
    for s in &mut servers {
        s.stdin = None;
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while Instant::now() < deadline
        && servers
            .iter_mut()
            .any(|s| !s.done && matches!(s.child.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let running: Vec<bool> = servers
        .iter_mut()
        .map(|s| matches!(s.child.try_wait(), Ok(None)))
        .collect();
    for (s, &r) in servers.iter().zip(&running) {
        if r {
            s.signal_group(libc::SIGTERM);
        }
    }
    let grace = Instant::now() + TERM_GRACE;
    while Instant::now() < grace
        && servers
            .iter()
            .zip(&running)
            .any(|(s, &r)| r && group_alive(s.pgid))
    {
        for s in &mut servers {
            let _ = s.child.try_wait();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in &mut servers {
        s.kill();
    }
}

/// What an answer line says.
enum Answer {
    Score(Score),
    Error(String),
    Done,
    /// A JSON object meant as a score that is not one.
    Bad(String),
}

/// The answer a stdout line holds, or `None` for a line that is not an answer (progress
/// output, a JSON object without `fitness`, `error` or `done`).
fn answer(line: &str) -> Option<Answer> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    let v: Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    if let Some(e) = obj.get("error") {
        return Some(Answer::Error(match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }));
    }
    if obj.get("done") == Some(&Value::Bool(true)) {
        return Some(Answer::Done);
    }
    if obj.contains_key("fitness") {
        return Some(match parse_score(&v) {
            Ok(s) => Answer::Score(s),
            Err(e) => Answer::Bad(e.to_string()),
        });
    }
    None
}

/// The request line for one candidate.
fn request_line(
    folder: &crate::Folder,
    request: &EvalRequest,
    devices: &str,
    label: &str,
) -> String {
    let devices: Vec<Value> = devices
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(d))
        })
        .collect();
    serde_json::json!({
        "model_dir": folder.model_dir.display().to_string(),
        "work_dir": folder.work_dir.display().to_string(),
        "score_file": folder.work_dir.join("score.json").display().to_string(),
        "split": request.split.as_str(),
        "generation": request.generation,
        "seed": request.seed,
        "devices": devices,
        "label": label,
    })
    .to_string()
}

/// Score one candidate with a persistent scorer (see the module docs).
pub(crate) fn evaluate(
    ev: &CommandEvaluator,
    candidate: &dyn Candidate,
    request: &EvalRequest,
    held: &str,
    devices: &str,
) -> Result<Score, EvalError> {
    let folder = match ev.folder(candidate)? {
        Ok(f) => f,
        Err(score) => return Ok(score),
    };
    if let Some(signal) = evomerge_eval::interrupt::requested() {
        return Err(EvalError::Interrupted(signal));
    }
    let label = candidate.label();
    let line = request_line(&folder, request, devices, &label);
    let mut server = match ev.servers.take(held) {
        Some(s) => {
            // A failure message shows what this request printed (a fresh scorer's start-up
            // output is kept).
            s.log.lock().unwrap_or_else(|e| e.into_inner()).text.clear();
            s
        }
        None => {
            ev.servers.release_devices(held);
            Server::start(ev, held, devices)?
        }
    };
    let fail = |server: &Server, what: String| {
        let out = server.output_tail();
        let what = format!(
            "persistent `{}` (pid {}) {what} for {label}",
            server.command, server.pgid
        );
        if out.is_empty() {
            Score::failed(what)
        } else {
            Score::failed(format!("{what}; output tail:\n{out}"))
        }
    };
    // A write that fails means the scorer is going away: the read below sees it exit.
    let sent = server.send(&line);
    let deadline = Instant::now() + Duration::from_secs_f64(ev.config.timeout_s);
    let got = loop {
        match server.lines.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Line(l)) => match answer(&l) {
                Some(a) => break a,
                None => server
                    .log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(&l),
            },
            Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => {
                let status = server.exit_status();
                // What it wrote to stderr last (why it died) belongs in the message.
                let _ = server.stderr_done.recv_timeout(Duration::from_secs(1));
                server.kill();
                let what = match (status, &sent) {
                    (Some(s), _) => format!("exited ({s}) before answering"),
                    (None, Err(e)) => format!("closed stdout and stdin ({e}) before answering"),
                    (None, Ok(())) => "closed stdout before answering".to_string(),
                };
                return Ok(fail(&server, what));
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(signal) = evomerge_eval::interrupt::requested() {
                    server.terminate();
                    return Err(EvalError::Interrupted(signal));
                }
                if Instant::now() >= deadline {
                    server.kill();
                    return Ok(fail(
                        &server,
                        format!(
                            "timed out after {} s (killed; the next candidate starts it again)",
                            ev.config.timeout_s
                        ),
                    ));
                }
            }
        }
    };
    let score = match got {
        Answer::Score(s) => s,
        Answer::Error(e) => fail(&server, format!("answered the error \"{e}\"")),
        Answer::Bad(e) => fail(&server, format!("answered an unparsable score: {e}")),
        Answer::Done => match ev.score_in(&folder.work_dir) {
            Some(Ok(s)) => s,
            Some(Err(e)) => fail(&server, format!("answered done, but: {e}")),
            None => fail(
                &server,
                "answered {\"done\": true} but wrote no {score_file}".to_string(),
            ),
        },
    };
    ev.servers.put(server);
    drop(folder);
    Ok(score)
}
