//! Recipe -> plan: for every output tensor, which input tensors of which models, which method,
//! and every parameter resolved (gradients, filters, precedence, defaults). Planning reads only
//! checkpoint headers, checks everything a merge could trip over, and fails before any output
//! is written.

use crate::MergeError;
use crate::method::{
    self, Arity, BaseUse, FOREIGN_PARAMS, MethodSpec, Resolved, consensus_mode, known_params,
    nearest, rescale_mode,
};
use crate::recipe::{InputModel, ModelRef, OutputSlice, ParamValue, Params, Recipe, SliceSource};
use evomerge_checkpoint::{Checkpoint, Dtype, TensorRole, rename_layer};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One model a recipe refers to, opened.
#[derive(Debug)]
pub struct SourceModel {
    /// The reference as written in the recipe.
    pub name: String,
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
}

/// The models of a recipe, opened once (memory maps; nothing is read yet).
#[derive(Debug, Default)]
pub struct Sources {
    pub models: Vec<SourceModel>,
}

impl Sources {
    /// Open every model the recipe names. Relative paths are tried against the working
    /// directory, then against `recipe_dir` (the folder of the recipe file).
    pub fn open(recipe: &Recipe, recipe_dir: Option<&Path>) -> Result<Sources, MergeError> {
        let mut sources = Sources::default();
        for r in referenced_models(recipe)? {
            sources.add(&r, recipe_dir)?;
        }
        Ok(sources)
    }

    fn add(&mut self, r: &ModelRef, recipe_dir: Option<&Path>) -> Result<usize, MergeError> {
        if let Some(i) = self.index_of(r.name()) {
            return Ok(i);
        }
        let raw = r.local_path()?;
        let mut tried = vec![PathBuf::from(&raw)];
        if let Some(dir) = recipe_dir
            && Path::new(&raw).is_relative()
        {
            tried.push(dir.join(&raw));
        }
        let path = tried.iter().find(|p| p.is_dir()).cloned().ok_or_else(|| {
            let looked: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            let hub = if !raw.starts_with('.') && !raw.starts_with('/') && raw.matches('/').count() == 1 {
                " (evomerge reads local folders only; download hub models first, e.g. `huggingface-cli download ORG/NAME --local-dir DIR`)"
            } else {
                ""
            };
            MergeError::Model {
                model: raw.clone(),
                message: format!("no model folder at {}{hub}", looked.join(" or ")),
            }
        })?;
        let checkpoint = Checkpoint::open(&path)?;
        self.models.push(SourceModel {
            name: r.name().to_string(),
            path,
            checkpoint,
        });
        Ok(self.models.len() - 1)
    }

    /// `recipe` (the one these sources were opened for) with every model reference, and every
    /// data set path, made absolute: the folders these sources were actually read from. This is
    /// the copy a merged folder keeps (`mergekit_config.yml`), so it merges again from any
    /// working directory, whereas relative paths only worked from where the merge was run.
    pub fn absolute_recipe(&self, recipe: &Recipe) -> Recipe {
        let mut r = recipe.map_models(&|name| {
            let m = self.models.iter().find(|m| m.name == name)?;
            Some(absolute(&m.path).display().to_string())
        });
        if let Some(d) = r.data.as_mut() {
            d.make_absolute();
        }
        r
    }

    /// The index of a model by the name the recipe uses.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    fn require(&self, r: &ModelRef) -> usize {
        self.index_of(r.name())
            .expect("every referenced model was opened")
    }
}

/// `path` made absolute, symbolic links resolved where it exists.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Every distinct model reference of a recipe, base first.
pub fn referenced_models(recipe: &Recipe) -> Result<Vec<ModelRef>, MergeError> {
    let mut out: Vec<ModelRef> = Vec::new();
    let mut push = |r: &ModelRef| {
        if !out.iter().any(|o| o.name() == r.name()) {
            out.push(r.clone());
        }
    };
    if let Some(b) = &recipe.base_model {
        push(b);
    }
    let (models, slices, _) = recipe_body(recipe)?;
    for m in models.into_iter().flatten() {
        push(&m.model);
    }
    for s in slices.into_iter().flatten() {
        if let Some(b) = &s.base_model {
            push(b);
        }
        for src in &s.sources {
            push(&src.model);
        }
    }
    Ok(out)
}

