//! Output buffers lent from one in-memory candidate to the next.
//!
//! A search merges candidate after candidate of the same shapes. Each merged tensor used to be
//! a fresh allocation: for a large tensor that is a fresh mapping whose pages the kernel faults
//! in and clears as the merge first writes them (about 0.35 s of a 0.48B-parameter f32
//! candidate's 1.7 s on two cores). A [`BufferPool`] keeps the buffers of a dropped candidate
//! and hands them to the next merge of the same sizes: a tensor made by [`BufferPool::tensor`]
//! owns its buffer until the last view of it is dropped, which gives the buffer back.
//!
//! Lent buffers hold the values of the candidate before; the fused kernels write every entry
//! of their output (a test in `evomerge-merge` runs every kernel on a buffer of NaNs), so no
//! stale value can reach a candidate. The pool keeps at most one candidate's bytes (the
//! largest [`BufferPool::expect`] announced), so it never holds more than the candidate it
//! replaces: a search's peak memory is unchanged, and a candidate still being evaluated when
//! the next is merged simply makes that merge allocate.

use crate::{Device, FloatDType, T2, view_shape};
use burn::tensor::{AllocationProperty, Bytes, DType, Tensor, TensorData};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// A buffer of `f32` values or of 16-bit (bf16/f16) values.
#[derive(Debug)]
pub enum PoolBuf {
    F32(Vec<f32>),
    Half(Vec<u16>),
}

impl PoolBuf {
    fn bytes(&self) -> usize {
        match self {
            PoolBuf::F32(v) => v.len() * 4,
            PoolBuf::Half(v) => v.len() * 2,
        }
    }

    /// The pool's key: (bytes, whether f32).
    fn key(&self) -> (usize, bool) {
        (self.bytes(), matches!(self, PoolBuf::F32(_)))
    }
}

#[derive(Debug, Default)]
struct Inner {
    free: HashMap<(usize, bool), Vec<PoolBuf>>,
    held: usize,
    cap: usize,
    /// Buffers handed out again (for the tests and benches).
    reused: u64,
}

/// Buffers of dropped candidates, lent to the next merge (see the module docs). Cloning shares
/// the pool.
#[derive(Debug, Clone, Default)]
pub struct BufferPool(Arc<Mutex<Inner>>);

