//! End to end: tiny Llama-layout checkpoints written by the test, merged from recipes.

use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_merge::{
    MergeError, MergeOptions, ParamValue, Plan, PlanOptions, Recipe, Sources, merge_to_disk,
};
use evomerge_zoo::TinyLlama;
use std::path::{Path, PathBuf};

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl World {
    /// base + two fine-tunes, written in `dtype`, sharded when `shard` is set.
    fn new(dtype: Dtype, shard: bool) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let spec = TinyLlama::default();
        let base = spec.random(0);
        let max = if shard { 3000 } else { u64::MAX };
        base.save(root.join("base"), dtype, max).unwrap();
        base.perturbed(1, 0.01)
            .save(root.join("a"), dtype, max)
            .unwrap();
        base.perturbed(2, 0.01)
            .save(root.join("b"), dtype, max)
            .unwrap();
        World { _tmp: tmp, root }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    /// Recipe text with {root} replaced.
    fn text(&self, s: &str) -> String {
        s.replace("{root}", self.root.to_str().unwrap())
    }

    fn merge(&self, recipe: &Recipe, out: &str) -> Result<PathBuf, MergeError> {
        let sources = Sources::open(recipe, None)?;
        let plan = Plan::build(recipe, &sources, &PlanOptions::default())?;
        let opts = MergeOptions {
            seed: 7,
            jobs: 2,
            ..Default::default()
        };
        Ok(merge_to_disk(&plan, &sources, &self.path(out), &opts, &[])?.out_dir)
    }
}

fn read_all(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = Checkpoint::open(dir).unwrap();
    c.names()
        .map(|n| (n.to_string(), c.read_f32(n).unwrap()))
        .collect()
}

const TIES_YAML: &str = r#"
models:
  - model: {root}/a
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: {root}/b
    parameters:
      density: 0.5
      weight:
        - filter: mlp
          value: 0.5
        - value: 0.3
merge_method: ties
base_model: {root}/base
parameters:
  normalize: true
  int8_mask: true
dtype: float32
"#;

const TIES_TOML: &str = r#"
merge_method = "ties"
base_model = "{root}/base"
dtype = "float32"

[parameters]
normalize = true
int8_mask = true

[[models]]
model = "{root}/a"
parameters = { density = [1, 0.7, 0.1], weight = 1.0 }

[[models]]
model = "{root}/b"
[models.parameters]
density = 0.5
weight = [{ filter = "mlp", value = 0.5 }, { value = 0.3 }]
"#;

#[test]
fn toml_and_mergekit_yaml_give_identical_tensors_bf16_f32_single_and_sharded() {
    for (dtype, shard) in [(Dtype::F32, false), (Dtype::BF16, true)] {
        let w = World::new(dtype, shard);
        let y = w
            .merge(&Recipe::from_yaml(&w.text(TIES_YAML)).unwrap(), "from_yaml")
            .unwrap();
        let t = w
            .merge(&Recipe::from_toml(&w.text(TIES_TOML)).unwrap(), "from_toml")
            .unwrap();
        let (ya, ta) = (read_all(&y), read_all(&t));
        assert_eq!(ya.len(), TinyLlama::default().shapes().len());
        assert_eq!(ya, ta, "dtype {dtype}");
        // the merge moved weights away from the base
        let base = read_all(&w.path("base"));
        assert_ne!(ya, base);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(y.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["torch_dtype"], "float32");
        assert_eq!(cfg["num_hidden_layers"], 2);
        assert!(y.join("tokenizer.json").exists());
    }
}

