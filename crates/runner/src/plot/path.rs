//! The `path` chart (data-flow stages): the best candidate's layer path, layer per hop,
//! coloured by model, scales ≠ 1 written.

use super::style::{int_label, series_color};
use super::{Chart, PlotError, describe};
use crate::log::{CandidateTable, Params};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One hop of a layer path: layer `layer` of model `model`, its input scaled by `scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Hop {
    pub(crate) model: usize,
    pub(crate) layer: usize,
    pub(crate) scale: f64,
}

/// Parses a path written `m:l*scale` hop after hop (`*scale` optional, 1 when absent).
pub(crate) fn parse_path(text: &str) -> Result<Vec<Hop>, String> {
    text.split_whitespace()
        .map(|tok| {
            let (ml, scale) = match tok.split_once('*') {
                Some((ml, s)) => (
                    ml,
                    s.parse::<f64>()
                        .map_err(|_| format!("hop '{tok}': scale '{s}' is not a number"))?,
                ),
                None => (tok, 1.0),
            };
            let (m, l) = ml
                .split_once(':')
                .ok_or_else(|| format!("hop '{tok}' is not written model:layer*scale"))?;
            let model = m
                .parse()
                .map_err(|_| format!("hop '{tok}': model '{m}' is not an index"))?;
            let layer = l
                .parse()
                .map_err(|_| format!("hop '{tok}': layer '{l}' is not an index"))?;
            Ok(Hop {
                model,
                layer,
                scale,
            })
        })
        .collect()
}

/// The best candidate's layer path.
pub(crate) struct PathChart {
    title: String,
    pub(crate) hops: Vec<Hop>,
    models: Vec<String>,
    subtitle: String,
}

impl PathChart {
    pub(crate) fn from_best(
        title: String,
        c: &CandidateTable,
        models: Vec<String>,
    ) -> Result<Option<PathChart>, PlotError> {
        if !matches!(c.columns, crate::log::CandidateColumns::Dfs { .. }) {
            return Ok(None);
        }
        let Some((line, row, fitness)) = c.best() else {
            return Ok(None);
        };
        let text = match &row.params {
            Params::Dfs { path, .. } => path.as_str(),
            _ => "",
        };
        let hops = parse_path(text).map_err(|m| PlotError::Invalid {
            path: c.path.clone(),
            message: format!("line {line}, column path: {m}"),
        })?;
        if hops.is_empty() {
            return Ok(None);
        }
        Ok(Some(PathChart {
            title,
            subtitle: format!("{}, {} hops", describe(row, fitness), hops.len()),
            hops,
            models,
        }))
    }
}

impl Chart for PathChart {
    fn size(&self) -> (u32, u32) {
        ((200 + 26 * self.hops.len() as u32).clamp(1000, 3200), 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let title = self.title.as_str();
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let n = self.hops.len();
        let max_layer = self.hops.iter().map(|h| h.layer).max().unwrap_or(0);
        let (upper, lower) = root.split_vertically(58);
        let center = Pos::new(HPos::Center, VPos::Center);
        let w = upper.dim_in_pixel().0 as i32;
        upper
            .draw(&Text::new(
                title.to_string(),
                (w / 2, 20),
                TextStyle::from(("sans-serif", 22).into_font()).pos(center),
            ))
            .map_err(e)?;
        upper
            .draw(&Text::new(
                self.subtitle.clone(),
                (w / 2, 46),
                TextStyle::from(("sans-serif", 15).into_font()).pos(center),
            ))
            .map_err(e)?;
        let mut chart = ChartBuilder::on(&lower)
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.7..(n as f64 - 0.3), -0.8..(max_layer as f64 + 1.0))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("hop")
            .y_desc("layer (of its model)")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(n.clamp(2, 25))
            .y_labels((max_layer + 2).clamp(2, 20))
            .x_label_formatter(&|x| int_label(*x))
            .y_label_formatter(&|y| int_label(*y))
            .draw()
            .map_err(e)?;
        let pts: Vec<(f64, f64)> = self
            .hops
            .iter()
            .enumerate()
            .map(|(i, h)| (i as f64, h.layer as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.clone(),
                RGBColor(150, 150, 150).stroke_width(1),
            ))
            .map_err(e)?;
        let n_models = self.hops.iter().map(|h| h.model).max().unwrap_or(0) + 1;
        let size = if n > 80 { 4 } else { 6 };
        for m in 0..n_models {
            let color = series_color(m);
            let mine: Vec<(f64, f64)> = self
                .hops
                .iter()
                .zip(&pts)
                .filter(|(h, _)| h.model == m)
                .map(|(_, p)| *p)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let label = match self.models.get(m).filter(|s| !s.is_empty()) {
                Some(name) => format!("model {m} ({name})"),
                None => format!("model {m}"),
            };
            let fill = color.filled();
            match m % 4 {
                0 => chart
                    .draw_series(mine.iter().map(|&p| Circle::new(p, size, fill)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, fill)),
                1 => chart
                    .draw_series(mine.iter().map(|&p| TriangleMarker::new(p, size + 1, fill)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, fill)),
                2 => chart
                    .draw_series(mine.iter().map(|&p| {
                        EmptyElement::at(p) + Rectangle::new([(-size, -size), (size, size)], fill)
                    }))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| Rectangle::new([(x + 5, y - 5), (x + 15, y + 5)], fill)),
                _ => chart
                    .draw_series(
                        mine.iter()
                            .map(|&p| Cross::new(p, size, color.stroke_width(2))),
                    )
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| Cross::new((x + 10, y), 5, color.stroke_width(2))),
            };
        }
        // Scales ≠ 1, centred above (even hops) or below (odd hops) their marker.
        let above = TextStyle::from(("sans-serif", 12).into_font())
            .color(&RGBColor(60, 60, 60))
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let below = above.clone().pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(
                self.hops
                    .iter()
                    .zip(&pts)
                    .enumerate()
                    .filter(|(_, (h, _))| (h.scale - 1.0).abs() >= 5e-4)
                    .map(|(i, (h, p))| {
                        let (dy, style) = if i % 2 == 0 {
                            (-(size + 3), above.clone())
                        } else {
                            (size + 3, below.clone())
                        };
                        EmptyElement::at(*p) + Text::new(format!("×{:.3}", h.scale), (0, dy), style)
                    }),
            )
            .map_err(e)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_with_and_without_scales() {
        let p = parse_path("0:0*1.000 1:3*0.900 0:2").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[1].model, p[1].layer, p[1].scale), (1, 3, 0.9));
        assert_eq!(p[2].scale, 1.0);
        assert!(parse_path("0-1").unwrap_err().contains("0-1"));
    }
}
