//! The data-using methods (`fisher`, `regmean`, `git_rebasin`, `repair`, `greedy_soup`): the
//! recipe's `data:` section, and their execution. They are whole-model operations (they run
//! the models on data to get Fisher information, Gram matrices, activations or validation
//! accuracy), so instead of the per-tensor kernels they hand the whole models to
//! `evomerge-datamerge` and write what it returns under the plan's tensor names and dtypes.
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

use crate::MergeError;
use crate::execute::{MergeOptions, MergeReport};
use crate::plan::{Action, Plan, Sources, TensorPlan};
use crate::recipe::ParamValue;
use evomerge_checkpoint::CheckpointWriter;
use evomerge_data::{DataSpec, Part};
use evomerge_datamerge::fisher::FisherKind;
use evomerge_datamerge::fisher::FisherMergeOptions;
use evomerge_datamerge::lm::{LmInput, LmOptions, LmTensor, merge_lms};
use evomerge_datamerge::regmean::GramScale;
use evomerge_datamerge::{Alignment, DataMethod, MergeInput, MethodOptions, merge_mlps};
use evomerge_models::{MLP_ARCHITECTURE, MlpWeights};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

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

    /// Make data set paths that exist absolute (`digits`, the built-in set, stays).
    pub(crate) fn make_absolute(&mut self) {
        let fix = |p: &mut String| {
            if p != "digits" && Path::new(p).exists() {
                *p = crate::plan::absolute(Path::new(p)).display().to_string();
            }
        };
        fix(&mut self.dataset);
        for o in self.models.iter_mut().flatten() {
            if let Some(d) = o.dataset.as_mut() {
                fix(d);
            }
        }
    }

    /// Make relative data set paths that exist next to the recipe point there.
    pub(crate) fn relative_to(&mut self, dir: &Path) {
        let fix = |p: &mut String| {
            if p != "digits" && Path::new(p).is_relative() && !Path::new(p).exists() {
                let joined = dir.join(&*p);
                if joined.exists() {
                    *p = joined.display().to_string();
                }
            }
        };
        fix(&mut self.dataset);
        for o in self.models.iter_mut().flatten() {
            if let Some(d) = o.dataset.as_mut() {
                fix(d);
            }
        }
    }
}

/// Whether `method` is one of the data-using methods.
pub fn is_data_method(method: &str) -> bool {
    DataMethod::from_name(method).is_some()
}

fn text<'a>(g: &'a BTreeMap<&'static str, ParamValue>, k: &str) -> &'a str {
    match g.get(k) {
        Some(ParamValue::Text(s)) => s,
        _ => "",
    }
}

fn num(g: &BTreeMap<&'static str, ParamValue>, k: &str, default: f64) -> f64 {
    g.get(k).and_then(ParamValue::as_f64).unwrap_or(default)
}

fn flag(g: &BTreeMap<&'static str, ParamValue>, k: &str, default: bool) -> bool {
    g.get(k).map(ParamValue::truthy).unwrap_or(default)
}

/// The typed options of a data method from its resolved parameters.
pub fn method_options(
    g: &BTreeMap<&'static str, ParamValue>,
    seed: u64,
) -> Result<MethodOptions, MergeError> {
    let d = MethodOptions::default();
    let mut o = d;
    o.fisher = text(g, "fisher")
        .parse::<FisherKind>()
        .map_err(MergeError::Recipe)?;
    o.fisher_merge.epsilon = num(g, "epsilon", d.fisher_merge.epsilon);
    o.fisher_merge.normalize = flag(g, "normalize", d.fisher_merge.normalize);
    o.regmean.alpha = num(g, "alpha", d.regmean.alpha);
    o.regmean.ridge = num(g, "ridge", d.regmean.ridge);
    o.regmean.scale = match text(g, "gram") {
        "" | "sum" => GramScale::Sum,
        "mean" => GramScale::Mean,
        other => {
            return Err(MergeError::Recipe(format!(
                "gram '{other}' is not one of sum, mean"
            )));
        }
    };
    o.regmean.average_head = flag(g, "average_head", false);
    o.alignment = text(g, "matching")
        .parse::<Alignment>()
        .map_err(MergeError::Recipe)?;
    o.t = num(g, "t", d.t);
    o.matching.max_iter = num(g, "max_iter", d.matching.max_iter as f64).max(1.0) as usize;
    o.matching.seed = seed;
    o.repair.include_output = flag(g, "include_output", false);
    Ok(o)
}

