//! The evaluate step of a generation, as a seam: an [`Executor`] takes the generation's
//! prepared candidates (a [`Batch`]: decoded, deduplicated, not in the cache) and hands back
//! each one's [`Finished`] result as soon as it completes, in any order. The search loop
//! logs each result as it arrives (nothing finished is lost when the run stops), then tells
//! the optimizer once the batch is done.
//!
//! [`LocalPool`] is the default: one thread builds candidates (merges in memory or layer
//! paths), `parallelism` threads score them with the experiment's evaluators, all on the run's
//! device. Another executor (devices of a GPU box, a Slurm job array, ...) is one module that
//! implements [`Executor`] plus one arm in [`for_experiment`]. It gets, per job, the decoded
//! candidate ([`Job::decoded`], whose [`Decoded::canonical`] text is what a remote worker
//! needs to rebuild it), and a [`Scorer`] that builds and scores a job in this process (what
//! an executor runs per job, or what a worker process does after reading the job).

use crate::RunError;
use crate::evaluators::Evaluators;
use crate::experiment::Experiment;
use crate::log::Status;
use crate::space::{Decoded, Space};
use crate::stage::StageKind;
use crate::state::Scored;
use evomerge_eval::{Candidate, EvalError, EvalRequest};
use evomerge_exec::{DevicePool, ExecKind, SlurmExecutor};
use evomerge_kernels::Device;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub mod devices;
pub mod slurm;

/// One candidate to evaluate.
pub struct Job<'a> {
    /// Its index within the generation.
    pub index: usize,
    /// What it decodes to (a recipe or a layer path).
    pub decoded: &'a Decoded,
    /// The cache key ([`Decoded::key`]).
    pub key: &'a str,
    /// A label for logs and temporary folders, e.g. `ps gen 3 #5`.
    pub label: String,
}

/// A generation's candidates to evaluate.
pub struct Batch<'a> {
    /// The run folder (shared storage for executors that run elsewhere).
    pub run_dir: &'a Path,
    pub stage: StageKind,
    pub generation: u64,
    /// The split and the item subsample every candidate of the generation is scored on.
    pub request: &'a EvalRequest,
    pub jobs: Vec<Job<'a>>,
}

/// The result of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// [`Job::index`].
    pub index: usize,
    /// `Ok` or `Failed` (a candidate that fails to build or score is a result, not an error).
    pub status: Status,
    pub scored: Scored,
    /// Building (merging) and scoring wall times.
    pub merge_ms: f64,
    pub eval_ms: f64,
}

impl Finished {
    /// A candidate that failed before it was scored.
    pub fn failed(index: usize, error: String, merge_ms: f64) -> Finished {
        Finished {
            index,
            status: Status::Failed,
            scored: Scored {
                fitness: None,
                metrics: BTreeMap::new(),
                error: Some(error),
            },
            merge_ms,
            eval_ms: 0.0,
        }
    }
}

/// Where a generation's candidates are evaluated.
pub trait Executor: Send + Sync {
    /// A short name for messages (`local`, ...).
    fn name(&self) -> &str;

    /// Evaluate every job of `batch`, calling `done` with each result as it completes (any
    /// order, each job exactly once). `scorer` builds and scores one job in this process.
    ///
    /// A setup error (the same for every candidate, e.g. an evaluator that cannot run) or a
    /// stop request ([`evomerge_eval::interrupt`]) ends the batch with `Err`; results that
    /// completed before must still be handed to `done` first. An error `done` returns (the
    /// log cannot be written) ends the batch with that error.
    fn evaluate(
        &self,
        batch: &Batch<'_>,
        scorer: &Scorer<'_>,
        done: &mut dyn FnMut(Finished) -> Result<(), RunError>,
    ) -> Result<(), RunError>;

    /// Each device's busy time so far, for executors that hand out devices (`None`: this one
    /// does not); read before and after a batch, it gives the generation's utilization.
    fn device_busy(&self) -> Option<Vec<(String, Duration)>> {
        None
    }
}

