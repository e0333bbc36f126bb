//! End to end: a toy experiment runs, logs every candidate, and its best recipe re-merged
//! reproduces the logged fitness.

use evomerge_eval::{EvalRequest, Split};
use evomerge_merge::Recipe;
use evomerge_runner::{
    Evaluators, Experiment, RunOptions, RunState, recipe_candidate, resume, start,
};
use evomerge_zoo::toy_experiment;
use std::path::Path;

fn rows(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn a_run_completes_logs_every_candidate_and_reproduces_its_best() {
    let tmp = tempfile::tempdir().unwrap();
    let exp_path = toy_experiment(tmp.path(), 24, "").unwrap();
    let dir = start(&exp_path, &RunOptions::default()).unwrap();
    let state = RunState::load(&dir.join("state.json")).unwrap();
    let st = &state.stages[0];
    assert!(st.done);
    let cands = rows(&dir.join("candidates.csv"));
    assert_eq!(cands.len() as u64, st.evaluations, "one row per candidate");
    assert!(st.evaluations >= 24);
    let gens = rows(&dir.join("generations.csv"));
    assert_eq!(gens.len() as u64, st.generations);
    // The last two columns time the merge/eval pipeline and the runner's own overhead.
    for g in &gens {
        let pipeline: f64 = g[g.len() - 2].parse().unwrap();
        let overhead: f64 = g[g.len() - 1].parse().unwrap();
        assert!(pipeline > 0.0 && overhead >= 0.0, "{g:?}");
    }
    for f in [
        "run.toml",
        "best.toml",
        "best.json",
        "results.csv",
        "results.md",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    // results: best, base, two sources, three baselines
    let results = rows(&dir.join("results.csv"));
    assert_eq!(results.len(), 1 + 3 + 3, "{results:?}");
    // the best recipe merged again scores exactly what the log says
    let best = st.best.as_ref().unwrap();
    let recipe = Recipe::from_toml(&best.decoded).unwrap();
    let best_toml = std::fs::read_to_string(dir.join("best.toml")).unwrap();
    assert_eq!(Recipe::from_toml(&best_toml).unwrap(), recipe);
    let (exp, _) = Experiment::load(&exp_path).unwrap();
    let evaluators = Evaluators::build(&exp.evaluators).unwrap();
    let device = evomerge_kernels::Device::flex();
    let cand = recipe_candidate(&recipe, "again", &device, exp.merge_seed()).unwrap();
    let score = evaluators
        .evaluate(
            &cand,
            &EvalRequest::new(Split::Search, best.generation, exp.seed),
        )
        .unwrap();
    assert_eq!(score.fitness, best.search_fitness);
    let logged: f64 = cands
        .iter()
        .find(|r| r[1] == best.generation.to_string() && r[2] == best.index.to_string())
        .map(|r| r[4].parse().unwrap())
        .unwrap();
    assert_eq!(logged, best.search_fitness);
    // resuming a finished run changes nothing
    resume(&dir, &RunOptions::default()).unwrap();
    assert_eq!(rows(&dir.join("candidates.csv")).len(), cands.len());
    assert_eq!(exp.evaluators[0].kind(), "lm");
    assert!(
        exp.evaluators[0]
            .config_as::<evomerge_eval_lm::LmConfig>()
            .is_some()
    );
}

/// A ps+dfs run's result is the better-validated of its stages' answers: results.csv's last
/// `best` row, best.json's `result` mark and `export` agree on it. With every indicator
/// starting far below zero (`off_start = -1`) and no scales, every DFS candidate is the path
/// through the PS result's own layers, so the DFS stage cannot validate above it.
#[test]
fn a_ps_dfs_run_keeps_the_ps_result_when_the_dfs_stage_finds_nothing_better() {
    let tmp = tempfile::tempdir().unwrap();
    let exp_path = toy_experiment(
        tmp.path(),
        10,
        "\n[budget_dfs]\nevaluations = 8\n\n[genome.dfs]\nrepeats = 1\nscales = false\noff_start = -1.0\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&exp_path).unwrap();
    std::fs::write(
        &exp_path,
        text.replace("kind = \"ps\"", "kind = \"ps+dfs\""),
    )
    .unwrap();
    let dir = start(&exp_path, &RunOptions::default()).unwrap();
    let state = RunState::load(&dir.join("state.json")).unwrap();
    let (r, result) = state.result().unwrap();
    let ps = state.stages[0].chosen().unwrap();
    let dfs = state.stages[1].chosen().unwrap();
    assert!(dfs.validation_fitness.unwrap() <= ps.validation_fitness.unwrap());
    assert_eq!((r, result), (0, ps));
    let marks: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("best.json")).unwrap()).unwrap();
    let marked: Vec<bool> = marks
        .iter()
        .map(|m| m["result"].as_bool().unwrap())
        .collect();
    assert_eq!(marked, vec![true, false]);
    let results = rows(&dir.join("results.csv"));
    let row = |name: &str| {
        results
            .iter()
            .find(|r| &r[0] == name)
            .unwrap_or_else(|| panic!("no {name} row in {results:?}"))
            .clone()
    };
    let (ps_row, stage_row, run_row) = (
        row("PS best"),
        row("DFS stage best (not the result)"),
        row("PS+DFS best"),
    );
    assert_eq!(
        (&ps_row[1], &stage_row[1], &run_row[1]),
        ("best", "stage", "best")
    );
    // the run's row is the last `best` row and repeats the PS result's test scores
    let last_best = results.iter().rfind(|r| &r[1] == "best").unwrap();
    assert_eq!(last_best, &run_row);
    assert_eq!((&run_row[3], &run_row[4]), (&ps_row[3], &ps_row[4]));
    assert!(run_row[5].contains("PS best") && run_row[5].contains("dfs stage validated"));
    // export writes the PS result: a merged checkpoint with the recipe, not a layer path
    let out = tmp.path().join("exported");
    evomerge_runner::export_run(
        &dir,
        &out,
        evomerge_runner::ExportFormat::Path,
        false,
        &evomerge_kernels::Device::flex(),
    )
    .unwrap();
    let recipe = std::fs::read_to_string(out.join("evomerge_recipe.toml")).unwrap();
    assert_eq!(
        Recipe::from_toml(&recipe).unwrap(),
        Recipe::from_toml(&ps.decoded).unwrap()
    );
}

#[test]
fn bad_experiments_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let exp_path = toy_experiment(tmp.path(), 8, "").unwrap();
    let text = std::fs::read_to_string(&exp_path).unwrap();
    let check = |name: &str, new_text: String, needle: &str| {
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&p, new_text).unwrap();
        let err = start(&p, &RunOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains(needle),
            "{name}: '{err}' should mention '{needle}'"
        );
        assert!(
            !tmp.path().join("results/toy").exists(),
            "{name}: a run folder was created"
        );
    };
    check(
        "missing-model",
        text.replace("models/b\"", "models/nope\""),
        "models/nope",
    );
    check(
        "missing-task",
        text.replace("task.toml", "tasks/none.toml"),
        "none.toml",
    );
    check(
        "unknown-key",
        text.replace("[budget]", "[budget]\nevals = 3"),
        "evals",
    );
    // incompatible shapes
    let wide = evomerge_zoo::TinyLlama {
        layers: 4,
        intermediate: 40,
        ..Default::default()
    };
    wide.random(1)
        .save(
            tmp.path().join("models/wide"),
            evomerge_checkpoint::Dtype::F32,
            u64::MAX,
        )
        .unwrap();
    check("shapes", text.replace("models/b\"", "models/wide\""), "mlp");
    check(
        "eval-dtype",
        text.replace("seed = 3", "seed = 3\neval_dtype = \"int8\""),
        "int8",
    );
    // an output folder of a different experiment
    let dir = start(&exp_path, &RunOptions::default()).unwrap();
    let other = text.replace("seed = 3", "seed = 3\nmerge_seed = 9");
    let p = tmp.path().join("other.toml");
    std::fs::write(&p, other).unwrap();
    let err = start(&p, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("different experiment"), "{err}");
    let err = start(&exp_path, &RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("evomerge resume"), "{err}");
    // Only `parallelism` changed: the same experiment (it changes no result).
    let faster = text.replace("seed = 3", "seed = 3\nparallelism = 2");
    let p = tmp.path().join("faster.toml");
    std::fs::write(&p, faster).unwrap();
    let err = start(&p, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("evomerge resume"), "{err}");
    assert!(dir.join("state.json").exists());
}

