//! The `[execution]` table of an experiment file.

use crate::ExecError;
use crate::devices::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where candidates are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecKind {
    /// In the runner's process (threads), on the devices of this box.
    #[default]
    Local,
    /// One Slurm job array per generation; each task runs `evomerge worker`.
    Slurm,
}

/// `devices = 4` or `devices = ["cuda:0", "cuda:1"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceList {
    Count(usize),
    Names(Vec<String>),
}

/// `[execution]`: how the candidates of a generation are scored.
///
/// ```toml
/// [execution]
/// kind = "local"                 # local | slurm
/// devices = ["cuda:0", "cuda:1"] # or a count: devices = 8 (cuda:0 .. cuda:7)
/// devices_per_candidate = 1
///
/// [execution.slurm]              # with kind = "slurm"
/// partition = "gpu"
/// gres = "gpu:1"
/// time = "01:00:00"
/// retries = 2
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionSpec {
    #[serde(default)]
    pub kind: ExecKind,
    /// The devices candidates are spread over (local only; on Slurm ask for GPUs with `gres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DeviceList>,
    /// Devices each candidate holds while it is scored (a model too big for one GPU).
    #[serde(default = "one")]
    pub devices_per_candidate: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmSpec>,
}

fn one() -> usize {
    1
}

impl Default for ExecutionSpec {
    /// No `[execution]` table: the local pool, no devices.
    fn default() -> Self {
        ExecutionSpec {
            kind: ExecKind::Local,
            devices: None,
            devices_per_candidate: 1,
            slurm: None,
        }
    }
}

/// `[execution.slurm]`: the sbatch options of every array task, and how the runner watches them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `--partition`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `--gres`, e.g. `gpu:1` or `gpu:a100:2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gres: Option<String>,
    /// `--cpus-per-task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `--mem`, e.g. `64G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// `--time` of one task (`MM`, `HH:MM:SS`, `D-HH:MM:SS`); Slurm ends a task that runs
    /// longer (state TIMEOUT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// More `#SBATCH` lines, e.g. `["--qos=high", "--constraint=a100"]` (the `#SBATCH ` prefix
    /// is optional).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
    /// Shell lines run before the worker on the node, e.g. `module load cuda` or
    /// `source /shared/venv/bin/activate`; a failing line fails the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// Resubmissions of a task that failed, was cancelled, timed out or lost its node, before
    /// its candidate is a failed row.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds between two looks at the queue.
    #[serde(default = "default_poll")]
    pub poll_s: f64,
    /// Seconds a task may run (from when it is first seen running) before the runner cancels
    /// it and counts a timeout; default: `time` plus 5 minutes, else 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_timeout_s: Option<f64>,
    /// The `evomerge` binary the tasks run (a path the nodes see); default: the one running
    /// the search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<PathBuf>,
}

fn default_retries() -> u32 {
    2
}

fn default_poll() -> f64 {
    2.0
}

impl Default for SlurmSpec {
    fn default() -> Self {
        SlurmSpec {
            partition: None,
            account: None,
            gres: None,
            cpus: None,
            mem: None,
            time: None,
            extra: Vec::new(),
            setup: None,
            retries: default_retries(),
            poll_s: default_poll(),
            task_timeout_s: None,
            worker: None,
        }
    }
}

/// Seconds of a Slurm `--time` value: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
pub fn slurm_time_s(t: &str) -> Option<f64> {
    let t = t.trim();
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<f64>().ok()?, r),
        None => (0.0, t),
    };
    let parts: Vec<f64> = rest
        .split(':')
        .map(|p| p.parse::<f64>().ok())
        .collect::<Option<_>>()?;
    let s = if t.contains('-') {
        match parts.as_slice() {
            [h] => h * 3600.0,
            [h, m] => h * 3600.0 + m * 60.0,
            [h, m, s] => h * 3600.0 + m * 60.0 + s,
            _ => return None,
        }
    } else {
        match parts.as_slice() {
            [m] => m * 60.0,
            [m, s] => m * 60.0 + s,
            [h, m, s] => h * 3600.0 + m * 60.0 + s,
            _ => return None,
        }
    };
    Some(days * 86400.0 + s)
}

