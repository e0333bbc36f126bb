//! The one error type of this crate.

/// Everything that can go wrong when building, driving or restoring an optimizer.
///
/// Each message names the offending coordinate or setting and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The search space has no coordinate.
    #[error("the bounds are empty: the search space needs at least one coordinate")]
    EmptyBounds,
    /// `lower` and `upper` have different lengths.
    #[error(
        "the bounds have {lower} lower and {upper} upper values: give exactly one of each per coordinate"
    )]
    BoundsLength {
        /// Number of lower bounds given.
        lower: usize,
        /// Number of upper bounds given.
        upper: usize,
    },
    /// A bound is NaN.
    #[error("coordinate {index}: a bound is NaN; use -inf/+inf (or leave it out) for no bound")]
    NanBound {
        /// Coordinate index.
        index: usize,
    },
    /// `lower >= upper` for a coordinate.
    #[error(
        "coordinate {index}: lower bound {lower} is not below upper bound {upper}; \
         swap them, or remove the coordinate from the genome if it is meant to be fixed"
    )]
    InvertedBounds {
        /// Coordinate index.
        index: usize,
        /// The lower bound given.
        lower: f64,
        /// The upper bound given.
        upper: f64,
    },
    /// A vector has the wrong number of coordinates.
    #[error("{what} has {got} coordinates but the bounds have {expected}")]
    DimensionMismatch {
        /// Which vector (`x0`, ...).
        what: &'static str,
        /// Dimension of the bounds.
        expected: usize,
        /// Dimension given.
        got: usize,
    },
    /// The initial point is NaN or infinite in some coordinate.
    #[error("x0[{index}] = {value} is not a finite number")]
    NonFiniteX0 {
        /// Coordinate index.
        index: usize,
        /// The value given.
        value: f64,
    },
    /// The initial point lies outside the box.
    #[error(
        "x0[{index}] = {value} is outside its bounds [{lower}, {upper}]; start the search inside the box"
    )]
    X0OutOfBounds {
        /// Coordinate index.
        index: usize,
        /// The value given.
        value: f64,
        /// Lower bound of that coordinate.
        lower: f64,
        /// Upper bound of that coordinate.
        upper: f64,
    },
    /// The initial step size is not a positive finite number.
    #[error("sigma0 = {0} is not allowed: the initial step size must be a finite number > 0")]
    InvalidSigma(f64),
    /// A setting of an optimizer config is out of range.
    #[error("setting `{name}` = {value}: {reason}")]
    InvalidSetting {
        /// Name of the setting as written in the config.
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// What is required.
        reason: String,
    },
    /// `tell` was called although no generation is pending.
    #[error("tell() was called without a pending generation: call ask() first")]
    NoPendingGeneration,
    /// `tell` got a fitness slice of the wrong length.
    #[error("tell() got {got} fitness values for a generation of {expected} candidates")]
    FitnessLength {
        /// Number of candidates returned by `ask`.
        expected: usize,
        /// Number of fitness values given.
        got: usize,
    },
    /// An optimizer name that is not one of the known ones.
    #[error(
        "unknown optimizer `{0}`: expected one of cma, sep-cma, ipop-cma, ipop-sep-cma, ga, random"
    )]
    UnknownOptimizer(String),
    /// A benchmark function name that is not one of the known ones.
    #[error(
        "unknown benchmark function `{0}`: expected one of sphere, ellipsoid, rotated-ellipsoid, rosenbrock, rastrigin"
    )]
    UnknownFunction(String),
    /// A state file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A saved state could not be written or read back.
    #[error("optimizer state JSON: {0}")]
    State(#[from] serde_json::Error),
    /// Writing benchmark CSV failed.
    #[error("benchmark CSV: {0}")]
    Csv(#[from] csv::Error),
}
