//! evomerge's studies, the mini world and the benchmarks: the work behind `evomerge mini-world
//! ...`, `evomerge data-merge-study`, `evomerge digits-models`, `evomerge demo` and `evomerge
//! bench merge|lm`. The CLI (`crates/cli`) only parses flags into these plain options structs
//! and calls the functions; each prints its own report.
//!
//! - [`mini_world`]: the miniature Japanese-math world of the mini reproduction — its
//!   languages, corpora and task ([`mini_world::data`]), the trainer, which trains evomerge's own
//!   Llama forward pass with autodiff ([`mini_world::train`]), and building, scoring and the
//!   demo search over the committed world ([`mini_world::world`]).
//! - [`data_merge`]: the digits study of the data-using and permutation merges (report + plots).
//! - [`digits`]: the digits MLP base and experts a classifier search merges.
//! - [`demo`]: the toy demo (toy checkpoints, example recipes merged, a short search).
//! - [`bench`](mod@bench): merge throughput and peak memory against a copy floor
//!   ([`bench::merge`]), tiny LM generation and candidate turnaround ([`bench::lm`]). The
//!   optimizer benchmark (`evomerge bench search`) is `evomerge_search::bench`.
//!
//! A new study or benchmark is a module here plus a thin subcommand in `crates/cli`.
//!
//! Not for: test fixtures (`evomerge-zoo`: tiny random checkpoints and the toy experiment), the
//! search itself (`evomerge-runner`).

pub mod bench;
pub mod data_merge;
pub mod demo;
pub mod digits;
pub mod mini_world;
