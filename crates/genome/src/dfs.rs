//! Data-flow-space genomes: an indicator array over all layers of all models repeated `r`
//! times, plus an optional scaling matrix, decoded into a [`LayerPath`] (Sakana's DFS merge).

use crate::{GeneBounds, GenomeError};
use evomerge_models::{Hop, LayerPath};
use serde::{Deserialize, Serialize};

fn default_repeats() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_indicator_bounds() -> GeneBounds {
    GeneBounds::new(-1.0, 1.0)
}
fn default_scale_bounds() -> GeneBounds {
    GeneBounds::new(-1.0, 1.0)
}
fn default_sigma() -> f64 {
    0.1
}

/// The data-flow genome settings (the `[genome.dfs]` table of an experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DfsSpec {
    /// How many times the layer sequence of all models is repeated (r; the paper uses 3).
    #[serde(default = "default_repeats")]
    pub repeats: usize,
    /// Search the scaling matrix W = 1 + theta (M x M) too; off is the paper's ablation.
    #[serde(default = "default_true")]
    pub scales: bool,
    /// Bounds of the indicator genes (slot i is on when I_i > 0).
    #[serde(default = "default_indicator_bounds")]
    pub indicator_bounds: GeneBounds,
    /// Bounds of theta (W = 1 + theta).
    #[serde(default = "default_scale_bounds")]
    pub scale_bounds: GeneBounds,
    /// Initial step size; A's first-repeat layers start at 2 sigma (on with ~98% probability).
    #[serde(default = "default_sigma")]
    pub sigma0: f64,
    /// Where the other indicators start. The paper's 0 puts each of them on with 50%
    /// probability in the first generation (a first path is A's layers plus half of all the
    /// others); a negative start such as `-0.2` (-2 sigma0) keeps the first generations near A
    /// (each other slot on with ~2%), a local search around A for small budgets.
    #[serde(default)]
    pub off_start: f64,
}

impl Default for DfsSpec {
    fn default() -> Self {
        DfsSpec {
            repeats: default_repeats(),
            scales: true,
            indicator_bounds: default_indicator_bounds(),
            scale_bounds: default_scale_bounds(),
            sigma0: default_sigma(),
            off_start: 0.0,
        }
    }
}

/// A data-flow genome over models A (index 0: embeddings, head, first and last layer), B, ...
#[derive(Debug, Clone)]
pub struct DfsGenome {
    spec: DfsSpec,
    layers: Vec<usize>,
    offsets: Vec<usize>,
    total: usize,
}

impl DfsGenome {
    /// A genome over models with `layers[i]` decoder layers each (model 0 is A).
    pub fn new(spec: DfsSpec, layers: Vec<usize>) -> Result<DfsGenome, GenomeError> {
        if layers.is_empty() || layers[0] == 0 {
            return Err(GenomeError::Spec(
                "DFS needs model A with at least one layer".into(),
            ));
        }
        if spec.repeats == 0 {
            return Err(GenomeError::Spec("repeats must be at least 1".into()));
        }
        spec.indicator_bounds.check("indicator_bounds")?;
        spec.scale_bounds.check("scale_bounds")?;
        if !(spec.off_start >= spec.indicator_bounds.lo
            && spec.off_start <= spec.indicator_bounds.hi)
        {
            return Err(GenomeError::Spec(format!(
                "off_start {} must lie within indicator_bounds [{}, {}]",
                spec.off_start, spec.indicator_bounds.lo, spec.indicator_bounds.hi
            )));
        }
        if !(spec.sigma0 > 0.0) {
            return Err(GenomeError::Spec(format!(
                "sigma0 {} must be positive",
                spec.sigma0
            )));
        }
        let mut offsets = Vec::with_capacity(layers.len());
        let mut total = 0;
        for l in &layers {
            offsets.push(total);
            total += l;
        }
        Ok(DfsGenome {
            spec,
            layers,
            offsets,
            total,
        })
    }

    /// M, the number of layers of all models together.
    pub fn total_layers(&self) -> usize {
        self.total
    }

    /// T = M x r, the indicator length.
    pub fn slots(&self) -> usize {
        self.total * self.spec.repeats
    }

