//! Training the mini world's models: a Llama-layout decoder written as a burn module with the
//! Hugging Face parameter layout (`[out, in]` matrices, RMSNorm weights, rotary positions as
//! transformers computes them), trained with burn's autodiff and Adam on the flex CPU backend.
//!
//! [`train`] starts from [`Weights`] (a [`TinyLlama::random`] draw for the base, the base for a
//! fine-tune), runs `steps` Adam steps on batches drawn from a [`Corpus`] (every batch from the
//! stream `(seed, step)`, so a run is reproducible), and returns the trained [`Weights`], ready
//! for [`Weights::save_with_tokenizer`]; evomerge's own inference (`evomerge-models`) loads the
//! result like any checkpoint.

use crate::mini_world::{Corpus, Encoder};
use crate::{TinyLlama, Weights};
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One decoder layer (Hugging Face names in the comments).
#[derive(Module, Debug)]
pub struct Block {
    attn_norm: Param<Tensor<1>>, // input_layernorm.weight
    q: Param<Tensor<2>>,         // self_attn.q_proj.weight
    k: Param<Tensor<2>>,         // self_attn.k_proj.weight
    v: Param<Tensor<2>>,         // self_attn.v_proj.weight
    o: Param<Tensor<2>>,         // self_attn.o_proj.weight
    mlp_norm: Param<Tensor<1>>,  // post_attention_layernorm.weight
    gate: Param<Tensor<2>>,      // mlp.gate_proj.weight
    up: Param<Tensor<2>>,        // mlp.up_proj.weight
    down: Param<Tensor<2>>,      // mlp.down_proj.weight
}

/// The trainable decoder.
#[derive(Module, Debug)]
pub struct TrainLm {
    embed: Param<Tensor<2>>, // model.embed_tokens.weight [V, H]
    blocks: Vec<Block>,
    norm: Param<Tensor<1>>, // model.norm.weight
    head: Param<Tensor<2>>, // lm_head.weight [V, H]
}

/// How to train one model.
#[derive(Debug, Clone, PartialEq)]
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

fn matrix(values: &[f32], shape: &[usize], device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [shape[0], shape[1]]),
        device,
    )
}

fn vector(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor data")
}

fn rms_norm<const D: usize>(x: Tensor<D>, w: &Param<Tensor<1>>, eps: f64) -> Tensor<D> {
    let inv = x
        .clone()
        .square()
        .mean_dim(D - 1)
        .add_scalar(eps)
        .powf_scalar(-0.5);
    x.mul(inv).mul(w.val().unsqueeze())
}

/// `x [.., in] @ w^T` for `w [out, in]`.
fn linear(x: Tensor<3>, w: &Param<Tensor<2>>) -> Tensor<3> {
    x.matmul(w.val().transpose().unsqueeze())
}

/// Model geometry the forward pass needs.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    heads: usize,
    head_dim: usize,
    eps: f64,
    theta: f64,
}

impl TrainLm {
    /// The module for `weights` (names as [`TinyLlama::shapes`] writes them; no biases, no tied
    /// embeddings) on `device`.
    pub fn from_weights(weights: &Weights, device: &Device) -> TrainLm {
        let get = |name: &str| {
            weights
                .tensors
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("mini-world weights lack {name}"))
        };
        let m = |name: &str| {
            let (_, s, v) = get(name);
            Param::from_tensor(matrix(v, s, device))
        };
        let vec = |name: &str| Param::from_tensor(vector(&get(name).2, device));
        let layers = weights.config["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
        let blocks = (0..layers)
            .map(|i| {
                let p = format!("model.layers.{i}.");
                Block {
                    attn_norm: vec(&format!("{p}input_layernorm.weight")),
                    q: m(&format!("{p}self_attn.q_proj.weight")),
                    k: m(&format!("{p}self_attn.k_proj.weight")),
                    v: m(&format!("{p}self_attn.v_proj.weight")),
                    o: m(&format!("{p}self_attn.o_proj.weight")),
                    mlp_norm: vec(&format!("{p}post_attention_layernorm.weight")),
                    gate: m(&format!("{p}mlp.gate_proj.weight")),
                    up: m(&format!("{p}mlp.up_proj.weight")),
                    down: m(&format!("{p}mlp.down_proj.weight")),
                }
            })
            .collect();
        TrainLm {
            embed: m("model.embed_tokens.weight"),
            blocks,
            norm: vec("model.norm.weight"),
            head: m("lm_head.weight"),
        }
    }

