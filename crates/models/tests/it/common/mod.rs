//! An independent reference for the decoder: plain f64 loops over the Hugging Face tensors,
//! following transformers' modeling_llama / modeling_qwen2 / modeling_mistral line by line.

#![allow(dead_code)]

pub mod checks;

use evomerge_checkpoint::Dtype;
use evomerge_zoo::{TinyLlama, Weights};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// A model as named f64 tensors plus its config.
pub struct RefModel {
    pub config: Value,
    pub t: HashMap<String, Vec<f64>>,
}

impl RefModel {
    pub fn new(w: &Weights) -> RefModel {
        RefModel {
            config: w.config.clone(),
            t: w.tensors
                .iter()
                .map(|(n, _, v)| (n.clone(), v.iter().map(|&x| x as f64).collect()))
                .collect(),
        }
    }
    fn u(&self, k: &str) -> usize {
        self.config[k].as_u64().unwrap() as usize
    }
    fn f(&self, k: &str) -> f64 {
        self.config[k].as_f64().unwrap()
    }
    fn get(&self, n: &str) -> &[f64] {
        self.t.get(n).unwrap_or_else(|| panic!("no {n}"))
    }
    fn layers(&self) -> usize {
        self.u("num_hidden_layers")
    }
}

/// Random weights big enough that attention is far from uniform and logits are O(1).
pub fn weights(spec: &TinyLlama, seed: u64) -> Weights {
    let mut w = spec.random(seed);
    for (name, _, v) in w.tensors.iter_mut() {
        if !name.ends_with("norm.weight") {
            for x in v.iter_mut() {
                *x *= 10.0;
            }
        }
    }
    w
}

pub fn llama_spec() -> TinyLlama {
    TinyLlama {
        hidden: 32,
        intermediate: 48,
        layers: 3,
        vocab: 64,
        heads: 4,
        kv_heads: 2,
        max_positions: 64,
        ..TinyLlama::default()
    }
}

pub fn qwen_spec() -> TinyLlama {
    TinyLlama {
        qkv_bias: true,
        tie_embeddings: true,
        kv_heads: 1,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-5,
        ..llama_spec()
    }
}

pub fn save(w: &Weights, dir: &Path) {
    w.save(dir, Dtype::F32, u64::MAX).unwrap();
}

fn matvec(w: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] * x[c]).sum())
        .collect()
}

fn rms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let var = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (var + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * inv * b).collect()
}

fn rope(x: &mut [f64], pos: usize, theta: f64) {
    let d = x.len();
    let half = d / 2;
    let orig = x.to_vec();
    for i in 0..half {
        let f = 1.0 / theta.powf(2.0 * i as f64 / d as f64);
        let (s, c) = (pos as f64 * f).sin_cos();
        // q*cos + rotate_half(q)*sin, rotate_half = [-x2, x1]
        x[i] = orig[i] * c - orig[i + half] * s;
        x[i + half] = orig[i + half] * c + orig[i] * s;
    }
}