/// The recipe's models/slices and module-level parameters, through a single `modules:` entry.
type Body<'a> = (
    Option<&'a Vec<InputModel>>,
    Option<&'a Vec<OutputSlice>>,
    Option<&'a Params>,
);

fn recipe_body(recipe: &Recipe) -> Result<Body<'_>, MergeError> {
    let (models, slices, module_params) = match &recipe.modules {
        Some(modules) => {
            if recipe.models.is_some() || recipe.slices.is_some() {
                return Err(MergeError::Recipe(
                    "give either `modules`, `models` or `slices`, not several".into(),
                ));
            }
            if modules.len() != 1 {
                return Err(MergeError::Recipe(format!(
                    "`modules` lists {} modules ({}); evomerge merges decoder-only models and supports one module",
                    modules.len(),
                    modules.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            let m = modules.values().next().expect("one module");
            (m.models.as_ref(), m.slices.as_ref(), Some(&m.parameters))
        }
        None => (recipe.models.as_ref(), recipe.slices.as_ref(), None),
    };
    match (models, slices) {
        (Some(_), Some(_)) => Err(MergeError::Recipe(
            "give either `models` or `slices`, not both".into(),
        )),
        (None, None) => Err(MergeError::Recipe(
            "the recipe has no `models` (or `slices`) to merge; add at least one model".into(),
        )),
        (Some(m), None) if m.is_empty() => Err(MergeError::Recipe(
            "the `models` list is empty; add the models to merge".into(),
        )),
        (None, Some(s)) if s.is_empty() => Err(MergeError::Recipe(
            "the `slices` list is empty; add at least one slice".into(),
        )),
        _ => Ok((models, slices, module_params)),
    }
}

/// What to do for one output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run the method over the inputs.
    Merge,
    /// Copy the first input's bytes (non-float tensors such as integer buffers).
    Copy,
}

/// One input of an output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    /// Index into [`Sources::models`].
    pub model: usize,
    /// The stored tensor name in that model (an LM head of a tied model is its embedding).
    pub tensor: String,
}

/// Everything needed to produce one output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub action: Action,
    pub inputs: Vec<PlanInput>,
    /// Index into `inputs` of the base model, for methods that use one.
    pub base: Option<usize>,
    /// Position `t` inside the output slice (0 for the embeddings, the final norm and the head,
    /// as mergekit 0.1.5 plans them).
    pub t: f64,
    /// Method parameters resolved for this output tensor.
    pub global: BTreeMap<&'static str, ParamValue>,
    /// Per-input parameters, in input order (a base may lack required ones).
    pub per_input: Vec<BTreeMap<&'static str, ParamValue>>,
}

impl TensorPlan {
    /// The resolved parameters, as a method's work and check read them.
    pub fn resolved(&self) -> Resolved<'_> {
        Resolved {
            base: self.base,
            global: &self.global,
            per_input: &self.per_input,
        }
    }

    /// A global parameter as a number (defaults are always filled in when planned).
    pub fn global_f32(&self, name: &str) -> f32 {
        self.resolved().global_f32(name)
    }

    /// A global parameter's truthiness.
    pub fn global_flag(&self, name: &str) -> bool {
        self.resolved().global_flag(name)
    }

    /// A per-input parameter as a number.
    pub fn input_f32(&self, input: usize, name: &str) -> Option<f32> {
        self.resolved().input_f32(input, name)
    }

    /// A per-input parameter as the f64 the recipe holds (mergekit's Python float): what
    /// counts such as TIES' `k = int(density * numel)` must be computed from.
    pub fn input_f64(&self, input: usize, name: &str) -> Option<f64> {
        self.per_input[input].get(name).and_then(ParamValue::as_f64)
    }
}

/// A complete merge plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub method: &'static MethodSpec,
    pub tensors: Vec<TensorPlan>,
    /// The output `config.json`.
    pub config: Option<Value>,
    pub num_layers: usize,
    /// The model whose tokenizer files are copied.
    pub tokenizer_from: Option<usize>,
    /// Things the user should know that do not stop the merge.
    pub warnings: Vec<String>,
    /// The recipe's `data` section (data-using methods).
    pub data: Option<evomerge_datamerge::DataSection>,
}

/// Options that override what the recipe says.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Output dtype for every float tensor (the CLI's `--dtype`).
    pub out_dtype: Option<Dtype>,
}

