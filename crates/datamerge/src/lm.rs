//! Data-using merges of Llama-family language models: RegMean, Fisher merging and the greedy
//! soup, applied to the decoder's linear maps (`q/k/v/o_proj`, `gate/up/down_proj`, an untied
//! `lm_head`). Everything else (embeddings, norms, biases) takes the coefficient-weighted
//! average — the same rule the MLP versions apply to biases and norms.
//!
//! The statistics come from evomerge's own decoder ([`Decoder::forward_tapped`]) on each
//! model's text data:
//!
//! - RegMean: the Gram matrix `X^T X` of every linear map's input rows (real tokens only; the
//!   three q/k/v maps share one input, as do gate and up), then [`regmean_layer`] per map.
//! - Fisher: the empirical diagonal Fisher with one *sequence* as the example:
//!   `F = mean_s (d log p(s) / d theta)^2`, `log p(s)` the sum of the next-token
//!   log-probabilities of sequence `s`. A zero probe added to every map's output gives
//!   `delta[t]` for each position `t` in one backward pass per batch; the sequence's weight
//!   gradient is `sum_t delta[t] x[t]^T` (a batched matmul), squared after the sum, so no
//!   cross-sequence terms enter. The exact Fisher (expectation over the vocabulary at every
//!   position) would need one backward pass per vocabulary entry and is refused.
//! - Greedy soup: models sorted by validation loss (mean next-token negative log-likelihood),
//!   each next one added to the running uniform average while the loss strictly decreases.
//!
//! Not for: Git Re-Basin and REPAIR on transformers (their permutation symmetries — residual
//! stream, heads — need a permutation spec evomerge does not have for decoders).

use crate::fisher::{FisherKind, FisherMergeOptions, fisher_average, fisher_lambdas};
use crate::regmean::{GramScale, RegMeanOptions, regmean_layer};
use crate::{DataMergeError, DataMethod, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use evomerge_checkpoint::Checkpoint;
use evomerge_data::TextSet;
use evomerge_models::{Decoder, LinearSite, LinearTap, Llama, LlamaConfig, TensorMap, Tokenizer};
use nalgebra::DMatrix;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// One language model going into a merge.
#[derive(Debug, Clone)]
pub struct LmInput {
    /// The name the recipe uses, for messages.
    pub name: String,
    /// Its folder (config.json, safetensors, tokenizer.json).
    pub dir: PathBuf,
    /// The model's coefficient (`weight` in the recipe).
    pub coefficient: f64,
    /// Its text data (its own domain for Fisher and RegMean; the validation texts of the greedy
    /// soup).
    pub texts: Option<TextSet>,
}

/// Options of the LM merges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmOptions {
    pub fisher: FisherKind,
    pub fisher_merge: FisherMergeOptions,
    pub regmean: RegMeanOptions,
    /// Sequences per forward (and backward) pass.
    pub batch_size: usize,
    /// Tokens kept of each example (longer ones are cut; at most the model's context).
    pub max_tokens: usize,
}

impl Default for LmOptions {
    fn default() -> Self {
        LmOptions {
            fisher: FisherKind::Empirical,
            fisher_merge: FisherMergeOptions::default(),
            regmean: RegMeanOptions::default(),
            batch_size: 16,
            max_tokens: 256,
        }
    }
}

/// The tensor a linear map of layer `layer` writes, by Hugging Face name, with the rows of the
/// fused map it occupies.
fn site_parts(
    config: &LlamaConfig,
    layer: usize,
    site: LinearSite,
) -> Vec<(String, std::ops::Range<usize>)> {
    let p = format!("model.layers.{layer}.");
    let (q, kv, i) = (
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
        config.intermediate_size,
    );
    match site {
        LinearSite::Qkv => vec![
            (format!("{p}self_attn.q_proj"), 0..q),
            (format!("{p}self_attn.k_proj"), q..q + kv),
            (format!("{p}self_attn.v_proj"), q + kv..q + 2 * kv),
        ],
        LinearSite::O => vec![(format!("{p}self_attn.o_proj"), 0..config.hidden_size)],
        LinearSite::GateUp => vec![
            (format!("{p}mlp.gate_proj"), 0..i),
            (format!("{p}mlp.up_proj"), i..2 * i),
        ],
        LinearSite::Down => vec![(format!("{p}mlp.down_proj"), 0..config.hidden_size)],
        LinearSite::Head => vec![("lm_head".to_string(), 0..config.vocab_size)],
    }
}

