//! Merge arithmetic on burn tensors: one small function per method family, any device.
//!
//! Every function here takes the input tensors of one output tensor (already converted to `f32`
//! and placed on a burn [`Device`]: flex on the CPU by default, wgpu with the `wgpu` feature) and
//! returns the merged tensor on the same device. The math follows mergekit's definitions exactly
//! (checked against mergekit 0.1.5 by `crates/merge/tests/it/mergekit_parity.rs`), including its
//! less obvious choices — weighted sign election with ties going positive, DARE's L1-matching
//! rescale, SLERP's colinear fallback — and fixes its known bugs (Breadcrumbs' `n_top == 0`, linear's division by
//! a zero weight sum, DELLA on one-column tensors). Arithmetic is always `f32`.
//!
//! Tensors are passed as 2-D views `[rows, cols]`: a 1-D tensor of `n` values is `[1, n]`, a
//! matrix is itself, and higher ranks fold their leading dimensions into rows ([`view_shape`]).
//! Methods that work on whole flattened tensors (most of them) do not care; the row-wise ones
//! (DELLA's ranks, NuSLERP without flattening, filter-wise Model Stock) use the rows.
//!
//! Random masks (DARE, DELLA) never use a global generator: each comes from [`MaskRng`], a
//! ChaCha stream derived from `(seed, tensor name, model index)`, drawn on the host and uploaded,
//! so a merge gives the same result whatever the thread schedule and whatever the device.
//!
//! [`fused`] holds the CPU fast path of every per-tensor method (the SLERP family, task
//! arithmetic and its sparsifications, Model Stock, SCE, RAM, NearSwap, Karcher, Arcee Fusion):
//! host loops over chunks of the stored bytes, run in parallel, with the same math as the burn
//! functions (a test in `evomerge-merge` checks every fused kernel against them to 1e-6). A new
//! per-element method gets its burn function here for the GPU and, for speed on the CPU, a
//! fused kernel there.
//!
//! Not for: reading checkpoints, resolving recipes (see `evomerge-merge`).
//!
//! ```
//! use evomerge_kernels::{Device, tensor_from, values_of, slerp};
//! let device = Device::flex();
//! let v0 = tensor_from(&[1.0, 0.0], &[2], &device);
//! let v1 = tensor_from(&[0.0, 1.0], &[2], &device);
//! let mid = values_of(slerp(0.5, v0, v1));
//! assert!((mid[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
//! ```

mod device;
pub mod fused;
mod interpolate;
mod model_stock;
mod pool;
mod rng;
mod task_arithmetic;

pub use burn::tensor::{Device, FloatDType};
pub use device::{DeviceChoice, EvalDtype, is_gpu, wgpu_available, wgpu_device_for};
pub use interpolate::{karcher, linear, multislerp, nuslerp, passthrough, slerp};
pub use model_stock::model_stock;
pub use pool::{BufferPool, PoolBuf};
pub use rng::MaskRng;
pub use task_arithmetic::{
    Consensus, Rescale, Sparsify, TaskVector, consensus_mask, generalized_task_arithmetic,
    kept_count, sparsify,
};

use burn::tensor::{Tensor, TensorData};

/// A merge input or output: a 2-D `f32` tensor (see the crate docs for the view).
pub type T2 = Tensor<2>;

/// Errors a merge function reports instead of producing garbage.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error("{method}: needs {needed}, got {got}")]
    WrongInputCount {
        method: &'static str,
        needed: &'static str,
        got: usize,
    },
    #[error("{method}: input shapes differ: {a:?} vs {b:?}")]
    ShapeMismatch {
        method: &'static str,
        a: [usize; 2],
        b: [usize; 2],
    },
    #[error("{method}: {what}")]
    BadParameter { method: &'static str, what: String },
}

/// Result type of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// The 2-D view of a tensor shape: leading dimensions folded into rows, the last one kept.
/// Scalars and 1-D tensors become one row.
pub fn view_shape(shape: &[usize]) -> [usize; 2] {
    match shape {
        [] => [1, 1],
        [n] => [1, *n],
        [lead @ .., last] => [lead.iter().product(), *last],
    }
}

/// Upload host values with the given (original) shape as a 2-D view tensor.
pub fn tensor_from(values: &[f32], shape: &[usize], device: &Device) -> T2 {
    let [r, c] = view_shape(shape);
    assert_eq!(
        r * c,
        values.len(),
        "tensor_from: {} values for shape {shape:?}",
        values.len()
    );
    Tensor::from_data(TensorData::new(values.to_vec(), [r, c]), device)
}

/// Upload owned host values (no copy on the CPU device).
pub fn tensor_from_vec(values: Vec<f32>, shape: &[usize], device: &Device) -> T2 {
    let [r, c] = view_shape(shape);
    assert_eq!(
        r * c,
        values.len(),
        "tensor_from_vec: {} values for shape {shape:?}",
        values.len()
    );
    Tensor::from_data(TensorData::new(values, [r, c]), device)
}

