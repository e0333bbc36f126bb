//! Checks run on every device (flex always, wgpu with the feature).

use super::*;
use evomerge_kernels::Device;
use evomerge_models::{
    Decoder, Finish, Hop, LayerPath, Llama, LlamaConfig, TensorMap, TokenGenerateOptions,
};
use std::sync::Arc;

const TOL: f64 = 1e-4;

fn load(dir: &Path, device: &Device) -> Arc<Llama> {
    Arc::new(Llama::from_dir(dir, device).unwrap())
}

/// Logits of a saved tiny model equal the f64 reference, for one sequence and for a padded
/// batch; returns the decoder for further checks.
pub fn logits_match_reference(spec: &TinyLlama, seed: u64, device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(spec, seed);
    save(&w, tmp.path());
    let r = RefModel::new(&w);
    let d = Decoder::plain(load(tmp.path(), device));
    let seqs: Vec<Vec<u32>> = vec![
        vec![1, 5, 9, 33, 7, 60, 2, 41, 12],
        vec![1, 17],
        vec![3, 4, 5, 6, 7],
    ];
    for ids in &seqs {
        let got = d.logits(ids).unwrap();
        let want = reference_logits(&[&r], &plain(&r), ids, None);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < TOL, "{ids:?}: max abs diff {diff}");
        // The logits are not trivially small.
        assert!(want.iter().flatten().any(|v| v.abs() > 0.5));
    }
    let batch = d.logits_batch(&seqs).unwrap();
    for (ids, got) in seqs.iter().zip(&batch) {
        let want = reference_logits(&[&r], &plain(&r), ids, None);
        let diff = max_abs_diff(got, &want);
        assert!(diff < TOL, "padded batch, {ids:?}: max abs diff {diff}");
    }
}

/// Cached generation equals uncached generation and the reference's greedy continuation.
pub fn cached_generation_matches(spec: &TinyLlama, device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(spec, 11);
    save(&w, tmp.path());
    let r = RefModel::new(&w);
    let d = Decoder::plain(load(tmp.path(), device));
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 8, 9, 10, 11, 12],
        vec![1, 30],
        vec![1, 40, 41, 42],
        vec![1, 50, 51, 52, 53, 54, 55, 56],
    ];
    let mut opts = TokenGenerateOptions {
        max_new_tokens: 8,
        eos_token_ids: vec![],
        batch_size: 3,
        use_cache: true,
    };
    let cached = d.generate(&prompts, &opts, &mut |_, _| false).unwrap();
    opts.use_cache = false;
    let uncached = d.generate(&prompts, &opts, &mut |_, _| false).unwrap();
    assert_eq!(cached, uncached);
    for (p, g) in prompts.iter().zip(&cached) {
        assert_eq!(g.finish, Finish::Length);
        assert_eq!(g.ids, reference_greedy(&r, p, 8), "prompt {p:?}");
    }
    // Rows finishing at different steps (compaction of the cache) keep the others intact.
    opts.use_cache = true;
    let mut stop_after = |i: usize, ids: &[u32]| ids.len() >= 2 + i;
    let staggered = d.generate(&prompts, &opts, &mut stop_after).unwrap();
    for (i, (s, c)) in staggered.iter().zip(&cached).enumerate() {
        let n = (2 + i).min(8);
        assert_eq!(s.ids, c.ids[..n], "prompt {i}");
    }
}