/// Token ids of every text (with the tokenizer's special tokens), cut to `max_tokens`; texts
/// of fewer than two tokens (nothing to predict) are dropped.
pub fn encode_texts(tok: &Tokenizer, texts: &TextSet, max_tokens: usize) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for t in &texts.texts {
        let mut ids = tok
            .encode(t, true)
            .map_err(|e| DataMergeError::Invalid(e.to_string()))?;
        ids.truncate(max_tokens.max(2));
        if ids.len() >= 2 {
            out.push(ids);
        }
    }
    if out.is_empty() {
        return Err(DataMergeError::Invalid(format!(
            "{}: no example has two or more tokens",
            texts.name
        )));
    }
    Ok(out)
}

/// A row mask `[B*S, 1]`: 1 on real tokens, 0 on left padding.
fn real_rows(pads: &[usize], s: usize, device: &Device) -> Tensor<2> {
    let mut m = vec![0f32; pads.len() * s];
    for (r, &p) in pads.iter().enumerate() {
        m[r * s + p..(r + 1) * s].fill(1.0);
    }
    Tensor::from_data(TensorData::new(m, [pads.len() * s, 1]), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    evomerge_kernels::values_of(t)
}

/// Gram matrices of every linear map's inputs over some texts.
#[derive(Debug, Clone)]
pub struct LmGrams {
    /// Keyed by (layer, site); the LM head under (number of layers, Head).
    pub grams: HashMap<(usize, LinearSite), DMatrix<f64>>,
    /// Real tokens seen.
    pub tokens: usize,
}

struct GramTap {
    mask: Tensor<2>,
    grams: HashMap<(usize, LinearSite), DMatrix<f64>>,
}

impl LinearTap for GramTap {
    fn tap(
        &mut self,
        hop: usize,
        site: LinearSite,
        input: &Tensor<2>,
        _: usize,
    ) -> Option<Tensor<2>> {
        let d = input.dims()[1];
        let x = input.clone().mul(self.mask.clone());
        let g = host(x.clone().transpose().matmul(x));
        let acc = self
            .grams
            .entry((hop, site))
            .or_insert_with(|| DMatrix::zeros(d, d));
        for (a, v) in acc.iter_mut().zip(&g) {
            *a += *v as f64;
        }
        None
    }
}

/// The Gram matrices of `model`'s linear maps on `seqs`.
pub fn lm_grams(model: &Arc<Llama>, seqs: &[Vec<u32>], batch_size: usize) -> Result<LmGrams> {
    let decoder = Decoder::plain(model.clone());
    let mut tap = GramTap {
        mask: Tensor::zeros([1, 1], model.device()),
        grams: HashMap::new(),
    };
    let mut tokens = 0;
    for chunk in seqs.chunks(batch_size.max(1)) {
        let s = chunk.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = chunk.iter().map(|q| s - q.len()).collect();
        tap.mask = real_rows(&pads, s, model.device());
        decoder
            .forward_tapped(chunk, &mut tap)
            .map_err(|e| DataMergeError::Invalid(e.to_string()))?;
        tokens += chunk.iter().map(Vec::len).sum::<usize>();
    }
    Ok(LmGrams {
        grams: tap.grams,
        tokens,
    })
}

struct ProbeTap {
    device: Device,
    probes: Vec<(usize, LinearSite, Tensor<2>, Tensor<2>)>,
}

impl LinearTap for ProbeTap {
    fn tap(
        &mut self,
        hop: usize,
        site: LinearSite,
        input: &Tensor<2>,
        out_dim: usize,
    ) -> Option<Tensor<2>> {
        let n = input.dims()[0];
        let probe = Tensor::<2>::zeros([n, out_dim], &self.device).require_grad();
        self.probes.push((hop, site, probe.clone(), input.clone()));
        Some(probe)
    }
}

/// Diagonal empirical Fisher of the linear maps (see the module docs), by Hugging Face
/// parameter name (`...q_proj.weight` `[out, in]` row-major, and `.bias` where the model has
/// one), averaged over the sequences. `model` must live on an autodiff device.
pub fn lm_fisher(
    model: &Arc<Llama>,
    seqs: &[Vec<u32>],
    batch_size: usize,
) -> Result<BTreeMap<String, Vec<f64>>> {
    let config = model.config().clone();
    let device = model.device().clone();
    let decoder = Decoder::plain(model.clone());
    let layers = model.num_layers();
    let mut acc: HashMap<(usize, LinearSite), (Vec<f64>, Vec<f64>)> = HashMap::new();
    for chunk in seqs.chunks(batch_size.max(1)) {
        let b = chunk.len();
        let mut tap = ProbeTap {
            device: device.clone(),
            probes: Vec::new(),
        };
        let (logits, pads, s) = decoder
            .forward_tapped(chunk, &mut tap)
            .map_err(|e| DataMergeError::Invalid(e.to_string()))?;
        // Position i predicts token i + 1 of its row.
        let mut targets = vec![0i32; b * s];
        let mut w = vec![0f32; b * s];
        for (r, q) in chunk.iter().enumerate() {
            for i in pads[r]..s - 1 {
                targets[r * s + i] = q[i + 1 - pads[r]] as i32;
                w[r * s + i] = 1.0;
            }
        }
        let idx: Tensor<2, Int> = Tensor::from_data(TensorData::new(targets, [b * s, 1]), &device);
        let w = Tensor::<2>::from_data(TensorData::new(w, [b * s, 1]), &device);
        let loss = log_softmax(logits, 1).gather(1, idx).mul(w).sum();
        let grads = loss.backward();
        for (hop, site, probe, input) in tap.probes {
            let delta = probe
                .grad(&grads)
                .expect("probes require a gradient")
                .inner();
            let x = input.inner();
            let (out, inp) = (delta.dims()[1], x.dims()[1]);
            let d3 = delta.reshape([b, s, out]);
            // Per-sequence gradients [B, out, in], squared, summed over the batch.
            let gw = d3.clone().swap_dims(1, 2).matmul(x.reshape([b, s, inp]));
            let gw = host(gw.square().sum_dim(0));
            let gb = host(d3.sum_dim(1).square().sum_dim(0));
            let (aw, ab) = acc
                .entry((hop, site))
                .or_insert_with(|| (vec![0.0; out * inp], vec![0.0; out]));
            aw.iter_mut().zip(&gw).for_each(|(a, v)| *a += *v as f64);
            ab.iter_mut().zip(&gb).for_each(|(a, v)| *a += *v as f64);
        }
    }
    let n = seqs.len().max(1) as f64;
    let mut out = BTreeMap::new();
    for ((hop, site), (gw, gb)) in acc {
        let layer = if site == LinearSite::Head {
            layers
        } else {
            hop
        };
        let inp = gw.len() / gb.len();
        for (name, rows) in site_parts(&config, layer, site) {
            let w: Vec<f64> = gw[rows.start * inp..rows.end * inp]
                .iter()
                .map(|v| v / n)
                .collect();
            out.insert(format!("{name}.weight"), w);
            out.insert(
                format!("{name}.bias"),
                gb[rows].iter().map(|v| v / n).collect(),
            );
        }
    }
    Ok(out)
}

/// Mean next-token negative log-likelihood (nats per predicted token) of `model` on `seqs`.
pub fn lm_loss(model: &Arc<Llama>, seqs: &[Vec<u32>], batch_size: usize) -> Result<f64> {
    let decoder = Decoder::plain(model.clone());
    let requests: Vec<(Vec<u32>, Vec<u32>)> = seqs
        .iter()
        .map(|q| (q[..1].to_vec(), q[1..].to_vec()))
        .collect();
    let scores = decoder
        .loglik(&requests, batch_size)
        .map_err(|e| DataMergeError::Invalid(e.to_string()))?;
    let (sum, n) = scores.iter().fold((0.0, 0usize), |(s, n), c| {
        (s + c.total(), n + c.logprobs.len())
    });
    Ok(-sum / n.max(1) as f64)
}

/// What a greedy soup of language models did.
#[derive(Debug, Clone, PartialEq)]
pub struct LmSoup {
    /// Indices of the ingredients, in the order they were added.
    pub ingredients: Vec<usize>,
    /// Validation loss of each input model.
    pub individual_loss: Vec<f64>,
    /// Validation loss of the soup.
    pub loss: f64,
}

/// The merged tensors, by output name.
pub type Merged = BTreeMap<String, Vec<f32>>;

/// One output tensor: its name, shape and the stored name of each input model's tensor.
#[derive(Debug, Clone)]
pub struct LmTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub inputs: Vec<String>,
}

