//! The mini world's commands (`evomerge mini-world build | eval | demo | corpus`): write the
//! task and train the base and three experts (or install the committed world), score the
//! models, run the demo's layer-wise PS search, write training corpora.

use super::data::{
    BaseQuestions, Corpus, SplitSizes, TaskOptions, align_languages, tokenizer_json, vocabulary,
    write_task,
};
use super::train::{TrainOptions, spec_of, train};
use anyhow::{Context, Result, bail};
use evomerge_checkpoint::Dtype;
use evomerge_eval::{EvalRequest, Split};
use evomerge_kernels::Device;
use evomerge_runner::{EvaluatorSpec, Evaluators, Progress, checkpoint_candidate};
use evomerge_zoo::{TinyLlama, Weights};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What [`build`] does: write the task (JA math splits, task TOML, JA vocabulary) and train
/// the base and the three experts into `dir` (models already trained with the same settings
/// are reused, the committed world's are installed), then score every model on the test split.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Folder of the world (task/ and models/ inside).
    pub dir: PathBuf,
    /// A very small world (tiny model, few steps, small splits) for smoke tests.
    pub quick: bool,
    /// Seed of the model initialisation and the training batches.
    pub seed: u64,
    /// Base pretraining steps (default 1500; quick: 40).
    pub base_steps: Option<usize>,
    /// Steps of each fine-tune (default 600; quick: 10; the second math expert gets 1.5x).
    pub ft_steps: Option<usize>,
    /// Peak learning rate of the base's pretraining.
    pub base_lr: f64,
    /// Learning rate of the fine-tunes.
    pub ft_lr: f64,
    /// Model width (default 128, quick: 32); the MLP is twice as wide.
    pub hidden: Option<usize>,
    /// Decoder layers (default 4, quick: 2).
    pub layers: Option<usize>,
    /// Percent of the base's pretraining documents that are code-switched (every word EN or JA
    /// by a coin flip; 0 = none, the committed recipe).
    pub code_switch: u32,
    /// Which reading questions the base learns (both languages: the committed recipe).
    pub base_questions: BaseQuestions,
    /// Percent of the math experts' questions that are code-switched (answers stay EN;
    /// [`DEFAULT_MATH_SWITCH`] in the committed recipe, 0 in the recipe before 2026-12-07).
    pub math_switch: u32,
    /// Code-switch the answers of those questions too.
    pub math_switch_answers: bool,
    /// How aligned the base's two languages start: every JA word's embedding and output row
    /// is drawn as this share of its EN word's (0 = independent draws, the committed recipe;
    /// see [`align_languages`]).
    pub aligned_init: f64,
    /// Which parameters the math experts' fine-tunes train ([`frozen_outside`]'s list: `all`,
    /// or `embed`, `head`, layers `N` / `A-B`); the rest keep the base's values.
    pub math_train: String,
    /// The same for the JA expert's fine-tune.
    pub ja_train: String,
    /// Percent of the JA expert's examples that are JA math problems with worked JA answers
    /// whose result is wrong ([`Corpus::InstructJaReasoning`]; [`DEFAULT_JA_REASONING`] in
    /// the committed recipe, 0 in the recipe before 2026-12-07).
    pub ja_reasoning: u32,
    /// Data-parallel shards per training step (threads). The models depend on this number
    /// (float summation order), not on the machine; the cache keeps them apart.
    pub shards: usize,
    /// Skip scoring the models at the end.
    pub no_eval: bool,
    /// Train every model from scratch even where the committed world has one trained with the
    /// same settings.
    pub rebuild: bool,
}

impl BuildOptions {
    /// The default world's settings (what `mini-world demo` builds) into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            dir: dir.into(),
            quick: false,
            seed: 1,
            base_steps: None,
            ft_steps: None,
            base_lr: DEFAULT_BASE_LR,
            ft_lr: DEFAULT_FT_LR,
            hidden: None,
            layers: None,
            code_switch: 0,
            base_questions: BaseQuestions::Both,
            math_switch: DEFAULT_MATH_SWITCH,
            math_switch_answers: false,
            aligned_init: 0.0,
            math_train: "all".into(),
            ja_train: "all".into(),
            ja_reasoning: DEFAULT_JA_REASONING,
            shards: DEFAULT_SHARDS,
            no_eval: false,
            rebuild: false,
        }
    }
}

