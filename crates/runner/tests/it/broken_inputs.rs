//! Broken inputs a run meets: damaged log rows on resume, settings caught only late, weights
//! that overflow, evaluators that always fail, a second process on the same run folder, a
//! budget that does not divide into generations.

use evomerge_runner::{RunError, RunLock, RunOptions, RunState, resume, start};
use evomerge_zoo::toy_experiment;
use std::path::{Path, PathBuf};

fn rows(path: &Path) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().clone();
    (h, r.records().map(|r| r.unwrap()).collect())
}

fn col(h: &csv::StringRecord, name: &str) -> usize {
    h.iter().position(|c| c == name).unwrap()
}

/// The toy experiment with its `lm` evaluator replaced by `evaluator` (TOML lines).
fn with_evaluator(tmp: &Path, budget: u64, evaluator: &str) -> PathBuf {
    let exp = toy_experiment(tmp, budget, "").unwrap();
    let text = std::fs::read_to_string(&exp).unwrap();
    let new = text.replace("kind = \"lm\"\ntask = \"task.toml\"", evaluator);
    assert_ne!(new, text);
    std::fs::write(&exp, new).unwrap();
    exp
}

#[test]
fn non_finite_logged_fitnesses_are_damaged_rows_not_results() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = toy_experiment(tmp.path(), 8, "").unwrap();
    let dir = start(&exp, &RunOptions::default()).unwrap();
    let state_path = dir.join("state.json");
    let mut state = RunState::load(&state_path).unwrap();
    assert_eq!(state.stages[0].generations, 1, "the toy population is 8");
    // As if the process died in generation 1 after logging three rows that were damaged on
    // disk: the stage is not done and its budget allows a second generation.
    state.stages[0].done = false;
    state.save(&state_path, 1).unwrap();
    let run_toml = dir.join("run.toml");
    let mut v: toml::Value = toml::from_str(&std::fs::read_to_string(&run_toml).unwrap()).unwrap();
    v["budget"]["evaluations"] = toml::Value::Integer(16);
    std::fs::write(&run_toml, toml::to_string(&v).unwrap()).unwrap();
    let cands = dir.join("candidates.csv");
    let (h, logged) = rows(&cands);
    let (g, i, f) = (col(&h, "generation"), col(&h, "index"), col(&h, "fitness"));
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&cands)
            .unwrap(),
    );
    for (index, fitness) in ["NaN", "inf", "-inf"].iter().enumerate() {
        let mut row: Vec<String> = logged[0].iter().map(String::from).collect();
        row[g] = "1".into();
        row[i] = index.to_string();
        row[f] = fitness.to_string();
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
    drop(w);

    resume(&dir, &RunOptions::default()).unwrap();
    // The damaged rows were evaluated again; nothing non-finite became the best, and the
    // state reads back.
    let state = RunState::load(&state_path).unwrap();
    let st = &state.stages[0];
    assert!(st.done);
    assert_eq!(st.evaluations, 16);
    assert!(st.best.as_ref().unwrap().search_fitness.is_finite());
    let (_, after) = rows(&cands);
    for index in 0..3 {
        let again: Vec<_> = after
            .iter()
            .filter(|r| r[g] == *"1" && r[i] == *index.to_string())
            .collect();
        assert_eq!(
            again.len(),
            2,
            "candidate {index}: damaged row plus a new one"
        );
        assert!(again[1][f].parse::<f64>().unwrap().is_finite());
    }
    // A second resume is fine too.
    resume(&dir, &RunOptions::default()).unwrap();
}

#[test]
fn optimizer_settings_are_checked_before_the_run_folder_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = toy_experiment(tmp.path(), 8, "").unwrap();
    let text = std::fs::read_to_string(&exp).unwrap();
    for size in [0, 1] {
        std::fs::write(
            &exp,
            text.replace(
                "optimizer = \"cma\"",
                &format!("optimizer = \"cma\"\npopulation_size = {size}"),
            ),
        )
        .unwrap();
        let e = start(&exp, &RunOptions::default()).unwrap_err().to_string();
        assert!(e.contains("population_size"), "{e}");
        assert!(
            !tmp.path().join("results/toy/seed3").exists(),
            "population_size = {size} left a run folder"
        );
    }
    // Fixed, the same command runs.
    std::fs::write(&exp, &text).unwrap();
    start(&exp, &RunOptions::default()).unwrap();
}

