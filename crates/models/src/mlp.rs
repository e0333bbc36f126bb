//! MLP classifiers: the models the data-using merges (Fisher, RegMean, Git Re-Basin, REPAIR,
//! soups) are reproduced on.
//!
//! [`MlpWeights`] holds the parameters on the host in PyTorch's layout (`layers.{i}.weight` is
//! `[out, in]`, `layers.{i}.bias` is `[out]`), reads and writes them as a Hugging Face-style
//! folder (`config.json` with `"architectures": ["EvomergeMlp"]` and `layer_sizes`, plus
//! `model.safetensors`), and builds the burn module [`Mlp`] (burn's `Linear` stores `[in, out]`,
//! so the weights are transposed on the way in and out). [`train`] fits an MLP with burn's
//! autodiff and Adam on the flex CPU backend; every random draw (initialisation, batch order)
//! comes from a stream derived from the seed, so a run is reproducible. [`evaluate`] gives
//! accuracy and mean cross-entropy on a data set.
//!
//! The forward pass can report what the merges need ([`Mlp::forward_taps`]): the input of every
//! linear layer (RegMean's Gram matrices, activation matching) and every pre-activation (REPAIR's
//! statistics), optionally with a probe tensor added to each pre-activation so that one
//! backward pass yields the per-example gradients of a whole batch (the exact diagonal Fisher).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Tensor, TensorData};
use evomerge_checkpoint::{Checkpoint, CheckpointWriter, Dtype, OutputTensor, WriterOptions};
use evomerge_data::Dataset;
use evomerge_kernels::MaskRng;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The `architectures` entry of an MLP checkpoint's `config.json`.
pub const MLP_ARCHITECTURE: &str = "EvomergeMlp";

/// What can go wrong with an MLP.
#[derive(Debug, thiserror::Error)]
pub enum MlpError {
    #[error(transparent)]
    Checkpoint(#[from] evomerge_checkpoint::CheckpointError),
    #[error("{dir}: {message}")]
    Config { dir: PathBuf, message: String },
    #[error(
        "architectures differ: {a} has layer sizes {sa:?}, {b} has {sb:?}; these methods merge MLPs of one shape"
    )]
    Mismatch {
        a: String,
        b: String,
        sa: Vec<usize>,
        sb: Vec<usize>,
    },
    #[error(transparent)]
    Data(#[from] evomerge_data::DataError),
    #[error("{0}")]
    Invalid(String),
}

/// Result type of the MLP module.
pub type Result<T, E = MlpError> = std::result::Result<T, E>;

/// One linear layer on the host: `weight` is `[out, in]` row-major (PyTorch layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub d_in: usize,
    pub d_out: usize,
}

impl Dense {
    /// `weight[o][i]`.
    pub fn w(&self, o: usize, i: usize) -> f32 {
        self.weight[o * self.d_in + i]
    }
}

/// An MLP's parameters: `layer_sizes = [d_in, h_1, ..., h_k, n_classes]`, ReLU between linear
/// layers, none after the last.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    pub layer_sizes: Vec<usize>,
    pub layers: Vec<Dense>,
}

