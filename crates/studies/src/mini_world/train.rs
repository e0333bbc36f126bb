//! Training the mini world's models: the parameters of a Llama-layout decoder as a burn module
//! (Hugging Face layout: `[out, in]` matrices, RMSNorm weights), trained with burn's autodiff and
//! Adam on the flex CPU backend. The forward pass is evomerge's inference model: every step
//! loads the parameters into an [`evomerge_models::Llama`] on the autodiff device (its loader
//! fuses and transposes them, differentiably) and runs [`Decoder::forward`], so the models are
//! trained by exactly the code that later evaluates and merges them.
//!
//! [`train`] starts from [`Weights`] (a [`TinyLlama::random`] draw for the base, the base for a
//! fine-tune), runs `steps` Adam steps on batches drawn from a [`Corpus`] (every batch from the
//! stream `(seed, step)`, so a run is reproducible), and returns the trained [`Weights`], ready
//! for [`Weights::save_with_tokenizer`].

use super::data::{Corpus, Encoder};
use burn::module::{Module, Param, ParamId};
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use evomerge_kernels::tensor_from;
use evomerge_models::{Decoder, Llama, LlamaConfig, TensorMap};
use evomerge_zoo::{TinyLlama, Weights};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// One decoder layer's parameters, under their Hugging Face names (`model.layers.{i}.` +):
/// matrices `[out, in]`, norm weights as `[1, H]` (the 2-D view every weight source gives).
#[derive(Module, Debug)]
pub struct Block {
    attn_norm: Param<Tensor<2>>, // input_layernorm.weight
    q: Param<Tensor<2>>,         // self_attn.q_proj.weight
    k: Param<Tensor<2>>,         // self_attn.k_proj.weight
    v: Param<Tensor<2>>,         // self_attn.v_proj.weight
    o: Param<Tensor<2>>,         // self_attn.o_proj.weight
    mlp_norm: Param<Tensor<2>>,  // post_attention_layernorm.weight
    gate: Param<Tensor<2>>,      // mlp.gate_proj.weight
    up: Param<Tensor<2>>,        // mlp.up_proj.weight
    down: Param<Tensor<2>>,      // mlp.down_proj.weight
}

/// The names of a layer's parameters, in [`Block`]'s field order.
pub(crate) const BLOCK_NAMES: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

impl Block {
    fn params(&self) -> [&Param<Tensor<2>>; 9] {
        [
            &self.attn_norm,
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.mlp_norm,
            &self.gate,
            &self.up,
            &self.down,
        ]
    }
}

/// The trainable parameters of a decoder (no biases, no tied embeddings).
#[derive(Module, Debug)]
pub struct TrainLm {
    embed: Param<Tensor<2>>, // model.embed_tokens.weight [V, H]
    blocks: Vec<Block>,
    norm: Param<Tensor<2>>, // model.norm.weight [1, H]
    head: Param<Tensor<2>>, // lm_head.weight [V, H]
}

/// How to train one model.
#[derive(Clone, PartialEq)]
pub struct TrainOptions {
    pub corpus: Corpus,
    pub steps: usize,
    pub batch_size: usize,
    /// Sequence length (examples are cut to it; shorter ones padded, padding not learned).
    pub seq_len: usize,
    /// Peak Adam learning rate (linear warm-up over the first 5% of steps, cosine decay to 10%).
    pub lr: f64,
    pub seed: u64,
    /// Data-parallel shards: every batch is split into this many row blocks whose gradients are
    /// computed on their own threads and summed in a fixed order. The result depends on this
    /// number (float summation order), never on the machine's core count.
    pub shards: usize,
    /// Parameters (Hugging Face names) that keep their initial values: a fine-tune limited
    /// to the others. Empty: every parameter trains.
    pub frozen: Vec<String>,
}

/// The derived form, with `frozen` only where it is set: the cache stamps of the models
/// trained before it existed stay valid.
impl std::fmt::Debug for TrainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("TrainOptions");
        d.field("corpus", &self.corpus)
            .field("steps", &self.steps)
            .field("batch_size", &self.batch_size)
            .field("seq_len", &self.seq_len)
            .field("lr", &self.lr)
            .field("seed", &self.seed)
            .field("shards", &self.shards);
        if !self.frozen.is_empty() {
            d.field("frozen", &self.frozen);
        }
        d.finish()
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Mean loss of the first and the last 10% of the steps.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Per-step losses.
    pub losses: Vec<f64>,
}

