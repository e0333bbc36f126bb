//! Running a decoder: batched forward passes with padding masks, a KV cache, greedy generation
//! and continuation log-likelihoods, over a [`LayerPath`] through one or several models.

use crate::llama::{LayerCache, LayerInput, LinearSite, LinearTap, NoTap, rms_norm, tapped};
use crate::{Hop, LayerPath, Llama, LlamaConfig, ModelError};
use burn::tensor::activation::log_softmax;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use evomerge_kernels::Device;
use std::collections::HashMap;
use std::sync::Arc;

/// Added to the attention score of a key a query must not see.
const MASKED: f32 = -1.0e30;

/// An executable decoder: the embeddings, final norm and LM head of model A (`models[0]`) and a
/// path of hops through the layers of any of the models.
///
/// [`Decoder::plain`] is a model's ordinary forward pass; [`Decoder::new`] runs any
/// [`LayerPath`]. Models are shared (`Arc`), so many decoders over the same loaded models cost
/// nothing extra.
#[derive(Debug, Clone)]
pub struct Decoder {
    models: Vec<Arc<Llama>>,
    hops: Vec<Hop>,
    context: usize,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-sequence token (not included in the output).
    Eos,
    /// A stop condition (a stop string) matched.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The sequence reached the model's context length.
    Context,
}

/// Greedy generation settings at the token level.
#[derive(Debug, Clone)]
pub struct TokenGenerateOptions {
    pub max_new_tokens: usize,
    /// Tokens that end a sequence (the config's `eos_token_id` by default in `LanguageModel`).
    pub eos_token_ids: Vec<u32>,
    /// Sequences run together (sorted by length to limit padding).
    pub batch_size: usize,
    /// Reuse keys and values of earlier positions (on by default; off recomputes the whole
    /// sequence at every step, which is only useful to check the cache).
    pub use_cache: bool,
}

impl Default for TokenGenerateOptions {
    fn default() -> Self {
        TokenGenerateOptions {
            max_new_tokens: 32,
            eos_token_ids: Vec::new(),
            batch_size: 32,
            use_cache: true,
        }
    }
}

/// The generated tokens of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedIds {
    pub ids: Vec<u32>,
    pub finish: Finish,
}

/// Scores of a continuation given its context.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuationScore {
    /// Log-probability of each continuation token.
    pub logprobs: Vec<f32>,
    /// Whether greedy decoding would have produced exactly this continuation.
    pub greedy: bool,
}

impl ContinuationScore {
    /// Sum of the token log-probabilities.
    pub fn total(&self) -> f64 {
        self.logprobs.iter().map(|&x| x as f64).sum()
    }
}

/// Batch state: left padding per row, tokens processed per row, one cache slot per hop.
struct State {
    pads: Vec<usize>,
    len: usize,
    caches: Vec<LayerCache>,
}

impl State {
    fn new(pads: Vec<usize>, hops: usize) -> State {
        State {
            pads,
            len: 0,
            caches: vec![None; hops],
        }
    }

    /// Keep only `rows` (indices into the current batch).
    fn keep(&mut self, rows: &[usize], device: &Device) {
        let idx = int_tensor(rows.iter().map(|&r| r as i32).collect(), device);
        self.pads = rows.iter().map(|&r| self.pads[r]).collect();
        for slot in self.caches.iter_mut() {
            if let Some((k, v)) = slot.take() {
                *slot = Some((k.select(0, idx.clone()), v.select(0, idx.clone())));
            }
        }
    }
}

