//! Parity with mergekit 0.1.5 for the methods ported from it (sce, nearswap, arcee_fusion, ram,
//! ramplus_tl), without Python: the inputs are tiny Llama-layout checkpoints whose values come
//! from an integer formula (the same bits on every machine), and `fixtures/mergekit_parity_new_methods/expected.json`
//! holds, per method and tensor, a few numbers of mergekit's output on them (the sum, the sum of
//! magnitudes and four values).
//!
//! Regenerate the fixture (and see the full max |evomerge - mergekit|) with
//! `EVOMERGE_PARITY_DIR=/tmp/parity cargo test -p evomerge-merge --test it mergekit_parity_new`
//! (which writes the inputs, the recipes and evomerge's outputs there), then
//! `python crates/merge/tests/fixtures/mergekit_parity_new_methods/make_expected.py /tmp/parity` in a venv with
//! mergekit 0.1.5.

use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_zoo::TinyLlama;
use std::path::Path;

/// The recipes, as mergekit YAML (`{root}` is the folder of the inputs).
pub const RECIPES: &[(&str, &str)] = &[
    (
        "sce",
        "merge_method: sce\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n  - model: {root}/b\nparameters:\n  select_topk: 0.5\ndtype: float32\n",
    ),
    (
        "nearswap",
        "merge_method: nearswap\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\nparameters:\n  t: 0.004\ndtype: float32\n",
    ),
    (
        "arcee_fusion",
        "merge_method: arcee_fusion\nbase_model: {root}/base\nmodels:\n  - model: {root}/c\ndtype: float32\n",
    ),
    (
        "ram",
        "merge_method: ram\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n  - model: {root}/b\ndtype: float32\n",
    ),
    (
        "ramplus_tl",
        "merge_method: ramplus_tl\nbase_model: {root}/base\nmodels:\n  - model: {root}/a\n  - model: {root}/b\nparameters:\n  r: 0.5\n  alpha: 0.9\ndtype: float32\n",
    ),
];

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A value in [-1, 1] from integers only, then one f32 division (the same bits everywhere).
fn unit(h: u64) -> f32 {
    (h % 2_000_001) as f32 / 1_000_000.0 - 1.0
}

/// Write the base and three fine-tunes: `a` and `b` change about two thirds of the entries (so
/// some entries change in one model only, some in both, some in neither); `c` changes every
/// entry by up to 0.5, so that arcee_fusion's row KL divergences are far from 0 (where torch's
/// f32 KL is off by up to 1%, see `methods/arcee_fusion.rs`).
fn write_inputs(root: &Path) {
    let spec = TinyLlama::default();
    let mut base = spec.random(0);
    for (t, (name, _, values)) in base.tensors.iter_mut().enumerate() {
        let offset = if name.ends_with("norm.weight") {
            1.0
        } else {
            0.0
        };
        for (i, v) in values.iter_mut().enumerate() {
            *v = offset + 0.05 * unit(mix((t as u64) << 32 | i as u64));
        }
    }
    base.save(root.join("base"), Dtype::F32, u64::MAX).unwrap();
    for (k, model) in ["a", "b", "c"].iter().enumerate() {
        let mut w = base.clone();
        for (t, (_, _, values)) in w.tensors.iter_mut().enumerate() {
            for (i, v) in values.iter_mut().enumerate() {
                let h = mix(((k as u64 + 1) << 56) ^ ((t as u64) << 32) ^ i as u64);
                if k == 2 {
                    *v += 0.5 * unit(h >> 8);
                } else if !h.is_multiple_of(3) {
                    *v += 0.01 * unit(h >> 8);
                }
            }
        }
        w.save(root.join(model), Dtype::F32, u64::MAX).unwrap();
    }
}

/// The numbers the fixture keeps of one tensor.
pub fn summary(values: &[f32]) -> Vec<f64> {
    let n = values.len();
    let sum: f64 = values.iter().map(|v| *v as f64).sum();
    let l1: f64 = values.iter().map(|v| v.abs() as f64).sum();
    let mut out = vec![sum, l1];
    out.extend([0, n / 3, n / 2, n - 1].map(|i| values[i] as f64));
    out
}

#[test]
fn new_methods_match_mergekit_0_1_5() {
    let keep = std::env::var_os("EVOMERGE_PARITY_DIR");
    let tmp = tempfile::tempdir().unwrap();
    let root = keep
        .as_ref()
        .map(Path::new)
        .unwrap_or(tmp.path())
        .to_path_buf();
    std::fs::create_dir_all(&root).unwrap();
    write_inputs(&root);
    let fixture: serde_json::Value = serde_json::from_str(include_str!(
        "../fixtures/mergekit_parity_new_methods/expected.json"
    ))
    .unwrap();
    let mut outputs = Vec::new();
    for (method, yaml) in RECIPES {
        let yaml = yaml.replace("{root}", root.to_str().unwrap());
        std::fs::write(root.join(format!("{method}.yml")), &yaml).unwrap();
        let recipe = Recipe::from_yaml(&yaml).unwrap();
        let sources = Sources::open(&recipe, None).unwrap();
        let plan = Plan::build(&recipe, &sources, &PlanOptions::default()).unwrap();
        let out = root.join(format!("evomerge_{method}"));
        let _ = std::fs::remove_dir_all(&out);
        merge_to_disk(&plan, &sources, &out, &MergeOptions::default(), &[]).unwrap();
        outputs.push((method, out));
    }
    for (method, out) in outputs {
        let c = Checkpoint::open(&out).unwrap();
        let want = fixture[method]
            .as_object()
            .unwrap_or_else(|| panic!("no fixture for {method}"));
        assert_eq!(want.len(), c.names().count(), "{method}: tensor count");
        for (name, numbers) in want {
            let got = summary(&c.read_f32(name).unwrap());
            let numbers: Vec<f64> = numbers
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (k, (g, w)) in got.iter().zip(&numbers).enumerate() {
                // sums over up to 4k values: f32 rounding of the parts; values: 1e-6
                let tol = if k < 2 { 1e-5 * (1.0 + w.abs()) } else { 1e-6 };
                assert!(
                    (g - w).abs() <= tol,
                    "{method} {name} summary[{k}]: evomerge {g}, mergekit {w}"
                );
            }
        }
    }
}
