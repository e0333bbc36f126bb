//! One entry point for every data-using method, by name: what `evomerge merge` runs.

use crate::fisher::{FisherKind, FisherMergeOptions, diagonal_fisher, fisher_merge};
use crate::rebasin::{ActivationCost, MatchOptions, activation_matching, apply, weight_matching};
use crate::regmean::{RegMeanOptions, grams, regmean_merge};
use crate::repair::{RepairOptions, repair};
use crate::soup::greedy_soup;
use crate::{DataMergeError, Result, check_same_architecture};
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;

/// The data-using and permutation methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMethod {
    /// Fisher-weighted average.
    Fisher,
    /// RegMean.
    RegMean,
    /// Align model B to model A (weight or activation matching), then interpolate at `t`.
    GitRebasin,
    /// Align as `git_rebasin`, interpolate at `t`, then REPAIR the statistics.
    Repair,
    /// Greedy soup on the data (a validation split).
    GreedySoup,
}

impl DataMethod {
    /// The method of a registry name ([`crate::registry::METHODS`]).
    pub fn from_name(name: &str) -> Option<DataMethod> {
        crate::registry::METHODS
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.method)
    }

    /// The registry name.
    pub fn name(self) -> &'static str {
        crate::registry::METHODS
            .iter()
            .find(|m| m.method == self)
            .map(|m| m.name)
            .expect("every method is listed")
    }
}

/// How two models are aligned before interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alignment {
    /// Weight matching (no data).
    #[default]
    Weight,
    /// Activation matching on the data.
    Activation(ActivationCost),
    /// No alignment (plain interpolation).
    None,
}

impl std::str::FromStr for Alignment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "weight" | "weights" | "" => Ok(Alignment::Weight),
            "activation" | "correlation" => Ok(Alignment::Activation(ActivationCost::Correlation)),
            "cross_moment" | "activation_moment" => {
                Ok(Alignment::Activation(ActivationCost::CrossMoment))
            }
            "none" => Ok(Alignment::None),
            other => Err(format!(
                "matching '{other}' is not one of weight, activation (correlation), cross_moment, none"
            )),
        }
    }
}

/// One model going into a merge.
#[derive(Debug, Clone)]
pub struct MergeInput {
    /// The name the recipe uses, for messages.
    pub name: String,
    pub weights: MlpWeights,
    /// The model's coefficient (`weight` in the recipe).
    pub coefficient: f64,
    /// This model's data (its own training distribution for Fisher and RegMean; the shared
    /// calibration or validation rows for the others).
    pub data: Option<Dataset>,
}

/// Every option of every method, with the defaults of the reference implementations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodOptions {
    pub fisher: FisherKind,
    pub fisher_merge: FisherMergeOptions,
    pub regmean: RegMeanOptions,
    pub alignment: Alignment,
    pub matching: MatchOptions,
    /// Interpolation position toward model B for `git_rebasin` and `repair`.
    pub t: f64,
    pub repair: RepairOptions,
    /// Rows per forward/backward pass when collecting statistics.
    pub batch_size: usize,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            fisher: FisherKind::Exact,
            fisher_merge: FisherMergeOptions::default(),
            regmean: RegMeanOptions::default(),
            alignment: Alignment::Weight,
            matching: MatchOptions::default(),
            t: 0.5,
            repair: RepairOptions::default(),
            batch_size: 256,
        }
    }
}

fn data_of(method: DataMethod, input: &MergeInput) -> Result<&Dataset> {
    let d = input.data.as_ref().ok_or_else(|| {
        DataMergeError::Invalid(format!(
            "{} needs data for model {}: add a `data` section to the recipe (e.g. dataset = \"digits\")",
            method.name(),
            input.name
        ))
    })?;
    d.expect_features(input.weights.n_inputs())?;
    Ok(d)
}

fn two(method: DataMethod, inputs: &[MergeInput]) -> Result<(&MergeInput, &MergeInput)> {
    match inputs {
        [a, b] => Ok((a, b)),
        _ => Err(DataMergeError::Invalid(format!(
            "{} merges two models (A, then B aligned to A); the recipe lists {}",
            method.name(),
            inputs.len()
        ))),
    }
}

fn align(
    method: DataMethod,
    a: &MergeInput,
    b: &MergeInput,
    options: &MethodOptions,
) -> Result<MlpWeights> {
    Ok(match options.alignment {
        Alignment::Weight => {
            let m = weight_matching(&a.weights, &b.weights, &options.matching)?;
            apply(&b.weights, &m.permutation)
        }
        Alignment::Activation(cost) => {
            let p = activation_matching(&a.weights, &b.weights, data_of(method, a)?, cost)?;
            apply(&b.weights, &p)
        }
        Alignment::None => b.weights.clone(),
    })
}

/// Run a data-using method over whole MLPs. All models must have the same layer sizes.
pub fn merge_mlps(
    method: DataMethod,
    inputs: &[MergeInput],
    options: &MethodOptions,
) -> Result<MlpWeights> {
    if inputs.is_empty() {
        return Err(DataMergeError::Invalid(format!(
            "{}: no models to merge",
            method.name()
        )));
    }
    let models: Vec<&MlpWeights> = inputs.iter().map(|i| &i.weights).collect();
    let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    check_same_architecture(&models, &names)?;
    let coefs: Vec<f64> = inputs.iter().map(|i| i.coefficient).collect();
    match method {
        DataMethod::Fisher => {
            let fishers = inputs
                .iter()
                .map(|i| {
                    diagonal_fisher(
                        &i.weights,
                        data_of(method, i)?,
                        options.fisher,
                        options.batch_size,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            fisher_merge(&models, &fishers, &coefs, &options.fisher_merge)
        }
        DataMethod::RegMean => {
            let gs = inputs
                .iter()
                .map(|i| grams(&i.weights, data_of(method, i)?, options.batch_size))
                .collect::<Result<Vec<_>>>()?;
            regmean_merge(&models, &gs, &coefs, &options.regmean)
        }
        DataMethod::GitRebasin => {
            let (a, b) = two(method, inputs)?;
            let b_aligned = align(method, a, b, options)?;
            if !(0.0..=1.0).contains(&options.t) {
                return Err(DataMergeError::Invalid(format!(
                    "git_rebasin: t must be in [0, 1], got {}",
                    options.t
                )));
            }
            Ok(MlpWeights::lerp(&a.weights, &b_aligned, options.t as f32))
        }
        DataMethod::Repair => {
            let (a, b) = two(method, inputs)?;
            let data = data_of(method, a)?;
            let b_aligned = align(method, a, b, options)?;
            Ok(repair(&a.weights, &b_aligned, options.t, data, &options.repair)?.0)
        }
        DataMethod::GreedySoup => {
            let val = data_of(method, &inputs[0])?;
            Ok(greedy_soup(&models, val)?.soup)
        }
    }
}
