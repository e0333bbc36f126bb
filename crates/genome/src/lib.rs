//! Search spaces: turn optimizer vectors into things evomerge can run, and back.
//!
//! - [`PsGenome`] (parameter space): genes for `[layer groups x source models x filter sets x
//!   method parameters]` (weights and densities), decoded into the same [`Recipe`] that
//!   `evomerge merge` runs, printable as TOML or mergekit YAML; [`PsGenome::encode`] turns a
//!   hand-written recipe back into a vector to seed a search. Presets reproduce the Sakana
//!   paper's global setting and mergekit-evolve's.
//!
//! - [`DfsGenome`] (data-flow space): an indicator array of length `T = M x r` over all `M`
//!   layers of models A, B, ... repeated `r` times and an optional scaling matrix `W = 1 +
//!   theta` (`M x M`), decoded into a [`LayerPath`](evomerge_models::LayerPath) that starts
//!   and ends with A's first and last layers; [`export_path`] / [`export_plain`] write a path
//!   as a checkpoint.
//!
//! Not for: optimizing (see `evomerge-search`) or running models.
//!
//! ```
//! use evomerge_genome::{PsGenome, PsSpec};
//! let g = PsGenome::new(PsSpec::sakana(), vec!["ja".into(), "math".into(), "abel".into()], Some("base".into()), 32).unwrap();
//! assert_eq!(g.dim(), 6); // one weight and one density per model
//! let recipe = g.decode(&g.initial()).unwrap();
//! assert_eq!(recipe.merge_method, "dare_ties");
//! println!("{}", recipe.to_yaml());
//! ```
//!
//! [`Recipe`]: evomerge_merge::Recipe

// `!(x > 0.0)`-style checks reject NaN on purpose; the gene loops index several
// parallel tables by model.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

mod bounds;
mod dfs;
mod export;
mod lookup;
mod ps;

pub use bounds::GeneBounds;
pub use dfs::{DfsGenome, DfsSpec};
pub use export::{
    PATH_ARCHITECTURE, PATH_CONFIGURATION_PY, PATH_MODEL_TYPE, PATH_MODELING_PY, export_path,
    export_plain, is_path_config, load_decoder, load_path_checkpoint, needs_scales,
};
pub use ps::{EMBED_FILTERS, Gene, MethodGene, Preset, PsGenome, PsSpec};

/// Errors decoding or building a genome.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenomeError {
    #[error("genome: {0}")]
    Spec(String),
    #[error("genome: the vector has {got} values but the genome has {expected} genes")]
    WrongLength { expected: usize, got: usize },
    #[error("genome: gene {index} ({name}) is not a finite number")]
    NotFinite { index: usize, name: String },
}
