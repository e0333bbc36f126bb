//! The command evaluator against scripts that succeed, fail, hang and print garbage.

use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_eval::{Candidate, EvalRequest, Evaluator, MergedCandidate, Split};
use evomerge_eval_command::{CommandConfig, CommandEvaluator};
use evomerge_kernels::Device;
use evomerge_models::{LanguageModel, TensorMap, Tokenizer};
use evomerge_zoo::TinyLlama;
use std::path::Path;
use std::sync::Arc;

fn candidate(dir: &Path) -> MergedCandidate {
    TinyLlama::default()
        .random(4)
        .save(dir, Dtype::F32, u64::MAX)
        .unwrap();
    let device = Device::flex();
    let ckpt = Checkpoint::open(dir).unwrap();
    MergedCandidate::new(
        "cand-1",
        ckpt.config().unwrap().clone(),
        TensorMap::from_checkpoint(&ckpt, &device).unwrap(),
        Arc::new(Tokenizer::from_dir(dir).unwrap()),
        Some(dir.to_path_buf()),
        &device,
    )
    .unwrap()
}

fn evaluator(command: &str, timeout_s: f64) -> CommandEvaluator {
    let text = format!("name = \"script\"\ncommand = '''{command}'''\ntimeout_s = {timeout_s}\n");
    CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap()).unwrap()
}

fn req() -> EvalRequest {
    EvalRequest::new(Split::Validation, 3, 9)
}

#[test]
fn a_successful_script_scores_and_sees_a_loadable_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let copy = tmp.path().join("copy");
    let seen = tmp.path().join("seen.txt");
    let ev = evaluator(
        &format!(
            "test -f {{model_dir}}/config.json && test -f {{model_dir}}/tokenizer.json && \
             cp -r {{model_dir}} {copy} && echo {{model_dir}} {{split}} {{generation}} {{seed}} > {seen} && \
             echo 'loading model...' && echo '{{\"fitness\": 0.625, \"metrics\": {{\"acc\": 0.625, \"f1\": 0.5}}}}'",
            copy = copy.display(),
            seen = seen.display()
        ),
        60.0,
    );
    let score = ev.evaluate(&cand, &req()).unwrap();
    assert!(!score.is_failed(), "{:?}", score.failure);
    assert_eq!(score.fitness, 0.625);
    assert_eq!(score.metrics["f1"], 0.5);
    let seen = std::fs::read_to_string(&seen).unwrap();
    let mut parts = seen.split_whitespace();
    let model_dir = parts.next().unwrap();
    assert_eq!(parts.collect::<Vec<_>>(), ["validation", "3", "9"]);
    // The temporary folder is gone afterwards.
    assert!(
        !Path::new(model_dir).exists(),
        "{model_dir} was not removed"
    );
    // What the command saw is the candidate: same logits as in memory.
    let loaded = LanguageModel::from_dir(&copy, &Device::flex()).unwrap();
    let ids = [1u32, 5, 9, 12];
    assert_eq!(
        loaded.decoder().logits(&ids).unwrap(),
        cand.language_model()
            .unwrap()
            .decoder()
            .logits(&ids)
            .unwrap()
    );
}

#[test]
fn score_file_is_preferred_to_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let ev = evaluator(
        r#"echo '{"fitness": 0.1}'; echo '{"fitness": 0.9, "items": [{"id": "a", "score": 1.0}]}' > {score_file}"#,
        60.0,
    );
    let s = ev.evaluate(&cand, &req()).unwrap();
    assert_eq!(s.fitness, 0.9);
    assert_eq!(s.items[0].id, "a");
}

