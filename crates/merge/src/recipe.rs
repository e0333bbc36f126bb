//! The recipe: what to merge, how, with which parameters. One schema, two spellings: our TOML
//! and mergekit's YAML (the same keys, so a mergekit user's config works unchanged).

use crate::MergeError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A parameter value: a number, a flag, or (for a few evomerge options) a word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl ParamValue {
    /// The value as a number (`true` is 1, `false` is 0, as mergekit coerces them).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            ParamValue::Number(x) => Some(*x),
            ParamValue::Text(_) => None,
        }
    }

    /// Truthiness as mergekit evaluates it (non-zero numbers are true).
    pub fn truthy(&self) -> bool {
        match self {
            ParamValue::Bool(b) => *b,
            ParamValue::Number(x) => *x != 0.0,
            ParamValue::Text(s) => !s.is_empty() && s != "false",
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Number(x) => write!(f, "{x}"),
            ParamValue::Text(s) => write!(f, "{s}"),
        }
    }
}

/// A scalar or a gradient (a list interpolated over the layers of a slice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScalarOrGradient {
    Value(ParamValue),
    Gradient(Vec<ParamValue>),
}

/// `{filter: "mlp", value: 0.5}`: applies to tensors whose name contains `filter` (no filter,
/// or `"*"`, matches everything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    pub value: ScalarOrGradient,
}

/// Everything a parameter can be set to in mergekit's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamSetting {
    Value(ParamValue),
    Gradient(Vec<ParamValue>),
    Filtered(Vec<FilterEntry>),
    Single(FilterEntry),
}

impl From<f64> for ParamSetting {
    fn from(x: f64) -> Self {
        ParamSetting::Value(ParamValue::Number(x))
    }
}

impl From<bool> for ParamSetting {
    fn from(b: bool) -> Self {
        ParamSetting::Value(ParamValue::Bool(b))
    }
}

/// Parameters by name.
pub type Params = BTreeMap<String, ParamSetting>;

fn evaluate_gradient(values: &[ParamValue], t: f64) -> Option<ParamValue> {
    if values.is_empty() {
        return None;
    }
    if values.iter().all(|v| matches!(v, ParamValue::Number(_))) {
        let nums: Vec<f64> = values.iter().filter_map(ParamValue::as_f64).collect();
        let scaled = t * (nums.len() - 1) as f64;
        let i0 = (scaled as usize).min(nums.len() - 1);
        let i1 = (i0 + 1).min(nums.len() - 1);
        let frac = scaled - i0 as f64;
        Some(ParamValue::Number(
            (1.0 - frac) * nums[i0] + frac * nums[i1],
        ))
    } else {
        let i = ((t * (values.len() - 1) as f64) as usize).min(values.len() - 1);
        Some(values[i].clone())
    }
}

fn evaluate_scalar_or_gradient(v: &ScalarOrGradient, t: f64) -> Option<ParamValue> {
    match v {
        ScalarOrGradient::Value(x) => Some(x.clone()),
        ScalarOrGradient::Gradient(g) => evaluate_gradient(g, t),
    }
}

fn filter_matches(filter: &Option<String>, tensor: &str) -> bool {
    match filter.as_deref() {
        None | Some("*") => true,
        Some(f) => tensor.contains(f),
    }
}

impl ParamSetting {
    /// mergekit's `evaluate_setting`: the value of this setting for `tensor` at position `t`
    /// (0..1) inside its slice. Gradients interpolate piecewise-linearly over equally spaced
    /// anchors; filter lists take the first entry whose filter is a substring of the tensor
    /// name, and give `None` (fall through to the next level) when none matches.
    pub fn evaluate(&self, tensor: &str, t: f64) -> Option<ParamValue> {
        match self {
            ParamSetting::Value(v) => Some(v.clone()),
            ParamSetting::Gradient(g) => evaluate_gradient(g, t),
            ParamSetting::Single(e) => filter_matches(&e.filter, tensor)
                .then(|| evaluate_scalar_or_gradient(&e.value, t))
                .flatten(),
            ParamSetting::Filtered(entries) => entries
                .iter()
                .find(|e| filter_matches(&e.filter, tensor))
                .and_then(|e| evaluate_scalar_or_gradient(&e.value, t)),
        }
    }
}

/// An input model with its parameters (`models:` syntax).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputModel {
    pub model: ModelRef,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub parameters: Params,
}

/// A model reference: a local folder. mergekit's `{model: {path, revision}, lora}` form is
/// accepted so its configs parse, but only local folders without LoRA or revision are merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelRef {
    Path(String),
    Detailed {
        model: ModelPath,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lora: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        override_architecture: Option<String>,
    },
}

