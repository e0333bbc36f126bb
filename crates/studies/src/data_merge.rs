//! The data-merge study (`evomerge data-merge-study`): train small MLPs on the digits set and reproduce the published
//! findings of the data-using and permutation merges (Git Re-Basin barriers, REPAIR, Fisher and
//! RegMean vs averaging, soups), writing a markdown report and PNG interpolation curves.
//!
//! Everything runs on the CPU in minutes: every model is trained here with burn (flex backend,
//! Adam), every seed is fixed and printed in the report.

use anyhow::{Context, Result};
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
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Folder for the report (REPORT.md) and the plots.
    pub out: PathBuf,
    /// Seed of the train/validation/test split.
    pub split_seed: u64,
    /// Fewer epochs and seeds: a smoke run, not the reported numbers.
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

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Sample standard deviation (0 for fewer than two values).
fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
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
fn plot(
    path: &Path,
    title: &str,
    y_label: &str,
    legend: SeriesLabelPosition,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    plot_xy(
        path,
        title,
        "interpolation t  ((1-t) A + t B)",
        y_label,
        legend,
        series,
    )
}

/// A line chart of several named series; the x range is the data's.
fn plot_xy(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    legend: SeriesLabelPosition,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<()> {
    register_font();
    let range = |f: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|(_, s)| s.iter().map(f))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            })
    };
    let (lo, hi) = range(|p| p.1);
    let (x0, x1) = range(|p| p.0);
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let (width, height) = (900u32, 560u32);
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (lo - pad)..(hi + pad))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
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
        .position(legend)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(chart);
    drop(root);
    write_png(path, &pixels, width, height)
}

