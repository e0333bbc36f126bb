//! Data-using and permutation merges of MLP classifiers: Fisher merging, RegMean, Git Re-Basin
//! (weight and activation matching), REPAIR, and model soups.
//!
//! Every method here is a whole-model operation: it reads several [`MlpWeights`] (and, for
//! most, what they compute on data), and returns one merged [`MlpWeights`]. The statistics come
//! from running the burn MLP ([`evomerge_models::Mlp`]) on the flex CPU backend:
//!
//! - [`fisher`]: the diagonal Fisher information — exact (expectation over the model's own
//!   class distribution) or empirical (true labels) — from per-example gradients obtained with
//!   one backward pass per class and batch; and the Fisher-weighted average with its `epsilon`
//!   and normalisation options (Matena & Raffel 2022);
//! - [`regmean`]: Gram matrices of every linear layer's inputs and the closed form
//!   `W* = (sum G_i)^-1 sum G_i W_i`, with the off-diagonal scale `alpha` and a ridge toward the
//!   plain average for singular Grams (Jin et al. 2023);
//! - [`rebasin`]: permutation specs of MLPs, weight matching by coordinate descent with an exact
//!   linear assignment per step (the `lsap` crate, SciPy's algorithm), activation matching, and
//!   applying a permutation (Ainsworth et al. 2023);
//! - [`repair`]: per-channel pre-activation statistics and the correction of an interpolated
//!   network so each channel's mean and std match the interpolated statistics, folded back into
//!   the weights (Jordan et al. 2023);
//! - [`soup`]: uniform and greedy soups (Wortsman et al. 2022);
//! - [`curve`]: interpolation curves and loss barriers.
//!
//! [`merge_mlps`] runs any of them from a method name and options: what `evomerge merge` calls
//! for the data-using methods.
//!
//! [`registry`] is where a data-using method is registered: its name, summary and parameters
//! (typed, [`DataParams`]), which `evomerge-merge` lists as whole-model methods and hands
//! over to; it also holds the recipe's `data` section ([`DataSection`]). A new data-using
//! method is a variant of [`DataMethod`], an entry in [`METHODS`], its parameters in
//! [`DataParams`] and its arm in [`merge_mlps`] (and [`lm`] for language models).
//!
//! [`lm`] applies RegMean, Fisher merging and the greedy soup to Llama-family language models
//! (their linear maps, statistics from evomerge's decoder on text data).
//!
//! Not for: Git Re-Basin / REPAIR of transformers (no permutation spec for decoders), reading
//! recipes (`evomerge-merge`).
//!
//! ```no_run
//! use evomerge_data::Dataset;
//! use evomerge_datamerge::{rebasin, curve};
//! use evomerge_models::MlpWeights;
//! # fn main() -> Result<(), evomerge_datamerge::DataMergeError> {
//! let test = Dataset::digits().split(0).test;
//! let a = MlpWeights::load("models/a")?;
//! let b = MlpWeights::load("models/b")?;
//! let perm = rebasin::weight_matching(&a, &b, &rebasin::MatchOptions::default())?;
//! let b_aligned = rebasin::apply(&b, &perm.permutation);
//! let naive = curve::interpolate(&a, &b, &test, 25)?;
//! let aligned = curve::interpolate(&a, &b_aligned, &test, 25)?;
//! println!("barrier {} -> {}", curve::barrier(&naive), curve::barrier(&aligned));
//! # Ok(()) }
//! ```

pub mod curve;
pub mod fisher;
pub mod lm;
mod method;
pub mod rebasin;
pub mod registry;
pub mod regmean;
pub mod repair;
pub mod soup;

pub use method::{Alignment, DataMethod, MergeInput, MethodOptions, merge_mlps};
pub use registry::{DataMethodSpec, DataOverride, DataParams, DataSection, METHODS};

pub use evomerge_models::MlpWeights;

/// What can go wrong in a data-using merge. Messages name the model, layer or data set.
#[derive(Debug, thiserror::Error)]
pub enum DataMergeError {
    #[error(transparent)]
    Model(#[from] evomerge_models::MlpError),
    #[error(transparent)]
    Data(#[from] evomerge_data::DataError),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "regmean: layer {layer} ({name}): the summed Gram matrix of its inputs is singular (input unit {unit} never varies on the data — e.g. a dead ReLU); set `ridge` > 0 (e.g. 1e-4) to pull such rows toward the plain average"
    )]
    SingularGram {
        layer: usize,
        name: String,
        unit: usize,
    },
}

/// Result type of this crate.
pub type Result<T, E = DataMergeError> = std::result::Result<T, E>;

/// A clear error unless every model has the first one's layer sizes.
pub fn check_same_architecture(models: &[&MlpWeights], names: &[String]) -> Result<()> {
    let name = |i: usize| {
        names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("model {i}"))
    };
    for (i, m) in models.iter().enumerate().skip(1) {
        models[0].check_same_shape(m, &name(0), &name(i))?;
    }
    Ok(())
}