use evomerge_kernels::values_of as host;

impl TrainLm {
    /// The module for `weights` (names as [`TinyLlama::shapes`] writes them; no biases, no tied
    /// embeddings) on `device`.
    pub fn from_weights(weights: &Weights, device: &Device) -> TrainLm {
        let p = |name: &str| {
            let (_, shape, values) = weights
                .tensors
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("mini-world weights lack {name}"));
            Param::from_tensor(tensor_from(values, shape, device))
        };
        let layers = weights.config["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
        let blocks = (0..layers)
            .map(|i| {
                let [attn_norm, q, k, v, o, mlp_norm, gate, up, down] =
                    BLOCK_NAMES.map(|n| p(&format!("model.layers.{i}.{n}")));
                Block {
                    attn_norm,
                    q,
                    k,
                    v,
                    o,
                    mlp_norm,
                    gate,
                    up,
                    down,
                }
            })
            .collect();
        TrainLm {
            embed: p("model.embed_tokens.weight"),
            blocks,
            norm: p("model.norm.weight"),
            head: p("lm_head.weight"),
        }
    }

    /// Every parameter's current value under its Hugging Face name (2-D views; on an autodiff
    /// device they carry the graph back to the parameters).
    fn named(&self) -> Vec<(String, Tensor<2>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.val())];
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, p) in BLOCK_NAMES.iter().zip(b.params()) {
                out.push((format!("model.layers.{i}.{n}"), p.val()));
            }
        }
        out.push(("model.norm.weight".into(), self.norm.val()));
        out.push(("lm_head.weight".into(), self.head.val()));
        out
    }

    /// Every parameter's id under its Hugging Face name.
    fn ids(&self) -> Vec<(String, ParamId)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.id)];
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, p) in BLOCK_NAMES.iter().zip(b.params()) {
                out.push((format!("model.layers.{i}.{n}"), p.id));
            }
        }
        out.push(("model.norm.weight".into(), self.norm.id));
        out.push(("lm_head.weight".into(), self.head.id));
        out
    }

    /// The parameters back as [`Weights`] with `config`, in the file order of
    /// [`TinyLlama::shapes`].
    pub fn to_weights(&self, config: &serde_json::Value) -> Weights {
        let mut named: std::collections::HashMap<String, Tensor<2>> =
            self.named().into_iter().collect();
        let tensors = shapes_of(config)
            .into_iter()
            .map(|(name, shape)| {
                let t = named
                    .remove(&name)
                    .unwrap_or_else(|| panic!("the trained model lacks {name}"));
                (name, shape, host(t))
            })
            .collect();
        Weights {
            config: config.clone(),
            tensors,
        }
    }

    /// The inference model over these parameters: [`Llama::load`] fuses and transposes them
    /// with differentiable tensor operations, so a loss on its logits trains this module.
    fn as_llama(&self, config: &LlamaConfig, device: &Device) -> Llama {
        let map = TensorMap::from_views("the mini world's trainer", self.named());
        Llama::load(config.clone(), &map, device)
            .expect("the trainer's parameters have the config's names and shapes")
    }
}

fn shapes_of(config: &serde_json::Value) -> Vec<(String, Vec<usize>)> {
    spec_of(config).shapes()
}

/// The [`TinyLlama`] a config describes.
pub fn spec_of(config: &serde_json::Value) -> TinyLlama {
    let u = |k: &str| config[k].as_u64().unwrap_or(0) as usize;
    TinyLlama {
        hidden: u("hidden_size"),
        intermediate: u("intermediate_size"),
        layers: u("num_hidden_layers"),
        vocab: u("vocab_size"),
        heads: u("num_attention_heads"),
        kv_heads: u("num_key_value_heads"),
        tie_embeddings: false,
        qkv_bias: false,
        max_positions: u("max_position_embeddings"),
        rope_theta: config["rope_theta"].as_f64().unwrap_or(10000.0),
        rms_norm_eps: config["rms_norm_eps"].as_f64().unwrap_or(1e-6),
    }
}