fn invalid(msg: String) -> DataMergeError {
    DataMergeError::Invalid(msg)
}

struct Loaded {
    config: LlamaConfig,
    ckpts: Vec<Checkpoint>,
}

fn open_all(inputs: &[LmInput]) -> Result<Loaded> {
    let ckpts = inputs
        .iter()
        .map(|i| Checkpoint::open(&i.dir).map_err(|e| invalid(format!("model {}: {e}", i.name))))
        .collect::<Result<Vec<_>>>()?;
    let config = LlamaConfig::from_dir(&inputs[0].dir)
        .map_err(|e| invalid(format!("model {}: {e}", inputs[0].name)))?;
    Ok(Loaded { config, ckpts })
}

fn texts_of(method: DataMethod, input: &LmInput) -> Result<&TextSet> {
    input.texts.as_ref().ok_or_else(|| {
        invalid(format!(
            "{} needs text data for model {}: add a `data` section to the recipe with dataset = a *.txt or *.jsonl file",
            method.name(),
            input.name
        ))
    })
}

fn tokens_of(
    method: DataMethod,
    input: &LmInput,
    options: &LmOptions,
    context: usize,
) -> Result<Vec<Vec<u32>>> {
    let tok = Tokenizer::from_dir(&input.dir)
        .map_err(|e| invalid(format!("model {}: {e}", input.name)))?;
    encode_texts(
        &tok,
        texts_of(method, input)?,
        options.max_tokens.min(context),
    )
}

