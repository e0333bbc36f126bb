//! `ram` (Reinforced Agent Merging, mergekit 0.1.5's `ram.py`): an entry of a task vector counts
//! when `|delta| > epsilon`; entries only one model changes are kept whole, entries several
//! models change are averaged over those models. `ramplus_tl` (its own file) reuses this with a
//! per-model boost of the unique entries.

use crate::MergeError;
use crate::method::{BaseUse, Golden, HostWork, MethodSpec, TensorWork, num};
use evomerge_kernels::T2;
use evomerge_kernels::fused::{self, HostOut};

pub(crate) fn spec() -> MethodSpec {
    MethodSpec {
        host: Some(host),
        global_params: vec![epsilon()],
        goldens: &[Golden {
            base: Some(&[0., 0., 0., 0.]),
            models: &[&[1., 2., 0., 0.], &[3., 0., 4., 0.]],
            per_model: &[],
            global: &[],
            rows: 1,
            // element 0 overlaps: (1 + 3)/2; 1 and 2 are unique; 3 is untouched
            want: &[2., 2., 4., 0.],
            tol: 1e-6,
        }],
        ..MethodSpec::per_tensor(
            "ram",
            BaseUse::Required,
            work,
            "RAM: keep task-vector entries only one model changes, average those several change (|delta| > epsilon)",
        )
    }
}

/// The threshold below which a delta does not count as a change.
pub(super) fn epsilon() -> crate::method::ParamSpec {
    num("epsilon", 1e-5).within([0.0, 1.0])
}

fn work(w: &TensorWork) -> Result<T2, MergeError> {
    merge(w, |_, _| 1.0)
}

fn host(w: &HostWork, out: HostOut) -> Result<(), MergeError> {
    merge_host(w, out, |_, _| 1.0)
}

/// [`merge`] fused on the CPU ([`fused::ram`]).
pub(super) fn merge_host(
    w: &HostWork,
    out: HostOut,
    boost: impl Fn(f32, f32) -> f32,
) -> Result<(), MergeError> {
    let p = &w.params;
    let base = p.base.expect("ram plans have a base");
    let others: Vec<_> = p.others().into_iter().map(|j| w.inputs[j]).collect();
    fused::ram(w.inputs[base], &others, p.global_f32("epsilon"), boost, out)
        .map_err(|e| w.kernel_err(e))
}

/// The RAM merge with `boost(shared, unique)` scaling each model's unique entries, from the
/// counts of its changed entries that other models share or do not.
pub(super) fn merge(w: &TensorWork, boost: impl Fn(f32, f32) -> f32) -> Result<T2, MergeError> {
    let (base, tvs) = w.host_task_vectors();
    let eps = w.params.global_f32("epsilon");
    let changed = |v: f32| v.abs() > eps;
    let counts: Vec<u32> = (0..base.len())
        .map(|i| tvs.iter().filter(|tv| changed(tv[i])).count() as u32)
        .collect();
    let boosts: Vec<f32> = tvs
        .iter()
        .map(|tv| {
            let (mut shared, mut unique) = (0u64, 0u64);
            for (v, c) in tv.iter().zip(&counts) {
                if changed(*v) {
                    if *c > 1 {
                        shared += 1;
                    } else {
                        unique += 1;
                    }
                }
            }
            boost(shared as f32, unique as f32)
        })
        .collect();
    let out = (0..base.len())
        .map(|i| {
            let c = counts[i];
            let sum: f32 = tvs
                .iter()
                .zip(&boosts)
                .filter(|(tv, _)| changed(tv[i]))
                .map(|(tv, b)| if c == 1 { tv[i] * b } else { tv[i] / c as f32 })
                .sum();
            base[i] + sum
        })
        .collect();
    Ok(w.from_host(out))
}
