//! The digits models (`evomerge digits-models DIR`): train the MLP classifiers a classifier search merges — a base
//! trained on every digit and two experts fine-tuned from it on digits 0-4 and 5-9 — and save
//! them as `EvomergeMlp` checkpoints (what `experiments/data-merges/classifier-ps.toml` searches).

use anyhow::{Context, Result, bail};
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::{TrainConfig, evaluate, train};
use std::path::PathBuf;
use std::time::Instant;

/// Train digits MLP classifiers for merging: DIR/base (all digits), DIR/low (base fine-tuned
/// on digits 0-4), DIR/high (on digits 5-9); prints each model's test accuracy.
#[derive(Debug, Clone)]
pub struct DigitsModels {
    /// Output folder (base/, low/, high/ inside).
    pub dir: PathBuf,
    /// Hidden layer sizes.
    pub hidden: Vec<usize>,
    /// Epochs of the base on all digits.
    pub base_epochs: usize,
    /// Epochs of each expert's fine-tune.
    pub ft_epochs: usize,
    /// Seed of the initialisation and the batch order.
    pub seed: u64,
    /// Seed of the train/validation/test split (the classifier evaluator's data `seed`).
    pub split_seed: u64,
    /// Replace models already in `dir`.
    pub force: bool,
}

pub fn run(args: &DigitsModels) -> Result<()> {
    let start = Instant::now();
    let names = ["base", "low", "high"];
    if !args.force
        && let Some(n) = names.iter().find(|n| args.dir.join(n).exists())
    {
        bail!(
            "{} already exists; pass --force to replace the models in {}",
            args.dir.join(n).display(),
            args.dir.display()
        );
    }
    let splits = Dataset::digits().split(args.split_seed);
    let mut sizes = vec![splits.train.n_features];
    sizes.extend(&args.hidden);
    sizes.push(splits.train.n_classes);
    let cfg = |epochs, seed| TrainConfig {
        epochs,
        batch_size: 64,
        lr: 1e-3,
        seed,
    };
    let init = MlpWeights::init(&sizes, args.seed)?;
    let base = train(&init, &splits.train, &cfg(args.base_epochs, args.seed))?;
    let low_set = splits.train.with_classes(&[0, 1, 2, 3, 4]);
    let high_set = splits.train.with_classes(&[5, 6, 7, 8, 9]);
    let low = train(&base, &low_set, &cfg(args.ft_epochs, args.seed + 100))?;
    let high = train(&base, &high_set, &cfg(args.ft_epochs, args.seed + 200))?;
    println!(
        "layer sizes {sizes:?}, seed {}, split seed {} ({} train / {} test rows)\n",
        args.seed,
        args.split_seed,
        splits.train.len(),
        splits.test.len()
    );
    println!("| model | trained on | test accuracy | test loss |\n|---|---|---|---|");
    for (name, w, what) in [
        (
            names[0],
            &base,
            format!("all digits, {} epochs", args.base_epochs),
        ),
        (
            names[1],
            &low,
            format!("base + digits 0-4, {} epochs", args.ft_epochs),
        ),
        (
            names[2],
            &high,
            format!("base + digits 5-9, {} epochs", args.ft_epochs),
        ),
    ] {
        let dir = args.dir.join(name);
        w.save(&dir, args.force)
            .with_context(|| format!("writing {}", dir.display()))?;
        let e = evaluate(w, &splits.test)?;
        println!(
            "| {} | {what} | {:.4} | {:.4} |",
            dir.display(),
            e.accuracy,
            e.loss
        );
    }
    eprintln!(
        "\nwrote {} in {:.1}s",
        args.dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, force: bool) -> DigitsModels {
        DigitsModels {
            dir: dir.to_path_buf(),
            hidden: vec![16],
            base_epochs: 2,
            ft_epochs: 2,
            seed: 1,
            split_seed: 0,
            force,
        }
    }

    #[test]
    fn trains_a_base_and_two_experts_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        run(&args(tmp.path(), false)).unwrap();
        let load = |n: &str| MlpWeights::load(tmp.path().join(n)).unwrap();
        let (base, low, high) = (load("base"), load("low"), load("high"));
        assert_eq!(base.layer_sizes, vec![64, 16, 10]);
        assert_ne!(base, low);
        assert_ne!(low, high);
        // Each expert is better than the other on its own half of the test split.
        let test = Dataset::digits().split(0).test;
        let acc = |w: &MlpWeights, c: &[u32]| evaluate(w, &test.with_classes(c)).unwrap().accuracy;
        let (lo, hi) = ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]);
        assert!(acc(&low, &lo) > acc(&high, &lo));
        assert!(acc(&high, &hi) > acc(&low, &hi));
        let e = run(&args(tmp.path(), false)).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        run(&args(tmp.path(), true)).unwrap();
        assert_eq!(load("low"), low, "seeded: the same models again");
    }
}