fn read(ckpt: &Checkpoint, name: &str, model: &str) -> Result<Vec<f32>> {
    ckpt.read_f32(name)
        .map_err(|e| invalid(format!("model {model}: {name}: {e}")))
}

/// Run a data-using method over whole language models, calling `emit(name, values)` for each
/// of `tensors` in order. The models must share one architecture and tokenizer vocabulary.
pub fn merge_lms(
    method: DataMethod,
    inputs: &[LmInput],
    tensors: &[LmTensor],
    options: &LmOptions,
    mut emit: impl FnMut(&str, Vec<f32>) -> Result<()>,
) -> Result<()> {
    if inputs.is_empty() {
        return Err(invalid(format!("{}: no models", method.name())));
    }
    let loaded = open_all(inputs)?;
    let coefs: Vec<f64> = inputs.iter().map(|i| i.coefficient).collect();
    if coefs.iter().any(|c| *c < 0.0 || !c.is_finite()) || coefs.iter().sum::<f64>() <= 0.0 {
        return Err(invalid(format!(
            "{}: model weights must be non-negative and not all zero",
            method.name()
        )));
    }
    let context = loaded.config.max_position_embeddings;
    let load = |i: usize, device: &Device| -> Result<Arc<Llama>> {
        Llama::load(loaded.config.clone(), &loaded.ckpts[i], device)
            .map(Arc::new)
            .map_err(|e| invalid(format!("model {}: {e}", inputs[i].name)))
    };
    let values_of = |t: &LmTensor| -> Result<Vec<Vec<f32>>> {
        t.inputs
            .iter()
            .enumerate()
            .map(|(i, n)| read(&loaded.ckpts[i], n, &inputs[i].name))
            .collect()
    };
    let total: f64 = coefs.iter().sum();
    let average = |vals: &[Vec<f32>], weights: &[f64]| -> Vec<f32> {
        let mut out = vec![0f32; vals[0].len()];
        for (v, w) in vals.iter().zip(weights) {
            out.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o += *x * *w as f32);
        }
        out
    };
    match method {
        DataMethod::RegMean => {
            let device = Device::flex();
            let mut grams = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                let seqs = tokens_of(method, input, options, context)?;
                let g = lm_grams(&load(i, &device)?, &seqs, options.batch_size)?;
                grams.push(g);
            }
            let tied = loaded.config.tie_word_embeddings;
            let layers = loaded.config.num_layers;
            // Coefficients normalised so equal weights scale each Gram by 1.
            let m = inputs.len() as f64;
            let scaled: Vec<f64> = coefs.iter().map(|c| c / total * m).collect();
            for t in tensors {
                let vals = values_of(t)?;
                let key = linear_of(&t.name, layers, tied);
                let merged = match key {
                    Some(key) if t.shape.len() == 2 => {
                        let (d_out, d_in) = (t.shape[0], t.shape[1]);
                        let gs: Vec<DMatrix<f64>> = grams
                            .iter()
                            .map(|g| {
                                let gram = &g.grams[&key];
                                match options.regmean.scale {
                                    GramScale::Sum => gram.clone(),
                                    GramScale::Mean => gram / g.tokens.max(1) as f64,
                                }
                            })
                            .collect();
                        let ws: Vec<DMatrix<f64>> = vals
                            .iter()
                            .map(|v| {
                                let f: Vec<f64> = v.iter().map(|x| *x as f64).collect();
                                DMatrix::from_column_slice(d_in, d_out, &f)
                            })
                            .collect();
                        let r = regmean_layer(
                            &gs,
                            &ws,
                            &scaled,
                            options.regmean.alpha,
                            options.regmean.ridge,
                            key.0,
                            &t.name,
                        )?;
                        // [in, out] column-major is [out, in] row-major.
                        r.as_slice().iter().map(|v| *v as f32).collect()
                    }
                    _ => {
                        let w: Vec<f64> = coefs.iter().map(|c| c / total).collect();
                        average(&vals, &w)
                    }
                };
                emit(&t.name, merged)?;
            }
        }
        DataMethod::Fisher => {
            if options.fisher == FisherKind::Exact {
                return Err(invalid(format!(
                    "fisher = \"exact\" on a language model would need one backward pass per vocabulary entry ({}) at every position; use fisher = \"empirical\" (the default for language models)",
                    loaded.config.vocab_size
                )));
            }
            let device = Device::flex().autodiff();
            let mut fishers = Vec::new();
            for (i, input) in inputs.iter().enumerate() {
                let seqs = tokens_of(method, input, options, context)?;
                fishers.push(lm_fisher(&load(i, &device)?, &seqs, options.batch_size)?);
            }
            let norms: Vec<f64> = fishers
                .iter()
                .map(|f| f.values().flatten().map(|v| v * v).sum::<f64>().sqrt())
                .collect();
            let lambdas = fisher_lambdas(&coefs, &norms, &options.fisher_merge)?;
            let tied = loaded.config.tie_word_embeddings;
            for t in tensors {
                let vals = values_of(t)?;
                let key = if tied && t.name == "lm_head.weight" {
                    None
                } else {
                    Some(t.name.as_str())
                };
                let fs: Vec<Option<&[f64]>> = fishers
                    .iter()
                    .map(|f| {
                        key.and_then(|k| f.get(k))
                            .filter(|v| v.len() == vals[0].len())
                            .map(Vec::as_slice)
                    })
                    .collect();
                let refs: Vec<&[f32]> = vals.iter().map(Vec::as_slice).collect();
                emit(
                    &t.name,
                    fisher_average(&refs, &fs, &lambdas, options.fisher_merge.epsilon),
                )?;
            }
        }
        DataMethod::GreedySoup => {
            let soup = greedy_lm_soup(inputs, tensors, &loaded, options, &values_of)?;
            let k = soup.ingredients.len() as f64;
            let mut w = vec![0.0; inputs.len()];
            for &i in &soup.ingredients {
                w[i] = 1.0 / k;
            }
            for t in tensors {
                let vals = values_of(t)?;
                emit(&t.name, average(&vals, &w))?;
            }
        }
        DataMethod::GitRebasin | DataMethod::Repair => {
            return Err(invalid(format!(
                "{} aligns the hidden units of MLP classifiers; for Llama-family decoders evomerge has no permutation spec (residual stream, attention heads), so it cannot align them — models fine-tuned from one base need no alignment: use linear, ties or regmean",
                method.name()
            )));
        }
    }
    Ok(())
}

