//! Parameter-space genomes: a vector of weights and densities per layer group, source model and
//! tensor filter, decoded into the same [`Recipe`] that `evomerge merge` runs.

use crate::{GeneBounds, GenomeError};
use evomerge_merge::method::{self, nearest};
use evomerge_merge::{
    FilterEntry, InputModel, ModelRef, OutputSlice, ParamSetting, ParamValue, Params, Recipe,
    ScalarOrGradient, SliceSource,
};
use serde::{Deserialize, Serialize};

/// Substrings that pick embedding and head tensors when they form their own group.
pub const EMBED_FILTERS: &[&str] = &[
    "embed_tokens",
    "lm_head",
    "model.norm",
    "wte",
    "wpe",
    "ln_f",
];

/// The method of a parameter-space search: fixed, or itself a (categorical) gene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MethodGene {
    Fixed(String),
    Choice(Vec<String>),
}

/// Ready-made settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The Sakana paper's PS setting: DARE-TIES, one weight and one density per source model,
    /// every gene starting at 0.5 with sigma 1/6 in [0, 1].
    Sakana,
    /// mergekit-evolve's start: weight 1/n, density 1.
    MergekitEvolve,
}

fn default_weight_bounds() -> GeneBounds {
    GeneBounds::new(0.0, 1.0)
}
fn default_density_bounds() -> GeneBounds {
    GeneBounds::new(0.0, 1.0)
}
fn default_min_density() -> f64 {
    0.01
}

/// The parameter-space genome settings (the `[genome]` table of a PS experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsSpec {
    /// Settings to start from; explicit keys below still apply on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// `"dare_ties"`, or a list of methods to choose among (one categorical gene).
    #[serde(default = "default_method")]
    pub merge_method: MethodGene,
    /// Layers per group; 0 = one group for all layers. Need not divide the layer count (the
    /// last group is shorter).
    #[serde(default)]
    pub layer_granularity: usize,
    /// Tensor-name substrings with their own genes (e.g. `["self_attn", "mlp"]`); everything
    /// else ("rest") shares one more set.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Give embeddings, final norm and LM head their own group.
    #[serde(default)]
    pub separate_embeddings: bool,
    /// Allow negative weights (weights range over `weight_bounds` as given, else `|x|`).
    #[serde(default)]
    pub allow_negative_weights: bool,
    /// Interpolate per-group values over the layers (a gradient) instead of constant blocks.
    #[serde(default)]
    pub smooth: bool,
    /// Search bounds of weight genes.
    #[serde(default = "default_weight_bounds")]
    pub weight_bounds: GeneBounds,
    /// Search bounds of density genes.
    #[serde(default = "default_density_bounds")]
    pub density_bounds: GeneBounds,
    /// Densities decode to at least this (a density of 0 would drop a whole task vector).
    #[serde(default = "default_min_density")]
    pub min_density: f64,
    /// Initial weight (default: 0.5 with the Sakana preset, else 1/n).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_weight: Option<f64>,
    /// Initial density (default: 0.5 with the Sakana preset, else 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_density: Option<f64>,
    /// Fixed method parameters written into every decoded recipe (e.g. `normalize`, `rescale`).
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub parameters: Params,
    /// Output dtype of decoded recipes (e.g. "bfloat16"); default: the inputs'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

fn default_method() -> MethodGene {
    MethodGene::Fixed("dare_ties".into())
}

impl Default for PsSpec {
    fn default() -> Self {
        PsSpec {
            preset: None,
            merge_method: default_method(),
            layer_granularity: 0,
            filters: Vec::new(),
            separate_embeddings: false,
            allow_negative_weights: false,
            smooth: false,
            weight_bounds: default_weight_bounds(),
            density_bounds: default_density_bounds(),
            min_density: default_min_density(),
            initial_weight: None,
            initial_density: None,
            parameters: Params::new(),
            dtype: None,
        }
    }
}

impl PsSpec {
    /// The Sakana paper's global PS setting.
    pub fn sakana() -> PsSpec {
        PsSpec {
            preset: Some(Preset::Sakana),
            ..PsSpec::default()
        }
    }

    /// mergekit-evolve's setting for `method` with layer groups of `granularity`.
    pub fn mergekit_evolve(method: &str, granularity: usize) -> PsSpec {
        PsSpec {
            preset: Some(Preset::MergekitEvolve),
            merge_method: MethodGene::Fixed(method.into()),
            layer_granularity: granularity,
            ..PsSpec::default()
        }
    }
}