    /// Number of coordinates: T, plus M^2 with scales.
    pub fn dim(&self) -> usize {
        self.slots()
            + if self.spec.scales {
                self.total * self.total
            } else {
                0
            }
    }

    /// The global index of (model, layer) in the concatenated layer list.
    pub fn global(&self, model: usize, layer: usize) -> usize {
        self.offsets[model] + layer
    }

    fn local(&self, global: usize) -> (usize, usize) {
        let m = self
            .offsets
            .iter()
            .rposition(|o| *o <= global)
            .expect("offset 0 exists");
        (m, global - self.offsets[m])
    }

    /// Gene names: `I{slot}.m{model}.l{layer}` and `W{from}.{to}`.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = (0..self.slots())
            .map(|i| {
                let (m, l) = self.local(i % self.total);
                format!("I{i}.m{m}.l{l}")
            })
            .collect();
        if self.spec.scales {
            for i in 0..self.total {
                for j in 0..self.total {
                    n.push(format!("W{i}.{j}"));
                }
            }
        }
        n
    }

    /// Bounds per coordinate.
    pub fn bounds(&self) -> (Vec<f64>, Vec<f64>) {
        let mut lo = vec![self.spec.indicator_bounds.lo; self.slots()];
        let mut hi = vec![self.spec.indicator_bounds.hi; self.slots()];
        if self.spec.scales {
            lo.extend(std::iter::repeat_n(
                self.spec.scale_bounds.lo,
                self.total * self.total,
            ));
            hi.extend(std::iter::repeat_n(
                self.spec.scale_bounds.hi,
                self.total * self.total,
            ));
        }
        (lo, hi)
    }

    /// The paper's start: indicators 0 (`off_start`) except A's layers in the first repeat at
    /// 2 sigma (clamped to the bounds), theta 0 (every scale 1).
    pub fn initial(&self) -> Vec<f64> {
        let mut x = vec![0.0; self.dim()];
        for v in x.iter_mut().take(self.slots()) {
            *v = self.spec.off_start;
        }
        let on = (2.0 * self.spec.sigma0).min(self.spec.indicator_bounds.hi);
        for v in x.iter_mut().take(self.layers[0]) {
            *v = on;
        }
        let (lo, hi) = self.bounds();
        x.iter()
            .zip(lo.iter().zip(&hi))
            .map(|(v, (l, h))| v.clamp(*l, *h))
            .collect()
    }

    /// The initial step size.
    pub fn sigma0(&self) -> f64 {
        self.spec.sigma0
    }

    /// Decode a vector into a path: the slots that are on (I_i > 0), in order, as layers
    /// `i mod M`, with A's first layer put at the start and A's last layer at the end unless
    /// the path already starts/ends with them (so the initial vector decodes to A itself). The
    /// input of each hop after the first is scaled by `W[prev][cur] = 1 + theta`.
    pub fn decode(&self, x: &[f64]) -> Result<LayerPath, GenomeError> {
        if x.len() != self.dim() {
            return Err(GenomeError::WrongLength {
                expected: self.dim(),
                got: x.len(),
            });
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(GenomeError::NotFinite {
                index: i,
                name: self.names()[i].clone(),
            });
        }
        let first = 0usize;
        let last = self.layers[0] - 1;
        let mut order: Vec<usize> = (0..self.slots())
            .filter(|i| x[*i] > 0.0)
            .map(|i| i % self.total)
            .collect();
        if order.first() != Some(&first) {
            order.insert(0, first);
        }
        if order.last() != Some(&last) {
            order.push(last);
        }
        let theta = &x[self.slots()..];
        let mut hops = Vec::with_capacity(order.len());
        let mut prev: Option<usize> = None;
        for g in order {
            let scale = match (prev, self.spec.scales) {
                (Some(p), true) => 1.0 + theta[p * self.total + g],
                _ => 1.0,
            };
            let (model, layer) = self.local(g);
            hops.push(Hop {
                model,
                layer,
                scale: scale as f32,
            });
            prev = Some(g);
        }
        Ok(LayerPath { hops })
    }
}
