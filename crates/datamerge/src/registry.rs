//! The data-using methods as the merge planner sees them: their names, summaries and parameters
//! (one registry, [`METHODS`]), the typed parameters they read ([`DataParams`], from the
//! planner's resolved values through serde), the recipe's `data` section ([`DataSection`]) and
//! the check that a method has the data it needs.
//!
//! `evomerge-merge` lists these methods in its method registry as whole-model methods, builds
//! their parameter specs from [`DataMethodSpec::params`] and [`DataParams::default`], and hands
//! a whole-model merge to [`crate::run`] (the models are run on data, so the per-tensor
//! planner only resolves names, dtypes and parameters).
//!
//! ```toml
//! merge_method = "regmean"
//! [data]
//! dataset = "digits"          # or a *.csv / *.jsonl path (relative to the recipe)
//! split = "train"             # train | val | test | all (seeded, stratified split)
//! samples = 512               # optional seeded sample
//! seed = 0
//! [[data.models]]             # optional, one per model in `models` order: its own data
//! classes = [0, 1, 2, 3, 4]
//! [[data.models]]
//! classes = [5, 6, 7, 8, 9]
//! ```

use crate::fisher::{FisherKind, FisherMergeOptions};
use crate::lm::LmOptions;
use crate::regmean::GramScale;
use crate::{Alignment, DataMethod, MethodOptions};
use evomerge_data::{DataSpec, Part};
use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize, Serializer};
use std::path::Path;

/// One data-using method: its name in recipes, a one-line summary and the global parameters it
/// reads (every one a field of [`DataParams`], whose default is the method's default).
#[derive(Debug, Clone, Copy)]
pub struct DataMethodSpec {
    pub method: DataMethod,
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [&'static str],
}

/// Every data-using method, in the order `evomerge methods` lists them.
pub const METHODS: [DataMethodSpec; 5] = [
    DataMethodSpec {
        method: DataMethod::Fisher,
        name: "fisher",
        summary: "Fisher-weighted average (diagonal Fisher: exact or empirical; auto = exact for MLP classifiers, empirical per sequence for Llama-family linear maps); needs `data`",
        params: &["fisher", "epsilon", "normalize"],
    },
    DataMethodSpec {
        method: DataMethod::RegMean,
        name: "regmean",
        summary: "RegMean: per linear layer (sum G_i)^-1 sum G_i W_i from input Grams on each model's data (MLP classifiers, Llama-family linear maps on text); needs `data`",
        params: &["alpha", "ridge", "gram", "average_head"],
    },
    DataMethodSpec {
        method: DataMethod::GitRebasin,
        name: "git_rebasin",
        summary: "Git Re-Basin: permute model B's hidden units to match model A (weight or activation matching), then interpolate at t (MLP classifiers)",
        params: &["matching", "t", "max_iter"],
    },
    DataMethodSpec {
        method: DataMethod::Repair,
        name: "repair",
        summary: "align as git_rebasin, interpolate at t, then REPAIR each channel's mean/std on `data` (MLP classifiers)",
        params: &["matching", "t", "max_iter", "include_output"],
    },
    DataMethodSpec {
        method: DataMethod::GreedySoup,
        name: "greedy_soup",
        summary: "greedy model soup: add models while validation accuracy (MLPs) or next-token loss (LMs) improves; `data` is the validation set",
        params: &[],
    },
];

/// The words a word-valued parameter accepts (for `evomerge methods` and the recipe check).
pub fn choices(param: &str) -> &'static [&'static str] {
    match param {
        "fisher" => &["auto", "exact", "empirical"],
        "gram" => &["sum", "mean"],
        "matching" => &["weight", "activation", "cross_moment"],
        _ => &[],
    }
}

/// Which diagonal Fisher a `fisher` merge computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FisherChoice {
    /// Exact for MLP classifiers, empirical for language models.
    #[default]
    Auto,
    Exact,
    Empirical,
}

impl std::str::FromStr for FisherChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "" => Ok(FisherChoice::Auto),
            other => Ok(match other.parse::<FisherKind>()? {
                FisherKind::Exact => FisherChoice::Exact,
                FisherKind::Empirical => FisherChoice::Empirical,
            }),
        }
    }
}

/// Every parameter of every data-using method, typed, with the methods' defaults. Read from
/// the planner's resolved parameters with [`DataParams::from_value`]; unknown names are errors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataParams {
    #[serde(deserialize_with = "word", serialize_with = "fisher_name")]
    pub fisher: FisherChoice,
    #[serde(deserialize_with = "number")]
    pub epsilon: f64,
    #[serde(deserialize_with = "truthy")]
    pub normalize: bool,
    #[serde(deserialize_with = "number")]
    pub alpha: f64,
    #[serde(deserialize_with = "number")]
    pub ridge: f64,
    #[serde(deserialize_with = "gram", serialize_with = "gram_name")]
    pub gram: GramScale,
    #[serde(deserialize_with = "truthy")]
    pub average_head: bool,
    #[serde(deserialize_with = "word", serialize_with = "matching_name")]
    pub matching: Alignment,
    #[serde(deserialize_with = "number")]
    pub t: f64,
    #[serde(deserialize_with = "number")]
    pub max_iter: f64,
    #[serde(deserialize_with = "truthy")]
    pub include_output: bool,
}

