//! The search spaces of a run: turning an optimizer vector into a candidate to score.
//!
//! A parameter-space stage keeps its sources where they are — memory-mapped files in their
//! storage dtype, nothing copied to f32 — decodes each vector into a recipe, plans it (headers
//! only) and merges it in memory tensor by tensor, reading each source tensor from its map and
//! releasing its pages after use; what is held is the candidate (once: the model build takes
//! the merged tensors over) plus one tensor of each source. A data-flow stage keeps the source
//! models loaded and builds a layer-path decoder over them. Nothing is written to disk per
//! candidate.
//!
//! What a merge becomes depends on the sources ([`Family`]): Llama-family decoders give a
//! [`MergedCandidate`] (a language model with the sources' tokenizer), `EvomergeMlp`
//! checkpoints an [`MlpCandidate`] (a classifier; parameter space only).

use crate::RunError;
use crate::evaluators::{KINDS, kind_named};
use crate::experiment::{EvaluatorSpec, GenomeKind};
use crate::log::Params;
use evomerge_checkpoint::Checkpoint;
use evomerge_eval::{
    Candidate, ExportError, MergedCandidate, MlpCandidate, ModelFamily, PathCandidate, PathExporter,
};
use evomerge_genome::{DfsGenome, PsGenome, export_path};
use evomerge_kernels::{BufferPool, Device, FloatDType};
use evomerge_merge::{Plan, PlanOptions, Recipe, Sources, merge_in_memory_pooled};
use evomerge_models::{LayerPath, Llama, MLP_ARCHITECTURE, TensorMap, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the source models are, which decides what a merge of them becomes and which
/// evaluators and search spaces apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Llama-family decoders (anything that is not an MLP classifier): language models.
    Decoder,
    /// `EvomergeMlp` classifier checkpoints.
    Mlp,
}

