//! Random streams for masks, derived from stable names instead of a global generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random stream of one mask: a ChaCha8 generator seeded from `(seed, tensor name, model
/// index)` through a fixed hash, so the same merge draws the same mask on any machine, in any
/// thread order, on any device.
#[derive(Debug, Clone)]
pub struct MaskRng {
    rng: ChaCha8Rng,
}

/// FNV-1a over bytes: stable across platforms and Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser, to spread the hash over all bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MaskRng {
    /// The stream for `tensor` of input model `model` in a merge seeded with `seed`.
    pub fn new(seed: u64, tensor: &str, model: usize) -> MaskRng {
        let mut h = fnv1a(&seed.to_le_bytes(), 0xcbf2_9ce4_8422_2325);
        h = fnv1a(tensor.as_bytes(), h);
        h = fnv1a(&(model as u64).to_le_bytes(), h);
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(h.wrapping_add(i as u64)).to_le_bytes());
        }
        MaskRng {
            rng: ChaCha8Rng::from_seed(key),
        }
    }

    /// `n` draws uniform in `[0, 1)`.
    pub fn uniform(&mut self, n: usize) -> Vec<f32> {
        // 24 random bits give every representable multiple of 2^-24 in [0, 1) exactly.
        (0..n)
            .map(|_| (self.rng.random::<u32>() >> 8) as f32 * (1.0 / (1u32 << 24) as f32))
            .collect()
    }

    /// Draws `start..start + out.len()` of the stream [`MaskRng::uniform`] reads from the
    /// start (the same values, for a chunk of a tensor; this generator itself is not moved).
    pub fn uniform_at(&self, start: u64, out: &mut [f32]) {
        let mut rng = self.rng.clone();
        rng.set_word_pos(start as u128);
        // the words in bulk (the same stream as one `random::<u32>()` after the other, which
        // `uniform` reads; the test below checks it), turned into floats in place
        let words: &mut [u32] = bytemuck::cast_slice_mut(out);
        rng.fill(words);
        for w in words.iter_mut() {
            *w = ((*w >> 8) as f32 * (1.0 / (1u32 << 24) as f32)).to_bits();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_stable_and_distinct() {
        let a = MaskRng::new(7, "model.layers.0.mlp.up_proj.weight", 1).uniform(4);
        let b = MaskRng::new(7, "model.layers.0.mlp.up_proj.weight", 1).uniform(4);
        let c = MaskRng::new(7, "model.layers.0.mlp.up_proj.weight", 2).uniform(4);
        let d = MaskRng::new(8, "model.layers.0.mlp.up_proj.weight", 1).uniform(4);
        let e = MaskRng::new(7, "model.layers.1.mlp.up_proj.weight", 1).uniform(4);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
        assert!(a.iter().all(|u| (0.0..1.0).contains(u)));
    }

    #[test]
    fn uniform_at_reads_the_same_stream() {
        let all = MaskRng::new(3, "x", 1).uniform(1000);
        let r = MaskRng::new(3, "x", 1);
        let mut part = vec![0.0; 300];
        r.uniform_at(517, &mut part);
        assert_eq!(part, all[517..817]);
        r.uniform_at(0, &mut part[..10]);
        assert_eq!(part[..10], all[..10]);
        for (start, len) in [(1, 1), (15, 33), (64, 200), (999, 1)] {
            r.uniform_at(start as u64, &mut part[..len]);
            assert_eq!(part[..len], all[start..start + len], "{start}..+{len}");
        }
    }

    #[test]
    fn uniform_mean_is_half() {
        let u = MaskRng::new(1, "x", 0).uniform(100_000);
        let mean = u.iter().map(|v| *v as f64).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