#[test]
fn failing_hanging_and_garbage_scripts_score_as_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));

    let fail = evaluator("echo 'CUDA out of memory' >&2; exit 3", 60.0)
        .evaluate(&cand, &req())
        .unwrap();
    assert!(fail.is_failed());
    let why = fail.failure.unwrap();
    assert!(
        why.contains("exit status: 3") && why.contains("CUDA out of memory"),
        "{why}"
    );

    let marker = tmp.path().join("still-running");
    let start = std::time::Instant::now();
    let hang = evaluator(&format!("sleep 30; touch {}", marker.display()), 0.5)
        .evaluate(&cand, &req())
        .unwrap();
    assert!(hang.is_failed());
    assert!(hang.failure.unwrap().contains("timed out"));
    assert!(
        start.elapsed().as_secs() < 25,
        "the hung command was not killed"
    );
    assert!(!marker.exists());

    let garbage = evaluator("echo 'accuracy: great'; echo '{\"score\": 1}'", 60.0)
        .evaluate(&cand, &req())
        .unwrap();
    assert!(garbage.is_failed());
    assert!(garbage.failure.unwrap().contains("unparsable"));

    let nan = evaluator("echo '{\"fitness\": \"high\"}'", 60.0)
        .evaluate(&cand, &req())
        .unwrap();
    assert!(nan.is_failed());
}

#[test]
fn reads_lm_evaluation_harness_results() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let results = r#"{"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.4, "exact_match,flexible-extract": 0.45}}}"#;
    let text = format!(
        "command = '''mkdir -p {{work_dir}}/out/m && echo '{results}' > {{work_dir}}/out/m/results_2025-01-01T00-00-00.json'''\n\
         [lm_eval]\ntask = \"gsm8k\"\nmetric = \"exact_match,strict-match\"\n"
    );
    let ev = CommandEvaluator::new(toml::from_str(&text).unwrap()).unwrap();
    let s = ev.evaluate(&cand, &req()).unwrap();
    assert_eq!(s.fitness, 0.4);
    assert_eq!(s.metrics["exact_match,flexible-extract"], 0.45);
    let text = text.replace(
        "metric = \"exact_match,strict-match\"",
        "metric = \"exact_match,strict\"",
    );
    let ev = CommandEvaluator::new(toml::from_str(&text).unwrap()).unwrap();
    let s = ev.evaluate(&cand, &req()).unwrap();
    let why = s.failure.unwrap();
    assert!(
        why.contains("exact_match,strict-match"),
        "lists the metrics it has: {why}"
    );
}

#[test]
fn a_missing_cwd_or_temp_dir_is_named_when_the_evaluator_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    for key in ["cwd", "temp_dir"] {
        let missing = tmp.path().join("no such folder");
        let text = format!(
            "name = \"script\"\ncommand = 'true'\n{key} = '{}'\n",
            missing.display()
        );
        let e = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(key)
                && e.contains(&missing.display().to_string())
                && e.contains("does not exist"),
            "{e}"
        );
    }
}

#[test]
fn placeholders_are_shell_quoted_and_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    // A temp_dir with a space, quotes and shell metacharacters in its name.
    let odd = tmp.path().join("my models; $(touch pwned) it's \"odd\"");
    std::fs::create_dir_all(&odd).unwrap();
    let seen = tmp.path().join("seen.txt");
    let text = format!(
        "name = \"script\"\ntemp_dir = '''{}'''\ncommand = '''test -f {{model_dir}}/config.json && test -d {{work_dir}} && \
         printf '%s\\n' {{model_dir}} \"$EVOMERGE_MODEL_DIR\" \"$EVOMERGE_WORK_DIR\" \"$EVOMERGE_SCORE_FILE\" \"$EVOMERGE_SPLIT\" \"$EVOMERGE_GENERATION\" \"$EVOMERGE_SEED\" > {seen} && \
         echo '{{\"fitness\": 1}}' > \"$EVOMERGE_SCORE_FILE\"'''\n",
        odd.display(),
        seen = seen.display()
    );
    let ev = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap()).unwrap();
    let s = ev.evaluate(&cand, &req()).unwrap();
    assert!(!s.is_failed(), "{:?}", s.failure);
    assert_eq!(s.fitness, 1.0);
    let seen = std::fs::read_to_string(&seen).unwrap();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 7, "{seen}");
    assert!(lines[0].starts_with(odd.to_str().unwrap()), "{seen}");
    assert!(lines[0].ends_with("/model"), "{seen}");
    assert_eq!(lines[1], lines[0], "{{model_dir}} and $EVOMERGE_MODEL_DIR");
    assert!(lines[2].ends_with("/work") && lines[3].ends_with("/work/score.json"));
    assert_eq!(&lines[4..], ["validation", "3", "9"]);
    assert!(!tmp.path().join("pwned").exists() && !Path::new("pwned").exists());
}