fn tensor2(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

use evomerge_kernels::values_of as host;

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

impl MlpWeights {
    /// Fresh weights with the usual (PyTorch/burn) initialisation `U(-k, k)`, `k = 1/sqrt(d_in)`,
    /// drawn from streams named after each tensor, so the same seed gives the same network.
    pub fn init(layer_sizes: &[usize], seed: u64) -> Result<MlpWeights> {
        if layer_sizes.len() < 2 || layer_sizes.contains(&0) {
            return Err(MlpError::Invalid(format!(
                "layer_sizes {layer_sizes:?}: need at least [inputs, classes], all positive"
            )));
        }
        let layers = layer_sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let (d_in, d_out) = (w[0], w[1]);
                let k = 1.0 / (d_in as f32).sqrt();
                let draw = |name: String, n: usize| -> Vec<f32> {
                    MaskRng::new(seed, &name, 0)
                        .uniform(n)
                        .into_iter()
                        .map(|u| (2.0 * u - 1.0) * k)
                        .collect()
                };
                Dense {
                    weight: draw(format!("layers.{i}.weight"), d_in * d_out),
                    bias: draw(format!("layers.{i}.bias"), d_out),
                    d_in,
                    d_out,
                }
            })
            .collect();
        Ok(MlpWeights {
            layer_sizes: layer_sizes.to_vec(),
            layers,
        })
    }

    /// Number of input features.
    pub fn n_inputs(&self) -> usize {
        self.layer_sizes[0]
    }

    /// Number of classes (outputs).
    pub fn n_classes(&self) -> usize {
        *self.layer_sizes.last().expect("at least two sizes")
    }

    /// Number of hidden layers.
    pub fn n_hidden(&self) -> usize {
        self.layers.len() - 1
    }

    /// `(name, shape, values)` of every tensor in checkpoint order.
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.push((
                format!("layers.{i}.weight"),
                vec![l.d_out, l.d_in],
                l.weight.as_slice(),
            ));
            out.push((format!("layers.{i}.bias"), vec![l.d_out], l.bias.as_slice()));
        }
        out
    }

    /// Every parameter in one flat vector (checkpoint order).
    pub fn flat(&self) -> Vec<f32> {
        self.layers
            .iter()
            .flat_map(|l| l.weight.iter().chain(&l.bias).copied())
            .collect()
    }

    /// The same architecture with parameters from a flat vector (the order of [`Self::flat`]).
    pub fn with_flat(&self, flat: &[f32]) -> MlpWeights {
        let mut out = self.clone();
        let mut at = 0;
        for l in &mut out.layers {
            let nw = l.weight.len();
            l.weight.copy_from_slice(&flat[at..at + nw]);
            at += nw;
            let nb = l.bias.len();
            l.bias.copy_from_slice(&flat[at..at + nb]);
            at += nb;
        }
        assert_eq!(at, flat.len(), "with_flat: length");
        out
    }

    /// A clear error unless `other` has the same layer sizes.
    pub fn check_same_shape(&self, other: &MlpWeights, a: &str, b: &str) -> Result<()> {
        if self.layer_sizes != other.layer_sizes {
            return Err(MlpError::Mismatch {
                a: a.into(),
                b: b.into(),
                sa: self.layer_sizes.clone(),
                sb: other.layer_sizes.clone(),
            });
        }
        Ok(())
    }

    /// `sum_i w_i * models_i` (weights used as given).
    pub fn weighted_sum(models: &[&MlpWeights], weights: &[f32]) -> MlpWeights {
        assert_eq!(models.len(), weights.len());
        let flats: Vec<Vec<f32>> = models.iter().map(|m| m.flat()).collect();
        let mut out = vec![0.0f32; flats[0].len()];
        for (f, w) in flats.iter().zip(weights) {
            for (o, v) in out.iter_mut().zip(f) {
                *o += w * v;
            }
        }
        models[0].with_flat(&out)
    }

    /// `(1 - t) * a + t * b`.
    pub fn lerp(a: &MlpWeights, b: &MlpWeights, t: f32) -> MlpWeights {
        MlpWeights::weighted_sum(&[a, b], &[1.0 - t, t])
    }

    /// The burn module on `device` (an autodiff device for training).
    pub fn module(&self, device: &Device) -> Mlp {
        let layers = self
            .layers
            .iter()
            .map(|l| Linear {
                weight: Param::from_tensor(tensor2(
                    transpose(&l.weight, l.d_out, l.d_in),
                    l.d_in,
                    l.d_out,
                    device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(l.bias.clone(), [l.d_out]),
                    device,
                ))),
            })
            .collect();
        Mlp { layers }
    }

    /// Read the parameters back from a module.
    pub fn from_module(module: &Mlp) -> MlpWeights {
        let mut sizes = Vec::new();
        let layers: Vec<Dense> = module
            .layers
            .iter()
            .map(|l| {
                let [d_in, d_out] = l.weight.val().dims();
                if sizes.is_empty() {
                    sizes.push(d_in);
                }
                sizes.push(d_out);
                Dense {
                    weight: transpose(&host(l.weight.val().inner()), d_in, d_out),
                    bias: l
                        .bias
                        .as_ref()
                        .map(|b| host(b.val().inner()))
                        .unwrap_or_else(|| vec![0.0; d_out]),
                    d_in,
                    d_out,
                }
            })
            .collect();
        MlpWeights {
            layer_sizes: sizes,
            layers,
        }
    }

    /// Build from named tensors (e.g. a merge's in-memory output): `layers.{i}.weight` as
    /// `[out, in]` values and `layers.{i}.bias`, for the given layer sizes.
    pub fn from_named(layer_sizes: &[usize], tensors: &[(String, Vec<f32>)]) -> Result<MlpWeights> {
        let get = |name: String, len: usize| -> Result<Vec<f32>> {
            let (_, v) = tensors.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                MlpError::Invalid(format!(
                    "tensor '{name}' is missing (layer_sizes {layer_sizes:?})"
                ))
            })?;
            if v.len() != len {
                return Err(MlpError::Invalid(format!(
                    "tensor '{name}' has {} values, layer_sizes {layer_sizes:?} needs {len}",
                    v.len()
                )));
            }
            Ok(v.clone())
        };
        let mut out = MlpWeights::init(layer_sizes, 0)?;
        for (i, l) in out.layers.iter_mut().enumerate() {
            l.weight = get(format!("layers.{i}.weight"), l.d_in * l.d_out)?;
            l.bias = get(format!("layers.{i}.bias"), l.d_out)?;
        }
        Ok(out)
    }

    /// The `config.json` of this MLP.
    pub fn config_json(&self) -> Value {
        json!({
            "architectures": [MLP_ARCHITECTURE],
            "model_type": "evomerge_mlp",
            "layer_sizes": self.layer_sizes,
            "activation": "relu",
            "num_labels": self.n_classes(),
            "num_hidden_layers": self.layers.len(),
            "torch_dtype": "float32",
        })
    }

    /// Write a checkpoint folder (atomically: nothing appears at `dir` unless complete).
    pub fn save(&self, dir: impl AsRef<Path>, force: bool) -> Result<PathBuf> {
        let named = self.named_tensors();
        let plan = named
            .iter()
            .map(|(n, s, _)| OutputTensor::new(n.clone(), Dtype::F32, s.clone()))
            .collect();
        let writer = CheckpointWriter::create(
            dir,
            plan,
            WriterOptions {
                force,
                ..WriterOptions::default()
            },
        )?;
        for (n, _, v) in &named {
            writer.write_f32(n, v)?;
        }
        Ok(writer.finish(Some(self.config_json()), None)?)
    }

    /// Read an MLP checkpoint written by [`Self::save`] (or any folder with the same names and
    /// an `EvomergeMlp` config).
    pub fn load(dir: impl AsRef<Path>) -> Result<MlpWeights> {
        let ckpt = Checkpoint::open(dir.as_ref())?;
        MlpWeights::from_checkpoint(&ckpt)
    }

    /// Read an MLP from an opened checkpoint.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<MlpWeights> {
        let dir = ckpt.dir().to_path_buf();
        let cfg_err = |message: String| MlpError::Config {
            dir: dir.clone(),
            message,
        };
        let config = ckpt.config().ok_or_else(|| {
            cfg_err("no config.json; an MLP checkpoint needs one with \"layer_sizes\"".into())
        })?;
        if let Some(arch) = ckpt.architecture()
            && arch != MLP_ARCHITECTURE
        {
            return Err(cfg_err(format!(
                "architecture {arch} is not an evomerge MLP ({MLP_ARCHITECTURE})"
            )));
        }
        let sizes: Vec<usize> = config
            .get("layer_sizes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|x| x as usize))
                    .collect()
            })
            .ok_or_else(|| cfg_err("config.json has no \"layer_sizes\" list".into()))?;
        if sizes.len() < 2 {
            return Err(cfg_err(format!(
                "layer_sizes {sizes:?} needs at least two entries"
            )));
        }
        if let Some(act) = config.get("activation").and_then(Value::as_str)
            && act != "relu"
        {
            return Err(cfg_err(format!(
                "activation '{act}' is not supported (evomerge MLPs use relu)"
            )));
        }
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            let (d_in, d_out) = (w[0], w[1]);
            let read = |name: String, shape: Vec<usize>| -> Result<Vec<f32>> {
                let info = ckpt.info(&name).ok_or_else(|| {
                    cfg_err(format!(
                        "tensor '{name}' is missing (layer_sizes {sizes:?})"
                    ))
                })?;
                if info.shape != shape {
                    return Err(cfg_err(format!(
                        "tensor '{name}' has shape {:?}, but layer_sizes {sizes:?} needs {shape:?}",
                        info.shape
                    )));
                }
                Ok(ckpt.read_f32(&name)?)
            };
            layers.push(Dense {
                weight: read(format!("layers.{i}.weight"), vec![d_out, d_in])?,
                bias: read(format!("layers.{i}.bias"), vec![d_out])?,
                d_in,
                d_out,
            });
        }
        Ok(MlpWeights {
            layer_sizes: sizes,
            layers,
        })
    }
}

