//! The method registry: each merge method's name, its use of a base model, its parameters with
//! mergekit's defaults, and the kernel it runs. Adding a method is one entry here plus one
//! function in `evomerge-kernels`.

use crate::recipe::ParamValue;
use evomerge_kernels::{Consensus, Rescale, Sparsify};

/// What a method does with the base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseUse {
    /// The method needs a base model (task vectors are taken against it).
    Required,
    /// A base is optional (task-vector space when given).
    Optional,
    /// A listed base is just another input.
    Ignored,
}

/// The kernel family a method runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kernel {
    Linear,
    Slerp,
    NuSlerp,
    MultiSlerp,
    Karcher,
    TaskArithmetic {
        sparsify: Sparsify,
        consensus: Consensus,
    },
    ModelStock,
    Passthrough,
    /// A whole-model method that runs the models on data (`crate::data`).
    Data,
}

/// A parameter a method reads, with its default (`None`: required).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub default: Option<ParamValue>,
}

const fn num(name: &'static str, v: f64) -> ParamSpec {
    ParamSpec {
        name,
        default: Some(ParamValue::Number(v)),
    }
}

const fn flag(name: &'static str, v: bool) -> ParamSpec {
    ParamSpec {
        name,
        default: Some(ParamValue::Bool(v)),
    }
}

const fn required(name: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        default: None,
    }
}

/// An optional parameter without a default (e.g. passthrough's `scale`).
const fn optional(name: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        default: Some(ParamValue::Text(String::new())),
    }
}

/// One registered merge method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSpec {
    pub name: &'static str,
    pub kernel: Kernel,
    pub base: BaseUse,
    /// Parameters resolved per input model and tensor (e.g. `weight`, `density`).
    pub tensor_params: Vec<ParamSpec>,
    /// Parameters resolved per output tensor (e.g. `t`, `normalize`).
    pub global_params: Vec<ParamSpec>,
    /// One-line description for `--help` and error messages.
    pub summary: &'static str,
}

fn gta(
    name: &'static str,
    sparsify: Sparsify,
    consensus: Consensus,
    normalize: bool,
    rescale: bool,
    summary: &'static str,
) -> MethodSpec {
    let mut tensor_params = vec![required("weight"), num("density", 1.0)];
    match sparsify {
        Sparsify::MagnitudeOutliers => tensor_params.push(num("gamma", 0.01)),
        Sparsify::Della => tensor_params.push(num("epsilon", 0.15)),
        _ => {}
    }
    let mut global_params = vec![
        flag("int8_mask", false),
        flag("normalize", normalize),
        flag("rescale", rescale),
        num("lambda", 1.0),
    ];
    if consensus != Consensus::None {
        global_params.push(ParamSpec {
            name: "consensus",
            default: Some(ParamValue::Text("sum".into())),
        });
    }
    MethodSpec {
        name,
        kernel: Kernel::TaskArithmetic {
            sparsify,
            consensus,
        },
        base: BaseUse::Required,
        tensor_params,
        global_params,
        summary,
    }
}

