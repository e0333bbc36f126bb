//! The search box: one `[lower, upper]` interval per coordinate, and how samples are kept in it.

use serde::{Deserialize, Serialize};

use crate::SearchError;

/// How many times a sample outside the box is redrawn before it is clipped
/// (`n_max_resampling` of the `cmaes` library / Optuna).
pub const MAX_RESAMPLING: usize = 100;

/// Per-coordinate bounds `lower[i] <= x[i] <= upper[i]`.
///
/// A bound may be infinite (no bound on that side). Finite bounds are required only where a
/// feature needs them: uniform random search and uniform IPOP restart points use the box where
/// both sides are finite and fall back to a Gaussian around `x0` elsewhere.
///
/// In JSON an infinite bound is written as `null` (JSON has no infinity):
/// `{"lower": [0.0, null], "upper": [1.0, null]}` means `x[0]` in `[0, 1]` and `x[1]` free.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BoundsRepr", into = "BoundsRepr")]
pub struct Bounds {
    lower: Vec<f64>,
    upper: Vec<f64>,
    /// Per coordinate, the interval where the boundary transform is the identity
    /// (`[lower + al, upper - au]`, infinite on an open side); derived, not serialized.
    linear: Vec<(f64, f64)>,
}

/// Serialized form of [`Bounds`]: `None` stands for an infinite bound (JSON has no infinity).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoundsRepr {
    lower: Vec<Option<f64>>,
    upper: Vec<Option<f64>>,
}

impl From<Bounds> for BoundsRepr {
    fn from(b: Bounds) -> Self {
        let finite = |v: &f64| v.is_finite().then_some(*v);
        BoundsRepr {
            lower: b.lower.iter().map(finite).collect(),
            upper: b.upper.iter().map(finite).collect(),
        }
    }
}

impl TryFrom<BoundsRepr> for Bounds {
    type Error = SearchError;
    fn try_from(r: BoundsRepr) -> Result<Self, SearchError> {
        Bounds::new(
            r.lower
                .into_iter()
                .map(|v| v.unwrap_or(f64::NEG_INFINITY))
                .collect(),
            r.upper
                .into_iter()
                .map(|v| v.unwrap_or(f64::INFINITY))
                .collect(),
        )
    }
}

impl Bounds {
    /// Bounds from lower and upper vectors of the same non-zero length, `lower[i] < upper[i]`.
    pub fn new(lower: Vec<f64>, upper: Vec<f64>) -> Result<Self, SearchError> {
        if lower.len() != upper.len() {
            return Err(SearchError::BoundsLength {
                lower: lower.len(),
                upper: upper.len(),
            });
        }
        if lower.is_empty() {
            return Err(SearchError::EmptyBounds);
        }
        for (index, (&lo, &hi)) in lower.iter().zip(&upper).enumerate() {
            if lo.is_nan() || hi.is_nan() {
                return Err(SearchError::NanBound { index });
            }
            if lo >= hi {
                return Err(SearchError::InvertedBounds {
                    index,
                    lower: lo,
                    upper: hi,
                });
            }
        }
        let linear = lower
            .iter()
            .zip(&upper)
            .map(|(&lb, &ub)| {
                let (al, au) = margins(lb, ub);
                (
                    if lb.is_finite() { lb + al } else { lb },
                    if ub.is_finite() { ub - au } else { ub },
                )
            })
            .collect();
        Ok(Bounds {
            lower,
            upper,
            linear,
        })
    }

    /// Bounds from `(lower, upper)` pairs.
    pub fn from_pairs(pairs: &[(f64, f64)]) -> Result<Self, SearchError> {
        Bounds::new(
            pairs.iter().map(|p| p.0).collect(),
            pairs.iter().map(|p| p.1).collect(),
        )
    }

    /// The same interval `[lower, upper]` for each of `dim` coordinates.
    pub fn uniform(dim: usize, lower: f64, upper: f64) -> Result<Self, SearchError> {
        Bounds::new(vec![lower; dim], vec![upper; dim])
    }

    /// No bound on any of `dim` coordinates.
    pub fn unbounded(dim: usize) -> Result<Self, SearchError> {
        Bounds::uniform(dim, f64::NEG_INFINITY, f64::INFINITY)
    }