/// `eval_dtype = "bfloat16"` evaluates every candidate (and the test table) in bf16 on the
/// CPU: the scores move by rounding only; `auto` on the CPU is f32, the default's numbers.
#[test]
fn candidates_are_evaluated_in_the_precision_asked_for() {
    let run = |extra: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let exp_path = toy_experiment(tmp.path(), 8, "").unwrap();
        let text = std::fs::read_to_string(&exp_path).unwrap();
        std::fs::write(
            &exp_path,
            text.replace("seed = 3", &format!("seed = 3\n{extra}")),
        )
        .unwrap();
        let dir = start(&exp_path, &RunOptions::default()).unwrap();
        // The first generation (the same candidates whatever the scores) and the test table
        // without its first row (the best, which the scores choose).
        let all = rows(&dir.join("candidates.csv"));
        let cands: Vec<f64> = all
            .iter()
            .filter(|r| r[1] == all[0][1])
            .map(|r| r[4].parse().unwrap())
            .collect();
        let results: Vec<f64> = rows(&dir.join("results.csv"))
            .iter()
            .skip(1)
            .map(|r| r[3].parse().unwrap())
            .collect();
        (cands, results, tmp)
    };
    let (f32_cands, f32_results, _a) = run("");
    let (auto_cands, auto_results, _b) = run("eval_dtype = \"auto\"");
    assert_eq!(f32_cands, auto_cands, "auto is f32 on the CPU");
    assert_eq!(f32_results, auto_results);
    let (bf16_cands, bf16_results, _c) = run("eval_dtype = \"bf16\"");
    assert_eq!(f32_cands.len(), bf16_cands.len());
    for (all_f32, all_bf16) in [(&f32_cands, &bf16_cands), (&f32_results, &bf16_results)] {
        assert!(all_f32 != all_bf16, "bf16 was really used");
        for (a, b) in all_f32.iter().zip(all_bf16.iter()) {
            assert!(
                (a - b).abs() <= 0.05 * a.abs().max(1e-3),
                "{all_f32:?} vs {all_bf16:?}"
            );
        }
    }
}