struct Slice {
    sources: Vec<(usize, [usize; 2], Params)>,
    base: Option<usize>,
    params: Params,
}

struct Resolver<'a> {
    slices: &'a [Slice],
    module: Option<&'a Params>,
    top: &'a Params,
}

impl Resolver<'_> {
    /// mergekit's `ConfigReader.parameter`: source params of this model, then the output
    /// slice's, then the module's, then the top-level ones; `None` when nothing applies.
    fn lookup(
        &self,
        slice: usize,
        name: &str,
        model: Option<usize>,
        tensor: &str,
        t: f64,
    ) -> Option<ParamValue> {
        let s = &self.slices[slice];
        if let Some(m) = model {
            for (src, _, params) in &s.sources {
                if *src == m
                    && let Some(v) = params.get(name).and_then(|p| p.evaluate(tensor, t))
                {
                    return Some(v);
                }
            }
        }
        for level in [Some(&s.params), self.module, Some(self.top)]
            .into_iter()
            .flatten()
        {
            if let Some(v) = level.get(name).and_then(|p| p.evaluate(tensor, t)) {
                return Some(v);
            }
        }
        None
    }
}

fn check_param_names(
    params: &Params,
    where_: &str,
    method: &MethodSpec,
    warnings: &mut Vec<String>,
) -> Result<(), MergeError> {
    let known = known_params();
    for name in params.keys() {
        let used = method.params().any(|p| p.name == name);
        if used {
            continue;
        }
        if known.contains(&name.as_str()) || FOREIGN_PARAMS.contains(&name.as_str()) {
            warnings.push(format!(
                "parameter '{name}' ({where_}) is not used by {}; it is ignored",
                method.name
            ));
            continue;
        }
        let mut candidates: Vec<&str> = known.clone();
        candidates.extend(FOREIGN_PARAMS);
        let hint = nearest(name, &candidates)
            .map(|n| format!(" — did you mean '{n}'?"))
            .unwrap_or_default();
        let takes: Vec<&str> = method.params().map(|p| p.name).collect();
        return Err(MergeError::Recipe(format!(
            "unknown parameter '{name}' ({where_}){hint}; {} takes: {}",
            method.name,
            if takes.is_empty() {
                "no parameters".to_string()
            } else {
                takes.join(", ")
            }
        )));
    }
    Ok(())
}

fn layer_names(c: &Checkpoint, layer: usize) -> Vec<String> {
    c.names()
        .filter(|n| TensorRole::of(n) == TensorRole::Layer(layer))
        .map(str::to_string)
        .collect()
}

