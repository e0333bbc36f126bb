//! End to end: the data-using methods through recipes, on tiny MLP checkpoints the test writes.

use evomerge_checkpoint::Dtype;
use evomerge_datamerge::rebasin::{Permutation, apply};
use evomerge_merge::{MergeError, MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_models::MlpWeights;
use evomerge_zoo::TinyLlama;
use std::path::{Path, PathBuf};

fn merge(recipe: &str, out: &Path) -> Result<PathBuf, MergeError> {
    let recipe = Recipe::from_toml(recipe)?;
    let sources = Sources::open(&recipe, None)?;
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default())?;
    Ok(merge_to_disk(&plan, &sources, out, &MergeOptions::default(), &[])?.out_dir)
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a: MlpWeights,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let a = MlpWeights::init(&[64, 16, 12, 10], 1).unwrap();
        a.save(root.join("a"), false).unwrap();
        apply(&a, &Permutation::random(&a, 3))
            .save(root.join("a_permuted"), false)
            .unwrap();
        MlpWeights::init(&[64, 16, 12, 10], 2)
            .unwrap()
            .save(root.join("b"), false)
            .unwrap();
        MlpWeights::init(&[10, 16, 12, 10], 2)
            .unwrap()
            .save(root.join("narrow"), false)
            .unwrap();
        World { _tmp: tmp, root, a }
    }

    fn recipe(&self, body: &str) -> String {
        body.replace("{root}", self.root.to_str().unwrap())
    }
}

#[test]
fn every_data_method_merges_mlp_checkpoints() {
    let w = World::new();
    for (method, params) in [
        ("fisher", "fisher = \"empirical\""),
        ("fisher", "normalize = false"),
        ("regmean", "alpha = 0.9"),
        ("git_rebasin", "matching = \"activation\""),
        ("repair", "t = 0.5"),
        ("greedy_soup", ""),
    ] {
        let recipe = w.recipe(&format!(
            "merge_method = \"{method}\"\nparameters = {{ {params} }}\n[[models]]\nmodel = \"{{root}}/a\"\n[[models]]\nmodel = \"{{root}}/b\"\n[data]\ndataset = \"digits\"\nsamples = 120\n"
        ));
        let out = w.root.join(format!("out_{method}_{}", params.len()));
        merge(&recipe, &out).unwrap_or_else(|e| panic!("{method}: {e}"));
        let m = MlpWeights::load(&out).unwrap();
        assert_eq!(m.layer_sizes, w.a.layer_sizes, "{method}");
        assert!(m.flat().iter().all(|v| v.is_finite()), "{method}");
    }
}

