//! The toy model zoo: checkpoints evomerge builds itself, in the Hugging Face layout, so tests,
//! demos and benchmarks never download anything.
//!
//! [`TinyLlama`] describes a Llama-family decoder (optionally Qwen2-style with q/k/v biases);
//! [`TinyLlama::random`] draws its weights from a seeded generator and [`Weights::perturbed`]
//! makes a "fine-tune" of them (the base plus a small seeded delta), which is all a merge test
//! needs. [`Weights::save`] writes a folder that `evomerge merge` and transformers both read.
//!
//! [`toy_experiment`] writes a complete toy experiment (models, a perplexity task, the
//! experiment file) that runs in seconds; [`assert_special_tokens`] checks a saved folder's
//! tokenizer files for tests. The mini Japanese-math world of the reproduction (its
//! data and trainer) is a study, in `evomerge-studies`.
//!
//! ```no_run
//! use evomerge_zoo::TinyLlama;
//! use evomerge_checkpoint::Dtype;
//! let spec = TinyLlama::default();
//! let base = spec.random(0);
//! base.save("models/base", Dtype::F32, u64::MAX).unwrap();
//! base.perturbed(1, 0.01).save("models/ft", Dtype::F32, u64::MAX).unwrap();
//! ```

mod check;
mod tiny;
mod toy_run;

pub use check::assert_special_tokens;

pub use tiny::{TinyLlama, Weights, word_level_tokenizer};
pub use toy_run::toy_experiment;