/// The burn MLP: linear layers with ReLU between them.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

/// What one forward pass saw.
#[derive(Debug, Clone)]
pub struct Taps {
    /// The input of each linear layer (`[batch, d_in]`): the data, then post-ReLU activations.
    pub inputs: Vec<Tensor<2>>,
    /// The output of each linear layer before the activation (`[batch, d_out]`); the last one
    /// is the logits.
    pub preacts: Vec<Tensor<2>>,
}

impl Taps {
    /// The logits.
    pub fn logits(&self) -> Tensor<2> {
        self.preacts.last().expect("at least one layer").clone()
    }
}

impl Mlp {
    /// Logits of a batch `[batch, d_in]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        let mut h = x;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(h);
            if i + 1 < n {
                h = relu(h);
            }
        }
        h
    }

    /// Forward pass recording every layer's input and pre-activation. With `probes` (one
    /// `[batch, d_out]` tensor per layer, usually zeros that require a gradient), each probe is
    /// added to its layer's pre-activation, so its gradient after a backward pass is the
    /// per-example gradient with respect to that pre-activation.
    pub fn forward_taps(&self, x: Tensor<2>, probes: Option<&[Tensor<2>]>) -> Taps {
        let n = self.layers.len();
        let mut inputs = Vec::with_capacity(n);
        let mut preacts = Vec::with_capacity(n);
        let mut h = x;
        for (i, l) in self.layers.iter().enumerate() {
            inputs.push(h.clone());
            let mut z = l.forward(h);
            if let Some(p) = probes {
                z = z + p[i].clone();
            }
            preacts.push(z.clone());
            h = if i + 1 < n { relu(z) } else { z };
        }
        Taps { inputs, preacts }
    }
}