#[test]
fn temporary_folders_name_their_owner_and_stale_ones_are_removed() {
    use evomerge_eval_command::{OWNER_FILE, remove_stale_folders};
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let temp = tmp.path().join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let run = tmp.path().join("results/run");
    // While the command runs, its folder names this process and the run.
    let owner_copy = tmp.path().join("owner.json");
    let text = format!(
        "command = '''cp {{model_dir}}/../{OWNER_FILE} {} && echo '{{\"fitness\": 1}}' '''\ntemp_dir = '{}'\n",
        owner_copy.display(),
        temp.display()
    );
    let ev = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap())
        .unwrap()
        .with_owner(&run);
    assert!(!ev.evaluate(&cand, &req()).unwrap().is_failed());
    let owner: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&owner_copy).unwrap()).unwrap();
    assert_eq!(owner["pid"], std::process::id());
    assert_eq!(owner["run"], run.display().to_string());
    let host = owner["host"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_dir(&temp).unwrap().count(),
        0,
        "removed afterwards"
    );

    // Folders left by dead processes: one of this run, one of another run on this machine;
    // one of a live process of another run stays, and so does one without an owner file.
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let make = |name: &str, pid: u32, run: &str| {
        let d = temp.join(name);
        std::fs::create_dir_all(d.join("model")).unwrap();
        let o = serde_json::json!({"pid": pid, "host": host, "run": run});
        std::fs::write(d.join(OWNER_FILE), o.to_string()).unwrap();
        d
    };
    let live_parent = std::os::unix::process::parent_id();
    let this_run = make("evomerge-1-aaa", live_parent, run.to_str().unwrap());
    let dead_other = make("evomerge-2-bbb", dead, "/elsewhere/run");
    let live_other = make("evomerge-3-ccc", live_parent, "/elsewhere/run");
    let unowned = temp.join("evomerge-4-ddd");
    std::fs::create_dir_all(&unowned).unwrap();
    let mut removed = remove_stale_folders(Some(&temp), &run);
    removed.sort();
    assert_eq!(removed, vec![this_run.clone(), dead_other.clone()]);
    assert!(!this_run.exists() && !dead_other.exists());
    assert!(live_other.exists() && unowned.exists());
}

#[test]
fn held_devices_fill_the_placeholders_and_the_visible_devices() {
    use evomerge_eval::HeldDevice;
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let seen = tmp.path().join("seen.txt");
    let text = format!(
        "name = \"gpu\"\nenv = {{ CUDA_VISIBLE_DEVICES = \"7\" }}\ncommand = '''printf '%s\\n' {{devices}} {{device}} \"$CUDA_VISIBLE_DEVICES\" \"$HIP_VISIBLE_DEVICES\" \"$EVOMERGE_DEVICES\" > {} && echo '{{\"fitness\": 1}}' '''\n",
        seen.display()
    );
    let ev = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap()).unwrap();
    assert!(ev.uses_devices());
    let held = vec![
        HeldDevice {
            name: "cuda:2".into(),
            index: 2,
        },
        HeldDevice {
            name: "cuda:3".into(),
            index: 3,
        },
    ];
    let s = ev.evaluate(&cand, &req().with_devices(held)).unwrap();
    assert!(!s.is_failed(), "{:?}", s.failure);
    let seen = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["2,3", "2", "2,3", "2,3", "2,3"]
    );
    // No device held and none inherited: the placeholders cannot be filled.
    if std::env::var_os("CUDA_VISIBLE_DEVICES").is_none() {
        let e = ev.evaluate(&cand, &req()).unwrap_err().to_string();
        assert!(
            e.contains("[execution] devices") && e.contains("gres"),
            "{e}"
        );
    }
}

