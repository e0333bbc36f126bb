//! `evomerge bench search-pipeline`: a parameter-space search at the sizes users run, on
//! random-weight Llama checkpoints of a given parameter count (base + 2 fine-tunes, in their
//! storage dtype), scored in process by perplexity. Per size it reports the search's peak RSS
//! (of the `evomerge run` process, as a user runs it) and bytes per model parameter, merge and
//! evaluation ms per candidate (from candidates.csv), and one candidate's turnaround in memory
//! (merged from the memory-mapped sources and ready to evaluate) against the one-shot
//! `evomerge merge` of the same recipe and against writing it to disk and loading it back,
//! all measured in the same run.

use super::median;
use crate::bench::merge::ensure_models;
use anyhow::{Context, Result, bail};
use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_eval::Candidate;
use evomerge_kernels::{BufferPool, DeviceChoice, EvalDtype};
use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_models::LanguageModel;
use evomerge_runner::log::CandidateTable;
use evomerge_zoo::{TinyLlama, word_level_tokenizer};
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What [`run`] measures.
#[derive(Debug, Clone)]
pub struct PipelineBench {
    /// Folder for the checkpoints, task and runs (checkpoints are reused when they have the
    /// right shape and dtype).
    pub dir: PathBuf,
    /// Model sizes in billions of parameters.
    pub sizes: Vec<f64>,
    /// Storage dtype of the sources (and of the one-shot merge's output).
    pub dtype: Dtype,
    /// Candidates the search scores (population 4; at least 1).
    pub candidates: u64,
    /// Texts scored per candidate and their length in tokens.
    pub texts: usize,
    pub tokens: usize,
    /// Repetitions of each turnaround measurement (the median is reported).
    pub repeats: usize,
    /// The merge method searched (its weights and densities are the genes).
    pub method: String,
    /// Where the search runs.
    pub device: DeviceChoice,
    /// The search's evaluation precision (`eval_dtype`).
    pub eval_dtype: EvalDtype,
    /// The `evomerge` executable that runs the search (default: this one).
    pub exe: Option<PathBuf>,
}

impl Default for PipelineBench {
    fn default() -> Self {
        PipelineBench {
            dir: PathBuf::from("results/bench-pipeline"),
            sizes: vec![0.1, 0.25, 0.5],
            dtype: Dtype::BF16,
            candidates: 4,
            texts: 16,
            tokens: 32,
            repeats: 3,
            method: "dare_ties".into(),
            device: DeviceChoice::Cpu,
            eval_dtype: EvalDtype::Auto,
            exe: None,
        }
    }
}

/// A Llama of about `billions` parameters: vocabulary 32000, hidden 2048 / intermediate 5632 /
/// 32 heads (4 kv) from 0.2B up (0.49B at 8 layers, the shape of the measurement),
/// hidden 1024 / intermediate 2816 / 16 heads (4 kv) below; the layer count sets the size.
pub fn shape_for(billions: f64) -> TinyLlama {
    let (h, i, heads, kv_heads) = if billions >= 0.2 {
        (2048usize, 5632usize, 32usize, 4usize)
    } else {
        (1024, 2816, 16, 4)
    };
    let v = 32000usize;
    let kv = h / heads * kv_heads;
    let per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h;
    let fixed = 2 * v * h + h;
    let target = billions * 1e9;
    let layers = ((target - fixed as f64) / per_layer as f64)
        .round()
        .max(1.0) as usize;
    TinyLlama {
        hidden: h,
        intermediate: i,
        layers,
        vocab: v,
        heads,
        kv_heads,
        max_positions: 2048,
        ..Default::default()
    }
}

