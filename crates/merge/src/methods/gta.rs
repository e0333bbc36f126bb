//! What the task-vector methods (task arithmetic, TIES, DARE, Breadcrumbs, DELLA and their
//! variants) share: mergekit's `generalized_task_arithmetic` — sparsify each task vector, elect
//! signs (or not), sum with weights, add to the base. Each method's own file picks the
//! sparsification, the consensus and its defaults.

use crate::MergeError;
use crate::method::{
    BaseUse, CheckFn, HostWork, MethodSpec, Resolved, TensorWork, consensus_mode, flag, num,
    required, rescale_mode, word,
};
use evomerge_kernels::fused::{self, HostOut, HostTaskVector};
use evomerge_kernels::{
    Consensus, MaskRng, Rescale, Sparsify, T2, TaskVector, generalized_task_arithmetic, sparsify,
};

/// The words `rescale` accepts besides true/false.
pub(crate) const RESCALE_WORDS: &[&str] = &["l1", "inverse_density", "none"];

/// A task-vector method's entry.
pub(crate) fn spec(
    name: &'static str,
    sparsify: Sparsify,
    consensus: Consensus,
    normalize: bool,
    rescale: bool,
    summary: &'static str,
    work: crate::method::WorkFn,
) -> MethodSpec {
    let mut tensor_params = vec![required("weight").evolvable([0.0, 1.0])];
    if sparsify != Sparsify::None {
        tensor_params.push(num("density", 1.0).evolvable([0.0, 1.0]).example(0.5));
    } else {
        tensor_params.push(num("density", 1.0).within([0.0, 1.0]));
    }
    match sparsify {
        Sparsify::MagnitudeOutliers => tensor_params.push(num("gamma", 0.01).within([0.0, 1.0])),
        Sparsify::Della => tensor_params.push(num("epsilon", 0.15).within([0.0, 1.0])),
        _ => {}
    }
    let mut global_params = vec![
        flag("int8_mask", false),
        flag("normalize", normalize),
        flag("rescale", rescale).words(RESCALE_WORDS),
        num("lambda", 1.0),
    ];
    if consensus != Consensus::None {
        global_params.push(word("consensus", "sum", &["sum", "count"]));
    }
    MethodSpec {
        tensor_params,
        global_params,
        check: (sparsify == Sparsify::Della).then_some(della_window as CheckFn),
        ..MethodSpec::per_tensor(name, BaseUse::Required, work, summary)
    }
}

/// DELLA's keep probabilities `density -/+ epsilon` must lie in (0, 1) when it drops anything.
fn della_window(p: &Resolved, model: &dyn Fn(usize) -> String) -> Result<(), String> {
    for j in p.others() {
        if let (Some(d), Some(e)) = (p.input_f64(j, "density"), p.input_f64(j, "epsilon"))
            && d < 1.0
            && !(d - e > 0.0 && d + e < 1.0)
        {
            return Err(format!(
                "della: density - epsilon and density + epsilon must lie in (0, 1) (model {}: density {d}, epsilon {e})",
                model(j)
            ));
        }
    }
    Ok(())
}

/// The shared work: sparsify every task vector (`MaskRng::new(seed, tensor, input)` for the
/// random masks), then combine them on the base.
pub(crate) fn run(
    w: &TensorWork,
    method: Sparsify,
    consensus: Consensus,
) -> Result<T2, MergeError> {
    let p = &w.params;
    let b = w.base().expect("task arithmetic plans have a base");
    let (rescale, consensus, lambda) = options(p, consensus)?;
    let mut tvs = Vec::new();
    for j in p.others() {
        let delta = w.inputs[j].clone().sub(b.clone());
        let density = p.input_f64(j, "density").unwrap_or(1.0);
        let gamma = p.input_f64(j, "gamma").unwrap_or(0.0);
        let epsilon = p.input_f64(j, "epsilon").unwrap_or(0.0);
        let mut rng = MaskRng::new(w.seed, w.tensor, j);
        let delta = sparsify(delta, method, density, gamma, epsilon, rescale, &mut rng)
            .map_err(|e| w.kernel_err(e))?;
        tvs.push(TaskVector {
            delta,
            weight: p.weight(j),
        });
    }
    generalized_task_arithmetic(b, tvs, consensus, p.global_flag("normalize"), lambda)
        .map_err(|e| w.kernel_err(e))
}

/// The global options of a task-vector merge: rescale, consensus (the method's unless the
/// recipe sets one) and lambda.
fn options(p: &Resolved, consensus: Consensus) -> Result<(Rescale, Consensus, f32), MergeError> {
    let rescale = p
        .global
        .get("rescale")
        .map(rescale_mode)
        .transpose()
        .map_err(MergeError::Recipe)?
        .unwrap_or(Rescale::None);
    let consensus = match p.global.get("consensus") {
        Some(v) => consensus_mode(v).map_err(MergeError::Recipe)?,
        None => consensus,
    };
    let lambda = p
        .global
        .get("lambda")
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0) as f32;
    Ok((rescale, consensus, lambda))
}

/// The same merge fused on the CPU ([`fused::gta`]).
pub(crate) fn run_host(
    w: &HostWork,
    out: HostOut,
    method: Sparsify,
    consensus: Consensus,
) -> Result<(), MergeError> {
    let p = &w.params;
    let b = p.base.expect("task arithmetic plans have a base");
    let (rescale, consensus, lambda) = options(p, consensus)?;
    let tvs: Vec<HostTaskVector> = p
        .others()
        .into_iter()
        .map(|j| HostTaskVector {
            input: w.inputs[j],
            weight: p.weight(j),
            density: p.input_f64(j, "density").unwrap_or(1.0),
            gamma: p.input_f64(j, "gamma").unwrap_or(0.0),
            epsilon: p.input_f64(j, "epsilon").unwrap_or(0.0),
            rng: MaskRng::new(w.seed, w.tensor, j),
        })
        .collect();
    fused::gta(
        w.inputs[b],
        &tvs,
        method,
        rescale,
        consensus,
        p.global_flag("normalize"),
        lambda,
        w.cols,
        out,
    )
    .map_err(|e| w.kernel_err(e))
}
