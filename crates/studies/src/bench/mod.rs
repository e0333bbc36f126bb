//! Benchmarks that print their figures with a baseline measured in the same run, so numbers
//! from a noisy shared machine still mean something (BENCHMARKS.md has the results).

pub mod lm;
pub mod merge;
pub mod pipeline;