impl Default for DataParams {
    fn default() -> Self {
        let d = MethodOptions::default();
        DataParams {
            fisher: FisherChoice::Auto,
            epsilon: d.fisher_merge.epsilon,
            normalize: d.fisher_merge.normalize,
            alpha: d.regmean.alpha,
            ridge: d.regmean.ridge,
            gram: d.regmean.scale,
            average_head: d.regmean.average_head,
            matching: d.alignment,
            t: d.t,
            max_iter: d.matching.max_iter as f64,
            include_output: d.repair.include_output,
        }
    }
}

/// A word parameter: a string goes through `FromStr`; a number or flag means the default
/// (mergekit-style recipes may write `fisher: true`).
fn word<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String>>(
    d: D,
) -> Result<T, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s.parse().map_err(D::Error::custom),
        _ => "".parse().map_err(D::Error::custom),
    }
}

fn gram<'de, D: Deserializer<'de>>(d: D) -> Result<GramScale, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => match s.as_str() {
            "" | "sum" => Ok(GramScale::Sum),
            "mean" => Ok(GramScale::Mean),
            other => Err(D::Error::custom(format!(
                "gram '{other}' is not one of sum, mean"
            ))),
        },
        _ => Ok(GramScale::Sum),
    }
}

/// A number (`true`/`false` count as 1/0, as mergekit coerces them).
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::Bool(b) => Ok(if b { 1.0 } else { 0.0 }),
        other => Err(D::Error::custom(format!("expected a number, got {other}"))),
    }
}

/// A flag with mergekit's truthiness (non-zero numbers are true, so are words but `false`).
fn truthy<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        serde_json::Value::String(s) => !s.is_empty() && s != "false",
        _ => false,
    })
}

fn fisher_name<S: Serializer>(v: &FisherChoice, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match v {
        FisherChoice::Auto => "auto",
        FisherChoice::Exact => "exact",
        FisherChoice::Empirical => "empirical",
    })
}

fn gram_name<S: Serializer>(v: &GramScale, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match v {
        GramScale::Sum => "sum",
        GramScale::Mean => "mean",
    })
}

fn matching_name<S: Serializer>(v: &Alignment, s: S) -> Result<S::Ok, S::Error> {
    use crate::rebasin::ActivationCost;
    s.serialize_str(match v {
        Alignment::Weight => "weight",
        Alignment::Activation(ActivationCost::Correlation) => "activation",
        Alignment::Activation(ActivationCost::CrossMoment) => "cross_moment",
        Alignment::None => "none",
    })
}

impl DataParams {
    /// The typed parameters from resolved values (an object of name -> value); missing names
    /// take their defaults, unknown ones and bad values are errors naming the parameter.
    pub fn from_value(v: serde_json::Value) -> Result<DataParams, String> {
        serde_json::from_value(v).map_err(|e| format!("data method parameters: {e}"))
    }

    /// The default value of parameter `name` as the planner stores it (number, flag or word).
    pub fn default_value(name: &str) -> Option<serde_json::Value> {
        serde_json::to_value(DataParams::default())
            .ok()?
            .get(name)
            .cloned()
    }

    /// The options of the MLP-classifier merges (`seed` orders the matching sweeps).
    pub fn mlp_options(&self, seed: u64) -> MethodOptions {
        let d = MethodOptions::default();
        MethodOptions {
            fisher: match self.fisher {
                FisherChoice::Auto | FisherChoice::Exact => FisherKind::Exact,
                FisherChoice::Empirical => FisherKind::Empirical,
            },
            fisher_merge: self.fisher_merge(),
            regmean: crate::regmean::RegMeanOptions {
                alpha: self.alpha,
                ridge: self.ridge,
                scale: self.gram,
                average_head: self.average_head,
            },
            alignment: self.matching,
            t: self.t,
            matching: crate::rebasin::MatchOptions {
                max_iter: self.max_iter.max(1.0) as usize,
                seed,
            },
            repair: crate::repair::RepairOptions {
                include_output: self.include_output,
                ..d.repair
            },
            ..d
        }
    }

    /// The options of the language-model merges.
    pub fn lm_options(&self, seed: u64) -> LmOptions {
        LmOptions {
            fisher: match self.fisher {
                FisherChoice::Auto | FisherChoice::Empirical => FisherKind::Empirical,
                FisherChoice::Exact => FisherKind::Exact,
            },
            fisher_merge: self.fisher_merge(),
            regmean: self.mlp_options(seed).regmean,
            ..LmOptions::default()
        }
    }