impl Plan {
    /// Plan a recipe over opened sources.
    pub fn build(
        recipe: &Recipe,
        sources: &Sources,
        options: &PlanOptions,
    ) -> Result<Plan, MergeError> {
        let method = method::lookup(&recipe.merge_method).map_err(MergeError::Recipe)?;
        let mut warnings = Vec::new();
        let (models, slices_in, module_params) = recipe_body(recipe)?;

        // Parameter names, everywhere they can appear.
        check_param_names(
            &recipe.parameters,
            "top-level parameters",
            method,
            &mut warnings,
        )?;
        if let Some(p) = module_params {
            check_param_names(p, "module parameters", method, &mut warnings)?;
        }
        for m in models.into_iter().flatten() {
            check_param_names(
                &m.parameters,
                &format!("model {}", m.model.name()),
                method,
                &mut warnings,
            )?;
        }
        for (i, s) in slices_in.into_iter().flatten().enumerate() {
            check_param_names(&s.parameters, &format!("slice {i}"), method, &mut warnings)?;
            for src in &s.sources {
                check_param_names(
                    &src.parameters,
                    &format!("slice {i}, model {}", src.model.name()),
                    method,
                    &mut warnings,
                )?;
            }
        }
        if recipe.chat_template.as_deref().is_some_and(|c| c != "auto") {
            warnings.push(
                "chat_template is not applied; the donor's tokenizer files are copied as they are"
                    .into(),
            );
        }

        // Architectures must agree.
        let archs: BTreeSet<&str> = sources
            .models
            .iter()
            .filter_map(|m| m.checkpoint.architecture())
            .collect();
        if archs.len() > 1 {
            return Err(MergeError::Recipe(format!(
                "the models have different architectures ({}); evomerge merges checkpoints of one architecture",
                archs.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }

        let n_layers = |m: usize| -> Result<usize, MergeError> {
            sources.models[m].checkpoint.num_layers().ok_or_else(|| MergeError::Model {
                model: sources.models[m].name.clone(),
                message: "cannot tell how many layers it has (no num_hidden_layers/n_layer in config.json and no layer tensors)".into(),
            })
        };

        // Normalise `models:` to one slice over all layers, as mergekit does.
        let recipe_base = recipe.base_model.as_ref().map(|b| sources.require(b));
        let mut slices: Vec<Slice> = Vec::new();
        if let Some(models) = models {
            let mut srcs = Vec::new();
            for m in models {
                let idx = sources.require(&m.model);
                srcs.push((idx, [0, n_layers(idx)?], m.parameters.clone()));
            }
            if let Some(b) = recipe_base
                && !srcs.iter().any(|(i, _, _)| *i == b)
            {
                srcs.push((b, [0, n_layers(b)?], Params::new()));
            }
            slices.push(Slice {
                sources: srcs,
                base: recipe_base,
                params: Params::new(),
            });
        } else {
            for (si, s) in slices_in.expect("checked").iter().enumerate() {
                if s.sources.is_empty() {
                    return Err(MergeError::Recipe(format!("slice {si} has no sources")));
                }
                let mut srcs = Vec::new();
                for SliceSource {
                    model,
                    layer_range,
                    parameters,
                } in &s.sources
                {
                    let idx = sources.require(model);
                    let total = n_layers(idx)?;
                    let range = layer_range.unwrap_or([0, total]);
                    if range[0] > range[1] || range[1] > total {
                        return Err(MergeError::Recipe(format!(
                            "slice {si}: layer_range [{}, {}) of model {} is outside its {total} layers (the end is exclusive)",
                            range[0],
                            range[1],
                            model.name()
                        )));
                    }
                    srcs.push((idx, range, parameters.clone()));
                }
                let lens: Vec<usize> = srcs.iter().map(|(_, r, _)| r[1] - r[0]).collect();
                if lens.iter().any(|l| *l != lens[0]) {
                    return Err(MergeError::Recipe(format!(
                        "slice {si}: all sources of a slice must have the same number of layers, got {lens:?}"
                    )));
                }
                let base = s
                    .base_model
                    .as_ref()
                    .map(|b| sources.require(b))
                    .or(recipe_base);
                slices.push(Slice {
                    sources: srcs,
                    base,
                    params: s.parameters.clone(),
                });
            }
        }
        let resolver = Resolver {
            slices: &slices,
            module: module_params,
            top: &recipe.parameters,
        };

        let mut tensors = Vec::new();
        let mut planner = TensorPlanner {
            method,
            sources,
            resolver: &resolver,
            out_dtype: options
                .out_dtype
                .map(Ok)
                .or_else(|| recipe.out_dtype.as_deref().map(str::parse))
                .or_else(|| recipe.dtype.as_deref().map(str::parse))
                .transpose()
                .map_err(|e: evomerge_checkpoint::CheckpointError| {
                    MergeError::Recipe(e.to_string())
                })?,
        };

        // Embeddings and other non-layer tensors from the first slice's models.
        let first = &slices[0];
        let last = slices.last().expect("at least one slice");
        let non_layer = |s: &Slice, post: bool| -> BTreeSet<String> {
            s.sources
                .iter()
                .flat_map(|(m, _, _)| {
                    sources.models[*m]
                        .checkpoint
                        .names()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .filter(|n| {
                    let role = TensorRole::of(n);
                    match role {
                        TensorRole::FinalNorm | TensorRole::LmHead => post,
                        TensorRole::Embedding | TensorRole::Other => !post,
                        TensorRole::Layer(_) => false,
                    }
                })
                .collect()
        };
        for name in non_layer(first, false) {
            tensors.push(planner.plan_whole(0, first, &name, 0.0)?);
        }
        let mut out_layer = 0usize;
        for (si, s) in slices.iter().enumerate() {
            let len = s.sources[0].1[1] - s.sources[0].1[0];
            for idx in 0..len {
                let t = if len > 1 {
                    idx as f64 / (len - 1) as f64
                } else {
                    1.0
                };
                let (m0, r0, _) = &s.sources[0];
                let template = layer_names(&sources.models[*m0].checkpoint, r0[0] + idx);
                if template.is_empty() {
                    return Err(MergeError::Model {
                        model: sources.models[*m0].name.clone(),
                        message: format!("has no tensors for layer {}", r0[0] + idx),
                    });
                }
                for name in template {
                    let inputs: Vec<(usize, String)> = s
                        .sources
                        .iter()
                        .map(|(m, r, _)| (*m, rename_layer(&name, r[0] + idx)))
                        .collect();
                    let out_name = rename_layer(&name, out_layer);
                    tensors.push(planner.plan_tensor(si, s, out_name, inputs, t)?);
                }
                out_layer += 1;
            }
        }
        let last_idx = slices.len() - 1;
        for name in non_layer(last, true) {
            if let Some(tp) = planner.plan_head_or_norm(last_idx, last, &name)? {
                tensors.push(tp);
            }
        }

        // The output config: the base's (or the first model's) with layer count and dtype,
        // as mergekit takes it. A donor without config.json would leave a folder transformers
        // cannot load (mergekit stops there); the first model that has one stands in, warned.
        let donor = recipe_base.unwrap_or(slices[0].sources[0].0);
        let config_from = config_donor(sources, donor, &mut warnings);
        let mut config = config_from.and_then(|m| sources.models[m].checkpoint.config().cloned());
        if let Some(c) = config.as_mut() {
            evomerge_checkpoint::set_num_layers(c, out_layer);
            let dtypes: BTreeSet<String> = tensors
                .iter()
                .filter(|t| t.dtype.is_float())
                .map(|t| t.dtype.torch_name().to_string())
                .collect();
            if dtypes.len() == 1 {
                let d: Dtype = dtypes
                    .into_iter()
                    .next()
                    .expect("one")
                    .parse()
                    .expect("known dtype");
                evomerge_checkpoint::set_torch_dtype(c, d);
            }
            let has_head = tensors.iter().any(|t| t.name == "lm_head.weight");
            if has_head && let Some(obj) = c.as_object_mut() {
                obj.insert("tie_word_embeddings".into(), Value::Bool(false));
            }
        }

        let tokenizer_from = tokenizer_source(recipe, sources, donor, recipe_base, &mut warnings)?;
        if method.is_whole_model() {
            let global = tensors
                .iter()
                .find(|t| t.action == Action::Merge)
                .map(|t| t.global.clone())
                .unwrap_or_default();
            if let Some(m) = evomerge_datamerge::DataMethod::from_name(method.name) {
                let params = serde_json::to_value(&global).expect("parameter values serialize");
                evomerge_datamerge::registry::check_recipe(m, params, recipe.data.as_ref())
                    .map_err(MergeError::Recipe)?;
            }
        } else if recipe.data.is_some() {
            warnings.push(format!(
                "the `data` section is not used by {} (a data-free method); it is ignored",
                method.name
            ));
        }
        Ok(Plan {
            method,
            tensors,
            config,
            num_layers: out_layer,
            tokenizer_from,
            warnings,
            data: recipe.data.clone(),
        })
    }

    /// A human-readable plan for `--dry-run`.
    pub fn describe(&self, sources: &Sources) -> String {
        let mut out = format!(
            "method: {} ({})\noutput layers: {}\ntensors: {}\n",
            self.method.name,
            self.method.summary,
            self.num_layers,
            self.tensors.len()
        );
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        for tp in &self.tensors {
            let inputs: Vec<String> = tp
                .inputs
                .iter()
                .enumerate()
                .map(|(i, inp)| {
                    let mut s = format!("{}:{}", sources.models[inp.model].name, inp.tensor);
                    if Some(i) == tp.base {
                        s.push_str(" (base)");
                    }
                    let params: Vec<String> = tp.per_input[i]
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    if !params.is_empty() {
                        s.push_str(&format!(" [{}]", params.join(", ")));
                    }
                    s
                })
                .collect();
            let global: Vec<String> = tp.global.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let action = match tp.action {
                Action::Merge => self.method.name,
                Action::Copy => "copy",
            };
            out.push_str(&format!(
                "{} {:?} {} <- {}{}{}\n",
                tp.name,
                tp.shape,
                tp.dtype,
                action,
                if global.is_empty() {
                    String::new()
                } else {
                    format!(" {{{}}}", global.join(", "))
                },
                format_args!(" {}", inputs.join(" | "))
            ));
        }
        out
    }
}

/// The model whose config.json the output takes: `donor` (the base, else the first model)
/// when it has one, else the first model in recipe order that does (with a warning), else none
/// (with a warning: the output then has no config.json).
fn config_donor(sources: &Sources, donor: usize, warnings: &mut Vec<String>) -> Option<usize> {
    let has = |m: usize| sources.models[m].checkpoint.config().is_some();
    if has(donor) {
        return Some(donor);
    }
    let name = &sources.models[donor].name;
    match (0..sources.models.len()).find(|&m| has(m)) {
        Some(m) => {
            warnings.push(format!(
                "{name} (the config donor: the base, else the first model) has no config.json; the merged config.json is {}'s, with the merged layer count and dtype",
                sources.models[m].name
            ));
            Some(m)
        }
        None => {
            warnings.push(format!(
                "no model has a config.json ({name} would give it), so the merged folder has none; transformers cannot load it without one"
            ));
            None
        }
    }
}

/// Whether a model folder holds a tokenizer (tokenizer.json, or a sentencepiece model).
fn has_tokenizer(m: &SourceModel) -> bool {
    ["tokenizer.json", "tokenizer.model"]
        .iter()
        .any(|f| m.path.join(f).is_file())
}

fn tokenizer_source(
    recipe: &Recipe,
    sources: &Sources,
    donor: usize,
    base: Option<usize>,
    warnings: &mut Vec<String>,
) -> Result<Option<usize>, MergeError> {
    if let Some(t) = &recipe.tokenizer
        && (t.tokens.is_some() || t.pad_to_multiple_of.is_some())
    {
        return Err(MergeError::Recipe(
            "tokenizer.tokens and tokenizer.pad_to_multiple_of are not supported; evomerge copies one model's tokenizer".into(),
        ));
    }
    let source = recipe
        .tokenizer
        .as_ref()
        .and_then(|t| t.source.clone())
        .or_else(|| recipe.tokenizer_source.clone());
    Ok(match source.as_deref() {
        None if !has_tokenizer(&sources.models[donor]) => {
            // The same stand-in as for config.json: the first model that has a tokenizer.
            match sources.models.iter().position(has_tokenizer) {
                Some(m) => {
                    warnings.push(format!(
                        "{} (the tokenizer donor: the base, else the first model) has no tokenizer; the merged folder gets {}'s tokenizer files (set tokenizer_source to choose)",
                        sources.models[donor].name, sources.models[m].name
                    ));
                    Some(m)
                }
                None => Some(donor),
            }
        }
        None => Some(donor),
        Some("base") => Some(base.unwrap_or(donor)),
        Some("union") => {
            let read = |m: &SourceModel| std::fs::read(m.path.join("tokenizer.json")).ok();
            let first = read(&sources.models[donor]);
            if sources.models.iter().any(|m| read(m) != first) {
                return Err(MergeError::Recipe(
                    "tokenizer_source: union needs a merged vocabulary, which evomerge does not build; the models' tokenizer.json files differ — use `base` or a model name".into(),
                ));
            }
            Some(donor)
        }
        Some(name) => Some(sources.index_of(name).ok_or_else(|| {
            MergeError::Recipe(format!(
                "tokenizer_source '{name}' is not one of the recipe's models ({}), `base` or `union`",
                sources.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?),
    })
}

/// Where in a gradient the final norm and the LM head read their parameters: mergekit 0.1.5
/// plans them (like the embeddings) at `t = 0`, so `weight: [0.2, 0.8]` gives them 0.2.
const POST_WEIGHTS_T: f64 = 0.0;

struct TensorPlanner<'a> {
    method: &'a MethodSpec,
    sources: &'a Sources,
    resolver: &'a Resolver<'a>,
    out_dtype: Option<Dtype>,
}

impl TensorPlanner<'_> {
    /// A non-layer tensor present under the same name in every source of the slice.
    fn plan_whole(
        &mut self,
        si: usize,
        s: &Slice,
        name: &str,
        t: f64,
    ) -> Result<TensorPlan, MergeError> {
        let inputs = s
            .sources
            .iter()
            .map(|(m, _, _)| (*m, name.to_string()))
            .collect();
        self.plan_tensor(si, s, name.to_string(), inputs, t)
    }

    /// The final norm, or the LM head: models that tie their head contribute their embedding,
    /// and no head is written when no model stores one. Planned at `t = 0` (the first value of
    /// a gradient), as mergekit 0.1.5 does: its `plan.py::plan_module` reads the pre-weights
    /// and the post-weights through one `ConfigReader(t=0)` (mergekit before the module
    /// refactor used `t = 1` for the post-weights).
    fn plan_head_or_norm(
        &mut self,
        si: usize,
        s: &Slice,
        name: &str,
    ) -> Result<Option<TensorPlan>, MergeError> {
        if TensorRole::of(name) != TensorRole::LmHead {
            return self.plan_whole(si, s, name, POST_WEIGHTS_T).map(Some);
        }
        let mut inputs = Vec::new();
        for (m, _, _) in &s.sources {
            let c = &self.sources.models[*m].checkpoint;
            match c.resolve(name) {
                Some(stored) => inputs.push((*m, stored.to_string())),
                None => {
                    return Err(MergeError::Model {
                        model: self.sources.models[*m].name.clone(),
                        message: format!(
                            "has no tensor '{name}' (and no tied embedding to stand in for it), but other models do"
                        ),
                    });
                }
            }
        }
        self.plan_tensor(si, s, name.to_string(), inputs, POST_WEIGHTS_T)
            .map(Some)
    }

    fn plan_tensor(
        &mut self,
        si: usize,
        s: &Slice,
        out_name: String,
        inputs: Vec<(usize, String)>,
        t: f64,
    ) -> Result<TensorPlan, MergeError> {
        let sources = self.sources;
        let model_name = |m: usize| sources.models[m].name.clone();
        // Every input must exist, with one shape.
        let mut shape: Option<(usize, Vec<usize>)> = None;
        let mut in_dtype = None;
        for (m, tensor) in &inputs {
            let info = sources.models[*m].checkpoint.info(tensor).ok_or_else(|| MergeError::Model {
                model: model_name(*m),
                message: format!("has no tensor '{tensor}' (needed for output '{out_name}'); the models must share one architecture and size"),
            })?;
            in_dtype.get_or_insert(info.dtype);
            match &shape {
                None => shape = Some((*m, info.shape.clone())),
                Some((m0, s0)) if *s0 != info.shape => {
                    let vocab = matches!(
                        TensorRole::of(&out_name),
                        TensorRole::Embedding | TensorRole::LmHead
                    );
                    let what = if vocab {
                        " — the models have different vocabulary sizes; evomerge does not merge tokenizers, so merge models that share one vocabulary"
                    } else {
                        ""
                    };
                    return Err(MergeError::Recipe(format!(
                        "tensor '{out_name}': shape {s0:?} in model {} but {:?} in model {}{what}",
                        model_name(*m0),
                        info.shape,
                        model_name(*m)
                    )));
                }
                _ => {}
            }
        }
        let (_, shape) = shape.expect("at least one input");
        let in_dtype = in_dtype.expect("at least one input");
        let plan_inputs: Vec<PlanInput> = inputs
            .iter()
            .map(|(m, t)| PlanInput {
                model: *m,
                tensor: t.clone(),
            })
            .collect();

        if !in_dtype.is_float() {
            return Ok(TensorPlan {
                name: out_name,
                shape,
                dtype: in_dtype,
                action: Action::Copy,
                per_input: vec![BTreeMap::new(); plan_inputs.len()],
                inputs: plan_inputs,
                base: None,
                t,
                global: BTreeMap::new(),
            });
        }

        let method = self.method;
        let base = match method.base {
            BaseUse::Ignored => None,
            BaseUse::Optional | BaseUse::Required => match s.base {
                Some(b) => {
                    let pos = inputs.iter().position(|(m, _)| *m == b);
                    if pos.is_none() && method.base == BaseUse::Required {
                        return Err(MergeError::Recipe(format!(
                            "slice {si}: the base model {} is not among the slice's sources; {} needs it — add it to the slice's sources",
                            model_name(b),
                            method.name
                        )));
                    }
                    pos
                }
                None if method.base == BaseUse::Required => {
                    return Err(MergeError::Recipe(format!(
                        "{} needs a base_model; add `base_model` to the recipe",
                        method.name
                    )));
                }
                None => None,
            },
        };

        let mut global = BTreeMap::new();
        for p in &method.global_params {
            match self
                .resolver
                .lookup(si, p.name, None, &out_name, t)
                .or_else(|| p.default.clone())
            {
                Some(ParamValue::Text(s)) if s.is_empty() => {}
                Some(v) => {
                    global.insert(p.name, v);
                }
                None => {
                    return Err(MergeError::Recipe(format!(
                        "{} needs parameter '{}' (missing for tensor '{out_name}'); set it under `parameters`",
                        method.name, p.name
                    )));
                }
            }
        }
        let mut per_input = Vec::with_capacity(inputs.len());
        for (j, (m, tensor)) in inputs.iter().enumerate() {
            let is_base = Some(j) == base;
            let mut values = BTreeMap::new();
            for p in &method.tensor_params {
                match self
                    .resolver
                    .lookup(si, p.name, Some(*m), tensor, t)
                    .or_else(|| p.default.clone())
                {
                    Some(ParamValue::Text(s)) if s.is_empty() => {}
                    Some(v) => {
                        values.insert(p.name, v);
                    }
                    None if is_base => {}
                    None => {
                        return Err(MergeError::Recipe(format!(
                            "{} needs parameter '{}' for model {} (tensor '{tensor}'); set it in the model's `parameters` or at top level",
                            method.name,
                            p.name,
                            model_name(*m)
                        )));
                    }
                }
            }
            per_input.push(values);
        }
        let tp = TensorPlan {
            dtype: self.out_dtype.unwrap_or(in_dtype),
            name: out_name,
            shape,
            action: Action::Merge,
            inputs: plan_inputs,
            base,
            t,
            global,
            per_input,
        };
        validate(&tp, method, sources)?;
        Ok(tp)
    }
}

/// Checks on resolved values that would otherwise fail mid-merge.
fn validate(tp: &TensorPlan, method: &MethodSpec, sources: &Sources) -> Result<(), MergeError> {
    let model_name = |j: usize| sources.models[tp.inputs[j].model].name.as_str();
    let err = |msg: String| Err(MergeError::Recipe(format!("tensor '{}': {msg}", tp.name)));
    for (k, v) in tp
        .global
        .iter()
        .chain(tp.per_input.iter().flat_map(|m| m.iter()))
    {
        let textual = method
            .params()
            .any(|p| p.name == *k && !p.choices.is_empty());
        if !textual && matches!(v, ParamValue::Text(_)) {
            return err(format!(
                "parameter '{k}' must be a number or true/false, got '{v}'"
            ));
        }
    }
    if let Some(v) = tp.global.get("rescale") {
        rescale_mode(v).map_err(MergeError::Recipe)?;
    }
    if let Some(v) = tp.global.get("consensus") {
        consensus_mode(v).map_err(MergeError::Recipe)?;
    }
    let others: Vec<usize> = (0..tp.inputs.len())
        .filter(|j| Some(*j) != tp.base)
        .collect();
    for &j in &others {
        if let Some(d) = tp.input_f64(j, "density")
            && !(d > 0.0 && d <= 1.0)
        {
            return err(format!(
                "density {d} for model {} is outside (0, 1]; density is the share of each task vector kept",
                model_name(j)
            ));
        }
        if let Some(w) = tp.input_f32(j, "weight")
            && !w.is_finite()
        {
            return err(format!(
                "weight {w} for model {} is not a finite number",
                model_name(j)
            ));
        }
        if let Some(g) = tp.input_f64(j, "gamma")
            && !(0.0..1.0).contains(&g)
        {
            return err(format!(
                "gamma {g} for model {} is outside [0, 1)",
                model_name(j)
            ));
        }
    }
    if let Some(check) = method.check {
        check(&tp.resolved(), &|j| model_name(j).to_string())
            .map_err(|e| MergeError::Recipe(format!("tensor '{}': {e}", tp.name)))?;
    }
    let count = |needed: &str| {
        err(format!(
            "{} needs {needed}; this tensor has {} input(s)",
            method.name,
            tp.inputs.len()
        ))
    };
    let lone_copy = tp.inputs.len() == 1 && !method.runs_on_one_input;
    match method.arity {
        Arity::Exactly(n, needs) if others.len() != n => count(needs),
        Arity::AtLeast(n, needs) if !lone_copy && others.len() < n => count(needs),
        _ => Ok(()),
    }
}
