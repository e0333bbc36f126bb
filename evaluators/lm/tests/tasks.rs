//! The LM evaluator on a scripted model whose greedy output is known in advance.
//!
//! The model has one decoder layer with zero weights (an identity), one-hot embeddings and an
//! LM head that maps each token to its scripted successor, so greedy decoding follows the
//! script: `next(tok)` is fixed. Its probabilities are known in closed form too: the successor
//! has logit about sqrt(hidden), every other token 0.

use evomerge_checkpoint::Dtype;
use evomerge_eval::{EvalRequest, Evaluator, MergedCandidate, Split};
use evomerge_eval_lm::LmEvaluator;
use evomerge_kernels::Device;
use evomerge_models::{TensorMap, Tokenizer};
use evomerge_zoo::TinyLlama;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

const HIDDEN: usize = 48;

const VOCAB: &[&str] = &[
    "<unk>", "<s>", "</s>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "kotae", "wa", "the",
    "answer", "is", "QA", "QB", "QC", "QD", "QE", "Q:", "A:", "yes", "no", ".", "end",
];

/// Greedy successor of each token (unlisted tokens go to `</s>`).
const SCRIPT: &[(&str, &str)] = &[
    ("QA", "kotae"), // QA -> kotae wa 4 </s>
    ("kotae", "wa"),
    ("wa", "4"),
    ("4", "</s>"),
    ("QB", "the"), // QB -> the answer is 4 </s>  (right number, wrong language)
    ("the", "answer"),
    ("answer", "is"),
    ("is", "4"),
    ("QC", "5"), // QC -> 5 . end ... (wrong number; stops at ".")
    ("5", "."),
    (".", "end"),
    ("end", "end"),
    ("QD", "yes"), // QD -> yes </s>
    ("yes", "</s>"),
];

fn id(tok: &str) -> usize {
    VOCAB.iter().position(|t| *t == tok).unwrap()
}

fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// Write the scripted model to `dir` and return it as an in-memory candidate too.
fn scripted(dir: &Path) -> MergedCandidate {
    let spec = TinyLlama {
        hidden: HIDDEN,
        intermediate: 16,
        layers: 1,
        vocab: VOCAB.len(),
        heads: 4,
        kv_heads: 2,
        max_positions: 64,
        ..TinyLlama::default()
    };
    let mut w = spec.random(0);
    for (name, _, values) in w.tensors.iter_mut() {
        let fill = if name.ends_with("norm.weight") {
            1.0
        } else {
            0.0
        };
        values.iter_mut().for_each(|v| *v = fill);
        if name == "model.embed_tokens.weight" {
            for t in 0..VOCAB.len() {
                values[t * HIDDEN + t] = 1.0;
            }
        }
        if name == "lm_head.weight" {
            for t in 0..VOCAB.len() {
                let next = SCRIPT
                    .iter()
                    .find(|(a, _)| id(a) == t)
                    .map(|(_, b)| id(b))
                    .unwrap_or(id("</s>"));
                values[next * HIDDEN + t] = 1.0;
            }
        }
    }
    w.save(dir, Dtype::F32, u64::MAX).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let device = Device::flex();
    let ckpt = evomerge_checkpoint::Checkpoint::open(dir).unwrap();
    MergedCandidate::new(
        "scripted",
        ckpt.config().unwrap().clone(),
        TensorMap::from_checkpoint(&ckpt, &device).unwrap(),
        Arc::new(Tokenizer::from_dir(dir).unwrap()),
        Some(dir.to_path_buf()),
        &device,
    )
    .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn generate_task_scores_known_answers_and_the_language_check() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = scripted(&tmp.path().join("model"));
    write(
        tmp.path(),
        "items.jsonl",
        concat!(
            r#"{"id": "ja-right", "q": "QA", "answer": 4}"#,
            "\n",
            r#"{"id": "en-right", "q": "QB", "answer": "4"}"#,
            "\n",
            "\n",
            r#"{"id": "ja-wrong", "q": "QC", "answer": 4}"#,
            "\n",
            r#"{"id": "no-number", "q": "QD", "answer": 1}"#,
            "\n",
        ),
    );
    let toml = r#"
        name = "scripted-math"
        type = "generate"
        batch_size = 3
        [data]
        search = "items.jsonl"
        test = { file = "items.jsonl", range = [0, 2] }
        [generate]
        prompt = "Q: {q}"
        max_new_tokens = 6
        stop = ["."]
        [generate.language]
        vocabulary = ["kotae", "wa", "yes"]
        threshold = 0.5
    "#;
    write(tmp.path(), "task.toml", toml);
    let ev = LmEvaluator::from_file(tmp.path().join("task.toml")).unwrap();
    let score = ev
        .evaluate(&cand, &EvalRequest::new(Split::Search, 0, 1))
        .unwrap();
    let outputs: Vec<&str> = score
        .items
        .iter()
        .map(|r| r.output.as_deref().unwrap())
        .collect();
    assert_eq!(outputs, ["kotae wa 4", "the answer is 4", "5 ", "yes"]);
    let correct: Vec<bool> = score.items.iter().map(|r| r.correct.unwrap()).collect();
    assert_eq!(correct, [true, true, false, false]);
    // The English answer has the right number but fails the language check.
    let scores: Vec<f64> = score.items.iter().map(|r| r.score).collect();
    assert_eq!(scores, [1.0, 0.0, 0.0, 0.0]);
    assert_eq!(score.metrics["acc"], 0.5);
    assert_eq!(score.metrics["lang_pass"], 0.5); // "kotae wa 4" and "yes"
    assert_eq!(score.metrics["acc_lang"], 0.25);
    assert_eq!(score.fitness, 0.25);
    let ids: Vec<&str> = score.items.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["ja-right", "en-right", "ja-wrong", "no-number"]);

    // The test split is an index range: the first two items.
    let test = ev
        .evaluate(&cand, &EvalRequest::new(Split::Test, 0, 1))
        .unwrap();
    assert_eq!(test.items.len(), 2);
    assert_eq!(test.metrics["acc"], 1.0);

    // Without the language check, accuracy is the fitness.
    write(
        tmp.path(),
        "plain.toml",
        &toml.replace("[generate.language]", "").replace(
            "vocabulary = [\"kotae\", \"wa\", \"yes\"]\n        threshold = 0.5",
            "",
        ),
    );
    let plain = LmEvaluator::from_file(tmp.path().join("plain.toml")).unwrap();
    let s = plain
        .evaluate(&cand, &EvalRequest::new(Split::Search, 0, 1))
        .unwrap();
    assert_eq!(s.fitness, 0.5);
    assert!(!s.metrics.contains_key("acc_lang"));
    // A validation split the task does not have is a clear error.
    let e = plain
        .evaluate(&cand, &EvalRequest::new(Split::Validation, 0, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("validation"), "{e}");
}