impl SlurmSpec {
    /// The runner's own limit on one task's running time.
    pub fn task_timeout(&self) -> f64 {
        self.task_timeout_s.unwrap_or_else(|| {
            self.time
                .as_deref()
                .and_then(slurm_time_s)
                .map(|s| s + 300.0)
                .unwrap_or(86400.0)
        })
    }

    fn check(&self) -> Result<(), ExecError> {
        let bad = |key: &str, why: String| {
            Err(ExecError::Config(format!("[execution.slurm] {key}: {why}")))
        };
        for (key, v) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("gres", &self.gres),
            ("mem", &self.mem),
            ("time", &self.time),
        ] {
            if let Some(v) = v
                && (v.trim().is_empty() || v.contains(char::is_whitespace))
            {
                return bad(key, format!("{v:?} must be one word without spaces"));
            }
        }
        if let Some(t) = &self.time
            && slurm_time_s(t).is_none()
        {
            return bad(
                "time",
                format!("{t:?} is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)"),
            );
        }
        if self.cpus == Some(0) {
            return bad("cpus", "must be at least 1".into());
        }
        for line in &self.extra {
            if line.contains('\n') {
                return bad(
                    "extra",
                    format!("{line:?}: one option per entry, no newlines"),
                );
            }
            let opt = line.trim().trim_start_matches("#SBATCH").trim();
            if !opt.starts_with('-') {
                return bad(
                    "extra",
                    format!("{line:?} is not an sbatch option (e.g. \"--qos=high\")"),
                );
            }
            if opt.starts_with("--array") || opt.starts_with("-a") {
                return bad(
                    "extra",
                    format!("{line:?}: the runner sets --array itself (one task per candidate)"),
                );
            }
        }
        if !(self.poll_s.is_finite() && self.poll_s > 0.0) {
            return bad(
                "poll_s",
                format!("must be a positive number, got {}", self.poll_s),
            );
        }
        if let Some(t) = self.task_timeout_s
            && !(t.is_finite() && t > 0.0)
        {
            return bad(
                "task_timeout_s",
                format!("must be a positive number, got {t}"),
            );
        }
        Ok(())
    }
}

impl ExecutionSpec {
    /// Check every key; the devices of a local run.
    pub fn check(&self) -> Result<(), ExecError> {
        if self.devices_per_candidate == 0 {
            return Err(ExecError::Config(
                "[execution] devices_per_candidate must be at least 1".into(),
            ));
        }
        match self.kind {
            ExecKind::Local => {
                if self.slurm.is_some() {
                    return Err(ExecError::Config(
                        "[execution.slurm] is set but kind is \"local\"; set [execution] kind = \"slurm\" or remove the table".into(),
                    ));
                }
                let devices = self.devices()?;
                if !devices.is_empty() && self.devices_per_candidate > devices.len() {
                    return Err(ExecError::Config(format!(
                        "[execution] devices_per_candidate = {} but only {} device(s) are listed",
                        self.devices_per_candidate,
                        devices.len()
                    )));
                }
                if devices.is_empty() && self.devices_per_candidate != 1 {
                    return Err(ExecError::Config(
                        "[execution] devices_per_candidate needs `devices` (a list or a count)"
                            .into(),
                    ));
                }
                Ok(())
            }
            ExecKind::Slurm => {
                if self.devices.is_some() {
                    return Err(ExecError::Config(
                        "[execution] devices is for kind = \"local\"; on Slurm ask for GPUs per task with [execution.slurm] gres = \"gpu:1\" (Slurm sets CUDA_VISIBLE_DEVICES)".into(),
                    ));
                }
                self.slurm.clone().unwrap_or_default().check()
            }
        }
    }

