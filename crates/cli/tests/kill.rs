//! Kill tests: a run killed at several points (mid-generation, mid-state-write, a real SIGKILL)
//! resumes without losing or repeating a finished evaluation and ends exactly like an
//! uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn evomerge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_evomerge"))
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

fn best(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("best.json")).unwrap()).unwrap()
}

fn run(exp: &Path, id: &str, crash: Option<&str>) -> (bool, PathBuf) {
    let mut cmd = evomerge();
    cmd.args(["run", exp.to_str().unwrap(), "--run-id", id, "--quiet"]);
    if let Some(c) = crash {
        cmd.env("EVOMERGE_CRASH_AT", c);
    }
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    let dir = exp.parent().unwrap().join("results/toy").join(id);
    (out.status.success(), dir)
}

fn resume(dir: &Path) {
    let out = evomerge()
        .args(["resume", dir.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_runs_resume_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = evomerge_zoo::toy_experiment(tmp.path(), 24, "").unwrap();
    let (ok, reference) = run(&exp, "reference", None);
    assert!(ok);
    let want_rows = rows(&reference);
    let want_best = best(&reference);
    assert_eq!(want_rows.len(), 24);

    // Crashes at chosen points: after the 5th candidate row (mid-generation 0), after the
    // 11th (mid-generation 1), in the middle of the 2nd state write (temp file written, not
    // renamed).
    for crash in ["after-row:5", "after-row:11", "state-write:2"] {
        let id = crash.replace(':', "-");
        let (ok, dir) = run(&exp, &id, Some(crash));
        assert!(!ok, "{crash}: the run should have died");
        let before = rows(&dir);
        resume(&dir);
        let after = rows(&dir);
        assert_eq!(
            after, want_rows,
            "{crash}: the resumed log differs from the uninterrupted one"
        );
        // nothing finished before the crash was evaluated twice or lost
        for r in &before {
            assert_eq!(
                after
                    .iter()
                    .filter(|a| a[1] == r[1] && a[2] == r[2])
                    .count(),
                1,
                "{crash}: row {r:?}"
            );
        }
        assert_eq!(best(&dir), want_best, "{crash}");
    }

    // A real SIGKILL at an arbitrary moment (repeated until one lands mid-run).
    for delay_ms in [400u64, 900, 1500] {
        let id = format!("sigkill-{delay_ms}");
        let mut child = evomerge()
            .args(["run", exp.to_str().unwrap(), "--run-id", &id, "--quiet"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let dir = tmp.path().join("results/toy").join(&id);
        if !dir.join("run.toml").exists() {
            continue; // killed before the run folder existed: nothing to resume
        }
        resume(&dir);
        assert_eq!(rows(&dir), want_rows, "SIGKILL after {delay_ms} ms");
        assert_eq!(best(&dir), want_best, "SIGKILL after {delay_ms} ms");
    }
}