/// `cat(parts, 0)` transposed into one contiguous `[cols, rows]` matrix: the layout a model
/// keeps its projections in (`x @ Wt`) on wgpu, in bf16 and for training (on the CPU in f32
/// and f16 it multiplies by views instead). Every part is `[rows_i, cols]` with the same `cols`.
/// On the CPU device a blocked transposition over all cores on the host (burn's copy of a
/// transposed view walks memory with a stride and is several times slower); elsewhere, and
/// on an autodiff device, burn's own ops.
pub fn cat_transposed(parts: Vec<T2>) -> T2 {
    let device = parts[0].device();
    let cols = parts[0].dims()[1];
    // autodiff tensors (the mini world's trainer) keep burn's ops, which gradients flow through
    if device != Device::flex() || device.is_autodiff() {
        let cat = if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else {
            Tensor::cat(parts, 0)
        };
        // `transpose` is a view; adding zero materialises it once.
        return cat.transpose().add_scalar(0.0);
    }
    let rows: usize = parts.iter().map(|p| p.dims()[0]).sum();
    for p in &parts {
        let c = p.dims()[1];
        assert_eq!(c, cols, "cat_transposed: parts of {c} and {cols} columns");
    }
    // in the parts' own element type: a half-precision model is never widened to f32
    let data = match parts[0].dtype() {
        burn::tensor::DType::BF16 => {
            TensorData::new(transposed::<half::bf16>(parts, rows, cols), [cols, rows])
        }
        burn::tensor::DType::F16 => {
            TensorData::new(transposed::<half::f16>(parts, rows, cols), [cols, rows])
        }
        _ => TensorData::new(transposed::<f32>(parts, rows, cols), [cols, rows]),
    };
    let dtype = data.dtype();
    Tensor::from_data(data, (&device, dtype))
}

/// The host transposition of [`cat_transposed`] over elements of type `E` (the parts are
/// converted to `E` when they hold another type).
fn transposed<E>(parts: Vec<T2>, rows: usize, cols: usize) -> Vec<E>
where
    E: burn::tensor::Element + Copy + Default + Send + Sync,
{
    use rayon::prelude::*;
    let mut out = vec![E::default(); rows * cols];
    const TILE: usize = 32;
    let mut offset = 0;
    for part in parts {
        let n = part.dims()[0];
        let v: Vec<E> = part
            .into_data()
            .convert::<E>()
            .try_into_vec::<E>()
            .expect("tensor data of the converted type");
        // output rows are input columns: TILE of them per task, filled tile by tile
        out.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(block, chunk)| {
                let c0 = block * TILE;
                let nc = chunk.len() / rows;
                for r0 in (0..n).step_by(TILE) {
                    let r1 = (r0 + TILE).min(n);
                    for j in 0..nc {
                        let dst = &mut chunk[j * rows + offset + r0..j * rows + offset + r1];
                        for (d, r) in dst.iter_mut().zip(r0..r1) {
                            *d = v[r * cols + c0 + j];
                        }
                    }
                }
            });
        offset += n;
    }
    out
}

/// Download a tensor's values (row-major).
pub fn values_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor data")
}

/// Read a one-element tensor as a host scalar.
pub(crate) fn scalar(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

pub(crate) fn check_same_shapes(method: &'static str, tensors: &[&T2]) -> Result<[usize; 2]> {
    let first = tensors[0].dims();
    for t in &tensors[1..] {
        if t.dims() != first {
            return Err(KernelError::ShapeMismatch {
                method,
                a: first,
                b: t.dims(),
            });
        }
    }
    Ok(first)
}

/// Euclidean norm of a whole tensor as a host scalar.
pub(crate) fn norm(t: &T2) -> f32 {
    scalar(t.clone().square().sum()).sqrt()
}

/// Dot product of two whole tensors as a host scalar.
pub(crate) fn dot(a: &T2, b: &T2) -> f32 {
    scalar(a.clone().mul(b.clone()).sum())
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn dev() -> Device {
        Device::flex()
    }

    pub fn t(values: &[f32]) -> T2 {
        tensor_from(values, &[values.len()], &dev())
    }

    pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "element {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host transposition gives burn's `cat(..).transpose()`, in f32 and kept in bf16 / f16
    /// (parts of several row counts, columns not a multiple of the tile).
    #[test]
    fn cat_transposed_matches_burn_and_keeps_the_dtype() {
        let device = Device::flex();
        let part = |rows: usize, seed: u64| {
            let v = MaskRng::new(seed, "cat", 0).uniform(rows * 45);
            tensor_from(&v, &[rows, 45], &device)
        };
        let parts = vec![part(70, 1), part(3, 2), part(33, 3)];
        let want = values_of(Tensor::cat(parts.clone(), 0).transpose());
        for dtype in [FloatDType::F32, FloatDType::BF16, FloatDType::F16] {
            let cast: Vec<T2> = parts.iter().map(|p| p.clone().cast(dtype)).collect();
            let got = cat_transposed(cast);
            assert_eq!(got.dims(), [45, 106]);
            assert_eq!(FloatDType::from(got.dtype()), dtype);
            let want: Vec<f32> = values_of(
                tensor_from(&want, &[45, 106], &device)
                    .cast(dtype)
                    .cast(FloatDType::F32),
            );
            assert_eq!(values_of(got.cast(FloatDType::F32)), want, "{dtype:?}");
        }
    }
}
