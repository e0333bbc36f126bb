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

/// Whether a process runs (a zombie, waiting for its parent to reap it, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Processes of a process group that still run.
fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string())
                })
                .unwrap_or(false)
        })
        .collect()
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// The (shell, child) PIDs the blocked evaluations wrote, once `n` of them run.
fn wait_for_blocked(pids: &Path, n: usize, child: &mut std::process::Child) -> Vec<(u32, u32)> {
    // Waits for an event (the evaluators writing their PIDs), with a generous deadline only
    // so that a broken build fails instead of hanging.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let found: Vec<(u32, u32)> = std::fs::read_dir(pids)
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
            .map(|e| {
                let t = std::fs::read_to_string(e.path()).unwrap();
                let mut it = t.split_whitespace().map(|v| v.parse::<u32>().unwrap());
                (it.next().unwrap(), it.next().unwrap())
            })
            .collect();
        if found.len() >= n {
            return found;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("evomerge ended ({status}) before {n} evaluations were blocked");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "evaluations never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGINT/SIGTERM while command evaluations run: evomerge stops every evaluator's process
/// group, removes their folders, exits non-zero saying how to resume, and the resumed run ends
/// exactly like an uninterrupted one. After a SIGKILL (no chance to clean up) the resume
/// removes the folders the dead process left.
#[test]
fn sigint_and_sigterm_stop_the_evaluators_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let exp = evomerge_zoo::toy_experiment(root, 24, "").unwrap();
    std::fs::create_dir_all(root.join("pids")).unwrap();
    std::fs::create_dir_all(root.join("candidate tmp")).unwrap();
    // The score: a checksum of the candidate's weights. While a `block` file exists, the
    // evaluations of generation 1 start a child and wait for it instead.
    std::fs::write(
        root.join("score.sh"),
        r#"model="$1"; gen="$2"
if [ "$gen" = 1 ] && [ -f block ]; then
  sleep 600 &
  echo "$$ $!" > "pids/$$.tmp" && mv "pids/$$.tmp" "pids/$$"
  wait
fi
n=$(cksum < "$model/model.safetensors" | cut -d' ' -f1)
echo "{\"fitness\": $(( n % 1000 ))}"
"#,
    )
    .unwrap();
    let text = std::fs::read_to_string(&exp).unwrap();
    let text = text
        .replace(
            "kind = \"lm\"\ntask = \"task.toml\"",
            "kind = \"command\"\ncommand = \"sh score.sh {model_dir} {generation}\"\ncwd = \".\"\ntemp_dir = \"candidate tmp\"",
        )
        .replace("seed = 3", "seed = 3\nparallelism = 2");
    std::fs::write(&exp, text).unwrap();
    let (ok, reference) = run(&exp, "reference", None);
    assert!(ok, "the reference run failed");
    let want_rows = rows(&reference);
    let want_best = best(&reference);
    let temp_left = || {
        std::fs::read_dir(root.join("candidate tmp"))
            .unwrap()
            .count()
    };

    for (name, code) in [("TERM", 143), ("INT", 130)] {
        let id = format!("sig{name}");
        std::fs::write(root.join("block"), "").unwrap();
        for e in std::fs::read_dir(root.join("pids")).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        let mut child = evomerge()
            .args(["run", exp.to_str().unwrap(), "--run-id", &id, "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let blocked = wait_for_blocked(&root.join("pids"), 2, &mut child);
        signal(child.id(), name);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{name}: {stderr}");
        let dir = root.join("results/toy").join(&id);
        assert!(
            stderr.contains(&format!("evomerge resume {}", dir.display())),
            "SIG{name}: {stderr}"
        );
        for (sh, sleeper) in blocked {
            assert!(
                !alive(sh) && !alive(sleeper),
                "SIG{name}: evaluator {sh}/{sleeper} runs on"
            );
            assert_eq!(
                group_members(sh),
                Vec::<u32>::new(),
                "SIG{name}: group {sh}"
            );
        }
        assert_eq!(temp_left(), 0, "SIG{name}: candidate folders left");
        std::fs::remove_file(root.join("block")).unwrap();
        resume(&dir);
        assert_eq!(rows(&dir), want_rows, "SIG{name}: resumed log");
        assert_eq!(best(&dir), want_best, "SIG{name}");
    }

    // SIGKILL: nothing can clean up; the evaluators are stopped here, the folders stay until
    // the resume removes them.
    std::fs::write(root.join("block"), "").unwrap();
    for e in std::fs::read_dir(root.join("pids")).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    let mut child = evomerge()
        .args([
            "run",
            exp.to_str().unwrap(),
            "--run-id",
            "sigkill-eval",
            "--quiet",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let blocked = wait_for_blocked(&root.join("pids"), 2, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    for (sh, _) in &blocked {
        signal(*sh, "KILL"); // the shell
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{sh}")])
            .status();
    }
    assert_eq!(temp_left(), 2, "the killed run's folders");
    std::fs::remove_file(root.join("block")).unwrap();
    let dir = root.join("results/toy/sigkill-eval");
    let out = evomerge()
        .args(["resume", dir.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("removed 2 temporary candidate folder"),
        "{stderr}"
    );
    assert_eq!(temp_left(), 0);
    assert_eq!(rows(&dir), want_rows);
}
