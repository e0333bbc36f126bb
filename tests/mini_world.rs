//! Smoke test of the mini Japanese-math world: `evomerge mini-world build --quick` writes the
//! task and four trained (tiny) models, a second call reuses them, and the experiment files of
//! experiments/mini-evollm-jp run on it (PS and DFS, a few candidates each).
//!
//! The second test is the reproduction's CI smoke: the committed default world
//! (experiments/mini-evollm-jp/world, the one `mini-world demo` installs), the layer-wise PS
//! on it (the demo's search, seed 1), and the paper's ordering on the test split: the evolved
//! merge beats every source model. Training that world from scratch takes about 10 minutes in
//! release (`mini-world build --rebuild`); the quick test checks that training works;
//! every experiment over 3 seeds is in experiments/mini-evollm-jp (numbers: RESULTS.md).

use std::path::Path;
use std::process::Command;

/// Candidates of the layer-wise PS (as in the experiment file and the demo: with 150 the margin
/// over the best source was 7.6 points, too close to the assertion's 5).
const SMOKE_EVALUATIONS: usize = 300;
/// Points of strict accuracy (as a fraction) by which the merge must beat the best source
/// (issue 19: +10 on the committed world).
const SMOKE_MARGIN: f64 = 0.10;

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
    with_budget(name, world, out, 4)
}

/// An experiment file of experiments/mini-evollm-jp pointed at `world`, with `evaluations`.
fn with_budget(name: &str, world: &Path, out: &Path, evaluations: usize) -> String {
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
                format!("evaluations = {evaluations}")
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
    // Building from scratch trains: every model's loss fell over its run.
    for m in ["base", "math", "math2", "ja"] {
        let record: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(world.join("models").join(m).join("mini_world.json")).unwrap(),
        )
        .unwrap();
        let (first, last) = (
            record["first_loss"].as_f64().unwrap(),
            record["last_loss"].as_f64().unwrap(),
        );
        assert!(last < first, "{m}: loss {first} -> {last} did not fall");
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

/// Test-split fitness (`acc_lang`) by model name and kind from a run's results.csv.
fn test_scores(run: &Path) -> Vec<(String, String, f64)> {
    let mut reader = csv::Reader::from_path(run.join("results.csv")).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(&r[2], "test");
            (r[0].to_string(), r[1].to_string(), r[3].parse().unwrap())
        })
        .collect()
}

#[test]
fn reduced_reproduction_the_evolved_merge_beats_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let w = world.to_str().unwrap();
    // The committed world is installed, not trained (its stamps match the default settings;
    // a trainer change without a rebuilt fixture fails here instead of training for minutes).
    let (_, log) = evomerge(&["mini-world", "build", w, "--no-eval"]);
    assert_eq!(
        log.matches("installed from the committed world").count(),
        4,
        "{log}"
    );
    let results = tmp.path().join("results");
    let exp = tmp.path().join("ps-layers.toml");
    std::fs::write(
        &exp,
        with_budget("ps-layers.toml", &world, &results, SMOKE_EVALUATIONS),
    )
    .unwrap();
    evomerge(&["run", exp.to_str().unwrap(), "-q"]);
    let scores = test_scores(&results.join("mini-ps-layers/seed1"));
    let table = format!("{scores:#?}");
    let best = scores
        .iter()
        .find(|(_, kind, _)| kind == "best")
        .map(|s| s.2)
        .expect("a best row");
    let sources: Vec<f64> = scores
        .iter()
        .filter(|(_, kind, _)| kind == "source" || kind == "base")
        .map(|s| s.2)
        .collect();
    assert_eq!(sources.len(), 4, "{table}");
    let best_source = sources.iter().cloned().fold(0.0, f64::max);
    // JA math in JA: every source is low (the paper's 9.6 / 18.4 / 30.0 pattern) ...
    assert!(
        best_source < 0.15,
        "a source already solves the task:\n{table}"
    );
    // ... and the evolved merge beats all of them, by a margin well above one seed's noise.
    assert!(
        best > best_source + SMOKE_MARGIN,
        "the evolved merge ({best}) does not beat the best source ({best_source}) by {SMOKE_MARGIN}:\n{table}"
    );
    // ... and the untuned merges of the same sources (the search is what finds it).
    for method in ["ties", "dare_ties"] {
        let untuned = scores
            .iter()
            .find(|(name, ..)| name.starts_with(&format!("{method} (untuned")))
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no untuned {method} row:\n{table}"));
        assert!(
            best > untuned,
            "untuned {method} {untuned} >= evolved {best}:\n{table}"
        );
    }
}

/// The committed world's model folders hold what `mini-world build` writes today: the
/// Hugging Face tokenizer files (with the special tokens transformers and lm-eval need) are the
/// ones the quick world's freshly trained models get, and the config matches in every key but
/// the model shape.
#[test]
fn the_committed_world_has_the_files_a_build_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    evomerge(&[
        "mini-world",
        "build",
        world.to_str().unwrap(),
        "--quick",
        "--no-eval",
    ]);
    let committed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/mini-evollm-jp/world/models");
    let json = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    for m in ["base", "math", "math2", "ja"] {
        let fresh = world.join("models").join(m);
        let kept = committed.join(m);
        let mut files: Vec<String> = std::fs::read_dir(&fresh)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for f in &files {
            assert!(kept.join(f).exists(), "the committed {m} lacks {f}");
        }
        for f in [
            "tokenizer.json",
            "special_tokens_map.json",
            "generation_config.json",
        ] {
            assert_eq!(json(&fresh.join(f)), json(&kept.join(f)), "{m}/{f}");
        }
        // The quick world's context is the same (64 positions), so even model_max_length agrees.
        assert_eq!(
            json(&fresh.join("tokenizer_config.json")),
            json(&kept.join("tokenizer_config.json")),
            "{m}/tokenizer_config.json"
        );
        let (a, b) = (
            json(&fresh.join("config.json")),
            json(&kept.join("config.json")),
        );
        for key in [
            "architectures",
            "model_type",
            "bos_token_id",
            "eos_token_id",
            "vocab_size",
        ] {
            assert_eq!(a[key], b[key], "{m}/config.json {key}");
        }
    }
}

#[test]
fn bad_build_options_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    for (flag, value, says) in [
        ("--shards", "0", "--shards must be at least 1"),
        ("--ft-lr", "0", "must be positive"),
        ("--hidden", "30", "multiple of 4"),
        ("--code-switch", "101", "0 to 100"),
        ("--math-switch", "150", "0 to 100"),
        ("--ja-reasoning", "101", "0 to 100"),
        ("--base-questions", "ja", "use both, en or none"),
        ("--aligned-init", "1.5", "0 to 1"),
        ("--math-train", "0-2", "not within the model's 0-1"),
        ("--ja-train", "mlp", "is not embed, head, a layer N"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_evomerge"))
            .args(["mini-world", "build", world.to_str().unwrap(), "--quick"])
            .args([flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
        assert!(!world.exists(), "{flag} {value} left {}", world.display());
    }
}
