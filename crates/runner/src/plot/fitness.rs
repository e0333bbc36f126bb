//! The `fitness` chart: search fitness vs evaluations — every candidate, the best so far, the
//! generation median with its q25–q75 band, validation scores.

use super::Chart;
use super::style::{fitness_axes, padded_range, series_color, step_points};
use crate::log::{CandidateTable, GenerationRow};
use plotters::coord::Shift;
use plotters::prelude::*;

/// The series of the fitness chart.
pub(crate) struct FitnessData {
    pub(crate) title: String,
    points: Vec<(f64, f64)>,
    failed: usize,
    best: Vec<(f64, f64)>,
    median: Vec<(f64, f64)>,
    band: Vec<(f64, f64, f64)>,
    validation: Vec<(f64, f64)>,
}

impl FitnessData {
    pub(crate) fn collect(
        title: String,
        cands: Option<&CandidateTable>,
        gens: Option<&[GenerationRow]>,
    ) -> FitnessData {
        let mut d = FitnessData {
            title,
            points: Vec::new(),
            failed: 0,
            best: Vec::new(),
            median: Vec::new(),
            band: Vec::new(),
            validation: Vec::new(),
        };
        if let Some(c) = cands {
            for (pos, row) in c.rows.iter().enumerate() {
                match row.row.as_ref().ok().and_then(|r| r.valid_fitness()) {
                    Some(f) => d.points.push(((pos + 1) as f64, f)),
                    None => d.failed += 1,
                }
            }
        }
        for g in gens.unwrap_or(&[]) {
            let x = g.evaluations as f64;
            if let Some(b) = g.best {
                d.best.push((x, b));
            }
            if let Some(m) = g.median {
                d.median.push((x, m));
            }
            if let (Some(lo), Some(hi)) = (g.q25, g.q75) {
                d.band.push((x, lo, hi));
            }
            if let Some(v) = g.validation {
                d.validation.push((x, v));
            }
        }
        d
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty() && self.best.is_empty() && self.median.is_empty()
    }
}

impl Chart for FitnessData {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let title = self.title.as_str();
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let ys = self
            .points
            .iter()
            .map(|p| p.1)
            .chain(self.best.iter().map(|p| p.1))
            .chain(self.median.iter().map(|p| p.1))
            .chain(self.band.iter().flat_map(|b| [b.1, b.2]))
            .chain(self.validation.iter().map(|p| p.1));
        let (y0, y1) = padded_range(ys, 0.06).ok_or("no finite fitness to draw")?;
        let x_max = self
            .points
            .iter()
            .map(|p| p.0)
            .chain(self.best.iter().map(|p| p.0))
            .chain(self.median.iter().map(|p| p.0))
            .fold(1.0_f64, f64::max);
        let mut chart = fitness_axes(root, title, x_max, (y0, y1), "fitness (search split)")?;
        let blue = series_color(0);
        if self.band.len() > 1 {
            let mut poly: Vec<(f64, f64)> = self.band.iter().map(|b| (b.0, b.2)).collect();
            poly.extend(self.band.iter().rev().map(|b| (b.0, b.1)));
            let fill = blue.mix(0.18);
            chart
                .draw_series(std::iter::once(Polygon::new(poly, fill.filled())))
                .map_err(e)?
                .label("generation q25–q75")
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], fill.filled()));
        }
        if !self.points.is_empty() {
            let grey = RGBColor(110, 110, 110).mix(0.6);
            let label = if self.failed > 0 {
                format!("candidates ({} failed, not shown)", self.failed)
            } else {
                "candidates".to_string()
            };
            let r = if self.points.len() > 2000 { 2 } else { 3 };
            chart
                .draw_series(
                    self.points
                        .iter()
                        .map(|&p| Circle::new(p, r, grey.filled())),
                )
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 3, grey.filled()));
        }
        if !self.median.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    self.median.iter().copied(),
                    blue.stroke_width(2),
                ))
                .map_err(e)?
                .label("generation median")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
                });
        }
        if !self.best.is_empty() {
            let red = series_color(1);
            chart
                .draw_series(LineSeries::new(
                    step_points(&self.best),
                    red.stroke_width(3),
                ))
                .map_err(e)?
                .label("best so far")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(3))
                });
        }
        if !self.validation.is_empty() {
            let green = series_color(2);
            chart
                .draw_series(
                    self.validation
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 7, green.filled())),
                )
                .map_err(e)?
                .label("validation of best so far")
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, green.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}