#[test]
fn subsample_is_shared_within_a_generation_and_changes_across() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: String = (0..40)
        .map(|i| format!("{{\"q\": \"QA\", \"answer\": {i}}}\n"))
        .collect();
    write(tmp.path(), "items.jsonl", &lines);
    let ev = LmEvaluator::from_toml(
        r#"
        name = "sub"
        type = "generate"
        [data]
        search = "items.jsonl"
        validation = "items.jsonl"
        subsample = 10
        [generate]
        prompt = "{q}"
        "#,
        tmp.path(),
    )
    .unwrap();
    let pick = |split, generation, seed| -> Vec<String> {
        ev.items(&EvalRequest::new(split, generation, seed))
            .unwrap()
            .iter()
            .map(|i| i.id.clone())
            .collect()
    };
    let g0 = pick(Split::Search, 0, 7);
    assert_eq!(g0.len(), 10);
    assert_eq!(g0, pick(Split::Search, 0, 7));
    assert_ne!(g0, pick(Split::Search, 1, 7));
    assert_ne!(g0, pick(Split::Search, 0, 8));
    assert_eq!(pick(Split::Validation, 0, 7).len(), 40);
    // Ids default to file:line.
    assert_eq!(pick(Split::Validation, 0, 7)[0], "items.jsonl:1");
}

/// Log-probability of the scripted successor and of any other token.
fn scripted_logprobs() -> (f64, f64) {
    // RMSNorm of a one-hot embedding, eps 1e-6 (the zoo's default).
    let hi = 1.0 / (1.0 / HIDDEN as f64 + 1e-6).sqrt();
    let z = (hi.exp() + (VOCAB.len() - 1) as f64).ln();
    (hi - z, -z)
}

