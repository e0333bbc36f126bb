//! A stop request (SIGINT/SIGTERM in `evomerge run`) while a command evaluates: the command's
//! whole process group is stopped, its temporary folder removed, and the evaluation returns
//! `EvalError::Interrupted`. Its own test binary: the stop request is process-wide.

use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_eval::{EvalError, EvalRequest, Evaluator, MergedCandidate, Split, interrupt};
use evomerge_eval_command::{CommandConfig, CommandEvaluator};
use evomerge_kernels::Device;
use evomerge_models::{TensorMap, Tokenizer};
use evomerge_zoo::TinyLlama;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The stop request is process-wide: the tests of this binary take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_stop_request_kills_the_process_group_and_removes_the_folder() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    TinyLlama::default()
        .random(4)
        .save(&src, Dtype::F32, u64::MAX)
        .unwrap();
    let device = Device::flex();
    let ckpt = Checkpoint::open(&src).unwrap();
    let cand = MergedCandidate::new(
        "cand",
        ckpt.config().unwrap().clone(),
        TensorMap::from_checkpoint(&ckpt, &device).unwrap(),
        Arc::new(Tokenizer::from_dir(&src).unwrap()),
        Some(src.clone()),
        &device,
    )
    .unwrap();
    let temp = tmp.path().join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let pids = tmp.path().join("pids");
    // The shell starts a background child that ignores SIGTERM, and waits in the foreground.
    let text = format!(
        "command = '''(trap '' TERM; exec sleep 300) & echo $$ $! > {p}.tmp && mv {p}.tmp {p}; sleep 300; echo '{{\"fitness\": 1}}' '''\ntemp_dir = '{}'\n",
        temp.display(),
        p = pids.display()
    );
    let ev = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap()).unwrap();
    let pids_seen = pids.clone();
    let stopper = std::thread::spawn(move || {
        // Wait for the command to be running (an event, not a duration), then ask to stop.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pids_seen.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        interrupt::request(libc::SIGTERM);
    });
    let r = ev.evaluate(&cand, &EvalRequest::new(Split::Search, 0, 1));
    stopper.join().unwrap();
    assert!(
        matches!(r, Err(EvalError::Interrupted(s)) if s == libc::SIGTERM),
        "{r:?}"
    );
    let text = std::fs::read_to_string(&pids).unwrap();
    let ids: Vec<i32> = text
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for pid in ids {
        assert!(!alive(pid), "process {pid} of the command is still running");
    }
    assert_eq!(
        std::fs::read_dir(&temp).unwrap().count(),
        0,
        "the candidate folder is left in {}",
        temp.display()
    );
    // Once asked to stop, no new evaluation starts.
    assert!(matches!(
        ev.evaluate(&cand, &EvalRequest::new(Split::Search, 0, 1)),
        Err(EvalError::Interrupted(_))
    ));
    interrupt::clear();
}

#[test]
fn a_stop_request_stops_a_persistent_scorer_and_its_children() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    TinyLlama::default()
        .random(4)
        .save(&src, Dtype::F32, u64::MAX)
        .unwrap();
    let device = Device::flex();
    let ckpt = Checkpoint::open(&src).unwrap();
    let cand = MergedCandidate::new(
        "cand",
        ckpt.config().unwrap().clone(),
        TensorMap::from_checkpoint(&ckpt, &device).unwrap(),
        Arc::new(Tokenizer::from_dir(&src).unwrap()),
        Some(src.clone()),
        &device,
    )
    .unwrap();
    let temp = tmp.path().join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let pids = tmp.path().join("pids");
    // Answers the first request; on the second starts a child that ignores SIGTERM and waits.
    let text = format!(
        "persistent = true\ntemp_dir = '{}'\ncommand = '''n=0; while read -r l; do n=$((n+1)); if [ $n -eq 2 ]; then (trap '' TERM; exec sleep 300) & echo $$ $! > {p}.tmp && mv {p}.tmp {p}; wait; fi; echo '{{\"fitness\": 1}}'; done'''\n",
        temp.display(),
        p = pids.display()
    );
    let ev = CommandEvaluator::new(toml::from_str::<CommandConfig>(&text).unwrap()).unwrap();
    let req = EvalRequest::new(Split::Search, 0, 1);
    assert_eq!(ev.evaluate(&cand, &req).unwrap().fitness, 1.0);
    let pids_seen = pids.clone();
    let stopper = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pids_seen.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        interrupt::request(libc::SIGINT);
    });
    let r = ev.evaluate(&cand, &req);
    stopper.join().unwrap();
    assert!(
        matches!(r, Err(EvalError::Interrupted(s)) if s == libc::SIGINT),
        "{r:?}"
    );
    let ids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for pid in ids {
        assert!(!alive(pid), "process {pid} of the scorer is still running");
    }
    assert_eq!(
        std::fs::read_dir(&temp).unwrap().count(),
        0,
        "a candidate folder is left"
    );
    assert!(matches!(
        ev.evaluate(&cand, &req),
        Err(EvalError::Interrupted(_))
    ));
    interrupt::clear();
}
