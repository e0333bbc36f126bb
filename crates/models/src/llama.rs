//! The Llama / Mistral / Qwen2 decoder: parameters under their Hugging Face names, one decoder
//! layer's forward pass, the rotary tables.
//!
//! Parameters are held as burn tensors on one device, prepared once at load time for a fast
//! forward pass: every matrix is multiplied as `x @ Wt` ([`Proj`]): on the CPU (f32, f16) `Wt`
//! is a transposed view of the Hugging Face tensor, with no copy, so a merged candidate is
//! ready to run as soon as it is merged; elsewhere q/k/v are fused into one contiguous
//! transposed matrix, gate/up into another. Running the model (batches, KV cache, generation,
//! layer paths) is [`crate::Decoder`]'s job.

use crate::{LlamaConfig, ModelError, WeightSource};
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use evomerge_checkpoint::Checkpoint;
use evomerge_kernels::{Device, cat_transposed, view_shape};
use std::path::Path;

/// One decoder layer's parameters (transposed and fused, see the module docs).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    attn_norm: Tensor<2>,
    wqkv: Proj,
    bqkv: Option<Tensor<2>>,
    wo: Proj,
    bo: Option<Tensor<2>>,
    mlp_norm: Tensor<2>,
    wgu: Proj,
    bgu: Option<Tensor<2>>,
    wdown: Proj,
    bdown: Option<Tensor<2>>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    eps: f64,
}

/// Rotary tables of one model: `cos` and `sin` with the rotate-half sign folded in, `[P, head_dim]`.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
    pub positions: usize,
}

impl Rope {
    fn new(config: &LlamaConfig, device: &Device) -> Rope {
        let hd = config.head_dim;
        let half = hd / 2;
        let p = config.max_position_embeddings;
        let inv = config.inv_freq();
        let mut cos = vec![0f32; p * hd];
        let mut sin = vec![0f32; p * hd];
        for pos in 0..p {
            for (i, f) in inv.iter().enumerate() {
                let angle = pos as f64 * f;
                let (s, c) = angle.sin_cos();
                cos[pos * hd + i] = c as f32;
                cos[pos * hd + half + i] = c as f32;
                // rotate_half(x) = [-x2, x1]; we multiply [x2, x1] by [-sin, sin].
                sin[pos * hd + i] = -s as f32;
                sin[pos * hd + half + i] = s as f32;
            }
        }
        Rope {
            cos: Tensor::from_data(TensorData::new(cos, [p, hd]), device),
            sin: Tensor::from_data(TensorData::new(sin, [p, hd]), device),
            positions: p,
        }
    }

    /// cos/sin rows for `positions` (flattened `[B*S]`), shaped `[B, S, 1, hd]`.
    pub fn gather(&self, positions: &Tensor<1, Int>, b: usize, s: usize) -> (Tensor<4>, Tensor<4>) {
        let hd = self.cos.dims()[1];
        let cos = self.cos.clone().select(0, positions.clone());
        let sin = self.sin.clone().select(0, positions.clone());
        (cos.reshape([b, s, 1, hd]), sin.reshape([b, s, 1, hd]))
    }
}

/// RMSNorm over the last dimension with weight `w` (`[1, H]`), in f32 like transformers.
pub(crate) fn rms_norm(x: Tensor<2>, w: &Tensor<2>, eps: f64) -> Tensor<2> {
    // In reduced precision the statistics are taken in f32 (a sum of squares overflows f16)
    // and the result cast back before the weight, as transformers' LlamaRMSNorm does.
    let dtype: FloatDType = x.dtype().into();
    let reduced = dtype != FloatDType::F32;
    let x = if reduced { x.cast(FloatDType::F32) } else { x };
    let inv = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .powf_scalar(-0.5);
    let y = x.mul(inv);
    let y = if reduced { y.cast(dtype) } else { y };
    y.mul(w.clone())
}

/// A linear map's weight as the forward pass multiplies by it (`x @ Wt`, `Wt` `[in, out]`):
/// one matrix, or the parts of a fused map whose outputs sit side by side (q | k | v,
/// gate | up).
///
/// On the CPU device in f32 or f16 every part is a transposed *view* of the Hugging Face
/// `[out, in]` tensor: no copy is made (the CPU matmul reads a strided operand at the same
/// speed, within ~10% either way on 2048 x 5632 and 2048 x 32000 maps), so building a model
/// from a merged candidate costs no pass over its weights. Elsewhere (wgpu, autodiff, bf16,
/// whose CPU matmul copies a strided operand on every call) the parts are fused into one
/// contiguous transposed matrix ([`cat_transposed`]).
#[derive(Debug, Clone)]
pub(crate) struct Proj {
    parts: Vec<Tensor<2>>,
    /// `parts` are views of the Hugging Face tensors (else one fused contiguous matrix).
    views: bool,
}