/// Upload rows `[start, end)` of a data set as a `[rows, d]` tensor.
pub fn batch_tensor(data: &Dataset, rows: &[usize], device: &Device) -> Tensor<2> {
    let mut values = Vec::with_capacity(rows.len() * data.n_features);
    for &r in rows {
        values.extend_from_slice(data.row(r));
    }
    tensor2(values, rows.len(), data.n_features, device)
}

/// One-hot labels of `rows` as a `[rows, n_classes]` tensor.
pub fn one_hot(data: &Dataset, rows: &[usize], n_classes: usize, device: &Device) -> Tensor<2> {
    let mut values = vec![0.0f32; rows.len() * n_classes];
    for (k, &r) in rows.iter().enumerate() {
        values[k * n_classes + data.labels[r] as usize] = 1.0;
    }
    tensor2(values, rows.len(), n_classes, device)
}

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            batch_size: 64,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// A seeded permutation of `0..n` from the stream `(seed, name)`.
pub fn seeded_permutation(n: usize, seed: u64, name: &str) -> Vec<usize> {
    let u = MaskRng::new(seed, name, 0).uniform(n);
    let mut idx: Vec<usize> = (0..n).collect();
    // Fisher-Yates driven by the stream.
    for i in (1..n).rev() {
        let j = ((u[i] as f64) * (i + 1) as f64) as usize;
        idx.swap(i, j.min(i));
    }
    idx
}

