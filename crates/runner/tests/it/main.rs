//! Integration tests of runner, one binary (each test binary links the whole dependency tree).

mod classifier;
mod compare_runs;
mod plot_run;
mod run;