impl Proj {
    /// The map of Hugging Face weights `hf` (`[out_i, in]` each, outputs concatenated).
    fn new(hf: Vec<Tensor<2>>) -> Proj {
        let device = hf[0].device();
        let views = device == Device::flex()
            && !device.is_autodiff()
            && hf[0].dtype() != burn::tensor::DType::BF16;
        if !views {
            return Proj {
                parts: vec![cat_transposed(hf)],
                views,
            };
        }
        // small parts are fused (a row-wise copy, then one view): one matmul call instead of
        // three where a call's fixed cost is comparable to its arithmetic
        let numel: usize = hf.iter().map(|w| w.dims().iter().product::<usize>()).sum();
        let hf = if hf.len() > 1 && numel <= 1 << 20 {
            vec![Tensor::cat(hf, 0)]
        } else {
            hf
        };
        Proj {
            parts: hf.into_iter().map(|w| w.transpose()).collect(),
            views,
        }
    }

    /// `x @ Wt`: `[rows, in]` to `[rows, out]`.
    pub(crate) fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        match self.parts.as_slice() {
            [w] => x.matmul(w.clone()),
            parts => Tensor::cat(
                parts.iter().map(|w| x.clone().matmul(w.clone())).collect(),
                1,
            ),
        }
    }

    /// The Hugging Face matrices `[out_i, in]` for outputs of `sizes` (views, no copy).
    fn hf(&self, sizes: &[usize]) -> Vec<Tensor<2>> {
        let hf: Vec<Tensor<2>> = self.parts.iter().map(|w| w.clone().transpose()).collect();
        if hf.len() == sizes.len() {
            return hf;
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let part = hf[0].clone().narrow(0, start, n);
                start += n;
                part
            })
            .collect()
    }

    /// The map in `dtype`. Views are cast in the Hugging Face layout (a cast copies a strided
    /// tensor element by element, slowly) and laid out again for the new dtype.
    fn cast(self, dtype: FloatDType, sizes: &[usize]) -> Proj {
        if !self.views {
            return Proj {
                parts: self.parts.into_iter().map(|w| w.cast(dtype)).collect(),
                views: false,
            };
        }
        Proj::new(self.hf(sizes).into_iter().map(|w| w.cast(dtype)).collect())
    }
}

fn add_bias(x: Tensor<2>, b: &Option<Tensor<2>>) -> Tensor<2> {
    match b {
        Some(b) => x.add(b.clone()),
        None => x,
    }
}

/// What one layer needs besides its input: the batch geometry, the rotary rows and the
/// additive attention mask.
pub(crate) struct LayerInput<'a> {
    pub batch: usize,
    pub seq: usize,
    pub cos: &'a Tensor<4>,
    pub sin: &'a Tensor<4>,
    /// `[B, 1, group * S, T]`: 0 where a query may attend to a key, a large negative number
    /// where it may not.
    pub mask: &'a Tensor<4>,
}

/// Keys and values a layer has seen so far, `[B, kv_heads, T, head_dim]` each.
pub(crate) type LayerCache = Option<(Tensor<4>, Tensor<4>)>;

/// The linear maps a decoder runs, as evomerge runs them: q/k/v fused into one map (output
/// columns `q | k | v`), gate/up fused (`gate | up`), and the LM head after the final norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearSite {
    /// `self_attn.{q,k,v}_proj`, input: the attention-normed hidden state.
    Qkv,
    /// `self_attn.o_proj`, input: the attention output.
    O,
    /// `mlp.{gate,up}_proj`, input: the MLP-normed hidden state.
    GateUp,
    /// `mlp.down_proj`, input: `silu(gate) * up`.
    Down,
    /// `lm_head`, input: the final-normed hidden state.
    Head,
}