/// Encode RGB pixels with strong compression (plotters' own PNG writer makes files ~4x larger).
fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::High);
    let mut writer = enc
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .write_image_data(rgb)
        .with_context(|| format!("writing {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("writing {}", path.display()))?;
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
        &[(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]
    };
    let (train_set, test) = (&ctx.splits.train, &ctx.splits.test);
    let mut rows = String::new();
    let mut ratios = Vec::new();
    let mut first_curves = None;
    let mut csv = String::from("seed_a,seed_b,method,t,test_loss,test_accuracy\n");
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
        for (name, c) in [
            ("naive", &naive),
            ("weight_matching", &c_wm),
            ("activation_matching", &c_am),
        ] {
            for p in c.iter() {
                let _ = writeln!(
                    csv,
                    "{sa},{sb},{name},{:.4},{:.6},{:.6}",
                    p.t, p.eval.loss, p.eval.accuracy
                );
            }
        }
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
    write_file(&ctx.out.join("rebasin_curves.csv"), &csv)?;
    let (naive, c_wm, c_am, sa, sb) = first_curves.expect("one pair");
    plot(
        &ctx.out.join("rebasin_loss.png"),
        &format!("Git Re-Basin, digits MLP 64-256-256-10, seeds {sa}/{sb}: test loss"),
        "test cross-entropy",
        SeriesLabelPosition::UpperRight,
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
        SeriesLabelPosition::LowerRight,
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
         (finding: <= 0.5). Curves of every pair: `rebasin_curves.csv`; plots of the first pair. {}s.\n\n\
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
    let pairs: &[(u64, u64)] = if ctx.quick {
        &[(11, 12)]
    } else {
        &[(11, 12), (13, 14), (15, 16), (17, 18)]
    };
    let (train_set, test) = (&ctx.splits.train, &ctx.splits.test);
    let ts: Vec<f64> = (0..=10).map(|k| k as f64 / 10.0).collect();
    let mid = 5;
    let names = [
        "naive",
        "permuted",
        "permuted + REPAIR",
        "permuted + REPAIR (incl. logits)",
    ];
    // curves[method][t] summed over pairs
    let mut curves = vec![vec![0.0f64; ts.len()]; names.len()];
    let mut csv = String::from("seed_a,seed_b,method,t,test_accuracy\n");
    let mut rows = String::new();
    let mut ratio_rows = String::new();
    let mut mids: Vec<[f64; 4]> = Vec::new();
    let mut ratio_sum = vec![0.0f64; sizes.len() - 2];
    let mut decays_everywhere = true;
    let mut all_ratios = Vec::new();
    for &(sa, sb) in pairs {
        eprintln!("finding 5: training the deep MLPs (seeds {sa}, {sb})");
        let a = fit(&sizes, sa, train_set, epochs, 1e-3)?;
        let b = fit(&sizes, sb, train_set, epochs, 1e-3)?;
        let (ea, eb) = (evaluate(&a, test)?, evaluate(&b, test)?);
        let perm = activation_matching(&a, &b, train_set, ActivationCost::Correlation)?;
        let b_p = apply(&b, &perm);
        let with_logits = RepairOptions {
            include_output: true,
            ..RepairOptions::default()
        };
        let mut mid_report = None;
        for (k, &t) in ts.iter().enumerate() {
            let acc = |m: &MlpWeights| evaluate(m, test).map(|e| 100.0 * e.accuracy);
            let (m, rep) = repair(&a, &b_p, t, train_set, &RepairOptions::default())?;
            let (m_out, _) = repair(&a, &b_p, t, train_set, &with_logits)?;
            let v = [
                acc(&MlpWeights::lerp(&a, &b, t as f32))?,
                acc(&MlpWeights::lerp(&a, &b_p, t as f32))?,
                acc(&m)?,
                acc(&m_out)?,
            ];
            for (j, x) in v.iter().enumerate() {
                curves[j][k] += x / pairs.len() as f64;
                let _ = writeln!(csv, "{sa},{sb},{},{t:.2},{:.4}", names[j], x / 100.0);
            }
            if k == mid {
                mid_report = Some(rep);
                mids.push(v);
            }
        }
        let rep = mid_report.expect("t = 0.5 is on the grid");
        let v = mids.last().expect("midpoint");
        let _ = writeln!(
            rows,
            "| {sa}, {sb} | {} / {} | {:.1}% | {:.1}% | **{:.1}%** | {:.1}% |",
            pct(ea.accuracy),
            pct(eb.accuracy),
            v[0],
            v[1],
            v[2],
            v[3]
        );
        let r: Vec<String> = rep.ratio_before.iter().map(|r| format!("{r:.3}")).collect();
        let monotone = rep.ratio_before.windows(2).all(|w| w[1] < w[0]);
        decays_everywhere &= rep.ratio_before.first() > rep.ratio_before.last();
        let after_max = rep
            .ratio_after
            .iter()
            .map(|r| (r - 1.0).abs())
            .fold(0.0, f64::max);
        let _ = writeln!(
            ratio_rows,
            "| {sa}, {sb} | {} | {} | {after_max:.1e} |",
            r.join(" | "),
            if monotone { "yes" } else { "no" }
        );
        for (s, x) in ratio_sum.iter_mut().zip(&rep.ratio_before) {
            *s += x / pairs.len() as f64;
        }
        all_ratios.push(rep.ratio_before);
    }
    write_file(&ctx.out.join("repair_curves.csv"), &csv)?;
    let col = |j: usize| mids.iter().map(|m| m[j]).collect::<Vec<_>>();
    let mean_row = format!(
        "| mean ± sd | | {:.1} ± {:.1}% | {:.1} ± {:.1}% | **{:.1} ± {:.1}%** | {:.1} ± {:.1}% |",
        mean(&col(0)),
        sd(&col(0)),
        mean(&col(1)),
        sd(&col(1)),
        mean(&col(2)),
        sd(&col(2)),
        mean(&col(3)),
        sd(&col(3))
    );
    let series: Vec<(&str, Vec<(f64, f64)>)> = names
        .iter()
        .zip(&curves)
        .map(|(n, c)| (*n, ts.iter().copied().zip(c.iter().copied()).collect()))
        .collect();
    plot(
        &ctx.out.join("repair_accuracy.png"),
        &format!(
            "REPAIR, digits MLP 64-(128x7)-10: test accuracy, mean of {} pairs",
            pairs.len()
        ),
        "test accuracy (%)",
        SeriesLabelPosition::LowerRight,
        &series,
    )?;
    let ratio_series: Vec<(String, Vec<(f64, f64)>)> = pairs
        .iter()
        .zip(&all_ratios)
        .map(|((sa, sb), r)| {
            (
                format!("seeds {sa}/{sb}"),
                r.iter()
                    .enumerate()
                    .map(|(l, x)| ((l + 1) as f64, *x))
                    .collect(),
            )
        })
        .collect();
    let ratio_series: Vec<(&str, Vec<(f64, f64)>)> = ratio_series
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    plot_xy(
        &ctx.out.join("repair_variance_ratio.png"),
        "Variance collapse at t = 0.5 (permuted, before REPAIR)",
        "hidden layer",
        "mean std ratio sigma_merged / sigma_goal",
        SeriesLabelPosition::UpperRight,
        &ratio_series,
    )?;
    let header: Vec<String> = (1..sizes.len() - 1).map(|l| format!("L{l}")).collect();
    let mean_ratios: Vec<String> = ratio_sum.iter().map(|r| format!("{r:.3}")).collect();
    let _ = write!(
        ctx.report,
        "### Finding 5 — REPAIR on a deep MLP\n\n\
         Pairs of MLPs 64-(128 x 7 hidden)-10 trained from two seeds (Adam lr 1e-3, batch 64, \
         {epochs} epochs), B aligned to A by correlation matching of post-ReLU activations on the \
         train split, then interpolated. REPAIR (forward-pass variant, statistics on the train \
         split) resets every hidden channel's pre-activation mean/std to the interpolation of the \
         endpoints' statistics and folds the correction into the weights; the last column also \
         corrects the logit layer (as REPAIR's no-BatchNorm MLP notebook does). Test accuracy at \
         t = 0.5:\n\n\
         | seeds A, B | endpoints A / B | naive | permuted | permuted + REPAIR | + REPAIR incl. logits |\n\
         |---|---|---|---|---|---|\n{rows}{mean_row}\n\n\
         Reference (REPAIR notebook, MNIST MLP, permuted -> REPAIR): 71.7% -> 83.0%.\n\n\
         Variance ratio (mean over channels of sigma_merged / sigma_goal) per hidden layer at \
         t = 0.5, permuted, before REPAIR:\n\n\
         | seeds A, B | {} | strictly decreasing | max abs(ratio - 1) after REPAIR |\n\
         |---|{}---|---|\n{ratio_rows}| mean | {} | | |\n\n\
         First layer above the last in every pair: {decays_everywhere}.\n\n\
         ![repair](repair_accuracy.png)\n![variance ratio](repair_variance_ratio.png)\n\n\
         Per-pair curves: `repair_curves.csv`. ({}s)\n\n",
        header.join(" | "),
        "---|".repeat(header.len()),
        mean_ratios.join(" | "),
        t0.elapsed().as_secs()
    );
    Ok(())
}

/// One fine-tuning regime of finding 6.
struct Regime {
    pre_epochs: usize,
    ft_epochs: usize,
    ft_lr: f64,
}

/// Finding 6: Fisher and RegMean vs averaging of two fine-tunes on disjoint class halves; soups.
fn finding_6(ctx: &mut Ctx) -> Result<()> {
    let t0 = Instant::now();
    let sizes = [64, 128, 128, 10];
    let (train_set, val, test) = (&ctx.splits.train, &ctx.splits.val, &ctx.splits.test);
    let low: Vec<u32> = (0..5).collect();
    let high: Vec<u32> = (5..10).collect();
    let (da, db) = (train_set.with_classes(&low), train_set.with_classes(&high));
    let regimes: &[Regime] = if ctx.quick {
        &[Regime {
            pre_epochs: 1,
            ft_epochs: 3,
            ft_lr: 1e-3,
        }]
    } else {
        &[
            Regime {
                pre_epochs: 2,
                ft_epochs: 10,
                ft_lr: 1e-3,
            },
            Regime {
                pre_epochs: 5,
                ft_epochs: 5,
                ft_lr: 1e-3,
            },
            Regime {
                pre_epochs: 10,
                ft_epochs: 3,
                ft_lr: 1e-3,
            },
            Regime {
                pre_epochs: 10,
                ft_epochs: 10,
                ft_lr: 1e-4,
            },
        ]
    };
    let seeds: Vec<u64> = if ctx.quick {
        vec![21, 22]
    } else {
        (21..31).collect()
    };
    let methods = [
        "shared init",
        "A (0-4)",
        "B (5-9)",
        "average",
        "Fisher exact",
        "Fisher exact, unnormalised",
        "Fisher empirical",
        "RegMean",
    ];
    let mut csv = format!(
        "pre_epochs,ft_epochs,ft_lr,seed,{}\n",
        methods.join(",").replace(' ', "_")
    );
    let mut summary = String::new();
    let mut headline = Vec::new();
    for r in regimes {
        eprintln!(
            "finding 6: regime pre {} / fine-tune {} epochs lr {}",
            r.pre_epochs, r.ft_epochs, r.ft_lr
        );
        let mut accs: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
        for &seed in &seeds {
            // The shared "pre-trained" init: a short run on all classes.
            let init = fit(&sizes, seed, train_set, r.pre_epochs, 1e-3)?;
            let cfg = |s: u64| TrainConfig {
                epochs: r.ft_epochs,
                batch_size: 64,
                lr: r.ft_lr,
                seed: s,
            };
            let a = train(&init, &da, &cfg(seed + 100))?;
            let b = train(&init, &db, &cfg(seed + 200))?;
            let avg = MlpWeights::lerp(&a, &b, 0.5);
            let exact = [
                diagonal_fisher(&a, &da, FisherKind::Exact, 256)?,
                diagonal_fisher(&b, &db, FisherKind::Exact, 256)?,
            ];
            let empirical = [
                diagonal_fisher(&a, &da, FisherKind::Empirical, 256)?,
                diagonal_fisher(&b, &db, FisherKind::Empirical, 256)?,
            ];
            let normalised = FisherMergeOptions::default();
            let unnormalised = FisherMergeOptions {
                normalize: false,
                ..normalised
            };
            let fisher = fisher_merge(&[&a, &b], &exact, &[1.0, 1.0], &normalised)?;
            let fisher_un = fisher_merge(&[&a, &b], &exact, &[1.0, 1.0], &unnormalised)?;
            let fisher_emp = fisher_merge(&[&a, &b], &empirical, &[1.0, 1.0], &normalised)?;
            let g = [grams(&a, &da, 256)?, grams(&b, &db, 256)?];
            let regmean = regmean_merge(&[&a, &b], &g, &[1.0, 1.0], &RegMeanOptions::default())?;
            let models = [
                &init,
                &a,
                &b,
                &avg,
                &fisher,
                &fisher_un,
                &fisher_emp,
                &regmean,
            ];
            let _ = write!(csv, "{},{},{},{seed}", r.pre_epochs, r.ft_epochs, r.ft_lr);
            for (j, m) in models.iter().enumerate() {
                let x = 100.0 * evaluate(m, test)?.accuracy;
                accs[j].push(x);
                let _ = write!(csv, ",{:.4}", x / 100.0);
            }
            csv.push('\n');
        }
        let wins = |j: usize| {
            accs[j]
                .iter()
                .zip(&accs[3])
                .filter(|(x, avg)| x > avg)
                .count()
        };
        let cell = |j: usize| format!("{:.1} ± {:.1}", mean(&accs[j]), sd(&accs[j]));
        let merged_cell = |j: usize| {
            format!(
                "{} ({}/{}, {:+.1})",
                cell(j),
                wins(j),
                seeds.len(),
                mean(&accs[j]) - mean(&accs[3])
            )
        };
        let _ = writeln!(
            summary,
            "| {} ep, {} ep @ {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            r.pre_epochs,
            r.ft_epochs,
            r.ft_lr,
            cell(0),
            cell(1),
            cell(2),
            cell(3),
            merged_cell(4),
            merged_cell(5),
            merged_cell(6),
            merged_cell(7)
        );
        headline.push((
            mean(&accs[3]),
            mean(&accs[4]),
            mean(&accs[7]),
            wins(4),
            wins(7),
        ));
    }
    write_file(&ctx.out.join("fisher_regmean.csv"), &csv)?;

    // Soups: k fine-tunes of one init on all classes with different seeds and learning rates.
    let (pre_epochs, ft_epochs) = if ctx.quick { (1, 3) } else { (2, 10) };
    let soup_seeds: &[u64] = if ctx.quick { &[31] } else { &[31, 32, 33] };
    let lrs = [3e-4, 1e-3, 2e-3, 3e-3, 5e-3];
    let mut soup_rows = String::new();
    let mut soup_ok = true;
    for &s in soup_seeds {
        eprintln!("finding 6: soups from init seed {s}");
        let init = fit(&sizes, s, train_set, pre_epochs, 1e-3)?;
        let mut ingredients = Vec::new();
        for (k, lr) in lrs.iter().enumerate() {
            let cfg = TrainConfig {
                epochs: ft_epochs,
                batch_size: 64,
                lr: *lr,
                seed: 10 * s + k as u64,
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
        let singles_test: Vec<f64> = refs.iter().map(|m| test_acc(m)).collect::<Result<_, _>>()?;
        let uniform_val = evaluate(&uniform, val)?.accuracy;
        let best_val = greedy.individual_val[best_i];
        soup_ok &= greedy.val_accuracy >= best_val;
        let vals: Vec<String> = greedy.individual_val.iter().map(|v| pct(*v)).collect();
        let _ = writeln!(
            soup_rows,
            "| {s} | {} | {} (#{best_i}) / {} | {} / {} | {} / {} | {:?} | {} / {} |",
            vals.join(", "),
            pct(best_val),
            pct(singles_test[best_i]),
            pct(mean(&greedy.individual_val)),
            pct(mean(&singles_test)),
            pct(uniform_val),
            pct(test_acc(&uniform)?),
            greedy.ingredients,
            pct(greedy.val_accuracy),
            pct(test_acc(&greedy.soup)?),
        );
    }
    let (avg0, fisher0, regmean0, fw0, rw0) = headline[0];
    let _ = write!(
        ctx.report,
        "### Finding 6 — Fisher and RegMean vs averaging; soups\n\n\
         MLP 64-128-128-10. A shared init is trained for `pre` epochs on all classes (Adam lr \
         1e-3, seed s); model A is fine-tuned from it on classes 0-4 only, model B on classes 5-9 \
         only (Adam, `ft` epochs at the given learning rate, seeds s+100 / s+200). Merges of A and \
         B: plain average; Fisher (diagonal Fisher of each model on its own half of the train \
         split, epsilon 1e-6; \"exact\" = expectation over the model's predictive distribution, \
         normalised = each model's coefficient divided by its Fisher's global L2 norm, the default; \
         also without that normalisation, and the empirical Fisher); RegMean (summed Grams of each \
         model's own half, alpha 1, ridge 1e-6, head included since both models share the 10-way \
         head). Test accuracy (%) on all ten classes, mean ± sd over the seeds s = {}..{} \
         ({} seeds); for the merges also (seeds where it beats the average / {}, mean difference \
         to the average in points):\n\n\
         | pre, fine-tune @ lr | shared init | A / B | average | Fisher exact | Fisher exact, unnormalised | Fisher empirical | RegMean |\n\
         |---|---|---|---|---|---|---|---|\n{summary}\n\
         First regime (the study's main setting): average {avg0:.1}%, Fisher {fisher0:.1}% \
         ({fw0}/{n} seeds better), RegMean {regmean0:.1}% ({rw0}/{n} seeds better). Per-seed \
         numbers: `fisher_regmean.csv`.\n\n\
         Soups: for each init seed, 5 fine-tunes of one init ({pre_epochs} epochs on all \
         classes) on the whole train split ({ft_epochs} epochs each, learning rates {lrs:?}, \
         seeds 10 s + k). Greedy soup: models sorted by validation accuracy, each added if the \
         running mean's validation accuracy strictly improves. Accuracies as validation / test:\n\n\
         | init seed | ingredients' val acc | best single | mean single | uniform soup | greedy ingredients | greedy soup |\n\
         |---|---|---|---|---|---|---|\n{soup_rows}\n\
         Greedy soup validation accuracy >= best single's in every run: {soup_ok}.\n\n({}s)\n\n",
        seeds[0],
        seeds[seeds.len() - 1],
        seeds.len(),
        seeds.len(),
        t0.elapsed().as_secs(),
        n = seeds.len(),
    );
    Ok(())
}

/// Run the study: every finding's models, merges and plots; REPORT.md in `args.out`, the report
/// also on stdout.
pub fn run(args: &StudyOptions) -> Result<()> {
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
        "## Data-using and permutation merges\n\n\
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