/// Which coordinate a gene is.
#[derive(Debug, Clone, PartialEq)]
pub struct Gene {
    /// Readable name for logs, e.g. `g0.model1.weight` or `g2.model0.mlp.density`.
    pub name: String,
    pub group: usize,
    pub model: usize,
    pub set: usize,
    pub param: &'static str,
}

/// A parameter-space genome over fixed sources.
#[derive(Debug, Clone)]
pub struct PsGenome {
    spec: PsSpec,
    models: Vec<String>,
    base: Option<String>,
    num_layers: usize,
    methods: Vec<String>,
    params: Vec<&'static str>,
    groups: Vec<(usize, usize)>,
    genes: Vec<Gene>,
}

/// The per-model parameters the method declares evolvable (its registry entry).
fn searchable_params(name: &str) -> Result<Vec<&'static str>, GenomeError> {
    let m = method::lookup(name).map_err(GenomeError::Spec)?;
    let params: Vec<&'static str> = m.evolvable().map(|p| p.name).collect();
    if params.is_empty() {
        let searchable: Vec<&str> = method::registry()
            .iter()
            .filter(|m| m.evolvable().next().is_some())
            .map(|m| m.name)
            .collect();
        return Err(GenomeError::Spec(format!(
            "method '{name}' has no per-model weights to search; use one of {}",
            searchable.join(", ")
        )));
    }
    Ok(params)
}

/// The search range a method declares for `param` (weights and densities use the spec's).
fn declared_bounds(methods: &[String], param: &str) -> Option<GeneBounds> {
    methods
        .iter()
        .filter_map(|m| method::lookup(m).ok())
        .flat_map(|m| m.evolvable())
        .find(|p| p.name == param)
        .and_then(|p| p.bounds)
        .map(GeneBounds::from)
}

impl PsGenome {
    /// A genome over `models` (the sources whose weights are searched; the `base` is added
    /// without genes) with `num_layers` decoder layers.
    pub fn new(
        spec: PsSpec,
        models: Vec<String>,
        base: Option<String>,
        num_layers: usize,
    ) -> Result<PsGenome, GenomeError> {
        if models.is_empty() {
            return Err(GenomeError::Spec(
                "the genome needs at least one source model".into(),
            ));
        }
        if num_layers == 0 {
            return Err(GenomeError::Spec("the models have no layers".into()));
        }
        let methods = match &spec.merge_method {
            MethodGene::Fixed(m) => vec![m.clone()],
            MethodGene::Choice(ms) if ms.is_empty() => {
                return Err(GenomeError::Spec("merge_method lists no methods".into()));
            }
            MethodGene::Choice(ms) => ms.clone(),
        };
        let mut params: Vec<&'static str> = Vec::new();
        for m in &methods {
            for p in searchable_params(m)? {
                if !params.contains(&p) {
                    params.push(p);
                }
            }
            let needs_base =
                method::lookup(m).map_err(GenomeError::Spec)?.base == method::BaseUse::Required;
            if needs_base && base.is_none() {
                return Err(GenomeError::Spec(format!(
                    "method '{m}' needs a base model"
                )));
            }
        }
        for f in &spec.filters {
            if f.is_empty() || f == "rest" {
                return Err(GenomeError::Spec(format!(
                    "filter '{f}' is not a tensor-name substring; everything no filter matches forms the 'rest' set automatically"
                )));
            }
        }
        spec.weight_bounds.check("weight_bounds")?;
        spec.density_bounds.check("density_bounds")?;
        let step = if spec.layer_granularity == 0 {
            num_layers
        } else {
            spec.layer_granularity
        };
        let mut groups: Vec<(usize, usize)> = (0..num_layers.div_ceil(step))
            .map(|g| (g * step, ((g + 1) * step).min(num_layers)))
            .collect();
        if spec.separate_embeddings {
            groups.push((0, 0)); // the embedding/head group, last
        }
        let sets = spec.filters.len() + 1;
        let mut genes = Vec::new();
        for g in 0..groups.len() {
            for m in 0..models.len() {
                for k in 0..sets {
                    for p in &params {
                        let group = if spec.separate_embeddings && g == groups.len() - 1 {
                            "embed".to_string()
                        } else {
                            format!("g{g}")
                        };
                        let set = if spec.filters.is_empty() {
                            String::new()
                        } else if k < spec.filters.len() {
                            format!("{}.", spec.filters[k])
                        } else {
                            "rest.".into()
                        };
                        genes.push(Gene {
                            name: format!("{group}.model{m}.{set}{p}"),
                            group: g,
                            model: m,
                            set: k,
                            param: p,
                        });
                    }
                }
            }
        }
        Ok(PsGenome {
            spec,
            models,
            base,
            num_layers,
            methods,
            params,
            groups,
            genes,
        })
    }

