//! `evomerge data-merge-study`: train small MLPs on the digits set and reproduce the published
//! findings of the data-using and permutation merges (issue 8, findings 4-6), writing a
//! markdown report and PNG interpolation curves.
//!
//! Everything runs on the CPU in minutes: every model is trained here with burn (flex backend,
//! Adam), every seed is fixed and printed in the report.

use anyhow::{Context, Result};
use clap::Args;
use evomerge_data::{Dataset, Splits};
use evomerge_datamerge::curve::{CurvePoint, barrier, interpolate, midpoint};
use evomerge_datamerge::fisher::{FisherKind, FisherMergeOptions, diagonal_fisher, fisher_merge};
use evomerge_datamerge::rebasin::{
    ActivationCost, MatchOptions, activation_matching, apply, weight_matching,
};
use evomerge_datamerge::regmean::{RegMeanOptions, grams, regmean_merge};
use evomerge_datamerge::repair::{RepairOptions, repair};
use evomerge_datamerge::soup::{greedy_soup, uniform_soup};
use evomerge_models::MlpWeights;
use evomerge_models::mlp::{TrainConfig, evaluate, train};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Reproduce the data-merge findings on digits (Git Re-Basin barriers, REPAIR on a deep MLP,
/// Fisher/RegMean/soups on models fine-tuned from one init); writes REPORT.md and PNG plots.
#[derive(Args)]
pub struct StudyDataArgs {
    /// Folder for the report (REPORT.md) and the plots.
    #[arg(long, default_value = "experiments/data-merges")]
    pub out: PathBuf,
    /// Seed of the train/validation/test split.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Fewer epochs and seeds: a smoke run, not the reported numbers.
    #[arg(long)]
    pub quick: bool,
}

struct Ctx {
    splits: Splits,
    quick: bool,
    report: String,
    out: PathBuf,
}

fn fit(sizes: &[usize], seed: u64, data: &Dataset, epochs: usize, lr: f64) -> Result<MlpWeights> {
    let init = MlpWeights::init(sizes, seed)?;
    let cfg = TrainConfig {
        epochs,
        batch_size: 64,
        lr,
        seed,
    };
    Ok(train(&init, data, &cfg)?)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn register_font() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}

/// A line chart of several named series over `t` in [0, 1].
fn plot(path: &Path, title: &str, y_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    register_font();
    let (lo, hi) = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0f64..1.0f64, (lo - pad)..(hi + pad))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("interpolation t  ((1-t) A + t B)")
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let colors = [RED, BLUE, GREEN, MAGENTA, BLACK, CYAN];
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn losses(c: &[CurvePoint]) -> Vec<(f64, f64)> {
    c.iter().map(|p| (p.t, p.eval.loss)).collect()
}

fn accs(c: &[CurvePoint]) -> Vec<(f64, f64)> {
    c.iter().map(|p| (p.t, 100.0 * p.eval.accuracy)).collect()
}

/// Finding 4: barriers of two MLPs from different seeds, naive vs weight vs activation matching.
fn finding_4(ctx: &mut Ctx) -> Result<()> {
    let t0 = Instant::now();
    let sizes = [64, 256, 256, 10];
    let epochs = if ctx.quick { 8 } else { 40 };
    let pairs: &[(u64, u64)] = if ctx.quick {
        &[(1, 2)]
    } else {
        &[(1, 2), (3, 4), (5, 6)]
    };
    let (train_set, test) = (&ctx.splits.train, &ctx.splits.test);
    let mut rows = String::new();
    let mut ratios = Vec::new();
    let mut first_curves = None;
    for &(sa, sb) in pairs {
        eprintln!("finding 4: training seeds {sa} and {sb}");
        let a = fit(&sizes, sa, train_set, epochs, 1e-3)?;
        let b = fit(&sizes, sb, train_set, epochs, 1e-3)?;
        let wm = weight_matching(
            &a,
            &b,
            &MatchOptions {
                max_iter: 100,
                seed: 0,
            },
        )?;
        let b_wm = apply(&b, &wm.permutation);
        let b_am = apply(
            &b,
            &activation_matching(&a, &b, train_set, ActivationCost::CrossMoment)?,
        );
        let naive = interpolate(&a, &b, test, 25)?;
        let c_wm = interpolate(&a, &b_wm, test, 25)?;
        let c_am = interpolate(&a, &b_am, test, 25)?;
        let (bn, bw, ba) = (barrier(&naive), barrier(&c_wm), barrier(&c_am));
        ratios.push((bw / bn, ba / bn));
        let _ = writeln!(
            rows,
            "| {sa}, {sb} | {} / {} | {:.3} | {:.3} ({:.2}x) | {:.3} ({:.2}x) | {} | {} | {} | {} |",
            pct(naive[0].eval.accuracy),
            pct(naive[24].eval.accuracy),
            bn,
            bw,
            bw / bn,
            ba,
            ba / bn,
            pct(midpoint(&naive).eval.accuracy),
            pct(midpoint(&c_wm).eval.accuracy),
            pct(midpoint(&c_am).eval.accuracy),
            wm.sweeps
        );
        if first_curves.is_none() {
            first_curves = Some((naive, c_wm, c_am, sa, sb));
        }
    }
    let (naive, c_wm, c_am, sa, sb) = first_curves.expect("one pair");
    plot(
        &ctx.out.join("rebasin_loss.png"),
        &format!("Git Re-Basin, digits MLP 64-256-256-10, seeds {sa}/{sb}: test loss"),
        "test cross-entropy",
        &[
            ("naive", losses(&naive)),
            ("weight matching", losses(&c_wm)),
            ("activation matching", losses(&c_am)),
        ],
    )?;
    plot(
        &ctx.out.join("rebasin_accuracy.png"),
        &format!("Git Re-Basin, digits MLP 64-256-256-10, seeds {sa}/{sb}: test accuracy"),
        "test accuracy (%)",
        &[
            ("naive", accs(&naive)),
            ("weight matching", accs(&c_wm)),
            ("activation matching", accs(&c_am)),
        ],
    )?;
    let max_wm = ratios.iter().map(|r| r.0).fold(0.0, f64::max);
    let max_am = ratios.iter().map(|r| r.1).fold(0.0, f64::max);
    let _ = write!(
        ctx.report,
        "### Finding 4 — loss barrier after permutation matching\n\n\
         Two MLPs 64-256-256-10 (ReLU) trained from different seeds on the digits train split \
         (Adam lr 1e-3, batch 64, {epochs} epochs; the seed sets init and batch order). Barrier = \
         max over 25 evenly spaced t of test loss((1-t)A + tB) - (L(A) + L(B))/2 (Ainsworth et \
         al.). Weight matching: coordinate descent, exact LAP per step, sweep order seed 0. \
         Activation matching: cross moments E[z_A z_B] of post-ReLU activations on the train split.\n\n\
         | seeds A, B | test acc A / B | naive barrier | weight matching (ratio) | activation matching (ratio) | mid acc naive | mid acc WM | mid acc AM | WM sweeps |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}\n\
         Worst ratio to the naive barrier: weight matching {max_wm:.2}, activation matching {max_am:.2} \
         (finding: <= 0.5). {}s.\n\n\
         ![loss](rebasin_loss.png)\n![accuracy](rebasin_accuracy.png)\n\n",
        t0.elapsed().as_secs()
    );
    Ok(())
}

/// Finding 5: REPAIR on a deep MLP.
fn finding_5(ctx: &mut Ctx) -> Result<()> {
    let t0 = Instant::now();
    let mut sizes = vec![64];
    sizes.extend([128; 7]);
    sizes.push(10);
    let epochs = if ctx.quick { 8 } else { 40 };
    let (train_set, test) = (&ctx.splits.train, &ctx.splits.test);
    let (sa, sb) = (11, 12);
    eprintln!("finding 5: training the deep MLPs (seeds {sa}, {sb})");
    let a = fit(&sizes, sa, train_set, epochs, 1e-3)?;
    let b = fit(&sizes, sb, train_set, epochs, 1e-3)?;
    let (ea, eb) = (evaluate(&a, test)?, evaluate(&b, test)?);
    let perm = activation_matching(&a, &b, train_set, ActivationCost::Correlation)?;
    let b_p = apply(&b, &perm);
    let ts: Vec<f64> = (0..=10).map(|k| k as f64 / 10.0).collect();
    let (mut naive, mut permuted, mut repaired) = (Vec::new(), Vec::new(), Vec::new());
    let mut mid_report = None;
    for &t in &ts {
        naive.push((
            t,
            100.0 * evaluate(&MlpWeights::lerp(&a, &b, t as f32), test)?.accuracy,
        ));
        permuted.push((
            t,
            100.0 * evaluate(&MlpWeights::lerp(&a, &b_p, t as f32), test)?.accuracy,
        ));
        let (m, rep) = repair(&a, &b_p, t, train_set, &RepairOptions::default())?;
        repaired.push((t, 100.0 * evaluate(&m, test)?.accuracy));
        if (t - 0.5).abs() < 1e-9 {
            mid_report = Some(rep);
        }
    }
    let rep = mid_report.expect("t = 0.5 is on the grid");
    let mid = 5;
    plot(
        &ctx.out.join("repair_accuracy.png"),
        "REPAIR, digits MLP 64-(128x7)-10, correlation matching: test accuracy",
        "test accuracy (%)",
        &[
            ("naive", naive.clone()),
            ("permuted", permuted.clone()),
            ("permuted + REPAIR", repaired.clone()),
        ],
    )?;
    let ratios: Vec<String> = rep.ratio_before.iter().map(|r| format!("{r:.3}")).collect();
    let after: Vec<String> = rep.ratio_after.iter().map(|r| format!("{r:.3}")).collect();
    let decays = rep.ratio_before.first() > rep.ratio_before.last();
    let _ = write!(
        ctx.report,
        "### Finding 5 — REPAIR on a deep MLP\n\n\
         Two MLPs 64-(128 x 7 hidden)-10 trained from seeds {sa} and {sb} (Adam lr 1e-3, batch 64, \
         {epochs} epochs), aligned by correlation matching of post-ReLU activations on the train \
         split, then interpolated; REPAIR (forward-pass variant, statistics on the train split, \
         hidden layers) resets every hidden channel's pre-activation mean/std to the interpolated \
         endpoint statistics and folds the correction into the weights.\n\n\
         | | test accuracy |\n|---|---|\n\
         | endpoint A / B | {} / {} |\n\
         | midpoint, naive | {:.1}% |\n\
         | midpoint, permuted | {:.1}% |\n\
         | midpoint, permuted + REPAIR | **{:.1}%** |\n\
         | reference (REPAIR notebook, MNIST MLP 6x128 hidden) | 71.7% -> 83.0% |\n\n\
         Variance ratio sigma_merged / sigma_goal per hidden layer at t = 0.5, before REPAIR \
         (layer 1 first): {} — {}; after REPAIR: {}.\n\n\
         ![repair](repair_accuracy.png)\n\n({}s)\n\n",
        pct(ea.accuracy),
        pct(eb.accuracy),
        naive[mid].1,
        permuted[mid].1,
        repaired[mid].1,
        ratios.join(", "),
        if decays {
            "it decays with depth"
        } else {
            "it does NOT decay monotonically here"
        },
        after.join(", "),
        t0.elapsed().as_secs()
    );
    Ok(())
}

/// Finding 6: Fisher and RegMean vs averaging of two fine-tunes on disjoint class halves; soups.
fn finding_6(ctx: &mut Ctx) -> Result<()> {
    let t0 = Instant::now();
    let sizes = [64, 128, 128, 10];
    let (train_set, val, test) = (&ctx.splits.train, &ctx.splits.val, &ctx.splits.test);
    let low: Vec<u32> = (0..5).collect();
    let high: Vec<u32> = (5..10).collect();
    let (pre_epochs, ft_epochs) = if ctx.quick { (1, 3) } else { (2, 10) };
    let seeds: &[u64] = if ctx.quick { &[21] } else { &[21, 22, 23] };
    let mut rows = String::new();
    let mut wins = (0, 0);
    let mut sums = [0.0f64; 6];
    for &seed in seeds {
        eprintln!("finding 6: shared init seed {seed}");
        // The shared "pre-trained" init: a short run on all classes.
        let init = fit(&sizes, seed, train_set, pre_epochs, 1e-3)?;
        let cfg = |s: u64| TrainConfig {
            epochs: ft_epochs,
            batch_size: 64,
            lr: 1e-3,
            seed: s,
        };
        let da = train_set.with_classes(&low);
        let db = train_set.with_classes(&high);
        let a = train(&init, &da, &cfg(seed + 100))?;
        let b = train(&init, &db, &cfg(seed + 200))?;
        let avg = MlpWeights::lerp(&a, &b, 0.5);
        let fa = diagonal_fisher(&a, &da, FisherKind::Exact, 256)?;
        let fb = diagonal_fisher(&b, &db, FisherKind::Exact, 256)?;
        let fisher = fisher_merge(
            &[&a, &b],
            &[fa, fb],
            &[1.0, 1.0],
            &FisherMergeOptions::default(),
        )?;
        let ga = grams(&a, &da, 256)?;
        let gb = grams(&b, &db, 256)?;
        let regmean = regmean_merge(
            &[&a, &b],
            &[ga, gb],
            &[1.0, 1.0],
            &RegMeanOptions::default(),
        )?;
        let acc = |m: &MlpWeights| evaluate(m, test).map(|e| e.accuracy);
        let v = [
            acc(&init)?,
            acc(&a)?,
            acc(&b)?,
            acc(&avg)?,
            acc(&fisher)?,
            acc(&regmean)?,
        ];
        for (s, x) in sums.iter_mut().zip(v) {
            *s += x;
        }
        wins.0 += (v[4] > v[3]) as usize;
        wins.1 += (v[5] > v[3]) as usize;
        let _ = writeln!(
            rows,
            "| {seed} | {} | {} | {} | {} | {} | {} |",
            pct(v[0]),
            pct(v[1]),
            pct(v[2]),
            pct(v[3]),
            pct(v[4]),
            pct(v[5])
        );
    }
    let n = seeds.len() as f64;
    let _ = writeln!(
        rows,
        "| mean | {} | {} | {} | {} | **{}** | **{}** |",
        pct(sums[0] / n),
        pct(sums[1] / n),
        pct(sums[2] / n),
        pct(sums[3] / n),
        pct(sums[4] / n),
        pct(sums[5] / n)
    );

    // Soups: k fine-tunes of one init on all classes with different seeds and learning rates.
    eprintln!("finding 6: soups");
    let init = fit(&sizes, 31, train_set, pre_epochs, 1e-3)?;
    let lrs = [3e-4, 1e-3, 2e-3, 3e-3, 5e-3];
    let mut ingredients = Vec::new();
    for (k, lr) in lrs.iter().enumerate() {
        let cfg = TrainConfig {
            epochs: ft_epochs,
            batch_size: 64,
            lr: *lr,
            seed: 300 + k as u64,
        };
        ingredients.push(train(&init, train_set, &cfg)?);
    }
    let refs: Vec<&MlpWeights> = ingredients.iter().collect();
    let greedy = greedy_soup(&refs, val)?;
    let uniform = uniform_soup(&refs)?;
    let best_i = (0..refs.len())
        .max_by(|x, y| greedy.individual_val[*x].total_cmp(&greedy.individual_val[*y]))
        .expect("models");
    let test_acc = |m: &MlpWeights| evaluate(m, test).map(|e| e.accuracy);
    let mut soup_rows = String::new();
    for (k, m) in refs.iter().enumerate() {
        let _ = writeln!(
            soup_rows,
            "| ingredient {k} (lr {}, seed {}) | {} | {} |",
            lrs[k],
            300 + k,
            pct(greedy.individual_val[k]),
            pct(test_acc(m)?)
        );
    }
    let _ = writeln!(
        soup_rows,
        "| uniform soup | {} | {} |\n| greedy soup (ingredients {:?}) | **{}** | {} |",
        pct(evaluate(&uniform, val)?.accuracy),
        pct(test_acc(&uniform)?),
        greedy.ingredients,
        pct(greedy.val_accuracy),
        pct(test_acc(&greedy.soup)?)
    );
    let _ = write!(
        ctx.report,
        "### Finding 6 — Fisher and RegMean vs averaging; soups\n\n\
         MLP 64-128-128-10. A shared init is trained for {pre_epochs} epochs on all classes (seed \
         s); model A is fine-tuned from it on classes 0-4 only, model B on classes 5-9 only (Adam lr \
         1e-3, {ft_epochs} epochs, seeds s+100 / s+200). Merges of A and B: plain average, Fisher \
         (exact diagonal Fisher of each model on its own half of the train split, epsilon 1e-6, \
         normalised), RegMean (summed Grams of each model's own half, alpha 1, ridge 1e-6). Test \
         accuracy on all ten classes:\n\n\
         | seed s | shared init | A (0-4) | B (5-9) | average | Fisher | RegMean |\n\
         |---|---|---|---|---|---|---|\n{rows}\n\
         Fisher beats the average in {}/{} seeds, RegMean in {}/{}.\n\n\
         Soups: 5 fine-tunes of one init (seed 31, {pre_epochs} epochs) on the whole train split \
         ({ft_epochs} epochs each, different learning rates and seeds). Greedy soup: models sorted \
         by validation accuracy, each added if the running mean's validation accuracy strictly \
         improves.\n\n\
         | model | val accuracy | test accuracy |\n|---|---|---|\n{soup_rows}\n\
         Greedy soup validation accuracy {} >= best single ({}, ingredient {best_i}): {}.\n\n({}s)\n\n",
        wins.0,
        seeds.len(),
        wins.1,
        seeds.len(),
        pct(greedy.val_accuracy),
        pct(greedy.individual_val[best_i]),
        greedy.val_accuracy >= greedy.individual_val[best_i],
        t0.elapsed().as_secs()
    );
    Ok(())
}

pub fn run(args: StudyDataArgs) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let digits = Dataset::digits();
    let splits = digits.split(args.split_seed);
    let mut ctx = Ctx {
        report: String::new(),
        quick: args.quick,
        out: args.out.clone(),
        splits,
    };
    let _ = write!(
        ctx.report,
        "## Data-using and permutation merges (issue 8)\n\n\
         Data: sklearn digits embedded in `smartcore` (1797 x 64, pixels / 16), seeded stratified \
         split (seed {}): {} train / {} validation / {} test rows. All models trained here with \
         burn (flex CPU backend, autodiff, Adam). Command: `cargo run --release -p evomerge -- \
         data-merge-study{}`.\n\n",
        args.split_seed,
        ctx.splits.train.len(),
        ctx.splits.val.len(),
        ctx.splits.test.len(),
        if args.quick { " --quick" } else { "" }
    );
    finding_4(&mut ctx)?;
    finding_5(&mut ctx)?;
    finding_6(&mut ctx)?;
    let _ = writeln!(
        ctx.report,
        "Total wall time: {:.0}s on this machine ({} threads available).",
        start.elapsed().as_secs_f64(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let path = args.out.join("REPORT.md");
    std::fs::write(&path, &ctx.report).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", ctx.report);
    eprintln!(
        "wrote {} and the plots in {}",
        path.display(),
        args.out.display()
    );
    Ok(())
}
