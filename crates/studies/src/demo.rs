//! The toy demo (`evomerge demo`): build toy checkpoints, write example recipes, merge them,
//! run a short search. The fastest way to see what evomerge does, with nothing to download.

use anyhow::{Context, Result};
use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_zoo::TinyLlama;
use std::path::Path;

/// The demo search's run folder under OUT/search: `toy_experiment`'s experiment is named "toy"
/// with seed 3 and writes under `results/`.
const DEMO_RUN: &str = "results/toy/seed3";

const RECIPES: &[(&str, &str)] = &[
    (
        "ties.yml",
        "# mergekit YAML: TIES with a density gradient and a filtered weight\nmerge_method: ties\nbase_model: ../models/base\nmodels:\n  - model: ../models/math\n    parameters:\n      weight: 1.0\n      density: [1.0, 0.5]\n  - model: ../models/ja\n    parameters:\n      weight:\n        - filter: mlp\n          value: 0.8\n        - value: 0.5\n      density: 0.5\nparameters:\n  normalize: true\ndtype: float32\n",
    ),
    (
        "dare_ties.toml",
        "# evomerge TOML: the Sakana paper's DARE-TIES with the paper's 1/p rescale\nmerge_method = \"dare_ties\"\nbase_model = \"../models/base\"\nout_dtype = \"bfloat16\"\n\n[parameters]\nrescale = \"inverse_density\"\n\n[[models]]\nmodel = \"../models/math\"\nparameters = { weight = 0.6, density = 0.5 }\n\n[[models]]\nmodel = \"../models/ja\"\nparameters = { weight = 0.6, density = 0.8 }\n\n[[models]]\nmodel = \"../models/code\"\nparameters = { weight = 0.3, density = 0.3 }\n",
    ),
    (
        "task_arithmetic.toml",
        "merge_method = \"task_arithmetic\"\nbase_model = \"../models/base\"\n\n[[models]]\nmodel = \"../models/math\"\nparameters = { weight = 1.0 }\n\n[[models]]\nmodel = \"../models/ja\"\nparameters = { weight = 1.0 }\n",
    ),
    (
        "slerp.yml",
        "merge_method: slerp\nbase_model: ../models/math\nslices:\n  - sources:\n      - model: ../models/math\n        layer_range: [0, 4]\n      - model: ../models/ja\n        layer_range: [0, 4]\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\n",
    ),
    (
        "model_stock.yml",
        "merge_method: model_stock\nbase_model: ../models/base\nmodels:\n  - model: ../models/math\n  - model: ../models/ja\n  - model: ../models/code\n",
    ),
    (
        "frankenmerge.yml",
        "# passthrough: layers 0-2 of math, then 1-3 of ja (6 layers, like SOLAR's depth up-scaling)\nmerge_method: passthrough\nslices:\n  - sources:\n      - model: ../models/math\n        layer_range: [0, 3]\n  - sources:\n      - model: ../models/ja\n        layer_range: [1, 4]\n",
    ),
];

fn distance(a: &Checkpoint, b: &Checkpoint) -> Result<f64> {
    let mut sum = 0.0f64;
    let mut norm = 0.0f64;
    for name in a.names() {
        if !b.contains(name) {
            continue;
        }
        let (x, y) = (a.read_f32(name)?, b.read_f32(name)?);
        sum += x
            .iter()
            .zip(&y)
            .map(|(p, q)| ((p - q) as f64).powi(2))
            .sum::<f64>();
        norm += y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>();
    }
    Ok((sum / norm.max(1e-30)).sqrt())
}

/// Build a tiny base model and three "fine-tunes" (Llama layout, random weights) in `out`,
/// write example recipes for several methods (TOML and mergekit YAML), merge each with `merge`
/// (`evomerge merge RECIPE OUT_DIR --force`: the CLI passes its merge command, so the folders
/// are what a user's merge writes), report how far each merge moved from the base, then run a
/// short CMA-ES search over DARE-TIES weights and densities. The demo's own files are
/// rewritten on every run; anything else in `out` is left alone.
pub fn run(out: &Path, merge: &dyn Fn(&Path, &Path) -> Result<()>) -> Result<()> {
    let models = out.join("models");
    let recipes = out.join("recipes");
    let merged = out.join("merged");
    std::fs::create_dir_all(&recipes).with_context(|| format!("creating {}", recipes.display()))?;
    let spec = TinyLlama {
        layers: 4,
        ..Default::default()
    };
    let base = spec.random(0);
    base.save(models.join("base"), Dtype::F32, u64::MAX)?;
    for (i, name) in ["math", "ja", "code"].iter().enumerate() {
        base.perturbed(i as u64 + 1, 0.01)
            .save(models.join(name), Dtype::F32, u64::MAX)?;
    }
    eprintln!(
        "wrote toy models (Llama layout, 4 layers, hidden 32) to {}",
        models.display()
    );
    println!(
        "{:<22} {:<16} {:>7} {:>7} {:>16}",
        "recipe", "method", "layers", "dtype", "rel. dist. base"
    );
    let base_ckpt = Checkpoint::open(models.join("base"))?;
    for (file, text) in RECIPES {
        let path = recipes.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        let stem = Path::new(file)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let dest = merged.join(&stem);
        merge(&path, &dest).with_context(|| format!("merging {}", path.display()))?;
        let c = Checkpoint::open(&dest)?;
        let method = evomerge_merge::Recipe::load(&path)?.merge_method;
        let dtype = c
            .info("model.norm.weight")
            .map(|i| i.dtype.to_string())
            .unwrap_or_default();
        println!(
            "{:<22} {:<16} {:>7} {:>7} {:>16.4}",
            file,
            method,
            c.num_layers().unwrap_or(0),
            dtype,
            distance(&c, &base_ckpt)?
        );
    }
    println!(
        "\nrecipes: {}\nmerged checkpoints: {}\nrerun one: evomerge merge {} /tmp/my-merge",
        recipes.display(),
        merged.display(),
        recipes.join("ties.yml").display()
    );

    // A search: CMA-ES over DARE-TIES weights and densities, scored by perplexity. Only what
    // the demo writes is replaced: its toy models, task and experiment file (rewritten by
    // `toy_experiment`) and its own run folder; other runs a user added there stay.
    let toy = out.join("search");
    let own_run = toy.join(DEMO_RUN);
    if own_run.exists() {
        std::fs::remove_dir_all(&own_run)
            .with_context(|| format!("clearing the demo's last run {}", own_run.display()))?;
    }
    std::fs::create_dir_all(&toy)?;
    let exp = evomerge_zoo::toy_experiment(&toy, 48, "")?;
    println!("\nsearching: evomerge run {}", exp.display());
    let dir = evomerge_runner::start(
        &exp,
        &evomerge_runner::RunOptions {
            run_id: None,
            progress: true,
        },
    )?;
    println!(
        "run folder: {} (candidates.csv, generations.csv, best.toml, results.md, plots/)",
        dir.display()
    );
    Ok(())
}
