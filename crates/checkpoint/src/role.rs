//! Which part of a decoder a tensor belongs to, from its Hugging Face name.

/// The part of a decoder a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorRole {
    /// Token (or position) embeddings: `model.embed_tokens.*`, `transformer.wte.*`, `transformer.wpe.*`.
    Embedding,
    /// A tensor of decoder layer `i`: `model.layers.{i}.*`, `transformer.h.{i}.*`.
    Layer(usize),
    /// The norm after the last layer: `model.norm.*`, `transformer.ln_f.*`, `model.final_layernorm.*`.
    FinalNorm,
    /// The output projection: `lm_head.*`.
    LmHead,
    /// Anything else (rotary caches, vision towers, ...).
    Other,
}

/// Prefixes under which decoder layers are numbered.
const LAYER_PREFIXES: &[&str] = &[
    "model.layers.",
    "transformer.h.",
    "model.decoder.layers.",
    "gpt_neox.layers.",
    "transformer.blocks.",
    "layers.",
];

const EMBEDDING_PREFIXES: &[&str] = &[
    "model.embed_tokens.",
    "transformer.wte.",
    "transformer.wpe.",
    "transformer.word_embeddings.",
    "gpt_neox.embed_in.",
    "embed_tokens.",
];

const FINAL_NORM_PREFIXES: &[&str] = &[
    "model.norm.",
    "transformer.ln_f.",
    "model.final_layernorm.",
    "gpt_neox.final_layer_norm.",
    "norm.",
];

const HEAD_PREFIXES: &[&str] = &["lm_head.", "embed_out."];

impl TensorRole {
    /// The role of a tensor name.
    pub fn of(name: &str) -> TensorRole {
        if let Some((_, index, _)) = split_layer(name) {
            return TensorRole::Layer(index);
        }
        if EMBEDDING_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return TensorRole::Embedding;
        }
        if FINAL_NORM_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return TensorRole::FinalNorm;
        }
        if HEAD_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return TensorRole::LmHead;
        }
        TensorRole::Other
    }

    /// The layer index, if this is a layer tensor.
    pub fn layer(self) -> Option<usize> {
        match self {
            TensorRole::Layer(i) => Some(i),
            _ => None,
        }
    }
}

/// Split `model.layers.12.mlp.up_proj.weight` into (`model.layers.`, 12, `mlp.up_proj.weight`).
fn split_layer(name: &str) -> Option<(&str, usize, &str)> {
    for prefix in LAYER_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            let end = rest.find('.').unwrap_or(rest.len());
            if let Ok(i) = rest[..end].parse::<usize>() {
                let suffix = rest.get(end + 1..).unwrap_or("");
                return Some((&name[..prefix.len()], i, suffix));
            }
        }
    }
    None
}

/// The same tensor name in another layer: `rename_layer("model.layers.3.mlp.w", 7)` gives
/// `model.layers.7.mlp.w`. Names that are not layer tensors come back unchanged.
pub fn rename_layer(name: &str, new_index: usize) -> String {
    match split_layer(name) {
        Some((prefix, _, "")) => format!("{prefix}{new_index}"),
        Some((prefix, _, suffix)) => format!("{prefix}{new_index}.{suffix}"),
        None => name.to_string(),
    }
}

/// Where a tied model keeps the matrix that stands in for an LM head it does not store:
/// `lm_head.weight` is `model.embed_tokens.weight` (Llama family) or `transformer.wte.weight` (GPT-2).
pub fn tied_embedding_name(name: &str) -> &'static [&'static str] {
    match name {
        "lm_head.weight" => &["model.embed_tokens.weight", "transformer.wte.weight"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_of_llama_and_gpt2_names() {
        use TensorRole::*;
        let cases = [
            ("model.embed_tokens.weight", Embedding),
            ("model.layers.0.self_attn.q_proj.weight", Layer(0)),
            ("model.layers.31.mlp.down_proj.weight", Layer(31)),
            ("model.norm.weight", FinalNorm),
            ("lm_head.weight", LmHead),
            ("transformer.wte.weight", Embedding),
            ("transformer.wpe.weight", Embedding),
            ("transformer.h.11.attn.c_attn.weight", Layer(11)),
            ("transformer.ln_f.bias", FinalNorm),
            ("model.final_layernorm.weight", FinalNorm),
            ("model.rotary_emb.inv_freq", Other),
        ];
        for (name, role) in cases {
            assert_eq!(TensorRole::of(name), role, "{name}");
        }
    }

    #[test]
    fn renames_layers_only() {
        assert_eq!(
            rename_layer("model.layers.3.mlp.up_proj.weight", 17),
            "model.layers.17.mlp.up_proj.weight"
        );
        assert_eq!(
            rename_layer("transformer.h.0.ln_1.weight", 12),
            "transformer.h.12.ln_1.weight"
        );
        assert_eq!(rename_layer("model.norm.weight", 5), "model.norm.weight");
    }
}