fn int_tensor(values: Vec<i32>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

fn ints_of<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

impl Decoder {
    /// A model's ordinary forward pass (its layers in order, scale 1).
    pub fn plain(model: Arc<Llama>) -> Decoder {
        let n = model.num_layers();
        Decoder::new(vec![model], &LayerPath::plain(0, n)).expect("a model's own path is valid")
    }

    /// A decoder over `path` through `models`; model 0 provides the embeddings, final norm and
    /// LM head. Every model must have A's hidden size and live on A's device.
    pub fn new(models: Vec<Arc<Llama>>, path: &LayerPath) -> Result<Decoder, ModelError> {
        let a = models
            .first()
            .ok_or_else(|| ModelError::Path("no models given".into()))?;
        let hidden = a.config().hidden_size;
        let mut context = a.rope.positions;
        for (i, m) in models.iter().enumerate() {
            if m.config().hidden_size != hidden {
                return Err(ModelError::Path(format!(
                    "model {i} has hidden size {}, model 0 has {hidden}; a layer path needs one hidden size",
                    m.config().hidden_size
                )));
            }
            if m.device() != a.device() {
                return Err(ModelError::Path(format!(
                    "model {i} is on {:?}, model 0 on {:?}; load every model on one device",
                    m.device(),
                    a.device()
                )));
            }
        }
        for (t, hop) in path.hops.iter().enumerate() {
            let m = models.get(hop.model).ok_or_else(|| {
                ModelError::Path(format!(
                    "hop {t} uses model {}, but only {} model(s) are loaded",
                    hop.model,
                    models.len()
                ))
            })?;
            if hop.layer >= m.num_layers() {
                return Err(ModelError::Path(format!(
                    "hop {t} uses layer {} of model {}, which has {} layers",
                    hop.layer,
                    hop.model,
                    m.num_layers()
                )));
            }
            if !hop.scale.is_finite() {
                return Err(ModelError::Path(format!("hop {t} has scale {}", hop.scale)));
            }
            context = context.min(m.rope.positions);
        }
        Ok(Decoder {
            models,
            hops: path.hops.clone(),
            context,
        })
    }

    /// Model A's config (embeddings, head, vocabulary, special tokens).
    pub fn config(&self) -> &LlamaConfig {
        self.models[0].config()
    }

    /// The device everything runs on.
    pub fn device(&self) -> &Device {
        self.models[0].device()
    }

    /// The longest sequence the decoder accepts (prompt plus generated tokens).
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// The path this decoder runs.
    pub fn path(&self) -> LayerPath {
        LayerPath {
            hops: self.hops.clone(),
        }
    }

    fn check_ids(&self, ids: &[u32], what: &str) -> Result<(), ModelError> {
        let v = self.config().vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(ModelError::Input(format!(
                "{what}: token id {bad} is outside the vocabulary (size {v})"
            )));
        }
        Ok(())
    }

    /// Run `tokens` (`B` rows of `S` ids, left-padded as `state.pads` says) through the path,
    /// extending the caches when `cache` is on. Returns hidden states `[B*S, H]` before the
    /// final norm.
    fn run(&self, tokens: &[u32], b: usize, s: usize, state: &mut State, cache: bool) -> Tensor<2> {
        self.run_tapped(tokens, b, s, state, cache, &mut NoTap)
    }

    /// [`Decoder::run`] with a tap on the linear maps.
    fn run_tapped(
        &self,
        tokens: &[u32],
        b: usize,
        s: usize,
        state: &mut State,
        cache: bool,
        tap: &mut dyn LinearTap,
    ) -> Tensor<2> {
        let device = self.device();
        let a = &self.models[0];
        let start = state.len;
        let total = start + s;
        let mut positions = Vec::with_capacity(b * s);
        for r in 0..b {
            for i in start..total {
                positions.push(i.saturating_sub(state.pads[r]) as i32);
            }
        }
        let positions = int_tensor(positions, device);
        let ids = int_tensor(tokens.iter().map(|&t| t as i32).collect(), device);
        let mut x = a.embed.clone().select(0, ids);

        // Rotary rows per model and masks per (group size, window), built once per call.
        let mut ropes: HashMap<usize, (Tensor<4>, Tensor<4>)> = HashMap::new();
        let mut masks: HashMap<(usize, Option<usize>), Tensor<4>> = HashMap::new();
        for (t, hop) in self.hops.iter().enumerate() {
            let m = &self.models[hop.model];
            let layer = &m.layers[hop.layer];
            ropes
                .entry(hop.model)
                .or_insert_with(|| m.rope.gather(&positions, b, s));
            let key = (layer.group_size(), m.config().sliding_window);
            masks.entry(key).or_insert_with(|| {
                let mask = attention_mask(&state.pads, start, s, key.0, key.1, device);
                match a.dtype() {
                    FloatDType::F32 => mask,
                    dtype => mask.cast(dtype),
                }
            });
            let (cos, sin) = &ropes[&hop.model];
            let input = LayerInput {
                batch: b,
                seq: s,
                cos,
                sin,
                mask: &masks[&key],
            };
            if hop.scale != 1.0 {
                x = x.mul_scalar(hop.scale);
            }
            let slot = if cache {
                Some(&mut state.caches[t])
            } else {
                None
            };
            x = layer.forward(x, &input, slot, tap, t);
        }
        state.len = total;
        x
    }

    /// Final norm and LM head of model A on hidden rows `[N, H]`: logits `[N, V]`.
    fn head(&self, x: Tensor<2>) -> Tensor<2> {
        self.head_tapped(x, &mut NoTap)
    }

    fn head_tapped(&self, x: Tensor<2>, tap: &mut dyn LinearTap) -> Tensor<2> {
        let a = &self.models[0];
        let h = rms_norm(x, &a.norm, a.config().rms_norm_eps);
        let logits = a.head.apply(h.clone());
        let logits = tapped(tap, self.hops.len(), LinearSite::Head, &h, logits);
        // log-softmax, argmax and the scores are f32 whatever the model's dtype
        match a.dtype() {
            FloatDType::F32 => logits,
            _ => logits.cast(FloatDType::F32),
        }
    }

    /// Logits `[B*S, V]` of several sequences run as one left-padded batch (row `r * S + i` is
    /// position `i` of sequence `r`; the first `pads[r]` positions of a row are padding), with
    /// `tap` watching every linear map. On an autodiff device the logits carry the graph, so
    /// a loss built from them backpropagates into the tap's probes. Returns the logits, the
    /// padding per sequence and `S`.
    pub fn forward_tapped(
        &self,
        seqs: &[Vec<u32>],
        tap: &mut dyn LinearTap,
    ) -> Result<(Tensor<2>, Vec<usize>, usize), ModelError> {
        if seqs.is_empty() {
            return Err(ModelError::Input("forward_tapped: no sequences".into()));
        }
        let (tokens, pads, s) = self.pad_left(seqs, "sequence")?;
        let mut state = State::new(pads.clone(), self.hops.len());
        let hidden = self.run_tapped(&tokens, seqs.len(), s, &mut state, false, tap);
        Ok((self.head_tapped(hidden, tap), pads, s))
    }

    /// Logits `[B*S, V]` of several sequences run as one left-padded batch, as tensors on the
    /// decoder's device: on an autodiff device they carry the graph back to the tensors the
    /// models were loaded from (the mini world's trainer trains through this forward pass).
    pub fn forward(&self, seqs: &[Vec<u32>]) -> Result<Tensor<2>, ModelError> {
        self.forward_tapped(seqs, &mut NoTap)
            .map(|(logits, _, _)| logits)
    }

    /// Logits at every position of one sequence: `ids.len()` rows of `vocab_size` values.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(self
            .logits_batch(&[ids.to_vec()])?
            .pop()
            .expect("one sequence"))
    }

    /// Logits at every position of several sequences run as one left-padded batch.
    pub fn logits_batch(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let (tokens, pads, s) = self.pad_left(seqs, "sequence")?;
        let b = seqs.len();
        let mut state = State::new(pads.clone(), self.hops.len());
        let hidden = self.run(&tokens, b, s, &mut state, false);
        let v = self.config().vocab_size;
        let values = evomerge_kernels::values_of(self.head(hidden));
        Ok((0..b)
            .map(|r| {
                (pads[r]..s)
                    .map(|i| values[(r * s + i) * v..(r * s + i + 1) * v].to_vec())
                    .collect()
            })
            .collect())
    }

    /// Left-pad sequences to one length, checking ids and the context length.
    fn pad_left(
        &self,
        seqs: &[Vec<u32>],
        what: &str,
    ) -> Result<(Vec<u32>, Vec<usize>, usize), ModelError> {
        let s = seqs.iter().map(Vec::len).max().unwrap_or(0);
        for (i, q) in seqs.iter().enumerate() {
            if q.is_empty() {
                return Err(ModelError::Input(format!(
                    "{what} {i} is empty; it needs at least one token"
                )));
            }
            if q.len() > self.context {
                return Err(ModelError::Input(format!(
                    "{what} {i} has {} tokens, longer than the model's context of {} tokens (max_position_embeddings); shorten it",
                    q.len(),
                    self.context
                )));
            }
            self.check_ids(q, what)?;
        }
        let mut tokens = Vec::with_capacity(seqs.len() * s);
        let mut pads = Vec::with_capacity(seqs.len());
        for q in seqs {
            pads.push(s - q.len());
            tokens.extend(std::iter::repeat_n(0u32, s - q.len()));
            tokens.extend_from_slice(q);
        }
        Ok((tokens, pads, s))
    }

    /// Greedy generation for every prompt. `stop(i, ids)` is asked after each new token of
    /// prompt `i` whether to stop there (stop strings); results come back in prompt order.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &TokenGenerateOptions,
        stop: &mut dyn FnMut(usize, &[u32]) -> bool,
    ) -> Result<Vec<GeneratedIds>, ModelError> {
        let mut out: Vec<Option<GeneratedIds>> = vec![None; prompts.len()];
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
        for chunk in order.chunks(options.batch_size.max(1)) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let mut local_stop = |j: usize, ids: &[u32]| stop(chunk[j], ids);
            let results = self.generate_batch(&seqs, options, &mut local_stop)?;
            for (j, r) in results.into_iter().enumerate() {
                out[chunk[j]] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every prompt ran"))
            .collect())
    }

    fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        options: &TokenGenerateOptions,
        stop: &mut dyn FnMut(usize, &[u32]) -> bool,
    ) -> Result<Vec<GeneratedIds>, ModelError> {
        let device = self.device().clone();
        let (tokens, pads, s0) = self.pad_left(prompts, "prompt")?;
        let h = self.config().hidden_size;
        let mut results: Vec<GeneratedIds> = prompts
            .iter()
            .map(|_| GeneratedIds {
                ids: Vec::new(),
                finish: Finish::Length,
            })
            .collect();
        if options.max_new_tokens == 0 {
            return Ok(results);
        }
        // Rows of the running batch -> prompt index; full token rows for the uncached mode.
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        let mut rows: Vec<Vec<u32>> = tokens.chunks(s0).map(<[u32]>::to_vec).collect();
        let mut state = State::new(pads, self.hops.len());
        let last_hidden = |x: Tensor<2>, b: usize, s: usize| {
            x.reshape([b, s, h]).narrow(1, s - 1, 1).reshape([b, h])
        };
        let hidden = self.run(&tokens, prompts.len(), s0, &mut state, options.use_cache);
        let mut next = ints_of(self.head(last_hidden(hidden, prompts.len(), s0)).argmax(1));
        loop {
            let mut keep = Vec::with_capacity(active.len());
            for (r, &item) in active.iter().enumerate() {
                let tok = next[r] as u32;
                let res = &mut results[item];
                if options.eos_token_ids.contains(&tok) {
                    res.finish = Finish::Eos;
                    continue;
                }
                res.ids.push(tok);
                if stop(item, &res.ids) {
                    res.finish = Finish::Stop;
                } else if res.ids.len() >= options.max_new_tokens {
                    res.finish = Finish::Length;
                } else if prompts[item].len() + res.ids.len() >= self.context {
                    res.finish = Finish::Context;
                } else {
                    keep.push(r);
                }
            }
            if keep.is_empty() {
                break;
            }
            let fed: Vec<u32> = keep.iter().map(|&r| next[r] as u32).collect();
            if keep.len() < active.len() {
                if options.use_cache {
                    state.keep(&keep, &device);
                } else {
                    state.pads = keep.iter().map(|&r| state.pads[r]).collect();
                }
                rows = keep.iter().map(|&r| std::mem::take(&mut rows[r])).collect();
                active = keep.iter().map(|&r| active[r]).collect();
            }
            let b = active.len();
            for (row, &t) in rows.iter_mut().zip(&fed) {
                row.push(t);
            }
            let hidden = if options.use_cache {
                let hidden = self.run(&fed, b, 1, &mut state, true);
                last_hidden(hidden, b, 1)
            } else {
                let s = rows[0].len();
                let flat: Vec<u32> = rows.concat();
                let mut fresh = State::new(state.pads.clone(), self.hops.len());
                let hidden = self.run(&flat, b, s, &mut fresh, false);
                last_hidden(hidden, b, s)
            };
            next = ints_of(self.head(hidden).argmax(1));
        }
        Ok(results)
    }

    /// Log-probabilities of each continuation given its context (`(context, continuation)`
    /// token pairs; the context must not be empty). Runs `batch_size` requests at a time.
    pub fn loglik(
        &self,
        requests: &[(Vec<u32>, Vec<u32>)],
        batch_size: usize,
    ) -> Result<Vec<ContinuationScore>, ModelError> {
        let mut out: Vec<Option<ContinuationScore>> = vec![None; requests.len()];
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(requests[i].0.len() + requests[i].1.len()));
        for chunk in order.chunks(batch_size.max(1)) {
            let reqs: Vec<&(Vec<u32>, Vec<u32>)> = chunk.iter().map(|&i| &requests[i]).collect();
            for (j, r) in self.loglik_batch(&reqs)?.into_iter().enumerate() {
                out[chunk[j]] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every request ran"))
            .collect())
    }

    fn loglik_batch(
        &self,
        requests: &[&(Vec<u32>, Vec<u32>)],
    ) -> Result<Vec<ContinuationScore>, ModelError> {
        let mut inputs = Vec::with_capacity(requests.len());
        for (i, (ctx, cont)) in requests.iter().enumerate() {
            if ctx.is_empty() {
                return Err(ModelError::Input(format!(
                    "log-likelihood request {i} has an empty context; start it with a BOS token"
                )));
            }
            self.check_ids(cont, "continuation")?;
            let mut seq = ctx.clone();
            seq.extend_from_slice(cont);
            seq.pop();
            inputs.push(seq);
        }
        let lc = requests.iter().map(|r| r.1.len()).max().unwrap_or(0);
        if lc == 0 {
            return Ok(requests
                .iter()
                .map(|_| ContinuationScore {
                    logprobs: Vec::new(),
                    greedy: true,
                })
                .collect());
        }
        let (tokens, pads, s) = self.pad_left(&inputs, "context + continuation")?;
        let b = requests.len();
        let h = self.config().hidden_size;
        let mut state = State::new(pads, self.hops.len());
        let hidden = self.run(&tokens, b, s, &mut state, false);
        // Left padding puts every continuation at the end of its row.
        let tail = hidden
            .reshape([b, s, h])
            .narrow(1, s - lc, lc)
            .reshape([b * lc, h]);
        let logits = self.head(tail);
        let mut targets = vec![0i32; b * lc];
        for (r, (_, cont)) in requests.iter().enumerate() {
            for (t, &id) in cont.iter().enumerate() {
                targets[r * lc + lc - cont.len() + t] = id as i32;
            }
        }
        let device = self.device();
        let idx: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(targets.clone(), [b * lc, 1]), device);
        let greedy = ints_of(logits.clone().argmax(1));
        let picked = evomerge_kernels::values_of(log_softmax(logits, 1).gather(1, idx));
        Ok(requests
            .iter()
            .enumerate()
            .map(|(r, (_, cont))| {
                let from = r * lc + lc - cont.len();
                ContinuationScore {
                    logprobs: picked[from..r * lc + lc].to_vec(),
                    greedy: (from..r * lc + lc).all(|i| greedy[i] == targets[i] as i64),
                }
            })
            .collect())
    }
}

/// The additive mask `[B, 1, group * S, T]` for queries at absolute indices `start..start+S`
/// over keys `0..start+S`: a key is visible when it is not padding, not in the future and
/// (with a sliding window) not too far back. A padding query sees itself only.
fn attention_mask(
    pads: &[usize],
    start: usize,
    s: usize,
    group: usize,
    window: Option<usize>,
    device: &Device,
) -> Tensor<4> {
    let t = start + s;
    let b = pads.len();
    let mut m = vec![MASKED; b * group * s * t];
    for (r, &pad) in pads.iter().enumerate() {
        for qi in 0..s {
            let i = start + qi;
            let lo = match window {
                Some(w) => pad.max((i + 1).saturating_sub(w)),
                None => pad,
            };
            for g in 0..group {
                let row = ((r * group + g) * s + qi) * t;
                if i < pad {
                    m[row + i] = 0.0;
                } else {
                    m[row + lo..row + i + 1].fill(0.0);
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [b, 1, group * s, t]), device)
}