/// The executor an experiment asks for: `[execution] kind = "slurm"` ([`slurm::SlurmArrays`]),
/// `[execution] devices` ([`devices::DevicesExecutor`]), else the local pool with
/// `parallelism` workers. A new executor kind is one arm here. `device` is the run's device:
/// on a GPU (`device = "wgpu"`), each `[execution] devices` entry is resolved to its wgpu
/// adapter here, so a candidate is merged and scored in-process on the GPU it holds.
pub fn for_experiment(exp: &Experiment, device: &Device) -> Result<Box<dyn Executor>, RunError> {
    let config = |e: evomerge_exec::ExecError| RunError::Config(e.to_string());
    match exp.execution.kind {
        ExecKind::Slurm => {
            let slurm = SlurmExecutor::new(exp.execution.slurm(), &exp.name).map_err(config)?;
            Ok(Box::new(slurm::SlurmArrays::new(slurm)))
        }
        ExecKind::Local => {
            let devices = exp.execution.devices().map_err(config)?;
            if devices.is_empty() {
                return Ok(Box::new(LocalPool::new(
                    exp.parallelism,
                    exp.prefetch.unwrap_or(0),
                )));
            }
            let placed = if evomerge_kernels::is_gpu(device) {
                let on = devices
                    .iter()
                    .map(|d| evomerge_kernels::wgpu_device_for(d.kind(), d.index))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| RunError::Config(format!("[execution] devices: {e}")))?;
                Some(on)
            } else {
                None
            };
            let pool =
                DevicePool::new(devices, exp.execution.devices_per_candidate).map_err(config)?;
            Ok(Box::new(devices::DevicesExecutor::new(
                pool,
                exp.prefetch,
                placed,
            )))
        }
    }
}

/// Whether an evaluation error is the candidate's fault (score it as failed and go on) rather
/// than a broken setup (stop the run).
pub(crate) fn candidate_fault(e: &EvalError) -> bool {
    matches!(e, EvalError::Candidate(_) | EvalError::Model(_))
}

/// Builds a job's candidate in this process and scores it with the run's evaluators.
pub struct Scorer<'a> {
    pub space: &'a Space,
    pub evaluators: &'a Evaluators,
}

