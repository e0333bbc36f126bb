//! The paper's full-size experiment (`experiments/evollm-jp-7b/`), run as a user would, on tiny
//! checkpoints with Mistral's tensor names and config keys instead of the 7B downloads: the
//! experiment files parse, plan and run two candidates of each stage (PS, DFS, and the PS+DFS
//! step over the exported PS result), and every run ends with its test table. Only the budget,
//! the device (cpu) and the generation length are changed; everything else is the committed
//! files as they are.

use evomerge_checkpoint::Dtype;
use evomerge_zoo::{TinyLlama, Weights};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXPERIMENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../experiments/evollm-jp-7b"
);

/// A tiny model saved with the config keys of Mistral-7B-v0.1's `config.json`.
fn save_mistral(weights: &Weights, dir: &Path) {
    let mut w = weights.clone();
    let c = w.config.as_object_mut().unwrap();
    c.insert("architectures".into(), json!(["MistralForCausalLM"]));
    c.insert("model_type".into(), json!("mistral"));
    c.insert("sliding_window".into(), json!(4096));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert("use_cache".into(), json!(true));
    c.insert("transformers_version".into(), json!("4.34.0.dev0"));
    w.save(dir, Dtype::BF16, u64::MAX).unwrap();
}

fn models(root: &Path) {
    let spec = TinyLlama {
        layers: 3,
        max_positions: 256,
        ..TinyLlama::default()
    };
    let base = spec.random(7);
    save_mistral(&base, &root.join("models/Mistral-7B-v0.1"));
    for (i, name) in ["shisa-gamma-7b-v1", "WizardMath-7B-V1.1", "Abel-7B-002"]
        .iter()
        .enumerate()
    {
        save_mistral(
            &base.perturbed(100 + i as u64, 0.01),
            &root.join("models").join(name),
        );
    }
}

fn jsonl(path: &Path, prefix: &str, n: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({
                "id": format!("{prefix}-{i}"),
                "question": format!("tok{} tok{} tok{}", 3 + i % 50, 3 + (i * 7) % 50, 3 + (i * 13) % 50),
                "answer": (i % 90) as u64,
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The committed experiment folder copied to `root`, with `edit` applied to each experiment
/// file and the generation length cut to 4 tokens (a random model never stops by itself).
fn copy_experiment(root: &Path) {
    for sub in ["", "tasks"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        for entry in std::fs::read_dir(Path::new(EXPERIMENT).join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let mut doc: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
                if sub == "tasks" {
                    doc["generate"]["max_new_tokens"] = 4.into();
                } else {
                    doc.insert("device".into(), "cpu".into());
                    let mut budget = toml::Table::new();
                    budget.insert("evaluations".into(), 2.into());
                    doc.insert("budget".into(), budget.into());
                }
                let out = root.join(sub).join(path.file_name().unwrap());
                std::fs::write(out, toml::to_string(&doc).unwrap()).unwrap();
            }
        }
    }
}

fn evomerge(cwd: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_evomerge"))
        .current_dir(cwd)
        .args(args)
        .args(if args[0] == "run" {
            &["--quiet"][..]
        } else {
            &[]
        })
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "evomerge {args:?} failed:\n{so}\n{se}");
    so
}

fn run_dir(root: &Path, name: &str) -> PathBuf {
    root.join("results/evollm-jp-7b").join(name).join("seed42")
}

fn assert_two_candidates(csv: &Path) {
    let mut reader = csv::Reader::from_path(csv).unwrap();
    let status = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "status")
        .expect("status column");
    let rows: Vec<_> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2, "{}", csv.display());
    for r in &rows {
        assert_eq!(&r[status], "ok", "{r:?}");
    }
}

#[test]
fn the_full_size_experiment_runs_on_tiny_mistral_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("evollm-jp-7b");
    copy_experiment(&root);
    models(&root);
    jsonl(&root.join("data/gsm8k_ja_250_1319.jsonl"), "gsm8k-ja", 1069);
    jsonl(&root.join("data/mgsm_ja.jsonl"), "mgsm-ja", 250);

    // PS: 6 genes (weight and density of 3 models), DARE-TIES, the test table with the sources.
    let table = evomerge(&root, &["run", "ps.toml"]);
    let ps = run_dir(&root, "evollm-jp-7b-ps");
    assert_two_candidates(&ps.join("candidates.csv"));
    let header = std::fs::read_to_string(ps.join("candidates.csv")).unwrap();
    let header = header.lines().next().unwrap();
    for gene in ["x.0", "x.5"] {
        assert!(header.split(',').any(|h| h == gene), "{header}");
    }
    assert!(!header.split(',').any(|h| h == "x.6"), "{header}");
    for source in ["shisa-gamma-7b-v1", "WizardMath-7B-V1.1", "Abel-7B-002"] {
        assert!(
            table.contains(source),
            "{source} not in the table:\n{table}"
        );
    }
    let best = std::fs::read_to_string(ps.join("best.toml")).unwrap();
    assert!(best.contains("dare_ties"), "{best}");

    // DFS over A = shisa-gamma, B = WizardMath.
    evomerge(&root, &["run", "dfs.toml"]);
    let dfs = run_dir(&root, "evollm-jp-7b-dfs");
    assert_two_candidates(&dfs.join("candidates.csv"));
    assert!(dfs.join("best_path.json").exists());

    // PS+DFS: the exported PS result as model A.
    evomerge(
        &root,
        &[
            "export",
            ps.to_str().unwrap(),
            "--out",
            "models/evollm-jp-7b-ps",
            "--format",
            "plain",
        ],
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("models/evollm-jp-7b-ps/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["model_type"], "mistral");
    evomerge(&root, &["run", "ps-dfs.toml"]);
    assert_two_candidates(&run_dir(&root, "evollm-jp-7b-ps-dfs").join("candidates.csv"));
}