/// The (layer, site) whose input feeds the linear weight `name`, if it is one.
fn linear_of(name: &str, layers: usize, tied: bool) -> Option<(usize, LinearSite)> {
    if name == "lm_head.weight" {
        return (!tied).then_some((layers, LinearSite::Head));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (l, tail) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let site = match tail {
        "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
            LinearSite::Qkv
        }
        "self_attn.o_proj.weight" => LinearSite::O,
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => LinearSite::GateUp,
        "mlp.down_proj.weight" => LinearSite::Down,
        _ => return None,
    };
    Some((l, site))
}

fn greedy_lm_soup(
    inputs: &[LmInput],
    tensors: &[LmTensor],
    loaded: &Loaded,
    options: &LmOptions,
    values_of: &dyn Fn(&LmTensor) -> Result<Vec<Vec<f32>>>,
) -> Result<LmSoup> {
    let method = DataMethod::GreedySoup;
    let device = Device::flex();
    let context = loaded.config.max_position_embeddings;
    // One validation set for every candidate: the first model's texts.
    let val = tokens_of(method, &inputs[0], options, context)?;
    let all: Vec<Vec<Vec<f32>>> = tensors.iter().map(values_of).collect::<Result<_>>()?;
    let build = |weights: &[f64]| -> Result<Arc<Llama>> {
        let mut map = TensorMap::new("soup");
        for (t, vals) in tensors.iter().zip(&all) {
            let mut v = vec![0f32; vals[0].len()];
            for (x, w) in vals.iter().zip(weights) {
                if *w != 0.0 {
                    v.iter_mut().zip(x).for_each(|(o, a)| *o += *a * *w as f32);
                }
            }
            let shape = evomerge_kernels::view_shape(&t.shape);
            map.insert(
                t.name.clone(),
                Tensor::from_data(TensorData::new(v, shape), &device),
            );
        }
        Llama::load(loaded.config.clone(), &map, &device)
            .map(Arc::new)
            .map_err(|e| invalid(format!("greedy soup: {e}")))
    };
    let m = inputs.len();
    let one_hot =
        |i: usize| -> Vec<f64> { (0..m).map(|j| if i == j { 1.0 } else { 0.0 }).collect() };
    let individual_loss: Vec<f64> = (0..m)
        .map(|i| lm_loss(&build(&one_hot(i))?, &val, options.batch_size))
        .collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| individual_loss[*a].total_cmp(&individual_loss[*b]));
    let mut ingredients = vec![order[0]];
    let mut best = individual_loss[order[0]];
    for &i in &order[1..] {
        let k = ingredients.len() as f64 + 1.0;
        let mut w = vec![0.0; m];
        for &j in ingredients.iter().chain([i].iter()) {
            w[j] = 1.0 / k;
        }
        let loss = lm_loss(&build(&w)?, &val, options.batch_size)?;
        if loss < best {
            best = loss;
            ingredients.push(i);
        }
    }
    Ok(LmSoup {
        ingredients,
        individual_loss,
        loss: best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_checkpoint::Dtype;
    use evomerge_zoo::{TinyLlama, Weights};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn spec() -> TinyLlama {
        TinyLlama {
            hidden: 16,
            intermediate: 24,
            layers: 2,
            vocab: 32,
            heads: 4,
            kv_heads: 2,
            ..TinyLlama::default()
        }
    }

    fn save(w: &Weights, dir: &std::path::Path) -> PathBuf {
        w.save(dir, Dtype::F32, u64::MAX).unwrap();
        dir.to_path_buf()
    }

    /// Random word-level texts of 3..12 tokens.
    fn texts(seed: u64, n: usize, vocab: usize) -> TextSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        TextSet {
            name: "t".into(),
            texts: (0..n)
                .map(|_| {
                    let len = rng.random_range(3..12);
                    (0..len)
                        .map(|_| format!("tok{}", rng.random_range(3..vocab)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect(),
        }
    }

    fn model(dir: &std::path::Path, device: &Device) -> Arc<Llama> {
        Arc::new(Llama::from_dir(dir, device).unwrap())
    }

    fn seqs_of(dir: &std::path::Path, t: &TextSet) -> Vec<Vec<u32>> {
        encode_texts(&Tokenizer::from_dir(dir).unwrap(), t, 64).unwrap()
    }

    #[test]
    fn grams_are_the_inputs_outer_products_over_real_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let w = spec().random(1);
        let dir = save(&w, &tmp.path().join("m"));
        let seqs = seqs_of(&dir, &texts(0, 9, 32));
        let m = model(&dir, &Device::flex());
        // Batches of 4 with left padding inside each.
        let g = lm_grams(&m, &seqs, 4).unwrap();
        assert_eq!(g.tokens, seqs.iter().map(Vec::len).sum::<usize>());
        // Layer 0's q/k/v input is rms_norm(embedding) * input_layernorm, per token.
        let h = 16;
        let embed = w.get("model.embed_tokens.weight").unwrap();
        let norm = w.get("model.layers.0.input_layernorm.weight").unwrap();
        let mut want = DMatrix::<f64>::zeros(h, h);
        for id in seqs.iter().flatten() {
            let e = &embed[*id as usize * h..(*id as usize + 1) * h];
            let ms = e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / h as f64;
            let x: Vec<f64> = e
                .iter()
                .zip(norm)
                .map(|(v, n)| *v as f64 / (ms + 1e-6).sqrt() * *n as f64)
                .collect();
            let x = DMatrix::from_column_slice(h, 1, &x);
            want += &x * x.transpose();
        }
        let got = &g.grams[&(0, LinearSite::Qkv)];
        let err = (got - &want).abs().max() / want.abs().max();
        assert!(err < 1e-4, "relative error {err}");
        // Every site of every layer and the head have a Gram of the map's input width.
        for l in 0..2 {
            assert_eq!(g.grams[&(l, LinearSite::O)].nrows(), 16);
            assert_eq!(g.grams[&(l, LinearSite::Down)].nrows(), 24);
        }
        assert_eq!(g.grams[&(2, LinearSite::Head)].nrows(), 16);
    }

    /// Central finite difference of `log p(seq)` with respect to one stored weight entry.
    fn fd_grad(w: &Weights, name: &str, idx: usize, seq: &[u32]) -> f64 {
        let spec_cfg = LlamaConfig::from_json(&w.config, "test").unwrap();
        let eps = 1e-2f32;
        let device = Device::flex();
        let logp = |delta: f32| {
            let mut map = TensorMap::new("fd");
            for (n, s, v) in &w.tensors {
                let mut v = v.clone();
                if n == name {
                    v[idx] += delta;
                }
                let shape = evomerge_kernels::view_shape(s);
                map.insert(
                    n.clone(),
                    Tensor::from_data(TensorData::new(v, shape), &device),
                );
            }
            let m = Arc::new(Llama::load(spec_cfg.clone(), &map, &device).unwrap());
            -lm_loss(&m, &[seq.to_vec()], 1).unwrap() * (seq.len() - 1) as f64
        };
        (logp(eps) - logp(-eps)) / (2.0 * eps as f64)
    }

    #[test]
    fn fisher_is_the_mean_squared_per_sequence_gradient() {
        let tmp = tempfile::tempdir().unwrap();
        let w = spec().random(2);
        let dir = save(&w, &tmp.path().join("m"));
        // Two sequences of different lengths in one batch (left padding).
        let seqs = vec![vec![5u32, 9, 14, 3, 22, 7, 30], vec![11u32, 4, 19]];
        let m = model(&dir, &Device::flex().autodiff());
        let f = lm_fisher(&m, &seqs, 2).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut checked = 0;
        for name in [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "lm_head.weight",
        ] {
            let n = w.get(name).unwrap().len();
            assert_eq!(f[name].len(), n, "{name}");
            // The largest entry (a clear signal) and a random one.
            let big = (0..n)
                .max_by(|a, b| f[name][*a].total_cmp(&f[name][*b]))
                .unwrap();
            for idx in [big, rng.random_range(0..n)] {
                let want: f64 = seqs
                    .iter()
                    .map(|s| fd_grad(&w, name, idx, s).powi(2))
                    .sum::<f64>()
                    / 2.0;
                let got = f[name][idx];
                // Finite differences in f32 agree to ~3% here (values span 1e-9 .. 4); below
                // ~1e-8 they are noise: a loss of ~25 nats rounds at ~1.5e-6 in f32, so a
                // central difference over 2e-2 is good to ~7.5e-5 and its square's error
                // reaches 2 x 7.5e-5 x |gradient| (~1e-8 for these entries)
                let tol = 0.06 * want.abs().max(got.abs()) + 2e-8;
                assert!((got - want).abs() <= tol, "{name}[{idx}]: {got} vs {want}");
                checked += 1;
            }
        }
        assert_eq!(checked, 16);
    }

    fn tensors_of(w: &Weights) -> Vec<LmTensor> {
        w.tensors
            .iter()
            .map(|(n, s, _)| LmTensor {
                name: n.clone(),
                shape: s.clone(),
                inputs: vec![n.clone(), n.clone()],
            })
            .collect()
    }

    fn run(method: DataMethod, dirs: &[PathBuf], w: &Weights, data: &[TextSet]) -> Merged {
        let inputs: Vec<LmInput> = dirs
            .iter()
            .zip(data)
            .enumerate()
            .map(|(i, (d, t))| LmInput {
                name: format!("m{i}"),
                dir: d.clone(),
                coefficient: 1.0,
                texts: Some(t.clone()),
            })
            .collect();
        let mut out = Merged::new();
        merge_lms(
            method,
            &inputs,
            &tensors_of(w),
            &LmOptions::default(),
            |n, v| {
                out.insert(n.to_string(), v);
                Ok(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn regmean_solves_the_normal_equations_of_every_linear_map() {
        let tmp = tempfile::tempdir().unwrap();
        let base = spec().random(3);
        let a = base.perturbed(1, 0.2);
        let b = base.perturbed(2, 0.2);
        let dirs = vec![
            save(&a, &tmp.path().join("a")),
            save(&b, &tmp.path().join("b")),
        ];
        let data = vec![texts(1, 24, 32), texts(2, 24, 32)];
        let merged = run(DataMethod::RegMean, &dirs, &a, &data);
        let grams: Vec<LmGrams> = dirs
            .iter()
            .zip(&data)
            .map(|(d, t)| lm_grams(&model(d, &Device::flex()), &seqs_of(d, t), 16).unwrap())
            .collect();
        let alpha = RegMeanOptions::default().alpha;
        for (name, key) in [
            (
                "model.layers.0.self_attn.k_proj.weight",
                (0, LinearSite::Qkv),
            ),
            ("model.layers.1.self_attn.o_proj.weight", (1, LinearSite::O)),
            ("model.layers.1.mlp.up_proj.weight", (1, LinearSite::GateUp)),
            ("model.layers.0.mlp.down_proj.weight", (0, LinearSite::Down)),
            ("lm_head.weight", (2, LinearSite::Head)),
        ] {
            let (_, shape, _) = a.tensors.iter().find(|(n, _, _)| n == name).unwrap();
            let (d_out, d_in) = (shape[0], shape[1]);
            let mat = |v: &[f32]| {
                DMatrix::from_column_slice(
                    d_in,
                    d_out,
                    &v.iter().map(|x| *x as f64).collect::<Vec<_>>(),
                )
            };
            let gs: Vec<DMatrix<f64>> = grams
                .iter()
                .map(|g| crate::regmean::reduce_off_diagonal(&g.grams[&key], alpha))
                .collect();
            let lhs = (&gs[0] + &gs[1]) * mat(&merged[name]);
            let rhs = &gs[0] * mat(a.get(name).unwrap()) + &gs[1] * mat(b.get(name).unwrap());
            let err = (&lhs - &rhs).abs().max() / rhs.abs().max();
            assert!(err < 1e-3, "{name}: relative residual {err}");
        }
        // Norms and embeddings: the plain average.
        let n = "model.layers.1.post_attention_layernorm.weight";
        for ((m, x), y) in merged[n]
            .iter()
            .zip(a.get(n).unwrap())
            .zip(b.get(n).unwrap())
        {
            assert!((m - (x + y) / 2.0).abs() < 1e-6);
        }
    }

    #[test]
    fn fisher_merge_of_lms_leans_to_the_informed_model_and_soup_never_loses() {
        let tmp = tempfile::tempdir().unwrap();
        let base = spec().random(4);
        let a = base.perturbed(1, 0.2);
        let b = base.perturbed(2, 0.2);
        let dirs = vec![
            save(&a, &tmp.path().join("a")),
            save(&b, &tmp.path().join("b")),
        ];
        let data = vec![texts(1, 12, 32), texts(2, 12, 32)];
        let merged = run(DataMethod::Fisher, &dirs, &a, &data);
        // Every merged value lies between the two models' values (a convex combination).
        for (n, _, va) in &a.tensors {
            let vb = b.get(n).unwrap();
            for ((m, x), y) in merged[n].iter().zip(va).zip(vb) {
                assert!(*m >= x.min(*y) - 1e-5 && *m <= x.max(*y) + 1e-5, "{n}");
            }
        }
        // Identical models: the merge is the model.
        let same = run(
            DataMethod::Fisher,
            &[dirs[0].clone(), dirs[0].clone()],
            &a,
            &data,
        );
        for (n, _, va) in &a.tensors {
            assert!(
                same[n].iter().zip(va).all(|(m, x)| (m - x).abs() < 1e-5),
                "{n}"
            );
        }
        // Greedy soup: starts from the better model on the validation texts, never worse.
        let soup = run(DataMethod::GreedySoup, &dirs, &a, &data);
        let seqs = seqs_of(&dirs[0], &data[0]);
        let loss_of = |t: &Merged| {
            let mut map = TensorMap::new("s");
            for (n, s, _) in &a.tensors {
                let shape = evomerge_kernels::view_shape(s);
                map.insert(
                    n.clone(),
                    Tensor::from_data(TensorData::new(t[n].clone(), shape), &Device::flex()),
                );
            }
            let cfg = LlamaConfig::from_json(&a.config, "t").unwrap();
            lm_loss(
                &Arc::new(Llama::load(cfg, &map, &Device::flex()).unwrap()),
                &seqs,
                8,
            )
            .unwrap()
        };
        let single = |d: &PathBuf| lm_loss(&model(d, &Device::flex()), &seqs, 8).unwrap();
        let best = single(&dirs[0]).min(single(&dirs[1]));
        assert!(loss_of(&soup) <= best + 1e-9);
    }

    #[test]
    fn lm_merges_refuse_what_they_cannot_do() {
        let tmp = tempfile::tempdir().unwrap();
        let a = spec().random(5);
        let dirs = [
            save(&a, &tmp.path().join("a")),
            save(&a, &tmp.path().join("b")),
        ];
        let inputs: Vec<LmInput> = dirs
            .iter()
            .map(|d| LmInput {
                name: d.display().to_string(),
                dir: d.clone(),
                coefficient: 1.0,
                texts: None,
            })
            .collect();
        let t = tensors_of(&a);
        let err = |m: DataMethod, o: &LmOptions| {
            merge_lms(m, &inputs, &t, o, |_, _| Ok(()))
                .unwrap_err()
                .to_string()
        };
        let d = LmOptions::default();
        assert!(err(DataMethod::RegMean, &d).contains("needs text data"));
        assert!(err(DataMethod::GitRebasin, &d).contains("no permutation spec"));
        assert!(err(DataMethod::Repair, &d).contains("no permutation spec"));
        let exact = LmOptions {
            fisher: FisherKind::Exact,
            ..d
        };
        assert!(err(DataMethod::Fisher, &exact).contains("empirical"));
    }
}