    /// The listed devices (empty: none were listed).
    pub fn devices(&self) -> Result<Vec<Device>, ExecError> {
        let names: Vec<String> = match &self.devices {
            None => return Ok(Vec::new()),
            Some(DeviceList::Count(0)) => {
                return Err(ExecError::Config(
                    "[execution] devices = 0; give a count of at least 1 or a list like [\"cuda:0\", \"cuda:1\"]".into(),
                ));
            }
            Some(DeviceList::Count(n)) => (0..*n).map(|i| format!("cuda:{i}")).collect(),
            Some(DeviceList::Names(v)) if v.is_empty() => {
                return Err(ExecError::Config(
                    "[execution] devices = []; list at least one device or remove the key".into(),
                ));
            }
            Some(DeviceList::Names(v)) => v.clone(),
        };
        let mut out: Vec<Device> = Vec::new();
        for n in names {
            let d = Device::parse(&n)?;
            if out.iter().any(|o| o.name == d.name) {
                return Err(ExecError::Config(format!(
                    "[execution] devices lists {} twice",
                    d.name
                )));
            }
            out.push(d);
        }
        Ok(out)
    }

    /// The Slurm settings (defaults when the table is absent).
    pub fn slurm(&self) -> SlurmSpec {
        self.slurm.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<ExecutionSpec, String> {
        let s: ExecutionSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        s.check().map_err(|e| e.to_string())?;
        Ok(s)
    }

    #[test]
    fn no_table_is_the_local_pool() {
        let s = ExecutionSpec::default();
        s.check().unwrap();
        assert_eq!(s, spec("").unwrap());
        assert!(s.devices().unwrap().is_empty());
    }

    #[test]
    fn devices_as_a_list_or_a_count() {
        let s = spec("devices = 3").unwrap();
        let d = s.devices().unwrap();
        assert_eq!(
            d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["cuda:0", "cuda:1", "cuda:2"]
        );
        let s =
            spec("devices = [\"cuda:2\", \"rocm:1\", \"5\"]\ndevices_per_candidate = 2").unwrap();
        let d = s.devices().unwrap();
        assert_eq!(d.iter().map(|d| d.index).collect::<Vec<_>>(), [2, 1, 5]);
        assert_eq!(s.kind, ExecKind::Local);
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (text, needle) in [
            ("devices = 0", "devices = 0"),
            ("devices = []", "devices = []"),
            ("devices = [\"cuda:0\", \"cuda:0\"]", "twice"),
            ("devices = [\"tpu:0\"]", "tpu:0"),
            (
                "devices = 2\ndevices_per_candidate = 3",
                "devices_per_candidate = 3",
            ),
            ("devices_per_candidate = 2", "needs `devices`"),
            ("kind = \"slurm\"\ndevices = 2", "gres"),
            ("kind = \"slurm\"\n[slurm]\ntime = \"1 hour\"", "time"),
            (
                "kind = \"slurm\"\n[slurm]\ntime = \"soon\"",
                "not a Slurm time",
            ),
            (
                "kind = \"slurm\"\n[slurm]\nextra = [\"qos=high\"]",
                "not an sbatch option",
            ),
            (
                "kind = \"slurm\"\n[slurm]\nextra = [\"--array=0-3\"]",
                "--array",
            ),
            ("kind = \"slurm\"\n[slurm]\npoll_s = 0", "poll_s"),
            ("[slurm]\npartition = \"gpu\"", "kind = \"slurm\""),
            ("kind = \"ray\"", "ray"),
            (
                "kind = \"slurm\"\n[slurm]\npartitions = \"gpu\"",
                "partitions",
            ),
        ] {
            let e = spec(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn slurm_times() {
        assert_eq!(slurm_time_s("30"), Some(1800.0));
        assert_eq!(slurm_time_s("1:30"), Some(90.0));
        assert_eq!(slurm_time_s("01:00:00"), Some(3600.0));
        assert_eq!(slurm_time_s("2-00:00:10"), Some(2.0 * 86400.0 + 10.0));
        assert_eq!(slurm_time_s("1-2"), Some(86400.0 + 7200.0));
        assert_eq!(slurm_time_s("x"), None);
        let s = SlurmSpec {
            time: Some("10".into()),
            ..Default::default()
        };
        assert_eq!(s.task_timeout(), 900.0);
        assert_eq!(SlurmSpec::default().task_timeout(), 86400.0);
    }
}