#[test]
fn ties_pipeline_matches_hand_computation() {
    let w = World::new(Dtype::F32, false);
    let recipe = Recipe::from_toml(&w.text(
        r#"
merge_method = "ties"
base_model = "{root}/base"
[parameters]
density = 0.5
[[models]]
model = "{root}/a"
parameters = { weight = 0.7 }
[[models]]
model = "{root}/b"
parameters = { weight = 0.3 }
"#,
    ))
    .unwrap();
    let out = w.merge(&recipe, "out").unwrap();
    let got = Checkpoint::open(&out).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let read = |m: &str| Checkpoint::open(w.path(m)).unwrap().read_f32(name).unwrap();
    let (base, a, b) = (read("base"), read("a"), read("b"));
    let trim = |m: &[f32]| -> Vec<f32> {
        let d: Vec<f32> = m.iter().zip(&base).map(|(x, y)| x - y).collect();
        let mut mags: Vec<f32> = d.iter().map(|v| v.abs()).collect();
        mags.sort_by(|x, y| y.partial_cmp(x).unwrap());
        let thr = mags[d.len() / 2 - 1];
        d.iter()
            .map(|v| if v.abs() >= thr { *v } else { 0.0 })
            .collect()
    };
    let (da, db) = (trim(&a), trim(&b));
    let want: Vec<f32> = (0..base.len())
        .map(|i| {
            let (wa, wb) = (0.7 * da[i], 0.3 * db[i]);
            let sign = if wa + wb >= 0.0 { 1.0 } else { -1.0 };
            let (ka, kb) = (
                wa.signum() == sign && wa != 0.0,
                wb.signum() == sign && wb != 0.0,
            );
            let num = if ka { wa } else { 0.0 } + if kb { wb } else { 0.0 };
            let den = if ka { 0.7 } else { 0.0 } + if kb { 0.3 } else { 0.0 };
            base[i] + if den == 0.0 { num } else { num / den }
        })
        .collect();
    let merged = got.read_f32(name).unwrap();
    for (g, e) in merged.iter().zip(&want) {
        assert!((g - e).abs() < 1e-6, "{g} vs {e}");
    }
}

#[test]
fn passthrough_stacks_layers_and_fixes_config() {
    let w = World::new(Dtype::F32, false);
    let recipe = Recipe::from_yaml(&w.text(
        r#"
slices:
  - sources:
    - model: {root}/a
      layer_range: [0, 2]
  - sources:
    - model: {root}/b
      layer_range: [0, 2]
merge_method: passthrough
dtype: bfloat16
"#,
    ))
    .unwrap();
    let out = w.merge(&recipe, "stacked").unwrap();
    let c = Checkpoint::open(&out).unwrap();
    assert_eq!(c.num_layers(), Some(4));
    assert_eq!(c.config().unwrap()["num_hidden_layers"], 4);
    assert_eq!(c.config().unwrap()["torch_dtype"], "bfloat16");
    let a = Checkpoint::open(w.path("a")).unwrap();
    let b = Checkpoint::open(w.path("b")).unwrap();
    let bf = |v: Vec<f32>| -> Vec<f32> {
        let mut bytes = Vec::new();
        Dtype::BF16.encode_f32(&v, &mut bytes);
        let mut out = vec![0.0; v.len()];
        Dtype::BF16.decode_f32(&bytes, &mut out);
        out
    };
    let n = "mlp.down_proj.weight";
    assert_eq!(
        c.read_f32(&format!("model.layers.0.{n}")).unwrap(),
        bf(a.read_f32(&format!("model.layers.0.{n}")).unwrap())
    );
    assert_eq!(
        c.read_f32(&format!("model.layers.3.{n}")).unwrap(),
        bf(b.read_f32(&format!("model.layers.1.{n}")).unwrap())
    );
    // embeddings from the first slice's model, head from the last slice's
    assert_eq!(
        c.read_f32("model.embed_tokens.weight").unwrap(),
        bf(a.read_f32("model.embed_tokens.weight").unwrap())
    );
    assert_eq!(
        c.read_f32("lm_head.weight").unwrap(),
        bf(b.read_f32("lm_head.weight").unwrap())
    );
    assert!(!c.contains("model.layers.4.mlp.down_proj.weight"));
}

