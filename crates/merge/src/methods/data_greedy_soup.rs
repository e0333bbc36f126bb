//! `greedy_soup`: a whole-model method that runs the models on data (`crate::data`).

use crate::method::MethodSpec;

pub(crate) fn spec() -> MethodSpec {
    MethodSpec::whole_model(
        "greedy_soup",
        vec![],
        "greedy model soup: add models while validation accuracy (MLPs) or next-token loss (LMs) improves; `data` is the validation set",
    )
}
