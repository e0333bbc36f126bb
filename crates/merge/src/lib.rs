//! Merge recipes into checkpoints: recipe -> plan -> tensors.
//!
//! A [`Recipe`] says what to merge (mergekit's schema: `merge_method`, `base_model`, `models` or
//! `slices`, `parameters` with scalars, layer gradients and filters, `dtype`/`out_dtype`,
//! `tokenizer_source`), read from our TOML or from a mergekit YAML file. [`Plan::build`] turns
//! it into one [`TensorPlan`] per output tensor — which tensors of which models, every parameter
//! resolved with mergekit's precedence (source > slice > module > top level > default) — while
//! checking shapes, names and values, so mistakes surface before anything is written.
//! [`merge_to_disk`] then runs the plan tensor by tensor (in parallel, streaming into the
//! output shards) and [`merge_in_memory`] does the same into device tensors for a search. On
//! the CPU both run a method's fused kernel when it has one ([`method::MethodSpec::host`],
//! `evomerge_kernels::fused`: the memory-mapped bytes in, the output's bytes out, input pages
//! released after each tensor), else its burn work (the GPU path).
//!
//! Whole-model (data-using) methods are registered by `evomerge-datamerge`
//! (`evomerge_datamerge::METHODS`, typed parameters `DataParams`); the planner resolves them
//! like the others and the executor hands them to `whole_model` (modules: recipe -> method ->
//! plan -> output -> execute / whole_model, no cycle).
//!
//! Methods are one file each in `src/methods/` (parameters, defaults, bounds, base use, arity,
//! scope, golden cases and the work they run, calling into `evomerge-kernels`), listed once in
//! that module's registry and read through [`method::registry`].
//!
//! Not for: searching recipes (`evomerge-genome`, `evomerge-search`), running models.
//!
//! ```no_run
//! use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
//! # fn main() -> Result<(), evomerge_merge::MergeError> {
//! let recipe = Recipe::from_yaml(r#"
//! merge_method: ties
//! base_model: models/base
//! models:
//!   - model: models/math
//!     parameters: {weight: 1.0, density: 0.5}
//!   - model: models/ja
//!     parameters: {weight: 1.0, density: 0.5}
//! "#)?;
//! let sources = Sources::open(&recipe, None)?;
//! let plan = Plan::build(&recipe, &sources, &PlanOptions::default())?;
//! merge_to_disk(&plan, &sources, "out/merged".as_ref(), &MergeOptions::default(), &[])?;
//! # Ok(()) }
//! ```

mod execute;
pub mod method;
mod methods;
mod output;
mod plan;
mod recipe;
mod whole_model;

pub use evomerge_datamerge::{DataOverride, DataSection};
pub use execute::{
    TensorSource, merge_in_memory, merge_in_memory_as, merge_in_memory_pooled, merge_tensor,
    merge_tensor_host, merge_to_disk, runs_fused,
};
pub use output::{MergeOptions, MergeReport};
pub use plan::{
    Action, Plan, PlanInput, PlanOptions, SourceModel, Sources, TensorPlan, referenced_models,
};
pub use recipe::{
    FilterEntry, InputModel, ModelPath, ModelRef, Module, OutputSlice, ParamSetting, ParamValue,
    Params, Recipe, RecipeFormat, ScalarOrGradient, SliceSource, TokenizerConfig,
};
pub use whole_model::is_data_method;

/// What can go wrong between a recipe and a merged checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The recipe is wrong (unknown method or parameter, bad value, inconsistent slices, ...).
    #[error("recipe: {0}")]
    Recipe(String),
    /// A model folder is missing or does not fit the recipe.
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] evomerge_checkpoint::CheckpointError),
    /// A method could not produce a tensor.
    #[error("tensor '{tensor}': {message}")]
    Kernel { tensor: String, message: String },
    /// A stop was asked for (the signal's number) before the merge was complete; nothing was
    /// written to the output folder.
    #[error("interrupted by signal {0}; nothing was written (the partial output was removed)")]
    Interrupted(i32),
}
