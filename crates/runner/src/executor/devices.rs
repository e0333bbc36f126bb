//! The executor that keeps every device of a box busy (`[execution] devices`).
//!
//! Two threads per slot (devices / `devices_per_candidate`) take the jobs in order: each builds
//! its candidate (the merge, on the run's `device`, without holding a GPU), waits for free
//! devices ([`evomerge_exec::DevicePool::run_prepared`]) and scores the candidate holding them:
//! the request carries the held devices, so a command evaluator sets `CUDA_VISIBLE_DEVICES` /
//! `HIP_VISIBLE_DEVICES` and fills `{devices}` / `{device}`. So the next candidates are merged
//! while the devices score, and a device that frees up takes the next built candidate at once.
//! Each device's busy time (scoring) is kept for the utilization columns of generations.csv.

use crate::RunError;
use crate::executor::{Batch, Executor, Finished, Scorer, check_interrupt};
use evomerge_eval::HeldDevice;
use evomerge_exec::DevicePool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Candidates spread over the devices of this box.
pub struct DevicesExecutor {
    pool: DevicePool,
    /// Candidates built ahead of a free slot.
    prefetch: usize,
}

impl DevicesExecutor {
    /// `prefetch`: candidates built ahead of a free slot (default: one per slot).
    pub fn new(pool: DevicePool, prefetch: Option<usize>) -> DevicesExecutor {
        let prefetch = prefetch.unwrap_or_else(|| pool.slots());
        DevicesExecutor { pool, prefetch }
    }
}

impl Executor for DevicesExecutor {
    fn name(&self) -> &str {
        "devices"
    }

    fn device_busy(&self) -> Option<Vec<(String, Duration)>> {
        Some(
            self.pool
                .devices()
                .iter()
                .map(|d| d.name.clone())
                .zip(self.pool.busy())
                .collect(),
        )
    }

    fn evaluate(
        &self,
        batch: &Batch<'_>,
        scorer: &Scorer<'_>,
        done: &mut dyn FnMut(Finished) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let request = batch.request;
        let stopping = AtomicBool::new(false);
        let mut first_err: Option<RunError> = None;
        // The next candidates are built (merged on the run's device) while the devices score
        // others: `prefetch` ahead (default one slot's worth), at most half the cores merging
        // at once (a merge uses several threads itself).
        let ahead = self.prefetch;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let builds = Builds::new((cores / 2).clamp(1, self.pool.slots()));
        self.pool.run_prepared(
            &batch.jobs,
            ahead,
            |job| {
                if stopping.load(Ordering::SeqCst) {
                    return None;
                }
                let _permit = builds.enter();
                let t = Instant::now();
                let built = scorer.build(job.decoded, &job.label);
                Some((job.index, built, t.elapsed().as_secs_f64() * 1e3))
            },
            |built, lease| -> Option<Result<Finished, RunError>> {
                let (i, built, merge_ms) = built?;
                if stopping.load(Ordering::SeqCst) {
                    return None;
                }
                if let Err(e) = check_interrupt() {
                    stopping.store(true, Ordering::SeqCst);
                    return Some(Err(e));
                }
                let held = lease
                    .devices()
                    .iter()
                    .map(|d| HeldDevice {
                        name: d.name.clone(),
                        index: d.index,
                    })
                    .collect();
                let r = match built {
                    Err(e) => Ok(Finished::failed(i, format!("build: {e}"), merge_ms)),
                    Ok(c) => {
                        scorer.score(i, c.as_ref(), &request.clone().with_devices(held), merge_ms)
                    }
                };
                if r.is_err() {
                    stopping.store(true, Ordering::SeqCst);
                }
                Some(r)
            },
            |r| match r {
                None => {}
                // Every evaluation that finishes is handed over, also after another one
                // stopped the batch: nothing finished is lost.
                Some(Ok(f)) => {
                    if let Err(e) = done(f) {
                        stopping.store(true, Ordering::SeqCst);
                        first_err.get_or_insert(e);
                    }
                }
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
            },
        );
        first_err.map_or(Ok(()), Err)
    }
}

/// A counting semaphore over candidate builds.
struct Builds {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Permit<'a>(&'a Builds);

impl Builds {
    fn new(n: usize) -> Builds {
        Builds {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> Permit<'_> {
        let mut free = self.free.lock().expect("builds");
        while *free == 0 {
            free = self.freed.wait(free).expect("builds");
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("builds") += 1;
        self.0.freed.notify_one();
    }
}
