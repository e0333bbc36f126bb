//! Integration tests of genome, one binary (each test binary links the whole dependency tree).

mod dfs;
mod path_export;
mod ps;