impl Scorer<'_> {
    /// Build the candidate (merge in memory, or a layer path over the loaded models); the
    /// error is the candidate's (it is logged as `build: ...`).
    pub fn build(&self, decoded: &Decoded, label: &str) -> Result<Box<dyn Candidate>, String> {
        self.space.build(decoded, label, None)
    }

    /// Build the candidate on `device` (the GPU it holds): merged there, and its model and
    /// the in-process evaluators run there.
    pub fn build_on(
        &self,
        decoded: &Decoded,
        label: &str,
        device: &Device,
    ) -> Result<Box<dyn Candidate>, String> {
        self.space.build(decoded, label, Some(device))
    }

    /// Score a built candidate: `Ok` with a failed status when the candidate is at fault,
    /// `Err` when the evaluation setup is broken.
    pub fn score(
        &self,
        index: usize,
        candidate: &dyn Candidate,
        request: &EvalRequest,
        merge_ms: f64,
    ) -> Result<Finished, RunError> {
        let t = Instant::now();
        let (status, scored) = match self.evaluators.evaluate(candidate, request) {
            Ok(score) => {
                let failed = score.is_failed();
                (
                    if failed { Status::Failed } else { Status::Ok },
                    Scored {
                        fitness: (!failed).then_some(score.fitness),
                        metrics: score.metrics,
                        error: score.failure,
                    },
                )
            }
            Err(e) if candidate_fault(&e) => (
                Status::Failed,
                Scored {
                    fitness: None,
                    metrics: BTreeMap::new(),
                    error: Some(e.to_string()),
                },
            ),
            Err(e) => return Err(RunError::Eval(e)),
        };
        Ok(Finished {
            index,
            status,
            scored,
            merge_ms,
            eval_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Build and score one candidate.
    pub fn run(
        &self,
        index: usize,
        decoded: &Decoded,
        label: &str,
        request: &EvalRequest,
    ) -> Result<Finished, RunError> {
        let t = Instant::now();
        let built = self.build(decoded, label);
        let merge_ms = t.elapsed().as_secs_f64() * 1e3;
        match built {
            Ok(c) => self.score(index, c.as_ref(), request, merge_ms),
            Err(e) => Ok(Finished::failed(index, format!("build: {e}"), merge_ms)),
        }
    }
}

/// Stop here if a stop was requested.
pub(crate) fn check_interrupt() -> Result<(), RunError> {
    match evomerge_eval::interrupt::requested() {
        Some(signal) => Err(RunError::Eval(EvalError::Interrupted(signal))),
        None => Ok(()),
    }
}

/// In this process: one thread builds candidates in job order, `workers` threads score them.
/// At most `workers + prefetch` candidates exist at once (scored, built and waiting, or being
/// built): with `prefetch = 0` the next merge starts when a worker is free, so memory holds one
/// candidate per worker; `prefetch = 1` overlaps the next merge with the evaluations.
pub struct LocalPool {
    workers: usize,
    prefetch: usize,
}

impl LocalPool {
    pub fn new(workers: usize, prefetch: usize) -> LocalPool {
        LocalPool {
            workers: workers.max(1),
            prefetch,
        }
    }
}

/// A counting semaphore over the candidates alive at once; `close` wakes and refuses every
/// waiter (the scorers stopped).
struct Alive {
    held: Mutex<(usize, bool)>,
    freed: std::sync::Condvar,
    max: usize,
}

impl Alive {
    fn new(max: usize) -> Alive {
        Alive {
            held: Mutex::new((0, false)),
            freed: std::sync::Condvar::new(),
            max: max.max(1),
        }
    }

    /// Wait for room for one more candidate; `false` once closed.
    fn enter(&self) -> bool {
        let mut g = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while g.0 >= self.max && !g.1 {
            g = self.freed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.1 {
            return false;
        }
        g.0 += 1;
        true
    }

    fn leave(&self) {
        let mut g = self.held.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        self.freed.notify_all();
    }

    fn close(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.freed.notify_all();
    }
}

impl Executor for LocalPool {
    fn name(&self) -> &str {
        "local"
    }

    fn evaluate(
        &self,
        batch: &Batch<'_>,
        scorer: &Scorer<'_>,
        done: &mut dyn FnMut(Finished) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let workers = self.workers;
        let request = batch.request;
        let alive = Alive::new(workers + self.prefetch);
        let alive = &alive;
        std::thread::scope(|s| -> Result<(), RunError> {
            type Built = (usize, Result<Box<dyn Candidate>, String>, f64);
            let (job_tx, job_rx) = mpsc::channel::<Built>();
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (res_tx, res_rx) = mpsc::channel::<Result<Finished, RunError>>();
            s.spawn(move || {
                for job in &batch.jobs {
                    if !alive.enter() {
                        break;
                    }
                    let t0 = Instant::now();
                    let built = scorer.build(job.decoded, &job.label);
                    if job_tx
                        .send((job.index, built, t0.elapsed().as_secs_f64() * 1e3))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            for _ in 0..workers {
                let job_rx = Arc::clone(&job_rx);
                let res_tx = res_tx.clone();
                s.spawn(move || {
                    loop {
                        let job = job_rx.lock().expect("job queue").recv();
                        let Ok((i, built, merge_ms)) = job else { break };
                        if let Err(e) = check_interrupt() {
                            drop(built);
                            alive.close();
                            let _ = res_tx.send(Err(e));
                            break;
                        }
                        let result = match built {
                            Err(e) => Ok(Finished::failed(i, format!("build: {e}"), merge_ms)),
                            Ok(candidate) => scorer.score(i, candidate.as_ref(), request, merge_ms),
                        };
                        // the candidate is dropped: room for the next one
                        alive.leave();
                        let fatal = result.is_err();
                        if res_tx.send(result).is_err() || fatal {
                            alive.close();
                            break;
                        }
                    }
                });
            }
            drop(res_tx);
            // Hand over every evaluation that finishes, also after another one stopped the run
            // (an interrupt, a broken setup): nothing finished is lost.
            let mut first_err = None;
            for r in res_rx {
                match r {
                    Ok(f) => done(f)?,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Alive;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Never more than `max` candidates alive: the builder waits for a scorer to finish one;
    /// closing wakes a waiting builder and refuses it.
    #[test]
    fn alive_bounds_the_candidates_in_memory_and_close_wakes_the_builder() {
        let alive = Alive::new(2);
        let held = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel::<usize>();
            s.spawn(|| {
                for i in 0..20 {
                    assert!(alive.enter());
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tx.send(i).unwrap();
                }
                drop(tx);
            });
            for _ in rx {
                std::thread::sleep(Duration::from_millis(2));
                held.fetch_sub(1, Ordering::SeqCst);
                alive.leave();
            }
        });
        assert_eq!(peak.load(Ordering::SeqCst), 2);

        let full = Alive::new(1);
        assert!(full.enter());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| full.enter());
            std::thread::sleep(Duration::from_millis(20));
            full.close();
            assert!(!waiter.join().unwrap(), "a closed pool refuses the builder");
        });
    }
}
