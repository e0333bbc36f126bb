//! `evomerge mini-world ...`: flags only; the work is `evomerge_studies::mini_world`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use evomerge_eval::Split;
use evomerge_studies::mini_world::{
    self, BuildOptions, CorpusOptions, DemoOptions, world::DEFAULT_BASE_LR, world::DEFAULT_FT_LR,
    world::DEFAULT_SHARDS,
};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum MiniWorldCommand {
    /// Write the task (JA math splits, task TOML, JA vocabulary) and train the base and the
    /// three experts into DIR (models already trained with the same settings are reused),
    /// then score every model on the test split.
    Build(BuildArgs),
    /// Score the models of a built world on the JA-math and EN-math test splits.
    Eval(EvalArgs),
    /// The mini reproduction in one command: build the world into DIR if it is not there (about
    /// 10 minutes on 2 cores; cached afterwards), run the layer-wise PS search on it (CMA-ES over
    /// DARE-TIES weights and densities per layer and model), and print the test table: the
    /// sources, the untuned baselines and the evolved merge on JA math.
    Demo(DemoArgs),
    /// Write examples of one training corpus as text (one per line): the data-using merges'
    /// `data` for a model (e.g. `ja` for the JA expert, `math2` for the second math expert).
    Corpus(CorpusArgs),
}

#[derive(Args)]
pub struct DemoArgs {
    /// Folder of the world (built when missing).
    #[arg(long, default_value = "results/mini-world")]
    pub world: PathBuf,
    /// Where the search's run folder goes (OUT/mini-demo/seed{SEED}).
    #[arg(long, default_value = "results/mini-demo")]
    pub out: PathBuf,
    /// Seed of the search.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Candidates to evaluate (default: the experiment file's 300; RESULTS.md shows 1000 do
    /// not score better on test).
    #[arg(long)]
    pub evaluations: Option<usize>,
    /// Use (or build) the very small smoke-test world of `build --quick` instead.
    #[arg(long)]
    pub quick: bool,
    /// Train the world from scratch (about 10 minutes on 2 cores) instead of installing the
    /// committed one (experiments/mini-evollm-jp/world) when the world folder has no models.
    #[arg(long)]
    pub rebuild: bool,
}