/// Train from `init` on `data` with mean cross-entropy and Adam (burn autodiff on the flex CPU
/// backend). Returns the trained weights.
pub fn train(init: &MlpWeights, data: &Dataset, config: &TrainConfig) -> Result<MlpWeights> {
    data.expect_features(init.n_inputs())?;
    if data.n_classes > init.n_classes() {
        return Err(MlpError::Invalid(format!(
            "{}: {} classes, but the MLP has {} outputs",
            data.name,
            data.n_classes,
            init.n_classes()
        )));
    }
    if data.is_empty() || config.batch_size == 0 {
        return Err(MlpError::Invalid(
            "training needs rows and a positive batch size".into(),
        ));
    }
    let device = Device::flex().autodiff();
    let mut model = init.module(&device);
    let mut optim = AdamConfig::new().init();
    let c = init.n_classes();
    for epoch in 0..config.epochs {
        let order = seeded_permutation(data.len(), config.seed, &format!("epoch {epoch}"));
        for rows in order.chunks(config.batch_size) {
            let x = batch_tensor(data, rows, &device);
            let y = one_hot(data, rows, c, &device);
            let logp = log_softmax(model.forward(x), 1);
            let loss = (logp * y).sum().neg() / rows.len() as f32;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.lr, model, grads);
        }
    }
    Ok(MlpWeights::from_module(&model))
}

/// Accuracy and loss of a classifier on a data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Fraction of rows whose arg-max logit is the label.
    pub accuracy: f64,
    /// Mean cross-entropy (natural log).
    pub loss: f64,
    pub rows: usize,
}

/// Logits of every row, `[len, n_classes]` row-major, computed on the flex device in batches.
pub fn logits(weights: &MlpWeights, data: &Dataset) -> Result<Vec<f32>> {
    data.expect_features(weights.n_inputs())?;
    let device = Device::flex();
    let model = weights.module(&device);
    let mut out = Vec::with_capacity(data.len() * weights.n_classes());
    let all: Vec<usize> = (0..data.len()).collect();
    for rows in all.chunks(1024) {
        out.extend(host(model.forward(batch_tensor(data, rows, &device))));
    }
    Ok(out)
}