#[test]
fn merging_identical_models_returns_that_model_for_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinyLlama::default();
    let m = spec.random(5);
    for name in ["x", "y", "z"] {
        m.save(tmp.path().join(name), Dtype::F32, u64::MAX).unwrap();
    }
    let root = tmp.path().to_str().unwrap();
    m.save(tmp.path().join("w"), Dtype::F32, u64::MAX).unwrap();
    let original = read_all(&tmp.path().join("x"));
    // every per-tensor method of the registry, with its example parameters
    for spec in crate::registry::per_tensor() {
        let method = spec.name;
        let (others, with_base) = crate::registry::layout(spec);
        let base = if with_base { "x" } else { "" };
        let pool: &[&str] = if with_base {
            &["y", "z", "w"]
        } else {
            &["x", "y", "z", "w"]
        };
        let models = &pool[..others];
        let yaml_value = |p: &evomerge_merge::method::ParamSpec| match p.example_value() {
            ParamValue::Number(x) => Some(format!("{}: {x}", p.name)),
            ParamValue::Bool(b) => Some(format!("{}: {b}", p.name)),
            ParamValue::Text(_) => None,
        };
        let per_model: Vec<String> = spec.tensor_params.iter().filter_map(yaml_value).collect();
        let global: Vec<String> = spec
            .global_params
            .iter()
            .filter(|p| p.default.is_none())
            .filter_map(yaml_value)
            .collect();
        let mut yaml = format!("merge_method: {method}\n");
        if !base.is_empty() {
            yaml.push_str(&format!("base_model: {root}/{base}\n"));
        }
        if !global.is_empty() {
            yaml.push_str(&format!("parameters:\n  {}\n", global.join("\n  ")));
        }
        yaml.push_str("models:\n");
        for m in models {
            yaml.push_str(&format!("  - model: {root}/{m}\n"));
            if !per_model.is_empty() {
                yaml.push_str(&format!(
                    "    parameters:\n      {}\n",
                    per_model.join("\n      ")
                ));
            }
        }
        let recipe = Recipe::from_yaml(&yaml).unwrap_or_else(|e| panic!("{method}: {e}\n{yaml}"));
        let sources = Sources::open(&recipe, None).unwrap();
        let plan = Plan::build(&recipe, &sources, &PlanOptions::default())
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let out = tmp.path().join(format!("out_{method}"));
        merge_to_disk(&plan, &sources, &out, &MergeOptions::default(), &[])
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        for ((n, want), (n2, got)) in original.iter().zip(read_all(&out)) {
            assert_eq!(n, &n2);
            // linear with weights 0.4 (normalised) and the multi-input means are exact up to rounding
            for (a, b) in want.iter().zip(&got) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{method} {n}: {a} vs {b}"
                );
            }
        }
    }
}

