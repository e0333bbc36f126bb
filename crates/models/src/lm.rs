//! A decoder with its tokenizer: text in, text or log-likelihoods out.

use crate::{
    ContinuationScore, Decoder, Finish, Llama, ModelError, TokenGenerateOptions, Tokenizer,
};
use evomerge_kernels::Device;
use std::path::Path;
use std::sync::Arc;

/// Greedy text generation settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation stops when the output contains one of these; the output is cut before it.
    pub stop: Vec<String>,
    /// Prompts run together.
    pub batch_size: usize,
    /// Use the KV cache (on by default).
    pub use_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            stop: Vec::new(),
            batch_size: 32,
            use_cache: true,
        }
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The decoded output, cut before the first stop string.
    pub text: String,
    /// The generated token ids (including the tokens of a stop string).
    pub ids: Vec<u32>,
    pub finish: Finish,
}

/// A runnable language model: a [`Decoder`] (plain model or layer path) and a tokenizer.
#[derive(Debug, Clone)]
pub struct LanguageModel {
    decoder: Decoder,
    tokenizer: Arc<Tokenizer>,
}

impl LanguageModel {
    /// A decoder and the tokenizer of its model A.
    pub fn new(decoder: Decoder, tokenizer: Arc<Tokenizer>) -> LanguageModel {
        LanguageModel { decoder, tokenizer }
    }

    /// Load a Hugging Face folder (`config.json`, safetensors, `tokenizer.json`).
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<LanguageModel, ModelError> {
        let dir = dir.as_ref();
        let tokenizer = Tokenizer::from_dir(dir)?;
        let model = Llama::from_dir(dir, device)?;
        Ok(LanguageModel::new(
            Decoder::plain(Arc::new(model)),
            Arc::new(tokenizer),
        ))
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of a prompt, with the tokenizer's special tokens (BOS).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let ids = self.tokenizer.encode(text, true)?;
        if ids.is_empty() {
            return Err(ModelError::Input(format!(
                "prompt {text:?} encodes to no tokens"
            )));
        }
        Ok(ids)
    }

    /// Greedy continuations of `prompts`, in order.
    pub fn generate(
        &self,
        prompts: &[String],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>, ModelError> {
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.encode_prompt(p))
            .collect::<Result<_, _>>()?;
        let token_options = TokenGenerateOptions {
            max_new_tokens: options.max_new_tokens,
            eos_token_ids: self.decoder.config().eos_token_ids.clone(),
            batch_size: options.batch_size,
            use_cache: options.use_cache,
        };
        let tok = &self.tokenizer;
        let stops = &options.stop;
        let mut stop = |_: usize, ids: &[u32]| {
            !stops.is_empty()
                && tok
                    .decode(ids)
                    .map(|t| stops.iter().any(|s| t.contains(s.as_str())))
                    .unwrap_or(false)
        };
        let out = self.decoder.generate(&encoded, &token_options, &mut stop)?;
        out.into_iter()
            .map(|g| {
                let mut text = self.tokenizer.decode(&g.ids)?;
                if let Some(cut) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                    text.truncate(cut);
                }
                Ok(Generation {
                    text,
                    ids: g.ids,
                    finish: g.finish,
                })
            })
            .collect()
    }

    /// Log-likelihood of each `(context, continuation)` text pair. Like lm-evaluation-harness,
    /// the pair is encoded as one text and the continuation is what follows the context's
    /// tokens (trailing spaces of the context move to the continuation).
    pub fn loglik(
        &self,
        pairs: &[(String, String)],
        batch_size: usize,
    ) -> Result<Vec<ContinuationScore>, ModelError> {
        let requests = pairs
            .iter()
            .map(|(ctx, cont)| self.encode_pair(ctx, cont))
            .collect::<Result<Vec<_>, _>>()?;
        self.decoder.loglik(&requests, batch_size)
    }

    fn encode_pair(
        &self,
        context: &str,
        continuation: &str,
    ) -> Result<(Vec<u32>, Vec<u32>), ModelError> {
        let trimmed = context.trim_end_matches(' ');
        let whole = self
            .tokenizer
            .encode(&format!("{context}{continuation}"), true)?;
        let ctx = self.tokenizer.encode(trimmed, true)?;
        let split = common_prefix(&ctx, &whole).min(whole.len().saturating_sub(1));
        let (c, k) = whole.split_at(split);
        if c.is_empty() {
            return Err(ModelError::Input(format!(
                "context {context:?} encodes to no tokens and the tokenizer adds no BOS; give the item a non-empty context"
            )));
        }
        Ok((c.to_vec(), k.to_vec()))
    }

    /// Total log-likelihood and token count of each text, scored in windows of the context
    /// length (each window predicts its tokens from the tokens right before them; the first
    /// token is predicted from BOS when the model has one, else it is not scored).
    pub fn rolling_loglik(
        &self,
        texts: &[String],
        batch_size: usize,
    ) -> Result<Vec<(f64, usize)>, ModelError> {
        let max = self.decoder.context_length();
        let bos = self.decoder.config().bos_token_id;
        let mut requests = Vec::new();
        let mut owner = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let ids = self.tokenizer.encode(text, false)?;
            let mut full = Vec::with_capacity(ids.len() + 1);
            full.extend(bos);
            full.extend_from_slice(&ids);
            // Tokens full[1..] are predicted, in chunks of at most `max`.
            let mut a = 1;
            while a < full.len() {
                let e = (a + max).min(full.len());
                let s = (e - 1).saturating_sub(max);
                requests.push((full[s..a].to_vec(), full[a..e].to_vec()));
                owner.push(i);
                a = e;
            }
        }
        let scores = self.decoder.loglik(&requests, batch_size)?;
        let mut out = vec![(0.0, 0usize); texts.len()];
        for (sc, &i) in scores.iter().zip(&owner) {
            out[i].0 += sc.total();
            out[i].1 += sc.logprobs.len();
        }
        Ok(out)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