    /// The parameters back as [`Weights`] with `config`.
    pub fn to_weights(&self, config: &serde_json::Value) -> Weights {
        let mut tensors = Vec::new();
        let mut push2 = |name: String, p: &Param<Tensor<2>>| {
            let t = p.val();
            let shape = t.dims().to_vec();
            tensors.push((name, shape, host(t)));
        };
        push2("model.embed_tokens.weight".into(), &self.embed);
        let mut norms = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}.");
            norms.push((format!("{p}input_layernorm.weight"), b.attn_norm.val()));
            push2(format!("{p}self_attn.q_proj.weight"), &b.q);
            push2(format!("{p}self_attn.k_proj.weight"), &b.k);
            push2(format!("{p}self_attn.v_proj.weight"), &b.v);
            push2(format!("{p}self_attn.o_proj.weight"), &b.o);
            norms.push((
                format!("{p}post_attention_layernorm.weight"),
                b.mlp_norm.val(),
            ));
            push2(format!("{p}mlp.gate_proj.weight"), &b.gate);
            push2(format!("{p}mlp.up_proj.weight"), &b.up);
            push2(format!("{p}mlp.down_proj.weight"), &b.down);
        }
        push2("lm_head.weight".into(), &self.head);
        norms.push(("model.norm.weight".into(), self.norm.val()));
        for (n, t) in norms {
            let len = t.dims()[0];
            tensors.push((n, vec![len], host(t)));
        }
        // file order as TinyLlama::shapes writes it
        let order: Vec<String> = shapes_of(config).into_iter().map(|(n, _)| n).collect();
        tensors.sort_by_key(|(n, _, _)| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
        Weights {
            config: config.clone(),
            tensors,
        }
    }

    /// Logits `[B, S, V]` of token ids `[B, S]` (positions 0..S, causal attention).
    fn forward(
        &self,
        ids: Tensor<2, Int>,
        g: Geometry,
        rope: &(Tensor<4>, Tensor<4>),
    ) -> Tensor<3> {
        let [b, s] = ids.dims();
        let h = self.embed.val().dims()[1];
        let (nh, hd) = (g.heads, g.head_dim);
        let mut x: Tensor<3> = self
            .embed
            .val()
            .select(0, ids.reshape([b * s]))
            .reshape([b, s, h]);
        let device = x.device();
        let mut mask = vec![0f32; s * s];
        for i in 0..s {
            for j in i + 1..s {
                mask[i * s + j] = -1e9;
            }
        }
        let mask: Tensor<4> = Tensor::<2>::from_data(TensorData::new(mask, [s, s]), &device)
            .reshape([1, 1, s, s])
            .expand([b, nh, s, s]);
        let (cos, sin) = rope;
        let cos = cos.clone().narrow(1, 0, s).expand([b, s, nh, hd]);
        let sin = sin.clone().narrow(1, 0, s).expand([b, s, nh, hd]);
        let rotate = |t: Tensor<4>| -> Tensor<4> {
            let half = hd / 2;
            let x1 = t.clone().narrow(3, 0, half);
            let x2 = t.clone().narrow(3, half, half);
            let rot = Tensor::cat(vec![x2.neg(), x1], 3);
            t.mul(cos.clone()).add(rot.mul(sin.clone()))
        };
        let scale = 1.0 / (hd as f64).sqrt();
        for blk in &self.blocks {
            let a = rms_norm(x.clone(), &blk.attn_norm, g.eps);
            let q = rotate(linear(a.clone(), &blk.q).reshape([b, s, nh, hd])).swap_dims(1, 2);
            let k = rotate(linear(a.clone(), &blk.k).reshape([b, s, nh, hd])).swap_dims(1, 2);
            let v = linear(a, &blk.v).reshape([b, s, nh, hd]).swap_dims(1, 2);
            let att = q
                .matmul(k.swap_dims(2, 3))
                .mul_scalar(scale)
                .add(mask.clone());
            let out = softmax(att, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([b, s, nh * hd]);
            x = x.add(linear(out, &blk.o));
            let m = rms_norm(x.clone(), &blk.mlp_norm, g.eps);
            let act = silu(linear(m.clone(), &blk.gate)).mul(linear(m, &blk.up));
            x = x.add(linear(act, &blk.down));
        }
        linear(rms_norm(x, &self.norm, g.eps), &self.head)
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

/// Rotary tables `[1, P, 1, hd]` (cos and sin, as transformers' `rotate_half` uses them).
fn rope_tables(positions: usize, hd: usize, theta: f64, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let half = hd / 2;
    let mut cos = vec![0f32; positions * hd];
    let mut sin = vec![0f32; positions * hd];
    for p in 0..positions {
        for i in 0..half {
            let inv = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
            let (s, c) = (p as f64 * inv).sin_cos();
            for j in [i, i + half] {
                cos[p * hd + j] = c as f32;
                sin[p * hd + j] = s as f32;
            }
        }
    }
    let t = |v: Vec<f32>| {
        Tensor::<2>::from_data(TensorData::new(v, [positions, hd]), device)
            .reshape([1, positions, 1, hd])
    };
    (t(cos), t(sin))
}

/// A batch: ids `[B, S]` (inputs), and per position the target id and its loss weight; `S` is
/// `seq_len`, padded. Cutting the padding to the longest example changes nothing but the work
/// and the float summation order, and is 30% faster, but the base it trained did not transfer
/// math across languages in two worlds out of two (RESULTS.md, issue 7): the mini world's
/// result depends on which models training lands on, and the published world is this trainer's.
fn batch(
    options: &TrainOptions,
    step: usize,
    encoder: &Encoder,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>, f32) {
    let mut rng =
        ChaCha8Rng::seed_from_u64(options.seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (b, s) = (options.batch_size, options.seq_len);
    let mut inputs = vec![0i32; b * s];
    let mut targets = vec![0i32; b * s];
    let mut weights = vec![0f32; b * s];
    for r in 0..b {
        let ex = options.corpus.sample(&mut rng);
        let ids = encoder.encode(&ex.text);
        let n = ids.len().min(s + 1);
        for t in 0..n.saturating_sub(1) {
            inputs[r * s + t] = ids[t] as i32;
            targets[r * s + t] = ids[t + 1] as i32;
            // token t+1 is learned unless it is part of the prompt
            if t + 1 >= ex.prompt_words {
                weights[r * s + t] = 1.0;
            }
        }
    }
    let total: f32 = weights.iter().sum();
    (
        Tensor::from_data(TensorData::new(inputs, [b, s]), device),
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
    let spec = spec_of(&init.config);
    let g = Geometry {
        heads: spec.heads,
        head_dim: spec.hidden / spec.heads,
        eps: spec.rms_norm_eps,
        theta: spec.rope_theta,
    };
    let device = Device::flex().autodiff();
    let rope = rope_tables(options.seq_len, g.head_dim, g.theta, &device);
    let mut model = TrainLm::from_weights(init, &device);
    let mut optim = AdamConfig::new().init();
    let encoder = Encoder::default();
    let vocab = spec.vocab;
    let mut losses = Vec::with_capacity(options.steps);
    let shards = options.shards.clamp(1, options.batch_size.max(1));
    for step in 0..options.steps {
        let (ids, targets, w, total) = batch(options, step, &encoder, &device);
        let [b, s] = ids.dims();
        // Row blocks of the batch; each block's loss is its share of the batch mean, so the
        // summed gradients are the batch gradient.
        let bounds: Vec<(usize, usize)> = (0..shards)
            .map(|i| (i * b / shards, (i + 1) * b / shards))
            .filter(|(lo, hi)| hi > lo)
            .collect();
        let shard_step = |m: TrainLm, lo: usize, hi: usize| -> (f64, GradientsParams) {
            let n = hi - lo;
            let ids = ids.clone().narrow(0, lo, n);
            let targets = targets.clone().narrow(0, lo * s, n * s);
            let w = w.clone().narrow(0, lo * s, n * s);
            let logits = m.forward(ids, g, &rope).reshape([n * s, vocab]);
            let logp = log_softmax(logits, 1).gather(1, targets);
            let loss = logp.mul(w).sum().neg().div_scalar(total);
            let value = host(loss.clone())[0] as f64;
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
    use crate::mini_world::vocabulary;

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
    }
}
