//! `config.json` of a Llama-family decoder: the fields the forward pass needs.

use crate::ModelError;
use serde_json::Value;

/// The architectures [`LlamaConfig::from_json`] accepts (`config.architectures[0]`).
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

/// Which member of the family a config describes (they differ only in details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 1/2/3: optional `attention_bias` (q/k/v/o) and `mlp_bias`, optional rope scaling.
    Llama,
    /// Mistral: Llama plus an optional sliding attention window.
    Mistral,
    /// Qwen2: biases on q/k/v (never on o), sliding window only with `use_sliding_window`.
    Qwen2,
}

/// Rotary-embedding frequency scaling (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise frequency scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Hyperparameters of a Llama / Mistral / Qwen2 decoder, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    /// `architectures[0]` as written in the config.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The context length: the longest sequence (prompt plus generated tokens) the model runs.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// Keys further back than this are not attended to (Mistral; Qwen2 with `use_sliding_window`).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn get_usize(c: &Value, key: &str) -> Option<usize> {
    c.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

fn get_f64(c: &Value, key: &str) -> Option<f64> {
    c.get(key).and_then(Value::as_f64)
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl LlamaConfig {
    /// Parse a `config.json` value. `origin` names the file (or model) in error messages.
    pub fn from_json(config: &Value, origin: &str) -> Result<LlamaConfig, ModelError> {
        let bad = |message: String| ModelError::Config {
            origin: origin.to_string(),
            message,
        };
        let architecture = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                // Some configs only carry model_type.
                match config.get("model_type").and_then(Value::as_str) {
                    Some("llama") => Some("LlamaForCausalLM".into()),
                    Some("mistral") => Some("MistralForCausalLM".into()),
                    Some("qwen2") => Some("Qwen2ForCausalLM".into()),
                    _ => None,
                }
            })
            .ok_or_else(|| {
                bad(format!(
                    "no \"architectures\" entry; supported: {}",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ))
            })?;
        let family = match architecture.as_str() {
            "LlamaForCausalLM" => Family::Llama,
            "MistralForCausalLM" => Family::Mistral,
            "Qwen2ForCausalLM" => Family::Qwen2,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    origin: origin.to_string(),
                    architecture: other.to_string(),
                });
            }
        };
        let need = |key: &str| {
            get_usize(config, key)
                .filter(|v| *v > 0)
                .ok_or_else(|| bad(format!("missing or invalid \"{key}\" (a positive integer)")))
        };
        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let num_kv_heads = get_usize(config, "num_key_value_heads").unwrap_or(num_heads);
        let head_dim = match config.get("head_dim") {
            Some(Value::Null) | None => hidden_size / num_heads,
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| bad("\"head_dim\" is not an integer".into()))?,
        };
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads ({num_heads}) is not a multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!(
                "head dimension {head_dim} must be even and positive (hidden_size / num_attention_heads or head_dim)"
            )));
        }
        if let Some(act) = config.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(bad(format!(
                "hidden_act \"{act}\" is not supported (Llama-family models use \"silu\")"
            )));
        }
        let rope_params = config.get("rope_parameters");
        let rope_theta = get_f64(config, "rope_theta")
            .or_else(|| rope_params.and_then(|p| get_f64(p, "rope_theta")))
            .unwrap_or(10000.0);
        let scaling_value = match config.get("rope_scaling") {
            Some(Value::Null) | None => rope_params,
            Some(v) => Some(v),
        };
        let rope_scaling = match scaling_value {
            None => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let factor = get_f64(s, "factor").unwrap_or(1.0);
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear { factor }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: get_f64(s, "low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: get_f64(s, "high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: get_f64(
                            s,
                            "original_max_position_embeddings",
                        )
                        .unwrap_or(8192.0),
                    }),
                    other => {
                        return Err(bad(format!(
                            "rope scaling \"{other}\" is not supported (supported: default, linear, llama3)"
                        )));
                    }
                }
            }
        };
        let attention_bias = config
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = config
            .get("mlp_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let sliding_window = match family {
            Family::Llama => None,
            Family::Mistral => get_usize(config, "sliding_window"),
            Family::Qwen2 => {
                if config
                    .get("use_sliding_window")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                {
                    get_usize(config, "sliding_window")
                } else {
                    None
                }
            }
        };
        Ok(LlamaConfig {
            family,
            architecture,
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: get_f64(config, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: get_usize(config, "max_position_embeddings").unwrap_or(4096),
            // Llama, Mistral and Qwen2 configs all default to untied heads.
            tie_word_embeddings: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            sliding_window,
            bos_token_id: token_ids(config.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(config.get("eos_token_id")),
        })
    }

    /// Read `dir/config.json`.
    pub fn from_dir(dir: &std::path::Path) -> Result<LlamaConfig, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Config {
            origin: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            origin: path.display().to_string(),
            message: format!("not valid JSON: {e}"),
        })?;
        LlamaConfig::from_json(&value, &path.display().to_string())
    }

    /// Queries per key-value head (grouped-query attention).
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// The Hugging Face names and true shapes of every tensor this config needs, in file order
    /// (`lm_head.weight` only when the head is not tied).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}.");
            out.push((format!("{p}input_layernorm.weight"), vec![h]));
            out.push((format!("{p}self_attn.q_proj.weight"), vec![q, h]));
            out.push((format!("{p}self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}self_attn.v_proj.weight"), vec![kv, h]));
            if self.qkv_bias {
                out.push((format!("{p}self_attn.q_proj.bias"), vec![q]));
                out.push((format!("{p}self_attn.k_proj.bias"), vec![kv]));
                out.push((format!("{p}self_attn.v_proj.bias"), vec![kv]));
            }
            out.push((format!("{p}self_attn.o_proj.weight"), vec![h, q]));
            if self.o_bias {
                out.push((format!("{p}self_attn.o_proj.bias"), vec![h]));
            }
            out.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
            for (name, shape) in [
                ("gate_proj", vec![i, h]),
                ("up_proj", vec![i, h]),
                ("down_proj", vec![h, i]),
            ] {
                let rows = shape[0];
                out.push((format!("{p}mlp.{name}.weight"), shape));
                if self.mlp_bias {
                    out.push((format!("{p}mlp.{name}.bias"), vec![rows]));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }

    /// Inverse frequencies of the rotary embedding (`head_dim / 2` values), with scaling applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        match self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            }) => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
            "eos_token_id": [2, 5], "bos_token_id": 1
        })
    }

    #[test]
    fn reads_llama_defaults() {
        let c = LlamaConfig::from_json(&base(), "t").unwrap();
        assert_eq!(c.family, Family::Llama);
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.group_size(), 2);
        assert!(!c.tie_word_embeddings && !c.qkv_bias && !c.o_bias);
        assert_eq!(c.eos_token_ids, vec![2, 5]);
        assert_eq!(c.bos_token_id, Some(1));
        assert_eq!(c.rope_theta, 10000.0);
        // 1 embedding + 9 per layer + norm + head
        assert_eq!(c.tensor_shapes().len(), 1 + 2 * 9 + 2);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_mistral_window() {
        let mut q = base();
        q["architectures"] = json!(["Qwen2ForCausalLM"]);
        q["sliding_window"] = json!(4);
        let c = LlamaConfig::from_json(&q, "t").unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.sliding_window, None);
        let mut m = base();
        m["architectures"] = json!(["MistralForCausalLM"]);
        m["sliding_window"] = json!(4);
        assert_eq!(
            LlamaConfig::from_json(&m, "t").unwrap().sliding_window,
            Some(4)
        );
    }

    #[test]
    fn unsupported_architecture_lists_supported_ones() {
        let mut g = base();
        g["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = LlamaConfig::from_json(&g, "models/gpt2/config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
        assert!(e.contains("models/gpt2/config.json"), "{e}");
        for a in SUPPORTED_ARCHITECTURES {
            assert!(e.contains(a), "{e}");
        }
    }

    #[test]
    fn rope_scaling_llama3_keeps_high_frequencies() {
        let mut c = base();
        c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        c["rope_theta"] = json!(500000.0);
        let cfg = LlamaConfig::from_json(&c, "t").unwrap();
        let plain = LlamaConfig {
            rope_scaling: None,
            ..cfg.clone()
        };
        let (s, p) = (cfg.inv_freq(), plain.inv_freq());
        assert_eq!(s[0], p[0]); // highest frequency untouched
        assert!((s[3] - p[3] / 8.0).abs() < 1e-12 * p[3].max(1.0) || s[3] <= p[3]);
        c["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        let e = LlamaConfig::from_json(&c, "t").unwrap_err().to_string();
        assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
    }
}
