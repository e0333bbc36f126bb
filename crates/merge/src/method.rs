//! The method registry's types: what a merge method declares about itself (name, parameters
//! with defaults, bounds and which a search may evolve, its use of a base, how many inputs it
//! takes, whether it works per tensor or on the whole model) and the work it runs on one output
//! tensor. The methods themselves are one file each in `crate::methods`, listed once in
//! `methods::REGISTRY`; the planner, the executor, the genome, the runner and the test loops
//! read them from [`registry`].

use crate::MergeError;
use crate::recipe::ParamValue;
use evomerge_kernels::fused::{HostOut, HostTensor};
use evomerge_kernels::{Consensus, KernelError, Rescale, T2, tensor_from_vec, values_of};
use std::collections::BTreeMap;

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

/// How many inputs besides the base a method takes on one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// Any number.
    Any,
    /// Exactly this many; the text says what the method needs, for the error message.
    Exactly(usize, &'static str),
    /// At least this many, except that a tensor with a single input is copied through.
    AtLeast(usize, &'static str),
}

/// Builds a method's work on one output tensor: the merged tensor from its inputs.
pub type WorkFn = fn(&TensorWork) -> Result<T2, MergeError>;

/// A method's fused CPU work on one output tensor (`evomerge_kernels::fused`): the inputs as
/// stored bytes (or host values), the merged values encoded straight into `out`.
pub type HostFn = fn(&HostWork, HostOut) -> Result<(), MergeError>;

/// A method-specific check of the resolved parameters of one tensor (run while planning);
/// the second argument names input `j`'s model for the message.
pub type CheckFn = fn(&Resolved, &dyn Fn(usize) -> String) -> Result<(), String>;

/// Whether a method works tensor by tensor or needs the whole models.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// One output tensor from the same-named input tensors, by this work.
    PerTensor(WorkFn),
    /// The method runs the models (on data: `crate::whole_model`); the per-tensor executor hands over.
    WholeModel,
}

/// A parameter a method reads: its default (`None`: required), the range a search may move it
/// in, whether a parameter-space genome evolves it, the words it accepts besides numbers and
/// booleans, and the value the registry-driven tests use.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub default: Option<ParamValue>,
    pub bounds: Option<[f64; 2]>,
    pub evolve: bool,
    pub choices: &'static [&'static str],
    pub example: Option<f64>,
}

impl ParamSpec {
    const fn new(name: &'static str, default: Option<ParamValue>) -> ParamSpec {
        ParamSpec {
            name,
            default,
            bounds: None,
            evolve: false,
            choices: &[],
            example: None,
        }
    }

    /// A search may evolve this parameter within `bounds`.
    pub const fn evolvable(mut self, bounds: [f64; 2]) -> ParamSpec {
        self.bounds = Some(bounds);
        self.evolve = true;
        self
    }

    /// The range the parameter's values lie in (not evolved).
    pub const fn within(mut self, bounds: [f64; 2]) -> ParamSpec {
        self.bounds = Some(bounds);
        self
    }

    /// The words the parameter accepts besides numbers and booleans.
    pub const fn words(mut self, choices: &'static [&'static str]) -> ParamSpec {
        self.choices = choices;
        self
    }

    /// The value registry-driven tests use (default: the default, else the middle of the bounds).
    pub const fn example(mut self, v: f64) -> ParamSpec {
        self.example = Some(v);
        self
    }

    /// The value registry-driven tests and examples use for this parameter.
    pub fn example_value(&self) -> ParamValue {
        if let Some(v) = self.example {
            return ParamValue::Number(v);
        }
        match (&self.default, self.bounds) {
            (Some(ParamValue::Text(s)), _) if s.is_empty() => ParamValue::Number(1.0),
            (Some(v), _) => v.clone(),
            (None, Some([lo, hi])) => ParamValue::Number((lo + hi) / 2.0),
            (None, None) => ParamValue::Number(0.5),
        }
    }
}

/// A number with a default.
pub const fn num(name: &'static str, v: f64) -> ParamSpec {
    ParamSpec::new(name, Some(ParamValue::Number(v)))
}

/// A boolean with a default.
pub const fn flag(name: &'static str, v: bool) -> ParamSpec {
    ParamSpec::new(name, Some(ParamValue::Bool(v)))
}

/// A parameter without a default: the recipe must set it.
pub const fn required(name: &'static str) -> ParamSpec {
    ParamSpec::new(name, None)
}

/// An optional parameter without a default (e.g. passthrough's `scale`).
pub const fn optional(name: &'static str) -> ParamSpec {
    ParamSpec::new(name, Some(ParamValue::Text(String::new())))
}

