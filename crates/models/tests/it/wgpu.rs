//! The decoder on wgpu against the same f64 reference (lavapipe on machines without a GPU).
//! Skipped when no adapter exists, except under CI=true, where that fails.

use crate::common::checks;
use crate::common::{llama_spec, qwen_spec};
use evomerge_kernels::{Device, DeviceChoice};

fn device() -> Option<Device> {
    match DeviceChoice::Wgpu.device() {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping wgpu test: {e}");
            None
        }
        Err(e) => panic!("CI=true but no wgpu adapter: {e}"),
    }
}

#[test]
fn wgpu_logits_generation_paths_and_memory_weights() {
    let Some(d) = device() else { return };
    checks::logits_match_reference(&llama_spec(), 1, &d);
    checks::logits_match_reference(&qwen_spec(), 2, &d);
    checks::cached_generation_matches(&llama_spec(), &d);
    checks::layer_paths_match(&d);
    checks::in_memory_equals_disk(&d);
    checks::loglik_matches_reference(&d);
    checks::mistral_window_matches(&d);
    // f16 evaluation (WGSL has f16 where the adapter has SHADER_F16; no bf16)
    let f16 = checks::reduced_precision_matches(
        &llama_spec(),
        evomerge_kernels::FloatDType::F16,
        0.01,
        &d,
    );
    eprintln!("wgpu F16: max |logit - reference| / largest logit {f16:.2e}");
}
