//! The `genome` chart (parameter-space stages): a heatmap of the best candidate's genes, layer
//! groups × (model, filter set, parameter).

use super::style::{fmt_num, luminance, viridis};
use super::{Chart, PlotError, describe};
use crate::log::{CandidateTable, Params};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A gene column `GROUP.modelM[.FILTER].PARAM` split into its parts.
#[derive(Clone, Debug, PartialEq)]
struct GeneName {
    group: String,
    model: usize,
    filter: String,
    param: String,
}

impl GeneName {
    /// `None` for columns that are not genes (`method`, `x.3`, fixed columns).
    fn parse(col: &str) -> Option<GeneName> {
        let parts: Vec<&str> = col.split('.').collect();
        if parts.len() < 3 {
            return None;
        }
        let group = parts[0];
        let is_group = group == "embed"
            || group
                .strip_prefix('g')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let model = parts[1].strip_prefix("model")?.parse::<usize>().ok()?;
        if !is_group {
            return None;
        }
        Some(GeneName {
            group: group.to_string(),
            model,
            filter: parts[2..parts.len() - 1].join("."),
            param: parts[parts.len() - 1].to_string(),
        })
    }

    /// Row order: g0, g1, ..., g10, then embed.
    fn group_key(group: &str) -> (u8, usize, String) {
        match group
            .strip_prefix('g')
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => (0, n, String::new()),
            None => (1, 0, group.to_string()),
        }
    }
}

/// The best candidate's genes laid out as layer groups × (model, filter set, param).
pub(crate) struct GenomeHeatmap {
    title: String,
    rows: Vec<String>,
    /// (model, filter, param)
    cols: Vec<(usize, String, String)>,
    values: Vec<Vec<Option<f64>>>,
    subtitle: String,
}

const CELL_H_BIG: u32 = 36;
const CELL_H_SMALL: u32 = 24;

impl GenomeHeatmap {
    pub(crate) fn from_best(
        title: String,
        c: &CandidateTable,
    ) -> Result<Option<GenomeHeatmap>, PlotError> {
        let genes: Vec<(usize, GeneName)> = c
            .columns
            .genes()
            .iter()
            .enumerate()
            .filter_map(|(i, h)| GeneName::parse(h).map(|g| (i, g)))
            .collect();
        if genes.is_empty() {
            return Ok(None);
        }
        let Some((_, row, fitness)) = c.best() else {
            return Ok(None);
        };
        let mut rows: Vec<String> = Vec::new();
        let mut cols: Vec<(usize, String, String)> = Vec::new();
        for (_, g) in &genes {
            if !rows.contains(&g.group) {
                rows.push(g.group.clone());
            }
            let key = (g.model, g.filter.clone(), g.param.clone());
            if !cols.contains(&key) {
                cols.push(key);
            }
        }
        rows.sort_by_key(|g| GeneName::group_key(g));
        cols.sort_by_key(|k| k.0); // stable: filter sets and params keep their log order
        let mut values = vec![vec![None; cols.len()]; rows.len()];
        let (logged, method) = match &row.params {
            Params::Ps { genes, method } => (genes.as_slice(), method.as_str()),
            _ => (&[][..], ""),
        };
        for (i, g) in &genes {
            let Some(v) = logged.get(*i).copied().flatten() else {
                continue;
            };
            let r = rows.iter().position(|x| *x == g.group).expect("collected");
            let k = cols
                .iter()
                .position(|k| k.0 == g.model && k.1 == g.filter && k.2 == g.param)
                .expect("collected");
            values[r][k] = Some(v);
        }
        let mut subtitle = describe(row, fitness);
        if !method.is_empty() {
            subtitle.push_str(&format!(", method {method}"));
        }
        Ok(Some(GenomeHeatmap {
            title,
            rows,
            cols,
            values,
            subtitle,
        }))
    }

    fn has_filters(&self) -> bool {
        self.cols.iter().any(|c| !c.1.is_empty())
    }

    fn cell_w(&self) -> u32 {
        let longest = self
            .cols
            .iter()
            .map(|c| c.1.len().max(c.2.len()).max(7))
            .max()
            .unwrap_or(7) as u32;
        (longest * 9 + 14).max(76)
    }

    fn cell_h(&self) -> u32 {
        if self.rows.len() > 16 {
            CELL_H_SMALL
        } else {
            CELL_H_BIG
        }
    }

    fn header_h(&self) -> u32 {
        if self.has_filters() { 66 } else { 46 }
    }

    const LEFT: u32 = 90;
    const TOP: u32 = 78;
    const RIGHT: u32 = 130;
    const BOTTOM: u32 = 24;

    fn cells_size(&self) -> (u32, u32) {
        let w = Self::LEFT + self.cols.len() as u32 * self.cell_w() + Self::RIGHT;
        let h = Self::TOP + self.header_h() + self.rows.len() as u32 * self.cell_h() + Self::BOTTOM;
        (w.max(640), h.max(300))
    }
}