/// A lent buffer as the bytes of a tensor: gives the buffer back to its pool when the tensor's
/// last view is dropped (or frees it when the pool is gone or full).
struct Lent {
    buf: Option<PoolBuf>,
    pool: Weak<Mutex<Inner>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        match self.buf.as_ref().expect("present until dropped") {
            PoolBuf::F32(v) => bytemuck::cast_slice(v),
            PoolBuf::Half(v) => bytemuck::cast_slice(v),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let (Some(buf), Some(pool)) = (self.buf.take(), self.pool.upgrade()) {
            BufferPool(pool).put(buf);
        }
    }
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> BufferPool {
        BufferPool::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic while holding the lock leaves the maps consistent (no update spans it)
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announce a candidate of `bytes` in all: the pool keeps up to the largest announced.
    pub fn expect(&self, bytes: usize) {
        let mut inner = self.lock();
        inner.cap = inner.cap.max(bytes);
    }

    /// `n` f32 values: a lent buffer (holding earlier values: the caller writes every entry)
    /// or a fresh one.
    pub fn take_f32(&self, n: usize) -> Vec<f32> {
        match self.take((n * 4, true)) {
            Some(PoolBuf::F32(v)) => v,
            _ => vec![0.0; n],
        }
    }

    /// `n` 16-bit values (bf16 or f16 bits), as [`BufferPool::take_f32`].
    pub fn take_half(&self, n: usize) -> Vec<u16> {
        match self.take((n * 2, false)) {
            Some(PoolBuf::Half(v)) => v,
            _ => vec![0; n],
        }
    }

    fn take(&self, key: (usize, bool)) -> Option<PoolBuf> {
        let mut inner = self.lock();
        let buf = inner.free.get_mut(&key)?.pop()?;
        inner.held -= buf.bytes();
        inner.reused += 1;
        Some(buf)
    }

    fn put(&self, buf: PoolBuf) {
        let mut inner = self.lock();
        let bytes = buf.bytes();
        if inner.held + bytes <= inner.cap {
            inner.held += bytes;
            inner.free.entry(buf.key()).or_default().push(buf);
        }
    }

    /// Bytes the pool holds now.
    pub fn held_bytes(&self) -> usize {
        self.lock().held
    }

    /// Buffers handed out again so far.
    pub fn reused(&self) -> u64 {
        self.lock().reused
    }

    /// A tensor of `shape` (as its 2-D view) over `buf` (f32, or `dtype` BF16/F16 bits), whose
    /// buffer comes back to this pool when its last view is dropped. On the CPU device the
    /// tensor reads the buffer in place; elsewhere it is uploaded and the buffer comes back at
    /// once.
    pub fn tensor(&self, buf: PoolBuf, dtype: FloatDType, shape: &[usize], device: &Device) -> T2 {
        let [r, c] = view_shape(shape);
        let (n, dt) = match (&buf, dtype) {
            (PoolBuf::F32(v), FloatDType::F32) => (v.len(), DType::F32),
            (PoolBuf::Half(v), FloatDType::BF16) => (v.len(), DType::BF16),
            (PoolBuf::Half(v), FloatDType::F16) => (v.len(), DType::F16),
            (b, d) => panic!("BufferPool::tensor: a {} buffer as {d:?}", b.bytes()),
        };
        assert_eq!(
            r * c,
            n,
            "BufferPool::tensor: {n} values for shape {shape:?}"
        );
        let owner = Lent {
            buf: Some(buf),
            pool: Arc::downgrade(&self.0),
        };
        let bytes = Bytes::from_shared(bytes::Bytes::from_owner(owner), AllocationProperty::Native);
        let data = TensorData::from_bytes(bytes, [r, c], dt);
        if dt == DType::F32 {
            Tensor::from_data(data, device)
        } else {
            Tensor::from_data(data, (device, dt))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values_of;

    #[test]
    fn a_tensor_holds_its_buffer_until_its_last_view_is_dropped() {
        let device = Device::flex();
        let pool = BufferPool::new();
        pool.expect(6 * 4 + 6 * 2);
        let mut v = pool.take_f32(6);
        v.copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let t = pool.tensor(PoolBuf::F32(v), FloatDType::F32, &[2, 3], &device);
        let view = t.clone().transpose();
        drop(t);
        // a copy at upload would have given the buffer back already
        assert_eq!(pool.held_bytes(), 0, "the tensor reads the buffer in place");
        assert_eq!(values_of(view.clone()), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        drop(view);
        assert_eq!(pool.held_bytes(), 24);
        // the next tensor of that size gets the same buffer back, values and all
        let again = pool.take_f32(6);
        assert_eq!(again, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!((pool.reused(), pool.held_bytes()), (1, 0));
        // other sizes and kinds are fresh
        assert_eq!(pool.take_f32(5), vec![0.0; 5]);
        let h = pool.take_half(6);
        let bits: Vec<u16> = [1.0f32, -2.0, 0.5, 3.0, 0.0, 8.0]
            .iter()
            .map(|x| half::bf16::from_f32(*x).to_bits())
            .collect();
        assert_eq!(h.len(), 6);
        let t = pool.tensor(PoolBuf::Half(bits), FloatDType::BF16, &[6], &device);
        assert_eq!(values_of(t.clone()), vec![1.0, -2.0, 0.5, 3.0, 0.0, 8.0]);
        drop(t);
        assert_eq!(pool.held_bytes(), 12);
    }

    #[test]
    fn the_pool_keeps_at_most_one_candidate() {
        let device = Device::flex();
        let pool = BufferPool::new();
        pool.expect(40);
        let a = pool.tensor(PoolBuf::F32(vec![1.0; 8]), FloatDType::F32, &[8], &device);
        let b = pool.tensor(PoolBuf::F32(vec![2.0; 8]), FloatDType::F32, &[8], &device);
        drop(a);
        drop(b);
        // 32 + 32 bytes > 40: the second is freed
        assert_eq!(pool.held_bytes(), 32);
        // a pool that is gone frees what comes back
        let c = pool.tensor(PoolBuf::F32(vec![3.0; 2]), FloatDType::F32, &[2], &device);
        drop(pool);
        drop(c);
    }
}
