//! Integration tests of the decoder, one binary (each test binary links the whole dependency tree).

mod common;
mod errors;
mod flex;
#[cfg(feature = "wgpu")]
mod wgpu;