/// Logits at every position of `ids` for a path of `(model, layer, scale)` hops; embeddings,
/// final norm and head from `models[0]`. `window` is a sliding attention window, if any.
pub fn reference_logits(
    models: &[&RefModel],
    path: &[(usize, usize, f64)],
    ids: &[u32],
    window: Option<usize>,
) -> Vec<Vec<f64>> {
    let a = models[0];
    let h = a.u("hidden_size");
    let v = a.u("vocab_size");
    let emb = a.get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&i| emb[i as usize * h..(i as usize + 1) * h].to_vec())
        .collect();
    for &(mi, l, scale) in path {
        let m = models[mi];
        let nh = m.u("num_attention_heads");
        let nkv = m.u("num_key_value_heads");
        let hd = h / nh;
        let inter = m.u("intermediate_size");
        let eps = m.f("rms_norm_eps");
        let theta = m.f("rope_theta");
        let p = format!("model.layers.{l}.");
        let g = |n: &str| m.get(&format!("{p}{n}"));
        let bias = m.t.contains_key(&format!("{p}self_attn.q_proj.bias"));
        for x in xs.iter_mut() {
            for e in x.iter_mut() {
                *e *= scale;
            }
        }
        let mut q = Vec::new();
        let mut k = Vec::new();
        let mut vv = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let hn = rms(x, g("input_layernorm.weight"), eps);
            let mut qi = matvec(g("self_attn.q_proj.weight"), nh * hd, h, &hn);
            let mut ki = matvec(g("self_attn.k_proj.weight"), nkv * hd, h, &hn);
            let mut vi = matvec(g("self_attn.v_proj.weight"), nkv * hd, h, &hn);
            if bias {
                for (o, b) in qi.iter_mut().zip(g("self_attn.q_proj.bias")) {
                    *o += b;
                }
                for (o, b) in ki.iter_mut().zip(g("self_attn.k_proj.bias")) {
                    *o += b;
                }
                for (o, b) in vi.iter_mut().zip(g("self_attn.v_proj.bias")) {
                    *o += b;
                }
            }
            for hh in 0..nh {
                rope(&mut qi[hh * hd..(hh + 1) * hd], pos, theta);
            }
            for hh in 0..nkv {
                rope(&mut ki[hh * hd..(hh + 1) * hd], pos, theta);
            }
            q.push(qi);
            k.push(ki);
            vv.push(vi);
        }
        let n = xs.len();
        for i in 0..n {
            let mut attn = vec![0.0; nh * hd];
            for hh in 0..nh {
                let kvh = hh / (nh / nkv);
                let lo = window.map(|w| (i + 1).saturating_sub(w)).unwrap_or(0);
                let scores: Vec<f64> = (lo..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| q[i][hh * hd + d] * k[j][kvh * hd + d])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let ex: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = ex.iter().sum();
                for (jj, j) in (lo..=i).enumerate() {
                    for d in 0..hd {
                        attn[hh * hd + d] += ex[jj] / z * vv[j][kvh * hd + d];
                    }
                }
            }
            let o = matvec(g("self_attn.o_proj.weight"), h, nh * hd, &attn);
            for (x, o) in xs[i].iter_mut().zip(o) {
                *x += o;
            }
            let hn = rms(&xs[i], g("post_attention_layernorm.weight"), eps);
            let gate = matvec(g("mlp.gate_proj.weight"), inter, h, &hn);
            let up = matvec(g("mlp.up_proj.weight"), inter, h, &hn);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = matvec(g("mlp.down_proj.weight"), h, inter, &act);
            for (x, d) in xs[i].iter_mut().zip(down) {
                *x += d;
            }
        }
    }
    let head = if a.t.contains_key("lm_head.weight") {
        a.get("lm_head.weight")
    } else {
        emb
    };
    xs.iter()
        .map(|x| {
            let hn = rms(x, a.get("model.norm.weight"), a.f("rms_norm_eps"));
            matvec(head, v, h, &hn)
        })
        .collect()
}

/// The plain path of model 0.
pub fn plain(m: &RefModel) -> Vec<(usize, usize, f64)> {
    (0..m.layers()).map(|l| (0, l, 1.0)).collect()
}

/// Greedy continuation of `ids` by the reference (no cache, recompute each step).
pub fn reference_greedy(m: &RefModel, ids: &[u32], n: usize) -> Vec<u32> {
    let mut seq = ids.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = reference_logits(&[m], &plain(m), &seq, None);
        let last = logits.last().unwrap();
        let best = (0..last.len())
            .max_by(|&a, &b| last[a].partial_cmp(&last[b]).unwrap())
            .unwrap() as u32;
        out.push(best);
        seq.push(best);
    }
    out
}

pub fn max_abs_diff(got: &[Vec<f32>], want: &[Vec<f64>]) -> f64 {
    assert_eq!(got.len(), want.len(), "positions");
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len(), "vocab");
            g.iter().zip(w).map(|(a, b)| (*a as f64 - b).abs())
        })
        .fold(0.0, f64::max)
}

pub fn log_softmax(x: &[f64]) -> Vec<f64> {
    let mx = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = x.iter().map(|v| (v - mx).exp()).sum::<f64>().ln() + mx;
    x.iter().map(|v| v - z).collect()
}
