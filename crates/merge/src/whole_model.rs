//! The whole-model methods (the data-using ones: `fisher`, `regmean`, `git_rebasin`, `repair`,
//! `greedy_soup`): the planner resolves their names, dtypes and parameters like any other
//! method's, and [`merge_to_disk`] hands the whole models to `evomerge-datamerge` (which
//! registers these methods, parses their typed parameters and runs the models on data to get
//! Fisher information, Gram matrices, activations or validation accuracy), then writes what it
//! returns under the plan's tensor names and dtypes. The recipe's `data` section is
//! [`evomerge_datamerge::DataSection`].

use crate::MergeError;
use crate::output::{MergeOptions, MergeReport, create_writer, finish};
use crate::plan::{Action, Plan, Sources, TensorPlan};
use crate::recipe::ParamValue;
use evomerge_checkpoint::CheckpointWriter;
use evomerge_data::DataSpec;
use evomerge_datamerge::lm::{LmInput, LmTensor, merge_lms};
use evomerge_datamerge::{DataMethod, DataParams, MergeInput, MethodOptions, merge_mlps};
use evomerge_models::{MLP_ARCHITECTURE, MlpWeights};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Whether `method` is one of the data-using methods.
pub fn is_data_method(method: &str) -> bool {
    DataMethod::from_name(method).is_some()
}

/// The planner's resolved global parameters as the object `evomerge-datamerge` reads.
pub(crate) fn params_value(g: &BTreeMap<&'static str, ParamValue>) -> serde_json::Value {
    serde_json::to_value(g).expect("parameter values serialize")
}

/// The typed parameters of a data method from its resolved parameters.
fn data_params(g: &BTreeMap<&'static str, ParamValue>) -> Result<DataParams, MergeError> {
    DataParams::from_value(params_value(g)).map_err(MergeError::Recipe)
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
    let params = data_params(&first.global)?;
    let is_mlp = |i: usize| sources.models[i].checkpoint.architecture() == Some(MLP_ARCHITECTURE);
    let mlps = first.inputs.iter().filter(|inp| is_mlp(inp.model)).count();
    if mlps != 0 && mlps != first.inputs.len() {
        return Err(MergeError::Recipe(format!(
            "{name}: the models mix MLP classifiers ({MLP_ARCHITECTURE}) and other architectures; merge models of one architecture"
        )));
    }
    let writer = if mlps == 0 {
        merge_lms_to(plan, sources, out_dir, options, method, first, &params)?
    } else {
        merge_mlps_to(
            plan,
            sources,
            out_dir,
            options,
            method,
            first,
            &params.mlp_options(options.seed),
        )?
    };
    finish(plan, sources, writer, extra_files, start)
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
    let writer = create_writer(plan, out_dir, options)?;
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
    params: &DataParams,
) -> Result<CheckpointWriter, MergeError> {
    let name = method.name();
    let lm_opts = params.lm_options(options.seed);
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
    let writer = create_writer(plan, out_dir, options)?;
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
