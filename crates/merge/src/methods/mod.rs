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
mod data_fisher;
mod data_git_rebasin;
mod data_greedy_soup;
mod data_regmean;
mod data_repair;
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
    vec![
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
        data_fisher::spec(),
        data_regmean::spec(),
        data_git_rebasin::spec(),
        data_repair::spec(),
        data_greedy_soup::spec(),
        #[cfg(feature = "test-method")]
        test_scale::spec(),
    ]
});