#[test]
fn a_weighted_sum_that_overflows_fails_every_row_with_the_weights_named() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = with_evaluator(
        tmp.path(),
        8,
        "kind = \"command\"\nweight = 2.0\ncommand = '''echo '{\"fitness\": 1e308}' '''",
    );
    let e = start(&exp, &RunOptions::default()).unwrap_err();
    assert!(matches!(e, RunError::NoSuccess(_)), "{e}");
    let (h, logged) = rows(&tmp.path().join("results/toy/seed3/candidates.csv"));
    assert_eq!(logged.len(), 8);
    for r in &logged {
        let err = &r[col(&h, "error")];
        assert!(
            err.contains("not finite") && err.contains("weight 2.0 x fitness 1e308"),
            "{err}"
        );
    }
}

#[test]
fn a_run_where_every_candidate_failed_says_so_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = with_evaluator(
        tmp.path(),
        8,
        "kind = \"command\"\ncommand = '''echo 'first line' >&2; echo 'second line' >&2; exit 3'''",
    );
    let e = start(&exp, &RunOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RunError::NoSuccess(_)), "{msg}");
    assert!(msg.contains("8 candidates, 8 failed"), "{msg}");
    assert!(
        msg.contains("exit status: 3") && msg.contains("first line second line"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    // Resuming says the same instead of pretending to finish.
    let again = resume(
        &tmp.path().join("results/toy/seed3"),
        &RunOptions::default(),
    );
    assert!(matches!(again, Err(RunError::NoSuccess(_))));
}

#[test]
fn a_multi_line_error_stays_in_one_results_md_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = with_evaluator(
        tmp.path(),
        8,
        "kind = \"command\"\ncommand = '''if [ {split} = test ]; then printf 'bad | thing\\nworse\\n' >&2; exit 1; fi; echo '{\"fitness\": 0.5}' '''",
    );
    let dir = start(&exp, &RunOptions::default()).unwrap();
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 2 + 7, "{md}");
    let cells = |l: &str| l.replace("\\|", "").matches('|').count();
    for l in &table {
        assert_eq!(cells(l), cells(table[0]), "{l}");
    }
    assert!(md.contains("bad \\| thing worse"), "{md}");
}

#[test]
fn a_second_process_on_a_run_folder_is_refused_with_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = toy_experiment(tmp.path(), 8, "").unwrap();
    let dir = start(&exp, &RunOptions::default()).unwrap();
    let held = RunLock::acquire(&dir).unwrap();
    let before = std::fs::read_to_string(dir.join("candidates.csv")).unwrap();
    let e = resume(&dir, &RunOptions::default()).unwrap_err();
    assert!(matches!(e, RunError::Locked(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("PID {}", std::process::id())),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("candidates.csv")).unwrap(),
        before
    );
    drop(held);
    resume(&dir, &RunOptions::default()).unwrap();
}

#[test]
fn the_last_generation_stops_at_the_evaluation_budget() {
    let tmp = tempfile::tempdir().unwrap();
    // Population 8: a budget of 12 is one generation and half of the next.
    let exp = toy_experiment(tmp.path(), 12, "").unwrap();
    let dir = start(&exp, &RunOptions::default()).unwrap();
    let state = RunState::load(&dir.join("state.json")).unwrap();
    let st = &state.stages[0];
    assert_eq!((st.evaluations, st.generations), (12, 2));
    let (h, logged) = rows(&dir.join("candidates.csv"));
    assert_eq!(logged.len(), 12);
    let last: Vec<_> = logged
        .iter()
        .filter(|r| r[col(&h, "generation")] == *"1")
        .collect();
    assert_eq!(last.len(), 4);
    let (gh, gens) = rows(&dir.join("generations.csv"));
    assert_eq!(&gens[1][col(&gh, "evaluations")], "12");
    // The optimizer was told only the whole generation.
    use evomerge_search::Optimizer;
    assert_eq!(st.optimizer.evaluations(), 8);
    // Resuming the finished run changes nothing.
    resume(&dir, &RunOptions::default()).unwrap();
    assert_eq!(rows(&dir.join("candidates.csv")).1.len(), 12);
}