#[test]
fn multiple_choice_and_perplexity_match_closed_form() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = scripted(&tmp.path().join("model"));
    write(
        tmp.path(),
        "mc.jsonl",
        concat!(
            r#"{"q": "QA", "choices": ["kotae wa", "the answer", "yes no"], "gold": 0}"#,
            "\n",
            r#"{"q": "QB", "choices": ["kotae", "the answer is"], "gold": "the answer is"}"#,
            "\n",
            r#"{"q": "QD", "choices": ["no", "yes"], "gold": 0}"#,
            "\n",
        ),
    );
    let ev = LmEvaluator::from_toml(
        r#"
        name = "mc"
        type = "multiple_choice"
        [data]
        search = "mc.jsonl"
        [multiple_choice]
        prompt = "Q: {q}"
        "#,
        tmp.path(),
    )
    .unwrap();
    let s = ev
        .evaluate(&cand, &EvalRequest::new(Split::Search, 0, 0))
        .unwrap();
    let (hit, miss) = scripted_logprobs();
    assert_eq!(s.metrics["acc"], 2.0 / 3.0);
    assert_eq!(s.items[2].output.as_deref(), Some("1"));
    // gold log-likelihoods in closed form: "kotae wa" after QA = 2 hits; "the answer is"
    // after QB = 3 hits; "no" after QD = a miss.
    let gold: Vec<f64> = s.items.iter().map(|r| r.extra["gold_loglik"]).collect();
    for (g, want) in gold.iter().zip([2.0 * hit, 3.0 * hit, miss]) {
        assert!((g - want).abs() < 1e-4, "{g} vs {want}");
    }

    write(
        tmp.path(),
        "ppl.jsonl",
        concat!(
            r#"{"text": "QA kotae wa 4"}"#,
            "\n",
            r#"{"text": "QA yes"}"#,
            "\n"
        ),
    );
    let ev = LmEvaluator::from_toml(
        r#"
        name = "ppl"
        type = "perplexity"
        [data]
        search = "ppl.jsonl"
        "#,
        tmp.path(),
    )
    .unwrap();
    let s = ev
        .evaluate(&cand, &EvalRequest::new(Split::Search, 0, 0))
        .unwrap();
    // Scored from BOS: "QA" (a miss after <s>), then 3 hits / then one miss.
    let want_ll = (miss + 3.0 * hit) + (miss + miss);
    let mean = want_ll / 6.0;
    assert!((s.fitness - mean).abs() < 1e-4, "{} vs {mean}", s.fitness);
    assert!((s.metrics["perplexity"] - (-mean).exp()).abs() < 1e-3);
    assert_eq!(s.items[0].extra["tokens"], 4.0);
}

#[test]
fn bad_task_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "broken.jsonl",
        "{\"q\": \"QA\", \"answer\": 1}\n{\"q\": \"QB\", \"answer\": \n{\"q\": 1, \"answer\": 2}\n",
    );
    let task = |data: &str, extra: &str| {
        format!(
            "name = \"t\"\ntype = \"generate\"\n[data]\nsearch = \"{data}\"\n[generate]\nprompt = \"{{q}}\"\n{extra}"
        )
    };
    let e = LmEvaluator::from_toml(&task("broken.jsonl", ""), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.jsonl:2") && e.contains("JSON"), "{e}");

    write(tmp.path(), "noanswer.jsonl", "{\"q\": \"QA\"}\n");
    let e = LmEvaluator::from_toml(&task("noanswer.jsonl", ""), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("noanswer.jsonl:1") && e.contains("answer"),
        "{e}"
    );

    write(tmp.path(), "ok.jsonl", "{\"q\": \"QA\", \"answer\": 4}\n");
    let e = LmEvaluator::from_toml(&task("missing.jsonl", ""), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.jsonl"), "{e}");
    let e = LmEvaluator::from_toml(&task("ok.jsonl", "extract = \"regex\""), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("regex"), "{e}");
    let e = LmEvaluator::from_toml(&task("ok.jsonl", "max_tokens = 3"), tmp.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_tokens"), "{e}");

    // A prompt longer than the context (64) fails with a clear message.
    let long: String = std::iter::repeat_n("QA", 80).collect::<Vec<_>>().join(" ");
    write(
        tmp.path(),
        "long.jsonl",
        &format!("{{\"q\": \"{long}\", \"answer\": 4}}\n"),
    );
    let cand = scripted(&tmp.path().join("model"));
    let ev = LmEvaluator::from_toml(&task("long.jsonl", ""), tmp.path()).unwrap();
    let e = ev
        .evaluate(&cand, &EvalRequest::new(Split::Search, 0, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("81 tokens") && e.contains("context of 64"),
        "{e}"
    );
}