#[test]
fn parallel_scoring_gives_the_same_results() {
    let run = |parallelism: usize| {
        let tmp = tempfile::tempdir().unwrap();
        let exp_path = toy_experiment(tmp.path(), 16, "").unwrap();
        let text = std::fs::read_to_string(&exp_path).unwrap();
        std::fs::write(
            &exp_path,
            text.replace(
                "seed = 3",
                &format!("seed = 3\nparallelism = {parallelism}"),
            ),
        )
        .unwrap();
        let dir = start(&exp_path, &RunOptions::default()).unwrap();
        // (generation, index) -> (status, fitness), whatever order the rows were written in.
        let mut by_key: Vec<(u64, u64, String, String)> = rows(&dir.join("candidates.csv"))
            .iter()
            .map(|r| {
                (
                    r[1].parse().unwrap(),
                    r[2].parse().unwrap(),
                    r[3].to_string(),
                    r[4].to_string(),
                )
            })
            .collect();
        by_key.sort();
        let best = std::fs::read_to_string(dir.join("best.toml"))
            .unwrap()
            .replace(tmp.path().to_str().unwrap(), "ROOT");
        (by_key, best, tmp)
    };
    let (one, best_one, _a) = run(1);
    let (three, best_three, _b) = run(3);
    assert!(one.len() >= 16);
    assert_eq!(one, three);
    assert_eq!(best_one, best_three);
}

