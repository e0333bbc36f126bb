//! What every chart shares: the font, the palette, number labels, ranges, and writing a
//! chart as PNG and SVG.

use super::{Chart, PlotError};
use evomerge_checkpoint::atomic::{commit, temp_path, write_atomic};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

pub(crate) fn register_font() {
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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PlotError + '_ {
    move |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Draws one chart twice, as `dir/NAME.png` and `dir/NAME.svg` (each written atomically);
/// returns both paths.
pub(crate) fn write_chart(
    dir: &Path,
    name: &str,
    chart: &impl Chart,
) -> Result<Vec<PathBuf>, PlotError> {
    register_font();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let size = chart.size();
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    {
        let tmp = temp_path(&png);
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&png, e))?;
        chart.draw(&root).map_err(|e| draw_err(&png, e))?;
        root.present().map_err(|e| draw_err(&png, e))?;
        drop(root);
        commit(&tmp, &png)?;
    }
    {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| draw_err(&svg, e))?;
            chart.draw(&root).map_err(|e| draw_err(&svg, e))?;
            root.present().map_err(|e| draw_err(&svg, e))?;
        }
        write_atomic(&svg, text.as_bytes())?;
    }
    Ok(vec![png, svg])
}

/// A fitness-vs-evaluations chart (the fitness chart, the comparison chart): its caption,
/// axes `0..x_max` and `y0..y1`, and the mesh with the y axis described as `y_desc`.
pub(crate) fn fitness_axes<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x_max: f64,
    (y0, y1): (f64, f64),
    y_desc: &str,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(48)
        // wide enough for the longest tick label next to the axis title
        .y_label_area_size(
            [y0, y1]
                .iter()
                .map(|y| 18 + 8 * fmt_tick(*y, y1 - y0).len() as u32)
                .fold(70, u32::max),
        )
        .build_cartesian_2d(0.0..x_max * 1.02, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("evaluations")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| fmt_tick(*y, y1 - y0))
        .draw()
        .map_err(e)?;
    Ok(chart)
}

/// A number for a label: 3 significant decimals, scientific when tiny or huge.
pub(crate) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// A tick label of an axis spanning `span`: [`fmt_num`], with as many decimals as tell apart
/// ticks about a tenth of the span apart (a fitness axis over -10.3745..-10.3715 would label
/// two ticks "-10.373" at three).
pub(crate) fn fmt_tick(v: f64, span: f64) -> String {
    let a = v.abs();
    let step = span / 10.0;
    if (a != 0.0 && !(1e-3..1e5).contains(&a)) || !(step > 0.0 && step.is_finite()) {
        return fmt_num(v);
    }
    let decimals = (-step.log10()).ceil().clamp(3.0, 12.0) as usize;
    format!("{v:.decimals$}")
}

/// `(lo, hi)` of the values, padded by `pad` of the span (a flat range gets a small span).
pub(crate) fn padded_range(values: impl IntoIterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    let span = hi - lo;
    let p = if span > 0.0 {
        span * pad
    } else {
        (lo.abs() * 0.05).max(1e-3)
    };
    Some((lo - p, hi + p))
}

/// A colour-blind-safe qualitative palette (Okabe–Ito), cycled.
pub(crate) fn series_color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(230, 159, 0),
        RGBColor(0, 0, 0),
        RGBColor(240, 228, 66),
    ];
    C[i % C.len()]
}

/// Points of a step function through `(x, y)` samples: flat until the next sample.
pub(crate) fn step_points(samples: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for (i, &(x, y)) in samples.iter().enumerate() {
        if i > 0 {
            out.push((x, samples[i - 1].1));
        }
        out.push((x, y));
    }
    out
}

/// Viridis, interpolated between 9 stops; `t` in [0, 1].
pub(crate) fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

pub(crate) fn luminance(c: RGBColor) -> f64 {
    (0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64) / 255.0
}

/// An integer tick label, or nothing between integers.
pub(crate) fn int_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 && v >= -1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_have_the_decimals_their_spacing_needs() {
        // ~0.0004 apart: four decimals, so neighbours differ
        let ticks: Vec<String> = (0..8)
            .map(|i| fmt_tick(-10.3745 + 0.0004 * i as f64, 0.004))
            .collect();
        for w in ticks.windows(2) {
            assert_ne!(w[0], w[1], "{ticks:?}");
        }
        assert_eq!(fmt_tick(-10.3745, 0.004), "-10.3745");
        // wide axes keep three decimals, as fmt_num
        assert_eq!(fmt_tick(0.25, 1.0), fmt_num(0.25));
        assert_eq!(fmt_tick(2.5e-5, 1e-4), fmt_num(2.5e-5));
        assert_eq!(fmt_tick(1.0, 0.0), fmt_num(1.0));
    }

    #[test]
    fn step_points_hold_until_the_next_sample() {
        assert_eq!(
            step_points(&[(1.0, 0.1), (3.0, 0.5)]),
            vec![(1.0, 0.1), (3.0, 0.1), (3.0, 0.5)]
        );
    }
}
