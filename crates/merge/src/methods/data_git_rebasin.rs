//! `git_rebasin`: a whole-model method that runs the models on data (`crate::data`).

use crate::method::{MethodSpec, num, word};

/// How the hidden units are matched.
pub(super) const MATCHING: &[&str] = &["weight", "activation", "cross_moment"];

pub(crate) fn spec() -> MethodSpec {
    MethodSpec::whole_model(
        "git_rebasin",
        vec![
            word("matching", "weight", MATCHING),
            num("t", 0.5),
            num("max_iter", 100.0),
        ],
        "Git Re-Basin: permute model B's hidden units to match model A (weight or activation matching), then interpolate at t (MLP classifiers)",
    )
}