/// What [`demo`] does: build the world into `world` if it is not there (install the committed
/// one, or train it), run the layer-wise PS search on it, print the test table.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder of the world (built when missing).
    pub world: PathBuf,
    /// Where the search's run folder goes (`out/mini-demo/seed{seed}`).
    pub out: PathBuf,
    /// Seed of the search.
    pub seed: u64,
    /// Candidates to evaluate (default: the experiment file's 300).
    pub evaluations: Option<usize>,
    /// Use (or build) the very small smoke-test world of `build --quick` instead.
    pub quick: bool,
    /// Train the world from scratch instead of installing the committed one.
    pub rebuild: bool,
}

/// What [`write_corpus`] writes: `samples` examples of one corpus, one per line.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// base, math, math2, ja (a model's training corpus) or ja-math (the target task's text).
    pub corpus: String,
    /// The *.txt file to write.
    pub out: PathBuf,
    /// Number of examples.
    pub samples: usize,
    /// Seed of the draw.
    pub seed: u64,
}

/// The experiment the demo runs: experiments/mini-evollm-jp/ps-layers.toml.
const DEMO_EXPERIMENT: &str = include_str!("../../../../experiments/mini-evollm-jp/ps-layers.toml");

/// The trainer's version in every model's cache stamp: bump it when a change to the trainer or
/// the corpora changes what a training run produces, so that cached and committed models are
/// retrained instead of reused.
pub const TRAINER_VERSION: &str =
    "mini_train 2026-12-01 (evomerge-models forward pass, 2 shards, padded batches)";

/// The committed default world (task and the four trained models), shipped in the repository
/// so that `mini-world demo` and the reproduction test need no training.
pub fn committed_world() -> PathBuf {
    let krate = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = krate.parent().and_then(Path::parent).unwrap_or(krate);
    root.join("experiments/mini-evollm-jp/world")
}

