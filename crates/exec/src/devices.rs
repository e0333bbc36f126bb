//! The devices of one box, shared by the candidates in flight.
//!
//! A [`DevicePool`] hands each candidate a [`Lease`] on `devices_per_candidate` free devices
//! (the lowest-numbered free ones) and takes them back when the lease is dropped, so a device
//! that frees up goes to the next pending candidate at once. It adds up each device's busy
//! time; [`DevicePool::busy`] read before and after a generation gives its utilization.

use crate::ExecError;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// One device: how the experiment names it and the index the tools see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `cuda:0`, `rocm:1`, `wgpu:0`, or a bare index `3`.
    pub name: String,
    /// The number in `CUDA_VISIBLE_DEVICES` / `HIP_VISIBLE_DEVICES`, or the wgpu adapter.
    pub index: usize,
}

impl Device {
    /// Parse `cuda:N`, `gpu:N`, `rocm:N`, `hip:N`, `wgpu:N` or `N`.
    pub fn parse(name: &str) -> Result<Device, ExecError> {
        let name = name.trim();
        let (kind, idx) = match name.split_once(':') {
            Some((k, i)) => (k, i),
            None => ("", name),
        };
        let known = ["", "cuda", "gpu", "rocm", "hip", "wgpu"];
        let index = idx.parse::<usize>().ok();
        match index {
            Some(index) if known.contains(&kind) => Ok(Device {
                name: name.to_string(),
                index,
            }),
            _ => Err(ExecError::Config(format!(
                "[execution] devices: {name:?} is not a device; write cuda:N, rocm:N, hip:N, gpu:N, wgpu:N or N (N = the index CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES or the wgpu adapter list uses)"
            ))),
        }
    }

    /// The kind its name gives: `cuda`, `gpu`, `rocm`, `hip` or `wgpu` (`gpu` for a bare
    /// index). With `device = "wgpu"` it says which wgpu adapter the device is
    /// (`evomerge_kernels::wgpu_device_for`).
    pub fn kind(&self) -> &str {
        self.name.split_once(':').map_or("gpu", |(k, _)| k.trim())
    }
}

struct PoolState {
    free: Vec<bool>,
    since: Vec<Option<Instant>>,
    busy: Vec<Duration>,
    leases: u64,
}

/// Devices shared by the candidates in flight (see the module docs).
pub struct DevicePool {
    devices: Vec<Device>,
    per_candidate: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

/// The devices one candidate holds; they return to the pool when this is dropped.
pub struct Lease<'a> {
    pool: &'a DevicePool,
    held: Vec<usize>,
}

impl Lease<'_> {
    /// The held devices.
    pub fn devices(&self) -> Vec<&Device> {
        self.held.iter().map(|&i| &self.pool.devices[i]).collect()
    }

    /// The held devices' names (`cuda:0`, ...).
    pub fn names(&self) -> Vec<String> {
        self.devices().iter().map(|d| d.name.clone()).collect()
    }

    /// The value of `CUDA_VISIBLE_DEVICES` / `HIP_VISIBLE_DEVICES`: the indices, comma-separated.
    pub fn visible(&self) -> String {
        self.devices()
            .iter()
            .map(|d| d.index.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut s = self.pool.state.lock().expect("device pool");
        let now = Instant::now();
        for &i in &self.held {
            s.free[i] = true;
            if let Some(t) = s.since[i].take() {
                s.busy[i] += now - t;
            }
        }
        drop(s);
        self.pool.freed.notify_all();
    }
}

impl DevicePool {
    /// A pool over `devices`, each candidate holding `per_candidate` of them.
    pub fn new(devices: Vec<Device>, per_candidate: usize) -> Result<DevicePool, ExecError> {
        if devices.is_empty() {
            return Err(ExecError::Config("a device pool needs a device".into()));
        }
        if per_candidate == 0 || per_candidate > devices.len() {
            return Err(ExecError::Config(format!(
                "[execution] devices_per_candidate = {per_candidate} does not fit {} device(s)",
                devices.len()
            )));
        }
        let n = devices.len();
        Ok(DevicePool {
            devices,
            per_candidate,
            state: Mutex::new(PoolState {
                free: vec![true; n],
                since: vec![None; n],
                busy: vec![Duration::ZERO; n],
                leases: 0,
            }),
            freed: Condvar::new(),
        })
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// How many candidates can hold their devices at once.
    pub fn slots(&self) -> usize {
        self.devices.len() / self.per_candidate
    }

    /// Wait for `devices_per_candidate` free devices and hold them.
    pub fn acquire(&self) -> Lease<'_> {
        let mut s = self.state.lock().expect("device pool");
        loop {
            let free: Vec<usize> = (0..self.devices.len()).filter(|&i| s.free[i]).collect();
            if free.len() >= self.per_candidate {
                let held: Vec<usize> = free[..self.per_candidate].to_vec();
                let now = Instant::now();
                for &i in &held {
                    s.free[i] = false;
                    s.since[i] = Some(now);
                }
                s.leases += 1;
                return Lease { pool: self, held };
            }
            s = self.freed.wait(s).expect("device pool");
        }
    }

    /// Each device's busy time so far (leases still held count up to now).
    pub fn busy(&self) -> Vec<Duration> {
        let s = self.state.lock().expect("device pool");
        let now = Instant::now();
        (0..self.devices.len())
            .map(|i| s.busy[i] + s.since[i].map(|t| now - t).unwrap_or_default())
            .collect()
    }