/// A parameter whose value is a word (e.g. `fisher = "exact"`).
pub fn word(name: &'static str, v: &str, choices: &'static [&'static str]) -> ParamSpec {
    ParamSpec::new(name, Some(ParamValue::Text(v.to_string()))).words(choices)
}

/// A hand-checkable case a method carries: inputs, parameters and the expected output, computed
/// from the method's formula (not by running it). The registry-driven golden test runs every
/// method's cases.
#[derive(Debug, Clone, Copy)]
pub struct Golden {
    /// The base model's values (for methods that use one).
    pub base: Option<&'static [f32]>,
    /// The other models' values, all of one length.
    pub models: &'static [&'static [f32]],
    /// Per-model parameters: name and one value per model of `models`.
    pub per_model: &'static [(&'static str, &'static [f64])],
    /// Global parameters.
    pub global: &'static [(&'static str, f64)],
    /// Rows of the 2-D view (1 for a vector).
    pub rows: usize,
    pub want: &'static [f32],
    pub tol: f32,
}

/// One registered merge method.
#[derive(Debug, Clone)]
pub struct MethodSpec {
    pub name: &'static str,
    /// One-line description for `evomerge methods` and error messages.
    pub summary: &'static str,
    pub base: BaseUse,
    pub arity: Arity,
    /// Whether a tensor with a single input still runs the method (passthrough scales it);
    /// otherwise the lone input is copied.
    pub runs_on_one_input: bool,
    pub scope: Scope,
    /// The fused CPU kernel of a per-element method, run instead of `scope`'s burn work when
    /// merging on the CPU (the burn work stays the GPU path; a test checks they agree).
    pub host: Option<HostFn>,
    /// Parameters resolved per input model and tensor (e.g. `weight`, `density`).
    pub tensor_params: Vec<ParamSpec>,
    /// Parameters resolved per output tensor (e.g. `t`, `normalize`).
    pub global_params: Vec<ParamSpec>,
    /// Checks beyond the generic ones (DELLA's density/epsilon window).
    pub check: Option<CheckFn>,
    /// Hand-checked cases (every per-tensor method has at least one).
    pub goldens: &'static [Golden],
}

impl MethodSpec {
    /// A per-tensor method with no parameters yet, taking any number of inputs.
    pub fn per_tensor(
        name: &'static str,
        base: BaseUse,
        work: WorkFn,
        summary: &'static str,
    ) -> MethodSpec {
        MethodSpec {
            name,
            summary,
            base,
            arity: Arity::Any,
            runs_on_one_input: false,
            scope: Scope::PerTensor(work),
            host: None,
            tensor_params: Vec::new(),
            global_params: Vec::new(),
            check: None,
            goldens: &[],
        }
    }

    /// A whole-model method that runs the models on data (see `crate::whole_model`): per-model
    /// `weight` (default 1), no base.
    pub fn whole_model(
        name: &'static str,
        global_params: Vec<ParamSpec>,
        summary: &'static str,
    ) -> MethodSpec {
        MethodSpec {
            name,
            summary,
            base: BaseUse::Ignored,
            arity: Arity::Any,
            runs_on_one_input: false,
            scope: Scope::WholeModel,
            host: None,
            tensor_params: vec![num("weight", 1.0)],
            global_params,
            check: None,
            goldens: &[],
        }
    }

    /// Whether this method runs the whole models (on data) rather than tensor by tensor.
    pub fn is_whole_model(&self) -> bool {
        matches!(self.scope, Scope::WholeModel)
    }

    /// Every parameter it reads, per-model ones first.
    pub fn params(&self) -> impl Iterator<Item = &ParamSpec> {
        self.tensor_params.iter().chain(&self.global_params)
    }

    /// The per-model parameters a parameter-space search may evolve.
    pub fn evolvable(&self) -> impl Iterator<Item = &ParamSpec> {
        self.tensor_params.iter().filter(|p| p.evolve)
    }

    /// Run this method's work on one output tensor's inputs (`seed` drives random masks).
    pub fn run(&self, work: &TensorWork) -> Result<T2, MergeError> {
        match self.scope {
            Scope::PerTensor(f) => f(work),
            Scope::WholeModel => Err(MergeError::Recipe(format!(
                "{} is a whole-model method (it runs the models on data), not a per-tensor one; run it with merge_to_disk (`evomerge merge`)",
                self.name
            ))),
        }
    }
}

/// What a method's fused CPU work gets for one output tensor.
pub struct HostWork<'a> {
    /// The output tensor's name (random masks derive from it).
    pub tensor: &'a str,
    pub params: Resolved<'a>,
    /// The input tensors on the host, in plan order.
    pub inputs: Vec<HostTensor<'a>>,
    /// The seed of every random mask.
    pub seed: u64,
    /// The row length of the tensor's 2-D view ([`evomerge_kernels::view_shape`]): DELLA
    /// ranks within rows.
    pub cols: usize,
}

impl HostWork<'_> {
    /// A kernel error as a merge error naming this tensor.
    pub fn kernel_err(&self, e: KernelError) -> MergeError {
        MergeError::Kernel {
            tensor: self.tensor.to_string(),
            message: e.to_string(),
        }
    }
}