    /// Number of coordinates.
    pub fn dim(&self) -> usize {
        self.lower.len()
    }

    /// Lower bounds (`-inf` where unbounded).
    pub fn lower(&self) -> &[f64] {
        &self.lower
    }

    /// Upper bounds (`+inf` where unbounded).
    pub fn upper(&self) -> &[f64] {
        &self.upper
    }

    /// Whether both sides of coordinate `i` are finite.
    pub fn is_finite(&self, i: usize) -> bool {
        self.lower[i].is_finite() && self.upper[i].is_finite()
    }

    /// Whether no coordinate has a finite bound (the box is all of R^n).
    pub fn is_unbounded(&self) -> bool {
        self.lower.iter().all(|v| v.is_infinite()) && self.upper.iter().all(|v| v.is_infinite())
    }

    /// Whether `x` lies in the closed box.
    pub fn contains(&self, x: &[f64]) -> bool {
        x.iter()
            .zip(self.lower.iter().zip(&self.upper))
            .all(|(v, (lo, hi))| *v >= *lo && *v <= *hi)
    }

    /// Clips `x` into the box in place.
    pub fn clip(&self, x: &mut [f64]) {
        for (v, (lo, hi)) in x.iter_mut().zip(self.lower.iter().zip(&self.upper)) {
            *v = v.clamp(*lo, *hi);
        }
    }

    /// Checks that `x0` has the right dimension, is finite and lies inside the box.
    pub fn check_x0(&self, x0: &[f64]) -> Result<(), SearchError> {
        if x0.len() != self.dim() {
            return Err(SearchError::DimensionMismatch {
                what: "x0",
                expected: self.dim(),
                got: x0.len(),
            });
        }
        for (index, &value) in x0.iter().enumerate() {
            if !value.is_finite() {
                return Err(SearchError::NonFiniteX0 { index, value });
            }
            let (lower, upper) = (self.lower[index], self.upper[index]);
            if value < lower || value > upper {
                return Err(SearchError::X0OutOfBounds {
                    index,
                    value,
                    lower,
                    upper,
                });
            }
        }
        Ok(())
    }

    fn margins(&self, i: usize) -> (f64, f64) {
        margins(self.lower[i], self.upper[i])
    }

    /// pycma's `BoxConstraintsLinQuadTransformation` for one coordinate: maps an unbounded
    /// genotype value to a value in `[lower, upper]`. The identity in the interior, quadratic in
    /// margins of width `al`/`au` at each finite bound, periodic (mirrored) beyond.
    pub fn transform_coordinate(&self, i: usize, x: f64) -> f64 {
        let (lb, ub) = (self.lower[i], self.upper[i]);
        let (al, au) = self.margins(i);
        match (lb.is_finite(), ub.is_finite()) {
            (false, false) => x,
            (true, true) => {
                let mut x = x;
                let width = ub - lb;
                if x < lb - 2.0 * al - width / 2.0 || x > ub + 2.0 * au + width / 2.0 {
                    let period = 2.0 * (width + al + au);
                    let start = lb - 2.0 * al - width / 2.0;
                    x -= period * ((x - start) / period).floor();
                }
                if x > ub + au {
                    x -= 2.0 * (x - ub - au);
                }
                if x < lb - al {
                    x += 2.0 * (lb - al - x);
                }
                let y = if x < lb + al {
                    lb + (x - (lb - al)).powi(2) / 4.0 / al
                } else if x < ub - au {
                    x
                } else {
                    ub - (x - (ub + au)).powi(2) / 4.0 / au
                };
                y.clamp(lb, ub)
            }
            (true, false) => {
                let x = if x < lb - al { 2.0 * (lb - al) - x } else { x };
                let y = if x < lb + al {
                    lb + (x - (lb - al)).powi(2) / 4.0 / al
                } else {
                    x
                };
                y.max(lb)
            }
            (false, true) => {
                let x = if x > ub + au { 2.0 * (ub + au) - x } else { x };
                let y = if x > ub - au {
                    ub - (x - (ub + au)).powi(2) / 4.0 / au
                } else {
                    x
                };
                y.min(ub)
            }
        }
    }

