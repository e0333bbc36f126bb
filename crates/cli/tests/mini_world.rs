//! Smoke test of the mini Japanese-math world: `evomerge mini-world build --quick` writes the
//! task and four trained (tiny) models, a second call reuses them, and the experiment files of
//! experiments/mini-evollm-jp run on it (PS and DFS, a few candidates each).
//!
//! The full-size world and the experiments are not run here (minutes of training); see
//! experiments/mini-evollm-jp/README.md.

use std::path::Path;
use std::process::Command;

fn evomerge(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_evomerge"))
        .args(args)
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "evomerge {args:?} failed:\n{so}\n{se}"
    );
    (so, se)
}

/// An experiment file of experiments/mini-evollm-jp pointed at `world`, with a tiny budget.
fn shrink(name: &str, world: &Path, out: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/mini-evollm-jp");
    let text = std::fs::read_to_string(root.join(name)).unwrap();
    text.replace("../../results/mini-world", &world.display().to_string())
        .replace(
            "output = \"results/mini-evollm-jp\"",
            &format!("output = \"{}\"", out.display()),
        )
        .lines()
        .map(|l| {
            if l.starts_with("evaluations = ") {
                "evaluations = 4".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn quick_world_builds_caches_and_runs_the_experiments() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let w = world.to_str().unwrap();
    let (table, _) = evomerge(&["mini-world", "build", w, "--quick"]);
    for f in [
        "task/ja_math.toml",
        "task/ja_math_search.jsonl",
        "task/ja_math_test.jsonl",
        "task/ja_words.txt",
        "task/en_math.toml",
        "models/base/config.json",
        "models/base/tokenizer.json",
        "models/math/model.safetensors",
        "models/math2/model.safetensors",
        "models/ja/model.safetensors",
        "sources_test.json",
    ] {
        assert!(world.join(f).exists(), "missing {f}");
    }
    for m in ["base", "math", "math2", "ja"] {
        assert!(table.contains(&format!("| {m} |")), "{table}");
    }
    // The second call trains nothing.
    let (_, log) = evomerge(&["mini-world", "build", w, "--quick", "--no-eval"]);
    assert_eq!(log.matches(": cached").count(), 4, "{log}");

    let results = tmp.path().join("results");
    for name in ["ps.toml", "dfs.toml"] {
        let exp = tmp.path().join(name);
        std::fs::write(&exp, shrink(name, &world, &results)).unwrap();
        evomerge(&["run", exp.to_str().unwrap(), "-q"]);
    }
    assert!(results.join("mini-ps/seed1/candidates.csv").exists());
    assert!(results.join("mini-dfs/seed1/candidates.csv").exists());

    // The README's main command, on the quick world: the embedded layer-wise PS, the table.
    let demo = tmp.path().join("demo");
    let args = [
        "mini-world",
        "demo",
        "--quick",
        "--world",
        w,
        "--out",
        demo.to_str().unwrap(),
        "--evaluations",
        "6",
    ];
    let (table, log) = evomerge(&args);
    assert_eq!(log.matches(": cached").count(), 4, "{log}");
    for row in [
        "| PS best |",
        "| ja |",
        "| math |",
        "| math2 |",
        "| ties (untuned",
    ] {
        assert!(table.contains(row), "{row} missing:\n{table}");
    }
    let run = demo.join("mini-demo/seed1");
    let lines = std::fs::read_to_string(run.join("candidates.csv")).unwrap();
    assert!(lines.lines().count() > 6, "{lines}");
    // Again: the finished run is reported, not searched anew.
    let (again, _) = evomerge(&args);
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>(),
        table
            .lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>()
    );
}