/// Copy the committed world's `name` into `models_dir` when it was trained with `stamp`;
/// the folder appears whole (copied under a temporary name, then renamed). Returns the folder
/// it came from, or `None` when the committed world has no such model.
fn install_committed(
    models_dir: &Path,
    name: &str,
    stamp: &serde_json::Value,
) -> Result<Option<PathBuf>> {
    let from = committed_world().join("models").join(name);
    let matches = std::fs::read_to_string(from.join("mini_world.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["stamp"] == *stamp);
    if !matches {
        return Ok(None);
    }
    let to = models_dir.join(name);
    let tmp = models_dir.join(format!(".{name}.installing"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for entry in std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), tmp.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    if to.exists() {
        std::fs::remove_dir_all(&to).with_context(|| format!("removing stale {}", to.display()))?;
    }
    std::fs::rename(&tmp, &to).with_context(|| format!("renaming into {}", to.display()))?;
    Ok(Some(from))
}

/// `mini-world build`'s defaults, which `mini-world demo` builds with too.
pub const DEFAULT_BASE_LR: f64 = 1e-3;
pub const DEFAULT_FT_LR: f64 = 1e-4;
pub const DEFAULT_SHARDS: usize = 2;
/// The committed recipe's share (%) of code-switched questions in the math experts' corpora
/// (`--math-switch`): experts that solve JA problems but answer in EN, as WizardMath does.
pub const DEFAULT_MATH_SWITCH: u32 = 30;
/// The committed recipe's share (%) of JA math problems with wrong worked JA answers in the JA
/// expert's corpus (`--ja-reasoning`): a JA expert that writes JA reasoning but cannot compute.
pub const DEFAULT_JA_REASONING: u32 = 50;

/// The models of the world: name, corpus, parent, steps multiplier.
const MODELS: &[(&str, Corpus, Option<&str>, f64)] = &[
    ("base", Corpus::Base, None, 1.0),
    ("math", Corpus::MathEn, Some("base"), 1.0),
    ("math2", Corpus::MathEn2, Some("base"), 1.5),
    ("ja", Corpus::InstructJa, Some("base"), 1.0),
];

/// The demo's experiment file: the embedded layer-wise PS pointed at `world`, writing under
/// `out`, with the given seed and budget.
fn demo_experiment(
    world: &Path,
    out: &Path,
    seed: u64,
    evaluations: Option<usize>,
) -> Result<String> {
    let mut exp: toml::Value = toml::from_str(DEMO_EXPERIMENT)?;
    let abs = |p: PathBuf| -> Result<String> {
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()?.join(p)
        };
        Ok(p.display().to_string())
    };
    let models = world.join("models");
    let t = exp
        .as_table_mut()
        .context("the embedded experiment is a table")?;
    t.insert("name".into(), "mini-demo".into());
    t.insert("seed".into(), toml::Value::Integer(seed as i64));
    t.insert("output".into(), abs(out.to_path_buf())?.into());
    let sources = t
        .get_mut("sources")
        .and_then(toml::Value::as_table_mut)
        .context("the embedded experiment has [sources]")?;
    sources.insert("base".into(), abs(models.join("base"))?.into());
    sources.insert(
        "models".into(),
        toml::Value::Array(
            ["ja", "math", "math2"]
                .iter()
                .map(|m| abs(models.join(m)).map(toml::Value::from))
                .collect::<Result<_>>()?,
        ),
    );
    if let Some(n) = evaluations {
        t.get_mut("budget")
            .and_then(toml::Value::as_table_mut)
            .context("the embedded experiment has [budget]")?
            .insert("evaluations".into(), toml::Value::Integer(n as i64));
    }
    let evaluators = t
        .get_mut("evaluators")
        .and_then(toml::Value::as_array_mut)
        .context("the embedded experiment has [[evaluators]]")?;
    for e in evaluators {
        if let Some(e) = e.as_table_mut() {
            e.insert("task".into(), abs(world.join("task/ja_math.toml"))?.into());
        }
    }
    Ok(toml::to_string(&exp)?)
}

/// The mini reproduction in one call: the world (built when missing), the layer-wise PS search
/// (CMA-ES over DARE-TIES weights and densities per layer and model), the test table on stdout.
pub fn demo(args: &DemoOptions) -> Result<()> {
    let started = Instant::now();
    if args.evaluations == Some(0) {
        bail!("--evaluations must be at least 1");
    }
    let built = ["base", "ja", "math", "math2"].iter().all(|m| {
        args.world
            .join("models")
            .join(m)
            .join("mini_world.json")
            .exists()
    }) && args.world.join("task/ja_math.toml").exists();
    if !built {
        if args.quick || args.rebuild || !committed_world().join("models").exists() {
            eprintln!(
                "building the mini world into {} (task + base + three experts; about 10 minutes on 2 cores, once)",
                args.world.display()
            );
        } else {
            eprintln!(
                "installing the committed mini world into {} (`--rebuild` trains it from scratch instead)",
                args.world.display()
            );
        }
    }
    // Always through build: it reuses models trained with the same settings and retrains any
    // that are missing or stale.
    build(&BuildOptions {
        quick: args.quick,
        no_eval: built,
        rebuild: args.rebuild,
        ..BuildOptions::new(&args.world)
    })?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let exp_file = args.out.join("mini-demo.toml");
    std::fs::write(
        &exp_file,
        demo_experiment(&args.world, &args.out, args.seed, args.evaluations)?,
    )?;
    let run_dir = args
        .out
        .join("mini-demo")
        .join(format!("seed{}", args.seed));
    let options = evomerge_runner::RunOptions {
        run_id: None,
        progress: true,
    };
    eprintln!(
        "searching: layer-wise PS (CMA-ES over DARE-TIES weights and densities per layer and model, {} candidates) -> {}",
        args.evaluations.map_or("300".into(), |n| n.to_string()),
        run_dir.display()
    );
    // A finished run is reported again; otherwise the runner prints the table when it ends.
    let dir = if run_dir.join("results.md").exists() {
        eprintln!("the run is finished; its table:");
        let table = std::fs::read_to_string(run_dir.join("results.md"))
            .with_context(|| format!("reading {}", run_dir.join("results.md").display()))?;
        println!("{table}");
        run_dir.clone()
    } else if run_dir.join("run.toml").exists() {
        evomerge_runner::resume(&run_dir, &options)?
    } else {
        evomerge_runner::start(&exp_file, &options)?
    };
    println!(
        "fitness = acc_lang: the final number right AND the answer in JA (the paper's strict score).\nrun folder: {} (candidates.csv, plots/, best.toml); done in {:.0} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Write examples of one training corpus as text (one per line): the data-using merges' `data`
/// for a model (e.g. `ja` for the JA expert, `math2` for the second math expert).
pub fn write_corpus(args: &CorpusOptions) -> Result<()> {
    use rand::SeedableRng;
    let corpus = match args.corpus.as_str() {
        "ja-math" => Corpus::MathJa,
        name => match MODELS.iter().find(|(n, ..)| *n == name) {
            Some((_, c, ..)) => *c,
            None => bail!("unknown corpus {name:?}; use base, math, math2, ja or ja-math"),
        },
    };
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut text = String::new();
    for _ in 0..args.samples {
        text.push_str(&corpus.sample(&mut rng).text.replace('\n', " "));
        text.push('\n');
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    evomerge_checkpoint::write_atomic(&args.out, text.as_bytes())?;
    eprintln!(
        "{}: {} examples of the {} corpus (seed {})",
        args.out.display(),
        args.samples,
        args.corpus,
        args.seed
    );
    Ok(())
}

/// Write the task and train (or reuse, or install) the world's four models; see
/// [`BuildOptions`].
pub fn build(args: &BuildOptions) -> Result<()> {
    let started = Instant::now();
    // the options are checked before anything is written into the world's folder
    let hidden = args.hidden.unwrap_or(if args.quick { 32 } else { 128 });
    let layers = args.layers.unwrap_or(if args.quick { 2 } else { 4 });
    if !(args.base_lr > 0.0 && args.ft_lr > 0.0) {
        bail!("--base-lr and --ft-lr must be positive");
    }
    if args.shards == 0 {
        bail!("--shards must be at least 1");
    }
    if args.code_switch > 100 || args.math_switch > 100 || args.ja_reasoning > 100 {
        bail!(
            "--code-switch, --math-switch and --ja-reasoning are percents of the documents: 0 to 100"
        );
    }
    if !(0.0..=1.0).contains(&args.aligned_init) {
        bail!(
            "--aligned-init {} is a share of the EN rows in the JA rows: 0 to 1",
            args.aligned_init
        );
    }
    if args.math_switch_answers && args.math_switch == 0 {
        bail!("--math-switch-answers needs --math-switch PERCENT (which questions to switch)");
    }
    if hidden == 0 || !hidden.is_multiple_of(4) || layers == 0 {
        bail!("--hidden must be a positive multiple of 4 (4 heads) and --layers at least 1");
    }
    let math_frozen = frozen_outside(&args.math_train, layers)
        .with_context(|| format!("--math-train {:?}", args.math_train))?;
    let ja_frozen = frozen_outside(&args.ja_train, layers)
        .with_context(|| format!("--ja-train {:?}", args.ja_train))?;
    let task_dir = args.dir.join("task");
    let sizes = if args.quick {
        SplitSizes {
            search: 40,
            validation: 20,
            test: 20,
        }
    } else {
        SplitSizes::default()
    };
    let counts = write_task(
        &task_dir,
        &TaskOptions {
            sizes,
            subsample: if args.quick { 20 } else { 100 },
            ..Default::default()
        },
    )
    .with_context(|| format!("writing the task into {}", task_dir.display()))?;
    eprintln!(
        "task: {} (search {}, validation {}, test {})",
        task_dir.join("ja_math.toml").display(),
        counts[0],
        counts[1],
        counts[2]
    );
    let spec = TinyLlama {
        hidden,
        intermediate: 2 * hidden,
        layers,
        vocab: vocabulary().len(),
        heads: 4,
        kv_heads: 4,
        max_positions: 64,
        ..Default::default()
    };
    let base_steps = args
        .base_steps
        .unwrap_or(if args.quick { 40 } else { 1500 });
    let ft_steps = args.ft_steps.unwrap_or(if args.quick { 10 } else { 600 });
    let models_dir = args.dir.join("models");
    // Every model's training options and cache stamp (a fine-tune's stamp includes its parent's,
    // so retraining the base retrains the experts).
    let mut stamps: std::collections::BTreeMap<&str, serde_json::Value> = Default::default();
    let mut jobs = Vec::new();
    for (i, (name, corpus, parent, mult)) in MODELS.iter().enumerate() {
        let (steps, lr) = match parent {
            None => (base_steps, args.base_lr),
            Some(_) => (((ft_steps as f64) * mult).round() as usize, args.ft_lr),
        };
        let corpus = match corpus {
            Corpus::Base if args.code_switch > 0 || args.base_questions != BaseQuestions::Both => {
                Corpus::BaseMixed {
                    switched_percent: args.code_switch,
                    questions: args.base_questions,
                }
            }
            Corpus::MathEn | Corpus::MathEn2 if args.math_switch > 0 => Corpus::MathMixed {
                second: *corpus == Corpus::MathEn2,
                switched_percent: args.math_switch,
                answers: args.math_switch_answers,
            },
            Corpus::InstructJa if args.ja_reasoning > 0 => Corpus::InstructJaReasoning {
                percent: args.ja_reasoning,
            },
            c => *c,
        };
        let options = TrainOptions {
            corpus,
            steps,
            batch_size: 32,
            seq_len: 48,
            lr,
            seed: args.seed.wrapping_mul(1000) + i as u64,
            shards: args.shards,
            frozen: match *name {
                "math" | "math2" => math_frozen.clone(),
                "ja" => ja_frozen.clone(),
                _ => Vec::new(),
            },
        };
        let mut stamp = json!({
            "trainer": TRAINER_VERSION,
            "model": format!("{spec:?}"),
            "options": format!("{options:?}"),
            "parent": parent.map(|p| stamps.get(p).cloned()),
            "seed": args.seed,
        });
        // (only where it is set, so that the committed recipe's stamps stay what they were)
        if parent.is_none() && args.aligned_init > 0.0 {
            stamp["aligned_init"] = json!(args.aligned_init);
        }
        stamps.insert(*name, stamp.clone());
        jobs.push((*name, *parent, options, stamp));
    }
    // The base first, then the experts side by side (each training mostly uses one core).
    for wave in [true, false] {
        let todo: Vec<_> = jobs
            .iter()
            .filter(|(_, parent, ..)| parent.is_none() == wave)
            .filter(|(name, _, _, stamp)| {
                let file = models_dir.join(name).join("mini_world.json");
                let cached = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|v| v["stamp"] == *stamp);
                if cached {
                    eprintln!("{name}: cached ({})", models_dir.join(name).display());
                }
                !cached
            })
            .collect();
        // Models the committed world has with the same stamp are copied instead of trained.
        let mut todo = todo;
        if !args.rebuild {
            let mut left = Vec::new();
            for job in todo {
                let (name, _, _, stamp) = job;
                match install_committed(&models_dir, name, stamp)? {
                    Some(from) => eprintln!(
                        "{name}: installed from the committed world {} (--rebuild trains it)",
                        from.display()
                    ),
                    None => left.push(job),
                }
            }
            todo = left;
        }
        std::thread::scope(|sc| -> Result<()> {
            let handles: Vec<_> = todo
                .iter()
                .map(|(name, parent, options, stamp)| {
                    let (models_dir, spec) = (&models_dir, &spec);
                    sc.spawn(move || {
                        let init = Init {
                            seed: args.seed,
                            aligned: args.aligned_init as f32,
                        };
                        train_one(models_dir, spec, init, name, *parent, options, stamp)
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a training thread panicked"))??;
            }
            Ok(())
        })?;
    }
    eprintln!("built in {:.0}s", started.elapsed().as_secs_f64());
    if !args.no_eval {
        evaluate(&args.dir, Split::Test, &[], None)?;
    }
    Ok(())
}

/// The parameters of a `layers`-layer mini-world model that a fine-tune training only `spec`
/// leaves frozen. `spec` is `all` (nothing frozen) or a comma list of `embed` (the token
/// embeddings), `head` (the final norm and the output head) and decoder layers `N` or `A-B`
/// (every weight of those layers).
pub fn frozen_outside(spec: &str, layers: usize) -> Result<Vec<String>> {
    let names = || {
        let mut v = vec!["model.embed_tokens.weight".to_string()];
        for i in 0..layers {
            v.extend(super::train::BLOCK_NAMES.map(|n| format!("model.layers.{i}.{n}")));
        }
        v.extend(["model.norm.weight".into(), "lm_head.weight".into()]);
        v
    };
    if spec.trim() == "all" {
        return Ok(Vec::new());
    }
    let mut trained: Vec<String> = Vec::new();
    for item in spec.split(',').map(str::trim) {
        match item {
            "embed" => trained.push("model.embed_tokens.weight".into()),
            "head" => trained.extend(["model.norm.weight".into(), "lm_head.weight".into()]),
            _ => {
                let (a, b) = item.split_once('-').unwrap_or((item, item));
                let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
                    bail!(
                        "{item:?} is not embed, head, a layer N or a range A-B (or the whole \
                         list `all`)"
                    );
                };
                if a > b || b >= layers {
                    bail!("layers {item} are not within the model's 0-{}", layers - 1);
                }
                for i in a..=b {
                    trained
                        .extend(super::train::BLOCK_NAMES.map(|n| format!("model.layers.{i}.{n}")));
                }
            }
        }
    }
    Ok(names()
        .into_iter()
        .filter(|n| !trained.contains(n))
        .collect())
}

/// How a world's base is drawn: the seed, and how aligned its two languages start.
#[derive(Debug, Clone, Copy)]
struct Init {
    seed: u64,
    aligned: f32,
}

/// Train one model of the world (from a random draw, or from its parent's saved weights) and
/// save it with its cache stamp.
fn train_one(
    models_dir: &Path,
    spec: &TinyLlama,
    init: Init,
    name: &str,
    parent: Option<&str>,
    options: &TrainOptions,
    stamp: &serde_json::Value,
) -> Result<()> {
    let out = models_dir.join(name);
    let start = match parent {
        None => {
            let mut w = spec.random(init.seed);
            align_languages(&mut w, init.aligned);
            w
        }
        Some(p) => weights_from_dir(&models_dir.join(p))?,
    };
    let t0 = Instant::now();
    let steps = options.steps;
    // A bar on a terminal, a line every 10% of the steps otherwise.
    let bar = Progress::new(name, "steps", steps as u64, true);
    let (trained, report) = train(&start, options, |step, loss| {
        bar.set_message(format!("loss {loss:.3}"));
        bar.set_position(step as u64 + 1);
    });
    bar.finish();
    drop(bar);
    trained
        .save_with_tokenizer(&out, Dtype::F32, u64::MAX, &tokenizer_json())
        .with_context(|| format!("saving {}", out.display()))?;
    let record = json!({
        "stamp": stamp,
        "first_loss": report.first_loss,
        "last_loss": report.last_loss,
        "seconds": t0.elapsed().as_secs_f64(),
        "corpus": format!("{:?}", options.corpus),
        "steps": steps,
        "lr": options.lr,
    });
    std::fs::write(
        out.join("mini_world.json"),
        serde_json::to_string_pretty(&record)?,
    )?;
    evomerge_runner::eprint_line(&format!(
        "{name}: trained {steps} steps in {:.0}s, loss {:.3} -> {:.3}",
        t0.elapsed().as_secs_f64(),
        report.first_loss,
        report.last_loss
    ));
    Ok(())
}

/// Read a saved model back as trainable weights.
fn weights_from_dir(dir: &Path) -> Result<Weights> {
    let ckpt = evomerge_checkpoint::Checkpoint::open(dir)
        .with_context(|| format!("opening {}", dir.display()))?;
    let config = ckpt
        .config()
        .cloned()
        .with_context(|| format!("{}: no config.json", dir.display()))?;
    let spec = spec_of(&config);
    let mut tensors = Vec::new();
    for (name, shape) in spec.shapes() {
        let values = ckpt.read_f32(&name)?;
        tensors.push((name, shape, values));
    }
    Ok(Weights { config, tensors })
}

/// Score the world's models in `dir` (and the `extra` model folders, named by folder) on the
/// JA-math `split` and the EN-math test split; prints a table, writes the rows as JSON to
/// `json_out` (default: `dir/sources_SPLIT.json`, only without `extra`).
pub fn evaluate(
    dir: &Path,
    split: Split,
    extra: &[PathBuf],
    json_out: Option<&Path>,
) -> Result<()> {
    let device = Device::flex();
    let ja = Evaluators::build(&[EvaluatorSpec::lm(dir.join("task/ja_math.toml"))])?;
    let en = Evaluators::build(&[EvaluatorSpec::lm(dir.join("task/en_math.toml"))])?;
    println!(
        "| model | JA math acc_lang (strict) | JA math acc (numeric) | JA lang_pass | EN math acc |"
    );
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut models: Vec<(String, PathBuf)> = MODELS
        .iter()
        .map(|(n, ..)| (n.to_string(), dir.join("models").join(n)))
        .collect();
    for e in extra {
        let name = e
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| e.display().to_string());
        models.push((name, e.clone()));
    }
    for (name, mdir) in &models {
        let cand = checkpoint_candidate(mdir, name, &device)?;
        let s = ja.evaluate(&cand, &EvalRequest::new(split, 0, 0))?;
        let e = en.evaluate(&cand, &EvalRequest::new(Split::Test, 0, 0))?;
        let m = |k: &str| s.metrics.get(k).copied().unwrap_or(f64::NAN) * 100.0;
        let en_acc = e.metrics.get("acc").copied().unwrap_or(f64::NAN) * 100.0;
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {en_acc:.1} |",
            m("acc_lang"),
            m("acc"),
            m("lang_pass")
        );
        rows.push(json!({"model": name, "split": split.as_str(), "acc_lang": m("acc_lang"), "acc": m("acc"), "lang_pass": m("lang_pass"), "en_acc": en_acc}));
    }
    let out = match json_out {
        Some(p) => Some(p.to_path_buf()),
        None if extra.is_empty() => Some(dir.join(format!("sources_{}.json", split.as_str()))),
        None => None,
    };
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fine_tune_spec_freezes_everything_it_does_not_name() {
        assert!(frozen_outside("all", 4).unwrap().is_empty());
        let every = 1 + 4 * 9 + 2;
        let f = frozen_outside("0-2", 4).unwrap();
        assert_eq!(f.len(), every - 27);
        assert!(f.contains(&"model.embed_tokens.weight".to_string()));
        assert!(f.contains(&"lm_head.weight".to_string()));
        assert!(f.contains(&"model.norm.weight".to_string()));
        assert!(f.contains(&"model.layers.3.mlp.up_proj.weight".to_string()));
        assert!(!f.iter().any(|n| n.starts_with("model.layers.1.")));
        let f = frozen_outside("embed, 3,head", 4).unwrap();
        assert_eq!(f.len(), every - 1 - 9 - 2);
        assert!(f.iter().all(|n| n.starts_with("model.layers.")));
        assert!(!f.iter().any(|n| n.starts_with("model.layers.3.")));
        for bad in ["4", "2-1", "x", "", "1-"] {
            assert!(frozen_outside(bad, 4).is_err(), "{bad:?}");
        }
    }
}