    /// Inverse of [`Bounds::transform_coordinate`] on `[lower, upper]` (the branch nearest the box).
    pub fn inverse_transform_coordinate(&self, i: usize, y: f64) -> f64 {
        let (lb, ub) = (self.lower[i], self.upper[i]);
        let (al, au) = self.margins(i);
        if lb.is_finite() && y < lb + al {
            (lb - al) + 2.0 * (al * (y - lb).max(0.0)).sqrt()
        } else if ub.is_finite() && y > ub - au {
            (ub + au) - 2.0 * (au * (ub - y).max(0.0)).sqrt()
        } else {
            y
        }
    }

    /// Applies [`Bounds::transform_coordinate`] to every coordinate.
    pub fn transform(&self, genotype: &[f64]) -> Vec<f64> {
        genotype
            .iter()
            .zip(&self.linear)
            .enumerate()
            .map(|(i, (&x, &(lo, hi)))| {
                // fast path: the identity region (same value as the full formula)
                if x >= lo && x <= hi {
                    x
                } else {
                    self.transform_coordinate(i, x)
                }
            })
            .collect()
    }

    /// Applies [`Bounds::inverse_transform_coordinate`] to every coordinate.
    pub fn inverse_transform(&self, phenotype: &[f64]) -> Vec<f64> {
        phenotype
            .iter()
            .enumerate()
            .map(|(i, &y)| self.inverse_transform_coordinate(i, y))
            .collect()
    }
}

/// Widths of pycma's quadratic margins `(al, au)` of an interval:
/// `min((ub - lb)/2, (1 + |b|)/20)` on each finite side (+inf on an open side).
fn margins(lb: f64, ub: f64) -> (f64, f64) {
    let half = (ub - lb) / 2.0; // +inf when a side is open
    (
        half.min((1.0 + lb.abs()) / 20.0),
        half.min((1.0 + ub.abs()) / 20.0),
    )
}

/// How the CMA-ES family keeps candidates inside the bounds.
///
/// The default is [`BoundaryMode::Transform`]: with an optimum on the boundary (a density of
/// exactly 1, a weight of exactly 0) full CMA-ES with resample-and-clip loses its step-size
/// control — the truncated samples drive C towards singular and sigma up — exactly as the
/// `cmaes` library does (see the test `bounded_optimum_on_the_boundary`); the transform does
/// not have that problem. Choose `resample-clip` to reproduce Optuna-based results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundaryMode {
    /// The `cmaes` library / Optuna way: redraw a sample outside the box up to
    /// [`MAX_RESAMPLING`] times, then clip the last draw. The update uses the returned
    /// (possibly clipped) point. The mean is never repaired (it stays a convex combination of
    /// feasible points).
    ResampleClip,
    /// pycma's `BoundTransform`: the distribution lives in an unbounded genotype space; each
    /// candidate is the linear-quadratic periodic transform of its genotype (identity inside
    /// the box away from the margins). The initial mean is the inverse transform of `x0`.
    #[default]
    Transform,
}

impl BoundaryMode {
    /// Draws one candidate. `sample` writes a fresh genotype into its argument. Returns the
    /// genotype the update must use; [`BoundaryMode::phenotype`] gives the point to evaluate.
    pub(crate) fn draw(self, bounds: &Bounds, mut sample: impl FnMut(&mut [f64])) -> Vec<f64> {
        let mut x = vec![0.0; bounds.dim()];
        match self {
            BoundaryMode::Transform => sample(&mut x),
            BoundaryMode::ResampleClip => {
                if bounds.is_unbounded() {
                    sample(&mut x);
                    return x;
                }
                for _ in 0..MAX_RESAMPLING {
                    sample(&mut x);
                    if bounds.contains(&x) {
                        return x;
                    }
                }
                sample(&mut x);
                bounds.clip(&mut x);
            }
        }
        x
    }

    /// The point to evaluate for a genotype.
    pub(crate) fn phenotype(self, bounds: &Bounds, genotype: &[f64]) -> Vec<f64> {
        match self {
            BoundaryMode::ResampleClip => genotype.to_vec(),
            BoundaryMode::Transform => bounds.transform(genotype),
        }
    }