#[derive(Args)]
pub struct CorpusArgs {
    /// base, math, math2, ja (a model's training corpus) or ja-math (the target task's text).
    pub corpus: String,
    /// The *.txt file to write.
    pub out: PathBuf,
    /// Number of examples.
    #[arg(long, default_value_t = 256)]
    pub samples: usize,
    /// Seed of the draw (the models were trained on seeds from 1; use another to hold out).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Folder of the world (task/ and models/ inside).
    pub dir: PathBuf,
    /// A very small world (tiny model, few steps, small splits) for smoke tests.
    #[arg(long)]
    pub quick: bool,
    /// Seed of the model initialisation and the training batches.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Base pretraining steps (default 1500; quick: 40).
    #[arg(long)]
    pub base_steps: Option<usize>,
    /// Steps of each fine-tune (default 600; quick: 10; the second math expert gets 1.5x).
    #[arg(long)]
    pub ft_steps: Option<usize>,
    /// Peak learning rate of the base's pretraining.
    #[arg(long, default_value_t = DEFAULT_BASE_LR)]
    pub base_lr: f64,
    /// Learning rate of the fine-tunes.
    #[arg(long, default_value_t = DEFAULT_FT_LR)]
    pub ft_lr: f64,
    /// Model width (d_model; default 128, quick: 32); the MLP is twice as wide.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Decoder layers (default 4, quick: 2).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Percent of the base's pretraining documents that are code-switched: sentences and
    /// arithmetic stories whose every word is EN or JA by a coin flip (0: none, the committed
    /// world's recipe).
    #[arg(long, default_value_t = 0)]
    pub code_switch: u32,
    /// Which reading questions the base learns: both (asked and answered in EN and in JA, the
    /// committed world's recipe), en (only EN: only the JA expert learns to answer in JA) or
    /// none.
    #[arg(long, default_value = "both")]
    pub base_questions: String,
    /// Percent of the math experts' questions code-switched word by word (template included;
    /// the answers stay EN): experts that read some JA but answer in EN (0: the recipe before
    /// 2026-12-07).
    #[arg(long, default_value_t = mini_world::world::DEFAULT_MATH_SWITCH)]
    pub math_switch: u32,
    /// With --math-switch: code-switch those questions' answers too (math experts with no
    /// preferred answer language).
    #[arg(long)]
    pub math_switch_answers: bool,
    /// How aligned the base's two languages start, 0 to 1: every JA word's embedding and
    /// output-head row is drawn as this share of its EN word's row (plus the rest of its own
    /// draw). 0: independent draws, the committed world's recipe.
    #[arg(long, default_value_t = 0.0)]
    pub aligned_init: f64,
    /// What the math experts' fine-tunes train: all (the committed recipe), or a comma list of
    /// embed, head (final norm and output head) and decoder layers N or A-B; the rest keep the
    /// base's values.
    #[arg(long, default_value = "all")]
    pub math_train: String,
    /// The same for the JA expert's fine-tune.
    #[arg(long, default_value = "all")]
    pub ja_train: String,
    /// Percent of the JA expert's examples that are JA math word problems answered in the
    /// worked JA form with a wrong result (a JA expert that writes JA reasoning text but
    /// cannot compute); 0: reading questions only, the recipe before 2026-12-07.
    #[arg(long, default_value_t = mini_world::world::DEFAULT_JA_REASONING)]
    pub ja_reasoning: u32,
    /// Data-parallel shards per training step (threads; default 2). The models depend on this
    /// number (float summation order), not on the machine; the cache keeps them apart.
    #[arg(long, default_value_t = DEFAULT_SHARDS)]
    pub shards: usize,
    /// Skip scoring the models at the end.
    #[arg(long)]
    pub no_eval: bool,
    /// Train every model from scratch even where the committed world
    /// (experiments/mini-evollm-jp/world) has one trained with the same settings.
    #[arg(long)]
    pub rebuild: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Folder of the world.
    pub dir: PathBuf,
    /// Split of the JA task to score (search, validation, test).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// More model folders to score beside the world's own (e.g. merges); named by folder.
    #[arg(long, num_args = 1..)]
    pub extra: Vec<PathBuf>,
    /// Write the rows as JSON here (default: DIR/sources_SPLIT.json, only without --extra).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(cmd: MiniWorldCommand) -> Result<()> {
    match cmd {
        MiniWorldCommand::Build(a) => mini_world::build(&BuildOptions {
            dir: a.dir,
            quick: a.quick,
            seed: a.seed,
            base_steps: a.base_steps,
            ft_steps: a.ft_steps,
            base_lr: a.base_lr,
            ft_lr: a.ft_lr,
            hidden: a.hidden,
            layers: a.layers,
            code_switch: a.code_switch,
            base_questions: mini_world::BaseQuestions::parse(&a.base_questions).with_context(
                || {
                    format!(
                        "--base-questions {:?}: use both, en or none",
                        a.base_questions
                    )
                },
            )?,
            math_switch: a.math_switch,
            math_switch_answers: a.math_switch_answers,
            aligned_init: a.aligned_init,
            math_train: a.math_train,
            ja_train: a.ja_train,
            ja_reasoning: a.ja_reasoning,
            shards: a.shards,
            no_eval: a.no_eval,
            rebuild: a.rebuild,
        }),
        MiniWorldCommand::Eval(a) => {
            let split = match a.split.as_str() {
                "search" => Split::Search,
                "validation" => Split::Validation,
                "test" => Split::Test,
                other => bail!("unknown split {other:?}; use search, validation or test"),
            };
            mini_world::evaluate(&a.dir, split, &a.extra, a.json.as_deref())
        }
        MiniWorldCommand::Corpus(a) => mini_world::write_corpus(&CorpusOptions {
            corpus: a.corpus,
            out: a.out,
            samples: a.samples,
            seed: a.seed,
        }),
        MiniWorldCommand::Demo(a) => mini_world::demo(&DemoOptions {
            world: a.world,
            out: a.out,
            seed: a.seed,
            evaluations: a.evaluations,
            quick: a.quick,
            rebuild: a.rebuild,
        }),
    }
}
