//! What `run`, `resume` and `merge` print on stderr: nothing but warnings and errors with
//! `--quiet`; without it, and with stderr not a terminal (piped, as into a log file), plain
//! progress lines that move per candidate — no carriage returns or ANSI escapes. A command
//! evaluator with a missing `cwd` names the folder once.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn evomerge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evomerge"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn quiet_run_resume_and_merge_print_nothing_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = evomerge_zoo::toy_experiment(tmp.path(), 16, "").unwrap();
    let out = evomerge(&["run", s(&exp), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "run --quiet wrote on stderr");
    // The result (the test table) stays on stdout.
    assert!(String::from_utf8_lossy(&out.stdout).contains("test results"));

    let dir = tmp.path().join("results/toy/seed3");
    let out = evomerge(&["resume", s(&dir), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "resume --quiet wrote on stderr");

    let out = evomerge(&[
        "merge",
        s(&dir.join("best.toml")),
        s(&tmp.path().join("merged")),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "merge --quiet wrote on stderr");
    assert!(tmp.path().join("merged/config.json").exists());
}

#[test]
fn progress_into_a_pipe_is_plain_lines_per_candidate() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = evomerge_zoo::toy_experiment(tmp.path(), 24, "").unwrap();
    let out = evomerge(&["run", s(&exp)]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "a bar's control characters in piped stderr:\n{err:?}"
    );
    // One line per 10% of the 24 candidates: more lines than the search has generations
    // (a per-generation tick gives at most one per generation).
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ps stage: ") && l.contains("/24 candidates"))
        .collect();
    let generations = std::fs::read_to_string(tmp.path().join("results/toy/seed3/generations.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert!(
        lines.len() > generations && lines.len() >= 8,
        "{} progress lines for {generations} generations:\n{err}",
        lines.len()
    );
    let counts: Vec<u64> = lines
        .iter()
        .map(|l| {
            l["ps stage: ".len()..]
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    assert_eq!(counts.last(), Some(&24), "{err}");
    assert!(
        err.contains("test table: "),
        "no test-table progress:\n{err}"
    );
}

#[test]
fn a_missing_evaluator_cwd_is_named_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-folder");
    let extra = format!(
        "\n[[evaluators]]\nkind = \"command\"\nname = \"ext\"\ncommand = \"true\"\ncwd = \"{}\"\n",
        missing.display()
    );
    let exp = evomerge_zoo::toy_experiment(tmp.path(), 8, &extra).unwrap();
    let out = evomerge(&["run", s(&exp), "--quiet"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(
        err.matches(missing.to_str().unwrap()).count(),
        1,
        "the folder is not named exactly once:\n{err}"
    );
}