/// Every method evomerge implements, in the order `--help` lists them.
pub fn registry() -> Vec<MethodSpec> {
    use Consensus as C;
    use Sparsify as S;
    vec![
        MethodSpec {
            name: "linear",
            kernel: Kernel::Linear,
            base: BaseUse::Ignored,
            tensor_params: vec![required("weight")],
            global_params: vec![flag("normalize", true)],
            summary: "weighted average (model soup)",
        },
        MethodSpec {
            name: "slerp",
            kernel: Kernel::Slerp,
            base: BaseUse::Required,
            tensor_params: vec![],
            global_params: vec![required("t")],
            summary: "spherical interpolation between the base (t=0) and one other model (t=1)",
        },
        MethodSpec {
            name: "nuslerp",
            kernel: Kernel::NuSlerp,
            base: BaseUse::Optional,
            tensor_params: vec![required("weight")],
            global_params: vec![
                flag("nuslerp_row_wise", false),
                flag("nuslerp_flatten", true),
            ],
            summary: "SLERP of two models (or their task vectors) with t = w2/(w1+w2), whole-tensor or per row/column",
        },
        MethodSpec {
            name: "multislerp",
            kernel: Kernel::MultiSlerp,
            base: BaseUse::Optional,
            tensor_params: vec![required("weight")],
            global_params: vec![flag("normalize_weights", true), num("eps", 1e-8)],
            summary: "weighted spherical mean of any number of models",
        },
        MethodSpec {
            name: "karcher",
            kernel: Kernel::Karcher,
            base: BaseUse::Ignored,
            tensor_params: vec![],
            global_params: vec![num("max_iter", 10.0), num("tol", 1e-5)],
            summary: "Riemannian (Karcher) mean with equal weights",
        },
        gta(
            "task_arithmetic",
            S::None,
            C::None,
            false,
            false,
            "base + sum of weighted task vectors",
        ),
        gta(
            "ties",
            S::Magnitude,
            C::Sum,
            true,
            false,
            "TIES: keep the largest deltas, elect signs, average the agreeing ones",
        ),
        gta(
            "dare_ties",
            S::Random,
            C::Sum,
            false,
            true,
            "DARE random drop + TIES sign election",
        ),
        gta(
            "dare_linear",
            S::Random,
            C::None,
            false,
            true,
            "DARE random drop + task arithmetic",
        ),
        gta(
            "breadcrumbs",
            S::MagnitudeOutliers,
            C::None,
            false,
            false,
            "drop the smallest and the largest deltas + task arithmetic",
        ),
        gta(
            "breadcrumbs_ties",
            S::MagnitudeOutliers,
            C::Sum,
            false,
            false,
            "Breadcrumbs + TIES sign election",
        ),
        gta(
            "della",
            S::Della,
            C::Sum,
            true,
            true,
            "DELLA magnitude-ranked random drop + TIES sign election",
        ),
        gta(
            "della_linear",
            S::Della,
            C::None,
            false,
            true,
            "DELLA magnitude-ranked random drop + task arithmetic",
        ),
        MethodSpec {
            name: "model_stock",
            kernel: Kernel::ModelStock,
            base: BaseUse::Required,
            tensor_params: vec![],
            global_params: vec![flag("filter_wise", false)],
            summary: "Model Stock: base-to-average ratio from the angle between task vectors",
        },
        MethodSpec {
            name: "passthrough",
            kernel: Kernel::Passthrough,
            base: BaseUse::Ignored,
            tensor_params: vec![optional("scale")],
            global_params: vec![],
            summary: "copy one model's tensors (layer stacking / frankenmerges), optionally scaled",
        },
        data_method(
            "fisher",
            vec![
                word("fisher", "auto"),
                num("epsilon", 1e-6),
                flag("normalize", true),
            ],
            "Fisher-weighted average (diagonal Fisher: exact or empirical; auto = exact for MLP classifiers, empirical per sequence for Llama-family linear maps); needs `data`",
        ),
        data_method(
            "regmean",
            vec![
                num("alpha", 1.0),
                num("ridge", 1e-6),
                word("gram", "sum"),
                flag("average_head", false),
            ],
            "RegMean: per linear layer (sum G_i)^-1 sum G_i W_i from input Grams on each model's data (MLP classifiers, Llama-family linear maps on text); needs `data`",
        ),
        data_method(
            "git_rebasin",
            vec![
                word("matching", "weight"),
                num("t", 0.5),
                num("max_iter", 100.0),
            ],
            "Git Re-Basin: permute model B's hidden units to match model A (weight or activation matching), then interpolate at t (MLP classifiers)",
        ),
        data_method(
            "repair",
            vec![
                word("matching", "weight"),
                num("t", 0.5),
                num("max_iter", 100.0),
                flag("include_output", false),
            ],
            "align as git_rebasin, interpolate at t, then REPAIR each channel's mean/std on `data` (MLP classifiers)",
        ),
        data_method(
            "greedy_soup",
            vec![],
            "greedy model soup: add models while validation accuracy (MLPs) or next-token loss (LMs) improves; `data` is the validation set",
        ),
    ]
}

/// A parameter whose value is a word (e.g. `fisher = "exact"`).
fn word(name: &'static str, v: &str) -> ParamSpec {
    ParamSpec {
        name,
        default: Some(ParamValue::Text(v.to_string())),
    }
}

/// A data-using method (see `crate::data`): per-model `weight` (default 1), no base.
fn data_method(
    name: &'static str,
    global_params: Vec<ParamSpec>,
    summary: &'static str,
) -> MethodSpec {
    MethodSpec {
        name,
        kernel: Kernel::Data,
        base: BaseUse::Ignored,
        tensor_params: vec![num("weight", 1.0)],
        global_params,
        summary,
    }
}

