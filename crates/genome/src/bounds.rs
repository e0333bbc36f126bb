//! [`GeneBounds`]: the search range of a group of genes, written `[lo, hi]` in an experiment.

use crate::GenomeError;
use serde::{Deserialize, Serialize};

/// The search range `[lo, hi]` of a group of genes (PS weights or densities, DFS indicators or
/// scales). In TOML it is a two-number array, `weight_bounds = [0.0, 1.0]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 2]", into = "[f64; 2]")]
pub struct GeneBounds {
    pub lo: f64,
    pub hi: f64,
}

impl GeneBounds {
    pub const fn new(lo: f64, hi: f64) -> GeneBounds {
        GeneBounds { lo, hi }
    }

    /// Finite with `lo < hi`, else an error naming the setting (`what`, e.g. `weight_bounds`).
    pub fn check(&self, what: &str) -> Result<(), GenomeError> {
        if !(self.lo < self.hi) || !self.lo.is_finite() || !self.hi.is_finite() {
            return Err(GenomeError::Spec(format!(
                "{what} [{}, {}] must be finite with lower < upper",
                self.lo, self.hi
            )));
        }
        Ok(())
    }

    /// `v` clamped into the range.
    pub fn clamp(&self, v: f64) -> f64 {
        v.clamp(self.lo, self.hi)
    }
}

impl From<[f64; 2]> for GeneBounds {
    fn from([lo, hi]: [f64; 2]) -> GeneBounds {
        GeneBounds { lo, hi }
    }
}

impl From<GeneBounds> for [f64; 2] {
    fn from(b: GeneBounds) -> [f64; 2] {
        [b.lo, b.hi]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_read_as_arrays_and_are_checked() {
        #[derive(Deserialize, Serialize)]
        struct T {
            b: GeneBounds,
        }
        let t: T = toml::from_str("b = [-1.0, 2.5]").unwrap();
        assert_eq!(t.b, GeneBounds::new(-1.0, 2.5));
        assert_eq!(toml::to_string(&t).unwrap().trim(), "b = [-1.0, 2.5]");
        assert!(t.b.check("b").is_ok());
        let e = GeneBounds::new(1.0, 1.0).check("scale_bounds").unwrap_err();
        assert!(e.to_string().contains("scale_bounds [1, 1]"), "{e}");
        assert!(GeneBounds::new(0.0, f64::INFINITY).check("x").is_err());
        assert!(toml::from_str::<T>("b = [1.0]").is_err());
    }
}
