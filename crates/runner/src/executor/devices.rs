//! The executor that keeps every device of a box busy (`[execution] devices`).
//!
//! Two threads per slot (devices / `devices_per_candidate`) take the jobs in order: each builds
//! its candidate (the merge, on the run's `device`, without holding a GPU), waits for free
//! devices ([`evomerge_exec::DevicePool::run_prepared`]) and scores the candidate holding them:
//! the request carries the held devices, so a command evaluator sets `CUDA_VISIBLE_DEVICES` /
//! `HIP_VISIBLE_DEVICES` and fills `{devices}` / `{device}`. So the next candidates are merged
//! while the devices score, and a device that frees up takes the next built candidate at once.
//! Each device's busy time (scoring) is kept for the utilization columns of generations.csv.
//!
//! With a GPU run device (`device = "wgpu"`) each device is also a wgpu adapter
//! ([`evomerge_kernels::wgpu_device_for`]): a candidate is merged on the first device it holds
//! and its in-process evaluators run there (a data-flow stage loads its models once on each
//! device). Then nothing is built ahead (the merge needs the device): each slot merges and
//! scores in turn, and `prefetch` does not apply.

use crate::RunError;
use crate::executor::{Batch, Executor, Finished, Scorer, check_interrupt};
use evomerge_eval::HeldDevice;
use evomerge_exec::DevicePool;
use evomerge_kernels::Device;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Candidates spread over the devices of this box.
pub struct DevicesExecutor {
    pool: DevicePool,
    /// Candidates built ahead of a free slot.
    prefetch: usize,
    /// The wgpu device of each pool device (in pool order), when candidates are merged and
    /// scored on the devices they hold; `None`: built on the run's device.
    placed: Option<Vec<Device>>,
}

impl DevicesExecutor {
    /// `prefetch`: candidates built ahead of a free slot (default: one per slot); `placed`:
    /// the burn device of each pool device, to build each candidate on the device it holds.
    pub fn new(
        pool: DevicePool,
        prefetch: Option<usize>,
        placed: Option<Vec<Device>>,
    ) -> DevicesExecutor {
        let prefetch = if placed.is_some() {
            0
        } else {
            prefetch.unwrap_or_else(|| pool.slots())
        };
        DevicesExecutor {
            pool,
            prefetch,
            placed,
        }
    }

    /// The burn device a lease's candidate is built on: its first device's adapter.
    fn placement(&self, held: &[&evomerge_exec::Device]) -> Option<&Device> {
        let placed = self.placed.as_ref()?;
        let first = held.first()?;
        let i = self.pool.devices().iter().position(|d| d == *first)?;
        placed.get(i)
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
                if self.placed.is_some() {
                    // Built once the devices are held, on them.
                    return Some((job.index, Err(job), 0.0));
                }
                let _permit = builds.enter();
                let t = Instant::now();
                let built = scorer.build(job.decoded, &job.label);
                Some((job.index, Ok(built), t.elapsed().as_secs_f64() * 1e3))
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
                let (built, merge_ms) = match built {
                    Ok(built) => (built, merge_ms),
                    Err(job) => {
                        let t = Instant::now();
                        let built = match self.placement(&lease.devices()) {
                            Some(on) => scorer.build_on(job.decoded, &job.label, on),
                            None => scorer.build(job.decoded, &job.label),
                        };
                        (built, t.elapsed().as_secs_f64() * 1e3)
                    }
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease's candidate is built on the burn device of the first device it holds.
    #[test]
    fn a_lease_builds_on_its_first_devices_adapter() {
        let names = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"];
        let pool = DevicePool::new(
            names
                .iter()
                .map(|n| evomerge_exec::Device::parse(n).unwrap())
                .collect(),
            2,
        )
        .unwrap();
        // Two distinguishable burn devices stand for adapters here.
        let (a, b) = (Device::flex(), Device::flex().autodiff());
        let ex = DevicesExecutor::new(
            pool,
            Some(3),
            Some(vec![a.clone(), a.clone(), b.clone(), b.clone()]),
        );
        assert_eq!(ex.prefetch, 0, "nothing is built ahead of its devices");
        let devices = ex.pool.devices().to_vec();
        assert_eq!(ex.placement(&[&devices[0], &devices[1]]), Some(&a));
        assert_eq!(ex.placement(&[&devices[2], &devices[3]]), Some(&b));
        assert!(
            ex.placement(&[&devices[2], &devices[3]])
                .unwrap()
                .is_autodiff()
        );
        let unplaced = DevicesExecutor::new(DevicePool::new(devices, 2).unwrap(), Some(3), None);
        assert_eq!(unplaced.prefetch, 3);
        assert_eq!(unplaced.placement(&[&unplaced.pool.devices()[0]]), None);
    }
}
