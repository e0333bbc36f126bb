//! Integration tests of search, one binary (each test binary links the whole dependency tree).

mod config;
mod constants;
mod failures;
mod resume;
mod solve;
