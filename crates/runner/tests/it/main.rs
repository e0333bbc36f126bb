//! Integration tests of runner, one binary (each test binary links the whole dependency tree).

mod broken_inputs;
mod classifier;
mod compare_runs;
mod plot_run;
mod run;