/// Check what planning can check: the method's need for data.
pub(crate) fn check_recipe(
    method: &str,
    data: Option<&DataSection>,
    g: &BTreeMap<&'static str, ParamValue>,
) -> Result<(), MergeError> {
    let Some(m) = DataMethod::from_name(method) else {
        return Ok(());
    };
    let opts = method_options(g, 0)?;
    let needs = match m {
        DataMethod::GitRebasin => matches!(opts.alignment, Alignment::Activation(_)),
        _ => true,
    };
    if needs && data.is_none() {
        return Err(MergeError::Recipe(format!(
            "{method} needs data: add a `data` section (e.g. `[data]` with `dataset = \"digits\"`, or `data: {{dataset: digits}}` in YAML)"
        )));
    }
    Ok(())
}

/// Run a data-using method and write the merged checkpoint (atomically).
pub(crate) fn merge_to_disk(
    plan: &Plan,
    sources: &Sources,
    out_dir: &Path,
    options: &MergeOptions,
    extra_files: &[(&str, Vec<u8>)],
) -> Result<MergeReport, MergeError> {
    let start = Instant::now();
    let name = plan.method.name;
    let method = DataMethod::from_name(name)
        .ok_or_else(|| MergeError::Recipe(format!("{name} is not a data-using method")))?;
    let first = plan
        .tensors
        .iter()
        .find(|t| t.action == Action::Merge)
        .ok_or_else(|| MergeError::Recipe(format!("{name}: the models have no float tensors")))?;
    let opts = method_options(&first.global, options.seed)?;
    let is_mlp = |i: usize| sources.models[i].checkpoint.architecture() == Some(MLP_ARCHITECTURE);
    let mlps = first.inputs.iter().filter(|inp| is_mlp(inp.model)).count();
    if mlps != 0 && mlps != first.inputs.len() {
        return Err(MergeError::Recipe(format!(
            "{name}: the models mix MLP classifiers ({MLP_ARCHITECTURE}) and other architectures; merge models of one architecture"
        )));
    }
    let writer = if mlps == 0 {
        merge_lms_to(plan, sources, out_dir, options, method, first)?
    } else {
        merge_mlps_to(plan, sources, out_dir, options, method, first, &opts)?
    };
    crate::execute::finish(plan, sources, writer, extra_files, start)
}

/// Input `j`'s data (rows or texts, as `resolve` loads them), if the recipe has a data section.
fn data_for<T>(
    plan: &Plan,
    j: usize,
    model: &str,
    resolve: impl Fn(&DataSpec) -> Result<T, evomerge_data::DataError>,
) -> Result<Option<T>, MergeError> {
    plan.data
        .as_ref()
        .map(|d| {
            resolve(&d.spec_for(j))
                .map_err(|e| MergeError::Recipe(format!("data for model {model}: {e}")))
        })
        .transpose()
}

fn check_finite(name: &str, values: &[f32]) -> Result<(), MergeError> {
    match values.iter().find(|v| !v.is_finite()) {
        Some(bad) => Err(MergeError::Kernel {
            tensor: name.to_string(),
            message: format!("the merged values contain {bad}"),
        }),
        None => Ok(()),
    }
}

