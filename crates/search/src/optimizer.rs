//! The ask/tell trait every optimizer implements, and the bookkeeping they share.

use serde::{Deserialize, Serialize};

use crate::{SearchError, Termination};

/// An ask/tell black-box optimizer that **minimises**.
///
/// One generation is `ask()` (a batch of candidate vectors, each inside the bounds) followed
/// by `tell(fitness)` with one entry per candidate, in the same order. `None`, NaN and ±inf
/// mark a failed candidate: it ranks after every valid one and never becomes the best.
///
/// `ask` is idempotent until `tell`: asking again returns the same batch and draws no random
/// numbers, so a run that saved its state between `ask` and `tell` re-asks the same batch.
pub trait Optimizer {
    /// Number of coordinates.
    fn dim(&self) -> usize;

    /// Number of candidates the next `ask` returns (IPOP changes it at a restart).
    fn population_size(&self) -> usize;

    /// The next generation: `population_size()` candidates inside the bounds.
    fn ask(&mut self) -> Vec<Vec<f64>>;

    /// The fitness of each candidate of the pending generation (smaller is better).
    ///
    /// Errors (and leaves the state untouched) when no generation is pending or the length is
    /// not the batch size.
    fn tell(&mut self, fitness: &[Option<f64>]) -> Result<(), SearchError>;

    /// Best candidate evaluated so far (over restarts), if any evaluation succeeded.
    fn best(&self) -> Option<&Best>;

    /// Centre of the search distribution in the bounded space: the CMA mean, the GA
    /// population centroid, the random-search centre `x0`.
    fn mean(&self) -> Vec<f64>;

    /// Current overall step size: CMA's sigma, the GA mutation standard deviation, `None`
    /// for random search.
    fn sigma(&self) -> Option<f64>;

    /// Number of completed generations (`tell` calls), over restarts.
    fn generation(&self) -> u64;

    /// Number of candidates told so far (failed ones included), over restarts.
    fn evaluations(&self) -> u64;

    /// Why the optimizer recommends stopping, or `None` to go on. Asking and telling after a
    /// stop is allowed (and harmless) but rarely useful.
    fn should_stop(&self) -> Option<Termination>;
}

/// The best evaluated candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// The candidate as returned by `ask`.
    pub x: Vec<f64>,
    /// Its fitness (finite).
    pub f: f64,
    /// 1-based index of its evaluation over the whole run.
    pub evaluation: u64,
    /// 0-based generation in which it was evaluated.
    pub generation: u64,
}

/// A fitness value that counts: finite. `None`, NaN and ±inf are failures.
pub(crate) fn valid(f: Option<f64>) -> Option<f64> {
    f.filter(|v| v.is_finite())
}

/// Candidate indices best first: valid fitness ascending (ties by index), then failed
/// candidates in index order.
pub(crate) fn ranking(fitness: &[Option<f64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fitness.len()).collect();
    order.sort_by(|&a, &b| match (valid(fitness[a]), valid(fitness[b])) {
        (Some(fa), Some(fb)) => fa.total_cmp(&fb),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    order
}

/// Median of a non-empty slice of finite values (mean of the two middle ones when even).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let k = v.len() / 2;
    if v.len() % 2 == 1 {
        v[k]
    } else {
        (v[k - 1] + v[k]) / 2.0
    }
}

/// Generation and evaluation counters and the best-so-far, shared by all optimizers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub generation: u64,
    pub evaluations: u64,
    pub best: Option<Best>,
}

impl Progress {
    /// Records one told generation (call after validating the fitness length);
    /// `candidate(i)` gives candidate `i` as handed out (only called for a new best).
    pub fn record(&mut self, fitness: &[Option<f64>], candidate: impl FnOnce(usize) -> Vec<f64>) {
        let mut generation_best: Option<(usize, f64)> = None;
        for (i, f) in fitness.iter().enumerate() {
            if let Some(f) = valid(*f)
                && generation_best.is_none_or(|(_, b)| f < b)
            {
                generation_best = Some((i, f));
            }
        }
        if let Some((i, f)) = generation_best
            && self.best.as_ref().is_none_or(|b| f < b.f)
        {
            self.best = Some(Best {
                x: candidate(i),
                f,
                evaluation: self.evaluations + i as u64 + 1,
                generation: self.generation,
            });
        }
        self.evaluations += fitness.len() as u64;
        self.generation += 1;
    }
}

/// Checks that `tell` got one fitness per pending candidate.
pub(crate) fn check_fitness_len(
    expected: usize,
    fitness: &[Option<f64>],
) -> Result<(), SearchError> {
    if fitness.len() == expected {
        Ok(())
    } else {
        Err(SearchError::FitnessLength {
            expected,
            got: fitness.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_candidates_rank_last_and_ties_keep_order() {
        let f = [
            Some(3.0),
            None,
            Some(f64::NAN),
            Some(1.0),
            Some(f64::NEG_INFINITY),
            Some(3.0),
            Some(f64::INFINITY),
        ];
        assert_eq!(ranking(&f), vec![3, 0, 5, 1, 2, 4, 6]);
    }

    #[test]
    fn progress_keeps_the_first_strict_best() {
        let mut p = Progress::default();
        let xs = [vec![0.0], vec![1.0], vec![2.0]];
        p.record(&[None, Some(2.0), Some(2.0)], |i| xs[i].clone());
        assert_eq!(p.best.as_ref().unwrap().x, vec![1.0]);
        let xs = [vec![3.0], vec![4.0]];
        p.record(&[Some(f64::NAN), Some(1.5)], |i| xs[i].clone());
        let b = p.best.unwrap();
        assert_eq!(
            (b.x, b.f, b.evaluation, b.generation),
            (vec![4.0], 1.5, 5, 1)
        );
        assert_eq!((p.generation, p.evaluations), (2, 5));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
