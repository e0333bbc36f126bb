//! The executor that keeps every device of a box busy (`[execution] devices`).
//!
//! One thread builds candidates in job order; one scoring thread per slot (devices /
//! `devices_per_candidate`) takes the next built candidate, waits for free devices
//! ([`evomerge_exec::DevicePool`]), and scores it holding them: the request carries the held
//! devices, so a command evaluator sets `CUDA_VISIBLE_DEVICES` / `HIP_VISIBLE_DEVICES` and
//! fills `{devices}` / `{device}`. A device that frees up takes the next pending candidate at
//! once. Each device's busy time is kept for the utilization columns of generations.csv.

use crate::RunError;
use crate::executor::{Batch, Executor, Finished, Scorer, check_interrupt};
use evomerge_eval::{Candidate, HeldDevice};
use evomerge_exec::DevicePool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Candidates spread over the devices of this box.
pub struct DevicesExecutor {
    pool: DevicePool,
}

impl DevicesExecutor {
    pub fn new(pool: DevicePool) -> DevicesExecutor {
        DevicesExecutor { pool }
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
        std::thread::scope(|s| {
            type Built = (usize, Result<Box<dyn Candidate>, String>, f64);
            let (tx, rx) = mpsc::sync_channel::<Built>(self.pool.slots());
            let stopping = &stopping;
            s.spawn(move || {
                for job in &batch.jobs {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let t0 = Instant::now();
                    let built = scorer.build(job.decoded, &job.label);
                    if tx
                        .send((job.index, built, t0.elapsed().as_secs_f64() * 1e3))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            self.pool.run(
                rx,
                |(i, built, merge_ms), lease| -> Option<Result<Finished, RunError>> {
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
                        Ok(c) => scorer.score(
                            i,
                            c.as_ref(),
                            &request.clone().with_devices(held),
                            merge_ms,
                        ),
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
        });
        first_err.map_or(Ok(()), Err)
    }
}
