//! `fisher`: a whole-model method that runs the models on data (`crate::data`).

use crate::method::{MethodSpec, flag, num, word};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec::whole_model(
        "fisher",
        vec![
            word("fisher", "auto", &["auto", "exact", "empirical"]),
            num("epsilon", 1e-6),
            flag("normalize", true),
        ],
        "Fisher-weighted average (diagonal Fisher: exact or empirical; auto = exact for MLP classifiers, empirical per sequence for Llama-family linear maps); needs `data`",
    )
}
