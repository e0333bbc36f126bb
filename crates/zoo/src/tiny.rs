//! Tiny random Llama-layout checkpoints.

use evomerge_checkpoint::{CheckpointError, CheckpointWriter, Dtype, OutputTensor, WriterOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde_json::{Value, json};
use std::path::Path;

/// Shape of a tiny Llama-family decoder. The defaults are mergekit's test model
/// (hidden 32, intermediate 48, 2 layers, vocabulary 64).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyLlama {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub vocab: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Share the embedding matrix with the LM head (no `lm_head.weight` stored).
    pub tie_embeddings: bool,
    /// Qwen2-style biases on the q/k/v projections (writes a `Qwen2ForCausalLM` config).
    pub qkv_bias: bool,
    pub max_positions: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            hidden: 32,
            intermediate: 48,
            layers: 2,
            vocab: 64,
            heads: 4,
            kv_heads: 2,
            tie_embeddings: false,
            qkv_bias: false,
            max_positions: 128,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
        }
    }
}

/// Named tensors (row-major `f32`) plus the `config.json` they belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub config: Value,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl TinyLlama {
    /// Tensor names and shapes in the Hugging Face layout, in file order.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let head_dim = self.hidden / self.heads;
        let kv = self.kv_heads * head_dim;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab, self.hidden],
        )];
        for i in 0..self.layers {
            let p = format!("model.layers.{i}.");
            out.push((format!("{p}input_layernorm.weight"), vec![self.hidden]));
            out.push((
                format!("{p}self_attn.q_proj.weight"),
                vec![self.hidden, self.hidden],
            ));
            out.push((format!("{p}self_attn.k_proj.weight"), vec![kv, self.hidden]));
            out.push((format!("{p}self_attn.v_proj.weight"), vec![kv, self.hidden]));
            if self.qkv_bias {
                out.push((format!("{p}self_attn.q_proj.bias"), vec![self.hidden]));
                out.push((format!("{p}self_attn.k_proj.bias"), vec![kv]));
                out.push((format!("{p}self_attn.v_proj.bias"), vec![kv]));
            }
            out.push((
                format!("{p}self_attn.o_proj.weight"),
                vec![self.hidden, self.hidden],
            ));
            out.push((
                format!("{p}post_attention_layernorm.weight"),
                vec![self.hidden],
            ));
            out.push((
                format!("{p}mlp.gate_proj.weight"),
                vec![self.intermediate, self.hidden],
            ));
            out.push((
                format!("{p}mlp.up_proj.weight"),
                vec![self.intermediate, self.hidden],
            ));
            out.push((
                format!("{p}mlp.down_proj.weight"),
                vec![self.hidden, self.intermediate],
            ));
        }
        out.push(("model.norm.weight".to_string(), vec![self.hidden]));
        if !self.tie_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab, self.hidden]));
        }
        out
    }

    /// The `config.json` transformers needs to load this model.
    pub fn config(&self) -> Value {
        let (arch, model_type) = if self.qkv_bias {
            ("Qwen2ForCausalLM", "qwen2")
        } else {
            ("LlamaForCausalLM", "llama")
        };
        json!({
            "architectures": [arch],
            "model_type": model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_positions,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        })
    }

    /// Random weights: N(0, 0.02) for matrices (as HF initialises them), norms near 1.
    pub fn random(&self, seed: u64) -> Weights {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
        let tensors = self
            .shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if name.ends_with("norm.weight") {
                    (0..n).map(|_| 1.0 + normal.sample(&mut rng)).collect()
                } else {
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                };
                (name, shape, values)
            })
            .collect();
        Weights {
            config: self.config(),
            tensors,
        }
    }
}

impl Weights {
    /// A "fine-tune": every value plus `scale` times a seeded N(0, 1) draw.
    pub fn perturbed(&self, seed: u64, scale: f32) -> Weights {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f1e1_d000_0000);
        let normal = Normal::new(0.0f32, 1.0).expect("valid normal");
        Weights {
            config: self.config.clone(),
            tensors: self
                .tensors
                .iter()
                .map(|(n, s, v)| {
                    (
                        n.clone(),
                        s.clone(),
                        v.iter()
                            .map(|x| x + scale * normal.sample(&mut rng))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// The values of one tensor.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v.as_slice())
    }

    /// Write an HF-layout folder: weights in `dtype` (sharded above `max_shard_bytes`),
    /// `config.json`, and a word-level `tokenizer.json` for the model's vocabulary.
    pub fn save(
        &self,
        dir: impl AsRef<Path>,
        dtype: Dtype,
        max_shard_bytes: u64,
    ) -> Result<(), CheckpointError> {
        let vocab = self.config["vocab_size"].as_u64().unwrap_or(64) as usize;
        self.save_with_tokenizer(dir, dtype, max_shard_bytes, &word_level_tokenizer(vocab))
    }

    /// [`Weights::save`] with the given `tokenizer.json` contents.
    pub fn save_with_tokenizer(
        &self,
        dir: impl AsRef<Path>,
        dtype: Dtype,
        max_shard_bytes: u64,
        tokenizer: &Value,
    ) -> Result<(), CheckpointError> {
        let plan = self
            .tensors
            .iter()
            .map(|(n, s, _)| OutputTensor::new(n.clone(), dtype, s.clone()))
            .collect();
        let writer = CheckpointWriter::create(
            dir.as_ref(),
            plan,
            WriterOptions {
                max_shard_bytes,
                force: true,
                ..WriterOptions::default()
            },
        )?;
        for (n, _, v) in &self.tensors {
            writer.write_f32(n, v)?;
        }
        writer.write_file(
            "tokenizer.json",
            serde_json::to_string_pretty(tokenizer)
                .expect("tokenizer serializes")
                .as_bytes(),
        )?;
        let mut config = self.config.clone();
        evomerge_checkpoint::set_torch_dtype(&mut config, dtype);
        writer.finish(Some(config), None)?;
        Ok(())
    }
}

/// A minimal `tokenizer.json` (word-level, whitespace pre-tokenizer) with `<unk>`, `<s>`,
/// `</s>` and `tok3 ... tok{vocab-1}`, readable by the `tokenizers` library.
pub fn word_level_tokenizer(vocab: usize) -> Value {
    let mut map = serde_json::Map::new();
    for (i, special) in ["<unk>", "<s>", "</s>"].iter().enumerate().take(vocab) {
        map.insert(special.to_string(), json!(i));
    }
    for i in 3..vocab {
        map.insert(format!("tok{i}"), json!(i));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use evomerge_checkpoint::Checkpoint;

    #[test]
    fn saves_a_loadable_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = TinyLlama::default();
        let w = spec.random(3);
        w.save(tmp.path().join("m"), Dtype::BF16, u64::MAX).unwrap();
        let c = Checkpoint::open(tmp.path().join("m")).unwrap();
        assert_eq!(c.len(), spec.shapes().len());
        assert_eq!(c.num_layers(), Some(2));
        assert_eq!(
            c.info("model.layers.1.self_attn.k_proj.weight")
                .unwrap()
                .shape,
            vec![16, 32]
        );
        assert!(tmp.path().join("m/tokenizer.json").exists());
        assert_eq!(c.config().unwrap()["torch_dtype"], "bfloat16");
        // same seed, same weights; perturbation moves them a little
        assert_eq!(spec.random(3), w);
        let p = w.perturbed(1, 0.01);
        let a = w.get("model.norm.weight").unwrap();
        let b = p.get("model.norm.weight").unwrap();
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.1 && x != y));
    }
}