/// Watches a decoder's linear maps while it runs ([`crate::Decoder::forward_tapped`]): it sees
/// every map's input rows `[B*S, in]` (padding rows included; the caller knows the padding)
/// and may return a tensor `[B*S, out]` to add to the map's output — a zero "probe" whose
/// gradient is the per-row backpropagated signal. RegMean's Gram matrices and Fisher's
/// per-token squared gradients are both collected this way.
pub trait LinearTap {
    /// `input` enters linear `site` of hop `hop` (the layer's position in the path; the LM head
    /// has `hop` = the number of hops); `out_dim` is the map's output width.
    fn tap(
        &mut self,
        hop: usize,
        site: LinearSite,
        input: &Tensor<2>,
        out_dim: usize,
    ) -> Option<Tensor<2>>;
}

/// The tap of an ordinary run: sees nothing, adds nothing.
pub(crate) struct NoTap;

impl LinearTap for NoTap {
    fn tap(&mut self, _: usize, _: LinearSite, _: &Tensor<2>, _: usize) -> Option<Tensor<2>> {
        None
    }
}

/// Run `out` past the tap: add its probe when it returns one.
pub(crate) fn tapped(
    tap: &mut dyn LinearTap,
    hop: usize,
    site: LinearSite,
    input: &Tensor<2>,
    out: Tensor<2>,
) -> Tensor<2> {
    let width = out.dims()[1];
    match tap.tap(hop, site, input, width) {
        Some(probe) => out.add(probe),
        None => out,
    }
}

impl DecoderLayer {
    /// Queries per key-value head.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The head dimension (selects the rotary table).
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Run the layer on hidden states `[B*S, H]`, appending this call's keys and values to
    /// `cache` when one is given; `tap` sees its linear maps as hop `hop`.
    pub(crate) fn forward(
        &self,
        x: Tensor<2>,
        input: &LayerInput<'_>,
        cache: Option<&mut LayerCache>,
        tap: &mut dyn LinearTap,
        hop: usize,
    ) -> Tensor<2> {
        let (b, s) = (input.batch, input.seq);
        let (nh, nkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let rep = nh / nkv;
        let h = rms_norm(x.clone(), &self.attn_norm, self.eps);
        let qkv = add_bias(self.wqkv.apply(h.clone()), &self.bqkv);
        let qkv = tapped(tap, hop, LinearSite::Qkv, &h, qkv);
        // Rotary embedding on q and k together: [B, S, nh + nkv, hd].
        let qk = qkv
            .clone()
            .narrow(1, 0, (nh + nkv) * hd)
            .reshape([b, s, nh + nkv, hd]);
        let rotated = Tensor::cat(
            vec![
                qk.clone().narrow(3, hd / 2, hd / 2),
                qk.clone().narrow(3, 0, hd / 2),
            ],
            3,
        );
        let qk = qk
            .mul(input.cos.clone())
            .add(rotated.mul(input.sin.clone()));
        // Query head g*rep + r uses key-value head g (transformers' repeat_kv); fold the group
        // into the query rows so keys and values are never repeated.
        let q = qk
            .clone()
            .narrow(2, 0, nh)
            .swap_dims(1, 2)
            .reshape([b, nkv, rep * s, hd]);
        let k = qk.narrow(2, nh, nkv).swap_dims(1, 2);
        let v = qkv
            .narrow(1, (nh + nkv) * hd, nkv * hd)
            .reshape([b, s, nkv, hd])
            .swap_dims(1, 2);
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let o = attention(
            q,
            k,
            v,
            None,
            Some(input.mask.clone()),
            AttentionModuleOptions::default(),
        );
        let o = o
            .reshape([b, nh, s, hd])
            .swap_dims(1, 2)
            .reshape([b * s, nh * hd]);
        let attn = add_bias(self.wo.apply(o.clone()), &self.bo);
        let x = x.add(tapped(tap, hop, LinearSite::O, &o, attn));
        let h = rms_norm(x.clone(), &self.mlp_norm, self.eps);
        let gu = add_bias(self.wgu.apply(h.clone()), &self.bgu);
        let gu = tapped(tap, hop, LinearSite::GateUp, &h, gu);
        let i = self.intermediate;
        let act = silu(gu.clone().narrow(1, 0, i)).mul(gu.narrow(1, i, i));
        let down = add_bias(self.wdown.apply(act.clone()), &self.bdown);
        x.add(tapped(tap, hop, LinearSite::Down, &act, down))
    }
}

/// A loaded Llama-family model: its config and parameters on one device.
///
/// Build it from a folder ([`Llama::from_dir`]) or from tensors already in memory
/// ([`Llama::load`] with a [`crate::TensorMap`]); both read the same Hugging Face names.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    pub(crate) embed: Tensor<2>,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: Tensor<2>,
    /// `[H, V]` as multiplied (a view of the embedding when the head is tied).
    pub(crate) head: Proj,
    pub(crate) rope: Rope,
}

