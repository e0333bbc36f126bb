//! `evomerge inspect ...`: look inside a model with our forward pass, to compare it with any
//! other implementation (transformers, llama.cpp, vLLM). Path checkpoints (`evomerge export
//! --format path`, `input_layers` / `input_scales` in config.json) run their layer path.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use evomerge_genome::load_decoder;
use evomerge_kernels::Device;
use evomerge_kernels::DeviceChoice;
use evomerge_models::{Decoder, GenerateOptions, LanguageModel, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand)]
pub enum InspectCommand {
    /// Print the logits at every position as JSON: {"logits": [[...vocab...], ...]}.
    Logits(LogitsArgs),
    /// Print the greedy continuation of a prompt.
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct LogitsArgs {
    /// A Hugging Face model folder (config.json, safetensors).
    pub model_dir: PathBuf,
    /// Token ids, comma separated (e.g. 3,17,42).
    #[arg(long, value_delimiter = ',', conflicts_with = "text")]
    pub ids: Option<Vec<u32>>,
    /// Text to tokenize with the folder's tokenizer.json instead of --ids.
    #[arg(long)]
    pub text: Option<String>,
    /// cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A Hugging Face model folder (config.json, safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Recompute the whole sequence at each step instead of using the KV cache.
    #[arg(long)]
    pub no_cache: bool,
    /// cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

pub fn run(cmd: InspectCommand) -> Result<()> {
    match cmd {
        InspectCommand::Logits(a) => logits(a),
        InspectCommand::Generate(a) => generate(a),
    }
}

fn logits(args: LogitsArgs) -> Result<()> {
    let device = args.device.device().map_err(anyhow::Error::msg)?;
    let ids = match (&args.ids, &args.text) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => Tokenizer::from_dir(&args.model_dir)?.encode(text, true)?,
        (None, None) => bail!("give --ids 3,17,42 or --text \"...\""),
    };
    let logits = load(&args.model_dir, &device)?.logits(&ids)?;
    let out = serde_json::json!({ "logits": logits });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The decoder of a model folder: its layer path for a path checkpoint, else its layers in order.
fn load(dir: &Path, device: &Device) -> Result<Decoder> {
    load_decoder(dir, device).with_context(|| format!("loading {}", dir.display()))
}

fn generate(args: GenerateArgs) -> Result<()> {
    let device = args.device.device().map_err(anyhow::Error::msg)?;
    let tokenizer = Tokenizer::from_dir(&args.model_dir)?;
    let lm = LanguageModel::new(load(&args.model_dir, &device)?, Arc::new(tokenizer));
    let out = lm.generate(
        std::slice::from_ref(&args.prompt),
        &GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            stop: args.stop,
            batch_size: 1,
            use_cache: !args.no_cache,
        },
    )?;
    let g = &out[0];
    println!("{}", g.text);
    eprintln!("({} tokens, finish: {:?})", g.ids.len(), g.finish);
    Ok(())
}
