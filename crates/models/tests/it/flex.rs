//! The decoder on flex (CPU) against an independent f64 reference.

use crate::common::checks;
use crate::common::{llama_spec, qwen_spec};
use evomerge_kernels::Device;

#[test]
fn llama_logits_match_reference() {
    checks::logits_match_reference(&llama_spec(), 1, &Device::flex());
}

#[test]
fn qwen2_logits_match_reference() {
    checks::logits_match_reference(&qwen_spec(), 2, &Device::flex());
}

#[test]
fn cached_generation_equals_uncached_and_reference() {
    checks::cached_generation_matches(&llama_spec(), &Device::flex());
    checks::cached_generation_matches(&qwen_spec(), &Device::flex());
}

#[test]
fn layer_paths_match_reference() {
    checks::layer_paths_match(&Device::flex());
}

#[test]
fn in_memory_weights_equal_disk_weights() {
    checks::in_memory_equals_disk(&Device::flex());
}

#[test]
fn loglik_matches_reference() {
    checks::loglik_matches_reference(&Device::flex());
}

#[test]
fn mistral_sliding_window_matches_reference() {
    checks::mistral_window_matches(&Device::flex());
}

/// bf16 and f16 evaluation on the CPU against the f64 reference; the difference relative to
/// the largest logit is printed (BENCHMARKS.md quotes it: bf16 ~3e-2, f16 ~3e-3; f32 is
/// within 1e-4 absolute). bf16 keeps 8 bits of mantissa, f16 11.
#[test]
fn reduced_precision_logits_stay_close_to_f32() {
    use evomerge_kernels::FloatDType;
    for (dtype, tol) in [(FloatDType::BF16, 0.06), (FloatDType::F16, 0.01)] {
        let llama = checks::reduced_precision_matches(&llama_spec(), dtype, tol, &Device::flex());
        let qwen = checks::reduced_precision_matches(&qwen_spec(), dtype, tol, &Device::flex());
        eprintln!(
            "{dtype:?}: max |logit - reference| / largest logit: llama {llama:.2e}, qwen2 {qwen:.2e}"
        );
    }
}