    /// Leases handed out so far.
    pub fn leases(&self) -> u64 {
        self.state.lock().expect("device pool").leases
    }

    /// Run `work` for every job, each holding a lease, `slots()` at a time; `done` gets each
    /// result on the calling thread as soon as it is ready. Jobs start in order; a job starts
    /// as soon as devices for it are free.
    pub fn run<J, R, I>(&self, jobs: I, work: impl Fn(J, &Lease) -> R + Sync, done: impl FnMut(R))
    where
        I: IntoIterator<Item = J>,
        I::IntoIter: Send,
        J: Send,
        R: Send,
    {
        self.run_prepared(jobs, 0, |j| j, work, done)
    }

    /// As [`DevicePool::run`], with a step before the devices are held: `prepare` (e.g.
    /// merging the candidate on the CPU) runs without a lease in up to `ahead` extra threads,
    /// so the next candidates are ready when devices free up and a device never waits for a
    /// merge it does not do.
    pub fn run_prepared<J, P, R, I>(
        &self,
        jobs: I,
        ahead: usize,
        prepare: impl Fn(J) -> P + Sync,
        work: impl Fn(P, &Lease) -> R + Sync,
        mut done: impl FnMut(R),
    ) where
        I: IntoIterator<Item = J>,
        I::IntoIter: Send,
        J: Send,
        R: Send,
    {
        let jobs = Mutex::new(jobs.into_iter());
        let (tx, rx) = std::sync::mpsc::channel::<R>();
        std::thread::scope(|s| {
            for _ in 0..self.slots() + ahead {
                let tx = tx.clone();
                let (jobs, prepare, work) = (&jobs, &prepare, &work);
                s.spawn(move || {
                    loop {
                        // The job first: a device waiting for a job to be prepared is idle.
                        let Some(job) = jobs.lock().expect("jobs").next() else {
                            break;
                        };
                        let prepared = prepare(job);
                        let lease = self.acquire();
                        let r = work(prepared, &lease);
                        drop(lease);
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for r in rx {
                done(r);
            }
        });
    }
}

/// Utilization of each device over a stretch of wall time: busy / wall.
pub fn utilization(busy_before: &[Duration], busy_after: &[Duration], wall: Duration) -> Vec<f64> {
    busy_before
        .iter()
        .zip(busy_after)
        .map(|(b, a)| {
            if wall.is_zero() {
                0.0
            } else {
                (a.saturating_sub(*b)).as_secs_f64() / wall.as_secs_f64()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pool(n: usize, per: usize) -> DevicePool {
        let devices = (0..n)
            .map(|i| Device::parse(&format!("cuda:{i}")).unwrap())
            .collect();
        DevicePool::new(devices, per).unwrap()
    }

    #[test]
    fn no_device_is_shared_and_every_device_works() {
        let p = pool(4, 1);
        let in_use: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        let mut seen = Vec::new();
        p.run(
            0..16u64,
            |j, lease| {
                let d = lease.devices()[0].index;
                assert_eq!(
                    in_use[d].fetch_add(1, Ordering::SeqCst),
                    0,
                    "device {d} shared"
                );
                std::thread::sleep(Duration::from_millis(5 + (j * 7919) % 10));
                in_use[d].fetch_sub(1, Ordering::SeqCst);
                (j, d)
            },
            |r| seen.push(r),
        );
        assert_eq!(seen.len(), 16);
        for d in 0..4 {
            assert!(
                seen.iter().any(|(_, x)| *x == d),
                "device {d} unused: {seen:?}"
            );
        }
        assert_eq!(p.leases(), 16);
        assert!(p.busy().iter().all(|b| !b.is_zero()));
    }

    #[test]
    fn a_candidate_holds_several_devices() {
        let p = pool(5, 2);
        assert_eq!(p.slots(), 2);
        let held = Mutex::new(Vec::<usize>::new());
        let mut n = 0;
        p.run(
            0..6,
            |_, lease| {
                let mine: Vec<usize> = lease.devices().iter().map(|d| d.index).collect();
                assert_eq!(mine.len(), 2);
                {
                    let mut h = held.lock().unwrap();
                    assert!(mine.iter().all(|d| !h.contains(d)), "{mine:?} vs {h:?}");
                    h.extend(&mine);
                }
                assert_eq!(lease.visible().split(',').count(), 2);
                std::thread::sleep(Duration::from_millis(5));
                held.lock().unwrap().retain(|d| !mine.contains(d));
            },
            |_| n += 1,
        );
        assert_eq!(n, 6);
    }

    #[test]
    fn device_names() {
        assert_eq!(Device::parse("rocm:3").unwrap().index, 3);
        assert_eq!(Device::parse("rocm:3").unwrap().kind(), "rocm");
        assert_eq!(Device::parse("wgpu:1").unwrap().kind(), "wgpu");
        assert_eq!(Device::parse("2").unwrap().kind(), "gpu");
        assert_eq!(Device::parse("7").unwrap().index, 7);
        assert!(Device::parse("cuda").is_err());
        assert!(Device::parse("cuda:x").is_err());
        let u = utilization(
            &[Duration::ZERO, Duration::from_secs(1)],
            &[Duration::from_secs(1), Duration::from_secs(2)],
            Duration::from_secs(2),
        );
        assert_eq!(u, [0.5, 0.5]);
    }
}