/// The `architectures` entry of a model folder's config.json, if it has one.
fn architecture(dir: &str) -> Option<String> {
    let text = std::fs::read_to_string(Path::new(dir).join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
}

impl Family {
    /// What the evaluators see this family as.
    pub(crate) fn model_family(self) -> ModelFamily {
        match self {
            Family::Decoder => ModelFamily::LanguageModel,
            Family::Mlp => ModelFamily::Classifier,
        }
    }

    /// The family of a model folder, from its config.json.
    pub(crate) fn of_dir(dir: &str) -> Family {
        if architecture(dir).as_deref() == Some(MLP_ARCHITECTURE) {
            Family::Mlp
        } else {
            Family::Decoder
        }
    }

    /// The family of all the models of a run; they must agree.
    pub(crate) fn of_models(dirs: &[&str]) -> Result<Family, RunError> {
        let (mlp, other): (Vec<&str>, Vec<&str>) =
            dirs.iter().partition(|d| Family::of_dir(d) == Family::Mlp);
        match (mlp.first(), other.first()) {
            (Some(m), Some(o)) => Err(RunError::Config(format!(
                "the models mix {MLP_ARCHITECTURE} classifiers ({m}) and other models ({o}, {}); \
                 a merge needs models of one architecture — list only MLP checkpoints or only \
                 language models",
                architecture(o).unwrap_or_else(|| "no architectures in config.json".into())
            ))),
            (Some(_), None) => Ok(Family::Mlp),
            _ => Ok(Family::Decoder),
        }
    }

    /// Whether the experiment's evaluators and genome suit this family (`example` names a
    /// source model for the message).
    pub(crate) fn check(
        self,
        evaluators: &[EvaluatorSpec],
        genome: GenomeKind,
        example: &str,
    ) -> Result<(), RunError> {
        let what = match self {
            Family::Mlp => format!("{MLP_ARCHITECTURE} classifiers"),
            Family::Decoder => format!(
                "{} models",
                architecture(example).unwrap_or_else(|| "language".into())
            ),
        };
        let family = self.model_family();
        for (i, e) in evaluators.iter().enumerate() {
            let Some(kind) = kind_named(e.kind()) else {
                continue;
            };
            if kind.accepts().contains(&family) {
                continue;
            }
            let instead: Vec<&str> = KINDS
                .iter()
                .filter(|k| k.accepts().contains(&family))
                .map(|k| k.usage())
                .collect();
            let fix = format!(
                "kind = \"{}\" {}; score {} with {}",
                kind.name(),
                kind.scores(),
                family.plural(),
                instead.join(" or ")
            );
            return Err(RunError::Config(format!(
                "[[evaluators]] #{} (kind = \"{}\") does not fit the sources, which are {what} \
                 ({example}): {fix}",
                i + 1,
                e.kind()
            )));
        }
        if self == Family::Mlp && genome != GenomeKind::Ps {
            return Err(RunError::Config(format!(
                "[genome] kind = \"{}\" searches layer paths through decoder layers, but the \
                 sources are {what} ({example}), which have no layer paths; use kind = \"ps\" to \
                 search merge weights and densities",
                match genome {
                    GenomeKind::Dfs => "dfs",
                    _ => "ps+dfs",
                }
            )));
        }
        Ok(())
    }
}

/// A stable 64-bit FNV-1a hash of a decoded candidate, as 16 hex digits (the cache key).
pub fn key_of(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What a vector decodes to, before it is built.
#[derive(Debug, Clone)]
pub enum Decoded {
    Recipe(Box<Recipe>),
    Path(LayerPath),
}

impl Decoded {
    /// The canonical text of the decoded candidate (recipe TOML or path JSON).
    pub fn canonical(&self) -> String {
        match self {
            Decoded::Recipe(r) => r.to_toml(),
            Decoded::Path(p) => serde_json::to_string(p).expect("paths serialize"),
        }
    }

    /// The cache key.
    pub fn key(&self) -> String {
        key_of(&self.canonical())
    }
}

/// `m:l*scale` per hop, space separated.
pub fn path_text(path: &LayerPath) -> String {
    path.hops
        .iter()
        .map(|h| format!("{}:{}*{:.3}", h.model, h.layer, h.scale))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A parameter-space stage.
pub struct PsSpace {
    pub genome: PsGenome,
    /// The source checkpoints (memory maps): every candidate is merged straight from them.
    pub sources: Sources,
    /// The tokenizer of decoder merges (and the folder an export copies it from); `None` for
    /// MLP classifiers.
    tokenizer: Option<(Arc<Tokenizer>, PathBuf)>,
    device: Device,
    merge_seed: u64,
    /// The precision candidates are evaluated in (`None`: f32).
    eval_dtype: Option<FloatDType>,
    /// The buffers of the last dropped candidate, which the next merge writes into.
    pool: BufferPool,
}

/// A data-flow stage.
pub struct DfsSpace {
    pub genome: DfsGenome,
    pub models: Vec<Arc<Llama>>,
    /// Where each model's checkpoint is (A may be a merged model written to `a_dir`).
    pub model_dirs: Vec<PathBuf>,
    tokenizer: Arc<Tokenizer>,
    /// The models loaded again on the other devices candidates hold (`[execution] devices`
    /// with a GPU run device): one copy per GPU, loaded on first use.
    placed: Mutex<Vec<(Device, Vec<Arc<Llama>>)>>,
    /// The precision the models compute in (`None`: f32).
    eval_dtype: Option<FloatDType>,
}

/// One stage's space.
pub enum Space {
    Ps(Box<PsSpace>),
    Dfs(Box<DfsSpace>),
}

fn tokenizer_dir(candidates: &[&str]) -> Result<PathBuf, RunError> {
    for c in candidates {
        if Path::new(c).join("tokenizer.json").exists() {
            return Ok(PathBuf::from(c));
        }
    }
    Err(RunError::Config(format!(
        "none of the models has a tokenizer.json ({}); the in-process evaluators need one",
        candidates.join(", ")
    )))
}

impl PsSpace {
    /// Open the sources, check the genome against them and upload every tensor.
    pub(crate) fn new(
        genome: PsGenome,
        base: Option<&str>,
        family: Family,
        device: &Device,
        merge_seed: u64,
    ) -> Result<PsSpace, RunError> {
        // The initial recipe names every model the genome can produce: open them once.
        let probe = genome.decode(&genome.initial())?;
        let sources = Sources::open(&probe, None)?;
        // Planning the initial recipe checks shapes, names and parameters before any work.
        Plan::build(&probe, &sources, &PlanOptions::default())?;
        let first = &sources.models[0].checkpoint;
        let names: Vec<&str> = first.names().collect();
        genome.validate_filters(names.iter().copied())?;
        let tokenizer = match family {
            Family::Decoder => {
                let mut dirs: Vec<&str> = base.into_iter().collect();
                dirs.extend(genome.models().iter().map(String::as_str));
                let tok_dir = tokenizer_dir(&dirs)?;
                Some((Arc::new(Tokenizer::from_dir(&tok_dir)?), tok_dir))
            }
            Family::Mlp => None,
        };
        Ok(PsSpace {
            genome,
            sources,
            tokenizer,
            device: device.clone(),
            merge_seed,
            eval_dtype: None,
            pool: BufferPool::new(),
        })
    }

    /// Evaluate candidates in `dtype` (`None`: f32).
    pub fn with_eval_dtype(mut self, dtype: Option<FloatDType>) -> PsSpace {
        self.eval_dtype = dtype;
        self
    }

    /// Decode a vector.
    pub fn decode(&self, x: &[f64]) -> Result<Decoded, RunError> {
        Ok(Decoded::Recipe(Box::new(self.genome.decode(x)?)))
    }

    /// Merge a recipe in memory into a candidate: a language model, or an MLP classifier;
    /// on `device` (the GPU the candidate holds), else on the run's device.
    pub fn build(
        &self,
        recipe: &Recipe,
        label: &str,
        device: Option<&Device>,
    ) -> Result<Box<dyn Candidate>, String> {
        let device = device.unwrap_or(&self.device);
        let plan = Plan::build(recipe, &self.sources, &PlanOptions::default())
            .map_err(|e| e.to_string())?;
        // Language models are merged straight into the evaluation precision (a tensor at a
        // time); classifiers are scored in f32.
        let dtype = self.tokenizer.as_ref().and(self.eval_dtype);
        let merged = merge_in_memory_pooled(
            &plan,
            &self.sources,
            device,
            self.merge_seed,
            dtype,
            &self.pool,
        )
        .map_err(|e| e.to_string())?;
        let config = plan
            .config
            .clone()
            .ok_or("the base model has no config.json")?;
        let tensors = TensorMap::from_views(label, merged);
        match &self.tokenizer {
            Some((tokenizer, dir)) => Ok(Box::new(
                MergedCandidate::new(
                    label,
                    config,
                    tensors,
                    tokenizer.clone(),
                    Some(dir.clone()),
                    device,
                )
                .map_err(|e| e.to_string())?
                .with_eval_dtype(self.eval_dtype),
            )),
            None => Ok(Box::new(
                MlpCandidate::from_tensors(label, &config, &tensors).map_err(|e| e.to_string())?,
            )),
        }
    }
}

impl DfsSpace {
    /// Load the models (A first) and build the genome over their layer counts.
    pub fn new(
        spec: evomerge_genome::DfsSpec,
        models: Vec<Arc<Llama>>,
        model_dirs: Vec<PathBuf>,
        tokenizer: Arc<Tokenizer>,
    ) -> Result<DfsSpace, RunError> {
        let layers: Vec<usize> = models.iter().map(|m| m.num_layers()).collect();
        let genome = DfsGenome::new(spec, layers)?;
        Ok(DfsSpace {
            genome,
            models,
            model_dirs,
            tokenizer,
            placed: Mutex::new(Vec::new()),
            eval_dtype: None,
        })
    }

    /// The precision `models` compute in (they are cast by the caller), and the models loaded
    /// on other devices will.
    pub fn with_eval_dtype(mut self, dtype: Option<FloatDType>) -> DfsSpace {
        self.eval_dtype = dtype;
        self
    }

    pub fn decode(&self, x: &[f64]) -> Result<Decoded, RunError> {
        Ok(Decoded::Path(self.genome.decode(x)?))
    }

    /// A path over the loaded models. Written for a command evaluator, it is what
    /// [`export_path`] writes: the plain frankenmerge (layers duplicated along the path) when no
    /// hop is scaled, which lm-eval and vLLM load as an ordinary model; otherwise the path
    /// checkpoint with its transformers modeling file, which needs `trust_remote_code=True`.
    pub fn build(
        &self,
        path: &LayerPath,
        label: &str,
        device: Option<&Device>,
    ) -> Result<PathCandidate, String> {
        let models = match device {
            Some(d) if !same_device(d, self.models[0].device()) => self.models_on(d)?,
            _ => self.models.clone(),
        };
        let dirs = self.model_dirs.clone();
        let exporter: Arc<dyn PathExporter> = Arc::new(
            move |p: &LayerPath, out: &Path| -> Result<(), ExportError> {
                let ckpts: Vec<Checkpoint> = dirs
                    .iter()
                    .map(Checkpoint::open)
                    .collect::<Result<_, _>>()?;
                let refs: Vec<&Checkpoint> = ckpts.iter().collect();
                export_path(p, &refs, out, false)?;
                Ok(())
            },
        );
        PathCandidate::new(label, models, path.clone(), self.tokenizer.clone())
            .map(|c| c.with_exporter(exporter))
            .map_err(|e| e.to_string())
    }
}

/// Whether two devices are one (burn's equality does not tell a device from its autodiff
/// wrapper).
fn same_device(a: &Device, b: &Device) -> bool {
    a == b && a.is_autodiff() == b.is_autodiff()
}

impl DfsSpace {
    /// The models on `device`, loaded from their folders the first time a candidate there
    /// needs them (a candidate waits while another loads them).
    fn models_on(&self, device: &Device) -> Result<Vec<Arc<Llama>>, String> {
        let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = placed.iter().find(|(d, _)| same_device(d, device)) {
            return Ok(m.clone());
        }
        let models = self
            .model_dirs
            .iter()
            .map(|d| crate::setup::load_model(d, device, self.eval_dtype))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("loading the models on {device:?}: {e}"))?;
        placed.push((device.clone(), models.clone()));
        Ok(models)
    }
}

impl Space {
    pub fn decode(&self, x: &[f64]) -> Result<Decoded, RunError> {
        match self {
            Space::Ps(s) => s.decode(x),
            Space::Dfs(s) => s.decode(x),
        }
    }

    /// Build the candidate a decoded vector describes, on `device` (the GPU the candidate
    /// holds) or else on the run's device.
    pub fn build(
        &self,
        decoded: &Decoded,
        label: &str,
        device: Option<&Device>,
    ) -> Result<Box<dyn Candidate>, String> {
        match (self, decoded) {
            (Space::Ps(s), Decoded::Recipe(r)) => s.build(r, label, device),
            (Space::Dfs(s), Decoded::Path(p)) => Ok(Box::new(s.build(p, label, device)?)),
            _ => Err("internal: decoded value does not match the stage".into()),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Space::Ps(s) => s.genome.dim(),
            Space::Dfs(s) => s.genome.dim(),
        }
    }

    pub fn bounds(&self) -> (Vec<f64>, Vec<f64>) {
        match self {
            Space::Ps(s) => s.genome.bounds(),
            Space::Dfs(s) => s.genome.bounds(),
        }
    }

    pub fn initial(&self) -> Vec<f64> {
        match self {
            Space::Ps(s) => s.genome.initial(),
            Space::Dfs(s) => s.genome.initial(),
        }
    }

    pub fn sigma0(&self) -> f64 {
        match self {
            Space::Ps(s) => s.genome.sigma0(),
            Space::Dfs(s) => s.genome.sigma0(),
        }
    }

    /// The decoded parameters of a vector as candidates.csv logs them: PS gene values in
    /// gene order and the method, or a DFS path.
    pub fn params(&self, x: &[f64], decoded: &Decoded) -> Params {
        match (self, decoded) {
            (Space::Ps(s), Decoded::Recipe(r)) => {
                let vals = s.genome.values(x).unwrap_or_default();
                let params = s.genome.params();
                let genes = s
                    .genome
                    .genes()
                    .iter()
                    .map(|g| {
                        let p = params.iter().position(|q| *q == g.param).unwrap_or(0);
                        vals.get(g.group)
                            .and_then(|v| v.get(g.model))
                            .and_then(|v| v.get(g.set))
                            .and_then(|v| v.get(p))
                            .copied()
                    })
                    .collect();
                Params::Ps {
                    genes,
                    method: r.merge_method.clone(),
                }
            }
            (Space::Dfs(_), Decoded::Path(p)) => Params::Dfs {
                hops: p.len(),
                path: path_text(p),
            },
            _ => Params::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_checkpoint::Dtype;
    use evomerge_genome::{DfsSpec, PATH_MODEL_TYPE, PATH_MODELING_PY};
    use evomerge_models::Hop;
    use evomerge_zoo::TinyLlama;

    /// What a command evaluator gets for a DFS candidate: the plain frankenmerge when no hop is
    /// scaled (an ordinary model for lm-eval and vLLM), the trust_remote_code path checkpoint
    /// otherwise; never a folder that loads as a model with the stored layers in order.
    #[test]
    fn command_evaluators_get_a_folder_transformers_reads_right() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = TinyLlama {
            layers: 2,
            ..Default::default()
        };
        let dirs = vec![tmp.path().join("a"), tmp.path().join("b")];
        let a = spec.random(1);
        a.save(&dirs[0], Dtype::F32, u64::MAX).unwrap();
        a.perturbed(2, 0.05)
            .save(&dirs[1], Dtype::F32, u64::MAX)
            .unwrap();
        let device = Device::flex();
        let models: Vec<Arc<Llama>> = dirs
            .iter()
            .map(|d| Arc::new(Llama::from_dir(d, &device).unwrap()))
            .collect();
        let tokenizer = Arc::new(Tokenizer::from_dir(&dirs[0]).unwrap());
        let space = DfsSpace::new(DfsSpec::default(), models, dirs, tokenizer).unwrap();
        let path = |scale| LayerPath {
            hops: vec![
                Hop {
                    model: 0,
                    layer: 0,
                    scale: 1.0,
                },
                Hop {
                    model: 1,
                    layer: 0,
                    scale,
                },
                Hop {
                    model: 0,
                    layer: 1,
                    scale: 1.0,
                },
            ],
        };
        let config = |dir: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap()
        };

        let plain = tmp.path().join("plain");
        space
            .build(&path(1.0), "c0", None)
            .unwrap()
            .write_hf_folder(&plain)
            .unwrap();
        let c = config(&plain);
        assert_eq!(c["model_type"], "llama");
        assert_eq!(c["num_hidden_layers"], 3);
        assert!(c.get("input_layers").is_none() && c.get("auto_map").is_none());
        assert!(plain.join("tokenizer_config.json").exists());

        let scaled = tmp.path().join("scaled");
        space
            .build(&path(0.5), "c1", None)
            .unwrap()
            .write_hf_folder(&scaled)
            .unwrap();
        let c = config(&scaled);
        assert_eq!(c["model_type"], PATH_MODEL_TYPE);
        assert_eq!(c["input_scales"], serde_json::json!([1.0, 0.5, 1.0]));
        assert!(c["auto_map"]["AutoModelForCausalLM"].is_string());
        assert!(scaled.join(PATH_MODELING_PY.0).exists());
        assert!(scaled.join("tokenizer_config.json").exists());

        // On another device (the GPU a candidate holds; the autodiff device stands for one
        // here) the path runs over the models loaded there once, with the same logits.
        let other = Device::flex().autodiff();
        let tokens = [1u32, 5, 9, 3];
        let logits = |c: &dyn Candidate| {
            let lm = c.language_model().unwrap();
            lm.decoder().logits(&tokens).unwrap().concat()
        };
        let here = space.build(&path(0.5), "c2", None).unwrap();
        for _ in 0..2 {
            let there = space.build(&path(0.5), "c3", Some(&other)).unwrap();
            assert!(
                there
                    .language_model()
                    .unwrap()
                    .decoder()
                    .device()
                    .is_autodiff()
            );
            let (x, y) = (logits(&here), logits(&there));
            assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
        }
        assert_eq!(
            space.placed.lock().unwrap().len(),
            1,
            "loaded once per device"
        );
    }

    /// A parameter-space candidate built for a device is merged there and its model runs
    /// there, with the logits of the run's device.
    #[test]
    fn a_ps_candidate_is_merged_on_the_device_it_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = TinyLlama {
            layers: 2,
            ..Default::default()
        };
        let dirs: Vec<String> = ["base", "a", "b"]
            .iter()
            .map(|n| tmp.path().join(n).display().to_string())
            .collect();
        let base = spec.random(1);
        base.save(Path::new(&dirs[0]), Dtype::F32, u64::MAX)
            .unwrap();
        for (i, d) in dirs[1..].iter().enumerate() {
            base.perturbed(2 + i as u64, 0.05)
                .save(Path::new(d), Dtype::F32, u64::MAX)
                .unwrap();
        }
        let genome = PsGenome::new(
            evomerge_genome::PsSpec::sakana(),
            dirs[1..].to_vec(),
            Some(dirs[0].clone()),
            2,
        )
        .unwrap();
        let space =
            PsSpace::new(genome, Some(&dirs[0]), Family::Decoder, &Device::flex(), 7).unwrap();
        let Decoded::Recipe(recipe) = space.decode(&space.genome.initial()).unwrap() else {
            panic!("a PS space decodes to a recipe")
        };
        let tokens = [1u32, 5, 9, 3];
        let logits = |c: &dyn Candidate| {
            let lm = c.language_model().unwrap();
            (
                lm.decoder().device().is_autodiff(),
                lm.decoder().logits(&tokens).unwrap().concat(),
            )
        };
        let (on_autodiff, here) = logits(space.build(&recipe, "c0", None).unwrap().as_ref());
        assert!(!on_autodiff);
        let other = Device::flex().autodiff();
        let (on_autodiff, there) =
            logits(space.build(&recipe, "c1", Some(&other)).unwrap().as_ref());
        assert!(on_autodiff);
        assert!(here.iter().zip(&there).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