/// `{path, revision}` inside a detailed model reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPath {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl ModelRef {
    /// The reference as written, for messages and keys.
    pub fn name(&self) -> &str {
        match self {
            ModelRef::Path(p) => p,
            ModelRef::Detailed { model, .. } => &model.path,
        }
    }

    /// The local folder, or an error for what evomerge does not load (LoRA adapters,
    /// revisions, `model+lora` strings).
    pub fn local_path(&self) -> Result<String, MergeError> {
        let unsupported = |what: &str| {
            MergeError::Recipe(format!(
                "model '{}': {what} is not supported; point to a local folder holding the merged weights",
                self.name()
            ))
        };
        match self {
            ModelRef::Path(p) => {
                if p.contains('+') && !Path::new(p).exists() {
                    return Err(unsupported("a LoRA adapter ('model+lora')"));
                }
                if let Some((path, _)) = p.rsplit_once('@')
                    && !Path::new(p).exists()
                    && !path.is_empty()
                {
                    return Err(unsupported("a revision ('model@revision')"));
                }
                Ok(p.clone())
            }
            ModelRef::Detailed { model, lora, .. } => {
                if lora.is_some() {
                    return Err(unsupported("a LoRA adapter"));
                }
                if model.revision.is_some() {
                    return Err(unsupported("a revision"));
                }
                Ok(model.path.clone())
            }
        }
    }
}

impl From<&str> for ModelRef {
    fn from(s: &str) -> Self {
        ModelRef::Path(s.to_string())
    }
}

/// One input of an output slice: a model and a half-open layer range `[start, end)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceSource {
    pub model: ModelRef,
    /// `[start, end)`; absent means all layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_range: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub parameters: Params,
}

/// An output slice: consecutive output layers merged from the same layers of several sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlice {
    pub sources: Vec<SliceSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<ModelRef>,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub parameters: Params,
    /// Parsed (mergekit accepts it) but unused, as in mergekit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_weight: Option<f64>,
}

/// A module of a multi-module architecture (`modules:` syntax). evomerge merges decoder-only
/// models, so a recipe may have one module, whose slices or models are used as the recipe's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<InputModel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<Vec<OutputSlice>>,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub parameters: Params,
}

/// mergekit's `tokenizer:` block. evomerge copies one model's tokenizer (`source: base` or a
/// model); building a union vocabulary is not supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_to_multiple_of: Option<usize>,
}

/// A merge recipe. Field names and meaning are mergekit's (`merge_method`, `base_model`,
/// `models` or `slices`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`), so
/// `Recipe::from_yaml` reads a mergekit config and `Recipe::from_toml` the same thing in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub merge_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<ModelRef>,
    /// Storage dtype the inputs are read as (mergekit also computes in it; evomerge always
    /// computes in f32) and the output default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Output storage dtype (default: `dtype`, else each tensor's input dtype).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// mergekit-multi's document name; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerConfig>,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub parameters: Params,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<InputModel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<Vec<OutputSlice>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<BTreeMap<String, Module>>,
    /// Data for the data-using methods (`fisher`, `regmean`, `git_rebasin` with activation
    /// matching, `repair`, `greedy_soup`); an evomerge extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<evomerge_datamerge::DataSection>,
}

/// The format of a recipe file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeFormat {
    Toml,
    Yaml,
}

impl RecipeFormat {
    /// `.toml` is TOML, `.yml`/`.yaml` is YAML.
    pub fn of(path: &Path) -> Result<RecipeFormat, MergeError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Ok(RecipeFormat::Toml),
            Some("yml") | Some("yaml") => Ok(RecipeFormat::Yaml),
            _ => Err(MergeError::Recipe(format!(
                "{}: unknown recipe format; name it *.toml (evomerge recipe) or *.yml/*.yaml (mergekit config)",
                path.display()
            ))),
        }
    }
}

impl Recipe {
    /// Parse a recipe in TOML.
    pub fn from_toml(text: &str) -> Result<Recipe, MergeError> {
        toml::from_str(text).map_err(|e| MergeError::Recipe(e.to_string()))
    }

    /// Parse a mergekit YAML config.
    pub fn from_yaml(text: &str) -> Result<Recipe, MergeError> {
        serde_saphyr::from_str(text).map_err(|e| MergeError::Recipe(e.to_string()))
    }

