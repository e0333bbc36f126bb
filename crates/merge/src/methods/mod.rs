//! The merge methods, one file each: its parameters, defaults, bounds, base use, arity and
//! scope, its golden cases, and the work it runs (a call into `evomerge-kernels`). A new method
//! is a new file here plus one line in [`REGISTRY`]; everything else (the planner, the
//! executor, the genome, `evomerge methods`, the golden and device test loops) reads the
//! registry.

use crate::method::MethodSpec;
use std::sync::LazyLock;

mod arcee_fusion;
mod breadcrumbs;
mod breadcrumbs_ties;
mod dare_linear;
mod dare_ties;
mod data;
mod della;
mod della_linear;
mod gta;
mod karcher;
mod linear;
mod model_stock;
mod multislerp;
mod nearswap;
mod nuslerp;
mod passthrough;
mod ram;
mod ramplus_tl;
mod sce;
mod slerp;
mod task_arithmetic;
#[cfg(feature = "test-method")]
mod test_scale;
mod ties;

/// Every registered method, in the order `evomerge methods` lists them; built once.
pub(crate) static REGISTRY: LazyLock<Vec<MethodSpec>> = LazyLock::new(|| {
    let mut all = vec![
        linear::spec(),
        slerp::spec(),
        nuslerp::spec(),
        multislerp::spec(),
        karcher::spec(),
        task_arithmetic::spec(),
        ties::spec(),
        dare_ties::spec(),
        dare_linear::spec(),
        breadcrumbs::spec(),
        breadcrumbs_ties::spec(),
        della::spec(),
        della_linear::spec(),
        model_stock::spec(),
        passthrough::spec(),
        sce::spec(),
        nearswap::spec(),
        arcee_fusion::spec(),
        ram::spec(),
        ramplus_tl::spec(),
    ];
    // The data-using methods, registered by evomerge-datamerge.
    all.extend(data::specs());
    #[cfg(feature = "test-method")]
    all.push(test_scale::spec());
    all
});
