//! `regmean`: a whole-model method that runs the models on data (`crate::data`).

use crate::method::{MethodSpec, flag, num, word};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec::whole_model(
        "regmean",
        vec![
            num("alpha", 1.0),
            num("ridge", 1e-6),
            word("gram", "sum", &["sum", "mean"]),
            flag("average_head", false),
        ],
        "RegMean: per linear layer (sum G_i)^-1 sum G_i W_i from input Grams on each model's data (MLP classifiers, Llama-family linear maps on text); needs `data`",
    )
}
