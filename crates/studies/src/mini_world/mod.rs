//! The mini Japanese-math world of the mini reproduction of Sakana's EvoLLM-JP (RESULTS.md):
//!
//! - [`data`]: the two synthetic languages, the training corpora and the task's splits.
//! - [`train`]: training a model of the world with burn's autodiff through evomerge's own
//!   inference forward pass (`evomerge-models`).
//! - [`world`]: the `evomerge mini-world` commands (build, eval, demo, corpus) and the committed
//!   default world (experiments/mini-evollm-jp/world), with the trainer version in every
//!   model's stamp.

pub mod data;
pub mod train;
pub mod world;

pub use data::BaseQuestions;
pub use world::{
    BuildOptions, CorpusOptions, DemoOptions, TRAINER_VERSION, build, committed_world, demo,
    evaluate, write_corpus,
};

#[cfg(test)]
mod tokenizer_files;