/// A persistent scorer in `sh`: logs each request line, answers `{"fitness": n}` (n counting
/// its requests, so a restart shows), with progress lines on stdout and stderr in between;
/// `MODE` makes its second request die, hang or answer an error. Writes `BYE` on a clean exit.
const SCORER: &str = r#"n=0
echo $$ >> "$PIDS"
while IFS= read -r line; do
  n=$((n+1))
  printf '%s\n' "$line" >> "$LOG"
  dir=$(printf '%s' "$line" | sed 's/.*"model_dir":"\([^"]*\)".*/\1/')
  ok=0; test -f "$dir/config.json" && ok=1
  echo "progress: scoring $n"
  echo "stderr line $n" >&2
  if [ "$n" -eq 2 ]; then
    case "$MODE" in
      die) echo "scorer crashed on purpose" >&2; exit 7;;
      hang) sleep 300 & echo $! >> "$PIDS"; wait;;
      error) echo '{"error": "no GPU memory"}'; continue;;
    esac
  fi
  echo "{\"fitness\": $n, \"metrics\": {\"pid\": $$, \"ok\": $ok}}"
done
echo bye > "$BYE"
"#;

struct Scorer {
    dir: tempfile::TempDir,
    ev: Option<CommandEvaluator>,
}

impl Scorer {
    fn new(mode: &str, timeout_s: f64) -> Scorer {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("scorer.sh");
        std::fs::write(&script, SCORER).unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let text = format!(
            "name = \"server\"\npersistent = true\ntimeout_s = {timeout_s}\ncommand = '''exec sh {}'''\nenv = {{ LOG = '{}', PIDS = '{}', BYE = '{}', MODE = '{mode}' }}\n",
            script.display(),
            p("requests.log"),
            p("pids"),
            p("bye")
        );
        let ev = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap()).unwrap();
        Scorer { dir, ev: Some(ev) }
    }

    fn ev(&self) -> &CommandEvaluator {
        self.ev.as_ref().unwrap()
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.path().join("pids"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn a_persistent_scorer_gets_the_requests_in_order_and_exits_cleanly_at_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let s = Scorer::new("", 60.0);
    let reqs = [
        EvalRequest::new(Split::Search, 0, 9),
        EvalRequest::new(Split::Search, 1, 9),
        EvalRequest::new(Split::Test, 2, 9),
    ];
    let mut pids = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let score = s.ev().evaluate(&cand, r).unwrap();
        assert!(!score.is_failed(), "{:?}", score.failure);
        assert_eq!(
            score.fitness,
            (i + 1) as f64,
            "one process answers them all"
        );
        assert_eq!(score.metrics["ok"], 1.0, "the model folder was there");
        pids.push(score.metrics["pid"] as i32);
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_eq!(s.pids(), [pids[0]], "started once");
    let seen = s.requests();
    assert_eq!(seen.len(), 3);
    for (r, (want, split)) in seen
        .iter()
        .zip(reqs.iter().zip(["search", "search", "test"]))
    {
        assert_eq!(r["split"], split);
        assert_eq!(r["generation"], want.generation);
        assert_eq!(r["seed"], 9);
        assert_eq!(r["label"], "cand-1");
        assert_eq!(r["devices"], serde_json::json!([]));
        let model_dir = r["model_dir"].as_str().unwrap();
        assert!(model_dir.ends_with("/model"));
        assert_eq!(
            r["score_file"].as_str().unwrap(),
            format!("{}/score.json", r["work_dir"].as_str().unwrap())
        );
        assert!(
            !Path::new(model_dir).exists(),
            "{model_dir} was not removed"
        );
    }
    assert!(alive(pids[0]));
    // The end of the run: stdin closed, the scorer leaves its loop and exits by itself.
    let mut s = s;
    drop(s.ev.take());
    assert!(!alive(pids[0]), "the scorer outlived its evaluator");
    assert!(s.dir.path().join("bye").exists(), "not a clean exit");
}

#[test]
fn a_persistent_scorer_that_dies_gives_a_failed_row_and_is_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let s = Scorer::new("die", 60.0);
    assert_eq!(s.ev().evaluate(&cand, &req()).unwrap().fitness, 1.0);
    let dead = s.ev().evaluate(&cand, &req()).unwrap();
    let why = dead.failure.expect("a failed row");
    assert!(
        why.contains("exit status: 7")
            && why.contains("scorer crashed on purpose")
            && why.contains("progress: scoring 2")
            && why.contains("scorer.sh")
            && why.contains("cand-1"),
        "{why}"
    );
    let again = s.ev().evaluate(&cand, &req()).unwrap();
    assert!(!again.is_failed(), "{:?}", again.failure);
    assert_eq!(again.fitness, 1.0, "a fresh process");
    let pids = s.pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(!alive(pids[0]) && alive(pids[1]));
    assert_eq!(again.metrics["pid"] as i32, pids[1]);
}