    /// Number of coordinates.
    pub fn dim(&self) -> usize {
        self.genes.len() + usize::from(self.methods.len() > 1)
    }

    /// Gene names in vector order (the method gene, if any, is last: `method`).
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.genes.iter().map(|g| g.name.clone()).collect();
        if self.methods.len() > 1 {
            n.push("method".into());
        }
        n
    }

    fn is_sakana(&self) -> bool {
        self.spec.preset == Some(Preset::Sakana)
    }

    /// Lower and upper bounds per coordinate.
    pub fn bounds(&self) -> (Vec<f64>, Vec<f64>) {
        let mut lo = Vec::with_capacity(self.dim());
        let mut hi = Vec::with_capacity(self.dim());
        for g in &self.genes {
            let b = match g.param {
                "density" => self.spec.density_bounds,
                "weight" => self.spec.weight_bounds,
                other => declared_bounds(&self.methods, other).unwrap_or(self.spec.weight_bounds),
            };
            lo.push(b.lo);
            hi.push(b.hi);
        }
        if self.methods.len() > 1 {
            lo.push(0.0);
            hi.push(self.methods.len() as f64);
        }
        (lo, hi)
    }

    /// The starting point: the spec's initial values, else the preset's.
    pub fn initial(&self) -> Vec<f64> {
        let n = self.models.len() as f64;
        let w = self
            .spec
            .initial_weight
            .unwrap_or(if self.is_sakana() { 0.5 } else { 1.0 / n });
        let d = self
            .spec
            .initial_density
            .unwrap_or(if self.is_sakana() { 0.5 } else { 1.0 });
        let mut x: Vec<f64> = self
            .genes
            .iter()
            .map(|g| if g.param == "density" { d } else { w })
            .collect();
        if self.methods.len() > 1 {
            x.push(0.5);
        }
        let (lo, hi) = self.bounds();
        x.iter()
            .zip(lo.iter().zip(&hi))
            .map(|(v, (l, h))| v.clamp(*l, *h))
            .collect()
    }

    /// The suggested initial step size: 1/6 of the narrowest range (the paper's sigma for [0, 1]).
    pub fn sigma0(&self) -> f64 {
        let (lo, hi) = self.bounds();
        lo.iter()
            .zip(&hi)
            .map(|(l, h)| h - l)
            .fold(f64::INFINITY, f64::min)
            / 6.0
    }

    fn check(&self, x: &[f64]) -> Result<(), GenomeError> {
        if x.len() != self.dim() {
            return Err(GenomeError::WrongLength {
                expected: self.dim(),
                got: x.len(),
            });
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(GenomeError::NotFinite {
                index: i,
                name: self.names()[i].clone(),
            });
        }
        Ok(())
    }

    /// The method a vector selects.
    pub fn method_of(&self, x: &[f64]) -> Result<&str, GenomeError> {
        self.check(x)?;
        Ok(if self.methods.len() > 1 {
            let k = (x[self.genes.len()].floor().max(0.0) as usize).min(self.methods.len() - 1);
            &self.methods[k]
        } else {
            &self.methods[0]
        })
    }

    fn decode_value(&self, param: &str, v: f64) -> f64 {
        match param {
            "density" => v.abs().clamp(self.spec.min_density, 1.0),
            _ if self.spec.allow_negative_weights => v,
            _ => v.abs(),
        }
    }

    /// Decoded parameter values `[group][model][set][param]` of a vector.
    pub fn values(&self, x: &[f64]) -> Result<Vec<Vec<Vec<Vec<f64>>>>, GenomeError> {
        self.check(x)?;
        let sets = self.spec.filters.len() + 1;
        let mut out = vec![
            vec![vec![vec![0.0; self.params.len()]; sets]; self.models.len()];
            self.groups.len()
        ];
        for (i, g) in self.genes.iter().enumerate() {
            let p = self
                .params
                .iter()
                .position(|q| *q == g.param)
                .expect("known param");
            out[g.group][g.model][g.set][p] = self.decode_value(g.param, x[i]);
        }
        Ok(out)
    }

    fn layer_groups(&self) -> &[(usize, usize)] {
        if self.spec.separate_embeddings {
            &self.groups[..self.groups.len() - 1]
        } else {
            &self.groups
        }
    }

    /// A parameter setting for one model from per-set values (and the embedding group's).
    fn setting(&self, per_set: Vec<ScalarOrGradient>, embed: Option<ParamValue>) -> ParamSetting {
        let filters = &self.spec.filters;
        if filters.is_empty() && embed.is_none() {
            return match per_set.into_iter().next().expect("one set") {
                ScalarOrGradient::Value(v) => ParamSetting::Value(v),
                ScalarOrGradient::Gradient(g) => ParamSetting::Gradient(g),
            };
        }
        let mut entries = Vec::new();
        if let Some(e) = embed {
            for f in EMBED_FILTERS {
                entries.push(FilterEntry {
                    filter: Some((*f).into()),
                    value: ScalarOrGradient::Value(e.clone()),
                });
            }
        }
        for (k, value) in per_set.into_iter().enumerate() {
            entries.push(FilterEntry {
                filter: filters.get(k).cloned(),
                value,
            });
        }
        ParamSetting::Filtered(entries)
    }

    /// Decode a vector into a recipe `evomerge merge` runs.
    pub fn decode(&self, x: &[f64]) -> Result<Recipe, GenomeError> {
        let method = self.method_of(x)?.to_string();
        let method_params = searchable_params(&method)?;
        let values = self.values(x)?;
        let sets = self.spec.filters.len() + 1;
        let layer_groups = self.layer_groups().to_vec();
        let embed_group = self.spec.separate_embeddings.then(|| self.groups.len() - 1);
        let num = |v: f64| ParamValue::Number(v);
        let param_index = |p: &str| self.params.iter().position(|q| *q == p).expect("known");
        let base_ref = self.base.as_deref().map(ModelRef::from);
        let base_listed = self.base.as_ref().is_some_and(|b| self.models.contains(b));

        let mut recipe = Recipe {
            merge_method: method.clone(),
            base_model: base_ref.clone(),
            dtype: None,
            out_dtype: self.spec.dtype.clone(),
            tokenizer_source: None,
            chat_template: None,
            name: None,
            tokenizer: None,
            parameters: self.spec.parameters.clone(),
            models: None,
            slices: None,
            modules: None,
            data: None,
        };
        if self.spec.smooth || layer_groups.len() == 1 {
            let mut models = Vec::new();
            for m in 0..self.models.len() {
                let mut params = Params::new();
                for p in &method_params {
                    let pi = param_index(p);
                    let per_set: Vec<ScalarOrGradient> = (0..sets)
                        .map(|k| {
                            let per_group: Vec<ParamValue> = (0..layer_groups.len())
                                .map(|g| num(values[g][m][k][pi]))
                                .collect();
                            if per_group.len() == 1 {
                                ScalarOrGradient::Value(per_group[0].clone())
                            } else {
                                ScalarOrGradient::Gradient(per_group)
                            }
                        })
                        .collect();
                    let embed = embed_group.map(|e| num(values[e][m][sets - 1][pi]));
                    params.insert((*p).to_string(), self.setting(per_set, embed));
                }
                models.push(InputModel {
                    model: ModelRef::from(self.models[m].as_str()),
                    parameters: params,
                });
            }
            recipe.models = Some(models);
        } else {
            let mut slices = Vec::new();
            for (g, (start, end)) in layer_groups.iter().enumerate() {
                let mut sources = Vec::new();
                for m in 0..self.models.len() {
                    let mut params = Params::new();
                    for p in &method_params {
                        let pi = param_index(p);
                        let per_set = (0..sets)
                            .map(|k| ScalarOrGradient::Value(num(values[g][m][k][pi])))
                            .collect();
                        let is_end = g == 0 || g == layer_groups.len() - 1;
                        let embed = embed_group
                            .filter(|_| is_end)
                            .map(|e| num(values[e][m][sets - 1][pi]));
                        params.insert((*p).to_string(), self.setting(per_set, embed));
                    }
                    sources.push(SliceSource {
                        model: ModelRef::from(self.models[m].as_str()),
                        layer_range: Some([*start, *end]),
                        parameters: params,
                    });
                }
                if let (Some(b), false) = (&base_ref, base_listed) {
                    sources.push(SliceSource {
                        model: b.clone(),
                        layer_range: Some([*start, *end]),
                        parameters: Params::new(),
                    });
                }
                slices.push(OutputSlice {
                    sources,
                    base_model: None,
                    parameters: Params::new(),
                    residual_weight: None,
                });
            }
            recipe.slices = Some(slices);
        }
        Ok(recipe)
    }

    /// Encode a recipe into a vector (to seed a search with a known good recipe). Each gene
    /// takes the value the recipe gives that model's parameter for a tensor of its filter set
    /// at the first layer of its group; genes the recipe does not set keep the initial value.
    pub fn encode(&self, recipe: &Recipe) -> Result<Vec<f64>, GenomeError> {
        let mut x = self.initial();
        if self.methods.len() > 1 {
            let k = self
                .methods
                .iter()
                .position(|m| *m == recipe.merge_method)
                .ok_or_else(|| {
                    GenomeError::Spec(format!(
                        "the recipe's method '{}' is not among the genome's choices ({})",
                        recipe.merge_method,
                        self.methods.join(", ")
                    ))
                })?;
            x[self.genes.len()] = k as f64 + 0.5;
        } else if recipe.merge_method != self.methods[0] {
            return Err(GenomeError::Spec(format!(
                "the recipe uses '{}' but the genome searches '{}'",
                recipe.merge_method, self.methods[0]
            )));
        }
        for m in &self.models {
            if !crate::lookup::mentions_model(recipe, m) {
                return Err(GenomeError::Spec(format!(
                    "the recipe does not use source model '{m}'"
                )));
            }
        }
        let sets = self.spec.filters.len() + 1;
        for (i, gene) in self.genes.iter().enumerate() {
            let (tensor, layer) = if Some(gene.group)
                == self.spec.separate_embeddings.then(|| self.groups.len() - 1)
            {
                ("model.embed_tokens.weight".to_string(), None)
            } else {
                let l = self.groups[gene.group].0;
                let set = if gene.set < sets - 1 {
                    self.spec.filters[gene.set].clone()
                } else {
                    "__rest__".into()
                };
                (format!("model.layers.{l}.{set}.weight"), Some(l))
            };
            let model = &self.models[gene.model];
            if let Some(v) =
                crate::lookup::parameter(recipe, gene.param, model, &tensor, layer, self.num_layers)
                    .and_then(|v| v.as_f64())
            {
                // decoding is the identity on the decoded range: a value is its own code
                x[i] = v;
            }
        }
        Ok(x)
    }

    /// Check the filters against a model's tensor names: a filter that matches no tensor is a
    /// mistake (with the substrings that would match suggested).
    pub fn validate_filters<'a>(
        &self,
        tensor_names: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), GenomeError> {
        for f in &self.spec.filters {
            if !tensor_names.clone().any(|n| n.contains(f.as_str())) {
                let parts: Vec<&str> = tensor_names
                    .clone()
                    .flat_map(|n| n.split('.'))
                    .filter(|p| p.parse::<usize>().is_err())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let hint = nearest(f, &parts)
                    .map(|n| format!(" — did you mean '{n}'?"))
                    .unwrap_or_default();
                return Err(GenomeError::Spec(format!(
                    "filter '{f}' matches no tensor of the models{hint} (filters are tensor-name substrings such as self_attn, mlp)"
                )));
            }
        }
        Ok(())
    }

    /// The methods this genome chooses among.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// The genes (without the method gene).
    pub fn genes(&self) -> &[Gene] {
        &self.genes
    }

    /// The source model names, in gene order.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Layer ranges of the groups (the embedding group, if any, is last as `(0, 0)`).
    pub fn groups(&self) -> &[(usize, usize)] {
        &self.groups
    }

    /// The searched parameters (`weight`, `density`).
    pub fn params(&self) -> &[&'static str] {
        &self.params
    }

    /// The filters, without the implicit rest set.
    pub fn filters(&self) -> &[String] {
        &self.spec.filters
    }
}