/// MLP classifiers: whole models through `merge_mlps`, then written tensor by tensor.
fn merge_mlps_to(
    plan: &Plan,
    sources: &Sources,
    out_dir: &Path,
    options: &MergeOptions,
    method: DataMethod,
    first: &TensorPlan,
    opts: &MethodOptions,
) -> Result<CheckpointWriter, MergeError> {
    let name = method.name();
    let mut inputs = Vec::new();
    for (j, inp) in first.inputs.iter().enumerate() {
        let src = &sources.models[inp.model];
        let weights =
            MlpWeights::from_checkpoint(&src.checkpoint).map_err(|e| MergeError::Model {
                model: src.name.clone(),
                message: e.to_string(),
            })?;
        let data = data_for(plan, j, &src.name, |d| d.resolve(None))?;
        inputs.push(MergeInput {
            name: src.name.clone(),
            weights,
            coefficient: first.input_f32(j, "weight").unwrap_or(1.0) as f64,
            data,
        });
    }
    let merged = merge_mlps(method, &inputs, opts)
        .map_err(|e| MergeError::Recipe(format!("{name}: {e}")))?;
    let named = merged.named_tensors();
    let writer = crate::execute::create_writer(plan, out_dir, options)?;
    for tp in &plan.tensors {
        let (_, _, values) = named
            .iter()
            .find(|(n, _, _)| *n == tp.name)
            .ok_or_else(|| MergeError::Kernel {
                tensor: tp.name.clone(),
                message: format!("{name} produced no such tensor"),
            })?;
        check_finite(&tp.name, values)?;
        writer.write_f32(&tp.name, values)?;
    }
    Ok(writer)
}

/// Llama-family language models: statistics from evomerge's decoder on each model's text
/// data, merged tensor by tensor (`evomerge_datamerge::lm`).
fn merge_lms_to(
    plan: &Plan,
    sources: &Sources,
    out_dir: &Path,
    options: &MergeOptions,
    method: DataMethod,
    first: &TensorPlan,
) -> Result<CheckpointWriter, MergeError> {
    let name = method.name();
    let g = &first.global;
    let d = MethodOptions::default();
    let lm_opts = LmOptions {
        fisher: match text(g, "fisher") {
            "" | "auto" => FisherKind::Empirical,
            other => other.parse::<FisherKind>().map_err(MergeError::Recipe)?,
        },
        fisher_merge: FisherMergeOptions {
            epsilon: num(g, "epsilon", d.fisher_merge.epsilon),
            normalize: flag(g, "normalize", d.fisher_merge.normalize),
        },
        regmean: method_options(g, options.seed)?.regmean,
        ..LmOptions::default()
    };
    let mut inputs = Vec::new();
    for (j, inp) in first.inputs.iter().enumerate() {
        let src = &sources.models[inp.model];
        let texts = data_for(plan, j, &src.name, |d| d.resolve_texts(None))?;
        inputs.push(LmInput {
            name: src.name.clone(),
            dir: src.checkpoint.dir().to_path_buf(),
            coefficient: first.input_f32(j, "weight").unwrap_or(1.0) as f64,
            texts,
        });
    }
    let mut tensors = Vec::new();
    let mut copies = Vec::new();
    for tp in &plan.tensors {
        if tp.inputs.len() != inputs.len() || tp.action == Action::Copy {
            copies.push(tp);
            continue;
        }
        tensors.push(LmTensor {
            name: tp.name.clone(),
            shape: tp.shape.clone(),
            inputs: tp.inputs.iter().map(|i| i.tensor.clone()).collect(),
        });
    }
    let writer = crate::execute::create_writer(plan, out_dir, options)?;
    for tp in copies {
        let i = &tp.inputs[0];
        let c = &sources.models[i.model].checkpoint;
        writer.write_bytes(&tp.name, c.bytes(&i.tensor)?)?;
    }
    let mut failure = None;
    merge_lms(method, &inputs, &tensors, &lm_opts, |t, values| {
        let r = check_finite(t, &values).and_then(|_| Ok(writer.write_f32(t, &values)?));
        r.map_err(|e| {
            let msg = e.to_string();
            failure = Some(e);
            evomerge_datamerge::DataMergeError::Invalid(msg)
        })
    })
    .map_err(|e| {
        failure
            .take()
            .unwrap_or_else(|| MergeError::Recipe(format!("{name}: {e}")))
    })?;
    Ok(writer)
}