#[test]
fn a_persistent_scorer_that_hangs_is_killed_at_the_timeout_and_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let s = Scorer::new("hang", 3.0);
    assert_eq!(s.ev().evaluate(&cand, &req()).unwrap().fitness, 1.0);
    let start = std::time::Instant::now();
    let hung = s.ev().evaluate(&cand, &req()).unwrap();
    assert!(start.elapsed().as_secs() < 20, "not stopped at the timeout");
    let why = hung.failure.expect("a failed row");
    assert!(why.contains("timed out after 3 s"), "{why}");
    let pids = s.pids();
    assert_eq!(pids.len(), 2, "the scorer and its sleep: {pids:?}");
    for p in &pids {
        assert!(
            !alive(*p),
            "process {p} of the hung scorer is still running"
        );
    }
    let again = s.ev().evaluate(&cand, &req()).unwrap();
    assert_eq!(again.fitness, 1.0, "{:?}", again.failure);
    assert!(s.pids().len() == 3 && alive(s.pids()[2]));
}

#[test]
fn a_persistent_scorer_can_answer_an_error_or_point_at_its_score_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let s = Scorer::new("error", 60.0);
    assert_eq!(s.ev().evaluate(&cand, &req()).unwrap().fitness, 1.0);
    let e = s.ev().evaluate(&cand, &req()).unwrap();
    assert!(e.failure.unwrap().contains("no GPU memory"));
    let third = s.ev().evaluate(&cand, &req()).unwrap();
    assert_eq!(third.fitness, 3.0, "the same process goes on");
    assert_eq!(s.pids().len(), 1);

    let text = r#"persistent = true
command = '''while IFS= read -r l; do f=$(printf '%s' "$l" | sed 's/.*"score_file":"\([^"]*\)".*/\1/'); echo '{"fitness": 0.75}' > "$f"; echo '{"done": true}'; done'''
"#;
    let ev = CommandEvaluator::new(toml::from_str::<CommandConfig>(text).unwrap()).unwrap();
    assert_eq!(ev.evaluate(&cand, &req()).unwrap().fitness, 0.75);
}

#[test]
fn persistent_scorers_run_one_per_device_set_and_reject_per_candidate_placeholders() {
    use evomerge_eval::HeldDevice;
    let tmp = tempfile::tempdir().unwrap();
    let cand = candidate(&tmp.path().join("src"));
    let s = Scorer::new("", 60.0);
    let on = |ids: &[usize]| {
        req().with_devices(
            ids.iter()
                .map(|&i| HeldDevice {
                    name: format!("cuda:{i}"),
                    index: i,
                })
                .collect(),
        )
    };
    let a = s.ev().evaluate(&cand, &on(&[0])).unwrap();
    let b = s.ev().evaluate(&cand, &on(&[1])).unwrap();
    let a2 = s.ev().evaluate(&cand, &on(&[0])).unwrap();
    assert_eq!((a.fitness, b.fitness, a2.fitness), (1.0, 1.0, 2.0));
    assert_ne!(a.metrics["pid"], b.metrics["pid"]);
    assert_eq!(a.metrics["pid"], a2.metrics["pid"]);
    assert_eq!(s.requests()[1]["devices"], serde_json::json!([1]));
    // A slot holding both devices: the scorers on them make way.
    let both = s.ev().evaluate(&cand, &on(&[0, 1])).unwrap();
    assert_eq!(both.fitness, 1.0);
    let pids = s.pids();
    assert_eq!(pids.len(), 3);
    assert!(!alive(pids[0]) && !alive(pids[1]) && alive(pids[2]));

    for key in ["model_dir", "split", "score_file"] {
        let text = format!("persistent = true\ncommand = 'score --model {{{key}}}'\n");
        let e = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{{{key}}}")) && e.contains("request line"),
            "{e}"
        );
    }
    let ok = "persistent = true\ncommand = 'score --device {device}'\n";
    assert!(CommandEvaluator::new(toml::from_str::<CommandConfig>(ok).unwrap()).is_ok());
}