#[test]
fn weight_matching_recipe_undoes_a_permutation() {
    let w = World::new();
    let recipe = w.recipe(
        "merge_method = \"git_rebasin\"\nout_dtype = \"float32\"\n[[models]]\nmodel = \"{root}/a\"\n[[models]]\nmodel = \"{root}/a_permuted\"\n",
    );
    let out = merge(&recipe, &w.root.join("aligned")).unwrap();
    assert_eq!(MlpWeights::load(&out).unwrap(), w.a);
    // The dtype follows the plan.
    let c = evomerge_checkpoint::Checkpoint::open(&out).unwrap();
    assert_eq!(c.info("layers.0.weight").unwrap().dtype, Dtype::F32);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let w = World::new();
    // No data section.
    let e = merge(
        &w.recipe("merge_method = \"regmean\"\n[[models]]\nmodel = \"{root}/a\"\n[[models]]\nmodel = \"{root}/b\"\n"),
        &w.root.join("x1"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs data") && e.contains("data"), "{e}");
    // Wrong feature count: a 10-input MLP on the 64-feature digits.
    let e = merge(
        &w.recipe("merge_method = \"fisher\"\n[[models]]\nmodel = \"{root}/narrow\"\n[[models]]\nmodel = \"{root}/narrow\"\n[data]\ndataset = \"digits\"\nsamples = 50\n"),
        &w.root.join("x2"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("64") && e.contains("expects 10"), "{e}");
    // Mismatched architectures.
    let e = merge(
        &w.recipe("merge_method = \"git_rebasin\"\n[[models]]\nmodel = \"{root}/a\"\n[[models]]\nmodel = \"{root}/narrow\"\n"),
        &w.root.join("x3"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("shape") || e.contains("layer sizes"), "{e}");
    // Singular Gram without a ridge (digits has always-blank corner pixels).
    let e = merge(
        &w.recipe("merge_method = \"regmean\"\nparameters = { ridge = 0 }\n[[models]]\nmodel = \"{root}/a\"\n[[models]]\nmodel = \"{root}/b\"\n[data]\ndataset = \"digits\"\nsamples = 100\n"),
        &w.root.join("x4"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("singular") && e.contains("layers.0.weight") && e.contains("ridge"),
        "{e}"
    );
    // Language models need text, and cannot be permutation-aligned; no MLP/LM mixes.
    let spec = TinyLlama::default();
    spec.random(0)
        .save(w.root.join("llama"), Dtype::F32, u64::MAX)
        .unwrap();
    spec.random(1)
        .save(w.root.join("llama2"), Dtype::F32, u64::MAX)
        .unwrap();
    let e = merge(
        &w.recipe("merge_method = \"fisher\"\n[[models]]\nmodel = \"{root}/llama\"\n[[models]]\nmodel = \"{root}/llama2\"\n[data]\ndataset = \"digits\"\n"),
        &w.root.join("x5"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("language model") && e.contains(".txt"), "{e}");
    let e = merge(
        &w.recipe("merge_method = \"git_rebasin\"\n[[models]]\nmodel = \"{root}/llama\"\n[[models]]\nmodel = \"{root}/llama2\"\n"),
        &w.root.join("x5b"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no permutation spec"), "{e}");
    assert!(!w.root.join("x5b").exists());
    // Unknown words.
    let e = merge(
        &w.recipe("merge_method = \"fisher\"\nparameters = { fisher = \"sampled\" }\n[[models]]\nmodel = \"{root}/a\"\n[[models]]\nmodel = \"{root}/b\"\n[data]\ndataset = \"digits\"\n"),
        &w.root.join("x6"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sampled"), "{e}");
    // A data file with the wrong number of columns.
    let csv = w.root.join("small.csv");
    std::fs::write(&csv, "a,b,label\n1,2,0\n3,4,1\n").unwrap();
    let e = merge(
        &w.recipe(&format!("merge_method = \"regmean\"\n[[models]]\nmodel = \"{{root}}/a\"\n[[models]]\nmodel = \"{{root}}/b\"\n[data]\ndataset = \"{}\"\nsplit = \"all\"\n", csv.display())),
        &w.root.join("x7"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("small.csv") && e.contains("2 features") && e.contains("64"),
        "{e}"
    );
}

#[test]
fn lm_data_methods_merge_llama_checkpoints_on_text() {
    let w = World::new();
    let spec = TinyLlama::default();
    let base = spec.random(0);
    base.perturbed(1, 0.1)
        .save(w.root.join("lm_a"), Dtype::F32, u64::MAX)
        .unwrap();
    base.perturbed(2, 0.1)
        .save(w.root.join("lm_b"), Dtype::F32, u64::MAX)
        .unwrap();
    // Word-level texts over the tiny tokenizer's words; one file per model's domain.
    for (file, offset) in [("a.txt", 3), ("b.jsonl", 30)] {
        let lines: Vec<String> = (0..40)
            .map(|i| {
                let text = (0..6)
                    .map(|k| format!("tok{}", offset + (i * 7 + k * 3) % 30))
                    .collect::<Vec<_>>()
                    .join(" ");
                if file.ends_with("jsonl") {
                    format!("{{\"text\": \"{text}\"}}")
                } else {
                    text
                }
            })
            .collect();
        std::fs::write(w.root.join(file), lines.join("\n")).unwrap();
    }
    for (method, params) in [
        ("regmean", "alpha = 0.9"),
        ("fisher", "normalize = false"),
        ("greedy_soup", ""),
    ] {
        let recipe = w.recipe(&format!(
            "merge_method = \"{method}\"\nparameters = {{ {params} }}\n[[models]]\nmodel = \"{{root}}/lm_a\"\n[[models]]\nmodel = \"{{root}}/lm_b\"\n[data]\ndataset = \"{{root}}/a.txt\"\nsplit = \"all\"\n[[data.models]]\n[[data.models]]\ndataset = \"{{root}}/b.jsonl\"\n"
        ));
        let out = w.root.join(format!("lm_{method}"));
        merge(&recipe, &out).unwrap_or_else(|e| panic!("{method}: {e}"));
        let m = evomerge_models::Llama::from_dir(&out, &evomerge_kernels::Device::flex())
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(m.num_layers(), spec.layers);
        assert!(out.join("tokenizer.json").exists(), "{method}");
        let c = evomerge_checkpoint::Checkpoint::open(&out).unwrap();
        let merged = c.read_f32("model.layers.1.mlp.down_proj.weight").unwrap();
        assert!(merged.iter().all(|v| v.is_finite()), "{method}");
    }
    // Exact Fisher on an LM is refused with what to use instead.
    let e = merge(
        &w.recipe("merge_method = \"fisher\"\nparameters = { fisher = \"exact\" }\n[[models]]\nmodel = \"{root}/lm_a\"\n[[models]]\nmodel = \"{root}/lm_b\"\n[data]\ndataset = \"{root}/a.txt\"\n"),
        &w.root.join("lm_exact"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("empirical"), "{e}");
    assert!(!w.root.join("lm_exact").exists());
}

#[test]
fn data_section_reads_from_yaml_and_per_model_overrides() {
    let r = Recipe::from_yaml(
        "merge_method: regmean\nmodels:\n  - model: a\n  - model: b\ndata:\n  dataset: digits\n  split: validation\n  models:\n    - classes: [0, 1]\n    - classes: [2]\n      samples: 5\n",
    )
    .unwrap();
    let d = r.data.as_ref().unwrap();
    assert_eq!(d.spec_for(0).classes, Some(vec![0, 1]));
    assert_eq!(d.spec_for(1).samples, Some(5));
    assert_eq!(d.spec_for(1).split, evomerge_data::Part::Val);
    let back = Recipe::from_toml(&r.to_toml()).unwrap();
    assert_eq!(back, r);
}
