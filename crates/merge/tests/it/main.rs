//! Integration tests of merge, one binary (each test binary links the whole dependency tree).

mod data_methods;
mod end_to_end;
mod mergekit_parity;
mod mergekit_parity_new_methods;
mod registry;