/// Accuracy and mean cross-entropy of `weights` on `data`.
pub fn evaluate(weights: &MlpWeights, data: &Dataset) -> Result<Evaluation> {
    if data.is_empty() {
        return Err(MlpError::Invalid(format!(
            "{}: no rows to evaluate on",
            data.name
        )));
    }
    data.expect_features(weights.n_inputs())?;
    let c = weights.n_classes();
    if let Some(l) = data.labels.iter().find(|l| **l as usize >= c) {
        return Err(MlpError::Invalid(format!(
            "{}: label {l} but the MLP has {c} outputs",
            data.name
        )));
    }
    let z = logits(weights, data)?;
    let (mut correct, mut loss) = (0usize, 0f64);
    for (i, row) in z.chunks(c).enumerate() {
        let y = data.labels[i] as usize;
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|v| (*v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        loss += lse - row[y] as f64;
        let arg = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (j, v)| if *v > b.1 { (j, *v) } else { b },
            )
            .0;
        correct += (arg == y) as usize;
    }
    Ok(Evaluation {
        accuracy: correct as f64 / data.len() as f64,
        loss: loss / data.len() as f64,
        rows: data.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_data() -> Dataset {
        Dataset::digits().split(0).train.take(200)
    }

    #[test]
    fn module_round_trip_and_forward_matches_host_math() {
        let w = MlpWeights::init(&[64, 8, 10], 3).unwrap();
        let back = MlpWeights::from_module(&w.module(&Device::flex()));
        assert_eq!(w, back);
        let d = tiny_data().take(3);
        let z = logits(&w, &d).unwrap();
        // Host reference: relu(x W0^T + b0) W1^T + b1.
        for r in 0..3 {
            let x = d.row(r);
            let h: Vec<f32> = (0..8)
                .map(|o| {
                    let l = &w.layers[0];
                    (l.bias[o] + (0..64).map(|i| l.w(o, i) * x[i]).sum::<f32>()).max(0.0)
                })
                .collect();
            for o in 0..10 {
                let l = &w.layers[1];
                let want = l.bias[o] + (0..8).map(|i| l.w(o, i) * h[i]).sum::<f32>();
                assert!(
                    (z[r * 10 + o] - want).abs() < 1e-5,
                    "{} vs {want}",
                    z[r * 10 + o]
                );
            }
        }
    }

    #[test]
    fn init_is_seeded() {
        let a = MlpWeights::init(&[4, 3, 2], 1).unwrap();
        assert_eq!(a, MlpWeights::init(&[4, 3, 2], 1).unwrap());
        assert_ne!(a, MlpWeights::init(&[4, 3, 2], 2).unwrap());
        assert!(a.layers[0].weight.iter().all(|v| v.abs() <= 0.5));
        assert!(MlpWeights::init(&[4], 1).is_err());
    }

    #[test]
    fn training_lowers_the_loss() {
        let d = tiny_data();
        let w0 = MlpWeights::init(&[64, 16, 10], 0).unwrap();
        let before = evaluate(&w0, &d).unwrap();
        let cfg = TrainConfig {
            epochs: 30,
            batch_size: 32,
            lr: 3e-3,
            seed: 0,
        };
        let w1 = train(&w0, &d, &cfg).unwrap();
        let after = evaluate(&w1, &d).unwrap();
        assert!(after.loss < 0.6 * before.loss, "{before:?} -> {after:?}");
        assert!(after.accuracy > 0.7, "{after:?}");
    }

    #[test]
    fn save_load_and_bad_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let w = MlpWeights::init(&[5, 4, 3], 7).unwrap();
        let p = dir.path().join("m");
        w.save(&p, false).unwrap();
        assert_eq!(MlpWeights::load(&p).unwrap(), w);
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(p.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], MLP_ARCHITECTURE);
        // A config that disagrees with the tensors.
        let mut bad = cfg.clone();
        bad["layer_sizes"] = json!([5, 6, 3]);
        std::fs::write(p.join("config.json"), bad.to_string()).unwrap();
        let e = MlpWeights::load(&p).unwrap_err().to_string();
        assert!(e.contains("layers.0.weight") && e.contains("[6, 5]"), "{e}");
        let other = MlpWeights::init(&[5, 6, 3], 7).unwrap();
        let e = w
            .check_same_shape(&other, "a", "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[5, 4, 3]") && e.contains("[5, 6, 3]"), "{e}");
        let e = evaluate(&w, &tiny_data()).unwrap_err().to_string();
        assert!(e.contains("64") && e.contains("5"), "{e}");
    }
}