fn params_of(spec: &TinyLlama) -> u64 {
    spec.shapes()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

/// Run `exe run EXPERIMENT` and return its peak resident set in bytes (`ru_maxrss` of the
/// child; Linux reports it in KiB).
fn run_child(exe: &Path, experiment: &Path) -> Result<u64> {
    let mut child = std::process::Command::new(exe)
        .arg("run")
        .arg(experiment)
        .args(["--run-id", "bench", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; the pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        let _ = child.kill();
        bail!(
            "waiting for the search: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "the search `{} run {}` failed (wait status {status}); run it by hand to see why",
            exe.display(),
            experiment.display()
        );
    }
    Ok(usage.ru_maxrss as u64 * 1024)
}

/// The base and fine-tunes of one size, with a word-level tokenizer, a perplexity task over
/// random token texts and the experiment file; returns (experiment, model folders).
fn prepare(args: &PipelineBench, root: &Path, spec: &TinyLlama) -> Result<(PathBuf, Vec<PathBuf>)> {
    let paths = ensure_models(&root.join("models"), spec, args.dtype)?;
    let tokenizer = serde_json::to_string(&word_level_tokenizer(spec.vocab))?;
    for p in &paths {
        let t = p.join("tokenizer.json");
        if !t.exists() {
            std::fs::write(&t, &tokenizer).with_context(|| format!("writing {}", t.display()))?;
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut text = String::new();
    for i in 0..args.texts {
        let words: Vec<String> = (0..args.tokens)
            .map(|_| format!("tok{}", rng.random_range(3..spec.vocab)))
            .collect();
        writeln!(
            text,
            "{{\"id\": \"t{i}\", \"text\": \"{}\"}}",
            words.join(" ")
        )?;
    }
    std::fs::write(root.join("texts.jsonl"), text)?;
    std::fs::write(
        root.join("task.toml"),
        format!(
            "name = \"bench-perplexity\"\ntype = \"perplexity\"\nbatch_size = {}\n\n[data]\nsearch = \"texts.jsonl\"\nvalidation = \"texts.jsonl\"\ntest = \"texts.jsonl\"\n",
            args.texts.max(1)
        ),
    )?;
    let exp = format!(
        "name = \"pipeline\"\nseed = 1\ndevice = \"{device}\"\neval_dtype = \"{eval_dtype}\"\noutput = \"{output}\"\n\n[sources]\nbase = \"models/base\"\nmodels = [\"models/ft1\", \"models/ft2\"]\n\n[genome]\nkind = \"ps\"\n\n[genome.ps]\npreset = \"sakana\"\nmerge_method = \"{method}\"\n\n[optimizer]\noptimizer = \"cma\"\npopulation_size = 4\n\n[budget]\nevaluations = {n}\n\n[[evaluators]]\nkind = \"lm\"\ntask = \"task.toml\"\n\n[validation]\nevery = 0\n\n[report]\ntest = false\n",
        device = args.device,
        eval_dtype = args.eval_dtype,
        output = root.join("runs").display(),
        method = args.method,
        n = args.candidates.max(1),
    );
    let path = root.join("experiment.toml");
    std::fs::write(&path, exp)?;
    Ok((path, paths))
}

/// One size's figures.
struct Row {
    billions: f64,
    params: u64,
    layers: usize,
    files: u64,
    candidate: u64,
    peak_rss: u64,
    scored: usize,
    merge_ms: f64,
    eval_ms: f64,
    in_memory_ms: f64,
    one_shot_ms: f64,
    disk_reload_ms: f64,
}

/// The search's figures from its candidates.csv: (candidates scored, median merge ms, median
/// eval ms).
fn run_figures(run_dir: &Path) -> Result<(usize, f64, f64)> {
    let path = run_dir.join("candidates.csv");
    let table =
        CandidateTable::read(&path)?.with_context(|| format!("{} is empty", path.display()))?;
    let rows: Vec<_> = table.sound().map(|(_, r)| r).collect();
    let ok: Vec<_> = rows.iter().filter(|r| r.fitness.is_some()).collect();
    if ok.is_empty() {
        bail!(
            "no candidate of {} was scored: {}",
            path.display(),
            rows.first()
                .and_then(|r| r.error.clone())
                .unwrap_or_else(|| "no rows".into())
        );
    }
    Ok((
        ok.len(),
        median(&mut ok.iter().map(|r| r.merge_ms).collect::<Vec<_>>()),
        median(&mut ok.iter().map(|r| r.eval_ms).collect::<Vec<_>>()),
    ))
}

/// One candidate's turnaround, medians over `repeats`: (in memory and ready to evaluate,
/// one-shot merge to disk, merge to disk and load back) in ms.
fn turnaround(args: &PipelineBench, root: &Path, paths: &[PathBuf]) -> Result<(f64, f64, f64)> {
    let device = args.device.device().map_err(anyhow::Error::msg)?;
    let recipe = Recipe::from_yaml(&format!(
        "merge_method: {m}\nbase_model: {b}\nmodels:\n  - model: {m1}\n    parameters: {{weight: 0.5, density: 0.5}}\n  - model: {m2}\n    parameters: {{weight: 0.5, density: 0.5}}\ndtype: float32\nout_dtype: {d}\n",
        m = args.method,
        b = paths[0].display(),
        m1 = paths[1].display(),
        m2 = paths[2].display(),
        d = args.dtype.torch_name(),
    ))?;
    let out = root.join("merged");
    let (mut mem, mut shot, mut reload) = (Vec::new(), Vec::new(), Vec::new());
    // as in a search, each candidate is merged into the buffers of the one dropped before
    // (the first into fresh memory)
    let pool = BufferPool::new();
    for i in 0..args.repeats.max(1) {
        let seed = i as u64;
        let t = Instant::now();
        let c =
            evomerge_runner::recipe_candidate_pooled(&recipe, "bench", &device, seed, None, &pool)?;
        c.language_model()?;
        mem.push(t.elapsed().as_secs_f64() * 1e3);
        drop(c);

        let t = Instant::now();
        let sources = Sources::open(&recipe, None)?;
        let plan = Plan::build(&recipe, &sources, &PlanOptions::default())?;
        let options = MergeOptions {
            device: device.clone(),
            seed,
            force: true,
            jobs: 2,
            ..Default::default()
        };
        merge_to_disk(&plan, &sources, &out, &options, &[])?;
        shot.push(t.elapsed().as_secs_f64() * 1e3);
        let loaded = LanguageModel::from_dir(&out, &device)?;
        reload.push(t.elapsed().as_secs_f64() * 1e3);
        drop(loaded);
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok((median(&mut mem), median(&mut shot), median(&mut reload)))
}

/// Run the benchmark at every size and print a markdown table.
pub fn run(args: &PipelineBench) -> Result<()> {
    if args.sizes.is_empty() || args.sizes.iter().any(|s| s.is_nan() || *s <= 0.0) {
        bail!("--sizes takes positive sizes in billions of parameters, e.g. 0.1,0.25,0.5");
    }
    let exe = match &args.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("finding the evomerge executable")?,
    };
    let mut rows = Vec::new();
    for &b in &args.sizes {
        let spec = shape_for(b);
        let params = params_of(&spec);
        let root = args.dir.join(format!("{b}B"));
        std::fs::create_dir_all(&root)?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        let (exp, paths) = prepare(args, &root, &spec)?;
        let run_dir = root.join("runs/pipeline/bench");
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir)
                .with_context(|| format!("clearing {}", run_dir.display()))?;
        }
        let files: u64 = paths
            .iter()
            .map(|p| Checkpoint::open(p).map(|c| c.total_bytes()))
            .sum::<Result<u64, _>>()?;
        eprintln!(
            "{b}B: {params} parameters, {} layers; searching ({} candidates)...",
            spec.layers, args.candidates
        );
        let peak_rss = run_child(&exe, &exp)?;
        let (scored, merge_ms, eval_ms) = run_figures(&run_dir)?;
        eprintln!(
            "{b}B: one candidate's turnaround ({} repeats)...",
            args.repeats
        );
        let (in_memory_ms, one_shot_ms, disk_reload_ms) = turnaround(args, &root, &paths)?;
        rows.push(Row {
            billions: b,
            params,
            layers: spec.layers,
            files,
            candidate: params * args.dtype.size() as u64,
            peak_rss,
            scored,
            merge_ms,
            eval_ms,
            in_memory_ms,
            one_shot_ms,
            disk_reload_ms,
        });
    }
    println!(
        "PS search, {} over base + 2 fine-tunes ({} files), population 4, {} candidates, perplexity of {} texts x {} tokens, device {}, eval_dtype {}",
        args.method,
        args.dtype,
        args.candidates,
        args.texts,
        args.tokens,
        args.device,
        args.eval_dtype
    );
    println!(
        "| size | parameters | layers | sources' files (GB) | peak RSS (GB) | bytes / parameter | target: files + 1.1 x candidate (GB) | candidates scored | merge ms / candidate | eval ms / candidate | in memory, ready (ms) | one-shot merge (ms) | merge + reload (ms) | one-shot / in memory | reload / in memory |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {}B | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            r.billions,
            r.params,
            r.layers,
            r.files as f64 / 1e9,
            r.peak_rss as f64 / 1e9,
            r.peak_rss as f64 / r.params as f64,
            (r.files as f64 + 1.1 * r.candidate as f64) / 1e9,
            r.scored,
            r.merge_ms,
            r.eval_ms,
            r.in_memory_ms,
            r.one_shot_ms,
            r.disk_reload_ms,
            r.one_shot_ms / r.in_memory_ms,
            r.disk_reload_ms / r.in_memory_ms,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_hit_their_sizes() {
        for b in [0.1, 0.25, 0.5, 7.0] {
            let p = params_of(&shape_for(b)) as f64 / 1e9;
            assert!((p - b).abs() / b < 0.12, "{b}B shape has {p}B parameters");
        }
        // the 0.49B measurement shape
        let s = shape_for(0.49);
        assert_eq!((s.hidden, s.layers, s.intermediate), (2048, 8, 5632));
    }
}