/// The resolved parameters of one output tensor, as the planner filled them in.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// Index of the base among the inputs, for methods that use one.
    pub base: Option<usize>,
    pub global: &'a BTreeMap<&'static str, ParamValue>,
    /// One map per input, in input order (a base may lack required ones).
    pub per_input: &'a [BTreeMap<&'static str, ParamValue>],
}

impl Resolved<'_> {
    /// A global parameter as a number (defaults are always filled in when planned).
    pub fn global_f32(&self, name: &str) -> f32 {
        self.global
            .get(name)
            .and_then(ParamValue::as_f64)
            .unwrap_or(0.0) as f32
    }

    /// A global parameter's truthiness.
    pub fn global_flag(&self, name: &str) -> bool {
        self.global.get(name).is_some_and(ParamValue::truthy)
    }

    /// A per-input parameter as a number.
    pub fn input_f32(&self, input: usize, name: &str) -> Option<f32> {
        self.per_input[input]
            .get(name)
            .and_then(ParamValue::as_f64)
            .map(|x| x as f32)
    }

    /// A per-input parameter as the f64 the recipe holds (mergekit's Python float): what
    /// counts such as TIES' `k = int(density * numel)` must be computed from.
    pub fn input_f64(&self, input: usize, name: &str) -> Option<f64> {
        self.per_input[input].get(name).and_then(ParamValue::as_f64)
    }

    /// Input `j`'s `weight` (1 when it has none).
    pub fn weight(&self, j: usize) -> f32 {
        self.input_f32(j, "weight").unwrap_or(1.0)
    }

    /// The inputs other than the base, in order.
    pub fn others(&self) -> Vec<usize> {
        (0..self.per_input.len())
            .filter(|j| Some(*j) != self.base)
            .collect()
    }
}

/// What a method's work gets for one output tensor.
pub struct TensorWork<'a> {
    /// The output tensor's name (random masks derive from it).
    pub tensor: &'a str,
    pub params: Resolved<'a>,
    /// The input tensors on the device, in plan order.
    pub inputs: Vec<T2>,
    /// The seed of every random mask.
    pub seed: u64,
}

impl TensorWork<'_> {
    /// The base input, for methods that use one.
    pub fn base(&self) -> Option<T2> {
        self.params.base.map(|b| self.inputs[b].clone())
    }

    /// The inputs other than the base.
    pub fn other_inputs(&self) -> Vec<T2> {
        self.params
            .others()
            .into_iter()
            .map(|j| self.inputs[j].clone())
            .collect()
    }

    /// The base's values and each other input's task vector (input minus base) on the host,
    /// for the methods whose math runs there.
    pub fn host_task_vectors(&self) -> (Vec<f32>, Vec<Vec<f32>>) {
        let (base, others) = self.host_inputs();
        let tvs = others
            .into_iter()
            .map(|x| x.into_iter().zip(&base).map(|(a, b)| a - b).collect())
            .collect();
        (base, tvs)
    }

    /// The base's values and the other inputs' values on the host.
    pub fn host_inputs(&self) -> (Vec<f32>, Vec<Vec<f32>>) {
        let base = values_of(self.base().expect("the method requires a base"));
        (
            base,
            self.other_inputs().into_iter().map(values_of).collect(),
        )
    }

    /// Host values as a tensor shaped like the inputs, on their device.
    pub fn from_host(&self, values: Vec<f32>) -> T2 {
        let x = &self.inputs[0];
        tensor_from_vec(values, &x.dims(), &x.device())
    }

    /// A kernel error as a merge error naming this tensor.
    pub fn kernel_err(&self, e: KernelError) -> MergeError {
        MergeError::Kernel {
            tensor: self.tensor.to_string(),
            message: e.to_string(),
        }
    }
}

/// Every method evomerge implements, in the order `evomerge methods` lists them (built once).
pub fn registry() -> &'static [MethodSpec] {
    &crate::methods::REGISTRY
}

/// Parameter names some mergekit method uses but that no evomerge method reads; a recipe may
/// carry them (they are ignored with a warning), whereas any other name is a typo.
pub const FOREIGN_PARAMS: &[&str] = &["select_topk", "r", "alpha", "residual_weight"];

/// Look a method up by name; an unknown name is an error suggesting the nearest one.
pub fn lookup(name: &str) -> Result<&'static MethodSpec, String> {
    let all = registry();
    if let Some(m) = all.iter().find(|m| m.name == name) {
        return Ok(m);
    }
    let names: Vec<&str> = all.iter().map(|m| m.name).collect();
    let hint = nearest(name, &names)
        .map(|n| format!(" — did you mean '{n}'?"))
        .unwrap_or_default();
    Err(format!(
        "unknown merge method '{name}'{hint}; available: {}",
        names.join(", ")
    ))
}

/// Every parameter name any registered method reads.
pub fn known_params() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = registry()
        .iter()
        .flat_map(|m| m.params().map(|p| p.name))
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
        // mergekit 0.1.5's five methods evomerge lacked are registered now
        for m in ["sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl"] {
            assert!(lookup(m).is_ok(), "{m}");
        }
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