struct Loader<'a> {
    source: &'a dyn WeightSource,
    device: &'a Device,
}

impl Loader<'_> {
    /// A required tensor with its true shape checked against the config.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor<2>, ModelError> {
        let t = self.source.tensor(name, self.device)?.ok_or_else(|| {
            let names = self.source.names();
            let hint = names
                .iter()
                .filter(|n| n.ends_with(name.rsplit('.').next().unwrap_or(name)))
                .take(3)
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>();
            ModelError::MissingTensor {
                source_name: self.source.source_name(),
                tensor: name.to_string(),
                hint: if hint.is_empty() {
                    String::new()
                } else {
                    format!(" (it has {})", hint.join(", "))
                },
            }
        })?;
        let want = view_shape(shape);
        if t.dims() != want {
            return Err(ModelError::WrongShape {
                source_name: self.source.source_name(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    fn maybe(
        &self,
        on: bool,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<Tensor<2>>, ModelError> {
        if on {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Llama {
    /// Load a model folder (`config.json` + safetensors) onto `device`.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Llama, ModelError> {
        let dir = dir.as_ref();
        let config = LlamaConfig::from_dir(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        Llama::load(config, &ckpt, device)
    }

    /// [`Llama::from_dir`] computing in `dtype` (`None`: f32): each tensor is cast as it is
    /// read, so the model is never whole in f32 (the same parameters as
    /// `from_dir(..).to_dtype(dtype)`).
    pub fn from_dir_as(
        dir: impl AsRef<Path>,
        device: &Device,
        dtype: Option<FloatDType>,
    ) -> Result<Llama, ModelError> {
        let Some(dtype) = dtype else {
            return Llama::from_dir(dir, device);
        };
        let dir = dir.as_ref();
        let config = LlamaConfig::from_dir(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let source = crate::weights::CastSource {
            source: &ckpt,
            dtype,
        };
        Ok(Llama::load(config, &source, device)?.to_dtype(dtype))
    }

    /// Build the model from any weight source: a [`Checkpoint`] or an in-memory
    /// [`crate::TensorMap`] (the merge engine's output). Tensor names are Hugging Face's.
    pub fn load(
        config: LlamaConfig,
        source: &dyn WeightSource,
        device: &Device,
    ) -> Result<Llama, ModelError> {
        let ld = Loader { source, device };
        let c = &config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let embed = ld.get("model.embed_tokens.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}.");
            let n = |s: &str| format!("{p}{s}");
            let wq = ld.get(&n("self_attn.q_proj.weight"), &[q, h])?;
            let wk = ld.get(&n("self_attn.k_proj.weight"), &[kv, h])?;
            let wv = ld.get(&n("self_attn.v_proj.weight"), &[kv, h])?;
            let bqkv = if c.qkv_bias {
                Some(Tensor::cat(
                    vec![
                        ld.get(&n("self_attn.q_proj.bias"), &[q])?,
                        ld.get(&n("self_attn.k_proj.bias"), &[kv])?,
                        ld.get(&n("self_attn.v_proj.bias"), &[kv])?,
                    ],
                    1,
                ))
            } else {
                None
            };
            let wg = ld.get(&n("mlp.gate_proj.weight"), &[i, h])?;
            let wu = ld.get(&n("mlp.up_proj.weight"), &[i, h])?;
            let bgu = if c.mlp_bias {
                Some(Tensor::cat(
                    vec![
                        ld.get(&n("mlp.gate_proj.bias"), &[i])?,
                        ld.get(&n("mlp.up_proj.bias"), &[i])?,
                    ],
                    1,
                ))
            } else {
                None
            };
            layers.push(DecoderLayer {
                attn_norm: ld.get(&n("input_layernorm.weight"), &[h])?,
                wqkv: Proj::new(vec![wq, wk, wv]),
                bqkv,
                wo: Proj::new(vec![ld.get(&n("self_attn.o_proj.weight"), &[h, q])?]),
                bo: ld.maybe(c.o_bias, &n("self_attn.o_proj.bias"), &[h])?,
                mlp_norm: ld.get(&n("post_attention_layernorm.weight"), &[h])?,
                wgu: Proj::new(vec![wg, wu]),
                bgu,
                wdown: Proj::new(vec![ld.get(&n("mlp.down_proj.weight"), &[h, i])?]),
                bdown: ld.maybe(c.mlp_bias, &n("mlp.down_proj.bias"), &[h])?,
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                intermediate: i,
                eps: c.rms_norm_eps,
            });
        }
        let norm = ld.get("model.norm.weight", &[h])?;
        let head = if c.tie_word_embeddings {
            Proj::new(vec![embed.clone()])
        } else {
            Proj::new(vec![ld.get("lm_head.weight", &[v, h])?])
        };
        Ok(Llama {
            rope: Rope::new(c, device),
            config,
            device: device.clone(),
            embed,
            layers,
            norm,
            head,
        })
    }

    /// Build the model from a merged candidate's tensors, taking each tensor it uses out of
    /// `map` as it goes (what it does not use stays there). The merged tensors and the model's
    /// own layout (fused, transposed) so never both exist whole: the peak is the model plus one
    /// layer, not twice the model. `map` is checked against the config first, so on a missing
    /// or misshapen tensor the error is [`Llama::load`]'s and `map` is untouched.
    pub fn load_taking(
        config: LlamaConfig,
        map: &mut crate::TensorMap,
        device: &Device,
    ) -> Result<Llama, ModelError> {
        let check = Loader {
            source: &*map,
            device,
        };
        for (name, shape) in config.tensor_shapes() {
            check.get(&name, &shape)?;
        }
        let taking = crate::weights::Taking::new(map);
        Llama::load(config, &taking, device)
    }

    /// The model's parameters under their Hugging Face names as 2-D views (1-D tensors as
    /// `[1, n]`): the inverse of [`Llama::load`], bit for bit. A tied head is not listed (it is
    /// the embedding).
    pub fn hf_tensors(&self) -> Vec<(String, Tensor<2>)> {
        let c = &self.config;
        let (q, kv, i, h) = widths(c);
        let cols = |t: &Tensor<2>, start: usize, n: usize| t.clone().narrow(1, start, n);
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (l, layer) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("model.layers.{l}.{s}");
            out.push((n("input_layernorm.weight"), layer.attn_norm.clone()));
            let [wq, wk, wv]: [Tensor<2>; 3] =
                layer.wqkv.hf(&[q, kv, kv]).try_into().expect("three parts");
            out.push((n("self_attn.q_proj.weight"), wq));
            out.push((n("self_attn.k_proj.weight"), wk));
            out.push((n("self_attn.v_proj.weight"), wv));
            if let Some(b) = &layer.bqkv {
                out.push((n("self_attn.q_proj.bias"), cols(b, 0, q)));
                out.push((n("self_attn.k_proj.bias"), cols(b, q, kv)));
                out.push((n("self_attn.v_proj.bias"), cols(b, q + kv, kv)));
            }
            out.push((n("self_attn.o_proj.weight"), one(layer.wo.hf(&[h]))));
            if let Some(b) = &layer.bo {
                out.push((n("self_attn.o_proj.bias"), b.clone()));
            }
            out.push((n("post_attention_layernorm.weight"), layer.mlp_norm.clone()));
            let [wg, wu]: [Tensor<2>; 2] = layer.wgu.hf(&[i, i]).try_into().expect("two parts");
            out.push((n("mlp.gate_proj.weight"), wg));
            out.push((n("mlp.up_proj.weight"), wu));
            if let Some(b) = &layer.bgu {
                out.push((n("mlp.gate_proj.bias"), cols(b, 0, i)));
                out.push((n("mlp.up_proj.bias"), cols(b, i, i)));
            }
            out.push((n("mlp.down_proj.weight"), one(layer.wdown.hf(&[h]))));
            if let Some(b) = &layer.bdown {
                out.push((n("mlp.down_proj.bias"), b.clone()));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !c.tie_word_embeddings {
            out.push((
                "lm_head.weight".to_string(),
                one(self.head.hf(&[c.vocab_size])),
            ));
        }
        out
    }

    /// The model with every parameter (and its rotary tables) in `dtype`: evaluation in
    /// reduced precision (`F16` on GPU backends that have it, `BF16` where the backend has it,
    /// e.g. the CPU). The forward pass keeps RMSNorm's statistics, the attention softmax's
    /// mask and the logits in f32 terms: norms are computed in f32 (as transformers does) and
    /// the LM head's output is cast to f32. Each tensor is cast in turn, so the peak is the
    /// model plus one tensor.
    pub fn to_dtype(mut self, dtype: FloatDType) -> Llama {
        let (q, kv, i, h) = widths(&self.config);
        let c = |t: Tensor<2>| t.cast(dtype);
        let co = |t: Option<Tensor<2>>| t.map(|t| t.cast(dtype));
        self.embed = c(self.embed);
        self.norm = c(self.norm);
        self.head = if self.config.tie_word_embeddings {
            // the tied head is the cast embedding again (a view of it where views are used)
            Proj::new(vec![self.embed.clone()])
        } else {
            self.head.cast(dtype, &[self.config.vocab_size])
        };
        self.rope.cos = c(self.rope.cos);
        self.rope.sin = c(self.rope.sin);
        self.layers = std::mem::take(&mut self.layers)
            .into_iter()
            .map(|l| DecoderLayer {
                attn_norm: c(l.attn_norm),
                wqkv: l.wqkv.cast(dtype, &[q, kv, kv]),
                bqkv: co(l.bqkv),
                wo: l.wo.cast(dtype, &[h]),
                bo: co(l.bo),
                mlp_norm: c(l.mlp_norm),
                wgu: l.wgu.cast(dtype, &[i, i]),
                bgu: co(l.bgu),
                wdown: l.wdown.cast(dtype, &[h]),
                bdown: co(l.bdown),
                ..l
            })
            .collect();
        self
    }

    /// The dtype the parameters are held and computed in.
    pub fn dtype(&self) -> FloatDType {
        self.head.parts[0].dtype().into()
    }

    /// The model's config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device its parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The decoder layers (a layer path runs them in any order).
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }
}

/// The output widths of a layer's maps: queries, keys (= values), the MLP's intermediate
/// size and the hidden size.
fn widths(c: &LlamaConfig) -> (usize, usize, usize, usize) {
    (
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
        c.hidden_size,
    )
}

/// The one tensor of a single-part map.
fn one(parts: Vec<Tensor<2>>) -> Tensor<2> {
    parts.into_iter().next().expect("one part")
}

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_kernels::{tensor_from, values_of};

    fn matrix(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| (((i + seed) * 2654435761) % 1999) as f32 / 999.5 - 1.0)
            .collect()
    }

    #[test]
    fn a_map_of_views_and_a_fused_map_agree() {
        let d = Device::flex();
        let (inp, outs) = (24, [16, 8, 8]);
        let hf: Vec<Tensor<2>> = outs
            .iter()
            .enumerate()
            .map(|(k, &o)| tensor_from(&matrix(o, inp, k), &[o, inp], &d))
            .collect();
        // three parts multiplied one by one (the size from which they are not fused)
        let views = Proj {
            parts: hf.iter().map(|w| w.clone().transpose()).collect(),
            views: true,
        };
        // small parts: fused by rows, one view
        let small = Proj::new(hf.clone());
        assert!(small.views, "f32 on the CPU multiplies by views");
        assert_eq!(small.parts.len(), 1);
        let fused = Proj {
            parts: vec![cat_transposed(hf.clone())],
            views: false,
        };
        let x = tensor_from(&matrix(5, inp, 7), &[5, inp], &d);
        let b = values_of(fused.apply(x.clone()));
        assert_eq!(b.len(), 5 * 32);
        for p in [&views, &small] {
            for (u, v) in values_of(p.apply(x.clone())).iter().zip(&b) {
                assert!((u - v).abs() < 1e-5, "{u} vs {v}");
            }
        }
        // all give back the Hugging Face tensors bit for bit
        for p in [&views, &small, &fused] {
            for (got, want) in p.hf(&outs).into_iter().zip(&hf) {
                assert_eq!(values_of(got), values_of(want.clone()));
            }
        }
        // bf16 multiplies by one contiguous matrix (its CPU matmul copies a strided operand);
        // f16 keeps a view (these parts are small: fused); both keep the values
        let half = views.clone().cast(FloatDType::BF16, &outs);
        assert!(!half.views && half.parts.len() == 1);
        let f16 = views.cast(FloatDType::F16, &outs);
        assert!(f16.views && f16.parts.len() == 1);
        for (p, dtype) in [(&half, FloatDType::BF16), (&f16, FloatDType::F16)] {
            let y = values_of(p.apply(x.clone().cast(dtype)));
            for (u, v) in y.iter().zip(&b) {
                assert!((u - v).abs() < 0.1, "{u} vs {v}");
            }
        }
    }
}