    /// Read a recipe file; the format comes from the extension. Errors name the file.
    pub fn load(path: &Path) -> Result<Recipe, MergeError> {
        let format = RecipeFormat::of(path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| MergeError::Recipe(format!("{}: {e}", path.display())))?;
        let parsed = match format {
            RecipeFormat::Toml => Recipe::from_toml(&text),
            RecipeFormat::Yaml => Recipe::from_yaml(&text),
        };
        let mut recipe = parsed.map_err(|e| match e {
            MergeError::Recipe(msg) => MergeError::Recipe(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        if let (Some(data), Some(dir)) = (recipe.data.as_mut(), path.parent()) {
            data.relative_to(dir);
        }
        Ok(recipe)
    }

    /// The same recipe with every model reference (`base_model`, `models`, `slices`, `modules`,
    /// and a `tokenizer_source` naming a model) passed through `f`; references `f` maps to
    /// `None` stay as written.
    pub fn map_models(&self, f: &dyn Fn(&str) -> Option<String>) -> Recipe {
        let map_ref = |r: &mut ModelRef| match r {
            ModelRef::Path(p) => {
                if let Some(n) = f(p) {
                    *p = n;
                }
            }
            ModelRef::Detailed { model, .. } => {
                if let Some(n) = f(&model.path) {
                    model.path = n;
                }
            }
        };
        let map_slices = |slices: &mut Vec<OutputSlice>| {
            for s in slices {
                s.base_model.as_mut().map(map_ref);
                for src in &mut s.sources {
                    map_ref(&mut src.model);
                }
            }
        };
        let map_models = |models: &mut Vec<InputModel>| {
            for m in models {
                map_ref(&mut m.model);
            }
        };
        let map_name = |n: &mut String| {
            if n != "base"
                && n != "union"
                && let Some(new) = f(n)
            {
                *n = new;
            }
        };
        let mut r = self.clone();
        r.base_model.as_mut().map(map_ref);
        r.models.as_mut().map(map_models);
        r.slices.as_mut().map(map_slices);
        for m in r.modules.iter_mut().flat_map(|m| m.values_mut()) {
            m.models.as_mut().map(map_models);
            m.slices.as_mut().map(map_slices);
        }
        r.tokenizer_source.as_mut().map(map_name);
        if let Some(t) = r.tokenizer.as_mut() {
            t.source.as_mut().map(map_name);
        }
        r
    }

    /// The recipe as TOML (what `evomerge merge` reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe always serializes to TOML")
    }

    /// The recipe as a mergekit YAML config.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a recipe always serializes to YAML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_gradients() {
        let g = ParamSetting::Gradient([0.0, 0.5, 0.3, 0.7, 1.0].map(ParamValue::Number).to_vec());
        let v = g.evaluate("x", 10.0 / 39.0).unwrap().as_f64().unwrap();
        assert!((v - 0.494872).abs() < 1e-6, "{v}");
        let g = ParamSetting::Gradient([0.0, 0.5, 1.0].map(ParamValue::Number).to_vec());
        let got: Vec<f64> = (0..5)
            .map(|i| g.evaluate("x", i as f64 / 4.0).unwrap().as_f64().unwrap())
            .collect();
        assert_eq!(got, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn filters_first_match_wins_and_fall_through() {
        let yaml = r#"
merge_method: slerp
base_model: a
slices:
  - sources:
      - model: a
        layer_range: [0, 2]
      - model: b
        layer_range: [0, 2]
parameters:
  t:
    - filter: self_attn
      value: [0, 1]
    - filter: mlp
      value: 0.25
  other:
    - filter: mlp
      value: 1
"#;
        let r = Recipe::from_yaml(yaml).unwrap();
        let t = &r.parameters["t"];
        assert_eq!(
            t.evaluate("model.layers.0.self_attn.q_proj.weight", 0.5),
            Some(ParamValue::Number(0.5))
        );
        assert_eq!(
            t.evaluate("model.layers.0.mlp.up_proj.weight", 0.9),
            Some(ParamValue::Number(0.25))
        );
        assert_eq!(t.evaluate("model.norm.weight", 0.0), None);
        assert_eq!(
            r.slices.as_ref().unwrap()[0].sources[1].layer_range,
            Some([0, 2])
        );
    }

    #[test]
    fn toml_and_yaml_give_the_same_recipe() {
        let yaml = r#"
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"#;
        let from_yaml = Recipe::from_yaml(yaml).unwrap();
        let toml_text = from_yaml.to_toml();
        let from_toml = Recipe::from_toml(&toml_text).unwrap();
        assert_eq!(from_yaml, from_toml, "{toml_text}");
        let back = Recipe::from_yaml(&from_yaml.to_yaml()).unwrap();
        assert_eq!(from_yaml, back);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Recipe::from_yaml("merge_method: ties\nmodelz: []\n").unwrap_err();
        assert!(e.to_string().contains("modelz"), "{e}");
        let e = Recipe::from_toml("merge_method = \"ties\"\nbase = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("base"), "{e}");
    }

    #[test]
    fn lora_and_revision_refs_are_refused_clearly() {
        let e = ModelRef::from("org/model+org/lora")
            .local_path()
            .unwrap_err();
        assert!(e.to_string().contains("LoRA"), "{e}");
        let e = ModelRef::from("org/model@v1").local_path().unwrap_err();
        assert!(e.to_string().contains("revision"), "{e}");
    }
}