/// A layer path equal to A's layers reproduces A; a path with repeats, another model's layers
/// and scales matches the reference loop (and its cached generation the uncached one).
pub fn layer_paths_match(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = llama_spec();
    let wa = weights(&spec, 21);
    let wb = weights(&spec, 22);
    save(&wa, &tmp.path().join("a"));
    save(&wb, &tmp.path().join("b"));
    let (ra, rb) = (RefModel::new(&wa), RefModel::new(&wb));
    let a = load(&tmp.path().join("a"), device);
    let b = load(&tmp.path().join("b"), device);
    let ids = [1u32, 7, 19, 33, 2, 60, 5];
    let own = Decoder::plain(a.clone()).logits(&ids).unwrap();
    let via_path = Decoder::new(vec![a.clone(), b.clone()], &LayerPath::plain(0, 3))
        .unwrap()
        .logits(&ids)
        .unwrap();
    assert_eq!(own, via_path);

    let hops = [
        (0, 0, 1.0),
        (1, 2, 0.8),
        (0, 1, 1.3),
        (0, 1, 1.0),
        (1, 0, 0.5),
        (0, 2, 1.0),
    ];
    let path = LayerPath {
        hops: hops
            .iter()
            .map(|&(model, layer, scale)| Hop {
                model,
                layer,
                scale,
            })
            .collect(),
    };
    let d = Decoder::new(vec![a, b], &path).unwrap();
    let got = d.logits(&ids).unwrap();
    let ref_hops: Vec<(usize, usize, f64)> =
        hops.iter().map(|&(m, l, s)| (m, l, s as f64)).collect();
    let want = reference_logits(&[&ra, &rb], &ref_hops, &ids, None);
    let diff = max_abs_diff(&got, &want);
    assert!(diff < TOL, "path: max abs diff {diff}");
    let plain_a = reference_logits(&[&ra], &plain(&ra), &ids, None);
    assert!(
        max_abs_diff(&got, &plain_a) > 1e-2,
        "the path changes the output"
    );

    let prompts = vec![vec![1u32, 9, 8, 7], vec![1, 3]];
    let mut opts = TokenGenerateOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    let cached = d.generate(&prompts, &opts, &mut |_, _| false).unwrap();
    opts.use_cache = false;
    let uncached = d.generate(&prompts, &opts, &mut |_, _| false).unwrap();
    assert_eq!(cached, uncached);
}

/// In-memory tensors and the same tensors on disk give identical logits.
pub fn in_memory_equals_disk(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(&qwen_spec(), 5);
    save(&w, tmp.path());
    let from_disk = Decoder::plain(load(tmp.path(), device));
    let mut map = TensorMap::new("in-memory test weights");
    for (name, shape, values) in &w.tensors {
        map.insert(name, evomerge_kernels::tensor_from(values, shape, device));
    }
    let config = LlamaConfig::from_json(&w.config, "test").unwrap();
    let in_mem = Decoder::plain(Arc::new(Llama::load(config, &map, device).unwrap()));
    let ids = [1u32, 4, 9, 16, 25, 36, 49];
    assert_eq!(
        from_disk.logits(&ids).unwrap(),
        in_mem.logits(&ids).unwrap()
    );
}

/// Continuation log-likelihoods equal the reference's log-softmax.
pub fn loglik_matches_reference(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(&llama_spec(), 31);
    save(&w, tmp.path());
    let r = RefModel::new(&w);
    let d = Decoder::plain(load(tmp.path(), device));
    let reqs = vec![
        (vec![1u32, 5, 6], vec![7u32, 8]),
        (vec![1u32], vec![9u32, 10, 11, 12]),
        (vec![1u32, 2, 3, 4, 5, 6], vec![40u32]),
    ];
    let got = d.loglik(&reqs, 2).unwrap();
    for ((ctx, cont), g) in reqs.iter().zip(&got) {
        let mut seq = ctx.clone();
        seq.extend(cont);
        let logits = reference_logits(&[&r], &plain(&r), &seq, None);
        let mut greedy = true;
        for (t, &id) in cont.iter().enumerate() {
            let row = &logits[ctx.len() + t - 1];
            let want = log_softmax(row)[id as usize];
            assert!(
                (g.logprobs[t] as f64 - want).abs() < TOL,
                "{ctx:?}+{cont:?}"
            );
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap())
                .unwrap();
            greedy &= best == id as usize;
        }
        assert_eq!(g.greedy, greedy);
    }
    // A continuation that is the greedy output is flagged as such.
    let generated = d
        .generate(
            &[vec![1, 5, 6]],
            &TokenGenerateOptions {
                max_new_tokens: 3,
                ..Default::default()
            },
            &mut |_, _| false,
        )
        .unwrap();
    let s = d
        .loglik(&[(vec![1, 5, 6], generated[0].ids.clone())], 1)
        .unwrap();
    assert!(s[0].greedy);
}