/// An evaluator kind added as one file (`src/test_evaluator.rs`, behind the `test-evaluator`
/// feature) and its line in the kind list: an experiment naming it parses (its own keys, its
/// path resolved against the experiment file, unknown keys refused), fits language-model
/// sources, runs, and its scores are what the kind computes.
#[test]
fn an_evaluator_kind_added_as_one_file_parses_and_runs() {
    use evomerge_runner::test_evaluator::TestLoglikConfig;
    let tmp = tempfile::tempdir().unwrap();
    let exp_path = toy_experiment(tmp.path(), 8, "").unwrap();
    std::fs::write(tmp.path().join("probe.txt"), "tok3 tok4 tok5\ntok6 tok7\n").unwrap();
    let text = std::fs::read_to_string(&exp_path)
        .unwrap()
        .replace(
            "kind = \"lm\"\ntask = \"task.toml\"",
            "kind = \"test_loglik\"\nfile = \"probe.txt\"",
        )
        .replace("[validation]\nevery = 2", "[report]\ntest = false");
    std::fs::write(&exp_path, &text).unwrap();
    let (exp, resolved) = Experiment::load(&exp_path).unwrap();
    assert_eq!(exp.evaluators[0].kind(), "test_loglik");
    let config = exp.evaluators[0]
        .config_as::<TestLoglikConfig>()
        .expect("the kind's own config type");
    assert_eq!(config.file, tmp.path().join("probe.txt"));
    assert!(
        resolved["evaluators"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("/probe.txt")
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, text.replace("file = ", "files = ")).unwrap();
    let err = Experiment::load(&bad).unwrap_err().to_string();
    assert!(err.contains("`files`") && err.contains("file"), "{err}");

    let dir = start(&exp_path, &RunOptions::default()).unwrap();
    let state = RunState::load(&dir.join("state.json")).unwrap();
    assert!(state.stages[0].done && state.stages[0].evaluations >= 8);
    let best = state.stages[0].best.clone().expect("a best candidate");
    // The logged fitness is the kind's score of the best recipe, merged again.
    let recipe = Recipe::from_toml(&best.decoded).unwrap();
    let evaluators = Evaluators::build(&exp.evaluators).unwrap();
    let device = evomerge_kernels::Device::flex();
    let cand = recipe_candidate(&recipe, "again", &device, exp.merge_seed()).unwrap();
    let score = evaluators
        .evaluate(&cand, &EvalRequest::new(Split::Search, 0, exp.seed))
        .unwrap();
    assert_eq!(score.fitness, best.search_fitness);
    assert!(
        score.fitness < 0.0,
        "a mean log-likelihood: {}",
        score.fitness
    );
    let cands = rows(&dir.join("candidates.csv"));
    assert!(
        cands.iter().all(|r| r[5].contains("loglik")),
        "metrics name the kind's metric"
    );
}

/// A command evaluator sees each candidate in the sources' storage dtype (bf16 here, not the
/// f32 of the in-memory merge), its folder is removed after scoring, and a persistent scorer
/// serves the whole run from one process that is gone when the run returns.
#[test]
fn command_evaluators_get_candidates_in_the_sources_dtype_and_the_folders_go() {
    use evomerge_checkpoint::Dtype;
    let tmp = tempfile::tempdir().unwrap();
    let exp_path = toy_experiment(tmp.path(), 6, "").unwrap();
    let spec = evomerge_zoo::TinyLlama {
        layers: 4,
        ..Default::default()
    };
    let base = spec.random(11);
    let models = tmp.path().join("models");
    for name in ["base", "a", "b"] {
        std::fs::remove_dir_all(models.join(name)).unwrap();
    }
    base.save(models.join("base"), Dtype::BF16, u64::MAX)
        .unwrap();
    base.perturbed(1, 0.05)
        .save(models.join("a"), Dtype::BF16, u64::MAX)
        .unwrap();
    base.perturbed(2, 0.05)
        .save(models.join("b"), Dtype::BF16, u64::MAX)
        .unwrap();
    let log = tmp.path().join("seen.log");
    let pids = tmp.path().join("pids");
    let bye = tmp.path().join("bye");
    let scorer = tmp.path().join("scorer.sh");
    std::fs::write(
        &scorer,
        r#"echo $$ >> "$PIDS"
while IFS= read -r line; do
  dir=$(printf '%s' "$line" | sed 's/.*"model_dir":"\([^"]*\)".*/\1/')
  st=$(for f in "$dir"/*.safetensors; do dd if="$f" bs=1 skip=8 count=20000 2>/dev/null; done | grep -a -o '"dtype":"[A-Z0-9]*"' | sort -u | tr '\n' ' ')
  cf=$(grep -o '"torch_dtype": *"[a-z0-9]*"' "$dir/config.json")
  echo "$dir|$st|$cf" >> "$LOG"
  echo '{"fitness": 0.5}'
done
echo bye > "$BYE"
"#,
    )
    .unwrap();
    let text = std::fs::read_to_string(&exp_path).unwrap().replace(
        "[[evaluators]]\nkind = \"lm\"\ntask = \"task.toml\"\n",
        &format!(
            "[[evaluators]]\nkind = \"command\"\npersistent = true\ncommand = '''exec sh {}'''\nenv = {{ LOG = '{}', PIDS = '{}', BYE = '{}' }}\n",
            scorer.display(),
            log.display(),
            pids.display(),
            bye.display()
        ),
    );
    assert!(text.contains("persistent"), "{text}");
    std::fs::write(&exp_path, text).unwrap();
    let dir = start(&exp_path, &RunOptions::default()).unwrap();
    let seen = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert!(lines.len() >= 6, "{seen}");
    for l in &lines {
        let parts: Vec<&str> = l.split('|').collect();
        assert_eq!(parts.len(), 3, "{l}");
        assert_eq!(parts[1].trim(), "\"dtype\":\"BF16\"", "{l}");
        assert!(parts[2].contains("bfloat16"), "{l}");
        assert!(
            !Path::new(parts[0]).exists(),
            "{} was not removed",
            parts[0]
        );
    }
    let started = std::fs::read_to_string(&pids).unwrap();
    assert_eq!(
        started.lines().count(),
        1,
        "one scorer for the run: {started}"
    );
    let pid: i32 = started.trim().parse().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
                .unwrap_or(true),
        "the scorer outlived the run"
    );
    assert!(bye.exists(), "the scorer did not exit cleanly");
    assert_eq!(
        rows(&dir.join("candidates.csv")).len(),
        RunState::load(&dir.join("state.json")).unwrap().stages[0].evaluations as usize
    );
}
