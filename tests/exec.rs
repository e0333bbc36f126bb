//! Executors end to end: a toy search spread over 4 fake devices, and through real Slurm job
//! arrays on the one-node cluster `.ci/run` starts (its `start_slurm`).
//!
//! The Slurm tests skip with a printed reason when `sbatch` is not on PATH, and fail when
//! `CI=true` (CI must run them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn evomerge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_evomerge"))
}

/// Whether Slurm is here; otherwise skip (or fail under CI=true).
fn slurm_or_skip(test: &str) -> bool {
    let ok = Command::new("sbatch")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
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

/// candidates.csv rows without the timing columns, sorted by (generation, index).
fn rows(dir: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(dir.join("candidates.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let skip: Vec<usize> = h
        .iter()
        .enumerate()
        .filter(|(_, n)| *n == "merge_ms" || *n == "eval_ms")
        .map(|(i, _)| i)
        .collect();
    let mut out: Vec<Vec<String>> = r
        .records()
        .map(|rec| {
            rec.unwrap()
                .iter()
                .enumerate()
                .filter(|(i, _)| !skip.contains(i))
                .map(|(_, v)| v.to_string())
                .collect()
        })
        .collect();
    out.sort_by_key(|row| {
        (
            row[1].parse::<u64>().unwrap(),
            row[2].parse::<u64>().unwrap(),
        )
    });
    out
}

fn column(dir: &Path, file: &str, name: &str) -> Vec<String> {
    let mut r = csv::Reader::from_path(dir.join(file)).unwrap();
    let h = r.headers().unwrap().clone();
    let i = h
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("{file} has no column {name}: {h:?}"));
    r.records().map(|rec| rec.unwrap()[i].to_string()).collect()
}

fn run(exp: &Path, id: &str) -> (std::process::Output, PathBuf) {
    let out = evomerge()
        .args(["run", exp.to_str().unwrap(), "--run-id", id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let dir = exp.parent().unwrap().join("results/toy").join(id);
    (out, dir)
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A toy experiment (16 candidates, CMA-ES population 8) with `extra` appended.
fn toy(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    evomerge_zoo::toy_experiment(dir, 16, extra).unwrap()
}

/// The same experiment as `exp` (same models, so the same cache keys) with `extra` appended,
/// written next to it as `name`.
fn variant(exp: &Path, name: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(exp).unwrap();
    let path = exp.with_file_name(name);
    std::fs::write(&path, format!("{text}{extra}")).unwrap();
    path
}

const SLURM: &str =
    "\n[execution]\nkind = \"slurm\"\n[execution.slurm]\npoll_s = 0.2\nretries = 0\n";

/// Every Slurm task output file under a run's `exec/` folder (one per task that ran).
fn task_outputs(run_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for g in std::fs::read_dir(run_dir.join("exec")).unwrap().flatten() {
        for f in std::fs::read_dir(g.path()).unwrap().flatten() {
            if f.file_name().to_string_lossy().starts_with("slurm-") {
                out.push(f.path());
            }
        }
    }
    out
}

#[test]
fn four_devices_are_never_shared_and_all_work() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("devices.log");
    // Each evaluation records the devices it saw and when it ran, sleeping 50-300 ms.
    let extra = format!(
        r#"
[execution]
devices = 4

[[evaluators]]
kind = "command"
name = "gpu"
weight = 0.0
command = '''s=$(date +%s%N); n=$(od -An -N1 -tu1 /dev/urandom | tr -d ' '); sleep 0.$(( n % 6 + 1 )); echo "$CUDA_VISIBLE_DEVICES {{device}} $HIP_VISIBLE_DEVICES $s $(date +%s%N)" >> {log}; echo '{{"fitness": 0}}' '''
"#,
        log = log.display()
    );
    let exp = toy(tmp.path(), &extra);
    let (out, dir) = run(&exp, "devices");
    ok(&out, "the devices run");
    let text = std::fs::read_to_string(&log).unwrap();
    let runs: Vec<(String, u128, u128)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "{l}");
            assert_eq!(
                f[0], f[1],
                "{{device}} is the CUDA_VISIBLE_DEVICES index: {l}"
            );
            assert_eq!(f[0], f[2], "HIP_VISIBLE_DEVICES too: {l}");
            (
                f[0].to_string(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect();
    // The search's 16 candidates, plus validation and the test table (same evaluators).
    assert!(runs.len() >= 16, "{text}");
    let mut used: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    used.sort();
    used.dedup();
    assert_eq!(used, ["0", "1", "2", "3"], "every device was used");
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            let overlap = a.1 < b.2 && b.1 < a.2;
            assert!(
                !(overlap && a.0 == b.0),
                "two overlapping candidates shared device {}: {a:?} {b:?}",
                a.0
            );
        }
    }
    // generations.csv says how busy the devices were; the summary line too.
    let util = column(&dir, "generations.csv", "device_util");
    assert_eq!(util.len(), 2);
    for u in &util {
        let v: f64 = u.parse().unwrap();
        assert!(v > 0.0 && v <= 1.0, "{util:?}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("device utilization") && stderr.contains("cuda:3"),
        "{stderr}"
    );
}

/// With `device = "wgpu"` every `[execution] devices` entry is a wgpu adapter: candidates are
/// merged and scored in-process on the adapter they hold (lavapipe's `wgpu:0` here), with the
/// fitness of the same run without devices; an entry that is no adapter is named before the
/// run starts. Skipped without an adapter, except under CI=true.
#[test]
fn wgpu_devices_merge_and_score_on_their_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = toy(tmp.path(), "");
    let text = std::fs::read_to_string(&exp).unwrap();
    let write = |name: &str, table: &str| {
        let path = exp.with_file_name(name);
        std::fs::write(&path, format!("device = \"wgpu\"\n{text}\n{table}")).unwrap();
        path
    };
    let (out, plain) = run(&write("plain.toml", ""), "plain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && stderr.contains("wgpu")
        && std::env::var("CI").as_deref() != Ok("true")
    {
        eprintln!("skipping: {stderr}");
        return;
    }
    ok(&out, "the wgpu run");
    let (out, placed) = run(
        &write("placed.toml", "[execution]\ndevices = [\"wgpu:0\"]\n"),
        "placed",
    );
    ok(&out, "the wgpu run over devices = [\"wgpu:0\"]");
    let fitness = |dir: &Path| -> Vec<f64> {
        column(dir, "candidates.csv", "fitness")
            .iter()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let (a, b) = (fitness(&plain), fitness(&placed));
    assert_eq!(a.len(), 16);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
    let util = column(&placed, "generations.csv", "device_util");
    assert!(
        util.iter().all(|u| u.parse::<f64>().unwrap() > 0.0),
        "{util:?}"
    );

    let (out, dir) = run(
        &write("bad.toml", "[execution]\ndevices = [\"wgpu:9\"]\n"),
        "bad",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("wgpu:9") && stderr.contains("adapter"),
        "{stderr}"
    );
    assert!(!dir.exists(), "no run folder is left");
}

#[test]
fn job_arrays_give_the_local_result() {
    if !slurm_or_skip("job_arrays_give_the_local_result") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let local = toy(tmp.path(), "");
    let (out, local_dir) = run(&local, "local");
    ok(&out, "the local run");
    let slurm = variant(&local, "slurm.toml", SLURM);
    let (out, slurm_dir) = run(&slurm, "slurm");
    ok(&out, "the Slurm run");
    assert_eq!(rows(&slurm_dir), rows(&local_dir));
    // One array per generation, one task per candidate, every score written by a worker.
    let jobs = std::fs::read_to_string(slurm_dir.join("exec/ps-g0/jobs.json")).unwrap();
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    assert_eq!(jobs["submissions"].as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(task_outputs(&slurm_dir).len(), 16);
    let best = |d: &Path| std::fs::read_to_string(d.join("best.json")).unwrap();
    assert_eq!(best(&slurm_dir), best(&local_dir));
}

#[test]
fn a_killed_runner_reattaches_to_its_array() {
    if !slurm_or_skip("a_killed_runner_reattaches_to_its_array") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Every evaluation also takes half a second, so the kill lands while tasks run.
    let slow = "\n[[evaluators]]\nkind = \"command\"\nname = \"slow\"\nweight = 0.0\ncommand = \"sleep 0.5; echo '{\\\"fitness\\\": 0}'\"\n";
    let base = toy(tmp.path(), slow);
    let slurm = variant(&base, "slurm.toml", SLURM);
    // Four at a time locally (a top-level key, so it goes first); the results are the same.
    let text = std::fs::read_to_string(&base).unwrap();
    let local = base.with_file_name("local.toml");
    std::fs::write(&local, format!("parallelism = 4\n{text}")).unwrap();
    let (out, local_dir) = run(&local, "local");
    ok(&out, "the local run");
    let dir = tmp.path().join("results/toy/slurm");
    let mut child = evomerge()
        .args([
            "run",
            slurm.to_str().unwrap(),
            "--run-id",
            "slurm",
            "--quiet",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // SIGKILL once the first generation's array runs and some of its rows are logged.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let logged = std::fs::read_to_string(dir.join("candidates.csv"))
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        if logged >= 2 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(Instant::now() < deadline, "no candidate was ever logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = rows(&dir);
    assert!(before.len() < 16, "killed mid-run: {} rows", before.len());
    let out = evomerge()
        .args(["resume", dir.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out, "resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(rows(&dir), rows(&local_dir), "{stderr}");
    // Nothing was submitted twice: one submission for generation 0, one task per candidate.
    let jobs = std::fs::read_to_string(dir.join("exec/ps-g0/jobs.json")).unwrap();
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    assert_eq!(jobs["submissions"].as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(task_outputs(&dir).len(), 16, "every candidate ran once");
    assert!(
        stderr.contains("re-attached") || stderr.contains("collected"),
        "the resume says what it picked up: {stderr}"
    );
}

#[test]
fn failed_and_cancelled_tasks_are_failed_rows() {
    if !slurm_or_skip("failed_and_cancelled_tasks_are_failed_rows") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Task 1 of every array exits 1 before the worker starts; task 2 cancels itself.
    let extra = r#"
[execution]
kind = "slurm"
[execution.slurm]
poll_s = 0.2
retries = 1
setup = '''
if [ "$SLURM_ARRAY_TASK_ID" = 1 ]; then echo setup broke >&2; exit 1; fi
if [ "$SLURM_ARRAY_TASK_ID" = 2 ]; then scancel "${SLURM_ARRAY_JOB_ID}_2"; sleep 30; fi
'''
"#;
    let exp = toy(tmp.path(), extra);
    let (out, dir) = run(&exp, "s");
    ok(&out, "the run with failing tasks");
    let status = column(&dir, "candidates.csv", "status");
    let index = column(&dir, "candidates.csv", "index");
    let error = column(&dir, "candidates.csv", "error");
    assert_eq!(status.len(), 16, "the search went on to its budget");
    let mut by: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for ((s, i), e) in status.iter().zip(&index).zip(&error) {
        let i: usize = i.parse().unwrap();
        match i {
            1 => {
                assert_eq!(s, "failed");
                assert!(e.contains("FAILED") && e.contains("setup broke"), "{e}");
                assert!(e.contains("2 attempt(s)"), "{e}");
            }
            2 => {
                assert_eq!(s, "failed");
                assert!(e.contains("CANCELLED"), "{e}");
            }
            _ => assert_eq!(s, "ok", "{e}"),
        }
        *by.entry((i, s.as_str())).or_default() += 1;
    }
    assert_eq!(by[&(1, "failed")], 2, "{by:?}");
    assert_eq!(by[&(2, "failed")], 2, "{by:?}");
}

#[test]
fn bad_execution_settings_are_named_before_the_run_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let base = toy(tmp.path(), "");
    let text = std::fs::read_to_string(&base).unwrap();
    for (i, (top, table, needle)) in [
        (
            "parallelism = 2\n",
            "[execution]\ndevices = 4\n",
            "parallelism = 2",
        ),
        ("", "[execution]\ndevices = 0\n", "devices = 0"),
        ("", "[execution]\ndevices = [\"tpu:0\"]\n", "\"tpu:0\""),
        (
            "",
            "[execution]\nkind = \"slurm\"\n[execution.slurm]\nworker = \"no/such/evomerge\"\n",
            "no/such/evomerge",
        ),
        ("", "[execution]\nkind = \"slurm\"\ndevices = 2\n", "gres"),
    ]
    .into_iter()
    .enumerate()
    {
        let exp = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&exp, format!("{top}{text}\n{table}")).unwrap();
        let (out, dir) = run(&exp, &format!("bad{i}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: {stderr}");
        assert!(stderr.contains(needle), "{table}: {stderr}");
        assert!(!dir.exists(), "{table}: no run folder is left");
    }
}