impl Chart for GenomeHeatmap {
    fn size(&self) -> (u32, u32) {
        self.cells_size()
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let title = self.title.as_str();
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let (w, _) = self.size();
        let center = Pos::new(HPos::Center, VPos::Center);
        let title_style = TextStyle::from(("sans-serif", 22).into_font()).pos(center);
        root.draw(&Text::new(
            title.to_string(),
            (w as i32 / 2, 22),
            title_style,
        ))
        .map_err(e)?;
        let sub_style = TextStyle::from(("sans-serif", 15).into_font()).pos(center);
        root.draw(&Text::new(
            self.subtitle.clone(),
            (w as i32 / 2, 50),
            sub_style,
        ))
        .map_err(e)?;

        let (lo, hi) = self
            .values
            .iter()
            .flatten()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(*v), b.max(*v))
            });
        let (lo, hi) = if lo > hi {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        };
        let cw = self.cell_w() as i32;
        let ch = self.cell_h() as i32;
        let x0 = GenomeHeatmap::LEFT as i32;
        let hy = GenomeHeatmap::TOP as i32;
        let y0 = hy + self.header_h() as i32;
        let head = TextStyle::from(("sans-serif", 14).into_font()).pos(center);
        let head_grey = TextStyle::from(("sans-serif", 13).into_font())
            .color(&RGBColor(90, 90, 90))
            .pos(center);
        for (k, (m, f, p)) in self.cols.iter().enumerate() {
            let cx = x0 + k as i32 * cw + cw / 2;
            root.draw(&Text::new(format!("model{m}"), (cx, hy + 10), head.clone()))
                .map_err(e)?;
            if self.has_filters() {
                let f = if f.is_empty() { "(all)" } else { f.as_str() };
                root.draw(&Text::new(f.to_string(), (cx, hy + 30), head_grey.clone()))
                    .map_err(e)?;
            }
            let py = hy + self.header_h() as i32 - 16;
            root.draw(&Text::new(p.clone(), (cx, py), head.clone()))
                .map_err(e)?;
            // A thicker separator where the model changes.
            if k > 0 && self.cols[k - 1].0 != *m {
                let x = x0 + k as i32 * cw;
                let y1 = y0 + self.rows.len() as i32 * ch;
                root.draw(&PathElement::new(
                    vec![(x, hy), (x, y1)],
                    BLACK.stroke_width(2),
                ))
                .map_err(e)?;
            }
        }
        let row_style = TextStyle::from(("sans-serif", 15).into_font())
            .pos(Pos::new(HPos::Right, VPos::Center));
        let cell_size = if ch >= CELL_H_BIG as i32 { 14 } else { 12 };
        for (r, group) in self.rows.iter().enumerate() {
            let y = y0 + r as i32 * ch;
            root.draw(&Text::new(
                group.clone(),
                (x0 - 10, y + ch / 2),
                row_style.clone(),
            ))
            .map_err(e)?;
            for (k, v) in self.values[r].iter().enumerate() {
                let x = x0 + k as i32 * cw;
                let (fill, text) = match v {
                    Some(v) => (viridis((v - lo) / (hi - lo)), format!("{v:.3}")),
                    None => (RGBColor(225, 225, 225), "–".to_string()),
                };
                root.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], fill.filled()))
                    .map_err(e)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cw, y + ch)],
                    WHITE.stroke_width(1),
                ))
                .map_err(e)?;
                let ink = if luminance(fill) > 0.5 { BLACK } else { WHITE };
                let style = TextStyle::from(("sans-serif", cell_size).into_font())
                    .color(&ink)
                    .pos(center);
                root.draw(&Text::new(text, (x + cw / 2, y + ch / 2), style))
                    .map_err(e)?;
            }
        }
        // Row axis title.
        let axis = TextStyle::from(("sans-serif", 13).into_font())
            .color(&RGBColor(90, 90, 90))
            .pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new("layer group", (x0 - 10, hy + 10), axis))
            .map_err(e)?;

        // Colour scale.
        let bx = x0 + self.cols.len() as i32 * cw + 30;
        let bh = (self.rows.len() as i32 * ch).max(120);
        let steps = 64;
        for s in 0..steps {
            let t0 = s as f64 / steps as f64;
            let ya = y0 + bh - ((s + 1) * bh) / steps;
            let yb = y0 + bh - (s * bh) / steps;
            root.draw(&Rectangle::new(
                [(bx, ya), (bx + 18, yb)],
                viridis(t0 + 0.5 / steps as f64).filled(),
            ))
            .map_err(e)?;
        }
        root.draw(&Rectangle::new(
            [(bx, y0), (bx + 18, y0 + bh)],
            BLACK.stroke_width(1),
        ))
        .map_err(e)?;
        let tick =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (t, v) in [(0.0, lo), (0.5, (lo + hi) / 2.0), (1.0, hi)] {
            let y = y0 + bh - (t * bh as f64) as i32;
            root.draw(&Text::new(fmt_num(v), (bx + 24, y), tick.clone()))
                .map_err(e)?;
        }
        root.draw(&Text::new(
            "value",
            (bx, hy + 10),
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(e)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gene_names_parse_groups_models_filters_params() {
        assert_eq!(
            GeneName::parse("g0.model1.weight"),
            Some(GeneName {
                group: "g0".into(),
                model: 1,
                filter: String::new(),
                param: "weight".into()
            })
        );
        let g = GeneName::parse("embed.model0.self_attn.density").unwrap();
        assert_eq!(
            (g.group.as_str(), g.filter.as_str()),
            ("embed", "self_attn")
        );
        assert_eq!(GeneName::parse("x.3"), None);
        assert_eq!(GeneName::parse("method"), None);
        assert_eq!(GeneName::parse("merge_ms"), None);
        assert_eq!(GeneName::parse("gx.model0.weight"), None);
    }
}