/// Mistral with a sliding window shorter than the sequence matches the windowed reference.
pub fn mistral_window_matches(device: &Device) {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = weights(&llama_spec(), 41);
    w.config["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    w.config["model_type"] = serde_json::json!("mistral");
    w.config["sliding_window"] = serde_json::json!(3);
    save(&w, tmp.path());
    let r = RefModel::new(&w);
    let d = Decoder::plain(load(tmp.path(), device));
    let ids = [1u32, 5, 9, 33, 7, 60, 2, 41];
    let got = d.logits(&ids).unwrap();
    let want = reference_logits(&[&r], &plain(&r), &ids, Some(3));
    let diff = max_abs_diff(&got, &want);
    assert!(diff < TOL, "windowed: max abs diff {diff}");
    let unwindowed = reference_logits(&[&r], &plain(&r), &ids, None);
    assert!(max_abs_diff(&got, &unwindowed) > 1e-2, "the window matters");
    // Cached generation with a window equals uncached.
    let prompts = vec![ids.to_vec(), vec![1, 2]];
    let mut opts = TokenGenerateOptions {
        max_new_tokens: 5,
        ..Default::default()
    };
    let cached = d.generate(&prompts, &opts, &mut |_, _| false).unwrap();
    opts.use_cache = false;
    assert_eq!(
        cached,
        d.generate(&prompts, &opts, &mut |_, _| false).unwrap()
    );
}

/// The model cast to `dtype` (reduced-precision evaluation) against the f64 reference:
/// returns the largest logit difference (relative to the sequence's largest logit) over a
/// few sequences, batched and padded, and checks it is within `tol`, that the logits come back in f32 and that cached greedy
/// generation still equals uncached.
pub fn reduced_precision_matches(
    spec: &TinyLlama,
    dtype: evomerge_kernels::FloatDType,
    tol: f64,
    device: &Device,
) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let w = weights(spec, 5);
    save(&w, tmp.path());
    let r = RefModel::new(&w);
    let model = Llama::from_dir(tmp.path(), device).unwrap().to_dtype(dtype);
    assert_eq!(model.dtype(), dtype);
    // loaded straight into `dtype` (each tensor cast as read): the same parameters, in `dtype`
    let direct = Llama::from_dir_as(tmp.path(), device, Some(dtype)).unwrap();
    for ((n, a), (m, b)) in model.hf_tensors().into_iter().zip(direct.hf_tensors()) {
        assert_eq!(n, m);
        assert_eq!(evomerge_kernels::FloatDType::from(b.dtype()), dtype, "{n}");
        assert_eq!(
            evomerge_kernels::values_of(a),
            evomerge_kernels::values_of(b),
            "{n} loaded in {dtype:?}"
        );
    }
    let d = Decoder::plain(Arc::new(model));
    let seqs: Vec<Vec<u32>> = vec![
        vec![1, 5, 9, 33, 7, 60, 2, 41, 12],
        vec![1, 17],
        vec![3, 4, 5, 6, 7],
    ];
    let mut worst = 0f64;
    for (ids, got) in seqs.iter().zip(d.logits_batch(&seqs).unwrap()) {
        let want = reference_logits(&[&r], &plain(&r), ids, None);
        // relative to the largest logit of the sequence
        let scale = want.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&got, &want) / scale;
        assert!(
            diff < tol,
            "{dtype:?}, {ids:?}: max abs diff {diff} of the largest logit"
        );
        worst = worst.max(diff);
    }
    let prompts: Vec<Vec<u32>> = vec![vec![1, 8, 9, 10, 11, 12], vec![1, 30]];
    let mut opts = TokenGenerateOptions {
        max_new_tokens: 6,
        eos_token_ids: vec![],
        batch_size: 2,
        use_cache: true,
    };
    let cached = d.generate(&prompts, &opts, &mut |_, _| false).unwrap();
    opts.use_cache = false;
    let uncached = d.generate(&prompts, &opts, &mut |_, _| false).unwrap();
    assert_eq!(
        cached.iter().map(|g| &g.ids).collect::<Vec<_>>(),
        uncached.iter().map(|g| &g.ids).collect::<Vec<_>>(),
        "{dtype:?}"
    );
    worst
}