/// Parameter names some mergekit method uses but that no evomerge method reads; a recipe may
/// carry them (they are ignored with a warning), whereas any other name is a typo.
pub const FOREIGN_PARAMS: &[&str] = &["select_topk", "r", "alpha", "residual_weight"];

/// Look a method up by name; an unknown name is an error suggesting the nearest one.
pub fn lookup(name: &str) -> Result<MethodSpec, String> {
    let all = registry();
    if let Some(m) = all.iter().find(|m| m.name == name) {
        return Ok(m.clone());
    }
    let names: Vec<&str> = all.iter().map(|m| m.name).collect();
    let hint = nearest(name, &names)
        .map(|n| format!(" — did you mean '{n}'?"))
        .unwrap_or_default();
    let mergekit_only = ["arcee_fusion", "nearswap", "sce", "ram", "ramplus_tl"];
    let extra = if mergekit_only.contains(&name) {
        " (mergekit has it; evomerge does not implement it yet)"
    } else {
        ""
    };
    Err(format!(
        "unknown merge method '{name}'{extra}{hint}; available: {}",
        names.join(", ")
    ))
}

/// Every parameter name any registered method reads.
pub fn known_params() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = registry()
        .iter()
        .flat_map(|m| {
            m.tensor_params
                .iter()
                .chain(&m.global_params)
                .map(|p| p.name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The closest of `candidates` to `target` by edit distance, if reasonably close.
pub fn nearest<'a>(target: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(target, c), *c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= target.len().max(3) / 2)
        .map(|(_, c)| c)
}

/// How `rescale` reads: mergekit's booleans (true = L1 norm matching), or evomerge's words
/// `l1` / `inverse_density` (the DARE paper's 1/p).
pub fn rescale_mode(v: &ParamValue) -> Result<Rescale, String> {
    match v {
        ParamValue::Text(s) => match s.as_str() {
            "l1" | "L1" => Ok(Rescale::L1),
            "inverse_density" | "inverse" | "1/p" => Ok(Rescale::InverseDensity),
            "none" | "false" | "" => Ok(Rescale::None),
            other => Err(format!(
                "rescale '{other}' is not one of true, false, l1, inverse_density"
            )),
        },
        other if other.truthy() => Ok(Rescale::L1),
        _ => Ok(Rescale::None),
    }
}

/// How `consensus` reads: `sum` (mergekit's TIES) or `count`.
pub fn consensus_mode(v: &ParamValue) -> Result<Consensus, String> {
    match v {
        ParamValue::Text(s) if s == "sum" => Ok(Consensus::Sum),
        ParamValue::Text(s) if s == "count" => Ok(Consensus::Count),
        other => Err(format!("consensus '{other}' is not one of sum, count")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_method_suggests_nearest() {
        let e = lookup("tie").unwrap_err();
        assert!(e.contains("did you mean 'ties'"), "{e}");
        let e = lookup("dare-ties").unwrap_err();
        assert!(e.contains("did you mean 'dare_ties'"), "{e}");
        let e = lookup("sce").unwrap_err();
        assert!(e.contains("not implement"), "{e}");
    }

    #[test]
    fn defaults_follow_mergekit() {
        let get = |m: &str, p: &str| {
            lookup(m)
                .unwrap()
                .global_params
                .iter()
                .find(|s| s.name == p)
                .and_then(|s| s.default.clone())
        };
        assert_eq!(get("ties", "normalize"), Some(ParamValue::Bool(true)));
        assert_eq!(get("dare_ties", "normalize"), Some(ParamValue::Bool(false)));
        assert_eq!(get("dare_ties", "rescale"), Some(ParamValue::Bool(true)));
        assert_eq!(get("della", "normalize"), Some(ParamValue::Bool(true)));
        assert_eq!(
            get("task_arithmetic", "normalize"),
            Some(ParamValue::Bool(false))
        );
        assert_eq!(get("linear", "normalize"), Some(ParamValue::Bool(true)));
        assert_eq!(get("slerp", "t"), None);
        assert!(known_params().contains(&"density"));
    }

    #[test]
    fn rescale_words() {
        assert_eq!(rescale_mode(&ParamValue::Bool(true)), Ok(Rescale::L1));
        assert_eq!(rescale_mode(&ParamValue::Number(0.0)), Ok(Rescale::None));
        assert_eq!(
            rescale_mode(&ParamValue::Text("inverse_density".into())),
            Ok(Rescale::InverseDensity)
        );
        assert!(rescale_mode(&ParamValue::Text("l2".into())).is_err());
    }
}