/// A batch: `B` rows of `S` input ids, and per position the target id and its loss weight; `S`
/// is `seq_len`, padded. Cutting the padding to the longest example changes nothing but the
/// work and the float summation order, and is 30% faster, but the base it trained did not
/// transfer math across languages in two worlds out of two (RESULTS.md, "The world is a
/// lottery"): the mini world's result depends on which models training lands on, and the
/// published world is this trainer's.
fn batch(
    options: &TrainOptions,
    step: usize,
    encoder: &Encoder,
    device: &Device,
) -> (Vec<Vec<u32>>, Tensor<2, Int>, Tensor<2>, f32) {
    let mut rng =
        ChaCha8Rng::seed_from_u64(options.seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (b, s) = (options.batch_size, options.seq_len);
    let mut inputs = vec![vec![0u32; s]; b];
    let mut targets = vec![0i32; b * s];
    let mut weights = vec![0f32; b * s];
    for r in 0..b {
        let ex = options.corpus.sample(&mut rng);
        let ids = encoder.encode(&ex.text);
        let n = ids.len().min(s + 1);
        for t in 0..n.saturating_sub(1) {
            inputs[r][t] = ids[t];
            targets[r * s + t] = ids[t + 1] as i32;
            // token t+1 is learned unless it is part of the prompt
            if t + 1 >= ex.prompt_words {
                weights[r * s + t] = 1.0;
            }
        }
    }
    let total: f32 = weights.iter().sum();
    (
        inputs,
        Tensor::from_data(TensorData::new(targets, [b * s, 1]), device),
        Tensor::from_data(TensorData::new(weights, [b * s, 1]), device),
        total.max(1.0),
    )
}

fn lr_at(step: usize, steps: usize, peak: f64) -> f64 {
    let warm = (steps / 20).max(1);
    if step < warm {
        peak * (step + 1) as f64 / warm as f64
    } else {
        let t = (step - warm) as f64 / (steps - warm).max(1) as f64;
        peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// Train `init` on `options.corpus`; `progress(step, loss)` is called after every step.
pub fn train(
    init: &Weights,
    options: &TrainOptions,
    mut progress: impl FnMut(usize, f64),
) -> (Weights, TrainReport) {
    let config = LlamaConfig::from_json(&init.config, "the mini world's model")
        .expect("a TinyLlama config is a Llama config");
    let vocab = config.vocab_size;
    let device = Device::flex().autodiff();
    let mut model = TrainLm::from_weights(init, &device);
    let mut optim = AdamConfig::new().init();
    let encoder = Encoder::default();
    let mut losses = Vec::with_capacity(options.steps);
    let shards = options.shards.clamp(1, options.batch_size.max(1));
    let ids = model.ids();
    for name in &options.frozen {
        assert!(
            ids.iter().any(|(n, _)| n == name),
            "frozen parameter {name} is not one of the model's"
        );
    }
    let frozen: Vec<ParamId> = ids
        .into_iter()
        .filter(|(n, _)| options.frozen.contains(n))
        .map(|(_, id)| id)
        .collect();
    for step in 0..options.steps {
        let (rows, targets, w, total) = batch(options, step, &encoder, &device);
        let (b, s) = (options.batch_size, options.seq_len);
        // Row blocks of the batch; each block's loss is its share of the batch mean, so the
        // summed gradients are the batch gradient.
        let bounds: Vec<(usize, usize)> = (0..shards)
            .map(|i| (i * b / shards, (i + 1) * b / shards))
            .filter(|(lo, hi)| hi > lo)
            .collect();
        let shard_step = |m: TrainLm, lo: usize, hi: usize| -> (f64, GradientsParams) {
            let n = hi - lo;
            let targets = targets.clone().narrow(0, lo * s, n * s);
            let w = w.clone().narrow(0, lo * s, n * s);
            // evomerge's own forward pass (rows of equal length: no padding, causal mask)
            let decoder = Decoder::plain(Arc::new(m.as_llama(&config, &device)));
            let logits = decoder
                .forward(&rows[lo..hi])
                .expect("training rows fit the model's context and vocabulary");
            debug_assert_eq!(logits.dims(), [n * s, vocab]);
            let logp = log_softmax(logits, 1).gather(1, targets);
            let loss = logp.mul(w).sum().neg().div_scalar(total);
            let value = host(loss.clone().reshape([1, 1]))[0] as f64;
            (value, GradientsParams::from_grads(loss.backward(), &m))
        };
        let (loss, grads) = if bounds.len() == 1 {
            shard_step(model.clone(), 0, b)
        } else {
            // Each thread gets its own leaves (same parameter ids, detached), so the autodiff
            // graphs do not share nodes and the backward passes run in parallel.
            let parts: Vec<(f64, GradientsParams)> = std::thread::scope(|sc| {
                let handles: Vec<_> = bounds
                    .iter()
                    .map(|&(lo, hi)| {
                        let m = model.clone().fork(&device);
                        let shard_step = &shard_step;
                        sc.spawn(move || shard_step(m, lo, hi))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a training shard panicked"))
                    .collect()
            });
            let mut acc = GradientsAccumulator::<TrainLm>::new();
            let mut loss = 0.0;
            for (l, g) in parts {
                loss += l;
                acc.accumulate(&model, g);
            }
            (loss, acc.grads())
        };
        let mut grads = grads;
        for id in &frozen {
            // without a gradient Adam leaves the parameter as it is
            grads.remove::<2>(*id);
        }
        losses.push(loss);
        model = optim.step(lr_at(step, options.steps, options.lr), model, grads);
        progress(step, loss);
    }
    let tenth = (options.steps / 10).max(1).min(losses.len().max(1));
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let report = TrainReport {
        first_loss: mean(&losses[..tenth.min(losses.len())]),
        last_loss: mean(&losses[losses.len().saturating_sub(tenth)..]),
        losses,
    };
    (model.to_weights(&init.config), report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mini_world::data::vocabulary;

    #[test]
    fn weights_round_trip_and_training_lowers_the_loss() {
        let spec = TinyLlama {
            hidden: 32,
            intermediate: 64,
            layers: 2,
            vocab: vocabulary().len(),
            heads: 4,
            kv_heads: 4,
            max_positions: 64,
            ..Default::default()
        };
        let init = spec.random(1);
        let device = Device::flex();
        let back = TrainLm::from_weights(&init, &device).to_weights(&init.config);
        assert_eq!(back, init);
        let options = TrainOptions {
            corpus: Corpus::Base,
            steps: 30,
            batch_size: 8,
            seq_len: 48,
            lr: 3e-3,
            seed: 4,
            shards: 1,
            frozen: Vec::new(),
        };
        let (trained, report) = train(&init, &options, |_, _| {});
        assert_eq!(report.losses.len(), 30);
        assert!(
            report.last_loss < report.first_loss - 0.5,
            "{} -> {}",
            report.first_loss,
            report.last_loss
        );
        assert_ne!(trained, init);
        // same seed, same result
        let (again, _) = train(&init, &options, |_, _| {});
        assert_eq!(again, trained);
        // data-parallel shards compute the same gradient (up to float summation order)
        let sharded = TrainOptions {
            shards: 3,
            ..options.clone()
        };
        let (split, split_report) = train(&init, &sharded, |_, _| {});
        assert!((split_report.losses[0] - report.losses[0]).abs() < 1e-5);
        for (a, b) in split_report.losses.iter().zip(&report.losses) {
            assert!((a - b).abs() < 2e-3, "sharded loss {a} vs {b}");
        }
        assert_ne!(split, trained, "3 shards sum in another order");
        let (split_again, _) = train(&init, &sharded, |_, _| {});
        assert_eq!(split_again, split, "sharded training is deterministic");
        // frozen parameters keep their values, the others train; the stamp's form of the
        // options only names `frozen` when it is set
        assert!(!format!("{options:?}").contains("frozen"));
        let frozen = vec![
            "model.embed_tokens.weight".to_string(),
            "model.layers.1.mlp.down_proj.weight".to_string(),
            "lm_head.weight".to_string(),
        ];
        let limited = TrainOptions {
            steps: 5,
            shards: 2,
            frozen: frozen.clone(),
            ..options.clone()
        };
        assert!(format!("{limited:?}").contains("frozen"));
        let (part, _) = train(&init, &limited, |_, _| {});
        for ((name, _, after), (_, _, before)) in part.tensors.iter().zip(&init.tensors) {
            assert_eq!(frozen.contains(name), after == before, "{name}");
        }
    }
}
