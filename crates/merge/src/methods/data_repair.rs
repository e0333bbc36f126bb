//! `repair`: a whole-model method that runs the models on data (`crate::data`).

use super::data_git_rebasin::MATCHING;
use crate::method::{MethodSpec, flag, num, word};
pub(crate) fn spec() -> MethodSpec {
    MethodSpec::whole_model(
        "repair",
        vec![
            word("matching", "weight", MATCHING),
            num("t", 0.5),
            num("max_iter", 100.0),
            flag("include_output", false),
        ],
        "align as git_rebasin, interpolate at t, then REPAIR each channel's mean/std on `data` (MLP classifiers)",
    )
}
