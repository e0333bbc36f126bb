//! `[[evaluators]] kind = "classifier"`: a parameter-space search over MLP classifier
//! checkpoints (a shared base and two experts fine-tuned on digits 0-4 and 5-9), and the
//! clear errors when sources, evaluators and genome do not fit together.

use evomerge_data::Dataset;
use evomerge_eval::{EvalRequest, Split};
use evomerge_merge::Recipe;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::{TrainConfig, train};
use evomerge_runner::{
    Evaluators, Experiment, ExportFormat, RunOptions, RunState, export_run, mlp_recipe_candidate,
    start,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn rows(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect()
}

/// `models/{base,low,high}` under `dir`: a [64, 16, 10] MLP trained four epochs on all digits
/// (the shared ancestor), then fine-tuned two epochs on digits 0-4 and on 5-9.
fn train_models(dir: &Path) {
    let train_set = Dataset::digits().split(0).train;
    let cfg = |epochs, seed| TrainConfig {
        epochs,
        batch_size: 64,
        lr: 3e-3,
        seed,
    };
    let init = MlpWeights::init(&[64, 16, 10], 1).unwrap();
    let base = train(&init, &train_set, &cfg(4, 1)).unwrap();
    let low = train(&base, &train_set.with_classes(&[0, 1, 2, 3, 4]), &cfg(2, 2)).unwrap();
    let high = train(&base, &train_set.with_classes(&[5, 6, 7, 8, 9]), &cfg(2, 3)).unwrap();
    for (name, w) in [("base", &base), ("low", &low), ("high", &high)] {
        w.save(dir.join("models").join(name), false).unwrap();
    }
}

/// The digits test split as a CSV file (64 feature columns, then `label`).
fn write_test_csv(path: &Path) {
    let test = Dataset::digits().split(0).test;
    let mut text: String = (0..test.n_features).map(|i| format!("f{i},")).collect();
    text.push_str("label\n");
    for i in 0..test.len() {
        for v in test.row(i) {
            write!(text, "{v},").unwrap();
        }
        writeln!(text, "{}", test.labels[i]).unwrap();
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A PS experiment over the MLPs; `evaluator` is the `[[evaluators]]` table's body.
fn experiment(dir: &Path, genome: &str, evaluator: &str) -> PathBuf {
    let text = format!(
        r#"name = "digits"
seed = 1
output = "{}"

[sources]
base = "models/base"
models = ["models/low", "models/high"]

[genome]
kind = "{genome}"

[optimizer]
optimizer = "cma"
population_size = 6

[budget]
generations = 3

[[evaluators]]
{evaluator}

[validation]
every = 2
"#,
        dir.join("results").display()
    );
    let path = dir.join(format!("{genome}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

const CLASSIFIER: &str = r#"kind = "classifier"
name = "digits"
subsample = 300
[evaluators.search]
dataset = "digits"
split = "train"
[evaluators.validation]
dataset = "digits"
split = "val"
[evaluators.test]
dataset = "data/test.csv"    # relative to the experiment file
split = "all""#;

#[test]
fn a_ps_search_over_mlp_checkpoints_scores_merges_sources_and_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    train_models(tmp.path());
    write_test_csv(&tmp.path().join("data/test.csv"));
    let exp_path = experiment(tmp.path(), "ps", CLASSIFIER);
    let dir = start(&exp_path, &RunOptions::default()).unwrap();

    // Every candidate is logged, scored on 300 training rows, with accuracy and loss.
    let state = RunState::load(&dir.join("state.json")).unwrap();
    let st = &state.stages[0];
    assert!(st.done);
    assert_eq!(st.generations, 3);
    let cands = rows(&dir.join("candidates.csv"));
    assert_eq!(cands.len(), 18, "3 generations of 6");
    for r in &cands {
        assert_eq!(&r[3], "ok", "{r:?}");
        let f: f64 = r[4].parse().unwrap();
        assert!((0.0..=1.0).contains(&f), "{r:?}");
        let metrics: serde_json::Value = serde_json::from_str(&r[5]).unwrap();
        assert_eq!(metrics["acc"].as_f64(), Some(f), "{r:?}");
        assert!(metrics["loss"].as_f64().unwrap().is_finite(), "{r:?}");
        // accuracies on 300 rows are multiples of 1/300
        assert!(((f * 300.0) - (f * 300.0).round()).abs() < 1e-9, "{r:?}");
    }
    let best = st.best.as_ref().unwrap();
    assert!(
        best.search_fitness.is_finite() && best.search_fitness > 0.5,
        "best {best:?} is not above chance (0.1) by a margin"
    );
    assert!(st.chosen().unwrap().validation_fitness.is_some());

    // The best recipe merged again from disk scores exactly what the log says.
    let recipe =
        Recipe::from_toml(&std::fs::read_to_string(dir.join("best.toml")).unwrap()).unwrap();
    assert_eq!(recipe, Recipe::from_toml(&best.decoded).unwrap());
    let (exp, _) = Experiment::load(&exp_path).unwrap();
    let evaluators = Evaluators::build(&exp.evaluators).unwrap();
    let device = evomerge_kernels::Device::flex();
    let again = mlp_recipe_candidate(&recipe, "again", &device, exp.merge_seed()).unwrap();
    let request = EvalRequest::new(Split::Search, best.generation, exp.seed);
    let score = evaluators.evaluate(&again, &request).unwrap();
    assert_eq!(score.fitness, best.search_fitness);

    // `evomerge export` writes the best as an MLP checkpoint with the same weights.
    let out = tmp.path().join("exported");
    export_run(&dir, &out, ExportFormat::Path, false, &device).unwrap();
    assert_eq!(&MlpWeights::load(&out).unwrap(), again.weights());

    // The test table: the best, the base, both experts and the three untuned baselines, all
    // scored on the CSV test split.
    let results = rows(&dir.join("results.csv"));
    let kinds: Vec<(&str, &str)> = results.iter().map(|r| (&r[0], &r[1])).collect();
    assert_eq!(
        kinds[..4],
        [
            ("PS best", "best"),
            ("base", "base"),
            ("low", "source"),
            ("high", "source")
        ],
        "{results:?}"
    );
    assert_eq!(results.len(), 4 + 3, "{results:?}");
    let test_acc = |name: &str| -> f64 {
        let r = results.iter().find(|r| &r[0] == name).unwrap();
        assert_eq!(&r[2], "test");
        let metrics: serde_json::Value = serde_json::from_str(&r[4]).unwrap();
        let f: f64 = r[3].parse().unwrap();
        assert_eq!(metrics["acc"].as_f64(), Some(f));
        f
    };
    let best_test = test_acc("PS best");
    assert!(best_test > 0.5, "best test accuracy {best_test}");
    // An expert knows half the classes; the merge of both beats each on all ten.
    for expert in ["low", "high"] {
        let acc = test_acc(expert);
        assert!(
            acc > 0.0 && acc < best_test,
            "{expert} {acc} vs best {best_test}"
        );
    }
    for r in results.iter().filter(|r| &r[1] == "baseline") {
        let f: f64 = r[3].parse().unwrap();
        assert!(f > 0.1, "{r:?}");
    }
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(
        md.contains("| low | source |") && md.contains("| acc |"),
        "{md}"
    );
}

#[test]
fn classifier_and_language_model_setups_that_do_not_fit_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Untrained MLPs are enough: every error comes before any merge.
    for (i, name) in ["base", "low", "high"].iter().enumerate() {
        MlpWeights::init(&[64, 8, 10], i as u64)
            .unwrap()
            .save(tmp.path().join("models").join(name), false)
            .unwrap();
    }
    let fails = |path: PathBuf, needles: &[&str]| {
        let err = start(&path, &RunOptions::default())
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(err.contains(n), "'{err}' should mention '{n}'");
        }
        assert!(
            !tmp.path().join("results").exists(),
            "{}: a run folder was created",
            path.display()
        );
    };
    // An LM task over MLP sources.
    std::fs::write(tmp.path().join("task.toml"), "").unwrap();
    fails(
        experiment(tmp.path(), "ps", "kind = \"lm\"\ntask = \"task.toml\""),
        &[
            "kind = \"lm\"",
            "EvomergeMlp classifiers",
            "models/low",
            "kind = \"classifier\"",
        ],
    );
    // Layer paths over MLP sources.
    for genome in ["dfs", "ps+dfs"] {
        let p = experiment(
            tmp.path(),
            genome,
            &CLASSIFIER.replace("data/test.csv", "digits"),
        );
        fails(p, &[genome, "layer paths", "kind = \"ps\""]);
    }
    // A misspelt classifier key, and a missing data file (named, relative to the experiment).
    fails(
        experiment(
            tmp.path(),
            "ps",
            &CLASSIFIER.replace("subsample", "subsmaple"),
        ),
        &["subsmaple", "subsample"],
    );
    fails(
        experiment(tmp.path(), "ps", CLASSIFIER),
        &["data/test.csv", "not found"],
    );

    // A classifier over Llama sources (the toy experiment's models), and mixed sources.
    let llama = tmp.path().join("llama");
    let toy = evomerge_zoo::toy_experiment(&llama, 8, "").unwrap();
    let text = std::fs::read_to_string(&toy).unwrap();
    let digits_only = CLASSIFIER.replace("data/test.csv", "digits");
    let with_classifier = text.replace("kind = \"lm\"\ntask = \"task.toml\"", &digits_only);
    assert_ne!(with_classifier, text);
    let p = llama.join("classifier.toml");
    std::fs::write(&p, &with_classifier).unwrap();
    let err = start(&p, &RunOptions::default()).unwrap_err().to_string();
    for n in [
        "kind = \"classifier\"",
        "LlamaForCausalLM models",
        "models/a",
        "kind = \"lm\"",
    ] {
        assert!(err.contains(n), "'{err}' should mention '{n}'");
    }
    let mixed = text.replace(
        "models/b\"",
        &format!("{}\"", tmp.path().join("models/high").display()),
    );
    std::fs::write(&p, mixed).unwrap();
    let err = start(&p, &RunOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("mix") && err.contains("models/high") && err.contains("one architecture"),
        "{err}"
    );
    assert!(!llama.join("results/toy").exists());
}
