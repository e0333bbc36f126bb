//! evomerge's studies and benchmarks: the work behind `evomerge bench ...` (and, as they move
//! here, the mini world, the digits study and the demo). The CLI (`crates/cli`) only parses
//! flags and calls these functions; each takes a plain options struct and prints its report.
//!
//! - [`bench`]: merge throughput and peak memory against a copy floor ([`bench::merge`]), tiny
//!   LM generation and candidate turnaround ([`bench::lm`]). The optimizer benchmark
//!   (`evomerge bench search`) is `evomerge_search::bench`.
//!
//! Not for: test fixtures (`evomerge-zoo`), the search itself (`evomerge-runner`).

pub mod bench;