    fn fisher_merge(&self) -> FisherMergeOptions {
        FisherMergeOptions {
            epsilon: self.epsilon,
            normalize: self.normalize,
        }
    }

    /// Whether `method` with these parameters needs a `data` section (Git Re-Basin with weight
    /// matching does not).
    pub fn needs_data(&self, method: DataMethod) -> bool {
        match method {
            DataMethod::GitRebasin => matches!(self.matching, Alignment::Activation(_)),
            _ => true,
        }
    }
}

/// Check what can be checked before running: the parameters parse and the method has data if
/// it needs some.
pub fn check_recipe(
    method: DataMethod,
    params: serde_json::Value,
    data: Option<&DataSection>,
) -> Result<(), String> {
    let p = DataParams::from_value(params)?;
    if p.needs_data(method) && data.is_none() {
        return Err(format!(
            "{} needs data: add a `data` section (e.g. `[data]` with `dataset = \"digits\"`, or `data: {{dataset: digits}}` in YAML)",
            method.name()
        ));
    }
    Ok(())
}

/// A model's own data: overrides of the shared `data` section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Part>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<u32>>,
}

/// The recipe's `data:` section (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `digits` (built in) or a path to a CSV / JSONL file.
    pub dataset: String,
    #[serde(default)]
    pub split: Part,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<u32>>,
    /// Per-model overrides, in the order of the recipe's models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<DataOverride>>,
}

impl DataSection {
    /// The data of input model `i`.
    pub fn spec_for(&self, i: usize) -> DataSpec {
        let o = self
            .models
            .as_ref()
            .and_then(|m| m.get(i))
            .cloned()
            .unwrap_or_default();
        DataSpec {
            dataset: o.dataset.unwrap_or_else(|| self.dataset.clone()),
            split: o.split.unwrap_or(self.split),
            samples: o.samples.or(self.samples),
            seed: self.seed,
            classes: o.classes.or_else(|| self.classes.clone()),
        }
    }

    /// Apply `fix` to every data set path (the shared one and the per-model ones); the
    /// built-in `digits` is left alone.
    pub fn map_paths(&mut self, fix: impl Fn(&str) -> Option<String>) {
        let apply = |p: &mut String| {
            if p != "digits"
                && let Some(new) = fix(p)
            {
                *p = new;
            }
        };
        apply(&mut self.dataset);
        for o in self.models.iter_mut().flatten() {
            if let Some(d) = o.dataset.as_mut() {
                apply(d);
            }
        }
    }

    /// Make data set paths that exist absolute.
    pub fn make_absolute(&mut self) {
        self.map_paths(|p| {
            let p = Path::new(p);
            p.exists().then(|| {
                std::fs::canonicalize(p)
                    .or_else(|_| std::path::absolute(p))
                    .unwrap_or_else(|_| p.to_path_buf())
                    .display()
                    .to_string()
            })
        });
    }

    /// Make relative data set paths that exist next to the recipe (in `dir`) point there.
    pub fn relative_to(&mut self, dir: &Path) {
        self.map_paths(|p| {
            let path = Path::new(p);
            if path.is_relative() && !path.exists() {
                let joined = dir.join(path);
                joined.exists().then(|| joined.display().to_string())
            } else {
                None
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_are_typed_with_defaults_and_clear_errors() {
        let p = DataParams::from_value(json!({"gram": "mean", "fisher": true, "t": 0.25})).unwrap();
        assert_eq!(p.gram, GramScale::Mean);
        assert_eq!(p.fisher, FisherChoice::Auto);
        assert_eq!(p.mlp_options(3).fisher, FisherKind::Exact);
        assert_eq!(p.lm_options(3).fisher, FisherKind::Empirical);
        assert_eq!(p.mlp_options(3).matching.seed, 3);
        assert_eq!(p.t, 0.25);
        assert_eq!(p.ridge, DataParams::default().ridge);
        let e = DataParams::from_value(json!({"gram": "max"})).unwrap_err();
        assert!(e.contains("gram 'max' is not one of sum, mean"), "{e}");
        let e = DataParams::from_value(json!({"gramm": "sum"})).unwrap_err();
        assert!(e.contains("gramm"), "{e}");
        let e = DataParams::from_value(json!({"matching": "best"})).unwrap_err();
        assert!(e.contains("matching 'best'"), "{e}");
    }

    #[test]
    fn every_listed_parameter_has_a_default() {
        for m in METHODS {
            assert_eq!(DataMethod::from_name(m.name), Some(m.method));
            for p in m.params {
                assert!(DataParams::default_value(p).is_some(), "{}: {p}", m.name);
            }
        }
    }
}