fn expect_error(w: &World, yaml: &str, needle: &str) {
    let out = w.path("should_not_exist");
    let result = Recipe::from_yaml(&w.text(yaml)).and_then(|r| {
        let sources = Sources::open(&r, None)?;
        let plan = Plan::build(&r, &sources, &PlanOptions::default())?;
        merge_to_disk(&plan, &sources, &out, &MergeOptions::default(), &[])
    });
    let err = result.expect_err("the merge should fail").to_string();
    assert!(
        err.contains(needle),
        "error '{err}' should mention '{needle}'"
    );
    assert!(!out.exists(), "no output folder may be left behind ({err})");
    let leftovers: Vec<_> = std::fs::read_dir(&w.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing() {
    let w = World::new(Dtype::F32, false);
    // a model of another size
    let other = TinyLlama {
        intermediate: 40,
        ..Default::default()
    };
    other
        .random(1)
        .save(w.path("wide"), Dtype::F32, u64::MAX)
        .unwrap();
    // another vocabulary
    let vocab = TinyLlama {
        vocab: 80,
        ..Default::default()
    };
    vocab
        .random(1)
        .save(w.path("vocab"), Dtype::F32, u64::MAX)
        .unwrap();
    // a model missing a tensor
    let mut missing = TinyLlama::default().random(1);
    missing
        .tensors
        .retain(|(n, _, _)| n != "model.layers.1.mlp.up_proj.weight");
    missing
        .save(w.path("missing"), Dtype::F32, u64::MAX)
        .unwrap();
    // a corrupt header
    TinyLlama::default()
        .random(1)
        .save(w.path("corrupt"), Dtype::F32, u64::MAX)
        .unwrap();
    let f = w.path("corrupt/model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[12] = b'}';
    std::fs::write(&f, bytes).unwrap();

    let two = |m: &str| {
        format!(
            "merge_method: ties\nbase_model: {{root}}/base\nmodels:\n  - model: {{root}}/a\n    parameters: {{weight: 1}}\n  - model: {{root}}/{m}\n    parameters: {{weight: 1}}\n"
        )
    };
    expect_error(&w, &two("wide"), "but [32, 40] in model");
    expect_error(&w, &two("vocab"), "vocabulary");
    expect_error(&w, &two("missing"), "model.layers.1.mlp.up_proj.weight");
    expect_error(&w, &two("corrupt"), "corrupt");
    expect_error(&w, &two("nowhere"), "no model folder");
    expect_error(
        &w,
        "merge_method: tie\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n",
        "did you mean 'ties'",
    );
    expect_error(
        &w,
        "merge_method: ties\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n    parameters: {weight: 1, densty: 0.5}\n",
        "did you mean 'density'",
    );
    expect_error(
        &w,
        "merge_method: ties\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n    parameters: {weight: 1, density: 1.5}\n",
        "outside (0, 1]",
    );
    expect_error(
        &w,
        "merge_method: dare_ties\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n    parameters: {weight: 1, density: 0}\n",
        "outside (0, 1]",
    );
    expect_error(
        &w,
        "merge_method: ties\nbase_model: {root}/base\nmodels: []\n",
        "empty",
    );
    expect_error(
        &w,
        "merge_method: ties\nmodels:\n  - model: {root}/a\n    parameters: {weight: 1}\n",
        "needs a base_model",
    );
    expect_error(
        &w,
        "merge_method: slerp\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n",
        "needs parameter 't'",
    );
    expect_error(
        &w,
        "merge_method: task_arithmetic\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n",
        "needs parameter 'weight'",
    );
    expect_error(
        &w,
        "merge_method: passthrough\nslices:\n  - sources:\n    - model: {root}/a\n      layer_range: [0, 3]\n",
        "outside its 2 layers",
    );
}

#[test]
fn existing_output_is_refused_unless_forced() {
    let w = World::new(Dtype::F32, false);
    let recipe = Recipe::from_yaml(&w.text(TIES_YAML)).unwrap();
    std::fs::create_dir(w.path("taken")).unwrap();
    std::fs::write(w.path("taken/keep.txt"), "x").unwrap();
    let err = w.merge(&recipe, "taken").unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    assert!(w.path("taken/keep.txt").exists());
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    let opts = MergeOptions {
        force: true,
        ..Default::default()
    };
    merge_to_disk(&plan, &sources, &w.path("taken"), &opts, &[]).unwrap();
    assert!(!w.path("taken/keep.txt").exists());
    assert!(w.path("taken/model.safetensors").exists());
}

#[test]
fn dare_is_reproducible_and_seeded() {
    let w = World::new(Dtype::F32, false);
    let yaml = w.text(
        "merge_method: dare_ties\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n    parameters: {weight: 1, density: 0.3}\n  - model: {root}/b\n    parameters: {weight: 1, density: 0.3}\n",
    );
    let recipe = Recipe::from_yaml(&yaml).unwrap();
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    let run = |seed: u64, jobs: usize, out: &str| {
        let opts = MergeOptions {
            seed,
            jobs,
            ..Default::default()
        };
        merge_to_disk(&plan, &sources, &w.path(out), &opts, &[]).unwrap();
        read_all(&w.path(out))
    };
    let a = run(1, 1, "s1");
    let b = run(1, 3, "s1_parallel");
    let c = run(2, 1, "s2");
    assert_eq!(a, b, "thread count must not change the result");
    assert_ne!(a, c, "the seed changes the masks");
}

#[test]
fn tied_and_untied_heads() {
    let tmp = tempfile::tempdir().unwrap();
    let tied = TinyLlama {
        tie_embeddings: true,
        ..Default::default()
    };
    let base = tied.random(0);
    base.save(tmp.path().join("t0"), Dtype::F32, u64::MAX)
        .unwrap();
    base.perturbed(1, 0.01)
        .save(tmp.path().join("t1"), Dtype::F32, u64::MAX)
        .unwrap();
    let root = tmp.path().to_str().unwrap();
    // all tied: no head in the output, config stays tied
    let recipe = Recipe::from_yaml(&format!(
        "merge_method: linear\nmodels:\n  - model: {root}/t0\n    parameters: {{weight: 1}}\n  - model: {root}/t1\n    parameters: {{weight: 1}}\n"
    ))
    .unwrap();
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    merge_to_disk(
        &plan,
        &sources,
        &tmp.path().join("out"),
        &MergeOptions::default(),
        &[],
    )
    .unwrap();
    let c = Checkpoint::open(tmp.path().join("out")).unwrap();
    assert!(!c.contains("lm_head.weight"));
    assert_eq!(c.config().unwrap()["tie_word_embeddings"], true);
    // one untied model: the output gets a head; tied models contribute their embeddings
    let untied = TinyLlama::default();
    let mut u = untied.random(0);
    for (n, _, v) in u.tensors.iter_mut() {
        if n == "lm_head.weight" {
            v.iter_mut().for_each(|x| *x = 1.0);
        }
    }
    u.save(tmp.path().join("u"), Dtype::F32, u64::MAX).unwrap();
    let recipe = Recipe::from_yaml(&format!(
        "merge_method: linear\nmodels:\n  - model: {root}/t0\n    parameters: {{weight: 1}}\n  - model: {root}/u\n    parameters: {{weight: 1}}\n"
    ))
    .unwrap();
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    merge_to_disk(
        &plan,
        &sources,
        &tmp.path().join("out2"),
        &MergeOptions::default(),
        &[],
    )
    .unwrap();
    let c = Checkpoint::open(tmp.path().join("out2")).unwrap();
    let head = c.read_f32("lm_head.weight").unwrap();
    let emb = Checkpoint::open(tmp.path().join("t0"))
        .unwrap()
        .read_f32("model.embed_tokens.weight")
        .unwrap();
    assert!(
        head.iter()
            .zip(&emb)
            .all(|(h, e)| (h - (e + 1.0) / 2.0).abs() < 1e-6)
    );
    assert_eq!(c.config().unwrap()["tie_word_embeddings"], false);
}

/// A base without config.json (or tokenizer) no longer gives a folder without
/// one: the first model that has it stands in, and the plan says so.
#[test]
fn a_donor_without_config_or_tokenizer_borrows_another_models_and_says_so() {
    let w = World::new(Dtype::F32, false);
    std::fs::remove_file(w.path("base/config.json")).unwrap();
    std::fs::remove_file(w.path("base/tokenizer.json")).unwrap();
    let recipe = Recipe::from_yaml(&w.text(TIES_YAML)).unwrap();
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    let a = w.path("a");
    let a = a.to_str().unwrap();
    let config_warning = plan
        .warnings
        .iter()
        .find(|m| m.contains("no config.json"))
        .unwrap_or_else(|| panic!("no warning in {:?}", plan.warnings));
    assert!(
        config_warning.contains(&format!("{a}'s")),
        "{config_warning}"
    );
    assert!(
        plan.warnings
            .iter()
            .any(|m| m.contains("no tokenizer") && m.contains(a)),
        "{:?}",
        plan.warnings
    );
    assert!(plan.describe(&sources).contains("has no config.json"));
    let out = w.merge(&recipe, "out").unwrap();
    let cfg = Checkpoint::open(&out).unwrap().config().cloned().unwrap();
    let from_a = Checkpoint::open(w.path("a"))
        .unwrap()
        .config()
        .cloned()
        .unwrap();
    assert_eq!(cfg["hidden_size"], from_a["hidden_size"]);
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(w.path("a/tokenizer.json")).unwrap()
    );

    // No model has a config: the merge still runs, and says the output has none.
    for m in ["a", "b"] {
        std::fs::remove_file(w.path(&format!("{m}/config.json"))).unwrap();
    }
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    assert!(
        plan.warnings
            .iter()
            .any(|m| m.contains("no model has a config.json")),
        "{:?}",
        plan.warnings
    );
    assert!(plan.config.is_none());
}

/// The recipe copy a merged folder keeps names its models by
/// absolute paths, so it merges again from there (or anywhere) to the same tensors.
#[test]
fn the_recipe_copy_has_absolute_paths_and_merges_again_from_anywhere() {
    let w = World::new(Dtype::F32, false);
    let yaml = "merge_method: ties\nbase_model: ./base\ntokenizer_source: a\nmodels:\n  - model: a\n    parameters: {weight: 0.7, density: 0.5}\n  - model: {model: {path: b}}\n    parameters: {weight: 0.3, density: 0.5}\n";
    let recipe = Recipe::from_yaml(yaml).unwrap();
    // relative to the recipe's folder (the world root), not the working directory
    let sources = Sources::open(&recipe, Some(&w.root)).unwrap();
    let portable = sources.absolute_recipe(&recipe);
    let canon = |p: &str| std::fs::canonicalize(w.path(p)).unwrap();
    assert_eq!(
        portable.base_model.as_ref().unwrap().name(),
        canon("base").to_str().unwrap()
    );
    let models = portable.models.as_ref().unwrap();
    assert_eq!(models[0].model.name(), canon("a").to_str().unwrap());
    assert_eq!(models[1].model.name(), canon("b").to_str().unwrap());
    assert_eq!(portable.tokenizer_source.as_deref(), canon("a").to_str());
    assert_eq!(
        models[0].parameters,
        recipe.models.as_ref().unwrap()[0].parameters
    );

    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    let first = w.path("first");
    merge_to_disk(&plan, &sources, &first, &MergeOptions::default(), &[]).unwrap();

    // Read back from the text a merged folder keeps, resolved from an unrelated folder.
    for text in [portable.to_yaml(), portable.to_toml()] {
        let again = if text == portable.to_yaml() {
            Recipe::from_yaml(&text).unwrap()
        } else {
            Recipe::from_toml(&text).unwrap()
        };
        let elsewhere = tempfile::tempdir().unwrap();
        let sources = Sources::open(&again, Some(elsewhere.path())).unwrap();
        let plan = Plan::build(&again, &sources, &PlanOptions::default()).unwrap();
        let out = elsewhere.path().join("out");
        merge_to_disk(&plan, &sources, &out, &MergeOptions::default(), &[]).unwrap();
        assert_eq!(read_all(&out), read_all(&first));
        assert_eq!(
            plan.tokenizer_from,
            sources.index_of(canon("a").to_str().unwrap())
        );
    }
}

/// A search's in-memory merge straight into the evaluation precision holds each tensor in
/// that dtype, with the values of the f32 merge cast once.
#[test]
fn in_memory_merges_into_the_evaluation_dtype() {
    use evomerge_kernels::{Device, FloatDType};
    use evomerge_merge::{merge_in_memory, merge_in_memory_as};
    let w = World::new(Dtype::BF16, false);
    let recipe = Recipe::from_yaml(&w.text(TIES_YAML)).unwrap();
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    let device = Device::flex();
    let f32s = merge_in_memory(&plan, &sources, &device, 7).unwrap();
    for dtype in [FloatDType::BF16, FloatDType::F16] {
        let cast = merge_in_memory_as(&plan, &sources, &device, 7, Some(dtype)).unwrap();
        assert_eq!(cast.len(), f32s.len());
        for ((n, t), (m, want)) in cast.iter().zip(&f32s) {
            assert_eq!(n, m);
            assert_eq!(FloatDType::from(t.dtype()), dtype, "{n}");
            let got = evomerge_kernels::values_of(t.clone().cast(FloatDType::F32));
            let want = evomerge_kernels::values_of(want.clone().cast(dtype).cast(FloatDType::F32));
            assert_eq!(got, want, "{n} in {dtype:?}");
        }
    }
    let same = merge_in_memory_as(&plan, &sources, &device, 7, Some(FloatDType::F32)).unwrap();
    for ((_, a), (_, b)) in same.iter().zip(&f32s) {
        assert_eq!(
            evomerge_kernels::values_of(a.clone()),
            evomerge_kernels::values_of(b.clone())
        );
    }
}

/// A search merges each candidate into the buffers of the one dropped before: what it gets is
/// the fresh merge's values exactly (no value of the earlier candidate survives), in f32 and
/// in the half-precision evaluation dtypes, and the pool never holds more than one candidate.
#[test]
fn a_merge_into_lent_buffers_equals_a_fresh_one() {
    use evomerge_kernels::{BufferPool, Device, FloatDType, values_of};
    use evomerge_merge::{merge_in_memory_as, merge_in_memory_pooled};
    let w = World::new(Dtype::BF16, false);
    let first = Recipe::from_yaml(&w.text(TIES_YAML)).unwrap();
    let second = Recipe::from_yaml(&w.text(
        "merge_method: dare_ties\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n    parameters: {weight: 0.4, density: 0.3}\n  - model: {root}/b\n    parameters: {weight: 0.9, density: 0.6}\ndtype: float32\n",
    ))
    .unwrap();
    let device = Device::flex();
    for dtype in [None, Some(FloatDType::BF16), Some(FloatDType::F16)] {
        let pool = BufferPool::new();
        let merge = |recipe: &Recipe, pool: Option<&BufferPool>| {
            let sources = Sources::open(recipe, None).unwrap();
            let plan = Plan::build(recipe, &sources, &PlanOptions::default()).unwrap();
            let merged = match pool {
                Some(p) => merge_in_memory_pooled(&plan, &sources, &device, 7, dtype, p),
                None => merge_in_memory_as(&plan, &sources, &device, 7, dtype),
            };
            merged
                .unwrap()
                .into_iter()
                .map(|(n, t)| (n, values_of(t.cast(FloatDType::F32))))
                .collect::<Vec<_>>()
        };
        let a = merge(&first, Some(&pool));
        let candidate_bytes = pool.held_bytes();
        assert!(
            candidate_bytes > 0,
            "{dtype:?}: the dropped candidate's buffers are kept"
        );
        assert_eq!(pool.reused(), 0);
        let b = merge(&second, Some(&pool));
        assert!(
            pool.reused() as usize >= b.len() / 2,
            "{dtype:?}: buffers were reused"
        );
        assert_eq!(b, merge(&second, None), "{dtype:?}");
        assert_ne!(a, b);
        assert_eq!(
            pool.held_bytes(),
            candidate_bytes,
            "at most one candidate is kept"
        );
    }
}

/// A stop asked for during a merge (Ctrl-C in `evomerge merge`) ends it with `Interrupted`,
/// and neither the output folder nor a partial folder is left.
#[test]
fn a_stopped_merge_leaves_nothing() {
    let w = World::new(Dtype::F32, false);
    let recipe = Recipe::from_yaml(&w.text(TIES_YAML)).unwrap();
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    let opts = MergeOptions {
        stop: Some(|| Some(2)),
        ..Default::default()
    };
    let err = merge_to_disk(&plan, &sources, &w.path("stopped"), &opts, &[]).unwrap_err();
    assert!(matches!(err, MergeError::Interrupted(2)), "{err}");
    let left: Vec<_> = std::fs::read_dir(&w.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("stopped"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A merge whose values overflow (a huge weight) is an error naming the tensor, in memory (a
/// search's candidate) as on disk; the fused kernels check every chunk as they write it.
#[test]
fn non_finite_merged_values_are_an_error_naming_the_tensor() {
    use evomerge_kernels::{Device, FloatDType};
    use evomerge_merge::merge_in_memory_as;
    let w = World::new(Dtype::BF16, false);
    let recipe = Recipe::from_yaml(&w.text(
        "merge_method: linear\nparameters: {normalize: false}\nmodels:\n  - model: {root}/a\n    parameters: {weight: 3.0e38}\n  - model: {root}/b\n    parameters: {weight: 3.0e38}\ndtype: float32\n",
    ))
    .unwrap();
    let sources = Sources::open(&recipe, None).unwrap();
    let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
    for dtype in [None, Some(FloatDType::BF16)] {
        let err = merge_in_memory_as(&plan, &sources, &Device::flex(), 7, dtype).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, MergeError::Kernel { .. })
                && text.contains("model.")
                && text.contains("inf"),
            "{text}"
        );
    }
    let err = w.merge(&recipe, "overflow").unwrap_err();
    assert!(err.to_string().contains("inf"), "{err}");
    assert!(!w.path("overflow").exists());
}
