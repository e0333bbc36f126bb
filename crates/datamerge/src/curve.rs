//! Linear interpolation curves between two models, and the loss barrier.

use crate::Result;
use evomerge_data::Dataset;
use evomerge_models::MlpWeights;
use evomerge_models::mlp::{Evaluation, evaluate};

/// One point of an interpolation curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Position: `(1 - t) A + t B`.
    pub t: f64,
    pub eval: Evaluation,
}

/// Evaluate `(1 - t) a + t b` at `points` evenly spaced `t` in `[0, 1]` (the paper uses 25).
pub fn interpolate(
    a: &MlpWeights,
    b: &MlpWeights,
    data: &Dataset,
    points: usize,
) -> Result<Vec<CurvePoint>> {
    a.check_same_shape(b, "model A", "model B")?;
    let points = points.max(2);
    (0..points)
        .map(|k| -> Result<CurvePoint> {
            let t = k as f64 / (points - 1) as f64;
            let eval = evaluate(&MlpWeights::lerp(a, b, t as f32), data)?;
            Ok(CurvePoint { t, eval })
        })
        .collect()
}

/// The loss barrier `max_t L(t) - (L(0) + L(1)) / 2` (Ainsworth et al.'s definition).
pub fn barrier(curve: &[CurvePoint]) -> f64 {
    let ends = (curve[0].eval.loss + curve[curve.len() - 1].eval.loss) / 2.0;
    curve
        .iter()
        .map(|p| p.eval.loss)
        .fold(f64::NEG_INFINITY, f64::max)
        - ends
}

/// The accuracy barrier `(acc(0) + acc(1)) / 2 - min_t acc(t)`.
pub fn accuracy_barrier(curve: &[CurvePoint]) -> f64 {
    let ends = (curve[0].eval.accuracy + curve[curve.len() - 1].eval.accuracy) / 2.0;
    ends - curve
        .iter()
        .map(|p| p.eval.accuracy)
        .fold(f64::INFINITY, f64::min)
}

/// The point nearest `t = 0.5`.
pub fn midpoint(curve: &[CurvePoint]) -> CurvePoint {
    *curve
        .iter()
        .min_by(|x, y| (x.t - 0.5).abs().total_cmp(&(y.t - 0.5).abs()))
        .expect("non-empty curve")
}