    /// The genotype of a point inside the box (used for the initial mean).
    pub(crate) fn genotype(self, bounds: &Bounds, phenotype: &[f64]) -> Vec<f64> {
        match self {
            BoundaryMode::ResampleClip => phenotype.to_vec(),
            BoundaryMode::Transform => bounds.inverse_transform(phenotype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bounds_are_errors() {
        assert!(matches!(
            Bounds::new(vec![], vec![]),
            Err(SearchError::EmptyBounds)
        ));
        assert!(matches!(
            Bounds::new(vec![0.0], vec![1.0, 2.0]),
            Err(SearchError::BoundsLength { lower: 1, upper: 2 })
        ));
        assert!(matches!(
            Bounds::new(vec![0.0, 3.0], vec![1.0, 2.0]),
            Err(SearchError::InvertedBounds { index: 1, .. })
        ));
        assert!(matches!(
            Bounds::new(vec![0.0, f64::NAN], vec![1.0, 2.0]),
            Err(SearchError::NanBound { index: 1 })
        ));
        let b = Bounds::uniform(2, 0.0, 1.0).unwrap();
        assert!(matches!(
            b.check_x0(&[0.5, 1.5]),
            Err(SearchError::X0OutOfBounds { index: 1, .. })
        ));
        assert!(matches!(
            b.check_x0(&[0.5]),
            Err(SearchError::DimensionMismatch {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            b.check_x0(&[f64::NAN, 0.5]),
            Err(SearchError::NonFiniteX0 { index: 0, .. })
        ));
        let msg = Bounds::new(vec![2.0], vec![1.0]).unwrap_err().to_string();
        assert!(msg.contains("coordinate 0") && msg.contains("lower bound 2"));
    }

    #[test]
    fn infinite_bounds_round_trip_through_json() {
        let b = Bounds::new(vec![0.0, f64::NEG_INFINITY], vec![1.0, 5.0]).unwrap();
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, r#"{"lower":[0.0,null],"upper":[1.0,5.0]}"#);
        let back: Bounds = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
        assert!(serde_json::from_str::<Bounds>(r#"{"lower":[2.0],"upper":[1.0]}"#).is_err());
    }

    #[test]
    fn transform_maps_everything_into_the_box_and_inverts_inside() {
        let b = Bounds::new(
            vec![0.0, -1.0, f64::NEG_INFINITY, 2.0],
            vec![1.0, 10.0, 3.0, f64::INFINITY],
        )
        .unwrap();
        for k in -400..=400 {
            let x = f64::from(k) * 0.173;
            for i in 0..4 {
                let y = b.transform_coordinate(i, x);
                assert!(y >= b.lower()[i] && y <= b.upper()[i], "i={i} x={x} y={y}");
            }
        }
        // the vector form (with its identity fast path) equals the coordinate formula
        for k in -400..=400 {
            let x = [f64::from(k) * 0.0173; 4];
            let v = b.transform(&x);
            for i in 0..4 {
                assert_eq!(v[i].to_bits(), b.transform_coordinate(i, x[i]).to_bits());
            }
        }
        // identity in the interior, away from the margins
        assert_eq!(b.transform_coordinate(0, 0.5), 0.5);
        assert_eq!(b.transform_coordinate(2, -100.0), -100.0);
        // inverse is a right inverse on the box
        for k in 0..=100 {
            let t = f64::from(k) / 100.0;
            for i in 0..4 {
                let lo = b.lower()[i].max(-5.0);
                let hi = b.upper()[i].min(8.0);
                let y = lo + t * (hi - lo);
                let back = b.transform_coordinate(i, b.inverse_transform_coordinate(i, y));
                assert!((back - y).abs() < 1e-12, "i={i} y={y} back={back}");
            }
        }
        // continuity at the margin edges of [0, 1]: al = 0.05, au = 0.1
        let eps = 1e-9;
        for edge in [-0.05, 0.05, 0.9, 1.1] {
            let d = b.transform_coordinate(0, edge + eps) - b.transform_coordinate(0, edge - eps);
            assert!(d.abs() < 1e-8, "jump at {edge}: {d}");
        }
    }
}
