//! `evomerge merge CONFIG OUT_DIR`.

use anyhow::{Result, bail};
use clap::Args;
use evomerge_checkpoint::Dtype;
use evomerge_kernels::DeviceChoice;
use evomerge_merge::{
    MergeOptions, Plan, PlanOptions, Recipe, RecipeFormat, Sources, merge_to_disk, method,
};
use std::path::PathBuf;

/// Merge the checkpoints a recipe describes into OUT_DIR.
///
/// CONFIG is an evomerge TOML recipe (*.toml) or a mergekit YAML config (*.yml, *.yaml); both
/// use mergekit's keys (merge_method, base_model, models or slices, parameters, dtype,
/// out_dtype, tokenizer_source). Model paths are local folders in the Hugging Face layout,
/// relative to the working directory or to CONFIG's folder. OUT_DIR is written atomically: it
/// appears only when the merge is complete.
#[derive(Args)]
pub struct MergeArgs {
    /// Recipe file: *.toml (evomerge) or *.yml/*.yaml (mergekit).
    pub config: PathBuf,
    /// Output folder (must not exist unless --force).
    pub out_dir: PathBuf,
    /// Where the arithmetic runs: cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Seed of the random masks (DARE, DELLA); the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest output shard in bytes; accepts k/M/G (or mergekit's B for billion) suffixes.
    #[arg(long, default_value = "5G", value_parser = parse_size)]
    pub out_shard_size: u64,
    /// Output dtype (float32, float16, bfloat16); overrides the recipe's out_dtype/dtype.
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Print the plan (every output tensor, its inputs and parameters) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace OUT_DIR if it exists.
    #[arg(long)]
    pub force: bool,
    /// Tensors merged at once (more is faster and uses more memory).
    #[arg(long, short = 'j', default_value_t = default_jobs())]
    pub jobs: usize,
    /// No progress bar or summary line on stderr, only warnings and errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// Sizes like `5G`, `500M`, `1.5G`, `1000000`, and mergekit's `5B` (billion bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1e3,
                'm' => 1e6,
                'g' | 'b' => 1e9,
                't' => 1e12,
                _ => return Err(format!("unknown size suffix in '{s}' (use k, M, G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 5G, 500M, 1000000)"))?;
    if v <= 0.0 {
        return Err(format!("size '{s}' must be positive"));
    }
    Ok((v * mult) as u64)
}

pub fn run(args: MergeArgs) -> Result<()> {
    let format = RecipeFormat::of(&args.config)?;
    let recipe = Recipe::load(&args.config)?;
    let recipe_dir = args.config.parent().map(|p| p.to_path_buf());
    let sources = Sources::open(&recipe, recipe_dir.as_deref())?;
    let plan = Plan::build(
        &recipe,
        &sources,
        &PlanOptions {
            out_dtype: args.dtype,
        },
    )?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if args.dry_run {
        print!("{}", plan.describe(&sources));
        return Ok(());
    }
    if args.out_dir.exists() && !args.force {
        bail!(
            "output folder {} already exists; choose another path or pass --force to replace it",
            args.out_dir.display()
        );
    }
    let device = args.device.device().map_err(anyhow::Error::msg)?;
    let options = MergeOptions {
        device,
        seed: args.seed,
        max_shard_bytes: args.out_shard_size,
        force: args.force,
        jobs: args.jobs,
        progress: !args.quiet,
        // Ctrl-C / SIGTERM stop before the next tensor and remove the partial output
        stop: Some(evomerge_eval::interrupt::requested),
    };
    evomerge_runner::stop_on_signals();
    let card = model_card(&recipe, &args, plan.method.name);
    let mut extra: Vec<(&str, Vec<u8>)> = vec![("README.md", card.into_bytes())];
    // The recipe's copy with absolute model paths, so it merges again from the output folder.
    let portable = sources.absolute_recipe(&recipe);
    let note = format!(
        "# from {}, model paths made absolute\n",
        args.config.display()
    );
    match format {
        RecipeFormat::Yaml => extra.push((
            "mergekit_config.yml",
            (note + &portable.to_yaml()).into_bytes(),
        )),
        RecipeFormat::Toml => extra.push((
            "evomerge_recipe.toml",
            (note + &portable.to_toml()).into_bytes(),
        )),
    }
    let report = merge_to_disk(&plan, &sources, &args.out_dir, &options, &extra)?;
    if args.quiet {
        return Ok(());
    }
    eprintln!(
        "merged {} tensors ({} method) into {} ({} shard{}) in {:.2}s: read {:.1} MB, wrote {:.1} MB",
        report.tensors,
        plan.method.name,
        report.out_dir.display(),
        report.shards,
        if report.shards == 1 { "" } else { "s" },
        report.seconds,
        report.bytes_read as f64 / 1e6,
        report.bytes_written as f64 / 1e6,
    );
    Ok(())
}

fn model_card(recipe: &Recipe, args: &MergeArgs, method: &str) -> String {
    format!(
        "---\ntags:\n- merge\n- evomerge\n---\n# Merged model\n\nMerged with [evomerge](https://github.com/) {} using the `{method}` method (seed {}).\n\n## Recipe\n\n```yaml\n{}```\n\nReproduce with `evomerge merge RECIPE OUT_DIR --seed {}`.\n",
        env!("CARGO_PKG_VERSION"),
        args.seed,
        recipe.to_yaml(),
        args.seed
    )
}

/// `evomerge methods`.
pub fn print_methods() {
    for m in method::registry() {
        println!("{:<18} {}", m.name, m.summary);
        let base = match m.base {
            method::BaseUse::Required => "required",
            method::BaseUse::Optional => "optional",
            method::BaseUse::Ignored => "not used (a listed base is an ordinary input)",
        };
        println!("{:<18}   base_model: {base}", "");
        let show = |p: &method::ParamSpec| match &p.default {
            None => format!("{} (required)", p.name),
            Some(evomerge_merge::ParamValue::Text(s)) if s.is_empty() => {
                format!("{} (optional)", p.name)
            }
            Some(v) => format!("{}={v}", p.name),
        };
        if !m.tensor_params.is_empty() {
            println!(
                "{:<18}   per model: {}",
                "",
                m.tensor_params
                    .iter()
                    .map(show)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let evolvable: Vec<&str> = m.evolvable().map(|p| p.name).collect();
        if !evolvable.is_empty() {
            println!("{:<18}   searched:  {}", "", evolvable.join(", "));
        }
        if !m.global_params.is_empty() {
            println!(
                "{:<18}   global:    {}",
                "",
                m.global_params
                    .iter()
                    .map(show)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    println!(
        "\nrescale also accepts l1 (mergekit's L1 norm matching, = true) or inverse_density (the DARE paper's 1/p)."
    );
    println!("consensus (ties-style methods) accepts sum (mergekit) or count.");
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5B"), Ok(5_000_000_000));
        assert_eq!(parse_size("500M"), Ok(500_000_000));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
    }
}
